#include "pipeline/vision/image_losses.h"

#include "attnscope/error.h"

namespace attnscope::pipeline {

torch::Tensor dice_loss(const torch::Tensor& prediction, const torch::Tensor& mask, double eps) {
  check(prediction.dim() == 3 && prediction.sizes() == mask.sizes(), "dice_loss",
        "prediction and mask must both be (B, h, w), got ", prediction.sizes(), " and ",
        mask.sizes());
  const auto p = prediction.flatten(1), m = mask.flatten(1);  // (B, h·w)
  const auto dice = (2.0 * (p * m).sum(1) + eps) / (p.sum(1) + m.sum(1) + eps);
  return (1.0 - dice).mean();
}

torch::Tensor attention_mask_loss(const std::map<std::string, torch::Tensor>& maps,
                                  const torch::Tensor& lesion_mask,
                                  const AttentionMaskLossOptions& options) {
  check(lesion_mask.dim() == 3 || (lesion_mask.dim() == 4 && lesion_mask.size(1) == 1),
        "attention_mask_loss", "the lesion mask must be (B, H, W) or (B, 1, H, W), got ",
        lesion_mask.sizes());
  const auto mask = (lesion_mask.dim() == 3 ? lesion_mask.unsqueeze(1) : lesion_mask)
                        .to(torch::kFloat);  // (B, 1, H, W)
  auto total = torch::zeros({}, mask.options());
  for (const auto& [name, map] : maps) {
    check(map.dim() == 3 && map.size(0) == mask.size(0), "attention map '" + name + "'",
          "expected (", mask.size(0), ", h, w), got ", map.sizes());
    auto it = options.weights.find(name);
    const double weight = it == options.weights.end() ? options.default_weight : it->second;
    if (weight == 0.0) continue;
    const auto small =
        torch::adaptive_avg_pool2d(mask, {map.size(1), map.size(2)}).squeeze(1);  // (B, h, w)
    const auto peak = std::get<0>(map.flatten(1).max(1)).view({-1, 1, 1}).clamp_min(1e-12);
    total = total + weight * dice_loss(map / peak, small.to(map.dtype()));
  }
  return total;
}

}  // namespace attnscope::pipeline
