// libFuzzer target: scripts/fuzz.sh checkpoint SECONDS. The entry point lives in fuzz_checkpoint.h,
// shared with the corpus regression test.
#include "fuzz/fuzz_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  attnscope::fuzz::checkpoint(data, size);
  return 0;
}
