#pragma once
// Explanations of image classifiers. Every function returns maps (B, h, w) in [0, 1] at the
// model's native resolution (the patch grid, the last feature map); callers up-sample them
// for overlays.
//
//   attention_rollout  Abnar & Zuidema 2020: the product over layers of (A + I) / 2, rows
//                      renormalised, A fused over heads (mean | max | min), the lowest
//                      discard_ratio of each layer's fused weights dropped (class token kept);
//                      the class token's row over the patches.
//   gradient_rollout   the same with A replaced by relu(mean_heads(A ⊙ ∂y_c/∂A)) (the
//                      gradient-weighted rollout of jacobgil/vit-explain, after Chefer et al.).
//   grad_cam           Selvaraju et al. 2017: relu(Σ_c mean_hw(∂y/∂F_c) F_c) on the last
//                      feature map F of any classifier with spatial features.

#include <string>
#include <vector>

#include <torch/torch.h>

#include "models/vision/classifier.h"

namespace attnscope::models::vision {

/// How the heads of one layer are fused into one matrix.
enum class HeadFusion { mean, max, min };

/// "mean" | "max" | "min"; throws attnscope::Error on another name.
HeadFusion head_fusion_from_string(const std::string& name);

struct RolloutOptions {
  /// Fusion of the heads of each layer.
  TORCH_ARG(HeadFusion, head_fusion) = HeadFusion::mean;
  /// Fraction in [0, 1) of each layer's fused weights (the lowest) set to 0 before adding the
  /// identity; the class token's weight on itself is never dropped.
  TORCH_ARG(double, discard_ratio) = 0.0;
};

/// The rollout matrix.
///
/// Shape: attention: layers × (B, H, T, T) -> (B, T, T); every row sums to 1.
torch::Tensor rollout_matrix(const std::vector<torch::Tensor>& attention,
                             const RolloutOptions& options = {});

/// Attention rollout map of the class token (token 0) over the patch tokens 1..T-1, scaled by
/// its maximum.
///
/// Shape: attention: layers × (B, H, T, T) with T = 1 + grid_h·grid_w -> (B, grid_h, grid_w).
torch::Tensor attention_rollout(const std::vector<torch::Tensor>& attention, int64_t grid_h,
                                int64_t grid_w, const RolloutOptions& options = {});

/// Gradient-weighted rollout from the attention weights and the gradients of the explained
/// logit with respect to them.
///
/// Shape: attention, gradients: layers × (B, H, T, T) -> (B, grid_h, grid_w).
torch::Tensor gradient_rollout(const std::vector<torch::Tensor>& attention,
                               const std::vector<torch::Tensor>& gradients, int64_t grid_h,
                               int64_t grid_w, double discard_ratio = 0.0);

/// Grad-CAM of the logit `targets[b]` (undefined: the predicted class) of image b with respect
/// to model.forward_features().features. Takes gradients through the head only (the features
/// are detached), so frozen models and NoGradGuard callers work too.
///
/// Shape: images (B, C, H, W), targets (B) int64 -> (B, h, w) of the last feature map.
torch::Tensor grad_cam(ImageClassifier& model, const torch::Tensor& images,
                       const torch::Tensor& targets = {});

/// Grad-CAM from features that model.forward_features already computed (with or without
/// autograd): runs only the head, with autograd. A caller that needs the logits and the map
/// runs the trunk once (batch classification does).
///
/// Shape: features.features (B, C, h, w), targets (B) int64 -> (B, h, w).
torch::Tensor grad_cam(ImageClassifier& model, const ImageFeatures& features,
                       const torch::Tensor& targets = {});

/// The head run once, with autograd, on detached trunk features: its logits and own maps, and
/// the graph back to the features that Grad-CAM needs. A caller that wants the predictions,
/// the own maps and Grad-CAM of classes chosen after seeing the logits (batch classification)
/// runs the head once instead of twice.
struct HeadForGradCam {
  ImageOutput output;     ///< logits (carrying the graph) and the head's own maps
  torch::Tensor features; ///< the leaf the gradient is taken for: (B, C, h, w)
};
HeadForGradCam forward_head_for_grad_cam(ImageClassifier& model, const ImageFeatures& features);

/// Grad-CAM from a head pass of forward_head_for_grad_cam (uses up its graph: once per pass).
///
/// Shape: targets (B) int64 (undefined: the predicted class) -> (B, h, w).
torch::Tensor grad_cam(const HeadForGradCam& head, const torch::Tensor& targets = {});

/// Gradient-weighted rollout of a ViT-style model (one that returns per-layer attention with
/// need_attention).
///
/// Shape: images (B, C, H, W), targets (B) int64 -> (B, grid_h, grid_w).
torch::Tensor vit_gradient_rollout(ImageClassifier& model, const torch::Tensor& images,
                                   const torch::Tensor& targets = {}, double discard_ratio = 0.0);

/// Divides every non-negative map by its maximum (an all-zero map stays 0).
///
/// Shape: (B, h, w) -> (B, h, w) in [0, 1].
torch::Tensor scale_maps(const torch::Tensor& maps);

}  // namespace attnscope::models::vision
