// attnscope synth: write a synthetic dermoscopy dataset (images, lesion masks, labels.csv).

#include <cmath>
#include <iostream>

#include "attnscope/output_checks.h"
#include "attnscope/printable.h"

#include "cli.h"
#include "datasets/synthetic.h"

namespace attnscope::cli {
namespace {

// Ids are ISIC-style with 7 digits; 4096 px images are already 48 MiB each.
constexpr int64_t kMaxSynthCount = 9'999'999;
constexpr int kMaxSynthSize = 4096;

int run_synth(const std::vector<std::string>& args, const GlobalOptions&) {
  const std::string usage =
      "synth --out DIR [--count N] [--seed S] [--size PX] [--placement centre|anywhere]";
  po::options_description desc("Options");
  std::string out;
  int64_t count = 0;
  uint64_t seed = 0;
  int workers = 1;
  std::string placement;
  datasets::SyntheticOptions o;
  // clang-format off
  desc.add_options()
      ("out", po::value(&out)->required(),
       "output folder: images/*.png, masks/*.png, labels.csv")
      ("count", po::value(&count)->default_value(100), "number of images")
      ("seed", po::value(&seed)->default_value(0), "random seed; same seed, same images")
      ("size", po::value(&o.size)->default_value(224), "image side in pixels (>= 32)")
      ("placement", po::value(&placement)->default_value("centre"),
       "where lesions sit: centre (as in dermoscopy photographs) or anywhere in the frame "
       "(smaller lesions; a map that only looks at the centre fails localisation)")
      ("malignant-fraction", po::value(&o.malignant_fraction)->default_value(0.5, "0.5"),
       "probability that an image is malignant")
      ("hair-probability", po::value(&o.hair_probability)->default_value(0.5, "0.5"),
       "probability of hairs")
      ("ruler-probability", po::value(&o.ruler_probability)->default_value(0.2, "0.2"),
       "probability of ruler marks")
      ("ink-probability", po::value(&o.ink_probability)->default_value(0.15, "0.15"),
       "probability of ink marks")
      ("vignette-probability", po::value(&o.vignette_probability)->default_value(0.7, "0.7"),
       "probability of the dermatoscope's dark circular vignette")
      ("workers", po::value(&workers)->default_value(1), "threads writing images");
  // clang-format on
  po::variables_map vm;
  if (!parse(usage, desc, args, vm)) return 0;
  const auto fail = [&](const std::string& m) { throw UsageError(m, usage_text(usage, desc)); };
  if (count < 1 || count > kMaxSynthCount)
    fail(concat("--count must be in [1, ", kMaxSynthCount, "]"));
  if (o.size < 32 || o.size > kMaxSynthSize)
    fail(concat("--size must be in [32, ", kMaxSynthSize, "]"));
  if (workers < 1 || workers > kMaxWorkers)
    fail(concat("--workers must be in [1, ", kMaxWorkers, "]"));
  if (placement != "centre" && placement != "anywhere")
    fail("--placement must be centre or anywhere, got '" + placement + "'");
  o.placement = datasets::parse_placement(placement);
  for (const auto& [flag, p] : {std::pair{"malignant-fraction", o.malignant_fraction},
                                {"hair-probability", o.hair_probability},
                                {"ruler-probability", o.ruler_probability},
                                {"ink-probability", o.ink_probability},
                                {"vignette-probability", o.vignette_probability}})
    if (!std::isfinite(p) || p < 0 || p > 1)
      fail(concat("--", flag, " must be in [0, 1], got ", vm[flag].as<double>()));
  ensure_writable_output_folder(out);
  const auto ds = datasets::write_synthetic(out, count, seed, o, workers);
  const auto counts = ds.class_counts();
  std::cout << "wrote " << ds.samples.size() << " images (" << counts[0] << " benign, " << counts[1]
            << " malignant) to " << excerpt(out, 1000) << "\n";
  return 0;
}

const Registration kSynth("synth", "write synthetic dermoscopy images, lesion masks and labels",
                          run_synth);

}  // namespace
}  // namespace attnscope::cli
