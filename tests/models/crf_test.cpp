// Structured (CRF) attention: marginals against brute-force enumeration of all 2^K state
// sequences, gradients against central finite differences in double precision.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "attnscope/error.h"
#include "models/attention/normalize.h"

namespace {

using namespace attnscope::models::attention;  // NOLINT: the module under test

// p(z_k = 1) for one chain by enumerating every assignment of the unmasked keys: the log
// potential is Σ_k z_k u_k + Σ T[z_prev][z_k] over consecutive unmasked keys.
std::vector<double> brute_force(const std::vector<double>& u, const double T[2][2],
                                const std::vector<bool>& masked) {
  std::vector<int> keys;
  for (size_t k = 0; k < u.size(); ++k)
    if (!masked[k]) keys.push_back(static_cast<int>(k));
  std::vector<double> marginal(u.size(), 0.0);
  double z = 0;
  const int n = static_cast<int>(keys.size());
  for (int bits = 0; bits < (1 << n); ++bits) {
    double score = 0;
    for (int i = 0; i < n; ++i) {
      const int s = (bits >> i) & 1;
      score += s * u[keys[i]];
      if (i > 0) score += T[(bits >> (i - 1)) & 1][s];
    }
    const double p = std::exp(score);
    z += p;
    for (int i = 0; i < n; ++i)
      if ((bits >> i) & 1) marginal[keys[i]] += p;
  }
  for (int k : keys)
    marginal[k] /= z;
  return marginal;
}

class CrfAttention : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

TEST_F(CrfAttention, MarginalsMatchBruteForce) {
  const double T[2][2] = {{0.3, -1.2}, {0.7, 1.5}};
  auto transitions =
      torch::tensor({T[0][0], T[0][1], T[1][0], T[1][1]}, torch::kDouble).view({2, 2});
  for (int64_t K : {1, 2, 5, 10}) {
    auto scores = torch::randn({2, 3, K}, torch::kDouble) * 2;
    auto mask = torch::rand({2, 3, K}) > 0.7;
    mask.index_put_({0, 0}, false);  // one row without any mask
    for (bool with_mask : {false, true}) {
      auto m = with_mask ? mask : torch::Tensor();
      auto marginals = crf_marginals(scores, transitions, m);
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t q = 0; q < 3; ++q) {
          std::vector<double> u(K);
          std::vector<bool> masked(K, false);
          for (int64_t k = 0; k < K; ++k) {
            u[k] = scores[b][q][k].item<double>();
            masked[k] = with_mask && mask[b][q][k].item<bool>();
          }
          auto expected = brute_force(u, T, masked);
          for (int64_t k = 0; k < K; ++k)
            EXPECT_NEAR(marginals[b][q][k].item<double>(), expected[k], 1e-10)
                << "K=" << K << " mask=" << with_mask << " at " << b << "," << q << "," << k;
        }
    }
  }
}

TEST_F(CrfAttention, ZeroTransitionsGiveIndependentSigmoids) {
  auto scores = torch::randn({3, 4, 8});
  auto marginals = crf_marginals(scores, torch::zeros({2, 2}));
  EXPECT_TRUE(torch::allclose(marginals, torch::sigmoid(scores), 0, 1e-5));
}

TEST_F(CrfAttention, GradientsMatchFiniteDifferencesInDouble) {
  auto scores = torch::randn({2, 2, 6}, torch::kDouble).requires_grad_();
  auto transitions = torch::randn({2, 2}, torch::kDouble).requires_grad_();
  auto mask = torch::zeros({2, 2, 6}, torch::kBool);
  mask.index_put_({1, 0, 2}, true);
  mask.index_put_({0, 1, 5}, true);
  auto probe = torch::randn({2, 2, 6}, torch::kDouble);
  auto f = [&](const torch::Tensor& s, const torch::Tensor& t) {
    return (lambda_normalize(crf_marginals(s, t, mask), 2.0) * probe).sum();
  };
  f(scores, transitions).backward();
  const double eps = 1e-6;
  auto check_grad = [&](torch::Tensor& x, const torch::Tensor& analytic) {
    torch::NoGradGuard no_grad;
    auto flat = x.view({-1});
    auto g = analytic.reshape({-1});
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double orig = flat[i].item<double>();
      flat[i] = orig + eps;
      const double up = f(scores, transitions).item<double>();
      flat[i] = orig - eps;
      const double down = f(scores, transitions).item<double>();
      flat[i] = orig;
      EXPECT_NEAR(g[i].item<double>(), (up - down) / (2 * eps), 1e-7) << i;
    }
  };
  check_grad(scores, scores.grad().clone());
  check_grad(transitions, transitions.grad().clone());
}

TEST_F(CrfAttention, LambdaNormalisationSumsToLambdaAndFullyMaskedRowIsZero) {
  CrfNormalizer crf(CrfNormalizerOptions().normalize(true).lambda(3.0));
  {
    torch::NoGradGuard no_grad;
    crf->transitions.copy_(torch::tensor({{0.5, -0.5}, {-0.2, 1.0}}));
  }
  auto scores = torch::randn({2, 5, 7}, torch::requires_grad());
  auto mask = torch::zeros({2, 5, 7}, torch::kBool);
  mask.index_put_({1, 3}, true);
  auto w = crf->forward(scores, mask);
  auto sums = w.sum(-1);
  sums.index_put_({1, 3}, 3.0);  // the fully masked row is checked separately
  EXPECT_TRUE(torch::allclose(sums, torch::full({2, 5}, 3.0), 0, 1e-5));
  EXPECT_TRUE(torch::equal(w[1][3], torch::zeros({7})));
  w.sum().backward();
  EXPECT_FALSE(scores.grad().isnan().any().item<bool>());
  EXPECT_FALSE(crf->transitions.grad().isnan().any().item<bool>());
}

TEST_F(CrfAttention, NormalizerByNameRegistersTransitions) {
  Normalizer crf(NormalizerOptions(norm_kind_from_string("crf")));
  EXPECT_NE(crf->named_parameters().find("crf.transitions"), nullptr);
  Normalizer softmax(NormalizerOptions(NormKind::softmax));
  EXPECT_EQ(softmax->parameters().size(), 0u);
  EXPECT_THROW(crf_marginals(torch::randn({2, 3}), torch::zeros({3, 3})), attnscope::Error);
}

}  // namespace
