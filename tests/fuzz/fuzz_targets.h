#pragma once
// The fuzzed entry points, shared by the libFuzzer targets (tests/fuzz/fuzz_*.cpp, built by
// scripts/fuzz.sh) and by the corpus regression tests (FuzzCorpus* in the test suites), which
// replay every file of tests/fuzz/corpus/<target>/ through the same function.
//
// The contract under test: for ANY input bytes the function returns or throws
// attnscope::Error; it never crashes, hangs, aborts, leaks or throws anything else.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "attnscope/error.h"

namespace attnscope::fuzz {

inline std::string as_text(const uint8_t* data, std::size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

/// Every file of tests/fuzz/corpus/<target>/ (sorted), for the regression tests.
inline std::vector<std::filesystem::path> corpus(const std::string& target) {
  std::vector<std::filesystem::path> files;
  const auto dir = std::filesystem::path(ATTNSCOPE_SOURCE_DIR) / "tests/fuzz/corpus" / target;
  if (std::filesystem::is_directory(dir))
    for (const auto& e : std::filesystem::directory_iterator(dir))
      if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

inline std::vector<uint8_t> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace attnscope::fuzz
