// What the benchmarks share: where the data is, found as the tests find it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <string>
#include <system_error>
#include <vector>

namespace attnscope::bench {

/// $ATTNSCOPE_DATA_DIR, else ../shared/data beside the source tree.
inline std::filesystem::path data_dir() {
  const char* env = std::getenv("ATTNSCOPE_DATA_DIR");
  if (env && *env) return env;
  return std::filesystem::path(__FILE__).parent_path() / ".." / ".." / "shared" / "data";
}

/// The first `limit` isic-uda1 JPEGs by name; empty when the folder is not there.
inline std::vector<std::string> isic_uda1_images(
    std::size_t limit = std::numeric_limits<std::size_t>::max()) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(data_dir() / "isic-uda1" / "images", ec))
    if (e.path().extension() == ".jpg") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  if (files.size() > limit) files.resize(limit);
  return files;
}

/// The message a benchmark skips with when the data is not there.
inline constexpr char kNoData[] =
    "no isic-uda1 images: put ../shared/data beside the repository or set ATTNSCOPE_DATA_DIR";

}  // namespace attnscope::bench
