#include <sched.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include <ATen/Version.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/torch.h>

#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "runtime/precision.h"
#include "runtime/runtime.h"
#include "test_support.h"

namespace attnscope::runtime {
namespace {

// "Every core" is every core of this process's CPU affinity mask (taskset, a Slurm or container
// CPU set), counted here from the mask itself; a child narrowed to one core counts one.
TEST(Runtime, SetThreadsUsesEveryCoreByDefault) {
  cpu_set_t mask;
  CPU_ZERO(&mask);
  ASSERT_EQ(sched_getaffinity(0, sizeof(mask), &mask), 0);
  set_threads(0);
  EXPECT_EQ(threads(), CPU_COUNT(&mask));
  set_threads(1);
  EXPECT_EQ(threads(), 1);
  set_threads(0);
  int first = 0;
  while (!CPU_ISSET(first, &mask))
    ++first;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // only async-signal-safe work and the affinity calls before _exit
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    if (sched_setaffinity(0, sizeof(one), &one) != 0) _exit(100);
    _exit(available_cores());
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1);
}

// OpenBLAS runs LibTorch's matrix products on pthreads of its own, which at::set_num_threads
// does not limit: an explicit thread count must reach it too (asked back from OpenBLAS itself),
// or `attnscope --threads 1` would still use two cores for every matrix product.
TEST(Runtime, AnExplicitThreadCountAlsoLimitsOpenBlas) {
  auto a = torch::ones({64, 64});
  (void)torch::mm(a, a);  // BLAS certainly loaded
  if (!blas_info().is_openblas() || !blas_is_parallel())
    GTEST_SKIP() << "the BLAS is not a multi-threaded OpenBLAS";
  set_threads(0);
  const int own = blas_threads();  // OpenBLAS's own default, whatever ran before
  ASSERT_GE(own, 1);
  set_threads(1);
  EXPECT_EQ(blas_threads(), 1);
  set_threads(3);
  EXPECT_EQ(blas_threads(), 3);
  set_threads(0);  // every core for LibTorch, and OpenBLAS's own count back
  EXPECT_EQ(blas_threads(), own);
  EXPECT_EQ(threads(), available_cores());
}

// LibTorch's matrix products must not fall back to the reference BLAS (~30x slower). Which BLAS
// is right depends on the LibTorch, and its own build description says which (at::show_config,
// read here directly): Debian's calls the system libblas (BLAS_INFO=generic), which must be
// OpenBLAS (bootstrap.sh selects it); pytorch.org's links MKL in (BLAS_INFO=mkl).
TEST(Runtime, BlasIsOpenBlasOrTheMklLibTorchWasBuiltWith) {
  // Touch BLAS once so that it is certainly loaded.
  auto a = torch::ones({64, 64});
  auto c = torch::mm(a, a);
  EXPECT_FLOAT_EQ(c[0][0].item<float>(), 64.f);
  const auto info = blas_info();
  EXPECT_TRUE(info.is_optimised()) << "BLAS in use: " << info.name << " at " << info.path;
  const std::string config = at::show_config();
  if (config.find("BLAS_INFO=mkl") != std::string::npos) {
    EXPECT_EQ(info.name, "MKL");
  } else {
    EXPECT_TRUE(info.is_openblas()) << "BLAS in use: " << info.name << " at " << info.path;
    EXPECT_NE(info.config.find("OpenBLAS"), std::string::npos) << info.config;
  }
}

TEST(Runtime, TorchVersionMatchesHeader) {
  EXPECT_EQ(torch_version().rfind(std::to_string(TORCH_VERSION_MAJOR) + ".", 0), 0u);
}

// stop_on_signals, in a forked child (the handlers are process-wide): the first SIGTERM sets
// the flag and the process goes on; a copy within the repeat window is ignored; a signal after
// the window (here SIGINT) ends the process by that signal; a signal ignored before the call
// stays ignored. The child reports how far it got through its exit code.
int child_status(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  waitpid(pid, &status, 0);
  return status;
}

TEST(StopSignals, FirstSetsTheFlagACopyIsIgnoredALaterOneEndsTheProcess) {
  const int status = child_status([] {
    signal(SIGINT, SIG_DFL);  // whatever the test runner inherited
    signal(SIGTERM, SIG_DFL);
    runtime::stop_on_signals();
    if (runtime::stop_requested() != 0) return 10;
    raise(SIGTERM);
    if (runtime::stop_requested() != SIGTERM) return 11;
    raise(SIGTERM);  // a copy: ignored
    if (runtime::stop_requested() != SIGTERM) return 12;
    if (runtime::stopped_exit_status() != 143) return 13;
    std::this_thread::sleep_for(
        std::chrono::nanoseconds(runtime::kStopSignalRepeatWindowNs + 100000000));
    raise(SIGINT);  // a second request: default action
    return 14;      // not reached
  });
  ASSERT_TRUE(WIFSIGNALED(status)) << "exit code " << WEXITSTATUS(status);
  EXPECT_EQ(WTERMSIG(status), SIGINT);
}

// A signal before the work is done is answered by finish_stop_requests()'s line; one after it
// is told by the handler that there is nothing to stop; while keep_work_open(true) (demo's
// steps) a step's finish leaves the handler's "stopping after the current batch". Each exits as the
// work did (0 here).
TEST(StopSignals, ASignalAfterTheWorkIsDoneStopsNothingAndIsSaidSo) {
  test::TempDir dir;
  const std::string stopping =
      "\nattnscope: SIGTERM received: stopping after the current batch; another signal stops at "
      "once\n";
  for (const int when : {0, 1, 2}) {  // before finishing, after, after with the work kept open
    SCOPED_TRACE(when);
    const auto log = dir / ("log" + std::to_string(when) + ".txt");
    const int status = child_status([&] {
      signal(SIGTERM, SIG_DFL);
      std::FILE* f = std::fopen(log.c_str(), "w");
      if (!f || dup2(fileno(f), STDERR_FILENO) < 0) return 30;
      runtime::stop_on_signals();
      if (when == 0) raise(SIGTERM);
      runtime::keep_work_open(when == 2);
      const auto line = runtime::finish_stop_requests();
      if (when > 0) raise(SIGTERM);
      if (runtime::stop_requested() != SIGTERM) return 31;
      return line == (when == 0 ? "attnscope: the SIGTERM came too late to stop anything: the "
                                  "run ends as it would have without it"
                                : "")
                 ? 0
                 : 32;
    });
    ASSERT_TRUE(WIFEXITED(status)) << "signal " << WTERMSIG(status);
    EXPECT_EQ(WEXITSTATUS(status), 0);
    EXPECT_EQ(test::read_text(log),
              when == 1 ? "\nattnscope: SIGTERM received after the work was done: nothing to "
                          "stop; another signal stops at once\n"
                        : stopping);
  }
}

TEST(StopSignals, ASignalIgnoredBeforehandStaysIgnored) {
  const int status = child_status([] {
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_DFL);
    runtime::stop_on_signals();
    raise(SIGINT);
    if (runtime::stop_requested() != 0) return 20;
    raise(SIGTERM);
    return runtime::stop_requested() == SIGTERM ? 0 : 21;
  });
  ASSERT_TRUE(WIFEXITED(status)) << "signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// Oracle: LibTorch's own device count.
TEST(Runtime, DeviceNamesAndAvailabilityAreCheckedWithAClearMessage) {
  for (const char* good : {"cpu", "cuda", "cuda:0", "cuda:12"})
    EXPECT_TRUE(is_device_name(good)) << good;
  for (const char* bad : {"", "gpu", "CPU", "cuda:", "cuda:x", "cuda:-1", "cuda:0:1", "cudax",
                          "cuda:12345", " cuda", "cuda:01", "cuda:00"})
    EXPECT_FALSE(is_device_name(bad)) << bad;
  EXPECT_NO_THROW(check_device("cpu", "classify"));
  const auto message = [](const std::string& device) {
    try {
      check_device(device, "classify");
    } catch (const Error& e) {
      EXPECT_EQ(e.subject(), "classify");
      return e.message();
    }
    return std::string();
  };
  EXPECT_EQ(message("tpu"), "--device must be cpu, cuda or cuda:N, got 'tpu'");
  const int count = static_cast<int>(torch::cuda::device_count());
  if (count == 0) {
    for (const char* device : {"cuda", "cuda:0"})
      EXPECT_EQ(message(device).rfind(std::string("--device ") + device +
                                          ": no CUDA device is available to this process",
                                      0),
                0u)
          << message(device);
  } else {
    EXPECT_EQ(message("cuda"), "");
    EXPECT_EQ(message("cuda:" + std::to_string(count - 1)), "");
    EXPECT_EQ(message("cuda:" + std::to_string(count)),
              "--device cuda:" + std::to_string(count) + ": this process has " +
                  std::to_string(count) + " CUDA device(s), numbered from 0");
  }
}

// Closed form: plain "cuda" under a launcher is GPU local_rank mod count; what the user named,
// the CPU, no launcher (-1) and no GPU stay. use_device makes cuda:N LibTorch's current device
// (read back through c10's own device guard) and leaves the current device alone otherwise.
TEST(Runtime, EachProcessOfALauncherTakesItsOwnGpuAndCudaNBecomesCurrent) {
  EXPECT_EQ(device_of_local_rank("cuda", 0, 8), "cuda:0");
  EXPECT_EQ(device_of_local_rank("cuda", 5, 8), "cuda:5");
  EXPECT_EQ(device_of_local_rank("cuda", 9, 8), "cuda:1");
  EXPECT_EQ(device_of_local_rank("cuda", 3, 1), "cuda:0");
  EXPECT_EQ(device_of_local_rank("cuda", -1, 8), "cuda");
  EXPECT_EQ(device_of_local_rank("cuda", 3, 0), "cuda");
  EXPECT_EQ(device_of_local_rank("cuda:2", 5, 8), "cuda:2");
  EXPECT_EQ(device_of_local_rank("cpu", 5, 8), "cpu");
  EXPECT_NO_THROW(use_device("cpu"));
  EXPECT_NO_THROW(use_device("cuda"));  // no CUDA touched: a CPU-only LibTorch takes it too
  const int count = cuda_device_count();
  if (count > 0) {
    const auto* cuda = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    use_device("cuda:" + std::to_string(count - 1));
    EXPECT_EQ(cuda->getDevice().index(), count - 1);
    use_device("cuda:0");
    EXPECT_EQ(cuda->getDevice().index(), 0);
  }
}

// glibc's huge-page tunable: added for the program the launcher executes (after the user's
// own tunables, never over a hugetlb choice of theirs, not when ATTNSCOPE_HUGE_PAGES=0), and
// taken back out in the program so the processes it starts see the user's environment.
std::string env_or(const char* name, const char* missing) {
  const char* v = std::getenv(name);
  return v ? v : missing;
}

// The CPUID bits against the flags the kernel lists in /proc/cpuinfo, both ways: a listed
// avx512_bf16 or amx_bf16 means the CPU has it, and none listed means it has neither (asserted
// from Linux 5.16 on, the first to know amx_bf16; avx512_bf16 is known since 5.2).
TEST(Precision, NativeBf16DetectionAgreesWithProcCpuinfo) {
  std::ifstream in("/proc/cpuinfo");
  std::set<std::string> flags;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    for (std::string w; words >> w;)
      flags.insert(w);
    break;
  }
  if (flags.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
  const bool listed = flags.count("avx512_bf16") || flags.count("amx_bf16");
  if (listed) {
    EXPECT_TRUE(runtime::cpu_has_native_bf16());
  }
  utsname name{};
  ASSERT_EQ(uname(&name), 0);
  int major = 0, minor = 0;
  ASSERT_EQ(std::sscanf(name.release, "%d.%d", &major, &minor), 2) << name.release;
  if (major > 5 || (major == 5 && minor >= 16)) {
    EXPECT_EQ(runtime::cpu_has_native_bf16(), listed) << "kernel " << name.release;
  }
}

TEST(Precision, OnlyFp32AndBf16AreNames) {
  EXPECT_TRUE(runtime::is_precision_name("fp32"));
  EXPECT_TRUE(runtime::is_precision_name("bf16"));
  EXPECT_FALSE(runtime::is_precision_name("fp16"));
  EXPECT_FALSE(runtime::is_precision_name("BF16"));
  // A misspelt name is an error, not float32.
  EXPECT_THROW(runtime::AutocastScope("fp16", torch::kCPU), Error);
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
}

// Inside a bf16 scope matrix products come out in bfloat16; after it (also when an exception
// leaves it) in float32. An fp32 scope inside it computes in float32 and gives bf16 back when
// it ends; a bf16 scope inside it leaves autocast on when it ends.
TEST(Precision, AutocastScopeCastsMatrixProductsAndRestoresTheState) {
  const auto a = torch::randn({4, 4}), b = torch::randn({4, 4});
  ASSERT_FALSE(at::autocast::is_cpu_enabled());
  {
    runtime::AutocastScope bf16("bf16", torch::kCPU);
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
    {
      runtime::AutocastScope fp32("fp32", torch::kCPU);
      EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kFloat);
    }
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
    {
      runtime::AutocastScope inner("bf16", torch::kCPU);
      EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
    }
    EXPECT_TRUE(at::autocast::is_cpu_enabled());
    EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kBFloat16);
  }
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
  EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kFloat);
  try {
    runtime::AutocastScope bf16("bf16", torch::kCPU);
    throw std::runtime_error("inside");
  } catch (const std::runtime_error&) {
  }
  EXPECT_FALSE(at::autocast::is_cpu_enabled());
  EXPECT_EQ(torch::mm(a, b).scalar_type(), torch::kFloat);
  {
    runtime::AutocastScope fp32("fp32", torch::kCPU);
    EXPECT_FALSE(at::autocast::is_cpu_enabled());
  }
}

TEST(HugePages, TheTunableIsAddedAfterTheUsersOwnAndNeverOverTheirChoice) {
  unsetenv(kHugePagesEnv);
  unsetenv(kHeapHugePagesMarker);
  unsetenv("GLIBC_TUNABLES");
  EXPECT_TRUE(set_heap_huge_pages());
  EXPECT_EQ(env_or("GLIBC_TUNABLES", "(unset)"), "glibc.malloc.hugetlb=1");
  EXPECT_EQ(env_or(kHeapHugePagesMarker, "(unset)"), "1");
  EXPECT_FALSE(set_heap_huge_pages());  // once
  EXPECT_EQ(env_or("GLIBC_TUNABLES", "(unset)"), "glibc.malloc.hugetlb=1");

  unsetenv(kHeapHugePagesMarker);
  setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2", 1);
  EXPECT_TRUE(set_heap_huge_pages());
  EXPECT_EQ(env_or("GLIBC_TUNABLES", "(unset)"), "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1");

  unsetenv(kHeapHugePagesMarker);
  setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0", 1);
  EXPECT_FALSE(set_heap_huge_pages());
  EXPECT_EQ(env_or("GLIBC_TUNABLES", "(unset)"), "glibc.malloc.hugetlb=0");
  EXPECT_EQ(env_or(kHeapHugePagesMarker, "(unset)"), "(unset)");

  unsetenv("GLIBC_TUNABLES");
  setenv(kHugePagesEnv, "0", 1);
  EXPECT_FALSE(set_heap_huge_pages());
  EXPECT_EQ(env_or("GLIBC_TUNABLES", "(unset)"), "(unset)");
  unsetenv(kHugePagesEnv);
}

TEST(HugePages, TheProgramTakesTheTunableBackOutAndKeepsTheUsersOwn) {
  // ctest runs every test in a process of its own: take_back_heap_huge_pages() decides once.
  setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", 1);
  setenv(kHeapHugePagesMarker, "1", 1);
  EXPECT_TRUE(take_back_heap_huge_pages());
  EXPECT_TRUE(heap_huge_pages());
  EXPECT_EQ(env_or("GLIBC_TUNABLES", "(unset)"), "glibc.malloc.arena_max=2");
  // The marker goes too: an attnscope started from this environment adds its own again.
  EXPECT_EQ(env_or(kHeapHugePagesMarker, "(unset)"), "(unset)");
  EXPECT_TRUE(take_back_heap_huge_pages());  // idempotent
  EXPECT_EQ(env_or("GLIBC_TUNABLES", "(unset)"), "glibc.malloc.arena_max=2");
}

TEST(HugePages, AProgramStartedWithoutTheLauncherHasNothingToTakeBack) {
  setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 1);  // the user's own: no marker
  unsetenv(kHeapHugePagesMarker);
  EXPECT_FALSE(take_back_heap_huge_pages());
  EXPECT_FALSE(heap_huge_pages());
  EXPECT_EQ(env_or("GLIBC_TUNABLES", "(unset)"), "glibc.malloc.hugetlb=1");
}

// A benchmark re-executed by limit_idle_spinning starts with attnscope's tunable in
// GLIBC_TUNABLES: that is not the user's malloc setting, so the malloc settings still apply.
TEST(HugePages, AttnscopesOwnTunableIsNotTakenForTheUsersMallocSetting) {
  for (const char* name :
       {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_"})
    unsetenv(name);
  setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 1);
  setenv(kHeapHugePagesMarker, "1", 1);
  const auto policy = keep_freed_memory_for_reuse();
  EXPECT_EQ(policy.user, "");
  EXPECT_EQ(env_or("GLIBC_TUNABLES", "(unset)"), "(unset)");
  EXPECT_TRUE(heap_huge_pages());
#ifndef __SANITIZE_ADDRESS__
  EXPECT_TRUE(policy.set_by_attnscope);  // AddressSanitizer's mallopt does nothing
#endif
}

// mapping_flags reads /proc/self/smaps; the oracle is a mapping made here with madvise.
TEST(HugePages, MappingFlagsNameTheMappingThatHoldsAnAddress) {
  const std::size_t size = std::size_t{8} << 20;
  void* block = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(block, MAP_FAILED);
  const auto flags = mapping_flags(static_cast<char*>(block) + 4096);
  EXPECT_TRUE(has_mapping_flag(flags, "rd")) << flags;
  EXPECT_TRUE(has_mapping_flag(flags, "wr")) << flags;
  EXPECT_FALSE(has_mapping_flag(flags, "ex")) << flags;
  EXPECT_FALSE(has_mapping_flag(flags, "hg")) << flags;
  // Advised: "hg", where the kernel has transparent huge pages at all.
  if (::madvise(block, size, MADV_HUGEPAGE) == 0) {
    EXPECT_TRUE(has_mapping_flag(mapping_flags(static_cast<char*>(block) + size - 1), "hg"));
  }
  ::munmap(block, size);
  EXPECT_EQ(mapping_flags(block), "");  // no mapping holds it now
  EXPECT_FALSE(has_mapping_flag("rd wr hgx", "hg"));
  EXPECT_TRUE(has_mapping_flag("rd hg", "hg"));
  const auto mode = transparent_huge_pages_mode();
  EXPECT_TRUE(mode.empty() || mode == "always" || mode == "madvise" || mode == "never") << mode;
}

TEST(GpuRuntime, CudaDeviceCountPositiveWhenAvailable) {
  if (!cuda_available()) GTEST_SKIP() << "CUDA is not available";
  EXPECT_GT(cuda_device_count(), 0);
}

// An output folder that cannot be made is named as the user gave it, not by the probe's name
// inside its nearest existing ancestor (`/proc/self/x` for `--out /proc/self/newset`). The
// tests run as root, whom permissions do not stop; /proc takes no new files from anyone.
TEST(OutputFolder, OneThatCannotBeMadeIsNamedAsGiven) {
  const auto what = test::error_of([] { ensure_writable_output_folder("/proc/self/newset/run"); });
  EXPECT_EQ(what.rfind("/proc/self/newset/run: cannot create files in /proc/self (", 0), 0u)
      << what;
  test::TempDir dir;
  EXPECT_EQ(test::error_of([&] { ensure_writable_output_folder(dir / "new/run"); }), "");
}

}  // namespace
}  // namespace attnscope::runtime
