#include "pipeline/text/seq2seq_checkpoint.h"

#include "attnscope/error.h"
#include "pipeline/checkpoint.h"

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

models::text::Seq2SeqOptions seq2seq_options_from_json(const nlohmann::json& json,
                                                       const std::string& subject) {
  check(json.is_object(), subject, "model_config is not a JSON object");
  models::text::Seq2SeqOptions o;
  auto get = [&](const char* key, auto setter, auto value) {
    if (!json.contains(key)) return;
    try {
      setter(json.at(key).get<decltype(value)>());
    } catch (const nlohmann::json::exception&) {
      throw Error(subject, concat("model_config.", key, " has the wrong type"));
    }
  };
  get(
      "arch", [&](std::string v) { o.arch(v); }, std::string());
  get(
      "cell", [&](std::string v) { o.cell(v); }, std::string());
  get(
      "attention", [&](std::string v) { o.attention(v); }, std::string());
  get(
      "source_vocab", [&](int64_t v) { o.source_vocab(v); }, int64_t());
  get(
      "target_vocab", [&](int64_t v) { o.target_vocab(v); }, int64_t());
  get(
      "embedding_dim", [&](int64_t v) { o.embedding_dim(v); }, int64_t());
  get(
      "hidden_dim", [&](int64_t v) { o.hidden_dim(v); }, int64_t());
  get(
      "layers", [&](int64_t v) { o.layers(v); }, int64_t());
  get(
      "bidirectional", [&](bool v) { o.bidirectional(v); }, bool());
  get(
      "dropout", [&](double v) { o.dropout(v); }, double());
  get(
      "model_dim", [&](int64_t v) { o.model_dim(v); }, int64_t());
  get(
      "heads", [&](int64_t v) { o.heads(v); }, int64_t());
  get(
      "ff_dim", [&](int64_t v) { o.ff_dim(v); }, int64_t());
  get(
      "positions", [&](std::string v) { o.positions(v); }, std::string());
  get(
      "max_length", [&](int64_t v) { o.max_length(v); }, int64_t());
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

Seq2SeqBundle load_seq2seq(const std::string& path) {
  const auto meta = read_checkpoint_meta(path);
  check(meta.model_config.value("family", "") == "seq2seq", path,
        "not a seq2seq checkpoint (model_config.family is not \"seq2seq\")");
  check(meta.extra.contains("source_vocab") && meta.extra.contains("target_vocab") &&
            meta.extra.contains("tokenizer"),
        path, "checkpoint has no vocabularies/tokenizer in its extra attribute");
  Seq2SeqBundle bundle;
  bundle.name = meta.model_config.value("name", "");
  try {
    bundle.source_vocab = datasets::text::Vocabulary::from_json(meta.extra["source_vocab"]);
    bundle.target_vocab = datasets::text::Vocabulary::from_json(meta.extra["target_vocab"]);
    bundle.tokenizer =
        datasets::text::tokenizer_from_string(meta.extra["tokenizer"].get<std::string>());
  } catch (const Error& e) {
    throw Error(path, e.what());
  }
  auto options = seq2seq_options_from_json(meta.model_config, path);
  check(options.source_vocab() == bundle.source_vocab.size() &&
            options.target_vocab() == bundle.target_vocab.size(),
        path, "vocabulary sizes in model_config do not match the stored vocabularies");
  bundle.model = models::text::make_seq2seq(options);
  load_checkpoint(path, *bundle.model);
  bundle.model->eval();
  return bundle;
}

}  // namespace attnscope::pipeline
