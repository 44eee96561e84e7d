#include "pipeline/distributed.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <sstream>
#include <thread>

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "attnscope/error.h"
#include "attnscope/printable.h"
#include "attnscope/threads.h"

namespace attnscope::pipeline {

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kSubject = "distributed";
constexpr int kMaxRanks = 1 << 20;
// A rank whose heartbeat has not moved for this long died or hangs.
constexpr milliseconds kHeartbeatInterval{1000};
constexpr milliseconds kHeartbeatSilence{3000};

std::string seconds_text(milliseconds ms) {
  std::ostringstream out;
  out << static_cast<double>(ms.count()) / 1000.0 << " s";
  return out.str();
}

int parse_int(const std::map<std::string, std::string>& env, const std::string& name, int low,
              int high) {
  const std::string& text = env.at(name);
  std::size_t used = 0;
  long value = 0;
  try {
    value = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || value < low || value > high)
    throw Error(kSubject,
                concat(name, "='", text, "': expected a whole number in ", low, "..", high));
  return static_cast<int>(value);
}

// c10::Error's what() carries a C++ backtrace; the message alone is what a user needs.
std::string reason(const std::exception& e) {
  if (const auto* c10 = dynamic_cast<const c10::Error*>(&e)) return c10->what_without_backtrace();
  return e.what();
}

std::vector<uint8_t> bytes(const std::string& text) {
  return {text.begin(), text.end()};
}
std::string text(const std::vector<uint8_t>& bytes) {
  return {bytes.begin(), bytes.end()};
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string out;
  for (std::size_t i = 0; i < ranks.size(); ++i)
    out += (i == 0 ? "" : i + 1 == ranks.size() ? " and " : ", ") + std::to_string(ranks[i]);
  return (ranks.size() == 1 ? "rank " : "ranks ") + out;
}

// Heartbeat state shared with the beating thread; the thread owns a reference so that a
// detached thread (after a failure) never outlives what it uses.
struct Heartbeat {
  std::mutex mutex;
  std::condition_variable cv;
  bool stop = false;
};

// Leaves an object to the OS at exit without destroying it (a store or process group torn
// down while peers are gone may block). It stays reachable from a global, so LeakSanitizer
// does not count it as a leak, which made a rank's usage error (exit 2) exit 1 under ASan.
template <class T>
void leave_to_os(c10::intrusive_ptr<T>& object) {
  if (!object) return;
  static auto* mutex = new std::mutex;
  static auto* kept = new std::vector<c10::intrusive_ptr_target*>;
  const std::lock_guard<std::mutex> lock(*mutex);
  kept->push_back(object.release());
}

}  // namespace

const std::vector<std::string>& distributed_variables() {
  static const std::vector<std::string> names{"RANK",
                                              "WORLD_SIZE",
                                              "LOCAL_RANK",
                                              "MASTER_ADDR",
                                              "MASTER_PORT",
                                              "SLURM_PROCID",
                                              "SLURM_NTASKS",
                                              "SLURM_LOCALID",
                                              "SLURM_STEP_ID",
                                              "SLURM_STEPID",
                                              "TORCHELASTIC_USE_AGENT_STORE",
                                              "TORCHELASTIC_RESTART_COUNT",
                                              "GLOO_SOCKET_IFNAME"};
  return names;
}

bool is_srun_task(const std::map<std::string, std::string>& env) {
  for (const char* name : {"SLURM_STEP_ID", "SLURM_STEPID"}) {
    const auto it = env.find(name);
    if (it == env.end()) continue;
    const std::string& v = it->second;
    if (v.empty()) continue;  // as unset: the older name may carry it
    if (v.size() > 10 || v.find_first_not_of("0123456789") != std::string::npos) return false;
    return std::stoull(v) < 0xfffffffaull;  // batch, extern, interactive, pending: not srun's
  }
  return false;
}

DistributedConfig distributed_config(const std::map<std::string, std::string>& env,
                                     const LaunchOptions& options) {
  const auto has = [&](const char* name) { return env.count(name) > 0; };
  DistributedConfig config;
  config.timeout = options.timeout;
  if (config.timeout.count() <= 0) throw Error(kSubject, "--dist-timeout must be positive");
  if (has("RANK") || has("WORLD_SIZE")) {
    if (!has("RANK") || !has("WORLD_SIZE"))
      throw Error(kSubject,
                  concat(has("RANK") ? "RANK" : "WORLD_SIZE", " is set but ",
                         has("RANK") ? "WORLD_SIZE" : "RANK", " is not: a launcher sets both"));
    config.launcher = "torchrun";
    config.world_size = parse_int(env, "WORLD_SIZE", 1, kMaxRanks);
    config.rank = parse_int(env, "RANK", 0, kMaxRanks);
    if (has("LOCAL_RANK")) config.local_rank = parse_int(env, "LOCAL_RANK", 0, kMaxRanks);
  } else if (!is_srun_task(env)) {
    // Slurm's batch script, or a shell of salloc's: the job's SLURM_NTASKS, one process.
    if (has("SLURM_NTASKS") && env.at("SLURM_NTASKS") != "1")
      config.note = concat("SLURM_NTASKS=", excerpt(env.at("SLURM_NTASKS"), 40),
                           " is set but srun did not start this process (no SLURM_STEP_ID of an "
                           "srun step: Slurm's batch script runs once): it runs alone; start it "
                           "with srun to run one process per task");
    return config;
  } else if (has("SLURM_PROCID") && has("SLURM_NTASKS")) {
    config.launcher = "slurm";
    config.world_size = parse_int(env, "SLURM_NTASKS", 1, kMaxRanks);
    config.rank = parse_int(env, "SLURM_PROCID", 0, kMaxRanks);
    if (has("SLURM_LOCALID")) config.local_rank = parse_int(env, "SLURM_LOCALID", 0, kMaxRanks);
  } else {
    return config;
  }
  if (config.rank >= config.world_size)
    throw Error(kSubject, concat("rank ", config.rank, " (",
                                 config.launcher == "slurm" ? "SLURM_PROCID" : "RANK",
                                 ") is outside a world of ", config.world_size, " (",
                                 config.launcher == "slurm" ? "SLURM_NTASKS" : "WORLD_SIZE", ")"));
  if (!options.master_addr.empty()) {
    config.master_addr = options.master_addr;
  } else if (has("MASTER_ADDR") && !env.at("MASTER_ADDR").empty()) {
    config.master_addr = env.at("MASTER_ADDR");
  } else if (config.world_size > 1) {
    throw Error(kSubject, concat("no master address: set MASTER_ADDR or pass --master-addr (under "
                                 "Slurm: the first host of scontrol show hostnames "
                                 "\"$SLURM_JOB_NODELIST\")"));
  }
  if (has("MASTER_PORT")) config.master_port = parse_int(env, "MASTER_PORT", 1, 65535);
  config.agent_store =
      has("TORCHELASTIC_USE_AGENT_STORE") && env.at("TORCHELASTIC_USE_AGENT_STORE") == "True";
  if (config.agent_store) {
    const int attempt = has("TORCHELASTIC_RESTART_COUNT")
                            ? parse_int(env, "TORCHELASTIC_RESTART_COUNT", 0, kMaxRanks)
                            : 0;
    config.store_prefix = concat("/worker/attempt_", attempt);
  }
  if (has("GLOO_SOCKET_IFNAME")) config.socket_ifname = env.at("GLOO_SOCKET_IFNAME");
  return config;
}

// ---------------------------------------------------------------------------------------------

namespace {

constexpr const char* kNotAStoreHint =
    "(is MASTER_PORT the port of this job's store -- rank 0's, or torchrun's agent's -- and not "
    "another service's?)";

// LibTorch 1.13's TCPStore client cannot be bounded or guarded from here: a peer on
// MASTER_PORT that is not a TCPStore (another service) either sends bytes its reader thread
// takes for a length (bad_alloc in that thread: std::terminate, exit 134) or accepts and never
// answers (add() blocks past any --dist-timeout). While a group exists, an exception escaping a
// LibTorch thread ends the process with one line naming the store; while it forms, a watchdog
// ends it if the rendezvous has not finished long after every bounded wait would have.
class StoreGuard {
 public:
  StoreGuard(const DistributedConfig& c, const std::string& where) {
    const auto head =
        concat("error: distributed: rank ", c.rank, ": the rendezvous store at ", where, " ");
    std::snprintf(head_, sizeof head_, "%sbroke off, sending what a TCPStore does not (",
                  head.c_str());
    std::snprintf(tail_, sizeof tail_, ") %s\n", kNotAStoreHint);
    silent_ = concat(head, "did not answer within ", seconds_text(2 * c.timeout + kGrace), " ",
                     kNotAStoreHint, "\n");
    previous_ = std::set_terminate(on_terminate);
    watchdog_ = std::thread([this, deadline = Clock::now() + 2 * c.timeout + kGrace] {
      std::unique_lock<std::mutex> lock(mutex_);
      if (!cv_.wait_until(lock, deadline, [this] { return formed_; })) {
        write_line(silent_.c_str());
        ::_exit(1);
      }
    });
  }
  StoreGuard(const StoreGuard&) = delete;
  StoreGuard& operator=(const StoreGuard&) = delete;
  /// Restores the previous terminate handler unless keep_handler() was called (the store was
  /// left to the OS, its threads still running).
  ~StoreGuard() {
    formed();
    if (!keep_) std::set_terminate(previous_);
  }
  /// The rendezvous ended (formed, or failed with an error of its own): the watchdog stops.
  void formed() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      formed_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
  }
  void keep_handler() { keep_ = true; }

 private:
  static constexpr milliseconds kGrace{10000};
  static void write_line(const char* text) {
    const ssize_t n = ::write(STDERR_FILENO, text, std::strlen(text));
    (void)n;
  }
  // Only an exception that escaped a thread gets here (the main thread's are caught); its own
  // text goes in the line, so that one from elsewhere is not taken for the store's.
  [[noreturn]] static void on_terminate() {
    write_line(head_);
    try {
      if (const auto e = std::current_exception()) std::rethrow_exception(e);
      write_line("std::terminate without an exception");
    } catch (const std::exception& e) {
      write_line(e.what());
    } catch (...) {
      write_line("an exception that is not a std::exception");
    }
    write_line(tail_);
    ::_exit(1);
  }
  // Static: written by the handler without allocating.
  static inline char head_[512] = {};
  static inline char tail_[256] = {};
  std::string silent_;
  std::terminate_handler previous_ = nullptr;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool formed_ = false, keep_ = false;
  std::thread watchdog_;
};

// c10d logs its connection attempts through glog ("Logging before InitGoogleLogging() ...",
// a line per retry, then the failure): while the group forms, every failure is turned into one
// line of ours, so glog prints only fatal messages. (The store's own threads may read the flag
// while it changes back: glog reads it unsynchronised in every thread, by design.)
// A LibTorch built without glog (pytorch.org's) logs through c10's own logger and level.
class QuietLibraryLog {
 public:
#ifdef C10_USE_GLOG
  QuietLibraryLog() : previous_(FLAGS_minloglevel) { FLAGS_minloglevel = google::GLOG_FATAL; }
  ~QuietLibraryLog() { FLAGS_minloglevel = previous_; }
#else
  QuietLibraryLog() : previous_(FLAGS_caffe2_log_level) {
    FLAGS_caffe2_log_level = c10::GLOG_FATAL;
  }
  ~QuietLibraryLog() {
    FLAGS_caffe2_log_level = previous_;
  }
#endif
  QuietLibraryLog(const QuietLibraryLog&) = delete;
  QuietLibraryLog& operator=(const QuietLibraryLog&) = delete;

 private:
  int previous_;
};

// MASTER_ADDR must resolve: TCPStore would retry a name no resolver knows until the timeout
// and then say only that it timed out. A resolver that does not answer (EAI_AGAIN) is asked
// again until the timeout (checked between lookups, each of which may take the resolver's own
// timeout); a failure of this machine (EAI_SYSTEM, EAI_MEMORY) is said at once.
void check_master_addr(const DistributedConfig& c) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  const auto deadline = Clock::now() + c.timeout;
  const auto head = concat("rank ", c.rank, ": MASTER_ADDR '", excerpt(c.master_addr, 100), "' ");
  for (;;) {
    addrinfo* found = nullptr;
    const int rc = ::getaddrinfo(c.master_addr.c_str(), nullptr, &hints, &found);
    const int err = errno;
    if (found) ::freeaddrinfo(found);
    if (rc == 0) return;
    if (rc == EAI_AGAIN) {
      if (Clock::now() < deadline) {
        std::this_thread::sleep_for(milliseconds(200));
        continue;
      }
      throw Error(kSubject, concat(head,
                                   "could not be looked up: the resolver did not answer "
                                   "within ",
                                   seconds_text(c.timeout), " (", ::gai_strerror(rc), ")"));
    }
    if (rc == EAI_SYSTEM || rc == EAI_MEMORY)
      throw Error(kSubject,
                  concat(head, "could not be looked up on this machine (",
                         rc == EAI_SYSTEM ? std::strerror(err) : ::gai_strerror(rc), ")"));
    throw Error(kSubject,
                concat(head, "is not a host name or address this machine can resolve (",
                       ::gai_strerror(rc), "): set it to rank 0's host name or IP address"));
  }
}

// How long a rank that stops before the group forms waits for the store, and rank 0 keeps
// its store up for the others to hear of it.
constexpr milliseconds kAnnounceBound{30000};

// Every rank adds 1 to "told" when it has heard of a failure before the group formed (or said
// its own); rank 0, whose process hosts the store, waits for all of them, within the bound.
void linger_until_told(c10d::Store& store, const DistributedConfig& config) {
  const auto deadline = Clock::now() + std::min(config.timeout, kAnnounceBound);
  try {
    while (Clock::now() < deadline && store.add("told", 0) < config.world_size)
      std::this_thread::sleep_for(milliseconds(50));
  } catch (const std::exception&) {
  }
}

}  // namespace

struct DistributedGroup::Impl {
  DistributedConfig config;
  // Declared before the stores, so destroyed after them: their threads end under its handler.
  std::unique_ptr<StoreGuard> guard;
  c10::intrusive_ptr<c10d::Store> store;     // the run's keys (prefixed)
  c10::intrusive_ptr<c10d::Store> hb_store;  // a second connection for the heartbeat thread
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::shared_ptr<Heartbeat> heartbeat;
  std::thread heartbeat_thread;
  bool failed = false;
  double collective_seconds = 0.0;

  std::string where() const { return concat(config.master_addr, ":", config.master_port); }

  c10::intrusive_ptr<c10d::Store> connect(bool server) const {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(config.master_port);
    options.isServer = server;
    options.numWorkers = static_cast<std::size_t>(config.world_size);
    options.waitWorkers = false;  // joining is checked below, naming the missing ranks
    options.timeout = config.timeout;
    options.multiTenant = true;
    c10::intrusive_ptr<c10d::Store> tcp;
    try {
      tcp = c10::make_intrusive<c10d::TCPStore>(config.master_addr, options);
    } catch (const std::exception& e) {
      if (server)
        throw Error(kSubject, concat("rank 0 could not start the rendezvous store on port ",
                                     config.master_port,
                                     " (MASTER_PORT; in use by another job?) or "
                                     "reach it at ",
                                     where(), " (MASTER_ADDR): ", reason(e)));
      throw Error(kSubject,
                  concat("rank ", config.rank, " could not reach the rendezvous store at ", where(),
                         " within ", seconds_text(config.timeout),
                         ": check MASTER_ADDR and MASTER_PORT, that rank 0 is running, and "
                         "the firewall (",
                         reason(e), ")"));
    }
    std::string prefix = config.store_prefix + "/attnscope";
    return c10::make_intrusive<c10d::PrefixStore>(prefix, tcp);
  }

  // Every rank checks in with its world size; waits (polling, so that it can name who is
  // missing) until all world_size ranks have.
  void join() {
    const std::string me = std::to_string(config.rank);
    // Counters start at 0 and grow by one per rank: anything else came from another service.
    const auto counted = [&](int64_t n) {
      if (n < 1 || n > kMaxRanks + 1)
        throw Error(kSubject, concat("rank ", config.rank, ": the rendezvous store at ", where(),
                                     " answered ", n, " to a counter ", kNotAStoreHint));
      return n;
    };
    if (counted(store->add("join/" + me, 1)) > 1)
      throw Error(kSubject,
                  concat("rank ", config.rank, " joined twice: two processes have the same RANK"));
    store->set("world/" + me, bytes(std::to_string(config.world_size)));
    const int64_t joined = counted(store->add("joined", 1));
    if (joined > config.world_size)
      throw Error(kSubject, concat("more processes joined (", joined,
                                   ") than WORLD_SIZE=", config.world_size, " says"));
    const auto deadline = Clock::now() + config.timeout;
    std::vector<bool> seen(static_cast<std::size_t>(config.world_size), false);
    for (;;) {
      std::vector<int> missing;
      for (int r = 0; r < config.world_size; ++r) {
        if (seen[r]) continue;
        const std::string key = "world/" + std::to_string(r);
        if (!store->check({key})) {
          missing.push_back(r);
          continue;
        }
        seen[r] = true;
        const std::string theirs = text(store->get(key));
        if (theirs != std::to_string(config.world_size))
          throw Error(kSubject, concat("world size mismatch: rank ", config.rank, " has ",
                                       config.world_size, " but rank ", r, " has ", theirs,
                                       " (WORLD_SIZE / SLURM_NTASKS must agree)"));
      }
      if (missing.empty()) return;
      // A rank that stopped before joining said why (announce_failure).
      for (const int r : missing) {
        const std::string key = "failed/" + std::to_string(r);
        if (!store->check({key})) continue;
        const std::string why = text(store->get(key));
        store->add("told", 1);
        // Rank 0 hosts the store: kept until every rank has heard (or said its own failure).
        if (config.rank == 0 && !config.agent_store) linger_until_told(*store, config);
        throw Error(kSubject, concat("rank ", config.rank, ": rank ", r,
                                     " stopped before the group formed: ", excerpt(why, 400)));
      }
      if (Clock::now() >= deadline)
        throw Error(kSubject,
                    concat("rank ", config.rank, ": ", rank_list(missing), " did not join within ",
                           seconds_text(config.timeout), " (world size ", config.world_size,
                           ", store at ", where(), ")"));
      std::this_thread::sleep_for(milliseconds(50));
    }
  }

  std::vector<std::shared_ptr<::gloo::transport::Device>> devices() const {
    std::vector<std::shared_ptr<::gloo::transport::Device>> out;
    if (config.socket_ifname.empty()) {
      out.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      return out;
    }
    std::stringstream names(config.socket_ifname);
    std::string name;
    while (std::getline(names, name, ',')) {
      if (name.empty()) continue;
      try {
        out.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(name));
      } catch (const std::exception& e) {
        throw Error(kSubject, concat("GLOO_SOCKET_IFNAME='", config.socket_ifname,
                                     "': cannot use network interface '", name, "': ", reason(e)));
      }
    }
    if (out.empty())
      throw Error(kSubject,
                  concat("GLOO_SOCKET_IFNAME='", config.socket_ifname, "' names no interface"));
    return out;
  }

  void start_heartbeat() {
    heartbeat = std::make_shared<Heartbeat>();
    auto state = heartbeat;
    auto hb = hb_store;
    const std::string key = "heartbeat/" + std::to_string(config.rank);
    heartbeat_thread = start_thread([state, hb, key] {
      std::unique_lock<std::mutex> lock(state->mutex);
      while (!state->stop) {
        lock.unlock();
        try {
          hb->add(key, 1);
        } catch (const std::exception&) {
          return;  // the store is gone; the main thread finds out on its own
        }
        lock.lock();
        state->cv.wait_for(lock, kHeartbeatInterval, [&] { return state->stop; });
      }
    });
  }

  void stop_heartbeat(bool join_thread) {
    if (!heartbeat) return;
    {
      std::lock_guard<std::mutex> lock(heartbeat->mutex);
      heartbeat->stop = true;
    }
    heartbeat->cv.notify_all();
    if (heartbeat_thread.joinable()) {
      if (join_thread)
        heartbeat_thread.join();
      else
        heartbeat_thread.detach();
    }
  }

  // Called when a collective (or the group's creation) failed: finds which ranks stopped and
  // throws an Error naming them.
  [[noreturn]] void fail(const std::string& operation, const std::string& original) {
    failed = true;
    const std::string head = concat("rank ", config.rank, ": ", operation, " failed: ");
    const std::string store_gone =
        config.agent_store
            ? concat("the rendezvous store of torchrun's agent at ", where(),
                     " no longer answers (the launcher on the first machine stopped)")
            : concat("rank 0 stopped: the rendezvous store it hosts at ", where(),
                     " no longer answers");
    std::vector<int64_t> before(static_cast<std::size_t>(config.world_size), -1);
    std::vector<std::string> reasons(static_cast<std::size_t>(config.world_size));
    try {
      store->set("failed/" + std::to_string(config.rank), bytes(original));
      const auto read = [&](std::vector<int64_t>& beats) {
        for (int r = 0; r < config.world_size; ++r)
          beats[r] = store->add(concat("heartbeat/", r), 0);
      };
      read(before);
      std::this_thread::sleep_for(kHeartbeatSilence);
      std::vector<int64_t> after(before.size(), -1);
      read(after);
      std::vector<int> stopped;
      std::string why;
      for (int r = 0; r < config.world_size; ++r) {
        if (r == config.rank) continue;
        const std::string abort_key = concat("aborted/", r);
        if (store->check({abort_key})) {
          why += concat("; rank ", r, " stopped with: ", text(store->get(abort_key)));
          stopped.push_back(r);
        } else if (after[r] == before[r] && !store->check({concat("done/", r)})) {
          stopped.push_back(r);
        }
      }
      if (stopped.empty())
        throw Error(kSubject, concat(head, "every other rank is still alive (", original, ")"));
      throw Error(kSubject,
                  concat(head, rank_list(stopped), " stopped (no heartbeat for ",
                         seconds_text(kHeartbeatSilence),
                         ": the process died, was killed or hangs)", why, " [", original, "]"));
    } catch (const Error&) {
      throw;
    } catch (const std::exception&) {
      throw Error(kSubject, concat(head, store_gone, " [", original, "]"));
    }
  }

  template <typename F>
  void guarded(const char* operation, F&& f) {
    if (failed) throw Error(kSubject, concat("rank ", config.rank, ": the group has failed"));
    const auto start = Clock::now();
    try {
      f();
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail(operation, reason(e));
    }
    collective_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  }

  void wait(const c10::intrusive_ptr<c10d::Work>& work) { work->wait(config.timeout); }
};

DistributedGroup::DistributedGroup(DistributedConfig config) : impl_(std::make_unique<Impl>()) {
  impl_->config = std::move(config);
  auto& c = impl_->config;
  if (c.world_size < 1 || c.rank < 0 || c.rank >= c.world_size)
    throw Error(kSubject, concat("rank ", c.rank, " outside a world of ", c.world_size));
  if (c.world_size == 1) return;
  // Interfaces first: a wrong GLOO_SOCKET_IFNAME is this rank's mistake, found without the
  // others.
  auto options = c10d::ProcessGroupGloo::Options::create(c.timeout);
  options->devices = impl_->devices();
  const bool server = c.rank == 0 && !c.agent_store;
  {
    // Only while the store connects: Gloo's own warnings (e.g. its interface choice) still show.
    const QuietLibraryLog quiet;
    check_master_addr(c);
    impl_->guard = std::make_unique<StoreGuard>(c, impl_->where());
    impl_->store = impl_->connect(server);
    impl_->hb_store = impl_->connect(false);
  }
  try {
    impl_->join();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(kSubject, concat("rank ", c.rank, ": rendezvous at ", impl_->where(),
                                 " failed: ", reason(e)));
  }
  try {
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("gloo", impl_->store), c.rank, c.world_size,
        options);
  } catch (const std::exception& e) {
    throw Error(kSubject, concat("rank ", c.rank,
                                 ": connecting the Gloo process group failed ("
                                 "check GLOO_SOCKET_IFNAME and that the ranks can reach each "
                                 "other): ",
                                 reason(e)));
  }
  impl_->guard->formed();
  impl_->start_heartbeat();
}

void DistributedGroup::check_interfaces(const DistributedConfig& config) {
  if (config.world_size <= 1) return;
  Impl impl;
  impl.config = config;
  impl.devices();
}

void DistributedGroup::announce_failure(const DistributedConfig& config, const std::string& message,
                                        int status) {
  if (config.world_size <= 1 || config.rank < 0 || config.rank >= config.world_size) return;
  // The error line is printed: whatever happens now ends the process quietly with its status —
  // a store that never answers (LibTorch's client waits without a bound there), or one whose
  // bytes make its thread throw (std::terminate). The store is left to the OS (its threads
  // may still run), so the handler stays.
  static std::atomic<int> exit_status{1};
  exit_status = status;
  std::set_terminate([] { ::_exit(exit_status.load()); });
  const auto bound = std::min(config.timeout, kAnnounceBound);
  std::thread([bound] {
    std::this_thread::sleep_for(2 * bound + milliseconds(5000));
    ::_exit(exit_status.load());
  }).detach();
  try {
    Impl impl;
    impl.config = config;
    impl.config.timeout = bound;
    const bool server = config.rank == 0 && !config.agent_store;
    c10::intrusive_ptr<c10d::Store> store;
    {
      const QuietLibraryLog quiet;
      check_master_addr(impl.config);
      store = impl.connect(server);
    }
    store->set("failed/" + std::to_string(config.rank), bytes(message));
    store->add("told", 1);
    if (server) linger_until_told(*store, impl.config);
    // A TCPStore torn down while peers talk to it may block: left to the OS, as after a failure.
    leave_to_os(store);
  } catch (...) {
    // Best effort: the others then wait out their timeout, as before.
  }
}

DistributedGroup::~DistributedGroup() {
  if (!impl_) return;
  impl_->stop_heartbeat(!impl_->failed);
  if (impl_->failed) {
    // Peers are gone: tearing down Gloo's pairs and the store could block on them, and the
    // process is about to report the error and exit. Let the OS reclaim them.
    if (impl_->guard) impl_->guard->keep_handler();
    leave_to_os(impl_->pg);
    leave_to_os(impl_->store);
    leave_to_os(impl_->hb_store);
  }
}

int DistributedGroup::rank() const {
  return impl_->config.rank;
}
int DistributedGroup::world_size() const {
  return impl_->config.world_size;
}
const DistributedConfig& DistributedGroup::config() const {
  return impl_->config;
}
double DistributedGroup::collective_seconds() const {
  return impl_->collective_seconds;
}

void DistributedGroup::broadcast(const std::vector<at::Tensor>& tensors, int root) {
  if (world_size() == 1 || tensors.empty()) return;
  torch::NoGradGuard no_grad;
  // One flat message per dtype, in the order the tensors were given.
  std::map<c10::ScalarType, std::vector<at::Tensor>> by_type;
  for (const auto& t : tensors)
    by_type[t.scalar_type()].push_back(t);
  for (auto& [type, group] : by_type) {
    std::vector<at::Tensor> flat_parts;
    for (const auto& t : group)
      flat_parts.push_back(t.detach().reshape({-1}));
    std::vector<at::Tensor> message{torch::cat(flat_parts)};
    impl_->guarded("broadcast", [&] {
      c10d::BroadcastOptions options;
      options.rootRank = root;
      impl_->wait(impl_->pg->broadcast(message, options));
    });
    int64_t offset = 0;
    for (auto& t : group) {
      const int64_t n = t.numel();
      t.detach().copy_(message[0].narrow(0, offset, n).view(t.sizes()));
      offset += n;
    }
  }
}

void DistributedGroup::broadcast_module(torch::nn::Module& module) {
  std::vector<at::Tensor> tensors;
  for (const auto& p : module.named_parameters())
    tensors.push_back(p.value());
  for (const auto& b : module.named_buffers())
    tensors.push_back(b.value());
  broadcast(tensors, 0);
}

void DistributedGroup::check_same(const std::string& what, const std::string& value) {
  if (world_size() == 1) return;
  const std::string key = concat("same/", what, "/");
  impl_->guarded("comparing ranks",
                 [&] { impl_->store->set(key + std::to_string(rank()), bytes(value)); });
  barrier();
  std::string mine;
  impl_->guarded("comparing ranks", [&] { mine = text(impl_->store->get(key + "0")); });
  std::string mismatch;
  for (int r = 1; r < world_size(); ++r) {
    std::string theirs;
    impl_->guarded("comparing ranks",
                   [&] { theirs = text(impl_->store->get(key + std::to_string(r))); });
    if (theirs != mine && mismatch.empty())
      mismatch = concat(what, " differs between rank 0 and rank ", r, ": '", mine.substr(0, 200),
                        "' against '", theirs.substr(0, 200), "'");
  }
  // Every rank has read every value before any leaves: rank 0, which hosts the store, threw
  // and exited while another was still reading, which then blamed the store, not the values.
  barrier();
  if (!mismatch.empty()) throw Error(kSubject, mismatch);
  // A check made every epoch must not grow the store: each rank's key goes once all read it.
  impl_->guarded("comparing ranks", [&] { impl_->store->deleteKey(key + std::to_string(rank())); });
}

void DistributedGroup::all_reduce_sum(at::Tensor& tensor) {
  if (world_size() == 1) return;
  std::vector<at::Tensor> message{tensor.is_contiguous() ? tensor : tensor.contiguous()};
  impl_->guarded("all-reduce", [&] { impl_->wait(impl_->pg->allreduce(message)); });
  if (!message[0].is_same(tensor)) tensor.copy_(message[0]);
}

void DistributedGroup::all_reduce_sum(const std::vector<at::Tensor>& tensors) {
  if (world_size() == 1 || tensors.empty()) return;
  for (const auto& t : tensors)
    if (!t.is_contiguous()) throw Error(kSubject, "all_reduce_sum needs contiguous tensors");
  impl_->guarded("all-reduce", [&] {
    std::vector<std::vector<at::Tensor>> messages;
    messages.reserve(tensors.size());
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (const auto& t : tensors) {
      messages.push_back({t});
      works.push_back(impl_->pg->allreduce(messages.back()));
    }
    for (const auto& w : works)
      impl_->wait(w);
  });
}

at::Tensor DistributedGroup::all_gather_rows(const at::Tensor& rows) {
  if (world_size() == 1) return rows;
  TORCH_CHECK(rows.dim() >= 1, "all_gather_rows needs at least one dimension");
  // Row counts first, then the rows padded to the longest rank's count; the padding is cut
  // off again before anything sees it.
  std::vector<at::Tensor> count_in{torch::full({1}, rows.size(0), torch::kInt64)};
  std::vector<std::vector<at::Tensor>> count_out(1);
  for (int r = 0; r < world_size(); ++r)
    count_out[0].push_back(torch::zeros({1}, torch::kInt64));
  impl_->guarded("all-gather", [&] { impl_->wait(impl_->pg->allgather(count_out, count_in)); });
  int64_t longest = 0;
  for (const auto& c : count_out[0])
    longest = std::max(longest, c.item<int64_t>());
  auto shape = rows.sizes().vec();
  shape[0] = longest;
  std::vector<at::Tensor> in{torch::zeros(shape, rows.options())};
  if (rows.size(0) > 0) in[0].narrow(0, 0, rows.size(0)).copy_(rows);
  std::vector<std::vector<at::Tensor>> out(1);
  for (int r = 0; r < world_size(); ++r)
    out[0].push_back(torch::empty(shape, rows.options()));
  impl_->guarded("all-gather", [&] { impl_->wait(impl_->pg->allgather(out, in)); });
  std::vector<at::Tensor> parts;
  for (int r = 0; r < world_size(); ++r)
    parts.push_back(out[0][r].narrow(0, 0, count_out[0][r].item<int64_t>()));
  return torch::cat(parts);
}

at::Tensor DistributedGroup::gather_by_index(const std::vector<int64_t>& local_indices,
                                             const at::Tensor& local_rows, int64_t total) {
  if (static_cast<int64_t>(local_indices.size()) != local_rows.size(0))
    throw Error(kSubject, concat("gather_by_index: ", local_indices.size(), " indices for ",
                                 local_rows.size(0), " rows"));
  const at::Tensor indices = all_gather_rows(torch::tensor(
      std::vector<int64_t>(local_indices.begin(), local_indices.end()), torch::kInt64));
  const at::Tensor rows = all_gather_rows(local_rows);
  if (indices.size(0) != total)
    throw Error(kSubject, concat("gather_by_index: the ranks hold ", indices.size(0),
                                 " rows, expected ", total));
  std::vector<char> seen(static_cast<std::size_t>(total), 0);
  const auto* idx = indices.data_ptr<int64_t>();
  for (int64_t i = 0; i < total; ++i) {
    if (idx[i] < 0 || idx[i] >= total || seen[idx[i]]++)
      throw Error(kSubject, concat("gather_by_index: position ", idx[i], " is outside 0..",
                                   total - 1, " or held twice"));
  }
  auto shape = rows.sizes().vec();
  at::Tensor ordered = torch::empty(shape, rows.options());
  ordered.index_copy_(0, indices, rows);
  return ordered;
}

void DistributedGroup::barrier() {
  if (world_size() == 1) return;
  impl_->guarded("barrier", [&] { impl_->wait(impl_->pg->barrier()); });
}

void DistributedGroup::finish() {
  if (world_size() == 1) return;
  barrier();
  impl_->guarded("finishing", [&] {
    impl_->store->set(concat("done/", rank()), bytes("1"));
    if (rank() == 0 && !impl_->config.agent_store) {
      // The store lives in this process: keep it up until every rank has read its last key.
      std::vector<std::string> keys;
      for (int r = 0; r < world_size(); ++r)
        keys.push_back(concat("done/", r));
      impl_->store->wait(keys, impl_->config.timeout);
    }
  });
  impl_->stop_heartbeat(true);
}

void DistributedGroup::report_failure(const std::string& message) noexcept {
  if (world_size() == 1 || !impl_->store) return;
  try {
    impl_->store->set(concat("aborted/", rank()), bytes(message));
  } catch (...) {
  }
}

// ---------------------------------------------------------------------------------------------

GradientReducer::GradientReducer(DistributedGroup& group, std::vector<at::Tensor> parameters,
                                 int64_t bucket_bytes)
    : group_(group), parameters_(std::move(parameters)) {
  if (bucket_bytes <= 0) throw Error(kSubject, "bucket size must be positive");
  // Buckets in parameter order, one dtype each, closed when they would pass bucket_bytes.
  std::map<c10::ScalarType, std::size_t> open;  // dtype → index into buckets_
  std::map<c10::ScalarType, int64_t> filled;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const auto& p = parameters_[i];
    const auto type = p.scalar_type();
    const int64_t size = p.numel() * static_cast<int64_t>(p.element_size());
    gradient_bytes_ += size;
    auto it = open.find(type);
    if (it == open.end() || (filled[type] > 0 && filled[type] + size > bucket_bytes)) {
      buckets_.push_back({});
      open[type] = buckets_.size() - 1;
      filled[type] = 0;
    }
    Bucket& b = buckets_[open[type]];
    b.offsets.push_back(filled[type] / static_cast<int64_t>(p.element_size()));
    b.params.push_back(i);
    filled[type] += size;
  }
  for (auto& b : buckets_) {
    const auto& last = parameters_[b.params.back()];
    const int64_t n = b.offsets.back() + last.numel();
    b.buffer = torch::zeros({n}, last.options().requires_grad(false));
  }
}

GradientReducer::Totals GradientReducer::reduce(int64_t local_samples, double local_mean_loss) {
  const auto start = Clock::now();
  torch::NoGradGuard no_grad;
  const double weight = static_cast<double>(local_samples);
  // meta: [samples, loss sum, one "has a gradient" count per parameter], float64 so that
  // sample counts stay exact.
  at::Tensor meta = torch::zeros({2 + static_cast<int64_t>(parameters_.size())}, torch::kFloat64);
  auto* m = meta.data_ptr<double>();
  m[0] = weight;
  m[1] = local_samples > 0 ? local_mean_loss * weight : 0.0;
  for (std::size_t i = 0; i < parameters_.size(); ++i)
    m[2 + i] = parameters_[i].grad().defined() ? 1.0 : 0.0;
  for (auto& b : buckets_) {
    for (std::size_t k = 0; k < b.params.size(); ++k) {
      const auto& p = parameters_[b.params[k]];
      auto slot = b.buffer.narrow(0, b.offsets[k], p.numel());
      if (p.grad().defined() && local_samples > 0)
        slot.copy_(p.grad().reshape({-1}));
      else
        slot.zero_();
    }
    b.buffer.mul_(weight);
  }
  if (group_.world_size() > 1) {
    for (auto& b : buckets_)
      group_.all_reduce_sum(b.buffer);
    group_.all_reduce_sum(meta);
  }
  Totals totals;
  totals.samples = static_cast<int64_t>(m[0] + 0.5);
  if (totals.samples == 0) {
    seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
    return totals;
  }
  totals.mean_loss = m[1] / m[0];
  for (auto& b : buckets_) {
    b.buffer.div_(m[0]);  // only now that the sum over every rank is complete
    for (std::size_t k = 0; k < b.params.size(); ++k) {
      auto& p = parameters_[b.params[k]];
      if (m[2 + b.params[k]] == 0.0) continue;  // no rank has a gradient for it
      auto slot = b.buffer.narrow(0, b.offsets[k], p.numel()).view(p.sizes());
      if (p.grad().defined())
        p.mutable_grad().copy_(slot);
      else
        p.mutable_grad() = slot.clone();
    }
  }
  seconds_ += std::chrono::duration<double>(Clock::now() - start).count();
  return totals;
}

// ---------------------------------------------------------------------------------------------

std::vector<std::vector<std::size_t>> shard_batches(const std::vector<std::size_t>& epoch_order,
                                                    int64_t global_batch, int rank, int world_size,
                                                    bool drop_last) {
  if (global_batch < 1) throw Error(kSubject, "the global batch size must be at least 1");
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw Error(kSubject, concat("rank ", rank, " outside a world of ", world_size));
  if (global_batch < world_size)
    throw Error(kSubject,
                concat("the global batch (", global_batch,
                       ") must hold at least one sample per rank (", world_size, " ranks)"));
  std::vector<std::vector<std::size_t>> batches;
  const int64_t n = static_cast<int64_t>(epoch_order.size());
  for (int64_t start = 0; start < n; start += global_batch) {
    const int64_t size = std::min(global_batch, n - start);
    if (drop_last && size < global_batch) break;
    const int64_t from = start + size * rank / world_size;
    const int64_t to = start + size * (rank + 1) / world_size;
    batches.emplace_back(epoch_order.begin() + from, epoch_order.begin() + to);
  }
  return batches;
}

std::vector<int64_t> shard_indices(int64_t n, int rank, int world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw Error(kSubject, concat("rank ", rank, " outside a world of ", world_size));
  std::vector<int64_t> out;
  for (int64_t i = rank; i < n; i += world_size)
    out.push_back(i);
  return out;
}

}  // namespace attnscope::pipeline
