// The tensor cache (runtime/tensor_cache.h). ctest runs every test in a process of its own,
// so the cache one test turns on does not reach the others.
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include <c10/core/CPUAllocator.h>
#include <torch/torch.h>

#include "runtime/memory_limit.h"
#include "runtime/runtime.h"
#include "runtime/tensor_cache.h"
#include "test_support.h"

namespace attnscope::runtime {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

torch::Tensor bytes_tensor(int64_t bytes) {
  return torch::empty({bytes}, torch::kUInt8);
}

bool aligned64(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 64 == 0;
}

TEST(TensorCache, AFreedTensorsMemoryServesTheNextTensorOfTheSameSize) {
  cache_tensor_memory();
  ASSERT_TRUE(tensor_cache_enabled());
  const auto before = tensor_cache_stats();
  auto a = bytes_tensor(4 * kMiB);
  void* first = a.data_ptr();
  EXPECT_TRUE(aligned64(first));
  EXPECT_EQ(tensor_cache_stats().mapped, before.mapped + 1);
  std::memset(first, 7, 4 * kMiB);  // the whole block is writable
  a.reset();
  EXPECT_EQ(tensor_cache_stats().kept_bytes, before.kept_bytes + 4 * kMiB);
  auto b = bytes_tensor(4 * kMiB);
  EXPECT_EQ(b.data_ptr(), first);
  const auto after = tensor_cache_stats();
  EXPECT_EQ(after.mapped, before.mapped + 1);
  EXPECT_EQ(after.reused, before.reused + 1);
  EXPECT_EQ(after.kept_bytes, before.kept_bytes);
  // Small tensors come from LibTorch's own allocator, with its deleter, and are not counted.
  auto small = bytes_tensor(1000);
  EXPECT_TRUE(aligned64(small.data_ptr()));
  EXPECT_EQ(small.storage().data_ptr().get_deleter(),
            c10::GetDefaultCPUAllocator()->allocate(1000).get_deleter());
  EXPECT_NE(small.storage().data_ptr().get_deleter(), b.storage().data_ptr().get_deleter());
  EXPECT_EQ(tensor_cache_stats().mapped, after.mapped);
  EXPECT_EQ(tensor_cache_stats().mapped_bytes, after.mapped_bytes);
}

// A block past ATTNSCOPE_MEMORY_LIMIT is refused (MemoryLimitExceeded, a bad_alloc, out of
// torch::empty) once the kept blocks are given back; within it, tensors are made as before.
// Every step keeps 8 MiB or more between what it needs and the limit, for the memory the
// process takes besides (code pages, the heap): a first tensor operation before `base` is
// measured pages most of that in.
TEST(TensorCache, ABlockPastTheMemoryLimitIsRefusedAfterTheKeptBlocksGoBack) {
  EXPECT_EQ(torch::ones({512, 512}).sum().item<float>(), 512.0f * 512.0f);
  const auto base = static_cast<int64_t>(resident_bytes());
  ASSERT_GT(base, 0);
  const int64_t limit = base + 128 * kMiB;
  ::setenv(kMemoryLimitEnv, std::to_string(limit).c_str(), 1);
  if (memory_limit().source != kMemoryLimitEnv)
    GTEST_SKIP() << "the limit was decided before this test (ctest runs it in its own process), "
                    "or this process's cgroup allows less: "
                 << memory_limit().source;
  cache_tensor_memory();
  auto a = bytes_tensor(32 * kMiB);
  std::memset(a.data_ptr(), 1, 32 * kMiB);
  auto b = bytes_tensor(32 * kMiB);
  std::memset(b.data_ptr(), 2, 32 * kMiB);
  b.reset();  // kept: mapped and resident
  const auto before = tensor_cache_stats();
  EXPECT_EQ(before.kept_bytes, static_cast<std::size_t>(32 * kMiB));
  // 32 in use + 32 kept + 72 new is 8 MiB past base + 128 MiB; without the kept block it is
  // 24 MiB within.
  auto c = bytes_tensor(72 * kMiB);
  std::memset(c.data_ptr(), 3, 72 * kMiB);
  EXPECT_EQ(tensor_cache_stats().unmapped, before.unmapped + 1);
  EXPECT_EQ(tensor_cache_stats().kept_bytes, 0u);
  // 32 + 72 in use and 64 more: refused with the sizes (MiB, rounded up), the limit (rounded
  // down) and its source.
  std::string message;
  try {
    bytes_tensor(64 * kMiB);
  } catch (const MemoryLimitExceeded& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("out of memory: the next tensor (64 MiB) would take this process to "),
            std::string::npos)
      << message;
  EXPECT_NE(message.find(" MiB, past the " + std::to_string(limit >> 20) + " MiB of " +
                         kMemoryLimitEnv + ": lower --batch-size or the image size"),
            std::string::npos)
      << message;
  EXPECT_THROW(bytes_tensor(64 * kMiB), std::bad_alloc);
  // The process goes on: what fits is still made, a freed block still reused.
  void* first = c.data_ptr();
  c.reset();
  auto d = bytes_tensor(40 * kMiB);
  EXPECT_EQ(d.data_ptr(), first);
  auto e = bytes_tensor(2 * kMiB);  // 32 + 72 (d's block) + 2: 22 MiB within
  EXPECT_EQ(e.numel(), 2 * kMiB);
}

TEST(TensorCache, AKeptBlockServesRequestsDownToHalfItsSize) {
  cache_tensor_memory();
  release_tensor_cache();  // no block kept from before
  auto a = bytes_tensor(8 * kMiB);
  void* block = a.data_ptr();
  a.reset();
  auto b = bytes_tensor(5 * kMiB);  // 5/8 of the block: reused
  EXPECT_EQ(b.data_ptr(), block);
  b.reset();
  const auto before = tensor_cache_stats();
  auto c = bytes_tensor(3 * kMiB);  // 3/8: a block of its own
  EXPECT_NE(c.data_ptr(), block);
  EXPECT_EQ(tensor_cache_stats().mapped, before.mapped + 1);
  auto d = bytes_tensor(8 * kMiB);  // the kept block again
  EXPECT_EQ(d.data_ptr(), block);
}

// ideep takes its buffers with raw_allocate and gives them back with raw_deallocate of the
// allocator registered at that time: memory LibTorch's allocator gave before the cache was
// registered goes back to it (ASan checks the free), the cache's own blocks are kept.
TEST(TensorCache, RawMemoryFromBeforeTheCacheGoesBackToLibTorchsAllocator) {
  void* before_cache = c10::GetCPUAllocator()->raw_allocate(kMiB);
  std::memset(before_cache, 1, kMiB);
  cache_tensor_memory();
  const auto start = tensor_cache_stats();
  void* mine = c10::GetCPUAllocator()->raw_allocate(kMiB);
  std::memset(mine, 2, kMiB);
  EXPECT_EQ(tensor_cache_stats().mapped, start.mapped + 1);
  c10::GetCPUAllocator()->raw_deallocate(before_cache);
  EXPECT_EQ(tensor_cache_stats().kept_bytes, start.kept_bytes);
  c10::GetCPUAllocator()->raw_deallocate(mine);
  EXPECT_EQ(tensor_cache_stats().kept_bytes, start.kept_bytes + kMiB);
  EXPECT_EQ(c10::GetCPUAllocator()->raw_allocate(kMiB), mine);  // and reused
}

// Sizes that grow (a seq2seq batch of longer sentences, say) must not pile up kept blocks that
// no request fits any more: mapped memory stays within twice the most ever in use.
TEST(TensorCache, MappedMemoryStaysWithinTwiceThePeakInUse) {
  cache_tensor_memory();
  release_tensor_cache();
  std::vector<torch::Tensor> held;
  int64_t bytes = kMiB;
  for (int step = 0; step < 30; ++step, bytes = bytes * 5 / 4) {
    auto t = bytes_tensor(bytes);
    if (step % 7 == 0) held.push_back(bytes_tensor(bytes / 3));  // some stay in use
    t.reset();
    const auto s = tensor_cache_stats();
    ASSERT_LE(s.mapped_bytes, 2 * s.peak_in_use_bytes) << "step " << step;
  }
  const auto s = tensor_cache_stats();
  EXPECT_GT(s.unmapped, 0u);
  held.clear();
  release_tensor_cache();
  EXPECT_EQ(tensor_cache_stats().mapped_bytes, 0u);
  EXPECT_EQ(tensor_cache_stats().kept_bytes, 0u);
}

// Blocks given back on one thread and taken on another: no block is ever handed to two
// tensors at once (each thread's bytes are intact when it lets its tensor go).
TEST(TensorCache, ThreadsTakingAndGivingBackBlocksNeverShareOne) {
  cache_tensor_memory();
  std::atomic<int> corrupted{0};
  std::vector<std::thread> threads;
  for (int id = 0; id < 4; ++id)
    threads.emplace_back([id, &corrupted] {
      std::mt19937 rng(static_cast<unsigned>(id));
      const int64_t sizes[] = {300 << 10, kMiB, 2 * kMiB, 3 * kMiB + 5, 100};
      std::vector<std::pair<torch::Tensor, uint8_t>> ring;
      for (int i = 0; i < 400; ++i) {
        const int64_t bytes = sizes[rng() % 5];
        const auto mark = static_cast<uint8_t>(id * 64 + i % 64);
        auto t = bytes_tensor(bytes);
        std::memset(t.data_ptr(), mark, static_cast<size_t>(bytes));
        ring.emplace_back(std::move(t), mark);
        if (ring.size() > 3) {
          auto& [old, old_mark] = ring.front();
          if (!old.eq(old_mark).all().item<bool>()) ++corrupted;
          ring.erase(ring.begin());
        }
      }
    });
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(corrupted.load(), 0);
  EXPECT_GT(tensor_cache_stats().reused, 0u);
}

// LibTorch's own kernels run on the cache's memory and give what they give without it.
TEST(TensorCache, AConvolutionsForwardAndBackwardAreUnchangedByTheCache) {
  torch::manual_seed(3);
  auto conv = torch::nn::Conv2d(torch::nn::Conv2dOptions(3, 32, 3).padding(1));
  const auto x = torch::randn({8, 3, 96, 96});
  auto run = [&] {
    conv->zero_grad();
    auto y = torch::relu(conv->forward(x));
    y.square().sum().backward();
    return std::make_pair(y.detach().clone(), conv->weight.grad().clone());
  };
  const auto [y0, g0] = run();
  cache_tensor_memory();
  const auto mapped = tensor_cache_stats().mapped;
  for (int round = 0; round < 2; ++round) {  // the second round runs on kept blocks
    const auto [y1, g1] = run();
    EXPECT_TRUE(torch::equal(y0, y1)) << "round " << round;
    EXPECT_TRUE(torch::allclose(g0, g1, 1e-5, 1e-6)) << "round " << round;
  }
  EXPECT_GT(tensor_cache_stats().mapped, mapped);
  EXPECT_GT(tensor_cache_stats().reused, 0u);
}

// A child forked while another thread allocates (attnscope's own HDF5 checks fork only with
// none of its worker threads running, but LibTorch's and a host program's threads may run)
// must never wait for the cache's lock, held by that thread at fork().
// LibTorch's own lazily built state (the dispatcher's operator handles, function-local
// statics) is built here first: a fork while the other thread builds it would leave the child
// waiting on LibTorch's locks, not the cache's (one child of 20 hung so on a CI machine).
TEST(TensorCache, AChildForkedWhileAnotherThreadAllocatesCanAllocate) {
  cache_tensor_memory();
  (void)bytes_tensor(kMiB);
  (void)bytes_tensor(2 * kMiB);
  std::atomic<bool> stop{false};
  std::atomic<int> allocations{0};
  std::thread busy([&stop, &allocations] {
    while (!stop) {
      (void)bytes_tensor(kMiB);
      ++allocations;
    }
  });
  while (allocations < 10)
    std::this_thread::yield();
  int hung = 0;
  for (int i = 0; i < 20; ++i) {
    const pid_t pid = fork();
    EXPECT_GE(pid, 0);  // not ASSERT: `busy` must be joined below
    if (pid < 0) break;
    if (pid == 0) {
      alarm(10);  // a deadlocked child ends with SIGALRM
      auto t = bytes_tensor(2 * kMiB);
      _exit(t.numel() == 2 * kMiB ? 0 : 1);
    }
    int status = 0;
    EXPECT_EQ(waitpid(pid, &status, 0), pid);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++hung;
  }
  stop = true;
  busy.join();
  EXPECT_EQ(hung, 0);
}

// Blocks of 2 MiB and more: on a 2 MiB boundary and advised for huge pages ("hg" in the
// kernel's flags for the mapping, /proc/self/smaps); smaller ones are not; the slack mapped
// for the alignment is given back (the block's neighbours are not this cache's).
TEST(TensorCache, BlocksOfTwoMiBAndMoreStartOnAHugePageAndAreAdvised) {
  unsetenv(kHugePagesEnv);
  cache_tensor_memory();
  ASSERT_TRUE(tensor_cache_huge_pages());
  const auto before = tensor_cache_stats();
  const int64_t big = 5 * kMiB + 12288;
  auto a = bytes_tensor(big);
  auto* p = static_cast<char*>(a.data_ptr());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % kTensorCacheHugePageBytes, 0u);
  EXPECT_EQ(tensor_cache_stats().mapped_bytes, before.mapped_bytes + big);
  std::memset(p, 3, big);
  // madvise(MADV_HUGEPAGE) succeeds wherever the kernel has transparent huge pages.
  if (!transparent_huge_pages_mode().empty()) {
    EXPECT_TRUE(has_mapping_flag(mapping_flags(p), "hg")) << mapping_flags(p);
    EXPECT_TRUE(has_mapping_flag(mapping_flags(p + 4 * kMiB - 1), "hg"));
  }
  // The tail past the last whole huge page is the block's, not advised.
  EXPECT_FALSE(has_mapping_flag(mapping_flags(p + big - 1), "hg")) << mapping_flags(p + big - 1);
  auto small = bytes_tensor(kMiB);
  EXPECT_FALSE(has_mapping_flag(mapping_flags(small.data_ptr()), "hg"));
  a.reset();
  small.reset();
  release_tensor_cache();
  EXPECT_EQ(mapping_flags(p), "");  // unmapped whole
  EXPECT_EQ(tensor_cache_stats().mapped_bytes, 0u);
}

TEST(TensorCache, HugePagesAreNotAdvisedWhenTheEnvironmentSaysZero) {
  setenv(kHugePagesEnv, "0", 1);
  cache_tensor_memory();
  EXPECT_FALSE(tensor_cache_huge_pages());
  auto a = bytes_tensor(6 * kMiB);
  EXPECT_FALSE(has_mapping_flag(mapping_flags(a.data_ptr()), "hg"));
  unsetenv(kHugePagesEnv);
}

TEST(TensorCache, TheCommandsTurnItOnUnlessTheEnvironmentSaysZero) {
  ASSERT_EQ(setenv(kTensorCacheEnv, "0", 1), 0);
  EXPECT_FALSE(cache_tensor_memory_by_default());
  EXPECT_FALSE(tensor_cache_enabled());
  ASSERT_EQ(unsetenv(kTensorCacheEnv), 0);
#if defined(__SANITIZE_ADDRESS__)
  EXPECT_FALSE(cache_tensor_memory_by_default());
#else
  EXPECT_TRUE(cache_tensor_memory_by_default());
  EXPECT_TRUE(tensor_cache_enabled());
#endif
}

}  // namespace
}  // namespace attnscope::runtime
