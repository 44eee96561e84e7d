#pragma once
// Training-time augmentation, seeded per (seed, sample index, epoch).
//
// The random stream of one sample depends only on AugmentKey, never on the thread that
// processes it or on the order of samples, so a run repeats exactly with any number of
// loader workers. Geometric operations move the lesion mask with the image (nearest
// neighbour); photometric ones leave it alone. The output has the input's size.

#include <array>
#include <cstdint>

#include <opencv2/core/mat.hpp>

namespace attnscope::preprocessing {

/// What one sample's augmentation is seeded by.
struct AugmentKey {
  uint64_t seed = 0;  ///< the run's seed
  int64_t index = 0;  ///< the sample's index in its dataset (not its position in the epoch)
  int64_t epoch = 0;
};

/// splitmix64-mixed seed of (seed, index, epoch); also used by samplers and the synthetic
/// generator to derive independent streams.
uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0);

/// A small, portable random stream (splitmix64): the same numbers on every platform and
/// standard library, unlike std::uniform_real_distribution.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  /// Uniform in [0, 1).
  double uniform();
  /// Uniform in [lo, hi).
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Uniform integer in [0, n).
  int64_t below(int64_t n);
  bool bernoulli(double p) { return uniform() < p; }
  /// Standard normal (Box–Muller).
  double normal();

 private:
  uint64_t state_;
};

/// Every augmentation and its strength; the defaults are all off (probability 0).
struct AugmentOptions {
  /// Probability of a horizontal / vertical flip.
  double hflip = 0.0;
  double vflip = 0.0;
  /// Probability of a rotation by 90°, 180° or 270° (uniform); square images only.
  double rot90 = 0.0;
  /// Probability of a random resized crop (area fraction in `crop_scale`, aspect ratio in
  /// `crop_ratio`, log-uniform), resized back to the input size.
  double crop = 0.0;
  std::array<double, 2> crop_scale{0.5, 1.0};
  std::array<double, 2> crop_ratio{3.0 / 4.0, 4.0 / 3.0};
  /// Probability of an affine transform: rotation in ±`degrees`, shift in ±`translate` of the
  /// side, scale in `scale`; reflected borders.
  double affine = 0.0;
  double degrees = 0.0;
  double translate = 0.0;
  std::array<double, 2> scale{1.0, 1.0};
  /// Colour jitter strengths as torchvision's ColorJitter: factors uniform in [1 − s, 1 + s]
  /// for brightness, contrast and saturation, hue shift uniform in ±hue (fraction of the
  /// colour circle, ≤ 0.5).
  double brightness = 0.0;
  double contrast = 0.0;
  double saturation = 0.0;
  double hue = 0.0;
  /// Probability of a Gaussian blur with sigma uniform in (0, blur_sigma].
  double blur = 0.0;
  double blur_sigma = 1.0;
  /// Probability of additive Gaussian noise with sigma noise_sigma (grey levels).
  double noise = 0.0;
  double noise_sigma = 5.0;
  /// Probability of cutout: `cutout_holes` squares of side `cutout_size` × the short side,
  /// filled with the image mean.
  double cutout = 0.0;
  int cutout_holes = 1;
  double cutout_size = 0.2;

  /// Whether any augmentation can happen.
  bool any() const;
  /// Throws Error("augment", ...) for values out of range.
  void validate() const;
};

/// Augments an RGB uint8 image (and its mask, if given and non-empty) in place, seeded by key.
void augment(cv::Mat& image, cv::Mat* mask, const AugmentOptions& options, const AugmentKey& key);

}  // namespace attnscope::preprocessing
