// End-to-end tests of `attnscope report`: a results.h5 written by h5py (independently of
// attnscope's writer), the report opened in Debian's headless Chromium, its DOM and numbers
// checked by tests/python/check_report.py (h5py + scikit-learn), its rendering checked for
// pixels, and the atomic write checked under a full disk and a kill.

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;

std::string exe() {
  return ATTNSCOPE_EXE;
}

std::string script(const std::string& name) {
  return std::string(ATTNSCOPE_SOURCE_DIR) + "/tests/python/" + name;
}

std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s)
    out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// A results.h5 fixture written by h5py (tests/python/make_results_fixture.py).
void make_fixture(const std::string& path, const std::string& flags) {
  const auto r = test::run_process(test::python() + " " + script("make_results_fixture.py") + " " +
                                   quoted(path) + " " + flags);
  ASSERT_EQ(r.status, 0) << r.output;
}

bool have_chromium() {
  return fs::exists("/usr/bin/chromium");
}

// Headless Chromium, its own profile folder, no network; `what` is "--dump-dom" or
// "--screenshot=PATH --window-size=W,H".
test::ProcessResult chromium(const test::TempDir& dir, const std::string& what,
                             const std::string& page) {
  // Chromium's own log lines go to stderr: kept out of the DOM on stdout.
  return test::run_process(
      "{ /usr/bin/chromium --headless --disable-gpu --no-sandbox "
      "--user-data-dir=" +
      quoted(dir / "chromium-profile") + " --virtual-time-budget=5000 --hide-scrollbars " + what +
      " " + quoted("file://" + page) + " 2>/dev/null; }");
}

#define REQUIRE_CHROMIUM()                                                                 \
  do {                                                                                     \
    if (!have_chromium()) GTEST_SKIP() << "chromium not installed (scripts/bootstrap.sh)"; \
  } while (0)

TEST(CliReport, ChromiumShowsEveryCardAndTheNumbersOfTheResultsFile) {
  REQUIRE_CHROMIUM();
  test::TempDir dir;
  make_fixture(dir / "results.h5", "--n 30 --errors 3 --tta --measures --evil --seed 1");
  const auto r = test::run_process(exe() + " report --results " + (dir / "results.h5") + " --out " +
                                   (dir / "report.html"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("report: 30 of 30 images, 3 failed inputs"), std::string::npos)
      << r.output;
  // The default title names the run's folder too (every classify run writes results.h5).
  EXPECT_NE(test::read_text(dir / "report.html")
                .find("<title>attnscope report: " + dir.path().filename().string() +
                      "/results.h5</title>"),
            std::string::npos);
  const auto dom = chromium(dir, "--dump-dom", dir / "report.html");
  ASSERT_EQ(dom.status, 0) << dom.output;
  ASSERT_NE(dom.output.find("data-ready=\"1\""), std::string::npos)
      << "the page's script did not finish";
  {
    std::ofstream out(dir / "dom.html");
    out << dom.output;
  }
  const auto check = test::run_process(
      test::python() + " " + script("check_report.py") + " " + quoted(dir / "results.h5") + " " +
      quoted(dir / "report.html") + " " + quoted(dir / "dom.html") + " --evil");
  EXPECT_EQ(check.status, 0) << check.output;
  EXPECT_NE(check.output.find("report ok"), std::string::npos) << check.output;
}

TEST(CliReport, UnlabelledResultsWithoutImagesStillMakeAPage) {
  REQUIRE_CHROMIUM();
  test::TempDir dir;
  make_fixture(dir / "results.h5", "--n 7 --errors 0 --unlabelled --no-images");
  const auto r = test::run_process(exe() + " report --results " + (dir / "results.h5") + " --out " +
                                   (dir / "report.html") + " --title 'My <run>'");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto html = test::read_text(dir / "report.html");
  EXPECT_NE(html.find("<title>My &lt;run&gt;</title>"), std::string::npos);
  const auto dom = chromium(dir, "--dump-dom", dir / "report.html");
  ASSERT_EQ(dom.status, 0) << dom.output;
  {
    std::ofstream out(dir / "dom.html");
    out << dom.output;
  }
  const auto check = test::run_process(
      test::python() + " " + script("check_report.py") + " " + quoted(dir / "results.h5") + " " +
      quoted(dir / "report.html") + " " + quoted(dir / "dom.html"));
  EXPECT_EQ(check.status, 0) << check.output;
}

// Labels of one class: no AUC. The summary line says n/a and why, as the page does (it printed
// "AUC nan (95% CI 0.000-0.000)").
TEST(CliReport, LabelsOfOneClassGiveNoAucInTheSummaryLine) {
  test::TempDir dir;
  make_fixture(dir / "results.h5", "--n 7 --errors 0 --no-images");
  const auto relabel = test::run_process(
      test::python() +
      " -c \"import h5py,sys; f=h5py.File(sys.argv[1],'a'); f['images/label'][...]=1\" " +
      quoted(dir / "results.h5"));
  ASSERT_EQ(relabel.status, 0) << relabel.output;
  const auto r = test::run_process(exe() + " report --results " + (dir / "results.h5") + " --out " +
                                   (dir / "report.html") + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("; AUC n/a ("), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("), balanced accuracy "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("AUC nan"), std::string::npos) << r.output;
}

TEST(CliReport, TopAndSortKeepTheWorstImages) {
  test::TempDir dir;
  make_fixture(dir / "results.h5", "--n 40 --errors 0 --measures --seed 2");
  const auto r = test::run_process(exe() + " report --results " + (dir / "results.h5") + " --out " +
                                   (dir / "report.html") + " --top 5 --sort stage3/mass_in_mask");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("report: 5 of 40 images"), std::string::npos) << r.output;
  // The five ids with the lowest stage3 mass_in_mask (h5py), in that order, lead the data.
  const auto want = test::run_process(
      test::python() + " -c \"import h5py,numpy as np; f=h5py.File('" + (dir / "results.h5") +
      "'); v=f['measures/stage3/mass_in_mask'][:]; v=np.where(np.isnan(v),np.inf,v); "
      "ids=f['images/id'].asstr()[:]; print(','.join(ids[np.argsort(v,kind='stable')[:5]]))\"");
  ASSERT_EQ(want.status, 0) << want.output;
  const auto got = test::run_process(
      test::python() + " -c \"import re,json; t=open('" + (dir / "report.html") +
      "').read(); d=json.loads(re.search(r'id=.report-data.>(.*?)</script>',t,re.S).group(1)); "
      "print(','.join(x['id'] for x in d['images']))\"");
  ASSERT_EQ(got.status, 0) << got.output;
  EXPECT_EQ(got.output, want.output);

  // The summary's bootstrap interval is the file's, whatever order and number of cards show
  // (it resampled in card order: --sort and --top moved it).
  std::vector<std::string> intervals;
  for (const char* flags : {"--sort index", "--sort probability", "--sort error --top 5"}) {
    const auto o = test::run_process(exe() + " report --results " + (dir / "results.h5") +
                                     " --out " + (dir / "ci.html") + " " + flags);
    ASSERT_EQ(o.status, 0) << o.output;
    const auto at = o.output.find("95% CI");
    ASSERT_NE(at, std::string::npos) << o.output;
    intervals.push_back(o.output.substr(at, o.output.find_first_of(")\n", at) - at));
  }
  EXPECT_EQ(intervals[1], intervals[0]);
  EXPECT_EQ(intervals[2], intervals[0]);

  // A MAP/MEASURE the file does not hold: a usage error (exit 2), as a word that is no key at
  // all is (BadResultsFilesGiveOneClearLine), listing the keys the file has.
  const auto bad = test::run_process(exe() + " report --results " + (dir / "results.h5") +
                                     " --out " + (dir / "x.html") + " --sort stage3/nonsense");
  EXPECT_EQ(bad.status, 2) << bad.output;
  EXPECT_NE(bad.output.find("unknown sort key 'stage3/nonsense'"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("stage3/mass_in_mask"), std::string::npos) << bad.output;
  EXPECT_EQ(bad.output.find("holds no measures"), std::string::npos) << bad.output;
  EXPECT_FALSE(fs::exists(dir / "x.html"));
  // A file without measures says what makes them.
  make_fixture(dir / "plain.h5", "--n 3 --errors 0 --seed 2");
  const auto none =
      test::run_process(exe() + " report --results " + (dir / "plain.h5") + " --out " +
                        (dir / "x.html") + " --sort gaussian/mass_in_mask");
  EXPECT_EQ(none.status, 2) << none.output;
  EXPECT_NE(none.output.find("(this file holds no measures: MAP/MEASURE keys need a classify run "
                             "with --faithfulness)"),
            std::string::npos)
      << none.output;
  EXPECT_FALSE(fs::exists(dir / "x.html"));
}

TEST(CliReport, RenderedPageIsNotBlank) {
  REQUIRE_CHROMIUM();
  test::TempDir dir;
  make_fixture(dir / "results.h5", "--n 12 --errors 1 --measures --seed 3");
  ASSERT_EQ(test::run_process(exe() + " report --results " + (dir / "results.h5") + " --out " +
                              (dir / "report.html"))
                .status,
            0);
  // A blank or white page gives 0 for all three statistics below. A quiet machine measured
  // 0.14, 49 and 0.0062; four renders at once (lazy thumbnails still decoding when the shot is
  // taken) 0.029, 27 and 0.0036: the bounds sit well below both, and a shot taken on a machine
  // so loaded that it falls below them is taken again (up to 3 shots; a blank page fails
  // every one). (Cards built by the script are counted by
  // ChromiumShowsEveryCardAndTheNumbersOfTheResultsFile through --dump-dom.)
  double ink = 0, spread = 0, saturated = 0;
  std::string shown;
  for (int shot_no = 0; shot_no < 3; ++shot_no) {
    fs::remove(dir / "page.png");
    const auto shot =
        chromium(dir, "--screenshot=" + quoted(dir / "page.png") + " --window-size=1280,3200",
                 dir / "report.html");
    ASSERT_TRUE(fs::exists(dir / "page.png")) << shot.output;
    // Pixel statistics: much ink, plots' colours and the JET overlays' saturated colours.
    const auto stats = test::run_process(
        test::python() + " -c \"import cv2,numpy as np; i=cv2.imread('" + (dir / "page.png") +
        "'); g=cv2.cvtColor(i,cv2.COLOR_BGR2GRAY); h=cv2.cvtColor(i,cv2.COLOR_BGR2HSV); "
        "print('%.4f %.2f %.5f' % ((g<200).mean(), g.std(), "
        "((h[...,1]>150)&(h[...,2]>100)).mean()))\"");
    ASSERT_EQ(stats.status, 0) << stats.output;
    std::istringstream(stats.output) >> ink >> spread >> saturated;
    shown += stats.output;
    if (ink > 0.01 && spread > 10.0 && saturated > 0.001) break;
  }
  EXPECT_GT(ink, 0.01) << shown;         // text, tables and plots drawn
  EXPECT_GT(spread, 10.0) << shown;      // not a flat page
  EXPECT_GT(saturated, 0.001) << shown;  // colour bars, overlays and plot colours
}

TEST(CliReport, BadResultsFilesGiveOneClearLine) {
  test::TempDir dir;
  {
    std::ofstream out(dir / "not.h5");
    out << "not hdf5";
  }
  const auto a = test::run_process(exe() + " report --results " + (dir / "not.h5") + " --out " +
                                   (dir / "r.html"));
  EXPECT_EQ(a.status, 1) << a.output;
  EXPECT_NE(a.output.find("not an HDF5 file"), std::string::npos) << a.output;
  const auto b = test::run_process(exe() + " report --results " + (dir / "missing.h5") + " --out " +
                                   (dir / "r.html"));
  EXPECT_EQ(b.status, 1) << b.output;
  EXPECT_NE(b.output.find("no such file"), std::string::npos) << b.output;
  // A newer schema and a file that is not a results file are refused by name.
  make_fixture(dir / "v2.h5", "--n 3");
  ASSERT_EQ(test::run_process(test::python() + " -c \"import h5py; f=h5py.File('" +
                              (dir / "v2.h5") + "','a'); f.attrs['schema_version']='2'\"")
                .status,
            0);
  const auto c = test::run_process(exe() + " report --results " + (dir / "v2.h5") + " --out " +
                                   (dir / "r.html"));
  EXPECT_EQ(c.status, 1) << c.output;
  EXPECT_NE(c.output.find("schema version '2'"), std::string::npos) << c.output;
  // Labels out of range (a crafted file): refused naming the dataset, no crash.
  make_fixture(dir / "bad.h5", "--n 3");
  ASSERT_EQ(test::run_process(test::python() + " -c \"import h5py; f=h5py.File('" +
                              (dir / "bad.h5") + "','a'); f['predictions/label'][1]=7\"")
                .status,
            0);
  const auto d = test::run_process(exe() + " report --results " + (dir / "bad.h5") + " --out " +
                                   (dir / "r.html"));
  EXPECT_EQ(d.status, 1) << d.output;
  EXPECT_NE(d.output.find("predictions/label"), std::string::npos) << d.output;
  // Values outside the schema (hand-edited with h5py): each refused naming what it is, where a
  // float label was truncated to another class and a threshold of 5 showed every image benign.
  const std::vector<std::pair<std::string, std::string>> crafted = {
      {"del f['images/label']; f['images/label']=np.array([0.7, 1.0, 0.0])",
       "/images/label: holds Double values, expected integer class indices"},
      {"f.attrs['threshold']='5'", "@threshold: is '5', expected a number in [0, 1] or null"},
      {"f.attrs['threshold']='[0.5]'", "@threshold: is '[0.5]', expected a number"},
      {"f.attrs['temperature']='-1'", "@temperature: is '-1', expected a positive number"},
      {"f.attrs['num_images']=''", "@num_images: is ''"},
      // @num_errors as @num_images: "-3" left a failed input off the page, "1abc" read as 1.
      {"f.attrs['num_errors']='-3'", "@num_errors: is '-3', expected a row count"},
      {"f.attrs['num_errors']='1abc'", "@num_errors: is '1abc', expected a row count"},
      {"f.attrs['num_errors']='99999999999999999999'", "@num_errors: is '99999999999999999999'"},
      // Images of other numbers were converted to uint8 on reading: floats in [0, 1] drew a
      // black picture, 16-bit values a white one.
      {"x=f['images/preprocessed'][()]/255.0; del f['images/preprocessed']; "
       "f['images/preprocessed']=x.astype(np.float32)",
       "/images/preprocessed: holds float32 values, expected uint8 RGB (0..255)"},
      {"x=f['images/preprocessed'][()]; del f['images/preprocessed']; "
       "f['images/preprocessed']=x.astype(np.uint16)*257",
       "/images/preprocessed: holds uint16 values, expected uint8 RGB (0..255)"},
      // What reads outside the file, refused before anything is read: an external link (to a
      // FIFO, which hung every reader in open()), external raw storage (a local file's bytes
      // were shown in the page) and a virtual dataset.
      {"del f['images/id']; f['images/id']=h5py.ExternalLink('" + dir / "fifo" + "', '/x')",
       "/images/id: is a link into another file (or of a user-defined kind): no file attnscope "
       "writes holds one, and it is not followed (a crafted file?)"},
      {"del f['predictions/label']; f.create_dataset('predictions/label', shape=(3,), "
       "dtype='<i8', external=[('" +
           dir / "secret" + "', 0, 24)])",
       "/predictions/label: keeps its data in other files (HDF5 external storage)"},
      {"l=h5py.VirtualLayout(shape=(3,), dtype='<i8'); l[:]=h5py.VirtualSource('" +
           dir / "other.h5" +
           "', 'x', shape=(3,)); del f['predictions/label']; "
           "f.create_virtual_dataset('predictions/label', l)",
       "/predictions/label: is a virtual dataset (its data in other files)"},
  };
  ASSERT_EQ(::mkfifo((dir / "fifo").c_str(), 0600), 0);
  std::ofstream(dir / "secret") << "SECRET-TOKEN-01234567890";
  for (std::size_t i = 0; i < crafted.size(); ++i) {
    const auto file = dir / ("crafted" + std::to_string(i) + ".h5");
    make_fixture(file, "--n 3");
    const auto py =
        test::run_process(test::python() + " -c \"import h5py, numpy as np; f=h5py.File('" + file +
                          "','a'); " + crafted[i].first + "\" 2>&1");
    ASSERT_EQ(py.status, 0) << py.output;
    const auto e = test::run_process("timeout 120 " + exe() + " report --results " + file +
                                     " --out " + (dir / "r.html") + " 2>&1");
    EXPECT_EQ(e.status, 1) << crafted[i].first << "\n" << e.output;
    EXPECT_NE(e.output.find(crafted[i].second), std::string::npos) << crafted[i].first << "\n"
                                                                   << e.output;
    EXPECT_EQ(std::count(e.output.begin(), e.output.end(), '\n'), 1) << e.output;
  }
  EXPECT_FALSE(fs::exists(dir / "r.html"));
  // A sort key that is neither a fixed key nor MAP/MEASURE is a usage error (exit 2) naming the
  // keys, before the file is read.
  const auto s = test::run_process(exe() + " report --results " + (dir / "missing.h5") + " --out " +
                                   (dir / "r.html") + " --sort bogus 2>&1");
  EXPECT_EQ(s.status, 2) << s.output;
  EXPECT_NE(s.output.find("--sort 'bogus' is not a sort key: expected one of index, id, "
                          "probability, uncertainty, error, or MAP/MEASURE"),
            std::string::npos)
      << s.output;
}

// Non-finite map values (a crafted or broken file) are drawn as 0 and said to be there, where
// the map was blank without a word; control characters of --title never reach the HTML.
TEST(CliReport, NonFiniteMapsAndControlCharactersAreShownAsSuch) {
  test::TempDir dir;
  make_fixture(dir / "nan.h5", "--n 4 --seed 3");
  const auto py = test::run_process(
      test::python() + " -c \"import h5py, numpy as np; f=h5py.File('" + (dir / "nan.h5") +
      "','a'); d=f['attention/stage3']; v=d[1]; v[0,0]=np.nan; v[1,1]=np.inf; v[2,2]=-np.inf; "
      "d[1]=v\" 2>&1");
  ASSERT_EQ(py.status, 0) << py.output;
  const auto r =
      test::run_process(exe() + " report --results " + (dir / "nan.h5") + " --out " +
                        (dir / "r.html") + " --title \"$(printf 'a\\001b\\033c\\177d\\te')\" 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(":/attention/stage3 holds 3 non-finite values (NaN or infinity), "
                          "shown as 0"),
            std::string::npos)
      << r.output;
  const auto html = test::read_text(dir / "r.html");
  EXPECT_NE(html.find("Damaged file:"), std::string::npos);
  EXPECT_NE(html.find("<title>a\xEF\xBF\xBD"
                      "b\xEF\xBF\xBD"
                      "c\xEF\xBF\xBD"
                      "d\te</title>"),
            std::string::npos);
  for (char c = 1; c < 0x20; ++c)
    if (c != '\t' && c != '\n' && c != '\r') {
      EXPECT_EQ(html.find(c), std::string::npos)
          << "control character " << int(c) << " in the page";
    }
  EXPECT_EQ(html.find('\x7f'), std::string::npos);
}

// Datasets shorter than @num_images (damage: a killed run leaves them longer, never shorter):
// the report shows the rows every dataset holds and says which dataset was short, on stderr and
// on the page (a short images/index ended in LibTorch's "start (0) + length (10) exceeds").
TEST(CliReport, ShortDatasetsAreReportedAsDamageAndTheRowsTheyHoldShown) {
  test::TempDir dir;
  make_fixture(dir / "short.h5", "--n 10 --seed 6");
  const auto py = test::run_process(
      test::python() + " -c \"import h5py, numpy as np; f=h5py.File('" + (dir / "short.h5") +
      "','a'); p=f['images/preprocessed'][:6]; a=dict(f['images/preprocessed'].attrs); "
      "del f['images/preprocessed']; d=f.create_dataset('images/preprocessed', data=p); "
      "[d.attrs.__setitem__(k, v) for k, v in a.items()]; "
      "i=f['images/index'][:4]; del f['images/index']; f.create_dataset('images/index', "
      "data=i)\" 2>&1");
  ASSERT_EQ(py.status, 0) << py.output;
  const auto r = test::run_process(exe() + " report --results " + (dir / "short.h5") + " --out " +
                                   (dir / "r.html") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: " + dir / "short.h5" +
                          ":/images/preprocessed holds 6 rows but @num_images is 10: the file is "
                          "damaged"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("report: 4 of 4 images"), std::string::npos) << r.output;
  const auto html = test::read_text(dir / "r.html");
  EXPECT_NE(html.find("Damaged file:"), std::string::npos);
  // A short per-image measure is the same damage (it stopped the report).
  make_fixture(dir / "short_measure.h5", "--n 8 --seed 6 --measures");
  const auto cut = test::run_process(
      test::python() + " -c \"import h5py; f=h5py.File('" + (dir / "short_measure.h5") +
      "','a'); v=f['measures/stage3/mass_in_mask'][:5]; del f['measures/stage3/mass_in_mask']; "
      "f['measures/stage3/mass_in_mask']=v\" 2>&1");
  ASSERT_EQ(cut.status, 0) << cut.output;
  const auto m = test::run_process(exe() + " report --results " + (dir / "short_measure.h5") +
                                   " --out " + (dir / "m.html") + " 2>&1");
  EXPECT_EQ(m.status, 0) << m.output;
  EXPECT_NE(m.output.find(":/measures/stage3/mass_in_mask holds 5 rows but @num_images is 8"),
            std::string::npos)
      << m.output;
  EXPECT_NE(m.output.find("report: 5 of 5 images"), std::string::npos) << m.output;
}

// A results.h5 of a run that did not finish (SIGKILL or SIGTERM before its end) is reported
// with a warning that says so (merge refuses it), and a @maps naming a map /attention lacks
// (classify lists exactly what it writes) is named too (probe findings: both went unsaid).
TEST(CliReport, AnUnfinishedRunAMapListedButAbsentAndARepeatedIdAreSaid) {
  test::TempDir dir;
  make_fixture(dir / "u.h5", "--n 6 --seed 6");
  const auto py =
      test::run_process(test::python() + " -c \"import h5py, json; f=h5py.File('" + (dir / "u.h5") +
                        "','a'); f.attrs['finished_at'] = ''; "
                        "f.attrs['maps'] = json.dumps(json.loads(f.attrs['maps']) + ['rollout']); "
                        "f['images/id'][3] = f['images/id'][1]\" 2>&1");
  ASSERT_EQ(py.status, 0) << py.output;
  const auto r = test::run_process(exe() + " report --results " + (dir / "u.h5") + " --out " +
                                   (dir / "r.html") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: " + dir / "u.h5" +
                          " is from a classify run that did not finish (finished_at is empty): "
                          "the report shows the 6 images stored so far; complete it with the "
                          "same classify command and --resume\n"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("warning: " + dir / "u.h5" +
                          ":/@maps lists \"rollout\", which /attention does not hold: not "
                          "shown\n"),
            std::string::npos)
      << r.output;
  // An id in two rows (an edited file): said once, naming both rows.
  EXPECT_NE(r.output.find(":/images/id holds '"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("' in rows 1 and 3: the file is damaged or was edited\n"),
            std::string::npos)
      << r.output;
  const auto html = test::read_text(dir / "r.html");
  EXPECT_NE(html.find("<b>Unfinished run:</b>"), std::string::npos);
  EXPECT_NE(html.find("<b>Damaged file:</b>"), std::string::npos);
  // Finished, as the fixture writes it: neither warning.
  make_fixture(dir / "f.h5", "--n 6 --seed 6");
  const auto f = test::run_process(exe() + " report --results " + (dir / "f.h5") + " --out " +
                                   (dir / "f.html") + " 2>&1");
  EXPECT_EQ(f.status, 0) << f.output;
  EXPECT_EQ(f.output.find("warning"), std::string::npos) << f.output;
}

// A damaged chunk (its deflate stream or checksum does not hold) is the damage of the images it
// holds: their cards show what can be read, one line names the rows, and every other image is
// shown (one damaged map chunk stopped the whole report).
TEST(CliReport, ADamagedChunkIsItsImagesOwnAndTheOtherImagesAreShown) {
  test::TempDir dir;
  make_fixture(dir / "d.h5", "--n 6 --seed 3 --measures");
  {
    // Row 4's picture, row 2's stage3 map, and rows 2-3 of a measure rewritten in chunks of two
    // rows with Fletcher-32 (as classify writes measures), each chunk overwritten in place.
    std::ofstream py(dir / "damage.py");
    py << "import sys, h5py\n"
          "path = sys.argv[1]\n"
          "with h5py.File(path, 'a') as f:\n"
          "    v = f['measures/stage3/deletion_auc'][:]\n"
          "    del f['measures/stage3/deletion_auc']\n"
          "    f.create_dataset('measures/stage3/deletion_auc', data=v, chunks=(2,), "
          "fletcher32=True)\n"
          "spots = []\n"
          "with h5py.File(path, 'r') as f:\n"
          "    for name, row in (('images/preprocessed', 4), ('attention/stage3', 2),\n"
          "                      ('measures/stage3/deletion_auc', 2)):\n"
          "        c = f[name].id.get_chunk_info_by_coord((row,) + (0,) * (f[name].ndim - 1))\n"
          "        spots.append((c.byte_offset, c.size))\n"
          "with open(path, 'r+b') as out:\n"
          "    for offset, size in spots:\n"
          "        out.seek(offset)\n"
          "        out.write(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))\n";
  }
  const auto py = test::run_process(test::python() + " " + quoted(dir / "damage.py") + " " +
                                    quoted(dir / "d.h5"));
  ASSERT_EQ(py.status, 0) << py.output;
  const auto r = test::run_process(exe() + " report --results " + (dir / "d.h5") + " --out " +
                                   (dir / "r.html"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("report: 6 of 6 images"), std::string::npos) << r.output;
  const std::string file = dir / "d.h5";
  for (const std::string line :
       {":/images/preprocessed: 1 of its 6 rows cannot be read (a chunk's deflate stream is "
        "damaged: the file is damaged): row 4 ('img_00004'); its card shows no pictures\n",
        ":/attention/stage3: 1 of its 6 rows cannot be read (a chunk's deflate stream is "
        "damaged: the file is damaged): row 2 ('img_00002'); its card shows no stage3 map\n",
        ":/measures/stage3/deletion_auc: 2 of its 6 rows cannot be read ("})
    EXPECT_NE(r.output.find("warning: " + file + line), std::string::npos) << line << r.output;
  EXPECT_NE(r.output.find("row 2 ('img_00002') and row 3 ('img_00003'); their cards show it as "
                          "n/a\n"),
            std::string::npos)
      << r.output;
  const auto html = test::read_text(dir / "r.html");
  EXPECT_NE(html.find("<b>Damaged file:</b>"), std::string::npos);
  // A compression filter this HDF5 build lacks (h5py's lzf) is not damage: one line naming it.
  const auto lzf = test::run_process(
      test::python() + " -c \"import h5py; f = h5py.File('" + (dir / "d.h5") +
      "', 'a'); v = f['attention/gradcam'][:]; a = dict(f['attention/gradcam'].attrs); "
      "del f['attention/gradcam']; d = f.create_dataset('attention/gradcam', data=v, "
      "chunks=(1,) + v.shape[1:], compression='lzf'); [d.attrs.__setitem__(k, x) for k, x in "
      "a.items()]\" 2>&1");
  ASSERT_EQ(lzf.status, 0) << lzf.output;
  const auto l = test::run_process(exe() + " report --results " + (dir / "d.h5") + " --out " +
                                   (dir / "l.html"));
  EXPECT_EQ(l.status, 1) << l.output;
  EXPECT_NE(l.output.find("error: " + file +
                          ":/attention/gradcam: is compressed with HDF5 filter "
                          "32000 (lzf)"),
            std::string::npos)
      << l.output;
  // The page: every card, each with the pictures it has (6 inputs but one, 2 maps each but
  // one), the damaged ones saying so.
  if (!have_chromium()) GTEST_SKIP() << "chromium not installed (scripts/bootstrap.sh)";
  const auto dom = chromium(dir, "--dump-dom", dir / "r.html");
  ASSERT_EQ(dom.status, 0) << dom.output;
  ASSERT_NE(dom.output.find("data-ready=\"1\""), std::string::npos)
      << "the page's script did not finish";
  const auto count = [&](const std::string& what) {
    std::size_t n = 0;
    for (auto at = dom.output.find(what); at != std::string::npos;
         at = dom.output.find(what, at + 1))
      ++n;
    return n;
  };
  EXPECT_EQ(count("class=\"card "), 6u);
  EXPECT_EQ(count("<div class=\"cap\">input</div>"), 5u);
  EXPECT_EQ(count("<div class=\"cap\">stage3</div>"), 4u);
  EXPECT_EQ(count("<div class=\"cap\">stage3 (unreadable)</div>"), 1u);
  EXPECT_EQ(count("<div class=\"cap\">gradcam</div>"), 5u);
  EXPECT_EQ(count("<div class=\"path\">stored picture unreadable (damaged file)</div>"), 1u);
}

// What an edited file can hold that classify never writes, shown as stored but said (probe
// findings: each went without a word): predicted labels that contradict their probabilities
// and threshold (or, without one, the most probable class), a map listed twice in @maps (drawn
// twice), an infinite measure (each lies in [0, 1]; NaN is one that does not apply).
TEST(CliReport, ContradictoryLabelsRepeatedMapsAndInfiniteMeasuresAreSaid) {
  test::TempDir dir;
  make_fixture(dir / "e.h5", "--n 6 --seed 3 --measures");
  const auto edit = [&](const std::string& code) {
    const auto py =
        test::run_process(test::python() + " -c \"import h5py, json, numpy as np; " +
                          "f = h5py.File('" + (dir / "e.h5") + "', 'a'); " + code + "\" 2>&1");
    ASSERT_EQ(py.status, 0) << py.output;
  };
  // Rows 1 and 4 flipped: the fixture's labels are p(class 1) >= 0.5, as classify's.
  edit(
      "l = f['predictions/label']; v = l[:]; v[1] = 1 - v[1]; v[4] = 1 - v[4]; l[...] = v; "
      "f.attrs['maps'] = json.dumps(json.loads(f.attrs['maps']) * 3 + ['gone', 'gone']); "
      "m = f['measures/gradcam/deletion_auc']; x = m[:]; x[0] = np.inf; x[2] = -np.inf; "
      "m[...] = x; p = f['predictions/probability'][1]; "
      "open('" +
      dir / "p1" + "', 'w').write('%.3f' % p[1])");
  const auto p1 = test::read_text(dir / "p1");
  const auto r = test::run_process(exe() + " report --results " + (dir / "e.h5") + " --out " +
                                   (dir / "r.html"));
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string file = dir / "e.h5";
  for (const std::string& line : std::vector<std::string>{
           ":/predictions/label: 2 of its 6 rows disagree with their probabilities and the "
           "threshold 0.500 (first: row 1 ('img_00001'), class " +
               std::string(p1 >= "0.500" ? "0" : "1") + " where p(class 1) = " + p1 +
               "): the file is damaged or was edited; shown as stored\n",
           ":/@maps lists \"stage3\" more than once: shown once\n",
           ":/@maps lists \"gradcam\" more than once: shown once\n",
           ":/measures/gradcam/deletion_auc holds 2 infinite values, which no measure has: shown "
           "as "
           "n/a\n"})
    EXPECT_NE(r.output.find("warning: " + file + line), std::string::npos) << line << r.output;
  // Listed three times: said once; one /attention lacks, listed twice: said as such, once.
  EXPECT_NE(r.output.find("warning: " + file +
                          ":/@maps lists \"gone\", which /attention does not hold: not shown\n"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("\"gone\" more than once"), std::string::npos) << r.output;
  EXPECT_EQ(
      r.output.find(":/@maps lists \"stage3\"", r.output.find(":/@maps lists \"stage3\"") + 1),
      std::string::npos)
      << r.output;
  const auto html = test::read_text(dir / "r.html");
  EXPECT_NE(html.find("<b>Damaged file:</b>"), std::string::npos);
  EXPECT_NE(html.find("\"maps\":[\"stage3\",\"gradcam\"]"), std::string::npos);
  // Without a threshold the rule is the most probable class: the same two rows.
  edit("f.attrs['threshold'] = 'null'");
  const auto a = test::run_process(exe() + " report --results " + (dir / "e.h5") + " --out " +
                                   (dir / "a.html"));
  ASSERT_EQ(a.status, 0) << a.output;
  EXPECT_NE(a.output.find(":/predictions/label: 2 of its 6 rows disagree with their "
                          "probabilities and the most probable class (first: row 1"),
            std::string::npos)
      << a.output;
  // As classify wrote it: no line (the other tests' fixtures say nothing either).
  make_fixture(dir / "f.h5", "--n 40 --seed 9 --measures --tta");
  const auto f = test::run_process(exe() + " report --results " + (dir / "f.h5") + " --out " +
                                   (dir / "f.html"));
  EXPECT_EQ(f.status, 0) << f.output;
  EXPECT_EQ(f.output.find("warning"), std::string::npos) << f.output;
}

// A softmax map's colour bar is scaled to the rows that can be read (an unreadable row's zeros
// pulled the 99th percentile of the maxima down), and the pictures' line counts the rows
// shown, not the file's (report reads the pictures of the --top images only).
TEST(CliReport, AnUnreadableRowNeitherScalesAMapNorCountsAsShown) {
  test::TempDir dir;
  make_fixture(dir / "d.h5", "--n 4 --seed 7");
  {
    std::ofstream py(dir / "damage.py");
    py << "import sys, h5py\n"
          "path = sys.argv[1]\n"
          "spots = []\n"
          "with h5py.File(path, 'r') as f:\n"
          "    m = f['attention/stage3']\n"
          "    print('%.1f' % (m[3].max() * m.shape[1] * m.shape[2]))\n"
          "    for name, row in [('attention/stage3', r) for r in (0, 1, 2)] + \\\n"
          "                     [('images/preprocessed', r) for r in range(4)]:\n"
          "        c = f[name].id.get_chunk_info_by_coord((row,) + (0,) * (f[name].ndim - 1))\n"
          "        spots.append((c.byte_offset, c.size))\n"
          "with open(path, 'r+b') as out:\n"
          "    for offset, size in spots:\n"
          "        out.seek(offset)\n"
          "        out.write(bytes(range(256)) * (size // 256) + bytes(range(size % 256)))\n";
  }
  const auto py = test::run_process(test::python() + " " + quoted(dir / "damage.py") + " " +
                                    quoted(dir / "d.h5"));
  ASSERT_EQ(py.status, 0) << py.output;
  const std::string peak = py.output.substr(0, py.output.find('\n'));
  ASSERT_GE(std::stod(peak), 10.0) << "the fixture's bump changed: the bar shows 2 decimals";
  const auto r = test::run_process(exe() + " report --results " + (dir / "d.h5") + " --out " +
                                   (dir / "r.html") + " --top 3");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(":/images/preprocessed: 3 of the 3 rows shown cannot be read ("),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(":/attention/stage3: 3 of its 4 rows cannot be read ("),
            std::string::npos)
      << r.output;
  const auto html = test::read_text(dir / "r.html");
  const auto bar = html.find("<div class=\"cbar\" data-map=\"stage3\">");
  ASSERT_NE(bar, std::string::npos);
  const auto ends = html.find("<div class=\"ends\">", bar);
  ASSERT_NE(ends, std::string::npos);
  const auto last = html.find("</span></div></div>", ends);
  const auto top = html.substr(html.rfind("<span>", last) + 6);
  EXPECT_EQ(top.substr(0, top.find('<')), peak);
}

// report and merge read the rows a file counts (@num_images, @num_errors), not every row its
// datasets claim: a crafted file declaring 2^31 ids and 2^30 labels and probabilities beside 8
// images (chunks never written: a few KB) needs 64 GB for the id list alone and 8 GB for
// each of the others. Under an 8 GB address-space limit both end as usual (merge took 4.9 GB
// and 11 s for 2^25 ids before, report 1.7 GB).
TEST(CliReport, ReportAndMergeReadOnlyTheRowsAFileCounts) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "AddressSanitizer reserves more address space than the limit";
#endif
  test::TempDir dir;
  make_fixture(dir / "big.h5", "--n 8 --errors 2 --seed 3");
  const auto py = test::run_process(
      test::python() + " -c \"import h5py; f = h5py.File('" + (dir / "big.h5") + "', 'a')\n" +
      "for name in ('images/id', 'images/source_path', 'errors/reason'):\n"
      "    v = f[name][:]; del f[name]\n"
      "    d = f.create_dataset(name, (2**31,), dtype=h5py.string_dtype(), chunks=(4096,), "
      "maxshape=(None,))\n"
      "    d[:len(v)] = v\n"
      "for name in ('images/label', 'predictions/label', 'predictions/probability'):\n"
      "    v = f[name][:]; del f[name]\n"
      "    d = f.create_dataset(name, (2**30,) + v.shape[1:], dtype=v.dtype, chunks=(4096,) + "
      "v.shape[1:], maxshape=(None,) + v.shape[1:])\n"
      "    d[:len(v)] = v\n\" 2>&1");
  ASSERT_EQ(py.status, 0) << py.output;
  const std::string limited = "ulimit -v 8000000 && OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 exec ";
  const auto m = test::run_process(limited + exe() + " --threads 1 merge " + (dir / "big.h5") +
                                   " --out " + (dir / "merged.h5"));
  ASSERT_EQ(m.status, 0) << m.output;
  EXPECT_NE(m.output.find("merged 1 file: 8 images, 2 errors"), std::string::npos) << m.output;
  const auto back = test::run_process(test::python() + " -c \"import h5py; f = h5py.File('" +
                                      (dir / "merged.h5") +
                                      "', 'r'); print(len(f['images/id']), "
                                      "len(f['errors/reason']), f['images/id'][7].decode())\"");
  EXPECT_EQ(back.output, "8 2 img_00007\n");
  const auto r = test::run_process(limited + exe() + " --threads 1 report --results " +
                                   (dir / "big.h5") + " --out " + (dir / "r.html"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("report: 8 of 8 images, 2 failed inputs"), std::string::npos) << r.output;
}

// A shard whose strings are fixed-length (h5py writes numpy "S" arrays so) merges as its
// variable-length twin: report showed such a file and merge refused it. The merged file's
// strings are variable-length, as classify writes them, whichever shard comes first (and
// whatever filters and fill value its strings have), padding spaces dropped; the oracle is the
// merge of the untouched shards, read back by h5py. A fixed-length row is bounded in every
// shard, and a group where a string dataset belongs is said so.
TEST(CliReport, MergeReadsFixedLengthStringShardsAsReportDoes) {
  test::TempDir dir;
  make_fixture(dir / "a.h5", "--n 5 --errors 2 --seed 6");
  const std::string edit = R"(import h5py, numpy as np, shutil, sys
d = sys.argv[1] + '/'
strings = ('images/id', 'images/source_path', 'errors/id', 'errors/path', 'errors/reason')
shutil.copy(d + 'a.h5', d + 'b.h5')
with h5py.File(d + 'a.h5', 'r+') as f: f.attrs['shard'] = '0/2'
with h5py.File(d + 'b.h5', 'r+') as f:
    f.attrs['shard'] = '1/2'
    for name in ('images/id', 'errors/id'):
        f[name][...] = np.array(['b' + s for s in f[name].asstr()[()]], dtype=object)
    for name in ('images/index', 'errors/index'):
        f[name][...] = f[name][()] + 100
# af: NUL-padded, chunked with Fletcher-32 and a fill value (which a variable-length dataset
# cannot take); bf: padded with spaces (Fortran's way; HDF5 and h5py drop them), contiguous.
for s, spaces in (('a', False), ('b', True)):
    shutil.copy(d + s + '.h5', d + s + 'f.h5')
    with h5py.File(d + s + 'f.h5', 'r+') as f:
        for name in strings:
            v = [x.encode() for x in f[name].asstr()[()]]
            del f[name]
            size = max(map(len, v)) + 3
            if not spaces:
                f.create_dataset(name, data=np.array(v, dtype='S%d' % size), chunks=(2,),
                                 maxshape=(None,), fletcher32=True, fillvalue=b'?')
                continue
            t = h5py.h5t.C_S1.copy()
            t.set_size(size)
            t.set_strpad(h5py.h5t.STR_SPACEPAD)
            space = h5py.h5s.create_simple((len(v),))
            h5py.h5d.create(f.id, name.encode(), t, space).write(
                h5py.h5s.ALL, h5py.h5s.ALL, np.array([x.ljust(size) for x in v], dtype='S%d' % size),
                mtype=t)
        assert f['images/id'].dtype.kind == 'S'
shutil.copy(d + 'a.h5', d + 'g.h5')
with h5py.File(d + 'g.h5', 'r+') as f:
    del f['errors/reason']
    f.create_group('errors/reason')
# A row merge would copy at 2 GiB: 2,048 strings of 2^20 - 1 bytes (unwritten: a few KB), in
# the second shard only (the first holds the same shape variable-length).
shutil.copy(d + 'a.h5', d + 'wa.h5')
shutil.copy(d + 'bf.h5', d + 'wb.h5')
for s, dtype in (('wa', h5py.string_dtype()), ('wb', 'S%d' % (2**20 - 1))):
    with h5py.File(d + s + '.h5', 'r+') as f:
        f.create_dataset('images/extra', shape=(5, 2048), dtype=dtype, chunks=(1, 1))
)";
  { std::ofstream(dir / "edit.py") << edit; }
  const auto py =
      test::run_process(test::python() + " " + (dir / "edit.py") + " " + dir.path().string());
  ASSERT_EQ(py.status, 0) << py.output;
  for (const auto& [shards, out] :
       {std::pair{"a.h5 b.h5", "m.h5"}, std::pair{"af.h5 bf.h5", "mf.h5"},
        std::pair{"af.h5 b.h5", "mx.h5"}}) {
    const auto m = test::run_process("cd " + dir.path().string() + " && " + exe() + " merge " +
                                     shards + " --out " + out);
    ASSERT_EQ(m.status, 0) << shards << ": " << m.output;
    EXPECT_NE(m.output.find("merged 2 files: 10 images, 4 errors"), std::string::npos) << m.output;
  }
  const std::string compare = R"(import h5py, sys
def dump(path):
    out = {}
    def visit(name, o):
        if isinstance(o, h5py.Dataset):
            text = h5py.check_string_dtype(o.dtype)
            out[name] = (text.length if text else str(o.dtype),
                         o.asstr()[()].tolist() if text else o[()].tolist())
    with h5py.File(path, 'r') as f:
        f.visititems(visit)
    return out
d = sys.argv[1] + '/'
want = dump(d + 'm.h5')
assert want['images/id'][0] is None and len(want['images/id'][1]) == 10, want['images/id']
assert 'bimg_00004' in want['images/id'][1]
for other in ('mf.h5', 'mx.h5'):
    got = dump(d + other)
    bad = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    print(other, 'differs in', bad if bad else 'nothing')
)";
  { std::ofstream(dir / "compare.py") << compare; }
  const auto c =
      test::run_process(test::python() + " " + (dir / "compare.py") + " " + dir.path().string());
  EXPECT_EQ(c.output, "mf.h5 differs in nothing\nmx.h5 differs in nothing\n");
  const auto r = test::run_process(exe() + " report --results " + (dir / "mf.h5") + " --out " +
                                   (dir / "r.html"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("report: 10 of 10 images, 4 failed inputs"), std::string::npos)
      << r.output;
  const auto w = test::run_process(exe() + " merge " + (dir / "wa.h5") + " " + (dir / "wb.h5") +
                                   " --out " + (dir / "mw.h5"));
  EXPECT_EQ(w.status, 1) << w.output;
  EXPECT_NE(
      w.output.find("wb.h5:/images/extra: has rows of shape (rows, 2048), larger than the 1024 "
                    "MiB a results file's row can hold"),
      std::string::npos)
      << w.output;
  const auto g =
      test::run_process(exe() + " merge " + (dir / "g.h5") + " --out " + (dir / "mg.h5"));
  EXPECT_EQ(g.status, 1) << g.output;
  EXPECT_NE(g.output.find("g.h5:/errors/reason: is a group where a dataset belongs"),
            std::string::npos)
      << g.output;
}

TEST(CliReport, FullDiskLeavesThePreviousReportIntact) {
  test::TempDir dir;
  make_fixture(dir / "results.h5", "--n 20 --seed 4");
  const std::string cmd =
      exe() + " report --results " + (dir / "results.h5") + " --out " + (dir / "report.html");
  ASSERT_EQ(test::run_process(cmd + " --title first").status, 0);
  const auto before = test::read_text(dir / "report.html");
  const auto r = test::run_with_file_size_limit(cmd + " --title second", 16 * 1024);
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("report.html"), std::string::npos) << r.output;
  EXPECT_EQ(test::read_text(dir / "report.html"), before);
  for (const auto& e : fs::directory_iterator(dir.path()))  // no temporary left behind
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
}

// A dead process's temporary beside --out (a killed report's) is removed by the next report;
// a recent one and a live process's stay.
TEST(CliReport, RemovesADeadRunsTemporaryBesideItsOutput) {
  test::TempDir dir;
  make_fixture(dir / "results.h5", "--n 4 --seed 2");
  const auto planted = test::plant_temporaries(dir.path() / "report.html");
  const auto r = test::run_process(exe() + " report --results " + (dir / "results.h5") + " --out " +
                                   (dir / "report.html"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_FALSE(fs::exists(planted[0]));
  EXPECT_TRUE(fs::exists(planted[1]));
  EXPECT_TRUE(fs::exists(planted[2]));
}

TEST(CliReport, KilledRunLeavesTheOldOrTheNewReport) {
  test::TempDir dir;
  make_fixture(dir / "results.h5", "--n 60 --seed 5");
  const std::string cmd =
      exe() + " report --results " + (dir / "results.h5") + " --out " + (dir / "report.html");
  ASSERT_EQ(test::run_process(cmd + " --title old").status, 0);
  const auto old = test::read_text(dir / "report.html");
  const auto restore = [&] { std::ofstream(dir / "report.html", std::ios::binary) << old; };
  const auto old_or_new = [&]() -> std::string {
    const auto now = test::read_text(dir / "report.html");
    const bool complete = now.size() > 1000 && now.substr(now.size() - 8) == "</html>\n";
    return now == old || (complete && now.find("<title>new</title>") != std::string::npos)
               ? ""
               : concat("neither the old nor a complete new report: ", now.size(), " bytes");
  };
  // Moments within the time an uninterrupted run takes here (at least one kill lands before
  // the run ends; the report is written in one piece at its end, through AtomicFile, whose own
  // tests stop a write half-way).
  const int ms = test::timed_run(cmd + " --title new");
  test::kill_at_random_moments(cmd + " --title new", ms, restore, old_or_new, 7, 4);
}

}  // namespace
}  // namespace attnscope
