// Score functions, masks, softmax/sigmoid normalisers and the Attention module against naive
// loops and closed forms.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "attnscope/error.h"
#include "models/attention/attend.h"

namespace {

using namespace attnscope::models::attention;  // NOLINT: the module under test

constexpr double kAtol = 1e-5;

class AttentionCoreTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
};

// scores[b][i][j] = f(b, i, j) by plain loops.
template <typename F>
torch::Tensor loop_scores(int64_t B, int64_t Q, int64_t K, F&& f) {
  auto out = torch::zeros({B, Q, K}, torch::kDouble);
  auto acc = out.accessor<double, 3>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < Q; ++i)
      for (int64_t j = 0; j < K; ++j)
        acc[b][i][j] = f(b, i, j);
  return out.to(torch::kFloat);
}

TEST_F(AttentionCoreTest, DotAndScaledDotScoresEqualNaiveLoops) {
  auto q = torch::randn({2, 3, 5});
  auto k = torch::randn({2, 4, 5});
  auto qa = q.accessor<float, 3>();
  auto ka = k.accessor<float, 3>();
  auto dot = [&](int64_t b, int64_t i, int64_t j) {
    double s = 0;
    for (int64_t d = 0; d < 5; ++d)
      s += double(qa[b][i][d]) * ka[b][j][d];
    return s;
  };
  auto expected = loop_scores(2, 3, 4, dot);
  EXPECT_TRUE(torch::allclose(dot_score(q, k), expected, 0, kAtol));
  EXPECT_TRUE(torch::allclose(scaled_dot_score(q, k), expected / std::sqrt(5.0), 0, kAtol));
}

TEST_F(AttentionCoreTest, GeneralScoreEqualsNaiveBilinearForm) {
  GeneralScore score(GeneralScoreOptions(3, 6));
  auto q = torch::randn({2, 4, 3});
  auto k = torch::randn({2, 5, 6});
  auto qa = q.accessor<float, 3>();
  auto ka = k.accessor<float, 3>();
  auto w = score->weight.detach();
  auto wa = w.accessor<float, 2>();
  auto expected = loop_scores(2, 4, 5, [&](int64_t b, int64_t i, int64_t j) {
    double s = 0;
    for (int64_t x = 0; x < 3; ++x)
      for (int64_t y = 0; y < 6; ++y)
        s += double(qa[b][i][x]) * wa[x][y] * ka[b][j][y];
    return s;
  });
  EXPECT_TRUE(torch::allclose(score->forward(q, k), expected, 0, kAtol));
  EXPECT_TRUE(torch::allclose(general_score(q, k, w), expected, 0, kAtol));
}

// tanh: Bahdanau et al. 2015; ReLU: AttnMel's grid attention (Yan et al. 2019).
TEST_F(AttentionCoreTest, AdditiveScoreEqualsBahdanauAndGridFormulas) {
  const int64_t Dq = 3, Dk = 4, A = 6;
  for (auto activation : {AdditiveActivation::tanh, AdditiveActivation::relu}) {
    AdditiveScore score(AdditiveScoreOptions(Dq, Dk, A).activation(activation));
    auto q = torch::randn({2, 3, Dq});
    auto k = torch::randn({2, 5, Dk});
    auto wq = score->query_proj->weight.detach().to(torch::kDouble);
    auto wk = score->key_proj->weight.detach().to(torch::kDouble);
    auto bk = score->key_proj->bias.detach().to(torch::kDouble);
    auto v = score->v->weight.detach().to(torch::kDouble).view({A});
    auto qd = q.to(torch::kDouble);
    auto kd = k.to(torch::kDouble);
    auto expected = loop_scores(2, 3, 5, [&](int64_t b, int64_t i, int64_t j) {
      auto pre = torch::mv(wq, qd[b][i]) + torch::mv(wk, kd[b][j]) + bk;
      auto hidden = activation == AdditiveActivation::tanh ? torch::tanh(pre) : torch::relu(pre);
      return torch::dot(v, hidden).item<double>();
    });
    EXPECT_TRUE(torch::allclose(score->forward(q, k), expected, 0, kAtol));
    std::vector<std::string> names;
    for (const auto& p : score->named_parameters())
      names.push_back(p.key());
    EXPECT_EQ(names, (std::vector<std::string>{"query_proj.weight", "key_proj.weight",
                                               "key_proj.bias", "v.weight"}));
  }
}

// Position-aligned form (AttnMel's grid attention gate): key j is scored against its own query j.
TEST_F(AttentionCoreTest, AlignedAdditiveScoreEqualsPerPositionFormula) {
  const int64_t B = 2, K = 5, A = 4;
  auto q = torch::randn({B, K, A});
  auto k = torch::randn({B, K, A});
  auto v = torch::randn({A});
  auto bias = torch::randn({1});
  for (auto activation : {AdditiveActivation::tanh, AdditiveActivation::relu}) {
    auto expected = loop_scores(B, 1, K, [&](int64_t b, int64_t, int64_t j) {
      double s = bias.item<double>();
      for (int64_t a = 0; a < A; ++a) {
        const double x = double(q[b][j][a].item<float>()) + k[b][j][a].item<float>();
        s += double(v[a].item<float>()) *
             (activation == AdditiveActivation::tanh ? std::tanh(x) : std::max(x, 0.0));
      }
      return s;
    });
    const auto got = aligned_additive_score(q, k, v, bias, activation);
    EXPECT_EQ(got.sizes(), (std::vector<int64_t>{B, 1, K}));
    EXPECT_TRUE(torch::allclose(got, expected, 0, kAtol));
    // The same query at every position is the ordinary additive score with one query.
    const auto same = q.select(1, 0).unsqueeze(1);  // (B, 1, A)
    EXPECT_TRUE(
        torch::allclose(aligned_additive_score(same.expand({B, K, A}), k, v, {}, activation),
                        additive_score(same, k, v, activation), 0, kAtol));
  }
  EXPECT_THROW(aligned_additive_score(q, k.slice(1, 0, 4), v), attnscope::Error);
  EXPECT_THROW(aligned_additive_score(q, k, torch::randn({A + 1})), attnscope::Error);
  EXPECT_THROW(aligned_additive_score(q, k, v, torch::randn({2})), attnscope::Error);
}

TEST_F(AttentionCoreTest, ScoreByNameMatchesFreeFunctionsAndProjectedKeys) {
  auto q = torch::randn({2, 3, 4});
  auto k = torch::randn({2, 5, 4});
  for (const char* name : {"additive", "dot", "general", "scaled_dot"}) {
    const auto kind = score_kind_from_string(name);
    EXPECT_EQ(to_string(kind), name);
    Score score(ScoreOptions(kind, 4, 4).hidden_dim(7));
    auto direct = score->forward(q, k);
    EXPECT_EQ(direct.sizes(), torch::IntArrayRef({2, 3, 5})) << name;
    EXPECT_TRUE(
        torch::allclose(score->forward_projected(q, score->project_keys(k)), direct, 0, kAtol))
        << name;
    // Each kind against its formula, one (query, key) pair at a time.
    auto expected = torch::empty({2, 3, 5});
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < 5; ++j) {
          const auto qi = q[b][i], kj = k[b][j];
          torch::Tensor e;
          if (kind == ScoreKind::dot) {
            e = (qi * kj).sum();
          } else if (kind == ScoreKind::scaled_dot) {
            e = (qi * kj).sum() / 2.0;  // sqrt(D), D = 4
          } else if (kind == ScoreKind::general) {
            e = (qi.unsqueeze(1) * score->general->weight * kj.unsqueeze(0)).sum();
          } else {
            const auto& a = score->additive;
            const auto hidden = torch::tanh(torch::mv(a->query_proj->weight, qi) +
                                            torch::mv(a->key_proj->weight, kj) + a->key_proj->bias);
            e = (a->v->weight[0] * hidden).sum();
          }
          expected[b][i][j] = e;
        }
    EXPECT_TRUE(torch::allclose(direct, expected, 1e-5, kAtol))
        << name << ": " << (direct - expected).abs().max().item<double>();
  }
  Score dot(ScoreOptions(ScoreKind::dot, 4, 4));
  EXPECT_TRUE(torch::allclose(dot->forward(q, k), dot_score(q, k)));
  EXPECT_THROW(score_kind_from_string("cosine"), attnscope::Error);
  EXPECT_THROW(Score(ScoreOptions(ScoreKind::dot, 4, 5)), attnscope::Error);
}

TEST_F(AttentionCoreTest, CausalAndPaddingMasksEqualTheirDefinitions) {
  auto causal = causal_mask(3, 5);  // aligned to the end: query i sees keys <= i + 2
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 5; ++j)
      EXPECT_EQ(causal[i][j].item<bool>(), j > i + 2);
  auto pad = padding_mask(torch::tensor({2, 4}));
  EXPECT_TRUE(torch::equal(pad, torch::tensor({0, 0, 1, 1, 0, 0, 0, 0}).view({2, 4}).gt(0)));

  auto combined = combine_masks(AttentionMasks{pad, {}, true}, 4, 4, 3);
  auto expanded = combined.expand({2, 4, 4});
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 4; ++j)
        EXPECT_EQ(expanded[b][i][j].item<bool>(), j > i || pad[b][j].item<bool>());
  EXPECT_EQ(combine_masks(AttentionMasks{pad}, 4, 4, 4).sizes(), torch::IntArrayRef({2, 1, 1, 4}));
  EXPECT_FALSE(combine_masks({}, 4, 4).defined());
  EXPECT_THROW(combine_masks(AttentionMasks{torch::zeros({2, 4})}, 4, 4), attnscope::Error);
  EXPECT_THROW(combine_masks(AttentionMasks{pad}, 4, 5), attnscope::Error);
}

TEST_F(AttentionCoreTest, SoftmaxRowsSumToOneAndMaskedKeysWeighZero) {
  auto scores = torch::randn({2, 3, 6}, torch::requires_grad());
  auto plain = softmax_normalize(scores);
  EXPECT_TRUE(torch::allclose(plain.sum(-1), torch::ones({2, 3})));
  EXPECT_TRUE(torch::allclose(plain, scores.exp() / scores.exp().sum(-1, true), 0, kAtol));

  auto mask = torch::zeros({2, 3, 6}, torch::kBool);
  mask.index_put_({0, 1, torch::indexing::Slice(2, 6)}, true);  // row (0, 1) keeps keys 0, 1
  mask.index_put_({1, 2}, true);                                // row (1, 2) fully masked
  auto w = softmax_normalize(scores, mask);
  EXPECT_TRUE(torch::all(w.masked_select(mask) == 0).item<bool>());
  // The kept keys get the softmax over the kept keys only.
  auto kept = scores[0][1].slice(0, 0, 2);
  EXPECT_TRUE(torch::allclose(w[0][1].slice(0, 0, 2), torch::softmax(kept, 0), 0, kAtol));
  EXPECT_TRUE(
      torch::allclose(w.sum(-1), torch::tensor({1.f, 1.f, 1.f, 1.f, 1.f, 0.f}).view({2, 3})));
  EXPECT_TRUE(torch::equal(w[1][2], torch::zeros({6})));
  w.sum().backward();
  EXPECT_FALSE(scores.grad().isnan().any().item<bool>());
  EXPECT_TRUE(torch::equal(scores.grad()[1][2], torch::zeros({6})));
}

TEST_F(AttentionCoreTest, InPlaceSoftmaxEqualsTheExplicitFormula) {
  auto scores = torch::randn({2, 3, 6});
  auto mask = torch::zeros({2, 3, 6}, torch::kBool);
  mask.index_put_({0, 1, torch::indexing::Slice(3, 6)}, true);
  mask.index_put_({1, 0}, true);  // fully masked row
  auto expected = (scores.exp() * mask.logical_not()) /
                  (scores.exp() * mask.logical_not()).sum(-1, true).clamp_min(1e-30);
  auto in_place = scores.clone();
  auto& result = softmax_normalize_(in_place, mask);
  EXPECT_EQ(result.data_ptr(), in_place.data_ptr());
  EXPECT_TRUE(torch::allclose(in_place, expected, 0, kAtol));
  auto plain = scores.clone();
  EXPECT_TRUE(torch::allclose(softmax_normalize_(plain), torch::softmax(scores, -1), 0, kAtol));
  auto needs_grad = scores.clone().requires_grad_();
  EXPECT_THROW(softmax_normalize_(needs_grad), attnscope::Error);
}

// Oracle: LibTorch's own out-of-place softmax and its autograd gradient, in double precision.
TEST_F(AttentionCoreTest, OwnedInPlaceSoftmaxHasSoftmaxsValuesAndGradients) {
  auto base = torch::randn({2, 3, 6}, torch::kDouble);
  auto mask = torch::zeros({2, 3, 6}, torch::kBool);
  mask.index_put_({0, 1, torch::indexing::Slice(3, 6)}, true);
  mask.index_put_({1, 0}, true);  // fully masked row
  const auto upstream = torch::randn({2, 3, 6}, torch::kDouble);
  for (const bool masked : {false, true}) {
    const auto m = masked ? mask : torch::Tensor();
    // Reference: explicit formula out of place, gradient by autograd.
    auto ref_in = base.clone().requires_grad_();
    auto e = ref_in.exp();
    if (masked) e = e * mask.logical_not();
    auto ref = e / e.sum(-1, true).clamp_min(1e-300);
    (ref * upstream).sum().backward();
    // Ours: scores produced by an op (as in attention), normalised in place.
    auto leaf = base.clone().requires_grad_();
    auto scores = leaf * 1.0;
    const auto* storage = scores.data_ptr();
    auto w = softmax_normalize_owned(scores, m);
    EXPECT_EQ(w.data_ptr(), storage) << "not in place";
    EXPECT_TRUE(torch::allclose(w, ref.detach(), 0, 1e-12)) << masked;
    (w * upstream).sum().backward();
    EXPECT_TRUE(torch::allclose(leaf.grad(), ref_in.grad(), 0, 1e-12)) << masked;
    EXPECT_FALSE(leaf.grad().isnan().any().item<bool>());
  }
  // Without autograd it is the inference path.
  torch::NoGradGuard no_grad;
  auto plain = base.clone();
  EXPECT_TRUE(torch::allclose(softmax_normalize_owned(plain), torch::softmax(base, -1), 0, 1e-12));
}

TEST_F(AttentionCoreTest, SigmoidIsElementwiseLogisticAndMasksToZero) {
  auto scores = torch::randn({2, 4, 5});
  auto mask = torch::rand({2, 4, 5}) > 0.5;
  auto w = sigmoid_normalize(scores, mask);
  auto expected = (1 / (1 + torch::exp(-scores))).masked_fill(mask, 0);
  EXPECT_TRUE(torch::allclose(w, expected, 0, kAtol));
  Normalizer by_name(NormalizerOptions(norm_kind_from_string("sigmoid")));
  EXPECT_TRUE(torch::allclose(by_name->forward(scores, mask), expected, 0, kAtol));
  EXPECT_THROW(norm_kind_from_string("sparsemax"), attnscope::Error);
}

TEST_F(AttentionCoreTest, AttendIsTheWeightedSumOfValues) {
  auto w = torch::rand({2, 3, 4});
  auto v = torch::randn({2, 4, 5});
  auto ctx = attend(w, v);
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = 0; i < 3; ++i) {
      auto expected = torch::zeros({5});
      for (int64_t j = 0; j < 4; ++j)
        expected += w[b][i][j] * v[b][j];
      EXPECT_TRUE(torch::allclose(ctx[b][i], expected, 0, kAtol));
    }
  EXPECT_THROW(attend(w, torch::randn({2, 5, 5})), attnscope::Error);
}

TEST_F(AttentionCoreTest, AttentionModuleComposesScoreNormaliseAttend) {
  Attention attn(AttentionOptions(4, 6).score(ScoreKind::additive).hidden_dim(5));
  auto q = torch::randn({2, 3, 4});
  auto k = torch::randn({2, 7, 6});
  auto v = torch::randn({2, 7, 2});
  auto pad = padding_mask(torch::tensor({7, 4}));
  auto out = attn->forward(q, k, v, AttentionMasks{pad});
  // The three steps done by hand with the module's own score network.
  auto scores = attn->score->forward(q, k).masked_fill(pad.unsqueeze(1), -1e30);
  auto weights = torch::softmax(scores, -1);
  EXPECT_TRUE(torch::allclose(out.weights, weights, 0, kAtol));
  EXPECT_TRUE(torch::allclose(out.context, torch::bmm(weights, v), 0, kAtol));
  EXPECT_TRUE(torch::all(out.weights[1].slice(1, 4, 7) == 0).item<bool>());
}

TEST_F(AttentionCoreTest, AttentionDropoutOnlyWhileTrainingAndWeightsStayUndropped) {
  Attention attn(AttentionOptions(4, 4).dropout(0.5));
  auto q = torch::randn({2, 3, 4});
  auto k = torch::randn({2, 9, 4});
  attn->train();
  auto trained = attn->forward(q, k, k);
  EXPECT_TRUE(torch::allclose(trained.weights.sum(-1), torch::ones({2, 3})));
  attn->eval();
  auto evaluated = attn->forward(q, k, k);
  EXPECT_TRUE(torch::allclose(evaluated.context, torch::bmm(evaluated.weights, k), 0, kAtol));
  EXPECT_FALSE(torch::allclose(trained.context, evaluated.context));
}

}  // namespace
