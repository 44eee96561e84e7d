#pragma once
// Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of training batches, as timm's Mixup
// does them in its default "batch" mode: one λ per batch, image i mixed with image B-1-i (the
// batch reversed), and the loss mixed with the same λ:
//
//   mixup:   x_i <- λ x_i + (1 - λ) x_{B-1-i},                       λ ~ Beta(α, α)
//   cutmix:  a box of x_i replaced by the same box of x_{B-1-i};     λ = 1 - box area / image area
//   loss  =  λ L(logits, y) + (1 - λ) L(logits, y reversed)
//
// Masks (for --mask-loss) are mixed exactly as the images. Every draw comes from LibTorch's
// default generator, which the training loop seeds at the start of every epoch, so a seeded run
// repeats and a resumed run continues as an uninterrupted one.

#include <cstdint>
#include <functional>

#include <torch/torch.h>

namespace attnscope::pipeline {

struct MixOptions {
  /// Mixup: λ ~ Beta(α, α); 0 = off (timm's --mixup, e.g. 0.8).
  double mixup_alpha = 0.0;
  /// CutMix: the box's λ ~ Beta(α, α); 0 = off (timm's --cutmix, e.g. 1.0). With both on, each
  /// batch is CutMix with probability 0.5 and Mixup otherwise (timm's switch_prob).
  double cutmix_alpha = 0.0;
  bool enabled() const { return mixup_alpha > 0 || cutmix_alpha > 0; }
};

/// Rows [y0, y1) and columns [x0, x1) of an image.
struct MixBox {
  int64_t y0 = 0, y1 = 0, x0 = 0, x1 = 0;
  int64_t area() const { return (y1 - y0) * (x1 - x0); }
};

/// λ x + (1 - λ) x.flip(0). Shape: (B, ...) -> (B, ...).
torch::Tensor mixup_reversed(const torch::Tensor& x, double lambda);

/// x with `box` of its last two dimensions taken from x.flip(0). Shape: (B, ..., H, W).
torch::Tensor cutmix_reversed(const torch::Tensor& x, const MixBox& box);

/// timm's rand_bbox: a box of sides 2·⌊H·√(1-λ) / 2⌋ × 2·⌊W·√(1-λ) / 2⌋ centred at (cy, cx),
/// clipped to the H × W image.
MixBox cutmix_box(int64_t height, int64_t width, double lambda, int64_t cy, int64_t cx);

/// A draw of Beta(α, α) (α > 0) as G1 / (G1 + G2), G ~ Gamma(α, 1), from LibTorch's default
/// generator.
double sample_beta(double alpha);

struct MixedBatch {
  torch::Tensor images;  ///< (B, C, H, W)
  torch::Tensor masks;   ///< mixed as the images; undefined when the batch has none
  double lambda = 1.0;   ///< the weight of each image's own label
  bool cutmix = false;
};

/// λ · loss(labels) + (1 - λ) · loss(labels.flip(0)); loss(labels) itself when λ == 1. For
/// cross-entropy this is the cross-entropy against the mixed one-hot targets.
torch::Tensor mixed_loss(const std::function<torch::Tensor(const torch::Tensor&)>& loss,
                         const torch::Tensor& labels, double lambda);

/// Draws this batch's mix (kind, λ, box) and applies it to images and masks (same H × W).
MixedBatch mix_batch(const torch::Tensor& images, const torch::Tensor& masks,
                     const MixOptions& options);

}  // namespace attnscope::pipeline
