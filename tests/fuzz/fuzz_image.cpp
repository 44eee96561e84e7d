// libFuzzer target: scripts/fuzz.sh image SECONDS. The entry point lives in fuzz_image.h, shared
// with the corpus regression test.
#include "fuzz/fuzz_image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  attnscope::fuzz::image_header(data, size);
  return 0;
}
