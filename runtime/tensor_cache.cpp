#include "runtime/tensor_cache.h"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/version.h>

#include "runtime/memory_limit.h"
#include "runtime/runtime.h"

namespace attnscope::runtime {
namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kHugePage = kTensorCacheHugePageBytes;

// Whether blocks of kHugePage and more are advised for huge pages; decided once.
bool huge_pages() {
  static const bool on = huge_pages_wanted();
  return on;
}

class TensorCache final : public c10::Allocator {
 public:
  static TensorCache& instance() {
    static auto* cache = [] {
      auto* c = new TensorCache();  // never destroyed: tensors may outlive main()
      // A child forked while another thread holds the lock would wait for it forever (the
      // HDF5 checks fork; threads other than attnscope's may run then): fork() takes the lock
      // and both sides release it.
      ::pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                       [] { instance().mutex_.unlock(); });
      return c;
    }();
    return *cache;
  }

  // Small tensors: LibTorch's own allocator (and its deleter, which the DataPtr carries).
  // LibTorch 2.3 made allocate non-const and added copy_data (the copy of a storage's bytes).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  c10::DataPtr allocate(std::size_t n) override {
    return allocate_block(n);
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
#else
  c10::DataPtr allocate(std::size_t n) const override {
    return allocate_block(n);
  }
#endif
  // raw_allocate's memory (ideep's buffers) comes back through this, small or large, and
  // possibly allocated before the cache was registered: only the blocks it mapped are kept.
  c10::DeleterFnPtr raw_deleter() const override { return &raw_give_back; }

  static c10::DataPtr allocate_block(std::size_t n) {
    if (n < kTensorCacheMinBytes) return c10::GetDefaultCPUAllocator()->allocate(n);
    void* data = instance().take(n);
    return {data, data, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  TensorCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!kept_.empty())
      unmap_largest_kept();
  }

 private:
  void* take(std::size_t n) {
    if (n > SIZE_MAX - kPage) throw std::bad_alloc();
    const std::size_t bytes = (n + kPage - 1) / kPage * kPage;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // The smallest kept block that holds it, when at most twice its size.
      auto it = kept_.lower_bound(bytes);
      if (it != kept_.end() && it->first / 2 <= bytes) {
        void* block = it->second.back();
        it->second.pop_back();
        stats_.kept_bytes -= it->first;
        if (it->second.empty()) kept_.erase(it);
        ++stats_.reused;
        note_in_use();
        return block;
      }
      // Mapped memory stays within twice the most ever in use: the kept blocks that would
      // take it past that (sizes no longer asked for) go back to the kernel first.
      const std::size_t in_use = stats_.mapped_bytes - stats_.kept_bytes + bytes;
      const std::size_t limit = 2 * std::max(stats_.peak_in_use_bytes, in_use);
      while (!kept_.empty() && stats_.mapped_bytes + bytes > limit)
        unmap_largest_kept();
    }
    check_memory_limit(bytes);
    void* block = map(bytes);
    if (block == nullptr) {
      release();  // the kept blocks may be what is missing
      block = map(bytes);
      if (block == nullptr) throw std::bad_alloc();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[block] = bytes;
    stats_.mapped_bytes += bytes;
    ++stats_.mapped;
    note_in_use();
    return block;
  }

  // Throws MemoryLimitExceeded when mapping `bytes` more would take the process past
  // memory_limit(): what is resident beyond the mapped blocks, the mapped blocks (kept ones
  // too: they hold pages until given back) and the new block. Kept blocks are given back before
  // refusing. Untouched pages of mapped blocks are counted as resident and the rest of the
  // process's memory as it stands, so the check errs towards mapping only where a block has
  // pages not yet touched. Best effort between threads: two that check at the same moment may
  // both map (the loader's workers map small decoded images; the batches come from one thread).
  void check_memory_limit(std::size_t bytes) {
    const auto& limit = memory_limit();
    if (limit.bytes == 0) return;
    const auto need = [&] {
      std::lock_guard<std::mutex> lock(mutex_);
      const std::size_t resident = resident_bytes();
      const std::size_t other = resident > stats_.mapped_bytes ? resident - stats_.mapped_bytes : 0;
      return other + stats_.mapped_bytes + bytes;
    };
    if (need() <= limit.bytes) return;
    release();
    const std::size_t total = need();
    if (total <= limit.bytes) return;
    // Memory other processes held when the run started may be free now.
    const auto now = limit.from_free_memory ? memory_limit_now() : limit;
    if (now.bytes == 0 || total <= now.bytes) return;
    // Sizes rounded up, the limit down: the message never reads "1025 MiB, past the 1025 MiB".
    throw MemoryLimitExceeded("out of memory: the next tensor (" + memory_size_text(bytes, true) +
                              ") would take this process to " + memory_size_text(total, true) +
                              ", past the " + memory_size_text(now.bytes) + " of " + now.source +
                              ": lower --batch-size or the image size");
  }

  // Blocks of a huge page or more: mapped with a huge page of slack, the slack before the
  // first 2 MiB boundary and after the block unmapped again, the whole huge pages advised
  // (kTensorCacheHugePageBytes). A failed madvise (a kernel without THP) leaves small pages.
  static void* map(std::size_t bytes) {
    const auto plain = [bytes] {
      void* block =
          ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      return block == MAP_FAILED ? nullptr : block;
    };
    if (bytes < kHugePage || bytes > SIZE_MAX - kHugePage || !huge_pages()) return plain();
    const std::size_t span = bytes + kHugePage - kPage;
    void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return plain();  // the slack may be what an address-space limit lacks
    const auto start = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
    if (aligned > start) ::munmap(raw, aligned - start);
    const std::uintptr_t end = start + span;
    if (end > aligned + bytes)
      ::munmap(reinterpret_cast<void*>(aligned + bytes), end - aligned - bytes);
    ::madvise(reinterpret_cast<void*>(aligned), bytes / kHugePage * kHugePage, MADV_HUGEPAGE);
    return reinterpret_cast<void*>(aligned);
  }

  static void give_back(void* data) {
    if (data != nullptr) instance().keep(data);
  }

  static void raw_give_back(void* data) {
    if (data == nullptr || instance().keep(data)) return;
    const c10::DeleterFnPtr own = c10::GetDefaultCPUAllocator()->raw_deleter();
    if (own != nullptr) {
      own(data);
    } else {
      std::free(data);
    }
  }

  // False when the block is not one this cache mapped.
  bool keep(void* block) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = sizes_.find(block);
    if (it == sizes_.end()) return false;
    kept_[it->second].push_back(block);
    stats_.kept_bytes += it->second;
    return true;
  }

  // Called with mutex_ held.
  void note_in_use() {
    stats_.peak_in_use_bytes =
        std::max(stats_.peak_in_use_bytes, stats_.mapped_bytes - stats_.kept_bytes);
  }
  void unmap_largest_kept() {
    auto last = std::prev(kept_.end());
    void* block = last->second.back();
    ::munmap(block, last->first);
    sizes_.erase(block);
    last->second.pop_back();
    stats_.kept_bytes -= last->first;
    stats_.mapped_bytes -= last->first;
    ++stats_.unmapped;
    if (last->second.empty()) kept_.erase(last);
  }

  std::mutex mutex_;
  std::unordered_map<void*, std::size_t> sizes_;    // every mapped block -> its size
  std::map<std::size_t, std::vector<void*>> kept_;  // size -> mapped blocks not in use
  TensorCacheStats stats_;
};

std::atomic<bool> g_enabled{false};

}  // namespace

void cache_tensor_memory() {
  static const bool done = [] {
    // Priority 1: above LibTorch's own allocator (0), so later registrations of it lose.
    c10::SetCPUAllocator(&TensorCache::instance(), 1);
    g_enabled = true;
    return true;
  }();
  (void)done;
}

bool tensor_cache_enabled() {
  return g_enabled;
}

bool cache_tensor_memory_by_default() {
#if defined(__SANITIZE_ADDRESS__)
  return false;  // ASan checks tensors' memory only when malloc serves it
#else
  if (const char* env = std::getenv(kTensorCacheEnv); env != nullptr && std::string(env) == "0")
    return false;
  memory_limit();  // a malformed ATTNSCOPE_MEMORY_LIMIT is an Error here, not in an allocation
  cache_tensor_memory();
  return true;
#endif
}

bool tensor_cache_huge_pages() {
  return tensor_cache_enabled() && huge_pages();
}

TensorCacheStats tensor_cache_stats() {
  return TensorCache::instance().stats();
}

void release_tensor_cache() {
  TensorCache::instance().release();
}

}  // namespace attnscope::runtime
