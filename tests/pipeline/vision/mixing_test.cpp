// Mixup and CutMix (pipeline/vision/mixing.h) against brute force: pixel loops, timm's
// rand_bbox worked by hand, the moments of Beta(α, α), and the mixed loss against PyTorch's
// cross-entropy with probability targets.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "attnscope/error.h"
#include "pipeline/vision/mixing.h"

namespace attnscope::pipeline {
namespace {

TEST(Mixing, MixupBlendsEachImageWithItsReverse) {
  torch::manual_seed(1);
  const auto x = torch::randn({5, 3, 4, 6});
  const double lambda = 0.3;
  const auto out = mixup_reversed(x, lambda);
  for (int64_t i = 0; i < 5; ++i)
    EXPECT_TRUE(torch::allclose(out[i], x[i] * lambda + x[4 - i] * (1 - lambda), 0, 1e-6)) << i;
}

// timm's rand_bbox by hand: cut_rat = sqrt(1 - λ), cut = int(side · cut_rat), the box
// [c - cut // 2, c + cut // 2) clipped to the image.
TEST(Mixing, CutmixBoxIsTimmsRandBbox) {
  auto b = cutmix_box(10, 20, 0.75, 5, 10);  // cut 5 x 10 -> half 2 x 5
  EXPECT_EQ(std::vector<int64_t>({b.y0, b.y1, b.x0, b.x1}), std::vector<int64_t>({3, 7, 5, 15}));
  b = cutmix_box(10, 20, 0.75, 0, 19);  // clipped at the top and the right
  EXPECT_EQ(std::vector<int64_t>({b.y0, b.y1, b.x0, b.x1}), std::vector<int64_t>({0, 2, 14, 20}));
  b = cutmix_box(10, 20, 0.0, 5, 10);  // λ = 0: the whole image (cut 10 x 20)
  EXPECT_EQ(b.area(), 200);
  EXPECT_EQ(cutmix_box(10, 20, 1.0, 5, 10).area(), 0);  // λ = 1: nothing
}

TEST(Mixing, CutmixPastesTheBoxFromTheReverseAndNothingElse) {
  torch::manual_seed(2);
  const auto x = torch::randn({4, 2, 7, 9});
  const MixBox box{1, 5, 2, 8};
  const auto out = cutmix_reversed(x, box);
  const auto xa = x.accessor<float, 4>();
  const auto oa = out.accessor<float, 4>();
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t c = 0; c < 2; ++c)
      for (int64_t y = 0; y < 7; ++y)
        for (int64_t v = 0; v < 9; ++v) {
          const bool inside = y >= 1 && y < 5 && v >= 2 && v < 8;
          ASSERT_EQ(oa[i][c][y][v], inside ? xa[3 - i][c][y][v] : xa[i][c][y][v])
              << i << " " << c << " " << y << " " << v;
        }
}

// Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1)); 4,000 draws (standard error of the mean
// 0.006 at most) checked with wide margins.
TEST(Mixing, BetaDrawsHaveTheClosedFormMoments) {
  torch::manual_seed(3);
  for (const double alpha : {0.2, 1.0, 4.0}) {
    const int n = 4000;
    double sum = 0, sum2 = 0;
    int below = 0;
    for (int i = 0; i < n; ++i) {
      const double l = sample_beta(alpha);
      ASSERT_GE(l, 0.0);
      ASSERT_LE(l, 1.0);
      sum += l;
      sum2 += l * l;
      below += l < 0.1;
    }
    const double mean = sum / n, var = sum2 / n - mean * mean;
    const double expected_var = 1.0 / (4.0 * (2.0 * alpha + 1.0));
    EXPECT_NEAR(mean, 0.5, 0.03) << alpha;
    EXPECT_NEAR(var / expected_var, 1.0, 0.15) << alpha;
    if (alpha == 1.0) {
      EXPECT_NEAR(below / static_cast<double>(n), 0.1, 0.03);  // uniform
    }
  }
  EXPECT_THROW(sample_beta(0.0), Error);
}

// Image i filled with the value i: the share of pixels still holding i is the λ mix_batch
// reports for CutMix, and for Mixup λ follows from any pixel; masks are mixed as the images.
TEST(Mixing, MixBatchReportsTheLambdaItApplied) {
  const int64_t b = 6, h = 16, w = 12;
  const auto values = torch::arange(b, torch::kFloat).view({b, 1, 1, 1});
  const auto images = values.expand({b, 3, h, w}).contiguous();
  const auto masks = values.expand({b, 1, h, w}).contiguous();
  torch::manual_seed(4);
  int cutmixes = 0, mixups = 0;
  for (int round = 0; round < 40; ++round) {
    const auto m = mix_batch(images, masks, MixOptions{0.8, 1.0});
    ASSERT_EQ(m.images.sizes(), images.sizes());
    EXPECT_TRUE(torch::equal(m.masks, m.images.narrow(1, 0, 1)));
    if (m.cutmix) {
      ++cutmixes;
      const double own = m.images[0].eq(0).to(torch::kDouble).mean().item<double>();
      EXPECT_NEAR(m.lambda, own, 1e-12);
      EXPECT_TRUE(m.images[0].eq(0).logical_or(m.images[0].eq(b - 1)).all().item<bool>());
    } else {
      ++mixups;
      // Image 0 is λ·0 + (1 - λ)·(b - 1) everywhere.
      EXPECT_TRUE(torch::allclose(m.images[0], torch::full({3, h, w}, (1 - m.lambda) * (b - 1)),
                                  0, 1e-5));
    }
  }
  EXPECT_GT(cutmixes, 5);  // p = 0.5 each: 40 draws
  EXPECT_GT(mixups, 5);
  // One kind alone; the same seed draws the same mix; off leaves the batch alone.
  torch::manual_seed(5);
  const auto a = mix_batch(images, {}, MixOptions{0.0, 1.0});
  torch::manual_seed(5);
  const auto again = mix_batch(images, {}, MixOptions{0.0, 1.0});
  EXPECT_TRUE(a.cutmix);
  EXPECT_FALSE(a.masks.defined());
  EXPECT_TRUE(torch::equal(a.images, again.images));
  EXPECT_EQ(a.lambda, again.lambda);
  EXPECT_FALSE(mix_batch(images, {}, MixOptions{0.4, 0.0}).cutmix);
  const auto off = mix_batch(images, masks, MixOptions{});
  EXPECT_EQ(off.lambda, 1.0);
  EXPECT_TRUE(torch::equal(off.images, images));
}

// For cross-entropy, λ L(y) + (1 - λ) L(reversed y) is the cross-entropy against the mixed
// one-hot targets, which PyTorch computes from probability targets.
TEST(Mixing, MixedCrossEntropyIsCrossEntropyWithMixedTargets) {
  torch::manual_seed(6);
  const auto logits = torch::randn({7, 3});
  const auto labels = torch::tensor({0, 2, 1, 1, 0, 2, 2}, torch::kLong);
  const double lambda = 0.35;
  const auto ce = [&](const torch::Tensor& y) {
    return torch::nn::functional::cross_entropy(logits, y);
  };
  const auto targets = torch::one_hot(labels, 3).to(torch::kFloat) * lambda +
                       torch::one_hot(labels.flip(0), 3).to(torch::kFloat) * (1 - lambda);
  EXPECT_NEAR(mixed_loss(ce, labels, lambda).item<double>(),
              torch::nn::functional::cross_entropy(logits, targets).item<double>(), 1e-6);
  EXPECT_NEAR(mixed_loss(ce, labels, 1.0).item<double>(), ce(labels).item<double>(), 0);
}

}  // namespace
}  // namespace attnscope::pipeline
