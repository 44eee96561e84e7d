#pragma once
// Helpers shared by every test executable: where the shared data lives, temporary folders,
// running a process and capturing its output.

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>

#include "attnscope/error.h"

namespace attnscope::test {

/// ../shared/data (or $ATTNSCOPE_DATA_DIR); empty when it is not there.
inline std::filesystem::path data_dir() {
  const char* env = std::getenv("ATTNSCOPE_DATA_DIR");
  std::filesystem::path dir = env && *env ? env : ATTNSCOPE_TEST_DATA_DIR;
  return std::filesystem::is_directory(dir) ? dir : std::filesystem::path();
}

/// Skips the current test (with a message) when ../shared/data is absent.
#define ATTNSCOPE_REQUIRE_DATA()                                               \
  do {                                                                         \
    if (::attnscope::test::data_dir().empty())                                 \
      GTEST_SKIP() << "shared data folder not found (" ATTNSCOPE_TEST_DATA_DIR \
                      "); set ATTNSCOPE_DATA_DIR to run this test";            \
  } while (0)

/// A fresh temporary folder, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("attnscope-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

struct ProcessResult {
  int status = -1;     ///< exit status
  std::string output;  ///< stdout and stderr together
};

/// Runs a shell command line, capturing stdout and stderr.
inline ProcessResult run_process(const std::string& command) {
  ProcessResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buffer{};
  std::size_t n = 0;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    result.output.append(buffer.data(), n);
  const int raw = pclose(pipe);
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return result;
}

/// Runs fn and returns the what() of the attnscope::Error it throws ("" when it throws none).
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

/// Debian's python3 (with torch, torchvision, h5py, cv2) — not the one first on PATH.
inline std::string python() {
  return ATTNSCOPE_PYTHON;
}

}  // namespace attnscope::test
