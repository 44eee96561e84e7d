// Pieces of image training (pipeline/vision/train.h) with closed-form or brute-force oracles:
// the focal loss, the distillation loss and temperature scaling. The loop itself is tested in
// training_test.cpp and end to end in tests/cli/train_cli_test.cpp.

#include <cmath>
#include <string>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "attnscope/error.h"
#include "pipeline/vision/train.h"

namespace attnscope::pipeline {
namespace {

TEST(FocalLoss, GammaZeroIsCrossEntropyWithLabelSmoothing) {
  torch::manual_seed(1);
  const auto logits = torch::randn({9, 4}, torch::kFloat64);
  const auto labels = torch::randint(0, 4, {9}, torch::kInt64);
  for (double smoothing : {0.0, 0.1}) {
    const auto ce = torch::nn::functional::cross_entropy(
        logits, labels,
        torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(smoothing));
    EXPECT_NEAR(focal_loss(logits, labels, 0.0, smoothing).item<double>(), ce.item<double>(),
                1e-12);
  }
}

TEST(FocalLoss, MatchesTheFormulaOnOneSample) {
  // logits (0, ln 3): p = (1/4, 3/4); label 1 -> -(1 - 3/4)^2 ln(3/4).
  const auto logits = torch::tensor({0.0, std::log(3.0)}, torch::kFloat64).reshape({1, 2});
  const auto labels = torch::tensor({int64_t{1}});
  EXPECT_NEAR(focal_loss(logits, labels, 2.0).item<double>(), -0.0625 * std::log(0.75), 1e-12);
  // Gradients flow (it trains).
  auto x = logits.clone().requires_grad_(true);
  focal_loss(x, labels, 2.0).backward();
  EXPECT_LT(x.grad()[0][1].item<double>(), 0.0);
}

// Soft distillation by its definition, element by element in double: T² · mean over the
// images of Σ_c p_c (ln p_c - ln q_c), p = softmax(teacher / T), q = softmax(student / T).
double soft_distillation_by_hand(const torch::Tensor& student, const torch::Tensor& teacher,
                                 double t) {
  const auto s = student.accessor<double, 2>(), u = teacher.accessor<double, 2>();
  double total = 0.0;
  for (int64_t b = 0; b < student.size(0); ++b) {
    double zs = 0.0, zt = 0.0;
    for (int64_t c = 0; c < student.size(1); ++c) {
      zs += std::exp(s[b][c] / t);
      zt += std::exp(u[b][c] / t);
    }
    for (int64_t c = 0; c < student.size(1); ++c) {
      const double p = std::exp(u[b][c] / t) / zt, q = std::exp(s[b][c] / t) / zs;
      total += p * (std::log(p) - std::log(q));
    }
  }
  return t * t * total / static_cast<double>(student.size(0));
}

TEST(Distillation, SoftIsTheScaledKlDivergenceOfTheTemperedSoftmaxes) {
  torch::manual_seed(3);
  const auto student = torch::randn({7, 3}, torch::kFloat64) * 2;
  const auto teacher = torch::randn({7, 3}, torch::kFloat64) * 2;
  for (const double t : {1.0, 2.0, 4.0})
    EXPECT_NEAR(distillation_loss(student, teacher, "soft", t).item<double>(),
                soft_distillation_by_hand(student, teacher, t), 1e-12)
        << "T = " << t;
  // Zero when the student already says what the teacher says; the teacher gets no gradient.
  EXPECT_NEAR(distillation_loss(teacher, teacher, "soft", 2.0).item<double>(), 0.0, 1e-12);
  auto s = student.clone().requires_grad_(true);
  auto u = teacher.clone().requires_grad_(true);
  distillation_loss(s, u, "soft", 2.0).backward();
  EXPECT_TRUE(s.grad().defined());
  EXPECT_FALSE(u.grad().defined());
  // Its gradient with respect to the student's logits is T (q - p) / B (Hinton et al. 2015).
  const double t = 2.0;
  const auto expected = t * (torch::softmax(student / t, 1) - torch::softmax(teacher / t, 1)) / 7.0;
  EXPECT_LT((s.grad() - expected).abs().max().item<double>(), 1e-12);
}

TEST(Distillation, HardIsCrossEntropyAgainstTheTeachersClass) {
  const auto student = torch::tensor({{0.2, 1.0, -0.5}, {2.0, 0.1, 0.3}}, torch::kFloat64);
  const auto teacher = torch::tensor({{0.0, 0.0, 5.0}, {1.0, 3.0, 0.0}}, torch::kFloat64);
  // Teacher's classes: 2 and 1; -ln softmax(student)[class], averaged.
  const auto ls = torch::log_softmax(student, 1);
  const double expected = -(ls[0][2].item<double>() + ls[1][1].item<double>()) / 2;
  EXPECT_NEAR(distillation_loss(student, teacher, "hard", 1.0).item<double>(), expected, 1e-12);
  EXPECT_THROW(distillation_loss(student, teacher, "medium", 1.0), Error);
  EXPECT_THROW(distillation_loss(student, teacher, "soft", 0.0), Error);
  EXPECT_THROW(distillation_loss(student, teacher.narrow(1, 0, 2), "soft", 1.0), Error);
}

double nll(const torch::Tensor& logits, const torch::Tensor& labels, double t) {
  return torch::nll_loss(torch::log_softmax(logits / t, 1), labels).item<double>();
}

TEST(TemperatureScaling, FindsTheMinimumOfABruteForceGrid) {
  torch::manual_seed(2);
  const int64_t n = 20000;
  // Labels drawn from softmax(z); the model reports 3 z: over-confident by T = 3.
  const auto z = torch::randn({n, 3}, torch::kFloat64) * 1.5;
  const auto labels = torch::multinomial(torch::softmax(z, 1), 1).squeeze(1);
  const auto logits = 3.0 * z;
  const double t = fit_temperature(logits, labels);
  // Brute force, coarse to fine: every 0.05 over [0.5, 8], then every 0.001 within 0.05 of the
  // best. The NLL is convex in 1/T, so it has one minimum and the fine grid brackets it.
  double best_t = 0, best = 1e300;
  const auto search = [&](double from, double to, double step) {
    for (double g = from; g <= to + step / 2; g += step) {
      const double v = nll(logits, labels, g);
      if (v < best) {
        best = v;
        best_t = g;
      }
    }
  };
  search(0.5, 8.0, 0.05);
  search(best_t - 0.05, best_t + 0.05, 0.001);
  EXPECT_NEAR(t, best_t, 0.002);
  EXPECT_LE(nll(logits, labels, t), best + 1e-9);
  EXPECT_NEAR(t, 3.0, 0.3);  // the true over-confidence, with a wide margin
}

TEST(IndexedSource, RefusesIndicesOutOfRange) {
  auto base = std::make_shared<datasets::SyntheticSource>(3, 0);
  EXPECT_THROW(IndexedSource(base, {0, 3}), Error);
  IndexedSource repeated(base, {2, 2, 0});
  EXPECT_EQ(repeated.size(), 3u);
  EXPECT_EQ(repeated.sample(1).image_id, base->sample(2).image_id);
}

TEST(TrainOptionWords, EachListIsAcceptedAndAnyOtherWordIsRefusedByTrainingNamingTheList) {
  EXPECT_EQ(bad_train_word("select-by", "f1"),
            "select-by must be auc, loss, accuracy or balanced_accuracy, got 'f1'");
  EXPECT_EQ(bad_train_word("distill", "medium"), "distill must be soft or hard, got 'medium'");
  EXPECT_THROW(train_option_words("optimizer"), Error);  // no list: a programming error
  const auto base = std::make_shared<datasets::SyntheticSource>(4, 0);
  // The words issue 10 and `attnscope train --help` name, written out here.
  const std::map<std::string, std::vector<std::string>> documented = {
      {"schedule", {"cosine", "step", "constant"}},
      {"loss", {"ce", "weighted-ce", "focal"}},
      {"sampler", {"shuffle", "balanced"}},
      {"select-by", {"auc", "loss", "accuracy", "balanced_accuracy"}},
      {"distill", {"soft", "hard"}},
  };
  for (const auto& [flag, words] : documented) {
    SCOPED_TRACE(flag);
    EXPECT_EQ(train_option_words(flag), words);
    for (const auto& word : words)
      EXPECT_EQ(bad_train_word(flag, word), "");
    // train_image_classifier checks the words before it reads any sample or folder.
    ImageTrainOptions options;
    options.out_dir = "/nonexistent/run";
    std::string* field = flag == "schedule"    ? &options.schedule
                         : flag == "loss"      ? &options.loss
                         : flag == "sampler"   ? &options.sampler
                         : flag == "select-by" ? &options.select_by
                                               : &options.distill;
    *field = words.front() + "x";
    try {
      train_image_classifier(base, base, options);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), "train: " + bad_train_word(flag, *field));
    }
  }
}

}  // namespace
}  // namespace attnscope::pipeline
