// The docs cite tests and source files as evidence (docs/reliability.md's tables, docs/vision.md,
// …); a renamed or deleted test or file leaves a citation that proves nothing. This checks every
// citation in README.md and docs/*.md against the tree: `Suite.Name` must be a TEST, TEST_F or
// TEST_P of tests/ (`Suite.*` a suite), and a repository path (`pipeline/…`, `tests/…`, globs
// and {a,b} alternatives included) must match a file or folder, and an include path of the
// common headers (`attnscope/error.h`) a header of common/attnscope/. It lives in test_runtime, the
// smallest test binary, because it needs no library.
#include <glob.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "test_support.h"

namespace fs = std::filesystem;

namespace {

const fs::path kSource = ATTNSCOPE_SOURCE_DIR;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<fs::path> files_under(const fs::path& dir, const std::set<std::string>& extensions) {
  std::vector<fs::path> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && extensions.count(e.path().extension().string()))
      out.push_back(e.path());
  return out;
}

bool matches_something(const std::string& pattern) {
  const auto full = (kSource / pattern).string();
  glob_t g{};
  const int rc = ::glob(full.c_str(), GLOB_BRACE | GLOB_NOSORT, nullptr, &g);
  const bool found = rc == 0 && g.gl_pathc > 0;
  ::globfree(&g);
  return found;
}

struct Citation {
  std::string doc;
  int line = 0;
  std::string text;
};

// Every `code span` of the docs, with its file and line.
std::vector<Citation> code_spans() {
  std::vector<fs::path> docs = files_under(kSource / "docs", {".md"});
  docs.push_back(kSource / "README.md");
  std::vector<Citation> out;
  const std::regex span("`([^`\n]+)`");
  for (const auto& doc : docs) {
    std::istringstream in(read_text(doc));
    std::string line;
    for (int n = 1; std::getline(in, line); ++n)
      for (std::sregex_iterator it(line.begin(), line.end(), span), end; it != end; ++it)
        out.push_back({fs::relative(doc, kSource).string(), n, (*it)[1].str()});
  }
  return out;
}

}  // namespace

TEST(Docs, EveryCitedTestAndSourcePathExists) {
  std::set<std::pair<std::string, std::string>> tests;
  std::set<std::string> suites;
  const std::regex test_macro(R"(\b(?:TEST|TEST_F|TEST_P|TYPED_TEST)\(\s*(\w+)\s*,\s*(\w+)\s*\))");
  for (const auto& f : files_under(kSource / "tests", {".cpp", ".h"})) {
    const auto text = read_text(f);
    for (std::sregex_iterator it(text.begin(), text.end(), test_macro), end; it != end; ++it) {
      tests.emplace((*it)[1].str(), (*it)[2].str());
      suites.insert((*it)[1].str());
    }
  }
  ASSERT_GT(tests.size(), 300u) << "the test sources were not found under " << kSource;

  // Suite.Name: CamelCase words, not a file name (`labels.csv`) or a placeholder (SUITE.TEST).
  const std::regex test_ref(
      R"((?:^|[^\w/.])([A-Z][A-Za-z0-9]*[a-z][A-Za-z0-9]*)\.([A-Z][A-Za-z0-9_]*|\*)(?![\w(]))");
  const std::regex path_ref(
      R"((?:^|[^\w./-])((?:bench|tests|docs|pipeline|models|datasets|preprocessing|runtime|common|tools|scripts|cmake|\.ci)/[\w./*{},-]*[\w*}]))");
  // Include paths of the common headers (`attnscope/folder_lock.h`): common/attnscope/….
  const std::regex include_ref(R"((?:^|[^\w./-])(attnscope/\w+\.h)\b)");
  int cited_tests = 0, cited_paths = 0;
  std::vector<std::string> missing;
  for (const auto& c : code_spans()) {
    const auto where = c.doc + ":" + std::to_string(c.line) + ": ";
    for (std::sregex_iterator it(c.text.begin(), c.text.end(), test_ref), end; it != end; ++it) {
      ++cited_tests;
      const auto suite = (*it)[1].str(), name = (*it)[2].str();
      const bool ok = name == "*" ? suites.count(suite) > 0 : tests.count({suite, name}) > 0;
      if (!ok) missing.push_back(where + suite + "." + name + " is not a test");
    }
    for (std::sregex_iterator it(c.text.begin(), c.text.end(), path_ref), end; it != end; ++it) {
      ++cited_paths;
      if (!matches_something((*it)[1].str()))
        missing.push_back(where + (*it)[1].str() + " matches no file");
    }
    for (std::sregex_iterator it(c.text.begin(), c.text.end(), include_ref), end; it != end; ++it) {
      ++cited_paths;
      if (!matches_something("common/" + (*it)[1].str()))
        missing.push_back(where + (*it)[1].str() + " is no header of common/attnscope/");
    }
  }
  // The docs cite well over a hundred of each; far fewer means the patterns stopped matching.
  EXPECT_GT(cited_tests, 100);
  EXPECT_GT(cited_paths, 100);
  std::string all;
  for (const auto& m : missing)
    all += "\n  " + m;
  EXPECT_TRUE(missing.empty()) << missing.size() << " citations point at nothing:" << all;
}
