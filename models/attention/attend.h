#pragma once
// Step 3 of the attention core, and the whole three steps as one module:
//   score(query, keys) -> normalise(scores, mask) -> dropout(weights) -> attend(weights, values).
// Every attention module returns the weights with the context, so what a report shows is exactly
// what the model used.

#include <torch/torch.h>

#include "models/attention/mask.h"
#include "models/attention/normalize.h"
#include "models/attention/score.h"

namespace attnscope::models::attention {

/// Weighted sum of the values: context = weights · values.
///
/// Shape: weights (..., Q, K), values (..., K, Dv) -> context (..., Q, Dv).
torch::Tensor attend(const torch::Tensor& weights, const torch::Tensor& values);

/// What attention modules return.
struct AttentionOutput {
  torch::Tensor context;  ///< (..., Q, Dv)
  torch::Tensor weights;  ///< (..., Q, K), after masking, before dropout
};

struct AttentionOptions {
  AttentionOptions(int64_t query_dim, int64_t key_dim)
      : query_dim_(query_dim), key_dim_(key_dim), hidden_dim_(key_dim) {}
  /// Dq, features of a query.
  TORCH_ARG(int64_t, query_dim);
  /// Dk, features of a key.
  TORCH_ARG(int64_t, key_dim);
  /// The score function.
  TORCH_ARG(ScoreKind, score) = ScoreKind::scaled_dot;
  /// The normaliser.
  TORCH_ARG(NormKind, normalizer) = NormKind::softmax;
  /// Hidden size of the additive score (default: key_dim).
  TORCH_ARG(int64_t, hidden_dim);
  /// Options of the CRF normaliser.
  TORCH_ARG(CrfNormalizerOptions, crf) = {};
  /// Dropout on the weights (training only).
  TORCH_ARG(double, dropout) = 0.0;
};

/// Single-head attention = Score + Normalizer + dropout + attend. Sub-modules: `score`,
/// `normalizer`, `attn_drop`.
///
/// Shape: query (B, Q, Dq), keys (B, K, Dk), values (B, K, Dv) -> context (B, Q, Dv),
/// weights (B, Q, K). Extra leading dims (e.g. heads) work too.
class AttentionImpl : public torch::nn::Cloneable<AttentionImpl> {
 public:
  explicit AttentionImpl(const AttentionOptions& options_);
  void reset() override;
  AttentionOutput forward(const torch::Tensor& query, const torch::Tensor& keys,
                          const torch::Tensor& values, const AttentionMasks& masks = {});
  /// For decoders that score many steps against one source: projected_keys =
  /// score->project_keys(keys) computed once; mask is a combined bool mask (mask.h)
  /// broadcastable to (B, Q, K), or undefined.
  AttentionOutput forward_projected(const torch::Tensor& query, const torch::Tensor& projected_keys,
                                    const torch::Tensor& values, const torch::Tensor& mask = {});

  AttentionOptions options;
  Score score = nullptr;
  Normalizer normalizer = nullptr;
  torch::nn::Dropout attn_drop = nullptr;
};
TORCH_MODULE(Attention);

}  // namespace attnscope::models::attention
