// End-to-end tests of `attnscope evaluate`: a small_cnn checkpoint saved by the test, images
// from `attnscope synth`, metrics checked against scikit-learn recomputed from the per-image
// probabilities (--predictions), TTA against 8 explicit runs on transformed copies of the
// images, and the fault tests every writing command gets.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <torch/torch.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "pipeline/vision/image_model_config.h"
#include "preprocessing/pipeline.h"
#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;

std::string exe() {
  return ATTNSCOPE_EXE;
}

using test::read_text;

/// A synthetic dataset (64 px, 24 images) and small_cnn checkpoints, shared by the tests.
// Crafting scripts that edit checkpoints on purpose re-seal them (tests/python/
// checkpoint_checksum.py), so that what they test is reached, not the checksum.
std::string seal_prelude() {
  return "import sys\nsys.path.insert(0, '" ATTNSCOPE_SOURCE_DIR
         "/tests/python')\nfrom checkpoint_checksum import seal\n";
}

class EvaluateCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    const auto r = test::run_process(exe() + " synth --out " + (*dir_ / "data") +
                                     " --count 24 --size 64 --seed 3");
    ASSERT_EQ(r.status, 0) << r.output;
    torch::manual_seed(4);
    models::vision::ImageModelConfig config;
    config.arch = "small_cnn";
    config.num_classes = 2;
    auto model = models::vision::make_image_classifier(config);
    pipeline::CheckpointMeta meta;
    meta.class_names = {"benign", "malignant"};
    // No steps: the 64 px PNGs go straight to the tensor, so a transformed copy of an image
    // file is exactly the transformed tensor.
    meta.preprocessing_config =
        preprocessing::Pipeline::from_json({{"steps", nlohmann::json::array()}}).to_json();
    pipeline::save_image_classifier(*dir_ / "plain.h5", *model, config, meta);
    meta.extra["threshold"] = 0.4;
    meta.extra["temperature"] = 2.0;
    pipeline::save_image_classifier(*dir_ / "model.h5", *model, config, meta);
    meta.extra["temperature"] = 1e308;
    pipeline::save_image_classifier(*dir_ / "hot.h5", *model, config, meta);
    // A model whose steps an image cache can hold (a cache ends with a resize).
    pipeline::CheckpointMeta resized;
    resized.class_names = meta.class_names;
    resized.preprocessing_config =
        preprocessing::Pipeline::from_json({{"steps", {{{"op", "resize"}, {"size", 64}}}}})
            .to_json();
    pipeline::save_image_classifier(*dir_ / "resize64.h5", *model, config, resized);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string data() { return *dir_ / "data/labels.csv"; }
  static std::string model() { return *dir_ / "model.h5"; }
  static test::TempDir* dir_;
};

test::TempDir* EvaluateCli::dir_ = nullptr;

/// The CSV's p_malignant column, by image id.
std::map<std::string, double> probabilities_of(const std::string& csv) {
  std::map<std::string, double> out;
  std::istringstream in(read_text(csv));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "image_id,path,label,predicted,p_benign,p_malignant");
  while (std::getline(in, line)) {
    const auto last = line.rfind(',');
    out[line.substr(0, line.find(','))] = std::stod(line.substr(last + 1));
  }
  return out;
}

TEST_F(EvaluateCli, MetricsMatchSklearnOnItsOwnPredictions) {
  test::TempDir out;
  const auto r = test::run_process(exe() + " evaluate --model " + model() + " --data " + data() +
                                   " --json --bootstrap 200 --out " + (out / "m.json") +
                                   " --predictions " + (out / "p.csv"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto printed = nlohmann::json::parse(r.output);
  const auto j = nlohmann::json::parse(read_text(out / "m.json"));
  EXPECT_EQ(printed, j);
  EXPECT_EQ(j["evaluated"], 24);
  EXPECT_EQ(j["temperature"], 2.0);
  EXPECT_EQ(j["tta"], false);
  const auto& m = j["metrics"];
  EXPECT_EQ(m["threshold"], 0.4);  // the checkpoint's
  EXPECT_EQ(m["count"], 24);

  const std::string script =
      "import csv, json, sys\n"
      "from sklearn import metrics as skm\n"
      "rows = list(csv.DictReader(open(sys.argv[1])))\n"
      "y = [1 if r['label'] == 'malignant' else 0 for r in rows]\n"
      "s = [float(r['p_malignant']) for r in rows]\n"
      "p = [[float(r['p_benign']), float(r['p_malignant'])] for r in rows]\n"
      "pred = [1 if v >= 0.4 else 0 for v in s]\n"
      "print(json.dumps({'auc': skm.roc_auc_score(y, s),\n"
      "  'ap': skm.average_precision_score(y, s),\n"
      "  'bacc': skm.balanced_accuracy_score(y, pred),\n"
      "  'confusion': skm.confusion_matrix(y, pred, labels=[0, 1]).tolist(),\n"
      "  'brier': skm.brier_score_loss(y, s), 'log_loss': skm.log_loss(y, p, labels=[0, 1]),\n"
      "  'pred': ['malignant' if v else 'benign' for v in pred],\n"
      "  'predicted': [r['predicted'] for r in rows]}))\n";
  std::ofstream(out / "check.py") << script;
  const auto py =
      test::run_process(test::python() + " " + (out / "check.py") + " " + (out / "p.csv"));
  ASSERT_EQ(py.status, 0) << py.output;
  const auto want = nlohmann::json::parse(py.output);
  EXPECT_NEAR(m["auc"].get<double>(), want["auc"].get<double>(), 1e-12);
  EXPECT_NEAR(m["average_precision"].get<double>(), want["ap"].get<double>(), 1e-12);
  EXPECT_NEAR(m["balanced_accuracy"].get<double>(), want["bacc"].get<double>(), 1e-12);
  EXPECT_EQ(m["confusion"], want["confusion"]);
  EXPECT_NEAR(m["brier"].get<double>(), want["brier"].get<double>(), 1e-12);
  // sklearn renormalises each row; float32 softmax rows sum to 1 only within ~1e-7.
  EXPECT_NEAR(m["log_loss"].get<double>(), want["log_loss"].get<double>(), 1e-6);
  EXPECT_EQ(want["pred"], want["predicted"]);
  EXPECT_LE(m["auc_ci"]["low"].get<double>(), m["auc"].get<double>());
  EXPECT_GE(m["auc_ci"]["high"].get<double>(), m["auc"].get<double>());

  // The same run without --json prints the human summary.
  const auto text = test::run_process(exe() + " evaluate --model " + model() + " --data " + data() +
                                      " --bootstrap 50 --threshold 0.5");
  ASSERT_EQ(text.status, 0) << text.output;
  for (const char* needle :
       {"AUC", "95% CI", "average precision", "balanced accuracy", "sensitivity", "specificity",
        "threshold 0.5000", "ECE (15 bins)", "Brier score", "log loss", "confusion matrix"}) {
    EXPECT_NE(text.output.find(needle), std::string::npos) << needle << "\n" << text.output;
  }
}

TEST_F(EvaluateCli, TemperatureDividesTheLogits) {
  // log(p1 / p0) is the logit difference: halved by the checkpoint's temperature 2.
  test::TempDir out;
  for (const char* name : {"plain", "model"}) {
    const auto r = test::run_process(exe() + " evaluate --bootstrap 0 --model " +
                                     dir_->path().string() + "/" + name + ".h5 --data " + data() +
                                     " --predictions " + (out / (std::string(name) + ".csv")));
    ASSERT_EQ(r.status, 0) << r.output;
  }
  const auto plain = probabilities_of(out / "plain.csv");
  const auto scaled = probabilities_of(out / "model.csv");
  ASSERT_EQ(plain.size(), 24u);
  double largest = 0;
  for (const auto& [id, p] : plain) {
    const double q = scaled.at(id);
    const double d1 = std::log(p / (1 - p)), d2 = std::log(q / (1 - q));
    EXPECT_NEAR(d2, d1 / 2, 1e-4 + 1e-3 * std::abs(d1)) << id;
    largest = std::max(largest, std::abs(d1));
  }
  EXPECT_GT(largest, 1e-3);  // the check above is not vacuous
}

// A temperature outside [0.01, 100] (training fits it in [0.05, 20]) is refused by evaluate and
// classify: 1e308 made every probability 0.5.
TEST_F(EvaluateCli, ATemperatureOutOfRangeIsRefused) {
  test::TempDir out;
  const auto hot = *dir_ / "hot.h5";
  for (const auto& args :
       {"evaluate --model " + hot + " --data " + data() + " --predictions " + (out / "p.csv"),
        "classify --model " + hot + " --input " + (*dir_ / "data/images") + " --out " +
            (out / "c")}) {
    const auto r = test::run_process(exe() + " " + args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(hot + ": checkpoint temperature 1e+308 must be in [0.01, 100]"),
              std::string::npos)
        << r.output;
  }
  EXPECT_TRUE(test::file_names(out.path()).empty());
}

TEST_F(EvaluateCli, TtaIsTheMeanOfEightTransformedRuns) {
  test::TempDir out;
  auto r = test::run_process(exe() + " evaluate --tta --bootstrap 0 --model " + model() +
                             " --data " + data() + " --predictions " + (out / "tta.csv"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto tta = probabilities_of(out / "tta.csv");
  // The 8 symmetries of the square written with OpenCV: flip or not, then 0-3 quarter turns.
  // Any enumeration of the group gives the same mean.
  std::map<std::string, double> sum;
  const auto images = fs::path(*dir_ / "data/images");
  for (int k = 0; k < 8; ++k) {
    const auto copy = fs::path(out / ("t" + std::to_string(k)));
    fs::create_directories(copy / "images");
    fs::copy_file(data(), copy / "labels.csv");
    fs::copy(fs::path(*dir_ / "data/masks"), copy / "masks", fs::copy_options::recursive);
    for (const auto& entry : fs::directory_iterator(images)) {
      cv::Mat img = cv::imread(entry.path().string(), cv::IMREAD_UNCHANGED);
      ASSERT_FALSE(img.empty()) << entry.path();
      if (k >= 4) cv::flip(img, img, 1);
      for (int t = 0; t < k % 4; ++t)
        cv::rotate(img, img, cv::ROTATE_90_CLOCKWISE);
      ASSERT_TRUE(cv::imwrite((copy / "images" / entry.path().filename()).string(), img));
    }
    r = test::run_process(exe() + " evaluate --bootstrap 0 --model " + model() + " --data " +
                          (copy / "labels.csv").string() + " --predictions " +
                          (copy / "p.csv").string());
    ASSERT_EQ(r.status, 0) << r.output;
    for (const auto& [id, p] : probabilities_of((copy / "p.csv").string()))
      sum[id] += p;
  }
  ASSERT_EQ(sum.size(), tta.size());
  double spread = 0;
  for (const auto& [id, p] : tta) {
    EXPECT_NEAR(p, sum.at(id) / 8, 1e-5) << id;
    spread = std::max(spread, std::abs(p - sum.at(id) / 8));
  }
  // And TTA changes something (the model is not invariant), so the comparison means something.
  const auto plain = [&] {
    const auto q = test::run_process(exe() + " evaluate --bootstrap 0 --model " + model() +
                                     " --data " + data() + " --predictions " + (out / "p.csv"));
    EXPECT_EQ(q.status, 0) << q.output;
    return probabilities_of(out / "p.csv");
  }();
  double changed = 0;
  for (const auto& [id, p] : plain)
    changed = std::max(changed, std::abs(p - tta.at(id)));
  EXPECT_GT(changed, 1e-6);
}

// evaluate uses no mask: the labels.csv of synth copied where its masks/ folder is not reads
// as the original (it failed on the first missing mask file). Without images/ beside it and
// without --images, the line says to give the folder.
TEST_F(EvaluateCli, MasksAreNotReadAndAMissingImageFolderIsNamed) {
  test::TempDir out;
  fs::copy_file(data(), out / "labels.csv");
  ASSERT_NE(read_text(out / "labels.csv").find("masks/"), std::string::npos);
  const auto evaluate = [&](const std::string& labels, const std::string& flags) {
    return test::run_process(exe() + " evaluate --bootstrap 0 --quiet --model " + model() +
                             " --data " + labels + " " + flags + " 2>&1");
  };
  auto r = evaluate(data(), "--predictions " + (out / "a.csv"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = evaluate(out / "labels.csv",
               "--images " + (*dir_ / "data/images") + " --predictions " + (out / "b.csv"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("mask"), std::string::npos) << r.output;
  EXPECT_EQ(probabilities_of(out / "b.csv"), probabilities_of(out / "a.csv"));
  r = evaluate(out / "labels.csv", "");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(
      r.output.rfind("error: " + (out / "labels.csv") + ": names no image folder, so image '", 0),
      0u)
      << r.output;
  EXPECT_NE(r.output.find("' and the others have no file: give the folder with --images, or put "
                          "the images in an images/ folder beside the CSV\n"),
            std::string::npos)
      << r.output;
}

// --precision bf16 runs the forward passes in bfloat16 autocast: the probabilities move by
// bfloat16's rounding (so they differ from float32's: autocast was on) but stay near them,
// with and without TTA; the precision is reported; anything but fp32/bf16 is a usage error.
TEST_F(EvaluateCli, Bf16PrecisionStaysNearFloat32AndIsReported) {
  test::TempDir out;
  for (const char* tta : {"", " --tta"}) {
    std::map<std::string, std::map<std::string, double>> p;
    for (const std::string precision : {"fp32", "bf16"}) {
      const auto csv = out / (precision + ".csv");
      const auto r = test::run_process(exe() + " evaluate --bootstrap 0 --json --precision " +
                                       precision + tta + " --model " + model() + " --data " +
                                       data() + " --predictions " + csv);
      ASSERT_EQ(r.status, 0) << r.output;
      const auto j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
      EXPECT_EQ(j["precision"], precision);
      EXPECT_EQ(j["evaluated"], 24);
      p[precision] = probabilities_of(csv);
    }
    ASSERT_EQ(p["bf16"].size(), 24u);
    double largest = 0;
    for (const auto& [id, v] : p["fp32"])
      largest = std::max(largest, std::abs(v - p["bf16"].at(id)));
    EXPECT_GT(largest, 0.0) << tta;
    EXPECT_LT(largest, 0.05) << tta;
  }
  const auto bad = test::run_process(exe() + " evaluate --precision fp16 --model " + model() +
                                     " --data " + data());
  EXPECT_EQ(bad.status, 2) << bad.output;
  EXPECT_NE(bad.output.find("--precision must be fp32 or bf16, got 'fp16'"), std::string::npos)
      << bad.output;
}

TEST_F(EvaluateCli, UnreadableImagesAreListedTheRestEvaluatedAndTheStatusIsOne) {
  test::TempDir out;
  const auto copy = fs::path(out / "data");
  fs::copy(fs::path(*dir_ / "data"), copy, fs::copy_options::recursive);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(copy / "images"))
    files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::ofstream(files[0]) << "not an image";
  std::ofstream{files[1]};  // empty
  auto r =
      test::run_process(exe() + " evaluate --json --bootstrap 0 --model " + model() + " --data " +
                        (copy / "labels.csv").string() + " --out " + (out / "m.json") + " --quiet");
  // The metrics of the others, and exit 1 (as cache and preprocess) with a last line saying so.
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: 2 of 24 images could not be evaluated (listed above): the "
                          "metrics are over the other 22\n"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(files[0].filename().string()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(files[1].filename().string()), std::string::npos) << r.output;
  // One line per image, naming it once ("error: x.png: x.png: ..." before).
  for (const auto& f : {files[0], files[1]}) {
    const auto line = r.output.find("error: " + f.string() + ": ");
    EXPECT_NE(line, std::string::npos) << r.output;
    EXPECT_EQ(r.output.find(f.string() + ": " + f.string()), std::string::npos) << r.output;
  }
  const auto j = nlohmann::json::parse(read_text(out / "m.json"));
  EXPECT_EQ(j["evaluated"], 22);
  EXPECT_EQ(j["failed"].size(), 2u);

  // The same images through an image cache: the two it could not cache are failures of the
  // evaluation too ("failed": [] hid them).
  r = test::run_process(exe() + " cache --data " + (copy / "labels.csv").string() +
                        " --size 64 --out " + (out / "c.h5") + " 2>&1");
  ASSERT_NE(r.output.find("cached 22 of 24 images"), std::string::npos) << r.output;
  r = test::run_process(exe() + " evaluate --json --bootstrap 0 --model " + *dir_ / "resize64.h5" +
                        " --data " + (out / "c.h5") + " --out " + (out / "c.json") + " --quiet");
  EXPECT_EQ(r.status, 1) << r.output;
  const auto jc = nlohmann::json::parse(read_text(out / "c.json"));
  EXPECT_EQ(jc["evaluated"], 22);
  ASSERT_EQ(jc["failed"].size(), 2u) << jc.dump();
  for (std::size_t k = 0; k < 2; ++k) {
    EXPECT_EQ(jc["failed"][k]["path"], files[k].string());
    EXPECT_EQ(jc["failed"][k]["image_id"], files[k].stem().string());
    EXPECT_EQ(jc["failed"][k]["message"].get<std::string>().rfind("not in the image cache (", 0),
              0u);
  }

  // None readable: every file named, exit 1.
  for (const auto& f : files)
    std::ofstream(f) << "x";
  r = test::run_process(exe() + " evaluate --bootstrap 0 --model " + model() + " --data " +
                        (copy / "labels.csv").string());
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("no image could be evaluated (24 failed)"), std::string::npos)
      << r.output;
  for (const auto& f : files)
    EXPECT_NE(r.output.find(f.filename().string()), std::string::npos) << f;
}

// --decode-reduce-to N: JPEGs decoded at the largest reduction keeping the short side >= N,
// pixel for pixel OpenCV's IMREAD_REDUCED_COLOR_2 read (the oracle, stored losslessly as PNG
// and evaluated without the flag); recorded in the JSON; 0 and no flag decode at full size.
TEST_F(EvaluateCli, DecodeReduceToDecodesJpegsAsOpenCvsReducedReads) {
  test::TempDir out;
  fs::create_directories(out / "jpeg/images");
  fs::create_directories(out / "oracle/images");
  std::string csv = "image_id,label\n";
  for (const auto& [id, label] : test::labelled_rows(data())) {
    cv::Mat big;
    cv::resize(cv::imread(*dir_ / ("data/images/" + id + ".png")), big, cv::Size(128, 128));
    const auto jpg = out / ("jpeg/images/" + id + ".jpg");
    ASSERT_TRUE(cv::imwrite(jpg, big, {cv::IMWRITE_JPEG_QUALITY, 90}));
    const auto reduced = cv::imread(jpg, cv::IMREAD_REDUCED_COLOR_2);
    ASSERT_EQ(reduced.rows, 64);
    ASSERT_TRUE(cv::imwrite(out / ("oracle/images/" + id + ".png"), reduced));
    csv += id + "," + label + "\n";
  }
  std::ofstream(out / "jpeg/labels.csv") << csv;
  std::ofstream(out / "oracle/labels.csv") << csv;
  const auto run = [&](const std::string& set, const std::string& name, const std::string& flags) {
    const auto r = test::run_process(exe() + " evaluate --json --bootstrap 0 --quiet --model " +
                                     (*dir_ / "plain.h5") + " --data " + (out / set) +
                                     "/labels.csv --predictions " + (out / name) + ".csv --out " +
                                     (out / name) + ".json" + flags);
    EXPECT_EQ(r.status, 0) << r.output;
    return probabilities_of(out / (name + ".csv"));
  };
  const auto reduced = run("jpeg", "reduced", " --decode-reduce-to 64");
  const auto oracle = run("oracle", "oracle", "");
  const auto full = run("jpeg", "full", "");
  const auto zero = run("jpeg", "zero", " --decode-reduce-to 0");
  ASSERT_EQ(reduced.size(), 24u);
  ASSERT_EQ(oracle.size(), 24u);
  double differs = 0;
  for (const auto& [id, p] : reduced) {
    EXPECT_NEAR(p, oracle.at(id), 1e-6) << id;
    EXPECT_EQ(zero.at(id), full.at(id)) << id;
    differs = std::max(differs, std::abs(p - full.at(id)));
  }
  EXPECT_GT(differs, 1e-4);  // 64 px reduced inputs are not the 128 px full-size ones
  EXPECT_EQ(nlohmann::json::parse(read_text(out / "reduced.json")).at("decode_reduce_to"), 64);
  EXPECT_FALSE(nlohmann::json::parse(read_text(out / "full.json")).contains("decode_reduce_to"));
}

// A cache whose steps are not the checkpoint's preprocessing is refused naming both files.
TEST_F(EvaluateCli, ACacheOfOtherStepsThanTheModelsIsRefusedNamingIt) {
  test::TempDir dir;
  const auto cache = dir / "c32.h5";
  const auto made = test::run_process(exe() + " cache --data " + (*dir_ / "data/labels.csv") +
                                      " --out " + cache + " --size 32 --workers 1");
  ASSERT_EQ(made.status, 0) << made.output;
  const auto r = test::run_process(exe() + " evaluate --model " + (*dir_ / "plain.h5") +
                                   " --data " + cache + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + cache + ": holds images made with the steps "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(", the model's are [] (" + (*dir_ / "plain.h5") + ")"), std::string::npos)
      << r.output;
}

// Where --out and --predictions go is checked before the evaluation: a missing folder, a folder
// given as the file, and one file spelled two ways ("p.json", "./p.json") before it exists.
TEST_F(EvaluateCli, OutputsAreCheckedBeforeTheEvaluation) {
  test::TempDir dir;
  const auto base = exe() + " evaluate --bootstrap 0 --model " + model() + " --data " + data();
  auto r = test::run_process(base + " --out " + (dir / "missing/r.json") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("AUC"), std::string::npos) << r.output;  // nothing was evaluated
  // A file where the folder belongs is named as such (it was "does not exist").
  std::ofstream(dir / "afile") << "x";
  r = test::run_process(base + " --out " + (dir / "afile/r.json") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + (dir / "afile/r.json") + ": " + (dir / "afile") +
                          " is not a folder"),
            std::string::npos)
      << r.output;
  r = test::run_process(base + " --predictions " + dir.path().string() + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("is a folder"), std::string::npos) << r.output;
  r = test::run_process("cd " + dir.path().string() + " && " + base +
                        " --out ./p.json --predictions p.json 2>&1");
  EXPECT_EQ(r.status, 2) << r.output;  // a mistake on the command line
  EXPECT_EQ(r.output.rfind("error: --out and --predictions name the same file (./p.json): "
                           "choose two files\n",
                           0),
            0u)
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "p.json"));
}

TEST_F(EvaluateCli, SingleClassDataSaysAucIsUndefined) {
  test::TempDir out;
  const auto copy = fs::path(out / "data");
  fs::copy(fs::path(*dir_ / "data"), copy, fs::copy_options::recursive);
  std::istringstream in(read_text(data()));
  std::string line, kept;
  std::getline(in, line);
  kept = line + "\n";
  int benign = 0;
  const auto label_column = [&] {
    std::istringstream h(line);
    std::string col;
    int i = 0;
    while (std::getline(h, col, ',')) {
      if (col == "label") return i;
      ++i;
    }
    return -1;
  }();
  ASSERT_GE(label_column, 0);
  while (std::getline(in, line)) {
    std::istringstream row(line);
    std::string col;
    for (int i = 0; i <= label_column; ++i)
      std::getline(row, col, ',');
    if (col == "benign" || col == "0") {
      kept += line + "\n";
      ++benign;
    }
  }
  ASSERT_GT(benign, 0);
  std::ofstream(copy / "benign.csv") << kept;
  const auto r = test::run_process(exe() + " evaluate --model " + model() + " --data " +
                                   (copy / "benign.csv").string());
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("AUC needs both classes; the set holds only 'benign'"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("confusion matrix"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("accuracy"), std::string::npos) << r.output;
}

// Checkpoint attributes crafted with h5py: nlohmann's dump() recursed on 100,000 nested
// brackets (a crash), and a 1 MB class name or arch became a 1 MB message. Each is one short
// line in every command that reads a checkpoint.
TEST_F(EvaluateCli, CraftedCheckpointAttributesAreOneShortLine) {
  test::TempDir out;
  const auto script = out / "craft.py";
  std::ofstream(script) << seal_prelude() << R"(import sys, json, shutil, h5py
src, dst = sys.argv[1], sys.argv[2]
deep = '[' * 100000 + ']' * 100000
big = 'x' * 1000000
with h5py.File(src, 'r') as f:
    mc = json.loads(f.attrs['model_config'])
    extra = json.loads(f.attrs['extra'])
def craft(name, attr, value):
    shutil.copy(src, dst + '/' + name + '.h5')
    with h5py.File(dst + '/' + name + '.h5', 'a') as f:
        del f.attrs[attr]
        f.attrs[attr] = value
    seal(dst + '/' + name + '.h5')
craft('model_deep', 'model_config', deep)
craft('threshold_deep', 'extra', '{"threshold": ' + deep + ', "rest": ' + json.dumps(extra) + '}')
craft('class_big', 'class_names', json.dumps([big, 'b']))
craft('arch_big', 'model_config', json.dumps(dict(mc, arch=big + '\x1b[31m')))
craft('size_big', 'model_config', json.dumps(dict(mc, image_size=big)))
craft('model_list', 'model_config', '[1]')
craft('size_float', 'model_config', json.dumps(dict(mc, image_size=1e30)))
craft('stages_twice', 'model_config', json.dumps(dict(mc, arch='attn_small', attention_stages=[3, 3])))
)";
  const auto made = test::run_process(test::python() + " " + script + " " + (*dir_ / "plain.h5") +
                                      " " + out.path().string());
  ASSERT_EQ(made.status, 0) << made.output;
  const std::string deep = ": attribute is JSON nested deeper than 64 levels";
  const std::string x40(40, 'x'), x100(100, 'x');
  // {file, what evaluate and classify say, what train --init says}; "" = that command runs.
  const std::vector<std::array<std::string, 3>> cases = {
      {"model_deep", "model_deep.h5:/@model_config" + deep, "model_deep.h5:/@model_config" + deep},
      {"threshold_deep", "threshold_deep.h5:/@extra" + deep, "threshold_deep.h5:/@extra" + deep},
      {"class_big", "the checkpoint's classes are [\"" + x40 + "... (1000000 bytes)\",\"b\"]",
       "was trained on the classes [\"" + x40 + "... (1000000 bytes)\",\"b\"]"},
      {"arch_big",
       "is a '" + x100 + "... (1000005 bytes)' checkpoint, not one of the image classifiers (",
       "is a '" + x100 + "... (1000005 bytes)' checkpoint"},
      // train --init checks a checkpoint as classify does (it trained from these).
      {"size_big", "model_config.image_size: bad value \"" + x100.substr(1),
       "model_config.image_size: bad value \"" + x100.substr(1)},
      {"model_list", "model_list.h5:/@model_config: attribute must be a JSON object, got [1]",
       "model_list.h5:/@model_config: attribute must be a JSON object, got [1]"},
      // nlohmann turned 1e30 into INT64_MIN; the model's own checks did not name the file.
      {"size_float", "size_float.h5: model_config.image_size: bad value 1e+30: expected an integer",
       "size_float.h5: model_config.image_size: bad value 1e+30: expected an integer"},
      {"stages_twice", "stages_twice.h5: model_config: AttentionCnn: stage 3 listed twice",
       "is a 'attn_small' checkpoint"},
  };
  for (const auto& [name, message, train_message] : cases) {
    const auto ckpt = out / (name + ".h5");
    std::vector<std::pair<std::string, std::string>> runs = {
        {"evaluate --model " + ckpt + " --data " + data(), message},
        {"train --init " + ckpt + " --data " + data() +
             " --model small_cnn --size 64 --epochs 1 --out " + (out / ("t_" + name)),
         train_message}};
    if (name != "class_big")  // classify does not compare class names with data
      runs.push_back({"classify --model " + ckpt + " --input " + (*dir_ / "data/images") +
                          " --out " + (out / ("c_" + name)),
                      message});
    for (const auto& [args, expected] : runs) {
      const auto r = test::run_process(exe() + " " + args);
      if (expected.empty()) {
        EXPECT_EQ(r.status, 0) << args << "\n" << r.output.substr(0, 2000);
        continue;
      }
      EXPECT_EQ(r.status, 1) << args << "\n" << r.output.substr(0, 2000);
      EXPECT_NE(r.output.find(expected), std::string::npos) << args << "\n"
                                                            << r.output.substr(0, 2000);
      EXPECT_LT(r.output.size(), 800u) << args << "\n" << r.output.substr(0, 2000);
    }
  }
}

TEST_F(EvaluateCli, FullDiskAndKillLeaveThePreviousOutput) {
  test::TempDir out;
  const auto target = out / "m.json";
  // A previous output of evaluate (its two keys): the only kind of file --out replaces.
  const std::string previous = "{\"evaluated\": 0, \"metrics\": {}, \"previous\": true}\n";
  std::ofstream(target) << previous;
  const auto cmd = exe() + " evaluate --json --bootstrap 0 --model " + model() + " --data " +
                   data() + " --out " + target;
  const auto r = test::run_with_file_size_limit(cmd, 200);
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(target), std::string::npos) << r.output;
  EXPECT_EQ(read_text(target), previous);

  // Kills within the time an uninterrupted run takes (a fixed seed: a failure can be rerun).
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(test::run_process(cmd).status, 0);
  const int whole = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count());
  std::mt19937 rng(41);
  int killed = 0;
  for (int run = 0; run < 4 || (killed == 0 && run < 10); ++run) {
    std::ofstream(target) << previous;
    const int ms =
        std::uniform_int_distribution<int>(0, std::max(1, whole >> std::max(0, run - 3)))(rng);
    killed += test::run_killed_after(cmd, ms).killed;
    const auto text = read_text(target);
    if (text != previous) {
      // A new file is complete.
      const auto j = nlohmann::json::parse(text);
      EXPECT_EQ(j["evaluated"], 24) << "killed after " << ms << " ms";
    }
  }
  EXPECT_GT(killed, 0) << "no run was killed before it ended";

  // Any other file is not replaced (a checkpoint or ground truth given as --out was, without
  // a word): one line, the file byte for byte, before the evaluation.
  const auto other = out / "notes.json";
  const auto csv = out / "truth.csv";
  std::ofstream(other) << "previous\n";
  std::ofstream(csv) << "image_id,melanoma\nx,1\n";
  for (const auto& [flags, file, what] :
       {std::make_tuple(" --out " + other, other,
                        std::string("a JSON file written by attnscope "
                                    "evaluate")),
        std::make_tuple(" --predictions " + csv, csv,
                        std::string("a predictions CSV written by attnscope evaluate"))}) {
    const auto before = read_text(file);
    const auto e = test::run_process(exe() + " evaluate --bootstrap 0 --model " + model() +
                                     " --data " + data() + flags + " 2>&1");
    EXPECT_EQ(e.status, 1) << e.output;
    EXPECT_EQ(e.output, "error: " + file + ": exists and is not " + what +
                            "; refusing to replace it (remove it first, or choose another " +
                            flags.substr(1, flags.find(' ', 1) - 1) + ")\n");
    EXPECT_EQ(read_text(file), before);
  }
}

}  // namespace
}  // namespace attnscope
