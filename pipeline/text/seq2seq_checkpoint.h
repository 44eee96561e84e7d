#pragma once
// A trained seq2seq model with everything needed to use it: its options, the source and target
// vocabularies and the tokeniser, saved in the project's checkpoint format (checkpoint.h).
//
// Checkpoint attributes: model_config = the model's options as JSON plus "name" (e.g.
// "gru-additive"); extra = {"tokenizer": "char"|"word", "source_vocab": [...],
// "target_vocab": [...]} (tokens in id order, starting with <pad> <bos> <eos> <unk>).

#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "datasets/text/tokenizer.h"
#include "models/text/seq2seq.h"

namespace attnscope::pipeline {

struct Seq2SeqBundle {
  std::string name;  ///< command-line model name, e.g. "gru-additive"
  std::shared_ptr<models::text::Seq2SeqModel> model;
  datasets::text::Vocabulary source_vocab;
  datasets::text::Vocabulary target_vocab;
  datasets::text::TokenizerKind tokenizer = datasets::text::TokenizerKind::kChar;
};

/// Bounds on a seq2seq model's sizes: a checkpoint (or command line) outside them is refused
/// before any tensor is allocated.
constexpr int64_t kMaxSeq2SeqVocab = 1'000'000;
constexpr int64_t kMaxSeq2SeqWidth = 16'384;
constexpr int64_t kMaxSeq2SeqLayers = 64;
constexpr int64_t kMaxSeq2SeqLength = 4096;
/// Each size within its range can still multiply into more than memory holds (hidden_dim
/// 16384 with 64 layers: over 1e11 weights, bad_alloc): at most 2^30 parameters (4 GiB).
constexpr double kMaxSeq2SeqParameters = 1 << 30;

/// The number of parameters the options make (the modules' own formulas, within a few per
/// cent: attention's are bounded from above).
double seq2seq_parameter_count(const models::text::Seq2SeqOptions& options);

/// How a validation message names a field of the options: a checkpoint's "model_config.heads"
/// (the default), or the command-line flag that set it ("--heads").
using Seq2SeqFieldName = std::function<std::string(const std::string& field)>;

/// Throws Error(subject, "<field> is ...; expected ...") for the first option outside its
/// range (vocabularies > 4 special tokens, widths and layers >= 1, heads dividing model_dim,
/// dropout in [0, 1), max_length <= kMaxSeq2SeqLength, known arch/cell/attention), and for
/// options that make over kMaxSeq2SeqParameters parameters. Fields are named by field_name
/// (default: "model_config.<field>").
void validate_seq2seq_options(const models::text::Seq2SeqOptions& options,
                              const std::string& subject, const Seq2SeqFieldName& field_name = {});

nlohmann::json seq2seq_options_to_json(const models::text::Seq2SeqOptions& options);
/// Inverse of seq2seq_options_to_json; missing keys keep their defaults, keys of the wrong
/// type or unknown keys throw Error naming subject and the key. Ranges: validate_seq2seq_options.
models::text::Seq2SeqOptions seq2seq_options_from_json(const nlohmann::json& json,
                                                       const std::string& subject);

/// Saves the model's tensors and the vocabularies/options (provenance: data, seed, metrics...).
void save_seq2seq(const std::string& path, const Seq2SeqBundle& bundle,
                  const nlohmann::json& provenance = nlohmann::json::object());

/// Rebuilds the model from the checkpoint's config and loads its tensors strictly (eval mode).
/// Throws Error naming the path for a checkpoint that is not a seq2seq model.
Seq2SeqBundle load_seq2seq(const std::string& path);

/// Whether `path` is a checkpoint save_seq2seq wrote (model_config.family "seq2seq"): what
/// `seq2seq train` replaces. False for any other file; an attnscope checkpoint that cannot be
/// read (a flipped bit, a cut copy) throws Error with the reason, so that it is not said to be
/// some other file.
bool is_seq2seq_checkpoint(const std::string& path);

}  // namespace attnscope::pipeline
