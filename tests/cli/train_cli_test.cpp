// End-to-end tests of `attnscope train`: tiny synthetic data (attnscope synth) and a small
// model at a small size, so that each run takes seconds. Reproducibility and resume are
// asserted as byte equality (one LibTorch thread, so no reduction-order differences); no test
// asserts a quality reached by training.

#include <algorithm>
#include <array>
#include <chrono>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "attnscope/atomic_file.h"
#include "pipeline/vision/image_model_config.h"
#include "pipeline/vision/results.h"
#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;

std::string exe() {
  return ATTNSCOPE_EXE;
}

using test::read_text;

int count_lines(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

// 40 synthetic 48 px images (labels.csv + images/ + masks/), made once per test binary run.
const std::string& synth_data() {
  static test::TempDir dir;
  static const std::string data = [] {
    const auto out = dir / "synth";
    const auto r =
        test::run_process(exe() + " synth --out " + out + " --count 40 --size 48 --seed 3 2>&1");
    EXPECT_EQ(r.status, 0) << r.output;
    return out + "/labels.csv";
  }();
  return data;
}

// Crafting scripts that edit checkpoints on purpose re-seal them (tests/python/
// checkpoint_checksum.py), so that what they test is reached, not the checksum.
std::string seal_prelude() {
  return "import sys\nsys.path.insert(0, '" ATTNSCOPE_SOURCE_DIR
         "/tests/python')\nfrom checkpoint_checksum import seal\n";
}

// A fast deterministic training command (one torch thread, one loader thread).
std::string train_command(const std::string& run, int epochs = 4, int seed = 5) {
  return exe() + " --threads 1 train --data " + synth_data() +
         " --model attn_small --size 32 --batch-size 8 --lr 0.02 --workers 1 --ema 0.9 --quiet" +
         " --epochs " + std::to_string(epochs) + " --seed " + std::to_string(seed) + " --out " +
         run + " 2>&1";
}

// "same" when both checkpoints hold the same tensors, bit for bit.
std::string compare_weights(const std::string& a, const std::string& b) {
  const auto r =
      test::run_process(test::python() +
                        " -c \"import h5py,sys,numpy as np; a=h5py.File(sys.argv[1],'r'); "
                        "b=h5py.File(sys.argv[2],'r'); "
                        "ka=sorted(k for k in a.keys() if isinstance(a[k], h5py.Dataset)); "
                        "kb=sorted(k for k in b.keys() if isinstance(b[k], h5py.Dataset)); "
                        "print('same' if ka==kb and all(np.array_equal(a[k][()], b[k][()]) for k "
                        "in ka) else 'differ')\" " +
                        a + " " + b);
  return r.output;
}

TEST(TrainCli, HelpShowsTheOptionsWithDefaults) {
  const auto r = test::run_process(exe() + " train --help 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* flag :
       {"--val-split arg (=0.2)", "--optimizer arg (=sgd)", "--schedule arg (=cosine)",
        "--loss arg (=ce)", "--sampler arg (=shuffle)", "--select-by arg (=auc)", "--resume",
        "--skip-bad", "--cache", "--time-budget", "--init-backbone", "--precision arg (=fp32)",
        "--mixup arg (=0)", "--cutmix arg (=0)", "--drop-path arg (=0)"})
    EXPECT_NE(r.output.find(flag), std::string::npos) << flag << "\n" << r.output;
}

TEST(TrainCli, WritesMetricsAndLoadableCheckpoints) {
  test::TempDir dir;
  const auto run = dir / "run";
  const auto r = test::run_process(train_command(run));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto metrics = read_text(run + "/metrics.jsonl");
  EXPECT_EQ(count_lines(metrics), 4) << metrics;
  EXPECT_NE(metrics.find("\"val_auc\""), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("\"train_loss\""), std::string::npos);
  EXPECT_EQ(count_lines(read_text(run + "/timing.jsonl")), 4);
  EXPECT_NE(r.output.find("epoch 4:"), std::string::npos) << r.output;
  // The data-loading figures of every epoch: the loader's CPU is part of the process's, its
  // share is that ratio, and the model cannot wait longer than the epoch lasted.
  std::istringstream timing(read_text(run + "/timing.jsonl"));
  for (std::string line; std::getline(timing, line);) {
    const auto t = nlohmann::json::parse(line);
    const double cpu = t.at("cpu_s").get<double>(), loader = t.at("loader_cpu_s").get<double>();
    EXPECT_GT(loader, 0.0) << line;
    EXPECT_LE(loader, cpu) << line;
    EXPECT_NEAR(t.at("loader_cpu_share").get<double>(), loader / cpu, 1e-9) << line;
    EXPECT_GE(t.at("loader_wait_s").get<double>(), 0.0) << line;
    EXPECT_LE(t.at("loader_wait_s").get<double>(), t.at("wall_s").get<double>()) << line;
  }
  EXPECT_NE(r.output.find("% of the CPU time, waited "), std::string::npos) << r.output;
  for (const char* name : {"last.h5", "best.h5"}) {
    const auto loaded = pipeline::load_image_classifier(run + "/" + name);
    EXPECT_EQ(loaded.config.arch, "attn_small");
    EXPECT_EQ(loaded.meta.class_names, (std::vector<std::string>{"benign", "malignant"}));
    EXPECT_EQ(loaded.meta.extra["command"], "train");
    EXPECT_TRUE(loaded.meta.provenance.contains("data_checksum"));
    EXPECT_TRUE(loaded.meta.provenance["command_line"].get<std::string>().find(
                    "--model attn_small") != std::string::npos);
    EXPECT_EQ(loaded.meta.extra["training_config"]["optimizer"], "sgd");
  }
  const auto best = pipeline::read_checkpoint_meta(run + "/best.h5");
  const double t = best.extra["temperature"].get<double>();
  EXPECT_GT(t, 0.0);
  const auto py =
      test::run_process(test::python() +
                        " -c \"import h5py,sys; f=h5py.File(sys.argv[1],'r'); "
                        "print(float(f.attrs['temperature']) > 0, 'train_state' in f)\" " +
                        run + "/best.h5");
  EXPECT_EQ(py.output, "True False\n") << py.output;
}

TEST(TrainCli, SameSeedDataAndThreadsGiveByteIdenticalMetrics) {
  test::TempDir dir;
  const auto a = test::run_process(train_command(dir / "a"));
  const auto b = test::run_process(train_command(dir / "b"));
  ASSERT_EQ(a.status, 0) << a.output;
  ASSERT_EQ(b.status, 0) << b.output;
  EXPECT_EQ(read_text(dir / "a/metrics.jsonl"), read_text(dir / "b/metrics.jsonl"));
  EXPECT_EQ(compare_weights(dir / "a/last.h5", dir / "b/last.h5"), "same\n");
  // Another seed trains differently (the test can fail).
  const auto c = test::run_process(train_command(dir / "c", 4, 6));
  ASSERT_EQ(c.status, 0) << c.output;
  EXPECT_NE(read_text(dir / "a/metrics.jsonl"), read_text(dir / "c/metrics.jsonl"));
}

// A full disk (RLIMIT_FSIZE, writes fail with EFBIG): one error line naming the checkpoint,
// a failure exit without a signal, and nothing left in the run folder — no cut checkpoint and
// no temporary file.
TEST(TrainCli, FullDiskFailsClearlyAndLeavesNoCutCheckpoint) {
  test::TempDir dir;
  const auto run = dir / "run";
  const auto r = test::run_with_file_size_limit(train_command(run, 2), 40 * 1024);
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_EQ(r.signal, 0) << r.output;
  EXPECT_NE(r.output.find("error: " + run + "/"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(".h5"), std::string::npos) << r.output;
  // The checkpoint asked for and the system's reason; not the temporary it is built in.
  EXPECT_NE(r.output.find("File too large"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(".tmp"), std::string::npos) << r.output;
  if (fs::exists(run))
    for (const auto& entry : fs::directory_iterator(run))
      ADD_FAILURE() << "left behind: " << entry.path();
}

TEST(TrainCli, ResumeAfterSigkillsEqualsAnUninterruptedRun) {
  test::TempDir dir;
  const auto whole = dir / "whole";
  const auto t0 = std::chrono::steady_clock::now();
  const auto full = test::run_process(train_command(whole));
  ASSERT_EQ(full.status, 0) << full.output;
  const int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count());
  const auto run = dir / "killed";
  std::mt19937 rng(23);  // fixed: a failure can be rerun
  int kills = 0;
  for (int attempt = 0; attempt < 20; ++attempt) {
    const bool started = fs::exists(run + "/last.h5");
    const auto command =
        started ? exe() + " --threads 1 train --resume " + run + " 2>&1" : train_command(run);
    // Kill between 15% and 45% of a whole run's time: a random batch of the first half of
    // the remaining epochs (each resumed run repeats at least two of the four). After three
    // kills, let it finish.
    const int after = std::uniform_int_distribution<int>(ms * 15 / 100, ms * 45 / 100)(rng);
    const auto r = kills < 3 ? test::run_killed_after(command, after) : test::run_process(command);
    if (r.killed) {
      ++kills;
      // Whatever the moment, last.h5 (when there is one) is a complete checkpoint.
      if (fs::exists(run + "/last.h5")) {
        EXPECT_NO_THROW(pipeline::load_image_classifier(run + "/last.h5"));
      }
      continue;
    }
    ASSERT_EQ(r.status, 0) << r.output;
    // A resumed run has fewer epochs left than the whole run had: on a loaded machine it can
    // end before the kill. Until two kills have landed, start again from nothing.
    if (kills < 2) {
      fs::remove_all(run);
      kills = 0;
      continue;
    }
    break;
  }
  EXPECT_GE(kills, 2);
  EXPECT_EQ(read_text(run + "/metrics.jsonl"), read_text(whole + "/metrics.jsonl"));
  EXPECT_EQ(compare_weights(run + "/last.h5", whole + "/last.h5"), "same\n");
  EXPECT_EQ(compare_weights(run + "/best.h5", whole + "/best.h5"), "same\n");
}

// SIGTERM (what Slurm, torchrun and `kill` send) and SIGINT (Ctrl-C) stop training after the
// current batch: exit status 128 + the signal, one line saying what last.h5 holds and how to
// resume, no partial epoch and no temporary file left; the resumed run then ends exactly as an
// uninterrupted one.
TEST(TrainCli, SigtermAndSigintStopAfterTheBatchAndResumeEqualsAnUninterruptedRun) {
  test::TempDir dir;
  const auto whole = dir / "whole";
  // Eight epochs: the signal, sent when epoch 1 ends, lands well before the last batch.
  const auto full = test::run_process(train_command(whole, 8));
  ASSERT_EQ(full.status, 0) << full.output;
  for (const int sig : {SIGTERM, SIGINT}) {
    const std::string name = sig == SIGTERM ? "SIGTERM" : "SIGINT";
    const auto run = dir / name;
    test::SignalPlan plan;
    plan.signal = sig;
    plan.after = {"epoch 1:"};
    const auto r = test::run_signalled("exec " + train_command(run, 8), plan);
    ASSERT_EQ(r.signals_sent, 1) << r.output;
    EXPECT_EQ(r.signal, 0) << r.output;
    EXPECT_EQ(r.status, 128 + sig) << r.output;
    const int epochs = count_lines(read_text(run + "/metrics.jsonl"));
    EXPECT_GE(epochs, 1);
    EXPECT_LT(epochs, 8) << r.output;
    EXPECT_NE(r.output.find(concat("stopped by ", name, ": ", run, "/last.h5 holds epoch ", epochs,
                                   " (the partial epoch is not kept); continue with: attnscope "
                                   "train --resume ",
                                   run, "\n")),
              std::string::npos)
        << r.output;
    EXPECT_EQ(test::file_names(run),
              (std::set<std::string>{"best.h5", "last.h5", "metrics.jsonl", "timing.jsonl"}));
    const auto resumed = test::run_process(exe() + " --threads 1 train --resume " + run + " 2>&1");
    ASSERT_EQ(resumed.status, 0) << resumed.output;
    EXPECT_EQ(read_text(run + "/metrics.jsonl"), read_text(whole + "/metrics.jsonl")) << name;
    EXPECT_EQ(compare_weights(run + "/last.h5", whole + "/last.h5"), "same\n") << name;
    EXPECT_EQ(compare_weights(run + "/best.h5", whole + "/best.h5"), "same\n") << name;
  }
}

TEST(TrainCli, FileSizeLimitFailsClearlyAndKeepsThePreviousCheckpoint) {
  test::TempDir dir;
  const auto run = dir / "run";
  // A run killed as soon as its first last.h5 exists: three epochs are left to resume.
  const auto killed = test::run_process(
      train_command(run) + " > /dev/null & p=$!; while [ ! -f " + run +
      "/last.h5 ] && kill -0 $p 2>/dev/null; do sleep 0.02; done; kill -9 $p; wait $p; true");
  ASSERT_TRUE(fs::exists(run + "/last.h5")) << killed.output;
  ASSERT_NO_THROW(pipeline::load_image_classifier(run + "/last.h5"));
  const auto before = read_text(run + "/last.h5");
  const auto best_before = read_text(run + "/best.h5");
  // Resume to 4 epochs with writes failing beyond 64 kB per file: no checkpoint (megabytes)
  // can be written.
  const auto r = test::run_with_file_size_limit(
      exe() + " --threads 1 train --resume " + run + " 2>&1", 64 * 1024);
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("error:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(".h5"), std::string::npos) << r.output;
  EXPECT_EQ(read_text(run + "/last.h5"), before);
  EXPECT_EQ(read_text(run + "/best.h5"), best_before);
  for (const auto& entry : fs::directory_iterator(run))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
  EXPECT_NO_THROW(pipeline::load_image_classifier(run + "/last.h5"));
}

TEST(TrainCli, UnreadableImagesAreListedOrSkipped) {
  test::TempDir dir;
  const auto src = fs::path(synth_data()).parent_path();
  const auto data = dir.path() / "data";
  fs::copy(src, data, fs::copy_options::recursive);
  std::vector<std::string> broken;
  int n = 0;
  for (const auto& entry : fs::directory_iterator(data / "images")) {
    if (n++ >= 2) break;
    std::ofstream(entry.path(), std::ios::trunc) << "not an image";
    broken.push_back(entry.path().filename().string());
  }
  const auto base = exe() + " --threads 1 train --data " + (data / "labels.csv").string() +
                    " --model attn_small --size 32 --batch-size 8 --epochs 1 --workers 1 --quiet";
  const auto r = test::run_process(base + " --out " + (dir / "a") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("2 unreadable images"), std::string::npos) << r.output;
  for (const auto& name : broken)
    EXPECT_NE(r.output.find(name), std::string::npos) << name << "\n" << r.output;
  EXPECT_FALSE(fs::exists(dir / "a/last.h5"));
  const auto s = test::run_process(base + " --skip-bad --out " + (dir / "b") + " 2>&1");
  ASSERT_EQ(s.status, 0) << s.output;
  const auto skipped = read_text(dir / "b/skipped.csv");
  EXPECT_EQ(count_lines(skipped), 3) << skipped;
  for (const auto& name : broken)
    EXPECT_NE(skipped.find(name), std::string::npos) << skipped;
}

TEST(TrainCli, WrongCheckpointsAreRefusedNamingFileAndMismatch) {
  test::TempDir dir;
  const auto run = dir / "run";
  ASSERT_EQ(test::run_process(train_command(run, 1)).status, 0);
  const auto base = exe() + " --threads 1 train --data " + synth_data() +
                    " --size 32 --batch-size 8 --epochs 1 --workers 1 --quiet";
  // Another architecture.
  auto r = test::run_process(base + " --model small_cnn --init " + run + "/best.h5 --out " +
                             (dir / "x") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("best.h5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("attn_small"), std::string::npos) << r.output;
  // A corrupt file.
  write_file_atomically(dir / "corrupt.h5", "garbage");
  r = test::run_process(base + " --model attn_small --init " + (dir / "corrupt.h5") + " --out " +
                        (dir / "y") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("corrupt.h5"), std::string::npos) << r.output;
  // A folder that is no training run, and a checkpoint without training state.
  fs::create_directories(dir / "other");
  r = test::run_process(exe() + " train --resume " + (dir / "other") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("no last.h5"), std::string::npos) << r.output;
  fs::copy_file(run + "/best.h5", dir / "other/last.h5");
  r = test::run_process(exe() + " train --resume " + (dir / "other") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("train_state"), std::string::npos) << r.output;
  // Another class count: a 3-class dataset against the 2-class checkpoint.
  write_file_atomically(dir / "three.csv", [&] {
    std::string csv = "image_id,label\n";
    const auto text = read_text(synth_data());
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);
    const char* labels[] = {"a", "b", "c"};
    int i = 0;
    while (std::getline(in, line))
      csv += line.substr(0, line.find(',')) + "," + labels[i++ % 3] + "\n";
    return csv;
  }());
  r = test::run_process(exe() + " --threads 1 train --data " + (dir / "three.csv") + " --images " +
                        (fs::path(synth_data()).parent_path() / "images").string() +
                        " --multiclass --model attn_small --size 32 --epochs 1 --quiet --init " +
                        run + "/best.h5 --out " + (dir / "z") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("best.h5"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 classes"), std::string::npos) << r.output;
  // Two classes of other names: --init keeps the head, so the names must be the same (a
  // swapped order trained on silently before).
  write_file_atomically(dir / "renamed.csv", [&] {
    std::string csv = "image_id,label\n";
    std::istringstream in(read_text(synth_data()));
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      const auto comma = line.find(',');
      csv += line.substr(0, comma) + "," +
             (line.substr(comma + 1).rfind("benign", 0) == 0 ? "dog" : "cat") + "\n";
    }
    return csv;
  }());
  r = test::run_process(exe() + " --threads 1 train --data " + (dir / "renamed.csv") +
                        " --images " + (fs::path(synth_data()).parent_path() / "images").string() +
                        " --multiclass --model attn_small --size 32 --epochs 1 --quiet --init " +
                        run + "/best.h5 --out " + (dir / "w") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("best.h5: was trained on the classes [\"benign\",\"malignant\"]"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "w/last.h5"));
  // Stored configs classify and evaluate refuse by name (an image size of -1, a std of 0, an
  // unknown key, weights of 3 channels for a 1-channel config; re-sealed): --init and
  // --init-backbone trained from them without a word.
  const auto craft = dir / "craft_init.py";
  std::ofstream(craft) << seal_prelude() << R"(import sys, json, shutil, h5py
best, out = sys.argv[1], sys.argv[2]
def craft(name, attr, edit):
    shutil.copy(best, out + '/' + name + '.h5')
    with h5py.File(out + '/' + name + '.h5', 'a') as f:
        value = json.loads(f.attrs[attr])
        edit(value)
        f.attrs[attr] = json.dumps(value)
    seal(out + '/' + name + '.h5')
craft('size', 'model_config', lambda c: c.__setitem__('image_size', -1))
craft('key', 'model_config', lambda c: c.__setitem__('foo', 1))
craft('channels', 'model_config', lambda c: c.__setitem__('in_channels', 1))
craft('std', 'preprocessing_config', lambda c: c['normalize'].__setitem__('std', [0, 1, 1]))
print('ok')
)";
  ASSERT_EQ(test::run_process(test::python() + " " + craft + " " + run + "/best.h5 " +
                              dir.path().string())
                .output,
            "ok\n");
  const std::vector<std::tuple<std::string, std::string, std::string>> refused{
      {"--init", "size", "size.h5: model_config.image_size: is -1"},
      {"--init", "key", "key.h5: model_config.foo: unknown key for an image classifier"},
      {"--init", "channels", "channels.h5: checkpoint does not match the model"},
      {"--init", "std", "std.h5:/@preprocessing_config: preprocessing config: normalize.std"},
      {"--init-backbone", "size", "size.h5: model_config.image_size: is -1"},
      {"--init-backbone", "std", "std.h5:/@preprocessing_config"}};
  for (const auto& [flag, name, message] : refused) {
    r = test::run_process(base + " --model attn_small " + flag + " " + (dir / (name + ".h5")) +
                          " --out " + (dir / ("i-" + name)) + " 2>&1");
    EXPECT_EQ(r.status, 1) << flag << " " << name << r.output;
    EXPECT_NE(r.output.find("error: " + dir / message), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir / ("i-" + name + "/last.h5")));
  }
  // Another run's last.h5 copied into this run's folder: refused, the folder left alone (it
  // used to continue the other run here, over this folder's metrics.jsonl).
  ASSERT_EQ(test::run_process(train_command(dir / "run2", 1)).status, 0);
  fs::copy(run, dir / "mixed", fs::copy_options::recursive);
  fs::copy_file(dir / "run2/last.h5", dir / "mixed/last.h5", fs::copy_options::overwrite_existing);
  const auto metrics = read_text(dir / "mixed/metrics.jsonl");
  r = test::run_process(exe() + " train --resume " + (dir / "mixed") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("come from different runs"), std::string::npos) << r.output;
  EXPECT_EQ(read_text(dir / "mixed/metrics.jsonl"), metrics);
}

// --resume reads a run folder's checkpoints as files from anywhere: a stored field of another
// type (edited or crafted with h5py) is one line naming the file and the field, before any file
// in the folder is touched. nlohmann's type_error named neither. So are a stored command line
// whose flags do not parse or check out (not the usage text and exit 2 of a mistyped flag), an
// optimiser step count of 1e30 (LibTorch's overflow message named nothing), a NaN momentum, and
// a loop state, momentum buffer or metrics history no run could have saved.
TEST(TrainCli, CraftedResumeFieldsAreOneLineNamingFileAndField) {
  test::TempDir dir;
  const auto run = dir / "run";
  ASSERT_EQ(test::run_process(train_command(run, 1)).status, 0);
  const auto script = dir / "craft.py";
  std::ofstream(script) << seal_prelude() << R"(import sys, json, shutil, h5py
run, out = sys.argv[1], sys.argv[2]
def craft(name, file, attr, key, value):
    shutil.copytree(run, out + '/' + name)
    with h5py.File(out + '/' + name + '/' + file, 'a') as f:
        j = json.loads(f.attrs[attr])
        j[key] = value
        del f.attrs[attr]
        f.attrs[attr] = json.dumps(j)
    seal(out + '/' + name + '/' + file)
craft('command', 'last.h5', 'extra', 'command', 5)
craft('args', 'last.h5', 'provenance', 'args', ['--data', 1])
craft('cwd', 'last.h5', 'provenance', 'cwd', {'a': 'x' * 100000})
craft('world', 'last.h5', 'provenance', 'world_size', 'two')
craft('checksum', 'last.h5', 'provenance', 'data_checksum', 3)
craft('temperature', 'best.h5', 'extra', 'temperature', 'hot')
# The stored command line: a flag out of range, an unknown flag (both files, which must agree).
def args(name, edit):
    shutil.copytree(run, out + '/' + name)
    for file in ('last.h5', 'best.h5'):
        with h5py.File(out + '/' + name + '/' + file, 'a') as f:
            j = json.loads(f.attrs['provenance'])
            edit(j['args'])
            f.attrs['provenance'] = json.dumps(j)
        seal(out + '/' + name + '/' + file)
def batch(a): a[a.index('--batch-size') + 1] = '1000000000'
args('batch', batch)
args('unknown', lambda a: a.append('--frobnicate'))
# An empty value stored by a run started when it meant "not given" (typed today: refused).
args('emptyval', lambda a: a.extend(['--init', '', '--val=']))
# The optimiser's state, for a run that wants a second epoch: a step count of 1e30 (LibTorch's
# overflow message named nothing) and a NaN momentum (accepted before).
def more(a): a[a.index('--epochs') + 1] = '2'
# A run of 2 epochs: its schedule spans twice the steps of the 1-epoch run that made the files.
def two_epochs(name):
    args(name, more)
    with h5py.File(out + '/' + name + '/last.h5', 'a') as f:
        j = json.loads(f['train_state'].attrs['loop'])
        j['total_steps'] *= 2
        f['train_state'].attrs['loop'] = json.dumps(j)
def state(name, suffix, make):
    two_epochs(name)
    with h5py.File(out + '/' + name + '/last.h5', 'a') as f:
        key = sorted(k for k in f['train_state'] if k.endswith(suffix))[0]
        value = make(f['train_state'][key][()])
        del f['train_state'][key]
        f['train_state'].create_dataset(key, data=value)
    seal(out + '/' + name + '/last.h5')
import numpy as np
state('step', ':step', lambda old: np.float32(1e30))
state('momentum', ':momentum_buffer', lambda old: np.full(old.shape, np.nan, old.dtype))
# The loop's own state: a step no run counts, a deleted momentum buffer (the run would restart
# it from zero), an emptied metrics history (metrics.jsonl is rewritten from it).
def loop(name, key, value):
    two_epochs(name)
    with h5py.File(out + '/' + name + '/last.h5', 'a') as f:
        j = json.loads(f['train_state'].attrs['loop'])
        j[key] = value
        f['train_state'].attrs['loop'] = json.dumps(j)
    seal(out + '/' + name + '/last.h5')
loop('loopstep', 'step', 2.5)
loop('loopbest', 'best', 'x')
loop('loopauc', 'best', 7.0)
def drop(name, key):
    two_epochs(name)
    with h5py.File(out + '/' + name + '/last.h5', 'a') as f:
        del f['train_state'][sorted(k for k in f['train_state'] if k.endswith(key))[0]]
    seal(out + '/' + name + '/last.h5')
drop('nomomentum', ':momentum_buffer')
drop('nohistory', '_history')
# A run of 2 epochs with a 1-minute budget, which its first epoch spent (120 s on the clock).
def budget(a):
    more(a)
    a.extend(['--time-budget', '1'])
args('budget', budget)
with h5py.File(out + '/budget/last.h5', 'a') as f:
    j = json.loads(f['train_state'].attrs['loop'])
    j['total_steps'] *= 2
    j['wall_s'] = 120.0
    f['train_state'].attrs['loop'] = json.dumps(j)
seal(out + '/budget/last.h5')
)";
  const auto made =
      test::run_process(test::python() + " " + script + " " + run + " " + dir.path().string());
  ASSERT_EQ(made.status, 0) << made.output;
  const std::vector<std::array<std::string, 2>> cases = {
      {"command", "/last.h5: extra.command is 5, not a string"},
      {"args", "/last.h5: provenance.args is [\"--data\",1], not a list of strings"},
      {"cwd", "/last.h5: provenance.cwd is {\"a\":\"xxxx"},
      {"world", "/last.h5: provenance.world_size is \"two\", not an integer"},
      {"checksum", "/last.h5: provenance.data_checksum is 3, not a string"},
      {"temperature",
       "/best.h5: checkpoint attribute extra.temperature is \"hot\"; expected a number; move it "
       "out of the run folder to resume without it"},
      {"batch",
       "/last.h5: provenance.args: --batch-size must be at most 65536 (in the command line "
       "stored with the run)"},
      {"unknown", "/last.h5: provenance.args: unrecognised option '--frobnicate'"},
      {"step", "/last.h5: optimizer state: step count of '"},
      {"momentum", "/last.h5: optimizer state: tensor '"},
      {"loopstep",
       "/last.h5: training state: 'step' is 2.5; expected a whole number from 1 to "
       "1000000000000000"},
      {"loopbest", "/last.h5: training state: 'best' is \"x\"; expected a number or null"},
      {"nomomentum", "/last.h5: optimizer state: parameter '"},
      {"loopauc", "/last.h5: /train_state@loop: 'best' is 7, not a value of auc"},
      {"nohistory", "/last.h5: /train_state/_history holds 0 record(s) for 1 completed epoch(s)"}};
  for (const auto& [name, expected] : cases) {
    const auto folder = dir / name;
    const auto metrics = read_text(folder + "/metrics.jsonl");
    const auto r = test::run_process(exe() + " train --resume " + folder + " 2>&1");
    EXPECT_EQ(r.status, 1) << name << "\n" << r.output.substr(0, 2000);
    EXPECT_NE(r.output.find("error: " + folder + expected), std::string::npos)
        << name << "\n"
        << r.output.substr(0, 2000);
    EXPECT_EQ(count_lines(r.output), 1) << name << "\n" << r.output.substr(0, 2000);
    EXPECT_LT(r.output.size(), 600u) << name;
    EXPECT_EQ(read_text(folder + "/metrics.jsonl"), metrics) << name;
  }
  // Its stored empty values read as they were then: not given (the run is complete: nothing to
  // train, no error).
  const auto metrics = read_text(dir / "emptyval/metrics.jsonl");
  const auto r = test::run_process(exe() + " train --resume " + (dir / "emptyval") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output.substr(0, 2000);
  EXPECT_EQ(r.output.find("error"), std::string::npos) << r.output.substr(0, 2000);
  EXPECT_NE(r.output.find("nothing to resume: " + (dir / "emptyval") +
                          " had already trained all its epochs (1)\n"),
            std::string::npos)
      << r.output.substr(0, 2000);
  EXPECT_EQ(read_text(dir / "emptyval/metrics.jsonl"), metrics);
  // A run whose time budget is spent trains no batch it could not keep, and says so: the run
  // stays where it was, last.h5 untouched.
  const auto budget = dir / "budget";
  const auto last = read_text(budget + "/last.h5");
  const auto spent = test::run_process(exe() + " train --resume " + budget + " 2>&1");
  EXPECT_EQ(spent.status, 0) << spent.output.substr(0, 2000);
  EXPECT_NE(spent.output.find("nothing to resume: the time budget (1 min) ran out before epoch 2 "
                              "could end, so " +
                              budget + " stays at epoch 1 of 2 ("),
            std::string::npos)
      << spent.output.substr(0, 2000);
  EXPECT_EQ(spent.output.find("epoch 2/2"), std::string::npos) << spent.output.substr(0, 2000);
  EXPECT_EQ(count_lines(read_text(budget + "/metrics.jsonl")), 1);
  EXPECT_TRUE(read_text(budget + "/last.h5") == last);
  // Typed, an empty --resume is a usage error, not the file system's "Invalid argument".
  const auto empty = test::run_process(exe() + " train --resume '' 2>&1");
  EXPECT_EQ(empty.status, 2) << empty.output;
  EXPECT_EQ(empty.output.rfind("error: --resume is empty: give it a value\n", 0), 0u)
      << empty.output;
}

TEST(TrainCli, BadDataAndOutputAreClearErrors) {
  test::TempDir dir;
  const auto base = exe() + " train --model attn_small --size 32 --epochs 1 --quiet";
  // Single class.
  std::string one = "image_id,label\n";
  const auto text = read_text(synth_data());
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line))
    one += line.substr(0, line.find(',')) + ",benign\n";
  write_file_atomically(dir / "one.csv", one);
  const auto images = (fs::path(synth_data()).parent_path() / "images").string();
  auto r = test::run_process(base + " --data " + (dir / "one.csv") + " --images " + images +
                             " --format generic --out " + (dir / "a") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("single class"), std::string::npos) << r.output;
  // Empty dataset.
  write_file_atomically(dir / "empty.csv", "image_id,label\n");
  r = test::run_process(base + " --data " + (dir / "empty.csv") + " --images " + images +
                        " --out " + (dir / "b") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("error:"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "b/last.h5"));
  // A split that leaves a class out of validation: 1 malignant image among 20.
  std::string rare = "image_id,label\n";
  std::istringstream in2(text);
  std::getline(in2, line);
  int malignant = 0;
  while (std::getline(in2, line)) {
    const auto id = line.substr(0, line.find(','));
    const bool m =
        line.find("malignant") != std::string::npos || line.substr(line.rfind(',') + 1) == "1";
    if (m && malignant++ >= 1) continue;
    rare += id + "," + (m ? "malignant" : "benign") + "\n";
  }
  write_file_atomically(dir / "rare.csv", rare);
  r = test::run_process(base + " --data " + (dir / "rare.csv") + " --images " + images +
                        " --format generic --out " + (dir / "c") + " 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("out of the validation set"), std::string::npos) << r.output;
  // An unwritable run folder is refused before any work.
  write_file_atomically(dir / "file", "x");
  r = test::run_process(base + " --data " + synth_data() + " --out " + (dir / "file") +
                        "/run 2>&1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("run folder"), std::string::npos) << r.output;
}

// resnet18 at 32 px has BatchNorm over 1 x 1 maps, which cannot train on one image: a training
// set of 33 in batches of 8 trains (the lone last image joins the batch before it), and
// --batch-size 1 is one line saying what to change, not LibTorch's "Expected more than 1 value
// per channel when training".
TEST(TrainCli, ABatchNormOverOneByOneMapsNeverTrainsOnALoneImage) {
  test::TempDir dir;
  const auto text = read_text(synth_data());
  std::istringstream in(text);
  // image_id and label only (the masks' paths are relative to synth's folder).
  const auto two_fields = [](const std::string& row) {
    return row.substr(0, row.find(',', row.find(',') + 1)) + "\n";
  };
  std::string line, train, val;
  std::getline(in, line);
  train = val = two_fields(line);
  for (int i = 0; std::getline(in, line); ++i)
    (i < 33 ? train : val) += two_fields(line);
  write_file_atomically(dir / "train.csv", train);
  write_file_atomically(dir / "val.csv", val);
  const auto images = (fs::path(synth_data()).parent_path() / "images").string();
  const auto base = exe() + " --threads 1 train --data " + (dir / "train.csv") + " --val " +
                    (dir / "val.csv") + " --images " + images +
                    " --model resnet18 --size 32 --epochs 1 --workers 1 --quiet";
  auto r = test::run_process(base + " --batch-size 8 --out " + (dir / "a") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  const auto metrics = read_text(dir / "a/metrics.jsonl");
  EXPECT_NE(metrics.find("\"epoch\":1"), std::string::npos) << metrics;
  r = test::run_process(base + " --batch-size 1 --out " + (dir / "b") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("model 'resnet18' at 32 x 32 px has BatchNorm over 1 x 1 maps"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("Expected more than 1 value"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  // The failed run leaves no folder behind: neither the one it made (b), nor after a data
  // error (c); a folder that was there before (d, empty) stays.
  EXPECT_FALSE(fs::exists(dir / "b"));
  r = test::run_process(exe() + " --threads 1 train --data " + (dir / "none.csv") +
                        " --model resnet18 --quiet --out " + (dir / "c") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_FALSE(fs::exists(dir / "c"));
  fs::create_directories(dir / "d");
  r = test::run_process(base + " --batch-size 1 --out " + (dir / "d") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(fs::is_directory(dir / "d"));
}

// A run folder in use (util-linux flock(1) holds its lock, as a live `attnscope train` does:
// attnscope/folder_lock.h) is refused before any work; the other run's temporary file, which a
// run that owns the folder removes as a killed run's garbage, stays.
// An image cache (`attnscope cache`) holds preprocessed images: a run whose --size differs is
// refused with a line naming the cache and both step lists, before the run folder is used;
// the cache's own size trains.
TEST(TrainCli, ACacheOfOtherStepsIsRefusedNamingIt) {
  test::TempDir dir;
  const auto cache = dir / "c16.h5";
  const auto made = test::run_process(exe() + " cache --data " + synth_data() + " --out " + cache +
                                      " --size 16 --workers 1");
  ASSERT_EQ(made.status, 0) << made.output;
  const auto base = exe() + " --threads 1 train --data " + cache +
                    " --model small_cnn --batch-size 8 --workers 1 --epochs 1 --quiet --out ";
  const auto r = test::run_process(base + (dir / "a") + " --size 32 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + cache + ": holds images made with the steps "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("\"size\":16"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"size\":32"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(from --size)"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "a/metrics.jsonl"));
  const auto ok = test::run_process(base + (dir / "b") + " --size 16 2>&1");
  EXPECT_EQ(ok.status, 0) << ok.output;
  EXPECT_EQ(count_lines(read_text(dir / "b/metrics.jsonl")), 1);
}

// A cache that `cache` built without the images it could not read (exit 1, listed in its
// /errors) is trained on with one warning naming the first and the count (probe finding: it
// was used without a word).
TEST(TrainCli, ACacheBuiltWithoutSomeImagesSaysSo) {
  test::TempDir dir;
  const auto data = fs::path(synth_data()).parent_path();
  fs::copy(data, dir / "data", fs::copy_options::recursive);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir / "data/images"))
    files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::ofstream(files[3], std::ios::trunc) << "not an image";
  const auto cache = dir / "c.h5";
  auto r = test::run_process(exe() + " cache --data " + (dir / "data/labels.csv") + " --out " +
                             cache + " --size 16 --workers 1 2>&1");
  ASSERT_EQ(r.status, 1) << r.output;
  ASSERT_NE(r.output.find("cached 39 of 40 images"), std::string::npos) << r.output;
  r = test::run_process(exe() + " --threads 1 train --data " + cache +
                        " --model small_cnn --size 16 --batch-size 8 --workers 1 --epochs 1 "
                        "--quiet --out " +
                        (dir / "run") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: " + cache +
                          " was built without 1 image(s) that could not "
                          "be read (its /errors, e.g. " +
                          files[3].string() + ": "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("); the run uses the 39 it holds\n"), std::string::npos) << r.output;
  // The path once (the stored reason names it already).
  EXPECT_EQ(r.output.find(files[3].string() + ": " + files[3].string()), std::string::npos)
      << r.output;
}

// --resume of a folder that does not exist says so (it said "is not a folder"); a damaged
// best.h5 (an edited threshold: the checksum covers the attributes) is one line that says how to
// go on without it, and moved away, the run resumes (probe findings).
TEST(TrainCli, ResumeOfAMissingFolderOrWithADamagedBestCheckpointSaysWhatToDo) {
  test::TempDir dir;
  const auto run = dir / "run";
  auto r = test::run_process(exe() + " train --resume " + (dir / "nope") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output, "error: " + (dir / "nope") +
                          ": does not exist: --resume takes the --out folder of an earlier "
                          "`attnscope train` run\n");
  ASSERT_EQ(test::run_process(train_command(run, 1)).status, 0);
  r = test::run_process(test::python() +
                        " -c \"import h5py, json, sys\nwith h5py.File(sys.argv[1], "
                        "'a') as f: e = json.loads(f.attrs['extra']); e['threshold'] = 0.3; "
                        "f.attrs['extra'] = json.dumps(e)\" " +
                        (run + "/best.h5"));
  ASSERT_EQ(r.status, 0) << r.output;
  r = test::run_process(exe() + " train --resume " + run + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output.rfind("error: " + run + "/best.h5: checksum mismatch (stored ", 0), 0u)
      << r.output;
  EXPECT_NE(r.output.find("; move it out of the run folder to resume without it (the next epoch "
                          "better than the best so far writes it again)\n"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  fs::rename(run + "/best.h5", dir / "damaged-best.h5");
  // (--quiet is the one option --resume takes: it was refused.)
  r = test::run_process(exe() + " train --resume " + run + " --quiet 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("; no best.h5 in " + run +
                          " (no epoch since it was removed beat it); "
                          "last.h5 holds the last epoch\n"),
            std::string::npos)
      << r.output;
  // Said as the run's own when the stored command line does not parse, also with --quiet, and
  // --resume without its folder is a usage error that says so.
  r = test::run_process(exe() + " train --quiet --resume 2>&1");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_EQ(r.output.rfind("error: --resume needs a value: the run folder\n", 0), 0u) << r.output;
}

// A --size too small for the network (attn_vgg16 pools 16 px down to nothing): one line
// naming the preset and the size before the first step, LibTorch's reason in brackets.
TEST(TrainCli, ASizeTooSmallForTheNetworkIsOneLineBeforeTraining) {
  test::TempDir dir;
  const auto r = test::run_process(exe() + " --threads 1 train --data " + synth_data() +
                                   " --model attn_vgg16 --size 16 --batch-size 8 --workers 1"
                                   " --epochs 1 --quiet --out " +
                                   (dir / "run") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: --model attn_vgg16: cannot classify the 16 x 16 images this "
                          "run's preprocessing (--size or --augment) makes ("),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("frame #"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "run/metrics.jsonl"));
}

// A ViT's position-embedding grid is laid out for --size, also with --augment (then resampled
// to the images' token grid in every pass: it trained better on isic-uda1 than a grid of the
// images' side, docs/training-on-isic.md): 1 + (64 / 8)^2 positions for 24-px images, read back
// with h5py, and the checkpoint classifies 24-px images. Patches that do not tile the images
// or the grid, and a --size above model_config's 4096, are one line before training.
TEST(TrainCli, AVitsPositionGridIsLaidOutForSizeAlsoWithAnAugmentConfig) {
  test::TempDir dir;
  const auto config = [&](const std::string& name, int side) {
    std::ofstream(dir / name) << R"({"steps": [{"op": "resize", "size": )" << side
                              << R"(, "mode": "crop"}], "augment": {"hflip": 0.5}})";
    return dir / name;
  };
  const auto command = [&](const std::string& run, const std::string& flags) {
    return exe() + " --threads 1 train --data " + synth_data() +
           " --model vit_mini_patch8 --batch-size 8 --workers 1 --quiet --epochs 1 " + flags +
           " --out " + run + " 2>&1";
  };
  const auto r =
      test::run_process(command(dir / "run", "--size 64 --augment " + config("a24.json", 24)));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto loaded = pipeline::load_image_classifier(dir / "run/best.h5");
  EXPECT_EQ(loaded.config.image_size, 64);
  const auto shape = test::run_process(
      test::python() +
      " -c \"import h5py,sys; print(h5py.File(sys.argv[1],'r')['pos_embed'].shape)\" " +
      (dir / "run/last.h5"));
  EXPECT_EQ(shape.output, "(1, 65, 128)\n");
  const auto c =
      test::run_process(exe() + " --threads 1 classify --model " + (dir / "run/best.h5") +
                        " --input " + fs::path(synth_data()).parent_path().string() +
                        "/images --out " + (dir / "classified") + " 2>&1");
  EXPECT_EQ(c.status, 0) << c.output;
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--augment " + config("a20.json", 20), "do not tile the 20 x 20 images --augment "},
      {"--size 20", "do not tile the 20 x 20 images --size makes"},
      {"--size 60 --augment " + config("a24b.json", 24),
       "do not tile the 60 x 60 grid --size lays out"}};
  for (const auto& [flags, expected] : bad) {
    const auto b = test::run_process(command(dir / "bad", flags));
    EXPECT_EQ(b.status, 1) << b.output;
    EXPECT_NE(b.output.find("error: --model vit_mini_patch8: its patches of 8 px " + expected),
              std::string::npos)
        << b.output;
    EXPECT_FALSE(fs::exists(dir / "bad/metrics.jsonl"));
  }
  const auto size = test::run_process(command(dir / "size", "--size 5000"));
  EXPECT_EQ(size.status, 2) << size.output;
  EXPECT_NE(size.output.find("--size must be in [16, 4096]"), std::string::npos) << size.output;
}

// A batch that does not fit the memory limit (ATTNSCOPE_MEMORY_LIMIT here; a cgroup's or the
// machine's free memory by default) is one line before any checkpoint, not the OOM killer's
// SIGKILL. attn_small's first activation at 512 px, batch 32, is 1 GiB by itself.
TEST(TrainCli, ABatchPastTheMemoryLimitIsOneLineBeforeAnyCheckpoint) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "no tensor cache under AddressSanitizer, so no limit to enforce";
#endif
  test::TempDir dir;
  auto r = test::run_process("ATTNSCOPE_MEMORY_LIMIT=1G " + exe() + " --threads 1 train --data " +
                             synth_data() +
                             " --model attn_small --size 512 --batch-size 32 --workers 1"
                             " --epochs 1 --quiet --out " +
                             (dir / "run") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output.rfind("error: out of memory: the next tensor (", 0), 0u) << r.output;
  EXPECT_NE(r.output.find(" MiB, past the 1024 MiB of ATTNSCOPE_MEMORY_LIMIT: lower --batch-size"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_FALSE(fs::exists(dir / "run/last.h5"));
  EXPECT_FALSE(fs::exists(dir / "run/metrics.jsonl"));
  // A malformed limit is named before any work.
  r = test::run_process("ATTNSCOPE_MEMORY_LIMIT=12Q " + exe() + " --threads 1 train --data " +
                        synth_data() + " --model attn_small --size 32 --epochs 1 --out " +
                        (dir / "run2") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output,
            "error: ATTNSCOPE_MEMORY_LIMIT: expects a size such as 8G, 512M or "
            "1073741824, or off; got '12Q'\n");
  EXPECT_FALSE(fs::exists(dir / "run2"));
}

TEST(TrainCli, ARunFolderInUseByAnotherRunIsRefusedAndLeftAlone) {
  test::TempDir dir;
  if (!test::folders_lock(dir.path().string()))
    GTEST_SKIP() << "flock(2) on folders is not supported under " << dir.path();
  const auto run = dir / "run";
  fs::create_directories(run);
  const auto live_temp = run + "/.last.h5.4242-0.tmp.h5";
  write_file_atomically(live_temp, "another run's checkpoint being written");
  const auto r = test::run_process("flock -o " + run + " " + train_command(run, 1));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find(run + ": is in use by another attnscope run"), std::string::npos)
      << r.output;
  EXPECT_EQ(test::file_names(run), std::set<std::string>{".last.h5.4242-0.tmp.h5"});
  EXPECT_EQ(test::run_process("flock -n " + run + " true").status, 0);
}

// The first `benign` benign and `malignant` malignant rows of the synthetic labels.csv (from
// row `skip` of each class on), written beside it so that images/ and masks/ resolve.
std::string subset_csv(const std::string& name, int benign, int malignant, int skip = 0) {
  const auto text = read_text(synth_data());
  std::istringstream in(text);
  std::string line, csv;
  std::getline(in, line);
  csv = line + "\n";
  int b = 0, m = 0;
  while (std::getline(in, line)) {
    const bool is_m = line.find(",malignant,") != std::string::npos;
    int& seen = is_m ? m : b;
    const int want = is_m ? malignant : benign;
    if (seen >= skip && seen < skip + want) csv += line + "\n";
    ++seen;
  }
  const auto path = (fs::path(synth_data()).parent_path() / name).string();
  write_file_atomically(path, csv);
  return path;
}

nlohmann::json last_metrics(const std::string& run) {
  const auto text = read_text(run + "/metrics.jsonl");
  const auto start = text.rfind('\n', text.size() - 2);
  return nlohmann::json::parse(text.substr(start == std::string::npos ? 0 : start + 1));
}

// One epoch on a fixed train/val pair (no split): the step count is the oracle of the epoch size.
std::string fixed_split_command(const std::string& train, const std::string& run,
                                const std::string& flags) {
  return exe() + " --threads 1 train --data " + train + " --val " +
         subset_csv("val_fixed.csv", 4, 4, 10) +
         " --model attn_small --size 32 --batch-size 8 --workers 1 --epochs 1 --seed 5 --quiet " +
         flags + " --out " + run + " 2>&1";
}

TEST(TrainCli, OversampleAndTheBalancedSamplerSetTheEpochSize) {
  test::TempDir dir;
  const auto train = subset_csv("train_10_6.csv", 10, 6);
  auto steps = [&](const std::string& flags, const std::string& name) {
    const auto r = test::run_process(fixed_split_command(train, dir / name, flags));
    EXPECT_EQ(r.status, 0) << r.output;
    return last_metrics(dir / name).at("step").get<int64_t>();
  };
  EXPECT_EQ(steps("", "plain"), 2);                                 // ceil(16 / 8)
  EXPECT_EQ(steps("--oversample malignant=3", "over"), 4);          // ceil((10 + 3·6) / 8)
  EXPECT_EQ(steps("--oversample benign=2,malignant=2", "two"), 4);  // ceil(2·16 / 8)
  EXPECT_EQ(steps("--oversample benign=1,malignant=3", "list"), 4);  // a list: ceil(28 / 8)
  // Balanced sampling draws with replacement, the source's size per epoch.
  EXPECT_EQ(steps("--sampler balanced", "balanced"), 2);
  EXPECT_EQ(
      pipeline::read_checkpoint_meta(dir / "balanced/last.h5").extra["training_config"]["sampler"],
      "balanced");
  const auto bad = test::run_process(fixed_split_command(train, dir / "x", "--oversample nevus=2"));
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.output.find("nevus"), std::string::npos) << bad.output;
}

// With a learning rate of 1e-6 the weights hardly move, so the training loss with --mask-loss
// minus the loss without is the weighted Dice loss of the maps against the masks: positive, at
// most the sum of the weights (each Dice loss is in [0, 1]), linear in the weights, and the sum
// of each stage's own.
TEST(TrainCli, MaskLossAddsTheWeightedDiceLossOfEachStage) {
  test::TempDir dir;
  const auto train = subset_csv("train_10_6.csv", 10, 6);
  auto loss = [&](const std::string& flags, const std::string& name) {
    const auto r = test::run_process(fixed_split_command(train, dir / name, "--lr 1e-6 " + flags));
    EXPECT_EQ(r.status, 0) << r.output;
    return last_metrics(dir / name).at("train_loss").get<double>();
  };
  const double plain = loss("", "plain");
  const double one = loss("--mask-loss 1,1", "one") - plain;
  const double two = loss("--mask-loss 2,2", "two") - plain;
  // Clearly positive (a Dice loss of 0 would need maps equal to the masks, which a model that
  // has not learnt them cannot have); the values themselves depend on the initialisation.
  EXPECT_GT(one, 0.01);
  EXPECT_LE(one, 2.0 + 1e-3);
  EXPECT_NEAR(two, 2.0 * one, 0.05 * one);
  // Each weight acts on its own stage: one stage at a time, each adds a positive Dice loss of
  // at most 1, and the two add up to both at once.
  const double first = loss("--mask-loss 1,0", "first") - plain;
  const double second = loss("--mask-loss 0,1", "second") - plain;
  EXPECT_GT(first, 0.005);
  EXPECT_GT(second, 0.005);
  EXPECT_LE(first, 1.0 + 1e-3);
  EXPECT_LE(second, 1.0 + 1e-3);
  EXPECT_NEAR(first + second, one, 0.05 * one);
  const auto wrong = test::run_process(fixed_split_command(train, dir / "x", "--mask-loss 1"));
  EXPECT_NE(wrong.status, 0);
  EXPECT_NE(wrong.output.find("--mask-loss"), std::string::npos) << wrong.output;
}

// --mask-loss on data that names no mask, and the distillation options without --teacher,
// change nothing: each said in one warning line, and the run is the plain one.
TEST(TrainCli, OptionsThatCannotActAreSaidToDoNothing) {
  test::TempDir dir;
  const auto train = subset_csv("train_10_6_nomask.csv", 10, 6);
  std::istringstream in(read_text(train));
  std::string csv;
  for (std::string line; std::getline(in, line);) {
    const auto second = line.find(',', line.find(',') + 1);
    csv += line.substr(0, second) + "\n";  // image_id,label: no mask column
  }
  write_file_atomically(train, csv);
  const auto plain = test::run_process(fixed_split_command(train, dir / "plain", ""));
  ASSERT_EQ(plain.status, 0) << plain.output;
  const auto r = test::run_process(fixed_split_command(
      train, dir / "flags", "--mask-loss 1,1 --distill hard --distill-alpha 0.3"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: --mask-loss: " + train +
                          " names no lesion mask (a generic CSV's mask column): no Dice term is "
                          "applied\n"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("warning: --distill, --distill-alpha are for --teacher, which is not "
                          "given: nothing is distilled\n"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(plain.output.find("warning"), std::string::npos) << plain.output;
  EXPECT_EQ(last_metrics(dir / "flags").at("train_loss"),
            last_metrics(dir / "plain").at("train_loss"));
}

// --cache decodes and preprocesses once; what the model sees is the same, so the run is too.
TEST(TrainCli, CacheGivesTheSameRunAsDecodingEveryEpoch) {
  test::TempDir dir;
  ASSERT_EQ(test::run_process(train_command(dir / "files", 2)).status, 0);
  const auto cached = test::run_process(train_command(dir / "cached", 2) + " --cache");
  ASSERT_EQ(cached.status, 0) << cached.output;
  EXPECT_TRUE(fs::exists(dir / "cached/cache-train.h5"));
  EXPECT_EQ(read_text(dir / "cached/metrics.jsonl"), read_text(dir / "files/metrics.jsonl"));
  EXPECT_EQ(compare_weights(dir / "cached/last.h5", dir / "files/last.h5"), "same\n");
}

// A one-epoch --cache run into `run` with what its first epoch wrote removed: its caches,
// as a run killed before that epoch ended leaves them.
void cached_run_killed_before_its_first_epoch_ended(const std::string& run) {
  const auto made = test::run_process(train_command(run, 1) + " --cache");
  ASSERT_EQ(made.status, 0) << made.output;
  for (const char* name : {"last.h5", "best.h5", "metrics.jsonl", "timing.jsonl"})
    fs::remove(fs::path(run) / name);
}

// Caches a killed run left in the folder, made from other data: built again, with a warning
// line, so the run trains on its own data (it trained on the old caches' images before) and
// equals a run in an empty folder.
TEST(TrainCli, ACacheOfOtherDataInTheFolderIsBuiltAgain) {
  test::TempDir dir;
  ASSERT_NO_FATAL_FAILURE(cached_run_killed_before_its_first_epoch_ended(dir / "run"));
  // Other data: the first 30 rows of the synthetic set.
  std::istringstream in(read_text(synth_data()));
  std::string line, csv;
  for (int i = 0; i < 31 && std::getline(in, line); ++i)  // image_id,label (no mask column)
    csv += line.substr(0, line.find(',', line.find(',') + 1)) + "\n";
  write_file_atomically(dir / "subset.csv", csv);
  const auto command = [&](const std::string& out) {
    return exe() + " --threads 1 train --data " + (dir / "subset.csv") + " --images " +
           (fs::path(synth_data()).parent_path() / "images").string() +
           " --model attn_small --size 32 --batch-size 8 --lr 0.02 --workers 1 --quiet"
           " --epochs 1 --seed 5 --cache --out " + out + " 2>&1";
  };
  const auto again = test::run_process(command(dir / "run"));
  ASSERT_EQ(again.status, 0) << again.output;
  EXPECT_NE(again.output.find("cache-train.h5: made from other data or preprocessing than the "
                              "train set; building it again"),
            std::string::npos)
      << again.output;
  const auto clean = test::run_process(command(dir / "clean"));
  ASSERT_EQ(clean.status, 0) << clean.output;
  EXPECT_EQ(clean.output.find("building it again"), std::string::npos) << clean.output;
  EXPECT_EQ(read_text(dir / "run/metrics.jsonl"), read_text(dir / "clean/metrics.jsonl"));
}

// A cache the folder holds with a damaged sample (one byte changed: the cache is uncompressed,
// only its Fletcher-32 checksum tells) is built again with a warning line, and the run equals
// one in an empty folder; before, it trained on the changed pixels without a word.
TEST(TrainCli, ADamagedCacheInTheFolderIsBuiltAgain) {
  test::TempDir dir;
  ASSERT_NO_FATAL_FAILURE(cached_run_killed_before_its_first_epoch_ended(dir / "run"));
  const auto cache = dir / "run/cache-train.h5";
  fs::copy_file(cache, dir / "intact.h5");
  const auto script = dir / "damage.py";
  std::ofstream(script) << R"(
import sys, h5py, numpy as np
path, how = sys.argv[1], sys.argv[2]
if how in ('damage', 'labels'):
    with h5py.File(path, 'r') as f:
        d = f['images'] if how == 'damage' else f['labels']
        if how == 'damage':
            assert d.fletcher32 and d.compression is None
        else:
            assert d.compression == 'gzip'
        info = d.id.get_chunk_info(3 if how == 'damage' else 0)
    at = info.byte_offset + (100 if how == 'damage' else info.size // 2)
    with open(path, 'r+b') as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 1]))
    print('ok')
else:
    with h5py.File(path, 'r') as a, h5py.File(how, 'r') as b:
        print('same' if np.array_equal(a['images'][...], b['images'][...]) else 'differ')
)";
  auto py = test::run_process(test::python() + " " + script + " " + cache + " damage 2>&1");
  ASSERT_EQ(py.output, "ok\n");
  const auto again = test::run_process(train_command(dir / "run", 1) + " --cache");
  ASSERT_EQ(again.status, 0) << again.output;
  EXPECT_NE(again.output.find("warning: " + cache +
                              ":/images: cannot read sample 3 (a chunk's Fletcher-32 checksum "
                              "does not match its data: the file is damaged); building the cache "
                              "again"),
            std::string::npos)
      << again.output;
  py = test::run_process(test::python() + " " + script + " " + cache + " " + (dir / "intact.h5") +
                         " 2>&1");
  EXPECT_EQ(py.output, "same\n");
  const auto clean = test::run_process(train_command(dir / "clean", 1) + " --cache");
  ASSERT_EQ(clean.status, 0) << clean.output;
  EXPECT_EQ(read_text(dir / "run/metrics.jsonl"), read_text(dir / "clean/metrics.jsonl"));
  // A damaged label (the labels are deflated: the zlib stream's check) and a cache cut short
  // are said as what they are, and built again.
  for (const char* how : {"labels", "cut"}) {
    ASSERT_NO_FATAL_FAILURE(cached_run_killed_before_its_first_epoch_ended(dir / how));
    const auto c = dir / how + "/cache-train.h5";
    if (std::string(how) == "cut")
      fs::resize_file(c, fs::file_size(c) / 2);
    else
      ASSERT_EQ(test::run_process(test::python() + " " + script + " " + c + " labels 2>&1").output,
                "ok\n");
    const auto r = test::run_process(train_command(dir / how, 1) + " --cache");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find(std::string(how) == "cut"
                                ? "the file is cut short: it holds "
                                : c + ":/labels: cannot read dataset (a chunk's deflate stream is "
                                      "damaged: the file is damaged)"),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("; building the cache again"), std::string::npos) << r.output;
    EXPECT_EQ(read_text(dir / how + "/metrics.jsonl"), read_text(dir / "clean/metrics.jsonl"));
  }
}

// --precision bf16: the forward pass in bfloat16 autocast. Recorded in the checkpoints'
// training config, reproducible as a float32 run is (same bits twice), and not the float32
// run (autocast is on: the check can fail); the stored weights stay float32. Any other value
// is a usage error before anything is created.
TEST(TrainCli, Bf16PrecisionIsRecordedReproducibleAndNotTheFloat32Run) {
  test::TempDir dir;
  ASSERT_EQ(test::run_process(train_command(dir / "fp32", 2)).status, 0);
  for (const char* name : {"a", "b"}) {
    const auto r = test::run_process(train_command(dir / name, 2) + " --precision bf16");
    ASSERT_EQ(r.status, 0) << r.output;
  }
  EXPECT_EQ(read_text(dir / "a/metrics.jsonl"), read_text(dir / "b/metrics.jsonl"));
  EXPECT_EQ(compare_weights(dir / "a/last.h5", dir / "b/last.h5"), "same\n");
  EXPECT_NE(read_text(dir / "a/metrics.jsonl"), read_text(dir / "fp32/metrics.jsonl"));
  const auto loaded = pipeline::load_image_classifier(dir / "a/best.h5");
  EXPECT_EQ(loaded.meta.extra["training_config"]["precision"], "bf16");
  for (const auto& p : loaded.model->parameters())
    EXPECT_EQ(p.scalar_type(), torch::kFloat);
  const auto py = test::run_process(
      test::python() +
      " -c \"import h5py,sys; f=h5py.File(sys.argv[1],'r'); "
      "print(sorted({str(d.dtype) for d in f.values() if isinstance(d, h5py.Dataset) and "
      "d.dtype.kind == 'f'}))\" " +
      dir / "a/best.h5");
  EXPECT_EQ(py.output, "['float32']\n") << py.output;
  const auto bad = test::run_process(train_command(dir / "fp16", 2) + " --precision fp16");
  EXPECT_EQ(bad.status, 2) << bad.output;
  EXPECT_NE(bad.output.find("--precision must be fp32 or bf16, got 'fp16'"), std::string::npos)
      << bad.output;
  EXPECT_FALSE(fs::exists(dir / "fp16"));
}

// Mixup, CutMix and stochastic depth draw from LibTorch's generator, which the loop seeds per
// epoch: a run is reproducible bit for bit, a run stopped by SIGTERM and resumed ends as the
// uninterrupted one, and the flags change the run (the checks can fail), as do the ViT's
// --shifted-patches, --locality-attention and --conv-stem. The values are stored in the
// checkpoints; --drop-path, --shifted-patches or --conv-stem on a CNN, SPT with the
// convolutional stem and a negative alpha are usage errors.
TEST(TrainCli, MixupCutmixAndDropPathAreReproducibleResumableAndRecorded) {
  test::TempDir dir;
  const auto command = [&](const std::string& run, const std::string& flags) {
    return exe() + " --threads 1 train --data " + synth_data() +
           " --model vit_mini_patch8 --size 32 --batch-size 8 --optimizer adamw --lr 1e-3" +
           " --workers 1 --quiet --epochs 6 --seed 5 " + flags + " --out " + run + " 2>&1";
  };
  const std::string mix = "--mixup 0.4 --cutmix 1 --drop-path 0.2";
  for (const char* name : {"a", "b"}) {
    const auto r = test::run_process(command(dir / name, mix));
    ASSERT_EQ(r.status, 0) << r.output;
  }
  EXPECT_EQ(read_text(dir / "a/metrics.jsonl"), read_text(dir / "b/metrics.jsonl"));
  EXPECT_EQ(compare_weights(dir / "a/last.h5", dir / "b/last.h5"), "same\n");
  for (const auto& [name, flags] : std::vector<std::pair<std::string, std::string>>{
           {"plain", ""},
           {"mixup", "--mixup 0.4"},
           {"cutmix", "--cutmix 1"},
           {"droppath", "--drop-path 0.2"},
           {"small_data", "--shifted-patches --locality-attention"},
           {"conv_stem", "--conv-stem"}}) {
    const auto r = test::run_process(command(dir / name, flags));
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(read_text(dir / name + "/metrics.jsonl"), read_text(dir / "a/metrics.jsonl"))
        << name;
  }
  const auto loaded = pipeline::load_image_classifier(dir / "a/best.h5");
  EXPECT_EQ(loaded.meta.extra["training_config"]["mixup"], 0.4);
  EXPECT_EQ(loaded.meta.extra["training_config"]["cutmix"], 1.0);
  EXPECT_EQ(loaded.meta.model_config["drop_path"], 0.2);
  // SPT and LSA (Lee et al. 2021) are part of the architecture: in model_config, rebuilt on load.
  const auto small_data = pipeline::load_image_classifier(dir / "small_data/best.h5");
  EXPECT_EQ(small_data.meta.model_config["shifted_patches"], true);
  EXPECT_EQ(small_data.meta.model_config["locality_attention"], true);
  EXPECT_TRUE(small_data.config.shifted_patches.value_or(false));
  const auto stem = pipeline::load_image_classifier(dir / "conv_stem/best.h5");
  EXPECT_EQ(stem.meta.model_config["conv_stem"], true);
  EXPECT_FALSE(small_data.meta.model_config.contains("conv_stem"));

  const auto run = dir / "stopped";
  test::SignalPlan plan;
  plan.signal = SIGTERM;
  plan.after = {"epoch 2:"};
  const auto stopped = test::run_signalled("exec " + command(run, mix), plan);
  ASSERT_EQ(stopped.signals_sent, 1) << stopped.output;
  EXPECT_EQ(stopped.status, 128 + SIGTERM) << stopped.output;
  EXPECT_LT(count_lines(read_text(run + "/metrics.jsonl")), 6) << stopped.output;
  const auto resumed = test::run_process(exe() + " --threads 1 train --resume " + run + " 2>&1");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_EQ(read_text(run + "/metrics.jsonl"), read_text(dir / "a/metrics.jsonl"));
  EXPECT_EQ(compare_weights(run + "/last.h5", dir / "a/last.h5"), "same\n");

  const auto cnn = test::run_process(train_command(dir / "cnn", 1) + " --drop-path 0.1");
  EXPECT_EQ(cnn.status, 2) << cnn.output;
  EXPECT_NE(cnn.output.find("--drop-path applies to the ViT presets only"), std::string::npos)
      << cnn.output;
  const auto shifted = test::run_process(train_command(dir / "cnn", 1) + " --shifted-patches");
  EXPECT_EQ(shifted.status, 2) << shifted.output;
  EXPECT_NE(shifted.output.find("--shifted-patches applies to the ViT presets only"),
            std::string::npos)
      << shifted.output;
  const auto cnn_stem = test::run_process(train_command(dir / "cnn", 1) + " --conv-stem");
  EXPECT_EQ(cnn_stem.status, 2) << cnn_stem.output;
  EXPECT_NE(cnn_stem.output.find("--conv-stem applies to the ViT presets only"), std::string::npos)
      << cnn_stem.output;
  const auto both = test::run_process(command(dir / "both", "--conv-stem --shifted-patches"));
  EXPECT_EQ(both.status, 2) << both.output;
  EXPECT_NE(both.output.find("--shifted-patches and --conv-stem cannot be combined"),
            std::string::npos)
      << both.output;
  EXPECT_FALSE(fs::exists(dir / "both"));
  const auto negative = test::run_process(train_command(dir / "neg", 1) + " --mixup -1");
  EXPECT_EQ(negative.status, 2) << negative.output;
  EXPECT_NE(negative.output.find("--mixup must be in [0, 1000], got -1"), std::string::npos)
      << negative.output;
  EXPECT_FALSE(fs::exists(dir / "cnn"));
  EXPECT_FALSE(fs::exists(dir / "neg"));
}

// --teacher: a CNN trained at 32 px teaches a ViT trained at 24 px (the batches resized for the
// teacher). With --distill-alpha 0 the distillation term has weight 0, so the run must be the
// run without a teacher, byte for byte; with alpha > 0 it changes the run, reproducibly, and
// the options are recorded; a stopped run resumes to the same end, but not with another file
// under the teacher's name. A teacher of other classes, a missing one and bad values are
// refused before any training.
TEST(TrainCli, DistillationFromATeacherIsExactAtAlphaZeroReproducibleResumableAndRecorded) {
  test::TempDir dir;
  const auto teacher = test::run_process(train_command(dir / "teacher", 2));
  ASSERT_EQ(teacher.status, 0) << teacher.output;
  const auto teacher_ckpt = dir / "teacher/best.h5";
  const auto command = [&](const std::string& run, const std::string& flags,
                           const std::string& data) {
    return exe() + " --threads 1 train --data " + data +
           " --model vit_mini_patch8 --size 24 --batch-size 8 --optimizer adamw --lr 1e-3" +
           " --workers 1 --quiet --epochs 3 --seed 5 " + flags + " --out " + run + " 2>&1";
  };
  const auto train = [&](const std::string& name, const std::string& flags) {
    const auto r = test::run_process(command(dir / name, flags, synth_data()));
    EXPECT_EQ(r.status, 0) << r.output;
    return read_text(dir / name + "/metrics.jsonl");
  };
  const auto plain = train("plain", "");
  EXPECT_EQ(train("alpha0", "--teacher " + teacher_ckpt + " --distill-alpha 0"), plain);
  const auto soft = train("soft", "--teacher " + teacher_ckpt + " --distill-temperature 2");
  EXPECT_NE(soft, plain);
  EXPECT_EQ(train("soft_again", "--teacher " + teacher_ckpt + " --distill-temperature 2"), soft);
  const auto hard = train("hard", "--teacher " + teacher_ckpt + " --distill hard");
  EXPECT_NE(hard, plain);
  EXPECT_NE(hard, soft);
  const auto config =
      pipeline::load_image_classifier(dir / "soft/best.h5").meta.extra["training_config"];
  EXPECT_EQ(config["teacher"], teacher_ckpt);
  EXPECT_EQ(config["distill"], "soft");
  EXPECT_EQ(config["distill_alpha"], 0.5);
  EXPECT_EQ(config["distill_temperature"], 2.0);
  EXPECT_FALSE(pipeline::load_image_classifier(dir / "plain/best.h5")
                   .meta.extra["training_config"]
                   .contains("teacher"));
  EXPECT_EQ(config["teacher_checksum"], pipeline::file_checksum(teacher_ckpt));

  // Stopped and resumed with the same teacher: the uninterrupted run. With another file under
  // the teacher's name (a teacher trained again): refused, naming it, the run left as it was.
  const auto run = dir / "stopped";
  test::SignalPlan plan;
  plan.signal = SIGTERM;
  plan.after = {"epoch 1:"};
  const auto stopped = test::run_signalled(
      "exec " +
          command(run, "--teacher " + teacher_ckpt + " --distill-temperature 2", synth_data()),
      plan);
  ASSERT_EQ(stopped.signals_sent, 1) << stopped.output;
  EXPECT_EQ(stopped.status, 128 + SIGTERM) << stopped.output;
  const auto partial = read_text(run + "/metrics.jsonl");
  EXPECT_LT(count_lines(partial), 3) << stopped.output;
  const auto retrained = test::run_process(train_command(dir / "teacher_b", 1, 9));
  ASSERT_EQ(retrained.status, 0) << retrained.output;
  fs::rename(teacher_ckpt, teacher_ckpt + ".orig");
  fs::copy_file(dir / "teacher_b/best.h5", teacher_ckpt);
  const auto swapped = test::run_process(exe() + " --threads 1 train --resume " + run + " 2>&1");
  EXPECT_EQ(swapped.status, 1) << swapped.output;
  EXPECT_NE(swapped.output.find(teacher_ckpt + ": is not the teacher"), std::string::npos)
      << swapped.output;
  EXPECT_EQ(read_text(run + "/metrics.jsonl"), partial);
  fs::rename(teacher_ckpt + ".orig", teacher_ckpt);
  const auto resumed = test::run_process(exe() + " --threads 1 train --resume " + run + " 2>&1");
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_EQ(read_text(run + "/metrics.jsonl"), soft);
  EXPECT_EQ(compare_weights(run + "/last.h5", dir / "soft/last.h5"), "same\n");

  // The same images under other class names (--multiclass keeps them): the teacher's head
  // means something else.
  const auto original = synth_data();
  const auto renamed = fs::path(original).parent_path() / "labels_renamed.csv";
  {
    auto text = read_text(original);
    for (const auto& [from, to] :
         {std::pair<std::string, std::string>{",benign,", ",plain,"}, {",malignant,", ",spotted,"}})
      for (std::size_t at; (at = text.find(from)) != std::string::npos;)
        text.replace(at, from.size(), to);
    std::ofstream(renamed) << text;
  }
  const auto other = test::run_process(
      command(dir / "other", "--multiclass --teacher " + teacher_ckpt, renamed.string()));
  EXPECT_EQ(other.status, 1) << other.output;
  EXPECT_NE(other.output.find(teacher_ckpt), std::string::npos) << other.output;
  EXPECT_NE(other.output.find("the teacher was trained on the classes"), std::string::npos)
      << other.output;
  const auto missing =
      test::run_process(command(dir / "missing", "--teacher " + dir / "nothing.h5", synth_data()));
  EXPECT_EQ(missing.status, 1) << missing.output;
  EXPECT_NE(missing.output.find(dir / "nothing.h5"), std::string::npos) << missing.output;
  for (const auto& [flags, message] : std::vector<std::pair<std::string, std::string>>{
           {"--distill-alpha 1.5", "--distill-alpha must be in [0, 1], got 1.5"},
           {"--distill-temperature 0", "--distill-temperature must be in (0, 1000], got 0"},
           {"--distill medium", "--distill must be soft or hard, got 'medium'"}}) {
    const auto r = test::run_process(
        command(dir / "bad", "--teacher " + teacher_ckpt + " " + flags, synth_data()));
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
  }
  EXPECT_FALSE(fs::exists(dir / "bad"));
}

// --init-backbone takes the trunk of a checkpoint of another architecture with the same trunk
// (small_cnn -> attn_small) and leaves the head to its own initialisation: at a learning rate
// of 1e-9 the trunk's weights stay those of the checkpoint, the head is attn_small's own.
TEST(TrainCli, InitBackboneLoadsTheTrunkOfAnotherArchitectureAndNotItsHead) {
  test::TempDir dir;
  const auto base = exe() + " --threads 1 train --data " + synth_data() +
                    " --size 32 --batch-size 8 --workers 1 --epochs 1 --quiet";
  auto r = test::run_process(base + " --model small_cnn --lr 0.05 --seed 1 --out " + (dir / "cnn") +
                             " 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  r = test::run_process(base + " --model attn_small --lr 1e-9 --seed 2 --init-backbone " +
                        (dir / "cnn/last.h5") + " --out " + (dir / "attn") + " 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto py = test::run_process(
      test::python() +
      " -c \"import h5py,sys,numpy as np; a=h5py.File(sys.argv[1],'r'); b=h5py.File(sys.argv[2],"
      "'r'); t=[k for k in a if k.startswith('features.') and k.endswith(('.weight','.bias'))]; "
      "d=max(float(np.abs(a[k][()]-b[k][()]).max()) for k in t); "
      "h=any(k.startswith('attention.') for k in b) and not any(k.startswith('attention.') "
      "for k in a); print('trunk', len(t), 'maxdiff', d, 'head', h)\" " +
      (dir / "cnn/last.h5") + " " + (dir / "attn/last.h5"));
  ASSERT_EQ(py.status, 0) << py.output;
  std::istringstream words(py.output);
  std::string w;
  int layers = 0;
  double diff = 1;
  std::string head;
  words >> w >> layers >> w >> diff >> w >> head;
  EXPECT_GT(layers, 30) << py.output;  // 8 convs and 8 batch norms, weight and bias each
  EXPECT_LT(diff, 1e-6) << py.output;
  EXPECT_EQ(head, "True") << py.output;
  // Plain training from the seed alone differs: the check above can fail.
  r = test::run_process(base + " --model attn_small --lr 1e-9 --seed 2 --out " + (dir / "own") +
                        " 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(compare_weights(dir / "own/last.h5", dir / "attn/last.h5"), "differ\n");
}

// A run that diverges stops at the batch that shows it, naming the divergence (not the NaN
// the metrics would meet afterwards): weights scaled by 1e30 overflow at the first batch, before
// any step, which names the starting weights rather than the learning rate;
// batch-norm running means of -3e38 leave training (batch statistics) finite and make the
// validation outputs infinite. Out-of-range rates are usage errors before any work.
TEST(TrainCli, ADivergedRunStopsNamingTheDivergence) {
  test::TempDir dir;
  const auto run = dir / "run";
  ASSERT_EQ(test::run_process(train_command(run, 1)).status, 0);
  const auto craft = [&](const std::string& out, bool weights) {
    auto loaded = pipeline::load_image_classifier(run + "/best.h5");
    torch::NoGradGuard no_grad;
    int64_t changed = 0;
    if (weights) {
      for (auto& p : loaded.model->parameters()) {
        p.mul_(1e30);
        ++changed;
      }
    } else {
      for (auto& b : loaded.model->named_buffers())
        if (b.key().size() >= 12 && b.key().substr(b.key().size() - 12) == "running_mean") {
          b.value().fill_(-3e38);
          ++changed;
        }
    }
    EXPECT_GT(changed, 0);
    pipeline::save_image_classifier(out, *loaded.model, loaded.config, loaded.meta);
  };
  craft(dir / "huge.h5", true);
  craft(dir / "stats.h5", false);
  auto r = test::run_process(train_command(dir / "a", 2) + " --init " + (dir / "huge.h5"));
  EXPECT_NE(r.status, 0) << r.output;
  // Before any step the learning rate did nothing: the starting weights are named (it said
  // "the run diverged; lower the learning rate").
  EXPECT_NE(r.output.find("training: the loss is "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" at epoch 1, batch 1 of "), std::string::npos) << r.output;
  EXPECT_NE(
      r.output.find("before this process's first step: the weights it starts from (--init, or "
                    "the state --resume restored) or the images give outputs that are not "
                    "finite"),
      std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("lower the learning rate"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("metrics"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "a/last.h5"));
  r = test::run_process(train_command(dir / "b", 2) + " --init " + (dir / "stats.h5"));
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("the model's outputs on the validation set are not finite after epoch "
                          "1: the run diverged"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("metrics"), std::string::npos) << r.output;
  for (const char* flag : {"--lr 1e39", "--lr 1001", "--weight-decay 1e300", "--mixup 1e9"}) {
    r = test::run_process(exe() + " train --data " + synth_data() +
                          " --model attn_small --size 32 --out " + (dir / "c") + " " + flag +
                          " 2>&1");
    EXPECT_EQ(r.status, 2) << flag << "\n" << r.output;
    const std::string name(flag, std::string(flag).find(' '));
    EXPECT_NE(r.output.find(name + " must be in "), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(dir / "c")) << flag;
  }
}

// A class of the list without training images is an error before training (it was accepted:
// validation AUC NaN every epoch, and a best.h5 announced that was never written), and so is
// one without validation images when the best epoch is chosen by AUC.
TEST(TrainCli, AClassWithoutImagesIsRefusedBeforeTraining) {
  test::TempDir dir;
  const auto images = fs::path(synth_data()).parent_path() / "images";
  std::istringstream in(read_text(synth_data()));
  std::string line;
  std::getline(in, line);
  for (const char* c : {"benign", "malignant", "nevus"})
    fs::create_directories(fs::path(dir / "folders") / c);
  std::getline(in, line);
  const auto nevus_id = line.substr(0, line.find(','));
  int copied = 0;
  while (std::getline(in, line)) {
    const auto id = line.substr(0, line.find(','));
    const auto label = line.find("malignant") != std::string::npos ? "malignant" : "benign";
    fs::copy_file(images / (id + ".png"), fs::path(dir / "folders") / label / (id + ".png"));
    ++copied;
  }
  ASSERT_EQ(copied, 39);
  const auto base = exe() + " --threads 1 train --data " + (dir / "folders") +
                    " --multiclass --model small_cnn --size 32 --batch-size 8 --epochs 1 "
                    "--workers 1 --quiet";
  auto r = test::run_process(base + " --out " + (dir / "a") + " 2>&1");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("training set: has no image of class 'nevus' ("), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "a/last.h5"));
  // One nevus image for training; a validation set (the same images) with none: refused
  // when the best epoch is chosen by AUC, trained when by loss.
  fs::copy_file(images / (nevus_id + ".png"),
                fs::path(dir / "folders/nevus") / (nevus_id + ".png"));
  fs::create_directories(dir / "val");
  fs::copy(dir / "folders", dir / "val", fs::copy_options::recursive);
  fs::remove(fs::path(dir / "val/nevus") / (nevus_id + ".png"));
  r = test::run_process(base + " --val " + (dir / "val") + " --out " + (dir / "b") + " 2>&1");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("validation set: has no image of class 'nevus' ("), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("--select-by loss"), std::string::npos) << r.output;
  r = test::run_process(base + " --val " + (dir / "val") + " --select-by loss --out " +
                        (dir / "c") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir / "c/best.h5"));
}

// An HDF5 image cache given as --data is read through before training: a chunk that does not
// inflate is that image's error (listed, or left out with --skip-bad), with no HDF5 error
// stack printed by a loader thread; a filter this HDF5 lacks (h5py's LZF) is one line; images
// of another size than the stored steps make (a crafted 16384^2 filled the memory) are refused.
TEST(TrainCli, ADamagedOrCraftedCacheIsNamedBeforeTraining) {
  test::TempDir dir;
  const auto cache = dir / "c.h5";
  auto r = test::run_process(exe() + " cache --data " + synth_data() + " --out " + cache +
                             " --size 32 --workers 1 2>&1");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto script = dir / "craft.py";
  std::ofstream(script) << R"(
import sys, h5py, numpy as np
src, out, how = sys.argv[1], sys.argv[2], sys.argv[3]
with h5py.File(src, 'r') as a, h5py.File(out, 'w') as b:
    for k, v in a.attrs.items(): b.attrs[k] = v
    def copy(name, o):
        if isinstance(o, h5py.Group):
            b.require_group(name)
            return
        data = o[...]
        if name in ('images', 'masks'):
            if how == 'size':
                data = np.zeros(data.shape[:1] + (40, 40) + data.shape[3:], np.uint8)
            chunks = (1,) + data.shape[1:]
            comp = {'gzip': 'gzip', 'lzf': 'lzf', 'size': None}[how]
            b.create_dataset(name, data=data, chunks=chunks, compression=comp)
        else:
            b.create_dataset(name, data=data, dtype=o.dtype)
    a.visititems(copy)
if how == 'gzip':
    with h5py.File(out, 'r') as f:
        info = f['images'].id.get_chunk_info(5)
    with open(out, 'r+b') as f:
        f.seek(info.byte_offset)
        f.write(b'\xff' * info.size)  # not a zlib stream
print('ok')
)";
  for (const char* how : {"gzip", "lzf", "size"}) {
    const auto py = test::run_process(test::python() + " " + script + " " + cache + " " +
                                      (dir / (std::string(how) + ".h5")) + " " + how + " 2>&1");
    ASSERT_EQ(py.output, "ok\n") << how;
  }
  const auto base = exe() +
                    " --threads 1 train --model attn_small --size 32 --batch-size 8 "
                    "--epochs 1 --workers 2 --quiet --data ";
  r = test::run_process(base + (dir / "gzip.h5") + " --out " + (dir / "g") + " 2>&1");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("1 unreadable image (use --skip-bad"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("gzip.h5:/images: cannot read sample 5"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("HDF5-DIAG"), std::string::npos) << r.output;
  r = test::run_process(base + (dir / "gzip.h5") + " --skip-bad --out " + (dir / "g2") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("HDF5-DIAG"), std::string::npos) << r.output;
  const auto skipped = read_text(dir / "g2/skipped.csv");
  EXPECT_EQ(count_lines(skipped), 2) << skipped;
  EXPECT_NE(skipped.find("sample 5"), std::string::npos) << skipped;
  const auto meta = pipeline::read_checkpoint_meta(dir / "g2/last.h5");
  EXPECT_EQ(
      meta.provenance["train_images"].get<int64_t>() + meta.provenance["val_images"].get<int64_t>(),
      39);
  r = test::run_process(base + (dir / "lzf.h5") + " --out " + (dir / "l") + " 2>&1");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("lzf.h5:/images: is compressed with HDF5 filter 32000"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  r = test::run_process(base + (dir / "size.h5") + " --out " + (dir / "s") + " 2>&1");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("size.h5:/images: holds 40x40 images, but the stored preprocessing "
                          "ends with a resize to 32x32"),
            std::string::npos)
      << r.output;
}

// --resume reads the stored command line's relative paths from the folder the run started in,
// wherever it is typed (it looked for --data relative to the current folder), and takes a
// relative RUN.
TEST(TrainCli, ResumeFromAnotherFolderReadsTheRunsRelativePaths) {
  test::TempDir dir;
  const auto data_dir = fs::path(synth_data()).parent_path();
  const auto command = "cd " + data_dir.string() + " && " + exe() +
                       " --threads 1 train --data labels.csv --model attn_small --size 32 "
                       "--batch-size 8 --epochs 2 --workers 1 --quiet --out " +
                       (dir / "run") + " 2>&1";
  auto r = test::run_process(command);
  ASSERT_EQ(r.status, 0) << r.output;
  const auto metrics = read_text(dir / "run/metrics.jsonl");
  fs::create_directories(dir / "elsewhere");
  r = test::run_process("cd " + (dir / "elsewhere") + " && " + exe() +
                        " --threads 1 train --resume ../run 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("best epoch"), std::string::npos) << r.output;
  EXPECT_EQ(read_text(dir / "run/metrics.jsonl"), metrics);
  EXPECT_EQ(pipeline::read_checkpoint_meta(dir / "run/last.h5").provenance["cwd"],
            fs::canonical(data_dir).string());
}

// A --val CSV without an images/ folder beside it takes its images from --images (one folder
// for both CSVs); --val-images names another folder.
TEST(TrainCli, ValidationImagesComeFromValImagesElseBesideTheCsvElseImages) {
  test::TempDir dir;
  const auto images = (fs::path(synth_data()).parent_path() / "images").string();
  std::istringstream in(read_text(synth_data()));
  std::string header, line, train = "image_id,label\n", val = "image_id,label\n";
  std::getline(in, header);
  for (int i = 0; std::getline(in, line); ++i) {
    const auto id = line.substr(0, line.find(','));
    const auto label = line.find("malignant") != std::string::npos ? "malignant" : "benign";
    (i % 4 == 0 ? val : train) += id + "," + label + "\n";
  }
  fs::create_directories(dir / "lists");
  write_file_atomically(dir / "lists/train.csv", train);
  write_file_atomically(dir / "lists/val.csv", val);
  const auto base = exe() + " --threads 1 train --data " + (dir / "lists/train.csv") +
                    " --val " + (dir / "lists/val.csv") +
                    " --model small_cnn --size 32 --batch-size 8 --epochs 1 --workers 1 --quiet";
  auto r = test::run_process(base + " --images " + images + " --out " + (dir / "a") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(pipeline::read_checkpoint_meta(dir / "a/last.h5").provenance["val_images"], 10);
  EXPECT_EQ(r.output.find("also training images"), std::string::npos) << r.output;
  // A --val sharing images with --data (here all 30 training images among its 40) is said in
  // one warning line; the run goes on.
  r = test::run_process(exe() + " --threads 1 train --data " + (dir / "lists/train.csv") +
                        " --images " + images + " --val " + synth_data() +
                        " --model small_cnn --size 32 --batch-size 8 --epochs 1 --workers 1" +
                        " --quiet --out " + (dir / "overlap") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: 30 of the 40 validation images (--val " + synth_data() +
                          ") are also training images (the same image id, e.g. '"),
            std::string::npos)
      << r.output;
  // --val-images elsewhere: a copy holding only the validation images.
  fs::create_directories(dir / "val_images");
  std::istringstream v(val);
  std::getline(v, line);
  while (std::getline(v, line)) {
    const auto id = line.substr(0, line.find(','));
    fs::copy_file(fs::path(images) / (id + ".png"), fs::path(dir / "val_images") / (id + ".png"));
  }
  r = test::run_process(base + " --images " + images + " --val-images " + (dir / "val_images") +
                        " --out " + (dir / "b") + " 2>&1");
  EXPECT_EQ(r.status, 0) << r.output;
  r = test::run_process(base + " --images " + images + " --val-images " + (dir / "lists") +
                        " --out " + (dir / "c") + " 2>&1");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(dir / "lists"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace attnscope
