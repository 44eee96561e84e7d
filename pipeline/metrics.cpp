#include "pipeline/metrics.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <iomanip>
#include <limits>
#include <numeric>
#include <sstream>

#include "attnscope/error.h"

namespace attnscope::pipeline {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::string class_name(const std::vector<std::string>& names, int64_t c) {
  if (c >= 0 && c < static_cast<int64_t>(names.size())) return names[c];
  return std::to_string(c);
}

void check_scores(const std::vector<double>& scores, const char* what) {
  for (size_t i = 0; i < scores.size(); ++i) {
    check(std::isfinite(scores[i]), what, "score ", i, " is ", scores[i],
          "; scores must be finite");
  }
}

/// Validates a binary ranking problem and returns the count of positives. Throws the
/// single-class error naming `what`.
int64_t check_binary(const std::vector<int64_t>& labels, const std::vector<double>& scores,
                     const std::vector<std::string>& names, const char* what) {
  check(labels.size() == scores.size(), what, labels.size(), " labels but ", scores.size(),
        " scores");
  check(!labels.empty(), what, "no samples");
  int64_t positives = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    check(labels[i] == 0 || labels[i] == 1, what, "label ", i, " is ", labels[i],
          "; expected 0 or 1");
    positives += labels[i];
  }
  check_scores(scores, what);
  const auto n = static_cast<int64_t>(labels.size());
  if (positives == 0 || positives == n) {
    throw Error("", concat(what, " needs both classes; the set holds only '",
                           class_name(names, positives == 0 ? 0 : 1), "'"));
  }
  return positives;
}

/// Sample indices sorted by decreasing score (stable, so ties keep index order).
std::vector<int64_t> order_by_decreasing(const std::vector<double>& scores) {
  std::vector<int64_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  return order;
}

/// Cumulative true/false positives at each distinct score, in decreasing score order
/// (sklearn's _binary_clf_curve).
struct ThresholdCounts {
  std::vector<int64_t> tp, fp;
  std::vector<double> thresholds;
};

ThresholdCounts threshold_counts(const std::vector<int64_t>& labels,
                                 const std::vector<double>& scores) {
  const auto order = order_by_decreasing(scores);
  ThresholdCounts out;
  int64_t tp = 0, fp = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t i = order[k];
    (labels[i] == 1 ? tp : fp) += 1;
    if (k + 1 == order.size() || scores[order[k + 1]] != scores[i]) {
      out.tp.push_back(tp);
      out.fp.push_back(fp);
      out.thresholds.push_back(scores[i]);
    }
  }
  return out;
}

/// Twice the Mann-Whitney U (pairs positive-above-negative, ties half) with integer
/// multiplicities per sample, over a decreasing order. Exact in int64 for N < 2e9.
double weighted_auc(const std::vector<int64_t>& order, const std::vector<double>& scores,
                    const std::vector<uint8_t>& positive, const std::vector<int64_t>& weight) {
  int64_t twice_u = 0, pos_above = 0, pos_total = 0, neg_total = 0;
  size_t k = 0;
  while (k < order.size()) {
    int64_t pos_group = 0, neg_group = 0;
    const double s = scores[order[k]];
    for (; k < order.size() && scores[order[k]] == s; ++k) {
      const int64_t i = order[k];
      (positive[i] ? pos_group : neg_group) += weight[i];
    }
    // Each negative of this group is below every positive above it, tied with this group's.
    twice_u += neg_group * (2 * pos_above + pos_group);
    pos_above += pos_group;
    pos_total += pos_group;
    neg_total += neg_group;
  }
  if (pos_total == 0 || neg_total == 0) return kNaN;
  return static_cast<double>(twice_u) /
         (2.0 * static_cast<double>(pos_total) * static_cast<double>(neg_total));
}

/// Deterministic generator: SplitMix64 (the same stream on every platform and library).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  /// Uniform in [0, n) without modulo bias (Lemire's multiply-shift with rejection).
  uint64_t below(uint64_t n) {
    __uint128_t m = static_cast<__uint128_t>(next()) * n;
    auto low = static_cast<uint64_t>(m);
    if (low < n) {
      const uint64_t floor = (0 - n) % n;
      while (low < floor) {
        m = static_cast<__uint128_t>(next()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

 private:
  uint64_t state_;
};

/// numpy.quantile's default (linear) on sorted values.
double quantile(const std::vector<double>& sorted, double q) {
  const double h = q * static_cast<double>(sorted.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(h));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (h - static_cast<double>(lo)) * (sorted[hi] - sorted[lo]);
}

/// Stratified bootstrap of the mean one-vs-rest AUC over `classes` (one class: the binary
/// AUC). strata[c] lists the samples of class c; scores[j] / positive[j] / order[j] belong to
/// classes[j].
Interval stratified_bootstrap(const std::vector<std::vector<int64_t>>& strata,
                              const std::vector<std::vector<double>>& scores,
                              const std::vector<std::vector<uint8_t>>& positive,
                              const std::vector<std::vector<int64_t>>& orders, int64_t resamples,
                              uint64_t seed, double confidence) {
  check(resamples >= 1, "bootstrap", "resamples must be >= 1, got ", resamples);
  check(confidence > 0 && confidence < 1, "bootstrap", "confidence must lie in (0, 1), got ",
        confidence);
  size_t n = 0;
  for (const auto& s : strata)
    n += s.size();
  SplitMix64 rng(seed);
  std::vector<int64_t> weight(n);
  std::vector<double> values;
  values.reserve(static_cast<size_t>(resamples));
  for (int64_t r = 0; r < resamples; ++r) {
    std::fill(weight.begin(), weight.end(), 0);
    for (const auto& stratum : strata) {
      for (size_t k = 0; k < stratum.size(); ++k)
        weight[stratum[rng.below(stratum.size())]] += 1;
    }
    double sum = 0;
    bool defined = true;
    for (size_t j = 0; j < scores.size(); ++j) {
      const double auc = weighted_auc(orders[j], scores[j], positive[j], weight);
      defined = defined && !std::isnan(auc);
      sum += auc;
    }
    if (defined) values.push_back(sum / static_cast<double>(scores.size()));
  }
  check(!values.empty(), "bootstrap", "every resample held a single class");
  std::sort(values.begin(), values.end());
  Interval out;
  out.confidence = confidence;
  out.resamples = static_cast<int64_t>(values.size());
  out.low = quantile(values, (1 - confidence) / 2);
  out.high = quantile(values, (1 + confidence) / 2);
  return out;
}

/// probabilities -> row-major CPU doubles, validated.
struct Probabilities {
  int64_t n = 0, c = 0;
  std::vector<double> p;
  double at(int64_t i, int64_t k) const { return p[static_cast<size_t>(i * c + k)]; }
  std::vector<double> column(int64_t k) const {
    std::vector<double> out(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      out[i] = at(i, k);
    return out;
  }
  int64_t argmax(int64_t i) const {
    int64_t best = 0;
    for (int64_t k = 1; k < c; ++k) {
      if (at(i, k) > at(i, best)) best = k;
    }
    return best;
  }
};

Probabilities to_probabilities(const torch::Tensor& probabilities, const char* what) {
  check(probabilities.defined() && probabilities.dim() == 2, what,
        "probabilities must be a (N, C) tensor, got ",
        probabilities.defined() ? probabilities.sizes() : c10::IntArrayRef{});
  check(probabilities.is_floating_point(), what, "probabilities must be floating point, got ",
        probabilities.scalar_type());
  Probabilities out;
  out.n = probabilities.size(0);
  out.c = probabilities.size(1);
  check(out.c >= 2, what, "probabilities need at least 2 classes, got ", out.c);
  const auto t = probabilities.detach().to(torch::kCPU, torch::kDouble).contiguous();
  out.p.assign(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  for (int64_t i = 0; i < out.n; ++i) {
    for (int64_t k = 0; k < out.c; ++k) {
      const double v = out.at(i, k);
      check(std::isfinite(v), what, "probability [", i, ", ", k, "] is ", v,
            "; probabilities must be finite");
      check(v >= 0 && v <= 1, what, "probability [", i, ", ", k, "] is ", v,
            "; probabilities must lie in [0, 1]");
    }
  }
  return out;
}

void check_labels(const std::vector<int64_t>& labels, int64_t n, int64_t num_classes,
                  const char* what) {
  check(static_cast<int64_t>(labels.size()) == n, what, labels.size(), " labels but ", n,
        " rows of probabilities");
  check(n > 0, what, "no samples");
  for (size_t i = 0; i < labels.size(); ++i) {
    check(labels[i] >= 0 && labels[i] < num_classes, what, "label ", i, " is ", labels[i],
          "; expected 0..", num_classes - 1);
  }
}

std::vector<int64_t> binarize(const std::vector<int64_t>& labels, int64_t c) {
  std::vector<int64_t> out(labels.size());
  for (size_t i = 0; i < labels.size(); ++i)
    out[i] = labels[i] == c ? 1 : 0;
  return out;
}

nlohmann::json number(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

nlohmann::json numbers(const std::vector<double>& v) {
  auto out = nlohmann::json::array();
  for (double x : v)
    out.push_back(number(x));
  return out;
}

}  // namespace

double roc_auc(const std::vector<int64_t>& labels, const std::vector<double>& scores,
               const std::vector<std::string>& class_names) {
  check_binary(labels, scores, class_names, "AUC");
  std::vector<uint8_t> positive(labels.begin(), labels.end());
  return weighted_auc(order_by_decreasing(scores), scores, positive,
                      std::vector<int64_t>(labels.size(), 1));
}

RocCurve roc_curve(const std::vector<int64_t>& labels, const std::vector<double>& scores,
                   const std::vector<std::string>& class_names) {
  const int64_t positives = check_binary(labels, scores, class_names, "ROC curve");
  const auto negatives = static_cast<int64_t>(labels.size()) - positives;
  const auto counts = threshold_counts(labels, scores);
  RocCurve out;
  out.fpr.push_back(0);
  out.tpr.push_back(0);
  out.thresholds.push_back(kInf);
  for (size_t k = 0; k < counts.tp.size(); ++k) {
    out.fpr.push_back(static_cast<double>(counts.fp[k]) / static_cast<double>(negatives));
    out.tpr.push_back(static_cast<double>(counts.tp[k]) / static_cast<double>(positives));
    out.thresholds.push_back(counts.thresholds[k]);
  }
  return out;
}

PrCurve precision_recall_curve(const std::vector<int64_t>& labels,
                               const std::vector<double>& scores,
                               const std::vector<std::string>& class_names) {
  const int64_t positives = check_binary(labels, scores, class_names, "precision-recall curve");
  const auto counts = threshold_counts(labels, scores);
  PrCurve out;
  out.precision.push_back(1);
  out.recall.push_back(0);
  out.thresholds.push_back(kInf);
  for (size_t k = 0; k < counts.tp.size(); ++k) {
    const int64_t predicted = counts.tp[k] + counts.fp[k];
    out.precision.push_back(static_cast<double>(counts.tp[k]) / static_cast<double>(predicted));
    out.recall.push_back(static_cast<double>(counts.tp[k]) / static_cast<double>(positives));
    out.thresholds.push_back(counts.thresholds[k]);
  }
  return out;
}

double average_precision(const std::vector<int64_t>& labels, const std::vector<double>& scores,
                         const std::vector<std::string>& class_names) {
  check_binary(labels, scores, class_names, "average precision");
  const auto pr = precision_recall_curve(labels, scores, class_names);
  double ap = 0;
  for (size_t k = 1; k < pr.recall.size(); ++k) {
    ap += (pr.recall[k] - pr.recall[k - 1]) * pr.precision[k];
  }
  return ap;
}

Interval bootstrap_auc_interval(const std::vector<int64_t>& labels,
                                const std::vector<double>& scores, int64_t resamples, uint64_t seed,
                                double confidence, const std::vector<std::string>& class_names) {
  check_binary(labels, scores, class_names, "AUC");
  std::vector<std::vector<int64_t>> strata(2);
  for (size_t i = 0; i < labels.size(); ++i)
    strata[labels[i]].push_back(static_cast<int64_t>(i));
  return stratified_bootstrap(strata, {scores},
                              {std::vector<uint8_t>(labels.begin(), labels.end())},
                              {order_by_decreasing(scores)}, resamples, seed, confidence);
}

std::vector<std::vector<int64_t>> confusion_matrix(const std::vector<int64_t>& labels,
                                                   const std::vector<int64_t>& predictions,
                                                   int64_t num_classes) {
  check(num_classes >= 1, "confusion matrix", "num_classes must be >= 1, got ", num_classes);
  check(labels.size() == predictions.size(), "confusion matrix", labels.size(), " labels but ",
        predictions.size(), " predictions");
  std::vector<std::vector<int64_t>> out(num_classes, std::vector<int64_t>(num_classes, 0));
  for (size_t i = 0; i < labels.size(); ++i) {
    check(labels[i] >= 0 && labels[i] < num_classes, "confusion matrix", "label ", i, " is ",
          labels[i], "; expected 0..", num_classes - 1);
    check(predictions[i] >= 0 && predictions[i] < num_classes, "confusion matrix", "prediction ", i,
          " is ", predictions[i], "; expected 0..", num_classes - 1);
    out[labels[i]][predictions[i]] += 1;
  }
  return out;
}

double balanced_accuracy(const std::vector<std::vector<int64_t>>& confusion) {
  double sum = 0;
  int64_t present = 0;
  for (size_t t = 0; t < confusion.size(); ++t) {
    const int64_t support = std::accumulate(confusion[t].begin(), confusion[t].end(), int64_t{0});
    if (support == 0) continue;
    sum += static_cast<double>(confusion[t][t]) / static_cast<double>(support);
    ++present;
  }
  check(present > 0, "balanced accuracy", "no samples");
  return sum / static_cast<double>(present);
}

std::vector<int64_t> predict(const torch::Tensor& probabilities, double threshold) {
  const auto p = to_probabilities(probabilities, "predict");
  std::vector<int64_t> out(static_cast<size_t>(p.n));
  for (int64_t i = 0; i < p.n; ++i) {
    out[i] = p.c == 2 ? (p.at(i, 1) >= threshold ? 1 : 0) : p.argmax(i);
  }
  return out;
}

std::vector<ReliabilityBin> reliability_bins(const std::vector<int64_t>& labels,
                                             const torch::Tensor& probabilities, int64_t bins) {
  check(bins >= 1, "calibration", "bins must be >= 1, got ", bins);
  const auto p = to_probabilities(probabilities, "calibration");
  check_labels(labels, p.n, p.c, "calibration");
  std::vector<double> edges(static_cast<size_t>(bins + 1));
  for (int64_t k = 0; k <= bins; ++k)
    edges[k] = static_cast<double>(k) / static_cast<double>(bins);
  std::vector<ReliabilityBin> out(static_cast<size_t>(bins));
  std::vector<double> confidence_sum(out.size(), 0), correct(out.size(), 0);
  for (int64_t k = 0; k < bins; ++k) {
    out[k].lower = edges[k];
    out[k].upper = edges[k + 1];
  }
  for (int64_t i = 0; i < p.n; ++i) {
    const int64_t predicted = p.argmax(i);
    const double confidence = p.at(i, predicted);
    // First edge >= confidence among edges[1..]: the bin (lower, upper] holding it.
    const auto b = static_cast<size_t>(
        std::lower_bound(edges.begin() + 1, edges.end(), confidence) - edges.begin() - 1);
    out[b].count += 1;
    confidence_sum[b] += confidence;
    correct[b] += predicted == labels[i] ? 1 : 0;
  }
  for (size_t b = 0; b < out.size(); ++b) {
    const auto n = static_cast<double>(out[b].count);
    out[b].mean_confidence = out[b].count ? confidence_sum[b] / n : kNaN;
    out[b].accuracy = out[b].count ? correct[b] / n : kNaN;
  }
  return out;
}

double expected_calibration_error(const std::vector<int64_t>& labels,
                                  const torch::Tensor& probabilities, int64_t bins) {
  const auto table = reliability_bins(labels, probabilities, bins);
  const auto n = static_cast<double>(labels.size());
  double ece = 0;
  for (const auto& bin : table) {
    if (bin.count == 0) continue;
    ece += static_cast<double>(bin.count) / n * std::abs(bin.accuracy - bin.mean_confidence);
  }
  return ece;
}

double brier_score(const std::vector<int64_t>& labels, const torch::Tensor& probabilities) {
  const auto p = to_probabilities(probabilities, "Brier score");
  check_labels(labels, p.n, p.c, "Brier score");
  double sum = 0;
  for (int64_t i = 0; i < p.n; ++i) {
    if (p.c == 2) {
      const double d = p.at(i, 1) - (labels[i] == 1 ? 1.0 : 0.0);
      sum += d * d;
    } else {
      for (int64_t k = 0; k < p.c; ++k) {
        const double d = p.at(i, k) - (labels[i] == k ? 1.0 : 0.0);
        sum += d * d;
      }
    }
  }
  return sum / static_cast<double>(p.n);
}

double log_loss(const std::vector<int64_t>& labels, const torch::Tensor& probabilities) {
  const auto p = to_probabilities(probabilities, "log loss");
  check_labels(labels, p.n, p.c, "log loss");
  double sum = 0;
  for (int64_t i = 0; i < p.n; ++i) {
    sum -= std::log(std::clamp(p.at(i, labels[i]), DBL_EPSILON, 1 - DBL_EPSILON));
  }
  return sum / static_cast<double>(p.n);
}

ClassificationMetrics compute_metrics(const std::vector<int64_t>& labels,
                                      const torch::Tensor& probabilities,
                                      const MetricsOptions& options) {
  const auto p = to_probabilities(probabilities, "metrics");
  check_labels(labels, p.n, p.c, "metrics");
  check(options.class_names.empty() || static_cast<int64_t>(options.class_names.size()) == p.c,
        "metrics", options.class_names.size(), " class names for ", p.c, " classes");
  const bool binary = p.c == 2;

  ClassificationMetrics m;
  m.count = p.n;
  m.num_classes = p.c;
  for (int64_t c = 0; c < p.c; ++c)
    m.class_names.push_back(class_name(options.class_names, c));
  m.threshold = binary ? options.threshold : kNaN;

  const auto predictions = predict(probabilities, options.threshold);
  m.confusion = confusion_matrix(labels, predictions, p.c);
  int64_t correct = 0;
  for (int64_t c = 0; c < p.c; ++c)
    correct += m.confusion[c][c];
  m.accuracy = static_cast<double>(correct) / static_cast<double>(p.n);
  m.balanced_accuracy = balanced_accuracy(m.confusion);

  std::vector<std::vector<int64_t>> strata(static_cast<size_t>(p.c));
  for (int64_t i = 0; i < p.n; ++i)
    strata[labels[i]].push_back(i);

  for (int64_t c = 0; c < p.c; ++c) {
    ClassMetrics cm;
    cm.name = m.class_names[c];
    cm.support = static_cast<int64_t>(strata[c].size());
    const int64_t tp = m.confusion[c][c];
    for (int64_t t = 0; t < p.c; ++t)
      cm.predicted += m.confusion[t][c];
    const int64_t fp = cm.predicted - tp;
    const int64_t negatives = p.n - cm.support;
    cm.sensitivity = cm.support ? static_cast<double>(tp) / static_cast<double>(cm.support) : kNaN;
    cm.specificity =
        negatives ? static_cast<double>(negatives - fp) / static_cast<double>(negatives) : kNaN;
    cm.precision =
        cm.predicted ? static_cast<double>(tp) / static_cast<double>(cm.predicted) : kNaN;
    cm.auc = kNaN;
    cm.average_precision = kNaN;
    if (cm.support > 0 && negatives > 0) {
      const auto y = binarize(labels, c);
      const auto s = p.column(c);
      cm.auc = roc_auc(y, s);
      cm.average_precision = average_precision(y, s);
      if (options.curves) {
        cm.roc = roc_curve(y, s);
        cm.pr = precision_recall_curve(y, s);
      }
    }
    m.per_class.push_back(std::move(cm));
  }

  if (binary) {
    m.sensitivity = m.per_class[1].sensitivity;
    m.specificity = m.per_class[1].specificity;
  } else {
    m.sensitivity = m.balanced_accuracy;
    double sum = 0;
    int64_t defined = 0;
    for (const auto& cm : m.per_class) {
      if (std::isnan(cm.specificity)) continue;
      sum += cm.specificity;
      ++defined;
    }
    m.specificity = defined ? sum / static_cast<double>(defined) : kNaN;
  }

  std::vector<std::string> absent;
  for (int64_t c = 0; c < p.c; ++c) {
    if (strata[c].empty()) absent.push_back("'" + m.class_names[c] + "'");
  }
  m.auc = kNaN;
  m.average_precision = kNaN;
  if (binary && !absent.empty()) {
    m.auc_undefined = concat("AUC needs both classes; the set holds only '",
                             m.class_names[strata[0].empty() ? 1 : 0], "'");
  } else if (!absent.empty()) {
    std::string list;
    for (size_t k = 0; k < absent.size(); ++k)
      list += (k ? ", " : "") + absent[k];
    m.auc_undefined = concat("macro AUC needs every class; the set holds no ", list);
  } else if (binary) {
    m.auc = m.per_class[1].auc;
    m.average_precision = m.per_class[1].average_precision;
  } else {
    double auc = 0, ap = 0;
    for (const auto& cm : m.per_class) {
      auc += cm.auc;
      ap += cm.average_precision;
    }
    m.auc = auc / static_cast<double>(p.c);
    m.average_precision = ap / static_cast<double>(p.c);
  }

  if (!std::isnan(m.auc) && options.bootstrap_resamples > 0) {
    // The classes whose AUC is averaged: class 1 for binary, every class otherwise.
    std::vector<std::vector<double>> scores;
    std::vector<std::vector<uint8_t>> positive;
    std::vector<std::vector<int64_t>> orders;
    for (int64_t c = binary ? 1 : 0; c < p.c; ++c) {
      scores.push_back(p.column(c));
      std::vector<uint8_t> pos(static_cast<size_t>(p.n));
      for (int64_t i = 0; i < p.n; ++i)
        pos[i] = labels[i] == c ? 1 : 0;
      positive.push_back(std::move(pos));
      orders.push_back(order_by_decreasing(scores.back()));
    }
    m.auc_interval =
        stratified_bootstrap(strata, scores, positive, orders, options.bootstrap_resamples,
                             options.bootstrap_seed, options.confidence);
  }

  m.reliability = reliability_bins(labels, probabilities, options.ece_bins);
  m.ece = 0;
  for (const auto& bin : m.reliability) {
    if (bin.count == 0) continue;
    m.ece += static_cast<double>(bin.count) / static_cast<double>(p.n) *
             std::abs(bin.accuracy - bin.mean_confidence);
  }
  m.brier = brier_score(labels, probabilities);
  m.log_loss = log_loss(labels, probabilities);
  return m;
}

ClassificationMetrics compute_binary_metrics(const std::vector<int64_t>& labels,
                                             const std::vector<double>& scores,
                                             const MetricsOptions& options) {
  check_scores(scores, "metrics");
  for (size_t i = 0; i < scores.size(); ++i) {
    check(scores[i] >= 0 && scores[i] <= 1, "metrics", "score ", i, " is ", scores[i],
          "; expected a probability in [0, 1]");
  }
  auto probabilities = torch::empty({static_cast<int64_t>(scores.size()), 2}, torch::kDouble);
  auto* data = probabilities.data_ptr<double>();
  for (size_t i = 0; i < scores.size(); ++i) {
    data[2 * i] = 1 - scores[i];
    data[2 * i + 1] = scores[i];
  }
  return compute_metrics(labels, probabilities, options);
}

nlohmann::json to_json(const ClassificationMetrics& m, bool with_curves) {
  nlohmann::json j;
  j["count"] = m.count;
  j["num_classes"] = m.num_classes;
  j["class_names"] = m.class_names;
  j["threshold"] = number(m.threshold);
  j["confusion"] = m.confusion;
  j["accuracy"] = number(m.accuracy);
  j["balanced_accuracy"] = number(m.balanced_accuracy);
  j["sensitivity"] = number(m.sensitivity);
  j["specificity"] = number(m.specificity);
  j["auc"] = number(m.auc);
  if (!m.auc_undefined.empty()) j["auc_undefined"] = m.auc_undefined;
  if (m.auc_interval.resamples > 0) {
    j["auc_ci"] = {{"low", number(m.auc_interval.low)},
                   {"high", number(m.auc_interval.high)},
                   {"confidence", number(m.auc_interval.confidence)},
                   {"resamples", m.auc_interval.resamples}};
  } else {
    j["auc_ci"] = nullptr;
  }
  j["average_precision"] = number(m.average_precision);
  j["ece"] = number(m.ece);
  j["brier"] = number(m.brier);
  j["log_loss"] = number(m.log_loss);
  auto bins = nlohmann::json::array();
  for (const auto& b : m.reliability) {
    bins.push_back({{"lower", number(b.lower)},
                    {"upper", number(b.upper)},
                    {"count", b.count},
                    {"mean_confidence", number(b.mean_confidence)},
                    {"accuracy", number(b.accuracy)}});
  }
  j["reliability"] = bins;
  auto classes = nlohmann::json::array();
  for (const auto& c : m.per_class) {
    nlohmann::json jc = {{"name", c.name},
                         {"support", c.support},
                         {"predicted", c.predicted},
                         {"sensitivity", number(c.sensitivity)},
                         {"specificity", number(c.specificity)},
                         {"precision", number(c.precision)},
                         {"auc", number(c.auc)},
                         {"average_precision", number(c.average_precision)}};
    if (with_curves) {
      jc["roc"] = {{"fpr", numbers(c.roc.fpr)},
                   {"tpr", numbers(c.roc.tpr)},
                   {"thresholds", numbers(c.roc.thresholds)}};
      jc["pr"] = {{"precision", numbers(c.pr.precision)},
                  {"recall", numbers(c.pr.recall)},
                  {"thresholds", numbers(c.pr.thresholds)}};
    }
    classes.push_back(std::move(jc));
  }
  j["per_class"] = classes;
  return j;
}

std::string format_metrics(const ClassificationMetrics& m) {
  std::ostringstream out;
  out << std::fixed << std::setprecision(4);
  const auto value = [](double v) {
    if (std::isnan(v)) return std::string("undefined");
    std::ostringstream s;
    s << std::fixed << std::setprecision(4) << v;
    return s.str();
  };
  out << "samples            " << m.count << " (";
  for (size_t c = 0; c < m.per_class.size(); ++c) {
    out << (c ? ", " : "") << m.per_class[c].name << " " << m.per_class[c].support;
  }
  out << ")\n";
  const bool binary = m.num_classes == 2;
  out << (binary ? "AUC                " : "macro AUC (OvR)    ");
  if (std::isnan(m.auc)) {
    out << "undefined (" << m.auc_undefined << ")\n";
  } else {
    out << value(m.auc);
    if (m.auc_interval.resamples > 0) {
      out << "  (" << std::setprecision(0) << m.auc_interval.confidence * 100
          << std::setprecision(4) << "% CI " << value(m.auc_interval.low) << " - "
          << value(m.auc_interval.high) << ", " << m.auc_interval.resamples
          << " stratified bootstrap resamples)";
    }
    out << "\n";
  }
  out << (binary ? "average precision  " : "macro AP           ") << value(m.average_precision)
      << "\n";
  out << "accuracy           " << value(m.accuracy) << "\n";
  out << "balanced accuracy  " << value(m.balanced_accuracy) << "\n";
  if (binary) {
    out << "sensitivity        " << value(m.sensitivity) << "  (" << m.class_names[1]
        << ", threshold " << value(m.threshold) << ")\n";
    out << "specificity        " << value(m.specificity) << "\n";
  } else {
    out << "macro sensitivity  " << value(m.sensitivity) << "\n";
    out << "macro specificity  " << value(m.specificity) << "\n";
    for (const auto& c : m.per_class) {
      out << "  " << c.name << ": AUC " << value(c.auc) << ", sensitivity " << value(c.sensitivity)
          << ", specificity " << value(c.specificity) << "\n";
    }
  }
  out << "ECE (" << m.reliability.size() << " bins)      " << value(m.ece) << "\n";
  out << "Brier score        " << value(m.brier) << "\n";
  out << "log loss           " << value(m.log_loss) << "\n";
  out << "confusion matrix (rows: true class, columns: predicted)\n";
  size_t width = 6;
  for (const auto& name : m.class_names)
    width = std::max(width, name.size() + 1);
  for (const auto& row : m.confusion) {
    for (int64_t v : row)
      width = std::max(width, std::to_string(v).size() + 1);
  }
  out << std::setw(static_cast<int>(width)) << "";
  for (const auto& name : m.class_names)
    out << std::setw(static_cast<int>(width)) << name;
  out << "\n";
  for (size_t t = 0; t < m.confusion.size(); ++t) {
    out << std::setw(static_cast<int>(width)) << m.class_names[t];
    for (int64_t v : m.confusion[t])
      out << std::setw(static_cast<int>(width)) << v;
    out << "\n";
  }
  return out.str();
}

}  // namespace attnscope::pipeline
