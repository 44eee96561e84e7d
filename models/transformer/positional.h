#pragma once
// Position information for Transformers: the fixed sinusoidal encoding of Vaswani et al. 2017
// and a learned position embedding. Both add to the token embeddings (B, L, E) and apply
// dropout, as in the paper ("dropout to the sums of the embeddings and the positional
// encodings").

#include <torch/torch.h>

namespace attnscope::models::transformer {

/// The sinusoidal encoding of positions offset .. offset + length - 1:
///   PE(pos, 2i) = sin(pos / base^(2i / dim)),  PE(pos, 2i + 1) = cos(pos / base^(2i / dim)).
///
/// Shape: -> (length, dim), float32 unless `options` says otherwise.
torch::Tensor sinusoidal_encoding(int64_t length, int64_t dim, int64_t offset = 0,
                                  double base = 10000.0, torch::TensorOptions options = {});

struct PositionalEncodingOptions {
  PositionalEncodingOptions(int64_t d_model, int64_t max_len = 5000)
      : d_model_(d_model), max_len_(max_len) {}
  /// E, features of a token.
  TORCH_ARG(int64_t, d_model);
  /// Longest sequence (offset + length) the module accepts.
  TORCH_ARG(int64_t, max_len);
  /// Dropout after adding the positions (training only).
  TORCH_ARG(double, dropout) = 0.1;
  /// Base of the sinusoid wavelengths (sinusoidal encoding only).
  TORCH_ARG(double, base) = 10000.0;
  /// Standard deviation of the initial learned embedding (learned embedding only).
  TORCH_ARG(double, init_std) = 0.02;
};

/// x + PE[offset : offset + L], then dropout. Buffer `pe` (max_len, d_model).
///
/// Shape: x (B, L, E) -> (B, L, E). offset: position of x's first token (incremental decoding).
class SinusoidalPositionalEncodingImpl
    : public torch::nn::Cloneable<SinusoidalPositionalEncodingImpl> {
 public:
  explicit SinusoidalPositionalEncodingImpl(const PositionalEncodingOptions& options_);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x, int64_t offset = 0);

  PositionalEncodingOptions options;
  torch::Tensor pe;
  torch::nn::Dropout dropout = nullptr;
};
TORCH_MODULE(SinusoidalPositionalEncoding);

/// x + weight[offset : offset + L], then dropout. Parameter `weight` (max_len, d_model),
/// initialised N(0, init_std²) (0.02 as BERT/GPT/timm).
///
/// Shape: x (B, L, E) -> (B, L, E).
class LearnedPositionEmbeddingImpl : public torch::nn::Cloneable<LearnedPositionEmbeddingImpl> {
 public:
  explicit LearnedPositionEmbeddingImpl(const PositionalEncodingOptions& options_);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x, int64_t offset = 0);

  PositionalEncodingOptions options;
  torch::Tensor weight;
  torch::nn::Dropout dropout = nullptr;
};
TORCH_MODULE(LearnedPositionEmbedding);

}  // namespace attnscope::models::transformer
