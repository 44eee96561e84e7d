// The deterministic steps, each on a synthetic image whose correct outcome is known.

#include <cmath>
#include <fstream>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "attnscope/error.h"
#include "preprocessing/decode.h"
#include "preprocessing/pipeline.h"
#include "preprocessing/steps.h"
#include "test_support.h"

namespace attnscope::preprocessing {
namespace {

// Every pixel encodes its own coordinates: R = x % 256, G = y % 256, B = x / 256 + 16 (y / 256).
cv::Mat coordinates(int w, int h) {
  cv::Mat img(h, w, CV_8UC3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      img.at<cv::Vec3b>(y, x) = cv::Vec3b(x % 256, y % 256, x / 256 + 16 * (y / 256));
  return img;
}

// The largest difference between the channels of one pixel: 0 for a grey image.
int max_channel_spread(const cv::Mat& rgb) {
  int worst = 0;
  for (int y = 0; y < rgb.rows; ++y)
    for (int x = 0; x < rgb.cols; ++x) {
      const auto p = rgb.at<cv::Vec3b>(y, x);
      worst = std::max({worst, std::abs(p[0] - p[1]), std::abs(p[1] - p[2])});
    }
  return worst;
}

cv::Point decode_point(const cv::Vec3b& p) {
  return {p[0] + 256 * (p[2] % 16), p[1] + 256 * (p[2] / 16)};
}

TEST(CenterCrop, SideAndOffsetFollowTheClosedForm) {
  for (const auto& [w, h] : std::vector<std::pair<int, int>>{{600, 450}, {450, 600}, {101, 77}}) {
    const auto img = coordinates(w, h);
    cv::Mat mask = cv::Mat::zeros(h, w, CV_8UC1);
    mask.at<uint8_t>(h / 2, w / 2) = 255;
    const auto out = center_crop(img, {0.8}, &mask);
    const int side = static_cast<int>(std::floor(0.8 * std::min(w, h) + 0.5));
    ASSERT_EQ(out.cols, side);
    ASSERT_EQ(out.rows, side);
    const int top = static_cast<int>(std::floor((h - side) / 2.0 + 0.5));
    const int left = static_cast<int>(std::floor((w - side) / 2.0 + 0.5));
    EXPECT_EQ(decode_point(out.at<cv::Vec3b>(0, 0)), cv::Point(left, top)) << w << "x" << h;
    EXPECT_EQ(decode_point(out.at<cv::Vec3b>(side - 1, side - 1)),
              cv::Point(left + side - 1, top + side - 1));
    EXPECT_EQ(mask.size(), out.size());
    EXPECT_EQ(mask.at<uint8_t>(h / 2 - top, w / 2 - left), 255);
  }
}

TEST(CenterCrop, RejectsRatioOutsideZeroOne) {
  EXPECT_THROW(center_crop(coordinates(10, 10), {1.5}), Error);
  EXPECT_THROW(center_crop(coordinates(10, 10), {0.0}), Error);
}

TEST(Resize, ShortSideThenCentreCropKeepsTheCentre) {
  // A horizontal ramp R = x * 255 / (W - 1): after scaling the short side 200 → 224 the
  // 400-wide image is 448 wide and the crop starts at x = 112 (in scaled pixels).
  cv::Mat img(200, 400, CV_8UC3);
  for (int x = 0; x < 400; ++x)
    img.col(x).setTo(cv::Scalar(x * 255.0 / 399, 100, 50));
  cv::Mat mask = cv::Mat::zeros(200, 400, CV_8UC1);
  const auto out = resize(img, {224, ResizeMode::kCrop}, &mask);
  ASSERT_EQ(out.size(), cv::Size(224, 224));
  ASSERT_EQ(mask.size(), cv::Size(224, 224));
  const double scale = 224.0 / 200.0;
  for (int x : {0, 111, 223}) {
    const double source_x = (x + 112 + 0.5) / scale - 0.5;
    EXPECT_NEAR(out.at<cv::Vec3b>(100, x)[0], source_x * 255.0 / 399, 1.5) << x;
  }
}

TEST(Resize, LetterboxPadsTheShortSide) {
  cv::Mat img(200, 400, CV_8UC3, cv::Scalar(255, 255, 255));
  cv::Mat mask(200, 400, CV_8UC1, cv::Scalar(255));
  ResizeOptions o{224, ResizeMode::kLetterbox, {7, 8, 9}};
  const auto out = resize(img, o, &mask);
  ASSERT_EQ(out.size(), cv::Size(224, 224));
  // The image is 224 × 112 after scaling, centred: rows 56..167.
  EXPECT_EQ(out.at<cv::Vec3b>(55, 100), cv::Vec3b(7, 8, 9));
  EXPECT_EQ(out.at<cv::Vec3b>(56, 100), cv::Vec3b(255, 255, 255));
  EXPECT_EQ(out.at<cv::Vec3b>(167, 100), cv::Vec3b(255, 255, 255));
  EXPECT_EQ(out.at<cv::Vec3b>(168, 100), cv::Vec3b(7, 8, 9));
  EXPECT_EQ(mask.at<uint8_t>(55, 100), 0);
  EXPECT_EQ(mask.at<uint8_t>(56, 100), 255);
  EXPECT_EQ(cv::countNonZero(mask), 224 * 112);
}

TEST(HairRemoval, RecoversTheBackgroundUnderADrawnHair) {
  const cv::Vec3b skin(200, 150, 130);
  cv::Mat img(120, 160, CV_8UC3, cv::Scalar(skin[0], skin[1], skin[2]));
  cv::Mat hair = cv::Mat::zeros(120, 160, CV_8UC1);
  cv::line(hair, {10, 15}, {150, 105}, cv::Scalar(255), 3);
  img.setTo(cv::Scalar(30, 25, 20), hair);
  HairRemovalOptions o;
  const auto found = hair_mask(img, o);
  // Every hair pixel is found, and nothing far from it.
  EXPECT_EQ(cv::countNonZero(hair & ~found), 0);
  cv::Mat near_hair;
  cv::dilate(hair, near_hair, cv::Mat(), {-1, -1}, 3);
  EXPECT_EQ(cv::countNonZero(found & ~near_hair), 0);
  const auto out = remove_hair(img, o);
  double worst = 0;
  for (int y = 0; y < img.rows; ++y)
    for (int x = 0; x < img.cols; ++x)
      for (int c = 0; c < 3; ++c)
        worst = std::max(worst, std::abs(out.at<cv::Vec3b>(y, x)[c] - double(skin[c])));
  EXPECT_LE(worst, 6.0);
}

TEST(HairRemoval, LeavesSmoothSkinAndMostOfALesionAlone) {
  cv::Mat img(60, 60, CV_8UC3);
  for (int y = 0; y < 60; ++y)
    for (int x = 0; x < 60; ++x)
      img.at<cv::Vec3b>(y, x) = cv::Vec3b(170 + x / 2, 120 + y / 3, 100);  // smooth shading
  EXPECT_EQ(cv::norm(remove_hair(img, {}), img, cv::NORM_INF), 0.0);
  // A lesion wider than the kernel is not hair: only its rim may be touched, its inside
  // (more than half the kernel from the rim) stays as it was.
  cv::circle(img, {30, 30}, 20, cv::Scalar(90, 60, 40), cv::FILLED);
  cv::Mat changed;
  cv::cvtColor(cv::abs(remove_hair(img, {}) - img), changed, cv::COLOR_RGB2GRAY);
  cv::Mat inside = cv::Mat::zeros(60, 60, CV_8UC1);
  cv::circle(inside, {30, 30}, 20 - 9, cv::Scalar(255), cv::FILLED);
  EXPECT_EQ(cv::countNonZero(changed & inside), 0);
  EXPECT_THROW(remove_hair(img, {4, 10, 3}), Error);  // even kernel
}

TEST(ShadesOfGray, TurnsAColourCastIntoGrey) {
  // A grey scene under an orange illuminant (1.0, 0.8, 0.6).
  cv::Mat img(64, 64, CV_8UC3);
  cv::RNG rng(11);
  for (int y = 0; y < 64; ++y)
    for (int x = 0; x < 64; ++x) {
      const int g = rng.uniform(40, 220);
      img.at<cv::Vec3b>(y, x) =
          cv::Vec3b(g, cv::saturate_cast<uint8_t>(g * 0.8), cv::saturate_cast<uint8_t>(g * 0.6));
    }
  EXPECT_LE(max_channel_spread(shades_of_gray(img, {})), 3);
}

// p up to 100 keeps 255^p times the pixel count finite in a double; beyond it (p = 200 gave NaN
// colours: a black image) it is refused.
TEST(ShadesOfGray, PIsBoundedWhereTheSumStaysFinite) {
  cv::Mat img(64, 64, CV_8UC3);
  cv::RNG(13).fill(img, cv::RNG::UNIFORM, 1, 256);
  ColorConstancyOptions o;
  o.p = 100;
  const auto out = shades_of_gray(img, o);
  EXPECT_GT(cv::countNonZero(out.reshape(1)), static_cast<int>(out.total()));  // not black
  o.p = 101;
  EXPECT_THROW(shades_of_gray(img, o), Error);
  EXPECT_THROW(
      Pipeline::from_json(nlohmann::json::parse(
          R"({"steps": [{"op": "shades_of_gray", "p": 200}, {"op": "resize", "size": 32}]})")),
      Error);
}

// The numpy reference implementation that ISIC pipelines use (Barata et al.'s shade_of_gray_cc).
TEST(ShadesOfGray, MatchesTheNumpyReference) {
  test::TempDir dir;
  cv::Mat rgb(40, 50, CV_8UC3);
  cv::RNG(12).fill(rgb, cv::RNG::UNIFORM, 0, 256);
  write_image(dir / "in.png", rgb);
  for (const double gamma : {0.0, 2.2}) {
    const std::string script =
        "import cv2, numpy as np\n"
        "img = cv2.cvtColor(cv2.imread('" +
        dir / "in.png" +
        "'), cv2.COLOR_BGR2RGB)\n"
        "gamma = " +
        std::to_string(gamma) +
        "\n"
        "if gamma > 0:\n"
        "    lut = np.array([255 * pow(i / 255, 1 / gamma) for i in range(256)]).astype('uint8')\n"
        "    img = cv2.LUT(img, lut)\n"
        "img = img.astype('float32')\n"
        "vec = np.power(np.mean(np.power(img.astype('float64'), 6), (0, 1)), 1 / 6)\n"
        "vec = vec / np.sqrt(np.sum(vec ** 2))\n"
        "img = np.clip(img * (1 / (vec * np.sqrt(3))), 0, 255).astype('uint8')\n"
        "cv2.imwrite('" +
        dir / "ref.png" + "', cv2.cvtColor(img, cv2.COLOR_RGB2BGR))\n";
    std::ofstream(dir / "ref.py") << script;
    const auto r = test::run_process(test::python() + " " + dir / "ref.py");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto ref = decode_image(dir / "ref.png");
    const auto out = shades_of_gray(rgb, {6.0, gamma});
    EXPECT_LE(cv::norm(out, ref, cv::NORM_INF), 1.0) << "gamma " << gamma;
  }
}

TEST(Clahe, RaisesLocalContrastAndKeepsGreyGrey) {
  cv::Mat img(128, 128, CV_8UC3);
  cv::RNG rng(13);
  for (int y = 0; y < 128; ++y)
    for (int x = 0; x < 128; ++x) {
      const int v = 120 + rng.uniform(-4, 5);  // low-contrast texture
      img.at<cv::Vec3b>(y, x) = cv::Vec3b(v, v, v);
    }
  auto l_std = [](const cv::Mat& rgb) {
    cv::Mat lab, l;
    cv::cvtColor(rgb, lab, cv::COLOR_RGB2Lab);
    cv::extractChannel(lab, l, 0);
    cv::Scalar mean, stddev;
    cv::meanStdDev(l, mean, stddev);
    return stddev[0];
  };
  const auto out = clahe(img, {});
  EXPECT_GT(l_std(out), 1.5 * l_std(img));
  EXPECT_LE(max_channel_spread(out), 2);  // only lightness changes: grey stays grey
}

}  // namespace
}  // namespace attnscope::preprocessing
