// Attention-CNN: spatial attention against a naive loop over positions, map shapes and sums,
// names, Grad-CAM on its last stage.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <utility>

#include "attnscope/error.h"
#include "models/vision/attention_cnn.h"
#include "models/vision/explain.h"
#include "models/vision/presets.h"

namespace attnscope::models::vision {
namespace {

using attention::NormKind;

// Naive reference: loops over positions with plain tensor ops on the module's own parameters.
// Grid gating: the gating map is either on l's grid or 1×1 (whose bilinear up-sampling is the
// same vector everywhere).
SpatialAttentionOutput naive(SpatialAttentionImpl& m, const torch::Tensor& l,
                             const torch::Tensor& g) {
  const int64_t B = l.size(0), h = l.size(2), w = l.size(3);
  std::vector<torch::Tensor> contexts, maps;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<torch::Tensor> values, scores;
    for (int64_t i = 0; i < h; ++i) {
      for (int64_t j = 0; j < w; ++j) {
        auto v = l[b].select(1, i).select(1, j);  // (C)
        torch::Tensor s;
        if (m.options.gating() == Gating::grid) {
          const auto gq = g.size(2) == 1 ? g[b].select(1, 0).select(1, 0)
                                         : g[b].select(1, i).select(1, j);  // (Cg)
          auto hidden = torch::relu(torch::mv(m.W_g->weight.flatten(1), gq) +
                                    torch::mv(m.W_l->weight.flatten(1), v));
          s = torch::dot(m.phi->weight.view({-1}), hidden) + m.phi->bias[0];
          values.push_back(v);
          scores.push_back(s);
          continue;
        }
        switch (m.options.compatibility()) {
          case Compatibility::additive: {
            auto& a = *m.score;
            // AttnMel: ReLU between the 1×1 convs (not Bahdanau's tanh).
            auto hidden = torch::relu(torch::mv(a.query_proj->weight, g[b]) +
                                      torch::mv(a.key_proj->weight, v) + a.key_proj->bias);
            s = torch::dot(a.v->weight.view({-1}), hidden);
            break;
          }
          case Compatibility::dp:
          case Compatibility::pc: {
            if (m.projector) v = torch::mv(m.projector->weight.flatten(1), v);
            s = m.options.compatibility() == Compatibility::dp ? torch::dot(v, g[b])
                                                               : torch::dot(m.u, v + g[b]);
            break;
          }
        }
        values.push_back(v);
        scores.push_back(s);
      }
    }
    auto sc = torch::stack(scores);  // (K)
    auto wts = m.options.normalizer() == NormKind::softmax
                   ? torch::exp(sc - sc.max()) / torch::exp(sc - sc.max()).sum()
                   : 1.0 / (1.0 + torch::exp(-sc));
    auto ctx = (wts.unsqueeze(1) * torch::stack(values)).sum(0);
    if (m.options.normalizer() == NormKind::sigmoid) ctx = ctx / (h * w);
    contexts.push_back(ctx);
    maps.push_back(wts.view({h, w}));
  }
  return {torch::stack(contexts), torch::stack(maps)};
}

struct Case {
  Compatibility compatibility;
  NormKind normalizer;
  int64_t local_channels;
  Gating gating = Gating::global;
  int64_t gate_side = 3;  // grid gating: the gating map's side (3 = l's rows, 1 = one vector)
};

class SpatialAttentionMatchesNaiveLoop : public testing::TestWithParam<Case> {};

TEST_P(SpatialAttentionMatchesNaiveLoop, ContextAndMap) {
  torch::manual_seed(3);
  const auto p = GetParam();
  SpatialAttention m(SpatialAttentionOptions(p.local_channels, 6)
                         .compatibility(p.compatibility)
                         .gating(p.gating)
                         .normalizer(p.normalizer)
                         .hidden_dim(5));
  if (m->phi) {
    torch::NoGradGuard no_grad;
    m->phi->bias.fill_(0.3);  // initialised to 0; sigmoid weights depend on it
  }
  const auto l = torch::randn({2, p.local_channels, 3, 4});
  const auto g = p.gating == Gating::grid
                     ? torch::randn({2, 6, p.gate_side, p.gate_side == 1 ? 1 : 4})
                     : torch::randn({2, 6});
  const auto got = m->forward(l, g);
  const auto want = naive(*m, l, g);
  EXPECT_EQ(got.map.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(got.context.size(1), m->out_channels());
  EXPECT_TRUE(torch::allclose(got.map, want.map, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(got.context, want.context, 1e-5, 1e-6));

  // Gradients too (the additive key projection runs as a 1×1 convolution on CPU, not as the
  // score's Linear): every parameter's and both inputs', against the naive loop's autograd.
  const auto lq = l.clone().requires_grad_(true), gq = g.clone().requires_grad_(true);
  std::vector<torch::Tensor> wrt = {lq, gq};
  for (const auto& q : m->parameters())
    wrt.push_back(q);
  const auto weights_c = torch::randn({2, m->out_channels()});
  const auto weights_m = torch::randn({2, 3, 4});
  auto loss = [&](const SpatialAttentionOutput& o) {
    return (o.context * weights_c).sum() + (o.map * weights_m).sum();
  };
  const auto grads_got = torch::autograd::grad({loss(m->forward(lq, gq))}, wrt, {}, false, false,
                                               /*allow_unused=*/true);
  const auto grads_want = torch::autograd::grad({loss(naive(*m, lq, gq))}, wrt, {}, false, false,
                                                /*allow_unused=*/true);
  ASSERT_EQ(grads_got.size(), grads_want.size());
  for (std::size_t i = 0; i < grads_got.size(); ++i) {
    ASSERT_EQ(grads_got[i].defined(), grads_want[i].defined()) << i;
    if (grads_got[i].defined()) {
      EXPECT_TRUE(torch::allclose(grads_got[i], grads_want[i], 1e-4, 1e-5))
          << i << "\n"
          << grads_got[i] << "\n"
          << grads_want[i];
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllScores, SpatialAttentionMatchesNaiveLoop,
    testing::Values(Case{Compatibility::additive, NormKind::softmax, 4},
                    Case{Compatibility::additive, NormKind::sigmoid, 4},
                    Case{Compatibility::dp, NormKind::softmax, 6},
                    Case{Compatibility::dp, NormKind::sigmoid, 4},
                    Case{Compatibility::pc, NormKind::softmax, 4},
                    Case{Compatibility::pc, NormKind::sigmoid, 6},
                    Case{Compatibility::additive, NormKind::sigmoid, 4, Gating::grid, 3},
                    Case{Compatibility::additive, NormKind::softmax, 4, Gating::grid, 1}));

// A model whose logit depends on one region of pool-3 only: l (N, 2, 8, 8) plays pool-3
// (channel 0 noise, channel 1 one: a feature with a positive mean, as after a ReLU), G (N, 2, 2,
// 2) plays pool-5 (channel 0 one-hot on one coarse cell, a different cell per image; channel 1
// one). The target logit is the mean of channel 0 over the 4×4 quadrant under that cell. Channel
// 0 is the same noise everywhere, so only the gate tells the quadrant apart.
struct RegionTask {
  torch::Tensor local, gate, target, quadrant;
};

RegionTask region_task(int64_t n) {
  RegionTask t;
  t.quadrant = torch::randint(0, 4, {n}, torch::kLong);
  t.local = torch::ones({n, 2, 8, 8});
  t.local.select(1, 0).normal_();
  t.gate = torch::ones({n, 2, 2, 2});
  t.gate.select(1, 0).zero_();
  t.target = torch::empty({n});
  for (int64_t i = 0; i < n; ++i) {
    const int64_t q = t.quadrant[i].item<int64_t>(), r = q / 2, c = q % 2;
    t.gate[i][0][r][c] = 1.0;
    t.target[i] = t.local[i][0].slice(0, 4 * r, 4 * r + 4).slice(1, 4 * c, 4 * c + 4).mean();
  }
  return t;
}

class GridAttentionFindsTheRegion : public testing::TestWithParam<NormKind> {};

// Returns {R² of the logit, fraction of images whose largest map weight is in the quadrant}.
std::pair<double, double> train_on_region_task(NormKind normalizer, uint64_t seed) {
  // Tensors of a few thousand elements: OpenMP threads only add synchronisation (minutes on a
  // loaded machine instead of seconds).
  const int threads = torch::get_num_threads();
  torch::set_num_threads(1);
  torch::manual_seed(seed);
  SpatialAttention attn(
      SpatialAttentionOptions(2, 2).gating(Gating::grid).normalizer(normalizer).hidden_dim(8));
  torch::nn::Linear head(2, 1);
  auto params = attn->parameters();
  for (const auto& p : head->parameters())
    params.push_back(p);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(0.03));
  const auto train = region_task(256);
  for (int step = 0; step < 300; ++step) {
    opt.zero_grad();
    const auto logit = head(attn(train.local, train.gate).context).squeeze(1);
    torch::mse_loss(logit, train.target).backward();
    opt.step();
  }
  torch::NoGradGuard no_grad;
  const auto test = region_task(200);
  const auto out = attn(test.local, test.gate);
  const auto logit = head(out.context).squeeze(1);
  const auto r2 = 1.0 - (logit - test.target).pow(2).mean() / test.target.var();
  const auto argmax = out.map.flatten(1).argmax(1);  // (N) over 8·8
  const auto row = argmax.div(8, "floor"), col = argmax.remainder(8);
  const auto quadrant = row.div(4, "floor") * 2 + col.div(4, "floor");
  torch::set_num_threads(threads);
  return {r2.item<double>(), quadrant.eq(test.quadrant).to(torch::kDouble).mean().item<double>()};
}

// Seed 1 trains well for both normalisers here (R² 0.95, every map's maximum in the
// quadrant). Of seeds 1-12, one (softmax) or two (sigmoid) end in a dead start (R² ~0), and
// another CPU's kernels take another trajectory from the same seed: the test is about where a
// trained map points, not about every initialisation training, so it tries up to four seeds
// and asks that one of them trains (all four dead: about 1 in 1000 at the measured rate).
// A seed counts when both hold: the logit follows the region (R² well above what a uniform
// average gives, 1/4) and the map's largest weight lies in the quadrant for most images
// (chance: 1/4; 1.0 was measured for the seeds that train).
TEST_P(GridAttentionFindsTheRegion, MapIsLargestWhereTheLogitDependsOn) {
  std::string tried;
  bool found = false;
  for (uint64_t seed = 1; seed <= 4 && !found; ++seed) {
    const auto [r2, in_quadrant] = train_on_region_task(GetParam(), seed);
    found = r2 >= 0.7 && in_quadrant >= 0.8;
    tried += concat("seed ", seed, ": R² ", r2, ", maximum in the quadrant ", in_quadrant, "\n");
  }
  EXPECT_TRUE(found) << tried;
}

INSTANTIATE_TEST_SUITE_P(SigmoidAndSoftmax, GridAttentionFindsTheRegion,
                         testing::Values(NormKind::sigmoid, NormKind::softmax));

std::shared_ptr<ImageClassifier> make(const std::string& arch, const std::string& norm = "") {
  ImageModelConfig c;
  c.arch = arch;
  c.num_classes = 3;
  if (!norm.empty()) c.normalizer = norm;
  return make_image_classifier(c);
}

TEST(AttentionCnn, SoftmaxMapsSumToOnePerImage) {
  torch::manual_seed(4);
  for (const char* arch : {"attn_small", "attn_resnet18"}) {
    auto m = make(arch);
    m->eval();
    torch::NoGradGuard g;
    const auto out = m->forward(torch::randn({3, 3, 64, 64}));
    ASSERT_EQ(out.maps.size(), 2u) << arch;
    for (const auto& [name, map] : out.maps) {
      EXPECT_EQ(map.size(0), 3);
      EXPECT_TRUE(torch::allclose(map.sum({1, 2}), torch::ones({3}), 1e-5, 1e-6))
          << arch << " " << name;
    }
    EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{3, 3}));
  }
}

TEST(AttentionCnn, AttnVgg16MapsArePool3AndPool4InUnitInterval) {
  torch::manual_seed(5);
  auto m = make("attn_vgg16");
  m->eval();
  torch::NoGradGuard g;
  const auto out = m->forward(torch::randn({1, 3, 64, 64}));
  ASSERT_TRUE(out.maps.count("stage3") && out.maps.count("stage4"));
  EXPECT_EQ(out.maps.at("stage3").sizes(), (std::vector<int64_t>{1, 8, 8}));  // pool3: 64 / 8
  EXPECT_EQ(out.maps.at("stage4").sizes(), (std::vector<int64_t>{1, 4, 4}));  // pool4: 64 / 16
  for (const auto& [name, map] : out.maps) {
    EXPECT_GE(map.min().item<float>(), 0.0f);
    EXPECT_LE(map.max().item<float>(), 1.0f);
  }
  EXPECT_EQ(m->map_names(), (std::vector<std::string>{"stage3", "stage4"}));
}

// AttnMel's AttentionBlock names and shapes per stage (pool-3: 256 channels, pool-4: 512; the
// pool-5 gate: 512; 256 attention features), so its weights load by a renaming of prefixes.
TEST(AttentionCnn, AttnVgg16HasAttnMelsGridAttentionNamesShapesAndInit) {
  torch::manual_seed(7);
  auto m = make("attn_vgg16");
  const auto params = m->named_parameters();
  const std::map<std::string, std::vector<int64_t>> want = {
      {"attention.0.W_l.weight", {256, 256, 1, 1}}, {"attention.0.W_g.weight", {256, 512, 1, 1}},
      {"attention.0.phi.weight", {1, 256, 1, 1}},   {"attention.0.phi.bias", {1}},
      {"attention.1.W_l.weight", {256, 512, 1, 1}}, {"attention.1.W_g.weight", {256, 512, 1, 1}},
      {"attention.1.phi.weight", {1, 256, 1, 1}},   {"attention.1.phi.bias", {1}},
      {"classifier.weight", {3, 512 + 256 + 512}},  {"classifier.bias", {3}}};
  for (const auto& [name, shape] : want) {
    ASSERT_TRUE(params.contains(name)) << name;
    EXPECT_EQ(params[name].sizes(), shape) << name;
  }
  std::size_t attention_params = 0;
  for (const auto& p : params)
    attention_params += p.key().rfind("attention.", 0) == 0;
  EXPECT_EQ(attention_params, 8u);  // nothing else: no global-gating score left over
  // Kaiming normal, fan-in, ReLU gain: std sqrt(2 / fan_in); classifier N(0, 0.01); zero biases.
  for (const auto& [name, fan_in] : {std::pair{"attention.0.W_l.weight", 256},
                                     {"attention.1.W_l.weight", 512},
                                     {"attention.1.W_g.weight", 512},
                                     {"attention.0.phi.weight", 256}}) {
    const double std = params[name].std().item<double>(), want_std = std::sqrt(2.0 / fan_in);
    EXPECT_NEAR(std, want_std, 0.2 * want_std) << name;
  }
  EXPECT_NEAR(params["classifier.weight"].std().item<double>(), 0.01, 0.002);
  for (const char* name : {"attention.0.phi.bias", "attention.1.phi.bias", "classifier.bias"})
    EXPECT_EQ(params[name].abs().max().item<float>(), 0.0f) << name;
}

TEST(AttentionCnn, GatingIsAPresetValueAndGridNeedsTheAdditiveScore) {
  ImageModelConfig c;
  c.arch = "attn_vgg16";
  EXPECT_EQ(*resolve_image_config(c).gating, "grid");
  for (const char* arch : {"attn_small", "attn_resnet18"}) {
    c.arch = arch;
    EXPECT_EQ(*resolve_image_config(c).gating, "global") << arch;
  }
  c.arch = "resnet18";
  c.gating = "grid";
  EXPECT_FALSE(resolve_image_config(c).gating.has_value());
  c.arch = "attn_small";
  c.gating = "grid";
  c.compatibility = "dp";
  EXPECT_THROW(make_image_classifier(c), Error);
  c.gating = "pool5";
  c.compatibility = "additive";
  EXPECT_THROW(make_image_classifier(c), Error);
  EXPECT_EQ(gating_from_string("grid"), Gating::grid);
  EXPECT_EQ(to_string(Gating::global), "global");
}

TEST(AttentionCnn, NamesKeepTheTorchvisionTrunkAtTheRoot) {
  auto m = make("attn_resnet18");
  const auto params = m->named_parameters();
  for (const char* n : {"conv1.weight", "layer3.1.conv2.weight", "attention.0.projector.weight",
                        "attention.1.u", "classifier.weight"})
    EXPECT_TRUE(params.contains(n)) << n;
  EXPECT_FALSE(params.contains("fc.weight"));
  auto a = make("attn_small");
  EXPECT_TRUE(a->named_parameters().contains("attention.0.score.query_proj.weight"));
  EXPECT_TRUE(a->named_parameters().contains("features.0.weight"));
}

TEST(AttentionCnn, GradCamOnTheLastStage) {
  torch::manual_seed(6);
  auto m = make("attn_small");
  m->eval();
  const auto cam = grad_cam(*m, torch::randn({2, 3, 64, 64}));
  EXPECT_EQ(cam.sizes(), (std::vector<int64_t>{2, 4, 4}));  // 64 / 16
  EXPECT_GE(cam.min().item<float>(), 0.0f);
  EXPECT_LE(cam.max().item<float>(), 1.0f);
}

TEST(AttentionCnn, RejectsBadStages) {
  EXPECT_THROW(AttentionCnn(AttentionCnnOptions("small_cnn", {4})), Error);
  EXPECT_THROW(AttentionCnn(AttentionCnnOptions("small_cnn", {1, 1})), Error);
  EXPECT_THROW(AttentionCnn(AttentionCnnOptions("alexnet", {1})), Error);
}

}  // namespace
}  // namespace attnscope::models::vision
