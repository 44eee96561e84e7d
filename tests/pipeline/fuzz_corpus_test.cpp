// Replays every crafted input of tests/fuzz/corpus/<target>/ (inputs found by scripts/fuzz.sh
// and hand-written edge cases) through the fuzzed entry point: none may crash or throw
// anything but attnscope::Error.

#include "fuzz/fuzz_checkpoint.h"
#include "test_support.h"

namespace attnscope::fuzz {
namespace {

TEST(FuzzCorpusCheckpoints, CheckpointInputsNeverCrash) {
  const auto files = corpus("checkpoint");
  ASSERT_FALSE(files.empty());
  for (const auto& file : files) {
    const auto bytes = read_bytes(file);
    EXPECT_NO_THROW(checkpoint(bytes.data(), bytes.size())) << file;
  }
}

}  // namespace
}  // namespace attnscope::fuzz
