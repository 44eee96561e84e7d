// attnscope demo: the whole job on generated data, in a few minutes and with no data of one's
// own — synthetic dermoscopy with lesions anywhere in the frame, attn_small trained for a
// minute or two, a held-out batch classified with its masks and the faithfulness measures,
// and the HTML report. The steps are the real subcommands, run in this process.

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "cli.h"
#include "pipeline/vision/report.h"
#include "runtime/runtime.h"

namespace attnscope::cli {
namespace {

namespace fs = std::filesystem;

constexpr const char* kMarker = ".attnscope-demo";

// The demo's log: the steps' own output (stdout and stderr: progress lines, summaries). A log
// is appended as the steps run, so it is the one file not written through AtomicFile.
class StepLog {
 public:
  explicit StepLog(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    check(fd_ >= 0, path, "cannot write the demo log");
  }
  ~StepLog() {
    if (fd_ >= 0) ::close(fd_);
  }
  StepLog(const StepLog&) = delete;
  StepLog& operator=(const StepLog&) = delete;
  const std::string& path() const { return path_; }
  void line(const std::string& text) {
    const std::string l = text + "\n";
    if (::write(fd_, l.data(), l.size()) < 0) {
      // A log line that cannot be written must not stop the demo.
    }
  }

  // Runs fn with file descriptors 1 and 2 pointing at the log.
  template <typename Fn>
  void capture(Fn&& fn) {
    std::cout.flush();
    std::cerr.flush();
    std::fflush(nullptr);
    const int out = ::dup(1), err = ::dup(2);
    check(out >= 0 && err >= 0, path_, "cannot redirect output");
    ::dup2(fd_, 1);
    ::dup2(fd_, 2);
    const auto restore = [&] {
      std::cout.flush();
      std::cerr.flush();
      std::fflush(nullptr);
      ::dup2(out, 1);
      ::dup2(err, 2);
      ::close(out);
      ::close(err);
    };
    try {
      fn();
    } catch (...) {
      restore();
      throw;
    }
    restore();
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// SIGINT / SIGTERM during a step: the step stops as it would alone (train saves its last
// epoch), and the demo ends after it with 128 + the signal and no report.
struct DemoStopped {
  std::string step;
};

// Runs a registered subcommand in this process, its output going to the log.
void run_step(const std::string& name, const std::vector<std::string>& args,
              const GlobalOptions& global, StepLog& log) {
  const Command* command = nullptr;
  for (const auto& c : commands())
    if (c.name == name) command = &c;
  check(command != nullptr, "demo", "this build has no `", name, "` command");
  std::string line = "$ attnscope " + name;
  for (const auto& a : args)
    line += " " + a;
  log.line(line);
  int status = 0;
  log.capture([&] { status = command->run(args, global); });
  if (runtime::stop_requested()) throw DemoStopped{name};
  check(status == 0, "demo", "`attnscope ", name, "` exited with status ", status, " (see ",
        log.path(), ")");
}

std::string seconds_since(std::chrono::steady_clock::time_point start) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.0f s",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return buf;
}

int run_demo(const std::vector<std::string>& args, const GlobalOptions& global) {
  const std::string usage = "demo [--out DIR] [--minutes M]";
  po::options_description desc("Options");
  std::string out;
  double minutes = 0;
  int size = 0;
  int64_t train_images = 0, test_images = 0;
  uint64_t seed = 0;
  // clang-format off
  desc.add_options()
      ("out", po::value(&out)->default_value("attnscope-demo"), "folder for everything the demo writes (replaced on a rerun)")
      ("minutes", po::value(&minutes)->default_value(1.5, "1.5"), "training time budget in minutes")
      ("size", po::value(&size)->default_value(80), "image side in pixels")
      ("train-images", po::value(&train_images)->default_value(500), "synthetic training images (a fifth validates)")
      ("test-images", po::value(&test_images)->default_value(100), "held-out synthetic images to classify")
      ("seed", po::value(&seed)->default_value(1), "random seed of the data and the training");
  // clang-format on
  po::variables_map vm;
  if (!parse(usage, desc, args, vm)) return 0;
  const auto fail = [&](const std::string& m) { throw UsageError(m, usage_text(usage, desc)); };
  if (!(minutes > 0 && minutes <= 1440)) fail("--minutes must be in (0, 1440]");
  // Checked here, before the folder is touched (synth's own checks came after the previous
  // demo's data was removed).
  if (size < 32 || size > 1024) fail("--size must be in [32, 1024]");
  if (train_images < 20 || test_images < 4 || train_images > 1'000'000 || test_images > 1'000'000)
    fail("--train-images must be in [20, 1000000] and --test-images in [4, 1000000]");

  // The demo owns its folder: a rerun replaces what an earlier demo wrote, nothing else.
  // report.html goes first and comes back last, so a folder holding a report holds the
  // complete run it shows; every step writes its own files atomically, so a run killed at
  // any moment leaves complete files and no report.
  const fs::path dir(out);
  std::error_code ec;
  if (fs::exists(dir) && !fs::is_empty(dir, ec) && !fs::exists(dir / kMarker))
    throw Error(out, "exists and was not written by `attnscope demo`; choose another --out");
  fs::remove(dir / "report.html", ec);
  check(!fs::exists(dir / "report.html"), (dir / "report.html").string(),
        "cannot remove the previous report");
  for (const char* sub : {"data", "run", "results"})
    fs::remove_all(dir / sub, ec);
  fs::create_directories(dir, ec);
  check(fs::is_directory(dir), out, "cannot create the folder");
  write_file_atomically((dir / kMarker).string(), "written by attnscope demo\n");
  const std::string log_path = (dir / "demo.log").string();
  StepLog log(log_path);

  const auto start = std::chrono::steady_clock::now();
  const auto p = [&](const fs::path& x) { return x.string(); };
  const std::string px = std::to_string(size);
  std::cout << "attnscope demo: everything goes to " << out << "/ (step output: " << log_path
            << ")\n";

  // A step that installs its own handler (train, classify) keeps this one's behaviour.
  runtime::stop_on_signals();
  // A step's end is not the demo's: a signal after it still stops the demo before its next step.
  runtime::keep_work_open(true);
  pipeline::vision::ReportSummary s;
  const std::string results = p(dir / "results/results.h5");
  const std::string report = p(dir / "report.html");
  try {
    std::cout << "[1/5] synthetic dermoscopy, lesions anywhere in the frame: " << train_images
              << " for training, " << test_images << " held out ..." << std::flush;
    run_step("synth",
             {"--out", p(dir / "data/train"), "--count", std::to_string(train_images), "--seed",
              std::to_string(seed), "--size", px, "--placement", "anywhere", "--workers", "2"},
             global, log);
    run_step(
        "synth",
        {"--out", p(dir / "data/test"), "--count", std::to_string(test_images), "--seed",
         std::to_string(seed + 1000), "--size", px, "--placement", "anywhere", "--workers", "2"},
        global, log);
    std::cout << " done (" << seconds_since(start) << ")\n";

    char budget[32];
    std::snprintf(budget, sizeof budget, "%g", minutes);
    std::cout << "[2/5] training attn_small for up to " << budget << " min ..." << std::flush;
    run_step("train", {"--data",        p(dir / "data/train/labels.csv"),
                       "--model",       "attn_small",
                       "--out",         p(dir / "run"),
                       "--size",        px,
                       "--epochs",      "1000",
                       "--time-budget", budget,
                       "--batch-size",  "32",
                       "--optimizer",   "adamw",
                       "--lr",          "0.002",
                       "--seed",        std::to_string(seed),
                       "--quiet"},
             global, log);
    std::cout << " done (" << seconds_since(start) << ")\n";

    std::cout << "[3/5] classifying the held-out images with their masks and the faithfulness "
                 "measures ..."
              << std::flush;
    run_step("classify",
             {"--model", p(dir / "run/best.h5"), "--data", p(dir / "data/test/labels.csv"), "--out",
              p(dir / "results"), "--masks", p(dir / "data/test/masks"), "--faithfulness",
              "--faithfulness-steps", "16", "--overwrite"},
             global, log);
    std::cout << " done (" << seconds_since(start) << ")\n";

    // The report is not stopped: a signal now stops nothing, and says so.
    runtime::keep_work_open(false);
    if (const auto late = runtime::finish_stop_requests(); !late.empty())
      std::cerr << "\n" << late << "\n";
    std::cout << "[4/5] writing the report ..." << std::flush;
    pipeline::vision::ReportOptions ro;
    ro.sort = "error";
    ro.title = "attnscope demo: attn_small on synthetic dermoscopy (lesions anywhere)";
    ro.command_line =
        "attnscope report --results " + results + " --out " + report + " --sort error";
    log.line("$ " + ro.command_line);
    s = pipeline::vision::write_report(results, report, ro);
    std::cout << " done (" << seconds_since(start) << ")\n";
  } catch (const DemoStopped& stopped) {
    std::cout << std::endl;
    std::cerr << "demo stopped by " << runtime::stop_signal_name(runtime::stop_requested())
              << " during `attnscope " << stopped.step << "`: " << out
              << " holds the steps done so far, and no report\n";
    return runtime::stopped_exit_status();
  }

  std::cout << "[5/5] results\n";
  std::cout << "  results: " << results << "\n  report:  " << report << "\n";
  char line[256];
  if (s.labelled) {
    std::snprintf(line, sizeof line,
                  "  AUC %.3f (95%% CI %.3f-%.3f), balanced accuracy %.3f on %lld held-out "
                  "images\n",
                  s.auc, s.auc_low, s.auc_high, s.balanced_accuracy,
                  static_cast<long long>(s.total));
    std::cout << line;
  }
  // Attention mass inside the lesion: every map beside the centred-Gaussian prior.
  std::string maps, prior;
  for (const auto& m : s.measures) {
    if (m.measure != "mass_in_mask" || !std::isfinite(m.mean)) continue;
    std::snprintf(line, sizeof line, "%s %.3f", m.map.c_str(), m.mean);
    if (m.map == "gaussian")
      prior = line;
    else
      maps += (maps.empty() ? "" : ", ") + std::string(line);
  }
  if (!maps.empty())
    std::cout << "  attention mass inside the lesion: " << maps << "; centre prior ("
              << (prior.empty() ? "n/a" : prior) << ")\n";
  std::cout << "open " << report << " in a browser (it needs no network). Total "
            << seconds_since(start) << ".\n";
  return 0;
}

const Registration kDemo(
    "demo", "the whole job on synthetic data in minutes: synth, train, classify, report", run_demo);

}  // namespace
}  // namespace attnscope::cli
