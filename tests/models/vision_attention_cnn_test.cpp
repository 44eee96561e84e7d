// Attention-CNN: spatial attention against a naive loop over positions, map shapes and sums,
// names, Grad-CAM on its last stage.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "attnscope/error.h"
#include "models/vision/attention_cnn.h"
#include "models/vision/explain.h"
#include "models/vision/presets.h"

namespace attnscope::models::vision {
namespace {

using attention::NormKind;

// Naive reference: loops over positions with plain tensor ops on the module's own parameters.
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
};

class SpatialAttentionMatchesNaiveLoop : public testing::TestWithParam<Case> {};

TEST_P(SpatialAttentionMatchesNaiveLoop, ContextAndMap) {
  torch::manual_seed(3);
  const auto p = GetParam();
  SpatialAttention m(SpatialAttentionOptions(p.local_channels, 6)
                         .compatibility(p.compatibility)
                         .normalizer(p.normalizer)
                         .hidden_dim(5));
  const auto l = torch::randn({2, p.local_channels, 3, 4});
  const auto g = torch::randn({2, 6});
  const auto got = m->forward(l, g);
  const auto want = naive(*m, l, g);
  EXPECT_EQ(got.map.sizes(), (std::vector<int64_t>{2, 3, 4}));
  EXPECT_EQ(got.context.size(1), m->out_channels());
  EXPECT_TRUE(torch::allclose(got.map, want.map, 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(got.context, want.context, 1e-5, 1e-6));
}

INSTANTIATE_TEST_SUITE_P(AllScores, SpatialAttentionMatchesNaiveLoop,
                         testing::Values(Case{Compatibility::additive, NormKind::softmax, 4},
                                         Case{Compatibility::additive, NormKind::sigmoid, 4},
                                         Case{Compatibility::dp, NormKind::softmax, 6},
                                         Case{Compatibility::dp, NormKind::sigmoid, 4},
                                         Case{Compatibility::pc, NormKind::softmax, 4},
                                         Case{Compatibility::pc, NormKind::sigmoid, 6}));

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
