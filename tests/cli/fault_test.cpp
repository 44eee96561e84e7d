// Fault tests of every command that writes (issue 14): each runs the real binary under an
// output-size limit (writes fail with EFBIG as on a full disk, SIGXFSZ ignored) or kills it
// at a moment, and asserts the exit status, the message, and that the previous output is
// intact (byte for byte) or the new one complete. Also the up-front refusals (an --out that
// is an input, unwritable folders, out-of-range numbers) and bad folder entries.

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <sstream>

#include <opencv2/imgcodecs.hpp>

#include "test_support.h"

namespace attnscope {
namespace {

namespace fs = std::filesystem;
using test::kill_at_random_moments;
using test::timed_run;

std::string exe() {
  return std::string(ATTNSCOPE_EXE) + " --threads 1";
}

// Files in `dir` whose name starts with "." (AtomicFile's temporaries).
int temporaries_in(const fs::path& dir) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    n += e.path().filename().string().rfind(".", 0) == 0;
  return n;
}

// Exited on its own with status 1 and an "error:" line (no signal: no crash, no abort).
void expect_clean_failure(const test::ProcessResult& r, const std::string& reason) {
  EXPECT_EQ(r.signal, 0) << "ended by signal " << r.signal << "\n" << r.output;
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(reason), std::string::npos) << r.output;
}

void synth(const test::TempDir& dir, int count = 6, int size = 64) {
  const auto r = test::run_process(exe() + " synth --out " + dir.path().string() + " --count " +
                                   std::to_string(count) + " --size " + std::to_string(size));
  ASSERT_EQ(r.status, 0) << r.output;
}

std::string h5py_images_shape(const std::string& path) {
  return test::run_process(test::python() + " -c \"import h5py; print(h5py.File('" + path +
                           "', 'r')['images'].shape)\"")
      .output;
}

// Number of datasets in an HDF5 file as h5py sees them; -1 when it does not open.
int h5py_dataset_count(const std::string& path) {
  const auto r = test::run_process(
      test::python() + " -c \"import h5py; n = []; h5py.File('" + path +
      "', 'r').visititems(lambda k, o: n.append(k) if isinstance(o, h5py.Dataset) else None); "
      "print(len(n))\"");
  return r.status == 0 ? std::stoi(r.output) : -1;
}

// Every regular file under `dir` (recursively) by relative path, with its bytes. AtomicFile's
// temporaries (".<name>.<pid>-<n>.tmp<ext>") are left out: a SIGKILL may leave one behind
// (docs/reliability.md), it never has the name of an output.
std::map<std::string, std::string> files_in(const fs::path& dir) {
  std::map<std::string, std::string> files;
  if (!fs::exists(dir)) return files;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    const auto name = e.path().filename().string();
    if (name.rfind(".", 0) == 0 && name.find(".tmp") != std::string::npos) continue;
    if (e.is_regular_file())
      files[fs::relative(e.path(), dir).string()] = test::read_text(e.path());
  }
  return files;
}

void restore(const fs::path& dir, const std::map<std::string, std::string>& files) {
  fs::remove_all(dir);
  for (const auto& [name, bytes] : files) {
    fs::create_directories((dir / name).parent_path());
    std::ofstream(dir / name, std::ios::binary) << bytes;
  }
}

// Defect 1 and 3: a full disk during `cache` used to segfault at exit (HDF5's atexit close)
// and destroy the existing cache.
TEST(CliFault, CacheOnAFullDiskFailsCleanlyAndKeepsThePreviousCache) {
  test::TempDir dir;
  synth(dir);
  const auto cache = dir / "c.h5";
  const auto cmd = exe() + " cache --data " + (dir / "labels.csv") + " --out " + cache;
  ASSERT_EQ(test::run_process(cmd + " --size 32").status, 0);
  const auto before = test::read_text(cache);
  const auto r = test::run_with_file_size_limit(cmd + " --size 64", 30000);
  expect_clean_failure(r, "File too large");
  EXPECT_EQ(test::read_text(cache), before) << "the previous cache changed";
  EXPECT_EQ(temporaries_in(dir.path()), 0);
  EXPECT_EQ(h5py_images_shape(cache), "(6, 32, 32, 3)\n");
}

// SIGTERM stops `cache` after the current chunk: exit 143, nothing at --out, no temporary
// (the default action left `.c.h5.<pid>-0.tmp.h5`). 555 real JPEGs, one worker: seconds. The
// signal goes once the temporary exists (a fixed 1 s came before the handler on a slow machine).
TEST(DataCliFault, CacheStoppedBySigtermLeavesNothing) {
  ATTNSCOPE_REQUIRE_DATA();
  test::TempDir dir;
  // The 555 images four times over (symbolic links under other ids): about 8 s of work.
  const auto source = test::data_dir() / "isic-uda1";
  fs::create_directories(dir / "images");
  std::string csv = "image_id,label\n";
  for (const auto& [id, label] : test::labelled_rows((source / "labels.csv").string())) {
    for (int copy = 0; copy < 4; ++copy) {
      const auto name = id + "_" + std::to_string(copy);
      fs::create_symlink(source / "images" / (id + ".jpg"),
                         fs::path(dir / "images") / (name + ".jpg"));
      csv += name + "," + label + "\n";
    }
  }
  std::ofstream(dir / "labels.csv") << csv;
  const auto cache = dir / "c.h5";
  test::SignalPlan plan;
  plan.ready = [&] {
    for (const auto& e : fs::directory_iterator(dir.path()))
      if (e.path().filename().string().find(".tmp.h5") != std::string::npos) return true;
    return false;
  };
  const auto r = test::run_signalled("exec " + exe() + " cache --data " + (dir / "labels.csv") +
                                         " --out " + cache + " --size 64 --workers 1",
                                     plan);
  ASSERT_EQ(r.signals_sent, 1) << r.output;
  EXPECT_EQ(r.status, 128 + SIGTERM) << r.output;
  EXPECT_NE(r.output.find("stopped by SIGTERM: " + cache + " not written"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(cache));
  EXPECT_EQ(temporaries_in(dir.path()), 0);
}

TEST(CliFault, CacheKilledAtAnyMomentLeavesTheOldOrTheNewCache) {
  test::TempDir dir;
  synth(dir, 12, 64);
  const auto cache = dir / "c.h5";
  const auto cmd = exe() + " cache --data " + (dir / "labels.csv") + " --out " + cache;
  ASSERT_EQ(test::run_process(cmd + " --size 32").status, 0);
  const auto old_bytes = test::read_text(cache);
  const auto restore = [&] { std::ofstream(cache, std::ios::binary) << old_bytes; };
  const auto old_or_new = [&]() -> std::string {
    const auto shape = h5py_images_shape(cache);
    return shape == "(12, 32, 32, 3)\n" || shape == "(12, 48, 48, 3)\n" ? "" : shape;
  };
  // Moments drawn within the time an uninterrupted run takes on this machine (at least one
  // kill must land before the run ends)...
  const int ms = timed_run(cmd + " --size 48");
  kill_at_random_moments(cmd + " --size 48", ms, restore, old_or_new, 14, 4);
  // ... and one kill while the new cache is being written: once its temporary is there.
  // The temporary is there for some 20 ms of a 1 s run and the plan looks every 5 ms: tried
  // until a kill ended the process while it was there.
  test::SignalPlan plan;
  plan.signal = SIGKILL;
  plan.ready = [&] { return temporaries_in(dir.path()) > 0; };
  int cut = 0;
  for (int attempt = 0; attempt < 8 && cut == 0; ++attempt) {
    for (const auto& e : fs::directory_iterator(dir.path()))
      if (e.path().filename().string().rfind(".c.h5.", 0) == 0) fs::remove(e.path());
    restore();
    const auto r = test::run_signalled("exec " + cmd + " --size 48", plan);
    cut += r.signal == SIGKILL;
    EXPECT_EQ(old_or_new(), "") << r.output;
  }
  EXPECT_EQ(cut, 1) << "no kill landed while the temporary was there";
  // A temporary of a process that is gone (pid 2^22 + 1 is above Linux's largest), not written
  // for an hour, is removed by the next run. One written a minute ago (its process may be alive
  // in another PID namespace), and a live process's (this test's own pid), stay.
  for (const auto& e : fs::directory_iterator(dir.path()))  // the killed runs' (fresh: they stay)
    if (e.path().filename().string().rfind(".c.h5.", 0) == 0) fs::remove(e.path());
  const auto gone = dir / (".c.h5." + std::to_string((1 << 22) + 1) + "-0.tmp.h5");
  const auto recent = dir / (".c.h5." + std::to_string((1 << 22) + 1) + "-1.tmp.h5");
  const auto live = dir / (".c.h5." + std::to_string(::getpid()) + "-3.tmp.h5");
  for (const auto& p : {gone, recent, live}) {
    std::ofstream(p) << "x";
    fs::last_write_time(p, fs::file_time_type::clock::now() -
                               (p == recent ? std::chrono::minutes(1) : std::chrono::hours(1)));
  }
  ASSERT_EQ(test::run_process(cmd + " --size 32").status, 0);
  EXPECT_FALSE(fs::exists(gone));
  EXPECT_TRUE(fs::exists(recent));
  EXPECT_TRUE(fs::exists(live));
}

TEST(CliFault, CacheRefusesAnOutThatIsAnInputAndLeavesNoFileWhenNothingIsCached) {
  test::TempDir dir;
  synth(dir, 3);
  const auto csv = test::read_text(dir / "labels.csv");
  auto r = test::run_process(exe() + " cache --data " + (dir / "labels.csv") + " --out " +
                             (dir / "labels.csv") + " --size 32");
  expect_clean_failure(r, "would destroy the input");
  EXPECT_EQ(test::read_text(dir / "labels.csv"), csv);
  const auto image = dir / "images/synth_000000.png";
  const auto pixels = test::read_text(image);
  r = test::run_process(exe() + " cache --data " + (dir / "labels.csv") + " --out " + image +
                        " --size 32");
  expect_clean_failure(r, "would destroy the input");
  EXPECT_EQ(test::read_text(image), pixels);
  // Every image unreadable: an error, and no (empty) cache file.
  for (const auto& e : fs::directory_iterator(dir.path() / "images"))
    std::ofstream(e.path()) << "not an image";
  r = test::run_process(exe() + " cache --data " + (dir / "labels.csv") + " --out " +
                        (dir / "c.h5") + " --size 32");
  expect_clean_failure(r, "no image could be cached");
  EXPECT_FALSE(fs::exists(dir / "c.h5"));
  EXPECT_EQ(temporaries_in(dir.path()), 0);
}

TEST(CliFault, CacheConfigMustEndWithAResizeAndExcludesSize) {
  test::TempDir dir;
  synth(dir, 2);
  std::ofstream(dir / "noresize.json") << R"({"steps": [{"op": "shades_of_gray"}]})";
  std::ofstream(dir / "resize.json") << R"({"steps": [{"op": "resize", "size": 32}]})";
  auto r = test::run_process(exe() + " cache --data " + (dir / "labels.csv") + " --out " +
                             (dir / "c.h5") + " --config " + (dir / "noresize.json"));
  expect_clean_failure(r, "must end with a resize");
  r = test::run_process(exe() + " cache --data " + (dir / "labels.csv") + " --out " +
                        (dir / "c.h5") + " --config " + (dir / "resize.json") + " --size 64");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--size and --config exclude each other"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "c.h5"));
}

// Defect 5: a symlink loop in the images folder is one warning, not the end of the run.
TEST(CliFault, CacheGoesOnPastASymlinkLoopInTheImagesFolder) {
  test::TempDir dir;
  synth(dir, 3);
  fs::create_symlink("loop", dir.path() / "images/loop");
  fs::create_symlink("gone.png", dir.path() / "images/dangling.png");
  const auto r = test::run_process(exe() + " cache --data " + (dir / "labels.csv") + " --out " +
                                   (dir / "c.h5") + " --size 32");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("images/loop: symlink loop"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("images/dangling.png: dangling symlink"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("cached 3 of 3"), std::string::npos) << r.output;
}

// Defect 2 and 7: split on a full disk, to a device, or of an empty dataset.
TEST(CliFault, SplitReportsWriteErrorsAndKeepsThePreviousCsv) {
  test::TempDir dir;
  synth(dir, 20, 32);
  const auto cmd = exe() + " split --data " + (dir / "labels.csv") + " --out " + (dir / "s.csv");
  ASSERT_EQ(test::run_process(cmd).status, 0);
  const auto before = test::read_text(dir / "s.csv");
  auto r = test::run_with_file_size_limit(cmd + " --seed 5", 100);
  expect_clean_failure(r, "File too large");
  EXPECT_EQ(test::read_text(dir / "s.csv"), before);
  EXPECT_EQ(temporaries_in(dir.path()), 0);
  r = test::run_process(exe() + " split --data " + (dir / "labels.csv") + " --out /dev/full");
  expect_clean_failure(r, "not a regular file");
  EXPECT_EQ(r.output.find("wrote"), std::string::npos) << r.output;
  std::ofstream(dir / "header.csv") << "image_id,label\n";
  r = test::run_process(exe() + " split --data " + (dir / "header.csv") + " --images " +
                        (dir / "images") + " --out " + (dir / "empty.csv"));
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_FALSE(fs::exists(dir / "empty.csv"));
  // A split CSV (also --folds) is replaced; any other file is not (ground truth given as --out
  // was, without a word): one line, the file byte for byte.
  EXPECT_EQ(test::run_process(cmd + " --folds 3").status, 0);
  EXPECT_EQ(test::run_process(cmd).status, 0);
  std::ofstream(dir / "truth.csv") << "image_id,melanoma\nx,1\n";
  r = test::run_process(exe() + " split --data " + (dir / "labels.csv") + " --out " +
                        (dir / "truth.csv") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output, "error: " + (dir / "truth.csv") +
                          ": exists and is not a CSV written by attnscope split; refusing to "
                          "replace it (remove it first, or choose another --out)\n");
  EXPECT_EQ(test::read_text(dir / "truth.csv"), "image_id,melanoma\nx,1\n");
  // An empty file is replaced.
  std::ofstream(dir / "empty.csv").flush();
  EXPECT_EQ(test::run_process(exe() + " split --data " + (dir / "labels.csv") + " --out " +
                              (dir / "empty.csv"))
                .status,
            0);
  // A split names images, labels and groups: a copy of the data without masks/ is split ("20
  // problems: mask file not found" before).
  fs::create_directories(dir / "nomasks");
  fs::copy(dir / "images", dir / "nomasks/images");
  fs::copy_file(dir / "labels.csv", dir / "nomasks/labels.csv");
  r = test::run_process(exe() + " split --data " + (dir / "nomasks") + " --out " +
                        (dir / "nomasks/s.csv"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(test::read_text(dir / "nomasks/s.csv"), test::read_text(dir / "s.csv"));
  // A folder of a labels.csv whose images are elsewhere: read as class folders, the message
  // said nothing of the CSV, and --images went unused.
  fs::create_directories(dir / "elsewhere");
  fs::copy_file(dir / "labels.csv", dir / "elsewhere/labels.csv");
  r = test::run_process(exe() + " split --data " + (dir / "elsewhere") + " --out " +
                        (dir / "elsewhere/s.csv"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find(": no class folders inside; it holds labels.csv but no images/ folder "
                          "beside it: give --data " +
                          (dir / "elsewhere/labels.csv") + " and --images"),
            std::string::npos)
      << r.output;
  r = test::run_process(exe() + " split --data " + (dir / "elsewhere") + " --images " +
                        (dir / "images") + " --out " + (dir / "elsewhere/s.csv"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(test::read_text(dir / "elsewhere/s.csv"), test::read_text(dir / "s.csv"));
  // cache --out replaces an image cache only: not a checkpoint-like HDF5 file, not a CSV.
  const auto cache = exe() + " cache --data " + (dir / "labels.csv") + " --size 16 --out ";
  EXPECT_EQ(test::run_process(cache + (dir / "c.h5")).status, 0);
  EXPECT_EQ(test::run_process(cache + (dir / "c.h5")).status, 0);
  ASSERT_EQ(test::run_process(test::python() + " -c \"import h5py; f=h5py.File('" +
                              (dir / "other.h5") + "','w'); f.attrs['format']='x'\"")
                .status,
            0);
  for (const auto& name : {"other.h5", "truth.csv"}) {
    const auto before_bytes = test::read_text(dir / name);
    r = test::run_process(cache + (dir / name) + " 2>&1");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find(": exists and is not an attnscope image cache; refusing to replace "
                            "it"),
              std::string::npos)
        << r.output;
    EXPECT_EQ(test::read_text(dir / name), before_bytes);
  }
}

// Names still colliding after the extension is kept (a.png.jpg beside a.jpg and a.png; an input
// x_steps.jpg beside x.jpg's strip) get ".2" with a warning: one output replaced another.
TEST(CliFault, PreprocessOutputNamesNeverCollide) {
  test::TempDir dir;
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  const std::map<std::string, int> inputs = {
      {"a.jpg", 10}, {"a.png", 60}, {"a.png.jpg", 110}, {"x.jpg", 160}, {"x_steps.jpg", 210}};
  for (const auto& [name, grey] : inputs)
    ASSERT_TRUE(cv::imwrite((in / name).string(), cv::Mat(40, 40, CV_8UC3, cv::Scalar::all(grey))));
  const auto out = dir.path() / "out";
  const auto r = test::run_process(exe() + " preprocess --steps --input " + in.string() +
                                   " --out " + out.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("a.png.jpg: a.png.png is another input's output; written as "
                          "a.png.2.png"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("x_steps.jpg: x_steps.png is another input's output; written as "
                          "x_steps.2.png"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(test::file_names(out.string()),
            (std::set<std::string>{"a.jpg.png", "a.jpg_steps.png", "a.png.png", "a.png_steps.png",
                                   "a.png.2.png", "a.png_steps.2.png", "x.png", "x_steps.png",
                                   "x_steps.2.png", "x_steps_steps.png"}));
  // Each image is its own input's (flat greys 50 apart; JPEG keeps a flat grey within 2).
  for (const auto& [output, input] :
       std::map<std::string, std::string>{{"a.jpg.png", "a.jpg"},
                                          {"a.png.png", "a.png"},
                                          {"a.png.2.png", "a.png.jpg"},
                                          {"x.png", "x.jpg"},
                                          {"x_steps.2.png", "x_steps.jpg"}}) {
    const auto image = cv::imread((out / output).string());
    ASSERT_FALSE(image.empty()) << output;
    EXPECT_NEAR(cv::mean(image)[0], inputs.at(input), 3) << output;
  }
}

// Defect 2 and 4: preprocess on a full disk, colliding names, --out equal to --input.
TEST(CliFault, PreprocessKeepsEveryOutputAndRefusesToWriteIntoItsInput) {
  test::TempDir dir;
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  ASSERT_TRUE(cv::imwrite((in / "a.jpg").string(), cv::Mat(40, 40, CV_8UC3, cv::Scalar(1, 2, 3))));
  ASSERT_TRUE(cv::imwrite((in / "a.png").string(), cv::Mat(40, 40, CV_8UC3, cv::Scalar(9, 8, 7))));
  ASSERT_TRUE(cv::imwrite((in / "a.JPG").string(), cv::Mat(40, 40, CV_8UC3, cv::Scalar(5, 5, 5))));
  ASSERT_TRUE(cv::imwrite((in / "b.png").string(), cv::Mat(40, 40, CV_8UC3, cv::Scalar(5, 5, 5))));
  const auto out = dir.path() / "out";
  auto r =
      test::run_process(exe() + " preprocess --input " + in.string() + " --out " + out.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("preprocessed 4 of 4"), std::string::npos) << r.output;
  for (const char* name : {"a.jpg.png", "a.png.png", "a.JPG.png", "b.png"})
    EXPECT_TRUE(fs::exists(out / name)) << name;
  const auto before = test::read_text(in / "a.png");
  for (const auto& target : {in, in / "sub"}) {
    r = test::run_process(exe() + " preprocess --input " + in.string() + " --out " +
                          target.string());
    expect_clean_failure(r, "is the input folder or inside it");
  }
  // One file into its own folder: its output would replace itself (b.png) or a neighbour
  // (a.jpg's output a.png replaced the user's a.png), also given relatively.
  for (const auto& command :
       {exe() + " preprocess --input " + (in / "b.png").string() + " --out " + in.string(),
        exe() + " preprocess --input " + (in / "a.jpg").string() + " --out " + in.string() + "/.",
        "cd " + in.string() + " && " + exe() + " preprocess --input a.jpg --out ."}) {
    r = test::run_process(command);
    expect_clean_failure(r, "is the folder of the input");
  }
  EXPECT_EQ(test::read_text(in / "a.png"), before);
  // Full disk (60 bytes: less than any PNG, even of one flat colour): every image fails with
  // the system's reason, nothing is left half written.
  const auto full = dir.path() / "full";
  r = test::run_with_file_size_limit(
      exe() + " preprocess --input " + in.string() + " --out " + full.string(), 60);
  expect_clean_failure(r, "File too large");
  EXPECT_NE(r.output.find("preprocessed 0 of 4"), std::string::npos) << r.output;
  for (const auto& e : fs::directory_iterator(full))
    ADD_FAILURE() << "left behind: " << e.path();
}

// A full disk that takes an image but not its --steps strip: the image counts as preprocessed
// (it was counted failed, its file there) and the strip is named and counted apart, exit 1. An
// output name that is a symbolic link is replaced by the file; its target is not written.
TEST(CliFault, PreprocessCountsAStripNotWrittenApartFromItsImage) {
  test::TempDir dir;
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  cv::Mat noise(64, 64, CV_8UC3);
  cv::randu(noise, 0, 256);
  ASSERT_TRUE(cv::imwrite((in / "x.png").string(), noise));
  const auto run = [&](const fs::path& out) {
    return exe() + " preprocess --steps --input " + (in / "x.png").string() + " --out " +
           out.string() + " 2>&1";
  };
  const auto whole = dir.path() / "whole";
  ASSERT_EQ(test::run_process(run(whole)).status, 0);
  const auto image_bytes = fs::file_size(whole / "x.png");
  const auto strip_bytes = fs::file_size(whole / "x_steps.png");
  ASSERT_LT(image_bytes + 1000, strip_bytes);
  const auto out = dir.path() / "out";
  const auto r = test::run_with_file_size_limit(run(out), (image_bytes + strip_bytes) / 2);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("x_steps.png: cannot write (File too large)"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("preprocessed 1 of 1 images into " + out.string() +
                          "; 1 --steps strip not written\n"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(test::read_text(out / "x.png"), test::read_text(whole / "x.png"));
  EXPECT_EQ(test::file_names(out.string()), std::set<std::string>{"x.png"});
  // A symbolic link in the output folder is replaced, not written through.
  const auto target = dir.path() / "elsewhere.txt";
  std::ofstream(target) << "keep";
  fs::remove(whole / "x.png");
  fs::create_symlink(target, whole / "x.png");
  ASSERT_EQ(test::run_process(run(whole)).status, 0);
  EXPECT_FALSE(fs::is_symlink(whole / "x.png"));
  EXPECT_EQ(test::read_text(whole / "x.png"), test::read_text(out / "x.png"));
  EXPECT_EQ(test::read_text(target), "keep");
}

TEST(CliFault, PreprocessReportsASymlinkLoopAndGoesOn) {
  test::TempDir dir;
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  ASSERT_TRUE(cv::imwrite((in / "good.png").string(), cv::Mat(40, 40, CV_8UC3)));
  fs::create_symlink("loop.png", in / "loop.png");
  const auto r =
      test::run_process(exe() + " preprocess --input " + in.string() + " --out " + (dir / "out"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("loop.png: symlink loop"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("preprocessed 1 of 2"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir.path() / "out/good.png"));
  const auto zero = test::run_process(exe() + " preprocess --input /dev/zero --out " + (dir / "z"));
  expect_clean_failure(zero, "not a regular file");
  // Given alone, the loop is named as such, not as a missing file.
  const auto alone = test::run_process(exe() + " preprocess --input " + (in / "loop.png").string() +
                                       " --out " + (dir / "out2"));
  expect_clean_failure(alone, (in / "loop.png").string() + ": symlink loop");
}

// Defect 2: synth on a full disk named labels.csv and left empty images.
TEST(CliFault, SynthOnAFullDiskNamesTheImageAndLeavesNoEmptyFile) {
  test::TempDir dir;
  const auto r = test::run_with_file_size_limit(
      exe() + " synth --out " + dir.path().string() + " --count 4 --size 256", 2000);
  expect_clean_failure(r, "File too large");
  EXPECT_NE(r.output.find(".png"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("labels.csv"), std::string::npos) << r.output;
  for (const char* sub : {"images", "masks"}) {
    if (!fs::exists(dir.path() / sub)) continue;
    for (const auto& e : fs::directory_iterator(dir.path() / sub))
      EXPECT_GT(fs::file_size(e.path()), 0u) << e.path();
  }
}

// train and seq2seq train record their command line as UTF-8 text (for --resume): an argument
// that is not UTF-8 (a Latin-1 folder) failed after the training with the JSON library's
// words ("[json.exception.type_error.316] invalid UTF-8 byte"); now a usage error before any
// work, no run folder made.
TEST(CliFault, ANonUtf8ArgumentOfACommandThatRecordsItsCommandLineIsAUsageError) {
  test::TempDir dir;
  synth(dir, 4, 32);
  const auto run = dir / "r\xe9n";
  const auto train = test::run_process(exe() + " train --data '" + dir.path().string() +
                                       "/labels.csv' --model attn_small --size 32 --epochs 1 "
                                       "--out '" +
                                       run + "'");
  EXPECT_EQ(train.status, 2) << train.output;
  EXPECT_EQ(train.output.rfind("error: '" + dir.path().string() +
                                   "/r\\xe9n' is not valid UTF-8: train records its command "
                                   "line as UTF-8 text; rename the file or folder\n",
                               0),
            0u)
      << train.output;
  EXPECT_FALSE(fs::exists(run));
  const auto seq = test::run_process(exe() + " seq2seq train --task 'tsv:" + dir / "p\xe9.tsv" +
                                     "' --out '" + dir / "s" + "'");
  EXPECT_EQ(seq.status, 2) << seq.output;
  EXPECT_NE(seq.output.find("p\\xe9.tsv' is not valid UTF-8: seq2seq train records its --task in "
                            "model.h5 as UTF-8 text; rename the file\n"),
            std::string::npos)
      << seq.output;
  EXPECT_FALSE(fs::exists(dir / "s"));
  // train's working folder is recorded too (what the relative paths mean).
  fs::create_directories(dir / "w\xe9");
  const auto cwd = test::run_process(
      "cd '" + dir / "w\xe9" + "' && " + exe() + " train --data '" + dir.path().string() +
      "/labels.csv' --model attn_small --size 32 --epochs 1 --out r");
  EXPECT_EQ(cwd.status, 2) << cwd.output;
  EXPECT_NE(cwd.output.find("w\\xe9' is not valid UTF-8: train records its working folder as "
                            "UTF-8 text; run it from another folder\n"),
            std::string::npos)
      << cwd.output;
  EXPECT_FALSE(fs::exists(dir / "w\xe9/r"));
}

// The file-size limit as a user meets it (`ulimit -f` in a shell, SIGXFSZ at its default
// action, which the fault runs above ignore): the same one line as a full disk, not a death by
// SIGXFSZ without a word and with the temporary file left behind.
TEST(CliFault, AFileSizeLimitIsOneLineAlsoWithSigxfszAtItsDefault) {
  test::TempDir dir;
  const auto r =
      test::run_process("sh -c 'trap - XFSZ; ulimit -f 4; exec " + exe() + " synth --out " +
                        dir.path().string() + " --count 2 --size 256'");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("File too large"), std::string::npos) << r.output;
  for (const char* sub : {"images", "masks"}) {
    if (!fs::exists(dir.path() / sub)) continue;
    for (const auto& e : fs::directory_iterator(dir.path() / sub))
      EXPECT_EQ(e.path().filename().string()[0] == '.', false) << e.path();  // no temporary
  }
}

// A split with an empty part is refused before anything is written: five images of one lesion
// in 5 folds (4 came out empty, exit 0), and --val 0.99 of five images (no training image).
TEST(CliFault, SplitWithAnEmptyPartIsRefused) {
  test::TempDir dir;
  synth(dir, 5, 32);
  std::istringstream in(test::read_text(dir / "labels.csv"));
  std::string line, ham = "lesion_id,image_id,dx,dx_type,age,sex,localization\n";
  std::getline(in, line);
  while (std::getline(in, line))
    ham += "HAM_1," + line.substr(0, line.find(',')) + ",nv,histo,50,male,back\n";
  std::ofstream(dir / "ham.csv") << ham;
  auto r = test::run_process(exe() + " split --data " + (dir / "ham.csv") + " --images " +
                             (dir / "images") + " --folds 5 --out " + (dir / "k.csv") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("--folds 5 leaves 4 fold(s) empty"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "k.csv"));
  r = test::run_process(exe() + " split --data " + (dir / "labels.csv") +
                        " --val 0.99 --test 0 --out " + (dir / "v.csv") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("the split leaves a part empty"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir / "v.csv"));
}

// What a killed run left beside an output (AtomicFile's temporaries of a dead process, not
// written for 10 minutes) is removed by the next run (split, seq2seq train, translate
// --alignment-png, synth and preprocess here, report in report_cli_test.cpp; merge, evaluate
// and translate --alignments call the same remove_dead_temporaries); a recent one and a live
// process's stay (they may be another run's).
TEST(CliFault, CommandsRemoveDeadTemporariesBesideTheirOutputs) {
  test::TempDir dir;
  synth(dir, 20, 32);
  const auto out = dir.path() / "s.csv";
  const auto planted = test::plant_temporaries(out);
  // A refused run touches nothing beside its output (no samples to split).
  std::ofstream(dir / "empty.csv") << "image_id,label\n";
  const auto refused =
      test::run_process(exe() + " split --data " + (dir / "empty.csv") + " --out " + out.string());
  EXPECT_NE(refused.status, 0) << refused.output;
  EXPECT_TRUE(fs::exists(planted[0])) << refused.output;
  ASSERT_EQ(
      test::run_process(exe() + " split --data " + (dir / "labels.csv") + " --out " + out.string())
          .status,
      0);
  EXPECT_FALSE(fs::exists(planted[0]));
  EXPECT_TRUE(fs::exists(planted[1]));
  EXPECT_TRUE(fs::exists(planted[2]));
  const auto model = dir.path() / "s2s/model.h5";
  fs::create_directories(model.parent_path());
  const auto beside = test::plant_temporaries(model);
  const auto r = test::run_process(exe() +
                                   " --threads 1 seq2seq train --task copy --count 64 --epochs 1 "
                                   "--quiet --out " +
                                   model.parent_path().string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_FALSE(fs::exists(beside[0]));
  EXPECT_TRUE(fs::exists(beside[1]));
  EXPECT_TRUE(fs::exists(beside[2]));
  // Commands that write a folder of files clean it in one pass, for each name they write
  // (atomic_file.h, remove_dead_temporaries_in): translate's heatmaps, synth's images, masks
  // and labels.csv, preprocess's images; another name's temporary stays.
  const auto heatmaps = dir.path() / "png";
  fs::create_directories(heatmaps);
  fs::create_directories(dir.path() / "pre");
  std::vector<std::array<fs::path, 3>> groups{
      test::plant_temporaries(heatmaps / "000001.png"),
      test::plant_temporaries(dir.path() / "images/synth_000003.png"),
      test::plant_temporaries(dir.path() / "masks/synth_000019.png"),
      test::plant_temporaries(dir.path() / "labels.csv"),
      test::plant_temporaries(dir.path() / "pre/synth_000002.png")};
  const auto unrelated = {test::plant_temporaries(heatmaps / "1.png")[0],
                          test::plant_temporaries(dir.path() / "images/photo.png")[0],
                          test::plant_temporaries(dir.path() / "pre/synth_000002.jpg")[0]};
  for (const auto& cmd : {" --threads 1 seq2seq translate --model " + model.string() +
                              " --alignment-png " + heatmaps.string() + " abc abd",
                          " synth --out " + dir.path().string() + " --count 20 --size 32",
                          " preprocess --input " + (dir.path() / "images").string() + " --out " +
                              (dir.path() / "pre").string()}) {
    const auto run = test::run_process(exe() + cmd);
    ASSERT_EQ(run.status, 0) << cmd << "\n" << run.output;
    // The temporaries planted in images/ are hidden files: no inputs of preprocess.
    if (cmd.find(" preprocess ") != std::string::npos) {
      EXPECT_NE(run.output.find("preprocessed 20 of 20 images"), std::string::npos) << run.output;
    }
  }
  for (const auto& planted_here : groups) {
    EXPECT_FALSE(fs::exists(planted_here[0])) << planted_here[0];
    EXPECT_TRUE(fs::exists(planted_here[1])) << planted_here[1];
    EXPECT_TRUE(fs::exists(planted_here[2])) << planted_here[2];
  }
  for (const auto& other : unrelated)
    EXPECT_TRUE(fs::exists(other)) << other;
  EXPECT_TRUE(fs::exists(heatmaps / "000001.png"));
  EXPECT_TRUE(fs::exists(dir.path() / "pre/synth_000002.png"));
}

// A kill at any moment leaves each command's output old or complete (SIGKILL, random moments).
TEST(CliFault, SplitKilledAtAnyMomentLeavesTheOldOrTheNewCsv) {
  test::TempDir dir;
  synth(dir, 200, 32);
  const auto out = dir / "s.csv";
  const auto cmd = exe() + " split --data " + (dir / "labels.csv") + " --out " + out;
  ASSERT_EQ(test::run_process(cmd + " --seed 1").status, 0);
  const auto old_bytes = test::read_text(out);
  const int ms = timed_run(cmd + " --seed 2");
  const auto new_bytes = test::read_text(out);
  ASSERT_NE(new_bytes, old_bytes);
  kill_at_random_moments(
      cmd + " --seed 2", ms, [&] { std::ofstream(out, std::ios::binary) << old_bytes; },
      [&] {
        const auto now = test::read_text(out);
        return now == old_bytes || now == new_bytes ? "" : "s.csv is neither: " + now.substr(0, 80);
      },
      21);
}

TEST(CliFault, SynthKilledAtAnyMomentLeavesOnlyCompleteFiles) {
  test::TempDir dir;
  const auto out = dir.path() / "s";
  const auto cmd = exe() + " synth --out " + out.string() + " --count 40 --size 96";
  ASSERT_EQ(test::run_process(cmd + " --seed 1").status, 0);
  const auto old_files = files_in(out);
  const int ms = timed_run(cmd + " --seed 2");
  const auto new_files = files_in(out);
  ASSERT_EQ(new_files.size(), old_files.size());
  kill_at_random_moments(
      cmd + " --seed 2", ms, [&] { restore(out, old_files); },
      [&]() -> std::string {
        const auto files = files_in(out);
        // The old labels.csv never names a new image (it stayed while the images were replaced).
        const bool old_labels =
            files.count("labels.csv") && files.at("labels.csv") == old_files.at("labels.csv");
        for (const auto& [name, bytes] : files) {
          // The bound a run keeps while it writes (synth writes 40 over 40).
          if (name == ".synth-extent" && bytes == "attnscope synth: images below 40\n") continue;
          const auto o = old_files.find(name), n = new_files.find(name);
          if ((o == old_files.end() || o->second != bytes) &&
              (n == new_files.end() || n->second != bytes))
            return name + " is neither the old nor the new file (" + std::to_string(bytes.size()) +
                   " bytes)";
          if (old_labels && (o == old_files.end() || o->second != bytes))
            return "the old labels.csv beside the new " + name;
        }
        return "";
      },
      22);
}

TEST(CliFault, PreprocessKilledAtAnyMomentLeavesOnlyCompleteImages) {
  test::TempDir dir;
  synth(dir, 16, 256);
  const auto out = dir.path() / "out";
  std::ofstream(dir / "small.json") << R"({"steps": [{"op": "resize", "size": 32}]})";
  std::ofstream(dir / "large.json") << R"({"steps": [{"op": "resize", "size": 200}]})";
  const auto cmd = exe() + " preprocess --input " + (dir / "images") + " --out " + out.string();
  ASSERT_EQ(test::run_process(cmd + " --config " + (dir / "small.json")).status, 0);
  const auto old_files = files_in(out);
  const auto large = cmd + " --steps --config " + (dir / "large.json");
  const int ms = timed_run(large);
  const auto new_files = files_in(out);
  ASSERT_GT(new_files.size(), old_files.size());
  kill_at_random_moments(
      large, ms, [&] { restore(out, old_files); },
      [&]() -> std::string {
        for (const auto& [name, bytes] : files_in(out)) {
          const auto o = old_files.find(name), n = new_files.find(name);
          if ((o == old_files.end() || o->second != bytes) &&
              (n == new_files.end() || n->second != bytes))
            return name + " is neither the old nor the new image";
        }
        return "";
      },
      23);
}

// A 64 × 64 PNG of noise, encoded by OpenCV.
std::string noise_png() {
  cv::Mat noise(64, 64, CV_8UC3);
  cv::randu(noise, cv::Scalar::all(0), cv::Scalar::all(255));
  std::vector<uchar> png;
  EXPECT_TRUE(cv::imencode(".png", noise, png));
  return std::string(png.begin(), png.end());
}

// Smaller ones of defect 11: a PNG with a damaged chunk was reported after libpng's own
// "libpng error: IDAT: CRC error" line; an id holding a NUL was shown cut at the NUL (and
// called a path separator).
TEST(CliFault, DamagedPngIsOneLineNamingTheChunkWithoutLibpngsOwn) {
  test::TempDir dir;
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  const std::string bytes = noise_png();
  const auto idat = bytes.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  auto damaged = bytes;
  damaged[idat + 40] = static_cast<char>(damaged[idat + 40] ^ 0x10);
  std::ofstream(in / "damaged.png", std::ios::binary) << damaged;
  std::ofstream(in / "good.png", std::ios::binary) << bytes;
  const auto r =
      test::run_process(exe() + " preprocess --input " + in.string() + " --out " + (dir / "out"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output.find("libpng"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("damaged.png: corrupt PNG: CRC mismatch in chunk IDAT at byte " +
                          std::to_string(idat - 4)),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("preprocessed 1 of 2"), std::string::npos) << r.output;
}

// CRC-32 of PNG chunks (ISO 3309, as in the PNG specification's sample code), bit by bit.
uint32_t png_crc(const std::string& bytes) {
  uint32_t c = 0xFFFFFFFFu;
  for (const unsigned char b : bytes) {
    c ^= b;
    for (int k = 0; k < 8; ++k)
      c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
  }
  return c ^ 0xFFFFFFFFu;
}

std::string png_chunk(const std::string& type, const std::string& data) {
  auto be32 = [](uint32_t v) {
    return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
  };
  return be32(uint32_t(data.size())) + type + data + be32(png_crc(type + data));
}

// Files libpng itself complains about, with every chunk whole and every CRC right: crafted
// compressed data is one line naming the file and libpng's reason (no "libpng error:" line
// of its own), and an invalid ICC profile — libpng's most common warning on real files —
// prints nothing: the image is decoded.
TEST(CliFault, CraftedPngDataIsOneLineAndLibpngWarningsAreNotPrinted) {
  test::TempDir dir;
  const auto in = dir.path() / "in";
  fs::create_directories(in);
  const std::string bytes = noise_png();
  const auto idat = bytes.find("IDAT") - 4;
  const uint32_t idat_length = uint32_t(uchar(bytes[idat])) << 24 |
                               uint32_t(uchar(bytes[idat + 1])) << 16 |
                               uint32_t(uchar(bytes[idat + 2])) << 8 | uchar(bytes[idat + 3]);
  std::string data = bytes.substr(idat + 8, idat_length);
  for (std::size_t i = 2; i < data.size(); i += 7)  // keep the zlib header, scramble the rest
    data[i] = char(data[i] ^ 0x5A);
  const std::string crafted =
      bytes.substr(0, idat) + png_chunk("IDAT", data) + bytes.substr(idat + 12 + idat_length);
  std::ofstream(in / "crafted.png", std::ios::binary) << crafted;
  // iCCP after IHDR: profile name, compression method 0, then no valid zlib stream.
  const std::size_t after_ihdr = 8 + 25;
  const std::string iccp = bytes.substr(0, after_ihdr) +
                           png_chunk("iCCP", std::string("ICC Profile\0\0", 13) + "not zlib") +
                           bytes.substr(after_ihdr);
  std::ofstream(in / "profile.png", std::ios::binary) << iccp;
  const auto r =
      test::run_process(exe() + " preprocess --input " + in.string() + " --out " + (dir / "out"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output.find("libpng"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("crafted.png: corrupt PNG: "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("profile.png"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("preprocessed 1 of 2"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(fs::path(dir / "out") / "profile.png")) << r.output;
}

// `demo` trains for a wall-clock budget, so two runs differ: what it guarantees is that a
// folder holding report.html holds the complete run it shows, that every HDF5 file in the
// folder opens (h5py) whatever the moment of the kill, and that a rerun replaces a killed run.
TEST(CliFault, DemoKilledAtAnyMomentLeavesCompleteFilesAndNoReportUntilTheEnd) {
  test::TempDir dir;
  const auto out = dir.path() / "demo";
  const auto cmd = exe() + " demo --out " + out.string() +
                   " --minutes 0.02 --size 32 --train-images 20 --test-images 4";
  const int ms = timed_run(cmd);
  ASSERT_TRUE(fs::exists(out / "report.html"));
  kill_at_random_moments(
      cmd, ms, [] {},
      [&]() -> std::string {
        // AtomicFile's temporaries (".<name>.<pid>-<n>.tmp.h5") are no outputs: a SIGKILL may
        // leave one cut (docs/reliability.md), and the next run of the demo removes it.
        std::string files;
        for (const auto& e : fs::recursive_directory_iterator(out)) {
          const auto name = e.path().filename().string();
          const bool temporary = name.rfind(".", 0) == 0 && name.find(".tmp") != std::string::npos;
          if (e.path().extension() == ".h5" && !temporary) files += " " + e.path().string();
        }
        const auto r = test::run_process(
            test::python() +
            " -c \"import h5py,sys\nfor p in sys.argv[1:]:\n  try: h5py.File(p,'r').close()\n"
            "  except Exception as e: sys.exit(p + ': ' + str(e))\"" +
            files);
        if (r.status != 0) return "an HDF5 file does not open: " + r.output;
        if (!fs::exists(out / "report.html")) return "";
        if (!fs::exists(out / "results/results.h5")) return "a report without its results.h5";
        const auto html = test::read_text(out / "report.html");
        return html.find("</html>") != std::string::npos ? "" : "report.html is cut";
      },
      31, 4);
  fs::remove(out / "report.html");
  const auto r = test::run_process(cmd);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(fs::exists(out / "report.html")) << r.output;
}

// SIGTERM while the demo trains: training stops as it does alone, and the demo ends after that
// step with 143 and no report (it said "`attnscope train` exited with status 143", exit 1).
TEST(CliFault, DemoStoppedBySigtermEndsAfterTheStepWith143) {
  test::TempDir dir;
  const auto out = dir.path() / "demo";
  test::SignalPlan plan;
  plan.after = {"[2/5] training"};
  const auto r = test::run_signalled("exec " + exe() + " demo --out " + out.string() +
                                         " --minutes 0.05 --size 32 --train-images 20 "
                                         "--test-images 4",
                                     plan);
  ASSERT_EQ(r.signals_sent, 1) << r.output;
  EXPECT_EQ(r.status, 128 + SIGTERM) << r.output;
  EXPECT_NE(r.output.find("demo stopped by SIGTERM during `attnscope train`: " + out.string() +
                          " holds the steps done so far, and no report"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("exited with status"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out / "report.html"));
  EXPECT_FALSE(fs::exists(out / "results"));
}

TEST(CliFault, DemoOnAFullDiskFailsWithTheReasonAndNoReport) {
  test::TempDir dir;
  const auto out = dir.path() / "demo";
  const auto r = test::run_with_file_size_limit(
      exe() + " demo --out " + out.string() +
          " --minutes 0.02 --size 32 --train-images 20 --test-images 4",
      60000);
  expect_clean_failure(r, "File too large");
  EXPECT_FALSE(fs::exists(out / "report.html"));
}

// Memory running out in a C++ container is one line a user can act on ("error: std::bad_alloc"
// before). 10 million 4000-token pairs (some 300 GB) under an address-space limit: seconds.
// How much of the limit is left after start-up depends on the machine (the libraries LibTorch
// maps, one thread stack per core), so a limit under which something other than the data
// fails first (the loader, a thread: no bad_alloc in the output) is raised by 1 GB and tried
// again, up to 8 GB or half the memory available; one thread each for OpenMP and OpenBLAS keeps
// the stacks out of it.
TEST(CliFault, OutOfMemoryIsOneActionableLine) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "AddressSanitizer reserves more address space than the limit";
#endif
  const std::string line =
      "error: out of memory (std::bad_alloc): lower --batch-size or the sentence lengths, or "
      "free memory\n";
  long long available_kb = 16'000'000;
  {
    std::ifstream meminfo("/proc/meminfo");
    for (std::string key; meminfo >> key;) {
      long long kb = 0;
      meminfo >> kb;
      if (key == "MemAvailable:") available_kb = kb;
      meminfo.ignore(1 << 10, '\n');
    }
  }
  const int most = static_cast<int>(std::clamp(available_kb / 2 / 1'000'000, 2LL, 8LL));
  std::string tried;
  bool said = false, other = true;
  for (int gigabytes = 2; gigabytes <= most && !said && other; ++gigabytes) {
    test::TempDir dir;
    const auto r = test::run_process(
        concat("ulimit -v ", gigabytes * 1000000,
               " && OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 exec ", exe(),
               " --threads 1 seq2seq train --task copy --count 10000000 --min-length 4000 "
               "--max-length 4096 --epochs 1 --quiet --out ",
               dir / "run"));
    said = r.status == 1 && r.output == line;
    other = r.output.find("bad_alloc") == std::string::npos;  // not yet the data that failed
    tried += concat(gigabytes, " GB: status ", r.status, ": ", r.output, "\n");
  }
  EXPECT_TRUE(said) << tried;
}

// Standard output on a full disk: `presets > /dev/full` exited 0 having written nothing.
TEST(CliFault, StandardOutputOnAFullDiskIsAnError) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  for (const std::string args : {"presets", "info", "--help", "--version"}) {
    const auto r = test::run_process("{ " + exe() + " " + args + " > /dev/full; }");
    EXPECT_EQ(r.status, 1) << args << "\n" << r.output;
    // The failed flush's errno is the reason (it was cleared before the line was written).
    EXPECT_EQ(r.output, "error: writing standard output failed (No space left on device)\n")
        << args;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_EQ(test::run_process(exe() + " " + args + " > /dev/null").status, 0) << args;
  }
}

TEST(CliFault, IdWithANulOrAControlCharacterIsShownWholeAndNamedAsSuch) {
  test::TempDir dir;
  synth(dir, 4, 32);
  std::ofstream(dir / "bad.csv", std::ios::binary)
      << std::string("image_id,label\nsynth_000000") + '\0' +
             "evil,0\nsynth_000001\x1b[31m,1\nsynth_000002,0\nsynth_000003,1\n";
  const auto r = test::run_process(exe() + " split --data " + (dir / "bad.csv") + " --images " +
                                   (dir / "images") + " --out " + (dir / "s.csv"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("bad.csv:2: image id 'synth_000000\\0evil' contains a control "
                          "character"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("bad.csv:3: image id 'synth_000001\\x1b[31m' contains a control "
                          "character"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find('\x1b'), std::string::npos) << "a raw escape reached the terminal";
  EXPECT_FALSE(fs::exists(dir / "s.csv"));
}

// preprocess's per-image lines quote file names escaped: a terminal escape, or a newline that
// forged a line of its own, never reaches the terminal raw.
TEST(CliFault, PreprocessLinesQuoteFileNamesEscaped) {
  test::TempDir dir;
  fs::create_directories(dir.path() / "in");
  std::ofstream(dir.path() / "in" / "a\x1b[31mRED\nfake: line.png") << "not an image";
  const auto r = test::run_process(exe() + " preprocess --input " + (dir / "in") + " --out " +
                                   (dir / "out") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output.find('\x1b'), std::string::npos) << "a raw escape reached the terminal";
  EXPECT_NE(r.output.find("a\\x1b[31mRED\\nfake: line.png: not an image"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("\nfake: line"), std::string::npos) << r.output;
}

// --skip-missing names the first 20 ids it dropped and counts the rest (100,000 missing ids
// made 100,000 lines); a dataset it emptied is said to be empty, not "0 failed; first: ...".
TEST(CliFault, SkippedMissingImagesAreNamedUpToTwentyAndCounted) {
  test::TempDir dir;
  synth(dir, 2, 32);
  std::string csv = "image_id,label\n";
  for (int i = 0; i < 45; ++i)
    csv += "gone" + std::to_string(i) + ",benign\n";
  std::ofstream(dir / "gone.csv") << csv;
  const auto r = test::run_process(exe() + " cache --data " + (dir / "gone.csv") + " --images " +
                                   (dir / "images") + " --skip-missing --size 32 --out " +
                                   (dir / "c.h5") + " 2>&1");
  EXPECT_EQ(r.status, 1) << r.output;
  std::size_t named = 0;
  for (auto at = r.output.find(": image not found, skipped"); at != std::string::npos;
       at = r.output.find(": image not found, skipped", at + 1))
    ++named;
  EXPECT_EQ(named, 20u) << r.output;
  EXPECT_NE(r.output.find("warning: ... and 25 more images not found, skipped (45 in all)"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("nothing to cache: the dataset holds no image"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "c.h5"));
}

// A path the file system refuses (a symbolic link loop) is named with the system's reason,
// not the library's "filesystem error: status: Too many levels of symbolic links [loopA]".
TEST(CliFault, FilesystemErrorsNameThePathAndTheReason) {
  test::TempDir dir;
  fs::create_symlink(dir / "loopB", dir / "loopA");
  fs::create_symlink(dir / "loopA", dir / "loopB");
  for (const auto& args :
       {"train --model attn_small --data x.csv --out " + (dir / "loopA") + "/run",
        "evaluate --model " + (dir / "loopA") + " --data x.csv"}) {
    const auto r = test::run_process(exe() + " " + args + " 2>&1");
    EXPECT_EQ(r.status, 1) << args << "\n" << r.output;
    EXPECT_EQ(r.output.find("filesystem error"), std::string::npos) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(dir / "loopA"), std::string::npos) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("Too many levels of symbolic links"), std::string::npos) << args << "\n"
                                                                                     << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
}

TEST(CliFault, OutOfRangeNumbersAreUsageErrors) {
  test::TempDir dir;
  const auto seq2seq_train = [&](const std::string& flags) {
    return "seq2seq train --task copy --model gru-additive --out " + (dir / "r") + " " + flags;
  };
  const auto train = [&](const std::string& flags) {
    return "train --model attn_small --data x.csv --out " + (dir / "t") + " " + flags;
  };
  for (const auto& args :
       {std::string("--threads 100000 info"),
        "synth --out " + (dir / "s") + " --hair-probability nan",
        "synth --out " + (dir / "s") + " --count 100000000000",
        "synth --out " + (dir / "s") + " --size 1000000",
        "cache --data x.csv --out " + (dir / "c.h5") + " --size 1000000",
        "split --data x.csv --out " + (dir / "s.csv") + " --val nan", seq2seq_train("--lr nan"),
        seq2seq_train("--count 3000000000"), seq2seq_train("--max-length 100000000"),
        seq2seq_train("--clip-norm -1"), seq2seq_train("--time-budget nan"),
        seq2seq_train("--model-max-length 100000000"),
        // epochs × batches overflowed: every step at a learning rate of 0, exit 0.
        seq2seq_train("--epochs 9223372036854775807"), train("--epochs 1000001"),
        train("--step-every 6148914691236517206"),
        // Worker counts past kMaxWorkers: "Resource temporarily unavailable" from the 100,000th
        // thread before; a preset that does not exist: found only after the data was read.
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") + " --threads 100000",
        std::string("evaluate --model m.h5 --data x.csv --workers 100000"),
        train("--workers 100000"), train("--threads 100000"),
        "train --model no_such_preset --data x.csv --out " + (dir / "t"),
        // NaN passed `x < 0 || x > 1` style checks; a huge step count ran for hours.
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") + " --threshold nan",
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") +
            " --faithfulness --faithfulness-steps 100000000",
        train("--lr nan"), train("--lr inf"), train("--momentum nan"), train("--weight-decay -1"),
        train("--step-gamma 0"), train("--focal-gamma inf"), train("--label-smoothing nan"),
        train("--warmup-epochs nan"), train("--time-budget nan"), train("--step-every 0"),
        train("--patience -1"), train("--mask-loss 1,nan"), train("--mixup nan"),
        train("--cutmix -1"), train("--drop-path 1"), train("--drop-path nan"),
        // A batch size near INT64_MAX overflowed the batch count: nothing was classified.
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") +
            " --batch-size 9223372036854775807",
        std::string("evaluate --model m.h5 --data x.csv --batch-size 65537"),
        train("--batch-size 9223372036854775807"),
        // Read as 2, and out of memory; a map twice failed creating its dataset; an empty --out
        // printed the filesystem's text.
        train("--oversample malignant=2abc"), train("--oversample malignant=2000000000"),
        train("--oversample malignant=3 --oversample malignant=2"),
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") + " --maps stage3 stage3",
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") + " --maps stage3,stage3",
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") + " --maps stage3,",
        std::string("classify --model m.h5 --input x.jpg --out ''"),
        std::string("train --model attn_small --data x.csv --out ''"),
        std::string("synth --out '' --count 2"), std::string("report --results r.h5 --out ''"),
        std::string("report --results '' --out r"), std::string("merge a.h5 '' --out m.h5"),
        train("--optimizer ''"), "split --data '' --out " + (dir / "s.csv"),
        // Options whose default is "" took an empty value as not given: `--init "$CKPT"` with
        // CKPT unset trained from scratch without a word.
        train("--init ''"), train("--init-backbone ''"), train("--teacher ''"), train("--val ''"),
        train("--augment ''"), train("--mask-loss ''"), train("--images ''"),
        train("--init a.h5 --init-backbone b.h5"),
        std::string("evaluate --model m.h5 --data x.csv --out ''"),
        std::string("evaluate --model m.h5 --data x.csv --predictions ''"),
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") + " --masks ''",
        "cache --data x.csv --out " + (dir / "c.h5") + " --config ''",
        std::string("seq2seq translate --model m.h5 --beam 100000 abc"),
        std::string("seq2seq translate --model m.h5 --length-penalty 1e300 abc"),
        std::string("dist-check --lr nan"), "demo --out " + (dir / "d") + " --minutes 1e300",
        // Past what a float32 holds or memory takes: LibTorch's overflow text, vector::reserve,
        // bad_alloc; demo's sizes were found by synth after the previous demo was removed; a
        // bare word was dropped (`--input *.jpg` read one file).
        seq2seq_train("--clip-norm 1e308"), seq2seq_train("--valid-size 9223372036854775807"),
        std::string("evaluate --model m.h5 --data x.csv --bootstrap 9223372036854775807"),
        std::string("dist-check --samples 9223372036854775807"),
        std::string("dist-check --image-size 100000"), std::string("dist-check --lr 1e308"),
        "demo --out " + (dir / "d") + " --size 100000",
        "demo --out " + (dir / "d") + " --train-images 99999999999",
        "preprocess --input a.jpg b.jpg --out " + (dir / "o"),
        "preprocess --input a.jpg --out " + (dir / "o") + " --max-pixels 9223372036854775807",
        "synth --out " + (dir / "s") + " stray",
        // Boost read -1 into an unsigned seed as 2^64 - 1.
        train("--seed -1"), seq2seq_train("--seed -2"), "synth --out " + (dir / "s") + " --seed -3",
        std::string("dist-check --seed -4"),
        // A check of nothing reported success; an unknown preset or a side the network cannot
        // take gave exit 1 or LibTorch's reason from inside the first step.
        "split --data x.csv --folds 3 --val 0.2 --out " + (dir / "s.csv"),
        "split --data x.csv --folds 3 --test 0.1 --out " + (dir / "s.csv"),
        std::string("dist-check --epochs 0"), std::string("dist-check --model bogus"),
        std::string("dist-check --model attn_small --image-size 1"),
        // Words checked only after the run folder was made (exit 1, an empty folder left), and
        // --resume with another option ("--data is required", which --resume refuses).
        train("--select-by f1"), train("--schedule linear"), train("--loss hinge"),
        train("--sampler random"), "train --resume " + (dir / "t") + " --seed 3",
        train("--val v.csv --val-split 0.3"),
        // A ViT's rollout has no gradient: a Dice term on it was recorded and trained nothing.
        "train --model vit_mini_patch8 --data x.csv --out " + (dir / "t") + " --mask-loss 1",
        // std::stoll took a leading space or sign on either side of the slash, not a trailing
        // one.
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") + " --shard ' 1/2'",
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") + " --shard '1/ 2'",
        "classify --model m.h5 --input x.jpg --out " + (dir / "o") + " --shard +1/2",
        "train --epochs 3 --resume=" + (dir / "t")}) {
    const auto r = test::run_process(exe() + " " + args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << args << "\n" << r.output;
  }
  // Each probability of synth is named (the line said "probabilities and fractions").
  EXPECT_EQ(test::run_process(exe() + " synth --out " + (dir / "s") + " --ink-probability 1.5 2>&1")
                .output.rfind("error: --ink-probability must be in [0, 1], got 1.5\n", 0),
            0u);
  // The ViT refusal names the presets it is for and why (the fault list above checks only the
  // status and the prefix), before any data is read (x.csv does not exist).
  EXPECT_EQ(test::run_process(exe() + " train --model vit_mini_patch8 --data x.csv --out " +
                              (dir / "t") + " --mask-loss 1,1 2>&1")
                .output.rfind("error: --mask-loss trains the attention maps of the attention CNNs "
                              "(attn_small, attn_resnet18, ...); 'vit_mini_patch8' is a ViT, "
                              "whose rollout map has no gradient to train\n",
                              0),
            0u);
  EXPECT_NE(test::run_process(exe() + " train --model attn_small --data x.csv --out ''")
                .output.find("error: --out is empty: give it a value"),
            std::string::npos);
  EXPECT_NE(test::run_process(exe() + " merge a.h5 '' --out m.h5")
                .output.find("error: an argument is empty: each must name something"),
            std::string::npos);
  EXPECT_NE(test::run_process(exe() + " " + train("--init ''"))
                .output.find("error: --init is empty: give it a value"),
            std::string::npos);
  // Only the report's title takes "": its default (a title from the file name).
  EXPECT_EQ(test::run_process(exe() + " report --results " + (dir / "none.h5") + " --out " +
                              (dir / "r.html") + " --title ''")
                .output,
            "error: " + (dir / "none.h5") + ": no such file\n");
  EXPECT_NE(test::run_process(exe() + " " + train("--seed -1"))
                .output.find("--seed must be a non-negative integer, got '-1'"),
            std::string::npos);
  EXPECT_NE(
      test::run_process(exe() + " " + train("--select-by f1"))
          .output.find("--select-by must be auc, loss, accuracy or balanced_accuracy, got 'f1'"),
      std::string::npos);
  EXPECT_NE(
      test::run_process(exe() + " train --resume " + (dir / "t") + " --epochs 3")
          .output.find("--resume RUN takes no other option than --quiet (the run's are used)"),
      std::string::npos);
  // --resume=RUN alone is --resume RUN (this folder holds no run).
  EXPECT_NE(test::run_process(exe() + " train --resume=" + dir.path().string())
                .output.find("has no last.h5: not a run folder"),
            std::string::npos);
  // best.h5 without last.h5 (a full disk while writing last.h5): said so, not "no run".
  fs::create_directories(dir / "bestonly");
  std::ofstream(dir / "bestonly/best.h5") << "x";
  EXPECT_NE(test::run_process(exe() + " train --resume " + (dir / "bestonly"))
                .output.find("has best.h5 but no last.h5: the checkpoint that --resume continues "
                             "from was not written (the run was killed between the two, or the "
                             "disk was full); start the run again, or from its best weights with "
                             "--init " +
                             (dir / "bestonly/best.h5")),
            std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "s"));
  EXPECT_FALSE(fs::exists(dir / "o"));
  // A checkpoint to start from that is not there: named, and no run folder made.
  for (const char* flag : {"--init", "--init-backbone", "--teacher"}) {
    const auto r =
        test::run_process(exe() + " " + train(std::string(flag) + " " + (dir / "no.h5")));
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find(dir / "no.h5" + ": no such file (" + flag + ")"), std::string::npos)
        << r.output;
  }
  EXPECT_FALSE(fs::exists(dir / "t"));
  EXPECT_FALSE(fs::exists(dir / "r"));  // seq2seq train creates --out only once its flags pass
  EXPECT_FALSE(fs::exists(dir / "d"));
}

// Seq2seq: the checkpoint and the alignments through a full disk; --out checked up front.
class CliSeq2SeqFault : public ::testing::Test {
 protected:
  std::string train_cmd(const std::string& out, int seed = 0) const {
    return exe() + " seq2seq train --task copy --model gru-additive --count 200 --min-length 3 " +
           "--max-length 6 --epochs 1 --hidden-dim 16 --embedding-dim 8 --valid-size 10 " +
           "--quiet --seed " + std::to_string(seed) + " --out " + out;
  }
  test::TempDir dir;
};

TEST_F(CliSeq2SeqFault, TrainOnAFullDiskKeepsThePreviousModel) {
  ASSERT_EQ(test::run_process(train_cmd(dir / "run")).status, 0);
  const auto model = dir / "run/model.h5";
  const auto before = test::read_text(model);
  const auto r = test::run_with_file_size_limit(train_cmd(dir / "run", 1), 4000);
  expect_clean_failure(r, "File too large");
  EXPECT_EQ(test::read_text(model), before);
  EXPECT_EQ(temporaries_in(dir.path() / "run"), 0);
}

TEST_F(CliSeq2SeqFault, TranslateAlignmentsOnAFullDiskKeepThePreviousFile) {
  ASSERT_EQ(test::run_process(train_cmd(dir / "run")).status, 0);
  const auto cmd = exe() + " seq2seq translate --model " + (dir / "run/model.h5") +
                   " --alignments " + (dir / "al.h5") + " abc hello";
  ASSERT_EQ(test::run_process(cmd).status, 0);
  const auto before = test::read_text(dir / "al.h5");
  const auto r = test::run_with_file_size_limit(cmd + " abcdef", 800);
  expect_clean_failure(r, "File too large");
  EXPECT_EQ(test::read_text(dir / "al.h5"), before);
  EXPECT_EQ(temporaries_in(dir.path()), 0);
  const auto model = test::read_text(dir / "run/model.h5");
  const auto same =
      test::run_process(exe() + " seq2seq translate --model " + (dir / "run/model.h5") +
                        " --alignments " + (dir / "run/model.h5") + " abc");
  expect_clean_failure(same, "would destroy the input");
  EXPECT_EQ(test::read_text(dir / "run/model.h5"), model);
}

// Standard input is read a bounded line at a time: a 3 MB line is one error line naming its
// length (a 1 GiB line took 3.2 GB of memory to be refused), and the lines around it translate.
TEST_F(CliSeq2SeqFault, TranslateOfAnOverlongStdinLineNamesItsLengthAndGoesOn) {
  ASSERT_EQ(test::run_process(train_cmd(dir / "run")).status, 0);
  {
    std::ofstream in(dir / "in.txt", std::ios::binary);
    in << "abc\r\n" << std::string(3'000'000, 'a') << "\nabd\n";
  }
  const auto r = test::run_process(exe() + " seq2seq translate --model " + (dir / "run/model.h5") +
                                   " < " + (dir / "in.txt"));
  EXPECT_EQ(r.status, 1) << r.output;  // one input failed
  // Three translations (the overlong one an empty line) and the one error line.
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 4) << r.output;
  EXPECT_NE(r.output.find("error: input 2: input of 3000000 bytes, above the limit of 65536\n"),
            std::string::npos)
      << r.output;
}

TEST_F(CliSeq2SeqFault, TrainKilledAtAnyMomentLeavesTheOldOrACompleteModel) {
  ASSERT_EQ(test::run_process(train_cmd(dir / "run")).status, 0);
  const auto model = dir / "run/model.h5";
  const auto old_bytes = test::read_text(model);
  const auto translate = exe() + " seq2seq translate --model " + model + " abc";
  const int ms = timed_run(train_cmd(dir / "run", 1));
  kill_at_random_moments(
      train_cmd(dir / "run", 1), ms, [&] { std::ofstream(model, std::ios::binary) << old_bytes; },
      [&]() -> std::string {
        if (test::read_text(model) == old_bytes) return "";
        const auto r = test::run_process(translate);
        return r.status == 0 ? "" : "model.h5 is new but does not load: " + r.output;
      },
      24, 4);
}

TEST_F(CliSeq2SeqFault, TranslateKilledAtAnyMomentLeavesTheOldOrTheNewAlignments) {
  ASSERT_EQ(test::run_process(train_cmd(dir / "run")).status, 0);
  const auto al = dir / "al.h5";
  const auto cmd = exe() + " seq2seq translate --model " + (dir / "run/model.h5") +
                   " --alignments " + al + " abc hello";
  ASSERT_EQ(test::run_process(cmd).status, 0);
  const auto old_bytes = test::read_text(al);
  const int old_count = h5py_dataset_count(al);
  const int ms = timed_run(cmd + " abcdef");
  const int new_count = h5py_dataset_count(al);
  ASSERT_GT(old_count, 0);
  ASSERT_GT(new_count, old_count);
  kill_at_random_moments(
      cmd + " abcdef", ms, [&] { std::ofstream(al, std::ios::binary) << old_bytes; },
      [&]() -> std::string {
        if (test::read_text(al) == old_bytes) return "";
        const int n = h5py_dataset_count(al);
        return n == new_count ? "" : "al.h5 holds " + std::to_string(n) + " datasets";
      },
      25, 4);
}

// Defect 9: an unwritable --out is found before training, not after.
TEST_F(CliSeq2SeqFault, TrainChecksTheOutputFolderBeforeTraining) {
  std::ofstream(dir / "file") << "x";
  const auto r = test::run_process(train_cmd(dir / "file/run"));
  expect_clean_failure(r, "is not a folder");
  EXPECT_EQ(r.output.find("held-out"), std::string::npos) << r.output;
  // A folder where model.h5 goes, and a link to nowhere as --out: before the training (the
  // first ran the whole training, the second was the library's "filesystem error").
  fs::create_directories(dir / "om/model.h5");
  const auto folder = test::run_process(train_cmd(dir / "om"));
  expect_clean_failure(folder, "om/model.h5: exists and is not a regular file");
  EXPECT_EQ(folder.output.find("held-out"), std::string::npos) << folder.output;
  fs::create_symlink(dir / "nowhere", dir / "dangling");
  const auto link = test::run_process(train_cmd(dir / "dangling"));
  expect_clean_failure(link, dir / "dangling" + ": is a symbolic link to a missing target");
  const auto sub = test::run_process(train_cmd(dir / "dangling/run"));
  expect_clean_failure(
      sub, dir / "dangling/run: " + dir / "dangling" + " is a symbolic link to a missing target");
  // translate --alignments on a device: refused before any sentence is translated.
  ASSERT_EQ(test::run_process(train_cmd(dir / "run")).status, 0);
  const auto full = test::run_process(exe() + " seq2seq translate --model " +
                                      (dir / "run/model.h5") + " --alignments /dev/full abc");
  expect_clean_failure(full, "/dev/full: exists and is not a regular file");
}

}  // namespace
}  // namespace attnscope
