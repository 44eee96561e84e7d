// Faithfulness and localisation measures against hand-built models and brute-force oracles.

#include <cmath>

#include "pipeline/vision/faithfulness.h"
#include "test_support.h"

namespace attnscope::pipeline {
namespace {

constexpr int64_t kSide = 64;

// A "model" whose score depends only on the central 16 × 16 region R of channel 0:
// sigmoid(12 (mean_R(x) - 0.6)). The image is 1 inside R and 0 elsewhere.
struct RegionModel {
  torch::Tensor region = torch::zeros({kSide, kSide});
  RegionModel() { region.slice(0, 24, 40).slice(1, 24, 40).fill_(1); }
  ScoreFn score() const {
    return [r = region](const torch::Tensor& x) {
      const auto mean = (x.select(1, 0) * r).sum({1, 2}) / r.sum();
      return torch::sigmoid(12 * (mean - 0.6));
    };
  }
  torch::Tensor image() const { return region.unsqueeze(0).repeat({3, 1, 1}); }
};

TEST(Faithfulness, TrapezoidMatchesClosedForm) {
  // y = x on 5 equally spaced points: area 1/2 exactly; y = x² on 3 points: (0 + 2·0.25 + 1)/4.
  EXPECT_NEAR(trapezoid_auc(torch::linspace(0, 1, 5)), 0.5, 1e-12);
  EXPECT_NEAR(trapezoid_auc(torch::tensor({0.0, 0.25, 1.0})), 0.375, 1e-12);
}

TEST(Faithfulness, DeletionAndInsertionRankRegionMapAboveRandomAboveComplement) {
  const RegionModel m;
  RiseOptions o;
  o.steps = 32;
  o.blur_sigma = 12;
  o.substrate = torch::zeros({3});
  const auto image = m.image();
  // Maps at a coarser native resolution (16 × 16), as a model would return them.
  const auto native =
      torch::nn::functional::avg_pool2d(m.region.view({1, 1, kSide, kSide}),
                                        torch::nn::functional::AvgPool2dFuncOptions(4))
          .view({16, 16});
  const auto region = rise_auc(m.score(), image, native, o);
  const auto complement = rise_auc(m.score(), image, 1 - native, o);
  const auto random = rise_auc(m.score(), image, random_map(kSide, kSide, "img"), o);
  // Deletion: lower is better; insertion: higher is better.
  EXPECT_LT(region.deletion_auc + 0.2, random.deletion_auc);
  EXPECT_LT(random.deletion_auc + 0.2, complement.deletion_auc);
  EXPECT_GT(region.insertion_auc, random.insertion_auc + 0.2);
  EXPECT_GT(random.insertion_auc, complement.insertion_auc + 0.2);
  // The curves start at the unchanged image (deletion) and end at it (insertion).
  const double full = m.score()(image.unsqueeze(0)).item<double>();
  EXPECT_NEAR(region.deletion_curve[0].item<double>(), full, 1e-6);
  EXPECT_NEAR(region.insertion_curve[o.steps].item<double>(), full, 1e-6);
  EXPECT_EQ(region.deletion_curve.size(0), o.steps + 1);
}

TEST(Faithfulness, DeletionCurveMatchesBruteForce) {
  // 4 × 4 image, 4 steps of 4 pixels: the curve computed pixel by pixel in plain loops.
  const auto image = torch::arange(16, torch::kFloat).view({1, 4, 4}).repeat({3, 1, 1}) / 16;
  const auto map = torch::arange(16, torch::kFloat).flip({0}).view({4, 4});  // raster order
  const ScoreFn score = [](const torch::Tensor& x) { return x.select(1, 0).mean({1, 2}); };
  RiseOptions o;
  o.steps = 4;
  const auto r = rise_auc(score, image, map, o);
  for (int k = 0; k <= 4; ++k) {
    double sum = 0;
    for (int p = 0; p < 16; ++p)
      sum += p < 4 * k ? 0.0 : p / 16.0;
    EXPECT_NEAR(r.deletion_curve[k].item<double>(), sum / 16, 1e-6) << "step " << k;
  }
}

TEST(Faithfulness, LocalisationMeasuresMatchBruteForce) {
  auto map = torch::zeros({8, 8});
  map.index_put_({2, 3}, 4.0);
  map.index_put_({6, 6}, 1.0);
  map.index_put_({0, 0}, 3.0);
  auto mask = torch::zeros({8, 8});
  mask.slice(0, 1, 4).slice(1, 1, 5).fill_(1);  // rows 1-3, columns 1-4: holds (2, 3)
  EXPECT_NEAR(mass_in_mask(map, mask), 4.0 / 8.0, 1e-9);
  EXPECT_EQ(pointing_game(map, mask), 1.0);
  // Min-max normalised ≥ 0.5: (2,3) and (0,0) -> intersection 1, union 12 + 1.
  EXPECT_NEAR(jaccard(map, mask), 1.0 / 13.0, 1e-9);
  EXPECT_TRUE(std::isnan(mass_in_mask(torch::zeros({8, 8}), mask)));
}

TEST(Faithfulness, GaussianPriorIsCentredWithTheGivenSigma) {
  const auto g = gaussian_prior(100, 100, 0.15);
  // Pixel centres at 49.5 and 50.5 are symmetric about the centre 50.
  EXPECT_NEAR(g[49][50].item<float>(), g[50][49].item<float>(), 1e-6);
  // One σ (15 px) from the centre: exp(-1/2) relative to the (near-)peak.
  const double peak = std::exp(-0.5 * (0.5 / 15) * (0.5 / 15) * 2);
  EXPECT_NEAR(g[50][50].item<double>(), peak, 1e-5);
  const double at_sigma = std::exp(-0.5 * ((15.5 / 15) * (15.5 / 15) + (0.5 / 15) * (0.5 / 15)));
  EXPECT_NEAR(g[65][50].item<double>(), at_sigma, 1e-5);
}

TEST(Faithfulness, RandomMapDependsOnlyOnTheKey) {
  EXPECT_TRUE(torch::equal(random_map(5, 7, "a"), random_map(5, 7, "a")));
  EXPECT_FALSE(torch::equal(random_map(5, 7, "a"), random_map(5, 7, "b")));
}

}  // namespace
}  // namespace attnscope::pipeline
