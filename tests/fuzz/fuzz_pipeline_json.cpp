// libFuzzer target: scripts/fuzz.sh pipeline_json SECONDS. The entry point lives in
// fuzz_pipeline_json.h, shared with the corpus regression test.
#include "fuzz/fuzz_pipeline_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  attnscope::fuzz::pipeline_json(data, size);
  return 0;
}
