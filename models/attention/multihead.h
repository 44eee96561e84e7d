#pragma once
// Multi-head scaled-dot-product attention built from the core (score.h, normalize.h, attend.h).
//
// Layout is batch-first everywhere: (B, L, E). Two projection layouts, chosen by `cross`:
//   self-attention (cross = false): fused `qkv` (E -> 3E) and `proj` (E -> E), as in timm's
//     Attention, so a ViT block's parameters are `attn.qkv.weight`, `attn.qkv.bias`,
//     `attn.proj.weight`, `attn.proj.bias`;
//   cross-attention (cross = true): `q` (E -> E) and `kv` (kdim -> 2E) when kdim == vdim,
//     otherwise `q`, `k` (kdim -> E), `v` (vdim -> E); then `proj`.
// torch.nn.MultiheadAttention's in_proj_weight is the row-wise concatenation [W_q; W_k; W_v],
// i.e. exactly `qkv.weight`, and [`q.weight`; `kv.weight`]; out_proj is `proj`.

#include <torch/torch.h>

#include "models/attention/attend.h"
#include "models/attention/mask.h"

namespace attnscope::models::attention {

/// Projected keys and values kept between calls for incremental decoding.
///
/// Self-attention: every call appends the keys/values of its new tokens, so step t projects
/// one token only; pass masks with causal = true (aligned to the end of the keys), or
/// none when one token is decoded at a time.
/// Cross-attention: set is_static = true; the first call projects the encoder memory, later
/// calls reuse it (key and value may then be undefined tensors).
///
/// Shape: key, value (B, H, T, head_dim).
struct KvCache {
  torch::Tensor key;
  torch::Tensor value;
  bool is_static = false;

  /// T, the number of cached positions (0 when empty).
  int64_t length() const { return key.defined() ? key.size(2) : 0; }
  void clear() {
    key = torch::Tensor();
    value = torch::Tensor();
  }
  /// Keeps batch rows `index` (B') in that order, e.g. the surviving hypotheses of a beam
  /// search. Shape: index (B') int64.
  void reorder(const torch::Tensor& index);
};

struct MultiHeadAttentionOptions {
  MultiHeadAttentionOptions(int64_t embed_dim, int64_t num_heads)
      : embed_dim_(embed_dim), num_heads_(num_heads) {}
  /// E, features of a query and of the output.
  TORCH_ARG(int64_t, embed_dim);
  /// H; E must be divisible by H.
  TORCH_ARG(int64_t, num_heads);
  /// Bias of the input projections (`qkv` / `q`, `kv`, `k`, `v`); timm's qkv_bias.
  TORCH_ARG(bool, bias) = true;
  /// Bias of the output projection `proj`.
  TORCH_ARG(bool, proj_bias) = true;
  /// Dropout on the attention weights (training only); timm's attn_drop.
  TORCH_ARG(double, dropout) = 0.0;
  /// Dropout after `proj` (training only); timm's proj_drop.
  TORCH_ARG(double, proj_dropout) = 0.0;
  /// Features of a key; 0 = embed_dim. Must be embed_dim unless cross.
  TORCH_ARG(int64_t, kdim) = 0;
  /// Features of a value; 0 = embed_dim. Must be embed_dim unless cross.
  TORCH_ARG(int64_t, vdim) = 0;
  /// Projection layout: false = fused `qkv` (self-attention), true = `q` + `kv` (or `k`, `v`).
  TORCH_ARG(bool, cross) = false;
  /// A learnable scale per head (parameter `scale`, (H), initialised to 1/sqrt(head_dim))
  /// instead of the fixed 1/sqrt(head_dim): the learnable temperature of Locality
  /// Self-Attention (Lee et al. 2021, "Vision Transformer for Small-Size Datasets"), which
  /// lets a head sharpen its softmax. Scores are (q·k) · scale[h].
  TORCH_ARG(bool, learned_scale) = false;
  /// Inference (autograd off) without weights requested: when the (B, H, Q, K) scores would
  /// have more than this many elements, the queries are processed in chunks instead, so the
  /// full weights never exist at once. 0 = never chunk. (Under autograd every chunk's weights
  /// are saved for the backward pass, so chunking would save nothing there.)
  TORCH_ARG(int64_t, max_score_elements) = int64_t{1} << 26;
  /// Score elements (B·H·rows·K) per query chunk. Small enough for the allocator to reuse
  /// freed blocks; many tiny chunks cost time in per-operation overhead.
  TORCH_ARG(int64_t, chunk_elements) = int64_t{1} << 22;
};

/// Multi-head attention: project, split into heads, scaled_dot_score (or, with learned_scale,
/// dot_score · scale[h]) -> softmax_normalize (masks) -> dropout -> attend per head, merge
/// heads, `proj`.
///
/// Args of forward: need_weights returns the per-head weights (before dropout); otherwise
/// `weights` is undefined and long inputs are processed in query chunks. cache: see KvCache.
///
/// Shape:
///   query (B, Q, E), key (B, K, kdim), value (B, K, vdim), masks for (B, H, Q, K)
///   (K includes cached positions) -> context (B, Q, E), weights (B, H, Q, K) or undefined.
class MultiHeadAttentionImpl : public torch::nn::Cloneable<MultiHeadAttentionImpl> {
 public:
  MultiHeadAttentionImpl(int64_t embed_dim, int64_t num_heads)
      : MultiHeadAttentionImpl(MultiHeadAttentionOptions(embed_dim, num_heads)) {}
  explicit MultiHeadAttentionImpl(const MultiHeadAttentionOptions& options_);
  void reset() override;
  /// xavier_uniform_ input projections, zero input biases and zero `proj` bias, like
  /// torch.nn.MultiheadAttention.
  void reset_parameters();

  /// Self-attention: query = key = value = x (one fused `qkv` product in the fused layout).
  AttentionOutput forward(const torch::Tensor& x, const AttentionMasks& masks = {},
                          bool need_weights = false, KvCache* cache = nullptr);
  /// General attention (cross-attention, or self-attention with distinct tensors).
  AttentionOutput forward(const torch::Tensor& query, const torch::Tensor& key,
                          const torch::Tensor& value, const AttentionMasks& masks = {},
                          bool need_weights = false, KvCache* cache = nullptr);

  int64_t head_dim() const { return options.embed_dim() / options.num_heads(); }

  MultiHeadAttentionOptions options;
  torch::nn::Linear qkv = nullptr;  ///< self-attention layout
  torch::nn::Linear q = nullptr;    ///< cross layout
  torch::nn::Linear kv = nullptr;   ///< cross layout, kdim == vdim
  torch::nn::Linear k = nullptr;    ///< cross layout, kdim != vdim
  torch::nn::Linear v = nullptr;    ///< cross layout, kdim != vdim
  torch::nn::Dropout attn_drop = nullptr;
  torch::nn::Linear proj = nullptr;
  torch::nn::Dropout proj_drop = nullptr;
  torch::Tensor scale;  ///< (H), learned_scale only

 private:
  // q, k, v: (B, H, Q|K, head_dim); mask broadcastable to (B, H, Q, K) or undefined.
  AttentionOutput attend_heads(const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const AttentionMasks& masks,
                               bool need_weights);
  // Appends to / reads from the cache; returns the keys and values to attend to.
  std::pair<torch::Tensor, torch::Tensor> use_cache(torch::Tensor k, torch::Tensor v,
                                                    KvCache* cache);
  int64_t kdim() const { return options.kdim() > 0 ? options.kdim() : options.embed_dim(); }
  int64_t vdim() const { return options.vdim() > 0 ? options.vdim() : options.embed_dim(); }
};
TORCH_MODULE(MultiHeadAttention);

}  // namespace attnscope::models::attention
