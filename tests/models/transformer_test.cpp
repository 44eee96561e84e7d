// Transformer layers and stacks against torch::nn's own layers with copied weights, pre-norm
// against the formula composed from torch::nn modules (weights copied into ours), the KV-cached
// decoder against the full one, and the positional encodings against their closed form.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>

#include "models/attention/mask.h"
#include "models/transformer/positional.h"
#include "models/transformer/stack.h"

namespace {

namespace tf = attnscope::models::transformer;
using attnscope::models::attention::AttentionMasks;
using attnscope::models::attention::causal_mask;

constexpr double kAtol = 1e-5;
constexpr int64_t kB = 2, kE = 16, kH = 4, kFf = 32;

tf::TransformerLayerOptions small_layer() {
  return tf::TransformerLayerOptions(kE, kH).dim_feedforward(kFf);
}

torch::Tensor additive(const torch::Tensor& bool_mask) {
  return torch::zeros(bool_mask.sizes())
      .masked_fill(bool_mask, -std::numeric_limits<float>::infinity());
}

// Copies torch.nn parameters into ours by name: `in_proj_weight` (3E, E) becomes `qkv.weight`
// (self-attention) or `q.weight` + `kv.weight` (cross-attention); `out_proj` becomes `proj`.
void copy_parameters(const torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto ours = to.named_parameters();
  size_t written = 0;
  auto put = [&](const std::string& name, const torch::Tensor& value) {
    auto* target = ours.find(name);
    ASSERT_NE(target, nullptr) << "no parameter " << name;
    ASSERT_EQ(target->sizes(), value.sizes()) << name;
    target->copy_(value);
    ++written;
  };
  for (const auto& p : from.named_parameters()) {
    std::string name = p.key();
    const auto in_proj = name.find("in_proj_");
    if (in_proj != std::string::npos) {
      const std::string prefix = name.substr(0, in_proj);
      const std::string kind = name.substr(in_proj + 8);  // "weight" or "bias"
      if (ours.find(prefix + "qkv." + kind) != nullptr) {
        put(prefix + "qkv." + kind, p.value());
      } else {
        put(prefix + "q." + kind, p.value().narrow(0, 0, kE));
        put(prefix + "kv." + kind, p.value().narrow(0, kE, 2 * kE));
      }
      continue;
    }
    const auto out_proj = name.find("out_proj.");
    if (out_proj != std::string::npos) name.replace(out_proj, 9, "proj.");
    put(name, p.value());
  }
  EXPECT_EQ(written, ours.size()) << "some parameters were not copied";
}

torch::Tensor seq_first(const torch::Tensor& x) {
  return x.transpose(0, 1);
}

class TransformerTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::manual_seed(0); }
  torch::Tensor padding(int64_t length, std::vector<int64_t> lengths) {
    return torch::arange(length).unsqueeze(0) >= torch::tensor(lengths).unsqueeze(1);
  }
};

TEST_F(TransformerTest, PostNormEncoderLayerMatchesTorch) {
  torch::nn::TransformerEncoderLayer ref(
      torch::nn::TransformerEncoderLayerOptions(kE, kH).dim_feedforward(kFf));
  tf::TransformerEncoderLayer ours(small_layer());
  copy_parameters(*ref, *ours);
  ref->eval();
  ours->eval();
  auto src = torch::randn({kB, 6, kE});
  auto pad = padding(6, {6, 4});
  auto expected = ref->forward(seq_first(src), {}, pad);
  auto out = ours->forward(src, AttentionMasks{pad});
  EXPECT_TRUE(torch::allclose(out.output, seq_first(expected), 0, kAtol));
}

TEST_F(TransformerTest, PostNormDecoderLayerMatchesTorch) {
  torch::nn::TransformerDecoderLayer ref(
      torch::nn::TransformerDecoderLayerOptions(kE, kH).dim_feedforward(kFf));
  tf::TransformerDecoderLayer ours(small_layer());
  copy_parameters(*ref, *ours);
  ref->eval();
  ours->eval();
  auto tgt = torch::randn({kB, 5, kE});
  auto memory = torch::randn({kB, 7, kE});
  auto tgt_pad = padding(5, {5, 3});
  auto mem_pad = padding(7, {6, 7});
  auto expected = ref->forward(seq_first(tgt), seq_first(memory), additive(causal_mask(5, 5)), {},
                               tgt_pad, mem_pad);
  auto out = ours->forward(tgt, memory, AttentionMasks{tgt_pad, {}, true}, AttentionMasks{mem_pad});
  EXPECT_TRUE(torch::allclose(out.output, seq_first(expected), 0, kAtol));
}

TEST_F(TransformerTest, EncoderStackMatchesTorchAndReturnsEveryLayersWeights) {
  const int64_t n = 3;
  torch::nn::TransformerEncoder ref(
      torch::nn::TransformerEncoderOptions(
          torch::nn::TransformerEncoderLayerOptions(kE, kH).dim_feedforward(kFf), n)
          .norm(torch::nn::AnyModule(torch::nn::LayerNorm(torch::nn::LayerNormOptions({kE})))));
  tf::TransformerEncoder ours(tf::TransformerStackOptions(small_layer(), n));
  copy_parameters(*ref, *ours);
  ref->eval();
  ours->eval();
  auto src = torch::randn({kB, 6, kE});
  auto out = ours->forward(src, {}, /*need_weights=*/true);
  EXPECT_TRUE(torch::allclose(out.output, seq_first(ref->forward(seq_first(src))), 0, kAtol));
  ASSERT_EQ(out.self_weights.size(), static_cast<size_t>(n));
  // Layer 0's weights are torch's first self-attention on the input itself.
  auto first = ref->layers[0]->as<torch::nn::TransformerEncoderLayerImpl>();
  auto s = seq_first(src);
  auto w_ref = std::get<1>(first->self_attn->forward(s, s, s, {}, true, {}, false));
  EXPECT_TRUE(torch::allclose(out.self_weights[0], w_ref, 0, kAtol));
  for (const auto& w : out.self_weights)
    EXPECT_EQ(w.sizes(), torch::IntArrayRef({kB, kH, 6, 6}));
}

TEST_F(TransformerTest, DecoderStackMatchesTorch) {
  const int64_t n = 2;
  torch::nn::TransformerDecoder ref(
      torch::nn::TransformerDecoderOptions(
          torch::nn::TransformerDecoderLayerOptions(kE, kH).dim_feedforward(kFf), n)
          .norm(torch::nn::AnyModule(torch::nn::LayerNorm(torch::nn::LayerNormOptions({kE})))));
  tf::TransformerDecoder ours(tf::TransformerStackOptions(small_layer(), n));
  copy_parameters(*ref, *ours);
  ref->eval();
  ours->eval();
  auto tgt = torch::randn({kB, 5, kE});
  auto memory = torch::randn({kB, 7, kE});
  auto expected = ref->forward(seq_first(tgt), seq_first(memory), additive(causal_mask(5, 5)));
  auto out = ours->forward(tgt, memory, AttentionMasks{{}, {}, true}, {}, true);
  EXPECT_TRUE(torch::allclose(out.output, seq_first(expected), 0, kAtol));
  ASSERT_EQ(out.cross_weights.size(), static_cast<size_t>(n));
  EXPECT_EQ(out.cross_weights[1].sizes(), torch::IntArrayRef({kB, kH, 5, 7}));
  EXPECT_EQ(out.self_weights[1].sizes(), torch::IntArrayRef({kB, kH, 5, 5}));
}

TEST_F(TransformerTest, PreNormLayersMatchTheFormulaFromTorchModules) {
  auto options = small_layer().norm_first(true).activation(tf::Activation::gelu);
  tf::TransformerEncoderLayer enc(options);
  tf::TransformerDecoderLayer dec(options);
  enc->eval();
  dec->eval();
  // The same computation from torch.nn's MultiheadAttention, Linear and LayerNorm.
  torch::nn::TransformerDecoderLayer ref(
      torch::nn::TransformerDecoderLayerOptions(kE, kH).dim_feedforward(kFf));
  ref->eval();
  copy_parameters(*ref, *dec);
  auto tgt = torch::randn({kB, 5, kE});
  auto memory = torch::randn({kB, 7, kE});
  auto causal = additive(causal_mask(5, 5));
  auto x = seq_first(tgt);
  auto m = seq_first(memory);
  auto h = ref->norm1->forward(x);
  x = x + std::get<0>(ref->self_attn->forward(h, h, h, {}, false, causal));
  h = ref->norm2->forward(x);
  x = x + std::get<0>(ref->multihead_attn->forward(h, m, m, {}, false));
  x = x + ref->linear2->forward(torch::gelu(ref->linear1->forward(ref->norm3->forward(x))));
  auto out = dec->forward(tgt, memory, AttentionMasks{{}, {}, true});
  EXPECT_TRUE(torch::allclose(out.output, seq_first(x), 0, kAtol));

  // The encoder likewise from torch.nn's modules (weights copied into ours), with padding.
  torch::nn::TransformerEncoderLayer enc_ref(
      torch::nn::TransformerEncoderLayerOptions(kE, kH).dim_feedforward(kFf));
  enc_ref->eval();
  copy_parameters(*enc_ref, *enc);
  auto src = torch::randn({kB, 6, kE});
  auto pad = padding(6, {6, 4});
  torch::NoGradGuard no_grad;
  auto y = seq_first(src);
  h = enc_ref->norm1->forward(y);
  y = y + std::get<0>(enc_ref->self_attn->forward(h, h, h, pad, false));
  y = y +
      enc_ref->linear2->forward(torch::gelu(enc_ref->linear1->forward(enc_ref->norm2->forward(y))));
  EXPECT_TRUE(
      torch::allclose(enc->forward(src, AttentionMasks{pad}).output, seq_first(y), 0, kAtol));
}

TEST_F(TransformerTest, CachedIncrementalDecodingMatchesFullDecoding) {
  tf::TransformerDecoder ours(tf::TransformerStackOptions(small_layer(), 2));
  ours->eval();
  auto tgt = torch::randn({kB, 6, kE});
  auto memory = torch::randn({kB, 7, kE});
  auto mem_pad = padding(7, {7, 5});
  auto full = ours->forward(tgt, memory, AttentionMasks{{}, {}, true}, AttentionMasks{mem_pad});
  auto cache = ours->make_cache();
  for (int64_t t = 0; t < 6; ++t) {
    auto step = ours->forward(tgt.narrow(1, t, 1), t == 0 ? memory : torch::Tensor(), {},
                              AttentionMasks{mem_pad}, false, &cache);
    EXPECT_EQ(cache.length(), t + 1);
    EXPECT_TRUE(torch::allclose(step.output, full.output.narrow(1, t, 1), 0, kAtol)) << t;
  }
}

TEST_F(TransformerTest, DefaultsAreThoseOfThePaper) {
  tf::TransformerStackOptions options;
  EXPECT_EQ(options.num_layers(), 6);
  EXPECT_EQ(options.layer().d_model(), 512);
  EXPECT_EQ(options.layer().nhead(), 8);
  EXPECT_EQ(options.layer().dim_feedforward(), 2048);
  EXPECT_DOUBLE_EQ(options.layer().dropout(), 0.1);
  EXPECT_FALSE(options.layer().norm_first());
}

// Stochastic depth against brute force: with drop_path p (no dropout), a training pre-norm
// encoder layer's output for each sample is one of the four combinations of its two residual
// branches, each either dropped or scaled by 1 / (1 - p), computed here from the layer's own
// sub-modules in evaluation; the four occur about equally often at p = 0.5 (4,000 samples of
// one sequence: 1,000 expected each, binomial sd 27, margin 150). In evaluation, and with p = 0,
// the layer is the one without drop_path.
TEST_F(TransformerTest, DropPathDropsEachSamplesResidualBranchesOrScalesThem) {
  constexpr double p = 0.5;
  const auto options = small_layer().norm_first(true).dropout(0.0);
  tf::TransformerEncoderLayer layer(tf::TransformerLayerOptions(options).drop_path(p));
  tf::TransformerEncoderLayer plain(options);
  copy_parameters(*layer, *plain);
  const int64_t n = 4000, length = 3;
  const auto one = torch::randn({1, length, kE});
  const auto src = one.expand({n, length, kE}).contiguous();
  torch::NoGradGuard no_grad;

  layer->eval();
  const auto expected_eval = plain->forward(src).output;
  EXPECT_TRUE(torch::equal(layer->forward(src).output, expected_eval));

  // The four outcomes for the one sequence, from the layer's modules.
  const auto attn = layer->self_attn->forward(layer->norm1->forward(one)).context;
  const auto ff = [&](const torch::Tensor& x) {
    return layer->linear2->forward(torch::relu(layer->linear1->forward(layer->norm2->forward(x))));
  };
  std::vector<torch::Tensor> outcomes;
  for (const bool keep_attn : {false, true})
    for (const bool keep_ff : {false, true}) {
      const auto x = keep_attn ? one + attn / (1 - p) : one;
      outcomes.push_back(keep_ff ? x + ff(x) / (1 - p) : x);
    }

  layer->train();
  const auto out = layer->forward(src).output;
  std::vector<int64_t> counts(4, 0);
  for (int64_t i = 0; i < n; ++i) {
    int match = -1;
    for (int k = 0; k < 4; ++k)
      if (torch::allclose(out[i], outcomes[static_cast<std::size_t>(k)][0], 0, kAtol)) match = k;
    ASSERT_GE(match, 0) << "sample " << i << " is none of the four outcomes";
    ++counts[static_cast<std::size_t>(match)];
  }
  for (int k = 0; k < 4; ++k)
    EXPECT_NEAR(counts[static_cast<std::size_t>(k)], n / 4, 150) << "outcome " << k;

  plain->train();
  EXPECT_TRUE(torch::equal(plain->forward(src).output, expected_eval));  // p = 0: no draw
  EXPECT_THROW(tf::TransformerEncoderLayer(tf::TransformerLayerOptions(options).drop_path(1.0)),
               std::exception);
}

TEST_F(TransformerTest, SinusoidalEncodingEqualsClosedForm) {
  for (int64_t dim : {8, 7}) {
    const int64_t length = 50, offset = 3;
    auto pe = tf::sinusoidal_encoding(length, dim, offset);
    ASSERT_EQ(pe.sizes(), torch::IntArrayRef({length, dim}));
    auto acc = pe.accessor<float, 2>();
    for (int64_t pos = 0; pos < length; ++pos) {
      for (int64_t j = 0; j < dim; ++j) {
        const double angle = (pos + offset) / std::pow(10000.0, 2.0 * (j / 2) / dim);
        const double expected = j % 2 == 0 ? std::sin(angle) : std::cos(angle);
        ASSERT_NEAR(acc[pos][j], expected, 1e-6) << pos << "," << j;
      }
    }
  }
}

TEST_F(TransformerTest, PositionModulesAddTheirTableAtAnOffset) {
  tf::SinusoidalPositionalEncoding sinusoidal(tf::PositionalEncodingOptions(kE, 20));
  tf::LearnedPositionEmbedding learned(tf::PositionalEncodingOptions(kE, 20));
  sinusoidal->eval();
  learned->eval();
  auto x = torch::randn({kB, 4, kE});
  EXPECT_TRUE(torch::allclose(sinusoidal->forward(x, 5), x + tf::sinusoidal_encoding(4, kE, 5)));
  EXPECT_TRUE(torch::allclose(learned->forward(x, 5), x + learned->weight.narrow(0, 5, 4)));
  EXPECT_THROW(learned->forward(x, 17), std::exception);
  EXPECT_EQ(learned->named_parameters().size(), 1u);
  EXPECT_NE(learned->named_parameters().find("weight"), nullptr);
}

}  // namespace
