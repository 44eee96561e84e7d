#pragma once
// The interface every text seq2seq model implements, its options and the model presets.
//
// A model is used two ways: teacher-forced (`forward`: the whole target prefix at once, for
// training) and step by step (`start` + `step`, for greedy and beam search in decoding.h).
// Both return the attention over the source of every output position, taken from the
// attention core (models/attention) — never recomputed.

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <torch/torch.h>

#include "models/transformer/stack.h"

namespace attnscope::models::text {

/// Options of every seq2seq model; `arch` picks the family, the rest are its sizes.
struct Seq2SeqOptions {
  /// "rnn" (encoder-decoder RNN) or "transformer".
  TORCH_ARG(std::string, arch) = "rnn";
  /// RNN cell: "gru" or "lstm".
  TORCH_ARG(std::string, cell) = "gru";
  /// RNN decoder attention: "none" (fixed-length context vector), "additive" (Bahdanau), "dot",
  /// "general" (Luong) or "crf" (structured: linear-chain CRF marginals, Kim et al. 2017).
  TORCH_ARG(std::string, attention) = "additive";
  /// Source and target vocabulary sizes (including the 4 special tokens).
  TORCH_ARG(int64_t, source_vocab) = 0;
  TORCH_ARG(int64_t, target_vocab) = 0;
  /// Token embedding size (RNN); the Transformer uses model_dim.
  TORCH_ARG(int64_t, embedding_dim) = 64;
  /// RNN hidden size per direction.
  TORCH_ARG(int64_t, hidden_dim) = 128;
  /// RNN layers (encoder and decoder) or Transformer layers (encoder and decoder).
  TORCH_ARG(int64_t, layers) = 1;
  /// Bidirectional RNN encoder.
  TORCH_ARG(bool, bidirectional) = true;
  /// Dropout on embeddings and hidden outputs (training only).
  TORCH_ARG(double, dropout) = 0.1;
  /// Transformer model width, heads and feed-forward width.
  TORCH_ARG(int64_t, model_dim) = 128;
  TORCH_ARG(int64_t, heads) = 4;
  TORCH_ARG(int64_t, ff_dim) = 256;
  /// Transformer positions: "sinusoidal" or "learned".
  TORCH_ARG(std::string, positions) = "sinusoidal";
  /// Longest source and target (tokens, without <bos>/<eos>) the model accepts; longer
  /// sources are truncated by the callers (counted and reported), never crash.
  TORCH_ARG(int64_t, max_length) = 128;
};

/// The command-line model names: gru, gru-additive, gru-dot, gru-general, gru-crf,
/// lstm-additive, transformer (plus lstm, lstm-dot, lstm-general, lstm-crf).
const std::vector<std::string>& seq2seq_model_names();

/// Options for a model name (vocabulary sizes left 0): one layer for the RNNs, two for the
/// transformer. Throws Error for an unknown name.
Seq2SeqOptions seq2seq_preset(const std::string& name);

/// Everything a decoder needs between steps. Every tensor is batch-first (dim 0 = batch), so
/// a beam search keeps hypotheses by reordering dim 0 of all of them.
struct DecoderState {
  std::unordered_map<std::string, torch::Tensor> tensors;
  /// Key/value caches of a Transformer decoder (empty for the RNNs).
  transformer::DecoderCache cache;
  /// Keeps rows `index` (B') of every tensor and cache. Shape: index (B') int64.
  void reorder(const torch::Tensor& index);
  const torch::Tensor& at(const std::string& name) const;
};

/// Teacher-forced output.
/// Shape: logits (B, T, V); attention (B, T, S) or undefined for models without attention.
struct Seq2SeqOutput {
  torch::Tensor logits;
  torch::Tensor attention;
};

/// One decoding step.
/// Shape: logits (B, V); attention (B, S) or undefined.
struct StepOutput {
  torch::Tensor logits;
  torch::Tensor attention;
};

/// The seq2seq interface (a torch::nn::Module, so parameters, train/eval and checkpoints work).
class Seq2SeqModel : public torch::nn::Module {
 public:
  /// Teacher forcing: scores every position of target_in (<bos> y_1 ... y_{T-1}).
  /// Shape: source (B, S) int64, source_lengths (B) int64, target_in (B, T) int64.
  virtual Seq2SeqOutput forward(const torch::Tensor& source, const torch::Tensor& source_lengths,
                                const torch::Tensor& target_in) = 0;
  /// Encodes the source and returns the state before the first output token.
  virtual DecoderState start(const torch::Tensor& source, const torch::Tensor& source_lengths) = 0;
  /// Feeds the previous output token (B) and returns the next token's logits.
  virtual StepOutput step(DecoderState& state, const torch::Tensor& previous) = 0;
  /// Whether the model has attention weights to show (false for the fixed-context decoder).
  virtual bool has_attention() const = 0;
  virtual const Seq2SeqOptions& options() const = 0;
};

/// Builds the model for options (vocabulary sizes must be set). Throws Error for bad options.
std::shared_ptr<Seq2SeqModel> make_seq2seq(const Seq2SeqOptions& options);

}  // namespace attnscope::models::text
