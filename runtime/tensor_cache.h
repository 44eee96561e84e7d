#pragma once
// Memory for LibTorch's CPU tensors, kept for reuse by size (cache_tensor_memory).

#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <utility>

namespace attnscope::runtime {

/// Tensors of at least this many bytes are mapped by the tensor cache and kept for reuse;
/// smaller ones come from LibTorch's own allocator.
constexpr std::size_t kTensorCacheMinBytes = std::size_t{256} << 10;

/// Makes LibTorch allocate CPU tensors from a cache of mapped blocks (c10::SetCPUAllocator).
/// A batch of images allocates the same large tensors as the batch before it (activations,
/// gradients, Grad-CAM's maps); glibc's heap keeps them for reuse too
/// (keep_freed_memory_for_reuse), but fragments while it fills, so the peak memory of a
/// classify run rose for its first ~800 images and varied by 20 % between runs. Here a freed
/// tensor's block is kept and handed to the next request it holds that is at least half its
/// size, so after the first batch no page is mapped or faulted in again; mapped memory stays
/// within twice the most ever in use (larger kept blocks are unmapped first). Tensors
/// allocated before the call keep LibTorch's allocator. Idempotent; there is no way back.
void cache_tensor_memory();

/// Whether cache_tensor_memory() was called in this process.
bool tensor_cache_enabled();

/// Blocks of at least this many bytes start on a 2 MiB boundary and are advised to be backed
/// by transparent huge pages (madvise MADV_HUGEPAGE), unless kHugePagesEnv (runtime.h) is 0:
/// where the kernel's THP mode is "madvise" (Debian's default) a 64 MiB activation is then
/// faulted in 32 times instead of 16,384, and the kernels that sweep it miss the TLB less.
/// The part of a block past its last whole 2 MiB stays in 4 KiB pages: no memory is added.
constexpr std::size_t kTensorCacheHugePageBytes = std::size_t{2} << 20;
/// Whether the cache advises its large blocks so (decided at its first mapping).
bool tensor_cache_huge_pages();

/// What the commands and benchmarks call before their first tensor: cache_tensor_memory()
/// unless the environment sets kTensorCacheEnv=0 (LibTorch's own allocator, to compare) or
/// the build is AddressSanitizer's (which checks a tensor's memory only when malloc serves
/// it). Returns whether the cache is on.
bool cache_tensor_memory_by_default();
constexpr const char* kTensorCacheEnv = "ATTNSCOPE_TENSOR_CACHE";

struct TensorCacheStats {
  std::size_t mapped_bytes = 0;       ///< mapped now, in use or kept
  std::size_t kept_bytes = 0;         ///< mapped and kept for reuse, not in use
  std::size_t peak_in_use_bytes = 0;  ///< the most in use at once
  std::uint64_t mapped = 0;           ///< blocks mapped so far
  std::uint64_t reused = 0;           ///< requests served with a kept block
  std::uint64_t unmapped = 0;         ///< kept blocks given back to the kernel
};
TensorCacheStats tensor_cache_stats();

/// Gives every kept block back to the kernel (blocks in use stay).
void release_tensor_cache();

/// What the tensor cache throws instead of mapping a block that would take the process past
/// memory_limit() (memory_limit.h): the process's other resident memory, the tensors in use
/// and the new block counted, kept blocks given back first. The kernel would otherwise end the
/// run with SIGKILL once the pages are touched (its OOM killer), or with swapping. A bad_alloc,
/// so whatever handles running out of memory handles this too; what() is one line with the
/// sizes and where the limit comes from.
class MemoryLimitExceeded : public std::bad_alloc {
 public:
  explicit MemoryLimitExceeded(std::string message) : message_(std::move(message)) {}
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  std::string message_;
};

}  // namespace attnscope::runtime
