#pragma once
// Helpers shared by every test executable: where the shared data lives, temporary folders,
// running a process and capturing its output.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "attnscope/error.h"

namespace attnscope::test {

/// ../shared/data (or $ATTNSCOPE_DATA_DIR); empty when it is not there.
inline std::filesystem::path data_dir() {
  const char* env = std::getenv("ATTNSCOPE_DATA_DIR");
  std::filesystem::path dir = env && *env ? env : ATTNSCOPE_TEST_DATA_DIR;
  return std::filesystem::is_directory(dir) ? dir : std::filesystem::path();
}

/// Skips the current test (with a message) when ../shared/data is absent.
#define ATTNSCOPE_REQUIRE_DATA()                                               \
  do {                                                                         \
    if (::attnscope::test::data_dir().empty())                                 \
      GTEST_SKIP() << "shared data folder not found (" ATTNSCOPE_TEST_DATA_DIR \
                      "); set ATTNSCOPE_DATA_DIR to run this test";            \
  } while (0)

/// A fresh temporary folder, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("attnscope-test-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

struct ProcessResult {
  int status = -1;       ///< exit status (-1 when a signal ended the process)
  std::string output;    ///< stdout and stderr together
  int signal = 0;        ///< the signal that ended it, 0 when it exited
  bool killed = false;   ///< run_killed_after: the kill arrived before the command ended
  int signals_sent = 0;  ///< run_signalled: how many of the plan's signals were sent
};

/// Runs a shell command line, capturing stdout and stderr.
inline ProcessResult run_process(const std::string& command) {
  ProcessResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return result;
  std::array<char, 4096> buffer{};
  std::size_t n = 0;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0)
    result.output.append(buffer.data(), n);
  const int raw = pclose(pipe);
  result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return result;
}

/// Fault runs: `sh -c command` in a child process of its own process group, stdout and stderr
/// captured. file_size_limit > 0 sets RLIMIT_FSIZE with SIGXFSZ ignored, so every write past
/// that many bytes fails with EFBIG as on a full disk (no mount needed). kill_after_ms >= 0
/// sends `kill_signal` to the whole group after that many milliseconds unless it ended first.
/// Signals sent to a command as its output shows how far it got: the k-th signal once the
/// output holds after[k] (and the earlier ones were sent).
/// Or, with `ready` set, one signal once ready() holds (a file the command writes appeared).
struct SignalPlan {
  int signal = SIGTERM;
  std::vector<std::string> after;
  std::function<bool()> ready;
};

inline ProcessResult run_fault(const std::string& command, long long file_size_limit = 0,
                               int kill_after_ms = -1, int kill_signal = SIGKILL,
                               const SignalPlan* plan = nullptr) {
  ProcessResult result;
  int fds[2];
  if (pipe(fds) != 0) return result;
  const pid_t pid = fork();
  if (pid < 0) return result;
  if (pid == 0) {
    setpgid(0, 0);
    // The command starts with default signal handling whatever the test runner inherited (a
    // background job of a non-interactive shell starts with SIGINT ignored).
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    close(fds[0]);
    close(fds[1]);
    if (file_size_limit > 0) {
      signal(SIGXFSZ, SIG_IGN);
      rlimit lim{static_cast<rlim_t>(file_size_limit), static_cast<rlim_t>(file_size_limit)};
      setrlimit(RLIMIT_FSIZE, &lim);
    }
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(fds[1]);
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  const auto start = std::chrono::steady_clock::now();
  std::array<char, 4096> buffer{};
  int raw = 0;
  std::size_t sent = 0;
  for (;;) {
    ssize_t n = 0;
    while ((n = read(fds[0], buffer.data(), buffer.size())) > 0)
      result.output.append(buffer.data(), static_cast<std::size_t>(n));
    if (waitpid(pid, &raw, WNOHANG) == pid) break;
    if (plan && plan->ready && sent == 0 && plan->ready()) {
      kill(-pid, plan->signal);
      sent = 1;
      result.signals_sent = 1;
    }
    while (plan && sent < plan->after.size() &&
           result.output.find(plan->after[sent]) != std::string::npos) {
      kill(-pid, plan->signal);
      ++sent;
      result.signals_sent = static_cast<int>(sent);
    }
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - start)
                             .count();
    if (kill_after_ms >= 0 && !result.killed && elapsed >= kill_after_ms) {
      kill(-pid, kill_signal);
      result.killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ssize_t n = 0;
  while ((n = read(fds[0], buffer.data(), buffer.size())) > 0)
    result.output.append(buffer.data(), static_cast<std::size_t>(n));
  close(fds[0]);
  if (WIFEXITED(raw)) {
    result.status = WEXITSTATUS(raw);
    result.killed = false;  // it ended on its own before the signal took effect
  } else if (WIFSIGNALED(raw)) {
    result.signal = WTERMSIG(raw);
  }
  return result;
}

/// A command run as if the disk filled up after `bytes` bytes of any one file.
inline ProcessResult run_with_file_size_limit(const std::string& command, long long bytes) {
  return run_fault(command, bytes);
}

/// A command killed with `sig` (SIGKILL by default) after `ms` milliseconds, unless it ends
/// first; result.killed says which happened.
inline ProcessResult run_killed_after(const std::string& command, int ms, int sig = SIGKILL) {
  return run_fault(command, 0, ms, sig);
}

/// A command sent plan.signal (to its process group) as plan.after says. Give the command
/// with `exec`, so that the shell is not the process that receives it. result.signals_sent:
/// how many were sent before it ended; result.status / result.signal: how it ended.
inline ProcessResult run_signalled(const std::string& command, const SignalPlan& plan) {
  return run_fault(command, 0, -1, SIGKILL, &plan);
}

// Milliseconds an uninterrupted run of `command` takes (it must succeed).
inline int timed_run(const std::string& command) {
  const auto t0 = std::chrono::steady_clock::now();
  const auto r = run_process(command);
  EXPECT_EQ(r.status, 0) << command << "\n" << r.output;
  return static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count());
}

// Kills `command` with SIGKILL at `rounds` random moments within `duration_ms` (the time an
// uninterrupted run took), calling `reset` before each run and `problem` after each kill: ""
// when what the command writes is the old output or a complete new one, else what is wrong.
inline void kill_at_random_moments(const std::string& command, int duration_ms,
                                   const std::function<void()>& reset,
                                   const std::function<std::string()>& problem, unsigned seed,
                                   int rounds = 5) {
  std::mt19937 rng(seed);
  int killed = 0;
  // Later runs may be faster than the timed one (a cold start, a machine whose load dropped):
  // when no kill of the planned rounds landed, up to 6 more with the window halved each time.
  int window = duration_ms;
  for (int round = 0; round < rounds || (killed == 0 && round < rounds + 6); ++round) {
    if (round >= rounds) window = std::max(1, window / 2);
    reset();
    const int ms = std::uniform_int_distribution<int>(0, std::max(1, window))(rng);
    const auto r = run_killed_after(command, ms);
    killed += r.killed;
    if (!r.killed) {
      EXPECT_EQ(r.status, 0) << r.output;
    }
    EXPECT_EQ(problem(), "") << "after a kill at " << ms << " ms of " << duration_ms
                             << " (killed: " << r.killed << ")";
  }
  EXPECT_GT(killed, 0) << "no run was killed before it ended";
}

/// Beside `target`: AtomicFile temporaries of a process that is gone (pid 2^22 + 1 is above
/// Linux's largest), one not written for an hour and one written a minute ago, and one of this
/// live process. Returns them in that order; a command that replaces `target` removes only the
/// first (atomic_file.h, remove_dead_temporaries).
inline std::array<std::filesystem::path, 3> plant_temporaries(const std::filesystem::path& target) {
  namespace fs = std::filesystem;
  const auto name = "." + target.filename().string() + ".";
  const auto ext = target.extension().string();
  const auto dir = target.parent_path();
  const std::array<fs::path, 3> planted{
      dir / (name + std::to_string((1 << 22) + 1) + "-0.tmp" + ext),
      dir / (name + std::to_string((1 << 22) + 1) + "-1.tmp" + ext),
      dir / (name + std::to_string(::getpid()) + "-3.tmp" + ext)};
  for (std::size_t i = 0; i < planted.size(); ++i) {
    std::ofstream(planted[i]) << "x";
    fs::last_write_time(planted[i], fs::file_time_type::clock::now() -
                                        (i == 1 ? std::chrono::minutes(1) : std::chrono::hours(1)));
  }
  return planted;
}

/// The bytes of a file ("" when it cannot be read).
inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// (image_id, label) of each row of a labels CSV whose first two columns are those (the
/// synthetic sets, isic-uda1): for tests that write another CSV of the same images.
inline std::vector<std::pair<std::string, std::string>> labelled_rows(const std::string& csv) {
  std::istringstream in(read_text(csv));
  std::string line;
  std::getline(in, line);  // header
  std::vector<std::pair<std::string, std::string>> rows;
  while (std::getline(in, line)) {
    const auto rest = line.substr(line.find(',') + 1);
    rows.emplace_back(line.substr(0, line.find(',')), rest.substr(0, rest.find(',')));
  }
  return rows;
}

/// The names of the entries of a folder (not recursive): what a run left in it.
inline std::set<std::string> file_names(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    names.insert(e.path().filename().string());
  return names;
}

/// Whether the file system holding `dir` supports flock(2) on folders (the output-folder lock,
/// attnscope/folder_lock.h); NFS does not.
inline bool folders_lock(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const bool ok = fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) == 0;
  if (fd >= 0) ::close(fd);
  return ok;
}

/// Runs fn and returns the what() of the attnscope::Error it throws ("" when it throws none).
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

/// Debian's python3 (with torch, torchvision, h5py, cv2) — not the one first on PATH.
inline std::string python() {
  return ATTNSCOPE_PYTHON;
}

}  // namespace attnscope::test
