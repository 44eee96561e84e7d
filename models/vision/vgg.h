#pragma once
// VGG-16 / VGG-16-BN (Simonyan & Zisserman 2015) with torchvision's names — features.N,
// classifier.N — and the small CNN preset (a VGG-style net of about 1.2 M parameters that
// trains on a CPU in minutes).

#include <memory>
#include <vector>

#include <torch/torch.h>

#include "models/vision/classifier.h"
#include "models/vision/cnn_common.h"
#include "models/vision/trunk.h"

namespace attnscope::models::vision {

/// In a VGG configuration, kMaxPool marks a 2×2 max-pool ('M' in torchvision's cfgs).
constexpr int64_t kMaxPool = 0;

struct VggOptions {
  explicit VggOptions(std::vector<int64_t> cfg) : cfg_(std::move(cfg)) {}
  /// Output channels of each 3×3 convolution, kMaxPool for a max-pool; every stage ends in a
  /// max-pool.
  TORCH_ARG(std::vector<int64_t>, cfg);
  /// BatchNorm after every convolution (vgg16_bn).
  TORCH_ARG(bool, batch_norm) = false;
  /// Classes of the last classifier layer.
  TORCH_ARG(int64_t, num_classes) = 1000;
  /// Channels of the input images.
  TORCH_ARG(int64_t, in_channels) = 3;
  /// Side of the adaptive average pool before the classifier (7 in torchvision; 1 = global).
  TORCH_ARG(int64_t, pool_size) = 7;
  /// Width of torchvision's two hidden classifier layers; 0 = dropout + one linear layer.
  TORCH_ARG(int64_t, hidden) = 4096;
  /// Dropout in the classifier.
  TORCH_ARG(double, dropout) = 0.5;
};

/// The VGG trunk: `features`, a Sequential of Conv2d(3×3, padding 1) [+ BatchNorm2d] + ReLU
/// and MaxPool2d(2, 2), indexed as in torchvision. A stage is the run of convolutions up to
/// and including a max-pool.
class VggTrunk : public Trunk {
 public:
  explicit VggTrunk(VggOptions options) : options_(std::move(options)) {}
  void build(torch::nn::Module& owner) override;
  TrunkOutput forward(const torch::Tensor& x, bool pooled = false) override;
  int64_t num_stages() const override { return static_cast<int64_t>(stage_channels_.size()); }
  int64_t stage_channels(int64_t stage) const override;
  int64_t out_channels() const override { return stage_channels(num_stages() - 1); }
  void fold_batch_norm() override;

  torch::nn::Sequential features = nullptr;

 private:
  VggOptions options_;
  std::vector<int64_t> stage_channels_;
  /// folds_[i]: features[i] (a Conv2d) folded with features[i + 1] (its BatchNorm2d).
  std::vector<std::optional<ConvBnFold>> folds_;
};

/// VGG classifier: trunk, adaptive average pool to pool_size², `classifier`.
///
/// Shape: images (B, in_channels, H, W) -> logits (B, num_classes); features (B, C, H/32, W/32)
/// (one halving per stage).
class VggImpl : public ImageClassifier {
 public:
  explicit VggImpl(const VggOptions& options_);
  void reset();
  std::shared_ptr<ImageClassifier> make_like() const override {
    return std::make_shared<VggImpl>(options);
  }
  ImageFeatures forward_features(const torch::Tensor& images, bool need_attention = false) override;
  ImageOutput forward_head(const ImageFeatures& features) override;
  void fold_batch_norm() override { trunk->fold_batch_norm(); }
  int64_t num_classes() const override { return options.num_classes(); }
  std::vector<std::string> head_prefixes() const override { return {"classifier."}; }

  VggOptions options;
  std::shared_ptr<VggTrunk> trunk;
  torch::nn::Sequential classifier = nullptr;
};
TORCH_MODULE(Vgg);

/// torchvision's vgg16 ("D") configuration, with or without BatchNorm.
VggOptions vgg16_options(int64_t num_classes = 1000, bool batch_norm = false);

/// The small CNN: four stages of two 3×3 conv + BN + ReLU (32, 64, 128, 256 channels), each
/// followed by a max-pool; global average pool; dropout + linear. About 1.2 M parameters.
VggOptions small_cnn_options(int64_t num_classes = 2);

}  // namespace attnscope::models::vision
