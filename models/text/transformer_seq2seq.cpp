#include "models/text/transformer_seq2seq.h"

#include <cmath>

#include "attnscope/error.h"
#include "models/attention/mask.h"

namespace attnscope::models::text {

TransformerSeq2SeqImpl::TransformerSeq2SeqImpl(const Seq2SeqOptions& options_)
    : options_(options_) {
  reset();
}

void TransformerSeq2SeqImpl::reset() {
  const auto& o = options_;
  check(o.positions() == "sinusoidal" || o.positions() == "learned", "TransformerSeq2Seq",
        concat("positions must be sinusoidal or learned, got '", o.positions(), "'"));
  const int64_t d = o.model_dim();
  source_embedding = register_module("source_embedding", torch::nn::Embedding(o.source_vocab(), d));
  target_embedding = register_module("target_embedding", torch::nn::Embedding(o.target_vocab(), d));
  // Embeddings start at N(0, 1/d) so that, scaled by sqrt(d), they are as large as the
  // positional encodings instead of drowning them.
  {
    torch::NoGradGuard no_grad;
    const double std = 1.0 / std::sqrt(static_cast<double>(d));
    source_embedding->weight.normal_(0.0, std);
    target_embedding->weight.normal_(0.0, std);
  }
  // Positions: the source is at most max_length tokens, the decoder input <bos> + max_length.
  const auto po =
      transformer::PositionalEncodingOptions(d, o.max_length() + 1).dropout(o.dropout());
  auto make_positions = [&]() {
    return o.positions() == "sinusoidal"
               ? torch::nn::AnyModule(transformer::SinusoidalPositionalEncoding(po))
               : torch::nn::AnyModule(transformer::LearnedPositionEmbedding(po));
  };
  source_positions = make_positions();
  target_positions = make_positions();
  register_module("source_positions", source_positions.ptr());
  register_module("target_positions", target_positions.ptr());
  const auto layer = transformer::TransformerLayerOptions(d, o.heads())
                         .dim_feedforward(o.ff_dim())
                         .dropout(o.dropout())
                         .norm_first(true);
  encoder = register_module(
      "encoder",
      transformer::TransformerEncoder(transformer::TransformerStackOptions(layer, o.layers())));
  decoder = register_module(
      "decoder",
      transformer::TransformerDecoder(transformer::TransformerStackOptions(layer, o.layers())));
  generator = register_module("generator", torch::nn::Linear(d, o.target_vocab()));
}

torch::Tensor TransformerSeq2SeqImpl::embed(torch::nn::Embedding& embedding,
                                            torch::nn::AnyModule& positions,
                                            const torch::Tensor& tokens, int64_t offset) {
  const double scale = std::sqrt(static_cast<double>(options_.model_dim()));
  return positions.forward<torch::Tensor>(embedding(tokens) * scale, offset);  // (B, L, E)
}

std::pair<torch::Tensor, torch::Tensor> TransformerSeq2SeqImpl::encode(
    const torch::Tensor& source, const torch::Tensor& source_lengths) {
  check(source.dim() == 2 && source_lengths.dim() == 1 && source_lengths.size(0) == source.size(0),
        "TransformerSeq2Seq", "expected source (B, S) and lengths (B), got ", source.sizes(),
        " and ", source_lengths.sizes());
  check(source.size(1) <= options_.max_length(), "TransformerSeq2Seq",
        concat("source has ", source.size(1), " tokens, the model accepts at most ",
               options_.max_length()));
  const auto padding = attention::padding_mask(source_lengths, source.size(1));  // (B, S)
  attention::AttentionMasks masks;
  masks.key_padding = padding;
  auto memory = encoder(embed(source_embedding, source_positions, source, 0), masks).output;
  return {memory, padding};
}

Seq2SeqOutput TransformerSeq2SeqImpl::forward(const torch::Tensor& source,
                                              const torch::Tensor& source_lengths,
                                              const torch::Tensor& target_in) {
  check(target_in.size(1) <= options_.max_length() + 1, "TransformerSeq2Seq",
        concat("target has ", target_in.size(1) - 1, " tokens, the model accepts at most ",
               options_.max_length()));
  auto [memory, padding] = encode(source, source_lengths);
  attention::AttentionMasks tgt_masks, memory_masks;
  tgt_masks.causal = true;
  memory_masks.key_padding = padding;
  auto out = decoder(embed(target_embedding, target_positions, target_in, 0), memory, tgt_masks,
                     memory_masks, /*need_weights=*/true);
  // (B, H, T, S) -> (B, T, S)
  return {generator(out.output), out.cross_weights.back().mean(1)};
}

DecoderState TransformerSeq2SeqImpl::start(const torch::Tensor& source,
                                           const torch::Tensor& source_lengths) {
  auto [memory, padding] = encode(source, source_lengths);
  DecoderState state;
  state.tensors["memory"] = memory;    // (B, S, E)
  state.tensors["padding"] = padding;  // (B, S)
  state.cache = decoder->make_cache();
  return state;
}

StepOutput TransformerSeq2SeqImpl::step(DecoderState& state, const torch::Tensor& previous) {
  const int64_t offset = state.cache.length();
  check(offset <= options_.max_length(), "TransformerSeq2Seq",
        concat("cannot decode more than ", options_.max_length(), " tokens"));
  attention::AttentionMasks memory_masks;
  memory_masks.key_padding = state.at("padding");
  auto x = embed(target_embedding, target_positions, previous.unsqueeze(1), offset);  // (B, 1, E)
  auto out = decoder->forward(x, state.at("memory"), {}, memory_masks, /*need_weights=*/true,
                              &state.cache);
  // (B, 1, E) -> (B, V); (B, H, 1, S) -> (B, S)
  return {generator(out.output.squeeze(1)), out.cross_weights.back().mean(1).squeeze(1)};
}

}  // namespace attnscope::models::text
