// Augmentation: reproducible per (seed, index, epoch), masks follow the image, each operation
// does what its closed form says.

#include <limits>

#include <opencv2/imgproc.hpp>

#include "attnscope/error.h"
#include "preprocessing/augment.h"
#include "test_support.h"

namespace attnscope::preprocessing {
namespace {

cv::Mat random_image(int size, uint64_t seed) {
  cv::Mat img(size, size, CV_8UC3);
  cv::RNG(seed).fill(img, cv::RNG::UNIFORM, 0, 256);
  return img;
}

AugmentOptions everything() {
  AugmentOptions o;
  o.hflip = o.vflip = o.rot90 = 0.5;
  o.crop = 0.5;
  o.affine = 0.5;
  o.degrees = 20;
  o.translate = 0.1;
  o.scale = {0.9, 1.1};
  o.brightness = o.contrast = o.saturation = 0.2;
  o.hue = 0.05;
  o.blur = o.noise = o.cutout = 0.5;
  return o;
}

cv::Mat run(const cv::Mat& img, const AugmentOptions& o, AugmentKey key, cv::Mat* mask = nullptr) {
  cv::Mat out = img.clone();
  augment(out, mask, o, key);
  return out;
}

TEST(Augment, SameKeySameImageOtherKeysDiffer) {
  const auto img = random_image(48, 1);
  const auto o = everything();
  const auto a = run(img, o, {7, 3, 1});
  EXPECT_EQ(cv::norm(a, run(img, o, {7, 3, 1}), cv::NORM_INF), 0.0);
  int differ = 0;
  for (const AugmentKey k : {AugmentKey{7, 3, 2}, AugmentKey{7, 4, 1}, AugmentKey{8, 3, 1}})
    differ += cv::norm(a, run(img, o, k), cv::NORM_INF) > 0;
  EXPECT_EQ(differ, 3);
}

TEST(Augment, HorizontalFlipIsTheMirrorImageAndMovesTheMask) {
  const auto img = random_image(20, 2);
  AugmentOptions o;
  o.hflip = 1.0;
  cv::Mat mask = cv::Mat::zeros(20, 20, CV_8UC1);
  mask(cv::Rect(0, 0, 5, 20)).setTo(255);
  const auto out = run(img, o, {1, 0, 0}, &mask);
  cv::Mat expected;
  cv::flip(img, expected, 1);
  EXPECT_EQ(cv::norm(out, expected, cv::NORM_INF), 0.0);
  EXPECT_EQ(mask.at<uint8_t>(10, 19), 255);
  EXPECT_EQ(mask.at<uint8_t>(10, 0), 0);
}

TEST(Augment, Rot90GivesEachQuarterTurn) {
  const auto img = random_image(16, 3);
  AugmentOptions o;
  o.rot90 = 1.0;
  std::array<cv::Mat, 3> turns;
  cv::rotate(img, turns[0], cv::ROTATE_90_CLOCKWISE);
  cv::rotate(img, turns[1], cv::ROTATE_180);
  cv::rotate(img, turns[2], cv::ROTATE_90_COUNTERCLOCKWISE);
  std::array<int, 3> seen{};
  for (int i = 0; i < 60; ++i) {
    const auto out = run(img, o, {5, i, 0});
    int match = -1;
    for (int t = 0; t < 3; ++t)
      if (cv::norm(out, turns[t], cv::NORM_INF) == 0.0) match = t;
    ASSERT_GE(match, 0) << "key " << i << " gave no quarter turn";
    ++seen[match];
  }
  for (int t = 0; t < 3; ++t)
    EXPECT_GT(seen[t], 8) << t;
}

TEST(Augment, FlipProbabilityIsHonoured) {
  const auto img = random_image(8, 4);
  AugmentOptions o;
  o.hflip = 0.3;
  int flipped = 0;
  const int n = 1000;
  for (int i = 0; i < n; ++i)
    flipped += cv::norm(run(img, o, {9, i, 0}), img, cv::NORM_INF) > 0;
  // Binomial(1000, 0.3): sd ≈ 14.5; ±5 sd.
  EXPECT_NEAR(flipped, 300, 73);
}

TEST(Augment, GeometryMovesTheMaskWithTheImage) {
  // The image is the mask in all three channels: after any geometric augmentation with
  // nearest-neighbour-exact operations (flips, quarter turns), they must still agree.
  cv::Mat mask = cv::Mat::zeros(32, 32, CV_8UC1);
  cv::ellipse(mask, {10, 12}, {8, 4}, 30, 0, 360, cv::Scalar(255), cv::FILLED);
  cv::Mat img;
  cv::cvtColor(mask, img, cv::COLOR_GRAY2RGB);
  AugmentOptions o;
  o.hflip = o.vflip = o.rot90 = 0.5;
  for (int i = 0; i < 20; ++i) {
    cv::Mat m = mask.clone();
    const auto out = run(img, o, {3, i, 0}, &m);
    cv::Mat channel;
    cv::extractChannel(out, channel, 0);
    EXPECT_EQ(cv::norm(channel, m, cv::NORM_INF), 0.0) << i;
  }
  // Random resized crops and affine warps too, up to interpolation at the border of the shape.
  o = AugmentOptions{};
  o.crop = o.affine = 1.0;
  o.degrees = 30;
  o.translate = 0.1;
  for (int i = 0; i < 10; ++i) {
    cv::Mat m = mask.clone();
    const auto out = run(img, o, {3, i, 0}, &m);
    cv::Mat channel, bin;
    cv::extractChannel(out, channel, 0);
    cv::threshold(channel, bin, 127, 255, cv::THRESH_BINARY);
    const double iou = static_cast<double>(cv::countNonZero(bin & m)) / cv::countNonZero(bin | m);
    EXPECT_GT(iou, 0.75) << i;
  }
}

TEST(Augment, IdentityParametersLeaveTheImageAlone) {
  const auto img = random_image(24, 5);
  AugmentOptions o;
  o.crop = 1.0;
  o.crop_scale = {1.0, 1.0};
  o.crop_ratio = {1.0, 1.0};
  o.affine = 1.0;  // 0 degrees, no shift, scale 1
  EXPECT_LE(cv::norm(run(img, o, {1, 2, 3}), img, cv::NORM_INF), 1.0);
}

TEST(Augment, BrightnessScalesWithinItsRange) {
  cv::Mat img(8, 8, CV_8UC3, cv::Scalar(100, 100, 100));
  AugmentOptions o;
  o.brightness = 0.3;
  for (int i = 0; i < 50; ++i) {
    const double v = cv::mean(run(img, o, {2, i, 0}))[0];
    EXPECT_GE(v, 70 - 0.5);
    EXPECT_LE(v, 130 + 0.5);
  }
}

TEST(Augment, CutoutFillsAtMostItsSquareWithTheMean) {
  cv::Mat img(40, 40, CV_8UC3, cv::Scalar(0, 0, 0));
  img(cv::Rect(0, 0, 20, 40)).setTo(cv::Scalar(200, 200, 200));  // mean 100
  AugmentOptions o;
  o.cutout = 1.0;
  o.cutout_size = 0.25;  // 10 × 10
  // Every pixel of the image is 0 or 200, so each pixel the hole covers changes: the changed
  // pixels are the hole, one square of at most 10 × 10 (clipped at the border), all (100, 100,
  // 100), the image's mean.
  for (int index = 0; index < 20; ++index) {
    const auto out = run(img, o, {4, index, 0});
    cv::Mat diff, changed;
    cv::absdiff(out, img, diff);
    cv::cvtColor(diff, changed, cv::COLOR_RGB2GRAY);
    cv::Mat nonzero;
    cv::findNonZero(changed, nonzero);
    ASSERT_GT(nonzero.total(), 0u) << index;
    const auto box = cv::boundingRect(nonzero);
    EXPECT_LE(box.width, 10) << index;
    EXPECT_LE(box.height, 10) << index;
    EXPECT_EQ(static_cast<int>(nonzero.total()), box.area()) << index << ": not a filled rectangle";
    for (int y = box.y; y < box.y + box.height; ++y)
      for (int x = box.x; x < box.x + box.width; ++x)
        EXPECT_EQ(out.at<cv::Vec3b>(y, x), cv::Vec3b(100, 100, 100))
            << index << " at " << x << "," << y;
  }
}

TEST(Augment, RejectsOutOfRangeOptions) {
  AugmentOptions o;
  o.hflip = 1.5;
  EXPECT_THROW(o.validate(), Error);
  o = {};
  o.hue = 0.7;
  EXPECT_THROW(o.validate(), Error);
  // Upper bounds (a blur of sigma 1e6 or 1e8 cutout holes ran for hours per image); the bound
  // itself is accepted, the next value and infinity are not.
  const auto refused = [](auto set) {
    AugmentOptions a;
    set(a);
    try {
      a.validate();
    } catch (const Error&) {
      return true;
    }
    return false;
  };
  EXPECT_FALSE(refused([](AugmentOptions& a) { a.blur_sigma = 100; }));
  EXPECT_TRUE(refused([](AugmentOptions& a) { a.blur_sigma = 100.5; }));
  EXPECT_TRUE(refused([](AugmentOptions& a) { a.blur_sigma = 1e6; }));
  EXPECT_FALSE(refused([](AugmentOptions& a) { a.cutout_holes = 1000; }));
  EXPECT_TRUE(refused([](AugmentOptions& a) { a.cutout_holes = 100000000; }));
  EXPECT_FALSE(refused([](AugmentOptions& a) { a.noise_sigma = 255; }));
  EXPECT_TRUE(refused([](AugmentOptions& a) { a.noise_sigma = 256; }));
  EXPECT_FALSE(refused([](AugmentOptions& a) { a.degrees = 360; }));
  EXPECT_TRUE(
      refused([](AugmentOptions& a) { a.degrees = std::numeric_limits<double>::infinity(); }));
  EXPECT_TRUE(refused([](AugmentOptions& a) { a.scale = {1.0, 1e9}; }));
  EXPECT_TRUE(refused([](AugmentOptions& a) { a.crop_ratio = {1e-9, 1.0}; }));
  EXPECT_FALSE(refused([](AugmentOptions& a) { a.crop_ratio = {0.01, 100}; }));
}

TEST(Rng, UniformIsUniformAndSeeded) {
  Rng a(42), b(42);
  double sum = 0;
  for (int i = 0; i < 10000; ++i) {
    const double u = a.uniform();
    ASSERT_EQ(u, b.uniform());
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.015);  // sd of the mean ≈ 0.0029
  EXPECT_NE(mix_seed(1, 2, 3), mix_seed(1, 3, 2));
}

}  // namespace
}  // namespace attnscope::preprocessing
