// End-to-end test of `attnscope demo`: the README's main command, from nothing to a report.

#include <filesystem>
#include <fstream>
#include <sstream>

#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;

std::string exe() {
  return ATTNSCOPE_EXE;
}

TEST(CliDemo, OneMinuteDemoWritesResultsAndReportAndPrintsTheMetrics) {
  test::TempDir dir;
  const std::string out = dir / "demo";
  // Fewer images than the defaults, so that the test stays short on a loaded machine.
  const auto r = test::run_process(exe() +
                                   " demo --minutes 1 --train-images 160 --test-images 24 "
                                   "--size 64 --out " +
                                   out);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(fs::exists(out + "/results/results.h5")) << r.output;
  ASSERT_TRUE(fs::exists(out + "/report.html")) << r.output;
  EXPECT_NE(r.output.find("results: " + out + "/results/results.h5"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("report:  " + out + "/report.html"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("AUC "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("balanced accuracy "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("attention mass inside the lesion: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("centre prior (gaussian "), std::string::npos) << r.output;
  // The printed AUC and balanced accuracy (3 decimals) are sklearn's on what results.h5
  // holds, within the printed rounding.
  const auto auc_at = r.output.find("  AUC ");
  ASSERT_NE(auc_at, std::string::npos) << r.output;
  const auto line = r.output.substr(auc_at, r.output.find('\n', auc_at) - auc_at);
  const auto oracle = test::run_process(
      test::python() +
      " -c \"import h5py, sys, sklearn.metrics as skm\n"
      "f = h5py.File(sys.argv[1], 'r')\n"
      "y = f['images/label'][...]; p = f['predictions/probability'][:, 1]\n"
      "print(skm.roc_auc_score(y, p), skm.balanced_accuracy_score(y, f['predictions/label'][...]), "
      "len(y))\" " +
      out + "/results/results.h5");
  ASSERT_EQ(oracle.status, 0) << oracle.output;
  double auc = 0, balanced = 0, printed_auc = -1, printed_balanced = -1;
  int images = 0;
  std::istringstream(oracle.output) >> auc >> balanced >> images;
  EXPECT_EQ(images, 24);
  std::istringstream(line.substr(6)) >> printed_auc;
  const auto ba_at = line.find("balanced accuracy ");
  ASSERT_NE(ba_at, std::string::npos) << line;
  std::istringstream(line.substr(ba_at + 18)) >> printed_balanced;
  EXPECT_NEAR(printed_auc, auc, 0.0015) << line;
  EXPECT_NEAR(printed_balanced, balanced, 0.0015) << line;
  EXPECT_NE(line.find(" on 24 held-out images"), std::string::npos) << line;
  // The report holds every held-out image and the summary metrics.
  std::ifstream in(out + "/report.html");
  std::stringstream html;
  html << in.rdbuf();
  EXPECT_NE(html.str().find("data-metric=\"auc\""), std::string::npos);
  EXPECT_NE(html.str().find("data-metric=\"classified\">24<"), std::string::npos);

  // A rerun into the same folder replaces the demo's files (a new report); a foreign folder is
  // refused.
  fs::remove(out + "/report.html");
  const auto again = test::run_process(exe() +
                                       " demo --minutes 0.1 --train-images 40 --test-images 8 "
                                       "--size 64 --out " +
                                       out);
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_TRUE(fs::exists(out + "/report.html")) << again.output;
  EXPECT_NE(again.output.find("on 8 held-out images"), std::string::npos) << again.output;
  {
    std::ofstream mine(dir / "notes.txt");
    mine << "not a demo";
  }
  const auto refused =
      test::run_process(exe() + " demo --minutes 0.1 --out " + dir.path().string());
  EXPECT_EQ(refused.status, 1) << refused.output;
  EXPECT_NE(refused.output.find("was not written by `attnscope demo`"), std::string::npos)
      << refused.output;
  EXPECT_TRUE(fs::exists(dir / "notes.txt"));
}

}  // namespace
}  // namespace attnscope
