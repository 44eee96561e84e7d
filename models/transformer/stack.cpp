#include "models/transformer/stack.h"

#include "attnscope/error.h"

namespace attnscope::models::transformer {
namespace {

// Registers `layers` (num_layers copies of Layer) and, when final_norm, `norm` on `stack`.
template <typename Layer>
void build_stack(torch::nn::Module& stack, const TransformerStackOptions& o, const char* who,
                 torch::nn::ModuleList& layers, torch::nn::LayerNorm& norm) {
  check(o.num_layers() > 0, who, "num_layers must be > 0, got ", o.num_layers());
  layers = stack.register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < o.num_layers(); ++i)
    layers->push_back(Layer(o.layer()));
  norm = nullptr;
  if (o.final_norm())
    norm = stack.register_module(
        "norm",
        torch::nn::LayerNorm(
            torch::nn::LayerNormOptions({o.layer().d_model()}).eps(o.layer().layer_norm_eps())));
}

}  // namespace

TransformerEncoderImpl::TransformerEncoderImpl(const TransformerStackOptions& options_)
    : options(options_) {
  reset();
}

void TransformerEncoderImpl::reset() {
  build_stack<TransformerEncoderLayer>(*this, options, "TransformerEncoder", layers, norm);
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
  build_stack<TransformerDecoderLayer>(*this, options, "TransformerDecoder", layers, norm);
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
