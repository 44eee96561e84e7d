// Splits, folds and imbalance tools: grouped (no group in two splits, checked on the real
// HAM10000 metadata), stratified, deterministic; weights against their closed forms.

#include <cmath>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "attnscope/error.h"
#include "datasets/csv.h"
#include "datasets/formats/formats.h"
#include "datasets/splits.h"
#include "test_support.h"

namespace attnscope::datasets {
namespace {

// n samples, label i % classes == 0 → class 1 with probability 1/ratio, groups of `group` samples.
Dataset toy(int n, int every, int group) {
  Dataset ds;
  ds.class_names = {"benign", "malignant"};
  for (int i = 0; i < n; ++i) {
    Sample s;
    s.image_id = "s" + std::to_string(i);
    s.label = (i / std::max(group, 1)) % every == 0 ? 1 : 0;
    if (group > 1) s.group = "g" + std::to_string(i / group);
    ds.samples.push_back(s);
  }
  return ds;
}

void expect_groups_in_one_part(const Dataset& ds, const std::vector<int>& part) {
  std::map<std::string, std::set<int>> where;
  for (std::size_t i = 0; i < ds.samples.size(); ++i)
    if (ds.samples[i].group) where[*ds.samples[i].group].insert(part[i]);
  for (const auto& [group, parts] : where)
    ASSERT_EQ(parts.size(), 1u) << "group " << group << " spans " << parts.size() << " parts";
}

std::vector<int> as_ints(const std::vector<Split>& s) {
  return std::vector<int>(reinterpret_cast<const int*>(s.data()),
                          reinterpret_cast<const int*>(s.data()) + s.size());
}

TEST(Splits, StratifiedProportionsPerClass) {
  const auto ds = toy(1000, 5, 1);  // 200 malignant, 800 benign
  const auto splits = split_dataset(ds, {0.1, 0.2, 7});
  std::map<std::pair<int64_t, Split>, int> count;
  for (std::size_t i = 0; i < splits.size(); ++i)
    ++count[{ds.samples[i].label, splits[i]}];
  EXPECT_EQ(count[std::make_pair(int64_t{1}, Split::kTest)], 40);
  EXPECT_EQ(count[std::make_pair(int64_t{1}, Split::kVal)], 20);
  EXPECT_EQ(count[std::make_pair(int64_t{1}, Split::kTrain)], 140);
  EXPECT_EQ(count[std::make_pair(int64_t{0}, Split::kTest)], 160);
  EXPECT_EQ(count[std::make_pair(int64_t{0}, Split::kVal)], 80);
  EXPECT_EQ(count[std::make_pair(int64_t{0}, Split::kTrain)], 560);
}

TEST(Splits, DeterministicForASeedAndDifferentAcrossSeeds) {
  const auto ds = toy(300, 3, 1);
  EXPECT_EQ(split_dataset(ds, {0.15, 0.15, 1}), split_dataset(ds, {0.15, 0.15, 1}));
  EXPECT_NE(split_dataset(ds, {0.15, 0.15, 1}), split_dataset(ds, {0.15, 0.15, 2}));
  EXPECT_THROW(split_dataset(ds, {0.6, 0.5, 1}), Error);
}

TEST(Splits, GroupsStayTogether) {
  const auto ds = toy(600, 4, 3);
  expect_groups_in_one_part(ds, as_ints(split_dataset(ds, {0.2, 0.2, 3})));
  expect_groups_in_one_part(ds, kfold_dataset(ds, 5, 3));
}

TEST(Splits, KFoldIsBalancedAndCoversEverySample) {
  const auto ds = toy(103, 4, 1);
  const auto folds = kfold_dataset(ds, 5, 9);
  std::map<int, std::array<int, 2>> count;
  for (std::size_t i = 0; i < folds.size(); ++i)
    ++count[folds[i]][static_cast<std::size_t>(ds.samples[i].label)];
  ASSERT_EQ(count.size(), 5u);
  for (const auto& [fold, c] : count) {
    EXPECT_NEAR(c[0], 77 / 5.0, 1.0) << fold;  // 77 benign, 26 malignant
    EXPECT_NEAR(c[1], 26 / 5.0, 1.0) << fold;
  }
}

TEST(Splits, WritesACsvThatReadsBack) {
  test::TempDir dir;
  const auto ds = toy(20, 4, 2);
  const auto splits = split_dataset(ds, {0.25, 0.25, 1});
  write_splits_csv(dir / "splits.csv", ds, splits);
  const auto t = read_csv(dir / "splits.csv");
  ASSERT_EQ(t.header, (std::vector<std::string>{"image_id", "label", "group", "split"}));
  ASSERT_EQ(t.rows.size(), 20u);
  EXPECT_EQ(t.rows[3].fields[0], "s3");
  EXPECT_EQ(t.rows[3].fields[2], "g1");
  EXPECT_EQ(t.rows[3].fields[3], split_name(splits[3]));
  EXPECT_EQ(select_split(ds, splits, Split::kTrain).samples.size() +
                select_split(ds, splits, Split::kVal).samples.size() +
                select_split(ds, splits, Split::kTest).samples.size(),
            20u);
}

// Ids and groups with a comma, a quote, a newline or edge spaces are quoted as RFC 4180 says;
// the independent reader is Python's csv module, which must see exactly the original fields.
TEST(Splits, CsvQuotingRoundTripsThroughPythonsCsvModule) {
  test::TempDir dir;
  auto ds = toy(6, 2, 1);
  const std::vector<std::string> ids = {"a,b",      "say \"hi\"", "two\nlines",
                                        " padded ", "plain",      "cr\rhere"};
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ds.samples[i].image_id = ids[i];
    ds.samples[i].group = "g," + std::to_string(i);
  }
  const auto splits = split_dataset(ds, {0.2, 0.2, 1});
  write_splits_csv(dir / "splits.csv", ds, splits);
  const auto r = test::run_process(
      test::python() +
      " -c \"import csv, json, sys; rows = list(csv.reader(open(sys.argv[1], newline=''))); "
      "print(json.dumps(rows))\" " +
      (dir / "splits.csv"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto rows = nlohmann::json::parse(r.output);
  ASSERT_EQ(rows.size(), ids.size() + 1) << r.output;
  for (std::size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(rows[i + 1][0].get<std::string>(), ids[i]);
    EXPECT_EQ(rows[i + 1][2].get<std::string>(), "g," + std::to_string(i));
    EXPECT_EQ(rows[i + 1][3].get<std::string>(), split_name(splits[i]));
  }
  // attnscope's own reader reads the same fields back (a quoted field keeps its edge spaces).
  const auto ours = read_csv(dir / "splits.csv");
  ASSERT_EQ(ours.rows.size(), ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i)
    EXPECT_EQ(formats::field(ours.rows[i], 0), ids[i]);
}

TEST(Splits, EmptyDatasetIsAnErrorNotAnEmptyFile) {
  test::TempDir dir;
  Dataset ds;
  ds.class_names = {"benign", "malignant"};
  const auto message = test::error_of([&] { write_splits_csv(dir / "s.csv", ds, {}); });
  EXPECT_NE(message.find("no samples"), std::string::npos) << message;
  EXPECT_FALSE(std::filesystem::exists(dir / "s.csv"));
}

TEST(DataSplits, Ham10000NoLesionInTwoSplitsAndClassesStratified) {
  ATTNSCOPE_REQUIRE_DATA();
  ReadOptions o;
  o.mode = LabelMode::kMultiClass;
  const auto ds =
      read_dataset((test::data_dir() / "isic-formats" / "HAM10000_metadata.csv").string(), o);
  const auto splits = split_dataset(ds, {0.15, 0.15, 42});
  expect_groups_in_one_part(ds, as_ints(splits));
  const auto counts = ds.class_counts();
  std::vector<int64_t> in_test(counts.size(), 0);
  for (std::size_t i = 0; i < splits.size(); ++i)
    in_test[static_cast<std::size_t>(ds.samples[i].label)] += splits[i] == Split::kTest;
  for (std::size_t c = 0; c < counts.size(); ++c)
    EXPECT_NEAR(static_cast<double>(in_test[c]) / counts[c], 0.15, 0.03) << ds.class_names[c];
  expect_groups_in_one_part(ds, kfold_dataset(ds, 5, 42));
}

TEST(Imbalance, ClassWeightsAreNOverCTimesCount) {
  const std::vector<int64_t> labels{0, 0, 0, 1, 2, 2};
  const auto w = class_weights(labels, 4);
  EXPECT_DOUBLE_EQ(w[0], 6.0 / (4 * 3));
  EXPECT_DOUBLE_EQ(w[1], 6.0 / (4 * 1));
  EXPECT_DOUBLE_EQ(w[2], 6.0 / (4 * 2));
  EXPECT_DOUBLE_EQ(w[3], 0.0);
  EXPECT_THROW(class_weights({0, 5}, 2), Error);
}

TEST(Imbalance, BalancedSamplerDrawsClassesEqually) {
  std::vector<int64_t> labels(1000, 0);
  for (int i = 0; i < 100; ++i)
    labels[static_cast<std::size_t>(i * 10)] = 1;  // 10 % malignant
  const auto draws = weighted_sample(balanced_sample_weights(labels, 2), 4000, 5, 0);
  int malignant = 0;
  for (auto i : draws)
    malignant += labels[i] == 1;
  EXPECT_NEAR(malignant, 2000, 160);  // Binomial(4000, 0.5): sd ≈ 32; ±5 sd
  EXPECT_EQ(draws, weighted_sample(balanced_sample_weights(labels, 2), 4000, 5, 0));
  EXPECT_NE(draws, weighted_sample(balanced_sample_weights(labels, 2), 4000, 5, 1));
}

TEST(Imbalance, OversampleRepeatsTheSmallerClasses) {
  const std::vector<int64_t> labels{0, 0, 0, 0, 0, 0, 1, 1, 2};
  const auto idx = oversample(labels, 3.0, 1);
  std::map<int64_t, int> count;
  for (auto i : idx)
    ++count[labels[i]];
  EXPECT_EQ(count[0], 6);
  EXPECT_EQ(count[1], 6);
  EXPECT_EQ(count[2], 3);
  EXPECT_THROW(oversample(labels, 0.5, 1), Error);
}

}  // namespace
}  // namespace attnscope::datasets
