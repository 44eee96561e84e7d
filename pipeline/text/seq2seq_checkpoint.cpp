#include "pipeline/text/seq2seq_checkpoint.h"

#include <cmath>
#include <set>
#include <type_traits>

#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "attnscope/printable.h"
#include "pipeline/checkpoint.h"
#include "pipeline/h5.h"

namespace attnscope::pipeline {

nlohmann::json seq2seq_options_to_json(const models::text::Seq2SeqOptions& o) {
  return {{"arch", o.arch()},
          {"cell", o.cell()},
          {"attention", o.attention()},
          {"source_vocab", o.source_vocab()},
          {"target_vocab", o.target_vocab()},
          {"embedding_dim", o.embedding_dim()},
          {"hidden_dim", o.hidden_dim()},
          {"layers", o.layers()},
          {"bidirectional", o.bidirectional()},
          {"dropout", o.dropout()},
          {"model_dim", o.model_dim()},
          {"heads", o.heads()},
          {"ff_dim", o.ff_dim()},
          {"positions", o.positions()},
          {"max_length", o.max_length()}};
}

namespace {

template <typename T>
T get(const nlohmann::json& json, const char* key, const std::string& subject) {
  // nlohmann reads 1.5 as the integer 1: a count must be written as an integer.
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
    check(json.at(key).is_number_integer(), subject, "model_config.", key,
          " must be an integer, got ", json_excerpt(json.at(key), 100));
  try {
    return json.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    throw Error(subject,
                concat("model_config.", key, " has the wrong type: ", json_excerpt(json.at(key))));
  }
}

void check_range(int64_t value, int64_t lo, int64_t hi, const std::string& name,
                 const std::string& subject) {
  check(value >= lo && value <= hi, subject, name, " is ", value, "; expected an integer in [", lo,
        ", ", hi, "]");
}

void check_one_of(const std::string& value, const std::set<std::string>& allowed,
                  const std::string& name, const std::string& subject) {
  if (allowed.count(value)) return;
  std::string list;
  for (const auto& a : allowed)
    list += (list.empty() ? "" : ", ") + a;
  throw Error(subject, concat(name, " is \"", excerpt(value, 100), "\"; expected one of ", list));
}

}  // namespace

double seq2seq_parameter_count(const models::text::Seq2SeqOptions& o) {
  const double E = static_cast<double>(o.embedding_dim());
  const double L = static_cast<double>(o.layers());
  const double Vs = static_cast<double>(o.source_vocab()),
               Vt = static_cast<double>(o.target_vocab());
  if (o.arch() == "transformer") {
    const double D = static_cast<double>(o.model_dim()), F = static_cast<double>(o.ff_dim());
    const double encoder_layer = 4 * D * D + 2 * D * F + 9 * D + F;  // attention, FF, norms
    const double decoder_layer = encoder_layer + 4 * D * D + 6 * D;  // and cross-attention
    return (Vs + Vt) * D + 2 * (static_cast<double>(o.max_length()) + 1) * D +
           L * (encoder_layer + decoder_layer) + 4 * D + D * Vt + Vt;
  }
  // torch::nn::GRU / LSTM: gates * h * (in + h + 2) per layer and direction.
  const double g = o.cell() == "lstm" ? 4 : 3, h = static_cast<double>(o.hidden_dim());
  const double dirs = o.bidirectional() ? 2 : 1, d = h * dirs;
  const auto rnn = [&](double in, double width, double directions) {
    return directions * g * width * (in + width + 2) +
           (L - 1) * directions * g * width * (directions * width + width + 2);
  };
  const double encoder = Vs * E + rnn(E, h, dirs);
  const std::string kind = o.attention();
  const double attention = kind == "additive"                   ? 2 * d * d + 3 * d  // W_q, W_k, v
                           : kind == "general" || kind == "crf" ? d * d + d          // W
                                                                : 0;                 // none, dot
  const double decoder =
      Vt * E + d * d * L + d * L + rnn(E + d, d, 1) + attention + (2 * d + E) * d + d + d * Vt + Vt;
  return encoder + decoder;
}

void validate_seq2seq_options(const models::text::Seq2SeqOptions& o, const std::string& subject,
                              const Seq2SeqFieldName& field_name) {
  const auto name = [&](const std::string& field) {
    return field_name ? field_name(field) : "model_config." + field;
  };
  check_one_of(o.arch(), {"rnn", "transformer"}, name("arch"), subject);
  check_one_of(o.cell(), {"gru", "lstm"}, name("cell"), subject);
  check_one_of(o.attention(), {"none", "additive", "dot", "general", "crf"}, name("attention"),
               subject);
  check_one_of(o.positions(), {"sinusoidal", "learned"}, name("positions"), subject);
  check_range(o.source_vocab(), 5, kMaxSeq2SeqVocab, name("source_vocab"), subject);
  check_range(o.target_vocab(), 5, kMaxSeq2SeqVocab, name("target_vocab"), subject);
  check_range(o.embedding_dim(), 1, kMaxSeq2SeqWidth, name("embedding_dim"), subject);
  check_range(o.hidden_dim(), 1, kMaxSeq2SeqWidth, name("hidden_dim"), subject);
  check_range(o.model_dim(), 1, kMaxSeq2SeqWidth, name("model_dim"), subject);
  check_range(o.ff_dim(), 1, kMaxSeq2SeqWidth, name("ff_dim"), subject);
  check_range(o.heads(), 1, o.model_dim(), name("heads"), subject);
  check(o.model_dim() % o.heads() == 0, subject, name("model_dim"), " (", o.model_dim(),
        ") is not divisible by ", name("heads"), " (", o.heads(), ")");
  check_range(o.layers(), 1, kMaxSeq2SeqLayers, name("layers"), subject);
  check_range(o.max_length(), 1, kMaxSeq2SeqLength, name("max_length"), subject);
  check(std::isfinite(o.dropout()) && o.dropout() >= 0 && o.dropout() < 1, subject, name("dropout"),
        " is ", o.dropout(), "; expected a number in [0, 1)");
  const double parameters = seq2seq_parameter_count(o);
  check(parameters <= kMaxSeq2SeqParameters, subject, "these sizes make a model of about ",
        static_cast<float>(parameters), " parameters; at most 2^30 (4 GiB of float32 weights)");
}

models::text::Seq2SeqOptions seq2seq_options_from_json(const nlohmann::json& json,
                                                       const std::string& subject) {
  check(json.is_object(), subject, "model_config is not a JSON object");
  static const std::set<std::string> known = {
      "arch",       "cell",      "attention",     "source_vocab", "target_vocab", "embedding_dim",
      "hidden_dim", "layers",    "bidirectional", "dropout",      "model_dim",    "heads",
      "ff_dim",     "positions", "max_length",    "name",         "family"};
  for (const auto& item : json.items())
    check(known.count(item.key()) > 0, subject, "model_config.", item.key(),
          " is not a seq2seq option");
  models::text::Seq2SeqOptions o;
  if (json.contains("arch")) o.arch(get<std::string>(json, "arch", subject));
  if (json.contains("cell")) o.cell(get<std::string>(json, "cell", subject));
  if (json.contains("attention")) o.attention(get<std::string>(json, "attention", subject));
  if (json.contains("source_vocab")) o.source_vocab(get<int64_t>(json, "source_vocab", subject));
  if (json.contains("target_vocab")) o.target_vocab(get<int64_t>(json, "target_vocab", subject));
  if (json.contains("embedding_dim")) o.embedding_dim(get<int64_t>(json, "embedding_dim", subject));
  if (json.contains("hidden_dim")) o.hidden_dim(get<int64_t>(json, "hidden_dim", subject));
  if (json.contains("layers")) o.layers(get<int64_t>(json, "layers", subject));
  if (json.contains("bidirectional")) o.bidirectional(get<bool>(json, "bidirectional", subject));
  if (json.contains("dropout")) o.dropout(get<double>(json, "dropout", subject));
  if (json.contains("model_dim")) o.model_dim(get<int64_t>(json, "model_dim", subject));
  if (json.contains("heads")) o.heads(get<int64_t>(json, "heads", subject));
  if (json.contains("ff_dim")) o.ff_dim(get<int64_t>(json, "ff_dim", subject));
  if (json.contains("positions")) o.positions(get<std::string>(json, "positions", subject));
  if (json.contains("max_length")) o.max_length(get<int64_t>(json, "max_length", subject));
  return o;
}

void save_seq2seq(const std::string& path, const Seq2SeqBundle& bundle,
                  const nlohmann::json& provenance) {
  check(bundle.model != nullptr, path, "no model to save");
  CheckpointMeta meta;
  meta.model_config = seq2seq_options_to_json(bundle.model->options());
  meta.model_config["name"] = bundle.name;
  meta.model_config["family"] = "seq2seq";
  meta.extra = {{"tokenizer", datasets::text::to_string(bundle.tokenizer)},
                {"source_vocab", bundle.source_vocab.to_json()},
                {"target_vocab", bundle.target_vocab.to_json()}};
  meta.provenance = provenance;
  save_checkpoint(path, *bundle.model, meta);
}

namespace {

Seq2SeqBundle load_seq2seq_checked(const std::string& path) {
  const auto meta = read_checkpoint_meta(path);
  check(json_field(meta.model_config, "family", std::string(), path, "model_config.family") ==
            "seq2seq",
        path, "not a seq2seq checkpoint (model_config.family is not \"seq2seq\")");
  check(meta.extra.contains("source_vocab") && meta.extra.contains("target_vocab") &&
            meta.extra.contains("tokenizer"),
        path, "checkpoint has no vocabularies/tokenizer in its extra attribute");
  Seq2SeqBundle bundle;
  bundle.name = json_field(meta.model_config, "name", std::string(), path, "model_config.name");
  const auto tokenizer =
      json_field(meta.extra, "tokenizer", std::string(), path, "extra.tokenizer");
  try {
    bundle.source_vocab = datasets::text::Vocabulary::from_json(meta.extra["source_vocab"]);
    bundle.target_vocab = datasets::text::Vocabulary::from_json(meta.extra["target_vocab"]);
    bundle.tokenizer = datasets::text::tokenizer_from_string(tokenizer);
  } catch (const Error& e) {
    throw Error(path, excerpt(e.what(), 300));  // a vocabulary entry may be megabytes
  }
  auto options = seq2seq_options_from_json(meta.model_config, path);
  validate_seq2seq_options(options, path);  // before anything is allocated from the sizes
  check(options.source_vocab() == bundle.source_vocab.size() &&
            options.target_vocab() == bundle.target_vocab.size(),
        path, "vocabulary sizes in model_config do not match the stored vocabularies");
  bundle.model = models::text::make_seq2seq(options);
  load_checkpoint(path, *bundle.model);
  bundle.model->eval();
  return bundle;
}

}  // namespace

Seq2SeqBundle load_seq2seq(const std::string& path) {
  try {
    return load_seq2seq_checked(path);
  } catch (const nlohmann::json::exception& e) {
    // A value of the wrong JSON type in model_config or extra (family 5, model_config an
    // array): named with the file, not nlohmann's bare text.
    throw Error(path, concat("corrupt checkpoint attribute (", excerpt(e.what(), 200), ")"));
  }
}

bool is_seq2seq_checkpoint(const std::string& path) {
  CheckpointMeta meta;
  try {
    meta = read_checkpoint_meta(path);
  } catch (const Error& e) {
    if (!h5::has_format(path, "attnscope-checkpoint")) return false;
    throw Error(path, "is an attnscope checkpoint that cannot be read (" + e.message() +
                          "); remove it first, or choose another --out");
  }
  return meta.model_config.is_object() && meta.model_config.contains("family") &&
         meta.model_config["family"] == "seq2seq";
}

}  // namespace attnscope::pipeline
