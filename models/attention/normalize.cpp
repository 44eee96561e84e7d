#include "models/attention/normalize.h"

#include <limits>
#include <vector>

#include "attnscope/error.h"

namespace attnscope::models::attention {
namespace {

// The most negative finite value of the scores' dtype: masked scores take it so that softmax
// gives them exactly 0 while a fully masked row stays finite (uniform, zeroed afterwards).
torch::Scalar lowest_of(const torch::Tensor& t) {
  torch::Scalar lowest;
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, t.scalar_type(), "lowest_of",
                                  [&] { lowest = std::numeric_limits<scalar_t>::lowest(); });
  return lowest;
}

void check_mask(const torch::Tensor& mask, const char* who) {
  check(mask.scalar_type() == torch::kBool, who, "mask must be bool (true = masked), got ",
        mask.scalar_type());
}

}  // namespace

torch::Tensor softmax_normalize(const torch::Tensor& scores, const torch::Tensor& mask) {
  if (!mask.defined()) return torch::softmax(scores, -1);
  check_mask(mask, "softmax_normalize");
  auto weights = torch::softmax(scores.masked_fill(mask, lowest_of(scores)), -1);
  return weights.masked_fill(mask, 0);
}

torch::Tensor sigmoid_normalize(const torch::Tensor& scores, const torch::Tensor& mask) {
  auto weights = torch::sigmoid(scores);
  if (!mask.defined()) return weights;
  check_mask(mask, "sigmoid_normalize");
  return weights.masked_fill(mask, 0);
}

torch::Tensor crf_marginals(const torch::Tensor& scores, const torch::Tensor& transitions,
                            const torch::Tensor& mask) {
  check(scores.dim() >= 1, "crf_marginals", "scores must be (..., K), got ", scores.sizes());
  check(transitions.sizes() == torch::IntArrayRef({2, 2}), "crf_marginals",
        "transitions must be (2, 2), got ", transitions.sizes());
  const int64_t K = scores.size(-1);
  if (K == 0 || scores.numel() == 0) return torch::zeros_like(scores);
  auto u = scores.reshape({-1, K});  // (N, K): N = all leading dims
  const int64_t N = u.size(0);
  auto T = transitions.to(scores.dtype()).unsqueeze(0);  // (1, 2 prev, 2 next)
  torch::Tensor m;                                       // (N, K) bool or undefined
  if (mask.defined()) {
    check_mask(mask, "crf_marginals");
    m = mask.expand(scores.sizes()).reshape({N, K});
  }
  auto zero = torch::zeros({N, 1}, u.options());
  // emit(k): (N, 2) log-potentials of states 0 and 1 at key k.
  auto emit = [&](int64_t k) { return torch::cat({zero, u.narrow(1, k, 1)}, 1); };

  // Forward: alpha_k(s) = log Σ over prefixes ending in state s at k (k's unary included).
  // Masked keys are skipped: alpha carries over, and the chain links the unmasked neighbours.
  std::vector<torch::Tensor> alphas(K);
  auto alpha = torch::zeros({N, 2}, u.options());
  torch::Tensor started = m.defined() ? torch::zeros({N, 1}, m.options()) : torch::Tensor();
  for (int64_t k = 0; k < K; ++k) {
    if (k == 0 && !m.defined()) {
      alpha = emit(0);
    } else {
      auto through = torch::logsumexp(alpha.unsqueeze(2) + T, 1);  // (N, 2): Σ over prev
      if (m.defined()) {
        auto mk = m.narrow(1, k, 1);  // (N, 1)
        auto next = emit(k) + torch::where(started, through, torch::zeros_like(through));
        alpha = torch::where(mk, alpha, next);
        started = started.logical_or(mk.logical_not());
      } else {
        alpha = emit(k) + through;
      }
    }
    alphas[k] = alpha;
  }
  auto log_z = torch::logsumexp(alpha, 1, /*keepdim=*/true);  // (N, 1)

  // Backward: beta_k(s) = log Σ over suffixes after k given state s at k (k's unary excluded).
  std::vector<torch::Tensor> betas(K);
  auto beta = torch::zeros({N, 2}, u.options());
  for (int64_t k = K - 1; k >= 0; --k) {
    betas[k] = beta;
    if (k == 0) break;
    // (N, 2 prev): Σ over the state at k of T[prev][s] + emit_k(s) + beta_k(s)
    auto back = torch::logsumexp(T + (emit(k) + beta).unsqueeze(1), 2);
    beta = m.defined() ? torch::where(m.narrow(1, k, 1), beta, back) : back;
  }
  auto alpha1 = torch::stack(alphas, 1).select(2, 1);  // (N, K)
  auto beta1 = torch::stack(betas, 1).select(2, 1);    // (N, K)
  auto marginals = torch::exp(alpha1 + beta1 - log_z);
  if (m.defined()) marginals = marginals.masked_fill(m, 0);
  return marginals.view(scores.sizes());
}

torch::Tensor lambda_normalize(const torch::Tensor& marginals, double lambda) {
  auto total = marginals.sum(-1, /*keepdim=*/true);
  // An all-zero row (fully masked) has total 0: dividing by 1 there keeps it 0.
  auto safe = torch::where(total > 0, total, torch::ones_like(total));
  return marginals * (lambda / safe);
}

NormKind norm_kind_from_string(const std::string& name) {
  if (name == "softmax") return NormKind::softmax;
  if (name == "sigmoid") return NormKind::sigmoid;
  if (name == "crf") return NormKind::crf;
  throw Error("normaliser '" + name + "'", "unknown; expected softmax, sigmoid or crf");
}

std::string to_string(NormKind kind) {
  switch (kind) {
    case NormKind::softmax:
      return "softmax";
    case NormKind::sigmoid:
      return "sigmoid";
    case NormKind::crf:
      return "crf";
  }
  return "unknown";
}

CrfNormalizerImpl::CrfNormalizerImpl(const CrfNormalizerOptions& options_) : options(options_) {
  reset();
}

void CrfNormalizerImpl::reset() {
  check(options.lambda() > 0, "CrfNormalizer", "lambda must be > 0, got ", options.lambda());
  transitions = register_parameter("transitions", torch::zeros({2, 2}));
}

torch::Tensor CrfNormalizerImpl::forward(const torch::Tensor& scores, const torch::Tensor& mask) {
  auto marginals = crf_marginals(scores, transitions, mask);
  return options.normalize() ? lambda_normalize(marginals, options.lambda()) : marginals;
}

NormalizerImpl::NormalizerImpl(const NormalizerOptions& options_) : options(options_) {
  reset();
}

void NormalizerImpl::reset() {
  crf = nullptr;
  if (options.kind() == NormKind::crf) crf = register_module("crf", CrfNormalizer(options.crf()));
}

torch::Tensor NormalizerImpl::forward(const torch::Tensor& scores, const torch::Tensor& mask) {
  switch (options.kind()) {
    case NormKind::softmax:
      return softmax_normalize(scores, mask);
    case NormKind::sigmoid:
      return sigmoid_normalize(scores, mask);
    case NormKind::crf:
      return crf->forward(scores, mask);
  }
  throw Error("Normalizer", "unknown kind");
}

}  // namespace attnscope::models::attention
