// End-to-end tests of `attnscope classify` and `attnscope merge`: synthetic images through an
// untrained attn_small checkpoint, results.h5 read back by C++ and by Debian's h5py, kills at
// random moments and --resume, shards and merge, a folder of bad files, a full disk.

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>

#include "pipeline/vision/image_model_config.h"
#include "pipeline/vision/results.h"
#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;

std::string exe() {
  return ATTNSCOPE_EXE;
}

std::string q(const std::string& s) {
  return "'" + s + "'";
}

using CheckpointEdit =
    std::function<void(pipeline::CheckpointMeta&, models::vision::ImageClassifier&)>;

// An untrained attn_small at 64 px with its preprocessing (a resize to `size`): enough to
// exercise every path. `edit` changes the checkpoint's metadata or weights before it is saved
// (crafted checkpoints), as DIR/NAME.h5.
std::string make_checkpoint(
    const test::TempDir& dir, int size = 64, const CheckpointEdit& edit = {},
    const std::string& name = "model", const std::string& arch = "attn_small",
    const std::function<void(models::vision::ImageModelConfig&)>& configure = {}) {
  const auto path = dir / (name + ".h5");
  torch::manual_seed(3);
  models::vision::ImageModelConfig config;
  config.arch = arch;
  config.image_size = 64;
  if (configure) configure(config);
  auto model = models::vision::make_image_classifier(config);
  pipeline::CheckpointMeta meta;
  meta.class_names = {"benign", "malignant"};
  meta.preprocessing_config = {{"steps", {{{"op", "resize"}, {"size", size}}}}};
  if (edit) edit(meta, *model);
  pipeline::save_image_classifier(path, *model, models::vision::resolve_image_config(config), meta);
  return path;
}

std::string make_images(const test::TempDir& dir, int count) {
  const auto out = dir / "synth";
  const auto r = test::run_process(exe() + " synth --out " + q(out) + " --count " +
                                   std::to_string(count) + " --size 64 --seed 5");
  EXPECT_EQ(r.status, 0) << r.output;
  return out;
}

// The image files of make_images' folder, sorted.
std::vector<std::string> image_files(const std::string& images) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(images + "/images"))
    files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

// A Python script run with Debian's python3: compares every dataset of two results files
// (strings and integers exactly, floats to 1e-4) and prints OK or the differences.
const char* kCompare = R"(
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], 'r'), h5py.File(sys.argv[2], 'r')
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
other = []
b.visititems(lambda n, o: other.append(n) if isinstance(o, h5py.Dataset) else None)
bad = []
if sorted(names) != sorted(other): bad.append('datasets differ: %s vs %s' % (sorted(names), sorted(other)))
for n in names:
    if n not in b: continue
    x, y = a[n][...], b[n][...]
    if x.shape != y.shape or x.dtype != y.dtype: bad.append('%s: %s %s vs %s %s' % (n, x.shape, x.dtype, y.shape, y.dtype)); continue
    if x.dtype.kind == 'f':
        if not np.allclose(x, y, rtol=1e-4, atol=1e-5, equal_nan=True): bad.append(n + ': values differ')
    elif not np.array_equal(x, y): bad.append(n + ': values differ')
print('\n'.join(bad) if bad else 'OK')
)";

std::string compare(const test::TempDir& dir, const std::string& a, const std::string& b) {
  const auto script = dir / "compare.py";
  std::ofstream(script) << kCompare;
  return test::run_process(test::python() + " " + q(script) + " " + q(a) + " " + q(b)).output;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<std::vector<std::string>> read_csv(const std::string& path) {
  // Enough of RFC 4180 for the test: quoted fields with doubled quotes, no embedded newlines.
  std::ifstream in(path);
  std::vector<std::vector<std::string>> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::vector<std::string> fields(1);
    bool quoted = false;
    for (std::size_t i = 0; i < line.size(); ++i) {
      const char c = line[i];
      if (quoted) {
        if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
          fields.back() += '"';
          ++i;
        } else if (c == '"') {
          quoted = false;
        } else {
          fields.back() += c;
        }
      } else if (c == '"') {
        quoted = true;
      } else if (c == ',') {
        fields.emplace_back();
      } else {
        fields.back() += c;
      }
    }
    rows.push_back(fields);
  }
  return rows;
}

// A results.h5 cut back to its first `rows` images by h5py, as a run killed after them leaves it
// (finished_at empty), for --resume to finish.
void cut_to(const std::string& h5, int rows) {
  const auto r = test::run_process(
      test::python() +
      " -c \"import sys, h5py\n"
      "f = h5py.File(sys.argv[1], 'r+'); n = int(sys.argv[2])\n"
      "f.visititems(lambda k, o: o.resize(n, axis=0) if isinstance(o, h5py.Dataset) and not "
      "k.startswith('errors/') else None)\n"
      "f.attrs['num_images'] = str(n); f.attrs['finished_at'] = ''\" " +
      q(h5) + " " + std::to_string(rows));
  ASSERT_EQ(r.status, 0) << r.output;
}

TEST(CliClassify, WritesResultsThatCppAndH5pyReadAndCsvAgrees) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 10);
  const auto out = dir / "run";
  const auto r = test::run_process(exe() + " classify --model " + q(model) + " --data " +
                                   q(images + "/labels.csv") + " --masks " + q(images + "/masks") +
                                   " --out " + q(out) +
                                   " --batch-size 4 --overlays --faithfulness "
                                   "--faithfulness-steps 4");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("classified 10, failed 0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("labelled 10: accuracy"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("mean gaussian/jaccard"), std::string::npos) << r.output;
  const auto h5 = out + "/results.h5";
  const auto res = pipeline::read_results(h5);
  ASSERT_EQ(res.ids.size(), 10u);
  EXPECT_EQ(res.attributes.at("maps"), "[\"stage3\",\"stage4\",\"gradcam\"]");
  // Every dataset has one row per image; maps have the model's native shape (h5py's view).
  const auto script = dir / "check.py";
  std::ofstream(script) << R"(
import sys, json, h5py, numpy as np
f = h5py.File(sys.argv[1], 'r')
n = len(f['images/id'])
assert n == 10, n
rows = []
f.visititems(lambda k, o: rows.append((k, o.shape)) if isinstance(o, h5py.Dataset) and not k.startswith('errors/') else None)
for k, s in rows: assert s[0] == n, (k, s)
assert f['images/preprocessed'].shape == (n, 64, 64, 3)
assert f['images/preprocessed'].dtype == np.uint8
for m in json.loads(f.attrs['maps']):
    d = f['attention/' + m]
    assert list(d.shape[1:]) == json.loads(d.attrs['native_size']), m
    assert json.loads(d.attrs['target_size']) == [64, 64]
    assert f['overlays/' + m].shape == (n, 64, 64, 3)
    # attn_small's own maps are softmax weights over the positions: each sums to 1.
    if m == 'gradcam':
        assert 'weights' not in d.attrs and d.attrs['normalization'] == 'max'
    else:
        assert d.attrs['weights'] == 'softmax' and d.attrs['normalization'] == 'none', m
        assert np.allclose(d[...].reshape(n, -1).sum(1), 1, atol=1e-4), m
    for k in ('deletion_auc', 'insertion_auc', 'mass_in_mask', 'jaccard', 'pointing_game'):
        v = f['measures/%s/%s' % (m, k)][...]
        assert np.all(np.isfinite(v)) and np.all(v >= 0) and np.all(v <= 1), (m, k, v)
p = f['predictions/probability'][...]
assert np.allclose(p.sum(1), 1, atol=1e-5)
assert f.attrs['schema_version'] == '1' and f.attrs['finished_at'] != ''
print('OK', n)
)";
  const auto py = test::run_process(test::python() + " " + q(script) + " " + q(h5));
  EXPECT_NE(py.output.find("OK 10"), std::string::npos) << py.output;
  // predictions.csv agrees with results.h5, row by row.
  const auto csv = read_csv(out + "/predictions.csv");
  ASSERT_EQ(csv.size(), 11u);
  EXPECT_EQ(csv[0], (std::vector<std::string>{"id", "path", "p_benign", "p_malignant", "prediction",
                                              "label"}));
  const std::vector<std::string> classes{"benign", "malignant"};
  for (std::size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(csv[i + 1][0], res.ids[i]);
    EXPECT_EQ(csv[i + 1][1], res.paths[i]);
    EXPECT_NEAR(std::stod(csv[i + 1][3]),
                res.probability[static_cast<int64_t>(i)][1].item<double>(), 1e-5);
    EXPECT_EQ(csv[i + 1][4], classes[res.prediction[static_cast<int64_t>(i)].item<int64_t>()]);
    EXPECT_EQ(csv[i + 1][5], classes[res.label[i]]);
  }
  // The Python reader prints a prediction and writes an overlay.
  const auto png = dir / "overlay.png";
  const auto reader =
      test::run_process(test::python() + " " +
                        q(std::string(ATTNSCOPE_SOURCE_DIR) + "/tools/python/read_results.py") +
                        " " + q(h5) + " --id " + q(res.ids[2]) + " --overlay " + q(png));
  EXPECT_EQ(reader.status, 0) << reader.output;
  EXPECT_NE(reader.output.find("prediction"), std::string::npos) << reader.output;
  EXPECT_NE(reader.output.find("map stage4"), std::string::npos) << reader.output;
  // OpenCV's jet (cv2, which bootstrap installs; matplotlib's only without it): a PNG of the
  // preprocessed image's size.
  const auto overlay = cv::imread(png);
  ASSERT_EQ(overlay.rows, 64) << reader.output;
  EXPECT_EQ(overlay.cols, 64) << reader.output;
  EXPECT_NE(reader.output.find("wrote " + png), std::string::npos) << reader.output;
  // The same blend as classify's own /overlays/stage3 (jet at half over the image; the two
  // up-sample and round apart by a level or two), in RGB order: swapped channels are ~77 apart.
  const auto same = test::run_process(
      test::python() +
      " -c \"import sys,cv2,h5py,numpy as np; o=cv2.imread(sys.argv[1])[..., ::-1].astype(float); "
      "s=h5py.File(sys.argv[2],'r')['overlays/stage3'][2].astype(float); "
      "print(np.abs(o-s).mean() < 3, np.abs(o[..., ::-1]-s).mean() > 10)\" " +
      q(png) + " " + q(h5));
  EXPECT_EQ(same.output, "True True\n") << same.output;
  // Damaged and crafted copies of this file (29 cases: labels out of range, attributes of
  // other types, maps missing or 1-D, cut files, links and storage into FIFOs) are one error
  // line each from the reader, never a traceback, a wrong answer or a hang.
  const auto faults = test::run_process(
      test::python() + " " +
      q(std::string(ATTNSCOPE_SOURCE_DIR) + "/tests/python/read_results_faults.py") + " " + q(h5) +
      " " + q(dir / "reader_faults"));
  EXPECT_EQ(faults.status, 0) << faults.output;
  EXPECT_NE(faults.output.find("all 29 cases passed"), std::string::npos) << faults.output;
  // A second run refuses to truncate the first.
  const auto again = test::run_process(exe() + " classify --model " + q(model) + " --input " +
                                       q(images + "/images") + " --out " + q(out));
  EXPECT_NE(again.status, 0);
  EXPECT_NE(again.output.find("--resume"), std::string::npos) << again.output;

  // Cut back to its first 3 rows and resumed, the run's means are over all 10 images (they were
  // over the 7 of the resumed run), as h5py's nanmean of each measure says.
  cut_to(h5, 3);
  const auto resumed = test::run_process(
      exe() + " classify --model " + q(model) + " --data " + q(images + "/labels.csv") +
      " --masks " + q(images + "/masks") + " --out " + q(out) +
      " --batch-size 4 --overlays --faithfulness --faithfulness-steps 4 --resume");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed: 3 inputs already stored"), std::string::npos)
      << resumed.output;
  const auto means = test::run_process(
      test::python() +
      " -c \"import sys, h5py, numpy as np; f = h5py.File(sys.argv[1], 'r')\n"
      "for m in ('stage3/deletion_auc', 'gaussian/jaccard'):\n"
      "  v = f['measures/' + m][...]; print(m, np.nanmean(v), np.isfinite(v).sum())\" " +
      q(h5));
  std::istringstream lines(means.output);
  for (std::string name; lines >> name;) {
    double mean = 0;
    int n = 0;
    lines >> mean >> n;
    EXPECT_EQ(n, 10) << means.output;
    const auto at = resumed.output.find("mean " + name + " ");
    ASSERT_NE(at, std::string::npos) << name << resumed.output;
    std::istringstream said(resumed.output.substr(at + 6 + name.size()));
    double printed = 0;
    std::string images_said;
    said >> printed >> images_said;
    EXPECT_NEAR(printed, mean, 1e-5) << resumed.output;
    EXPECT_EQ(images_said, "(10") << resumed.output;
  }
  EXPECT_NE(means.output.find("gaussian/jaccard"), std::string::npos) << means.output;
}

// A sigmoid attention (attn_vgg16's, AttnMel's) gates each position on its own: its maps are
// recorded as such (`weights`), and the report shows them as gates from 0 to 1, not as
// multiples of uniform softmax attention (every map was "raw softmax weights" before).
TEST(CliClassify, SigmoidAttentionMapsAreRecordedAsGatesAndShownAsSuch) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir, 64, {}, "sigmoid", "attn_small",
                                     [](auto& config) { config.normalizer = "sigmoid"; });
  const auto images = make_images(dir, 3);
  const auto out = dir / "run";
  const auto r = test::run_process(exe() + " classify --model " + q(model) + " --input " +
                                   q(images + "/images") + " --out " + q(out));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto py = test::run_process(
      test::python() +
      " -c \"import sys, h5py, numpy as np; f = h5py.File(sys.argv[1], 'r')\n"
      "for m in ('stage3', 'stage4'):\n"
      "  d = f['attention/' + m]; v = d[...]\n"
      "  print(m, d.attrs['weights'], d.attrs['normalization'], v.min() > 0, v.max() < 1,\n"
      "        bool((np.abs(v.reshape(len(v), -1).sum(1) - 1) > 0.5).all()))\" " +
      q(out + "/results.h5"));
  EXPECT_EQ(py.output, "stage3 sigmoid none True True True\nstage4 sigmoid none True True True\n")
      << py.output;
  const auto html = dir / "report.html";
  const auto rep = test::run_process(exe() + " report --results " + q(out + "/results.h5") +
                                     " --out " + q(html));
  ASSERT_EQ(rep.status, 0) << rep.output;
  std::ifstream in(html);
  const std::string page((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(page.find("sigmoid gate of each position, 0 to 1"), std::string::npos);
  EXPECT_EQ(page.find("uniform attention"), std::string::npos);
  // A file written before the attribute: the model config's normalizer tells.
  ASSERT_EQ(test::run_process(test::python() +
                              " -c \"import sys, h5py; f = h5py.File(sys.argv[1], 'r+')\n"
                              "for m in ('stage3', 'stage4'): del f['attention/' + m].attrs["
                              "'weights']\" " +
                              q(out + "/results.h5"))
                .status,
            0);
  ASSERT_EQ(
      test::run_process(exe() + " report --results " + q(out + "/results.h5") + " --out " + q(html))
          .status,
      0);
  const auto older = test::read_text(html);
  EXPECT_NE(older.find("sigmoid gate of each position, 0 to 1"), std::string::npos);
  EXPECT_EQ(older.find("uniform attention"), std::string::npos);
}

// Kills at random moments (inside a batch's write, its close, the rename, or inference) each
// leave a results.h5 that C++ and h5py open, holding at least what the previous run stored.
TEST(CliClassify, KilledAtRandomMomentsThenResumedEqualsAnUninterruptedRun) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 40);
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --batch-size 4 --threads 1";
  const auto start = std::chrono::steady_clock::now();
  const auto full = test::run_process(base + " --out " + q(dir / "full"));
  ASSERT_EQ(full.status, 0) << full.output;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - start)
                      .count();
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> when(0.1, 0.9);
  const auto h5 = dir / "cut/results.h5";
  int64_t last_rows = 0;
  int cut = 0;  // kills that left a results.h5 behind (the rest came before it was created)
  const auto check_cut = [&](const test::ProcessResult& r) {
    if (!fs::exists(h5)) return;  // killed before the file was created
    cut += r.signal == SIGKILL;
    // The killed run left a file that opens, holding at least what the previous one stored.
    const auto res = pipeline::read_results(h5);
    EXPECT_GE(static_cast<int64_t>(res.ids.size()), last_rows) << r.output;
    last_rows = static_cast<int64_t>(res.ids.size());
    const auto py = test::run_process(test::python() +
                                      " -c \"import h5py,sys; f=h5py.File(sys.argv[1],'r'); "
                                      "print('rows', len(f['images/id']))\" " +
                                      q(h5));
    EXPECT_NE(py.output.find("rows"), std::string::npos) << py.output;
  };
  for (int k = 0; k < 6; ++k)
    check_cut(test::run_killed_after(base + " --resume --out " + q(dir / "cut"),
                                     static_cast<int>(when(rng) * static_cast<double>(ms))));
  // On a machine where every moment above came before the file was made (a slow start), one
  // more kill as soon as the file appears: the check above runs at least once.
  if (cut == 0) {
    fs::remove_all(dir / "cut");  // a run that ended on its own left nothing to resume
    last_rows = 0;
    test::SignalPlan plan;
    plan.signal = SIGKILL;
    plan.ready = [&] { return fs::exists(h5); };
    check_cut(test::run_signalled("exec " + base + " --resume --out " + q(dir / "cut"), plan));
  }
  EXPECT_GT(cut, 0) << "no kill left a results.h5 to check";
  const auto done = test::run_process(base + " --resume --out " + q(dir / "cut"));
  ASSERT_EQ(done.status, 0) << done.output;
  EXPECT_NE(done.output.find("classified 40, failed 0"), std::string::npos) << done.output;
  EXPECT_EQ(compare(dir, dir / "full/results.h5", h5), "OK\n");
  // The replicas of the killed runs are gone; what remains is the run's own files.
  for (const auto& e : fs::directory_iterator(dir / "cut"))
    EXPECT_EQ(e.path().filename().string().find(".replica-"), std::string::npos) << e.path();
}

// SIGTERM (Slurm, torchrun, kill) and SIGINT stop classify after the current batch: every
// batch inferred is in results.h5 (C++ and h5py read it; finished_at empty), predictions.csv
// agrees, no replica is left, the exit status is 128 + the signal, and --resume ends with what
// an uninterrupted run writes. Replacing a file (--overwrite), the previous file is kept.
TEST(CliClassify, SigtermStopsAfterTheBatchKeepsWhatWasInferredAndResumes) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 120);
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --batch-size 4 --threads 1";
  const auto full = test::run_process(base + " --out " + q(dir / "full"));
  ASSERT_EQ(full.status, 0) << full.output;
  for (const int sig : {SIGTERM, SIGINT}) {
    const std::string name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
    const auto out = dir / name;
    test::SignalPlan plan;
    plan.signal = sig;
    plan.after = {"4/120 images"};
    const auto r = test::run_signalled("exec " + base + " --out " + q(out), plan);
    ASSERT_EQ(r.signals_sent, 1) << r.output;
    EXPECT_EQ(r.signal, 0) << r.output;
    EXPECT_EQ(r.status, 128 + sig) << r.output;
    const auto stored = pipeline::read_results(out + "/results.h5");
    const auto rows = static_cast<int64_t>(stored.ids.size());
    EXPECT_GE(rows, 4);
    EXPECT_LT(rows, 120) << r.output;
    EXPECT_EQ(stored.attributes.at("finished_at"), "");
    EXPECT_NE(r.output.find(concat("stopped by ", name, ": ", rows,
                                   " images classified, 0 failed, "
                                   "stored in ",
                                   out, "/results.h5; finish with the same command and --resume")),
              std::string::npos)
        << r.output;
    const auto py = test::run_process(test::python() +
                                      " -c \"import h5py,sys; f=h5py.File(sys.argv[1],'r'); "
                                      "print('rows', len(f['images/id']))\" " +
                                      q(out + "/results.h5"));
    EXPECT_EQ(py.output, concat("rows ", rows, "\n"));
    EXPECT_EQ(static_cast<int64_t>(read_csv(out + "/predictions.csv").size()), rows + 1);
    EXPECT_EQ(test::file_names(out),
              (std::set<std::string>{"errors.csv", "predictions.csv", "results.h5"}));
    const auto done = test::run_process(base + " --resume --out " + q(out));
    ASSERT_EQ(done.status, 0) << done.output;
    EXPECT_NE(done.output.find("classified 120, failed 0"), std::string::npos) << done.output;
    EXPECT_EQ(compare(dir, dir / "full/results.h5", out + "/results.h5"), "OK\n") << name;
  }
  // Replacing a finished run: stopped, the previous results.h5 stays byte for byte.
  const auto before = test::read_text(dir / "full/results.h5");
  test::SignalPlan plan;
  plan.after = {"4/120 images"};
  const auto r =
      test::run_signalled("exec " + base + " --overwrite --out " + q(dir / "full"), plan);
  ASSERT_EQ(r.signals_sent, 1) << r.output;
  EXPECT_EQ(r.status, 128 + SIGTERM) << r.output;
  EXPECT_NE(r.output.find("nothing of this run was kept"), std::string::npos) << r.output;
  EXPECT_EQ(test::read_text(dir / "full/results.h5"), before);
  EXPECT_EQ(test::file_names(dir / "full"),
            (std::set<std::string>{"errors.csv", "predictions.csv", "results.h5"}));
  // A signal after the last batch's progress line stops nothing: the run ends complete, exit 0.
  // Before the work is done, the handler's "stopping after the current batch" is answered by a
  // line saying it came too late (that alone read as a stopped run); after, the handler says
  // there is nothing to stop; after the process ended, nothing is said.
  test::SignalPlan late;
  late.after = {"120/120 images"};
  const auto l = test::run_signalled("exec " + base + " --out " + q(dir / "late"), late);
  EXPECT_EQ(l.status, 0) << l.output;
  EXPECT_NE(l.output.find("classified 120, failed 0"), std::string::npos) << l.output;
  EXPECT_EQ(l.output.find("stopped by"), std::string::npos) << l.output;
  const auto stopping = l.output.find("SIGTERM received: stopping after the current batch");
  const auto too_late = l.output.find(
      "attnscope: the SIGTERM came too late to stop anything: the run ends as it would have "
      "without it\n");
  if (stopping != std::string::npos) {
    EXPECT_NE(too_late, std::string::npos) << l.output;
    EXPECT_LT(stopping, too_late) << l.output;
  }
  if (too_late == std::string::npos && stopping == std::string::npos)
    std::cerr << "(the signal came after the work was done or the process ended)\n";
  EXPECT_EQ(compare(dir, dir / "full/results.h5", dir / "late/results.h5"), "OK\n");
}

// --tta averages over the whole dihedral group, so its probability is invariant and its maps
// (each mapped back before averaging) equivariant under any dihedral transform of the input:
// an image and its flipped / rotated copies, compared by h5py with numpy's own flips; a "max"
// map's maximum stays 1.
const char* kDihedralCheck = R"(
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], 'r')
tta = sys.argv[2] == 'tta'
ids = [s.decode() if isinstance(s, bytes) else s for s in f['images/id'][...]]
row = {i: k for k, i in enumerate(ids)}
prob = f['predictions/probability'][...]
ops = {'flip': np.fliplr, 'rot90': lambda m: np.rot90(m, -1), 'transpose': np.transpose}
worst_p, worst_m = 0.0, 0.0
for name, op in ops.items():
    a, b = row['orig'], row[name]
    worst_p = max(worst_p, float(np.abs(prob[a] - prob[b]).max()))
    for m in f['attention']:
        x = f['attention/' + m][...].astype(np.float64)
        scale = max(np.abs(x[a]).max(), 1e-12)
        worst_m = max(worst_m, float(np.abs(op(x[a]) - x[b]).max() / scale))
peaks = [np.abs(f['attention/' + m][...].reshape(len(ids), -1).max(1)) for m in f['attention']
         if f['attention/' + m].attrs['normalization'] == 'max']
print('peaks', len(peaks) > 0 and all((((p > 1 - 1e-5) & (p < 1 + 1e-5)) | (p == 0)).all()
                                     for p in peaks))
print('maps', sorted(f['attention']), 'std' if 'predictions/probability_std' in f else 'nostd')
print('worst_p %.3g worst_m %.3g' % (worst_p, worst_m))
)";

TEST(CliClassify, TtaIsInvariantToFlipsAndRotationsAndItsMapsEquivariant) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 1);
  cv::Mat orig;
  for (const auto& e : fs::directory_iterator(images + "/images"))
    orig = cv::imread(e.path().string(), cv::IMREAD_COLOR);
  ASSERT_EQ(orig.rows, 64);
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  cv::Mat flip, rot, tr;
  cv::flip(orig, flip, 1);
  cv::rotate(orig, rot, cv::ROTATE_90_CLOCKWISE);
  cv::transpose(orig, tr);
  ASSERT_TRUE(cv::imwrite((in / "orig.png").string(), orig));
  ASSERT_TRUE(cv::imwrite((in / "flip.png").string(), flip));
  ASSERT_TRUE(cv::imwrite((in / "rot90.png").string(), rot));
  ASSERT_TRUE(cv::imwrite((in / "transpose.png").string(), tr));
  const auto script = dir / "dihedral.py";
  std::ofstream(script) << kDihedralCheck;
  auto worst = [&](const std::string& flags, const std::string& out, const std::string& mode) {
    const auto r = test::run_process(exe() + " classify --model " + q(model) + " --input " +
                                     q(in.string()) + " --out " + q(dir / out) + flags);
    EXPECT_EQ(r.status, 0) << r.output;
    const auto py = test::run_process(test::python() + " " + q(script) + " " +
                                      q(dir / (out + "/results.h5")) + " " + mode);
    EXPECT_EQ(py.status, 0) << py.output;
    std::istringstream lines(py.output.substr(py.output.find("worst_p")));
    std::string key;
    double p = 1, m = 1;
    lines >> key >> p >> key >> m;
    return std::make_tuple(py.output, p, m);
  };
  const auto [text, p, m] = worst(" --tta", "tta", "tta");
  EXPECT_NE(text.find("'gradcam'"), std::string::npos) << text;
  // A "max" map's maximum is 1 also after the mean of the 8 (it was below 1 where they
  // disagreed, while the schema says each map is divided by its maximum).
  EXPECT_NE(text.find("peaks True"), std::string::npos) << text;
  EXPECT_NE(text.find(" std"), std::string::npos) << text;
  EXPECT_LT(p, 1e-5) << text;
  EXPECT_LT(m, 1e-4) << text;
  // Without --tta the untrained model is neither: the checks above can fail.
  const auto [plain_text, plain_p, plain_m] = worst("", "plain", "plain");
  EXPECT_NE(plain_text.find("nostd"), std::string::npos) << plain_text;
  EXPECT_GT(plain_m, 1e-3) << plain_text;
  EXPECT_GT(plain_p, 1e-5) << plain_text;
  // A --tta file of an earlier build (its max maps peak below 1) is not continued on another
  // scale: --resume says why and leaves the file as it was.
  const auto file = dir / "tta/results.h5";
  const auto scaled = test::run_process(
      test::python() + " -c \"import h5py; f=h5py.File('" + file +
      "','a'); d=f['attention/gradcam']; r=[i for i in range(d.shape[0]) if d[i].max()>0][-1]; "
      "d[r]=d[r]*0.75; print(r)\"");
  ASSERT_EQ(scaled.status, 0) << scaled.output;
  const auto row = scaled.output.substr(0, scaled.output.find('\n'));
  const auto before = test::read_text(file);
  const auto resumed =
      test::run_process(exe() + " classify --model " + q(model) + " --input " + q(in.string()) +
                        " --out " + q(dir / "tta") + " --tta --resume 2>&1");
  EXPECT_EQ(resumed.status, 1) << resumed.output;
  EXPECT_NE(resumed.output.find("/attention/gradcam: row " + row +
                                " peaks at 0.75: written by an attnscope before the --tta "
                                "\"max\" maps were divided again"),
            std::string::npos)
      << resumed.output;
  EXPECT_EQ(test::read_text(file), before);
  // This build's own file resumes (nothing left to classify).
  const auto own = test::run_process(exe() + " classify --model " + q(model) + " --input " +
                                     q(in.string()) + " --out " + q(dir / "tta2") + " --tta");
  ASSERT_EQ(own.status, 0) << own.output;
  const auto again =
      test::run_process(exe() + " classify --model " + q(model) + " --input " + q(in.string()) +
                        " --out " + q(dir / "tta2") + " --tta --resume 2>&1");
  EXPECT_EQ(again.status, 0) << again.output;
}

TEST(CliClassify, TwoShardsMergedEqualOneRun) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 9);
  std::ofstream(images + "/images/broken.png") << "not an image";
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --batch-size 2";
  ASSERT_EQ(test::run_process(base + " --out " + q(dir / "one")).status, 0);
  const auto s0 = test::run_process(base + " --shard 0/2 --out " + q(dir / "s0"));
  ASSERT_EQ(s0.status, 0) << s0.output;
  // The second shard from torchrun's variables.
  const auto s1 = test::run_process("RANK=1 WORLD_SIZE=2 " + base + " --out " + q(dir / "s1"));
  ASSERT_EQ(s1.status, 0) << s1.output;
  const auto m = test::run_process(exe() + " merge " + q(dir / "s0/results.h5") + " " +
                                   q(dir / "s1/results.h5") + " --out " + q(dir / "m.h5"));
  ASSERT_EQ(m.status, 0) << m.output;
  EXPECT_EQ(compare(dir, dir / "one/results.h5", dir / "m.h5"), "OK\n");
  EXPECT_EQ(m.output.find("warning"), std::string::npos) << m.output;
  // One shard of two merged alone is said: half the images are missing.
  const auto half = test::run_process(exe() + " merge " + q(dir / "s0/results.h5") + " --out " +
                                      q(dir / "half.h5"));
  EXPECT_EQ(half.status, 0) << half.output;
  EXPECT_NE(half.output.find("warning: " + dir / "half.h5" +
                             " holds 1 of 2 shards: shard 1/2 is missing (merge every shard's "
                             "results.h5)"),
            std::string::npos)
      << half.output;
  // The merged file records the shard it holds: merged with the other shard it makes the
  // whole run, without a warning; merged alone again it still says which shard is missing.
  const auto shards_of = test::run_process(
      test::python() +
      " -c \"import h5py,sys; print(h5py.File(sys.argv[1],'r').attrs['merged_shards'])\" " +
      q(dir / "half.h5"));
  EXPECT_EQ(shards_of.output, "[\"0/2\"]\n");
  const auto whole = test::run_process(exe() + " merge " + q(dir / "s1/results.h5") + " " +
                                       q(dir / "half.h5") + " --out " + q(dir / "whole.h5"));
  ASSERT_EQ(whole.status, 0) << whole.output;
  EXPECT_EQ(whole.output.find("warning"), std::string::npos) << whole.output;
  EXPECT_EQ(compare(dir, dir / "one/results.h5", dir / "whole.h5"), "OK\n");
  const auto again =
      test::run_process(exe() + " merge " + q(dir / "half.h5") + " --out " + q(dir / "again.h5"));
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_NE(again.output.find("warning: " + dir / "again.h5" +
                              " holds 1 of 2 shards: shard 1/2 is missing"),
            std::string::npos)
      << again.output;
  // A shard value that is no pair of numbers (crafted, 20 digits) says nothing: the merge
  // ends as without it (it ended in "error: stoll" after the file was written).
  fs::copy_file(dir / "s0/results.h5", dir / "odd.h5");
  ASSERT_EQ(test::run_process(test::python() +
                              " -c \"import h5py,sys; "
                              "h5py.File(sys.argv[1],'a').attrs['shard'] = "
                              "'99999999999999999999/2'\" " +
                              q(dir / "odd.h5"))
                .status,
            0);
  const auto odd = test::run_process(exe() + " merge " + q(dir / "odd.h5") + " --out " +
                                     q(dir / "odd_merged.h5"));
  EXPECT_EQ(odd.status, 0) << odd.output;
  EXPECT_EQ(odd.output.find("warning"), std::string::npos) << odd.output;
  EXPECT_NE(odd.output.find("merged 1 file: "), std::string::npos) << odd.output;
  // Overlapping shards are refused, naming the file.
  const auto twice = test::run_process(exe() + " merge " + q(dir / "s0/results.h5") + " " +
                                       q(dir / "s0/results.h5") + " --out " + q(dir / "x.h5"));
  EXPECT_NE(twice.status, 0);
  EXPECT_NE(twice.output.find("s0/results.h5"), std::string::npos) << twice.output;
  EXPECT_FALSE(fs::exists(dir / "x.h5"));
  // A shard with a dataset the first lacks is refused naming it; one holding an id in two rows
  // says so (it named its own file as the other holder).
  fs::copy_file(dir / "s1/results.h5", dir / "extra.h5");
  fs::copy_file(dir / "s1/results.h5", dir / "dup.h5");
  ASSERT_EQ(test::run_process(test::python() + " -c \"import h5py,sys; "
                              "h5py.File(sys.argv[1],'a')['notes/x'] = [1]; "
                              "f = h5py.File(sys.argv[2],'a'); "
                              "f['images/id'][1] = f['images/id'][0]\" " +
                              q(dir / "extra.h5") + " " + q(dir / "dup.h5"))
                .status,
            0);
  const auto dup = test::run_process(exe() + " merge " + q(dir / "s0/results.h5") + " " +
                                     q(dir / "dup.h5") + " --out " + q(dir / "x.h5"));
  EXPECT_EQ(dup.status, 1) << dup.output;
  EXPECT_NE(dup.output.find(dir / "dup.h5" + ": cannot be merged: image id '"), std::string::npos)
      << dup.output;
  EXPECT_NE(dup.output.find("' is in two of its rows (images/id row 0 and images/id row 1)"),
            std::string::npos)
      << dup.output;
  const auto extra = test::run_process(exe() + " merge " + q(dir / "s1/results.h5") + " " +
                                       q(dir / "extra.h5") + " --out " + q(dir / "x.h5"));
  EXPECT_EQ(extra.status, 1) << extra.output;
  EXPECT_NE(extra.output.find(dir / "extra.h5" + ": cannot be merged with " + dir /
                              "s1/results.h5" + ": it holds other datasets (has /notes/x;"),
            std::string::npos)
      << extra.output;
  // Shards rewritten by another tool: h5py stores a rewritten dataset contiguous (attnscope's
  // are chunked, which an appendable merged file needs): the merge still equals one run. A
  // shard one of whose datasets lacks rows is refused naming that file and dataset (s0: inputs
  // 0, 2, ..., 8 of the 10, broken.png first among them, so 4 images; logits cut to 3 rows).
  const auto script = dir / "rewrite.py";
  std::ofstream(script) << R"(
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], 'r+')
names = []
f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
for n in names:
    data, attrs = f[n][...], dict(f[n].attrs)
    if sys.argv[2] == 'short' and n == 'predictions/logits': data = data[:-1]
    del f[n]
    if sys.argv[2] == 'huge' and n.startswith('attention/'):  # sparse: nothing written
        d = f.create_dataset(n, shape=(len(data), 100000, 100000), dtype='f4',
                             chunks=(1, 1000, 1000))
    else:
        d = f.create_dataset(n, data=data)
    for k, v in attrs.items(): d.attrs[k] = v
print(len(names))
)";
  const auto rewrite = [&](const std::string& file, const char* how) {
    return test::run_process(test::python() + " " + q(script) + " " + q(file) + " " + how);
  };
  const auto merge = [&](const std::string& out) {
    return test::run_process(exe() + " merge " + q(dir / "s0/results.h5") + " " +
                             q(dir / "s1/results.h5") + " --out " + q(out));
  };
  const auto r1 = rewrite(dir / "s1/results.h5", "all");
  ASSERT_EQ(r1.status, 0) << r1.output;
  const auto m2 = merge(dir / "m2.h5");
  ASSERT_EQ(m2.status, 0) << m2.output;
  EXPECT_EQ(compare(dir, dir / "one/results.h5", dir / "m2.h5"), "OK\n");
  const auto r0 = rewrite(dir / "s0/results.h5", "short");
  ASSERT_EQ(r0.status, 0) << r0.output;
  const auto bad = merge(dir / "m3.h5");
  EXPECT_EQ(bad.status, 1) << bad.output;
  EXPECT_NE(bad.output.find(dir / "s0/results.h5" + ":/predictions/logits: holds 3 rows for "
                                                    "the file's 4 images"),
            std::string::npos)
      << bad.output;
  EXPECT_FALSE(fs::exists(dir / "m3.h5"));
  // A map of (100000, 100000) per image (sparse: a small file) is refused naming the file and
  // dataset before anything is allocated or written (a row was 40 GB: bad_alloc).
  ASSERT_EQ(rewrite(dir / "s1/results.h5", "huge").status, 0);
  const auto huge = test::run_process(exe() + " merge " + q(dir / "s1/results.h5") + " " +
                                      q(dir / "s0/results.h5") + " --out " + q(dir / "m4.h5"));
  EXPECT_EQ(huge.status, 1) << huge.output;
  EXPECT_NE(huge.output.find(dir / "s1/results.h5" + ":/attention/"), std::string::npos)
      << huge.output;
  EXPECT_NE(huge.output.find("has rows of shape (rows, 100000, 100000), larger than the 1024 MiB"),
            std::string::npos)
      << huge.output;
  EXPECT_FALSE(fs::exists(dir / "m4.h5"));
  for (const auto& e : fs::directory_iterator(dir.path()))
    EXPECT_EQ(e.path().filename().string().find("tmp"), std::string::npos) << e.path();
}

// --precision bf16: every forward pass in bfloat16 autocast. Recorded as the root attribute
// `precision`; every dataset keeps its shape and float32 type; the probabilities stay within
// bfloat16's reach of the float32 run's (an untrained model: probabilities near 0.5) but are
// not that run's (autocast is on). A bf16 run is not resumed in fp32 and shards of both
// precisions are not merged, each refusal naming the file and `precision`.
TEST(CliClassify, Bf16PrecisionIsRecordedNearFloat32AndNeverMixedWithIt) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 6);
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --batch-size 4 --tta";
  const auto fp32 = test::run_process(base + " --out " + q(dir / "fp32"));
  ASSERT_EQ(fp32.status, 0) << fp32.output;
  const auto bf16 = test::run_process(base + " --precision bf16 --out " + q(dir / "bf16"));
  ASSERT_EQ(bf16.status, 0) << bf16.output;
  const auto script = dir / "precision.py";
  std::ofstream(script) << R"(
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], 'r'), h5py.File(sys.argv[2], 'r')
print(a.attrs['precision'], b.attrs['precision'])
names = []
a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
print(all(a[n].shape == b[n].shape and a[n].dtype == b[n].dtype for n in names))
print(b['predictions/logits'].dtype, len(a['predictions/probability']))
d = np.abs(a['predictions/probability'][...] - b['predictions/probability'][...]).max()
print(0 < d < 0.05, d)
)";
  const auto py = test::run_process(test::python() + " " + q(script) + " " +
                                    q(dir / "fp32/results.h5") + " " + q(dir / "bf16/results.h5"));
  ASSERT_EQ(py.status, 0) << py.output;
  EXPECT_EQ(py.output.substr(0, py.output.rfind("True ") + 5), "fp32 bf16\nTrue\nfloat32 6\nTrue ")
      << py.output;
  const auto resumed = test::run_process(base + " --resume --out " + q(dir / "bf16"));
  EXPECT_EQ(resumed.status, 1) << resumed.output;
  EXPECT_NE(resumed.output.find("cannot resume: its precision differs from this run's (stored "
                                "bf16, now fp32)"),
            std::string::npos)
      << resumed.output;
  const auto merged = test::run_process(exe() + " merge " + q(dir / "fp32/results.h5") + " " +
                                        q(dir / "bf16/results.h5") + " --out " + q(dir / "m.h5"));
  EXPECT_EQ(merged.status, 1) << merged.output;
  EXPECT_NE(merged.output.find(dir / "bf16/results.h5"), std::string::npos) << merged.output;
  EXPECT_NE(merged.output.find("its precision differs (bf16 vs fp32)"), std::string::npos)
      << merged.output;
  EXPECT_FALSE(fs::exists(dir / "m.h5"));
  // A file from before the attribute existed ran in float32: an fp32 run resumes it.
  const auto strip = test::run_process(
      test::python() +
      " -c \"import h5py,sys; del h5py.File(sys.argv[1],'r+').attrs['precision']\" " +
      q(dir / "fp32/results.h5"));
  ASSERT_EQ(strip.status, 0) << strip.output;
  const auto old = test::run_process(base + " --resume --out " + q(dir / "fp32"));
  EXPECT_EQ(old.status, 0) << old.output;
}

// The tensor cache (runtime/tensor_cache.h) serves every tensor of a run from kept blocks:
// results equal a run on LibTorch's own allocator, TTA and a last, smaller batch included.
TEST(CliClassify, TheTensorCacheChangesNoResult) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 9);
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --batch-size 4 --tta --overlays";
  const auto cached = test::run_process(base + " --out " + q(dir / "cached"));
  ASSERT_EQ(cached.status, 0) << cached.output;
  const auto own =
      test::run_process("ATTNSCOPE_TENSOR_CACHE=0 " + base + " --out " + q(dir / "own"));
  ASSERT_EQ(own.status, 0) << own.output;
  EXPECT_EQ(compare(dir, dir / "cached/results.h5", dir / "own/results.h5"), "OK\n");
}

// merge killed at any moment, or on a full disk: the previous merged file or the complete new
// one.
TEST(CliClassify, MergeKilledAtAnyMomentLeavesTheOldOrTheNewFile) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 30);
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --batch-size 4";
  for (int i = 0; i < 3; ++i) {
    const auto r = test::run_process(base + " --shard " + std::to_string(i) + "/3 --out " +
                                     q(dir / ("s" + std::to_string(i))));
    ASSERT_EQ(r.status, 0) << r.output;
  }
  const auto out = dir / "m.h5";
  const auto merge = exe() + " merge " + q(dir / "s0/results.h5") + " " + q(dir / "s1/results.h5");
  ASSERT_EQ(test::run_process(merge + " --out " + q(out)).status, 0);
  std::ifstream old_in(out, std::ios::binary);
  const std::string old_bytes((std::istreambuf_iterator<char>(old_in)), {});
  const auto old_ids = pipeline::read_results(out).ids;
  // An existing --out is replaced only with --overwrite (it was replaced without it), and only
  // a results file.
  const auto without =
      test::run_process(merge + " " + q(dir / "s2/results.h5") + " --out " + q(out));
  EXPECT_EQ(without.status, 1) << without.output;
  EXPECT_EQ(without.output, "error: " + out + ": exists; pass --overwrite to replace it\n");
  EXPECT_EQ(test::read_text(out), old_bytes);
  std::ofstream(dir / "notes.h5") << "my notes";
  const auto other = test::run_process(merge + " --overwrite --out " + q(dir / "notes.h5"));
  EXPECT_EQ(other.status, 1) << other.output;
  EXPECT_NE(other.output.find("notes.h5: exists and is not an attnscope results file; refusing "
                              "to replace it"),
            std::string::npos)
      << other.output;
  EXPECT_EQ(test::read_text(dir / "notes.h5"), "my notes");
  const auto all = merge + " " + q(dir / "s2/results.h5") + " --overwrite --out " + q(out);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(test::run_process(all).status, 0);
  const int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count());
  const auto new_ids = pipeline::read_results(out).ids;
  ASSERT_EQ(new_ids.size(), 30u);
  ASSERT_LT(old_ids.size(), new_ids.size());
  std::mt19937 rng(26);
  int killed = 0;
  // A later run may be faster than the timed one: when none of the 5 kills landed, up to 6 more
  // with the window halved each time.
  int window = ms;
  for (int round = 0; round < 5 || (killed == 0 && round < 11); ++round) {
    if (round >= 5) window = std::max(1, window / 2);
    std::ofstream(out, std::ios::binary) << old_bytes;
    const int at = std::uniform_int_distribution<int>(0, window)(rng);
    const auto r = test::run_killed_after(all, at);
    killed += r.killed;
    std::vector<std::string> ids;
    const auto error = test::error_of([&] { ids = pipeline::read_results(out).ids; });
    EXPECT_EQ(error, "") << "after a kill at " << at << " ms";
    EXPECT_TRUE(ids == old_ids || ids == new_ids)
        << "after a kill at " << at << " ms: " << ids.size() << " ids";
  }
  EXPECT_GT(killed, 0);
  // A full disk (RLIMIT_FSIZE below the new file's size): an error naming the output, the
  // previous merged file byte for byte, no temporary of its own left beside it (the SIGKILLed
  // runs above may leave theirs).
  std::ofstream(out, std::ios::binary) << old_bytes;
  const auto names = test::file_names(dir.path().string());
  const auto full = test::run_with_file_size_limit(all, 64 * 1024);
  EXPECT_EQ(full.status, 1) << full.output;
  // The file asked for, with the system's reason (not a guess, not the temporary's name).
  EXPECT_NE(full.output.find("error: " + out + ":"), std::string::npos) << full.output;
  EXPECT_NE(full.output.find("File too large"), std::string::npos) << full.output;
  EXPECT_EQ(full.output.find(".tmp"), std::string::npos) << full.output;
  EXPECT_EQ(full.output.find("disk full?"), std::string::npos) << full.output;
  EXPECT_TRUE(test::read_text(out) == old_bytes);
  EXPECT_EQ(test::file_names(dir.path().string()), names);
  // A folder that is not there is named before the shards are read.
  const auto nowhere = test::run_process(merge + " --out " + q(dir / "no/such/m.h5"));
  EXPECT_EQ(nowhere.status, 1) << nowhere.output;
  EXPECT_EQ(nowhere.output, "error: " + (dir / "no/such/m.h5") + ": the folder " +
                                (dir / "no/such") + " does not exist\n");
}

TEST(CliClassify, BadFilesGoToErrorsAndEveryGoodFileIsClassified) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  cv::Mat bgr(60, 80, CV_8UC3, cv::Scalar(40, 90, 200));
  std::vector<std::string> good{"good.jpg",
                                "deep.png",
                                "grey.png",
                                "rgba.png",
                                "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC.png",
                                "<b>x<i>&amp;\"q\",c.png"};
  ASSERT_TRUE(cv::imwrite((in / good[0]).string(), bgr));
  ASSERT_TRUE(cv::imwrite((in / good[1]).string(),
                          cv::Mat(60, 80, CV_16UC3, cv::Scalar(9000, 30000, 60000))));
  ASSERT_TRUE(cv::imwrite((in / good[2]).string(), cv::Mat(60, 80, CV_8UC1, cv::Scalar(128))));
  ASSERT_TRUE(
      cv::imwrite((in / good[3]).string(), cv::Mat(60, 80, CV_8UC4, cv::Scalar(1, 2, 3, 4))));
  ASSERT_TRUE(cv::imwrite((in / good[4]).string(), bgr));
  ASSERT_TRUE(cv::imwrite((in / good[5]).string(), bgr));
  const auto cmyk = test::run_process(test::python() +
                                      " -c \"from PIL import Image; Image.new('CMYK', (80, 60), "
                                      "(0, 255, 255, 0)).save('" +
                                      (in / "cmyk.jpg").string() + "')\"");
  if (cmyk.status == 0) good.push_back("cmyk.jpg");
  std::ofstream(in / "zero.jpg");
  std::ofstream(in / "text.png") << "this is not an image\n";
  std::ofstream(in / "notes.txt") << "a note";
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
  // Entries that are no files: failures with their reason too (they were left out silently),
  // and a link to a folder is not followed but said.
  fs::create_symlink("/nonexistent/gone.jpg", in / "gone.jpg");
  ASSERT_EQ(::mkfifo((in / "pipe.jpg").c_str(), 0600), 0);
  fs::create_directories(dir.path() / "elsewhere");
  ASSERT_TRUE(cv::imwrite((dir.path() / "elsewhere/other.jpg").string(), bgr));
  fs::create_directory_symlink(dir.path() / "elsewhere", in / "linked");
  const std::vector<std::string> bad{"zero.jpg",    "text.png", "notes.txt", "cut.jpg",
                                     "corrupt.jpg", "huge.png", "gone.jpg",  "pipe.jpg"};
  const auto out = dir / "run";
  const auto r =
      test::run_process(exe() + " classify --model " + q(model) + " --input " + q(in.string()) +
                        " " + q(dir / "missing.jpg") + " --out " + q(out) + " --batch-size 3");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto errors = read_csv(out + "/errors.csv");
  std::map<std::string, std::string> reason;
  for (std::size_t i = 1; i < errors.size(); ++i)
    reason[fs::path(errors[i].at(1)).filename().string()] = errors[i].at(2);
  for (const auto& b : bad)
    EXPECT_TRUE(reason.count(b) && !reason[b].empty()) << b << "\n" << r.output;
  EXPECT_TRUE(reason.count("missing.jpg")) << r.output;
  EXPECT_EQ(reason.size(), bad.size() + 1) << r.output;
  EXPECT_NE(reason["gone.jpg"].find("no such file"), std::string::npos) << reason["gone.jpg"];
  EXPECT_NE(reason["pipe.jpg"].find("is not a regular file"), std::string::npos)
      << reason["pipe.jpg"];
  EXPECT_NE(
      r.output.find("warning: " + (in / "linked").string() + ": a link to a folder, not followed"),
      std::string::npos)
      << r.output;
  // A folder that cannot be searched is one warning, not a "no such file" per entry. Root
  // reads every folder: only checked as another user.
  if (::geteuid() != 0) {
    const auto locked = dir.path() / "locked";
    fs::create_directories(locked);
    ASSERT_TRUE(cv::imwrite((locked / "a.jpg").string(), bgr));
    fs::permissions(locked, fs::perms::owner_read);
    const auto l = test::run_process(exe() + " classify --model " + q(model) + " --input " +
                                     q(dir.path().string()) + " --out " + q(dir / "locked-run"));
    fs::permissions(locked, fs::perms::owner_all);
    EXPECT_NE(l.output.find("warning: " + locked.string() + ": cannot read the folder"),
              std::string::npos)
        << l.output;
    EXPECT_EQ(test::read_text(dir / "locked-run/errors.csv").find("a.jpg"), std::string::npos);
  }
  const auto res = pipeline::read_results(out + "/results.h5");
  std::set<std::string> classified;
  for (const auto& p : res.paths)
    classified.insert(fs::path(p).filename().string());
  for (const auto& g : good)
    EXPECT_TRUE(classified.count(g)) << g << "\n" << r.output;
  EXPECT_EQ(classified.size(), good.size());
  EXPECT_NE(r.output.find("classified " + std::to_string(good.size()) + ", failed " +
                          std::to_string(bad.size() + 1)),
            std::string::npos)
      << r.output;
  // Nothing classifiable: exit status 1.
  const auto none = test::run_process(exe() + " classify --model " + q(model) + " --input " +
                                      q((in / "zero.jpg").string()) + " --out " + q(dir / "none"));
  EXPECT_EQ(none.status, 1) << none.output;
  EXPECT_NE(none.output.find("classified 0, failed 1"), std::string::npos) << none.output;
}

// --decode-reduce-to N applies decode.reduce_to to a checkpoint trained without it: the run
// equals one with a checkpoint whose config holds the key (the reduced pixels themselves are
// checked against OpenCV's reduced reads in Decode.ReducedJpegsAre...), differs from a
// full-size decode, is recorded in preprocessing_config, and 0 turns the checkpoint's key off.
TEST(CliClassify, DecodeReduceToOverridesTheCheckpointsDecodeAndIsRecorded) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  // The same weights with decode.reduce_to 64 in their preprocessing config.
  const auto reduced_model = dir / "reduced.h5";
  {
    auto loaded = pipeline::load_image_classifier(model);
    auto meta = loaded.meta;
    meta.preprocessing_config = {{"steps", {{{"op", "resize"}, {"size", 64}}}},
                                 {"decode", {{"reduce_to", 64}}}};
    pipeline::save_image_classifier(reduced_model, *loaded.model, loaded.config, meta);
  }
  // JPEGs of 256 x 192 with detail at every scale: 1/2 (128 x 96) is the largest reduction
  // that keeps the short side >= 64.
  const auto in = dir / "jpegs";
  fs::create_directories(in);
  std::mt19937 rng(11);
  for (int i = 0; i < 5; ++i) {
    cv::Mat img(192, 256, CV_8UC3);
    cv::randu(img, cv::Scalar::all(0), cv::Scalar::all(255));
    for (int y = 0; y < img.rows; ++y)
      for (int x = 0; x < img.cols; ++x)
        img.at<cv::Vec3b>(y, x)[i % 3] = static_cast<uchar>((x * 255) / img.cols);
    ASSERT_TRUE(
        cv::imwrite(in + "/img" + std::to_string(i) + ".jpg", img, {cv::IMWRITE_JPEG_QUALITY, 90}));
  }
  const auto run = [&](const std::string& ckpt, const std::string& out, const std::string& flags) {
    const auto r = test::run_process(exe() + " classify --model " + q(ckpt) + " --input " + q(in) +
                                     " --out " + q(dir / out) + " --batch-size 2" + flags);
    EXPECT_EQ(r.status, 0) << flags << "\n" << r.output;
    return dir / out + "/results.h5";
  };
  const auto full = run(model, "full", "");
  const auto flag = run(model, "flag", " --decode-reduce-to 64");
  const auto key = run(reduced_model, "key", "");
  const auto off = run(reduced_model, "off", " --decode-reduce-to 0");
  EXPECT_EQ(compare(dir, flag, key), "OK\n");
  EXPECT_EQ(compare(dir, off, full), "OK\n");
  EXPECT_NE(compare(dir, flag, full).find("images/preprocessed: values differ"), std::string::npos);
  const auto config = [](const std::string& h5) {
    return nlohmann::json::parse(pipeline::read_results(h5).attributes.at("preprocessing_config"));
  };
  EXPECT_EQ(config(flag).at("decode").value("reduce_to", 0), 64);
  EXPECT_EQ(config(flag), config(key));
  EXPECT_EQ(config(off), config(full));
  EXPECT_FALSE(config(full).at("decode").contains("reduce_to"));
  // Resuming with another decoding is refused, naming the key.
  const auto r = test::run_process(exe() + " classify --model " + q(model) + " --input " + q(in) +
                                   " --out " + q(dir / "flag") + " --resume");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("cannot resume: its preprocessing_config differs from this run's in "
                          "decode.reduce_to (stored 64, now absent)\n"),
            std::string::npos)
      << r.output;
  const auto bad = test::run_process(exe() + " classify --model " + q(model) + " --input " + q(in) +
                                     " --out " + q(dir / "bad") + " --decode-reduce-to -1");
  EXPECT_EQ(bad.status, 2) << bad.output;
}

// A checkpoint whose preprocessing makes images too small for its network (2 px for
// attn_small's pooling): classify and evaluate stop with one line naming the checkpoint and the
// size, LibTorch's message in brackets, never its C++ stack, and classify writes nothing.
TEST(CliClassify, ACheckpointWhoseImagesAreTooSmallForItsNetworkIsOneLine) {
  test::TempDir dir;
  const auto path = make_checkpoint(dir, 2);
  const auto images = make_images(dir, 2);
  const std::string expected =
      "error: " + path + ": cannot classify the 2 x 2 images its preprocessing makes (";
  const auto c = test::run_process(exe() + " classify --model " + q(path) + " --input " +
                                   q(images + "/images") + " --out " + q(dir / "out"));
  EXPECT_EQ(c.status, 1) << c.output;
  EXPECT_EQ(c.output.rfind(expected, 0), 0u) << c.output;
  EXPECT_EQ(std::count(c.output.begin(), c.output.end(), '\n'), 1) << c.output;
  EXPECT_FALSE(fs::exists(dir / "out/results.h5"));
  const auto e = test::run_process(exe() + " evaluate --model " + q(path) + " --data " +
                                   q(images + "/labels.csv"));
  EXPECT_EQ(e.status, 1) << e.output;
  EXPECT_EQ(e.output.rfind(expected, 0), 0u) << e.output;
  EXPECT_EQ(e.output.find("frame #"), std::string::npos) << e.output;
  // A ViT whose preprocessing makes 65 px images its 8 px patches cannot tile: the file is named
  // too (the model's own "multiples of 8" came alone before).
  const auto vit = make_checkpoint(dir, 65, {}, "vit65", "vit_mini_patch8");
  const auto v = test::run_process(exe() + " classify --model " + q(vit) + " --input " +
                                   q(images + "/images") + " --out " + q(dir / "vit_out"));
  EXPECT_EQ(v.status, 1) << v.output;
  EXPECT_EQ(
      v.output.rfind(
          "error: " + vit + ": cannot classify the 65 x 65 images its preprocessing makes (", 0),
      0u)
      << v.output;
  EXPECT_NE(v.output.find("multiples of 8"), std::string::npos) << v.output;
}

// What a checkpoint says is checked as evaluate checks it, each a line naming the file, exit 1,
// before anything is written: a threshold outside [0, 1] (5 labelled every image benign) or not
// a number, more class names than classes, a preprocessing whose output size follows the
// input's (results.h5 holds one size), weights that are finite but give NaN for every image
// (a negative BatchNorm variance). Weights that overflow only for some images stop the run at
// the first such image, naming it, with the images before it stored. No input at all: exit 1
// with an error line, not only "classified 0".
TEST(CliClassify, CraftedCheckpointsAndNonFiniteOutputsAreOneLineNamingThem) {
  test::TempDir dir;
  const auto images = make_images(dir, 2);
  const auto craft = [&](const std::string& name, const CheckpointEdit& edit) {
    return make_checkpoint(dir, 64, edit, name);
  };
  using Meta = pipeline::CheckpointMeta;
  using Model = models::vision::ImageClassifier;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {craft("threshold5", [](Meta& m, Model&) { m.extra["threshold"] = 5; }),
       "checkpoint threshold 5 must lie in [0, 1]"},
      {craft("threshold_x", [](Meta& m, Model&) { m.extra["threshold"] = "x"; }),
       "checkpoint attribute extra.threshold is \"x\"; expected a number"},
      // Files written before extra held it kept the threshold in provenance: checked the same.
      {craft("provenance_threshold7",
             [](Meta& m, Model&) {
               if (m.extra.is_object()) m.extra.erase("threshold");
               m.provenance["threshold"] = 7;
             }),
       "checkpoint threshold 7 must lie in [0, 1]"},
      {craft("temperature_x", [](Meta& m, Model&) { m.extra["temperature"] = "x"; }),
       "checkpoint attribute extra.temperature is \"x\"; expected a number"},
      {craft("three_names",
             [](Meta& m, Model&) {
               m.class_names = {"a", "b", "c"};
             }),
       "names 3 classes"},
      {craft("no_resize",
             [](Meta& m, Model&) {
               m.preprocessing_config = {{"steps", nlohmann::json::array()}};
             }),
       "its preprocessing makes images whose size follows the input's (256 x 256 from 256 x 256, "
       "512 x 384 from 512 x 384)"},
      {craft("negative_variance",
             [](Meta&, Model& m) {
               for (auto& b : m.named_buffers())
                 if (b.key().find("running_var") != std::string::npos) b.value().fill_(-1);
             }),
       "tensor 'features.1.running_var' holds negative variances; refusing to load a broken "
       "model"},
      // Finite weights whose sums overflow float32 for any image.
      {craft("huge_biases",
             [](Meta&, Model& m) {
               torch::NoGradGuard no_grad;
               for (auto& p : m.named_parameters())
                 if (p.key().find("bias") != std::string::npos) p.value().fill_(3e38);
             }),
       "gives non-finite outputs (NaN or inf) for a plain grey image"}};
  for (const auto& [path, expected] : cases) {
    const auto out = dir / ("out_" + fs::path(path).stem().string());
    const auto c = test::run_process(exe() + " classify --model " + q(path) + " --input " +
                                     q(images + "/images") + " --out " + q(out) + " 2>&1");
    EXPECT_EQ(c.status, 1) << path << c.output;
    EXPECT_EQ(c.output.rfind("error: " + path + ": " + expected, 0), 0u) << c.output;
    EXPECT_EQ(std::count(c.output.begin(), c.output.end(), '\n'), 1) << c.output;
    EXPECT_FALSE(fs::exists(out + "/results.h5")) << path;
  }
  // Inputs normalised with std 1e-6 around mid-grey: 0 for a grey image, up to 5e5 for others;
  // a first convolution of 1e34 keeps the grey image finite and overflows the others.
  const auto overflowing = craft("overflowing", [&](Meta& m, Model& model) {
    m.preprocessing_config["normalize"] = {{"mean", {128.0 / 255, 128.0 / 255, 128.0 / 255}},
                                           {"std", {1e-6, 1e-6, 1e-6}}};
    torch::NoGradGuard no_grad;
    model.named_parameters().begin()->value().fill_(1e34);
  });
  const auto grey = dir / "grey.png";
  ASSERT_TRUE(cv::imwrite(grey, cv::Mat(64, 64, CV_8UC3, cv::Scalar::all(128))));
  const auto photo =
      images + "/images/" + fs::directory_iterator(images + "/images")->path().filename().string();
  const auto c = test::run_process(exe() + " classify --model " + q(overflowing) + " --input " +
                                   q(grey) + " " + q(photo) + " --batch-size 1 --out " +
                                   q(dir / "out_overflow") + " 2>&1");
  EXPECT_EQ(c.status, 1) << c.output;
  EXPECT_NE(c.output.find("error: " + overflowing + ": gives non-finite outputs (NaN or inf) for " +
                          photo + "; the images before it are stored"),
            std::string::npos)
      << c.output;
  const auto rows = test::run_process(
      test::python() +
      " -c \"import h5py,sys; print(h5py.File(sys.argv[1],'r')['images/id'].shape[0])\" " +
      q(dir / "out_overflow/results.h5"));
  EXPECT_EQ(rows.output, "1\n") << rows.output;
  // The grey image alone is finite, but the deletion curve's black substrate overflows (to
  // +inf past the first convolution's negative weights, NaN after the next): its deletion AUC
  // is NaN, which the file's readers take for "does not apply", so it is said.
  const auto substrate = craft("substrate", [&](Meta& m, Model& model) {
    m.preprocessing_config["normalize"] = {{"mean", {128.0 / 255, 128.0 / 255, 128.0 / 255}},
                                           {"std", {1e-6, 1e-6, 1e-6}}};
    torch::NoGradGuard no_grad;
    model.named_parameters().begin()->value().fill_(-1e34);
  });
  const auto measured = test::run_process(
      exe() + " classify --model " + q(substrate) + " --input " + q(grey) +
      " --faithfulness --faithfulness-steps 4 --out " + q(dir / "out_substrate") + " 2>&1");
  EXPECT_EQ(measured.status, 0) << measured.output;
  EXPECT_NE(measured.output.find("warning: --faithfulness: the model's output is not finite (NaN "
                                 "or inf) on the deletion or insertion images of 1 of 1 images "
                                 "(the first " +
                                 grey + ")"),
            std::string::npos)
      << measured.output;
  const auto deletion =
      test::run_process(test::python() +
                        " -c \"import h5py,sys,numpy as np; f=h5py.File(sys.argv[1],'r'); "
                        "print(bool(np.isnan(f['measures/random/deletion_auc'][0])))\" " +
                        q(dir / "out_substrate/results.h5"));
  EXPECT_EQ(deletion.output, "True\n") << deletion.output;
  // The 8 TTA logits are averaged in double: a bias near the largest float (every transform's
  // logits equal to it) overflowed their float32 mean.
  const auto big_bias = craft("big_bias", [&](Meta&, Model& model) {
    torch::NoGradGuard no_grad;
    auto params = model.named_parameters();
    params["classifier.weight"].zero_();
    params["classifier.bias"].copy_(torch::tensor({3e38f, 2.9e38f}));
  });
  const auto averaged = test::run_process(exe() + " classify --model " + q(big_bias) +
                                          " --input " + q(grey) + " --tta --out " +
                                          q(dir / "out_big") + " 2>&1");
  EXPECT_EQ(averaged.status, 0) << averaged.output;
  const auto logits = test::run_process(
      test::python() +
      " -c \"import h5py,sys,numpy as np; l=h5py.File(sys.argv[1],'r')['predictions/logits'][0]; "
      "print(bool((l == np.float32([3e38, 2.9e38])).all()))\" " +
      q(dir / "out_big/results.h5"));
  EXPECT_EQ(logits.output, "True\n") << logits.output;
  // Finite logits that the stored temperature (0.01, within its range) takes past the largest
  // float: the probabilities are NaN for every image, refused before anything is written as
  // for non-finite logits.
  const auto cold = craft("cold", [&](Meta& m, Model& model) {
    m.extra["temperature"] = 0.01;
    torch::NoGradGuard no_grad;
    auto params = model.named_parameters();
    params["classifier.weight"].zero_();
    params["classifier.bias"].copy_(torch::tensor({1e37f, 0.0f}));
  });
  const auto hot = test::run_process(exe() + " classify --model " + q(cold) + " --input " +
                                     q(grey) + " --out " + q(dir / "out_cold") + " 2>&1");
  EXPECT_EQ(hot.status, 1) << hot.output;
  EXPECT_NE(hot.output.find("error: " + cold +
                            ": its temperature 0.01 takes the logits of a plain grey image past "
                            "the largest float (the probabilities are NaN)"),
            std::string::npos)
      << hot.output;
  EXPECT_FALSE(fs::exists(dir / "out_cold")) << hot.output;
  // evaluate names the checkpoint and the image as classify does (it said "metrics: probability
  // [0, 0] is -nan", naming neither).
  const auto evaluated = test::run_process(exe() + " evaluate --model " + q(overflowing) +
                                           " --data " + q(images + "/labels.csv") + " 2>&1");
  EXPECT_EQ(evaluated.status, 1) << evaluated.output;
  EXPECT_EQ(evaluated.output.rfind("error: " + overflowing +
                                       ": gives non-finite outputs (NaN or inf) for " + images +
                                       "/images/synth_00000",
                                   0),
            0u)
      << evaluated.output;

  fs::create_directories(dir / "empty");
  const auto none =
      test::run_process(exe() + " classify --model " + q(make_checkpoint(dir)) + " --input " +
                        q(dir / "empty") + " --out " + q(dir / "out_none") + " 2>&1");
  EXPECT_EQ(none.status, 1) << none.output;
  EXPECT_NE(none.output.find("error: no image was classified: the inputs hold no image"),
            std::string::npos)
      << none.output;
  EXPECT_FALSE(fs::exists(dir / "out_none")) << none.output;  // nothing to --overwrite later

  // Every input failed: the line says where the reasons are and how to classify them again
  // (results.h5 holds the failures, so a plain rerun is refused); --resume keeps them failed.
  fs::create_directories(dir / "bad");
  std::ofstream(dir / "bad/lesion.jpg") << "not an image";
  const auto bad_model = make_checkpoint(dir);
  const auto all_failed = [&](const std::string& flags) {
    return test::run_process(exe() + " classify --model " + q(bad_model) + " --input " +
                             q(dir / "bad") + " --out " + q(dir / "out_bad") + " " + flags +
                             " 2>&1");
  };
  const std::string told = "error: no image was classified: all 1 failed (their reasons are in " +
                           (dir / "out_bad/errors.csv") +
                           "); once they are mended, classify them again with --overwrite";
  for (const auto* flags : {"", "--resume"}) {
    const auto r = all_failed(flags);
    EXPECT_EQ(r.status, 1) << flags << r.output;
    EXPECT_NE(r.output.find(told), std::string::npos) << flags << r.output;
  }
  ASSERT_TRUE(
      cv::imwrite(dir / "bad/lesion.jpg", cv::Mat(64, 64, CV_8UC3, cv::Scalar(40, 90, 160))));
  const auto mended = all_failed("--overwrite");
  EXPECT_EQ(mended.status, 0) << mended.output;
  EXPECT_NE(mended.output.find("classified 1, failed 0"), std::string::npos) << mended.output;
}

// A checkpoint's hair removal that would inpaint too much of an image (a crafted config: the
// images upscaled 3x, threshold 0, radius 20: masks of about 2 million pixels, where OpenCV's
// inpainting took 40 s for one of 332,000 and grows faster than the mask) fails those images,
// each a row naming its mask, and classifies the rest: a grey image has no hair mask at all.
TEST(CliClassify, HairRemovalTooCostlyForAnImageIsThatImagesErrorRow) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir, 64, [](pipeline::CheckpointMeta& m, auto&) {
    m.preprocessing_config = {
        {"steps",
         {{{"op", "resize"}, {"size", 1536}},
          {{"op", "hair_removal"}, {"kernel", 17}, {"threshold", 0}, {"inpaint_radius", 20}},
          {{"op", "resize"}, {"size", 64}}}}};
  });
  const auto in = dir / "in";
  fs::create_directories(in);
  cv::Mat noise(384, 512, CV_8UC3);
  cv::RNG(21).fill(noise, cv::RNG::UNIFORM, 0, 256);
  ASSERT_TRUE(cv::imwrite(in + "/noise1.png", noise));
  ASSERT_TRUE(cv::imwrite(in + "/noise2.png", 255 - noise));
  ASSERT_TRUE(cv::imwrite(in + "/grey.png", cv::Mat(384, 512, CV_8UC3, cv::Scalar::all(128))));
  const auto r = test::run_process("timeout -k 5 300 " + exe() + " classify --model " + q(model) +
                                   " --input " + q(in) + " --threads 2 --out " + q(dir / "out"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("classified 1, failed 2"), std::string::npos) << r.output;
  const auto results = pipeline::read_results(dir / "out/results.h5");
  ASSERT_EQ(results.ids, std::vector<std::string>{"grey"});
  ASSERT_EQ(results.errors.size(), 2u);
  for (const auto& e : results.errors) {
    EXPECT_EQ(e.reason.rfind("hair_removal: the hair mask covers ", 0), 0u) << e.reason;
    EXPECT_NE(e.reason.find(" of 2359296 pixels (1536 x 1536); inpainting them with radius 20 "
                            "is too much work for one image"),
              std::string::npos)
        << e.reason;
  }
}

// A batch that does not fit the memory limit stops the run with one line (the images are not
// failures of their own), keeping what earlier batches committed; attn_small's first activation
// at 1024 px, batch 8, is 1 GiB by itself.
TEST(CliClassify, ABatchPastTheMemoryLimitIsOneLine) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "no tensor cache under AddressSanitizer, so no limit to enforce";
#endif
  test::TempDir dir;
  const auto model = make_checkpoint(dir, 1024);
  const auto images = make_images(dir, 8);
  const auto r = test::run_process("ATTNSCOPE_MEMORY_LIMIT=1G " + exe() +
                                   " --threads 1 classify --model " + model + " --input " + images +
                                   "/images --batch-size 8 --out " + (dir / "out") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: out of memory: the next tensor ("), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(" MiB, past the 1024 MiB of ATTNSCOPE_MEMORY_LIMIT"), std::string::npos)
      << r.output;
  EXPECT_LT(r.output.size(), 1000u) << r.output;
}

// --masks: a path that is not a folder is an error naming it, before any work; a folder none
// of whose files matches an input is one warning, and the run goes on.
TEST(CliClassify, AMasksFolderThatIsMissingOrMatchesNothingIsSaidInOneLine) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 2);
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images");
  const auto missing =
      test::run_process(base + " --out " + q(dir / "a") + " --masks " + q(dir / "nowhere"));
  EXPECT_EQ(missing.status, 1) << missing.output;
  EXPECT_EQ(missing.output, "error: " + (dir / "nowhere") + ": is not a folder (--masks)\n");
  EXPECT_FALSE(fs::exists(dir / "a"));
  fs::create_directories(dir / "other_masks");
  std::ofstream(dir / "other_masks/unrelated_segmentation.png") << "x";
  const auto none =
      test::run_process(base + " --out " + q(dir / "b") + " --masks " + q(dir / "other_masks"));
  EXPECT_EQ(none.status, 0) << none.output;
  EXPECT_NE(none.output.find("warning: " + (dir / "other_masks") + ": no mask matches any input"),
            std::string::npos)
      << none.output;
  EXPECT_NE(none.output.find("classified 2, failed 0"), std::string::npos) << none.output;
  // The synthetic folder's own masks match: no warning.
  const auto matched =
      test::run_process(base + " --out " + q(dir / "c") + " --masks " + q(images + "/masks"));
  EXPECT_EQ(matched.status, 0) << matched.output;
  EXPECT_EQ(matched.output.find("no mask matches"), std::string::npos) << matched.output;
  // Without --faithfulness the masks feed nothing: said in one line.
  EXPECT_NE(matched.output.find("warning: --masks is for the measures of --faithfulness, which "
                                "was not given: no measure is computed\n"),
            std::string::npos)
      << matched.output;
}

// Another process holding the output folder's lock (util-linux flock(1), as a live classify
// run holds it: attnscope/folder_lock.h): a second run into it is refused before it touches
// anything, with --resume too, and the stored results stay byte for byte.
TEST(CliClassify, AFolderInUseByAnotherRunIsRefusedAndLeftAlone) {
  test::TempDir dir;
  if (!test::folders_lock(dir.path().string()))
    GTEST_SKIP() << "flock(2) on folders is not supported under " << dir.path();
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 6);
  const auto out = dir / "run";
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --out " + q(out) + " --batch-size 4";
  ASSERT_EQ(test::run_process(base).status, 0);
  const auto bytes = [&] {
    std::ifstream in(out + "/results.h5", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const auto before = bytes();
  const auto names = test::file_names(out);
  for (const char* flags : {" --resume", " --overwrite"}) {
    const auto r = test::run_process("flock -o " + q(out) + " " + base + flags);
    EXPECT_EQ(r.status, 1) << flags << "\n" << r.output;
    EXPECT_NE(r.output.find(out + ": is in use by another attnscope run"), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("its own --out"), std::string::npos) << r.output;
    EXPECT_EQ(test::file_names(out), names) << flags;
    EXPECT_TRUE(bytes() == before) << flags;
  }
  // The refused runs held nothing: the folder is free again.
  EXPECT_EQ(test::run_process("flock -n " + q(out) + " true").status, 0);
  EXPECT_EQ(test::run_process(base + " --resume").status, 0);
}

TEST(CliClassify, FullDiskFailsClearlyAndKeepsThePreviousResults) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 12);
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --out " + q(dir / "run");
  ASSERT_EQ(test::run_process(base).status, 0);
  const auto before = pipeline::read_results(dir / "run/results.h5");
  const auto r = test::run_with_file_size_limit(base + " --overwrite", 40 * 1024);
  EXPECT_NE(r.status, 0) << r.output;
  // The error names the file asked for, with the system's reason, not the temporary or a
  // replica the new file is built in, nor a guess ("disk full?" beside "File too large").
  EXPECT_NE(r.output.find("error: " + (dir / "run/results.h5")), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("File too large"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(".tmp"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("replica"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("disk full?"), std::string::npos) << r.output;
  const auto after = pipeline::read_results(dir / "run/results.h5");
  EXPECT_EQ(after.ids, before.ids);
  EXPECT_TRUE(torch::equal(after.logits, before.logits));
  // Resuming on a full disk fails clearly and leaves the file it continues intact (the file
  // is larger than the limit, so the replicas cannot be made).
  ASSERT_GT(fs::file_size(dir / "run/results.h5"), 40u * 1024u);
  const auto resumed = test::run_with_file_size_limit(base + " --resume", 40 * 1024);
  EXPECT_NE(resumed.status, 0) << resumed.output;
  EXPECT_EQ(resumed.signal, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("error: " + (dir / "run/results.h5")), std::string::npos)
      << resumed.output;
  EXPECT_NE(resumed.output.find("File too large"), std::string::npos) << resumed.output;
  EXPECT_EQ(resumed.output.find("replica"), std::string::npos) << resumed.output;
  EXPECT_EQ(pipeline::read_results(dir / "run/results.h5").ids, before.ids);
  // A fresh run on a full disk also fails with a message, not a crash.
  const auto fresh =
      test::run_with_file_size_limit(exe() + " classify --model " + q(model) + " --input " +
                                         q(images + "/images") + " --out " + q(dir / "fresh"),
                                     40 * 1024);
  EXPECT_NE(fresh.status, 0) << fresh.output;
  EXPECT_EQ(fresh.signal, 0) << fresh.output;
  EXPECT_NE(fresh.output.find("error:"), std::string::npos) << fresh.output;
}

// --resume matches rows by id: the same names in another folder are not read again, and that
// is said (another file under a stored id was skipped without a word).
TEST(CliClassify, ResumeSaysWhichIdsCameFromAnotherFile) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 3);
  fs::copy(images + "/images", dir / "copy");
  const auto base =
      exe() + " classify --model " + q(model) + " --threads 1 --out " + q(dir / "run");
  const auto first = test::run_process(base + " --input " + q(images + "/images"));
  ASSERT_EQ(first.status, 0) << first.output;
  // (A results.h5 shared with a group keeps its permission bits when --resume replaces it by
  // a replica copied from it, whatever the umask.)
  const auto h5 = dir / "run/results.h5";
  fs::permissions(h5, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                          fs::perms::group_write | fs::perms::others_read);
  struct stat before {};
  ASSERT_EQ(::stat(h5.c_str(), &before), 0);
  // The same files spelled otherwise are the same files: no warning.
  const auto same = test::run_process("umask 077 && " + base + " --input " +
                                      q(images + "/./images") + " --resume");
  ASSERT_EQ(same.status, 0) << same.output;
  struct stat after {};
  ASSERT_EQ(::stat(h5.c_str(), &after), 0);
  EXPECT_NE(after.st_ino, before.st_ino) << "--resume replaced the file by a replica";
  EXPECT_EQ(fs::status(h5).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                fs::perms::group_write | fs::perms::others_read);
  EXPECT_EQ(same.output.find("from another file"), std::string::npos) << same.output;
  const auto moved = test::run_process(base + " --input " + q(dir / "copy") + " --resume");
  ASSERT_EQ(moved.status, 0) << moved.output;
  EXPECT_NE(moved.output.find("results.h5 holds 3 of this run's ids from another file (e.g. '"),
            std::string::npos)
      << moved.output;
  EXPECT_NE(moved.output.find("--resume keeps the stored rows and does not read those files"),
            std::string::npos)
      << moved.output;
}

// --threshold decides nothing for a model of three classes (each image gets its most probable
// class): one warning line, not silence; the labels are the argmax (h5py's oracle), and the
// file records no threshold.
TEST(CliClassify, AThresholdForAModelOfThreeClassesIsSaidToDecideNothing) {
  test::TempDir dir;
  const auto path = dir / "three.h5";
  torch::manual_seed(3);
  models::vision::ImageModelConfig config;
  config.arch = "attn_small";
  config.image_size = 64;
  config.num_classes = 3;
  auto model = models::vision::make_image_classifier(config);
  pipeline::CheckpointMeta meta;
  meta.class_names = {"a", "b", "c"};
  meta.preprocessing_config = {{"steps", {{{"op", "resize"}, {"size", 64}}}}};
  pipeline::save_image_classifier(path, *model, models::vision::resolve_image_config(config), meta);
  const auto images = make_images(dir, 3);
  const auto r = test::run_process(exe() + " classify --model " + q(path) + " --input " +
                                   q(images + "/images") + " --threshold 0.3 --maps " +
                                   q("stage4, gradcam") + " --out " + q(dir / "out"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: --threshold is for binary models; " + path +
                          " has 3 classes, and each image's class is its most probable one\n"),
            std::string::npos)
      << r.output;
  const auto argmax = test::run_process(
      test::python() + " -c \"import h5py,numpy as np; f=h5py.File('" + dir / "out/results.h5" +
      "','r'); print(bool((f['predictions/label'][:]==f['predictions/probability'][:]"
      ".argmax(1)).all()), f.attrs['threshold'], f.attrs['maps'])\"");
  // Nor is it recorded: the file's threshold is the rule its labels follow (null: arg-max).
  // (--maps "a, b" quoted as one word names two maps, as --maps a,b and --maps a b do.)
  EXPECT_EQ(argmax.output, "True null [\"stage4\",\"gradcam\"]\n");
  for (const char* empty : {"stage4,,gradcam", "stage4, ", ","}) {
    const auto refused = test::run_process(exe() + " classify --model " + q(path) + " --input " +
                                           q(images + "/images") + " --maps " + q(empty) +
                                           " --out " + q(dir / "out_empty") + " 2>&1");
    EXPECT_EQ(refused.status, 2) << empty << refused.output;
    EXPECT_NE(refused.output.find("--maps has an empty name (a comma too many?)"),
              std::string::npos)
        << refused.output;
  }
  // A file of an earlier build stored the threshold: --resume and merge with a file of this
  // build were refused over it ("its threshold differs"), though it decided nothing.
  const auto shard = [&](int i, const std::string& more) {
    return test::run_process(exe() + " classify --model " + q(path) + " --input " +
                             q(images + "/images") + " --threshold 0.3 --shard " +
                             std::to_string(i) + "/2 --out " + q(dir / ("s" + std::to_string(i))) +
                             more + " 2>&1");
  };
  ASSERT_EQ(shard(0, "").status, 0);
  ASSERT_EQ(shard(1, "").status, 0);
  ASSERT_EQ(test::run_process(test::python() + " -c \"import h5py; f=h5py.File('" +
                              dir / "s0/results.h5" + "','a'); f.attrs['threshold']='0.3'\"")
                .status,
            0);
  const auto resumed = shard(0, " --resume");
  EXPECT_EQ(resumed.status, 0) << resumed.output;
  for (const auto& [a, b] : {std::pair{"s0", "s1"}, std::pair{"s1", "s0"}}) {
    const auto merged = dir / (std::string("m-") + a + ".h5");
    const auto m = test::run_process(exe() + " merge " + q(dir / (std::string(a) + "/results.h5")) +
                                     " " + q(dir / (std::string(b) + "/results.h5")) + " --out " +
                                     q(merged) + " 2>&1");
    EXPECT_EQ(m.status, 0) << m.output;
    const auto t = test::run_process(test::python() + " -c \"import h5py; print(h5py.File('" +
                                     merged + "','r').attrs['threshold'])\"");
    EXPECT_EQ(t.output, "null\n") << a;
  }
}

// The dataset's labels are stored as the model's classes of their names: a binary model given
// --multiclass class folders benign/malignant/melanoma (or ISIC's MEL, NV, ...) stored the third's
// labels as class 2 of a two-class model, and a model naming its classes in another order got
// them by position. A class the model does not have is said once and stored as unknown.
TEST(CliClassify, LabelsAreStoredAsTheModelsClassOfTheirName) {
  test::TempDir dir;
  const auto images = image_files(make_images(dir, 6));
  ASSERT_EQ(images.size(), 6u);
  const fs::path folders = dir / "classes";
  const std::vector<std::string> folder_of{"benign", "malignant", "melanoma",
                                           "benign", "malignant", "melanoma"};
  for (std::size_t i = 0; i < images.size(); ++i) {
    fs::create_directories(folders / folder_of[i]);
    fs::copy_file(images[i], folders / folder_of[i] / fs::path(images[i]).filename());
  }
  const auto reversed = make_checkpoint(dir, 64, [](pipeline::CheckpointMeta& meta, auto&) {
    meta.class_names = {"malignant", "benign"};
  });
  const auto r =
      test::run_process(exe() + " classify --model " + q(reversed) + " --data " + q(folders) +
                        " --multiclass --threads 1 --out " + q(dir / "out") + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("labelled 4: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("warning: the dataset's classes are [\"benign\",\"malignant\","
                          "\"melanoma\"] and the model's [\"malignant\",\"benign\"]: 2 labels "
                          "of classes the model does not have are not stored, nor counted in the "
                          "metrics"),
            std::string::npos)
      << r.output;
  const auto stored = test::run_process(
      test::python() + " -c \"import h5py; f=h5py.File('" + dir / "out/results.h5" +
      "','r'); print(sorted(zip([p.decode() for p in f['images/source_path'][:]], "
      "f['images/label'][:].tolist())))\"");
  std::string expected = "[";
  std::vector<std::pair<std::string, int>> want;
  for (std::size_t i = 0; i < images.size(); ++i)
    want.emplace_back((folders / folder_of[i] / fs::path(images[i]).filename()).string(),
                      folder_of[i] == "benign"      ? 1
                      : folder_of[i] == "malignant" ? 0
                                                    : -1);
  std::sort(want.begin(), want.end());
  for (std::size_t i = 0; i < want.size(); ++i)
    expected += (i ? ", ('" : "('") + want[i].first + "', " + std::to_string(want[i].second) + ")";
  EXPECT_EQ(stored.output, expected + "]\n");
  // The CSV's label column names the dataset's own class.
  const auto csv = read_csv(dir / "out/predictions.csv");
  ASSERT_EQ(csv.size(), 7u);
  for (std::size_t i = 1; i < csv.size(); ++i) {
    const auto& path = csv[i][1];
    const auto want_label = path.find("/benign/") != std::string::npos      ? "benign"
                            : path.find("/malignant/") != std::string::npos ? "malignant"
                                                                            : "";
    EXPECT_EQ(csv[i].back(), want_label) << path;
  }
  // A checkpoint of `names` classifies the class folders; each image's folder and stored label.
  const auto classify_folders = [&](const std::vector<std::string>& names, const std::string& run,
                                    const std::string& flags) {
    const auto model_path = make_checkpoint(
        dir, 64, [&](pipeline::CheckpointMeta& meta, auto&) { meta.class_names = names; }, run);
    const auto c =
        test::run_process(exe() + " classify --model " + q(model_path) + " --data " + q(folders) +
                          flags + " --threads 1 --out " + q(dir / run) + " 2>&1");
    EXPECT_EQ(c.status, 0) << c.output;
    const auto labels =
        test::run_process(test::python() + " -c \"import h5py; f=h5py.File('" + dir / run +
                          "/results.h5','r'); print(sorted(zip([p.decode().split('/')[-2] for p in "
                          "f['images/source_path'][:]], f['images/label'][:].tolist())))\"");
    return std::pair{c.output, labels.output};
  };
  // export_weights.py's default names (class_0, class_1) name no class: the labels are read by
  // position, without a warning (benign/malignant in binary mode, melanoma as malignant).
  const auto [e, positional] = classify_folders({"class_0", "class_1"}, "out_exported", "");
  EXPECT_EQ(e.find("warning:"), std::string::npos) << e;
  EXPECT_NE(e.find("labelled 6: "), std::string::npos) << e;
  EXPECT_EQ(positional,
            "[('benign', 0), ('benign', 0), ('malignant', 1), ('malignant', 1), ('melanoma', 1), "
            "('melanoma', 1)]\n");
  // ISIC 2018's AKIEC is ISIC 2019's AK: a model of the 2019 classes keeps those labels.
  fs::rename(folders / "melanoma", folders / "AKIEC");
  const auto [k, ak] = classify_folders({"AK", "benign"}, "out_ak", " --multiclass");
  EXPECT_EQ(ak,
            "[('AKIEC', 0), ('AKIEC', 0), ('benign', 1), ('benign', 1), ('malignant', -1), "
            "('malignant', -1)]\n")
      << k;
}

// Localisation measures are NaN for exactly the images without a mask (or with an empty one),
// whatever the batch size (an image without one used to make its whole batch NaN); a file
// named "x~y" is matched to x~y's mask, not to x's.
TEST(CliClassify, MaskMeasuresAreNaNOnlyForTheImagesWithoutAMask) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 4);
  fs::create_directories(dir / "in");
  fs::create_directories(dir / "masks");
  std::vector<std::string> stems;
  for (const auto& e : fs::directory_iterator(images + "/images")) stems.push_back(e.path().stem());
  std::sort(stems.begin(), stems.end());
  ASSERT_EQ(stems.size(), 4u);
  // Three images with their masks; the fourth, named "<first>~x", has none.
  for (int i = 0; i < 3; ++i) {
    fs::copy_file(images + "/images/" + stems[i] + ".png", dir / ("in/" + stems[i] + ".png"));
    fs::copy_file(images + "/masks/" + stems[i] + ".png", dir / ("masks/" + stems[i] + ".png"));
  }
  fs::copy_file(images + "/images/" + stems[3] + ".png", dir / ("in/" + stems[0] + "~x.png"));
  // The third's mask is empty: no lesion to find, NaN too (its scores were 0, read as a map
  // that missed the lesion).
  const auto third = cv::imread(dir / ("masks/" + stems[2] + ".png"), cv::IMREAD_GRAYSCALE);
  ASSERT_FALSE(third.empty());
  ASSERT_TRUE(cv::imwrite(dir / ("masks/" + stems[2] + ".png"),
                          cv::Mat(third.size(), CV_8UC1, cv::Scalar(0))));
  const auto script = dir / "nan.py";
  std::ofstream(script) << R"(
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], 'r')
ids = [s.decode() if isinstance(s, bytes) else s for s in f['images/id'][...]]
v = f['measures/stage3/jaccard'][...]
print(' '.join('%s:%s' % (i, 'nan' if np.isnan(x) else 'ok') for i, x in sorted(zip(ids, v))))
)";
  std::string want;
  for (const auto& s : {stems[0], stems[0] + "~x", stems[1], stems[2]})
    want += (want.empty() ? "" : " ") + s +
            (s.find('~') == std::string::npos && s != stems[2] ? ":ok" : ":nan");
  for (const char* batch : {"4", "1"}) {
    const auto out = dir / (std::string("run") + batch);
    const auto r = test::run_process(exe() + " classify --model " + q(model) + " --input " +
                                     q(dir / "in") + " --masks " + q(dir / "masks") + " --out " +
                                     q(out) + " --faithfulness --faithfulness-steps 2 --threads 1" +
                                     " --batch-size " + batch);
    ASSERT_EQ(r.status, 0) << r.output;
    const auto py =
        test::run_process(test::python() + " " + q(script) + " " + q(out + "/results.h5"));
    EXPECT_EQ(py.output, want + "\n") << "batch " << batch;
  }
}

// Files whose stems repeat, one of them already named like a repeat ("x~2"): every id is
// unique (the repeat of x became "x~2" and collided with x~2.png's id before), and a file cut
// back to its first image resumes to all of them.
TEST(CliClassify, RepeatedFileNamesGetUniqueIdsAndResumeKeepsEveryImage) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 3);
  const auto files = image_files(images);
  fs::create_directories(dir / "dup/sub");
  fs::copy_file(files[0], dir / "dup/sub/x.png");
  fs::copy_file(files[1], dir / "dup/x.png");
  fs::copy_file(files[2], dir / "dup/x~2.png");
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(dir / "dup") +
                    " --batch-size 1 --threads 1 --out " + q(dir / "run");
  const auto r = test::run_process(base);
  ASSERT_EQ(r.status, 0) << r.output;
  std::set<std::string> ids;
  for (const auto& id : pipeline::read_results(dir / "run/results.h5").ids) ids.insert(id);
  EXPECT_EQ(ids.size(), 3u);
  // Resuming a file that holds only the first image classifies the other two.
  cut_to(dir / "run/results.h5", 1);
  const auto resumed = test::run_process(base + " --resume");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed: 1 inputs already stored"), std::string::npos)
      << resumed.output;
  EXPECT_NE(resumed.output.find("classified 3, failed 0"), std::string::npos) << resumed.output;
  std::set<std::string> after;
  for (const auto& id : pipeline::read_results(dir / "run/results.h5").ids) after.insert(id);
  EXPECT_EQ(after, ids);
}

// A file name that is not UTF-8 (Latin-1 "caf\xe9.png") gives the id `caf\xe9` (the byte
// written as text): h5py could not decode the raw id, --resume never found it stored (and
// classified it again), and U+FFFD would give caf\xe8 and caf\xe9 one id. Its mask is found
// under the file's own bytes.
TEST(CliClassify, AFileNameThatIsNotUtf8IsStoredWithItsByteEscaped) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 2);
  const auto files = image_files(images);
  fs::create_directories(dir / "lat\xe1n");
  fs::copy_file(files[0], dir / "lat\xe1n/caf\xe9.png");
  fs::copy_file(files[1], dir / "lat\xe1n/caf\xe8.png");
  fs::create_directories(dir / "masks");
  cv::imwrite(dir / "masks/caf\xe9_mask.png", cv::Mat(64, 64, CV_8UC1, cv::Scalar(255)));
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(dir / "lat\xe1n") +
                    " --masks " + q(dir / "masks") +
                    " --faithfulness --faithfulness-steps 2 --batch-size 1 --threads 1 --out " +
                    q(dir / "run");
  const auto r = test::run_process(base);
  ASSERT_EQ(r.status, 0) << r.output;
  const auto script = dir / "check.py";
  std::ofstream(script) << R"(
import csv, sys, h5py, numpy as np
f = h5py.File(sys.argv[1] + '/results.h5', 'r')
ids = list(f['images/id'].asstr()[...])
paths = list(f['images/source_path'].asstr()[...])
assert sorted(ids) == ['caf\\xe8', 'caf\\xe9'], ids
assert all(p.endswith('/lat\\xe1n/' + i + '.png') for p, i in zip(paths, ids)), paths
mass = f['measures/stage3/mass_in_mask'][...]
assert [np.isfinite(m) for m in mass] == [i == 'caf\\xe9' for i in ids], (ids, mass)
# The command line (a root attribute, typed UTF-8) has the folder's byte escaped too: h5py gave
# '\udce1', which no encoder takes.
assert '/lat\\xe1n' in f.attrs['command_line'], f.attrs['command_line']
f.attrs['command_line'].encode('utf-8')
rows = list(csv.reader(open(sys.argv[1] + '/predictions.csv', encoding='utf-8', newline='')))
assert sorted(r[0] for r in rows[1:]) == sorted(ids), rows
print('OK')
)";
  const auto py = test::run_process(test::python() + " " + q(script) + " " + q(dir / "run"));
  EXPECT_EQ(py.output, "OK\n");
  // --resume finds both stored: nothing is classified again.
  const auto resumed = test::run_process(base + " --resume");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed: 2 inputs already stored"), std::string::npos)
      << resumed.output;
  EXPECT_EQ(pipeline::read_results(dir / "run/results.h5").ids.size(), 2u);
}

// --resume with other --overlays / --faithfulness than the stored run is refused, naming a
// dataset, and leaves the file as it was (it used to append some datasets and not others).
TEST(CliClassify, ResumeWithOtherOverlaysOrMeasuresIsRefused) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 2);
  const auto base = exe() + " classify --model " + q(model) + " --input " +
                    q(images + "/images") + " --threads 1 --faithfulness-steps 2";
  int case_number = 0;
  // The hint names the option that differs and the stored run's command line.
  for (const auto& [stored, now, says, hint] :
       std::vector<std::tuple<std::string, std::string, std::string, std::string>>{
           {" --overlays", "", "it stores /overlays/",
            "(it was made with --overlays; its "
            "command line: "},
           {"", " --overlays", "this run writes /overlays/",
            "(it was made without --overlays; "
            "its command line: "},
           {" --faithfulness", "", "it stores /measures/",
            "(it was made with --faithfulness; "
            "its command line: "},
           {"", " --faithfulness", "its faithfulness differs", ""}}) {
    const auto out = dir / ("run" + std::to_string(case_number++));
    const auto first = test::run_process(base + stored + " --out " + q(out));
    ASSERT_EQ(first.status, 0) << first.output;
    const auto before = read_bytes(out + "/results.h5");
    const auto r = test::run_process(base + now + " --resume --out " + q(out));
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("cannot resume: " + says), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(hint), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("--masks"), std::string::npos) << r.output;
    EXPECT_EQ(read_bytes(out + "/results.h5"), before) << stored << now;
  }
}

// --resume with another input set (probe finding): the stored images that are not among the
// inputs are named in one warning; the run goes on and appends (the file then holds both sets,
// as h5py reads). The same inputs again: no warning.
TEST(CliClassify, ResumeWithOtherInputsSaysWhatTheFileHoldsThatTheyDoNot) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 3);
  const auto files = image_files(images);
  ASSERT_EQ(files.size(), 3u);
  const auto a = dir / "a", b = dir / "b";
  fs::create_directories(a);
  fs::create_directories(b);
  for (const auto& [folder, index] :
       std::vector<std::pair<std::string, int>>{{a, 0}, {a, 1}, {b, 0}, {b, 2}})
    fs::copy_file(
        files[static_cast<std::size_t>(index)],
        folder + "/" + fs::path(files[static_cast<std::size_t>(index)]).filename().string());
  const auto base =
      exe() + " classify --model " + q(model) + " --threads 1 --out " + q(dir / "out");
  auto r = test::run_process(base + " --input " + q(a) + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  r = test::run_process(base + " --input " + q(a) + " --resume 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("warning"), std::string::npos) << r.output;
  r = test::run_process(base + " --input " + q(b) + " --resume 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto stem = fs::path(files[1]).stem().string();
  EXPECT_NE(r.output.find("warning: " + (dir / "out/results.h5") +
                          " holds 1 of 2 images that "
                          "are not among this run's inputs (e.g. '" +
                          stem +
                          "'): it was started "
                          "on other inputs, and --resume adds this run's images to them (the file "
                          "then cannot be merged with shards: input positions repeat); classify "
                          "into another --out to keep the runs apart\n"),
            std::string::npos)
      << r.output;
  r = test::run_process(test::python() +
                        " -c \"import h5py, sys; f = h5py.File(sys.argv[1], "
                        "'r'); print(sorted(x.decode() for x in f['images/id'][...]))\" " +
                        q(dir / "out/results.h5"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::string expected = "[";
  for (std::size_t i = 0; i < files.size(); ++i)
    expected += (i ? ", '" : "'") + fs::path(files[i]).stem().string() + "'";
  EXPECT_EQ(r.output, expected + "]\n");
}

// A results.h5 whose dataset has another rank (12, past the old fixed array of 8) or shape is
// one error line on --resume, not a crash.
TEST(CliClassify, ResumeOfADatasetWithAnotherShapeIsOneLine) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 2);
  const auto base = exe() + " classify --model " + q(model) + " --input " +
                    q(images + "/images") + " --threads 1 --out " + q(dir / "run");
  ASSERT_EQ(test::run_process(base).status, 0);
  const auto craft = dir / "craft.py";
  std::ofstream(craft) << R"(
import sys, h5py
f = h5py.File(sys.argv[1], 'r+')
del f['images/label']
f.create_dataset('images/label', shape=(2,) + (1,) * 11, dtype='i8', maxshape=(None,) + (1,) * 11)
)";
  ASSERT_EQ(test::run_process(test::python() + " " + q(craft) + " " + q(dir / "run/results.h5")).status, 0);
  const auto r = test::run_process(base + " --resume");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("images/label: does not have the shape (rows) this run writes"),
            std::string::npos)
      << r.output;
}

// A compressed dataset rewritten under another chunk shape (h5repack, h5py's chunks=...), its
// filters kept: the rows --resume appended read back half zero (chunks of half a map) or
// beyond the stored bytes (chunks larger than a row), exit 0. Refused before any work now.
TEST(CliClassify, ResumeOfAMapUnderAnotherChunkShapeIsRefusedNamingIt) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 2);
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --threads 1 --out " + q(dir / "run");
  ASSERT_EQ(test::run_process(base + " --shard 0/2").status, 0);
  const auto craft = dir / "craft.py";
  std::ofstream(craft) << R"(
import sys, h5py
f = h5py.File(sys.argv[1], 'r+')
name = 'attention/' + sorted(f['attention'].keys())[0]
d = f[name]
data, attrs = d[()], dict(d.attrs)
h, w = data.shape[1:]
del f[name]
n = f.create_dataset(name, data=data, maxshape=(None, h, w), chunks=(1, max(1, h // 2), w),
                     compression='gzip', fletcher32=True)
for k, v in attrs.items():
    n.attrs[k] = v
print(name, '(1, %d, %d)' % (max(1, h // 2), w))
)";
  const auto crafted =
      test::run_process(test::python() + " " + q(craft) + " " + q(dir / "run/results.h5"));
  ASSERT_EQ(crafted.status, 0) << crafted.output;
  const auto name = crafted.output.substr(0, crafted.output.find(' '));
  const auto chunk = crafted.output.substr(crafted.output.find(' ') + 1);
  const auto before = read_bytes(dir / "run/results.h5");
  const auto r = test::run_process(base + " --shard 0/2 --resume 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("/" + name + ": cannot resume: its chunks are " +
                          chunk.substr(0, chunk.size() - 1) +
                          ", not one row each as attnscope writes them"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(read_bytes(dir / "run/results.h5"), before);
  // Values report refuses to show (a stored class 7 of 2): the resumed run completed the file,
  // exit 0, and report and merge then refused it.
  const auto run2 = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --threads 1 --out " + q(dir / "run2");
  ASSERT_EQ(test::run_process(run2 + " --shard 0/2").status, 0);
  ASSERT_EQ(test::run_process(test::python() + " -c \"import h5py; f=h5py.File('" +
                              dir / "run2/results.h5" + "','r+'); f['predictions/label'][0]=7\"")
                .status,
            0);
  const auto seven = test::run_process(run2 + " --shard 0/2 --resume 2>&1");
  EXPECT_EQ(seven.status, 1) << seven.output;
  EXPECT_NE(seven.output.find(dir / "run2/results.h5" +
                              ":/predictions/label: row 0 holds class 7, outside 0..1: the file "
                              "cannot be resumed"),
            std::string::npos)
      << seven.output;
}

// A results.h5 one of whose chunks was damaged (one byte changed in the logits' chunk: no
// deflate there, only its Fletcher-32 checksum tells) is refused by --resume naming the
// dataset; before, the resumed run completed the file around the damaged numbers.
TEST(CliClassify, ResumeOfAFileWithADamagedChunkIsRefusedNamingTheDataset) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 2);
  const auto base = exe() + " classify --model " + q(model) + " --input " + q(images + "/images") +
                    " --threads 1 --out " + q(dir / "run");
  ASSERT_EQ(test::run_process(base).status, 0);
  const auto craft = dir / "damage.py";
  std::ofstream(craft) << R"(
import sys, h5py
with h5py.File(sys.argv[1], 'r') as f:
    d = f['predictions/logits']
    assert d.fletcher32, 'no checksum'
    info = d.id.get_chunk_info(0)
    before = d[0].tolist()
with open(sys.argv[1], 'r+b') as f:
    f.seek(info.byte_offset + 2)
    b = f.read(1)
    f.seek(info.byte_offset + 2)
    f.write(bytes([b[0] ^ 0x40]))
print('ok')
)";
  const auto results = dir / "run/results.h5";
  ASSERT_EQ(test::run_process(test::python() + " " + q(craft) + " " + q(results)).output, "ok\n");
  const auto damaged = test::read_text(results);
  const auto r = test::run_process(base + " --resume");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + results +
                          ":/predictions/logits: cannot read rows 0..1 (a chunk's Fletcher-32 "
                          "checksum does not match its data: the file is damaged): the file "
                          "cannot be resumed; classify again into another --out, without "
                          "--resume\n"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(test::read_text(results), damaged);  // left as it was

  // Strings hold heap references no filter covers: an id that repeats another (edited here with
  // h5py, in a fresh run) would be classified again and stored twice. Refused, file unchanged.
  ASSERT_EQ(test::run_process(base + " --overwrite").status, 0);
  const auto edit =
      test::run_process(test::python() +
                        " -c \"import h5py, sys\nwith h5py.File(sys.argv[1], 'a') as f: "
                        "d = f['images/id']; d[1] = d[0]\" " +
                        q(results));
  ASSERT_EQ(edit.status, 0) << edit.output;
  const auto edited = test::read_text(results);
  const auto twice = test::run_process(base + " --resume");
  EXPECT_EQ(twice.status, 1) << twice.output;
  EXPECT_NE(twice.output.find("error: " + results + ":/images/id: row 1 holds the id '"),
            std::string::npos)
      << twice.output;
  EXPECT_NE(twice.output.find("' of images/id row 0 too (the file is damaged or was edited): the "
                              "file cannot be resumed; classify again into another --out, "
                              "without --resume\n"),
            std::string::npos)
      << twice.output;
  EXPECT_EQ(test::read_text(results), edited);
  // So is an error's id that an image holds too.
  std::ofstream(images + "/images/broken.png") << "not an image";
  ASSERT_EQ(test::run_process(base + " --overwrite").status, 0);
  const auto edit_error =
      test::run_process(test::python() +
                        " -c \"import h5py, sys\nwith h5py.File(sys.argv[1], 'a') as f: "
                        "f['errors/id'][0] = f['images/id'][1]\" " +
                        q(results));
  ASSERT_EQ(edit_error.status, 0) << edit_error.output;
  const auto error_twice = test::run_process(base + " --resume");
  EXPECT_EQ(error_twice.status, 1) << error_twice.output;
  EXPECT_NE(error_twice.output.find("error: " + results + ":/errors/id: row 0 holds the id '"),
            std::string::npos)
      << error_twice.output;
  EXPECT_NE(error_twice.output.find("' of images/id row 1 too"), std::string::npos)
      << error_twice.output;
  // Images rewritten as float32 in [0, 1] (h5py): the rows a resumed run appended (uint8 bytes
  // in a float32 dataset) read back as NaN and 6e34. Refused by type, file unchanged.
  ASSERT_EQ(test::run_process(base + " --overwrite").status, 0);
  const auto floats = test::run_process(
      test::python() +
      " -c \"import h5py, sys\nwith h5py.File(sys.argv[1], 'a') as f: "
      "x = f['images/preprocessed'][()] / 255.0; del f['images/preprocessed']; "
      "f.create_dataset('images/preprocessed', data=x.astype('float32'), maxshape=(None,) + "
      "x.shape[1:], chunks=(1,) + x.shape[1:], compression='gzip', fletcher32=True)\" " +
      q(results));
  ASSERT_EQ(floats.status, 0) << floats.output;
  const auto as_floats = test::read_text(results);
  const auto typed = test::run_process(base + " --resume");
  EXPECT_EQ(typed.status, 1) << typed.output;
  EXPECT_NE(typed.output.find("error: " + results +
                              ":/images/preprocessed: holds float32 values, where this run "
                              "writes uint8: the file cannot be resumed"),
            std::string::npos)
      << typed.output;
  EXPECT_EQ(test::read_text(results), as_floats);
  // A map rewritten big-endian: its chunks are appended raw, in this machine's order, so the
  // new rows read back as 2e34 and NaN. Refused too.
  ASSERT_EQ(test::run_process(base + " --overwrite").status, 0);
  const auto swapped = test::run_process(
      test::python() +
      " -c \"import h5py, sys\nwith h5py.File(sys.argv[1], 'a') as f: "
      "name = 'attention/' + sorted(f['attention'].keys())[0]; x = f[name][()]; del f[name]; "
      "f.create_dataset(name, data=x.astype('>f4'), maxshape=(None,) + x.shape[1:], "
      "chunks=(1,) + x.shape[1:], compression='gzip', fletcher32=True); print(name)\" " +
      q(results));
  ASSERT_EQ(swapped.status, 0) << swapped.output;
  const auto map = swapped.output.substr(0, swapped.output.find('\n'));
  const auto as_swapped = test::read_text(results);
  const auto ordered = test::run_process(base + " --resume");
  EXPECT_EQ(ordered.status, 1) << ordered.output;
  EXPECT_NE(ordered.output.find("error: " + results + ":/" + map +
                                ": holds big-endian float32 values, where this run writes "
                                "float32: the file cannot be resumed"),
            std::string::npos)
      << ordered.output;
  EXPECT_EQ(test::read_text(results), as_swapped);
}

// What a SIGKILLed --overwrite run leaves (its new file and replicas at temporary names, a
// CSV's temporary) is removed by the next run into the folder; other files stay.
TEST(CliClassify, TemporariesOfAKilledRunAreRemovedByTheNextRun) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 2);
  const auto out = dir / "run";
  const auto base = exe() + " classify --model " + q(model) + " --input " +
                    q(images + "/images") + " --threads 1 --out " + q(out);
  ASSERT_EQ(test::run_process(base).status, 0);
  const std::vector<std::string> stale{".results.h5.4242-0.tmp.h5",
                                       "..results.h5.4242-0.tmp.h5.replica-a",
                                       "..results.h5.4242-0.tmp.h5.replica-b",
                                       ".predictions.csv.4242-1.tmp.csv"};
  for (const auto& name : stale) std::ofstream(out + "/" + name) << "left by a killed run";
  std::ofstream(out + "/.results.h5.notes") << "the user's";
  const auto r = test::run_process(base + " --overwrite");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const auto& name : stale) EXPECT_FALSE(fs::exists(out + "/" + name)) << name;
  EXPECT_TRUE(fs::exists(out + "/.results.h5.notes"));
}

// merge, report and evaluate against crafted results files and outputs that are inputs: one
// line each and the inputs byte for byte (each case crashed, hung, dropped rows silently or
// destroyed an input before).
TEST(CliClassify, CraftedFilesAndOutputsThatAreInputsAreOneLineAndHarmNothing) {
  test::TempDir dir;
  const auto model = make_checkpoint(dir);
  const auto images = make_images(dir, 8);
  const auto run = [&](const std::string& args) { return test::run_process(exe() + " " + args); };
  for (const char* shard : {"0/2", "1/2"})
    ASSERT_EQ(run("classify --model " + q(model) + " --input " + q(images + "/images") +
                  " --threads 1 --shard " + shard + " --out " + q(dir / (std::string("s") + shard[0])))
                  .status,
              0);
  const auto s0 = dir / "s0/results.h5", s1 = dir / "s1/results.h5";
  const auto craft = [&](const std::string& name, const std::string& code) {
    const auto path = dir / (name + ".h5");
    fs::copy_file(s0, path);
    const auto script = dir / (name + ".py");
    std::ofstream(script) << "import sys, h5py, numpy as np\nf = h5py.File(sys.argv[1], 'r+')\n"
                          << code << "\n";
    const auto r = test::run_process(test::python() + " " + q(script) + " " + q(path));
    EXPECT_EQ(r.status, 0) << name << r.output;
    return path;
  };
  struct Case {
    std::string args, says;
  };
  const auto loop = craft("loop", "f['images/loop'] = f['images']");
  const auto short_ids = craft("short_ids",
                               "d = f['images/id'][:2]\ndel f['images/id']\n"
                               "f.create_dataset('images/id', data=d, maxshape=(None,))");
  const auto three = craft("three",
                           "del f['predictions/probability']\n"
                           "f['predictions/probability'] = np.full((4, 3), 1 / 3, 'f4')");
  const auto deep = craft("deep", "f.attrs['class_names'] = '[' * 100000 + ']' * 100000");
  // Values report refuses, so merge refuses them too (it merged them without a word).
  const auto label99 = craft("label99", "f['images/label'][1] = 99");
  const auto nan_prob = craft("nan_prob", "f['predictions/probability'][2] = np.nan");
  const auto pred7 = craft("pred7", "f['predictions/label'][0] = 7");
  const auto unnormalised = craft("unnormalised", "f['predictions/probability'][1] = [0.9, 0.9]");
  const auto spread = craft("spread",
                            "f.create_dataset('predictions/probability_std', "
                            "data=np.full(f['predictions/probability'].shape, -0.25, 'f4'))");
  const auto index_dup = craft("index_dup", "f['images/index'][0] = f['images/index'][1]");
  // An error row at a position an image of the other shard holds: merged, both were written.
  const auto error_dup =
      craft("error_dup",
            "n = int(h5py.File(sys.argv[1].replace('error_dup.h5', 's1/results.h5'), "
            "'r')['images/index'][0])\n"
            "for k, v in (('id', 'ghost'), ('path', 'ghost.png'), ('reason', 'x'), "
            "('index', n)):\n"
            "    d = f['errors/' + k]; d.resize((1,)); d[0] = v\n"
            "f.attrs['num_errors'] = '1'");
  // A map on another scale, and logits of other numbers: merged under the first shard's
  // attributes and type without a word.
  const auto rescaled = craft("rescaled", "f['attention/stage3'].attrs['normalization'] = 'max'");
  const auto float64 = craft("float64",
                             "d = f['predictions/logits'][()]\ndel f['predictions/logits']\n"
                             "f.create_dataset('predictions/logits', data=d.astype('f8'), "
                             "maxshape=(None, 2))");
  // Row counts: "-3" was read as 18446744073709551613 by merge, "1.5" as 1 on --resume.
  const auto minus3 = craft("minus3", "f.attrs['num_images'] = '-3'");
  // A stopped or killed classify's shard (finished_at "") misses images: merged, they were
  // lost without a word. A schema version report cannot read: merge made a file report refused.
  const auto unfinished = craft("unfinished", "f.attrs['finished_at'] = ''");
  const auto schema2 = craft("schema2", "f.attrs['schema_version'] = '2'");
  fs::copy(dir / "s0", dir / "r1", fs::copy_options::recursive);
  std::ofstream(dir / "half.py") << "import sys, h5py\nf = h5py.File(sys.argv[1], 'r+')\n"
                                    "f.attrs['num_errors'] = '1.5'\nf.attrs['finished_at'] = ''\n";
  ASSERT_EQ(
      test::run_process(test::python() + " " + q(dir / "half.py") + " " + q(dir / "r1/results.h5"))
          .status,
      0);
  const auto fifo = dir / "fifo.h5";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  fs::copy_file(s0, dir / "copy.h5");
  // A copy cut short, an empty file and a folder where results.h5 belongs: said as they are
  // ("not a results file, or damaged", "not an HDF5 file" and "exists; pass --resume" before).
  fs::copy_file(s0, dir / "cut.h5");
  fs::resize_file(dir / "cut.h5", fs::file_size(s0) / 2);
  std::ofstream{dir / "empty.h5"};
  fs::create_directories(dir / "folder_out/results.h5");
  const std::vector<Case> cases{
      {"merge " + q(dir / "cut.h5") + " " + q(s1) + " --out " + q(dir / "m13.h5"),
       dir / "cut.h5" + ": cannot open as HDF5 (the file is cut short: it holds " +
           std::to_string(fs::file_size(s0) / 2) + " bytes, its header says "},
      {"merge " + q(dir / "empty.h5") + " " + q(s1) + " --out " + q(dir / "m14.h5"),
       dir / "empty.h5" + ": is empty (0 bytes), not an HDF5 file: a copy or write that did not "
                          "finish?"},
      {"merge " + q(s1) + " --out " + q(dir / "folder_out"),
       dir / "folder_out" + ": is a folder: --out names the merged file (e.g. " +
           (dir / "folder_out") + "/results.h5)"},
      {"classify --model " + q(model) + " --input " + q(images + "/images") + " --out " +
           q(dir / "folder_out"),
       dir / "folder_out/results.h5" + ": is a folder, not a results file: remove it or choose "
                                       "another --out"},
      {"merge " + q(loop) + " " + q(s1) + " --out " + q(dir / "m1.h5"), ""},  // merges
      {"merge " + q(short_ids) + " " + q(s1) + " --out " + q(dir / "m2.h5"),
       short_ids + ": holds 2 ids or predictions for its 4 images: the file is damaged"},
      {"merge " + q(three) + " " + q(s1) + " --out " + q(dir / "m3.h5"),
       three +
           ":/predictions/probability: has rows of shape (rows, 3) for the file's 2 class names"},
      {"merge " + q(s1) + " " + q(three) + " --out " + q(dir / "m4.h5"),
       three + ":/predictions/probability: has rows of shape (rows, 3), " + s1 + " has (rows, 2)"},
      {"merge " + q(label99) + " " + q(s1) + " --out " + q(dir / "m6.h5"),
       label99 + ":/images/label: row 1 holds class 99, outside -1..1: cannot merge it"},
      {"merge " + q(s1) + " " + q(nan_prob) + " --out " + q(dir / "m7.h5"),
       nan_prob + ":/predictions/probability: row 2 holds a value outside [0, 1]: cannot merge it"},
      {"merge " + q(s1) + " " + q(rescaled) + " --out " + q(dir / "m16.h5"),
       rescaled + ":/attention/stage3/@normalization: is 'max', " + s1 +
           "'s 'none': cannot merge them"},
      {"merge " + q(s1) + " " + q(float64) + " --out " + q(dir / "m17.h5"),
       float64 + ":/predictions/logits: holds float64 values, " + s1 +
           " float32: cannot merge "
           "them"},
      {"merge " + q(pred7) + " " + q(s1) + " --out " + q(dir / "m8.h5"),
       pred7 + ":/predictions/label: row 0 holds class 7, outside 0..1: cannot merge it"},
      // report refuses the same values with the same words (one check, results.h).
      {"report --results " + q(label99) + " --out " + q(dir / "r3.html"),
       label99 + ":/images/label: row 1 holds class 99, outside -1..1"},
      {"report --results " + q(pred7) + " --out " + q(dir / "r4.html"),
       pred7 + ":/predictions/label: row 0 holds class 7, outside 0..1"},
      {"report --results " + q(nan_prob) + " --out " + q(dir / "r5.html"),
       nan_prob + ":/predictions/probability: row 2 holds a value outside [0, 1]"},
      // Rows that are no distribution, and a TTA spread no probabilities have.
      {"merge " + q(s1) + " " + q(unnormalised) + " --out " + q(dir / "m15.h5"),
       unnormalised + ":/predictions/probability: row 1 sums to 1.8, not 1: cannot merge it"},
      {"report --results " + q(unnormalised) + " --out " + q(dir / "r6.html"),
       unnormalised + ":/predictions/probability: row 1 sums to 1.8, not 1"},
      {"report --results " + q(spread) + " --out " + q(dir / "r7.html"),
       spread + ":/predictions/probability_std: row 0 holds a value outside [0, 0.5], which no "
                "spread of probabilities has"},
      {"merge " + q(s1) + " " + q(unfinished) + " --out " + q(dir / "m11.h5"),
       unfinished + ": is from a classify run that did not finish (finished_at is empty): "
                    "complete it with the same command and --resume, then merge"},
      {"merge " + q(s1) + " " + q(s0) + " " + q(s1) + " --out " + q(dir / "m13.h5"),
       s1 + ": is given twice (also as " + s1 + "): each shard once"},
      {"merge " + q(schema2) + " --out " + q(dir / "m12.h5"),
       schema2 + ": has results schema version '2'; this attnscope reads version 1"},
      {"merge " + q(index_dup) + " " + q(s1) + " --out " + q(dir / "m9.h5"),
       index_dup + ":/images/index: row 1 holds input position "},
      {"merge " + q(s1) + " " + q(error_dup) + " --out " + q(dir / "m14.h5"),
       error_dup + ":/errors/index: row 0 holds input position "},
      {"merge " + q(minus3) + " " + q(s1) + " --out " + q(dir / "m10.h5"),
       minus3 + ":/@num_images: is '-3', expected a row count (a whole number >= 0)"},
      {"report --results " + q(minus3) + " --out " + q(dir / "r2.html"),
       minus3 + ":/@num_images: is '-3', expected a row count (a whole number >= 0)"},
      {"classify --model " + q(model) + " --input " + q(images + "/images") +
           " --threads 1 --shard 0/2 --resume --out " + q(dir / "r1"),
       dir / "r1/results.h5" +
           ":/@num_errors: is '1.5', expected a row count (a whole number >= 0)"},
      {"merge " + q(dir / "copy.h5") + " " + q(s1) + " --out " + q(dir / "copy.h5"),
       dir / "copy.h5" + ": is one of the files to merge"},
      // An output folder inside an input folder: its files were read as inputs by the next run.
      {"classify --model " + q(model) + " --input " + q(images + "/images") + " --out " +
           q(images + "/images/out"),
       images + "/images/out: is the input folder " + images +
           "/images or inside it: its files would be read as inputs; choose an output folder "
           "outside it"},
      {"report --results " + q(deep) + " --out " + q(dir / "r.html"),
       deep + ":/@class_names: attribute is JSON nested deeper than 64 levels"},
      {"report --results " + q(dir / "copy.h5") + " --out " + q(dir / "copy.h5"),
       dir / "copy.h5" + ": is --results"},
      {"report --results " + q(fifo) + " --out " + q(dir / "r.html"),
       fifo + ": is not a regular file"},
      {"merge " + q(fifo) + " " + q(s1) + " --out " + q(dir / "m5.h5"),
       fifo + ": is not a regular file"},
      {"classify --model " + q(fifo) + " --input " + q(images + "/images") + " --out " +
           q(dir / "c"),
       fifo + ": is not a regular file"},
      {"evaluate --model " + q(model) + " --data " + q(images + "/labels.csv") + " --quiet --out " +
           q(model),
       model + ": is --model"},
      // List files: a folder, and a device read without end (it grew memory without bound).
      {"classify --model " + q(model) + " --input @" + q(images) + " --out " + q(dir / "c2"),
       images + ": is not a list file (a folder, FIFO or device)"},
      {"classify --model " + q(model) + " --input @/dev/zero --out " + q(dir / "c3"),
       "/dev/zero: is not a list file (a folder, FIFO or device)"},
      {"evaluate --model " + q(model) + " --data " + q(images + "/labels.csv") +
           " --quiet --predictions " + q(images + "/labels.csv"),
       images + "/labels.csv: is --data"},
  };
  const auto model_bytes = read_bytes(model), labels = read_bytes(images + "/labels.csv");
  const auto copy_bytes = read_bytes(dir / "copy.h5");
  // A relative --out inside a relative --input, before the folder exists (weakly_canonical kept
  // "results" relative: the first run passed and its own --resume was refused).
  {
    const auto r =
        test::run_process("cd " + q(images + "/images") + " && " + exe() + " classify --model " +
                          q(model) + " --input . --out results 2>&1");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output.rfind("error: results: is the input folder . or inside it", 0), 0u)
        << r.output;
    EXPECT_FALSE(fs::exists(images + "/images/results"));
  }
  // A launcher's variables that make no shard name those variables, not --shard.
  {
    const auto r = test::run_process("RANK=3 WORLD_SIZE=2 " + exe() + " classify --model " +
                                     q(model) + " --input " + q(images + "/images") + " --out " +
                                     q(dir / "c4") + " 2>&1");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output,
              "error: classify: the shard taken from RANK=3 and WORLD_SIZE=2 is '3/2', "
              "not i/N with 0 <= i < N: check the launcher's variables, or give "
              "--shard\n");
  }
  // One of a pair alone classifies every input (shard 0/1), with a line that says so.
  {
    const auto r = test::run_process("env -u WORLD_SIZE -u SLURM_PROCID -u SLURM_NTASKS RANK=1 " +
                                     exe() + " classify --model " + q(model) + " --input " +
                                     q(images + "/images") + " --out " + q(dir / "c5") + " 2>&1");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("warning: RANK=1 is set without WORLD_SIZE: this process classifies "
                            "every input (shard 0/1); give --shard i/N to classify a part\n"),
              std::string::npos)
        << r.output;
    const auto n = std::distance(fs::directory_iterator(images + "/images"), {});
    EXPECT_NE(r.output.find("classified " + std::to_string(n) + ", failed 0"), std::string::npos)
        << r.output;
  }
  // Slurm's batch script (sbatch --ntasks=4) carries SLURM_PROCID=0 and SLURM_NTASKS=4 but is
  // one process: it classified a quarter of its inputs; now every input, and a line says so.
  // Without SLURM_NTASKS, or with SLURM_NTASKS=1, there is nothing to say. A task srun started
  // (SLURM_STEP_ID) takes its shard.
  const auto n = std::distance(fs::directory_iterator(images + "/images"), {});
  const std::string no_launcher =
      "env -u RANK -u WORLD_SIZE -u SLURM_NTASKS -u SLURM_STEP_ID -u SLURM_STEPID ";
  int runs = 0;
  for (const char* vars :
       {"SLURM_PROCID=0 SLURM_NTASKS=4", "SLURM_PROCID=0", "SLURM_PROCID=0 SLURM_NTASKS=1",
        "SLURM_PROCID=1 SLURM_NTASKS=2 "
        "SLURM_STEP_ID=3"}) {
    SCOPED_TRACE(vars);
    const auto out = dir / ("c6-" + std::to_string(runs++));
    const auto r =
        test::run_process(no_launcher + vars + " " + exe() + " classify --model " + q(model) +
                          " --input " + q(images + "/images") + " --out " + q(out) + " 2>&1");
    EXPECT_EQ(r.status, 0) << r.output;
    const bool step = std::strstr(vars, "STEP_ID") != nullptr;
    const bool four = std::strstr(vars, "NTASKS=4") != nullptr;
    EXPECT_EQ(r.output.find("warning: SLURM_NTASKS=4 is set but srun did not start this process "
                            "(no SLURM_STEP_ID of an srun step: Slurm's batch script runs once): "
                            "this process classifies every input (shard 0/1); start it with "
                            "srun, or give --shard i/N, to classify a part\n") != std::string::npos,
              four)
        << r.output;
    EXPECT_EQ(r.output.find("warning") != std::string::npos, four) << r.output;
    // Shard 1/2 of n inputs holds n / 2 of them (inputs 1, 3, 5, ...).
    const auto expected = step ? n / 2 : n;
    EXPECT_NE(r.output.find("classified " + std::to_string(expected) + ", failed 0"),
              std::string::npos)
        << r.output;
  }
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    const auto r = test::run_process("timeout -k 5 60 " + exe() + " " + c.args);
    if (c.says.empty()) {
      EXPECT_EQ(r.status, 0) << r.output;
      continue;
    }
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(r.output.rfind("error: " + c.says, 0), 0u) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
  EXPECT_EQ(read_bytes(model), model_bytes);
  EXPECT_EQ(read_bytes(images + "/labels.csv"), labels);
  EXPECT_EQ(read_bytes(dir / "copy.h5"), copy_bytes);
  // /errors columns short of @num_errors: a warning naming them, the report still written.
  const auto short_errors =
      craft("short_errors", "f['errors/id'].resize(2, axis=0)\nf.attrs['num_errors'] = '2'");
  const auto w = run("report --results " + q(short_errors) + " --out " + q(dir / "r8.html"));
  EXPECT_EQ(w.status, 0) << w.output;
  EXPECT_NE(w.output.find(short_errors + ":/errors holds 2 ids, 0 paths and 0 reasons for its 2 "
                                         "failed inputs: the file is damaged or was edited; the "
                                         "report lists 0"),
            std::string::npos)
      << w.output;
  // Out of file descriptors (merge holds every shard open): the limit is named, not a valid
  // shard as "not a results file, or damaged".
  std::string copies;
  for (int i = 0; i < 100; ++i) {
    fs::copy_file(s0, dir / ("c" + std::to_string(i) + ".h5"));
    copies += " " + q(dir / ("c" + std::to_string(i) + ".h5"));
  }
  const auto fds = test::run_process("sh -c \"ulimit -n 64; exec " + exe() + " merge" + copies +
                                     " --out " + q(dir / "c.h5") + "\" 2>&1");
  EXPECT_EQ(fds.status, 1) << fds.output;
  EXPECT_NE(fds.output.find(": cannot be opened: the process is out of file descriptors"),
            std::string::npos)
      << fds.output;
  const auto merged = pipeline::read_results(dir / "m1.h5");
  EXPECT_EQ(merged.ids.size(), 8u);
  // The merged run started with the first shard and finished with the last.
  const auto a = pipeline::read_results(s0).attributes, b = pipeline::read_results(s1).attributes;
  EXPECT_EQ(merged.attributes.at("started_at"), std::min(a.at("started_at"), b.at("started_at")));
  EXPECT_EQ(merged.attributes.at("finished_at"),
            std::max(a.at("finished_at"), b.at("finished_at")));
  EXPECT_FALSE(fs::exists(dir / "m11.h5"));
}

}  // namespace
}  // namespace attnscope
