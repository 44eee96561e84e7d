#include "models/attention/attend.h"

#include "attnscope/error.h"

namespace attnscope::models::attention {

torch::Tensor attend(const torch::Tensor& weights, const torch::Tensor& values) {
  check(weights.dim() >= 2 && values.dim() == weights.dim() && weights.size(-1) == values.size(-2),
        "attend", "weights (..., Q, K) and values (..., K, Dv) do not match: ", weights.sizes(),
        " and ", values.sizes());
  return torch::matmul(weights, values);  // (..., Q, Dv)
}

AttentionImpl::AttentionImpl(const AttentionOptions& options_) : options(options_) {
  reset();
}

void AttentionImpl::reset() {
  check(options.dropout() >= 0 && options.dropout() < 1, "Attention",
        "dropout must be in [0, 1), got ", options.dropout());
  score = register_module(
      "score", Score(ScoreOptions(options.score(), options.query_dim(), options.key_dim())
                         .hidden_dim(options.hidden_dim())));
  normalizer = register_module(
      "normalizer", Normalizer(NormalizerOptions(options.normalizer()).crf(options.crf())));
  attn_drop = register_module("attn_drop", torch::nn::Dropout(options.dropout()));
}

AttentionOutput AttentionImpl::forward_projected(const torch::Tensor& query,
                                                 const torch::Tensor& projected_keys,
                                                 const torch::Tensor& values,
                                                 const torch::Tensor& mask) {
  auto weights = normalizer->forward(score->forward_projected(query, projected_keys), mask);
  auto dropped = options.dropout() > 0 ? attn_drop->forward(weights) : weights;
  return {attend(dropped, values), weights};
}

AttentionOutput AttentionImpl::forward(const torch::Tensor& query, const torch::Tensor& keys,
                                       const torch::Tensor& values, const AttentionMasks& masks) {
  check(query.dim() >= 2 && keys.dim() == query.dim() && values.dim() == query.dim(), "Attention",
        "query, keys and values must have the same rank >= 2, got ", query.sizes(), ", ",
        keys.sizes(), ", ", values.sizes());
  torch::Tensor mask;
  if (!masks.empty()) {
    check(query.dim() == 3 || query.dim() == 4, "Attention",
          "masks need query (B, Q, D) or (B, H, Q, D), got ", query.sizes());
    mask = combine_masks(masks, query.size(-2), keys.size(-2), query.dim(), query.device());
  }
  return forward_projected(query, score->project_keys(keys), values, mask);
}

}  // namespace attnscope::models::attention
