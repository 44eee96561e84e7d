#pragma once
// Synthetic dermoscopy: the project's embedded data. Each image looks like a dermoscopy
// photograph — skin-toned textured background, the dark circular vignette of a
// dermatoscope, one pigmented lesion, optional hairs, ruler marks and ink — and comes with its
// ground-truth lesion mask.
//
// Labels follow ABCD-like rules:
//   malignant: Asymmetric outline, irregular (jagged) Border, several Colours (dark brown,
//              black, blue-grey, red) in off-centre patches, irregular Dots/globules;
//   benign:    a symmetric (elliptic) outline, smooth border, one or two browns arranged
//              concentrically, no globules.
// Artefacts (hairs, ruler, ink, vignette) and skin tone are drawn from random streams that do
// not depend on the label, so they carry no information about it. Everything is a function of
// (seed, index): the same call always returns the same pixels.

#include <cstdint>
#include <string>

#include <opencv2/core/mat.hpp>

#include "datasets/isic.h"

namespace attnscope::datasets {

/// Where the lesion sits. kCentre: near the middle, as in dermoscopy photographs (centre
/// within ±7% of the side, radius 17–28% of the side). kAnywhere: a smaller lesion (radius
/// 9–17% of the side) whose centre is uniform over the frame, 1.3 radii clear of the border,
/// so a map that only looks at the centre fails localisation measures.
enum class Placement { kCentre, kAnywhere };

/// "centre" / "anywhere"; parse_placement throws Error naming the value otherwise.
const char* placement_name(Placement placement);
Placement parse_placement(const std::string& name);

struct SyntheticOptions {
  /// Image side in pixels (images are size × size).
  int size = 224;
  /// Where the lesion sits (the mask follows it).
  Placement placement = Placement::kCentre;
  /// Probability that a sample is malignant.
  double malignant_fraction = 0.5;
  /// Probability of hairs, and their largest number.
  double hair_probability = 0.5;
  int max_hairs = 10;
  double ruler_probability = 0.2;
  double ink_probability = 0.15;
  double vignette_probability = 0.7;
};

struct SyntheticSample {
  std::string image_id;  ///< "synth_<index, 6 digits>"
  cv::Mat image;         ///< RGB uint8, size × size
  cv::Mat mask;          ///< CV_8UC1, 255 inside the lesion
  int64_t label = 0;     ///< 0 benign, 1 malignant
  bool hairs = false, ruler = false, ink = false, vignette = false;
};

/// Generates sample `index` of the synthetic set with this seed.
SyntheticSample make_synthetic(const SyntheticOptions& options, uint64_t seed, int64_t index);

/// "synth_<index, 6 digits>".
std::string synthetic_id(int64_t index);

/// The label of sample `index` (0 benign, 1 malignant) without drawing it.
int64_t synthetic_label(const SyntheticOptions& options, uint64_t seed, int64_t index);

/// The first line of the labels.csv that write_synthetic writes.
inline constexpr char kSyntheticHeader[] = "image_id,label,mask,hairs,ruler,ink,vignette\n";

/// Writes `count` samples: dir/images/<id>.png, dir/masks/<id>.png and dir/labels.csv
/// (`image_id,label,mask,hairs,ruler,ink,vignette`; label benign/malignant; mask relative to
/// dir), which read_dataset() reads as the generic format. `threads` workers (≥ 1) write in
/// parallel; the files do not depend on it. Returns the dataset as read_dataset would.
/// A dir/labels.csv that synth did not write (another header) is refused before any file is
/// written: it would be replaced.
Dataset write_synthetic(const std::string& dir, int64_t count, uint64_t seed,
                        const SyntheticOptions& options = {}, int threads = 1);

}  // namespace attnscope::datasets
