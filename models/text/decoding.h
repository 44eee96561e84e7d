#pragma once
// Greedy and beam-search decoding of any Seq2SeqModel, keeping the attention alignment of
// every output token.

#include <cstdint>
#include <vector>

#include <torch/torch.h>

#include "models/text/seq2seq.h"

namespace attnscope::models::text {

struct DecodeOptions {
  /// 1 = greedy; > 1 = beam search with that many hypotheses.
  TORCH_ARG(int64_t, beam_size) = 1;
  /// GNMT length penalty α (Wu et al. 2016): hypotheses are ranked by
  /// log p / ((5 + length) / 6)^α; 0 = plain log-probability.
  TORCH_ARG(double, length_penalty) = 0.0;
  /// Most output tokens (without <eos>); after that many only <eos> may follow.
  TORCH_ARG(int64_t, max_length) = 128;
};

/// One decoded sequence.
/// Shape: attention (T, S) float32 for the T output tokens (without <eos>) over the S source
/// tokens of this sentence, on the CPU whatever the model's device; undefined when the model
/// has no attention.
struct Hypothesis {
  std::vector<int64_t> tokens;  ///< without <bos>/<eos>
  torch::Tensor attention;
  double log_prob = 0.0;  ///< sum of the token log-probabilities (including <eos> when reached)
  bool finished = false;  ///< ended with <eos> (at the latest right after max_length tokens)
};

/// Greedy decoding of a whole batch at once (runs under NoGradGuard, in eval mode left as is).
/// The model runs on the source's device (the model's).
/// Shape: source (B, S) int64, source_lengths (B) int64 -> B hypotheses.
std::vector<Hypothesis> greedy_decode(Seq2SeqModel& model, const torch::Tensor& source,
                                      const torch::Tensor& source_lengths,
                                      const DecodeOptions& options);

/// Beam search, one sentence at a time (the beam is the batch). With beam_size 1 it returns
/// the greedy result.
/// Shape: source (B, S) int64, source_lengths (B) int64 -> B hypotheses (the best of each beam).
std::vector<Hypothesis> beam_decode(Seq2SeqModel& model, const torch::Tensor& source,
                                    const torch::Tensor& source_lengths,
                                    const DecodeOptions& options);

/// greedy_decode when beam_size == 1, beam_decode otherwise.
std::vector<Hypothesis> decode(Seq2SeqModel& model, const torch::Tensor& source,
                               const torch::Tensor& source_lengths, const DecodeOptions& options);

/// GNMT length penalty ((5 + length) / 6)^alpha.
double length_penalty(int64_t length, double alpha);

}  // namespace attnscope::models::text
