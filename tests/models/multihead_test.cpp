// MultiHeadAttention against torch::nn::MultiheadAttention with copied weights (forward and
// gradients), the query-chunked path, the key/value cache and the parameter names.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "models/attention/multihead.h"

namespace {

using attnscope::models::attention::AttentionMasks;
using attnscope::models::attention::causal_mask;
using attnscope::models::attention::KvCache;
using attnscope::models::attention::MultiHeadAttention;
using attnscope::models::attention::MultiHeadAttentionOptions;

constexpr double kAtol = 1e-5;
constexpr int64_t kB = 3, kE = 16, kH = 4;

// (Q, K) additive float mask for torch: -inf where the bool mask is true.
torch::Tensor additive(const torch::Tensor& bool_mask) {
  return torch::zeros(bool_mask.sizes())
      .masked_fill(bool_mask, -std::numeric_limits<float>::infinity());
}

// Our module with the weights of `ref` (fused layout or cross layout).
MultiHeadAttention copy_of(const torch::nn::MultiheadAttention& ref, bool cross) {
  MultiHeadAttention ours(MultiHeadAttentionOptions(kE, kH).cross(cross));
  torch::NoGradGuard no_grad;
  if (!cross) {
    ours->qkv->weight.copy_(ref->in_proj_weight);
    ours->qkv->bias.copy_(ref->in_proj_bias);
  } else {
    ours->q->weight.copy_(ref->in_proj_weight.narrow(0, 0, kE));
    ours->q->bias.copy_(ref->in_proj_bias.narrow(0, 0, kE));
    ours->kv->weight.copy_(ref->in_proj_weight.narrow(0, kE, 2 * kE));
    ours->kv->bias.copy_(ref->in_proj_bias.narrow(0, kE, 2 * kE));
  }
  ours->proj->weight.copy_(ref->out_proj->weight);
  ours->proj->bias.copy_(ref->out_proj->bias);
  return ours;
}

class MultiHeadAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
  // lengths 7, 5, 6 of 7 keys: row 0 has no padding.
  torch::Tensor padding() {
    auto lengths = torch::tensor({7, 5, 6});
    return torch::arange(7).unsqueeze(0) >= lengths.unsqueeze(1);  // (B, 7)
  }
};

TEST_F(MultiHeadAttentionTest, SelfAttentionMatchesTorchWithMasksForwardAndGradients) {
  torch::nn::MultiheadAttention ref(torch::nn::MultiheadAttentionOptions(kE, kH));
  auto ours = copy_of(ref, /*cross=*/false);
  const int64_t L = 7;
  auto x = torch::randn({kB, L, kE}, torch::requires_grad());
  auto x_ref = x.detach().transpose(0, 1).contiguous().requires_grad_();  // (L, B, E)
  auto pad = padding();
  auto causal = causal_mask(L, L);

  auto [out_ref, w_ref] = ref->forward(x_ref, x_ref, x_ref, pad, true, additive(causal), false);
  auto out = ours->forward(x, AttentionMasks{pad, {}, true}, /*need_weights=*/true);

  EXPECT_TRUE(torch::allclose(out.context, out_ref.transpose(0, 1), 0, kAtol));
  ASSERT_EQ(out.weights.sizes(), torch::IntArrayRef({kB, kH, L, L}));
  EXPECT_TRUE(torch::allclose(out.weights, w_ref, 0, kAtol));

  auto probe = torch::randn({kB, L, kE});
  (out.context * probe).sum().backward();
  (out_ref * probe.transpose(0, 1)).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), x_ref.grad().transpose(0, 1), 0, kAtol));
  EXPECT_TRUE(torch::allclose(ours->qkv->weight.grad(), ref->in_proj_weight.grad(), 0, kAtol));
  EXPECT_TRUE(torch::allclose(ours->qkv->bias.grad(), ref->in_proj_bias.grad(), 0, kAtol));
  EXPECT_TRUE(torch::allclose(ours->proj->weight.grad(), ref->out_proj->weight.grad(), 0, kAtol));
}

TEST_F(MultiHeadAttentionTest, CrossAttentionMatchesTorchWithPaddingForwardAndGradients) {
  torch::nn::MultiheadAttention ref(torch::nn::MultiheadAttentionOptions(kE, kH));
  auto ours = copy_of(ref, /*cross=*/true);
  auto query = torch::randn({kB, 4, kE}, torch::requires_grad());
  auto memory = torch::randn({kB, 7, kE}, torch::requires_grad());
  auto q_ref = query.detach().transpose(0, 1).contiguous().requires_grad_();
  auto m_ref = memory.detach().transpose(0, 1).contiguous().requires_grad_();

  auto [out_ref, w_ref] = ref->forward(q_ref, m_ref, m_ref, padding(), true, {}, false);
  auto out = ours->forward(query, memory, memory, AttentionMasks{padding()}, true);

  EXPECT_TRUE(torch::allclose(out.context, out_ref.transpose(0, 1), 0, kAtol));
  EXPECT_TRUE(torch::allclose(out.weights, w_ref, 0, kAtol));
  (out.context.pow(2)).sum().backward();
  (out_ref.pow(2)).sum().backward();
  EXPECT_TRUE(torch::allclose(query.grad(), q_ref.grad().transpose(0, 1), 0, kAtol));
  EXPECT_TRUE(torch::allclose(memory.grad(), m_ref.grad().transpose(0, 1), 0, kAtol));
  EXPECT_TRUE(torch::allclose(ours->kv->weight.grad(),
                              ref->in_proj_weight.grad().narrow(0, kE, 2 * kE), 0, kAtol));
}

TEST_F(MultiHeadAttentionTest, FusedLayoutAttendsToOtherKeysLikeTorch) {
  torch::nn::MultiheadAttention ref(torch::nn::MultiheadAttentionOptions(kE, kH));
  auto ours = copy_of(ref, /*cross=*/false);
  auto query = torch::randn({kB, 4, kE});
  auto key = torch::randn({kB, 6, kE});
  auto value = torch::randn({kB, 6, kE});
  auto [out_ref, w_ref] =
      ref->forward(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1));
  auto out = ours->forward(query, key, value, {}, true);
  EXPECT_TRUE(torch::allclose(out.context, out_ref.transpose(0, 1), 0, kAtol));
  EXPECT_TRUE(torch::allclose(out.weights.mean(1), w_ref, 0, kAtol));
  // key == value: one fused product for both.
  auto [same_ref, same_w_ref] =
      ref->forward(query.transpose(0, 1), key.transpose(0, 1), key.transpose(0, 1));
  auto same = ours->forward(query, key, key, {}, true);
  EXPECT_TRUE(torch::allclose(same.context, same_ref.transpose(0, 1), 0, kAtol));
}

TEST_F(MultiHeadAttentionTest, KdimVdimMatchTorchSeparateProjections) {
  // torch's C++ module needs key and value of one size: keys (kdim = 10) are padded with zero
  // features to vdim = 12, which the extra (random) weight columns then multiply by zero.
  const int64_t kdim = 10, vdim = 12;
  torch::nn::MultiheadAttention ref(
      torch::nn::MultiheadAttentionOptions(kE, kH).kdim(vdim).vdim(vdim));
  MultiHeadAttention ours(MultiHeadAttentionOptions(kE, kH).cross(true).kdim(kdim).vdim(vdim));
  ASSERT_TRUE(ours->k && ours->v && !ours->kv);
  {
    torch::NoGradGuard no_grad;
    ours->q->weight.copy_(ref->q_proj_weight);
    ours->k->weight.copy_(ref->k_proj_weight.narrow(1, 0, kdim));
    ours->v->weight.copy_(ref->v_proj_weight);
    ours->q->bias.copy_(ref->in_proj_bias.narrow(0, 0, kE));
    ours->k->bias.copy_(ref->in_proj_bias.narrow(0, kE, kE));
    ours->v->bias.copy_(ref->in_proj_bias.narrow(0, 2 * kE, kE));
    ours->proj->weight.copy_(ref->out_proj->weight);
    ours->proj->bias.copy_(ref->out_proj->bias);
  }
  auto query = torch::randn({kB, 5, kE});
  auto key = torch::randn({kB, 7, kdim});
  auto value = torch::randn({kB, 7, vdim});
  auto key_padded = torch::cat({key, torch::zeros({kB, 7, vdim - kdim})}, 2);
  auto [out_ref, w_ref] = ref->forward(query.transpose(0, 1), key_padded.transpose(0, 1),
                                       value.transpose(0, 1), padding(), true, {}, false);
  auto out = ours->forward(query, key, value, AttentionMasks{padding()}, true);
  EXPECT_TRUE(torch::allclose(out.context, out_ref.transpose(0, 1), 0, kAtol));
  EXPECT_TRUE(torch::allclose(out.weights, w_ref, 0, kAtol));
}

TEST_F(MultiHeadAttentionTest, InferencePathsMatchTorchInChunksAndInOnePiece) {
  torch::nn::MultiheadAttention ref(torch::nn::MultiheadAttentionOptions(kE, kH));
  auto ours = copy_of(ref, /*cross=*/false);
  const int64_t L = 9;
  auto x = torch::randn({kB, L, kE});
  auto pad = torch::arange(L).unsqueeze(0) >= torch::tensor({9, 6, 8}).unsqueeze(1);  // (B, L)
  auto [out_ref, w_ref] = ref->forward(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), pad,
                                       false, additive(causal_mask(L, L)));
  // Autograd off: in-place softmax; first in one piece, then 2 query rows per chunk (the last
  // chunk shorter).
  torch::NoGradGuard inference;
  for (int64_t limit : {int64_t{0}, kB * kH * L * 2}) {
    ours->options.max_score_elements(limit).chunk_elements(kB * kH * L * 2);
    auto out = ours->forward(x, AttentionMasks{pad, {}, true});
    EXPECT_FALSE(out.weights.defined());
    EXPECT_TRUE(torch::allclose(out.context, out_ref.transpose(0, 1), 0, kAtol)) << limit;
  }
}

// learned_scale (LSA's learnable temperature): scores (q·k) · scale[h]. Oracle: torch's module,
// whose scores are (q·k) / sqrt(Dh), with head h's query rows of in_proj (weight and bias)
// multiplied by scale[h] · sqrt(Dh). Forward, weights, the input's gradient, the query-chunked
// inference path, and the diagonal mask the ViT passes with it.
TEST_F(MultiHeadAttentionTest, LearnedScalePerHeadMatchesTorchWithScaledQueryProjections) {
  torch::nn::MultiheadAttention ref(torch::nn::MultiheadAttentionOptions(kE, kH));
  const auto plain = copy_of(ref, /*cross=*/false);
  MultiHeadAttention ours(MultiHeadAttentionOptions(kE, kH).learned_scale(true));
  const int64_t Dh = kE / kH, L = 6;
  const auto scale = torch::tensor({0.1f, 0.9f, 2.0f, 0.5f});
  {
    torch::NoGradGuard no_grad;
    // Before any change: 1/sqrt(Dh) for every head, the fixed scale.
    EXPECT_TRUE(torch::allclose(ours->scale, torch::full({kH}, 1.0 / std::sqrt(double(Dh)))));
    ours->qkv->weight.copy_(plain->qkv->weight);
    ours->qkv->bias.copy_(plain->qkv->bias);
    ours->proj->weight.copy_(plain->proj->weight);
    ours->proj->bias.copy_(plain->proj->bias);
    ours->scale.copy_(scale);
    const auto rows = scale.repeat_interleave(Dh) * std::sqrt(double(Dh));  // (E)
    ref->in_proj_weight.narrow(0, 0, kE).mul_(rows.unsqueeze(1));
    ref->in_proj_bias.narrow(0, 0, kE).mul_(rows);
  }
  const auto eye = torch::eye(L, torch::kBool);
  auto x = torch::randn({kB, L, kE}, torch::requires_grad());
  auto x_ref = x.detach().clone().requires_grad_(true);
  auto t = x_ref.transpose(0, 1);
  auto [out_ref, w_ref] = ref->forward(t, t, t, {}, true, additive(eye), false);
  auto out = ours->forward(x, AttentionMasks{{}, eye}, /*need_weights=*/true);
  EXPECT_TRUE(torch::allclose(out.context, out_ref.transpose(0, 1), 0, kAtol));
  EXPECT_TRUE(torch::allclose(out.weights, w_ref, 0, kAtol));
  EXPECT_EQ(out.weights.diagonal(0, -2, -1).abs().max().item<float>(), 0.0f);
  out.context.pow(2).sum().backward();
  out_ref.pow(2).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), x_ref.grad(), 0, 1e-4));
  EXPECT_GT(ours->scale.grad().abs().min().item<float>(), 0.0f);  // every head's scale learns
  torch::NoGradGuard inference;
  ours->options.max_score_elements(1).chunk_elements(kB * kH * L * 2);  // 2 rows per chunk
  auto chunked = ours->forward(x, AttentionMasks{{}, eye});
  EXPECT_TRUE(torch::allclose(chunked.context, out_ref.transpose(0, 1), 0, kAtol));
  std::vector<std::string> names;
  for (const auto& p : ours->named_parameters())
    names.push_back(p.key());
  // A module's own parameters come before its children's.
  EXPECT_EQ(names, (std::vector<std::string>{"scale", "qkv.weight", "qkv.bias", "proj.weight",
                                             "proj.bias"}));
}

TEST_F(MultiHeadAttentionTest, IncrementalDecodingWithCacheMatchesTorchCausal) {
  torch::nn::MultiheadAttention ref(torch::nn::MultiheadAttentionOptions(kE, kH));
  auto ours = copy_of(ref, /*cross=*/false);
  const int64_t L = 6;
  auto x = torch::randn({kB, L, kE});
  auto [out_ref, w_ref] = ref->forward(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), {},
                                       false, additive(causal_mask(L, L)));
  KvCache cache;
  // Two tokens first (causal within them), then one at a time.
  auto first = ours->forward(x.narrow(1, 0, 2), AttentionMasks{{}, {}, true}, false, &cache);
  EXPECT_TRUE(torch::allclose(first.context, out_ref.transpose(0, 1).narrow(1, 0, 2), 0, kAtol));
  for (int64_t t = 2; t < L; ++t) {
    auto step = ours->forward(x.narrow(1, t, 1), {}, false, &cache);
    EXPECT_EQ(cache.length(), t + 1);
    EXPECT_TRUE(torch::allclose(step.context, out_ref.transpose(0, 1).narrow(1, t, 1), 0, kAtol));
  }
}

TEST_F(MultiHeadAttentionTest, StaticCacheReusesProjectedMemory) {
  torch::nn::MultiheadAttention ref(torch::nn::MultiheadAttentionOptions(kE, kH));
  auto ours = copy_of(ref, /*cross=*/true);
  auto query = torch::randn({kB, 3, kE});
  auto memory = torch::randn({kB, 5, kE});
  auto [out_ref, w_ref] =
      ref->forward(query.transpose(0, 1), memory.transpose(0, 1), memory.transpose(0, 1));
  KvCache cache;
  cache.is_static = true;
  ours->forward(query.narrow(1, 0, 1), memory, memory, {}, false, &cache);
  auto later = ours->forward(query, torch::Tensor(), torch::Tensor(), {}, false, &cache);
  EXPECT_EQ(cache.length(), 5);
  EXPECT_TRUE(torch::allclose(later.context, out_ref.transpose(0, 1), 0, kAtol));
}

TEST_F(MultiHeadAttentionTest, CacheReorderSelectsBatchRows) {
  KvCache cache;
  cache.key = torch::arange(4).view({4, 1, 1, 1}).to(torch::kFloat);
  cache.value = cache.key.clone();
  cache.reorder(torch::tensor({2, 2, 0}));
  EXPECT_TRUE(torch::equal(cache.key.flatten(), torch::tensor({2.f, 2.f, 0.f})));
}

TEST_F(MultiHeadAttentionTest, FullyMaskedQueryGivesProjectionBiasNotNaN) {
  MultiHeadAttention ours(MultiHeadAttentionOptions(kE, kH));
  {
    torch::NoGradGuard no_grad;
    ours->proj->bias.uniform_(-1, 1);
  }
  auto x = torch::randn({1, 3, kE}, torch::requires_grad());
  auto all = torch::ones({1, 3}, torch::kBool);
  auto out = ours->forward(x, AttentionMasks{all}, true);
  // Zero weights -> zero context -> the output is proj's bias in every position.
  EXPECT_TRUE(torch::equal(out.weights, torch::zeros({1, kH, 3, 3})));
  EXPECT_TRUE(torch::allclose(out.context, ours->proj->bias.expand({1, 3, kE})));
  out.context.sum().backward();
  EXPECT_FALSE(x.grad().isnan().any().item<bool>());
}

TEST_F(MultiHeadAttentionTest, ParameterNamesFollowTimm) {
  MultiHeadAttention self_attn(MultiHeadAttentionOptions(kE, kH));
  std::vector<std::string> names;
  for (const auto& p : self_attn->named_parameters())
    names.push_back(p.key());
  EXPECT_EQ(names,
            (std::vector<std::string>{"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}));
  MultiHeadAttention cross(MultiHeadAttentionOptions(kE, kH).cross(true));
  names.clear();
  for (const auto& p : cross->named_parameters())
    names.push_back(p.key());
  EXPECT_EQ(names, (std::vector<std::string>{"q.weight", "q.bias", "kv.weight", "kv.bias",
                                             "proj.weight", "proj.bias"}));
}

TEST_F(MultiHeadAttentionTest, RejectsBadShapesWithAnError) {
  EXPECT_THROW(MultiHeadAttention(MultiHeadAttentionOptions(10, 3)), std::exception);
  MultiHeadAttention ours(MultiHeadAttentionOptions(kE, kH));
  EXPECT_THROW(ours->forward(torch::randn({2, 3, kE + 1})), std::exception);
  EXPECT_THROW(ours->forward(torch::randn({2, 3, kE}), AttentionMasks{torch::ones({2, 4}).gt(0)}),
               std::exception);
}

}  // namespace
