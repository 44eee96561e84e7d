#include "models/vision/vgg.h"

#include "attnscope/error.h"
#include "models/vision/cnn_common.h"

namespace attnscope::models::vision {
namespace nn = torch::nn;

void VggTrunk::build(torch::nn::Module& owner) {
  const auto& cfg = options_.cfg();
  check(!cfg.empty() && cfg.back() == kMaxPool, "VGG",
        "the configuration must be non-empty and end in a max-pool");
  nn::Sequential seq;
  stage_channels_.clear();
  folds_.clear();
  int64_t in = options_.in_channels();
  int64_t convs_in_stage = 0;
  for (const int64_t v : cfg) {
    if (v == kMaxPool) {
      check(convs_in_stage > 0, "VGG", "a stage needs at least one convolution");
      convs_in_stage = 0;
      seq->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2).stride(2)));
      stage_channels_.push_back(in);
      continue;
    }
    check(v > 0, "VGG", "channel counts must be positive, got ", v);
    seq->push_back(nn::Conv2d(nn::Conv2dOptions(in, v, 3).padding(1)));
    if (options_.batch_norm()) seq->push_back(nn::BatchNorm2d(v));
    seq->push_back(nn::ReLU(nn::ReLUOptions(/*inplace=*/true)));
    in = v;
    ++convs_in_stage;
  }
  features = owner.register_module("features", seq);
}

TrunkOutput VggTrunk::forward(const torch::Tensor& x, bool pooled) {
  TrunkOutput out;
  auto y = x.contiguous(torch::MemoryFormat::ChannelsLast);  // see use_channels_last
  const auto modules = features->begin();                    // AnyModule, by index
  const auto count = static_cast<std::size_t>(features->size());
  for (std::size_t i = 0; i < count; ++i) {
    auto& module = modules[static_cast<std::ptrdiff_t>(i)];
    if (i < folds_.size() && folds_[i]) {
      nn::Conv2d conv(std::dynamic_pointer_cast<nn::Conv2dImpl>(module.ptr()));
      nn::BatchNorm2d bn(std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(
          modules[static_cast<std::ptrdiff_t>(i + 1)].ptr()));
      if (folds_[i]->applies_to(conv, bn)) {
        y = folds_[i]->forward(y, conv);
        ++i;  // its BatchNorm2d is in the fold
        continue;
      }
    }
    const bool is_pool = module.ptr()->as<nn::MaxPool2d>() != nullptr;
    if (is_pool) out.stages.push_back(y);
    y = module.forward(y);
    if (is_pool && pooled) out.pooled.push_back(y);
  }
  out.last = y;
  return out;
}

void VggTrunk::fold_batch_norm() {
  folds_.assign(features->size(), std::nullopt);
  for (std::size_t i = 0; i + 1 < features->size(); ++i) {
    auto* conv = features[i]->as<nn::Conv2d>();
    auto* bn = features[i + 1]->as<nn::BatchNorm2d>();
    if (conv && bn)
      folds_[i] = ConvBnFold::of(
          nn::Conv2d(std::dynamic_pointer_cast<nn::Conv2dImpl>(features->ptr(i))),
          nn::BatchNorm2d(std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(features->ptr(i + 1))));
  }
}

int64_t VggTrunk::stage_channels(int64_t stage) const {
  check(stage >= 0 && stage < num_stages(), "VGG", "stage ", stage, " out of range [0, ",
        num_stages(), ")");
  return stage_channels_[static_cast<std::size_t>(stage)];
}

VggImpl::VggImpl(const VggOptions& options_) : options(options_) {
  reset();
}

void VggImpl::reset() {
  check(options.num_classes() > 0 && options.pool_size() > 0, "VGG",
        "num_classes and pool_size must be positive");
  trunk = std::make_shared<VggTrunk>(options);
  trunk->build(*this);
  const int64_t in = trunk->out_channels() * options.pool_size() * options.pool_size();
  nn::Sequential head;
  if (options.hidden() > 0) {
    const int64_t h = options.hidden();
    head->push_back(nn::Linear(in, h));
    head->push_back(nn::ReLU(nn::ReLUOptions(true)));
    head->push_back(nn::Dropout(options.dropout()));
    head->push_back(nn::Linear(h, h));
    head->push_back(nn::ReLU(nn::ReLUOptions(true)));
    head->push_back(nn::Dropout(options.dropout()));
    head->push_back(nn::Linear(h, options.num_classes()));
  } else {
    head->push_back(nn::Dropout(options.dropout()));
    head->push_back(nn::Linear(in, options.num_classes()));
  }
  classifier = register_module("classifier", head);
  init_cnn_weights(*this);
  use_channels_last(*this);
  // torchvision: linear layers N(0, 0.01), bias 0.
  torch::NoGradGuard no_grad;
  for (auto& m : classifier->modules(false)) {
    if (auto* l = m->as<nn::Linear>()) {
      l->weight.normal_(0.0, 0.01);
      l->bias.zero_();
    }
  }
}

ImageFeatures VggImpl::forward_features(const torch::Tensor& images, bool /*need_attention*/) {
  ImageFeatures out;
  out.features = trunk->forward(images).last;
  return out;
}

ImageOutput VggImpl::forward_head(const ImageFeatures& features) {
  const int64_t s = options.pool_size();
  auto x = torch::adaptive_avg_pool2d(features.features, {s, s});
  return {classifier->forward(x.flatten(1)), {}, {}};  // flatten: (B, C·s·s)
}

VggOptions vgg16_options(int64_t num_classes, bool batch_norm) {
  const int64_t M = kMaxPool;
  return VggOptions({64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M})
      .batch_norm(batch_norm)
      .num_classes(num_classes);
}

VggOptions small_cnn_options(int64_t num_classes) {
  const int64_t M = kMaxPool;
  return VggOptions({32, 32, M, 64, 64, M, 128, 128, M, 256, 256, M})
      .batch_norm(true)
      .num_classes(num_classes)
      .pool_size(1)
      .hidden(0)
      .dropout(0.2);
}

}  // namespace attnscope::models::vision
