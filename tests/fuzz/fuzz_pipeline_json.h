#pragma once
#include <opencv2/core.hpp>

#include "fuzz/fuzz_targets.h"
#include "preprocessing/pipeline.h"

namespace attnscope::fuzz {

/// The preprocessing JSON config: parse, build the pipeline, run it on a small image.
inline void pipeline_json(const uint8_t* data, std::size_t size) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(as_text(data, size));
  } catch (const nlohmann::json::exception&) {
    return;  // not JSON: nlohmann's own parser, not ours
  }
  try {
    const auto pipeline = preprocessing::Pipeline::from_json(json);
    const cv::Mat image(24, 32, CV_8UC3, cv::Scalar(120, 80, 60));
    pipeline.process(image);
    preprocessing::Pipeline::from_json(pipeline.to_json());
  } catch (const Error&) {
  }
}

}  // namespace attnscope::fuzz
