#pragma once
// Trainable spatial attention over one CNN stage (Jetley et al. 2018, "Learn to Pay
// Attention"; Yan et al. 2019, "Melanoma Recognition via Visual Attention").
//
// The query is the global image feature g (B, Cg); the keys/values are the stage's local
// feature vectors l (B, C, h, w) -> (B, h·w, C). Scores come from the attention core
// (models/attention/score.h), weights from its normalisers (normalize.h), the context from
// its attend(); this file only arranges the tensors.

#include <string>

#include <torch/torch.h>

#include "models/attention/attend.h"
#include "models/attention/normalize.h"
#include "models/attention/score.h"

namespace attnscope::models::vision {

/// The compatibility (score) of a local feature l with the global feature g.
///   dp:       ⟨l', g⟩ — the core's dot_score (LTPA "dp");
///   pc:       ⟨u, l' + g⟩ with a learned u — the core's dot_score with u as query (LTPA "pc");
///   additive: vᵀ tanh(W_l l + W_g g) — the core's AdditiveScore (the 1×1-conv grid attention
///             of AttnMel, with the global vector as the query).
/// l' = `projector`(l), a 1×1 convolution to Cg channels when C != Cg (LTPA's projector).
enum class Compatibility { dp, pc, additive };

/// "dp" | "pc" | "additive"; throws attnscope::Error on another name.
Compatibility compatibility_from_string(const std::string& name);
std::string to_string(Compatibility kind);

struct SpatialAttentionOptions {
  SpatialAttentionOptions(int64_t local_channels, int64_t global_channels)
      : local_channels_(local_channels), global_channels_(global_channels) {}
  /// C, channels of the stage's local features.
  TORCH_ARG(int64_t, local_channels);
  /// Cg, channels of the global feature.
  TORCH_ARG(int64_t, global_channels);
  /// The score.
  TORCH_ARG(Compatibility, compatibility) = Compatibility::additive;
  /// softmax (weights sum to 1 over the h·w positions; context = weighted sum) or sigmoid
  /// (each weight in [0, 1]; context = weighted mean, as AttnMel).
  TORCH_ARG(attention::NormKind, normalizer) = attention::NormKind::softmax;
  /// Hidden size of the additive score.
  TORCH_ARG(int64_t, hidden_dim) = 256;
};

struct SpatialAttentionOutput {
  torch::Tensor context;  ///< (B, out_channels()): the attended local features
  torch::Tensor map;      ///< (B, h, w): the weights the core returned
};

/// Sub-modules: `score` (additive), `projector` (dp/pc when C != Cg), parameter `u` (pc),
/// `normalizer`.
///
/// Shape: local (B, C, h, w), global (B, Cg) -> context (B, out_channels()), map (B, h, w).
class SpatialAttentionImpl : public torch::nn::Cloneable<SpatialAttentionImpl> {
 public:
  explicit SpatialAttentionImpl(const SpatialAttentionOptions& options_);
  void reset() override;
  SpatialAttentionOutput forward(const torch::Tensor& local, const torch::Tensor& global);
  /// Channels of the context: C for additive (raw values), Cg for dp and pc (projected).
  int64_t out_channels() const;

  SpatialAttentionOptions options;
  attention::AdditiveScore score = nullptr;
  torch::nn::Conv2d projector = nullptr;
  torch::Tensor u;
  attention::Normalizer normalizer = nullptr;
};
TORCH_MODULE(SpatialAttention);

}  // namespace attnscope::models::vision
