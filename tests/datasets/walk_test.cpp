// Folder listing: one bad entry (a symlink loop, a dangling link) is one reported problem,
// and the good entries are still listed.

#include <sys/stat.h>

#include <fstream>

#include "datasets/walk.h"
#include "test_support.h"

namespace attnscope::datasets {
namespace {

namespace fs = std::filesystem;

TEST(ListFolder, SymlinkLoopsAndDanglingLinksAreReportedNotFatal) {
  test::TempDir dir;
  std::ofstream(dir / "b.jpg") << "x";
  std::ofstream(dir / "a.png") << "x";
  fs::create_directory(dir.path() / "sub");
  fs::create_symlink("loop1", dir.path() / "loop2");
  fs::create_symlink("loop2", dir.path() / "loop1");
  fs::create_symlink("self", dir.path() / "self");
  fs::create_symlink("missing.jpg", dir.path() / "dangling.jpg");
  fs::create_symlink("b.jpg", dir.path() / "link.jpg");
  const auto listing = list_folder(dir.path());
  ASSERT_EQ(listing.files.size(), 3u);
  EXPECT_EQ(listing.files[0].filename(), "a.png");  // sorted
  EXPECT_EQ(listing.files[1].filename(), "b.jpg");
  EXPECT_EQ(listing.files[2].filename(), "link.jpg");
  ASSERT_EQ(listing.folders.size(), 1u);
  std::string all;
  for (const auto& p : listing.problems)
    all += p + "\n";
  EXPECT_EQ(listing.problems.size(), 4u) << all;
  for (const char* name : {"loop1: symlink loop", "loop2: symlink loop", "self: symlink loop",
                           "dangling.jpg: dangling symlink"})
    EXPECT_NE(all.find(name), std::string::npos) << all;
}

// A FIFO (or socket, device) is one problem naming it: a FIFO named x.jpg was passed over
// without a word.
TEST(ListFolder, APipeIsReportedAndSkipped) {
  test::TempDir dir;
  std::ofstream(dir / "a.jpg") << "x";
  ASSERT_EQ(::mkfifo((dir / "pipe.jpg").c_str(), 0600), 0);
  const auto listing = list_folder(dir.path());
  ASSERT_EQ(listing.files.size(), 1u);
  EXPECT_EQ(listing.files[0].filename(), "a.jpg");
  ASSERT_EQ(listing.problems.size(), 1u);
  EXPECT_EQ(listing.problems[0],
            (dir / "pipe.jpg") + ": not a regular file (a pipe, socket or device), skipped");
}

// With skip_hidden, a hidden entry of any kind (file, folder, dangling link, FIFO) is neither
// listed nor a problem; the others are as without it.
TEST(ListFolder, HiddenEntriesAreSkippedWhenAsked) {
  test::TempDir dir;
  std::ofstream(dir / "a.jpg") << "x";
  std::ofstream(dir / "._a.jpg") << "x";
  fs::create_directory(dir.path() / ".git");
  fs::create_directory(dir.path() / "sub");
  fs::create_symlink("missing.jpg", dir.path() / ".dangling.jpg");
  fs::create_symlink("missing.jpg", dir.path() / "dangling.jpg");
  ASSERT_EQ(::mkfifo((dir / ".fifo").c_str(), 0600), 0);
  const auto all = list_folder(dir.path());
  EXPECT_EQ(all.files.size(), 2u);
  EXPECT_EQ(all.folders.size(), 2u);
  EXPECT_EQ(all.problems.size(), 3u);
  const auto shown = list_folder(dir.path(), /*skip_hidden=*/true);
  ASSERT_EQ(shown.files.size(), 1u);
  EXPECT_EQ(shown.files[0].filename(), "a.jpg");
  ASSERT_EQ(shown.folders.size(), 1u);
  EXPECT_EQ(shown.folders[0].filename(), "sub");
  ASSERT_EQ(shown.problems.size(), 1u);
  EXPECT_EQ(shown.problems[0], (dir / "dangling.jpg") + ": dangling symlink");
}

TEST(ListFolder, AMissingFolderIsAnError) {
  test::TempDir dir;
  EXPECT_NE(test::error_of([&] { list_folder(dir.path() / "nope"); }).find("not a folder"),
            std::string::npos);
}

}  // namespace
}  // namespace attnscope::datasets
