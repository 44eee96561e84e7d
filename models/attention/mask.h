#pragma once
// Masks of the attention core: which (query, key) pairs may not be attended.
//
// Convention everywhere in attnscope: a mask is a bool tensor, true = masked out (the pair gets
// weight 0). Masks broadcast against scores of shape (..., Q, K). The normalisers
// (normalize.h) take one combined mask; `combine_masks` builds it from the usual parts.

#include <torch/torch.h>

namespace attnscope::models::attention {

/// The masks a caller may pass to an attention module; every part is optional.
///
/// Shape:
///   key_padding: (B, K) bool, true = padding key (ignored by every query).
///   attn:        (Q, K), (B, Q, K) or (B, H, Q, K) bool, true = masked pair.
///   causal:      query i sees keys j <= i + (K - Q), i.e. the causal mask aligned to the end of
///                the keys, which is what incremental decoding with a key/value cache needs.
struct AttentionMasks {
  torch::Tensor key_padding = {};
  torch::Tensor attn = {};
  bool causal = false;

  /// True when no part is set.
  bool empty() const { return !key_padding.defined() && !attn.defined() && !causal; }
};

/// Causal mask aligned to the end of the keys: (q_len, k_len) bool, true where key j lies in
/// the future of query i, i.e. j > i + (k_len - q_len).
torch::Tensor causal_mask(int64_t q_len, int64_t k_len, torch::Device device = torch::kCPU);

/// Key-padding mask from sequence lengths: (B, max_len) bool, true at positions >= lengths[b].
/// lengths: (B) integer tensor. max_len <= 0 means lengths.max().
torch::Tensor padding_mask(const torch::Tensor& lengths, int64_t max_len = 0);

/// Combines the parts of `masks` into one bool mask for scores of rank `score_dims` (3 for
/// (B, Q, K), 4 for (B, H, Q, K)) with q_len queries and k_len keys. Returns an undefined
/// tensor when no part is set. Throws attnscope::Error on a non-bool or mis-shaped part.
///
/// Shape: result broadcasts to (B, Q, K) (score_dims 3) or (B, H, Q, K) (score_dims 4).
torch::Tensor combine_masks(const AttentionMasks& masks, int64_t q_len, int64_t k_len,
                            int64_t score_dims = 3, torch::Device device = torch::kCPU);

/// Logical or of two masks that may be undefined (undefined = nothing masked).
torch::Tensor mask_or(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace attnscope::models::attention
