#include "models/transformer/stack.h"

#include "attnscope/error.h"

namespace attnscope::models::transformer {
namespace {

torch::nn::LayerNorm make_final_norm(const TransformerStackOptions& o) {
  return torch::nn::LayerNorm(
      torch::nn::LayerNormOptions({o.layer().d_model()}).eps(o.layer().layer_norm_eps()));
}

}  // namespace

TransformerEncoderImpl::TransformerEncoderImpl(const TransformerStackOptions& options_)
    : options(options_) {
  reset();
}

void TransformerEncoderImpl::reset() {
  check(options.num_layers() > 0, "TransformerEncoder", "num_layers must be > 0, got ",
        options.num_layers());
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.num_layers(); ++i)
    layers->push_back(TransformerEncoderLayer(options.layer()));
  norm = nullptr;
  if (options.final_norm()) norm = register_module("norm", make_final_norm(options));
}

EncoderOutput TransformerEncoderImpl::forward(const torch::Tensor& src, const AttentionMasks& masks,
                                              bool need_weights) {
  EncoderOutput out;
  auto x = src;
  for (const auto& module : *layers) {
    auto layer = module->as<TransformerEncoderLayerImpl>()->forward(x, masks, need_weights);
    x = layer.output;
    if (need_weights) out.self_weights.push_back(layer.self_weights);
  }
  out.output = norm ? norm->forward(x) : x;
  return out;
}

TransformerDecoderImpl::TransformerDecoderImpl(const TransformerStackOptions& options_)
    : options(options_) {
  reset();
}

void TransformerDecoderImpl::reset() {
  check(options.num_layers() > 0, "TransformerDecoder", "num_layers must be > 0, got ",
        options.num_layers());
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.num_layers(); ++i)
    layers->push_back(TransformerDecoderLayer(options.layer()));
  norm = nullptr;
  if (options.final_norm()) norm = register_module("norm", make_final_norm(options));
}

DecoderCache TransformerDecoderImpl::make_cache() const {
  DecoderCache cache;
  cache.layers.resize(static_cast<size_t>(options.num_layers()));
  return cache;
}

DecoderOutput TransformerDecoderImpl::forward(const torch::Tensor& tgt, const torch::Tensor& memory,
                                              const AttentionMasks& tgt_masks,
                                              const AttentionMasks& memory_masks, bool need_weights,
                                              DecoderCache* cache) {
  check(cache == nullptr || cache->layers.size() == layers->size(), "TransformerDecoder",
        "cache has ", cache ? cache->layers.size() : 0, " layers, the decoder ", layers->size(),
        " (use make_cache())");
  DecoderOutput out;
  auto x = tgt;
  for (size_t i = 0; i < layers->size(); ++i) {
    auto layer = layers->ptr<TransformerDecoderLayerImpl>(i)->forward(
        x, memory, tgt_masks, memory_masks, need_weights, cache ? &cache->layers[i] : nullptr);
    x = layer.output;
    if (need_weights) {
      out.self_weights.push_back(layer.self_weights);
      out.cross_weights.push_back(layer.cross_weights);
    }
  }
  out.output = norm ? norm->forward(x) : x;
  return out;
}

}  // namespace attnscope::models::transformer
