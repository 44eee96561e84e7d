#include "models/vision/spatial_attention.h"

#include <cmath>

#include "attnscope/error.h"

namespace attnscope::models::vision {
namespace nn = torch::nn;

Compatibility compatibility_from_string(const std::string& name) {
  if (name == "dp") return Compatibility::dp;
  if (name == "pc") return Compatibility::pc;
  if (name == "additive") return Compatibility::additive;
  throw Error("compatibility", concat("unknown '", name, "' (expected dp, pc or additive)"));
}

std::string to_string(Compatibility kind) {
  switch (kind) {
    case Compatibility::dp:
      return "dp";
    case Compatibility::pc:
      return "pc";
    case Compatibility::additive:
      return "additive";
  }
  return "?";
}

SpatialAttentionImpl::SpatialAttentionImpl(const SpatialAttentionOptions& options_)
    : options(options_) {
  reset();
}

int64_t SpatialAttentionImpl::out_channels() const {
  return options.compatibility() == Compatibility::additive ? options.local_channels()
                                                            : options.global_channels();
}

void SpatialAttentionImpl::reset() {
  const int64_t C = options.local_channels(), Cg = options.global_channels();
  check(C > 0 && Cg > 0 && options.hidden_dim() > 0, "SpatialAttention",
        "channels and hidden_dim must be positive");
  check(options.normalizer() != attention::NormKind::crf, "SpatialAttention",
        "the normaliser must be softmax or sigmoid (a CRF needs a chain, not a grid)");
  score = nullptr;
  projector = nullptr;
  u = torch::Tensor();
  if (options.compatibility() == Compatibility::additive) {
    // AttnMel's grid attention: 1×1 convs of l and g (per-position linear maps), ReLU, a 1×1
    // conv to one channel.
    score = register_module(
        "score",
        attention::AdditiveScore(attention::AdditiveScoreOptions(Cg, C, options.hidden_dim())
                                     .activation(attention::AdditiveActivation::relu)));
  } else {
    if (C != Cg)
      projector = register_module("projector", nn::Conv2d(nn::Conv2dOptions(C, Cg, 1).bias(false)));
    if (options.compatibility() == Compatibility::pc) {
      // LTPA's 1×1 conv to one channel, initialised like a conv of fan-in Cg.
      const double bound = 1.0 / std::sqrt(static_cast<double>(Cg));
      u = register_parameter("u", torch::empty({Cg}).uniform_(-bound, bound));
    }
  }
  normalizer = register_module("normalizer", attention::Normalizer(options.normalizer()));
}

SpatialAttentionOutput SpatialAttentionImpl::forward(const torch::Tensor& local,
                                                     const torch::Tensor& global) {
  check(local.dim() == 4 && local.size(1) == options.local_channels(), "SpatialAttention",
        "local features must be (B, ", options.local_channels(), ", h, w), got ", local.sizes());
  check(global.dim() == 2 && global.size(1) == options.global_channels(), "SpatialAttention",
        "the global feature must be (B, ", options.global_channels(), "), got ", global.sizes());
  const int64_t B = local.size(0), h = local.size(2), w = local.size(3);
  const auto query = global.unsqueeze(1);  // (B, 1, Cg)
  torch::Tensor values, scores;
  if (options.compatibility() == Compatibility::additive) {
    values = local.flatten(2).transpose(1, 2);  // (B, h·w, C)
    scores = score(query, values);              // (B, 1, h·w)
  } else {
    const auto projected = projector ? projector(local) : local;
    values = projected.flatten(2).transpose(1, 2);  // (B, h·w, Cg)
    if (options.compatibility() == Compatibility::dp) {
      scores = attention::dot_score(query, values);
    } else {
      const auto uq = u.view({1, 1, -1}).expand({B, 1, u.size(0)});  // (B, 1, Cg)
      scores = attention::dot_score(uq, values + query);
    }
  }
  const auto weights = normalizer(scores);                       // (B, 1, h·w)
  auto context = attention::attend(weights, values).squeeze(1);  // (B, C)
  // Sigmoid weights do not sum to one: average (AttnMel) instead of summing.
  if (options.normalizer() == attention::NormKind::sigmoid) context = context / (h * w);
  return {context, weights.view({B, h, w})};
}

}  // namespace attnscope::models::vision
