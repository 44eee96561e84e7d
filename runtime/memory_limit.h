#pragma once
// The memory this process can have before the kernel's OOM killer ends it without a word:
// read from ATTNSCOPE_MEMORY_LIMIT, the process's cgroup (a container's, a Slurm job's) and the
// machine's free memory. The tensor cache refuses to map past it (tensor_cache.h), so a batch
// size or image size too large for the machine is one line, not a SIGKILL.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace attnscope::runtime {

constexpr const char* kMemoryLimitEnv = "ATTNSCOPE_MEMORY_LIMIT";

struct MemoryLimit {
  std::size_t bytes = 0;  ///< 0: none (ATTNSCOPE_MEMORY_LIMIT=off, or nothing could be read)
  std::string source;     ///< where it comes from, for messages and `attnscope info`
  /// The machine's free memory at the first call gave `bytes`: memory freed since may raise it
  /// (memory_limit_now()).
  bool from_free_memory = false;
  std::size_t cgroup_bytes = 0;  ///< the cgroup's limit (0: none), which binds in any case
  std::string cgroup_where;      ///< the cgroup file that gave it
};

/// A size as ATTNSCOPE_MEMORY_LIMIT takes it: whole bytes, or a whole or decimal number with a
/// binary suffix K, M, G or T (also KiB, MiB, GiB, TiB); "off" (and "0") is 0, no limit.
/// nullopt when the text is none of these.
std::optional<std::size_t> parse_memory_size(const std::string& text);

/// The smallest memory limit of the cgroup that `proc_self_cgroup` (the text of
/// /proc/self/cgroup) names and of its parents, under `root` (/sys/fs/cgroup): cgroup v2's
/// memory.max plus memory.swap.max where that is a number, v1's memory.memsw.limit_in_bytes
/// (memory and swap) or memory.limit_in_bytes. Swap counts for at most `swap_total`, the swap
/// the machine has (SwapTotal): `docker run --memory=2g` writes a swap limit of 2G on machines
/// without swap too, where the OOM killer strikes at 2G. 0 when none is set ("max", v1's
/// 2^63 - 4096) or none can be read; `where` gets the file(s) that gave it.
std::size_t cgroup_memory_limit(const std::string& proc_self_cgroup, const std::string& root,
                                std::string* where = nullptr, std::size_t swap_total = SIZE_MAX);

/// Decided at the first call: ATTNSCOPE_MEMORY_LIMIT when set (Error when malformed; never
/// above the cgroup's limit, past which the OOM killer strikes whatever the variable says;
/// "off" for no limit at all), else the smaller of the cgroup's limit and what the machine had
/// free then (MemAvailable and SwapFree of /proc/meminfo, plus this process's resident memory).
const MemoryLimit& memory_limit();

/// memory_limit() with the machine's free memory read again when that is what gave it (memory
/// other processes held at the start may be free now): for the check before a refusal.
MemoryLimit memory_limit_now();

/// A size for a message: whole MiB from 1 MiB on, else whole KiB from 1 KiB on, else bytes;
/// rounded down, or up with `round_up` ("1 KiB", not "0 MiB", for ATTNSCOPE_MEMORY_LIMIT=1K).
std::string memory_size_text(std::size_t bytes, bool round_up = false);

/// This process's resident memory (/proc/self/statm), 0 when it cannot be read.
std::size_t resident_bytes();

}  // namespace attnscope::runtime
