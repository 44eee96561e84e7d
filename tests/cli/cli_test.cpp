// End-to-end tests of the attnscope command: a real process, its output and exit status.

#include <gnu/libc-version.h>
#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "attnscope/version.h"
#include "runtime/runtime.h"

#include "test_support.h"

namespace attnscope {
namespace {

std::string exe() {
  return ATTNSCOPE_EXE;
}

TEST(Cli, VersionPrintsTheVersion) {
  const auto r = test::run_process(exe() + " --version");
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.output, std::string("attnscope ") + kVersion + "\n");
}

TEST(Cli, HelpListsCommands) {
  const auto r = test::run_process(exe() + " --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.output.find("info"), std::string::npos) << r.output;
}

// Every subcommand's --help shows its floating-point defaults as written ("0.1"), not as the
// 17-digit expansion Boost prints by default ("0.10000000000000001").
TEST(Cli, HelpShowsDefaultsAsWritten) {
  for (const char* command :
       {"seq2seq train", "seq2seq translate", "seq2seq evaluate", "train", "evaluate", "classify",
        "merge", "report", "demo", "synth", "cache", "preprocess", "split", "dist-check"}) {
    const auto r = test::run_process(exe() + " " + command + " --help");
    EXPECT_EQ(r.status, 0) << command << "\n" << r.output;
    EXPECT_EQ(r.output.find("00000000"), std::string::npos) << command << "\n" << r.output;
    EXPECT_EQ(r.output.find("99999999"), std::string::npos) << command << "\n" << r.output;
  }
  const auto seq = test::run_process(exe() + " seq2seq train --help");
  EXPECT_NE(seq.output.find("--dropout arg (=0.1)"), std::string::npos) << seq.output;
  EXPECT_NE(seq.output.find("--label-smoothing arg (=0.1)"), std::string::npos) << seq.output;
}

TEST(Cli, UnknownCommandIsAUsageError) {
  const auto r = test::run_process(exe() + " frobnicate");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.output.rfind("error: unknown command 'frobnicate'", 0), 0u) << r.output;
  EXPECT_NE(r.output.find("usage: attnscope"), std::string::npos) << r.output;
}

// The line, the usage line and where the options are listed: the whole option list (60-odd
// lines for classify) pushed the line off the screen.
TEST(Cli, BadFlagIsAUsageError) {
  const auto r = test::run_process(exe() + " info --no-such-flag");
  EXPECT_EQ(r.status, 2);
  EXPECT_EQ(r.output,
            "error: unrecognised option '--no-such-flag'\n\nusage: attnscope info\n"
            "(attnscope info --help lists every option)\n");
  const auto two = test::run_process(exe() + " seq2seq translate --beam-size x");
  EXPECT_EQ(two.status, 2);
  EXPECT_EQ(two.output.substr(two.output.find("\n\n")),
            "\n\nusage: attnscope seq2seq translate --model DIR/model.h5 [options] [TEXT...]\n"
            "(attnscope seq2seq translate --help lists every option)\n")
      << two.output;
  // A mistake before the seq2seq verb: the list of verbs, not a hint at options.
  const auto verb = test::run_process(exe() + " seq2seq frobnicate");
  EXPECT_EQ(verb.status, 2);
  EXPECT_NE(verb.output.find("\n  translate"), std::string::npos) << verb.output;
  EXPECT_EQ(verb.output.find("lists every option"), std::string::npos) << verb.output;
  const auto classify = test::run_process(exe() + " classify --batch-size 0x");
  EXPECT_EQ(classify.status, 2);
  EXPECT_LT(std::count(classify.output.begin(), classify.output.end(), '\n'), 8) << classify.output;
  EXPECT_NE(classify.output.find("(attnscope classify --help lists every option)\n"),
            std::string::npos)
      << classify.output;
}

// The global --threads after a command that has no --threads of its own: the line says where
// it goes (it said only "unrecognised option").
TEST(Cli, AGlobalOptionAfterTheCommandIsSaidToGoBeforeIt) {
  for (const char* args : {" info --threads 1", " info --threads=1", " presets --threads 2"}) {
    const auto r = test::run_process(exe() + args);
    EXPECT_EQ(r.status, 2) << args << r.output;
    EXPECT_NE(r.output.find(" (--threads is a global option here: give it before the command, as "
                            "in `attnscope --threads 2 info`)\n"),
              std::string::npos)
        << args << r.output;
  }
  const auto other = test::run_process(exe() + " info --no-such-flag");
  EXPECT_EQ(other.output.find("global option"), std::string::npos) << other.output;
}

TEST(Cli, BadThreadsValueIsAUsageError) {
  const auto r = test::run_process(exe() + " --threads two info");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("--threads expects"), std::string::npos) << r.output;
}

TEST(Cli, SubcommandHelp) {
  const auto r = test::run_process(exe() + " info --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.output.find("usage: attnscope info"), std::string::npos) << r.output;
}

TEST(Cli, InfoReportsThreadsOpenBlasAndVersions) {
  const auto r = test::run_process(exe() + " info");
  ASSERT_EQ(r.status, 0) << r.output;
  // The default is one thread per core this process may run on: its CPU affinity mask, which
  // `taskset -c 0` narrows to one (std::thread::hardware_concurrency counts every core).
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  const int cores = CPU_COUNT(&set);
  EXPECT_NE(r.output.find("threads        " + std::to_string(cores) + " intra-op (" +
                          std::to_string(cores) + " cores available)"),
            std::string::npos)
      << r.output;
  // OpenBLAS with Debian's LibTorch, MKL with pytorch.org's (tests/runtime checks which).
  EXPECT_TRUE(r.output.find("BLAS           OpenBLAS") != std::string::npos ||
              r.output.find("BLAS           MKL") != std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("warning:"), std::string::npos) << r.output;
  for (const char* key : {"LibTorch", "OpenCV", "HDF5", "Boost", "CUDA"})
    EXPECT_NE(r.output.find(key), std::string::npos) << key << "\n" << r.output;
}

// libgomp reads its settings before main(); with OMP_DISPLAY_ENV=verbose it prints what it made
// of them, so these check what the re-executed process really runs with. `user_env` is what
// the user set ("" = none of the OpenMP variables).
test::ProcessResult info_with_openmp_report(const std::string& user_env, int threads) {
  return test::run_process("env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u ATTNSCOPE_OPENMP_REEXEC " +
                           user_env + " OMP_DISPLAY_ENV=verbose " + exe() + " --threads " +
                           std::to_string(threads) + " info");
}

TEST(Cli, IdleOpenMpWorkersSpinBriefly) {
  const auto r = info_with_openmp_report("", 2);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("GOMP_SPINCOUNT = '3000'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("OpenMP wait    GOMP_SPINCOUNT=3000 (set by attnscope)"),
            std::string::npos)
      << r.output;
  // One thread: no OpenMP workers, nothing to change, no re-execution.
  const auto one = info_with_openmp_report("", 1);
  ASSERT_EQ(one.status, 0) << one.output;
  EXPECT_NE(one.output.find("GOMP_SPINCOUNT = '300000'"), std::string::npos) << one.output;
}

// The `attnscope` launcher sets GOMP_SPINCOUNT before LibTorch is loaded, so LibTorch is
// loaded once; attnscope.real run directly re-executes itself and loads it twice. The
// dynamic loader's own report (LD_DEBUG=files) counts the loads.
int libtorch_loads(const std::string& program) {
  const auto r = test::run_process(
      "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u ATTNSCOPE_OPENMP_REEXEC LD_DEBUG=files " +
      program + " --threads 2 info");
  EXPECT_EQ(r.status, 0) << r.output;
  int loads = 0;
  for (std::size_t at = 0; (at = r.output.find("calling init: ", at)) != std::string::npos; ++at) {
    const auto end = r.output.find('\n', at);
    if (r.output.substr(at, end - at).find("/libtorch_cpu.so") != std::string::npos) ++loads;
  }
  return loads;
}

TEST(Cli, TheLauncherLoadsLibTorchOnceAndTheProgramAloneTwice) {
  EXPECT_EQ(libtorch_loads(exe()), 1);
  const auto real = (std::filesystem::path(exe()).parent_path() / "attnscope.real").string();
  ASSERT_TRUE(std::filesystem::exists(real)) << real;
  EXPECT_EQ(libtorch_loads(real), 2);
  // The program run directly still ends up with the setting (its fallback).
  const auto r = test::run_process("env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u "
                                   "ATTNSCOPE_OPENMP_REEXEC OMP_DISPLAY_ENV=verbose " +
                                   real + " --threads 2 info");
  EXPECT_NE(r.output.find("GOMP_SPINCOUNT = '3000'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("OpenMP wait    GOMP_SPINCOUNT=3000 (set by attnscope)"),
            std::string::npos)
      << r.output;
}

// OpenBLAS reports what it read from OPENBLAS_THREAD_TIMEOUT when it was loaded
// (openblas_thread_timeout), and `info` prints that: the launcher's setting reached it.
test::ProcessResult info_with_blas_env(const std::string& program, const std::string& user_env,
                                       int threads) {
  return test::run_process("env -u OPENBLAS_THREAD_TIMEOUT -u ATTNSCOPE_BLAS_WAIT " + user_env +
                           " " + program + " --threads " + std::to_string(threads) + " info");
}

TEST(Cli, IdleBlasThreadsSleepSoon) {
  const auto real = (std::filesystem::path(exe()).parent_path() / "attnscope.real").string();
  const std::string wait = "BLAS wait      idle threads yield 2^";
  struct Case {
    std::string program, user_env;
    int threads;
    std::string line;
  };
  for (const Case& c : std::vector<Case>{
           // The launcher sets it; OpenBLAS reports what it read.
           {exe(), "", 2, wait + "16 cycles, then sleep (OPENBLAS_THREAD_TIMEOUT=16, set by attnscope)\n"},
           // attnscope.real run directly re-executes itself with it.
           {real, "GOMP_SPINCOUNT=3000", 2,
            wait + "16 cycles, then sleep (OPENBLAS_THREAD_TIMEOUT=16, set by attnscope)\n"},
           // The user's value is kept (and clamped by OpenBLAS to 4..30, as it says).
           {exe(), "OPENBLAS_THREAD_TIMEOUT=2", 2,
            wait + "4 cycles, then sleep (OPENBLAS_THREAD_TIMEOUT=2)\n"},
           // One thread: OpenBLAS runs one too, nothing waits, nothing is set.
           {exe(), "", 1, wait + "28 cycles, then sleep (OpenBLAS default)\n"}}) {
    const auto r = info_with_blas_env(c.program, c.user_env, c.threads);
    ASSERT_EQ(r.status, 0) << r.output;
    if (r.output.find("BLAS           OpenBLAS") == std::string::npos)
      GTEST_SKIP() << "the BLAS is not OpenBLAS:\n" << r.output;
    EXPECT_NE(r.output.find(c.line), std::string::npos) << c.line << r.output;
  }
}

TEST(Cli, OpenMpSettingsOfTheUserAreKept) {
  const auto r = info_with_openmp_report("OMP_WAIT_POLICY=PASSIVE", 2);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("GOMP_SPINCOUNT = '0'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("OpenMP wait    OMP_WAIT_POLICY=PASSIVE\n"), std::string::npos)
      << r.output;
}

// attnscope keeps freed large blocks in the heap (no page faults on every batch's tensors);
// glibc's own accounting (mallinfo2) says where a 64 MiB block comes from. A user's malloc
// setting is kept, and then glibc maps such a block again.
TEST(Cli, LargeBlocksStayInTheHeapUnlessTheUserChoseMallocSettings) {
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "AddressSanitizer's allocator replaces glibc's malloc";
#endif
  auto r = test::run_process(exe() + " info");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("malloc         freed blocks up to 512 MiB stay in the heap for reuse "
                          "(set by attnscope); a 64 MiB block is from the heap\n"),
            std::string::npos)
      << r.output;
  r = test::run_process("MALLOC_MMAP_THRESHOLD_=1048576 " + exe() + " info");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("malloc         MALLOC_MMAP_THRESHOLD_=1048576; a 64 MiB block is mapped\n"),
            std::string::npos)
      << r.output;
}

TEST(Cli, TensorsComeFromTheTensorCacheUnlessTheEnvironmentSaysZero) {
  auto r = test::run_process(exe() + " info");
  ASSERT_EQ(r.status, 0) << r.output;
#ifdef __SANITIZE_ADDRESS__
  EXPECT_NE(r.output.find("tensor memory  LibTorch's allocator\n"), std::string::npos) << r.output;
#else
  EXPECT_NE(r.output.find("tensor memory  blocks of 256 KiB and more kept for reuse by size "
                          "(attnscope's tensor cache)\n"),
            std::string::npos)
      << r.output;
#endif
  r = test::run_process("ATTNSCOPE_TENSOR_CACHE=0 " + exe() + " info");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("tensor memory  LibTorch's allocator\n"), std::string::npos) << r.output;
}

// Huge pages (runtime.h): the launcher gives glibc its huge-page tunable, the tensor cache
// advises its large blocks; `info` reads the kernel's flags for malloc's heap. Where THP is
// "madvise" (Debian's default) the heap is advised only through the tunable.
TEST(Cli, HugePagesAreAdvisedUnlessTheEnvironmentSaysZero) {
  const std::string clean =
      "env -u GLIBC_TUNABLES -u ATTNSCOPE_HEAP_HUGE_PAGES -u ATTNSCOPE_HUGE_PAGES ";
  const auto thp = runtime::transparent_huge_pages_mode();
  auto r = test::run_process(clean + exe() + " info");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string line = "huge pages     THP " + (thp.empty() ? std::string("unknown") : thp);
  EXPECT_NE(r.output.find(line + "; malloc's heap "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(" (glibc.malloc.hugetlb=1, set by attnscope)"), std::string::npos)
      << r.output;
#ifndef __SANITIZE_ADDRESS__
  EXPECT_NE(r.output.find("; tensor blocks of 2 MiB and more advised\n"), std::string::npos)
      << r.output;
  // glibc reads glibc.malloc.hugetlb from 2.35 on and advises only in THP's madvise mode.
  int major = 0, minor = 0;
  const bool glibc_has_it = std::sscanf(gnu_get_libc_version(), "%d.%d", &major, &minor) == 2 &&
                            (major > 2 || (major == 2 && minor >= 35));
  if (thp == "madvise" && glibc_has_it) {
    EXPECT_NE(r.output.find(line + "; malloc's heap advised (glibc.malloc.hugetlb=1, set by "
                                   "attnscope)"),
              std::string::npos)
        << r.output;
  }
#endif
  // The setting is the launcher's: the program's own malloc line still says attnscope set it.
#ifndef __SANITIZE_ADDRESS__
  EXPECT_NE(r.output.find("malloc         freed blocks up to 512 MiB stay in the heap"),
            std::string::npos)
      << r.output;
#endif
  r = test::run_process(clean + "ATTNSCOPE_HUGE_PAGES=0 " + exe() + " info");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(line + "; malloc's heap not advised; tensor blocks of 2 MiB and more "
                                 "not advised\n"),
            std::string::npos)
      << r.output;
  // A user's own hugetlb choice is left as it is, and counts as their malloc setting.
  r = test::run_process(clean + "GLIBC_TUNABLES=glibc.malloc.hugetlb=0 " + exe() + " info");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(line + "; malloc's heap not advised; tensor blocks"), std::string::npos)
      << r.output;
#ifndef __SANITIZE_ADDRESS__
  EXPECT_NE(r.output.find("malloc         GLIBC_TUNABLES=glibc.malloc.hugetlb=0;"),
            std::string::npos)
      << r.output;
#endif
}

// --device is checked before anything is read or created: a name that is not a device is a
// usage error; a CUDA device this process lacks (cuda:999 on any machine) one line naming it,
// never LibTorch's C++ stack.
TEST(Cli, AnUnusableDeviceIsRefusedBeforeAnyWork) {
  test::TempDir dir;
  const auto out = dir / "out";
  for (const std::string& command : std::vector<std::string>{
           "classify --model " + (dir / "missing.h5") + " --input " + (dir / "x.jpg"),
           "train --model attn_small --data " + (dir / "missing.csv"),
           "evaluate --model " + (dir / "missing.h5") + " --data " + (dir / "missing.csv")}) {
    const auto bad = test::run_process(exe() + " " + command + " --out " + out + " --device tpu");
    EXPECT_EQ(bad.status, 2) << command << "\n" << bad.output;
    EXPECT_NE(bad.output.find("error: --device must be cpu, cuda or cuda:N"), std::string::npos)
        << bad.output;
    const auto r =
        test::run_process(exe() + " " + command + " --out " + out + " --device cuda:999");
    EXPECT_EQ(r.status, 1) << command << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
    EXPECT_NE(r.output.find(": --device cuda:999: "), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("Exception raised from"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("frame #"), std::string::npos) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_FALSE(std::filesystem::exists(out)) << command;
  }
}

TEST(Cli, ThreadsOptionOverridesTheDefault) {
  const auto r = test::run_process(exe() + " --threads 1 info");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("threads        1 intra-op"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace attnscope
