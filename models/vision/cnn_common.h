#pragma once
// What every CNN in models/vision shares (ResNet, VGG, the attention-CNNs): torchvision's
// initialisation and the channels-last weight layout (each model's reset() calls both), and
// the BatchNorm fold the trunks use for inference (ConvBnFold).

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
/// BatchNorm pass over the activations disappears (docs/performance.md: +9 % for attn_small's
/// forward pass on CPU, within noise for attn_resnet18). The module's own parameters stay as
/// they are (a checkpoint saved afterwards holds the real ones); the fold is a copy that
/// applies only while it is current (below). Make and use folds on one thread (or with no
/// forward running), as for any other change to a module.
class ConvBnFold {
 public:
  ConvBnFold() = default;
  /// Folds conv and bn as they are now (computed in double, stored in conv's dtype and layout).
  /// Throws unless can_fold(conv, bn).
  ConvBnFold(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn);

  /// True for what the fold handles: a convolution with numeric zero padding and a BatchNorm2d
  /// with running statistics for its output channels.
  static bool can_fold(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn);
  /// The fold of conv and bn, or none when !can_fold(conv, bn) (bn(conv(x)) then runs as is).
  static std::optional<ConvBnFold> of(const torch::nn::Conv2d& conv,
                                      const torch::nn::BatchNorm2d& bn);

  /// True when this fold may replace bn(conv(x)): it was made from these modules' tensors and
  /// none of them was changed since (the same storage, unchanged version counters; BatchNorm's
  /// num_batches_tracked counts its training-mode passes, whose statistics updates leave
  /// running_mean's counter as it is in LibTorch 1.13), bn is in eval mode, and no gradient
  /// of any folded parameter is being recorded (tuning with frozen statistics still
  /// differentiates the real ones). Writes that bypass version counters (through .data() or
  /// raw pointers) are not seen: call fold_batch_norm() again after them.
  bool applies_to(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn) const;

  /// The folded convolution, with conv's stride, padding, dilation and groups.
  torch::Tensor forward(const torch::Tensor& x, const torch::nn::Conv2d& conv) const;

 private:
  struct Seen {
    c10::Storage storage;  // held, so a freed block cannot come back at the same address
    int64_t offset = 0;
    int64_t version = 0;
    bool operator==(const Seen& o) const {
      return storage.unsafeGetStorageImpl() == o.storage.unsafeGetStorageImpl() &&
             offset == o.offset && version == o.version;
    }
  };
  static std::vector<Seen> seen(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn);

  torch::Tensor weight_, bias_;
  std::vector<Seen> seen_;
};

/// bn(conv(x)), through fold when it applies (see ConvBnFold::applies_to).
torch::Tensor conv_bn(const torch::Tensor& x, torch::nn::Conv2d& conv, torch::nn::BatchNorm2d& bn,
                      const std::optional<ConvBnFold>& fold);

}  // namespace attnscope::models::vision
