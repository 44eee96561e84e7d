#pragma once
// A CNN trunk: the convolutional part of a backbone, cut into stages, registered into the
// module that owns it under torchvision's names (ResNet: conv1, bn1, layer1..layer4; VGG:
// features.N). The plain classifiers (ResNet, Vgg) and the attention-CNN share the trunks, so
// torchvision weights load into both by name.

#include <memory>
#include <vector>

#include <torch/torch.h>

namespace attnscope::models::vision {

struct TrunkOutput {
  /// Every stage's output before its pooling layer, (B, C_i, h_i, w_i).
  std::vector<torch::Tensor> stages;
  /// Every stage's output after its pooling layer (VGG: the stage's max-pool; ResNet, whose
  /// stages end without pooling: a 2×2 max-pool); filled only when asked for.
  std::vector<torch::Tensor> pooled;
  /// The trunk's output (VGG: after the last max-pool; ResNet: layer4): what the head pools
  /// and what Grad-CAM differentiates against. (B, out_channels, h, w).
  torch::Tensor last;
};

class Trunk {
 public:
  virtual ~Trunk() = default;
  /// Creates the modules and registers them into owner. Call from owner's reset().
  virtual void build(torch::nn::Module& owner) = 0;
  /// Runs the trunk. pooled: also fill TrunkOutput::pooled.
  /// Shape: x (B, C_in, H, W) -> see TrunkOutput.
  virtual TrunkOutput forward(const torch::Tensor& x, bool pooled = false) = 0;
  virtual int64_t num_stages() const = 0;
  /// Channels of stage i's output (0-based).
  virtual int64_t stage_channels(int64_t stage) const = 0;
  /// Channels of TrunkOutput::last.
  virtual int64_t out_channels() const = 0;
  /// Folds every BatchNorm2d into the convolution before it for inference (ConvBnFold in
  /// cnn_common.h): forward then skips the BatchNorm passes while the folds are current, and
  /// falls back to the modules as they are in training mode or once a weight changes.
  virtual void fold_batch_norm() = 0;
};

}  // namespace attnscope::models::vision
