// End-to-end tests of `attnscope preprocess`, `synth` and `cache`: a real process on a folder
// of good and bad files written by the test itself.

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;

std::string exe() {
  return ATTNSCOPE_EXE;
}

int count_lines_with(const std::string& text, const std::string& needle) {
  std::istringstream in(text);
  std::string line;
  int n = 0;
  while (std::getline(in, line))
    n += line.find(needle) != std::string::npos;
  return n;
}

TEST(CliPreprocess, GoesOnPastBadFilesWithOneLineEach) {
  test::TempDir dir;
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  cv::Mat bgr(60, 80, CV_8UC3, cv::Scalar(40, 90, 200));
  ASSERT_TRUE(cv::imwrite((in / "good.jpg").string(), bgr));
  ASSERT_TRUE(cv::imwrite((in / "deep.png").string(),
                          cv::Mat(60, 80, CV_16UC3, cv::Scalar(9000, 30000, 60000))));
  ASSERT_TRUE(cv::imwrite((in / "grey.png").string(), cv::Mat(60, 80, CV_8UC1, cv::Scalar(128))));
  ASSERT_TRUE(
      cv::imwrite((in / "rgba.png").string(), cv::Mat(60, 80, CV_8UC4, cv::Scalar(1, 2, 3, 4))));
  const auto cmyk = test::run_process(test::python() +
                                      " -c \"from PIL import Image; Image.new('CMYK', (80, 60), "
                                      "(0, 255, 255, 0)).save('" +
                                      (in / "cmyk.jpg").string() + "')\"");
  // PIL comes with python3-torchvision (bootstrap.sh); its absence is a broken setup, not a skip.
  ASSERT_EQ(cmyk.status, 0) << "writing a CMYK JPEG with PIL failed: " << cmyk.output;
  std::ofstream(in / "zero.jpg");
  std::ofstream(in / "text.png") << "this is not an image\n";
  std::vector<uint8_t> jpeg;
  cv::imencode(".jpg", bgr, jpeg);
  std::ofstream(in / "cut.jpg", std::ios::binary)
      .write(reinterpret_cast<const char*>(jpeg.data()),
             static_cast<std::streamsize>(jpeg.size() / 2));
  std::ofstream(in / "corrupt.jpg", std::ios::binary)
      .write("\xFF\xD8\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xFF\xD9", 22);
  const unsigned char huge[] = {0x89, 'P',  'N', 'G', '\r', '\n', 0x1A, '\n', 0,    0, 0,
                                13,   'I',  'H', 'D', 'R',  0,    0,    0x4E, 0x20, 0, 0,
                                0x4E, 0x20, 8,   2,   0,    0,    0,    0,    0,    0, 0};
  std::ofstream(in / "huge.png", std::ios::binary)
      .write(reinterpret_cast<const char*>(huge), sizeof huge);
  std::ofstream(in / "notes.txt") << "ignored";
  fs::create_directories(in / "benign");  // a subfolder: not read, and said so
  fs::create_directories(in / ".git");    // a hidden one: no one's images, not counted
  ASSERT_TRUE(cv::imwrite((in / "benign/inner.jpg").string(), bgr));

  const auto out = dir.path() / "out";
  const auto r = test::run_process(exe() + " preprocess --input " + in.string() + " --out " +
                                   out.string() + " --steps");
  EXPECT_EQ(r.status, 1) << r.output;
  const std::map<std::string, std::string> bad{{"zero.jpg", "empty file"},
                                               {"text.png", "not an image"},
                                               {"cut.jpg", "truncated"},
                                               {"corrupt.jpg", "no frame header"},
                                               {"huge.png", "too large"}};
  for (const auto& [name, problem] : bad) {
    EXPECT_EQ(count_lines_with(r.output, (in / name).string() + ": "), 1) << name << "\n"
                                                                          << r.output;
    EXPECT_NE(r.output.find((in / name).string() + ": "), std::string::npos);
    EXPECT_NE(r.output.find(problem), std::string::npos) << problem;
    EXPECT_FALSE(fs::exists(out / (fs::path(name).stem().string() + ".png"))) << name;
  }
  const std::vector<std::string> good{"good", "deep", "grey", "rgba", "cmyk"};
  for (const auto& name : good) {
    const auto img = cv::imread((out / (name + ".png")).string(), cv::IMREAD_UNCHANGED);
    ASSERT_FALSE(img.empty()) << name;
    EXPECT_EQ(img.size(), cv::Size(224, 224)) << name;
    EXPECT_EQ(img.type(), CV_8UC3) << name;
    EXPECT_TRUE(fs::exists(out / (name + "_steps.png"))) << name;
  }
  EXPECT_NE(r.output.find("preprocessed " + std::to_string(good.size()) + " of " +
                          std::to_string(good.size() + bad.size()) + " images"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("ignored 1 files"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("; did not read 1 subfolder (one folder's images are read, not its "
                          "subfolders')\n"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(out / "inner.png"));
}

// An output name past a file name's 255 bytes failed at the rename, after the work ("File name
// too long"): a 251-byte stem (the longest a ".jpg" input may have) shared by two inputs gives
// "<stem>.jpg.png" and "<stem>.jpg_steps.png" names; they are cut at a character boundary,
// with "~", and further where claim's ".2" would pass the limit again. A name that fits is
// not cut.
TEST(CliPreprocess, AnOutputNamePastTheFileNameLimitIsCut) {
  test::TempDir dir;
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  // "a" and 125 two-byte characters: the cut at byte 236 lands inside one unless it keeps to
  // the boundaries.
  std::string stem = "a";
  for (int i = 0; i < 125; ++i)
    stem += "\xc3\xa9";
  const cv::Mat bgr(40, 40, CV_8UC3, cv::Scalar(40, 90, 200));
  ASSERT_TRUE(cv::imwrite((in / (stem + ".jpg")).string(), bgr));
  ASSERT_TRUE(cv::imwrite((in / (stem + ".png")).string(), bgr));
  const auto out = dir.path() / "out";
  const auto r = test::run_process(exe() + " preprocess --input " + in.string() + " --out " +
                                   out.string() + " --steps");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(count_lines_with(r.output, "the output's name is cut to fit a file name's 255 bytes"),
            2)
      << r.output;
  EXPECT_NE(r.output.find("preprocessed 2 of 2 images"), std::string::npos) << r.output;
  const auto names = test::file_names(out.string());
  ASSERT_EQ(names.size(), 4u);
  for (const auto& name : names) {
    EXPECT_LE(name.size(), 255u) << name;
    // Cut after a whole character: "a", whole two-byte ones, then "~".
    const auto tilde = name.find('~');
    ASSERT_NE(tilde, std::string::npos) << name;
    EXPECT_EQ(tilde % 2, 1u) << name;
    EXPECT_EQ(name.find_first_not_of("\xc3\xa9", 1), tilde) << name;
    const auto img = cv::imread((out / name).string(), cv::IMREAD_COLOR);
    EXPECT_FALSE(img.empty()) << name;
  }
  // A 245-byte stem alone: "<stem>.png" and "<stem>_steps.png" fit, nothing is cut.
  const auto in2 = dir.path() / "in2";
  fs::create_directories(in2);
  const std::string fits = stem.substr(0, 245);
  ASSERT_TRUE(cv::imwrite((in2 / (fits + ".png")).string(), bgr));
  const auto out2 = dir.path() / "out2";
  const auto r2 = test::run_process(exe() + " preprocess --input " + in2.string() + " --out " +
                                    out2.string() + " --steps");
  ASSERT_EQ(r2.status, 0) << r2.output;
  EXPECT_EQ(r2.output.find("warning"), std::string::npos) << r2.output;
  EXPECT_EQ(test::file_names(out2.string()),
            (std::set<std::string>{fits + ".png", fits + "_steps.png"}));
}

TEST(CliPreprocess, StatsPrintsMeanAndStd) {
  test::TempDir dir;
  ASSERT_EQ(
      test::run_process(exe() + " synth --out " + dir.path().string() + " --count 4 --size 64")
          .status,
      0);
  const auto r = test::run_process(exe() + " preprocess stats --data " + (dir / "labels.csv"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("\"images\":4"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"mean\":["), std::string::npos) << r.output;
  // With no steps, the values are the images' own: every pixel of the four, per RGB channel
  // in [0, 1], against numpy over OpenCV's decoding (population std).
  std::ofstream(dir / "none.json") << "{\"steps\": []}\n";
  const auto raw = test::run_process(exe() + " preprocess stats --data " + (dir / "labels.csv") +
                                     " --config " + (dir / "none.json"));
  ASSERT_EQ(raw.status, 0) << raw.output;
  const auto oracle = test::run_process(
      test::python() +
      " -c \"import cv2, glob, json, sys, numpy as np\n"
      "got = json.loads(sys.argv[2])\n"
      "px = np.concatenate([cv2.imread(p)[:, :, ::-1].reshape(-1, 3) / 255.0\n"
      "                     for p in sorted(glob.glob(sys.argv[1] + '/images/*.png'))])\n"
      "assert got['images'] == 4 and len(px) == 4 * 64 * 64, (got, len(px))\n"
      "assert np.allclose(got['mean'], px.mean(0), atol=1e-5), (got['mean'], px.mean(0))\n"
      "assert np.allclose(got['std'], px.std(0), atol=1e-5), (got['std'], px.std(0))\n"
      "print('OK')\" " +
      dir.path().string() + " '" + raw.output.substr(0, raw.output.find('\n')) + "'");
  EXPECT_EQ(oracle.output, "OK\n") << raw.output;
  // stats reads no mask: a copy without masks/ is read ("4 problems: mask file not found"
  // before; split the same, CliFault.SplitReportsWriteErrorsAndKeepsThePreviousCsv).
  fs::remove_all(dir / "masks");
  const auto unmasked =
      test::run_process(exe() + " preprocess stats --data " + dir.path().string());
  EXPECT_EQ(unmasked.status, 0) << unmasked.output;
  EXPECT_NE(unmasked.output.find("\"images\":4"), std::string::npos) << unmasked.output;
  // A CSV whose images are nowhere: one line naming it, not one per sample (HAM10000: 10,015).
  ATTNSCOPE_REQUIRE_DATA();
  const auto ham = (test::data_dir() / "isic-formats" / "HAM10000_metadata.csv").string();
  const auto nowhere = test::run_process(exe() + " preprocess stats --data " + ham + " --limit 1");
  EXPECT_EQ(nowhere.status, 1) << nowhere.output;
  EXPECT_EQ(nowhere.output, "error: " + ham +
                                ": names no image file for any of its 10015 samples: give "
                                "--images with the folder of the images\n");
}

TEST(CliSynth, WritesImagesMasksAndLabelsDeterministically) {
  test::TempDir a, b;
  for (const auto* dir : {&a, &b}) {
    const auto r = test::run_process(exe() + " synth --out " + dir->path().string() +
                                     " --count 5 --seed 3 --size 48");
    ASSERT_EQ(r.status, 0) << r.output;
  }
  std::ifstream la(a / "labels.csv"), lb(b / "labels.csv");
  std::stringstream sa, sb;
  sa << la.rdbuf();
  sb << lb.rdbuf();
  EXPECT_EQ(sa.str(), sb.str());
  EXPECT_EQ(sa.str().rfind("image_id,label,mask,", 0), 0u);
  for (int i = 0; i < 5; ++i) {
    const std::string id = "synth_00000" + std::to_string(i);
    const auto x = cv::imread(a / ("images/" + id + ".png")),
               y = cv::imread(b / ("images/" + id + ".png"));
    ASSERT_EQ(x.size(), cv::Size(48, 48));
    EXPECT_EQ(cv::norm(x, y, cv::NORM_INF), 0.0);
    EXPECT_EQ(cv::imread(a / ("masks/" + id + ".png"), cv::IMREAD_UNCHANGED).type(), CV_8UC1);
  }
  const auto bad = test::run_process(exe() + " synth --out " + a.path().string() + " --size 8");
  EXPECT_EQ(bad.status, 2) << bad.output;
  EXPECT_NE(bad.output.find("--size must be in [32, 4096]"), std::string::npos) << bad.output;
  // --placement anywhere: mask centroids spread far beyond the centre placement's ±7%.
  const auto any = test::run_process(exe() + " synth --out " + (a / "any") +
                                     " --count 12 --size 64 --placement anywhere");
  ASSERT_EQ(any.status, 0) << any.output;
  double far = 0;
  for (int i = 0; i < 12; ++i) {
    const auto m =
        cv::moments(cv::imread(a / ("any/masks/synth_0000" + std::string(i < 10 ? "0" : "") +
                                    std::to_string(i) + ".png"),
                               cv::IMREAD_GRAYSCALE),
                    true);
    ASSERT_GT(m.m00, 0) << i;
    far = std::max(far, std::hypot(m.m10 / m.m00 / 64 - 0.5, m.m01 / m.m00 / 64 - 0.5));
  }
  EXPECT_GT(far, 0.2);
  // A smaller run into the same folder leaves only its own images: those past its count go,
  // a file of the user's stays.
  std::ofstream(a / "any/images/mine.png") << "x";
  std::ofstream(a / "any/images/synth_0000099.png") << "x";  // not a name synth writes
  std::ofstream(a / "any/images/synth_000050.png") << "x";   // not named by the earlier run
  const auto fewer = test::run_process(exe() + " synth --out " + (a / "any") +
                                       " --count 3 --size 64 --placement anywhere");
  ASSERT_EQ(fewer.status, 0) << fewer.output;
  EXPECT_EQ(test::file_names(a / "any/images"),
            (std::set<std::string>{"mine.png", "synth_000000.png", "synth_000001.png",
                                   "synth_000002.png", "synth_000050.png", "synth_0000099.png"}));
  EXPECT_EQ(test::file_names(a / "any/masks"),
            (std::set<std::string>{"synth_000000.png", "synth_000001.png", "synth_000002.png"}));
  // A run that fails part-way leaves no labels.csv (the old one stayed, naming the new images
  // with the old labels); the next run still removes the earlier images past its count, also
  // those the failed run did not reach.
  const auto run = [&](int count, int size) {
    return test::run_process(exe() + " synth --out " + (a / "again") + " --count " +
                             std::to_string(count) + " --size " + std::to_string(size));
  };
  ASSERT_EQ(run(8, 48).status, 0);
  std::filesystem::remove(a / "again/images/synth_000003.png");
  std::filesystem::create_directory(a / "again/images/synth_000003.png");  // cannot be written
  const auto failed = run(6, 64);
  ASSERT_NE(failed.status, 0) << failed.output;
  EXPECT_NE(failed.output.find("synth_000003.png"), std::string::npos) << failed.output;
  EXPECT_FALSE(std::filesystem::exists(a / "again/labels.csv"));
  EXPECT_EQ(cv::imread(a / "again/images/synth_000000.png").size(), cv::Size(64, 64));
  EXPECT_EQ(cv::imread(a / "again/images/synth_000005.png").size(), cv::Size(48, 48));
  std::filesystem::remove(a / "again/images/synth_000003.png");
  const auto fewer_again = run(2, 64);
  ASSERT_EQ(fewer_again.status, 0) << fewer_again.output;
  EXPECT_EQ(test::file_names(a / "again/images"),
            (std::set<std::string>{"synth_000000.png", "synth_000001.png"}));
  EXPECT_EQ(test::file_names(a / "again/masks"),
            (std::set<std::string>{"synth_000000.png", "synth_000001.png"}));
  EXPECT_EQ(test::file_names(a / "again"),
            (std::set<std::string>{"labels.csv", "images", "masks"}));
  // So are the images a larger run wrote before it failed, past what any labels.csv named.
  std::filesystem::create_directory(a / "again/images/synth_000003.png");
  ASSERT_NE(run(40, 48).status, 0);
  std::filesystem::remove(a / "again/images/synth_000003.png");
  ASSERT_EQ(run(2, 64).status, 0);
  EXPECT_EQ(test::file_names(a / "again/images"),
            (std::set<std::string>{"synth_000000.png", "synth_000001.png"}));
  // A file of someone else's under the name synth keeps its bound in is refused, left alone.
  std::ofstream(a / "again/.synth-extent") << "my notes\n";
  const auto theirs = run(2, 64);
  EXPECT_EQ(theirs.status, 1) << theirs.output;
  EXPECT_NE(theirs.output.find(".synth-extent: exists and was not written by attnscope synth"),
            std::string::npos)
      << theirs.output;
  EXPECT_EQ(test::read_text(a / "again/.synth-extent"), "my notes\n");
  const auto where =
      test::run_process(exe() + " synth --out " + a.path().string() + " --placement middle");
  EXPECT_EQ(where.status, 2) << where.output;
  EXPECT_NE(where.output.find("--placement must be centre or anywhere"), std::string::npos);
}

TEST(CliCache, CachesASyntheticDatasetForH5py) {
  test::TempDir dir;
  ASSERT_EQ(
      test::run_process(exe() + " synth --out " + dir.path().string() + " --count 6 --size 64")
          .status,
      0);
  const auto r = test::run_process(exe() + " cache --data " + (dir / "labels.csv") + " --out " +
                                   (dir / "c.h5") + " --size 32");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("cached 6 of 6 images"), std::string::npos) << r.output;
  const auto py = test::run_process(test::python() + " -c \"import h5py; f = h5py.File('" +
                                    (dir / "c.h5") + "'); print(f['images'].shape)\"");
  EXPECT_EQ(py.output, "(6, 32, 32, 3)\n");
  const auto bad = test::run_process(exe() + " cache --data " + (dir / "labels.csv") + " --out " +
                                     (dir / "d.h5") + " --format isic1999");
  EXPECT_EQ(bad.status, 2) << bad.output;
  EXPECT_NE(bad.output.find("unknown format 'isic1999'"), std::string::npos) << bad.output;
}

TEST(DataCliSplit, Ham10000SplitsKeepLesionsTogether) {
  ATTNSCOPE_REQUIRE_DATA();
  test::TempDir dir;
  const auto ham = (test::data_dir() / "isic-formats" / "HAM10000_metadata.csv").string();
  const auto r = test::run_process(exe() + " split --data " + ham + " --out " +
                                   (dir / "splits.csv") + " --multiclass --seed 3");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("wrote"), std::string::npos) << r.output;
  // Independently (Python's csv): no lesion in two splits, every image once.
  const auto py = test::run_process(
      test::python() + " -c \"import csv, collections; rows = list(csv.DictReader(open('" +
      (dir / "splits.csv") +
      "'))); g = collections.defaultdict(set); [g[r['group']].add(r['split']) for r in rows]; "
      "print(len(rows), len({r['image_id'] for r in rows}), max(len(s) for s in g.values()))\"");
  EXPECT_EQ(py.output, "10015 10015 1\n") << py.output;
  // Binary mode's --ak-benign changes nothing in multi-class mode: one warning line, and the
  // same splits.
  const auto ak = test::run_process(exe() + " split --data " + ham + " --out " +
                                    (dir / "splits_ak.csv") + " --multiclass --seed 3 --ak-benign");
  ASSERT_EQ(ak.status, 0) << ak.output;
  EXPECT_NE(ak.output.find("warning: --ak-benign is for benign/malignant labels; with "
                           "--multiclass actinic keratosis keeps its own class\n"),
            std::string::npos)
      << ak.output;
  EXPECT_EQ(r.output.find("--ak-benign"), std::string::npos) << r.output;
  EXPECT_EQ(test::read_text(dir / "splits_ak.csv"), test::read_text(dir / "splits.csv"));
  const auto bad = test::run_process(exe() + " split --data " + ham + " --out " + (dir / "x.csv") +
                                     " --val 0.6 --test 0.5");
  EXPECT_EQ(bad.status, 2) << bad.output;
}

TEST(DataCliSplit, ADatasetFolderIsReadAsItsLabelsCsvWhichIsNeverAnOutput) {
  test::TempDir dir;
  const auto d = dir / "synth";
  ASSERT_EQ(test::run_process(exe() + " synth --out " + d + " --count 8 --size 32").status, 0);
  const auto labels = test::read_text(d + "/labels.csv");
  const auto a = test::run_process(exe() + " split --data " + d + " --out " + (dir / "a.csv"));
  ASSERT_EQ(a.status, 0) << a.output;
  const auto b =
      test::run_process(exe() + " split --data " + d + "/labels.csv --out " + (dir / "b.csv"));
  ASSERT_EQ(b.status, 0) << b.output;
  EXPECT_EQ(test::read_text(dir / "a.csv"), test::read_text(dir / "b.csv"));
  EXPECT_EQ(std::count(labels.begin(), labels.end(), '\n'), 9);
  // The folder's labels.csv is an input: never the output, the run stops before reading it.
  for (const auto& out : {d + "/labels.csv", d + "/./labels.csv"}) {
    const auto r = test::run_process(exe() + " split --data " + d + " --out " + out);
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("--data"), std::string::npos) << r.output;
    EXPECT_EQ(test::read_text(d + "/labels.csv"), labels);
  }
  // --format folders still reads class folders (images/ and masks/ are no classes).
  const auto f = test::run_process(exe() + " split --data " + d + " --format folders --out " +
                                   (dir / "f.csv"));
  EXPECT_EQ(f.status, 1) << f.output;
  EXPECT_NE(f.output.find("class folder 'images'"), std::string::npos) << f.output;
  // A folder of a labels.csv whose images lie elsewhere: that CSV with --images naming them (it
  // was read as class folders, --images unused); without --images, one line says what to give.
  const auto labels_only = dir / "labels_only";
  fs::create_directories(labels_only);
  fs::copy_file(d + "/labels.csv", labels_only + "/labels.csv");
  const auto c = test::run_process(exe() + " split --data " + labels_only + " --images " + d +
                                   "/images --out " + (dir / "c.csv"));
  ASSERT_EQ(c.status, 0) << c.output;
  EXPECT_EQ(test::read_text(dir / "c.csv"), test::read_text(dir / "a.csv"));
  const auto no_images =
      test::run_process(exe() + " split --data " + labels_only + " --out " + (dir / "n.csv"));
  EXPECT_EQ(no_images.status, 1) << no_images.output;
  EXPECT_NE(no_images.output.find("it holds labels.csv but no images/ folder beside it: give "
                                  "--data " +
                                  labels_only + "/labels.csv"),
            std::string::npos)
      << no_images.output;
  EXPECT_FALSE(fs::exists(dir / "n.csv"));
  // With a folder in it, it stays class folders (their labels, not the CSV's), --images or not.
  for (const auto& [cls, stem] : {std::pair{"benign", "x"}, {"malignant", "y"}}) {
    fs::create_directories(labels_only + "/" + cls);
    for (int i = 0; i < 4; ++i)
      fs::copy_file(d + "/images/synth_00000" + std::to_string(i) + ".png",
                    labels_only + "/" + cls + "/" + stem + std::to_string(i) + ".png");
  }
  const auto folders = test::run_process(exe() + " split --data " + labels_only + " --images " + d +
                                         "/images --val 0.25 --test 0.25 --out " + (dir / "k.csv"));
  ASSERT_EQ(folders.status, 0) << folders.output;
  const auto k = test::read_text(dir / "k.csv");
  EXPECT_NE(k.find("\nx0,"), std::string::npos) << k;
  EXPECT_NE(k.find("\ny3,"), std::string::npos) << k;
  EXPECT_EQ(k.find("synth_"), std::string::npos) << k;
}

}  // namespace
}  // namespace attnscope
