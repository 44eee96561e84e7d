#pragma once
#include <unistd.h>

#include "fuzz/fuzz_targets.h"
#include "pipeline/checkpoint.h"

namespace attnscope::fuzz {

/// Checkpoint loading from arbitrary bytes: HDF5 open, attributes, JSON, checksum, NaN check.
inline void checkpoint(const uint8_t* data, std::size_t size) {
  const auto path = (std::filesystem::temp_directory_path() /
                     ("attnscope-fuzz-" + std::to_string(::getpid()) + ".h5"))
                        .string();
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    pipeline::read_checkpoint_meta(path);
    pipeline::verify_checkpoint(path);
    pipeline::checkpoint_tensors(path);
  } catch (const Error&) {
  }
  std::filesystem::remove(path);
}

}  // namespace attnscope::fuzz
