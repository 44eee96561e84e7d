// Translation unit that owns the shared precompiled LibTorch header (cmake/AttnscopePch.cmake).
namespace attnscope {
int pch_anchor() {
  return 0;
}
}  // namespace attnscope
