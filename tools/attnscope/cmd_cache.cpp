// attnscope cache: decode and preprocess a dataset once into an HDF5 file, so that training
// epochs read uint8 images instead of decoding JPEGs.

#include <filesystem>
#include <iostream>

#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "cli.h"
#include "dataset_flags.h"
#include "pipeline/vision/image_cache.h"
#include "runtime/runtime.h"

namespace attnscope::cli {
namespace {

int run_cache(const std::vector<std::string>& args, const GlobalOptions&) {
  const std::string usage = "cache --data CSV_OR_DIR --out cache.h5 [options]";
  po::options_description desc("Options");
  DatasetFlags data;
  data.add_to(desc);
  std::string out, config;
  int size = 0, workers = 1;
  // clang-format off
  desc.add_options()
      ("out", po::value(&out)->required(), "the HDF5 cache file to write")
      ("size", po::value(&size)->default_value(224),
       "image side when no --config is given (short-side resize + centre crop)")
      ("config", po::value(&config)->default_value(""),
       "preprocessing config (JSON) whose steps produce the cached images; must end with a "
       "resize")
      ("workers", po::value(&workers)->default_value(2), "decoding threads");
  // clang-format on
  po::variables_map vm;
  if (!parse(usage, desc, args, vm)) return 0;
  if (size < 1 || size > kMaxImageSide)
    throw UsageError(concat("--size must be in [1, ", kMaxImageSide, "]"), usage_text(usage, desc));
  if (workers < 1 || workers > kMaxWorkers)
    throw UsageError(concat("--workers must be in [1, ", kMaxWorkers, "]"),
                     usage_text(usage, desc));
  if (!config.empty() && !vm["size"].defaulted())
    throw UsageError("--size and --config exclude each other (the config's resize sets the size)",
                     usage_text(usage, desc));
  const auto pipeline =
      config.empty()
          ? preprocessing::Pipeline::from_json({{"steps", {{{"op", "resize"}, {"size", size}}}}})
          : preprocessing::Pipeline::from_file(config);
  check(!pipeline.steps().empty() && pipeline.steps().back()->name() == "resize", config,
        "the steps must end with a resize: every cached image needs the same size");
  const auto ds = data.read(usage_text(usage, desc));
  // --out must not be one of the inputs: the rename at the end would replace it.
  check_not_an_input(out, data.resolved(), "--data");
  for (const auto& s : ds.samples) {
    check_not_an_input(out, s.path, "an image of the dataset");
    if (s.mask_path) check_not_an_input(out, *s.mask_path, "a mask of the dataset");
  }
  check_not_an_input(out, config, "--config");
  ensure_writable_folder(out);
  check_replaces_only_its_own(out, "--out", "an attnscope image cache",
                              [&] { return pipeline::is_image_cache_file(out); });
  // A killed earlier run's temporary beside --out (SIGKILL leaves no process to remove it).
  remove_dead_temporaries(out);
  const datasets::ImageFileSource source(ds, pipeline.decode_options());
  // SIGINT / SIGTERM end the run after the current chunk, with nothing at --out and no
  // temporary file left (the default action left `.out.<pid>-0.tmp.h5`).
  runtime::stop_on_signals();
  pipeline::ImageCacheReport report;
  try {
    report = pipeline::write_image_cache(out, source, pipeline, workers,
                                         [] { return runtime::stop_requested() != 0; });
  } catch (const pipeline::ImageCacheStopped&) {
    std::cerr << "stopped by " << runtime::stop_signal_name(runtime::stop_requested()) << ": "
              << out << " not written\n";
    return runtime::stopped_exit_status();
  }
  if (const auto late = runtime::finish_stop_requests(); !late.empty()) std::cerr << late << "\n";
  for (const auto& f : report.failures)
    std::cerr << image_error_line(f.path, f.image_id, f.message);
  std::cout << "cached " << report.written << " of " << ds.samples.size() << " images into "
            << printable(out);
  if (!report.failures.empty()) std::cout << " (" << report.failures.size() << " failed)";
  std::cout << "\n";
  return report.failures.empty() ? 0 : 1;
}

const Registration kCache("cache", "store preprocessed uint8 images in HDF5 for fast training",
                          run_cache);

}  // namespace
}  // namespace attnscope::cli
