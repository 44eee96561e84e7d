// Replays every crafted input of tests/fuzz/corpus/<target>/ (inputs found by scripts/fuzz.sh
// and hand-written edge cases) through the fuzzed entry point: none may crash or throw
// anything but attnscope::Error.

#include "fuzz/fuzz_csv.h"
#include "fuzz/fuzz_tsv.h"
#include "test_support.h"

namespace attnscope::fuzz {
namespace {

TEST(FuzzCorpusTables, CsvInputsNeverCrash) {
  const auto files = corpus("csv");
  ASSERT_FALSE(files.empty());
  for (const auto& file : files) {
    const auto bytes = read_bytes(file);
    EXPECT_NO_THROW(csv(bytes.data(), bytes.size())) << file;
  }
}

TEST(FuzzCorpusTables, TsvInputsNeverCrash) {
  const auto files = corpus("tsv");
  ASSERT_FALSE(files.empty());
  for (const auto& file : files) {
    const auto bytes = read_bytes(file);
    EXPECT_NO_THROW(tsv(bytes.data(), bytes.size())) << file;
  }
}

}  // namespace
}  // namespace attnscope::fuzz
