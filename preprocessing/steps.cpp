#include "preprocessing/steps.h"

#include <cmath>

#include <opencv2/imgproc.hpp>

#include "attnscope/error.h"
#include "preprocessing/inpaint.h"

namespace attnscope::preprocessing {
namespace {

void check_rgb(const cv::Mat& image, const char* step) {
  check(!image.empty(), step, "image is empty");
  check(image.type() == CV_8UC3, step, "expected an RGB uint8 image (CV_8UC3), got type ",
        image.type());
}

void check_mask(const cv::Mat& image, const cv::Mat* mask, const char* step) {
  if (!mask || mask->empty()) return;
  check(mask->size() == image.size(), step, "mask size ", mask->cols, "x", mask->rows,
        " differs from image size ", image.cols, "x", image.rows);
}

int interpolation_for(cv::Size from, cv::Size to) {
  return to.area() < from.area() ? cv::INTER_AREA : cv::INTER_LINEAR;
}

}  // namespace

cv::Mat center_crop(const cv::Mat& image, const CenterCropOptions& options, cv::Mat* mask) {
  check_rgb(image, "center_crop");
  check_mask(image, mask, "center_crop");
  check(options.ratio > 0.0 && options.ratio <= 1.0, "center_crop", "ratio must be in (0, 1], got ",
        options.ratio);
  const int side =
      std::max(1, static_cast<int>(std::lround(options.ratio * std::min(image.rows, image.cols))));
  const int top = static_cast<int>(std::lround((image.rows - side) / 2.0));
  const int left = static_cast<int>(std::lround((image.cols - side) / 2.0));
  const cv::Rect roi(left, top, side, side);
  if (mask && !mask->empty()) *mask = (*mask)(roi).clone();
  return image(roi).clone();
}

cv::Mat resize(const cv::Mat& image, const ResizeOptions& options, cv::Mat* mask) {
  check_rgb(image, "resize");
  check_mask(image, mask, "resize");
  check(options.size > 0, "resize", "size must be > 0, got ", options.size);
  const int s = options.size;
  const bool with_mask = mask && !mask->empty();
  if (options.mode == ResizeMode::kStretch) {
    cv::Mat out;
    cv::resize(image, out, {s, s}, 0, 0, interpolation_for(image.size(), {s, s}));
    if (with_mask) cv::resize(*mask, *mask, {s, s}, 0, 0, cv::INTER_NEAREST);
    return out;
  }
  const bool crop = options.mode == ResizeMode::kCrop;
  if (crop && std::max(image.rows, image.cols) > 2 * std::min(image.rows, image.cols)) {
    // An extreme aspect ratio (a 1 x 20000 strip) scaled by its short side first would make
    // an intermediate of size^2 x aspect pixels (gigabytes): keep the centre 2:1 box of the
    // source (the square the crop keeps, plus half its side either way for the filters), then
    // resize that. Images up to 2:1, every photograph, are untouched.
    const int side = std::min(image.rows, image.cols);
    const cv::Rect box = image.cols > image.rows
                             ? cv::Rect((image.cols - 2 * side) / 2, 0, 2 * side, side)
                             : cv::Rect(0, (image.rows - 2 * side) / 2, side, 2 * side);
    cv::Mat boxed_mask;
    if (with_mask) boxed_mask = (*mask)(box).clone();
    cv::Mat* inner = with_mask ? &boxed_mask : nullptr;
    const auto out = resize(image(box), options, inner);
    if (with_mask) *mask = boxed_mask;
    return out;
  }
  const double scale = static_cast<double>(s) /
                       (crop ? std::min(image.rows, image.cols) : std::max(image.rows, image.cols));
  // The scaled side that must equal `s` is set exactly; the other is rounded (≥ s when
  // cropping, ≤ s when letterboxing).
  int w = std::max(1, static_cast<int>(std::lround(image.cols * scale)));
  int h = std::max(1, static_cast<int>(std::lround(image.rows * scale)));
  if (crop) {
    (image.cols <= image.rows ? w : h) = s;
    w = std::max(w, s);
    h = std::max(h, s);
  } else {
    (image.cols >= image.rows ? w : h) = s;
    w = std::min(w, s);
    h = std::min(h, s);
  }
  cv::Mat scaled;
  cv::resize(image, scaled, {w, h}, 0, 0, interpolation_for(image.size(), {w, h}));
  cv::Mat scaled_mask;
  if (with_mask) cv::resize(*mask, scaled_mask, {w, h}, 0, 0, cv::INTER_NEAREST);
  if (crop) {
    const cv::Rect roi((w - s) / 2, (h - s) / 2, s, s);
    if (with_mask) *mask = scaled_mask(roi).clone();
    return scaled(roi).clone();
  }
  const int top = (s - h) / 2, left = (s - w) / 2;
  cv::Mat out;
  cv::copyMakeBorder(scaled, out, top, s - h - top, left, s - w - left, cv::BORDER_CONSTANT,
                     cv::Scalar(options.pad[0], options.pad[1], options.pad[2]));
  if (with_mask)
    cv::copyMakeBorder(scaled_mask, *mask, top, s - h - top, left, s - w - left,
                       cv::BORDER_CONSTANT, cv::Scalar(0));
  return out;
}

cv::Mat hair_mask(const cv::Mat& image, const HairRemovalOptions& options) {
  check_rgb(image, "hair_removal");
  check(options.kernel >= 3 && options.kernel % 2 == 1, "hair_removal",
        "kernel must be odd and >= 3, got ", options.kernel);
  check(options.threshold >= 0 && options.threshold <= 255, "hair_removal",
        "threshold must be in 0..255, got ", options.threshold);
  cv::Mat grey, blackhat, mask;
  cv::cvtColor(image, grey, cv::COLOR_RGB2GRAY);
  const auto kernel = cv::getStructuringElement(cv::MORPH_CROSS, {options.kernel, options.kernel});
  cv::morphologyEx(grey, blackhat, cv::MORPH_BLACKHAT, kernel);
  cv::threshold(blackhat, mask, options.threshold, 255, cv::THRESH_BINARY);
  return mask;
}

cv::Mat remove_hair(const cv::Mat& image, const HairRemovalOptions& options) {
  check(options.inpaint_radius > 0.0 && options.inpaint_radius <= 20.0, "hair_removal",
        "inpaint_radius must be in (0, 20], got ", options.inpaint_radius);
  const cv::Mat mask = hair_mask(image, options);
  const int64_t masked = cv::countNonZero(mask);
  if (masked == 0) return image.clone();
  // A low threshold on a large image (a crafted config: 16384 px, threshold 0, radius 20) would
  // otherwise inpaint for hours; about 25 s on a 2-core VM at the limit.
  check(inpaint_work(masked, options.inpaint_radius) <= kMaxInpaintWork, "hair_removal",
        "the hair mask covers ", masked, " of ", image.total(), " pixels (", image.cols, " x ",
        image.rows, "); inpainting them with radius ", options.inpaint_radius,
        " is too much work for one image: raise threshold, lower inpaint_radius or resize first");
  return inpaint_telea(image, mask, options.inpaint_radius);
}

cv::Mat shades_of_gray(const cv::Mat& image, const ColorConstancyOptions& options) {
  check_rgb(image, "shades_of_gray");
  // p <= 100: 255^p * pixels stays finite in a double (p = 200 gave NaN colours).
  check(options.p >= 1.0 && options.p <= 100.0, "shades_of_gray", "p must be in [1, 100], got ",
        options.p);
  check(options.gamma >= 0.0, "shades_of_gray", "gamma must be >= 0, got ", options.gamma);
  cv::Mat src = image;
  if (options.gamma > 0.0) {
    cv::Mat lut(1, 256, CV_8U);
    for (int i = 0; i < 256; ++i)
      lut.at<uint8_t>(i) = cv::saturate_cast<uint8_t>(
          static_cast<int>(255.0 * std::pow(i / 255.0, 1.0 / options.gamma)));
    cv::LUT(image, lut, src);
  }
  // Minkowski mean per channel through a 256-entry table of x^p.
  std::array<double, 256> power{};
  for (int i = 0; i < 256; ++i)
    power[i] = std::pow(static_cast<double>(i), options.p);
  std::array<double, 3> sum{};
  for (int y = 0; y < src.rows; ++y) {
    const auto* row = src.ptr<cv::Vec3b>(y);
    for (int x = 0; x < src.cols; ++x)
      for (int c = 0; c < 3; ++c)
        sum[c] += power[row[x][c]];
  }
  const double n = static_cast<double>(src.total());
  std::array<double, 3> e{};
  double norm = 0.0;
  for (int c = 0; c < 3; ++c) {
    e[c] = std::pow(sum[c] / n, 1.0 / options.p);
    norm += e[c] * e[c];
  }
  norm = std::sqrt(norm);
  if (norm == 0.0) return src.clone();  // black image: nothing to correct
  std::array<cv::Mat, 3> luts;
  for (int c = 0; c < 3; ++c) {
    const double gain = e[c] > 0.0 ? norm / (e[c] * std::sqrt(3.0)) : 1.0;
    luts[c].create(1, 256, CV_8U);
    for (int i = 0; i < 256; ++i)  // truncation, as the reference numpy code's astype
      luts[c].at<uint8_t>(i) = static_cast<uint8_t>(std::min(255.0, i * gain));
  }
  cv::Mat lut3;
  cv::merge(luts.data(), 3, lut3);
  cv::Mat out;
  cv::LUT(src, lut3, out);
  return out;
}

cv::Mat clahe(const cv::Mat& image, const ClaheOptions& options) {
  check_rgb(image, "clahe");
  check(options.clip_limit > 0.0, "clahe", "clip_limit must be > 0, got ", options.clip_limit);
  check(options.tiles >= 1, "clahe", "tiles must be >= 1, got ", options.tiles);
  cv::Mat lab;
  cv::cvtColor(image, lab, cv::COLOR_RGB2Lab);
  std::vector<cv::Mat> planes;
  cv::split(lab, planes);
  auto op = cv::createCLAHE(options.clip_limit, {options.tiles, options.tiles});
  op->apply(planes[0], planes[0]);
  cv::merge(planes, lab);
  cv::Mat out;
  cv::cvtColor(lab, out, cv::COLOR_Lab2RGB);
  return out;
}

}  // namespace attnscope::preprocessing
