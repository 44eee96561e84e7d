#pragma once
// A preprocessing pipeline built from a JSON config, so that training, evaluation and
// inference run exactly the same preprocessing: the config is stored in checkpoints and
// result files (`to_json()`), and `Pipeline::from_json()` rebuilds it.
//
// An image goes: decode → steps (in config order) → [augmentation, only when an AugmentKey
// is given: training, or test-time augmentation] → to_tensor (normalisation).
//
// Config (every key optional; unknown keys are an error, so a typo cannot be ignored):
//   {
//     "decode":    {"max_pixels": 100000000},
//     "steps": [
//       {"op": "center_crop", "ratio": 0.8},
//       {"op": "hair_removal", "kernel": 17, "threshold": 10, "inpaint_radius": 3},
//       {"op": "shades_of_gray", "p": 6, "gamma": 0},
//       {"op": "clahe", "clip_limit": 2, "tiles": 8},
//       {"op": "resize", "size": 224, "mode": "crop" | "letterbox" | "stretch", "pad": [0,0,0]}
//     ],
//     "augment":   {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "crop": 0, "crop_scale": [0.5, 1],
//                   "crop_ratio": [0.75, 1.333], "affine": 0, "degrees": 0, "translate": 0,
//                   "scale": [1, 1], "brightness": 0, "contrast": 0, "saturation": 0,
//                   "hue": 0, "blur": 0, "blur_sigma": 1, "noise": 0, "noise_sigma": 5,
//                   "cutout": 0, "cutout_holes": 1, "cutout_size": 0.2},
//     "normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
//   }
// The default config (Pipeline()) is a single 224 px short-side resize + centre crop, no
// augmentation, ImageNet normalisation.

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>
#include <opencv2/core/mat.hpp>

#include "preprocessing/augment.h"
#include "preprocessing/decode.h"
#include "preprocessing/tensor.h"

namespace attnscope::preprocessing {

/// One configured deterministic step (built by make_step from its JSON).
class Step {
 public:
  virtual ~Step() = default;
  /// The config's "op" name, e.g. "hair_removal".
  virtual std::string name() const = 0;
  /// Returns the processed image; geometric steps also transform *mask when non-empty.
  virtual cv::Mat apply(const cv::Mat& rgb, cv::Mat* mask) const = 0;
  /// The step's full config, defaults included.
  virtual nlohmann::json to_json() const = 0;
};

/// Builds a step from {"op": ..., params...}; throws Error("preprocessing config", ...) for an
/// unknown op, unknown or mistyped parameters, or values out of range.
std::shared_ptr<const Step> make_step(const nlohmann::json& config);

/// A processed sample: the image after steps (and augmentation), its mask (empty if none).
struct Processed {
  cv::Mat image;  ///< RGB uint8
  cv::Mat mask;   ///< CV_8UC1 (0 / 255), or empty
};

class Pipeline {
 public:
  /// The default pipeline: resize 224 (crop), no augmentation, ImageNet normalisation.
  Pipeline();
  /// Throws Error("preprocessing config", ...) listing what is wrong.
  static Pipeline from_json(const nlohmann::json& config);
  /// Reads a JSON file; throws Error(path, ...) if it cannot be read or parsed.
  static Pipeline from_file(const std::string& path);
  /// The full config, defaults included; from_json(to_json()) is the same pipeline.
  nlohmann::json to_json() const;

  const std::vector<std::shared_ptr<const Step>>& steps() const { return steps_; }
  const DecodeOptions& decode_options() const { return decode_; }
  const AugmentOptions& augment_options() const { return augment_; }
  const Normalization& normalization() const { return norm_; }
  void set_steps(std::vector<std::shared_ptr<const Step>> steps) { steps_ = std::move(steps); }
  void set_augment_options(const AugmentOptions& options);
  void set_normalization(const Normalization& norm) { norm_ = norm; }

  /// decode_image(path, decode_options()).
  cv::Mat decode(const std::string& path) const;
  /// Runs the steps, then — only when key is given — the augmentation. `mask` may be empty.
  /// Thread-safe (const, no shared state); the inputs are never modified.
  Processed process(const cv::Mat& rgb, const cv::Mat& mask = {},
                    const AugmentKey* key = nullptr) const;
  /// to_tensor with this pipeline's normalisation. Shape: (3, H, W).
  at::Tensor tensor(const cv::Mat& rgb) const { return to_tensor(rgb, norm_); }
  /// The image after each step, named: {"input", step names...}, for `preprocess --steps`.
  std::vector<std::pair<std::string, cv::Mat>> stages(const cv::Mat& rgb) const;

 private:
  DecodeOptions decode_;
  std::vector<std::shared_ptr<const Step>> steps_;
  AugmentOptions augment_;
  Normalization norm_;
};

/// Per-channel mean and standard deviation (of x / 255) over many images, accumulated in
/// double precision: what `attnscope preprocess stats` prints for the "normalize" config.
class ChannelStats {
 public:
  void add(const cv::Mat& rgb);
  int64_t pixels() const { return n_; }
  Normalization result() const;

 private:
  int64_t n_ = 0;
  std::array<double, 3> sum_{}, sum_sq_{};
};

}  // namespace attnscope::preprocessing
