// attnscope train: train an image classifier on labelled images (ISIC ground truth + images,
// a generic CSV, class folders, a synthetic folder's labels.csv, or an HDF5 image cache) into a run
// folder. The loop, checkpoints and metrics are pipeline/vision/train.h's; this file reads the
// data, splits it, checks the images and prints progress.

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iomanip>
#include <iostream>
#include <limits>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_set>
#include <utility>

#include <nlohmann/json.hpp>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/folder_lock.h"
#include "attnscope/json_text.h"
#include "attnscope/output_checks.h"
#include "attnscope/threads.h"
#include "attnscope/version.h"
#include "cli.h"
#include "dataset_flags.h"
#include "datasets/splits.h"
#include "distributed_flags.h"
#include "models/vision/presets.h"
#include "models/vision/vit.h"
#include "pipeline/checkpoint.h"
#include "pipeline/h5.h"
#include "pipeline/vision/evaluate.h"
#include "pipeline/vision/image_cache.h"
#include "pipeline/vision/train.h"
#include "runtime/precision.h"
#include "runtime/runtime.h"

namespace attnscope::cli {
namespace {

namespace fs = std::filesystem;

const char* const kUsage =
    "train --data SPEC --model PRESET --out RUN [options] | --resume RUN [--quiet]";

bool is_cache(const std::string& spec) {
  return fs::path(spec).extension() == ".h5";
}

// A resumed run's best.h5, read and verified. A damaged one need not end the run: its error
// says how to go on without it.
pipeline::CheckpointMeta read_best_checkpoint(const std::string& best) {
  try {
    auto meta = pipeline::read_checkpoint_meta(best);
    // What the run takes from it (the best epoch's calibration) and evaluate checks.
    pipeline::checkpoint_temperature(meta, best);
    pipeline::checkpoint_threshold(meta, best);
    return meta;
  } catch (const Error& e) {
    throw Error(e.subject(), concat(e.message(),
                                    "; move it out of the run folder to resume "
                                    "without it (the next epoch better than the best "
                                    "so far writes it again)"));
  }
}

datasets::Dataset dataset_of(const datasets::SampleSource& source) {
  datasets::Dataset ds;
  ds.class_names = source.class_names();
  for (std::size_t i = 0; i < source.size(); ++i)
    ds.samples.push_back(source.sample(i));
  return ds;
}

// FNV-1a 64 over what identifies the data: ids, labels, groups, paths and file sizes.
std::string data_checksum(const datasets::SampleSource& train, const datasets::SampleSource& val) {
  uint64_t h = 1469598103934665603ULL;
  auto add = [&](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ULL;
    }
    h ^= 0xff;
    h *= 1099511628211ULL;
  };
  for (const auto* source : {&train, &val}) {
    add("|");
    for (std::size_t i = 0; i < source->size(); ++i) {
      const auto& s = source->sample(i);
      add(s.image_id);
      add(std::to_string(s.label));
      add(s.group.value_or(""));
      std::error_code ec;
      const auto size = s.path.empty() ? 0 : fs::file_size(s.path, ec);
      add(std::to_string(ec ? 0 : size));
    }
  }
  char text[32];
  std::snprintf(text, sizeof(text), "fnv1a64:%016llx", static_cast<unsigned long long>(h));
  return text;
}

struct BadImage {
  std::string id, path, message;
};

// Decodes every image once (with `workers` threads) and returns the ones that fail.
std::vector<BadImage> find_bad_images(const datasets::SampleSource& source, int workers) {
  std::vector<BadImage> bad;
  std::mutex mutex;
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t i = next++; i < source.size(); i = next++) {
      try {
        source.load(i);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(mutex);
        bad.push_back({source.sample(i).image_id, source.sample(i).path, e.what()});
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < std::max(workers, 1); ++t)
    threads.push_back(start_thread(work));
  for (auto& t : threads)
    t.join();
  std::sort(bad.begin(), bad.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return bad;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s)
    out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::vector<double> parse_doubles(const std::string& text, const std::string& flag,
                                  const std::string& usage) {
  std::vector<double> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      std::size_t used = 0;
      out.push_back(std::stod(item, &used));
      if (used != item.size()) throw std::invalid_argument(item);
    } catch (const std::exception&) {
      throw UsageError(flag + " expects comma-separated numbers, got '" + text + "'", usage);
    }
  }
  return out;
}

// `train --resume RUN`, also written `--resume=RUN`, and with --quiet (how this invocation
// reports, not part of the run: the one option --resume takes, not added to the stored command
// line, which best.h5 and last.h5 must share): made {"--resume", RUN}, `quiet` set.
std::vector<std::string> normalised_resume(std::vector<std::string> args, bool& quiet) {
  const auto is_resume = [](const std::string& a) {
    return a == "--resume" || a.rfind("--resume=", 0) == 0;
  };
  if (!std::any_of(args.begin(), args.end(), is_resume)) return args;
  const auto q = std::find(args.begin(), args.end(), "--quiet");
  if (q != args.end() && args.size() <= 3) {
    args.erase(q);
    quiet = true;
  }
  if (args.size() == 1 && args[0].rfind("--resume=", 0) == 0)
    args = {"--resume", args[0].substr(std::string("--resume=").size())};
  if (args.size() == 1 && args[0] == "--resume")
    throw UsageError("--resume needs a value: the run folder", concat("usage: attnscope ", kUsage));
  return args;
}

int run_train(const std::vector<std::string>& given_args, bool quiet_now,
              const GlobalOptions& global, std::optional<pipeline::DistributedConfig>& announce) {
  // --resume RUN alone: the stored command line of the run, continued from RUN/last.h5.
  std::vector<std::string> args = given_args;
  std::string resume_dir;
  // With other options Boost would first ask for --data, which --resume must not be given.
  const bool resuming = std::any_of(args.begin(), args.end(), [](const std::string& a) {
    return a == "--resume" || a.rfind("--resume=", 0) == 0;
  });
  const bool help = std::any_of(args.begin(), args.end(),
                                [](const std::string& a) { return a == "--help" || a == "-h"; });
  if (resuming && args.size() != 2 && !help)
    throw UsageError(
        "--resume RUN takes no other option than --quiet (the run's are used)",
        concat("usage: attnscope ", kUsage, "\n(attnscope train --help lists the options)"));
  if (args.size() == 2 && args[0] == "--resume" && args[1].empty())
    throw UsageError("--resume is empty: give it a value", concat("usage: attnscope ", kUsage));
  if (args.size() == 2 && (args[0] == "--resume")) {
    // Absolute before the working folder changes below.
    resume_dir = fs::absolute(args[1]).lexically_normal().string();
    const auto last = (fs::path(resume_dir) / "last.h5").string();
    check(fs::exists(resume_dir), resume_dir,
          "does not exist: --resume takes the --out folder of "
          "an earlier `attnscope train` run");
    check(fs::is_directory(resume_dir), resume_dir, "is not a folder");
    // best.h5 without last.h5: an epoch ended, and its last.h5 (written after best.h5) was not
    // (a kill between the two, a full disk).
    check(fs::exists(last) || !fs::exists(fs::path(resume_dir) / "best.h5"), resume_dir,
          "has best.h5 but no last.h5: the checkpoint that --resume continues from was not "
          "written (the run was killed between the two, or the disk was full); start the run "
          "again, or from its best weights with --init ",
          (fs::path(resume_dir) / "best.h5").string());
    check(fs::exists(last), resume_dir,
          "has no last.h5: not a run folder of `attnscope train` (or no epoch completed yet)");
    const auto meta = pipeline::read_checkpoint_meta(last);
    // Attributes of a file from anywhere: a field of another type is one line naming it.
    check(json_field(meta.extra, "command", std::string(), last, "extra.command") == "train" &&
              meta.provenance.contains("args"),
          last, "is not the checkpoint of an `attnscope train` run (no stored command line)");
    args = json_field(meta.provenance, "args", std::vector<std::string>(), last, "provenance.args");
    // A run started when an empty value meant "not given" (`--val ''`) stored it so: dropped,
    // as it was read then (typed commands refuse empty values).
    for (std::size_t i = 0; i < args.size();) {
      const bool flag_then_empty =
          i + 1 < args.size() && args[i].rfind("--", 0) == 0 && args[i + 1].empty();
      if (flag_then_empty) {
        args.erase(args.begin() + static_cast<std::ptrdiff_t>(i),
                   args.begin() + static_cast<std::ptrdiff_t>(i + 2));
      } else if (args[i].rfind("--", 0) == 0 && args[i].size() > 3 && args[i].back() == '=') {
        args.erase(args.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
    // The stored command line's relative paths (--data, --images, --val, --augment, --init)
    // were relative to the folder the run started in: read them from there again, wherever
    // --resume is typed.
    const auto started_in =
        json_field(meta.provenance, "cwd", std::string(), last, "provenance.cwd");
    std::error_code ec;
    if (!started_in.empty() && fs::is_directory(started_in, ec))
      fs::current_path(started_in);
    else if (!started_in.empty())
      std::cerr << "warning: " << resume_dir << " was started in " << started_in
                << ", which is no longer a folder; its relative paths are read from here\n";
    // last.h5 must be this folder's own: best.h5 (when an epoch made one) was written by the
    // same command line. A last.h5 copied in from another run would continue that run here,
    // over this folder's metrics.jsonl.
    const auto best = (fs::path(resume_dir) / "best.h5").string();
    if (fs::exists(best)) {
      const auto best_meta = read_best_checkpoint(best);
      check(best_meta.provenance.value("args", nlohmann::json()) == meta.provenance["args"], last,
            "and ", best, " come from different runs (other command lines): not resuming");
    }
  }
  po::options_description desc("Options");
  DatasetFlags data;
  data.add_to(desc);
  DistributedFlags dist;
  std::string model_name, out, val_spec, optimizer, schedule, loss, sampler, augment, mask_loss,
      init, init_backbone, device, precision, select_by, resume_flag, val_images, teacher, distill;
  std::vector<std::string> oversample;
  int64_t size = 0, batch_size = 0, epochs = 0, step_every = 0, patience = 0, progress_every = 0;
  double val_split = 0, lr = 0, momentum = 0, weight_decay = 0, warmup_epochs = 0, step_gamma = 0,
         focal_gamma = 0, label_smoothing = 0, ema = 0, time_budget = 0, mixup = 0, cutmix = 0,
         drop_path = 0, distill_alpha = 0, distill_temperature = 0;
  uint64_t seed = 0;
  int workers = 2, threads = 0;
  bool nesterov = false, skip_bad = false, cache = false, quiet = false, cpu_budget = false,
       shifted_patches = false, locality_attention = false, conv_stem = false;
  // clang-format off
  desc.add_options()
      ("model", po::value(&model_name)->required(), "preset (attn_small, attn_resnet18, attn_vgg16, resnet18, small_cnn, vit_mini_patch8, ...)")
      ("out", po::value(&out)->required(), "run folder (created): metrics.jsonl, timing.jsonl, last.h5, best.h5")
      ("val", po::value(&val_spec)->default_value(""), "validation data (same forms as --data); default: split off --data")
      ("val-images", po::value(&val_images)->default_value(""), "folder of the --val CSV's images; default: the images/ folder next to it, else --images")
      ("val-split", po::value(&val_split)->default_value(0.2, "0.2"), "share of --data for validation, grouped by lesion/patient when known, stratified")
      ("size", po::value(&size)->default_value(224), "image side (short-side resize + centre crop) when no --augment config; with one, the side a ViT's position grid is laid out for (resampled to the images' token grid)")
      ("batch-size", po::value(&batch_size)->default_value(32), "images per batch")
      ("epochs", po::value(&epochs)->default_value(30), "epochs")
      ("optimizer", po::value(&optimizer)->default_value("sgd"), "sgd | adamw")
      ("lr", po::value(&lr)->default_value(0.01, "0.01"), "learning rate (peak, after warmup)")
      ("momentum", po::value(&momentum)->default_value(0.9, "0.9"), "SGD momentum")
      ("nesterov", po::bool_switch(&nesterov), "SGD with Nesterov momentum")
      ("weight-decay", po::value(&weight_decay)->default_value(1e-4, "1e-4"), "L2 (sgd) / decoupled (adamw) weight decay")
      ("schedule", po::value(&schedule)->default_value("cosine"), "cosine | step | constant")
      ("warmup-epochs", po::value(&warmup_epochs)->default_value(0.0, "0"), "linear warmup (may be fractional)")
      ("step-every", po::value(&step_every)->default_value(10), "step schedule: epochs between rate cuts")
      ("step-gamma", po::value(&step_gamma)->default_value(0.1, "0.1"), "step schedule: factor per cut")
      ("loss", po::value(&loss)->default_value("ce"), "ce | weighted-ce | focal")
      ("focal-gamma", po::value(&focal_gamma)->default_value(2.0, "2"), "focal loss gamma")
      ("label-smoothing", po::value(&label_smoothing)->default_value(0.0, "0"), "label smoothing in [0, 1)")
      ("mixup", po::value(&mixup)->default_value(0.0, "0"), "Mixup alpha (e.g. 0.8): each batch blended with itself reversed, lambda ~ Beta(alpha, alpha), the loss mixed alike; 0 = off")
      ("cutmix", po::value(&cutmix)->default_value(0.0, "0"), "CutMix alpha (e.g. 1.0): a box pasted from the reversed batch; with --mixup, each batch one or the other (p 0.5); 0 = off")
      ("drop-path", po::value(&drop_path)->default_value(0.0, "0"), "ViT presets: stochastic depth rate of the last block (e.g. 0.1), rising linearly from 0 at the first; 0 = off")
      ("shifted-patches", po::bool_switch(&shifted_patches), "ViT presets: Shifted Patch Tokenization (SPT, Lee et al. 2021): each patch token also sees the image shifted diagonally by half a patch")
      ("locality-attention", po::bool_switch(&locality_attention), "ViT presets: Locality Self-Attention (LSA, Lee et al. 2021): a learned softmax scale per head, no token attending to itself")
      ("conv-stem", po::bool_switch(&conv_stem), "ViT presets: a convolutional stem (ViTc, Xiao et al. 2021): stride-2 3x3 convolutions with BatchNorm and ReLU instead of the patchify convolution, same token grid")
      ("sampler", po::value(&sampler)->default_value("shuffle"), "shuffle | balanced (classes equally likely)")
      ("oversample", po::value(&oversample)->composing(), "CLASS=K: repeat that class's images K times per epoch (repeatable)")
      ("ema", po::value(&ema)->default_value(0.0, "0"), "EMA decay of the weights (e.g. 0.999); validation and best.h5 use the EMA weights; 0 = off")
      ("augment", po::value(&augment)->default_value(""), "preprocessing config (JSON) with its augmentations; default: --size resize, flips and 90-degree rotations")
      ("mask-loss", po::value(&mask_loss)->default_value(""), "W1,W2: Dice loss weight per attention map when the data has masks")
      ("teacher", po::value(&teacher)->default_value(""), "knowledge distillation from this trained checkpoint (same classes; e.g. a CNN teaching a ViT): it sees every training batch, re-normalised and resized to its own preprocessing")
      ("distill", po::value(&distill)->default_value("soft"), "with --teacher: soft (KL divergence to its probabilities at --distill-temperature, Hinton et al. 2015) | hard (cross-entropy against its predicted class, DeiT)")
      ("distill-alpha", po::value(&distill_alpha)->default_value(0.5, "0.5"), "with --teacher: loss = (1 - alpha) * class loss + alpha * distillation loss")
      ("distill-temperature", po::value(&distill_temperature)->default_value(1.0, "1"), "with --teacher and --distill soft: the softmax temperature T (the term is scaled by T^2)")
      ("init", po::value(&init)->default_value(""), "start from this checkpoint (strict)")
      ("init-backbone", po::value(&init_backbone)->default_value(""), "load everything but the head from this checkpoint")
      ("seed", po::value(&seed)->default_value(0), "random seed (split, order, augmentation, initialisation)")
      ("threads", po::value(&threads)->default_value(0), "LibTorch threads; 0 = the global --threads")
      ("workers", po::value(&workers)->default_value(2), "loader threads (decoding and augmentation)")
      ("device", po::value(&device)->default_value("cpu"), "cpu, cuda or cuda:N")
      ("precision", po::value(&precision)->default_value("fp32"), "fp32 | bf16: the forward pass in bfloat16 autocast (weights, loss, optimiser and validation stay float32); 1.5-1.9x faster on CPUs with AVX512-BF16 or AMX (docs/training-on-isic.md), slower on others")
      ("time-budget", po::value(&time_budget)->default_value(0.0, "0"), "stop after this many minutes; 0 = none")
      ("cpu-budget", po::bool_switch(&cpu_budget), "count --time-budget in process CPU time instead of wall time")
      ("patience", po::value(&patience)->default_value(0), "stop after N epochs without improvement of --select-by; 0 = off")
      ("skip-bad", po::bool_switch(&skip_bad), "leave out unreadable images (listed in RUN/skipped.csv) instead of stopping")
      ("cache", po::bool_switch(&cache), "decode and preprocess once into RUN/cache-{train,val}.h5 and train from it")
      ("select-by", po::value(&select_by)->default_value("auc"), "auc | loss | accuracy | balanced_accuracy: picks best.h5")
      ("resume", po::value(&resume_flag)->default_value(""), "continue RUN from RUN/last.h5 (give it alone, or with --quiet: the stored options are used)")
      ("progress-every", po::value(&progress_every)->default_value(10), "batches between plain progress lines (not on a terminal)")
      ("quiet", po::bool_switch(&quiet), "no progress output");
  // clang-format on
  dist.add_to(desc);
  po::variables_map vm;
  if (!parse(kUsage, desc, args, vm)) return 0;
  const auto usage = usage_text(kUsage, desc);
  const auto fail = [&](const std::string& m) { throw UsageError(m, usage); };
  // The command line and the working folder (provenance.args and .cwd, which --resume reads).
  check_utf8_arguments(
      args, "train records its command line as UTF-8 text; rename the file or folder", usage);
  check_utf8_arguments({fs::current_path().string()},
                       "train records its working folder as UTF-8 text; run it from another folder",
                       usage);
  if (!resume_flag.empty())
    fail("--resume RUN takes no other option than --quiet (the run's are used)");
  if (quiet_now) quiet = true;
  if (!resume_dir.empty()) out = resume_dir;
  if (!models::vision::is_image_preset(model_name))
    fail("--model: unknown preset '" + model_name +
         "' (presets: " + models::vision::image_preset_list() + ")");
  if (size < 16 || size > 4096) fail("--size must be in [16, 4096]");  // model_config's range
  if (batch_size < 1 || epochs < 1) fail("--batch-size and --epochs must be >= 1");
  if (batch_size > 65536) fail("--batch-size must be at most 65536");
  // Far past any run (a --time-budget ends it first), and epochs × batches stays countable.
  if (epochs > 1000000) fail("--epochs must be at most 1000000");
  if (val_spec.empty() && !(val_split > 0 && val_split < 1)) fail("--val-split must be in (0, 1)");
  // Two validation sets: --val took over and --val-split was dropped without a word. (A run
  // started before this check resumes as it ran: --val.)
  if (resume_dir.empty() && !val_spec.empty() && !vm["val-split"].defaulted())
    fail(
        "--val and --val-split are two validation sets: give one (--val: a dataset of its own; "
        "--val-split: a share of --data)");
  if (optimizer != "sgd" && optimizer != "adamw") fail("--optimizer must be sgd or adamw");
  // Two starts: the result matched neither alone.
  if (!init.empty() && !init_backbone.empty())
    fail(
        "--init and --init-backbone are two starting points: give one (--init: the whole "
        "model; --init-backbone: all but the head)");
  // The other words too, before the run folder is made (train() checks them again for its
  // other callers).
  for (const auto& [flag, value] :
       std::initializer_list<std::pair<const char*, const std::string*>>{{"schedule", &schedule},
                                                                         {"loss", &loss},
                                                                         {"sampler", &sampler},
                                                                         {"select-by", &select_by},
                                                                         {"distill", &distill}}) {
    const auto bad = pipeline::bad_train_word(flag, *value);
    if (!bad.empty()) fail("--" + bad);
  }
  // Every number before any work (NaN fails every comparison, so each test is written to pass
  // only for a number inside the range).
  const auto in_range = [&](const char* flag, double v, double lo, bool lo_open, double hi,
                            bool hi_open) {
    const bool ok =
        std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (ok) return;
    std::ostringstream got;
    got << std::setprecision(12) << v;  // 1.0000001 is not printed as 1
    fail(concat("--", flag, " must be in ", lo_open ? "(" : "[", lo, ", ",
                std::isinf(hi) ? "inf" : concat(hi), hi_open ? ")" : "]", ", got ", got.str()));
  };
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // Upper bounds far above any useful value, low enough that the float32 the optimiser keeps
  // holds them (--lr 1e39 was LibTorch's "cannot be converted to type float without overflow").
  in_range("lr", lr, 0, true, 1000, false);
  in_range("momentum", momentum, 0, false, 1, true);
  in_range("weight-decay", weight_decay, 0, false, 1000, false);
  in_range("warmup-epochs", warmup_epochs, 0, false, 1e6, false);
  in_range("step-gamma", step_gamma, 0, true, 1000, false);
  in_range("focal-gamma", focal_gamma, 0, false, 1000, false);
  in_range("label-smoothing", label_smoothing, 0, false, 1, true);
  in_range("time-budget", time_budget, 0, false, kInf, true);
  in_range("mixup", mixup, 0, false, 1000, false);
  in_range("cutmix", cutmix, 0, false, 1000, false);
  in_range("drop-path", drop_path, 0, false, 1, true);
  in_range("distill-alpha", distill_alpha, 0, false, 1, false);
  in_range("distill-temperature", distill_temperature, 0, true, 1000, false);
  if (drop_path > 0 && !models::vision::is_vit(model_name))
    fail("--drop-path applies to the ViT presets only (stochastic depth of their blocks), not '" +
         model_name + "'");
  if ((shifted_patches || locality_attention || conv_stem) && !models::vision::is_vit(model_name))
    fail(std::string("--") +
         (shifted_patches      ? "shifted-patches"
          : locality_attention ? "locality-attention"
                               : "conv-stem") +
         " applies to the ViT presets only, not '" + model_name + "'");
  if (shifted_patches && conv_stem)
    fail("--shifted-patches and --conv-stem cannot be combined (both replace the patch embedding)");
  if (step_every < 1) fail("--step-every must be >= 1");
  // A decay every 6e18 epochs (× the batches) overflowed and ran at a rate of 0.
  if (step_every > 1000000) fail("--step-every must be at most 1000000");
  if (patience < 0) fail("--patience must be >= 0");
  if (progress_every < 1) fail("--progress-every must be >= 1");
  if (!mask_loss.empty())
    for (const double w : parse_doubles(mask_loss, "--mask-loss", usage))
      in_range("mask-loss", w, 0, false, 1000, false);
  // A ViT's map is its attention rollout, computed after the fact without gradients: a Dice
  // term on it was recorded and trained nothing.
  if (!mask_loss.empty() && models::vision::is_vit(model_name) && resume_dir.empty())
    fail(
        "--mask-loss trains the attention maps of the attention CNNs (attn_small, "
        "attn_resnet18, ...); '" +
        model_name + "' is a ViT, whose rollout map has no gradient to train");
  if (workers < 0 || workers > kMaxWorkers)
    fail(concat("--workers must be in [0, ", kMaxWorkers, "]"));
  if (threads < 0 || threads > kMaxWorkers)
    fail(concat("--threads must be in [0, ", kMaxWorkers, "]"));
  if (ema != 0 && !(ema > 0 && ema < 1)) fail("--ema must be in (0, 1)");
  std::map<std::string, int64_t> oversample_map;
  std::vector<std::string> items;  // repeatable, and comma-separated lists
  for (const auto& given : oversample) {
    std::size_t start = 0;
    for (std::size_t comma; (comma = given.find(',', start)) != std::string::npos; start = comma + 1)
      items.push_back(given.substr(start, comma - start));
    items.push_back(given.substr(start));
  }
  for (const auto& item : items) {
    const auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      fail("--oversample expects CLASS=K, got '" + item + "'");
    // K whole and in [1, 1000]: "2abc" and "2.5" were read as 2, 2e9 ran out of memory.
    const auto text = item.substr(eq + 1);
    std::size_t used = 0;
    int64_t k = 0;
    try {
      k = std::stoll(text, &used);
    } catch (const std::exception&) {
    }
    if (used == 0 || used != text.size() || k < 1 || k > 1000)
      fail("--oversample expects CLASS=K with a whole K in [1, 1000], got '" + item + "'");
    const auto [at, fresh] = oversample_map.emplace(item.substr(0, eq), k);
    if (!fresh && at->second != k)
      fail(concat("--oversample gives the class '", excerpt(at->first, 60), "' twice (", at->second,
                  " and ", k, ")"));
  }
  if (threads > 0) runtime::set_threads(threads);

  // Data-parallel when a launcher (torchrun, srun) or the variables say so (docs/distributed.md).
  // Every rank runs this command; only rank 0 writes RUN and prints. Until the group forms, a
  // rank that stops (an option value the others lack, a file missing on its machine) tells the
  // others through the store (run_train_or_resume), which waited out --dist-timeout for it:
  // before this point with what the environment and --master-addr say, from here with every
  // flag.
  const auto dist_config = dist.config();
  const int world = dist_config.world_size;
  if (world > 1)
    announce = dist_config;
  else
    announce.reset();
  if (!runtime::is_device_name(device))
    fail("--device must be cpu, cuda or cuda:N, got '" + device + "'");
  if (!runtime::is_precision_name(precision))
    fail("--precision must be fp32 or bf16, got '" + precision + "'");
  if (world > 1) {
    if (time_budget > 0) fail("--time-budget is not supported with several ranks yet");
    if (cache) fail("--cache is not supported with several ranks yet");
    if (device != "cpu") fail("several ranks train on the CPU only (Gloo; no NCCL in this build)");
  }
  // The device last among the checks, before any file is read.
  runtime::check_device(device, "train");
  // A checkpoint to start from that is not there is named before the run folder is made (an
  // empty folder was left behind).
  for (const auto& [flag, file] : {std::pair<const char*, const std::string*>{"--init", &init},
                                   {"--init-backbone", &init_backbone},
                                   {"--teacher", &teacher}}) {
    std::error_code missing;
    if (!file->empty() && !fs::exists(*file, missing))
      throw Error(*file, concat("no such file (", flag, ")"));
  }
  // The files this run reads from elsewhere are checked in forked children
  // (h5::check_untrusted_file, once per file per process): before the group's threads exist
  // (heartbeat, TCPStore, Gloo), since a fork must not meet a thread holding a lock.
  if (world > 1) {
    if (!resume_dir.empty()) {
      pipeline::verify_checkpoint((fs::path(resume_dir) / "last.h5").string());
      const auto best = fs::path(resume_dir) / "best.h5";
      if (fs::exists(best)) read_best_checkpoint(best.string());
    }
    for (const auto* ckpt : {&init, &init_backbone, &teacher})
      if (!ckpt->empty()) pipeline::verify_checkpoint(*ckpt);
    for (const auto* spec : {&data.data, &val_spec})
      if (is_cache(*spec)) pipeline::h5::check_untrusted_file(*spec, false);
  }
  // A network interface this machine lacks is this rank's mistake too.
  if (world > 1) pipeline::DistributedGroup::check_interfaces(dist_config);
  announce.reset();  // from here on the group names a rank that stops
  std::unique_ptr<pipeline::DistributedGroup> group;
  if (world > 1) group = std::make_unique<pipeline::DistributedGroup>(dist_config);
  const bool main_rank = !group || group->is_main();
  if (!main_rank) quiet = true;
  // What only --teacher uses, given without it, changed nothing without a word.
  if (main_rank && teacher.empty()) {
    std::string unused;
    int n = 0;
    for (const char* f : {"distill", "distill-alpha", "distill-temperature"})
      if (!vm[f].defaulted()) unused += std::string(n++ ? ", --" : "--") + f;
    if (n > 0)
      std::cerr << "warning: " << unused << (n == 1 ? " is" : " are")
                << " for --teacher, which is not given: nothing is distilled\n";
  }
  // A run folder this command made and left empty (the data or the first batch failed) is
  // removed again (the folder itself; parents create_directories made with it stay).
  bool made_folder = false;
  std::optional<FolderLock> folder_lock;  // held until the failed run's folder is removed
  try {
    const bool resume = !resume_dir.empty();
    if (resume) {
      const auto last = (fs::path(resume_dir) / "last.h5").string();
      const auto stored = json_field(pipeline::read_checkpoint_meta(last).provenance, "world_size",
                                     int64_t{1}, last, "provenance.world_size");
      check(stored == world, resume_dir, "was trained with ", stored,
            " rank(s); resume it with the same number (now ", world,
            "): the batches of each rank depend on it");
    }

    // The run folder: checked before any work (rank 0 alone writes it).
    std::error_code ec;
    if (main_rank) {
      made_folder = !fs::exists(out, ec) && fs::create_directories(out, ec);
      check(fs::is_directory(out), out, "cannot create the run folder",
            ec ? concat(" (", ec.message(), ")") : std::string());
      check(::access(out.c_str(), W_OK) == 0, out, "run folder is not writable");
      // One run per folder (attnscope/folder_lock.h), taken before the checks below and the
      // removal of temporary files, which would otherwise be another live run's.
      folder_lock.emplace(out, "wait for it to end or choose another --out");
      if (!resume && fs::exists(fs::path(out) / "last.h5"))
        throw Error(out, "already holds a run (last.h5); continue it with --resume " + out +
                             " or choose another --out");

      // Temporary files of a killed run (AtomicFile's ".<name>.<pid>-<n>.tmp...") are garbage.
      for (const auto& entry : fs::directory_iterator(out)) {
        const auto name = entry.path().filename().string();
        if (name.size() > 1 && name[0] == '.' && name.find(".tmp") != std::string::npos)
          fs::remove(entry.path(), ec);
      }
    }

    // Preprocessing.
    preprocessing::Pipeline pipeline;
    if (augment.empty()) {
      pipeline = preprocessing::Pipeline::from_json(
          {{"steps", {{{"op", "resize"}, {"size", size}}}},
           {"augment", {{"hflip", 0.5}, {"vflip", 0.5}, {"rot90", 0.5}}}});
    } else {
      pipeline = preprocessing::Pipeline::from_file(augment);
    }
    // A ViT's patches must tile the images the pipeline makes (a photograph's 4:3 shape as the
    // probe) and the side its position-embedding grid is laid out for (--size; with --augment
    // the grid is resampled bicubically to the images' token grid in every forward pass, which
    // trained better on isic-uda1 than a grid of the images' own side: docs/training-on-isic.md).
    if (models::vision::is_vit(model_name)) {
      const auto patch = models::vision::vit_preset_options(model_name, 2).patch_size();
      const auto made = pipeline.process(cv::Mat(384, 512, CV_8UC3, cv::Scalar::all(128))).image;
      const bool made_ok = made.rows % patch == 0 && made.cols % patch == 0;
      if (!made_ok || size % patch != 0)
        throw Error("--model " + model_name,
                    concat("its patches of ", patch, " px do not tile the ",
                           made_ok ? size : made.cols, " x ", made_ok ? size : made.rows,
                           made_ok ? " grid --size lays out"
                                   : " images " +
                                         (augment.empty() ? std::string("--size")
                                                          : "--augment " + augment) +
                                         " makes",
                           ": choose a side that is a multiple of ", patch));
    }

    // Data.
    auto open_spec = [&](const std::string& spec, const std::string& images)
        -> std::pair<std::shared_ptr<const datasets::SampleSource>, datasets::Dataset> {
      if (is_cache(spec)) {
        auto source = std::make_shared<pipeline::ImageCacheSource>(spec);
        // Images `cache` could not read are not in it (it exited 1 and listed them): said, as a
        // run on the images themselves would stop on them (or skip them with --skip-bad).
        const auto& missing = source->build_errors();
        if (!missing.empty() && main_rank)
          std::cerr << "warning: " << excerpt(spec, 200) << " was built without " << missing.size()
                    << " image(s) that could not be read (its /errors, e.g. "
                    << excerpt(missing.front().second.rfind(missing.front().first, 0) == 0
                                   ? missing.front().second  // the reason names the image
                                   : missing.front().first + ": " + missing.front().second,
                               300)
                    << "); the run uses the " << source->size() << " it holds\n";
        const auto made_with = source->preprocessing().value("steps", nlohmann::json());
        const auto wanted = pipeline.to_json()["steps"];
        check(made_with == wanted, spec, "holds images made with the steps ",
              json_excerpt(made_with, 300), ", this run's are ", json_excerpt(wanted, 300),
              " (from ", augment.empty() ? "--size" : "--augment " + augment,
              "): give the run the cache's, or rebuild the cache with `attnscope cache --size N` "
              "or `--config FILE` for this run");
        return {source, dataset_of(*source)};
      }
      DatasetFlags flags = data;
      flags.data = spec;
      flags.images = images;
      auto ds = flags.read(usage);
      return {std::make_shared<datasets::ImageFileSource>(ds, pipeline.decode_options()), ds};
    };
    auto [all_source, all] = open_spec(data.data, data.images);
    check(!all.samples.empty(), data.data, "holds no images: the dataset is empty");
    // A Dice term without masks is never applied: one line, not a run that ignores the flag.
    if (main_rank && !mask_loss.empty() && !is_cache(data.data) &&
        std::none_of(all.samples.begin(), all.samples.end(),
                     [](const datasets::Sample& s) { return s.mask_path.has_value(); }))
      std::cerr << "warning: --mask-loss: " << printable(data.data)
                << " names no lesion mask (a generic CSV's mask column): no Dice term is "
                   "applied\n";
    std::shared_ptr<const datasets::SampleSource> train_source, val_source;
    if (!val_spec.empty()) {
      train_source = all_source;
      // The validation images: --val-images; else the images/ folder next to the --val CSV
      // when there is one; else --images (one folder for both CSVs, as ISIC 2019/2020 ship).
      std::string images = val_images;
      if (images.empty() && !fs::is_directory(val_spec) &&
          !fs::is_directory(fs::path(val_spec).parent_path() / "images"))
        images = data.images;
      auto [source, val_set] = open_spec(val_spec, images);
      val_source = source;
      // Images in both sets (the same image id) make the validation metrics measure images the
      // model trains on: said, not refused (a deliberate sanity run may want it).
      std::unordered_set<std::string> train_ids;
      for (const auto& s : all.samples)
        train_ids.insert(s.image_id);
      std::size_t shared = 0;
      std::string first;
      for (const auto& s : val_set.samples)
        if (train_ids.count(s.image_id) && shared++ == 0) first = s.image_id;
      if (shared > 0 && main_rank)
        std::cerr << "warning: " << shared << " of the " << val_set.samples.size()
                  << " validation images (--val " << excerpt(val_spec, 200)
                  << ") are also training images (the same image id, e.g. '" << excerpt(first, 100)
                  << "'): the validation metrics and best.h5's choice measure images the model "
                     "trains on\n";
    } else {
      datasets::SplitOptions split;
      split.val = val_split;
      split.test = 0;
      split.seed = seed;
      const auto splits = datasets::split_dataset(all, split);
      std::vector<std::size_t> train_idx, val_idx;
      for (std::size_t i = 0; i < splits.size(); ++i)
        (splits[i] == datasets::Split::kVal ? val_idx : train_idx).push_back(i);
      std::vector<int64_t> train_counts(all.class_names.size(), 0),
          val_counts(all.class_names.size(), 0);
      for (auto i : train_idx)
        if (all.samples[i].labelled())
          ++train_counts.at(static_cast<std::size_t>(all.samples[i].label));
      for (auto i : val_idx)
        if (all.samples[i].labelled())
          ++val_counts.at(static_cast<std::size_t>(all.samples[i].label));
      for (std::size_t c = 0; c < all.class_names.size(); ++c)
        check(train_counts[c] == 0 || val_counts[c] > 0, data.data, "--val-split ", val_split,
              " leaves class '", all.class_names[c], "' (", train_counts[c],
              " training images) out of the validation set; use a larger --val-split or --val");
      train_source = std::make_shared<pipeline::IndexedSource>(all_source, train_idx);
      val_source = std::make_shared<pipeline::IndexedSource>(all_source, val_idx);
    }

    // Unreadable images: all listed before the first step; --skip-bad leaves them out.
    std::vector<BadImage> skipped;
    // Every bad file of both sets is listed before stopping.
    // An HDF5 image cache given as data is read through once as well: a damaged chunk is
    // that image's error (it was lost from every batch without a word).
    auto drop_bad = [&](std::shared_ptr<const datasets::SampleSource>& source,
                        std::vector<BadImage>& found) {
      if (source->size() == 0) return;
      if (!source->preprocessed() && source->sample(0).path.empty()) return;  // synthetic
      const auto bad = find_bad_images(*source, std::max(workers, 1));
      if (bad.empty()) return;
      std::set<std::string> bad_ids;
      for (const auto& b : bad) {
        bad_ids.insert(b.id);
        found.push_back(b);
      }
      std::vector<std::size_t> keep;
      for (std::size_t i = 0; i < source->size(); ++i)
        if (!bad_ids.count(source->sample(i).image_id)) keep.push_back(i);
      source = std::make_shared<pipeline::IndexedSource>(source, keep);
    };
    const auto stop_or_skip = [&](const std::vector<BadImage>& bad) {
      if (!bad.empty() && !skip_bad) {
        std::ostringstream msg;
        msg << bad.size() << " unreadable image" << (bad.size() == 1 ? "" : "s")
            << " (use --skip-bad to leave them out):";
        // The first 20 (a damaged cache or a wrong folder fails every image: 25,000 lines).
        for (std::size_t i = 0; i < bad.size() && i < 20; ++i)
          msg << "\n  " << bad[i].message;
        if (bad.size() > 20) msg << "\n  ... and " << bad.size() - 20 << " more";
        throw Error(data.data, msg.str());
      }
      if (!bad.empty())
        std::cerr << "warning: skipped " << bad.size() << " unreadable image(s), listed in "
                  << (fs::path(out) / "skipped.csv").string() << "\n";
      skipped = bad;
    };
    if (!cache) {
      std::vector<BadImage> bad;
      drop_bad(train_source, bad);
      drop_bad(val_source, bad);
      stop_or_skip(bad);
    } else {
      // Sets given as caches are checked as above; the others are checked while their cache
      // is built. Both sets' unreadable images are listed before stopping.
      std::vector<BadImage> bad;
      if (train_source->preprocessed()) drop_bad(train_source, bad);
      if (val_source->preprocessed()) drop_bad(val_source, bad);
      auto cached = [&](std::shared_ptr<const datasets::SampleSource>& source,
                        const std::string& name) {
        if (source->preprocessed()) return;
        const auto path = (fs::path(out) / ("cache-" + name + ".h5")).string();
        // A cache already in the folder (a resumed run's, or one a killed run left) is used
        // only when it holds this set's images: the same preprocessing, class names, and its
        // samples, in order and with their labels, those of the set (less the unreadable ones).
        // Otherwise it was made from other data or steps and is built again.
        bool fresh = !fs::exists(path);
        if (!fresh) {
          bool same = false;
          std::string damage;
          try {
            const pipeline::ImageCacheSource c(path);
            same = c.preprocessing() == pipeline.to_json() &&
                   c.class_names() == source->class_names();
            for (std::size_t i = 0, j = 0; same && i < c.size(); ++i, ++j) {
              while (j < source->size() && source->sample(j).image_id != c.sample(i).image_id) ++j;
              same = j < source->size() && source->sample(j).label == c.sample(i).label;
            }
            // Read through once: a damaged sample (its chunk's checksum) has the cache built
            // again, where training would stop at it midway (or, in a cache without
            // checksums, train on other pixels).
            if (same) {
              const auto damaged = find_bad_images(c, std::max(workers, 1));
              if (!damaged.empty()) {
                same = false;
                damage = damaged[0].message;
                if (damaged.size() > 1) damage += concat(" (and ", damaged.size() - 1, " more)");
              }
            }
          } catch (const Error& e) {
            damage = e.what();  // cut short, not an HDF5 file, a folder: said as it is
          }
          if (!damage.empty()) {
            std::cerr << "warning: " << damage << "; building the cache again\n";
            fresh = true;
          } else if (!same) {
            std::cerr << "warning: " << path << ": made from other data or preprocessing than the "
                      << name << " set; building it again\n";
            fresh = true;
          }
        }
        if (fresh) {
          AtomicFile file(path);
          const auto report = pipeline::write_image_cache(file.temp_path(), *source, pipeline,
                                                          std::max(workers, 1));
          for (const auto& f : report.failures)
            // The decoder's reason names the file already ("x.png: empty file").
            bad.push_back(
                {f.image_id, f.path,
                 f.message.rfind(f.path, 0) == 0 ? f.message : f.path + ": " + f.message});
          // Not kept when the failures stop the run: a later run would take the cache without
          // the unreadable images for the whole set.
          if (!report.failures.empty() && !skip_bad) return;
          file.commit();
        }
        source = std::make_shared<pipeline::ImageCacheSource>(path);
      };
      cached(train_source, "train");
      cached(val_source, "val");
      stop_or_skip(bad);
    }
    if (!skipped.empty() && main_rank) {
      std::string csv = "image_id,path,reason\n";
      for (const auto& b : skipped)
        csv += csv_field(b.id) + "," + csv_field(b.path) + "," + csv_field(b.message) + "\n";
      write_file_atomically((fs::path(out) / "skipped.csv").string(), csv);
    }

    pipeline::ImageTrainOptions o;
    o.model.arch = model_name;
    o.model.image_size = size;
    o.pipeline = pipeline;
    o.batch_size = batch_size;
    o.epochs = epochs;
    o.optimizer.kind = optimizer;
    o.optimizer.momentum = optimizer == "sgd" ? momentum : 0.9;
    o.optimizer.nesterov = nesterov;
    o.optimizer.weight_decay = weight_decay;
    o.learning_rate = lr;
    o.schedule = schedule;
    o.warmup_epochs = warmup_epochs;
    o.step_every = step_every;
    o.step_gamma = step_gamma;
    o.loss = loss;
    o.focal_gamma = focal_gamma;
    o.label_smoothing = label_smoothing;
    o.mix.mixup_alpha = mixup;
    o.mix.cutmix_alpha = cutmix;
    if (drop_path > 0) o.model.drop_path = drop_path;
    if (shifted_patches) o.model.shifted_patches = true;
    if (locality_attention) o.model.locality_attention = true;
    if (conv_stem) o.model.conv_stem = true;
    o.sampler = sampler;
    o.oversample = oversample_map;
    o.ema_decay = ema;
    if (!mask_loss.empty()) o.mask_loss = parse_doubles(mask_loss, "--mask-loss", usage);
    o.init = init;
    o.init_backbone = init_backbone;
    o.teacher = teacher;
    o.distill = distill;
    o.distill_alpha = distill_alpha;
    o.distill_temperature = distill_temperature;
    o.seed = seed;
    o.device = device;
    o.precision = precision;
    o.time_budget_s = time_budget * 60;
    o.budget_clock = cpu_budget ? "cpu" : "wall";
    o.patience = patience;
    o.select_by = select_by;
    o.workers = workers;
    o.out_dir = out;
    o.resume = resume;
    o.progress_every = progress_every;
    std::string command_line = "attnscope train";
    for (const auto& a : args)
      command_line += " " + a;
    o.provenance["command_line"] = command_line;
    o.provenance["args"] = args;
    o.provenance["cwd"] = fs::current_path().string();  // what the relative paths in args mean
    o.provenance["data"] = data.data;
    o.provenance["val"] = val_spec;
    o.provenance["data_checksum"] = data_checksum(*train_source, *val_source);
    o.provenance["train_images"] = train_source->size();
    o.provenance["val_images"] = val_source->size();
    o.provenance["torch_threads"] = runtime::threads();
    o.provenance["world_size"] = world;
    o.group = group.get();
    (void)global;

    const bool tty = isatty(STDERR_FILENO) != 0;
    if (!quiet) {
      o.on_progress = [&](const pipeline::TrainingProgress& p) {
        const auto line = pipeline::format_training_progress(p, "img");
        if (tty) {
          std::cerr << "\r" << line << (p.batch == p.batches ? "\n" : "") << std::flush;
        } else {
          std::cerr << line << "\n";
        }
      };
    }
    if (main_rank)
      o.on_epoch = [&](const nlohmann::json& r, const nlohmann::json& t) {
        const auto number = [](const nlohmann::json& v) {
          return v.is_number() ? v.get<double>() : std::nan("");
        };
        const auto& ci = r["val"]["auc_ci"];
        std::printf(
            "epoch %lld: train loss %.4f, val loss %.4f, val AUC %.4f [%.4f, %.4f], balanced "
            "accuracy %.4f, %.1f images/s, %.1fs (data loading %.1f%% of the CPU time, "
            "waited %.1fs)%s\n",
            static_cast<long long>(r["epoch"].get<int64_t>()), r["train_loss"].get<double>(),
            number(r["val_loss"]), number(r["val_auc"]),
            ci.is_object() ? number(ci["low"]) : std::nan(""),
            ci.is_object() ? number(ci["high"]) : std::nan(""),
            number(r["val"]["balanced_accuracy"]), t["images_per_s"].get<double>(),
            t["wall_s"].get<double>(), 100.0 * t["loader_cpu_share"].get<double>(),
            t["loader_wait_s"].get<double>(), r["best"].get<bool>() ? " (best)" : "");
        std::fflush(stdout);
      };
    if (main_rank) std::cerr << runtime::precision_warning(precision, device);
    if (!quiet)
      std::cerr << (resume ? "resuming " : "training ") << model_name << " on "
                << train_source->size() << " images, validating on " << val_source->size() << " ("
                << runtime::threads() << " threads"
                << (world > 1 ? concat(" per rank, ", world, " ranks") : std::string()) << ")\n";
    // From here on SIGINT / SIGTERM stop the run after the current batch (the epoch's partial
    // work is not kept: last.h5 stays the last complete epoch's, and --resume continues it).
    runtime::stop_on_signals();
    o.stop_requested = [] { return runtime::stop_requested(); };
    const auto result = pipeline::train_image_classifier(train_source, val_source, o);
    if (group) group->finish();
    if (result.interrupted) {
      // The signal may have reached another rank only: the status is the one the ranks agreed.
      if (!main_rank) return 128 + result.stop_signal;
      const char* sig = runtime::stop_signal_name(result.stop_signal);
      if (result.epochs_completed == 0 && !resume)
        std::cerr << "stopped by " << sig << " before the first epoch ended; nothing was saved\n";
      else
        std::cerr << "stopped by " << sig << ": " << (fs::path(out) / "last.h5").string()
                  << " holds epoch " << result.epochs_completed
                  << " (the partial epoch is not kept); continue with: attnscope train --resume "
                  << out << "\n";
      return 128 + result.stop_signal;
    }
    // Every rank answers its own handler's line (a signal may reach one rank only).
    if (const auto late = runtime::finish_stop_requests(); !late.empty())
      std::cerr << late << (world > 1 ? concat(" (rank ", group->rank(), ")") : std::string())
                << "\n";
    if (!main_rank) return 0;
    // A partial epoch is not kept (a resumed run must see whole epochs), so a budget that ends
    // inside the first epoch leaves nothing to save: say so instead of naming a best.h5.
    if (result.epochs_completed == 0 && !resume)
      throw Error(out, concat("the time budget (", time_budget,
                              " min) ran out before the first epoch ended; nothing was saved. "
                              "Raise --time-budget, or lower --size or the number of images"));
    // A resume that added no epoch says why (even --quiet: it is the command's answer), so a
    // finished run is not taken for one that trained on.
    const bool nothing_added = resume && result.epochs_completed == result.epochs_at_start;
    if (nothing_added && result.epochs_completed >= epochs)
      std::cerr << "nothing to resume: " << out << " had already trained all its epochs (" << epochs
                << ")\n";
    else if (nothing_added && result.stopped_early)
      std::cerr << "nothing to resume: " << out << " had stopped early (no improvement for "
                << patience << " epochs)\n";
    else if (nothing_added && result.stopped_by_budget)
      std::cerr << "nothing to resume: the time budget (" << time_budget
                << (cpu_budget ? " CPU" : "") << " min) ran out before epoch "
                << result.epochs_completed + 1 << " could end, so " << out << " stays at epoch "
                << result.epochs_completed << " of " << epochs
                << " (a partial epoch is not kept, and a resumed run keeps its budget); to train "
                   "on, start a new run with --init "
                << (fs::path(out) / "last.h5").string() << " and a larger --time-budget\n";
    else if (result.stopped_by_budget && !quiet)
      std::cerr << "stopped by the time budget\n";
    if (!nothing_added && result.stopped_early && !quiet)
      std::cerr << "stopped early: no improvement for " << patience << " epochs\n";
    const auto best_path = (fs::path(out) / "best.h5").string();
    std::error_code best_ec;
    if (fs::exists(best_path, best_ec))
      std::printf("best epoch %lld: val %s %.4f, temperature %.3f; %s\n",
                  static_cast<long long>(result.best_epoch), select_by.c_str(), result.best,
                  result.temperature, best_path.c_str());
    else  // moved away (a damaged one) and no later epoch was better
      std::printf(
          "best epoch %lld: val %s %.4f; no best.h5 in %s (no epoch since it was "
          "removed beat it); last.h5 holds the last epoch\n",
          static_cast<long long>(result.best_epoch), select_by.c_str(), result.best, out.c_str());
    return 0;
  } catch (const std::exception& e) {
    if (group) group->report_failure(e.what());
    std::error_code ec;
    if (made_folder && fs::is_empty(out, ec)) fs::remove(out, ec);  // removes an empty folder only
    throw;
  }
}

// `--resume RUN` runs the command line stored in RUN/last.h5: a flag there that does not parse
// or check out is the file's fault, not the user's, so one line naming it, exit 1 (not the
// usage text and exit 2 of a mistyped flag).
int run_train_or_resume(const std::vector<std::string>& given_args, const GlobalOptions& global) {
  bool quiet = false;
  // Set while this process is one rank of several that has not joined the group yet: from the
  // first check on, what the environment names (run_train replaces it with every flag's).
  std::optional<pipeline::DistributedConfig> announce = DistributedFlags::quiet_config(given_args);
  std::vector<std::string> args;
  try {
    try {
      args = normalised_resume(given_args, quiet);
      return run_train(args, quiet, global, announce);
    } catch (const UsageError& e) {
      // The stored command line's flags: named as the run's (not a RUN that is an option).
      if (args.size() != 2 || args[0] != "--resume" || args[1].empty() ||
          args[1].rfind("--", 0) == 0)
        throw;
      throw Error(
          (fs::absolute(args[1]).lexically_normal() / "last.h5").string(),
          concat("provenance.args: ", e.what(), " (in the command line stored with the run)"));
    }
  } catch (const std::exception&) {
    DistributedFlags::announce_current_error(announce);
  }
}

const Registration kTrain("train", "train an image classifier (ISIC, CSV, folders, cache)",
                          run_train_or_resume);

}  // namespace
}  // namespace attnscope::cli
