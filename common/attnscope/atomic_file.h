#pragma once
// The one way attnscope writes a file: to a temporary file beside it, every write and the
// close checked, fsync, then rename over the target. A run that fails, throws, is killed
// (SIGKILL, SIGTERM) or fills the disk leaves the previous file at the target untouched, or
// the new one complete; never a truncated or empty one.
//
//   AtomicFile out("run/metrics.json");   // nothing is created yet
//   out.write(text);                      // or hand out.temp_path() to HDF5 / cv::imwrite
//   out.commit();                         // fsync, close, rename; throws Error on any failure
//
// Without commit() (an exception on the way) the destructor removes the temporary file.
//
// A signal that ends the process (SIGTERM, SIGINT, SIGHUP by default) runs no destructor:
// remove_temporaries_on_signals() installs handlers that remove every live temporary file
// (the registry below) and then end the process as the signal would have. SIGKILL, a signal
// with no such handler (SIGPIPE, SIGQUIT; the attnscope command ignores SIGXFSZ) or a full
// registry leaves the temporary behind; the target is untouched either way.

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "attnscope/error.h"

namespace attnscope {

namespace atomic_file_detail {

// The paths of the live temporary files, readable from a signal handler: a fixed array of
// slots (untouched ones cost no memory), each a state, the process that registered it (a
// forked child inherits a copy and must not remove its parent's files) and a copy of the
// absolute path. States: 0 free, 1 being filled, 2 live, 3 being removed by a handler (its
// owner waits for it to end before the slot can be freed and filled again). A temporary whose
// path does not fit, or that finds no free slot, is not registered.
struct Slot {
  std::atomic<int> state{0};
  std::atomic<pid_t> pid{0};
  char path[4096];
};
inline std::array<Slot, 1024> g_slots;

inline int register_temporary(const std::string& path) {
  std::error_code ec;
  const auto absolute = std::filesystem::absolute(path, ec).string();
  const auto& name = ec ? path : absolute;  // a later chdir must not redirect the removal
  if (name.size() >= sizeof(Slot::path)) return -1;
  for (std::size_t i = 0; i < g_slots.size(); ++i) {
    int expected = 0;
    if (!g_slots[i].state.compare_exchange_strong(expected, 1)) continue;
    std::memcpy(g_slots[i].path, name.c_str(), name.size() + 1);
    g_slots[i].pid.store(::getpid());
    g_slots[i].state.store(2);
    return static_cast<int>(i);
  }
  return -1;
}

inline void unregister_temporary(int slot) {
  if (slot < 0) return;
  auto& state = g_slots[static_cast<std::size_t>(slot)].state;
  for (int expected = 2; !state.compare_exchange_weak(expected, 0); expected = 2)
    ;  // a handler is removing it (state 3): it ends, then the process does
}

// ".tmp<ext>" ends a temporary's name: the target's extension kept for writers that choose the
// format by it (cv::imwrite), unless it is longer than 32 bytes.
inline std::string temporary_tail(const std::filesystem::path& target) {
  const std::string ext = target.extension().string();
  return ".tmp" + (ext.size() > 32 ? std::string() : ext);
}

// The target's name as it stands in a temporary's name beside `suffix_size` bytes: cut to keep
// the whole within NAME_MAX (255 bytes), at a UTF-8 character boundary (the 20 added bytes
// made a 250-byte output fail with "File name too long").
inline std::string temporary_head(const std::filesystem::path& target, std::size_t suffix_size) {
  std::string name = target.filename().string();
  const std::size_t room = suffix_size < 254 ? 255 - 1 - suffix_size : 0;
  if (name.size() > room) {
    name.resize(room);
    while (!name.empty() && (static_cast<unsigned char>(name.back()) & 0xC0) == 0x80)
      name.pop_back();
    if (!name.empty() && static_cast<unsigned char>(name.back()) >= 0xC0) name.pop_back();
  }
  return name;
}

}  // namespace atomic_file_detail

/// Removes every live temporary file this process registered. Async-signal-safe (atomics,
/// getpid, unlink).
inline void remove_live_temporaries() {
  const pid_t self = ::getpid();
  for (auto& slot : atomic_file_detail::g_slots) {
    int expected = 2;
    if (!slot.state.compare_exchange_strong(expected, 3)) continue;
    if (slot.pid.load() == self) ::unlink(slot.path);
    slot.state.store(2);
  }
}

namespace atomic_file_detail {
inline void remove_and_end(int sig) {
  remove_live_temporaries();
  struct sigaction fallback {};
  fallback.sa_handler = SIG_DFL;
  sigemptyset(&fallback.sa_mask);
  ::sigaction(sig, &fallback, nullptr);
  ::raise(sig);  // blocked while this handler runs: ends the process when it returns
}
}  // namespace atomic_file_detail

/// SIGTERM, SIGINT and SIGHUP remove the live temporary files, then end the process as they
/// would have (exit status 128 + the signal). A signal the parent ignores (nohup) stays
/// ignored. Commands that stop gracefully (runtime::stop_on_signals) replace the handlers of
/// SIGINT and SIGTERM afterwards.
inline void remove_temporaries_on_signals() {
  struct sigaction action {};
  action.sa_handler = atomic_file_detail::remove_and_end;
  sigemptyset(&action.sa_mask);
  for (const int sig : {SIGTERM, SIGINT, SIGHUP}) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    ::sigaction(sig, &action, nullptr);
  }
}

namespace atomic_file_detail {
// "<pid>-<n>" as AtomicFile writes it (digits, no sign, no leading zero): the pid, or 0.
inline long long temporary_pid(const std::string& middle) {
  const auto dash = middle.find('-');
  const auto digits = [](const std::string& t) {
    return !t.empty() && t.size() <= 18 && (t[0] != '0' || t.size() == 1) &&
           t.find_first_not_of("0123456789") == std::string::npos;
  };
  if (dash == std::string::npos || !digits(middle.substr(0, dash)) ||
      !digits(middle.substr(dash + 1)))
    return 0;
  const long long pid = std::stoll(middle.substr(0, dash));
  return pid > 0 && pid <= std::numeric_limits<pid_t>::max() ? pid : 0;
}

// Removes the temporary `entry` of process `pid` when that process is dead, the entry is a
// regular file (as AtomicFile makes: not a folder, not a link) and it was not written for 10
// minutes. Returns whether it was removed.
inline bool remove_if_dead(const std::filesystem::directory_entry& entry, long long pid) {
  namespace fs = std::filesystem;
  if (pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM) return false;
  std::error_code type_ec;
  if (!fs::is_regular_file(entry.symlink_status(type_ec)) || type_ec) return false;
  std::error_code time_ec;
  const auto written = fs::last_write_time(entry.path(), time_ec);
  if (time_ec || fs::file_time_type::clock::now() - written < std::chrono::minutes(10))
    return false;
  std::error_code rm;
  return fs::remove(entry.path(), rm);
}
}  // namespace atomic_file_detail

/// Removes the temporary files `.<name>.<pid>-<n>.tmp<ext>` beside `path` (AtomicFile's) whose
/// process is no longer alive and that were not written for 10 minutes: what a SIGKILL or a
/// power cut left. A command that replaces `path` calls it before it writes. A live process's
/// temporaries stay: its pid answers kill(pid, 0), or, when it runs in another PID namespace
/// or on another machine sharing the folder, it still writes its file (and were it removed all
/// the same, its commit fails instead of renaming an empty file). Returns how many were removed.
inline int remove_dead_temporaries(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const auto file = target.filename().string();
  if (file.empty() || file == "." || file == "..") return 0;  // no file's name: nothing of its
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  const std::string tail = atomic_file_detail::temporary_tail(target);
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (name.size() <= 1 + tail.size() || name[0] != '.' ||
        name.compare(name.size() - tail.size(), tail.size(), tail) != 0)
      continue;
    // ".<name>.<pid>-<n>.tmp<ext>", <name> cut as the process that wrote it cut it
    const auto body = name.substr(0, name.size() - tail.size());
    const auto dot = body.rfind('.');
    if (dot == std::string::npos || dot == 0 ||
        body.compare(1, dot - 1, atomic_file_detail::temporary_head(target, name.size() - dot)) !=
            0)
      continue;
    if (atomic_file_detail::remove_if_dead(*it,
                                           atomic_file_detail::temporary_pid(body.substr(dot + 1))))
      ++removed;
  }
  return removed;
}

/// As remove_dead_temporaries, in one pass over `dir`, for every output whose file name
/// `is_output` accepts: for commands that write many files into a folder (synth, preprocess,
/// translate's heatmaps), where a pass per output would read the folder once per file.
/// `is_output` is asked of names below 200 bytes, which stand whole in a temporary's name. A
/// longer output may stand cut there (temporary_head), so such outputs are named in
/// `long_outputs` instead (preprocess keeps names up to 255 bytes) and matched exactly.
template <class IsOutput>
int remove_dead_temporaries_in(const std::string& dir, const IsOutput& is_output,
                               const std::vector<std::string>& long_outputs = {}) {
  namespace fs = std::filesystem;
  // The long outputs by their first 150 bytes: a cut head keeps at least 177 of them (the
  // suffix ".<pid>-<n>.tmp<ext>" takes at most 74 bytes, and the cut at most 3 more).
  constexpr std::size_t kKey = 150;
  std::unordered_multimap<std::string, const std::string*> by_key;
  for (const auto& output : long_outputs)
    if (output.size() >= 200) by_key.emplace(output.substr(0, kKey), &output);
  const auto long_output = [&](const std::string& name) -> std::size_t {  // its pid-n's dot
    if (name.size() < 1 + kKey) return 0;
    const auto range = by_key.equal_range(name.substr(1, kKey));
    for (auto it = range.first; it != range.second; ++it) {
      const std::string& output = *it->second;
      const auto tail = atomic_file_detail::temporary_tail(output);
      if (name.size() <= 1 + tail.size() ||
          name.compare(name.size() - tail.size(), tail.size(), tail) != 0)
        continue;
      const auto dot = name.rfind('.', name.size() - tail.size() - 1);
      if (dot != std::string::npos && dot > 1 &&
          name.compare(1, dot - 1, atomic_file_detail::temporary_head(output, name.size() - dot)) ==
              0)
        return dot;
    }
    return 0;
  };
  int removed = 0;
  std::error_code ec;
  for (fs::directory_iterator it(dir.empty() ? "." : dir, ec), end; !ec && it != end;
       it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (name.size() < 2 || name[0] != '.') continue;
    if (const auto dot = long_output(name)) {
      const auto at = name.find(".tmp", dot + 1);
      if (at != std::string::npos &&
          atomic_file_detail::remove_if_dead(
              *it, atomic_file_detail::temporary_pid(name.substr(dot + 1, at - dot - 1))))
        ++removed;
      continue;
    }
    // ".<name>.<pid>-<n>.tmp<ext>": each ".tmp" may start the tail (a name may hold ".tmp")
    for (auto at = name.find(".tmp", 1); at != std::string::npos; at = name.find(".tmp", at + 1)) {
      const auto dot = name.rfind('.', at - 1);
      if (dot == std::string::npos || dot < 2) continue;
      const auto target = name.substr(1, dot - 1);
      if (target.size() >= 200 ||
          name.compare(at, std::string::npos, atomic_file_detail::temporary_tail(target)) != 0 ||
          !is_output(target))
        continue;
      if (atomic_file_detail::remove_if_dead(
              *it, atomic_file_detail::temporary_pid(name.substr(dot + 1, at - dot - 1))))
        ++removed;
      break;
    }
  }
  return removed;
}

class AtomicFile {
 public:
  /// The temporary file is `<dir>/.<name>.<pid>-<n>.tmp<ext>` beside `path` (same file
  /// system, so the rename is atomic), keeping the extension for writers that choose the
  /// format by it (cv::imwrite); <name> is cut to keep the whole within 255 bytes.
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
    namespace fs = std::filesystem;
    static std::atomic<int> counter{0};
    const fs::path target(path_);
    check(!target.filename().empty(), path_, "is not a file name");
    std::error_code ec;
    const auto status = fs::status(target, ec);
    check(!fs::exists(status) || fs::is_regular_file(status), path_,
          "exists and is not a regular file; refusing to replace it");
    const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
    const std::string suffix =
        concat(".", ::getpid(), "-", counter++, atomic_file_detail::temporary_tail(target));
    temp_ = (dir / concat(".", atomic_file_detail::temporary_head(target, suffix.size()), suffix))
                .string();
    slot_ = atomic_file_detail::register_temporary(temp_);
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temp_.c_str());
    atomic_file_detail::unregister_temporary(slot_);
  }

  const std::string& path() const { return path_; }
  /// Where to write when a library writes by path (HDF5, OpenCV); commit() then renames it.
  const std::string& temp_path() const {
    written_by_path_ = true;
    return temp_;
  }

  /// Appends bytes to the temporary file; throws Error naming the target on a failed write
  /// (disk full, file-size limit, I/O error).
  void write(const void* data, std::size_t size) {
    if (fd_ < 0) open_temp();
    const char* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, size);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("cannot write");
      p += n;
      size -= static_cast<std::size_t>(n);
    }
  }
  void write(std::string_view text) { write(text.data(), text.size()); }

  /// Makes the new contents durable and visible at path(): fsync, close, rename, fsync of
  /// the folder. Throws Error naming the target on any failure; the target is then unchanged.
  void commit() {
    check(!committed_, path_, "committed twice");
    if (fd_ < 0) {
      // Written by path (HDF5, OpenCV), or not at all: an empty file is still a file. Once
      // written, a temporary that is gone was removed by another program (another run's
      // remove_dead_temporaries that could not see this process): an error, not an empty file
      // renamed over the target.
      fd_ = ::open(temp_.c_str(), O_RDWR | O_CLOEXEC);
      if (fd_ < 0 && errno == ENOENT && !written_by_path_)
        fd_ = ::open(temp_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
      if (fd_ < 0 && errno == ENOENT)
        fail("its temporary file " + temp_ + " is gone (removed by another program?); " + path_ +
             " was not replaced");
      if (fd_ < 0) fail("cannot open the temporary file");
    }
    if (::fsync(fd_) != 0) fail("cannot sync");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail("cannot close");
    if (::rename(temp_.c_str(), path_.c_str()) != 0) fail("cannot rename the temporary file to it");
    committed_ = true;
    atomic_file_detail::unregister_temporary(slot_);  // its name is gone: nothing to remove
    slot_ = -1;
    const auto dir = std::filesystem::path(path_).has_parent_path()
                         ? std::filesystem::path(path_).parent_path().string()
                         : std::string(".");
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);  // best effort: some file systems refuse fsync on folders
      ::close(dfd);
    }
  }

 private:
  void open_temp() {
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail("cannot create the temporary file " + temp_);
  }
  [[noreturn]] void fail(const std::string& what) {
    const std::string reason = std::strerror(errno);
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    ::unlink(temp_.c_str());
    throw Error(path_, what + " (" + reason + ")");
  }

  mutable bool written_by_path_ = false;  // temp_path() was handed out
  std::string path_;
  std::string temp_;
  int fd_ = -1;
  bool committed_ = false;
  int slot_ = -1;  ///< in atomic_file_detail::g_slots, -1 when not registered
};

/// Replaces `path` with `contents` atomically (AtomicFile).
inline void write_file_atomically(const std::string& path, std::string_view contents) {
  AtomicFile out(path);
  out.write(contents);
  out.commit();
}

}  // namespace attnscope
