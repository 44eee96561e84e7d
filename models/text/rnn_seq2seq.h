#pragma once
// RNN encoder-decoders: the seed's fixed-context baseline and the attention decoders.
//
// Encoder: `embedding` + `rnn` (GRU or LSTM, optionally bidirectional, packed so padding
// never leaks into the backward direction).
// Decoder (Bahdanau et al. 2015 layout, shared by every attention kind): at step t the query
// is the previous decoder state s_{t-1}; the attention core returns the context c_t and the
// weights; [embedding(y_{t-1}); c_t] feeds the decoder `rnn`; logits =
// generator(tanh(pre_output([s_t; c_t; embedding(y_{t-1})]))).
// With attention "none" (Cho et al. 2014), c_t is the same for every step: the encoder's final
// state — the fixed-length context vector the seed says forgets long sequences.

#include <torch/torch.h>

#include "models/attention/attend.h"
#include "models/text/seq2seq.h"

namespace attnscope::models::text {

/// What the encoder returns.
/// Shape: outputs (B, S, D) with D = hidden_dim * directions (zeros at padding); final (B, D),
/// the last layer's final hidden state of both directions.
struct EncoderOutput {
  torch::Tensor outputs;
  torch::Tensor final;
};

/// GRU/LSTM encoder. Sub-modules: `embedding`, `gru` or `lstm`, `dropout`.
///
/// Shape: source (B, S) int64, lengths (B) int64 (each >= 1) -> EncoderOutput.
class RnnEncoderImpl : public torch::nn::Cloneable<RnnEncoderImpl> {
 public:
  explicit RnnEncoderImpl(const Seq2SeqOptions& options_);
  void reset() override;
  EncoderOutput forward(const torch::Tensor& source, const torch::Tensor& lengths);
  int64_t output_dim() const;

  Seq2SeqOptions options;
  torch::nn::Embedding embedding = nullptr;
  torch::nn::GRU gru = nullptr;
  torch::nn::LSTM lstm = nullptr;
  torch::nn::Dropout dropout = nullptr;
};
TORCH_MODULE(RnnEncoder);

/// Encoder + attention decoder. Sub-modules: `encoder`, `embedding` (target), `bridge`
/// (encoder final -> initial decoder state), `rnn`, `attention` (absent for "none"),
/// `pre_output`, `generator`. The decoder's hidden size equals the encoder's output size
/// (hidden_dim * directions) so that the dot score applies.
class RnnSeq2SeqImpl : public Seq2SeqModel {
 public:
  explicit RnnSeq2SeqImpl(const Seq2SeqOptions& options_);
  void reset();

  Seq2SeqOutput forward(const torch::Tensor& source, const torch::Tensor& source_lengths,
                        const torch::Tensor& target_in) override;
  DecoderState start(const torch::Tensor& source, const torch::Tensor& source_lengths) override;
  StepOutput step(DecoderState& state, const torch::Tensor& previous) override;
  bool has_attention() const override { return options_.attention() != "none"; }
  const Seq2SeqOptions& options() const override { return options_; }

  RnnEncoder encoder = nullptr;
  torch::nn::Embedding embedding = nullptr;
  torch::nn::Linear bridge = nullptr;
  torch::nn::GRU gru = nullptr;
  torch::nn::LSTM lstm = nullptr;
  attention::Attention attention = nullptr;
  torch::nn::Linear pre_output = nullptr;
  torch::nn::Linear generator = nullptr;
  torch::nn::Dropout dropout = nullptr;

 private:
  Seq2SeqOptions options_;
};
TORCH_MODULE(RnnSeq2Seq);

}  // namespace attnscope::models::text
