#pragma once
// Using a trained seq2seq model: translate sentences (greedy or beam), evaluate against
// references, and write the attention alignments (HDF5 and PNG heatmaps).

#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "datasets/text/pairs.h"
#include "models/text/decoding.h"
#include "pipeline/text/seq2seq_checkpoint.h"
#include "pipeline/text/seq2seq_metrics.h"

namespace attnscope::pipeline {

/// One translated sentence.
/// Shape: attention (T, S) float32 over the output tokens and the (possibly truncated) source
/// tokens; undefined for models without attention or when error is set.
struct Translation {
  std::string source;                      ///< the input text
  std::vector<std::string> source_tokens;  ///< the tokens the model saw
  std::vector<std::string> tokens;         ///< output tokens
  std::string text;                        ///< detokenised output
  torch::Tensor attention;
  bool truncated = false;  ///< the source had more than the model's max_length tokens
  std::size_t unknown = 0;  ///< source tokens outside the model's vocabulary (read as <unk>)
  std::string error;       ///< why this sentence was not translated (empty when it was)
};

/// Sources above this many bytes are not tokenised (a line of megabytes only to be cut to
/// max_length tokens: 100 MB took 3.7 GB); the TSV reader's line limit is the same.
constexpr std::size_t kMaxSourceBytes = 65536;

/// Translates every source sentence, batch_size at a time. Sentences longer than the model's
/// max_length are truncated to it (Translation::truncated); bad sentences (invalid UTF-8, empty)
/// get Translation::error and the others go on.
/// Sources over 64 KiB are not tokenised (Translation::error). `stop`, when given, is asked
/// before each batch: once it says true the remaining sentences get the error "stopped".
std::vector<Translation> translate(const Seq2SeqBundle& bundle,
                                   const std::vector<std::string>& sources,
                                   const models::text::DecodeOptions& options,
                                   int64_t batch_size = 64,
                                   const std::function<bool()>& stop = nullptr);

struct Seq2SeqEvaluation {
  Seq2SeqMetrics metrics;  ///< over every pair (failed ones count as wrong, empty output)
  int64_t truncated = 0;   ///< sources cut to max_length
  int64_t failed = 0;      ///< sources that could not be translated
  bool stopped = false;    ///< `stop` said true: the metrics are not complete
};

/// Translates the sources and scores the outputs against the targets (tokenised with the
/// model's tokeniser): exact match, token accuracy, corpus BLEU over those tokens. The pairs
/// are translated `chunk` at a time and each translation let go once scored (a batch groups
/// sentences of similar length within a chunk).
Seq2SeqEvaluation evaluate_seq2seq(const Seq2SeqBundle& bundle,
                                   const std::vector<datasets::text::TextPair>& pairs,
                                   const models::text::DecodeOptions& options,
                                   int64_t batch_size = 64,
                                   const std::function<bool()>& stop = nullptr,
                                   std::size_t chunk = 4096);

/// True for an HDF5 file whose root `format` attribute is "attnscope-alignments" (one
/// write_alignments made): what `translate --alignments` may replace.
bool is_alignments_file(const std::string& path);

/// Alignments file: /sentences/<000000>/attention (T, S) float32 with the group attributes
/// source, output (text), source_tokens, output_tokens (JSON arrays); root attributes format
/// = "attnscope-alignments", model, count. Failed sentences get a group with an `error`
/// attribute and no dataset. Throws Error when the model has no attention.
void write_alignments(const std::string& path, const std::vector<Translation>& translations,
                      const std::string& model_name);

/// Heatmap PNG of one alignment: output tokens down the left, source tokens (vertical) along
/// the top, one cell per weight (viridis). Non-ASCII characters are drawn as '?' (OpenCV's
/// Hershey fonts are ASCII only). The PNG carries a tEXt chunk `Software: attnscope seq2seq
/// translate`, so a later run knows the file for its own. Throws Error when there is no
/// attention or writing fails.
void write_alignment_png(const std::string& path, const Translation& translation);

/// Whether `path` is a PNG that write_alignment_png wrote (its tEXt chunk after the header).
bool is_alignment_png(const std::string& path);

}  // namespace attnscope::pipeline
