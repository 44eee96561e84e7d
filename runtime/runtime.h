#pragma once
// What LibTorch runs on: versions, intra-op threads, the BLAS library and CUDA devices.

#include <sched.h>
#include <signal.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <thread>

namespace attnscope::runtime {

/// LibTorch's version, e.g. "1.13.0".
std::string torch_version();

/// LibTorch's own build description (at::show_config(): compiler, BLAS_INFO, USE_MKL, ...).
std::string torch_build_config();

/// Cores this process may run on (its CPU affinity mask), at least 1. Inline, like
/// set_openmp_spin_limit: the `attnscope` launcher uses both without linking LibTorch.
inline int available_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

/// Sets LibTorch's intra-op thread count. n <= 0 means available_cores(): LibTorch's
/// default here is one thread, which leaves all other cores idle. n > 0 also sets OpenBLAS's
/// thread count (its matrix products run on its own pthreads, which at::set_num_threads does
/// not limit), so `attnscope --threads 1` keeps to one core; n <= 0 gives OpenBLAS back its
/// own default (every core, or OPENBLAS_NUM_THREADS, as read before the first call).
void set_threads(int n);

/// OpenBLAS's thread count (openblas_get_num_threads), 0 when the BLAS is not OpenBLAS.
int blas_threads();
/// Whether the BLAS runs matrix products on several threads: false for the reference BLAS and
/// for a single-threaded OpenBLAS build (libopenblas0-serial: openblas_get_parallel() == 0).
bool blas_is_parallel();

/// LibTorch's current intra-op thread count.
int threads();

struct BlasInfo {
  std::string name;    ///< "OpenBLAS", "reference BLAS", "MKL" or "unknown"
  std::string path;    ///< resolved path of the loaded libblas, empty if none was found
  std::string config;  ///< OpenBLAS's own build description, when it is OpenBLAS
  bool is_openblas() const { return name == "OpenBLAS"; }
  /// OpenBLAS, or the MKL a LibTorch from pytorch.org links in: not the slow reference BLAS.
  bool is_optimised() const { return name == "OpenBLAS" || name == "MKL"; }
};

/// The BLAS library LibTorch's matrix products go through: the libblas loaded into this process
/// (Debian's LibTorch, BLAS_INFO=generic), or MKL when LibTorch's build description says it was
/// built with it (BLAS_INFO=mkl, linked into libtorch_cpu; path and config stay empty).
BlasInfo blas_info();

/// How idle OpenMP workers wait, as libgomp read it from the environment at start-up, and
/// whether attnscope set it (limit_idle_spinning) rather than the user.
struct OpenMpPolicy {
  std::string wait_policy;  ///< OMP_WAIT_POLICY, empty when unset
  std::string spin_count;   ///< GOMP_SPINCOUNT, empty when unset (libgomp then spins ~300000 times)
  bool set_by_attnscope = false;
};
OpenMpPolicy openmp_policy();

/// The spin count limit_idle_spinning sets: idle workers spin this many times (tens of
/// microseconds), then sleep.
constexpr int kOpenMpSpinCount = 3000;

/// Set to 1 in the environment by whoever set GOMP_SPINCOUNT for attnscope (the `attnscope`
/// launcher, or limit_idle_spinning's re-execution): `info` then says attnscope set it, and
/// the program does not re-execute itself. Any value set by the user turns the setting off.
constexpr const char* kOpenMpMarker = "ATTNSCOPE_OPENMP_REEXEC";

/// The program the `attnscope` launcher (tools/attnscope/launcher) executes, beside it.
constexpr const char* kProgramFile = "attnscope.real";

/// Sets GOMP_SPINCOUNT=kOpenMpSpinCount and kOpenMpMarker=1 in this process's environment
/// when more than one intra-op thread will run and neither the user (OMP_WAIT_POLICY,
/// GOMP_SPINCOUNT, kOpenMpMarker) nor an earlier call set anything; true when it set them.
/// It takes effect for a program executed afterwards (libgomp reads it when loaded).
inline bool set_openmp_spin_limit(int intra_op_threads) {
  if (intra_op_threads <= 1) return false;
  for (const char* name : {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", kOpenMpMarker})
    if (std::getenv(name) != nullptr) return false;
  const std::string spins = std::to_string(kOpenMpSpinCount);
  if (setenv("GOMP_SPINCOUNT", spins.c_str(), 1) == 0 && setenv(kOpenMpMarker, "1", 1) == 0)
    return true;
  unsetenv("GOMP_SPINCOUNT");
  unsetenv(kOpenMpMarker);
  return false;
}

/// OpenBLAS runs a matrix product on its own pthreads; between products an idle one calls
/// sched_yield in a loop for 2^OPENBLAS_THREAD_TIMEOUT cycles (default 28: about 0.1 s) before
/// it sleeps. On 2 cores that yielding took the core attnscope's decoding workers and libgomp
/// need: ~1.5 s of system time in a 500-image classify, 8 % of the process's CPU (perf,
/// docs/performance.md). OpenBLAS reads the variable once, when it is loaded, so the `attnscope`
/// launcher sets OPENBLAS_THREAD_TIMEOUT=kBlasThreadTimeout (2^16 cycles: tens of
/// microseconds, like kOpenMpSpinCount) for the program it executes.
constexpr int kBlasThreadTimeout = 16;
/// Set to 1 by whoever set OPENBLAS_THREAD_TIMEOUT for attnscope; any value set by the user
/// turns the setting off.
constexpr const char* kBlasWaitMarker = "ATTNSCOPE_BLAS_WAIT";

/// Sets OPENBLAS_THREAD_TIMEOUT=kBlasThreadTimeout and kBlasWaitMarker=1 in this process's
/// environment when more than one intra-op thread will run (with one, set_threads gives
/// OpenBLAS one thread too: no idle threads) and neither the user nor an earlier call set
/// either; true when it set them. It takes effect for a program executed afterwards.
inline bool set_blas_wait_limit(int intra_op_threads) {
  if (intra_op_threads <= 1) return false;
  for (const char* name : {"OPENBLAS_THREAD_TIMEOUT", kBlasWaitMarker})
    if (std::getenv(name) != nullptr) return false;
  const std::string timeout = std::to_string(kBlasThreadTimeout);
  if (setenv("OPENBLAS_THREAD_TIMEOUT", timeout.c_str(), 1) == 0 &&
      setenv(kBlasWaitMarker, "1", 1) == 0)
    return true;
  unsetenv("OPENBLAS_THREAD_TIMEOUT");
  unsetenv(kBlasWaitMarker);
  return false;
}

/// How OpenBLAS's idle threads wait, as the loaded OpenBLAS read it at start-up.
struct BlasWaitPolicy {
  bool openblas = false;    ///< false: the BLAS is not OpenBLAS (nothing below applies)
  int timeout_setting = 0;  ///< OPENBLAS_THREAD_TIMEOUT as OpenBLAS read it, 0 when unset
  int yield_cycles_log2 = 28;  ///< what it uses: the setting clamped to 4..30, else 28
  bool set_by_attnscope = false;
};
BlasWaitPolicy blas_wait_policy();

/// Transparent huge pages. Memory the kernel maps in 4 KiB pages is faulted in one page at a
/// time; on a virtual machine each fault is an exit to the hypervisor (about 10 us on the
/// development VM), and a classify run faulted in ~150,000 pages, most of them in its first
/// batches. Linux backs memory with 2 MiB pages where THP is "always", or where it is
/// "madvise" (Debian's default) and the program asks for it (MADV_HUGEPAGE). attnscope asks
/// for it twice: the tensor cache advises its blocks of 2 MiB and more, and glibc's malloc is
/// given the tunable glibc.malloc.hugetlb=1 (glibc 2.35 and later; earlier ones ignore it),
/// which it reads once, at start-up, so the `attnscope` launcher sets it before executing the
/// program (docs/architecture.md, "Huge pages"). kHugePagesEnv=0 turns both off.
constexpr const char* kHugePagesEnv = "ATTNSCOPE_HUGE_PAGES";
inline bool huge_pages_wanted() {
  const char* value = std::getenv(kHugePagesEnv);
  return value == nullptr || std::string(value) != "0";
}
/// Set to 1 by whoever added glibc.malloc.hugetlb=1 to GLIBC_TUNABLES for attnscope.
constexpr const char* kHeapHugePagesMarker = "ATTNSCOPE_HEAP_HUGE_PAGES";
constexpr const char* kHeapHugePagesTunable = "glibc.malloc.hugetlb=1";

/// Adds kHeapHugePagesTunable to GLIBC_TUNABLES (and kHeapHugePagesMarker=1) for a program
/// executed afterwards, unless huge pages are turned off or the user's tunables already
/// choose glibc.malloc.hugetlb; true when it set them.
inline bool set_heap_huge_pages() {
  if (!huge_pages_wanted() || std::getenv(kHeapHugePagesMarker) != nullptr) return false;
  const char* current = std::getenv("GLIBC_TUNABLES");
  std::string tunables = current ? current : "";
  if (tunables.find("glibc.malloc.hugetlb") != std::string::npos) return false;
  tunables += (tunables.empty() ? "" : ":") + std::string(kHeapHugePagesTunable);
  if (setenv("GLIBC_TUNABLES", tunables.c_str(), 1) == 0 &&
      setenv(kHeapHugePagesMarker, "1", 1) == 0)
    return true;
  if (current != nullptr) {
    setenv("GLIBC_TUNABLES", current, 1);
  } else {
    unsetenv("GLIBC_TUNABLES");
  }
  unsetenv(kHeapHugePagesMarker);
  return false;
}

/// In the program: takes the tunable set_heap_huge_pages added (glibc has read it) back out
/// of GLIBC_TUNABLES, and the marker out of the environment, so that the processes attnscope
/// starts (Chromium) see the user's own environment and keep_freed_memory_for_reuse() sees
/// the user's tunables. Called first thing in main() (before any thread runs: setenv).
/// Returns whether glibc was given it (kHeapHugePagesMarker=1).
bool take_back_heap_huge_pages();
/// Whether this process started with glibc.malloc.hugetlb=1 from attnscope (taking it back
/// first, if that was not done yet).
bool heap_huge_pages();
/// The kernel's transparent huge page mode: "always", "madvise", "never", or "" when the file
/// /sys/kernel/mm/transparent_hugepage/enabled cannot be read.
std::string transparent_huge_pages_mode();
/// The kernel's flags for the mapping of this process that holds `address` (the VmFlags line
/// of /proc/self/smaps, e.g. "rd wr mr mw me ac hg"; "hg": advised for huge pages), or ""
/// when no mapping holds it or the file cannot be read.
std::string mapping_flags(const void* address);
/// Whether `flags` (mapping_flags) hold the flag `name`.
bool has_mapping_flag(const std::string& flags, const std::string& name);
/// Whether a mapping of malloc's main heap ("[heap]" in /proc/self/smaps) is advised for huge
/// pages. glibc advises the heap's extensions of 2 MiB and more, not the first stretch up to a
/// 2 MiB boundary, so the heap may be split into advised and unadvised mappings.
bool heap_has_huge_page_advice();

/// LibTorch runs element-wise kernels on OpenMP (libgomp) threads and matrix products on
/// OpenBLAS's own threads. By default an idle libgomp worker spins about 300000 times (a few
/// milliseconds) after every parallel region and takes the core OpenBLAS needs next: on 2 cores
/// a ViT-Tiny forward pass took 3-5x longer (docs/performance.md); an idle OpenBLAS thread
/// yields for ~0.1 s (set_blas_wait_limit). Both libraries read their settings once, before
/// main() runs, so when more than one intra-op thread will run and set_openmp_spin_limit or
/// set_blas_wait_limit sets something (each only where the user left it unset), this
/// re-executes the program with the same arguments (/proc/self/exe). It returns when nothing
/// had to be done, when the user chose the settings, or when the re-execution failed. The
/// `attnscope` launcher sets both before the program starts, so only a program run directly
/// re-executes itself.
void limit_idle_spinning(int intra_op_threads, char** argv);

/// glibc's malloc serves a block larger than its mmap threshold (dynamic, at most 32 MiB) with
/// mmap and returns it to the kernel on free; the next batch's tensor of the same size is then
/// mapped again and every page is faulted in and zero-filled by the kernel. attnscope allocates
/// the same large tensors batch after batch (activations of 50-200 MiB), so on 2 cores a
/// classify run spent ~11 % of its CPU time in page faults (perf, docs/performance.md).
/// keep_freed_memory_for_reuse() sets M_MMAP_THRESHOLD to kMallocMmapThreshold and
/// M_TRIM_THRESHOLD to kMallocTrimThreshold (freed blocks stay in the heap for the next
/// batch) and M_ARENA_MAX to the number of cores (at least 2; fewer heaps to keep), unless the user
/// chose malloc settings: MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_,
/// MALLOC_MMAP_MAX_ or a glibc.malloc tunable in GLIBC_TUNABLES.
constexpr std::size_t kMallocMmapThreshold = std::size_t{512} << 20;
constexpr std::size_t kMallocTrimThreshold = std::size_t{1} << 30;
struct MallocPolicy {
  std::string user;  ///< the user's setting that made attnscope leave malloc alone, or empty
  bool set_by_attnscope = false;
};
MallocPolicy keep_freed_memory_for_reuse();
/// What keep_freed_memory_for_reuse() did in this process.
MallocPolicy malloc_policy();
/// Whether malloc serves a block of `bytes` with mmap now (glibc's own count of mapped bytes,
/// mallinfo2().hblkhd, grows while it is held): the check `attnscope info` prints.
bool malloc_maps_blocks_of(std::size_t bytes);

/// Stopping at a safe point on SIGINT and SIGTERM (Ctrl-C; Slurm, torchrun and `kill` send
/// SIGTERM and wait a grace period before SIGKILL). stop_on_signals() installs handlers for
/// both: the first signal sets a flag that long commands (train, classify, seq2seq train)
/// poll between batches, and prints one line saying so. The commands then write nothing
/// partial, close what they wrote, say how to resume, and exit with 128 + the signal (130,
/// 143). Another signal kStopSignalRepeatWindowNs or more after the first ends the process at
/// once (the default action); one sooner is taken for a copy of the first (Slurm's and srun's,
/// or torchrun's agent's and the process group's) and ignored. A signal that was ignored when
/// the program started (nohup, `trap '' INT`) stays ignored.
void stop_on_signals();
constexpr int64_t kStopSignalRepeatWindowNs = 1000000000;  // 1 s
/// 0, or the signal (SIGINT or SIGTERM) that asked the running command to stop.
int stop_requested();
/// "SIGINT" or "SIGTERM": how the messages name a stop signal.
inline const char* stop_signal_name(int sig) {
  return sig == SIGINT ? "SIGINT" : "SIGTERM";
}
/// 128 + stop_requested(): the exit status of a command stopped by a signal, as a shell
/// reports a process that signal ended.
inline int stopped_exit_status() {
  return 128 + stop_requested();
}
/// For a command whose work is done, with nothing left that a stop would cut short (it may
/// still print its summary): from now on a first SIGINT / SIGTERM says "nothing to stop"
/// instead of "stopping after the current batch". Returns the line for a signal that came
/// before (during the last batch, or once no batch was left), which the handler's "stopping
/// after the current batch" would otherwise leave unanswered before an exit 0; "" when none
/// came.
std::string finish_stop_requests();
/// For a command that runs others in the same process (demo's steps): while `open`, their
/// finish_stop_requests() return their line but leave the handler's "stopping after the
/// current batch" (the outer command stops between its steps). It calls this with false
/// before its own finish_stop_requests().
void keep_work_open(bool open);

bool cuda_available();
int cuda_device_count();

/// Whether `device` names a device as `--device` takes them: "cpu", "cuda" or "cuda:N".
bool is_device_name(const std::string& device);
/// Checks a `--device` value before any work: throws attnscope::Error(subject, ...) for a name
/// is_device_name refuses, and for a CUDA device this process cannot use (a LibTorch built
/// without CUDA, no GPU, CUDA_VISIBLE_DEVICES, N past the last device).
void check_device(const std::string& device, const std::string& subject);

/// The device of one process among several a launcher started on a machine (torchrun's
/// LOCAL_RANK, Slurm's SLURM_LOCALID): plain "cuda" becomes "cuda:<local_rank mod
/// cuda_count>", so that 8 processes on a machine of 8 GPUs take one each rather than all
/// GPU 0. "cpu", "cuda:N" (the user chose) and a count of 0 leave `device` as it is.
std::string device_of_local_rank(const std::string& device, int local_rank, int cuda_count);

/// Makes "cuda:N" LibTorch's current CUDA device (after check_device). Tensors carry their
/// device, but work that is not tied to a tensor's device (a CUDA context, cuBLAS handles,
/// the default stream) goes to the current one: without this a process told cuda:1 also holds
/// a context, and its memory, on GPU 0. "cpu" and "cuda" (= the current device) change nothing.
void use_device(const std::string& device);

}  // namespace attnscope::runtime
