#pragma once
// Stratified, grouped, seeded splits and k-fold assignments, and class-imbalance tools.
//
// Grouped: every sample with the same Sample::group (HAM10000 lesion_id, ISIC 2020
// patient_id) lands in the same split or fold, so no lesion or patient is seen in training
// and in evaluation. Samples without a group are groups of one. Stratified: groups are
// dealt out per class (a group's class is its most frequent label), so each split keeps the
// class proportions up to the size of one group. Deterministic for a seed.

#include <cstdint>
#include <string>
#include <vector>

#include "datasets/isic.h"

namespace attnscope::datasets {

enum class Split : int { kTrain = 0, kVal = 1, kTest = 2 };
std::string split_name(Split split);

struct SplitOptions {
  /// Fractions of samples for validation and test; the rest is training.
  double val = 0.15;
  double test = 0.15;
  uint64_t seed = 0;
};

/// One split per sample, in the dataset's order.
std::vector<Split> split_dataset(const Dataset& dataset, const SplitOptions& options);

/// One fold index in [0, k) per sample: grouped, stratified, balanced by sample count.
std::vector<int> kfold_dataset(const Dataset& dataset, int k, uint64_t seed);

/// Writes `image_id,label,group,split` (split = train/val/test) or `...,fold` rows.
void write_splits_csv(const std::string& path, const Dataset& dataset,
                      const std::vector<Split>& splits);
void write_folds_csv(const std::string& path, const Dataset& dataset,
                     const std::vector<int>& folds);

/// The samples of one split (a Dataset with the same class names).
Dataset subset(const Dataset& dataset, const std::vector<std::size_t>& indices);
Dataset select_split(const Dataset& dataset, const std::vector<Split>& splits, Split which);

/// "Balanced" class weights as scikit-learn computes them: n / (C · count_c); classes with no
/// samples get 0. Shape: (num_classes).
std::vector<double> class_weights(const std::vector<int64_t>& labels, int num_classes);

/// Per-sample weights of a balanced sampler: 1 / count of the sample's class.
std::vector<double> balanced_sample_weights(const std::vector<int64_t>& labels, int num_classes);

/// Draws `count` indices with replacement, with probability proportional to `weights`,
/// seeded by (seed, epoch): a weighted random sampler.
std::vector<std::size_t> weighted_sample(const std::vector<double>& weights, std::size_t count,
                                         uint64_t seed, int64_t epoch);

/// Every index once, plus the samples of every class except the largest repeated so that
/// each appears `factor` times in all (fractional factors repeat a seeded share of them).
std::vector<std::size_t> oversample(const std::vector<int64_t>& labels, double factor,
                                    uint64_t seed);

}  // namespace attnscope::datasets
