#include "preprocessing/augment.h"

#include <cmath>

#include <opencv2/imgproc.hpp>

#include "attnscope/error.h"

namespace attnscope::preprocessing {
namespace {

constexpr double kPi = 3.14159265358979323846;

uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

bool has_mask(const cv::Mat* mask) {
  return mask && !mask->empty();
}

void apply_geometry(cv::Mat& image, cv::Mat* mask, const cv::Mat& matrix) {
  cv::Mat out;  // warpAffine does not work in place
  cv::warpAffine(image, out, matrix, image.size(), cv::INTER_LINEAR, cv::BORDER_REFLECT_101);
  image = out;
  if (has_mask(mask)) {
    cv::Mat moved;
    // Same border rule as the image, so that a reflected lesion is also lesion in the mask.
    cv::warpAffine(*mask, moved, matrix, mask->size(), cv::INTER_NEAREST, cv::BORDER_REFLECT_101);
    *mask = moved;
  }
}

void random_resized_crop(cv::Mat& image, cv::Mat* mask, const AugmentOptions& o, Rng& rng) {
  const double area = static_cast<double>(image.rows) * image.cols;
  const double log_lo = std::log(o.crop_ratio[0]), log_hi = std::log(o.crop_ratio[1]);
  cv::Rect roi(0, 0, image.cols, image.rows);
  for (int attempt = 0; attempt < 10; ++attempt) {  // as torchvision: 10 tries, then all
    const double target = area * rng.uniform(o.crop_scale[0], o.crop_scale[1]);
    const double ratio = std::exp(rng.uniform(log_lo, log_hi));
    const int w = static_cast<int>(std::lround(std::sqrt(target * ratio)));
    const int h = static_cast<int>(std::lround(std::sqrt(target / ratio)));
    if (w > 0 && h > 0 && w <= image.cols && h <= image.rows) {
      roi = cv::Rect(static_cast<int>(rng.below(image.cols - w + 1)),
                     static_cast<int>(rng.below(image.rows - h + 1)), w, h);
      break;
    }
  }
  cv::Mat out;  // not in place: the source is a view of the destination
  cv::resize(image(roi), out, image.size(), 0, 0, cv::INTER_LINEAR);
  image = out;
  if (has_mask(mask)) {
    cv::Mat cropped;
    cv::resize((*mask)(roi), cropped, mask->size(), 0, 0, cv::INTER_NEAREST);
    *mask = cropped;
  }
}

void color_jitter(cv::Mat& image, const AugmentOptions& o, Rng& rng) {
  cv::Mat f;
  image.convertTo(f, CV_32FC3);
  if (o.brightness > 0) f *= rng.uniform(1.0 - o.brightness, 1.0 + o.brightness);
  if (o.contrast > 0) {
    const double c = rng.uniform(1.0 - o.contrast, 1.0 + o.contrast);
    cv::Mat grey;
    cv::cvtColor(f, grey, cv::COLOR_RGB2GRAY);
    const double mean = cv::mean(grey)[0];
    f = f * c + cv::Scalar::all(mean * (1.0 - c));
  }
  if (o.saturation > 0) {
    const double s = rng.uniform(1.0 - o.saturation, 1.0 + o.saturation);
    cv::Mat grey, grey3;
    cv::cvtColor(f, grey, cv::COLOR_RGB2GRAY);
    cv::cvtColor(grey, grey3, cv::COLOR_GRAY2RGB);
    cv::addWeighted(f, s, grey3, 1.0 - s, 0.0, f);
  }
  f.convertTo(image, CV_8UC3);  // saturates to 0..255
  if (o.hue > 0) {
    const double shift = rng.uniform(-o.hue, o.hue);
    cv::Mat hsv;
    cv::cvtColor(image, hsv, cv::COLOR_RGB2HSV_FULL);  // H in 0..255 for the full circle
    const int delta = static_cast<int>(std::lround(shift * 256.0));
    for (int y = 0; y < hsv.rows; ++y) {
      auto* row = hsv.ptr<cv::Vec3b>(y);
      for (int x = 0; x < hsv.cols; ++x)
        row[x][0] = static_cast<uint8_t>((row[x][0] + delta + 256) & 0xFF);
    }
    cv::cvtColor(hsv, image, cv::COLOR_HSV2RGB_FULL);
  }
}

}  // namespace

uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b) {
  return splitmix(splitmix(splitmix(seed) ^ a) ^ b);
}

uint64_t Rng::next() {
  state_ += 0x9E3779B97F4A7C15ull;
  uint64_t z = state_;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double Rng::uniform() {
  return static_cast<double>(next() >> 11) * 0x1.0p-53;
}

int64_t Rng::below(int64_t n) {
  return n <= 1 ? 0 : static_cast<int64_t>(uniform() * static_cast<double>(n));
}

double Rng::normal() {
  const double u1 = 1.0 - uniform(), u2 = uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
}

bool AugmentOptions::any() const {
  return hflip > 0 || vflip > 0 || rot90 > 0 || crop > 0 || affine > 0 || brightness > 0 ||
         contrast > 0 || saturation > 0 || hue > 0 || blur > 0 || noise > 0 || cutout > 0;
}

void AugmentOptions::validate() const {
  for (double p : {hflip, vflip, rot90, crop, affine, blur, noise, cutout})
    check(p >= 0.0 && p <= 1.0, "augment", "probabilities must be in [0, 1], got ", p);
  check(crop_scale[0] > 0 && crop_scale[0] <= crop_scale[1] && crop_scale[1] <= 1.0, "augment",
        "crop_scale must satisfy 0 < lo <= hi <= 1, got [", crop_scale[0], ", ", crop_scale[1],
        "]");
  // Upper bounds far above any useful value: beyond them an augmentation runs for hours per
  // image (a blur of sigma 1e6, 1e8 cutout holes) deaf to SIGTERM, or computes with infinities.
  check(crop_ratio[0] >= 0.01 && crop_ratio[0] <= crop_ratio[1] && crop_ratio[1] <= 100, "augment",
        "crop_ratio must satisfy 0.01 <= lo <= hi <= 100, got [", crop_ratio[0], ", ",
        crop_ratio[1], "]");
  check(scale[0] >= 0.01 && scale[0] <= scale[1] && scale[1] <= 100, "augment",
        "scale must satisfy 0.01 <= lo <= hi <= 100, got [", scale[0], ", ", scale[1], "]");
  check(degrees >= 0 && degrees <= 360 && translate >= 0 && translate <= 0.5, "augment",
        "degrees must be in [0, 360] and translate in [0, 0.5]");
  check(brightness >= 0 && brightness <= 1 && contrast >= 0 && contrast <= 1 && saturation >= 0 &&
            saturation <= 1,
        "augment", "brightness, contrast and saturation must be in [0, 1]");
  check(hue >= 0 && hue <= 0.5, "augment", "hue must be in [0, 0.5], got ", hue);
  check(blur_sigma > 0 && blur_sigma <= 100 && noise_sigma >= 0 && noise_sigma <= 255, "augment",
        "blur_sigma must be in (0, 100] (pixels) and noise_sigma in [0, 255] (grey levels), got ",
        blur_sigma, " and ", noise_sigma);
  check(cutout_holes >= 1 && cutout_holes <= 1000 && cutout_size > 0 && cutout_size <= 1, "augment",
        "cutout_holes must be in [1, 1000] and cutout_size in (0, 1], got ", cutout_holes, " and ",
        cutout_size);
}

void augment(cv::Mat& image, cv::Mat* mask, const AugmentOptions& o, const AugmentKey& key) {
  check(image.type() == CV_8UC3, "augment", "expected an RGB uint8 image (CV_8UC3), got type ",
        image.type());
  if (has_mask(mask))
    check(mask->size() == image.size(), "augment", "mask size differs from image size");
  Rng rng(mix_seed(key.seed, static_cast<uint64_t>(key.index), static_cast<uint64_t>(key.epoch)));
  // Every operation draws its random numbers whether or not it fires, so that enabling one
  // operation does not change the draws of the others.
  const double u_crop = rng.uniform();
  Rng crop_rng(rng.next());
  if (u_crop < o.crop) random_resized_crop(image, mask, o, crop_rng);

  const double u_affine = rng.uniform();
  const double angle = rng.uniform(-o.degrees, o.degrees);
  const double tx = rng.uniform(-o.translate, o.translate) * image.cols;
  const double ty = rng.uniform(-o.translate, o.translate) * image.rows;
  const double sc = rng.uniform(o.scale[0], o.scale[1]);
  if (u_affine < o.affine) {
    cv::Mat m =
        cv::getRotationMatrix2D({(image.cols - 1) / 2.0f, (image.rows - 1) / 2.0f}, angle, sc);
    m.at<double>(0, 2) += tx;
    m.at<double>(1, 2) += ty;
    apply_geometry(image, mask, m);
  }

  const bool hflip = rng.uniform() < o.hflip;
  const bool vflip = rng.uniform() < o.vflip;
  const bool rot = rng.uniform() < o.rot90;
  const int64_t quarter = rng.below(3);
  if (hflip) {
    cv::flip(image, image, 1);
    if (has_mask(mask)) cv::flip(*mask, *mask, 1);
  }
  if (vflip) {
    cv::flip(image, image, 0);
    if (has_mask(mask)) cv::flip(*mask, *mask, 0);
  }
  if (rot && image.rows == image.cols) {
    const int code = quarter == 0   ? cv::ROTATE_90_CLOCKWISE
                     : quarter == 1 ? cv::ROTATE_180
                                    : cv::ROTATE_90_COUNTERCLOCKWISE;
    cv::rotate(image, image, code);
    if (has_mask(mask)) cv::rotate(*mask, *mask, code);
  }

  Rng jitter_rng(rng.next());
  if (o.brightness > 0 || o.contrast > 0 || o.saturation > 0 || o.hue > 0)
    color_jitter(image, o, jitter_rng);

  const double u_blur = rng.uniform();
  const double sigma = rng.uniform(0.0, o.blur_sigma);
  if (u_blur < o.blur && sigma > 0.05) cv::GaussianBlur(image, image, {0, 0}, sigma);

  const double u_noise = rng.uniform();
  const uint64_t noise_seed = rng.next();
  if (u_noise < o.noise && o.noise_sigma > 0) {
    cv::Mat noise(image.size(), CV_32FC3);
    Rng noise_rng(noise_seed);
    for (auto it = noise.begin<float>(); it != noise.end<float>(); ++it)
      *it = static_cast<float>(noise_rng.normal() * o.noise_sigma);
    cv::Mat f;
    image.convertTo(f, CV_32FC3);
    f += noise;
    f.convertTo(image, CV_8UC3);
  }

  const double u_cutout = rng.uniform();
  Rng cutout_rng(rng.next());
  if (u_cutout < o.cutout) {
    const cv::Scalar fill = cv::mean(image);
    const int side = std::max(
        1, static_cast<int>(std::lround(o.cutout_size * std::min(image.rows, image.cols))));
    for (int i = 0; i < o.cutout_holes; ++i) {
      const int cx = static_cast<int>(cutout_rng.below(image.cols));
      const int cy = static_cast<int>(cutout_rng.below(image.rows));
      const cv::Rect hole = cv::Rect(cx - side / 2, cy - side / 2, side, side) &
                            cv::Rect(0, 0, image.cols, image.rows);
      image(hole).setTo(fill);
    }
  }
}

}  // namespace attnscope::preprocessing
