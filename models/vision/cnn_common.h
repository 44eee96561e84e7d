#pragma once
// What every CNN in models/vision shares (ResNet, VGG, the attention-CNNs): torchvision's
// initialisation and the channels-last weight layout. Each model's reset() calls both.

#include <optional>
#include <vector>

#include <torch/torch.h>

namespace attnscope::models::vision {

/// torchvision's initialisation: Kaiming-normal (fan_out, ReLU) convolutions, BN weight 1 and
/// bias 0. Applied to every Conv2d and BatchNorm2d below module.
void init_cnn_weights(torch::nn::Module& module);

/// Stores every 4-D parameter (the convolution weights) below module in channels-last order.
/// With channels-last inputs (the trunks convert theirs) LibTorch's oneDNN convolutions run
/// about 1.4× faster on CPU than in the default NCHW order; copy_ (checkpoint loading) and
/// clone keep the order, and checkpoints store logical (NCHW) tensors either way.
void use_channels_last(torch::nn::Module& module);

}  // namespace attnscope::models::vision

namespace attnscope::models::vision {

/// A convolution and the BatchNorm2d after it folded into one convolution, for inference:
/// with s = γ / √(running_var + ε), weight' = weight · s (per output channel) and
/// bias' = (bias − running_mean) · s + β, so conv'(x) = bn(conv(x)) in eval mode and the
/// BatchNorm pass over the activations disappears (about a fifth of a ResNet-18's CPU
/// forward time). The module's own parameters stay as they are (a checkpoint saved afterwards
/// holds the real ones); the fold is a copy that applies only while it is current (below).
class ConvBnFold {
 public:
  ConvBnFold() = default;
  /// Folds conv and bn as they are now (computed in double, stored in conv's dtype and layout).
  ConvBnFold(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn);

  /// True when this fold may replace bn(conv(x)): it was made from these modules' tensors,
  /// none of them was changed since (version counters, storage), bn is in eval mode, and no
  /// gradient for conv's weight is being recorded (training with frozen BatchNorm still
  /// differentiates the real weights).
  bool applies_to(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn) const;

  /// The folded convolution, with conv's stride, padding, dilation and groups.
  torch::Tensor forward(const torch::Tensor& x, const torch::nn::Conv2d& conv) const;

 private:
  struct Seen {
    const void* data = nullptr;
    int64_t version = 0;
  };
  static std::vector<Seen> seen(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn);

  torch::Tensor weight_, bias_;
  std::vector<Seen> seen_;
};

/// bn(conv(x)), through fold when it applies (see ConvBnFold::applies_to).
torch::Tensor conv_bn(const torch::Tensor& x, torch::nn::Conv2d& conv, torch::nn::BatchNorm2d& bn,
                      const std::optional<ConvBnFold>& fold);

}  // namespace attnscope::models::vision
