#pragma once
#include "fuzz/fuzz_targets.h"
#include "preprocessing/decode.h"

namespace attnscope::fuzz {

/// The image-header parser (JPEG SOF, PNG IHDR, TIFF IFD0, BMP, WebP) and, for small claimed
/// sizes, the whole decode.
inline void image_header(const uint8_t* data, std::size_t size) {
  const std::vector<uint8_t> bytes(data, data + size);
  try {
    const auto info = preprocessing::probe_image(bytes, "fuzz");
    if (int64_t{info.width} * info.height <= 4096 * 4096) {
      preprocessing::DecodeOptions options;
      options.max_pixels = 4096 * 4096;
      preprocessing::decode_image_bytes(bytes, "fuzz", options);
    }
  } catch (const Error&) {
  }
}

}  // namespace attnscope::fuzz
