#include "datasets/splits.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <numeric>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "datasets/csv.h"
#include "preprocessing/augment.h"

namespace attnscope::datasets {
namespace {

using preprocessing::mix_seed;
using preprocessing::Rng;

struct Group {
  std::vector<std::size_t> members;
  int64_t label = 0;  // most frequent label of its members
};

// Groups in order of their first sample, each with its majority class.
std::vector<Group> make_groups(const Dataset& ds) {
  std::map<std::string, std::size_t> index;
  std::vector<Group> groups;
  for (std::size_t i = 0; i < ds.samples.size(); ++i) {
    const auto& s = ds.samples[i];
    // '\x01' cannot appear in CSV ids, so ungrouped samples never collide with a group name.
    const std::string key = s.group ? "g" + *s.group : "\x01" + s.image_id;
    auto [it, fresh] = index.emplace(key, groups.size());
    if (fresh) groups.emplace_back();
    groups[it->second].members.push_back(i);
  }
  for (auto& g : groups) {
    std::map<int64_t, int> counts;
    for (auto i : g.members)
      ++counts[ds.samples[i].label];
    g.label = std::max_element(counts.begin(), counts.end(), [](const auto& a, const auto& b) {
                return a.second < b.second;
              })->first;
  }
  return groups;
}

// Fisher–Yates with the portable Rng.
template <typename T>
void shuffle(std::vector<T>& v, Rng& rng) {
  for (std::size_t i = v.size(); i > 1; --i)
    std::swap(v[i - 1], v[static_cast<std::size_t>(rng.below(static_cast<int64_t>(i)))]);
}

// Group indices per class, each list shuffled by (seed, class).
std::map<int64_t, std::vector<std::size_t>> strata(const std::vector<Group>& groups,
                                                   uint64_t seed) {
  std::map<int64_t, std::vector<std::size_t>> by_class;
  for (std::size_t g = 0; g < groups.size(); ++g)
    by_class[groups[g].label].push_back(g);
  for (auto& [label, list] : by_class) {
    Rng rng(mix_seed(seed, static_cast<uint64_t>(label), 0x5117));
    shuffle(list, rng);
  }
  return by_class;
}

void write_rows(const std::string& path, const Dataset& ds, const std::string& last_column,
                const std::vector<std::string>& values) {
  check(!ds.samples.empty(), path, "the dataset has no samples: nothing to split");
  std::string text = "image_id,label,group," + last_column + "\n";
  for (std::size_t i = 0; i < ds.samples.size(); ++i) {
    const auto& s = ds.samples[i];
    text += csv_field(s.image_id) + "," +
            csv_field(ds.class_names.at(static_cast<std::size_t>(s.label))) + "," +
            csv_field(s.group.value_or("")) + "," + csv_field(values[i]) + "\n";
  }
  // Temporary file + rename: a full disk or a kill leaves the previous CSV, never a cut one.
  write_file_atomically(path, text);
}

}  // namespace

std::string split_name(Split split) {
  switch (split) {
    case Split::kTrain:
      return "train";
    case Split::kVal:
      return "val";
    case Split::kTest:
      return "test";
  }
  return "?";
}

std::vector<Split> split_dataset(const Dataset& ds, const SplitOptions& o) {
  check(o.val >= 0 && o.test >= 0 && o.val + o.test < 1.0, "split",
        "val and test fractions must be >= 0 with val + test < 1, got ", o.val, " and ", o.test);
  const auto groups = make_groups(ds);
  std::vector<Split> out(ds.samples.size(), Split::kTrain);
  for (const auto& [label, list] : strata(groups, o.seed)) {
    double total = 0;
    for (auto g : list)
      total += static_cast<double>(groups[g].members.size());
    const std::array<double, 3> target{total * (1.0 - o.val - o.test), total * o.val,
                                       total * o.test};
    std::array<double, 3> have{};
    for (auto g : list) {
      // Give the group to the split furthest below its share of this class.
      int best = 0;
      for (int s = 1; s < 3; ++s)
        if (target[s] - have[s] > target[best] - have[best]) best = s;
      have[best] += static_cast<double>(groups[g].members.size());
      for (auto i : groups[g].members)
        out[i] = static_cast<Split>(best);
    }
  }
  return out;
}

std::vector<int> kfold_dataset(const Dataset& ds, int k, uint64_t seed) {
  check(k >= 2, "k-fold", "k must be >= 2, got ", k);
  const auto groups = make_groups(ds);
  std::vector<int> out(ds.samples.size(), 0);
  std::vector<std::size_t> overall(static_cast<std::size_t>(k), 0);
  for (const auto& [label, list] : strata(groups, seed)) {
    std::vector<std::size_t> in_class(static_cast<std::size_t>(k), 0);
    for (auto g : list) {
      std::size_t best = 0;
      for (std::size_t f = 1; f < in_class.size(); ++f)
        if (in_class[f] < in_class[best] ||
            (in_class[f] == in_class[best] && overall[f] < overall[best]))
          best = f;
      in_class[best] += groups[g].members.size();
      overall[best] += groups[g].members.size();
      for (auto i : groups[g].members)
        out[i] = static_cast<int>(best);
    }
  }
  return out;
}

void write_splits_csv(const std::string& path, const Dataset& ds,
                      const std::vector<Split>& splits) {
  check(splits.size() == ds.samples.size(), path, "one split per sample expected");
  std::vector<std::string> values;
  for (auto s : splits)
    values.push_back(split_name(s));
  write_rows(path, ds, "split", values);
}

void write_folds_csv(const std::string& path, const Dataset& ds, const std::vector<int>& folds) {
  check(folds.size() == ds.samples.size(), path, "one fold per sample expected");
  std::vector<std::string> values;
  for (auto f : folds)
    values.push_back(std::to_string(f));
  write_rows(path, ds, "fold", values);
}

Dataset subset(const Dataset& ds, const std::vector<std::size_t>& indices) {
  Dataset out;
  out.class_names = ds.class_names;
  out.format = ds.format;
  out.source = ds.source;
  for (auto i : indices)
    out.samples.push_back(ds.samples.at(i));
  return out;
}

Dataset select_split(const Dataset& ds, const std::vector<Split>& splits, Split which) {
  std::vector<std::size_t> indices;
  for (std::size_t i = 0; i < splits.size(); ++i)
    if (splits[i] == which) indices.push_back(i);
  return subset(ds, indices);
}

std::vector<double> class_weights(const std::vector<int64_t>& labels, int num_classes) {
  check(num_classes > 0, "class weights", "num_classes must be > 0");
  std::vector<double> counts(static_cast<std::size_t>(num_classes), 0.0);
  for (auto l : labels) {
    check(l >= 0 && l < num_classes, "class weights", "label ", l, " out of range");
    counts[static_cast<std::size_t>(l)] += 1.0;
  }
  std::vector<double> w(counts.size(), 0.0);
  for (std::size_t c = 0; c < counts.size(); ++c)
    if (counts[c] > 0) w[c] = static_cast<double>(labels.size()) / (num_classes * counts[c]);
  return w;
}

std::vector<double> balanced_sample_weights(const std::vector<int64_t>& labels, int num_classes) {
  const auto cw = class_weights(labels, num_classes);
  std::vector<double> w;
  w.reserve(labels.size());
  for (auto l : labels)
    w.push_back(cw[static_cast<std::size_t>(l)]);
  return w;
}

std::vector<std::size_t> weighted_sample(const std::vector<double>& weights, std::size_t count,
                                         uint64_t seed, int64_t epoch) {
  check(!weights.empty(), "weighted sampler", "no weights");
  std::vector<double> cumulative(weights.size());
  double sum = 0;
  for (std::size_t i = 0; i < weights.size(); ++i) {
    check(weights[i] >= 0, "weighted sampler", "weight ", i, " is negative");
    sum += weights[i];
    cumulative[i] = sum;
  }
  check(sum > 0, "weighted sampler", "all weights are zero");
  Rng rng(mix_seed(seed, static_cast<uint64_t>(epoch), 0x5A3B));
  std::vector<std::size_t> out(count);
  for (auto& o : out) {
    const double u = rng.uniform() * sum;
    o = static_cast<std::size_t>(std::upper_bound(cumulative.begin(), cumulative.end(), u) -
                                 cumulative.begin());
    o = std::min(o, weights.size() - 1);
  }
  return out;
}

std::vector<std::size_t> oversample(const std::vector<int64_t>& labels, double factor,
                                    uint64_t seed) {
  check(factor >= 1.0, "oversample", "factor must be >= 1, got ", factor);
  std::map<int64_t, std::size_t> counts;
  for (auto l : labels)
    ++counts[l];
  int64_t largest = 0;
  std::size_t most = 0;
  for (const auto& [l, n] : counts)
    if (n > most) most = n, largest = l;
  std::vector<std::size_t> out(labels.size());
  std::iota(out.begin(), out.end(), 0);
  Rng rng(mix_seed(seed, 0x0E5A));
  const auto whole = static_cast<int>(std::floor(factor));
  const double frac = factor - whole;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] == largest) continue;
    const int extra = whole - 1 + (rng.uniform() < frac ? 1 : 0);
    for (int r = 0; r < extra; ++r)
      out.push_back(i);
  }
  return out;
}

}  // namespace attnscope::datasets
