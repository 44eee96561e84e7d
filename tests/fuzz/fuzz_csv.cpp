// libFuzzer target: scripts/fuzz.sh csv SECONDS. The entry point lives in fuzz_csv.h, shared with
// the corpus regression test.
#include "fuzz/fuzz_csv.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  attnscope::fuzz::csv(data, size);
  return 0;
}
