#pragma once
// The attention-CNN: a CNN trunk with trainable spatial attention at 2–3 of its stages
// (Jetley et al. 2018; Yan et al. 2019 "AttnMel"). The global feature g is the average-pooled
// last feature map; each attended stage contributes its attended local features, gated by g or
// (grid gating) by the last feature map itself; the classifier sees
// concat(g, attended_1, ..., attended_n).
//
// Names: the trunk's torchvision names at the root (conv1, layer1.. / features.N), then
// `attention.N` (one SpatialAttention per attended stage) and `classifier` (Linear), so a
// torchvision backbone loads with LoadOptions::skip_prefixes {"attention.", "classifier."}.

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "models/vision/classifier.h"
#include "models/vision/spatial_attention.h"
#include "models/vision/trunk.h"

namespace attnscope::models::vision {

/// The trunk of a named backbone: resnet18 | resnet34 | resnet50 | vgg16 | vgg16_bn |
/// small_cnn. Throws attnscope::Error on another name.
std::shared_ptr<Trunk> make_trunk(const std::string& backbone, int64_t in_channels = 3);

struct AttentionCnnOptions {
  AttentionCnnOptions(std::string backbone, std::vector<int64_t> stages)
      : backbone_(std::move(backbone)), stages_(std::move(stages)) {}
  /// The trunk (see make_trunk).
  TORCH_ARG(std::string, backbone);
  /// 0-based indices of the attended stages (VGG: 2, 3 = pool3, pool4).
  TORCH_ARG(std::vector<int64_t>, stages);
  /// The score of every attention.
  TORCH_ARG(Compatibility, compatibility) = Compatibility::additive;
  /// The query of every attention: global = the average-pooled last map g, grid = the last map
  /// itself (AttnMel's pool-5 gating; also AttnMel's initialisation of the head: W_l, W_g, phi
  /// Kaiming normal fan-in, classifier N(0, 0.01), zero biases).
  TORCH_ARG(Gating, gating) = Gating::global;
  /// softmax or sigmoid.
  TORCH_ARG(attention::NormKind, normalizer) = attention::NormKind::softmax;
  /// Attend to a stage's features after its pooling layer (true) or before it (false).
  TORCH_ARG(bool, after_pool) = false;
  /// Hidden size of the additive scores.
  TORCH_ARG(int64_t, hidden_dim) = 256;
  /// Classes of `classifier`.
  TORCH_ARG(int64_t, num_classes) = 2;
  /// Dropout before the classifier.
  TORCH_ARG(double, dropout) = 0.0;
  /// Channels of the input images.
  TORCH_ARG(int64_t, in_channels) = 3;
};

/// Maps: "stage<i+1>" for every attended stage i (e.g. "stage3", "stage4"), (B, h_i, w_i).
///
/// Shape: images (B, in_channels, H, W) -> logits (B, num_classes); features = the trunk's
/// last map (B, Cg, h, w), the Grad-CAM target.
class AttentionCnnImpl : public ImageClassifier {
 public:
  explicit AttentionCnnImpl(const AttentionCnnOptions& options_);
  void reset();
  std::shared_ptr<ImageClassifier> make_like() const override {
    return std::make_shared<AttentionCnnImpl>(options);
  }
  ImageFeatures forward_features(const torch::Tensor& images, bool need_attention = false) override;
  ImageOutput forward_head(const ImageFeatures& features) override;
  void fold_batch_norm() override { trunk->fold_batch_norm(); }
  int64_t num_classes() const override { return options.num_classes(); }
  std::vector<std::string> head_prefixes() const override { return {"attention.", "classifier."}; }
  std::vector<std::string> map_names() const override;
  std::string map_weights() const override { return attention::to_string(options.normalizer()); }

  AttentionCnnOptions options;
  std::shared_ptr<Trunk> trunk;
  torch::nn::ModuleList attention = nullptr;
  torch::nn::Dropout dropout = nullptr;
  torch::nn::Linear classifier = nullptr;
};
TORCH_MODULE(AttentionCnn);

}  // namespace attnscope::models::vision
