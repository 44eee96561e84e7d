#pragma once
// Faithfulness and localisation measures of saliency maps.
//
//   rise_auc          deletion and insertion AUC (Petsiuk et al. 2018, "RISE"): pixels ranked
//                     by the map (up-sampled bilinearly to the input), `steps` equal groups
//                     changed in turn — deleted to a substrate (black, or the mean colour),
//                     or inserted into a blurred copy — the score (probability of the target
//                     class) taken after each step, the area under the curve by the trapezoid
//                     rule over the fraction of pixels changed ∈ [0, 1]. All steps of one map
//                     are evaluated as one batch.
//   mass_in_mask, jaccard, pointing_game
//                     localisation against a lesion mask; jaccard min-max normalises the map
//                     and thresholds it at 0.5 (AttnMel's evaluation).
//   gaussian_prior, random_map
//                     the baselines a map must beat: a centred Gaussian (σ = 0.15 of the side)
//                     and uniform noise seeded per image.

#include <cstdint>
#include <functional>
#include <string>

#include <torch/torch.h>

namespace attnscope::pipeline {

/// Probabilities of the target class for a batch of normalised images. Shape: (K, 3, H, W) -> (K).
using ScoreFn = std::function<torch::Tensor(const torch::Tensor& images)>;

struct RiseOptions {
  /// Groups of pixels changed one after another (the curve has steps + 1 points).
  int steps = 32;
  /// The deletion substrate in normalised units, per channel: (3) — e.g. the normalisation of
  /// a black pixel; undefined = 0 (the mean colour).
  torch::Tensor substrate;
  /// σ in pixels of the Gaussian blur the insertion starts from.
  double blur_sigma = 5.0;
  /// Images per forward pass (the steps of one curve are split into batches of this size).
  int64_t batch_size = 64;
};

struct RiseResult {
  double deletion_auc = 0, insertion_auc = 0;
  torch::Tensor deletion_curve, insertion_curve;  ///< (steps + 1)
};

/// Shape: image (3, H, W) normalised; map (h, w) any non-negative size (up-sampled to H × W).
RiseResult rise_auc(const ScoreFn& score, const torch::Tensor& image, const torch::Tensor& map,
                    const RiseOptions& options = {});

/// The trapezoid area under y over x ∈ [0, 1] with equally spaced points. Shape: (n ≥ 2).
double trapezoid_auc(const torch::Tensor& y);

/// Bilinear (align_corners = false) up-sampling of maps to (H, W). Shape: (B, h, w) -> (B, H, W).
torch::Tensor upsample_maps(const torch::Tensor& maps, int64_t height, int64_t width);

/// Share of the map's mass inside mask (NaN for an all-zero map). Shape: map, mask (H, W).
double mass_in_mask(const torch::Tensor& map, const torch::Tensor& mask);
/// Jaccard index of (min-max normalised map >= threshold) with mask (> 0.5). A constant map
/// counts as all above the threshold. Shape: map, mask (H, W).
double jaccard(const torch::Tensor& map, const torch::Tensor& mask, double threshold = 0.5);
/// 1 when the map's (first) maximum lies inside the mask, else 0. Shape: (H, W).
double pointing_game(const torch::Tensor& map, const torch::Tensor& mask);

/// exp(-((x - cx)² / 2(σW)² + (y - cy)² / 2(σH)²)), σ = sigma_fraction. Shape: (H, W).
torch::Tensor gaussian_prior(int64_t height, int64_t width, double sigma_fraction = 0.15);
/// Uniform [0, 1) noise of shape (H, W) seeded by (seed, key): the same for the same image id.
torch::Tensor random_map(int64_t height, int64_t width, const std::string& key, uint64_t seed = 0);

}  // namespace attnscope::pipeline
