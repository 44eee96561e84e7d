#pragma once
// Checks a command runs on its outputs BEFORE any long work: an --out that is one of the
// inputs, or a folder that cannot be written, is an error up front, not after an hour of
// training. Also the upper bounds every command applies to sizes and counts.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>

#include "attnscope/error.h"

namespace attnscope {

/// Largest image side any command accepts (--size, a resize step): 16384^2 RGB is 768 MiB.
constexpr int kMaxImageSide = 16384;
/// Largest image (pixels) any decoder accepts: kMaxImageSide^2.
constexpr int64_t kMaxDecodePixels = int64_t{kMaxImageSide} * kMaxImageSide;
/// Largest thread/worker count a command accepts.
constexpr int kMaxWorkers = 256;

/// True when a and b name the same file (same inode), or the same path once made absolute
/// and normalised when neither exists yet.
inline bool same_file(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  if (a.empty() || b.empty()) return false;
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec) && !ec;
  // Absolute first: weakly_canonical keeps a relative path relative when nothing of it
  // exists, so "s.json" and "./s.json" compared unequal.
  return fs::weakly_canonical(fs::absolute(a, ec), ec) ==
         fs::weakly_canonical(fs::absolute(b, ec), ec);
}

/// Throws Error(out, ...) when the output `out` is the input `input` (described as `what`).
inline void check_not_an_input(const std::string& out, const std::string& input,
                               const std::string& what) {
  check(!same_file(out, input), out, "is ", what, " (", input,
        "); writing it would destroy the input: choose another output");
}

/// True when folder `dir` is `inner` or one of its ancestors (by identity, symlinks followed).
inline bool folder_contains(const std::string& dir, const std::string& inner) {
  namespace fs = std::filesystem;
  std::error_code ec;
  // Absolute first: weakly_canonical keeps a relative path relative when no part of it exists
  // yet ("results" was never inside ".").
  const auto top = fs::weakly_canonical(fs::absolute(dir, ec), ec);
  if (ec) return false;
  for (auto p = fs::weakly_canonical(fs::absolute(inner, ec), ec); !ec && !p.empty();
       p = p.parent_path()) {
    if (p == top) return true;
    if (p == p.parent_path()) break;
  }
  return false;
}

/// Throws Error(path, ...) unless a file can be created in the folder that will hold `path`
/// (it exists, is a folder, is writable, the file system is not read-only). Creates an
/// unnamed file (or, where O_TMPFILE is missing, a probe removed at once); the target itself
/// is not touched.
inline void ensure_writable_folder(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    // What is there instead (a file where the folder belongs) is named, not "does not exist".
    const auto st = fs::status(dir, ec);
    check(!fs::exists(st), path, dir.string(), " is not a folder");
    check(false, path, "the folder ", dir.string(), " does not exist");
  }
  // An unnamed file (O_TMPFILE) leaves no name behind whenever the process dies; where it
  // fails (file systems without it say EOPNOTSUPP, EISDIR or EINVAL) a named probe, removed at
  // once, decides and gives the reason.
  int fd = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0) {
    const auto probe = (dir / concat(".attnscope-probe.", ::getpid())).string();
    fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) ::unlink(probe.c_str());
  }
  check(fd >= 0, path, "cannot create files in ", dir.string(), " (", std::strerror(errno), ")");
  ::close(fd);
}

/// Throws Error(path, ...) when `path` exists and is not a regular file (a folder, /dev/full,
/// a FIFO): AtomicFile refuses to replace it, which a command would otherwise find only when
/// it writes, after its work.
inline void check_replaceable_file(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  check(!fs::exists(status) || fs::is_regular_file(status), path,
        "exists and is not a regular file; refusing to replace it");
}

/// The first `max_bytes` bytes of the file `path` ("" when it cannot be read).
inline std::string file_head(const std::string& path, std::size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return "";
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
    max_bytes = std::min(max_bytes, static_cast<std::size_t>(st.st_size));
  std::string head(max_bytes, '\0');
  std::size_t got = 0;
  while (got < max_bytes) {
    const ssize_t n = ::read(fd, head.data() + got, max_bytes - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  head.resize(got);
  return head;
}

/// Whether `head` (the first bytes of a file, file_head) starts with HDF5's 8-byte signature
/// (a file whose superblock is at offset 0, as every file attnscope writes).
inline bool has_hdf5_signature(const std::string& head) {
  return head.compare(0, 8, "\x89HDF\r\n\x1a\n", 8) == 0;
}

/// Throws Error(path, ...) when `path` is a file holding bytes that `is_own` does not take for
/// what this command writes (`what`, e.g. "a split CSV"; `flag` the option that named it):
/// `split --out` onto a ground-truth CSV, or `cache --out` onto a checkpoint, replaced it
/// without a word. An empty or missing file passes; `is_own` is asked only for a regular file
/// holding bytes.
template <class IsOwn>
void check_replaces_only_its_own(const std::string& path, const std::string& flag,
                                 const std::string& what, IsOwn&& is_own) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::is_regular_file(status)) return;
  const auto size = fs::file_size(path, ec);
  if (ec || size == 0 || is_own()) return;
  throw Error(path, "exists and is not " + what +
                        "; refusing to replace it (remove it first, or choose another " + flag +
                        ")");
}

/// ensure_writable_folder for an output folder that may not exist yet: its nearest existing
/// ancestor must be writable, and no missing part of it a symbolic link to nowhere.
inline void ensure_writable_output_folder(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = fs::absolute(dir, ec);
  while (!p.empty() && !fs::exists(p, ec) && p != p.parent_path()) {
    // (create_directories failed on it later with "filesystem error: ... File exists")
    check(!fs::is_symlink(fs::symlink_status(p, ec)), dir,
          p == fs::absolute(dir, ec) ? std::string() : p.string() + " ",
          "is a symbolic link to a missing target");
    p = p.parent_path();
  }
  check(fs::is_directory(p, ec), dir, p.string(), " is not a folder");
  // The message names the folder asked for, not the probe's name inside its ancestor.
  try {
    ensure_writable_folder((p / "x").string());
  } catch (const Error& e) {
    throw Error(dir, e.message());
  }
}

}  // namespace attnscope
