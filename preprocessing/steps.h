#pragma once
// The deterministic image steps of preprocessing. Each takes an RGB uint8 image (CV_8UC3)
// and returns a new one; the geometric ones also transform a lesion mask (CV_8UC1, nearest
// neighbour) when one is given. Options hold the defaults the papers use; every function
// checks its options and throws attnscope::Error naming the step.

#include <array>
#include <cstdint>

#include <opencv2/core/mat.hpp>

namespace attnscope::preprocessing {

/// Square centre crop whose side is `ratio` × the short side (AttnMel's RatioCenterCrop:
/// side = round(ratio · min(H, W)), offsets round((H - side) / 2), round((W - side) / 2)).
struct CenterCropOptions {
  /// Fraction of the short side kept, in (0, 1].
  double ratio = 0.8;
};
cv::Mat center_crop(const cv::Mat& image, const CenterCropOptions& options,
                    cv::Mat* mask = nullptr);

enum class ResizeMode {
  kCrop,       ///< scale the short side to `size`, then centre-crop size × size
  kLetterbox,  ///< scale the long side to `size`, then pad to size × size with `pad`
  kStretch,    ///< scale both sides to `size` (aspect ratio not kept)
};

struct ResizeOptions {
  /// Output side in pixels (the output is size × size).
  int size = 224;
  ResizeMode mode = ResizeMode::kCrop;
  /// Padding colour (RGB) of the letterbox.
  std::array<int, 3> pad{0, 0, 0};
};
/// Area interpolation when shrinking, bilinear when enlarging; masks use nearest neighbour.
cv::Mat resize(const cv::Mat& image, const ResizeOptions& options, cv::Mat* mask = nullptr);

/// DullRazor hair removal (Lee et al. 1997, as commonly implemented with OpenCV): the
/// black-hat (closing − image) of the grey image with a `kernel` × `kernel` cross finds thin
/// dark structures; pixels where it exceeds `threshold` are inpainted with Telea's method.
struct HairRemovalOptions {
  /// Side of the cross-shaped structuring element (odd, ≥ 3); about the hair width × 3.
  int kernel = 17;
  /// Black-hat level (grey levels, 0..255) above which a pixel counts as hair.
  int threshold = 10;
  /// Telea inpainting radius in pixels.
  double inpaint_radius = 3.0;
};
/// The most inpainting work (inpaint_work: masked pixels × the radius' window) one image may
/// take; beyond it remove_hair refuses the image, naming the mask's size. A 6000 × 4000
/// photograph with 5 % of it hair at radius 3 needs 6 % of it.
constexpr int64_t kMaxInpaintWork = int64_t{1} << 30;
cv::Mat remove_hair(const cv::Mat& image, const HairRemovalOptions& options);
/// The hair mask DullRazor inpaints (CV_8UC1, 255 = hair), for inspection and tests.
cv::Mat hair_mask(const cv::Mat& image, const HairRemovalOptions& options);

/// Shades-of-Gray colour constancy (Finlayson & Trezzi 2004): the illuminant is the
/// Minkowski p-norm mean of each channel; channels are rescaled so it becomes grey.
/// gamma > 0 first applies 255 · (x / 255)^(1/gamma) (as Barata et al.'s code does).
struct ColorConstancyOptions {
  /// Minkowski norm (p = 1 is grey world, p → ∞ is max-RGB).
  double p = 6.0;
  /// Gamma applied before estimating; 0 = none.
  double gamma = 0.0;
};
cv::Mat shades_of_gray(const cv::Mat& image, const ColorConstancyOptions& options);

/// Contrast-limited adaptive histogram equalisation of the L channel (CIE Lab).
struct ClaheOptions {
  double clip_limit = 2.0;
  /// Tiles per side.
  int tiles = 8;
};
cv::Mat clahe(const cv::Mat& image, const ClaheOptions& options);

}  // namespace attnscope::preprocessing
