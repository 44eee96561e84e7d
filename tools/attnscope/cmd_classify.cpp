// attnscope classify: batch classification of images into results.h5 (docs/hdf5-schema.md),
// predictions.csv and errors.csv.

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "cli.h"
#include "dataset_flags.h"
#include "pipeline/distributed.h"
#include "pipeline/vision/classify.h"
#include "runtime/precision.h"
#include "runtime/runtime.h"

namespace attnscope::cli {
namespace {

constexpr int kMaxFaithfulnessSteps = 1024;

namespace fs = std::filesystem;

// torchrun (RANK/WORLD_SIZE) or Slurm (SLURM_PROCID/SLURM_NTASKS in a task srun started):
// "i/N", or "" when unset; `from` names the variables it came from ("RANK=3 and WORLD_SIZE=2");
// `warning` says one of a pair set without the other, or a job's SLURM_NTASKS outside srun.
std::string shard_from_environment(std::string* from, std::string* warning) {
  std::map<std::string, std::string> env;
  for (const char* name :
       {"RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_STEPID"})
    if (const char* v = std::getenv(name); v && *v) env[name] = v;
  const auto has = [&](const std::string& name) { return env.count(name) > 0; };
  std::string say;
  for (const auto& [rank, size] : {std::pair<std::string, std::string>{"RANK", "WORLD_SIZE"},
                                   {"SLURM_PROCID", "SLURM_NTASKS"}}) {
    // Slurm's batch script carries SLURM_PROCID=0 and the job's
    // SLURM_NTASKS, but it is one process: it classifies everything, and says so when the job
    // asked for several tasks (a script that forgot srun classified a quarter of its inputs).
    if (rank == "SLURM_PROCID" && !pipeline::is_srun_task(env)) {
      if (has(size) && env[size] != "1" && say.empty())
        say = concat(size, "=", excerpt(env[size], 40),
                     " is set but srun did not start this process (no SLURM_STEP_ID of an srun "
                     "step: Slurm's batch script runs once): this process classifies every input "
                     "(shard 0/1); start it with srun, or give --shard i/N, to classify a part");
      continue;
    }
    if (has(rank) && has(size)) {
      if (from)
        *from =
            concat(rank, "=", excerpt(env[rank], 40), " and ", size, "=", excerpt(env[size], 40));
      if (warning) warning->clear();  // a lone RANK beside a full Slurm pair says nothing
      return env[rank] + "/" + env[size];
    }
    // One of a pair alone (a leftover variable): all inputs are classified, and the line says
    // so; under a launcher every process would.
    if ((has(rank) || has(size)) && say.empty())
      say = concat(has(rank) ? rank : size, "=", excerpt(has(rank) ? env[rank] : env[size], 40),
                   " is set without ", has(rank) ? size : rank,
                   ": this process classifies every input (shard 0/1); give --shard i/N to "
                   "classify a part");
  }
  if (warning) *warning = say;
  return "";
}

// The process's index on its machine under torchrun (LOCAL_RANK) or Slurm (SLURM_LOCALID), as
// shard_from_environment picks the launcher; -1 when unset or not a small number.
int local_rank_from_environment() {
  const char* v = nullptr;
  if (std::getenv("RANK")) {
    v = std::getenv("LOCAL_RANK");
  } else {
    std::map<std::string, std::string> env;  // SLURM_LOCALID counts in an srun task only
    for (const char* name : {"SLURM_STEP_ID", "SLURM_STEPID"})
      if (const char* id = std::getenv(name)) env[name] = id;
    if (pipeline::is_srun_task(env)) v = std::getenv("SLURM_LOCALID");
  }
  if (!v || !*v || std::strlen(v) > 6) return -1;
  for (const char* c = v; *c; ++c)
    if (*c < '0' || *c > '9') return -1;
  return std::atoi(v);
}

std::string join_args(const std::vector<std::string>& args) {
  std::string line = "attnscope classify";
  for (const auto& a : args)
    line += " " + a;
  return line;
}

int run_classify(const std::vector<std::string>& args, const GlobalOptions&) {
  const std::string usage =
      "classify --model CKPT (--input PATH... | --data CSV) --out DIR [options]";
  po::options_description desc("Options");
  DatasetFlags data;
  pipeline::ClassifyOptions o;
  std::vector<std::string> inputs, maps;
  std::string shard, masks, threshold;
  desc.add_options()                                                                         //
      ("model", po::value(&o.model)->required(), "checkpoint (.h5) of an image classifier")  //
      ("input", po::value(&inputs)->multitoken(),
       "image files, folders (recursive) or @list.txt files of paths (relative ones from the "
       "list's folder)")  //
      ("out", po::value(&o.out_dir)->required(),
       "output folder: results.h5, predictions.csv, errors.csv")                                //
      ("batch-size", po::value(&o.batch_size)->default_value(16), "images per forward pass")    //
      ("threads", po::value(&o.threads)->default_value(2), "decode/preprocess worker threads")  //
      ("maps", po::value(&maps)->multitoken(),
       "maps to store, by spaces or commas (default: the model's own attention maps, plus "
       "rollout for ViTs and "
       "gradcam for CNNs; gradient_rollout on request for ViTs)")                         //
      ("overlays", po::bool_switch(&o.overlays), "also store RGB overlays of every map")  //
      ("tta", po::bool_switch(&o.tta),
       "test-time augmentation: the 8 dihedral transforms, probabilities averaged (spread "
       "stored), maps mapped back and averaged")  //
      ("threshold", po::value(&threshold)->default_value("checkpoint"),
       "binary models: malignant when p >= threshold: a number in [0, 1], or 'checkpoint' (the "
       "checkpoint's, else 0.5), as evaluate takes it")  //
      ("masks", po::value(&masks)->default_value(""),
       "folder of lesion masks (<id>_segmentation.png, <id>_Segmentation.png, <id>_mask.png or "
       "<id>.png) for the localisation measures")  //
      ("faithfulness", po::bool_switch(&o.faithfulness),
       "deletion/insertion AUC (RISE) per map beside a random map; with masks, attention mass "
       "in the lesion, Jaccard and pointing game beside a centred Gaussian")  //
      ("faithfulness-steps", po::value(&o.faithfulness_steps)->default_value(32),
       "pixel groups of the deletion/insertion curves")  //
      ("resume", po::bool_switch(&o.resume),
       "continue DIR/results.h5: skip the ids it holds, append the rest")                 //
      ("overwrite", po::bool_switch(&o.overwrite), "replace an existing DIR/results.h5")  //
      ("shard", po::value(&shard)->default_value(""),
       "i/N: classify inputs i, i+N, i+2N, ... (default: from RANK/WORLD_SIZE or "
       "srun's SLURM_PROCID/SLURM_NTASKS, else 0/1)")                                //
      ("device", po::value(&o.device)->default_value("cpu"), "cpu, cuda or cuda:N")  //
      ("precision", po::value(&o.precision)->default_value("fp32"),
       "fp32 | bf16: inference in bfloat16 autocast (stored values stay float32); 1.3-1.6x "
       "faster on CPUs with AVX512-BF16 or AMX (docs/classify.md), slower on others");
  add_decode_reduce_to(desc);
  data.add_to(desc, /*required=*/false);
  po::variables_map vm;
  if (!parse(usage, desc, args, vm)) return 0;
  const auto fail = [&](const std::string& m) { throw UsageError(m, usage_text(usage, desc)); };
  if (inputs.empty() == data.data.empty()) fail("give either --input or --data");
  if (o.batch_size < 1 || o.batch_size > 65536) fail("--batch-size must be between 1 and 65536");
  if (o.threads < 1 || o.threads > kMaxWorkers)
    fail(concat("--threads must be in [1, ", kMaxWorkers, "]"));
  // Each step is a forward pass per curve, map and image: 1024 already changes under 50
  // pixels a step at 224 px.
  if (o.faithfulness_steps < 1 || o.faithfulness_steps > kMaxFaithfulnessSteps)
    fail(concat("--faithfulness-steps must be in [1, ", kMaxFaithfulnessSteps, "]"));
  if (o.resume && o.overwrite) fail("--resume and --overwrite exclude each other");
  if (!runtime::is_device_name(o.device))
    fail("--device must be cpu, cuda or cuda:N, got '" + o.device + "'");
  if (!runtime::is_precision_name(o.precision))
    fail("--precision must be fp32 or bf16, got '" + o.precision + "'");
  o.decode_reduce_to = read_decode_reduce_to(vm, usage_text(usage, desc));
  if (o.out_dir.empty()) fail("--out must name a folder");
  // `--maps a b`, `--maps a,b` (as --mask-loss lists its weights), and `--maps "a b"` or
  // `--maps "a, b"` quoted as one word: each names two maps.
  {
    std::vector<std::string> split;
    for (const auto& m : maps) {
      std::size_t start = 0;
      for (bool last = false; !last;) {
        auto comma = m.find(',', start);
        last = comma == std::string::npos;
        if (last) comma = m.size();
        std::istringstream words(m.substr(start, comma - start));
        std::size_t found = 0;
        for (std::string w; words >> w; ++found)
          split.push_back(w);
        if (found == 0) fail("--maps has an empty name (a comma too many?)");
        start = comma + 1;
      }
    }
    maps = std::move(split);
  }
  for (std::size_t i = 0; i < maps.size(); ++i)
    if (std::find(maps.begin(), maps.begin() + static_cast<std::ptrdiff_t>(i), maps[i]) !=
        maps.begin() + static_cast<std::ptrdiff_t>(i))
      fail("--maps names '" + maps[i] + "' twice");
  o.maps = maps;
  if (threshold != "checkpoint") {
    try {
      std::size_t used = 0;
      o.threshold = std::stod(threshold, &used);
      if (used != threshold.size() || !(*o.threshold >= 0 && *o.threshold <= 1)) throw 0;
    } catch (...) {
      fail("--threshold must be a number in [0, 1] or 'checkpoint', got '" + threshold + "'");
    }
  }
  std::string shard_from;  // the launcher's variables, when --shard was not given
  if (shard.empty()) {
    std::string alone;
    shard = shard_from_environment(&shard_from, &alone);
    if (!alone.empty()) std::cerr << "warning: " << printable(alone) << "\n";
  }
  if (!shard.empty()) {
    try {
      std::tie(o.shard, o.num_shards) = pipeline::parse_shard(shard);
    } catch (const Error& e) {
      // Not the user's --shard: the environment's (exit 1, the variables named).
      if (!shard_from.empty())
        throw Error("classify",
                    concat("the shard taken from ", shard_from, " is '", excerpt(shard, 90),
                           "', not i/N with 0 <= i < N: check the launcher's "
                           "variables, or give --shard"));
      fail(e.what());
    }
  }
  if (!masks.empty()) pipeline::check_masks_folder(masks);
  // What only --faithfulness uses, given without it, computed nothing without a word.
  if (!o.faithfulness && (!masks.empty() || !vm["faithfulness-steps"].defaulted())) {
    const bool steps = !vm["faithfulness-steps"].defaulted();
    std::cerr << "warning: "
              << (masks.empty() ? "--faithfulness-steps is"
                  : steps       ? "--masks and --faithfulness-steps are"
                                : "--masks is")
              << " for the measures of --faithfulness, which was not given: no measure is "
                 "computed\n";
  }
  // The device last among the checks, before any input is read.
  runtime::check_device(o.device, "classify");
  // Several processes of a launcher on one machine: "cuda" is each one's own GPU.
  if (o.device == "cuda")
    o.device = runtime::device_of_local_rank(o.device, local_rank_from_environment(),
                                             runtime::cuda_device_count());
  std::cerr << runtime::precision_warning(o.precision, o.device);
  o.command_line = join_args(args);
  // An output folder inside an input folder: a later run (--resume, or the next classify of
  // the folder) read results.h5 and the CSVs as inputs, each an error row.
  for (const auto& input : inputs) {
    std::error_code ec;
    if (input.empty() || input[0] == '@' || !std::filesystem::is_directory(input, ec)) continue;
    check(!folder_contains(input, o.out_dir), o.out_dir, "is the input folder ", input,
          " or inside it: its files would be read as inputs; choose an output folder outside it");
  }
  data.masks = o.faithfulness;  // only the localisation measures read masks
  auto dataset =
      data.data.empty() ? pipeline::collect_inputs(inputs) : data.read(usage_text(usage, desc));
  if (data.data.empty())  // (the dataset flags print their own)
    for (const auto& w : dataset.warnings)
      std::cerr << "warning: " << excerpt(w, 1000) << "\n";
  if (!masks.empty() && pipeline::attach_masks(dataset, masks) == 0 && !dataset.samples.empty())
    std::cerr << "warning: " << printable(masks)
              << ": no mask matches any input (<id>_segmentation.png, <id>_Segmentation.png, "
                 "<id>_mask.png or <id>.png); the localisation measures stay empty\n";
  // No input at all: nothing is written (an empty results.h5 left behind made the run after
  // adding the images need --overwrite), unless --resume finishes a stored run.
  if (dataset.samples.empty() && !o.resume) {
    std::cerr << "error: no image was classified: the inputs hold no image\n";
    return 1;
  }
  const bool tty = isatty(STDERR_FILENO) != 0;
  int64_t last_line = -1;
  const auto progress = [&](const pipeline::ClassifyProgress& p) {
    const double rate = p.seconds > 0 ? p.done / p.seconds : 0;
    const double eta = rate > 0 ? (p.total - p.done) / rate : 0;
    if (tty) {
      const int width = 30;
      const int filled = p.total > 0 ? static_cast<int>(width * p.done / p.total) : width;
      std::fprintf(stderr, "\r[%s%s] %lld/%lld  %.1f images/s  ETA %.0f s  failed %lld ",
                   std::string(static_cast<std::size_t>(filled), '#').c_str(),
                   std::string(static_cast<std::size_t>(width - filled), '.').c_str(),
                   static_cast<long long>(p.done), static_cast<long long>(p.total), rate, eta,
                   static_cast<long long>(p.failed));
      if (p.done >= p.total) std::fprintf(stderr, "\n");
    } else {
      // Plain lines, about every 10 % (and the last).
      const int64_t decile = p.total > 0 ? 10 * p.done / p.total : 10;
      if (decile == last_line && p.done < p.total) return;
      last_line = decile;
      std::fprintf(stderr, "%lld/%lld images, %.1f images/s, ETA %.0f s, %lld failed\n",
                   static_cast<long long>(p.done), static_cast<long long>(p.total), rate, eta,
                   static_cast<long long>(p.failed));
    }
  };
  // SIGINT / SIGTERM: stop after the current batch, with every inferred batch written.
  runtime::stop_on_signals();
  o.stop_requested = [] { return runtime::stop_requested() != 0; };
  o.warn = [](const std::string& w) { std::cerr << "warning: " << excerpt(w, 1000) << "\n"; };
  const auto s = pipeline::classify(dataset, o, progress);
  if (s.interrupted) {
    const char* sig = runtime::stop_signal_name(runtime::stop_requested());
    const auto h5 = (fs::path(o.out_dir) / "results.h5").string();
    if (s.replaced_nothing) {
      std::cerr << "stopped by " << sig << ": nothing of this run was kept; " << h5
                << " is the previous run's, as it was\n";
    } else {
      std::cerr << "stopped by " << sig << ": " << s.classified << " images classified, "
                << s.failed << " failed, stored in " << printable(h5)
                << "; finish with the same command and --resume\n";
      for (const auto& path : s.written)
        std::cout << "wrote " << printable(path) << "\n";
    }
    return runtime::stopped_exit_status();
  }
  if (const auto late = runtime::finish_stop_requests(); !late.empty()) std::cerr << late << "\n";
  for (const auto& line : s.summary)
    std::cout << line << "\n";
  if (s.skipped > 0) std::cout << "resumed: " << s.skipped << " inputs already stored\n";
  std::cout << "classified " << s.classified << ", failed " << s.failed << "\n";
  for (const auto& path : s.written)
    std::cout << "wrote " << printable(path) << "\n";
  if (s.classified > 0) return 0;
  // Exit 1 says so in one line.
  // The file stays (its /errors is the record), so the next run must say what to do with it.
  if (s.failed > 0)
    std::cerr << "error: no image was classified: all " << s.failed
              << " failed (their reasons are in "
              << printable((fs::path(o.out_dir) / "errors.csv").string())
              << "); once they are mended, classify them again with --overwrite (--resume keeps "
                 "a failed image failed)\n";
  else
    std::cerr << "error: no image was classified: the inputs hold no image\n";
  return 1;
}

const Registration kClassify("classify",
                             "classify images in batches into results.h5 with attention maps",
                             run_classify);

}  // namespace
}  // namespace attnscope::cli
