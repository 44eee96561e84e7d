#include "models/text/seq2seq.h"

#include <algorithm>

#include "attnscope/error.h"
#include "models/text/rnn_seq2seq.h"
#include "models/text/transformer_seq2seq.h"

namespace attnscope::models::text {

const std::vector<std::string>& seq2seq_model_names() {
  static const std::vector<std::string> kNames = {
      "gru",           "gru-additive", "gru-dot",      "gru-general", "gru-crf",    "lstm",
      "lstm-additive", "lstm-dot",     "lstm-general", "lstm-crf",    "transformer"};
  return kNames;
}

Seq2SeqOptions seq2seq_preset(const std::string& name) {
  const auto& names = seq2seq_model_names();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    std::string list;
    for (const auto& n : names)
      list += (list.empty() ? "" : ", ") + n;
    throw Error("model", concat("unknown model '", name, "' (expected one of ", list, ")"));
  }
  Seq2SeqOptions options;
  if (name == "transformer") return options.arch("transformer").layers(2).dropout(0.1);
  const auto dash = name.find('-');
  options.arch("rnn").cell(name.substr(0, dash));
  options.attention(dash == std::string::npos ? "none" : name.substr(dash + 1));
  return options;
}

void DecoderState::reorder(const torch::Tensor& index) {
  for (auto& [name, tensor] : tensors)
    if (tensor.defined()) tensor = tensor.index_select(0, index);
  cache.reorder(index);
}

const torch::Tensor& DecoderState::at(const std::string& name) const {
  const auto it = tensors.find(name);
  check(it != tensors.end(), "decoder state", concat("no tensor '", name, "'"));
  return it->second;
}

std::shared_ptr<Seq2SeqModel> make_seq2seq(const Seq2SeqOptions& options) {
  check(options.source_vocab() > 4 && options.target_vocab() > 4, "seq2seq",
        concat("vocabulary sizes must exceed the 4 special tokens, got ", options.source_vocab(),
               " and ", options.target_vocab()));
  check(options.max_length() >= 1, "seq2seq", "max_length must be >= 1");
  if (options.arch() == "rnn") return std::make_shared<RnnSeq2SeqImpl>(options);
  if (options.arch() == "transformer") return std::make_shared<TransformerSeq2SeqImpl>(options);
  throw Error("seq2seq",
              concat("unknown arch '", options.arch(), "' (expected rnn or transformer)"));
}

}  // namespace attnscope::models::text
