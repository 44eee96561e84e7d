#include "datasets/walk.h"

#include <algorithm>
#include <cerrno>
#include <system_error>

#include "attnscope/error.h"

namespace attnscope::datasets {

namespace fs = std::filesystem;

FolderListing list_folder(const fs::path& dir, bool skip_hidden) {
  std::error_code ec;
  check(fs::is_directory(dir, ec), dir.string(), "not a folder",
        ec ? concat(" (", ec.message(), ")") : std::string());
  FolderListing out;
  fs::directory_iterator it(dir, ec);
  check(!ec, dir.string(), "cannot list the folder (", ec.message(), ")");
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    if (ec) {
      out.problems.push_back(
          concat(dir.string(), ": cannot list the folder further (", ec.message(), ")"));
      break;
    }
    const fs::path path = it->path();
    if (skip_hidden && path.filename().string().rfind('.', 0) == 0) continue;
    std::error_code entry_ec;
    const auto status = fs::status(path, entry_ec);  // follows symlinks
    if (entry_ec) {
      if (entry_ec.value() == ELOOP)
        out.problems.push_back(concat(path.string(), ": symlink loop"));
      else if (entry_ec != std::errc::no_such_file_or_directory)
        out.problems.push_back(concat(path.string(), ": ", entry_ec.message()));
    }
    if (status.type() == fs::file_type::not_found) {
      std::error_code link_ec;
      if (fs::is_symlink(fs::symlink_status(path, link_ec)))
        out.problems.push_back(concat(path.string(), ": dangling symlink"));
      continue;
    }
    if (entry_ec) continue;
    if (fs::is_regular_file(status))
      out.files.push_back(path);
    else if (fs::is_directory(status))
      out.folders.push_back(path);
    else  // a FIFO named x.jpg was passed over without a word
      out.problems.push_back(
          concat(path.string(), ": not a regular file (a pipe, socket or device), skipped"));
  }
  std::sort(out.files.begin(), out.files.end());
  std::sort(out.folders.begin(), out.folders.end());
  return out;
}

}  // namespace attnscope::datasets
