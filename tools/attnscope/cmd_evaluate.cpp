// attnscope evaluate: an image checkpoint's metrics on a labelled dataset (AUC with its
// bootstrap interval, AP, balanced accuracy, sensitivity/specificity, confusion matrix,
// calibration), optionally with 8-fold dihedral test-time augmentation.

#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <optional>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "cli.h"
#include "dataset_flags.h"
#include "datasets/text/tokenizer.h"
#include "pipeline/metrics.h"
#include "pipeline/vision/evaluate.h"
#include "pipeline/vision/image_cache.h"
#include "runtime/precision.h"
#include "runtime/runtime.h"

namespace attnscope::cli {
namespace {

namespace fs = std::filesystem;

int run_evaluate(const std::vector<std::string>& args, const GlobalOptions&) {
  const std::string usage =
      "evaluate --model CKPT --data CSV_OR_DIR_OR_CACHE [--tta] [--precision fp32|bf16] [--json] "
      "[--out FILE] [options]";
  po::options_description desc("Options");
  DatasetFlags data;
  data.masks = false;  // no measure of evaluate uses a mask
  data.add_to(desc);
  std::string model_path, out, predictions;
  std::string threshold_text;
  pipeline::EvaluateOptions o;
  bool tta = false, json = false, quiet = false;
  // clang-format off
  desc.add_options()
      ("model", po::value(&model_path)->required(), "image checkpoint (.h5), e.g. RUN/best.h5")
      ("tta", po::bool_switch(&tta),
       "average the probabilities over the 8 flips/rotations of each image")
      ("json", po::bool_switch(&json), "print the metrics as one JSON object")
      ("out", po::value(&out)->default_value(""), "also write the JSON to this file")
      ("predictions", po::value(&predictions)->default_value(""),
       "write per-image probabilities to this CSV")
      ("batch-size", po::value(&o.batch_size)->default_value(32), "images per forward pass")
      ("threshold", po::value(&threshold_text)->default_value("checkpoint"),
       "decision threshold on P(malignant): a number in [0, 1], or 'checkpoint' (the "
       "checkpoint's, else 0.5)")
      ("bootstrap", po::value(&o.bootstrap_resamples)->default_value(1000),
       "bootstrap resamples for the AUC's 95% interval (0: none)")
      ("seed", po::value(&o.seed)->default_value(0), "bootstrap seed")
      ("workers", po::value(&o.workers)->default_value(2), "image decoding threads")
      ("precision", po::value(&o.precision)->default_value("fp32"),
       "fp32 | bf16: the forward passes in bfloat16 autocast, as classify --precision (metrics "
       "computed in float64 either way); faster on CPUs with AVX512-BF16 or AMX, slower on others")
      ("device", po::value(&o.device)->default_value("cpu"), "cpu, cuda or cuda:N")
      ("quiet", po::bool_switch(&quiet), "no progress on stderr");
  // clang-format on
  add_decode_reduce_to(desc);
  po::variables_map vm;
  if (!parse(usage, desc, args, vm)) return 0;
  const auto fail = [&](const std::string& m) { throw UsageError(m, usage_text(usage, desc)); };
  if (o.batch_size < 1 || o.batch_size > 65536) fail("--batch-size must be between 1 and 65536");
  if (o.workers < 0 || o.workers > kMaxWorkers)
    fail(concat("--workers must be in [0, ", kMaxWorkers, "]"));
  if (o.bootstrap_resamples < 0 || o.bootstrap_resamples > 100000)
    fail("--bootstrap must be in [0, 100000]");
  if (!runtime::is_precision_name(o.precision))
    fail("--precision must be fp32 or bf16, got '" + o.precision + "'");
  if (!runtime::is_device_name(o.device))
    fail("--device must be cpu, cuda or cuda:N, got '" + o.device + "'");
  if (threshold_text != "checkpoint") {
    std::size_t used = 0;
    double t = -1;
    try {
      t = std::stod(threshold_text, &used);
    } catch (const std::exception&) {
    }
    if (used != threshold_text.size() || !(t >= 0 && t <= 1))
      fail("--threshold must be a number in [0, 1] or 'checkpoint', got '" + threshold_text + "'");
    o.threshold = t;
  }
  o.tta = tta;
  const auto reduce_to = read_decode_reduce_to(vm, usage_text(usage, desc));
  // The device before any work (a CUDA device this process lacks is one line).
  runtime::check_device(o.device, "evaluate");

  // One file for both is a mistake on the command line (exit 2), as two values of one flag.
  if (!out.empty() && !predictions.empty() && same_file(out, predictions))
    throw UsageError(concat("--out and --predictions name the same file (", excerpt(out, 200),
                            "): choose two files"),
                     usage_text(usage, desc));
  // --out and --predictions must not be an input (the write would replace it) or each other.
  const auto check_outputs = [&](const std::vector<std::pair<std::string, std::string>>& inputs) {
    for (const auto& dest : {out, predictions}) {
      if (dest.empty()) continue;
      for (const auto& [input, what] : inputs) check_not_an_input(dest, input, what);
    }
    check(out.empty() || !same_file(out, predictions), out,
          "is given as both --out and --predictions: choose two files");
  };
  check_outputs({{model_path, "--model"}, {data.resolved(), "--data"}});
  // Where they go, before the evaluation (a missing folder or a folder given as the file was
  // found only at the end, after hours on a large set).
  for (const auto& dest : {out, predictions}) {
    if (dest.empty()) continue;
    std::error_code ec;
    check(!std::filesystem::is_directory(dest, ec), dest, "is a folder; give a file name");
    ensure_writable_folder(dest);
  }
  // Each replaces only a file of its own kind (a checkpoint or ground truth given by mistake
  // was replaced without a word).
  if (!out.empty())
    check_replaces_only_its_own(out, "--out", "a JSON file written by attnscope evaluate", [&] {
      const auto j = nlohmann::json::parse(file_head(out, 64 << 20), nullptr, false);
      return !j.is_discarded() && j.is_object() && j.contains("evaluated") && j.contains("metrics");
    });
  if (!predictions.empty())
    check_replaces_only_its_own(
        predictions, "--predictions", "a predictions CSV written by attnscope evaluate",
        [&] { return file_head(predictions, 64).rfind("image_id,path,label,predicted", 0) == 0; });

  std::cerr << runtime::precision_warning(o.precision, o.device);
  const auto loaded = pipeline::load_image_classifier(model_path);
  std::shared_ptr<const datasets::SampleSource> source;
  // An image cache's images that could not be cached are failures of the dataset all the same.
  std::vector<std::pair<std::string, std::string>> not_cached;
  std::error_code ec;
  if (fs::path(data.data).extension() == ".h5" && fs::is_regular_file(data.data, ec)) {
    if (reduce_to)
      fail("--decode-reduce-to does not apply to an image cache (decoded when it was built)");
    auto cache = std::make_shared<pipeline::ImageCacheSource>(data.data);
    not_cached = cache->build_errors();
    const auto config = loaded.meta.preprocessing_config;
    if (config.is_object() && !config.empty()) {
      const auto made_with = cache->preprocessing().value("steps", nlohmann::json());
      const auto wanted = preprocessing::Pipeline::from_json(config).to_json()["steps"];
      check(made_with == wanted, data.data, "holds images made with the steps ",
            json_excerpt(made_with, 300), ", the model's are ", json_excerpt(wanted, 300), " (",
            model_path,
            "): rebuild the cache with `attnscope cache --config FILE` holding the model's "
            "preprocessing config, or evaluate the images themselves");
    }
    source = cache;
  } else {
    auto ds = data.read(usage_text(usage, desc));
    std::vector<std::pair<std::string, std::string>> files;
    for (const auto& s : ds.samples)
      files.emplace_back(s.path, "an image of the dataset");
    check_outputs(files);
    const auto config = loaded.meta.preprocessing_config;
    auto decode = config.is_object() && !config.empty()
                      ? preprocessing::Pipeline::from_json(config).decode_options()
                      : preprocessing::Pipeline().decode_options();
    if (reduce_to) decode.reduce_to = *reduce_to;  // as classify's --decode-reduce-to
    source = std::make_shared<datasets::ImageFileSource>(std::move(ds), decode);
  }

  const bool tty = !quiet && isatty(STDERR_FILENO) != 0;
  const auto progress = [&](int64_t done, int64_t total) {
    if (tty) std::cerr << "\revaluated " << done << "/" << total << std::flush;
  };
  auto result = pipeline::evaluate_image_classifier(loaded, model_path, source, o, progress);
  if (tty) std::cerr << "\n";
  // Given for a model of more than two classes, it decided nothing, without a word.
  if (o.threshold && result.class_names.size() != 2)
    std::cerr << "warning: --threshold is for binary models; " << printable(model_path) << " has "
              << result.class_names.size()
              << " classes, and each image's class is its most probable one\n";
  for (const auto& [path, message] : not_cached)
    result.failures.push_back(
        {fs::path(path).stem().string(), path, "not in the image cache (" + message + ")"});
  // One line per image, naming it once ("error: x.jpg: x.jpg: ..." before).
  for (const auto& f : result.failures)
    std::cerr << image_error_line(f.path, f.image_id, f.message);
  if (result.ids.empty()) {
    std::cerr << "error: no image could be evaluated (" << result.failures.size() << " failed)\n";
    return 1;
  }
  for (const auto& dest : {out, predictions})  // what a killed run left, once nothing refuses
    if (!dest.empty()) remove_dead_temporaries(dest);
  if (!predictions.empty()) pipeline::write_predictions_csv(predictions, result);

  // JSON strings are UTF-8 (the library threw on a Latin-1 path, after the work): paths and ids
  // escaped as classify stores them (`\xe9`, a backslash `\\`), messages' other bytes `\xe9`.
  using datasets::text::escaped_name;
  nlohmann::json j;
  j["model"] = escaped_name(model_path);
  j["data"] = escaped_name(data.data);
  j["tta"] = result.tta;
  j["precision"] = result.precision;
  j["temperature"] = result.temperature;
  if (reduce_to) j["decode_reduce_to"] = *reduce_to;
  j["evaluated"] = static_cast<int64_t>(result.ids.size());
  auto failed = nlohmann::json::array();
  for (const auto& f : result.failures) {
    failed.push_back({{"image_id", escaped_name(f.image_id)},
                      {"path", escaped_name(f.path)},
                      {"message", datasets::text::escaped_utf8(f.message)}});
  }
  j["failed"] = failed;
  j["metrics"] = pipeline::to_json(result.metrics);
  if (!out.empty()) write_file_atomically(out, j.dump(2) + "\n");
  if (json) {
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << "model              " << model_path << "\n"
              << "data               " << data.data << "\n"
              << "TTA                " << (result.tta ? "8 dihedral transforms" : "off") << "\n"
              << "precision          " << result.precision << "\n"
              << "temperature        " << result.temperature << "\n";
    if (!result.failures.empty())
      std::cout << "failed             " << result.failures.size() << " images (listed above)\n";
    std::cout << pipeline::format_metrics(result.metrics);
  }
  // As cache and preprocess: the work is done for what could be read, and the status says that
  // it is not the whole set.
  if (result.failures.empty()) return 0;
  std::cout.flush();
  std::cerr << "error: " << result.failures.size() << " of "
            << result.failures.size() + result.ids.size()
            << " images could not be evaluated (listed above): the metrics are over the other "
            << result.ids.size() << "\n";
  return 1;
}

const Registration kEvaluate("evaluate",
                             "metrics of an image checkpoint on a labelled dataset (--tta)",
                             run_evaluate);

}  // namespace
}  // namespace attnscope::cli
