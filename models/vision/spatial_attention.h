#pragma once
// Trainable spatial attention over one CNN stage (Jetley et al. 2018, "Learn to Pay
// Attention"; Yan et al. 2019, "Melanoma Recognition via Visual Attention", after the attention
// gates of Oktay et al. 2018).
//
// The keys/values are the stage's local feature vectors l (B, C, h, w) -> (B, h·w, C). The
// query is either the global image feature g (B, Cg) — one query for every position — or, with
// grid gating, a coarse gating map G (B, Cg, h_g, w_g) projected and up-sampled to l's grid —
// one query per position. Scores come from the attention core (models/attention/score.h),
// weights from its normalisers (normalize.h), the context from its attend(); this file only
// arranges the tensors.

#include <string>

#include <torch/torch.h>

#include "models/attention/attend.h"
#include "models/attention/normalize.h"
#include "models/attention/score.h"

namespace attnscope::models::vision {

/// The compatibility (score) of a local feature l with the global feature g.
///   dp:       ⟨l', g⟩ — the core's dot_score (LTPA "dp");
///   pc:       ⟨u, l' + g⟩ with a learned u — the core's dot_score with u as query (LTPA "pc");
///   additive: vᵀ ReLU(W_l l + W_g g) — the core's AdditiveScore with the global vector as the
///             query; with grid gating, φ(ReLU(W_l l + up(W_g G))) — the core's
///             aligned_additive_score (AttnMel's grid attention).
/// l' = `projector`(l), a 1×1 convolution to Cg channels when C != Cg (LTPA's projector).
enum class Compatibility { dp, pc, additive };

/// "dp" | "pc" | "additive"; throws attnscope::Error on another name.
Compatibility compatibility_from_string(const std::string& name);
std::string to_string(Compatibility kind);

/// What gates the attention (the query).
///   global: the global feature vector g (B, Cg), the same query at every position;
///   grid:   a spatial gating map G (B, Cg, h_g, w_g) (AttnMel: pool-5), whose 1×1 projection
///           W_g G is up-sampled bilinearly to the stage's grid: a query per position. Needs
///           the additive compatibility.
enum class Gating { global, grid };

/// "global" | "grid"; throws attnscope::Error on another name.
Gating gating_from_string(const std::string& name);
std::string to_string(Gating kind);

struct SpatialAttentionOptions {
  SpatialAttentionOptions(int64_t local_channels, int64_t global_channels)
      : local_channels_(local_channels), global_channels_(global_channels) {}
  /// C, channels of the stage's local features.
  TORCH_ARG(int64_t, local_channels);
  /// Cg, channels of the global feature / gating map.
  TORCH_ARG(int64_t, global_channels);
  /// The score.
  TORCH_ARG(Compatibility, compatibility) = Compatibility::additive;
  /// The query: the global vector or the spatial gating map.
  TORCH_ARG(Gating, gating) = Gating::global;
  /// softmax (weights sum to 1 over the h·w positions; context = weighted sum) or sigmoid
  /// (each weight in [0, 1]; context = weighted mean, as AttnMel).
  TORCH_ARG(attention::NormKind, normalizer) = attention::NormKind::softmax;
  /// Hidden size of the additive score (AttnMel: 256).
  TORCH_ARG(int64_t, hidden_dim) = 256;
};

struct SpatialAttentionOutput {
  torch::Tensor context;  ///< (B, out_channels()): the attended local features
  torch::Tensor map;      ///< (B, h, w): the weights the core returned
};

/// Sub-modules: global gating: `score` (additive), `projector` (dp/pc when C != Cg), parameter
/// `u` (pc); grid gating: `W_l` (1×1 conv C -> A, no bias), `W_g` (1×1 conv Cg -> A, no bias),
/// `phi` (1×1 conv A -> 1, bias) — the names of AttnMel's AttentionBlock; both: `normalizer`.
///
/// Shape: local (B, C, h, w), gate: global (B, Cg) or grid (B, Cg, h_g, w_g)
///        -> context (B, out_channels()), map (B, h, w).
class SpatialAttentionImpl : public torch::nn::Cloneable<SpatialAttentionImpl> {
 public:
  explicit SpatialAttentionImpl(const SpatialAttentionOptions& options_);
  void reset() override;
  /// Grid gating: AttnMel's initialisation of W_l, W_g and phi (Kaiming normal, fan-in, ReLU;
  /// zero bias). A no-op for global gating. Owners that re-initialise every convolution call it
  /// afterwards.
  void reset_parameters();
  SpatialAttentionOutput forward(const torch::Tensor& local, const torch::Tensor& gate);
  /// Channels of the context: C for additive (raw values), Cg for dp and pc (projected).
  int64_t out_channels() const;

  SpatialAttentionOptions options;
  attention::AdditiveScore score = nullptr;
  torch::nn::Conv2d projector = nullptr;
  torch::Tensor u;
  // W_l, W_g: AttnMel's names (checkpoint names), hence not snake_case.
  torch::nn::Conv2d W_l = nullptr;
  torch::nn::Conv2d W_g = nullptr;
  torch::nn::Conv2d phi = nullptr;
  attention::Normalizer normalizer = nullptr;

 private:
  torch::Tensor grid_scores(const torch::Tensor& local, const torch::Tensor& gate);
};
TORCH_MODULE(SpatialAttention);

}  // namespace attnscope::models::vision
