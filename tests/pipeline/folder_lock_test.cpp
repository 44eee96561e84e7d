#include "attnscope/folder_lock.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "pipeline/h5.h"
#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;

// Forks a child that runs `body` with the write end of a pipe, on which it writes one byte
// once ready, and then exits; returns the child's pid and that byte (0 when none came).
std::pair<pid_t, char> fork_until_ready(const std::function<void(int)>& body) {
  int ready[2];
  if (::pipe(ready) != 0) return {-1, 0};
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(ready[0]);
    body(ready[1]);
    ::_exit(0);
  }
  ::close(ready[1]);
  char byte = 0;
  if (child < 0 || ::read(ready[0], &byte, 1) != 1) byte = 0;
  ::close(ready[0]);
  return {child, byte};
}

TEST(FolderLock, ASecondLockOnTheFolderIsRefusedUntilTheFirstIsReleased) {
  test::TempDir dir;
  if (!test::folders_lock(dir.path().string()))
    GTEST_SKIP() << "flock(2) on folders is not supported under " << dir.path();
  std::optional<FolderLock> first;
  first.emplace(dir.path().string(), "choose another --out");
  EXPECT_TRUE(first->locked());
  const auto error = test::error_of([&] { FolderLock second(dir.path().string(), "advice"); });
  EXPECT_EQ(error, dir.path().string() +
                       ": is in use by another attnscope run (it holds the folder's lock); advice");
  // Nothing was created in the folder: the lock is on the folder itself.
  EXPECT_TRUE(test::file_names(dir.path().string()).empty());
  first.reset();
  FolderLock again(dir.path().string(), "advice");
  EXPECT_TRUE(again.locked());
}

// The oracle is flock(2) itself, taken by another process: FolderLock refuses while that
// process holds the folder, and the kernel releases it when the process is killed (SIGKILL),
// so a killed run never blocks the next one.
TEST(FolderLock, AnotherProcessHoldsItUntilItIsKilled) {
  test::TempDir dir;
  if (!test::folders_lock(dir.path().string()))
    GTEST_SKIP() << "flock(2) on folders is not supported under " << dir.path();
  const auto [child, ok] = fork_until_ready([&](int ready) {
    const int fd = ::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY);
    const char held = (fd >= 0 && ::flock(fd, LOCK_EX) == 0) ? '1' : '0';
    (void)!::write(ready, &held, 1);
    while (true)
      ::pause();
  });
  ASSERT_GE(child, 0);
  ASSERT_EQ(ok, '1');
  const auto error = test::error_of([&] { FolderLock lock(dir.path().string(), "wait"); });
  EXPECT_NE(error.find("is in use by another attnscope run"), std::string::npos) << error;
  ::kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  FolderLock lock(dir.path().string(), "wait");
  EXPECT_TRUE(lock.locked());
}

// A child forked to check an HDF5 file (h5::read_in_child) shares its parent's open file
// descriptions, the folder lock among them: when the parent is killed during the check, the
// child must go with it, or the next run would find the folder locked by an orphan.
TEST(FolderLock, AKilledRunsCheckingChildDoesNotKeepTheLock) {
  test::TempDir dir;
  if (!test::folders_lock(dir.path().string()))
    GTEST_SKIP() << "flock(2) on folders is not supported under " << dir.path();
  // The "run": holds the lock, then checks a file in a child that takes long.
  const auto [run, started] = fork_until_ready([&](int ready) {
    try {
      FolderLock lock(dir.path().string(), "advice");
      pipeline::h5::read_in_child("file.h5", [&] {
        (void)!::write(ready, "1", 1);
        ::sleep(60);
      });
    } catch (...) {
    }
  });
  ASSERT_GE(run, 0);
  ASSERT_EQ(started, '1');  // the checking child runs, holding the lock
  EXPECT_NE(test::error_of([&] { FolderLock lock(dir.path().string(), "wait"); }), "");
  ::kill(run, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(run, &status, 0), run);
  // The orphan is killed by the kernel (PR_SET_PDEATHSIG) a moment later; without that it
  // would hold the lock for its whole minute. Wait up to 10 s.
  std::string error = "never tried";
  for (int i = 0; i < 200 && !error.empty(); ++i) {
    error = test::error_of([&] { FolderLock lock(dir.path().string(), "wait"); });
    if (!error.empty()) ::usleep(50 * 1000);
  }
  EXPECT_EQ(error, "");
}

TEST(FolderLock, AMissingFolderIsAnErrorNamingIt) {
  test::TempDir dir;
  const auto missing = dir / "absent";
  const auto error = test::error_of([&] { FolderLock lock(missing, "advice"); });
  EXPECT_EQ(error.rfind(missing + ": cannot open the folder", 0), 0u) << error;
}

}  // namespace
}  // namespace attnscope
