#include "models/text/rnn_seq2seq.h"

#include "attnscope/error.h"
#include "models/attention/mask.h"

namespace attnscope::models::text {

namespace rnn_utils = torch::nn::utils::rnn;

RnnEncoderImpl::RnnEncoderImpl(const Seq2SeqOptions& options_) : options(options_) {
  reset();
}

int64_t RnnEncoderImpl::output_dim() const {
  return options.hidden_dim() * (options.bidirectional() ? 2 : 1);
}

void RnnEncoderImpl::reset() {
  check(options.cell() == "gru" || options.cell() == "lstm", "RnnEncoder",
        concat("cell must be gru or lstm, got '", options.cell(), "'"));
  embedding = register_module("embedding", torch::nn::Embedding(torch::nn::EmbeddingOptions(
                                               options.source_vocab(), options.embedding_dim())));
  const double between_layers = options.layers() > 1 ? options.dropout() : 0.0;
  if (options.cell() == "gru") {
    gru = register_module(
        "gru", torch::nn::GRU(torch::nn::GRUOptions(options.embedding_dim(), options.hidden_dim())
                                  .num_layers(options.layers())
                                  .bidirectional(options.bidirectional())
                                  .dropout(between_layers)
                                  .batch_first(true)));
  } else {
    lstm = register_module("lstm", torch::nn::LSTM(torch::nn::LSTMOptions(options.embedding_dim(),
                                                                          options.hidden_dim())
                                                       .num_layers(options.layers())
                                                       .bidirectional(options.bidirectional())
                                                       .dropout(between_layers)
                                                       .batch_first(true)));
  }
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout()));
}

EncoderOutput RnnEncoderImpl::forward(const torch::Tensor& source, const torch::Tensor& lengths) {
  check(source.dim() == 2 && lengths.dim() == 1 && lengths.size(0) == source.size(0), "RnnEncoder",
        "expected source (B, S) and lengths (B), got ", source.sizes(), " and ", lengths.sizes());
  check(source.size(1) > 0 && lengths.min().item<int64_t>() >= 1, "RnnEncoder",
        "every source needs at least one token");
  const auto embedded = dropout(embedding(source));  // (B, S, E)
  const auto packed = rnn_utils::pack_padded_sequence(embedded, lengths.cpu(), /*batch_first=*/true,
                                                      /*enforce_sorted=*/false);
  torch::Tensor h;  // (layers * directions, B, H)
  auto run = [&]() -> rnn_utils::PackedSequence {
    if (gru) {
      auto [out, hn] = gru->forward_with_packed_input(packed);
      h = hn;
      return out;
    }
    auto [out, hc] = lstm->forward_with_packed_input(packed);
    h = std::get<0>(hc);
    return out;
  };
  const auto packed_out = run();
  auto outputs = std::get<0>(rnn_utils::pad_packed_sequence(packed_out, /*batch_first=*/true, 0.0,
                                                            source.size(1)));  // (B, S, D)
  const int64_t directions = options.bidirectional() ? 2 : 1;
  const int64_t batch = source.size(0);
  // (layers, directions, B, H) -> last layer (directions, B, H) -> (B, directions * H)
  auto final = h.view({options.layers(), directions, batch, options.hidden_dim()})[-1]
                   .permute({1, 0, 2})
                   .reshape({batch, directions * options.hidden_dim()});
  return {dropout(outputs), final};
}

RnnSeq2SeqImpl::RnnSeq2SeqImpl(const Seq2SeqOptions& options_) : options_(options_) {
  reset();
}

void RnnSeq2SeqImpl::reset() {
  const auto& o = options_;
  const std::string& kind = o.attention();
  check(kind == "none" || kind == "additive" || kind == "dot" || kind == "general" || kind == "crf",
        "RnnSeq2Seq",
        concat("attention must be none, additive, dot, general or crf, got '", kind, "'"));
  encoder = register_module("encoder", RnnEncoder(o));
  const int64_t d = encoder->output_dim();
  embedding = register_module("embedding", torch::nn::Embedding(torch::nn::EmbeddingOptions(
                                               o.target_vocab(), o.embedding_dim())));
  bridge = register_module("bridge", torch::nn::Linear(d, d * o.layers()));
  const int64_t input_dim = o.embedding_dim() + d;
  const double between_layers = o.layers() > 1 ? o.dropout() : 0.0;
  if (o.cell() == "gru") {
    gru = register_module("gru", torch::nn::GRU(torch::nn::GRUOptions(input_dim, d)
                                                    .num_layers(o.layers())
                                                    .dropout(between_layers)
                                                    .batch_first(true)));
  } else {
    lstm = register_module("lstm", torch::nn::LSTM(torch::nn::LSTMOptions(input_dim, d)
                                                       .num_layers(o.layers())
                                                       .dropout(between_layers)
                                                       .batch_first(true)));
  }
  if (kind != "none") {
    attention::AttentionOptions ao(d, d);
    ao.hidden_dim(d);
    if (kind == "crf") {
      // Kim et al. 2017: bilinear unary potentials, CRF marginals λ-normalised to sum to 1.
      ao.score(attention::ScoreKind::general)
          .normalizer(attention::NormKind::crf)
          .crf(attention::CrfNormalizerOptions().normalize(true));
    } else {
      ao.score(attention::score_kind_from_string(kind)).normalizer(attention::NormKind::softmax);
    }
    attention = register_module("attention", attention::Attention(ao));
  }
  pre_output = register_module("pre_output", torch::nn::Linear(d + d + o.embedding_dim(), d));
  generator = register_module("generator", torch::nn::Linear(d, o.target_vocab()));
  dropout = register_module("dropout", torch::nn::Dropout(o.dropout()));
}

DecoderState RnnSeq2SeqImpl::start(const torch::Tensor& source,
                                   const torch::Tensor& source_lengths) {
  const auto enc = encoder(source, source_lengths);
  const int64_t batch = source.size(0);
  const int64_t d = encoder->output_dim();
  DecoderState state;
  if (attention) {
    state.tensors["memory"] = enc.outputs;                                // (B, S, D)
    state.tensors["keys"] = attention->score->project_keys(enc.outputs);  // (B, S, A)
    state.tensors["mask"] =
        attention::padding_mask(source_lengths, source.size(1)).unsqueeze(1);  // (B, 1, S)
  } else {
    state.tensors["context"] = enc.final;  // (B, D): the fixed-length context vector
  }
  // (B, layers * D) -> (B, layers, D)
  state.tensors["h"] = torch::tanh(bridge(enc.final)).view({batch, options_.layers(), d});
  if (lstm) state.tensors["c"] = torch::zeros_like(state.tensors["h"]);
  return state;
}

StepOutput RnnSeq2SeqImpl::step(DecoderState& state, const torch::Tensor& previous) {
  const auto embedded = dropout(embedding(previous)).unsqueeze(1);  // (B, 1, E)
  const auto& h = state.at("h");                                    // (B, layers, D)
  torch::Tensor context, weights;
  if (attention) {
    const auto query = h.select(1, h.size(1) - 1).unsqueeze(1);  // (B, 1, D): s_{t-1}
    auto out =
        attention->forward_projected(query, state.at("keys"), state.at("memory"), state.at("mask"));
    context = out.context;             // (B, 1, D)
    weights = out.weights.squeeze(1);  // (B, S)
  } else {
    context = state.at("context").unsqueeze(1);  // (B, 1, D)
  }
  const auto input = torch::cat({embedded, context}, -1);  // (B, 1, E + D)
  const auto hx = h.transpose(0, 1).contiguous();          // (layers, B, D)
  torch::Tensor output, hn;
  if (gru) {
    std::tie(output, hn) = gru(input, hx);
  } else {
    std::tuple<torch::Tensor, torch::Tensor> hc;
    std::tie(output, hc) =
        lstm(input, std::make_tuple(hx, state.at("c").transpose(0, 1).contiguous()));
    hn = std::get<0>(hc);
    state.tensors["c"] = std::get<1>(hc).transpose(0, 1);
  }
  state.tensors["h"] = hn.transpose(0, 1);  // (B, layers, D)
  const auto pre = torch::tanh(pre_output(torch::cat({output, context, embedded}, -1)));
  return {generator(dropout(pre)).squeeze(1), weights};  // (B, V)
}

Seq2SeqOutput RnnSeq2SeqImpl::forward(const torch::Tensor& source,
                                      const torch::Tensor& source_lengths,
                                      const torch::Tensor& target_in) {
  auto state = start(source, source_lengths);
  std::vector<torch::Tensor> logits, weights;
  for (int64_t t = 0; t < target_in.size(1); ++t) {
    auto out = step(state, target_in.select(1, t));
    logits.push_back(out.logits);
    if (out.attention.defined()) weights.push_back(out.attention);
  }
  Seq2SeqOutput result;
  result.logits = torch::stack(logits, 1);                            // (B, T, V)
  if (!weights.empty()) result.attention = torch::stack(weights, 1);  // (B, T, S)
  return result;
}

}  // namespace attnscope::models::text
