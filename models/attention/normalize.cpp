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

namespace {

// The in-place masked softmax itself, with no autograd check.
void softmax_in_place(torch::Tensor& scores, const torch::Tensor& mask) {
  if (mask.defined()) scores.masked_fill_(mask, lowest_of(scores));
  // The softmax kernel reads each element before writing it, so output = input is safe.
  at::_softmax_out(scores, scores, -1, /*half_to_float=*/false);
  if (mask.defined()) scores.masked_fill_(mask, 0);
}

}  // namespace

torch::Tensor& softmax_normalize_(torch::Tensor& scores, const torch::Tensor& mask) {
  check(!scores.requires_grad(), "softmax_normalize_",
        "scores require grad: the in-place softmax is for inference; use softmax_normalize");
  if (mask.defined()) check_mask(mask, "softmax_normalize_");
  softmax_in_place(scores, mask);
  return scores;
}

namespace {

// In-place masked softmax with its own backward: dx = y * (dy - sum(dy * y)) from the output y.
struct InPlaceSoftmax : torch::autograd::Function<InPlaceSoftmax> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor scores,
                               const torch::Tensor& mask) {
    ctx->mark_dirty({scores});
    softmax_in_place(scores, mask.numel() > 0 ? mask : torch::Tensor());
    ctx->save_for_backward({scores});
    return scores;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto y = ctx->get_saved_variables()[0];
    auto dx = at::_softmax_backward_data(grads[0], y, -1, y.scalar_type());
    return {dx, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor softmax_normalize_owned(torch::Tensor scores, const torch::Tensor& mask) {
  if (mask.defined()) check_mask(mask, "softmax_normalize_owned");
  if (!torch::GradMode::is_enabled() || !scores.requires_grad()) {
    softmax_in_place(scores, mask);
    return scores;
  }
  // Function::apply needs defined tensors: an empty one stands for "no mask".
  return InPlaceSoftmax::apply(scores, mask.defined() ? mask : torch::empty({0}, torch::kBool));
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
  const auto u = scores.reshape({-1, K}).unbind(1);  // K x (N): unary of state 1 per key
  const int64_t N = u[0].size(0);
  const auto t = transitions.to(scores.dtype());
  // t_ab: log-potential of state a at the previous (unmasked) key and b at this one.
  const auto t00 = t[0][0], t01 = t[0][1], t10 = t[1][0], t11 = t[1][1];
  std::vector<torch::Tensor> m;  // K x (N) bool, empty when there is no mask
  if (mask.defined()) {
    check_mask(mask, "crf_marginals");
    m = mask.expand(scores.sizes()).reshape({N, K}).unbind(1);
  }
  // Keeps `previous` where key k is masked: masked keys are left out of the chain.
  auto skip_masked = [&](int64_t k, const torch::Tensor& previous, const torch::Tensor& next) {
    return m.empty() ? next : torch::where(m[k], previous, next);
  };
  const auto zero = torch::zeros({N}, scores.options());

  // Forward: a_s(k) = log Σ over assignments of keys <= k ending in state s (k's unary in).
  // Two states, so the recursions are written out instead of 2x2 logsumexps: far fewer ops.
  std::vector<torch::Tensor> alpha1(K);
  torch::Tensor a0 = zero, a1 = zero;
  torch::Tensor started =
      m.empty() ? torch::Tensor() : torch::zeros({N}, scores.options().dtype(torch::kBool));
  for (int64_t k = 0; k < K; ++k) {
    torch::Tensor n0, n1;
    if (k == 0 && m.empty()) {
      n0 = zero;
      n1 = u[0];
    } else {
      n0 = torch::logaddexp(a0 + t00, a1 + t10);
      n1 = torch::logaddexp(a0 + t01, a1 + t11);
      if (!m.empty()) {  // nothing before the first unmasked key: no transition into it
        n0 = torch::where(started, n0, zero);
        n1 = torch::where(started, n1, zero);
        started = started.logical_or(m[k].logical_not());
      }
      n1 = n1 + u[k];
    }
    a0 = skip_masked(k, a0, n0);
    a1 = skip_masked(k, a1, n1);
    alpha1[k] = a1;
  }
  const auto log_z = torch::logaddexp(a0, a1);  // (N)

  // Backward: b_s(k) = log Σ over assignments of keys > k given state s at k.
  std::vector<torch::Tensor> beta1(K);
  torch::Tensor b0 = zero, b1 = zero;
  for (int64_t k = K - 1; k >= 0; --k) {
    beta1[k] = b1;
    if (k == 0) break;
    const auto on = u[k] + b1;  // key k attended, and everything after it
    const auto n0 = torch::logaddexp(b0 + t00, on + t01);
    const auto n1 = torch::logaddexp(b0 + t10, on + t11);
    b0 = skip_masked(k, b0, n0);
    b1 = skip_masked(k, b1, n1);
  }
  auto marginals =
      torch::exp(torch::stack(alpha1, 1) + torch::stack(beta1, 1) - log_z.unsqueeze(1));  // (N, K)
  if (mask.defined()) marginals = marginals.masked_fill(torch::stack(m, 1), 0);
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
