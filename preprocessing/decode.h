#pragma once
// Image decoding: any file OpenCV reads (JPEG, PNG, TIFF, BMP, WebP) → RGB uint8.
//
// decode_image() reads the file, checks its header before decoding it (format, size guard,
// EXIF orientation), decodes with OpenCV and normalises the result:
//   - EXIF orientation applied (JPEG APP1 Exif, TIFF IFD0), so the image is upright;
//   - 16-bit samples scaled to 8-bit (x / 257), float samples in [0, 1] scaled by 255;
//   - grey → 3 channels, alpha dropped, CMYK JPEGs converted (by libjpeg) to RGB;
//   - images above DecodeOptions::max_pixels refused from their header, before decoding.
// Every failure throws attnscope::Error(path, reason): missing, empty, not an image,
// corrupt or truncated, too large.

#include <cstdint>
#include <string>
#include <vector>

#include <opencv2/core/mat.hpp>

namespace attnscope::preprocessing {

struct DecodeOptions {
  /// Refuse images with more than this many pixels (width × height) before decoding them.
  int64_t max_pixels = 100'000'000;
  /// Apply the EXIF orientation tag (JPEG, TIFF).
  bool apply_orientation = true;
  /// > 0: a JPEG (YCbCr, RGB or grey) is decoded at the smallest of 1/8, 1/4 or 1/2 of its
  /// size whose short side is still >= reduce_to (libjpeg's scaled IDCT: the pixels of
  /// OpenCV's IMREAD_REDUCED_COLOR_*), else at full size. Set it to the first resize step's
  /// size: a 6000 x 4000 photograph for a 224 px model then costs ~17 instead of ~131 ms to
  /// decode and resize (docs/preprocessing.md). 0: always full size. Other formats: full size.
  int reduce_to = 0;
};

/// The JPEG reduction DecodeOptions::reduce_to picks for a width x height image: the largest of
/// 8, 4, 2 whose reduced short side (libjpeg rounds up) is still >= reduce_to, else 1.
inline int jpeg_reduction(int width, int height, int reduce_to) {
  const int short_side = width < height ? width : height;
  if (reduce_to > 0)
    for (const int d : {8, 4, 2})
      if ((short_side + d - 1) / d >= reduce_to) return d;
  return 1;
}

/// What a file's header says, read without decoding the pixels.
struct ImageInfo {
  std::string format;  ///< "jpeg", "png", "tiff", "bmp", "webp"
  int width = 0;       ///< as stored (before orientation)
  int height = 0;
  int orientation = 1;  ///< EXIF orientation 1..8 (1 = upright)
};

/// Reads the header of an encoded image. Throws Error(name, ...) when the bytes are not a
/// known image format or the header is cut short.
ImageInfo probe_image(const std::vector<uint8_t>& bytes, const std::string& name);

/// Decodes an encoded image held in memory; name is used in error messages.
/// Returns an RGB uint8 image (CV_8UC3), upright.
cv::Mat decode_image_bytes(const std::vector<uint8_t>& bytes, const std::string& name,
                           const DecodeOptions& options = {});

/// Reads and decodes an image file. Returns an RGB uint8 image (CV_8UC3), upright.
cv::Mat decode_image(const std::string& path, const DecodeOptions& options = {});

/// Applies an EXIF orientation (1..8) to an image, as a viewer would show it.
cv::Mat apply_exif_orientation(const cv::Mat& image, int orientation);

/// Writes an RGB uint8 (or single-channel uint8) image; the format follows the extension.
/// Throws Error(path, ...) when it cannot be written.
void write_image(const std::string& path, const cv::Mat& rgb);

/// Reads a whole file; throws Error(path, reason) when it cannot.
std::vector<uint8_t> read_file_bytes(const std::string& path);

}  // namespace attnscope::preprocessing
