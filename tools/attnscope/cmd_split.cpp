// attnscope split: stratified train/val/test splits or k folds of a dataset, grouped by lesion
// or patient, written as CSV.

#include <cmath>
#include <iostream>
#include <map>

#include "attnscope/atomic_file.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "cli.h"
#include "dataset_flags.h"
#include "datasets/splits.h"

namespace attnscope::cli {
namespace {

int run_split(const std::vector<std::string>& args, const GlobalOptions&) {
  const std::string usage = "split --data CSV_OR_DIR --out splits.csv [options]";
  po::options_description desc("Options");
  DatasetFlags data;
  data.masks = false;  // a split names images, labels and groups: a missing mask fails nothing
  data.add_to(desc);
  std::string out;
  datasets::SplitOptions o;
  int folds = 0;
  // clang-format off
  desc.add_options()
      ("out", po::value(&out)->required(),
       "CSV to write: image_id,label,group,split (or ...,fold with --folds)")
      ("val", po::value(&o.val)->default_value(0.15, "0.15"), "fraction for validation")
      ("test", po::value(&o.test)->default_value(0.15, "0.15"), "fraction for test")
      ("folds", po::value(&folds)->default_value(0),
       "write k-fold assignments instead (k >= 2); 0 = train/val/test")
      ("seed", po::value(&o.seed)->default_value(0), "random seed");
  // clang-format on
  po::variables_map vm;
  if (!parse(usage, desc, args, vm)) return 0;
  const auto fail = [&](const std::string& m) { throw UsageError(m, usage_text(usage, desc)); };
  if (o.val < 0 || o.test < 0 || o.val + o.test >= 1)
    fail("--val and --test must be >= 0 with a sum < 1");
  if (folds == 1 || folds < 0) fail("--folds must be 0 or >= 2");
  // k folds have no validation or test share: a given --val or --test was ignored.
  for (const char* share : {"val", "test"})
    if (folds >= 2 && !vm[share].defaulted())
      fail(concat("--folds writes k-fold assignments; --", share,
                  " is for a train/val/test split (give one or the other)"));
  if (!std::isfinite(o.val) || !std::isfinite(o.test)) fail("--val and --test must be numbers");
  check_not_an_input(out, data.resolved(), "--data");
  ensure_writable_folder(out);
  check_replaces_only_its_own(out, "--out", "a CSV written by attnscope split", [&] {
    const auto head = file_head(out, 64);
    // (Also saved again with CRLF line ends.)
    for (const char* header : {"image_id,label,group,split", "image_id,label,group,fold"})
      for (const char* end : {"\n", "\r\n"})
        if (head.rfind(std::string(header) + end, 0) == 0) return true;
    return false;
  });
  const auto ds = data.read(usage_text(usage, desc));
  check(!ds.samples.empty(), data.data, "no samples to split");
  if (folds > static_cast<int>(ds.samples.size()))
    fail(concat("--folds (", folds, ") is more than the ", ds.samples.size(), " samples"));
  std::map<std::string, std::vector<int64_t>> counts;  // part → samples per class
  auto tally = [&](const std::string& part, int64_t label) {
    auto& c = counts[part];
    c.resize(ds.class_names.size(), 0);
    ++c[static_cast<std::size_t>(label)];
  };
  // A part that came out empty (more folds than lesion groups, --val 0.99 of five images) is
  // an error before anything is written: a split must give every part something.
  if (folds >= 2) {
    const auto f = datasets::kfold_dataset(ds, folds, o.seed);
    for (std::size_t i = 0; i < f.size(); ++i)
      tally("fold " + std::to_string(f[i]), ds.samples[i].label);
    check(static_cast<int>(counts.size()) == folds, data.data, "--folds ", folds, " leaves ",
          folds - static_cast<int>(counts.size()),
          " fold(s) empty: the samples form fewer groups (lesions/patients) than folds");
    remove_dead_temporaries(out);  // what a killed run left beside it, once nothing refuses
    datasets::write_folds_csv(out, ds, f);
  } else {
    const auto s = datasets::split_dataset(ds, o);
    for (std::size_t i = 0; i < s.size(); ++i)
      tally(datasets::split_name(s[i]), ds.samples[i].label);
    const std::size_t parts = 1 + (o.val > 0 ? 1 : 0) + (o.test > 0 ? 1 : 0);
    check(counts.size() == parts && counts.count("train"), data.data,
          "the split leaves a part empty (", counts.size(), " of ", parts,
          " parts hold images): use other --val/--test shares or more data");
    remove_dead_temporaries(out);  // what a killed run left beside it, once nothing refuses
    datasets::write_splits_csv(out, ds, s);
  }
  std::cout << "wrote " << excerpt(out, 1000) << " (" << ds.samples.size() << " images)\n";
  for (const auto& [part, c] : counts) {
    std::cout << "  " << part << ":";
    for (std::size_t k = 0; k < c.size(); ++k)
      std::cout << " " << excerpt(ds.class_names[k], 100) << " " << c[k];
    std::cout << "\n";
  }
  return 0;
}

const Registration kSplit("split",
                          "stratified train/val/test or k-fold splits, grouped by lesion/patient",
                          run_split);

}  // namespace
}  // namespace attnscope::cli
