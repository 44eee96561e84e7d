#include "runtime/runtime.h"

#include <dlfcn.h>
#include <link.h>
#include <malloc.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <ATen/Version.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/torch.h>
#include <torch/version.h>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"

namespace attnscope::runtime {

std::string torch_version() {
  return TORCH_VERSION;
}

std::string torch_build_config() {
  return at::show_config();
}

void set_threads(int n) {
  torch::set_num_threads(n > 0 ? n : available_cores());
  // OpenBLAS (Debian's libblas, loaded with LibTorch) exports this; the reference BLAS not.
  // Its own count (every core, or OPENBLAS_NUM_THREADS) is read before the first change, so
  // that n <= 0 gives it back.
  using SetThreads = void (*)(int);
  static const int blas_default = blas_threads();
  void* symbol = dlsym(RTLD_DEFAULT, "openblas_set_num_threads");
  if (symbol != nullptr && blas_default > 0)
    reinterpret_cast<SetThreads>(symbol)(n > 0 ? n : blas_default);
}

int blas_threads() {
  using GetThreads = int (*)();
  void* symbol = dlsym(RTLD_DEFAULT, "openblas_get_num_threads");
  return symbol ? reinterpret_cast<GetThreads>(symbol)() : 0;
}

bool blas_is_parallel() {
  using GetParallel = int (*)();
  void* symbol = dlsym(RTLD_DEFAULT, "openblas_get_parallel");
  return symbol != nullptr && reinterpret_cast<GetParallel>(symbol)() != 0;
}

int threads() {
  return torch::get_num_threads();
}

namespace {

int collect_object(dl_phdr_info* info, size_t, void* data) {
  auto* names = static_cast<std::vector<std::string>*>(data);
  if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0')
    names->emplace_back(info->dlpi_name);
  return 0;
}

}  // namespace

OpenMpPolicy openmp_policy() {
  OpenMpPolicy policy;
  if (const char* value = std::getenv("OMP_WAIT_POLICY")) policy.wait_policy = value;
  if (const char* value = std::getenv("GOMP_SPINCOUNT")) policy.spin_count = value;
  const char* marker = std::getenv(kOpenMpMarker);
  policy.set_by_attnscope = marker != nullptr && std::string(marker) == "1";
  return policy;
}

namespace {

// Takes what set_heap_huge_pages() added back out of the environment: kHeapHugePagesTunable,
// last in GLIBC_TUNABLES, and kHeapHugePagesMarker.
void remove_heap_huge_pages() {
  if (const char* current = std::getenv("GLIBC_TUNABLES")) {
    std::string tunables = current;
    const std::string own = kHeapHugePagesTunable;
    if (tunables == own) {
      unsetenv("GLIBC_TUNABLES");
    } else if (tunables.size() > own.size() &&
               tunables.compare(tunables.size() - own.size() - 1, std::string::npos,
                                ":" + own) == 0) {
      tunables.resize(tunables.size() - own.size() - 1);
      setenv("GLIBC_TUNABLES", tunables.c_str(), 1);
    }
  }
  unsetenv(kHeapHugePagesMarker);  // an attnscope started from here adds its own again
}

}  // namespace

bool take_back_heap_huge_pages() {
  static const bool given = [] {
    const char* marker = std::getenv(kHeapHugePagesMarker);
    if (marker == nullptr || std::string(marker) != "1") return false;
    remove_heap_huge_pages();
    return true;
  }();
  return given;
}

bool heap_huge_pages() {
  return take_back_heap_huge_pages();
}

void limit_idle_spinning(int intra_op_threads, char** argv) {
  if (argv == nullptr || argv[0] == nullptr) return;
  const bool openmp = set_openmp_spin_limit(intra_op_threads);
  const bool blas = set_blas_wait_limit(intra_op_threads);
  if (!openmp && !blas) return;
  // Re-executed anyway: glibc's huge-page tunable goes with it, as the launcher gives it.
  const bool heap = set_heap_huge_pages();
  execv("/proc/self/exe", argv);
  // Still here: the re-execution failed; go on with the libraries' defaults.
  if (openmp) {
    unsetenv("GOMP_SPINCOUNT");
    unsetenv(kOpenMpMarker);
  }
  if (blas) {
    unsetenv("OPENBLAS_THREAD_TIMEOUT");
    unsetenv(kBlasWaitMarker);
  }
  if (heap) remove_heap_huge_pages();
}

BlasWaitPolicy blas_wait_policy() {
  BlasWaitPolicy policy;
  // OpenBLAS exports what it read from OPENBLAS_THREAD_TIMEOUT when it was loaded.
  using Timeout = int (*)();
  void* symbol = dlsym(RTLD_DEFAULT, "openblas_thread_timeout");
  if (symbol == nullptr || blas_threads() <= 0) return policy;
  policy.openblas = true;
  policy.timeout_setting = reinterpret_cast<Timeout>(symbol)();
  if (policy.timeout_setting > 0)
    policy.yield_cycles_log2 = std::clamp(policy.timeout_setting, 4, 30);
  const char* marker = std::getenv(kBlasWaitMarker);
  policy.set_by_attnscope = marker != nullptr && std::string(marker) == "1";
  return policy;
}

BlasInfo blas_info() {
  BlasInfo info{"unknown", "", ""};
  std::vector<std::string> objects;
  dl_iterate_phdr(collect_object, &objects);
  for (const auto& object : objects) {
    const auto file = std::filesystem::path(object).filename().string();
    if (file.rfind("libblas.so", 0) == 0 || file.rfind("libopenblas", 0) == 0) {
      std::error_code ec;
      auto resolved = std::filesystem::canonical(object, ec);
      info.path = ec ? object : resolved.string();
      if (file.rfind("libblas.so", 0) == 0) break;  // the one LibTorch links: prefer it
    }
  }
  // OpenBLAS exports openblas_get_config; the reference BLAS does not.
  using GetConfig = char* (*)();
  void* handle = info.path.empty() ? nullptr : dlopen(info.path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  void* symbol = handle ? dlsym(handle, "openblas_get_config") : nullptr;
  if (symbol != nullptr) {
    info.name = "OpenBLAS";
    info.config = reinterpret_cast<GetConfig>(symbol)();
  } else if (!info.path.empty()) {
    info.name = "reference BLAS";
  } else if (torch_build_config().find("BLAS_INFO=mkl") != std::string::npos) {
    info.name = "MKL";
  }
  if (handle) dlclose(handle);
  return info;
}

namespace {

// Calls visit(start, end, header line, flags) for each mapping in /proc/self/smaps until it
// returns true.
template <typename Visit>
void for_each_mapping(Visit visit) {
  std::ifstream in("/proc/self/smaps");
  std::string line, header_line;
  std::uintptr_t start = 0, end = 0;
  while (std::getline(in, line)) {
    // A mapping starts with "start-end perms offset dev inode [path]" (hexadecimal range);
    // its fields follow, VmFlags last.
    std::uintptr_t a = 0, b = 0;
    char dash = 0;
    std::istringstream header(line);
    if (header >> std::hex >> a >> dash >> b && dash == '-') {
      start = a;
      end = b;
      header_line = line;
      continue;
    }
    if (line.rfind("VmFlags:", 0) == 0) {
      std::string flags = line.substr(8);
      const auto first = flags.find_first_not_of(' ');
      const auto last = flags.find_last_not_of(' ');
      flags = first == std::string::npos ? "" : flags.substr(first, last - first + 1);
      if (visit(start, end, header_line, flags)) return;
    }
  }
}

}  // namespace

std::string mapping_flags(const void* address) {
  const auto at = reinterpret_cast<std::uintptr_t>(address);
  std::string found;
  for_each_mapping(
      [&](std::uintptr_t start, std::uintptr_t end, const std::string&, const std::string& flags) {
        if (at < start || at >= end) return false;
        found = flags;
        return true;
      });
  return found;
}

bool heap_has_huge_page_advice() {
  bool advised = false;
  for_each_mapping(
      [&](std::uintptr_t, std::uintptr_t, const std::string& header, const std::string& flags) {
        const auto name = header.find("[heap]");
        advised =
            name != std::string::npos && name + 6 == header.size() && has_mapping_flag(flags, "hg");
        return advised;
      });
  return advised;
}

bool has_mapping_flag(const std::string& flags, const std::string& name) {
  std::istringstream words(flags);
  std::string word;
  while (words >> word)
    if (word == name) return true;
  return false;
}

std::string transparent_huge_pages_mode() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  if (!std::getline(in, line)) return "";
  // "always [madvise] never": the chosen one is in brackets.
  const auto open = line.find('['), close = line.find(']');
  if (open == std::string::npos || close == std::string::npos || close < open) return "";
  return line.substr(open + 1, close - open - 1);
}

namespace {
MallocPolicy g_malloc_policy;
}  // namespace

MallocPolicy keep_freed_memory_for_reuse() {
  // A re-executed benchmark or test (limit_idle_spinning) has not taken attnscope's own
  // tunable back yet: it is not the user's malloc setting.
  take_back_heap_huge_pages();
  for (const char* name :
       {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"})
    if (const char* value = std::getenv(name)) {
      g_malloc_policy.user = std::string(name) + "=" + value;
      return g_malloc_policy;
    }
  if (const char* tunables = std::getenv("GLIBC_TUNABLES"))
    if (std::string(tunables).find("glibc.malloc.") != std::string::npos) {
      g_malloc_policy.user = std::string("GLIBC_TUNABLES=") + tunables;
      return g_malloc_policy;
    }
  // One arena per core instead of glibc's eight: blocks kept for reuse are then spread over
  // fewer heaps (attn_small classify: peak RSS 1128 -> 1024 MiB, no slower).
  g_malloc_policy.set_by_attnscope =
      mallopt(M_MMAP_THRESHOLD, static_cast<int>(kMallocMmapThreshold)) == 1 &&
      mallopt(M_TRIM_THRESHOLD, static_cast<int>(kMallocTrimThreshold)) == 1 &&
      mallopt(M_ARENA_MAX, std::max(2, available_cores())) == 1;
  return g_malloc_policy;
}

namespace {

std::atomic<int> g_stop_signal{0};
std::atomic<int64_t> g_first_stop_ns{0};  // CLOCK_MONOTONIC of the first signal, 0 before it
std::atomic<bool> g_work_done{false};     // finish_stop_requests() was called
std::atomic<bool> g_work_kept_open{false};  // keep_work_open(true): an outer command goes on
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<int64_t>::is_always_lock_free &&
                  std::atomic<bool>::is_always_lock_free,
              "the signal handler needs lock-free atomics");

int64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

// Async-signal-safe: atomics, clock_gettime, write, sigaction and raise; errno restored.
void on_stop_signal(int sig) {
  const int saved = errno;
  const int64_t now = std::max<int64_t>(monotonic_ns(), 1);
  int64_t first = 0;
  if (g_first_stop_ns.compare_exchange_strong(first, now)) {
    // Stored before g_work_done is read, as finish_stop_requests() stores that before it
    // reads this: one of the two sees the other's store, so a signal is never left with only
    // "stopping after the current batch" said of a run that then ends complete.
    g_stop_signal.store(sig);
    const bool done = g_work_done.load();
    const char* text =
        done
            ? (sig == SIGINT ? "\nattnscope: interrupted (SIGINT) after the work was done: nothing "
                               "to stop; Ctrl-C again stops at once\n"
                             : "\nattnscope: SIGTERM received after the work was done: nothing to "
                               "stop; another signal stops at once\n")
        : sig == SIGINT ? "\nattnscope: interrupted (SIGINT): stopping after the current batch; "
                          "Ctrl-C again stops at once\n"
                        : "\nattnscope: SIGTERM received: stopping after the current batch; "
                          "another signal stops at once\n";
    const ssize_t written = ::write(STDERR_FILENO, text, std::strlen(text));
    (void)written;
  } else if (now - first >= kStopSignalRepeatWindowNs) {
    // A second request: both signals get their default action back, and this one, blocked
    // while its handler runs, ends the process as soon as the handler returns.
    struct sigaction fallback {};
    fallback.sa_handler = SIG_DFL;
    sigemptyset(&fallback.sa_mask);
    ::sigaction(SIGINT, &fallback, nullptr);
    ::sigaction(SIGTERM, &fallback, nullptr);
    remove_live_temporaries();  // AtomicFile's, which no destructor removes now
    ::raise(sig);
  }
  // Otherwise a copy of the first request (Slurm's and srun's, or torchrun's agent's and the
  // process group's, arrive together): ignored.
  errno = saved;
}

}  // namespace

void stop_on_signals() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  // SA_RESTART: a thread inside read/write when the signal lands carries on (HDF5, the loader
  // and LibTorch do not expect EINTR).
  action.sa_flags = SA_RESTART;
  for (const int sig : {SIGINT, SIGTERM}) {
    struct sigaction old {};
    // A signal the parent ignores (nohup, `trap '' INT`) stays ignored, as the shell would.
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    ::sigaction(sig, &action, nullptr);
  }
}

int stop_requested() {
  return g_stop_signal.load();
}

void keep_work_open(bool open) {
  g_work_kept_open.store(open);
}

std::string finish_stop_requests() {
  if (!g_work_kept_open.load()) g_work_done.store(true);
  const int sig = g_stop_signal.load();
  if (sig == 0) return "";
  return std::string("attnscope: the ") + stop_signal_name(sig) +
         " came too late to stop anything: the run ends as it would have without it";
}

MallocPolicy malloc_policy() {
  return g_malloc_policy;
}

bool malloc_maps_blocks_of(std::size_t bytes) {
  const auto before = mallinfo2().hblkhd;
  void* volatile block = std::malloc(bytes);
  const auto during = mallinfo2().hblkhd;
  std::free(block);
  return during > before;
}

bool cuda_available() {
  return torch::cuda::is_available();
}

int cuda_device_count() {
  return static_cast<int>(torch::cuda::device_count());
}

bool is_device_name(const std::string& device) {
  if (device == "cpu" || device == "cuda") return true;
  const std::string digits = device.size() > 5 ? device.substr(5) : std::string();
  // LibTorch's own parser (c10::Device) refuses "cuda:01": so does this.
  return device.rfind("cuda:", 0) == 0 && !digits.empty() && digits.size() <= 4 &&
         (digits.size() == 1 || digits[0] != '0') &&
         std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; });
}

void check_device(const std::string& device, const std::string& subject) {
  check(is_device_name(device), subject, "--device must be cpu, cuda or cuda:N, got '", device,
        "'");
  if (device == "cpu") return;
  const int count = cuda_device_count();
  check(count > 0, subject, "--device ", device,
        ": no CUDA device is available to this process (a LibTorch built without CUDA, no GPU, "
        "or CUDA_VISIBLE_DEVICES hides them)");
  check(device == "cuda" || std::stoi(device.substr(5)) < count, subject, "--device ", device,
        ": this process has ", count, " CUDA device(s), numbered from 0");
}

std::string device_of_local_rank(const std::string& device, int local_rank, int cuda_count) {
  if (device != "cuda" || cuda_count <= 0 || local_rank < 0) return device;
  return "cuda:" + std::to_string(local_rank % cuda_count);
}

void use_device(const std::string& device) {
  if (device.rfind("cuda:", 0) != 0) return;
  const c10::Device d(device);
  c10::impl::getDeviceGuardImpl(d.type())->setDevice(d);
}

}  // namespace attnscope::runtime
