// Mask-regularised attention: Dice loss closed forms and the down-sampled lesion mask.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "attnscope/error.h"
#include "pipeline/vision/image_losses.h"

namespace attnscope::pipeline {
namespace {

TEST(DiceLoss, ClosedForms) {
  const auto m = torch::zeros({1, 4, 4});
  m[0].slice(0, 0, 2).slice(1, 0, 2).fill_(1.0);  // Σm = 4
  EXPECT_NEAR(dice_loss(m, m).item<double>(), 0.0, 1e-7);
  // p = 0: 1 - 1 / (0 + 4 + 1).
  EXPECT_NEAR(dice_loss(torch::zeros_like(m), m).item<double>(), 0.8, 1e-7);
  // p = 1: 1 - (2·4 + 1) / (16 + 4 + 1).
  EXPECT_NEAR(dice_loss(torch::ones_like(m), m).item<double>(), 1.0 - 9.0 / 21.0, 1e-6);
}

TEST(AttentionMaskLoss, DownsamplesTheMaskAndWeightsEachMap) {
  auto mask = torch::zeros({1, 8, 8});
  mask[0].slice(0, 0, 4).slice(1, 0, 4).fill_(1.0);  // top-left quarter
  auto target = torch::tensor({1.0f, 0.0f, 0.0f, 0.0f}).view({1, 2, 2});
  // A map equal to the down-sampled mask costs nothing.
  EXPECT_NEAR(attention_mask_loss({{"stage4", target}}, mask).item<double>(), 0.0, 1e-7);
  // A uniform softmax map (0.25 each) is rescaled to ones: Dice 1 - (2 + 1) / (4 + 1 + 1).
  const auto uniform = torch::full({1, 2, 2}, 0.25f).requires_grad_(true);
  const auto loss = attention_mask_loss({{"stage3", uniform}, {"stage4", uniform}}, mask);
  EXPECT_NEAR(loss.item<double>(), (0.001 + 0.01) * 0.5, 1e-7);
  loss.backward();
  EXPECT_TRUE(uniform.grad().defined());
  AttentionMaskLossOptions only3;
  only3.weights = {{"stage3", 1.0}};
  only3.default_weight = 0.0;
  EXPECT_NEAR(
      attention_mask_loss({{"stage3", uniform}, {"stage4", uniform}}, mask, only3).item<double>(),
      0.5, 1e-6);
  EXPECT_THROW(attention_mask_loss({{"stage3", uniform}}, torch::zeros({2, 8, 8})), Error);
}

}  // namespace
}  // namespace attnscope::pipeline
