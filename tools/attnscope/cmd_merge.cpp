// attnscope merge: join the results.h5 files of shards (classify --shard i/N) into one.

#include <filesystem>
#include <iostream>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "cli.h"
#include "pipeline/vision/results.h"

namespace attnscope::cli {
namespace {

int run_merge(const std::vector<std::string>& args, const GlobalOptions&) {
  const std::string usage = "merge A/results.h5 B/results.h5 ... --out merged.h5 [--overwrite]";
  po::options_description desc("Options");
  std::vector<std::string> inputs;
  std::string out;
  bool overwrite = false;
  desc.add_options()                                                                          //
      ("input", po::value(&inputs)->multitoken(), "results files to join (also positional)")  //
      ("out", po::value(&out)->required(), "the merged results file to write")                //
      ("overwrite", po::bool_switch(&overwrite), "replace an existing --out (a results file)");
  po::positional_options_description positional;
  positional.add("input", -1);
  po::variables_map vm;
  if (!parse(usage, desc, args, vm, &positional)) return 0;
  if (inputs.empty()) throw UsageError("no results files given", usage_text(usage, desc));
  std::string line = "attnscope merge";
  for (const auto& a : args)
    line += " " + a;
  for (const auto& input : inputs) check_not_an_input(out, input, "one of the files to merge");
  // As classify: an existing file is replaced only when asked, and only a results file.
  std::error_code ec;
  if (std::filesystem::exists(out, ec)) {
    check(!std::filesystem::is_directory(out, ec), out,
          "is a folder: --out names the merged file (e.g. ", out, "/results.h5)");
    check(overwrite, out, "exists; pass --overwrite to replace it");
    check_replaces_only_its_own(out, "--out", "an attnscope results file", [&] {
      try {
        pipeline::read_results(out);
        return true;
      } catch (const Error&) {
        return false;
      }
    });
  }
  for (std::size_t i = 0; i < inputs.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      check(!same_file(inputs[i], inputs[j]), inputs[i], "is given twice (also as ", inputs[j],
            "): each shard once");
  // A folder that is not there or cannot be written is said before the shards are read, and
  // names --out (not the temporary the merged file is built in).
  ensure_writable_folder(out);
  const auto warnings = pipeline::merge_results(inputs, out, line);
  // What a killed merge into it left: after the merge, as the shards are checked while it is
  // written, and a refused merge touches nothing.
  remove_dead_temporaries(out);
  const auto merged = pipeline::read_results(out);
  std::cout << "merged " << inputs.size() << (inputs.size() == 1 ? " file: " : " files: ")
            << merged.ids.size() << " images, " << merged.errors.size() << " errors into "
            << printable(out) << "\n";
  for (const auto& w : warnings)
    std::cerr << "warning: " << printable(w) << "\n";
  return 0;
}

const Registration kMerge("merge", "join the results.h5 files of classify shards", run_merge);

}  // namespace
}  // namespace attnscope::cli
