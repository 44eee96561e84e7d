#include "models/vision/resnet.h"

#include "attnscope/error.h"
#include "models/vision/cnn_common.h"

namespace attnscope::models::vision {
namespace nn = torch::nn;
namespace {

nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t padding) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).stride(stride).padding(padding).bias(false));
}

}  // namespace

ResidualBlockImpl::ResidualBlockImpl(const ResidualBlockOptions& options_) : options(options_) {
  reset();
}

int64_t ResidualBlockImpl::out_channels() const {
  return options.bottleneck() ? options.planes() * kBottleneckExpansion : options.planes();
}

void ResidualBlockImpl::reset() {
  const int64_t in = options.in_channels(), planes = options.planes(), s = options.stride();
  check(in > 0 && planes > 0 && s > 0, "ResidualBlock", "in_channels (", in, "), planes (", planes,
        ") and stride (", s, ") must be positive");
  conv3 = nullptr;
  bn3 = nullptr;
  fold1_ = fold2_ = fold3_ = fold_downsample_ = std::nullopt;  // clone() calls reset()
  if (options.bottleneck()) {
    conv1 = register_module("conv1", conv(in, planes, 1, 1, 0));
    bn1 = register_module("bn1", nn::BatchNorm2d(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, s, 1));
    bn2 = register_module("bn2", nn::BatchNorm2d(planes));
    conv3 = register_module("conv3", conv(planes, out_channels(), 1, 1, 0));
    bn3 = register_module("bn3", nn::BatchNorm2d(out_channels()));
  } else {
    conv1 = register_module("conv1", conv(in, planes, 3, s, 1));
    bn1 = register_module("bn1", nn::BatchNorm2d(planes));
    conv2 = register_module("conv2", conv(planes, planes, 3, 1, 1));
    bn2 = register_module("bn2", nn::BatchNorm2d(planes));
  }
  downsample = nullptr;
  if (s != 1 || in != out_channels()) {
    downsample = register_module("downsample", nn::Sequential(conv(in, out_channels(), 1, s, 0),
                                                              nn::BatchNorm2d(out_channels())));
  }
}

torch::Tensor ResidualBlockImpl::forward(const torch::Tensor& x) {
  // In-place ReLUs and residual sum, as torchvision (ReLU(inplace=True), out += identity):
  // BatchNorm's backward does not need its output, so autograd allows it.
  auto out = conv_bn(x, conv1, bn1, fold1_).relu_();
  out = conv_bn(out, conv2, bn2, fold2_);
  if (conv3) out = conv_bn(out.relu_(), conv3, bn3, fold3_);
  if (downsample) {
    // Looked up in `downsample` each time, not kept as members: clone() replaces the
    // Sequential's children after reset() made them.
    nn::Conv2d conv(std::dynamic_pointer_cast<nn::Conv2dImpl>(downsample->ptr(0)));
    nn::BatchNorm2d bn(std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(downsample->ptr(1)));
    out += conv_bn(x, conv, bn, fold_downsample_);
  } else {
    out += x;
  }
  return out.relu_();
}

void ResidualBlockImpl::fold_batch_norm() {
  fold1_ = ConvBnFold::of(conv1, bn1);
  fold2_ = ConvBnFold::of(conv2, bn2);
  if (conv3) fold3_ = ConvBnFold::of(conv3, bn3);
  if (downsample)
    fold_downsample_ = ConvBnFold::of(
        nn::Conv2d(std::dynamic_pointer_cast<nn::Conv2dImpl>(downsample->ptr(0))),
        nn::BatchNorm2d(std::dynamic_pointer_cast<nn::BatchNorm2dImpl>(downsample->ptr(1))));
}

void ResNetTrunk::build(torch::nn::Module& owner) {
  const auto& o = options_;
  check(!o.layers().empty() && o.width() > 0 && o.in_channels() > 0, "ResNet",
        "needs at least one stage and positive width and in_channels");
  fold1_ = std::nullopt;
  conv1 = owner.register_module("conv1", conv(o.in_channels(), o.width(), 7, 2, 3));
  bn1 = owner.register_module("bn1", nn::BatchNorm2d(o.width()));
  layers.clear();
  int64_t in = o.width();
  for (std::size_t i = 0; i < o.layers().size(); ++i) {
    const int64_t planes = o.width() << i;
    const int64_t stride = i == 0 ? 1 : 2;
    nn::Sequential layer;
    for (int64_t b = 0; b < o.layers()[i]; ++b) {
      ResidualBlock block(
          ResidualBlockOptions(in, planes, b == 0 ? stride : 1).bottleneck(o.bottleneck()));
      in = block->out_channels();
      layer->push_back(block);
    }
    layers.push_back(owner.register_module("layer" + std::to_string(i + 1), layer));
  }
}

TrunkOutput ResNetTrunk::forward(const torch::Tensor& x, bool pooled) {
  TrunkOutput out;
  auto y = conv_bn(x.contiguous(torch::MemoryFormat::ChannelsLast), conv1, bn1, fold1_).relu_();
  y = torch::max_pool2d(y, /*kernel_size=*/3, /*stride=*/2, /*padding=*/1);
  for (auto& layer : layers) {
    y = layer->forward(y);
    out.stages.push_back(y);
    if (pooled) out.pooled.push_back(torch::max_pool2d(y, 2, 2));
  }
  out.last = y;
  return out;
}

void ResNetTrunk::fold_batch_norm() {
  fold1_ = ConvBnFold::of(conv1, bn1);
  for (auto& layer : layers)
    for (auto& block : *layer)
      block.ptr()->as<ResidualBlockImpl>()->fold_batch_norm();
}

int64_t ResNetTrunk::num_stages() const {
  return static_cast<int64_t>(options_.layers().size());
}

int64_t ResNetTrunk::stage_channels(int64_t stage) const {
  check(stage >= 0 && stage < num_stages(), "ResNet", "stage ", stage, " out of range [0, ",
        num_stages(), ")");
  const int64_t planes = options_.width() << stage;
  return options_.bottleneck() ? planes * ResidualBlockImpl::kBottleneckExpansion : planes;
}

int64_t ResNetTrunk::out_channels() const {
  return stage_channels(num_stages() - 1);
}

ResNetImpl::ResNetImpl(const ResNetOptions& options_) : options(options_) {
  reset();
}

void ResNetImpl::reset() {
  check(options.num_classes() > 0, "ResNet", "num_classes must be positive, got ",
        options.num_classes());
  trunk = std::make_shared<ResNetTrunk>(options);
  trunk->build(*this);
  fc = register_module("fc", nn::Linear(trunk->out_channels(), options.num_classes()));
  init_cnn_weights(*this);
  use_channels_last(*this);
}

ImageFeatures ResNetImpl::forward_features(const torch::Tensor& images, bool /*need_attention*/) {
  ImageFeatures out;
  out.features = trunk->forward(images).last;
  return out;
}

ImageOutput ResNetImpl::forward_head(const ImageFeatures& features) {
  // Global average pool: (B, C, h, w) -> (B, C).
  return {fc(features.features.mean({2, 3})), {}, {}};
}

ResNetOptions resnet18_options(int64_t num_classes) {
  return ResNetOptions({2, 2, 2, 2}, false).num_classes(num_classes);
}
ResNetOptions resnet34_options(int64_t num_classes) {
  return ResNetOptions({3, 4, 6, 3}, false).num_classes(num_classes);
}
ResNetOptions resnet50_options(int64_t num_classes) {
  return ResNetOptions({3, 4, 6, 3}, true).num_classes(num_classes);
}

}  // namespace attnscope::models::vision
