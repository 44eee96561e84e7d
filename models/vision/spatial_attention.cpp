#include "models/vision/spatial_attention.h"

#include <cmath>

#include "attnscope/error.h"

namespace attnscope::models::vision {
namespace nn = torch::nn;
namespace F = torch::nn::functional;

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

Gating gating_from_string(const std::string& name) {
  if (name == "global") return Gating::global;
  if (name == "grid") return Gating::grid;
  throw Error("gating", concat("unknown '", name, "' (expected global or grid)"));
}

std::string to_string(Gating kind) {
  return kind == Gating::grid ? "grid" : "global";
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
  const int64_t C = options.local_channels(), Cg = options.global_channels(),
                A = options.hidden_dim();
  check(C > 0 && Cg > 0 && A > 0, "SpatialAttention", "channels and hidden_dim must be positive");
  check(options.normalizer() != attention::NormKind::crf, "SpatialAttention",
        "the normaliser must be softmax or sigmoid (a CRF needs a chain, not a grid)");
  check(options.gating() == Gating::global || options.compatibility() == Compatibility::additive,
        "SpatialAttention",
        "grid gating is an additive score (AttnMel's attention gate); got "
        "compatibility ",
        to_string(options.compatibility()));
  score = nullptr;
  projector = nullptr;
  u = torch::Tensor();
  W_l = W_g = phi = nullptr;
  if (options.gating() == Gating::grid) {
    // AttnMel's AttentionBlock: 1×1 convs of l and G without bias, φ a 1×1 conv to one channel
    // with bias (the bias moves sigmoid weights).
    W_l = register_module("W_l", nn::Conv2d(nn::Conv2dOptions(C, A, 1).bias(false)));
    W_g = register_module("W_g", nn::Conv2d(nn::Conv2dOptions(Cg, A, 1).bias(false)));
    phi = register_module("phi", nn::Conv2d(nn::Conv2dOptions(A, 1, 1).bias(true)));
    reset_parameters();
  } else if (options.compatibility() == Compatibility::additive) {
    // 1×1 convs of l and g (per-position linear maps), ReLU, a 1×1 conv to one channel.
    score = register_module(
        "score", attention::AdditiveScore(attention::AdditiveScoreOptions(Cg, C, A).activation(
                     attention::AdditiveActivation::relu)));
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

void SpatialAttentionImpl::reset_parameters() {
  if (options.gating() != Gating::grid) return;
  torch::NoGradGuard no_grad;
  for (auto* conv : {W_l.get(), W_g.get(), phi.get()}) {
    nn::init::kaiming_normal_(conv->weight, 0.0, torch::kFanIn, torch::kReLU);
    if (conv->bias.defined()) conv->bias.zero_();
  }
}

torch::Tensor SpatialAttentionImpl::grid_scores(const torch::Tensor& local,
                                                const torch::Tensor& gate) {
  const int64_t h = local.size(2), w = local.size(3);
  const auto keys = W_l(local);  // (B, A, h, w)
  auto queries = W_g(gate);      // (B, A, h_g, w_g)
  // Project, then up-sample (AttnMel's order; both are linear, so the order does not change the
  // map, but A channels at h_g × w_g are cheaper). To l's grid: at image sizes that are
  // multiples of 32 this is AttnMel's scale factor 4 (pool-3) / 2 (pool-4) exactly.
  if (queries.size(2) != h || queries.size(3) != w)
    queries = F::interpolate(queries, F::InterpolateFuncOptions()
                                          .size(std::vector<int64_t>{h, w})
                                          .mode(torch::kBilinear)
                                          .align_corners(false));  // (B, A, h, w)
  // (B, A, h, w) -> (B, h·w, A): one query per key position.
  return attention::aligned_additive_score(
      queries.flatten(2).transpose(1, 2), keys.flatten(2).transpose(1, 2), phi->weight.view({-1}),
      phi->bias, attention::AdditiveActivation::relu);  // (B, 1, h·w)
}

SpatialAttentionOutput SpatialAttentionImpl::forward(const torch::Tensor& local,
                                                     const torch::Tensor& gate) {
  check(local.dim() == 4 && local.size(1) == options.local_channels(), "SpatialAttention",
        "local features must be (B, ", options.local_channels(), ", h, w), got ", local.sizes());
  const int64_t B = local.size(0), h = local.size(2), w = local.size(3);
  torch::Tensor values, scores;
  if (options.gating() == Gating::grid) {
    check(gate.dim() == 4 && gate.size(0) == B && gate.size(1) == options.global_channels(),
          "SpatialAttention", "grid gating needs a gating map (", B, ", ",
          options.global_channels(), ", h_g, w_g), got ", gate.sizes());
    values = local.flatten(2).transpose(1, 2);  // (B, h·w, C)
    scores = grid_scores(local, gate);          // (B, 1, h·w)
  } else {
    check(gate.dim() == 2 && gate.size(0) == B && gate.size(1) == options.global_channels(),
          "SpatialAttention", "the global feature must be (", B, ", ", options.global_channels(),
          "), got ", gate.sizes());
    const auto query = gate.unsqueeze(1);  // (B, 1, Cg)
    if (options.compatibility() == Compatibility::additive) {
      values = local.flatten(2).transpose(1, 2);  // (B, h·w, C)
      if (local.is_cpu()) {
        // score's key projection as the 1×1 convolution it is on the feature map (AttnMel's
        // W_l): the same product as its Linear, but run by oneDNN's convolution kernels,
        // which LibTorch picks for channels-last maps and which outrun the BLAS product a
        // Linear calls on CPU (about 1.8× on the AVX-512 machine of docs/performance.md).
        // Not on CUDA, where cuDNN's convolutions default to TF32 and cuBLAS's products not.
        const auto& kp = score->key_proj;
        const auto keys = F::conv2d(local, kp->weight.reshape({kp->weight.size(0), -1, 1, 1}),
                                    F::Conv2dFuncOptions().bias(kp->bias));  // (B, A, h, w)
        scores = score->forward_projected(query, keys.flatten(2).transpose(1, 2));
      } else {
        scores = score(query, values);  // (B, 1, h·w)
      }
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
  }
  const auto weights = normalizer(scores);                       // (B, 1, h·w)
  auto context = attention::attend(weights, values).squeeze(1);  // (B, C)
  // Sigmoid weights do not sum to one: average (AttnMel) instead of summing.
  if (options.normalizer() == attention::NormKind::sigmoid) context = context / (h * w);
  return {context, weights.view({B, h, w})};
}

}  // namespace attnscope::models::vision
