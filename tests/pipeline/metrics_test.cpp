// pipeline/metrics against scikit-learn (Debian's python3-sklearn, run by
// tests/python/metrics_oracle.py on the same labels and probabilities), brute force for ECE,
// and closed forms (all-tied AUC, Hanley-McNeil width of the bootstrap interval).

#include <cmath>
#include <fstream>
#include <random>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "pipeline/metrics.h"
#include "test_support.h"

namespace attnscope {
namespace {

using pipeline::compute_metrics;
using pipeline::MetricsOptions;

/// Runs the sklearn oracle on labels and probabilities; returns its JSON.
nlohmann::json sklearn_oracle(const std::vector<int64_t>& labels, const torch::Tensor& p,
                              double threshold = 0.5, int64_t bins = 15) {
  test::TempDir dir;
  nlohmann::json in;
  in["labels"] = labels;
  const auto pd = p.to(torch::kDouble).contiguous();
  auto rows = nlohmann::json::array();
  for (int64_t i = 0; i < pd.size(0); ++i) {
    auto row = nlohmann::json::array();
    for (int64_t k = 0; k < pd.size(1); ++k)
      row.push_back(pd[i][k].item<double>());
    rows.push_back(row);
  }
  in["probabilities"] = rows;
  in["threshold"] = threshold;
  in["bins"] = bins;
  std::ofstream(dir / "in.json") << in.dump();
  const auto r = test::run_process(test::python() + " " + ATTNSCOPE_SOURCE_DIR +
                                   "/tests/python/metrics_oracle.py " + (dir / "in.json") + " " +
                                   (dir / "out.json"));
  EXPECT_EQ(r.status, 0) << r.output;
  std::ifstream f(dir / "out.json");
  return nlohmann::json::parse(f);
}

/// Binary scores on a coarse grid (many ties), higher for positives.
void binary_case(int64_t n, uint64_t seed, std::vector<int64_t>& labels,
                 std::vector<double>& scores) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> noise(0, 1);
  labels.clear();
  scores.clear();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = (i % 3 == 0) ? 1 : 0;
    const double logit = 1.2 * y - 0.6 + noise(rng);
    labels.push_back(y);
    scores.push_back(std::round(20.0 / (1 + std::exp(-logit))) / 20.0);  // 21 distinct values
  }
}

torch::Tensor binary_probabilities(const std::vector<double>& scores) {
  auto p = torch::empty({static_cast<int64_t>(scores.size()), 2}, torch::kDouble);
  for (size_t i = 0; i < scores.size(); ++i) {
    p[i][0] = 1 - scores[i];
    p[i][1] = scores[i];
  }
  return p;
}

void expect_near_vector(const std::vector<double>& got, const nlohmann::json& want,
                        const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i].get<double>(), 1e-12) << what << " " << i;
}

void expect_confusion(const std::vector<std::vector<int64_t>>& got, const nlohmann::json& want) {
  EXPECT_EQ(nlohmann::json(got), want);
}

void expect_reliability(const pipeline::ClassificationMetrics& m, const nlohmann::json& want) {
  ASSERT_EQ(m.reliability.size(), want.size());
  for (size_t b = 0; b < want.size(); ++b) {
    EXPECT_EQ(m.reliability[b].count, want[b][0].get<int64_t>()) << "bin " << b;
    if (want[b][1].is_null()) {
      EXPECT_TRUE(std::isnan(m.reliability[b].mean_confidence));
    } else {
      EXPECT_NEAR(m.reliability[b].mean_confidence, want[b][1].get<double>(), 1e-12);
      EXPECT_NEAR(m.reliability[b].accuracy, want[b][2].get<double>(), 1e-12);
    }
  }
}

TEST(Metrics, BinaryMatchesSklearnWithTies) {
  std::vector<int64_t> y;
  std::vector<double> s;
  binary_case(301, 7, y, s);
  const auto p = binary_probabilities(s);
  for (double threshold : {0.5, 0.3}) {
    const auto want = sklearn_oracle(y, p, threshold);
    MetricsOptions options;
    options.threshold = threshold;
    options.bootstrap_resamples = 0;
    const auto m = compute_metrics(y, p, options);
    EXPECT_NEAR(m.auc, want["auc"].get<double>(), 1e-12);
    EXPECT_NEAR(m.average_precision, want["ap"].get<double>(), 1e-12);
    EXPECT_NEAR(m.balanced_accuracy, want["balanced_accuracy"].get<double>(), 1e-12);
    EXPECT_NEAR(m.brier, want["brier"].get<double>(), 1e-12);
    EXPECT_NEAR(m.log_loss, want["log_loss"].get<double>(), 1e-12);
    EXPECT_NEAR(m.ece, want["ece"].get<double>(), 1e-12);
    expect_confusion(m.confusion, want["confusion"]);
    expect_reliability(m, want["reliability"]);
    // Sensitivity/specificity from sklearn's confusion matrix.
    const auto& c = want["confusion"];
    const double tp = c[1][1], fn = c[1][0], tn = c[0][0], fp = c[0][1];
    EXPECT_NEAR(m.sensitivity, tp / (tp + fn), 1e-12);
    EXPECT_NEAR(m.specificity, tn / (tn + fp), 1e-12);

    // The curves: every point, and the standalone functions agree with compute_metrics.
    const auto roc = pipeline::roc_curve(y, s);
    expect_near_vector(roc.fpr, want["roc"]["fpr"], "fpr");
    expect_near_vector(roc.tpr, want["roc"]["tpr"], "tpr");
    EXPECT_TRUE(std::isinf(roc.thresholds[0]));
    expect_near_vector({roc.thresholds.begin() + 1, roc.thresholds.end()},
                       want["roc"]["thresholds"], "roc thresholds");
    const auto pr = pipeline::precision_recall_curve(y, s);
    expect_near_vector(pr.precision, want["pr"]["precision"], "precision");
    expect_near_vector(pr.recall, want["pr"]["recall"], "recall");
    expect_near_vector({pr.thresholds.begin() + 1, pr.thresholds.end()}, want["pr"]["thresholds"],
                       "pr thresholds");
    EXPECT_EQ(m.per_class[1].roc.fpr, roc.fpr);
    EXPECT_DOUBLE_EQ(pipeline::roc_auc(y, s), m.auc);
    EXPECT_DOUBLE_EQ(pipeline::average_precision(y, s), m.average_precision);
  }
}

TEST(Metrics, UnroundedScoresMatchSklearn) {
  // Continuous scores (no ties), a float32 tensor as a model produces.
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<int64_t> y;
  for (int i = 0; i < 200; ++i)
    y.push_back(u(rng) < 0.3 ? 1 : 0);
  auto logits = torch::randn({200, 2}, torch::TensorOptions().dtype(torch::kFloat));
  for (int i = 0; i < 200; ++i)
    logits[i][y[i]] += 0.8;
  const auto p = torch::softmax(logits, 1);
  const auto want = sklearn_oracle(y, p);
  MetricsOptions options;
  options.bootstrap_resamples = 0;
  const auto m = compute_metrics(y, p, options);
  EXPECT_NEAR(m.auc, want["auc"].get<double>(), 1e-12);
  EXPECT_NEAR(m.average_precision, want["ap"].get<double>(), 1e-12);
  // sklearn renormalises each row; float32 softmax rows sum to 1 only within ~1e-7.
  EXPECT_NEAR(m.log_loss, want["log_loss"].get<double>(), 1e-6);
  EXPECT_NEAR(m.brier, want["brier"].get<double>(), 1e-12);
  EXPECT_NEAR(m.ece, want["ece"].get<double>(), 1e-12);
  expect_confusion(m.confusion, want["confusion"]);
}

TEST(Metrics, TiesCountHalf) {
  // Closed forms: all scores tied -> 0.5; one positive tied with one of two negatives
  // (the other below) -> (1 + 0.5) / 2.
  EXPECT_DOUBLE_EQ(pipeline::roc_auc({0, 1, 0, 1, 1}, {0.3, 0.3, 0.3, 0.3, 0.3}), 0.5);
  EXPECT_DOUBLE_EQ(pipeline::roc_auc({1, 0, 0}, {0.7, 0.7, 0.1}), 0.75);
  EXPECT_DOUBLE_EQ(pipeline::roc_auc({1, 0}, {0.9, 0.1}), 1.0);
  EXPECT_DOUBLE_EQ(pipeline::roc_auc({1, 0}, {0.1, 0.9}), 0.0);
}

TEST(Metrics, SingleClassIsAClearError) {
  const std::vector<int64_t> y = {0, 0, 0};
  const std::vector<double> s = {0.1, 0.4, 0.2};
  const std::vector<std::string> names = {"benign", "malignant"};
  EXPECT_EQ(test::error_of([&] { pipeline::roc_auc(y, s, names); }),
            "AUC needs both classes; the set holds only 'benign'");
  EXPECT_EQ(test::error_of([&] {
              pipeline::average_precision({1, 1}, {0.2, 0.3}, names);
            }),
            "average precision needs both classes; the set holds only 'malignant'");
  EXPECT_NE(test::error_of([&] { pipeline::roc_curve(y, s); }), "");
  EXPECT_NE(test::error_of([&] { pipeline::bootstrap_auc_interval(y, s); }), "");
  // sklearn refuses too.
  const auto p = binary_probabilities(s);
  const auto want = sklearn_oracle(y, p);
  EXPECT_TRUE(want.contains("auc_error"));

  // compute_metrics still gives what is defined.
  MetricsOptions options;
  options.class_names = names;
  const auto m = compute_metrics(y, p, options);
  EXPECT_TRUE(std::isnan(m.auc));
  EXPECT_TRUE(std::isnan(m.average_precision));
  EXPECT_EQ(m.auc_undefined, "AUC needs both classes; the set holds only 'benign'");
  EXPECT_EQ(m.auc_interval.resamples, 0);
  EXPECT_DOUBLE_EQ(m.accuracy, 1.0);
  expect_confusion(m.confusion, want["confusion"]);
  EXPECT_NEAR(m.balanced_accuracy, want["balanced_accuracy"].get<double>(), 1e-12);
  EXPECT_NEAR(m.log_loss, want["log_loss"].get<double>(), 1e-12);
  const auto j = pipeline::to_json(m);
  EXPECT_TRUE(j["auc"].is_null());
  EXPECT_TRUE(j["auc_ci"].is_null());
  EXPECT_EQ(j["auc_undefined"], m.auc_undefined);
  EXPECT_NE(pipeline::format_metrics(m).find("undefined (AUC needs both classes"),
            std::string::npos);
}

TEST(Metrics, BadInputNamesTheIndex) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_NE(test::error_of([&] {
              pipeline::roc_auc({0, 1, 0}, {0.1, nan, 0.2});
            }).find("score 1 is nan"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              pipeline::average_precision({0, 1, 0}, {0.1, 0.3, inf});
            }).find("score 2 is inf"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              pipeline::roc_auc({0, 2}, {0.1, 0.2});
            }).find("label 1 is 2"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { pipeline::roc_auc({0, 1}, {0.1}); }), "");
  EXPECT_NE(test::error_of([&] {
              pipeline::compute_binary_metrics({0, 1}, {0.1, nan});
            }).find("score 1 is nan"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              pipeline::compute_binary_metrics({0, 1}, {0.1, 1.5});
            }).find("score 1 is 1.5; expected a probability in [0, 1]"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] {
              pipeline::compute_binary_metrics({0, -1}, {0.1, 0.5});
            }).find("label 1 is -1"),
            std::string::npos);
  EXPECT_NE(test::error_of([&] { pipeline::compute_binary_metrics({}, {}); }), "");
}

TEST(Metrics, MultiClassOneVsRestMatchesSklearn) {
  // Logits from a small set, so whole rows (and so probabilities) repeat: ties everywhere.
  const int64_t n = 400, c = 4;
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int> level(0, 2);
  std::vector<int64_t> y;
  auto logits = torch::empty({n, c}, torch::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    y.push_back(i % c);
    for (int64_t k = 0; k < c; ++k)
      logits[i][k] = level(rng) + (k == y.back() ? 1 : 0);
  }
  const auto p = torch::softmax(logits, 1);
  const auto want = sklearn_oracle(y, p);
  MetricsOptions options;
  options.bootstrap_resamples = 200;
  options.class_names = {"nevus", "melanoma", "bkl", "bcc"};
  const auto m = compute_metrics(y, p, options);
  EXPECT_NEAR(m.auc, want["auc"].get<double>(), 1e-12);
  EXPECT_NEAR(m.average_precision, want["ap"].get<double>(), 1e-12);
  for (int64_t k = 0; k < c; ++k) {
    EXPECT_NEAR(m.per_class[k].auc, want["per_class_auc"][k].get<double>(), 1e-12);
    EXPECT_NEAR(m.per_class[k].average_precision, want["per_class_ap"][k].get<double>(), 1e-12);
  }
  expect_confusion(m.confusion, want["confusion"]);
  EXPECT_NEAR(m.balanced_accuracy, want["balanced_accuracy"].get<double>(), 1e-12);
  EXPECT_DOUBLE_EQ(m.sensitivity, m.balanced_accuracy);
  EXPECT_NEAR(m.brier, want["brier"].get<double>(), 1e-12);
  EXPECT_NEAR(m.log_loss, want["log_loss"].get<double>(), 1e-12);
  EXPECT_NEAR(m.ece, want["ece"].get<double>(), 1e-12);
  expect_reliability(m, want["reliability"]);
  EXPECT_GT(m.auc_interval.resamples, 0);
  EXPECT_LE(m.auc_interval.low, m.auc);
  EXPECT_GE(m.auc_interval.high, m.auc);

  // A class absent from the labels: macro AUC undefined, naming it; sklearn refuses too.
  std::vector<int64_t> y3;
  std::vector<int64_t> rows;
  for (int64_t i = 0; i < n; ++i) {
    if (y[i] != 2) {
      y3.push_back(y[i]);
      rows.push_back(i);
    }
  }
  const auto p3 = p.index_select(0, torch::tensor(rows));
  const auto m3 = compute_metrics(y3, p3, options);
  EXPECT_TRUE(std::isnan(m3.auc));
  EXPECT_EQ(m3.auc_undefined, "macro AUC needs every class; the set holds no 'bkl'");
  EXPECT_TRUE(std::isnan(m3.per_class[2].auc));
  EXPECT_FALSE(std::isnan(m3.per_class[1].auc));
  EXPECT_TRUE(sklearn_oracle(y3, p3).contains("auc_error"));
}

TEST(Metrics, BootstrapIntervalHasHanleyMcNeilWidth) {
  std::vector<int64_t> y;
  std::vector<double> s;
  binary_case(600, 3, y, s);
  const auto want = sklearn_oracle(y, binary_probabilities(s));
  const double auc = pipeline::roc_auc(y, s);
  const auto ci = pipeline::bootstrap_auc_interval(y, s, 2000, 42);
  EXPECT_EQ(ci.resamples, 2000);
  EXPECT_LT(ci.low, auc);
  EXPECT_GT(ci.high, auc);
  // A 95% normal interval is 2 * 1.96 standard errors wide.
  const double expected_width = 2 * 1.959964 * want["hanley_mcneil_se"].get<double>();
  const double width = ci.high - ci.low;
  EXPECT_GT(width, expected_width / 1.5);
  EXPECT_LT(width, expected_width * 1.5);
  // Deterministic for a seed; another seed gives another draw.
  const auto again = pipeline::bootstrap_auc_interval(y, s, 2000, 42);
  EXPECT_EQ(again.low, ci.low);
  EXPECT_EQ(again.high, ci.high);
  const auto other = pipeline::bootstrap_auc_interval(y, s, 2000, 43);
  EXPECT_TRUE(other.low != ci.low || other.high != ci.high);
  // A 50% interval is narrower and inside the 95% one.
  const auto half = pipeline::bootstrap_auc_interval(y, s, 2000, 42, 0.5);
  EXPECT_GT(half.low, ci.low);
  EXPECT_LT(half.high, ci.high);
}

TEST(Metrics, JsonIsDeterministicAndComplete) {
  std::vector<int64_t> y;
  std::vector<double> s;
  binary_case(120, 9, y, s);
  MetricsOptions options;
  options.class_names = {"benign", "malignant"};
  options.bootstrap_resamples = 100;
  const auto a = pipeline::to_json(pipeline::compute_binary_metrics(y, s, options)).dump();
  const auto b = pipeline::to_json(pipeline::compute_binary_metrics(y, s, options)).dump();
  EXPECT_EQ(a, b);
  const auto j = nlohmann::json::parse(a);
  for (const char* key :
       {"accuracy", "auc", "auc_ci", "average_precision", "balanced_accuracy", "brier",
        "class_names", "confusion", "count", "ece", "log_loss", "num_classes", "per_class",
        "reliability", "sensitivity", "specificity", "threshold"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["count"], 120);
  EXPECT_EQ(j["reliability"].size(), 15u);
  EXPECT_EQ(j["auc_ci"]["resamples"], 100);
  // Curves on request; the +infinity threshold becomes null.
  const auto jc = pipeline::to_json(pipeline::compute_binary_metrics(y, s, options), true);
  EXPECT_TRUE(jc["per_class"][1]["roc"]["thresholds"][0].is_null());
  EXPECT_EQ(jc["per_class"][1]["roc"]["fpr"].size(), jc["per_class"][1]["roc"]["tpr"].size());
  EXPECT_FALSE(j["per_class"][1].contains("roc"));
}

}  // namespace
}  // namespace attnscope
