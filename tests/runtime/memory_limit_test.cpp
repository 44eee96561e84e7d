// Where the memory limit comes from (runtime/memory_limit.h): sizes as the environment gives
// them, and cgroup files laid out as the kernel lays them out (v1 and v2), in a temporary tree.
#include "runtime/memory_limit.h"

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "test_support.h"

namespace attnscope::runtime {
namespace {

constexpr std::size_t kKiB = 1024, kMiB = kKiB << 10, kGiB = kMiB << 10;

TEST(MemoryLimit, SizesAreBytesOrBinaryUnits) {
  EXPECT_EQ(parse_memory_size("1073741824"), kGiB);
  EXPECT_EQ(parse_memory_size("8G"), 8 * kGiB);
  EXPECT_EQ(parse_memory_size("8g"), 8 * kGiB);
  EXPECT_EQ(parse_memory_size("512M"), 512 * kMiB);
  EXPECT_EQ(parse_memory_size("512MiB"), 512 * kMiB);
  EXPECT_EQ(parse_memory_size("64K"), 64 * kKiB);
  EXPECT_EQ(parse_memory_size("2T"), 2048 * kGiB);
  EXPECT_EQ(parse_memory_size("1.5G"), kGiB + 512 * kMiB);
  EXPECT_EQ(parse_memory_size("off"), 0u);
  EXPECT_EQ(parse_memory_size("0"), 0u);
  for (const char* bad : {"", "G", "8X", "8GB", "-1G", "1.5", "1..5G", "8 G", "1e9", "0.1",
                          "99999999999T", "nan", "0x10"})
    EXPECT_FALSE(parse_memory_size(bad).has_value()) << bad;
}

// Sizes in messages: a limit below 1 MiB (ATTNSCOPE_MEMORY_LIMIT=1K) read "0 MiB".
TEST(MemoryLimit, SizesInMessagesKeepTheirUnitBelowOneMebibyte) {
  EXPECT_EQ(memory_size_text(kKiB), "1 KiB");
  EXPECT_EQ(memory_size_text(kMiB - 1), "1023 KiB");
  EXPECT_EQ(memory_size_text(kMiB - 1, true), "1 MiB");
  EXPECT_EQ(memory_size_text(kMiB - kKiB, true), "1023 KiB");
  EXPECT_EQ(memory_size_text(1023, true), "1023 bytes");
  EXPECT_EQ(memory_size_text(kKiB + 1, true), "2 KiB");
  EXPECT_EQ(memory_size_text(kMiB), "1 MiB");
  EXPECT_EQ(memory_size_text(kMiB + 1), "1 MiB");
  EXPECT_EQ(memory_size_text(kMiB + 1, true), "2 MiB");
  EXPECT_EQ(memory_size_text(8 * kGiB), "8192 MiB");
  EXPECT_EQ(memory_size_text(1000), "1000 bytes");
  EXPECT_EQ(memory_size_text(1), "1 byte");
  EXPECT_EQ(memory_size_text(0), "0 bytes");
}

void write(const std::filesystem::path& file, const std::string& text) {
  std::filesystem::create_directories(file.parent_path());
  std::ofstream(file) << text;
}

TEST(MemoryLimit, CgroupV2TakesTheSmallestLimitOfTheGroupAndItsParentsWithSwap) {
  test::TempDir dir;
  const std::filesystem::path root = dir.path();
  const std::string cgroup = "0::/user.slice/job.scope\n";
  // Nothing set anywhere ("max"), or no files at all: no limit.
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string()), 0u);
  write(root / "user.slice/job.scope/memory.max", "max\n");
  write(root / "user.slice/memory.max", "max\n");
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string()), 0u);
  // The job's own limit, with its swap.
  write(root / "user.slice/job.scope/memory.max", "4294967296\n");
  std::string where;
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), &where), 4 * kGiB);
  EXPECT_EQ(where, (root / "user.slice/job.scope/memory.max").string());
  write(root / "user.slice/job.scope/memory.swap.max", "1073741824\n");
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), &where), 5 * kGiB);
  EXPECT_EQ(where, (root / "user.slice/job.scope/memory.max and memory.swap.max").string());
  // Swap counts as far as the machine has it: none (`docker run --memory=4g` on a machine
  // without swap writes a swap limit all the same), or 512 MiB.
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), &where, 0), 4 * kGiB);
  EXPECT_EQ(where, (root / "user.slice/job.scope/memory.max").string());
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), nullptr, 512 * kMiB), 4 * kGiB + 512 * kMiB);
  // Unlimited swap ("max") is not counted.
  write(root / "user.slice/job.scope/memory.swap.max", "max\n");
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string()), 4 * kGiB);
  write(root / "user.slice/job.scope/memory.swap.max", "1073741824\n");
  // A parent's smaller limit binds.
  write(root / "user.slice/memory.max", "2147483648\n");
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), &where), 2 * kGiB);
  EXPECT_EQ(where, (root / "user.slice/memory.max").string());
  // Inside a container: "0::/" and the namespace root's own file.
  write(root / "memory.max", "1073741824\n");
  EXPECT_EQ(cgroup_memory_limit("0::/\n", root.string()), kGiB);
  // Text that is no cgroup line, or a path climbing out, is passed over.
  EXPECT_EQ(cgroup_memory_limit("garbage\n0::../etc\n", root.string()), 0u);
}

TEST(MemoryLimit, CgroupV1ReadsTheMemoryControllersLimitsAndIgnoresUnlimited) {
  test::TempDir dir;
  const std::filesystem::path root = dir.path();
  const std::string cgroup = "12:pids:/\n4:memory:/slurm/job_7\n1:name=systemd:/\n";
  const auto group = root / "memory/slurm/job_7";
  // v1's "unlimited": 2^63 rounded down to a page.
  write(group / "memory.limit_in_bytes", "9223372036854771712\n");
  write(root / "memory/slurm/memory.limit_in_bytes", "9223372036854771712\n");
  write(root / "memory/memory.limit_in_bytes", "9223372036854771712\n");
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string()), 0u);
  write(group / "memory.limit_in_bytes", "3221225472\n");
  std::string where;
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), &where), 3 * kGiB);
  EXPECT_EQ(where, (group / "memory.limit_in_bytes").string());
  // With swap accounting, memory and swap together — as far as the machine has swap.
  write(group / "memory.memsw.limit_in_bytes", "4294967296\n");
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), &where), 4 * kGiB);
  EXPECT_EQ(where, (group / "memory.memsw.limit_in_bytes").string());
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), &where, 0), 3 * kGiB);
  EXPECT_EQ(where, (group / "memory.limit_in_bytes").string());
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), &where, 256 * kMiB), 3 * kGiB + 256 * kMiB);
  EXPECT_EQ(where, (group / "memory.limit_in_bytes").string() + " and the machine's swap");
  EXPECT_EQ(cgroup_memory_limit(cgroup, root.string(), &where, 2 * kGiB), 4 * kGiB);
  EXPECT_EQ(where, (group / "memory.memsw.limit_in_bytes").string());
  // A controller list naming memory among others.
  EXPECT_EQ(cgroup_memory_limit("5:cpu,memory:/slurm/job_7\n", root.string()), 4 * kGiB);
}

// The oracle: /proc/meminfo and /proc/self/status read here, before and after.
std::size_t free_memory_read_here() {
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  std::size_t total = 0;
  while (std::getline(meminfo, line))
    if (line.rfind("MemAvailable:", 0) == 0 || line.rfind("SwapFree:", 0) == 0)
      total += std::stoull(line.substr(line.find(':') + 1)) * kKiB;
  std::ifstream status("/proc/self/status");
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) total += std::stoull(line.substr(6)) * kKiB;
  return total;
}

// A limit from the machine's free memory is read again before a refusal (memory other
// processes held at the start may be free by then).
TEST(MemoryLimit, TheFreeMemoryLimitIsReadAgainWhenAsked) {
  if (!memory_limit().from_free_memory)
    GTEST_SKIP() << "this process's limit comes from " << memory_limit().source;
  const auto before = free_memory_read_here();
  const auto now = memory_limit_now();
  const auto after = free_memory_read_here();
  if (now.source.rfind("the cgroup", 0) == 0) GTEST_SKIP() << "the cgroup's limit binds now";
  EXPECT_TRUE(now.from_free_memory);
  EXPECT_EQ(now.source.find("the memory this machine has free"), 0u) << now.source;
  // Other processes may allocate or free between the reads: 256 MiB of slack either side.
  EXPECT_GE(now.bytes + 256 * kMiB, std::min(before, after));
  EXPECT_LE(now.bytes, std::max(before, after) + 256 * kMiB);

  // A value read once and kept would pass the above while free memory stays put: a child
  // process now takes 2 GiB and holds it; the limit read while it does must have dropped.
  const auto base = free_memory_read_here();
  if (base < 6 * kGiB) GTEST_SKIP() << "less than 6 GiB free: the 2 GiB child is not run";
  // The limit kept from the start is the smaller one when memory was scarcer then: it would
  // pass the check below by itself.
  if (memory_limit().bytes + 512 * kMiB < base) GTEST_SKIP() << "the start's limit binds";
  int ready[2], release[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(release), 0);
  const std::size_t held = 2 * kGiB;
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    void* p = mmap(nullptr, held, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) _exit(1);
    std::memset(p, 1, held);  // touched: resident, not just reserved
    char c = 'r';
    if (::write(ready[1], &c, 1) != 1) _exit(1);
    if (::read(release[0], &c, 1) < 0) _exit(1);
    _exit(0);
  }
  char c = 0;
  const bool holding = ::read(ready[0], &c, 1) == 1;
  const auto during = memory_limit_now();
  c = 'x';
  EXPECT_EQ(::write(release[1], &c, 1), 1);
  int status = 0;
  waitpid(child, &status, 0);
  for (int fd : {ready[0], ready[1], release[0], release[1]})
    close(fd);
  ASSERT_TRUE(holding) << "the child could not take " << held / kMiB << " MiB";
  // At least half of what the child held (other processes may free memory meanwhile).
  EXPECT_LE(during.bytes + held / 2, base)
      << "limit " << during.bytes / kMiB << " MiB while the child held " << held / kMiB
      << " MiB of " << base / kMiB << " MiB free";
}

TEST(MemoryLimit, ResidentMemoryIsProcsOwnFigure) {
  // The oracle: VmRSS of /proc/self/status, read right after (a few pages apart at most).
  const auto resident = resident_bytes();
  std::ifstream status("/proc/self/status");
  std::string line;
  std::size_t vm_rss = 0;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) vm_rss = std::stoull(line.substr(6)) * kKiB;
  ASSERT_GT(vm_rss, 0u);
  EXPECT_NEAR(static_cast<double>(resident), static_cast<double>(vm_rss), 8.0 * kMiB);
}

}  // namespace
}  // namespace attnscope::runtime
