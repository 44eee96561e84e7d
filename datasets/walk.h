#pragma once
// Listing a folder without letting one bad entry stop the run. std::filesystem's throwing
// calls fail on a symlink loop (ELOOP) or an unreadable entry; here every such entry becomes
// one line in `problems` and the listing goes on. Dangling symlinks are counted as problems
// too, so that the user learns about them instead of seeing files silently left out.

#include <filesystem>
#include <string>
#include <vector>

namespace attnscope::datasets {

struct FolderListing {
  std::vector<std::filesystem::path> files;    ///< regular files (symlinks followed), sorted
  std::vector<std::filesystem::path> folders;  ///< sub-folders (symlinks followed), sorted
  /// One line per entry that could not be used: "<path>: symlink loop",
  /// "<path>: dangling symlink", "<path>: <system error>", "<path>: not a regular file (a
  /// pipe, socket or device), skipped".
  std::vector<std::string> problems;
};

/// Lists the direct entries of `dir` (not recursive). Throws Error(dir, ...) only when `dir`
/// itself is not a readable folder. With `skip_hidden`, entries whose name begins with '.'
/// (macOS's "._x.jpg", ".git/", a running writer's temporary) are neither listed nor problems,
/// as classify's walk skips them.
FolderListing list_folder(const std::filesystem::path& dir, bool skip_hidden = false);

}  // namespace attnscope::datasets
