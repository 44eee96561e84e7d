#pragma once
// Step 1 of the attention core: score every query against every key.
//
// All score functions take queries (..., Q, Dq) and keys (..., K, Dk) with the same leading
// dims (usually (B) or (B, H)) and return scores (..., Q, K). Larger = more attention.

#include <string>

#include <torch/torch.h>

namespace attnscope::models::attention {

/// Luong dot score q·k. Shape: (..., Q, D), (..., K, D) -> (..., Q, K).
torch::Tensor dot_score(const torch::Tensor& query, const torch::Tensor& keys);

/// Scaled dot score q·k / sqrt(D) (Vaswani et al. 2017). Shape as dot_score.
torch::Tensor scaled_dot_score(const torch::Tensor& query, const torch::Tensor& keys);

/// Luong general score qᵀ W k. Shape: (..., Q, Dq), (..., K, Dk), W (Dq, Dk) -> (..., Q, K).
torch::Tensor general_score(const torch::Tensor& query, const torch::Tensor& keys,
                            const torch::Tensor& weight);

/// The non-linearity inside an additive score: tanh (Bahdanau et al. 2015) or ReLU (the grid
/// attention of AttnMel, Yan et al. 2019).
enum class AdditiveActivation { tanh, relu };

/// Additive score vᵀ act(q' + k') from already projected queries q' = W_q q and keys
/// k' = W_k k, with act = tanh (Bahdanau) by default. Materialises (..., Q, K, A).
/// Shape: (..., Q, A), (..., K, A), v (A) -> (..., Q, K).
torch::Tensor additive_score(const torch::Tensor& projected_query,
                             const torch::Tensor& projected_keys, const torch::Tensor& v,
                             AdditiveActivation activation = AdditiveActivation::tanh);

/// Position-aligned additive score: every key position k has its own query q'_k (already
/// projected, like the keys), e.g. the up-sampled gating map of a grid attention gate (Oktay et
/// al. 2018; AttnMel, Yan et al. 2019), where the query at a pixel is the coarse map's vector
/// interpolated there:
///   s_k = vᵀ act(q'_k + k'_k) + b.
/// One query row instead of additive_score's Q × K pairs, so it materialises (..., K, A) only.
/// bias b (a scalar, or undefined = none) moves sigmoid weights; softmax ignores it.
/// Shape: (..., K, A), (..., K, A), v (A), bias (1) or () -> (..., 1, K): a single row of
/// scores, which the normalisers and attend() take as one query.
torch::Tensor aligned_additive_score(const torch::Tensor& projected_queries,
                                     const torch::Tensor& projected_keys, const torch::Tensor& v,
                                     const torch::Tensor& bias = {},
                                     AdditiveActivation activation = AdditiveActivation::tanh);

/// The score functions, for configuration by name.
enum class ScoreKind { additive, dot, general, scaled_dot };

/// "additive" | "dot" | "general" | "scaled_dot"; throws attnscope::Error on another name.
ScoreKind score_kind_from_string(const std::string& name);
std::string to_string(ScoreKind kind);

struct AdditiveScoreOptions {
  AdditiveScoreOptions(int64_t query_dim, int64_t key_dim, int64_t hidden_dim)
      : query_dim_(query_dim), key_dim_(key_dim), hidden_dim_(hidden_dim) {}
  /// Dq, features of a query.
  TORCH_ARG(int64_t, query_dim);
  /// Dk, features of a key.
  TORCH_ARG(int64_t, key_dim);
  /// A, size of the hidden layer of the score network.
  TORCH_ARG(int64_t, hidden_dim);
  /// Bias of `key_proj` (one bias suffices: `query_proj` has none).
  TORCH_ARG(bool, bias) = true;
  /// tanh (Bahdanau) or relu (AttnMel's grid attention).
  TORCH_ARG(AdditiveActivation, activation) = AdditiveActivation::tanh;
};

/// Bahdanau et al. 2015 additive score vᵀ tanh(W_q q + W_k k). Sub-modules: `query_proj`
/// (Dq -> A, no bias), `key_proj` (Dk -> A), `v` (A -> 1, no bias).
///
/// Shape: query (..., Q, Dq), keys (..., K, Dk) -> (..., Q, K).
class AdditiveScoreImpl : public torch::nn::Cloneable<AdditiveScoreImpl> {
 public:
  explicit AdditiveScoreImpl(const AdditiveScoreOptions& options_);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& keys);
  /// key_proj(keys): compute once per source sequence, then score each decoder step with
  /// forward_projected. Shape: (..., K, Dk) -> (..., K, A).
  torch::Tensor project_keys(const torch::Tensor& keys);
  /// Shape: query (..., Q, Dq), projected keys (..., K, A) -> (..., Q, K).
  torch::Tensor forward_projected(const torch::Tensor& query, const torch::Tensor& projected_keys);

  AdditiveScoreOptions options;
  torch::nn::Linear query_proj = nullptr;
  torch::nn::Linear key_proj = nullptr;
  torch::nn::Linear v = nullptr;
};
TORCH_MODULE(AdditiveScore);

struct GeneralScoreOptions {
  GeneralScoreOptions(int64_t query_dim, int64_t key_dim)
      : query_dim_(query_dim), key_dim_(key_dim) {}
  /// Dq, features of a query.
  TORCH_ARG(int64_t, query_dim);
  /// Dk, features of a key.
  TORCH_ARG(int64_t, key_dim);
};

/// Luong et al. 2015 general score qᵀ W k with the parameter `weight` (Dq, Dk).
///
/// Shape: query (..., Q, Dq), keys (..., K, Dk) -> (..., Q, K).
class GeneralScoreImpl : public torch::nn::Cloneable<GeneralScoreImpl> {
 public:
  explicit GeneralScoreImpl(const GeneralScoreOptions& options_);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& keys);
  /// W k, computed once per source sequence. Shape: (..., K, Dk) -> (..., K, Dq).
  torch::Tensor project_keys(const torch::Tensor& keys);

  GeneralScoreOptions options;
  torch::Tensor weight;
};
TORCH_MODULE(GeneralScore);

struct ScoreOptions {
  ScoreOptions(ScoreKind kind, int64_t query_dim, int64_t key_dim)
      : kind_(kind), query_dim_(query_dim), key_dim_(key_dim), hidden_dim_(key_dim) {}
  /// Which score function.
  TORCH_ARG(ScoreKind, kind);
  /// Dq, features of a query.
  TORCH_ARG(int64_t, query_dim);
  /// Dk, features of a key (dot and scaled_dot need Dq == Dk).
  TORCH_ARG(int64_t, key_dim);
  /// A, hidden size of the additive score (default: key_dim).
  TORCH_ARG(int64_t, hidden_dim);
};

/// A score function chosen by kind, so decoders can be configured by name. Registers the child
/// `additive` (AdditiveScore) or `general` (GeneralScore) for those kinds; dot and scaled_dot
/// have no parameters.
///
/// Shape: query (..., Q, Dq), keys (..., K, Dk) -> (..., Q, K).
class ScoreImpl : public torch::nn::Cloneable<ScoreImpl> {
 public:
  explicit ScoreImpl(const ScoreOptions& options_);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& query, const torch::Tensor& keys);
  /// The part of the score that depends on the keys only (additive: W_k k; general: W k;
  /// dot/scaled_dot: the keys themselves). Compute once per source sequence and pass to
  /// forward_projected at every decoder step.
  torch::Tensor project_keys(const torch::Tensor& keys);
  /// Same as forward(query, keys) given project_keys(keys).
  torch::Tensor forward_projected(const torch::Tensor& query, const torch::Tensor& projected_keys);

  ScoreOptions options;
  AdditiveScore additive = nullptr;
  GeneralScore general = nullptr;
};
TORCH_MODULE(Score);

}  // namespace attnscope::models::attention
