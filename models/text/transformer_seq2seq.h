#pragma once
// The Transformer encoder-decoder (Vaswani et al. 2017) from the core's stacks
// (models/transformer): token embeddings scaled by sqrt(d_model), sinusoidal or learned
// positions, N encoder and N decoder layers (pre-norm, which trains small models without
// tuning), a linear generator. Incremental decoding uses the stacks' key/value caches. The
// alignment of an output token is the last decoder layer's cross-attention, averaged over heads.

#include <torch/torch.h>

#include "models/text/seq2seq.h"
#include "models/transformer/positional.h"
#include "models/transformer/stack.h"

namespace attnscope::models::text {

/// Sub-modules: `source_embedding`, `target_embedding`, `source_positions`,
/// `target_positions`, `encoder`, `decoder`, `generator`.
///
/// Shape: as Seq2SeqModel; attention (B, T, S) is the head-mean of the last layer's
/// cross-attention weights.
class TransformerSeq2SeqImpl : public Seq2SeqModel {
 public:
  explicit TransformerSeq2SeqImpl(const Seq2SeqOptions& options_);
  void reset();

  Seq2SeqOutput forward(const torch::Tensor& source, const torch::Tensor& source_lengths,
                        const torch::Tensor& target_in) override;
  DecoderState start(const torch::Tensor& source, const torch::Tensor& source_lengths) override;
  StepOutput step(DecoderState& state, const torch::Tensor& previous) override;
  bool has_attention() const override { return true; }
  const Seq2SeqOptions& options() const override { return options_; }

  torch::nn::Embedding source_embedding = nullptr;
  torch::nn::Embedding target_embedding = nullptr;
  torch::nn::AnyModule source_positions;
  torch::nn::AnyModule target_positions;
  transformer::TransformerEncoder encoder = nullptr;
  transformer::TransformerDecoder decoder = nullptr;
  torch::nn::Linear generator = nullptr;

 private:
  // Embedding * sqrt(d_model) + positions starting at offset. Shape: (B, L) -> (B, L, E).
  torch::Tensor embed(torch::nn::Embedding& embedding, torch::nn::AnyModule& positions,
                      const torch::Tensor& tokens, int64_t offset);
  // Encoder memory (B, S, E) and the source padding mask (B, S).
  std::pair<torch::Tensor, torch::Tensor> encode(const torch::Tensor& source,
                                                 const torch::Tensor& source_lengths);
  Seq2SeqOptions options_;
};
TORCH_MODULE(TransformerSeq2Seq);

}  // namespace attnscope::models::text
