#pragma once
// Encoder and decoder stacks of N layers (N = 6 in the paper), batch-first (B, L, E).
// Sub-modules: `layers` (ModuleList, children `0` .. `N-1`) and `norm` (final LayerNorm, when
// final_norm), so parameters are named `layers.3.self_attn.qkv.weight`, `norm.weight`, ...

#include <vector>

#include <torch/torch.h>

#include "models/transformer/layers.h"

namespace attnscope::models::transformer {

struct TransformerStackOptions {
  TransformerStackOptions(TransformerLayerOptions layer = {}, int64_t num_layers = 6)  // NOLINT
      : layer_(layer), num_layers_(num_layers) {}
  /// Options of every layer (defaults: d_model 512, 8 heads, d_ff 2048, dropout 0.1).
  TORCH_ARG(TransformerLayerOptions, layer);
  /// N, number of layers.
  TORCH_ARG(int64_t, num_layers);
  /// A final LayerNorm after the last layer, as torch.nn.Transformer has; pre-norm stacks
  /// need it, post-norm stacks (the paper) may drop it.
  TORCH_ARG(bool, final_norm) = true;
};

struct EncoderOutput {
  torch::Tensor output;                     ///< (B, L, E)
  std::vector<torch::Tensor> self_weights;  ///< per layer (B, H, L, L) when requested, else empty
};

/// N encoder layers.
///
/// Shape: src (B, L, E), masks for (B, H, L, L) (usually the source padding)
/// -> output (B, L, E), self_weights N x (B, H, L, L).
class TransformerEncoderImpl : public torch::nn::Cloneable<TransformerEncoderImpl> {
 public:
  explicit TransformerEncoderImpl(const TransformerStackOptions& options_ = {});
  void reset() override;
  EncoderOutput forward(const torch::Tensor& src, const AttentionMasks& masks = {},
                        bool need_weights = false);

  TransformerStackOptions options;
  torch::nn::ModuleList layers = nullptr;
  torch::nn::LayerNorm norm = nullptr;
};
TORCH_MODULE(TransformerEncoder);

/// Key/value caches of every decoder layer, for incremental (step-by-step) decoding.
struct DecoderCache {
  std::vector<DecoderLayerCache> layers;
  /// Target positions decoded so far (the offset of the next token's position encoding).
  int64_t length() const { return layers.empty() ? 0 : layers.front().self_attn.length(); }
  /// Keeps batch rows `index` (beam search). Shape: index (B') int64.
  void reorder(const torch::Tensor& index) {
    for (auto& layer : layers)
      layer.reorder(index);
  }
};

struct DecoderOutput {
  torch::Tensor output;                      ///< (B, T, E)
  std::vector<torch::Tensor> self_weights;   ///< per layer (B, H, T, T') when requested
  std::vector<torch::Tensor> cross_weights;  ///< per layer (B, H, T, S) when requested
};

/// N decoder layers.
///
/// Args of forward: tgt_masks for the self-attention (causal = true for training on whole
/// targets), memory_masks for the cross-attention (source padding); cache: from make_cache(),
/// then tgt holds only the new tokens (memory may be undefined after the first call).
///
/// Shape: tgt (B, T, E), memory (B, S, E) -> output (B, T, E), self_weights N x (B, H, T, T'),
/// cross_weights N x (B, H, T, S).
class TransformerDecoderImpl : public torch::nn::Cloneable<TransformerDecoderImpl> {
 public:
  explicit TransformerDecoderImpl(const TransformerStackOptions& options_ = {});
  void reset() override;
  DecoderOutput forward(const torch::Tensor& tgt, const torch::Tensor& memory,
                        const AttentionMasks& tgt_masks = {},
                        const AttentionMasks& memory_masks = {}, bool need_weights = false,
                        DecoderCache* cache = nullptr);
  /// An empty cache with one entry per layer.
  DecoderCache make_cache() const;

  TransformerStackOptions options;
  torch::nn::ModuleList layers = nullptr;
  torch::nn::LayerNorm norm = nullptr;
};
TORCH_MODULE(TransformerDecoder);

}  // namespace attnscope::models::transformer
