#pragma once
// The one interface of every attnscope image classifier (plain CNNs, attention-CNNs, ViTs).
//
//   forward(images)          = forward_head(forward_features(images))
//   forward_features(images) -> the last feature map (the Grad-CAM target) + attention maps
//   forward_head(features)   -> logits (+ the maps the head computes: the attention-CNN's
//                               spatial attention, whose query is the pooled last feature map)
//
// The split lets explanations take gradients with respect to the features (Grad-CAM) without
// knowing the model, and lets callers read the attention maps the model used, by name.

#include <map>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace attnscope::models::vision {

/// What forward_features hands to forward_head.
struct ImageFeatures {
  /// CNNs: the last feature map (B, C, h, w), the Grad-CAM target. ViT: the token sequence
  /// after the final norm (B, 1 + h·w, D).
  torch::Tensor features;
  /// Further tensors the head needs (the attention-CNN's tapped stage features (B, C_i, h_i,
  /// w_i)); empty for plain CNNs and the ViT.
  std::vector<torch::Tensor> stages;
  /// Attention maps by name ("stage3", "rollout", ...), each (B, h, w).
  std::map<std::string, torch::Tensor> maps;
  /// ViT with need_attention: per layer, the per-head weights (B, H, T, T); else empty.
  std::vector<torch::Tensor> attention;
  /// ViT: the patch grid (h, w) of the tokens after the class token; 0 for CNNs.
  int64_t grid_h = 0;
  int64_t grid_w = 0;
};

/// What forward returns.
struct ImageOutput {
  torch::Tensor logits;                       ///< (B, num_classes)
  std::map<std::string, torch::Tensor> maps;  ///< attention maps by name, (B, h, w)
  std::vector<torch::Tensor> attention;       ///< ViT per-layer (B, H, T, T), when requested
};

/// Implemented by every image classifier module. Derives (virtually) from torch::nn::Module,
/// so a std::shared_ptr<ImageClassifier> is also the module to train, save and load.
///
/// The classifiers derive from this class alone, not also from torch::nn::Cloneable: from
/// LibTorch 2 on Cloneable derives from Module non-virtually, which would give them two
/// Module bases. clone() is implemented here instead (make_like + a copy of every tensor).
class ImageClassifier : public virtual torch::nn::Module {
 public:
  ~ImageClassifier() override = default;

  /// A deep copy (torch::nn::Module::clone): a classifier made by make_like, with every
  /// parameter and buffer copied into it (moved to `device` when given) and the same
  /// train/eval mode; nothing derived from the weights (BatchNorm folds) is copied. Throws
  /// attnscope::Error when make_like's tensors do not match this one's by name and shape.
  std::shared_ptr<torch::nn::Module> clone(
      const c10::optional<torch::Device>& device = c10::nullopt) const override;

  /// A freshly initialised classifier of this one's options (what clone copies into).
  virtual std::shared_ptr<ImageClassifier> make_like() const = 0;

  /// Runs everything up to the classifier. need_attention: also return the per-layer,
  /// per-head attention weights and the maps derived from them (ViT; ignored by CNNs,
  /// whose attention maps are always returned).
  ///
  /// Shape: images (B, 3, H, W) -> see ImageFeatures.
  virtual ImageFeatures forward_features(const torch::Tensor& images,
                                         bool need_attention = false) = 0;

  /// The classifier on top of forward_features: logits (B, num_classes), and the maps computed
  /// in the head (attention-CNN); `attention` stays empty.
  virtual ImageOutput forward_head(const ImageFeatures& features) = 0;

  /// forward_head(forward_features(images)) with the maps of both.
  ///
  /// Shape: images (B, 3, H, W) -> logits (B, num_classes), maps (B, h, w).
  ImageOutput forward(const torch::Tensor& images, bool need_attention = false);

  /// Number of classes the head predicts.
  virtual int64_t num_classes() const = 0;

  /// Names of the attention maps forward returns (with need_attention for the ViT).
  virtual std::vector<std::string> map_names() const { return {}; }

  /// What a value of the model's own attention maps is: "softmax" (a weight over the h·w
  /// positions; each map sums to 1) or "sigmoid" (each position's gate in (0, 1), on its own:
  /// AttnMel's attention); "" when the maps are no attention weights (a ViT's rollout).
  virtual std::string map_weights() const { return ""; }

  /// Name prefixes of the head's tensors ("fc.", "classifier.", "attention.", "head."): what
  /// a backbone-only checkpoint lacks (pipeline::LoadOptions::skip_prefixes).
  virtual std::vector<std::string> head_prefixes() const = 0;

  /// True when forward_features().features is a (B, C, h, w) map (Grad-CAM applies).
  virtual bool has_spatial_features() const { return true; }

  /// Prepares for inference with the weights as they are: the CNNs fold each BatchNorm2d into
  /// the convolution before it (Trunk::fold_batch_norm, ConvBnFold; the same outputs to float
  /// rounding, +9 % for attn_small's forward pass on CPU). The parameters are not changed, and
  /// a fold is not used in training mode, while its parameters record gradients, or once any
  /// tensor it was made from changes. A no-op for models without BatchNorm (the ViTs). Not
  /// while another thread runs forward on this model.
  virtual void fold_batch_norm() {}
};

}  // namespace attnscope::models::vision
