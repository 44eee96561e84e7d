// Explanations: rollout against hand-computed cases, gradient rollout, Grad-CAM on a model
// whose logits depend on known regions, the ViT's attention outputs.

#include <algorithm>
#include <array>
#include <cmath>

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "attnscope/error.h"
#include "models/vision/explain.h"
#include "models/vision/presets.h"
#include "models/vision/vit.h"

namespace attnscope::models::vision {
namespace {

torch::Tensor mat(std::vector<float> v, int64_t n) {
  return torch::tensor(v).view({n, n});
}

// Two layers, two heads, two tokens.
std::vector<torch::Tensor> two_layers() {
  auto l1 = torch::stack({mat({1, 0, 0.5, 0.5}, 2), mat({0.5, 0.5, 0, 1}, 2)}).unsqueeze(0);
  auto l2 = torch::stack({mat({0.5, 0.5, 0.5, 0.5}, 2), mat({0.5, 0.5, 0.5, 0.5}, 2)}).unsqueeze(0);
  return {l1, l2};
}

TEST(AttentionRollout, MeanFusionMatchesHandComputation) {
  // Layer 1 mean [[.75 .25] [.25 .75]] -> (A + I) / 2 = [[.875 .125] [.125 .875]];
  // layer 2 -> [[.75 .25] [.25 .75]]; product layer2 · layer1 = [[.6875 .3125] [.3125 .6875]].
  const auto r = rollout_matrix(two_layers());
  EXPECT_TRUE(torch::allclose(r[0], mat({0.6875f, 0.3125f, 0.3125f, 0.6875f}, 2)));
}

TEST(AttentionRollout, MaxFusionRenormalisesRows) {
  // Layer 1 max [[1 .5] [.5 1]] -> (A + I) / 2 = [[1 .25] [.25 1]] -> rows / 1.25 =
  // [[.8 .2] [.2 .8]]; times [[.75 .25] [.25 .75]] = [[.65 .35] [.35 .65]].
  const auto r = rollout_matrix(two_layers(), RolloutOptions().head_fusion(HeadFusion::max));
  EXPECT_TRUE(torch::allclose(r[0], mat({0.65f, 0.35f, 0.35f, 0.65f}, 2)));
  // min: layer 1 [[.5 0] [0 .5]] -> [[.75 0] [0 .75]] -> identity; result = layer 2's.
  const auto m = rollout_matrix(two_layers(), RolloutOptions().head_fusion(HeadFusion::min));
  EXPECT_TRUE(torch::allclose(m[0], mat({0.75f, 0.25f, 0.25f, 0.75f}, 2)));
}

TEST(AttentionRollout, ClassTokenMapAndDiscardRatio) {
  // One layer, one head, class token + 1×2 patches.
  const auto a = torch::tensor({0.2f, 0.3f, 0.5f, 1 / 3.f, 1 / 3.f, 1 / 3.f, 0.f, 0.f, 1.f})
                     .view({1, 1, 3, 3});
  // Row 0 of (A + I) / 2 = [.6 .15 .25] -> patches [.15 .25] / .25 = [.6 1].
  auto map = attention_rollout({a}, 1, 2);
  EXPECT_TRUE(torch::allclose(map, torch::tensor({0.6f, 1.0f}).view({1, 1, 2})));
  // discard 0.45 of 9 -> the 4 lowest: two zeros, 0.2 at (0, 0) (kept: class token) and 0.3.
  // Row 0 becomes [.2 0 .5] -> (A + I) / 2 = [.6 0 .25] -> map [0 1].
  map = attention_rollout({a}, 1, 2, RolloutOptions().discard_ratio(0.45));
  EXPECT_TRUE(torch::allclose(map, torch::tensor({0.0f, 1.0f}).view({1, 1, 2})));
}

TEST(AttentionRollout, RejectsMismatchedGrid) {
  EXPECT_THROW(attention_rollout(two_layers(), 2, 2), Error);
  EXPECT_THROW(rollout_matrix({}), Error);
}

TEST(GradientRollout, UnitGradientsGiveMeanRollout) {
  torch::manual_seed(7);
  auto a = torch::softmax(torch::randn({2, 3, 5, 5}), -1);
  auto b = torch::softmax(torch::randn({2, 3, 5, 5}), -1);
  const auto ones = torch::ones_like(a);
  EXPECT_TRUE(torch::allclose(gradient_rollout({a, b}, {ones, ones}, 2, 2),
                              attention_rollout({a, b}, 2, 2)));
  // Gradients weight the heads: only head 1 counts here (its weights / 3 after the mean).
  auto g = torch::zeros_like(a);
  g.select(1, 1).fill_(1.0);
  const auto single = a.select(1, 1).unsqueeze(1) / 3.0;
  EXPECT_TRUE(torch::allclose(gradient_rollout({a}, {g}, 2, 2), attention_rollout({single}, 2, 2),
                              1e-5, 1e-6));
  // Negative products are clamped to 0: the rollout is the identity, the class token attends
  // to no patch.
  EXPECT_TRUE(gradient_rollout({a}, {-ones}, 2, 2).eq(0).all().item<bool>());
}

// features = the input (2 channels); logit c = mean of channel c: class c depends on where
// channel c is active.
class RegionModelImpl : public ImageClassifier {
 public:
  std::shared_ptr<ImageClassifier> make_like() const override {
    return std::make_shared<RegionModelImpl>();
  }
  ImageFeatures forward_features(const torch::Tensor& images, bool) override {
    ImageFeatures f;
    f.features = images * 1.0;
    return f;
  }
  ImageOutput forward_head(const ImageFeatures& f) override {
    return {f.features.mean({2, 3}), {}, {}};
  }
  int64_t num_classes() const override { return 2; }
  std::vector<std::string> head_prefixes() const override { return {}; }
};

TEST(GradCam, HighlightsTheRegionTheLogitDependsOn) {
  auto x = torch::zeros({1, 2, 8, 8});
  x[0][0].slice(0, 2, 4).slice(1, 5, 7).fill_(1.0);  // class 0's region: rows 2-3, cols 5-6
  x[0][1].slice(0, 5, 7).slice(1, 1, 3).fill_(1.0);  // class 1's region: rows 5-6, cols 1-2
  RegionModelImpl model;
  const auto cam0 = grad_cam(model, x, torch::tensor({0}, torch::kLong))[0];
  const auto cam1 = grad_cam(model, x, torch::tensor({1}, torch::kLong))[0];
  EXPECT_TRUE(torch::equal(cam0, x[0][0]));
  EXPECT_TRUE(torch::equal(cam1, x[0][1]));
}

TEST(GradCam, WorksForEveryCnnPresetUnderNoGrad) {
  torch::manual_seed(8);
  torch::NoGradGuard no_grad;
  // small_cnn: 4 stages (64 / 16); resnet18 and vgg16: 64 / 32.
  for (const auto& [arch, side] : {std::pair{"small_cnn", 4}, {"resnet18", 2}, {"vgg16", 2}}) {
    ImageModelConfig c;
    c.arch = arch;
    auto m = make_image_classifier(c);
    m->eval();
    const auto cam = grad_cam(*m, torch::randn({2, 3, 64, 64}));
    EXPECT_EQ(cam.sizes(), (std::vector<int64_t>{2, side, side})) << arch;
    EXPECT_LE(cam.max().item<float>(), 1.0f);
    EXPECT_GE(cam.min().item<float>(), 0.0f);
  }
}

// A preset with its default configuration, in evaluation mode.
std::shared_ptr<ImageClassifier> eval_classifier(const std::string& arch) {
  ImageModelConfig c;
  c.arch = arch;
  auto m = make_image_classifier(c);
  m->eval();
  return m;
}

// Grad-CAM from features computed once without a graph (what classify does) equals the
// textbook computation: one autograd graph from the image through trunk and head, the gradient
// of the chosen logit at the last feature map read with retain_grad.
TEST(GradCam, FromPrecomputedFeaturesEqualsTheFullGraphComputation) {
  torch::manual_seed(10);
  for (const char* arch : {"attn_small", "resnet18"}) {
    const auto m = eval_classifier(arch);
    const auto x = torch::randn({3, 3, 64, 64});
    const auto targets = torch::tensor({0, 1, 1}, torch::kLong);
    ImageFeatures f;
    {
      torch::NoGradGuard no_grad;
      f = m->forward_features(x);
    }
    const auto cam = grad_cam(*m, f, targets);
    auto full = m->forward_features(x);
    full.features.retain_grad();
    const auto logits = m->forward_head(full).logits;
    logits.gather(1, targets.view({-1, 1})).sum().backward();
    const auto grads = full.features.grad();
    auto want = torch::relu((grads.mean({2, 3}, true) * full.features.detach()).sum(1));
    want = want / want.flatten(1).amax(1).clamp_min(1e-12).view({-1, 1, 1});
    ASSERT_EQ(cam.sizes(), want.sizes()) << arch;
    EXPECT_TRUE(torch::allclose(cam, want, 1e-4, 1e-6)) << arch << (cam - want).abs().max();
    EXPECT_TRUE(torch::allclose(grad_cam(*m, x, targets), cam, 1e-5, 1e-7)) << arch;
  }
}

// One head pass for predictions and Grad-CAM (batch classification): its logits and own maps
// equal the no-graph forward pass bit for bit, Grad-CAM of classes chosen afterwards equals
// grad_cam's, and no parameter gradient is accumulated.
TEST(GradCam, OneHeadPassGivesTheForwardPassAndGradCam) {
  torch::manual_seed(12);
  for (const char* arch : {"attn_small", "attn_resnet18"}) {
    const auto m = eval_classifier(arch);
    const auto x = torch::randn({3, 3, 64, 64});
    torch::NoGradGuard no_grad;  // as classify runs it
    const auto f = m->forward_features(x);
    const auto plain = m->forward_head(f);
    const auto head = forward_head_for_grad_cam(*m, f);
    EXPECT_TRUE(torch::equal(head.output.logits.detach(), plain.logits)) << arch;
    ASSERT_EQ(head.output.maps.size(), plain.maps.size()) << arch;
    for (const auto& [name, map] : plain.maps)
      EXPECT_TRUE(torch::equal(head.output.maps.at(name).detach(), map)) << arch << " " << name;
    const auto targets = torch::tensor({1, 0, 1}, torch::kLong);
    EXPECT_TRUE(torch::allclose(grad_cam(head, targets), grad_cam(*m, f, targets), 1e-6, 1e-7))
        << arch;
    for (const auto& p : m->parameters()) EXPECT_FALSE(p.grad().defined()) << arch;
  }
}

// Bfloat16 autocast on the calling thread while alive (as classify --precision bf16 runs).
struct Bf16Autocast {
  Bf16Autocast() {
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
  }
  ~Bf16Autocast() {
    at::autocast::set_cpu_enabled(false);
    at::autocast::clear_cache();
  }
};

// Maps from a model run in bfloat16 autocast are computed in float32: rollout's matrix
// products and Grad-CAM's weighted sum, given bfloat16 attention, gradients and features under
// autocast, equal the same functions given their float32 copies with autocast off.
TEST(AttentionRollout, BfloatInputsUnderAutocastAreRolledOutInFloat32) {
  torch::manual_seed(3);
  std::vector<torch::Tensor> attention, gradients, attention32, gradients32;
  for (int l = 0; l < 3; ++l) {
    attention.push_back(torch::softmax(torch::randn({2, 3, 17, 17}), -1).to(torch::kBFloat16));
    gradients.push_back(torch::randn({2, 3, 17, 17}).to(torch::kBFloat16));
    attention32.push_back(attention.back().to(torch::kFloat));
    gradients32.push_back(gradients.back().to(torch::kFloat));
  }
  const auto rollout32 = attention_rollout(attention32, 4, 4);
  const auto gradient32 = gradient_rollout(attention32, gradients32, 4, 4);
  const Bf16Autocast autocast;
  ASSERT_EQ(torch::bmm(attention32[0][0], attention32[1][0]).scalar_type(), torch::kBFloat16);
  const auto rollout = attention_rollout(attention, 4, 4);
  const auto gradient = gradient_rollout(attention, gradients, 4, 4);
  EXPECT_EQ(rollout.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(rollout, rollout32)) << (rollout - rollout32).abs().max();
  EXPECT_EQ(gradient.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(gradient, gradient32)) << (gradient - gradient32).abs().max();
}

TEST(GradCam, BfloatFeaturesUnderAutocastGiveTheFloat32Map) {
  torch::manual_seed(4);
  RegionModelImpl m;
  // logit c = the mean of channel c: every gradient is 1/64, exact in bfloat16 as in float32.
  const auto x = torch::randn({2, 2, 8, 8}).to(torch::kBFloat16);
  const auto targets = torch::tensor({0, 1}, torch::kLong);
  const auto cam32 = grad_cam(m, x.to(torch::kFloat), targets);
  const Bf16Autocast autocast;
  ImageFeatures f;
  f.features = x;
  const auto cam = grad_cam(forward_head_for_grad_cam(m, f), targets);
  EXPECT_EQ(cam.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(cam, cam32)) << (cam - cam32).abs().max();
}

TEST(GradCam, RefusesAVit) {
  VisionTransformer vit(vit_mini_patch8_options());
  EXPECT_THROW(grad_cam(*vit, torch::randn({1, 3, 64, 64})), Error);
}

TEST(VisionTransformer, ReturnsPerLayerPerHeadWeightsOnRequest) {
  torch::manual_seed(9);
  VisionTransformer vit(vit_mini_patch8_options(3));
  vit->eval();
  torch::NoGradGuard g;
  const auto x = torch::randn({2, 3, 64, 64});
  const auto plain = vit->forward(x);
  EXPECT_TRUE(plain.attention.empty());
  EXPECT_TRUE(plain.maps.empty());
  const auto out = vit->forward(x, /*need_attention=*/true);
  ASSERT_EQ(out.attention.size(), 6u);
  EXPECT_EQ(out.attention[0].sizes(), (std::vector<int64_t>{2, 4, 65, 65}));
  EXPECT_TRUE(torch::allclose(out.attention[5].sum(-1), torch::ones({2, 4, 65}), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(out.logits, plain.logits, 1e-5, 1e-6));
  const auto& rollout = out.maps.at("rollout");
  EXPECT_EQ(rollout.sizes(), (std::vector<int64_t>{2, 8, 8}));
  EXPECT_TRUE(torch::allclose(std::get<0>(rollout.flatten(1).max(1)), torch::ones({2})));
}

TEST(VisionTransformer, InterpolatesPositionsForOtherSizes) {
  torch::manual_seed(10);
  VisionTransformer vit(vit_mini_patch8_options(3));
  EXPECT_TRUE(vit->position_embedding(8, 8).equal(vit->pos_embed));
  {
    torch::NoGradGuard g;
    vit->pos_embed.copy_(torch::arange(128, torch::kFloat).view({1, 1, 128}).expand({1, 65, 128}));
  }
  // A position embedding constant over the grid stays constant whatever the grid.
  const auto p = vit->position_embedding(12, 10);
  EXPECT_EQ(p.sizes(), (std::vector<int64_t>{1, 121, 128}));
  EXPECT_TRUE(
      torch::allclose(p, torch::arange(128, torch::kFloat).expand({1, 121, 128}), 1e-4, 1e-4));
  // A random one on a grid that is not square: the formula of bicubic interpolation
  // (align_corners=False, Keys' a = -0.75, taps past the edge take the edge), separable, in
  // double, written apart from LibTorch's interpolate (a swap of height and width fails it).
  {
    torch::NoGradGuard g;
    vit->pos_embed.copy_(torch::randn({1, 65, 128}));
  }
  const auto cubic = [](double t) {  // weights of the taps at -1, 0, 1, 2 from floor(x)
    const double a = -0.75;
    const auto near = [&](double d) { return ((a + 2) * d - (a + 3)) * d * d + 1; };
    const auto far = [&](double d) { return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a; };
    return std::array<double, 4>{far(t + 1), near(t), near(1 - t), far(2 - t)};
  };
  const auto resample = [&](int64_t n, int64_t size) {  // (size, n): output row i from source rows
    auto m = torch::zeros({size, n}, torch::kDouble);
    for (int64_t i = 0; i < size; ++i) {
      const double x =
          (static_cast<double>(i) + 0.5) * static_cast<double>(n) / static_cast<double>(size) - 0.5;
      const auto x0 = static_cast<int64_t>(std::floor(x));
      const auto w = cubic(x - static_cast<double>(x0));
      for (int64_t k = 0; k < 4; ++k) {
        const int64_t src = std::clamp<int64_t>(x0 - 1 + k, 0, n - 1);
        m[i][src] += w[static_cast<std::size_t>(k)];
      }
    }
    return m;
  };
  const auto grid = vit->pos_embed.narrow(1, 1, 64).reshape({8, 8, 128}).to(torch::kDouble);
  const auto expected =
      torch::einsum("ih,hwd,jw->ijd", {resample(8, 12), grid, resample(8, 10)}).reshape({120, 128});
  const auto got = vit->position_embedding(12, 10);
  EXPECT_TRUE(
      torch::allclose(got[0][0].to(torch::kDouble), vit->pos_embed[0][0].to(torch::kDouble)));
  EXPECT_TRUE(torch::allclose(got[0].narrow(0, 1, 120).to(torch::kDouble), expected, 1e-5, 1e-5))
      << (got[0].narrow(0, 1, 120).to(torch::kDouble) - expected).abs().max().item<double>();
  vit->eval();
  EXPECT_EQ(vit->forward(torch::randn({1, 3, 96, 80})).logits.sizes(),
            (std::vector<int64_t>{1, 3}));
}

TEST(VisionTransformer, GradientRolloutGivesAMapPerImage) {
  torch::manual_seed(11);
  VisionTransformer vit(vit_mini_patch8_options(3));
  vit->eval();
  const auto map = vit_gradient_rollout(*vit, torch::randn({2, 3, 64, 64}));
  EXPECT_EQ(map.sizes(), (std::vector<int64_t>{2, 8, 8}));
  EXPECT_GE(map.min().item<float>(), 0.0f);
  EXPECT_LE(map.max().item<float>(), 1.0f);
}

}  // namespace
}  // namespace attnscope::models::vision
