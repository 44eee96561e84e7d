// scripts/ctest-deadline.sh runs the asan suite in CI against a deadline (scripts/test-asan.sh,
// .ci/run): what the deadline cuts must not fail the run, and a test that failed before it
// must. Checked on a real ctest project whose tests sleep, pass and fail.
#include <chrono>
#include <ctime>
#include <fstream>
#include <string>

#include "test_support.h"

namespace {

using attnscope::test::run_process;
using attnscope::test::TempDir;

// A ctest project: two 60-second tests that go first (the largest COST), one that fails, two
// that pass, and one that hangs past its own 2-second TIMEOUT.
std::string make_project(const TempDir& dir) {
  std::ofstream(dir / "CMakeLists.txt") << R"(cmake_minimum_required(VERSION 3.16)
project(deadline NONE)
enable_testing()
add_test(NAME slow1 COMMAND sleep 60)
add_test(NAME slow2 COMMAND sleep 60)
add_test(NAME fails COMMAND sh -c "exit 1")
add_test(NAME passes1 COMMAND true)
add_test(NAME passes2 COMMAND true)
add_test(NAME hangs COMMAND sleep 60)
set_tests_properties(hangs PROPERTIES TIMEOUT 2)
set_tests_properties(slow1 slow2 PROPERTIES COST 100)
)";
  const std::string build = dir / "build";
  const auto r = run_process("cmake -S '" + dir.path().string() + "' -B '" + build + "'");
  EXPECT_EQ(r.status, 0) << r.output;
  return build;
}

std::string script_in(const std::string& build, const std::string& args) {
  return "cd '" + build +
         "' && ATTNSCOPE_DEADLINE_MIN_S=1 '" ATTNSCOPE_SOURCE_DIR "/scripts/ctest-deadline.sh' " +
         args;
}

long long in_seconds(int s) {
  return static_cast<long long>(std::time(nullptr)) + s;
}

TEST(Scripts, CtestDeadlineCutsTestsWithoutFailingTheRun) {
  TempDir dir;
  const std::string build = make_project(dir);

  // Both slots hold the 60-second tests when the deadline comes: they are stopped, the other
  // three never start, and the run passes saying so.
  const auto start = std::chrono::steady_clock::now();
  auto r = run_process(script_in(build, std::to_string(in_seconds(6)) + " -j2 -E hangs"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("deadline: of 5 tests, 3 not started and 2 stopped at the deadline"),
            std::string::npos)
      << r.output;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(50)) << r.output;

  // The failing test ends beside a 60-second one that the deadline stops: it fails the run.
  r = run_process(script_in(build, std::to_string(in_seconds(6)) + " -j2 -R 'fails|slow1'"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("stopped at the deadline"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("FAILED:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("fails (Failed)"), std::string::npos) << r.output;

  // A test that ran out its own timeout before the deadline is a failure, not a cut.
  // (It ends 2-3 s after the start; the deadline counts from 5 s before it.)
  r = run_process(script_in(build, std::to_string(in_seconds(12)) + " -j2 -R 'hangs|slow1'"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("1 stopped at the deadline"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("hangs (Timeout before the deadline)"), std::string::npos) << r.output;

  // No deadline (0): plain ctest.
  r = run_process(script_in(build, "0 -R passes"));
  EXPECT_EQ(r.status, 0) << r.output;
  r = run_process(script_in(build, "0 -R fails"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("fails (Failed)"), std::string::npos) << r.output;

  // A deadline that has passed runs nothing (ctest would read its time of day as tomorrow's).
  r = run_process(script_in(build, std::to_string(in_seconds(-10)) + " -R passes"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("deadline: no time left"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("Passed"), std::string::npos) << r.output;
}

}  // namespace
