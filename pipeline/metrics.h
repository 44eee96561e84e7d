#pragma once
// Classification metrics: the one module train, evaluate, classify and the report use.
// Every definition is written out in docs/metrics.md exactly as computed here; the tests check
// each against scikit-learn (Debian's python3-sklearn) on the same scores.
//
// Conventions
// - labels: class indices 0..C-1 (std::vector<int64_t>). Anything else (e.g.
//   datasets::kUnlabelled) is an Error naming the index.
// - Binary (C == 2): class 1 is the positive class (malignant); the score of a sample is
//   P(class 1). "Predicted positive" means score >= threshold.
// - Multi-class (C > 2): the prediction is the argmax (first maximum); AUC and AP are computed
//   one-vs-rest per class and macro-averaged (unweighted mean over classes).
// - Scores/probabilities must be finite (NaN/inf is an Error naming the index); probabilities
//   given to compute_metrics must lie in [0, 1].
// - An undefined value (e.g. AUC of a single-class set inside compute_metrics, the precision of
//   a class never predicted) is NaN in the structs and null in JSON; the standalone functions
//   below throw instead.
//
// Shape:
//   labels:        (N)     class indices
//   scores:        (N)     P(positive) for the binary functions (any finite real for the
//                          ranking metrics: AUC, ROC/PR curves, AP)
//   probabilities: (N, C)  rows of class probabilities (torch::Tensor, any floating dtype,
//                          any device; copied to CPU double)

#include <cstdint>
#include <string>
#include <vector>

#include <torch/types.h>
#include <nlohmann/json.hpp>

namespace attnscope::pipeline {

/// ROC curve, one point per distinct score in decreasing order, preceded by (0, 0) whose
/// threshold is +infinity (sklearn's roc_curve with drop_intermediate=False, except that
/// sklearn 1.2 writes max score + 1 for the first threshold).
struct RocCurve {
  std::vector<double> fpr;
  std::vector<double> tpr;
  std::vector<double> thresholds;  ///< point i: predicted positive iff score >= thresholds[i]
};

/// Precision-recall curve, in decreasing threshold order: first (recall 0, precision 1) with
/// threshold +infinity, then one point per distinct score (sklearn's precision_recall_curve
/// reversed). Precision at a threshold with no predicted positive is 0 (as sklearn).
struct PrCurve {
  std::vector<double> precision;
  std::vector<double> recall;
  std::vector<double> thresholds;
};

/// A bootstrap percentile interval.
struct Interval {
  double low = 0;
  double high = 0;
  double confidence = 0.95;
  int64_t resamples = 0;  ///< resamples that entered the interval
};

/// One reliability-diagram bin: samples whose confidence c lies in (lower, upper] (the first
/// bin also takes c == 0).
struct ReliabilityBin {
  double lower = 0;
  double upper = 0;
  int64_t count = 0;
  double mean_confidence = 0;  ///< NaN when count == 0
  double accuracy = 0;         ///< fraction correct; NaN when count == 0
};

/// ---- Ranking metrics (binary: labels in {0, 1}, 1 positive) ----------------------------
/// class_names (optional, index = class) only make messages readable. Each throws Error when
/// the set holds one class only: "AUC needs both classes; the set holds only 'benign'".

/// Exact ROC AUC (Mann-Whitney U / (P * N)); tied scores of a positive and a negative count
/// half.
double roc_auc(const std::vector<int64_t>& labels, const std::vector<double>& scores,
               const std::vector<std::string>& class_names = {});
RocCurve roc_curve(const std::vector<int64_t>& labels, const std::vector<double>& scores,
                   const std::vector<std::string>& class_names = {});
PrCurve precision_recall_curve(const std::vector<int64_t>& labels,
                               const std::vector<double>& scores,
                               const std::vector<std::string>& class_names = {});
/// sklearn's average_precision_score: sum over distinct thresholds (decreasing) of
/// (R_k - R_{k-1}) * P_k; no interpolation.
double average_precision(const std::vector<int64_t>& labels, const std::vector<double>& scores,
                         const std::vector<std::string>& class_names = {});

/// Bootstrap percentile interval for roc_auc: `resamples` stratified resamples (positives
/// and negatives each drawn with replacement to their own count, so no resample holds a
/// single class), deterministic for a seed (own generator: the same on every platform and
/// thread count). Bounds are the (1-confidence)/2 and (1+confidence)/2 quantiles (linear
/// interpolation, numpy's default). Throws like roc_auc; resamples must be >= 1.
Interval bootstrap_auc_interval(const std::vector<int64_t>& labels,
                                const std::vector<double>& scores, int64_t resamples = 1000,
                                uint64_t seed = 0, double confidence = 0.95,
                                const std::vector<std::string>& class_names = {});

/// ---- Decisions ---------------------------------------------------------------------------
/// confusion[t][p] = samples of true class t predicted as p (sklearn's confusion_matrix).
std::vector<std::vector<int64_t>> confusion_matrix(const std::vector<int64_t>& labels,
                                                   const std::vector<int64_t>& predictions,
                                                   int64_t num_classes);
/// Mean over classes present in the labels of recall (sklearn's balanced_accuracy_score).
double balanced_accuracy(const std::vector<std::vector<int64_t>>& confusion);
/// Predicted class per row: binary (C == 2): 1 iff P(class 1) >= threshold; otherwise
/// argmax (first maximum, threshold unused).
std::vector<int64_t> predict(const torch::Tensor& probabilities, double threshold = 0.5);

/// ---- Probabilistic metrics ---------------------------------------------------------------
/// Top-label calibration: confidence = max_c p_c, correct = (argmax == label); equal-width
/// bins over [0, 1]. ECE = sum_b (n_b / N) |accuracy_b - mean_confidence_b|.
std::vector<ReliabilityBin> reliability_bins(const std::vector<int64_t>& labels,
                                             const torch::Tensor& probabilities, int64_t bins = 15);
double expected_calibration_error(const std::vector<int64_t>& labels,
                                  const torch::Tensor& probabilities, int64_t bins = 15);
/// Binary (C == 2): mean (p_1 - [y == 1])^2 (sklearn's brier_score_loss). Multi-class:
/// mean over samples of sum_c (p_c - [y == c])^2 (Brier's original; twice the binary value on
/// two classes, which is why C == 2 uses sklearn's form).
double brier_score(const std::vector<int64_t>& labels, const torch::Tensor& probabilities);
/// -mean log(clip(p_y, eps, 1 - eps)), eps = DBL_EPSILON (sklearn's log_loss on rows that
/// sum to 1).
double log_loss(const std::vector<int64_t>& labels, const torch::Tensor& probabilities);

/// ---- Everything at once ------------------------------------------------------------------
struct MetricsOptions {
  /// Binary decision threshold on P(class 1).
  double threshold = 0.5;
  /// Equal-width calibration bins.
  int64_t ece_bins = 15;
  /// Bootstrap resamples for the AUC interval; 0: no interval.
  int64_t bootstrap_resamples = 1000;
  uint64_t bootstrap_seed = 0;
  double confidence = 0.95;
  /// Names for messages and JSON (index = class); default "0", "1", ...
  std::vector<std::string> class_names;
  /// Keep ROC / PR curve points in per_class (the report draws them).
  bool curves = true;
};

/// One class against the rest.
struct ClassMetrics {
  std::string name;
  int64_t support = 0;           ///< samples of this class
  int64_t predicted = 0;         ///< samples predicted as this class
  double sensitivity = 0;        ///< recall: TP / (TP + FN); NaN when support == 0
  double specificity = 0;        ///< TN / (TN + FP); NaN when every sample is this class
  double precision = 0;          ///< TP / (TP + FP); NaN when predicted == 0
  double auc = 0;                ///< one-vs-rest on p_c; NaN when undefined
  double average_precision = 0;  ///< one-vs-rest on p_c; NaN when undefined
  RocCurve roc;                  ///< empty when undefined or !options.curves
  PrCurve pr;
};

struct ClassificationMetrics {
  int64_t count = 0;
  int64_t num_classes = 0;
  std::vector<std::string> class_names;
  double threshold = 0.5;                       ///< binary only (NaN for multi-class)
  std::vector<std::vector<int64_t>> confusion;  ///< [true][predicted]
  double accuracy = 0;
  double balanced_accuracy = 0;  ///< = macro sensitivity
  /// Binary: of class 1 at the threshold. Multi-class: macro (mean over classes present).
  double sensitivity = 0;
  double specificity = 0;
  /// Binary: AUC of class 1. Multi-class: macro one-vs-rest AUC (defined only when every
  /// class is present, as sklearn). NaN when undefined; auc_undefined then says why.
  double auc = 0;
  std::string auc_undefined;
  Interval auc_interval;         ///< resamples == 0 when not computed (undefined AUC or disabled)
  double average_precision = 0;  ///< binary: AP of class 1; multi-class: macro AP
  double ece = 0;
  double brier = 0;
  double log_loss = 0;
  std::vector<ReliabilityBin> reliability;
  std::vector<ClassMetrics> per_class;
};

/// All metrics of probabilities against labels. Never throws for a single-class set (AUC/AP
/// become NaN with auc_undefined set); throws Error for malformed input (sizes, labels out of
/// range, non-finite or out-of-[0,1] probabilities, N == 0, C < 2).
ClassificationMetrics compute_metrics(const std::vector<int64_t>& labels,
                                      const torch::Tensor& probabilities,
                                      const MetricsOptions& options = {});
/// Binary convenience: scores are P(class 1); probabilities (1 - s, s).
ClassificationMetrics compute_binary_metrics(const std::vector<int64_t>& labels,
                                             const std::vector<double>& scores,
                                             const MetricsOptions& options = {});

/// One JSON object of all metrics. Keys are sorted (nlohmann::json's std::map), numbers are
/// written by nlohmann's shortest round-trip formatting and NaN as null, so the same metrics
/// give byte-identical dump() output on every run. with_curves adds the ROC/PR points per
/// class (the first threshold, +infinity, is written as null).
///
///   {"accuracy", "auc", "auc_ci": {"confidence", "high", "low", "resamples"} | null,
///    "auc_undefined" (only when undefined), "average_precision", "balanced_accuracy",
///    "brier", "class_names", "confusion", "count", "ece", "log_loss", "num_classes",
///    "per_class": [{"auc", "average_precision", "name", "precision", "predicted",
///                   "sensitivity", "specificity", "support"[, "roc", "pr"]}],
///    "reliability": [{"accuracy", "count", "lower", "mean_confidence", "upper"}],
///    "sensitivity", "specificity", "threshold"}
nlohmann::json to_json(const ClassificationMetrics& metrics, bool with_curves = false);

/// Multi-line human summary (evaluate prints it): AUC with its interval, AP, balanced
/// accuracy, sensitivity/specificity at the threshold, confusion matrix, ECE, Brier, log loss.
std::string format_metrics(const ClassificationMetrics& metrics);

}  // namespace attnscope::pipeline
