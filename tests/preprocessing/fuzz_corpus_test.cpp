// Replays every crafted input of tests/fuzz/corpus/<target>/ (inputs found by scripts/fuzz.sh
// and hand-written edge cases) through the fuzzed entry point: none may crash or throw
// anything but attnscope::Error.

#include "fuzz/fuzz_image.h"
#include "fuzz/fuzz_pipeline_json.h"
#include "test_support.h"

namespace attnscope::fuzz {
namespace {

TEST(FuzzCorpusImages, ImageInputsNeverCrash) {
  const auto files = corpus("image");
  ASSERT_FALSE(files.empty());
  for (const auto& file : files) {
    const auto bytes = read_bytes(file);
    EXPECT_NO_THROW(image_header(bytes.data(), bytes.size())) << file;
  }
}

TEST(FuzzCorpusImages, PipelineJsonInputsNeverCrash) {
  const auto files = corpus("pipeline_json");
  ASSERT_FALSE(files.empty());
  for (const auto& file : files) {
    const auto bytes = read_bytes(file);
    EXPECT_NO_THROW(pipeline_json(bytes.data(), bytes.size())) << file;
  }
}

}  // namespace
}  // namespace attnscope::fuzz
