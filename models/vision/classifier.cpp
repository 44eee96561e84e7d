#include "models/vision/classifier.h"

namespace attnscope::models::vision {

ImageOutput ImageClassifier::forward(const torch::Tensor& images, bool need_attention) {
  auto features = forward_features(images, need_attention);
  auto out = forward_head(features);
  out.maps.merge(features.maps);
  out.attention = std::move(features.attention);
  return out;
}

}  // namespace attnscope::models::vision
