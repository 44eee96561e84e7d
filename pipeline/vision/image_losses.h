#pragma once
// Mask-regularised attention (Yan et al. 2019, "Melanoma Recognition via Visual Attention"):
// during training, each attention map is pulled towards the lesion mask by a Dice loss.

#include <map>
#include <string>

#include <torch/torch.h>

namespace attnscope::pipeline {

/// Soft Dice loss 1 - (2 Σ p·m + eps) / (Σ p + Σ m + eps) per image, averaged over the batch.
///
/// Shape: prediction, mask (B, h, w), values in [0, 1] -> scalar.
torch::Tensor dice_loss(const torch::Tensor& prediction, const torch::Tensor& mask,
                        double eps = 1.0);

struct AttentionMaskLossOptions {
  /// Weight of each map's Dice loss by map name; maps not listed get `default_weight`.
  /// AttnMel: 0.001 for the shallower map (pool3) and 0.01 for the deeper one (pool4).
  std::map<std::string, double> weights = {{"stage3", 0.001}, {"stage4", 0.01}};
  /// Weight of maps not in `weights`.
  double default_weight = 0.001;
};

/// Σ_maps weight · dice_loss(map / max(map), mask down-sampled to the map's size). The mask
/// is area-averaged down to (h, w) (a fraction of lesion per cell). Softmax maps, which sum to
/// 1, are rescaled by their maximum per image so that they are comparable with a 0/1 mask.
///
/// Shape: maps (B, h_i, w_i) by name, lesion_mask (B, H, W) or (B, 1, H, W) in [0, 1]
/// -> scalar.
torch::Tensor attention_mask_loss(const std::map<std::string, torch::Tensor>& maps,
                                  const torch::Tensor& lesion_mask,
                                  const AttentionMaskLossOptions& options = {});

}  // namespace attnscope::pipeline
