#pragma once
// Step 2 of the attention core: normalise scores (..., Q, K) into weights over the keys.
//
// Every normaliser takes an optional bool mask (true = masked out, see mask.h) broadcastable to
// the scores. Masked pairs get weight exactly 0, and a fully masked row gives all zeros, never
// NaN (also in the gradient).

#include <string>

#include <torch/torch.h>

namespace attnscope::models::attention {

/// Softmax over the keys (last dim).
///
/// Shape: scores (..., Q, K), mask broadcastable to it -> weights (..., Q, K), rows sum to 1
/// (0 for fully masked rows).
torch::Tensor softmax_normalize(const torch::Tensor& scores, const torch::Tensor& mask = {});

/// softmax_normalize in place, for inference: overwrites `scores` with the weights and returns
/// it, sparing a second (..., Q, K) tensor. scores must not require grad (throws otherwise).
torch::Tensor& softmax_normalize_(torch::Tensor& scores, const torch::Tensor& mask = {});

/// softmax_normalize for scores that nothing else holds (e.g. fresh from a matrix product):
/// normalises them in place also under autograd, sparing one (..., Q, K) tensor in training.
/// Softmax's gradient needs only its output, so the scores are not needed after the forward
/// pass; the returned tensor is `scores`, marked as modified for autograd. Without autograd it
/// is softmax_normalize_.
torch::Tensor softmax_normalize_owned(torch::Tensor scores, const torch::Tensor& mask = {});

/// Element-wise logistic sigmoid (each key in [0, 1] independently, as in image attention).
///
/// Shape: scores (..., Q, K) -> weights (..., Q, K).
torch::Tensor sigmoid_normalize(const torch::Tensor& scores, const torch::Tensor& mask = {});

/// Marginals p(z_k = 1) of a linear-chain CRF over the keys (Kim et al. 2017, "Structured
/// Attention Networks"): two states per key (0 = ignore, 1 = attend), unary potential `scores`
/// for state 1 (0 for state 0) and pairwise potentials transitions[z_{k-1}][z_k]. Computed by
/// forward-backward in log space; differentiable by autograd. Masked keys are left out of the
/// chain (their neighbours are linked directly) and get marginal 0.
///
/// Shape: scores (..., Q, K), transitions (2, 2), mask broadcastable to scores
/// -> marginals (..., Q, K), each in [0, 1].
torch::Tensor crf_marginals(const torch::Tensor& scores, const torch::Tensor& transitions,
                            const torch::Tensor& mask = {});

/// λ-normalisation of Kim et al.: weights = lambda * m / Σ_k m (a fully masked / all-zero row
/// stays 0). Shape: marginals (..., Q, K) -> (..., Q, K).
torch::Tensor lambda_normalize(const torch::Tensor& marginals, double lambda);

/// The normalisers, for configuration by name.
enum class NormKind { softmax, sigmoid, crf };

/// "softmax" | "sigmoid" | "crf"; throws attnscope::Error on another name.
NormKind norm_kind_from_string(const std::string& name);
std::string to_string(NormKind kind);

struct CrfNormalizerOptions {
  /// Apply the λ-normalisation (weights sum to `lambda` per row) instead of raw marginals.
  TORCH_ARG(bool, normalize) = false;
  /// λ of the λ-normalisation.
  TORCH_ARG(double, lambda) = 1.0;
};

/// Structured attention: a linear-chain CRF with learned 2x2 `transitions` (initialised to 0,
/// which makes the marginals equal sigmoid(scores)).
///
/// Shape: scores (..., Q, K), mask broadcastable -> weights (..., Q, K).
class CrfNormalizerImpl : public torch::nn::Cloneable<CrfNormalizerImpl> {
 public:
  explicit CrfNormalizerImpl(const CrfNormalizerOptions& options_ = {});
  void reset() override;
  torch::Tensor forward(const torch::Tensor& scores, const torch::Tensor& mask = {});

  CrfNormalizerOptions options;
  torch::Tensor transitions;  ///< (2, 2): transitions[previous state][state]
};
TORCH_MODULE(CrfNormalizer);

struct NormalizerOptions {
  NormalizerOptions(NormKind kind = NormKind::softmax) : kind_(kind) {}  // NOLINT
  /// Which normaliser.
  TORCH_ARG(NormKind, kind);
  /// Options of the CRF (used when kind == crf).
  TORCH_ARG(CrfNormalizerOptions, crf) = {};
};

/// A normaliser chosen by kind. Registers a `crf` child (with `crf.transitions`) only for
/// kind == crf; softmax and sigmoid have no parameters.
///
/// Shape: scores (..., Q, K), mask broadcastable -> weights (..., Q, K).
class NormalizerImpl : public torch::nn::Cloneable<NormalizerImpl> {
 public:
  explicit NormalizerImpl(const NormalizerOptions& options_ = {});
  void reset() override;
  torch::Tensor forward(const torch::Tensor& scores, const torch::Tensor& mask = {});

  NormalizerOptions options;
  CrfNormalizer crf = nullptr;
};
TORCH_MODULE(Normalizer);

}  // namespace attnscope::models::attention
