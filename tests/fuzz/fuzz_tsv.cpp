// libFuzzer target: scripts/fuzz.sh tsv SECONDS. The entry point lives in fuzz_tsv.h, shared with
// the corpus regression test.
#include "fuzz/fuzz_tsv.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  attnscope::fuzz::tsv(data, size);
  return 0;
}
