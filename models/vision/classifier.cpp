#include "models/vision/classifier.h"

#include "attnscope/error.h"

namespace attnscope::models::vision {

ImageOutput ImageClassifier::forward(const torch::Tensor& images, bool need_attention) {
  auto features = forward_features(images, need_attention);
  auto out = forward_head(features);
  out.maps.merge(features.maps);
  out.attention = std::move(features.attention);
  return out;
}

std::shared_ptr<torch::nn::Module> ImageClassifier::clone(
    const c10::optional<torch::Device>& device) const {
  torch::NoGradGuard no_grad;
  auto copy = make_like();
  const auto copy_into = [&](const torch::OrderedDict<std::string, torch::Tensor>& from,
                             torch::OrderedDict<std::string, torch::Tensor> into,
                             const char* what) {
    check(from.size() == into.size(), "clone", "the new classifier has ", into.size(), " ", what,
          "s, this one ", from.size());
    for (const auto& item : from) {
      auto* target = into.find(item.key());
      check(target != nullptr && target->sizes() == item.value().sizes(), "clone",
            "the new classifier has no ", what, " '", item.key(), "' of shape ",
            item.value().sizes());
      const auto& t = item.value();
      target->set_data(device && t.device() != *device ? t.to(*device) : t.clone());
    }
  };
  copy_into(named_parameters(), copy->named_parameters(), "parameter");
  copy_into(named_buffers(), copy->named_buffers(), "buffer");
  copy->train(is_training());
  return copy;
}

}  // namespace attnscope::models::vision
