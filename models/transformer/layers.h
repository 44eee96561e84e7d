#pragma once
// Transformer encoder and decoder layers (Vaswani et al. 2017) on the attention core's
// MultiHeadAttention, batch-first (B, L, E). Sub-module names follow torch.nn's layers:
// `self_attn`, `multihead_attn` (decoder), `linear1`, `dropout`, `linear2`, `norm1`..`norm3`,
// `dropout1`..`dropout3`; inside the attention modules the timm names `qkv`/`proj` (self) and
// `q`/`kv`/`proj` (cross) are used (see models/attention/multihead.h). An encoder layer with
// LayerNames::timm is timm's ViT `Block` under timm's names (`norm1`, `attn`, `norm2`,
// `mlp.fc1`, `mlp.fc2`): the one pre-norm block of the text Transformer and the ViT.
//
// Post-norm (norm_first = false, the paper):  x = norm(x + drop_path(dropout(sublayer(x))))
// Pre-norm  (norm_first = true):             x = x + drop_path(dropout(sublayer(norm(x))))
// drop_path (stochastic depth, Huang et al. 2016, as timm's DropPath) is the identity unless
// the layer is training with TransformerLayerOptions::drop_path > 0.

#include <optional>

#include <torch/torch.h>

#include "models/attention/multihead.h"

namespace attnscope::models::transformer {

using attention::AttentionMasks;
using attention::KvCache;

enum class Activation { relu, gelu };

/// The sub-module names of an encoder layer, so that weights from either library load by name;
/// the computation is the same. torch: `self_attn`, `linear1`, `linear2`, `norm1`, `norm2`.
/// timm (a ViT block): `norm1`, `attn`, `norm2`, `mlp.fc1`, `mlp.fc2`.
enum class LayerNames { torch, timm };

/// Options of encoder and decoder layers; defaults are those of the paper.
struct TransformerLayerOptions {
  TransformerLayerOptions(int64_t d_model = 512, int64_t nhead = 8)  // NOLINT
      : d_model_(d_model), nhead_(nhead) {}
  /// E, features of a token.
  TORCH_ARG(int64_t, d_model);
  /// H, attention heads; E must be divisible by H.
  TORCH_ARG(int64_t, nhead);
  /// Hidden size of the feed-forward network.
  TORCH_ARG(int64_t, dim_feedforward) = 2048;
  /// Dropout after every sub-layer, inside the feed-forward network and on attention weights.
  TORCH_ARG(double, dropout) = 0.1;
  /// Non-linearity of the feed-forward network.
  TORCH_ARG(Activation, activation) = Activation::relu;
  /// Pre-norm (true) or post-norm (false, the paper and torch.nn's default).
  TORCH_ARG(bool, norm_first) = false;
  /// LayerNorm epsilon.
  TORCH_ARG(double, layer_norm_eps) = 1e-5;
  /// Dropout on the attention weights (timm's attn_drop); unset: `dropout`, as torch.nn's.
  TORCH_ARG(std::optional<double>, attention_dropout) = std::nullopt;
  /// Biases of the attention's input projections (timm's qkv_bias).
  TORCH_ARG(bool, qkv_bias) = true;
  /// Sub-module names of encoder layers (decoder layers always use torch.nn's).
  TORCH_ARG(LayerNames, names) = LayerNames::torch;
  /// Stochastic depth (timm's drop_path): while training, each sample's residual branch is
  /// dropped with this probability and kept ones are scaled by 1 / (1 - drop_path), one draw
  /// per sample and sub-layer. In [0, 1); 0 = off. Evaluation is unaffected.
  TORCH_ARG(double, drop_path) = 0.0;
  /// Every attention of the layer learns its scale per head (MultiHeadAttentionOptions::
  /// learned_scale, LSA's learnable temperature) instead of using 1/sqrt(head_dim).
  TORCH_ARG(bool, learned_attention_scale) = false;
};

/// timm's drop_path: x · keep / (1 - p) with keep ~ Bernoulli(1 - p) per sample (dimension 0),
/// drawn from LibTorch's default generator; x itself when !training or p == 0.
torch::Tensor drop_path(const torch::Tensor& x, double p, bool training);

/// timm's Mlp under its names: fc1, activation, drop, fc2. The feed-forward network of an
/// encoder layer with LayerNames::timm (the layer runs it, with its activation).
class MlpImpl : public torch::nn::Cloneable<MlpImpl> {
 public:
  MlpImpl(int64_t dim, int64_t hidden, double dropout);
  void reset() override;

  int64_t dim, hidden;
  double dropout;
  torch::nn::Linear fc1 = nullptr;
  torch::nn::Dropout drop = nullptr;
  torch::nn::Linear fc2 = nullptr;
};
TORCH_MODULE(Mlp);

struct EncoderLayerOutput {
  torch::Tensor output;        ///< (B, L, E)
  torch::Tensor self_weights;  ///< (B, H, L, L) when requested, else undefined
};

/// Self-attention + feed-forward. With LayerNames::timm, `linear1`, `dropout` and `linear2` are
/// the modules of `mlp` (registered there only).
///
/// Shape: src (B, L, E), masks for (B, H, L, L) -> output (B, L, E), self_weights (B, H, L, L).
class TransformerEncoderLayerImpl : public torch::nn::Cloneable<TransformerEncoderLayerImpl> {
 public:
  explicit TransformerEncoderLayerImpl(const TransformerLayerOptions& options_ = {});
  void reset() override;
  EncoderLayerOutput forward(const torch::Tensor& src, const AttentionMasks& masks = {},
                             bool need_weights = false);

  TransformerLayerOptions options;
  attention::MultiHeadAttention self_attn = nullptr;
  torch::nn::Linear linear1 = nullptr;
  torch::nn::Dropout dropout = nullptr;
  torch::nn::Linear linear2 = nullptr;
  torch::nn::LayerNorm norm1 = nullptr;
  torch::nn::LayerNorm norm2 = nullptr;
  torch::nn::Dropout dropout1 = nullptr;
  torch::nn::Dropout dropout2 = nullptr;
  Mlp mlp = nullptr;  ///< LayerNames::timm only
};
TORCH_MODULE(TransformerEncoderLayer);

/// Per-layer key/value caches of a decoder layer for incremental decoding: `self_attn`
/// grows by the new tokens of each call; `cross_attn` (static) holds the projected memory.
struct DecoderLayerCache {
  KvCache self_attn;
  KvCache cross_attn{{}, {}, /*is_static=*/true};
  void reorder(const torch::Tensor& index) {
    self_attn.reorder(index);
    cross_attn.reorder(index);
  }
};

struct DecoderLayerOutput {
  torch::Tensor output;         ///< (B, T, E)
  torch::Tensor self_weights;   ///< (B, H, T, T') when requested (T' includes cached steps)
  torch::Tensor cross_weights;  ///< (B, H, T, S) when requested
};

/// Masked self-attention + cross-attention over the encoder memory + feed-forward.
///
/// Args of forward: tgt_masks for the self-attention (usually causal = true plus target
/// padding), memory_masks for the cross-attention (usually the source padding). With a cache,
/// tgt holds only the new tokens and memory may be undefined after the first call.
///
/// Shape: tgt (B, T, E), memory (B, S, E) -> output (B, T, E), self_weights (B, H, T, T'),
/// cross_weights (B, H, T, S).
class TransformerDecoderLayerImpl : public torch::nn::Cloneable<TransformerDecoderLayerImpl> {
 public:
  explicit TransformerDecoderLayerImpl(const TransformerLayerOptions& options_ = {});
  void reset() override;
  DecoderLayerOutput forward(const torch::Tensor& tgt, const torch::Tensor& memory,
                             const AttentionMasks& tgt_masks = {},
                             const AttentionMasks& memory_masks = {}, bool need_weights = false,
                             DecoderLayerCache* cache = nullptr);

  TransformerLayerOptions options;
  attention::MultiHeadAttention self_attn = nullptr;
  attention::MultiHeadAttention multihead_attn = nullptr;
  torch::nn::Linear linear1 = nullptr;
  torch::nn::Dropout dropout = nullptr;
  torch::nn::Linear linear2 = nullptr;
  torch::nn::LayerNorm norm1 = nullptr;
  torch::nn::LayerNorm norm2 = nullptr;
  torch::nn::LayerNorm norm3 = nullptr;
  torch::nn::Dropout dropout1 = nullptr;
  torch::nn::Dropout dropout2 = nullptr;
  torch::nn::Dropout dropout3 = nullptr;
};
TORCH_MODULE(TransformerDecoderLayer);

}  // namespace attnscope::models::transformer
