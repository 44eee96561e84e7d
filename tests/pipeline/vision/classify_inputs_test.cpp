// pipeline/vision/classify: collect_inputs, the inputs of `attnscope classify`, against the
// files each test lays out itself (paths and ids written out by hand).

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "datasets/text/tokenizer.h"
#include "pipeline/vision/classify.h"
#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

void touch(const fs::path& path) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << "x";
}

void write_lines(const fs::path& path, const std::vector<std::string>& lines) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  for (const auto& line : lines)
    out << line << "\n";
}

// The current folder for one scope (collect_inputs resolves the lines of a list in the list's
// own folder; the hint compares with the current one).
class InFolder {
 public:
  explicit InFolder(const fs::path& folder) : previous_(fs::current_path()) {
    fs::current_path(folder);
  }
  ~InFolder() {
    std::error_code ec;
    fs::current_path(previous_, ec);
  }
  InFolder(const InFolder&) = delete;
  InFolder& operator=(const InFolder&) = delete;

 private:
  fs::path previous_;
};

std::vector<std::string> ids_of(const datasets::Dataset& ds) {
  std::vector<std::string> ids;
  for (const auto& s : ds.samples)
    ids.push_back(s.image_id);
  return ids;
}

TEST(ClassifyInputs, FoldersAreWalkedSortedWithoutHiddenEntriesAndRepeatedStemsGetSuffixes) {
  TempDir dir;
  const fs::path root = dir.path() / "images";
  touch(root / "b.jpg");
  touch(root / "a.png");
  touch(root / "sub" / "a.jpg");     // the stem "a" again: a~2
  touch(root / ".hidden.jpg");       // hidden file: skipped
  touch(root / ".cache" / "c.jpg");  // inside a hidden folder: skipped
  touch(root / "notes.txt");         // not an image, but an input (an error line later)
  const auto ds = pipeline::collect_inputs({root.string()});
  std::vector<std::string> paths;
  for (const auto& s : ds.samples)
    paths.push_back(s.path);
  EXPECT_EQ(paths, (std::vector<std::string>{(root / "a.png").string(), (root / "b.jpg").string(),
                                             (root / "notes.txt").string(),
                                             (root / "sub" / "a.jpg").string()}));
  EXPECT_EQ(ids_of(ds), (std::vector<std::string>{"a", "b", "notes", "a~2"}));
  EXPECT_TRUE(ds.warnings.empty());
}

// A file named like a repeat ("x~2.png") keeps its own name as its id wherever it comes in
// the inputs: a repeat of x before it takes the next free suffix (it took "x~2" and left the
// file "x~2~2" before).
TEST(ClassifyInputs, AFileNamedLikeARepeatKeepsItsOwnId) {
  TempDir dir;
  const fs::path one = dir.path() / "one", two = dir.path() / "two";
  touch(one / "x.png");
  touch(two / "x.png");
  touch(two / "x~2.png");
  touch(two / "x~3.png");
  const auto ds = pipeline::collect_inputs({one.string(), two.string(), (one / "x.png").string()});
  EXPECT_EQ(ids_of(ds), (std::vector<std::string>{"x", "x~4", "x~2", "x~3", "x~5"}));
}

// A list saved with classic Mac line ends (a lone CR) is one path per line, as with LF or CRLF:
// it was one path of all its lines, which failed as a missing file.
TEST(ClassifyInputs, AListWithLoneCarriageReturnsHoldsOnePathPerLine) {
  TempDir dir;
  touch(dir.path() / "a.png");
  touch(dir.path() / "b.png");
  touch(dir.path() / "sub" / "c.png");
  std::ofstream(dir.path() / "mac.txt", std::ios::binary)
      << "a.png\rb.png\r\r# note\rsub/c.png\r\n";
  const auto ds = pipeline::collect_inputs({"@" + (dir.path() / "mac.txt").string()});
  EXPECT_EQ(ids_of(ds), (std::vector<std::string>{"a", "b", "c"}));
  for (const auto& s : ds.samples)
    EXPECT_TRUE(fs::is_regular_file(s.path)) << s.path;
  // The 64 KiB bound is a line's, not the file's: 11,000 CR-ended lines (66 KB, no LF).
  std::string many;
  for (int i = 0; i < 11000; ++i)
    many += "a.png\r";
  std::ofstream(dir.path() / "many.txt", std::ios::binary) << many;
  EXPECT_EQ(pipeline::collect_inputs({"@" + (dir.path() / "many.txt").string()}).samples.size(),
            11000u);
  // Line numbers count each CR-ended line: line 6 is the NUL's.
  std::ofstream(dir.path() / "nul.txt", std::ios::binary) << "a.png\rb.png\r\r# note\rsub/c.png\r\n"
                                                          << std::string("x\0y", 3) << "\n";
  EXPECT_NE(test::error_of([&] {
              pipeline::collect_inputs({"@" + (dir.path() / "nul.txt").string()});
            }).find("line 6 holds a NUL byte"),
            std::string::npos);
}

// A file name that is not UTF-8 gets its bytes escaped in its id (`\xe9`, results.h5 stores
// UTF-8), and a backslash is escaped too, so that a file literally named `caf\xe9.png` keeps an
// id of its own: the two shared one, and --resume took one for the other.
TEST(ClassifyInputs, IdsOfNamesThatAreNotUtf8AreEscapedAndNameOneFileEach) {
  TempDir dir;
  touch(dir.path() / "caf\xe9.png");
  touch(dir.path() / "caf\\xe9.png");
  touch(dir.path() / "plain.png");
  const auto ds = pipeline::collect_inputs({dir.path().string()});
  std::set<std::string> ids;
  for (const auto& s : ds.samples) {
    ids.insert(s.image_id);
    // The id reads back to the file's own stem.
    EXPECT_EQ(datasets::text::unescaped_name(s.image_id), fs::path(s.path).stem().string());
  }
  EXPECT_EQ(ids, (std::set<std::string>{"caf\\xe9", "caf\\\\xe9", "plain"}));
  EXPECT_EQ(datasets::text::escaped_name("a\\b\xff\xc3\xa9"), "a\\\\b\\xff\xc3\xa9");
  EXPECT_EQ(datasets::text::unescaped_name("a\\\\b\\xff\\xZZ\\"), "a\\b\xff\\xZZ\\");
}

TEST(ClassifyInputs, ListLinesAndNestedListsAreTakenFromTheListsFolder) {
  TempDir dir;
  touch(dir.path() / "data" / "x.jpg");
  touch(dir.path() / "data" / "deep" / "y.png");
  const fs::path lists = dir.path() / "lists";
  write_lines(lists / "main.txt", {"# a comment", "", "../data/x.jpg\r", "../data/deep/y.png  ",
                                   "@more/inner.txt", (dir.path() / "data" / "x.jpg").string()});
  // A nested list's own lines are taken from its folder (lists/more), not from main.txt's.
  write_lines(lists / "more" / "inner.txt", {"../../data/deep/y.png"});

  // Run from somewhere else: the current folder plays no part.
  InFolder elsewhere(dir.path() / "data" / "deep");
  const auto ds = pipeline::collect_inputs({"@" + (lists / "main.txt").string()});
  ASSERT_EQ(ds.samples.size(), 4u);
  const std::vector<fs::path> expected{
      dir.path() / "data" / "x.jpg", dir.path() / "data" / "deep" / "y.png",
      dir.path() / "data" / "deep" / "y.png", dir.path() / "data" / "x.jpg"};
  for (std::size_t i = 0; i < expected.size(); ++i) {
    SCOPED_TRACE(ds.samples[i].path);
    EXPECT_TRUE(fs::exists(ds.samples[i].path));
    EXPECT_TRUE(fs::equivalent(ds.samples[i].path, expected[i]));
  }
  EXPECT_EQ(ids_of(ds), (std::vector<std::string>{"x", "y", "y~2", "x~2"}));
  EXPECT_TRUE(ds.warnings.empty()) << ds.warnings.front();
}

TEST(ClassifyInputs, AListWrittenFromTheCurrentFolderGetsOneHintAndItsLinesStayInputs) {
  TempDir dir;
  touch(dir.path() / "images" / "p.jpg");
  touch(dir.path() / "images" / "q.jpg");
  touch(dir.path() / "lists" / "images" / "q.jpg");  // q exists both ways: not counted
  // What `ls images/*.jpg > lists/run.txt` writes, run in dir.
  write_lines(dir.path() / "lists" / "run.txt",
              {"images/p.jpg", "images/q.jpg", "images/missing.jpg"});
  InFolder in_dir(dir.path());
  const auto ds = pipeline::collect_inputs({"@lists/run.txt"});
  // The rule stands (relative to the list's folder): p then fails as a missing file, q is found.
  ASSERT_EQ(ds.samples.size(), 3u);
  EXPECT_EQ(fs::path(ds.samples[0].path), fs::path("lists") / "images" / "p.jpg");
  EXPECT_FALSE(fs::exists(ds.samples[0].path));
  EXPECT_TRUE(fs::exists(ds.samples[1].path));
  ASSERT_EQ(ds.warnings.size(), 1u);
  const auto& w = ds.warnings.front();
  EXPECT_NE(w.find("lists/run.txt: 1 relative path (images/p.jpg) not found under the list's "
                   "folder 'lists' but found under the current folder"),
            std::string::npos)
      << w;

  // More than one: counted, the first named.
  touch(dir.path() / "images" / "missing.jpg");
  const auto again = pipeline::collect_inputs({"@lists/run.txt"});
  ASSERT_EQ(again.warnings.size(), 1u);
  EXPECT_NE(again.warnings.front().find("2 relative paths (first: images/p.jpg)"),
            std::string::npos)
      << again.warnings.front();

  // A nested list written the same way is read at once: its absence is the error, with the hint.
  write_lines(dir.path() / "part.txt", {"images/p.jpg"});
  write_lines(dir.path() / "lists" / "outer.txt", {"# parts", "@part.txt"});
  EXPECT_EQ(test::error_of([] { pipeline::collect_inputs({"@lists/outer.txt"}); }),
            "lists/outer.txt: line 2: the list '@part.txt' is not under the list's folder 'lists' "
            "but is under the current folder: relative paths in a list are taken from the list's "
            "folder; write them from there or give absolute paths");
  // A line "@" alone names no list.
  write_lines(dir.path() / "lists" / "lone.txt", {"@"});
  EXPECT_EQ(test::error_of([] { pipeline::collect_inputs({"@lists/lone.txt"}); }),
            "lists/lone.txt: line 1: '@' names no list");
  // A NUL byte (find -print0's list) is refused naming the line: the system opened the path up
  // to the NUL while the id came from the whole line (one image stored under another's id).
  {
    std::ofstream(dir.path() / "lists" / "nul.txt", std::ios::binary)
        << "./p.jpg\n"
        << std::string("./a.jpg\0./b.jpg", 15) << "\n";
  }
  EXPECT_EQ(test::error_of([] { pipeline::collect_inputs({"@lists/nul.txt"}); }),
            "lists/nul.txt: line 2 holds a NUL byte: a list holds one path per line (find "
            "-print, not -print0)");
  // A -print0 list of thousands of files is one line past 64 KiB: still named as such.
  {
    std::ofstream big(dir.path() / "lists" / "big.txt", std::ios::binary);
    for (int i = 0; i < 6000; ++i)
      big << "./images/img_" << 10000 + i << ".jpg" << '\0';
  }
  EXPECT_EQ(test::error_of([] { pipeline::collect_inputs({"@lists/big.txt"}); }),
            "lists/big.txt: line 1 holds a NUL byte: a list holds one path per line (find "
            "-print, not -print0)");
  // Trailing tabs and spaces are not part of a path; a line of them is blank.
  touch(dir.path() / "lists" / "t.jpg");
  write_lines(dir.path() / "lists" / "tabs.txt", {"\t", " \t ", "t.jpg\t "});
  const auto tabs = pipeline::collect_inputs({"@lists/tabs.txt"});
  ASSERT_EQ(tabs.samples.size(), 1u);
  EXPECT_EQ(tabs.samples[0].image_id, "t");
  // A file whose name starts with '@' is written ./@name.
  touch(dir.path() / "lists" / "@odd.jpg");
  write_lines(dir.path() / "lists" / "odd.txt", {"./@odd.jpg"});
  const auto odd = pipeline::collect_inputs({"@lists/odd.txt"});
  ASSERT_EQ(odd.samples.size(), 1u);
  EXPECT_TRUE(fs::exists(odd.samples[0].path));
  EXPECT_EQ(odd.samples[0].image_id, "@odd");

  // A list in the current folder: both rules agree, nothing to say.
  write_lines(dir.path() / "here.txt", {"images/p.jpg"});
  const auto here = pipeline::collect_inputs({"@here.txt"});
  ASSERT_EQ(here.samples.size(), 1u);
  EXPECT_TRUE(fs::exists(here.samples[0].path));
  EXPECT_TRUE(here.warnings.empty());
}

}  // namespace
}  // namespace attnscope
