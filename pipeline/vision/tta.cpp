#include "pipeline/vision/tta.h"

#include <torch/torch.h>

#include "attnscope/error.h"

namespace attnscope::pipeline {
namespace {

void check_index(int64_t index) {
  check(index >= 0 && index < kDihedralCount, "dihedral transform", "index must lie in 0..7, got ",
        index);
}

void check_rank(const torch::Tensor& x) {
  check(x.defined() && x.dim() >= 2, "dihedral transform",
        "needs a tensor with at least 2 dimensions (..., H, W), got ", x.defined() ? x.dim() : 0);
}

}  // namespace

std::string dihedral_name(int64_t index) {
  check_index(index);
  static const std::array<const char*, kDihedralCount> kNames = {
      "identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270"};
  return kNames[static_cast<size_t>(index)];
}

torch::Tensor dihedral_transform(const torch::Tensor& x, int64_t index) {
  check_index(index);
  check_rank(x);
  const auto flipped = index >= 4 ? torch::flip(x, {-1}) : x;
  return index % 4 == 0 ? flipped : torch::rot90(flipped, index % 4, {-2, -1});
}

torch::Tensor dihedral_inverse(const torch::Tensor& y, int64_t index) {
  check_index(index);
  check_rank(y);
  // Undo the turns (turn back), then the flip (its own inverse).
  const auto turned = index % 4 == 0 ? y : torch::rot90(y, -(index % 4), {-2, -1});
  return index >= 4 ? torch::flip(turned, {-1}) : turned;
}

torch::Tensor tta_mean(const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                       const torch::Tensor& images) {
  torch::Tensor sum;
  for (int64_t k = 0; k < kDihedralCount; ++k) {
    // contiguous(): models expect a dense batch, rot90/flip return strided views or copies.
    auto out = fn(dihedral_transform(images, k).contiguous());
    sum = k == 0 ? out.clone() : sum.add_(out);
  }
  return sum.div_(static_cast<double>(kDihedralCount));
}

torch::Tensor mean_of_inverted_maps(const std::vector<torch::Tensor>& maps) {
  check(static_cast<int64_t>(maps.size()) == kDihedralCount, "TTA maps", "expected ",
        kDihedralCount, " maps (one per transform), got ", maps.size());
  torch::Tensor sum;
  for (int64_t k = 0; k < kDihedralCount; ++k) {
    auto back = dihedral_inverse(maps[k], k);
    if (k == 0) {
      sum = back.clone();
      continue;
    }
    check(back.sizes() == sum.sizes(), "TTA maps", "map ", k, " (", dihedral_name(k),
          ") has shape ", maps[k].sizes(), " which maps back to ", back.sizes(), ", expected ",
          sum.sizes());
    sum.add_(back);
  }
  return sum.div_(static_cast<double>(kDihedralCount));
}

}  // namespace attnscope::pipeline
