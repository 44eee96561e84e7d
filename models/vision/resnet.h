#pragma once
// ResNet-18/34/50 (He et al. 2016) with torchvision's module names: conv1, bn1,
// layer1..layer4 (blocks `N` with conv1, bn1, conv2, bn2[, conv3, bn3][, downsample.0/1]),
// fc. torchvision state_dicts load by name (see tools/python/export_weights.py).

#include <memory>
#include <optional>
#include <vector>

#include <torch/torch.h>

#include "models/vision/classifier.h"
#include "models/vision/cnn_common.h"
#include "models/vision/trunk.h"

namespace attnscope::models::vision {

struct ResidualBlockOptions {
  ResidualBlockOptions(int64_t in_channels, int64_t planes, int64_t stride = 1)
      : in_channels_(in_channels), planes_(planes), stride_(stride) {}
  /// Channels of the input.
  TORCH_ARG(int64_t, in_channels);
  /// Width of the block; the output has planes (basic) or 4·planes (bottleneck) channels.
  TORCH_ARG(int64_t, planes);
  /// Stride of the 3×3 convolution (torchvision v1.5 puts it there in bottlenecks too).
  TORCH_ARG(int64_t, stride) = 1;
  /// Bottleneck (1×1, 3×3, 1×1 with expansion 4; ResNet-50) instead of basic (3×3, 3×3).
  TORCH_ARG(bool, bottleneck) = false;
};

/// torchvision's BasicBlock / Bottleneck. `downsample` (1×1 conv + BN) exists when the stride
/// or the channel count changes.
///
/// Shape: (B, in_channels, H, W) -> (B, out_channels(), H / stride, W / stride).
class ResidualBlockImpl : public torch::nn::Cloneable<ResidualBlockImpl> {
 public:
  static constexpr int64_t kBottleneckExpansion = 4;

  explicit ResidualBlockImpl(const ResidualBlockOptions& options_);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  int64_t out_channels() const;
  /// See Trunk::fold_batch_norm.
  void fold_batch_norm();

  ResidualBlockOptions options;
  torch::nn::Conv2d conv1 = nullptr, conv2 = nullptr, conv3 = nullptr;
  torch::nn::BatchNorm2d bn1 = nullptr, bn2 = nullptr, bn3 = nullptr;
  torch::nn::Sequential downsample = nullptr;

 private:
  std::optional<ConvBnFold> fold1_, fold2_, fold3_, fold_downsample_;
};
TORCH_MODULE(ResidualBlock);

struct ResNetOptions {
  ResNetOptions(std::vector<int64_t> layers, bool bottleneck)
      : layers_(std::move(layers)), bottleneck_(bottleneck) {}
  /// Blocks per stage: {2, 2, 2, 2} (ResNet-18), {3, 4, 6, 3} (34 and 50).
  TORCH_ARG(std::vector<int64_t>, layers);
  /// Bottleneck blocks (ResNet-50).
  TORCH_ARG(bool, bottleneck);
  /// Classes of `fc`.
  TORCH_ARG(int64_t, num_classes) = 1000;
  /// Channels of the input images.
  TORCH_ARG(int64_t, in_channels) = 3;
  /// Width of conv1 and of layer1; each later stage doubles it.
  TORCH_ARG(int64_t, width) = 64;
};

/// The ResNet trunk: conv1 (7×7/2), bn1, ReLU, max-pool (3×3/2), layer1..layer4.
class ResNetTrunk : public Trunk {
 public:
  explicit ResNetTrunk(ResNetOptions options) : options_(std::move(options)) {}
  void build(torch::nn::Module& owner) override;
  TrunkOutput forward(const torch::Tensor& x, bool pooled = false) override;
  int64_t num_stages() const override;
  int64_t stage_channels(int64_t stage) const override;
  int64_t out_channels() const override;
  void fold_batch_norm() override;

  torch::nn::Conv2d conv1 = nullptr;
  torch::nn::BatchNorm2d bn1 = nullptr;
  std::vector<torch::nn::Sequential> layers;

 private:
  ResNetOptions options_;
  std::optional<ConvBnFold> fold1_;
};

/// ResNet classifier: trunk, global average pool, `fc`.
///
/// Shape: images (B, in_channels, H, W) -> logits (B, num_classes); features (B, C, H/32, W/32).
class ResNetImpl : public ImageClassifier {
 public:
  explicit ResNetImpl(const ResNetOptions& options_);
  void reset();
  std::shared_ptr<ImageClassifier> make_like() const override {
    return std::make_shared<ResNetImpl>(options);
  }
  ImageFeatures forward_features(const torch::Tensor& images, bool need_attention = false) override;
  ImageOutput forward_head(const ImageFeatures& features) override;
  void fold_batch_norm() override { trunk->fold_batch_norm(); }
  int64_t num_classes() const override { return options.num_classes(); }
  std::vector<std::string> head_prefixes() const override { return {"fc."}; }

  ResNetOptions options;
  std::shared_ptr<ResNetTrunk> trunk;
  torch::nn::Linear fc = nullptr;
};
TORCH_MODULE(ResNet);

/// torchvision's configurations.
ResNetOptions resnet18_options(int64_t num_classes = 1000);
ResNetOptions resnet34_options(int64_t num_classes = 1000);
ResNetOptions resnet50_options(int64_t num_classes = 1000);

}  // namespace attnscope::models::vision
