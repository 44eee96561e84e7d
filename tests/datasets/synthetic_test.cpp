// Synthetic dermoscopy: deterministic, masks on the lesion, ABCD-like label rules, artefacts
// independent of the label, and files the readers load.

#include <opencv2/imgproc.hpp>

#include "datasets/synthetic.h"
#include "preprocessing/decode.h"
#include "test_support.h"

namespace attnscope::datasets {
namespace {

// Intersection over union of a mask with its own 180° rotation about its centroid: 1 for a
// point-symmetric shape (an ellipse), lower for an asymmetric one.
double point_symmetry(const cv::Mat& mask) {
  const auto m = cv::moments(mask, true);
  const cv::Point2d c(m.m10 / m.m00, m.m01 / m.m00);
  const cv::Mat rot = (cv::Mat_<double>(2, 3) << -1, 0, 2 * c.x, 0, -1, 2 * c.y);
  cv::Mat turned;
  cv::warpAffine(mask, turned, rot, mask.size(), cv::INTER_NEAREST);
  return static_cast<double>(cv::countNonZero(mask & turned)) / cv::countNonZero(mask | turned);
}

// Spread of colours inside the lesion: mean per-channel standard deviation.
double colour_spread(const SyntheticSample& s) {
  cv::Scalar mean, sd;
  cv::meanStdDev(s.image, mean, sd, s.mask);
  return (sd[0] + sd[1] + sd[2]) / 3;
}

// Border irregularity: perimeter² / (4π · area), 1 for a circle.
double roughness(const cv::Mat& mask) {
  std::vector<std::vector<cv::Point>> contours;
  cv::findContours(mask.clone(), contours, cv::RETR_EXTERNAL, cv::CHAIN_APPROX_NONE);
  const auto& c = *std::max_element(contours.begin(), contours.end(),
                                    [](auto& a, auto& b) { return a.size() < b.size(); });
  const double p = cv::arcLength(c, true);
  return p * p / (4 * 3.14159265 * cv::contourArea(c));
}

TEST(Synthetic, SameSeedSamePixelsOtherSeedOtherPixels) {
  SyntheticOptions o;
  o.size = 96;
  const auto a = make_synthetic(o, 5, 3), b = make_synthetic(o, 5, 3), c = make_synthetic(o, 6, 3);
  EXPECT_EQ(cv::norm(a.image, b.image, cv::NORM_INF), 0.0);
  EXPECT_EQ(cv::norm(a.mask, b.mask, cv::NORM_INF), 0.0);
  EXPECT_GT(cv::norm(a.image, c.image, cv::NORM_INF), 0.0);
  EXPECT_EQ(a.image.size(), cv::Size(96, 96));
  EXPECT_EQ(a.image.type(), CV_8UC3);
  EXPECT_EQ(a.mask.type(), CV_8UC1);
  EXPECT_EQ(a.image_id, "synth_000003");
  EXPECT_EQ(synthetic_label(o, 5, 3), a.label);
}

TEST(Synthetic, MaskCoversTheDarkLesion) {
  SyntheticOptions o;
  o.vignette_probability = 0;
  o.hair_probability = o.ink_probability = o.ruler_probability = 0;
  for (int i = 0; i < 10; ++i) {
    const auto s = make_synthetic(o, 1, i);
    cv::Mat grey;
    cv::cvtColor(s.image, grey, cv::COLOR_RGB2GRAY);
    const double inside = cv::mean(grey, s.mask)[0], outside = cv::mean(grey, ~s.mask)[0];
    EXPECT_LT(inside, outside - 40) << i;
    const double area = cv::countNonZero(s.mask) / (224.0 * 224.0);
    EXPECT_GT(area, 0.05) << i;
    EXPECT_LT(area, 0.5) << i;
  }
}

TEST(Synthetic, MalignantLesionsAreAsymmetricIrregularAndMulticoloured) {
  SyntheticOptions o;
  o.size = 160;
  o.hair_probability = o.ink_probability = o.ruler_probability = o.vignette_probability = 0;
  std::array<double, 2> symmetry{}, spread{}, rough{};
  std::array<int, 2> n{};
  for (int i = 0; i < 60; ++i) {
    const auto s = make_synthetic(o, 9, i);
    const auto l = static_cast<std::size_t>(s.label);
    symmetry[l] += point_symmetry(s.mask);
    spread[l] += colour_spread(s);
    rough[l] += roughness(s.mask);
    ++n[l];
  }
  ASSERT_GT(n[0], 10);
  ASSERT_GT(n[1], 10);
  for (std::size_t l = 0; l < 2; ++l) {
    symmetry[l] /= n[l];
    spread[l] /= n[l];
    rough[l] /= n[l];
  }
  EXPECT_GT(symmetry[0], 0.95);
  EXPECT_LT(symmetry[1], symmetry[0] - 0.1);
  EXPECT_GT(spread[1], 1.5 * spread[0]);
  EXPECT_GT(rough[1], rough[0] + 0.1);
}

// Lesion centroids (from the masks) of `n` samples, in units of the side.
std::vector<cv::Point2d> centroids(const SyntheticOptions& o, uint64_t seed, int n) {
  std::vector<cv::Point2d> out;
  for (int i = 0; i < n; ++i) {
    const auto m = cv::moments(make_synthetic(o, seed, i).mask, true);
    out.emplace_back(m.m10 / m.m00 / o.size, m.m01 / m.m00 / o.size);
  }
  return out;
}

TEST(Synthetic, CentrePlacementKeepsLesionsNearTheMiddle) {
  SyntheticOptions dflt, centre;
  dflt.size = centre.size = 96;
  centre.placement = Placement::kCentre;
  for (int i = 0; i < 5; ++i)  // the default is centre, pixel for pixel
    EXPECT_EQ(cv::norm(make_synthetic(dflt, 2, i).image, make_synthetic(centre, 2, i).image,
                       cv::NORM_INF),
              0.0);
  for (const auto& c : centroids(centre, 2, 40)) {
    EXPECT_NEAR(c.x, 0.5, 0.12);
    EXPECT_NEAR(c.y, 0.5, 0.12);
  }
}

TEST(Synthetic, AnywherePlacementSpreadsLesionsOverTheFrameAndMasksFollow) {
  SyntheticOptions o;
  o.size = 128;
  o.placement = Placement::kAnywhere;
  o.hair_probability = o.ink_probability = o.ruler_probability = o.vignette_probability = 0;
  const auto c = centroids(o, 7, 80);
  std::array<int, 4> quadrant{};  // lesions well off the middle, in each quadrant
  double sx = 0, sy = 0;
  for (const auto& p : c) {
    EXPECT_GT(std::min(p.x, p.y), 0.0);
    EXPECT_LT(std::max(p.x, p.y), 1.0);
    if (std::hypot(p.x - 0.5, p.y - 0.5) > 0.2) ++quadrant[(p.x > 0.5) + 2 * (p.y > 0.5)];
    sx += (p.x - 0.5) * (p.x - 0.5);
    sy += (p.y - 0.5) * (p.y - 0.5);
  }
  for (int q : quadrant)
    EXPECT_GE(q, 3);
  // Uniform over [0.12, 0.88] has a standard deviation of 0.22; the centre placement ~0.04.
  EXPECT_GT(std::sqrt(sx / c.size()), 0.15);
  EXPECT_GT(std::sqrt(sy / c.size()), 0.15);
  // The mask still covers the dark lesion wherever it is.
  for (int i = 0; i < 10; ++i) {
    const auto s = make_synthetic(o, 7, i);
    cv::Mat grey;
    cv::cvtColor(s.image, grey, cv::COLOR_RGB2GRAY);
    EXPECT_LT(cv::mean(grey, s.mask)[0], cv::mean(grey, ~s.mask)[0] - 40) << i;
    const double area = cv::countNonZero(s.mask) / double(o.size * o.size);
    EXPECT_GT(area, 0.01) << i;
    EXPECT_LT(area, 0.2) << i;
  }
  EXPECT_THROW(parse_placement("middle"), Error);
  EXPECT_EQ(parse_placement(placement_name(Placement::kAnywhere)), Placement::kAnywhere);
}

TEST(Synthetic, ArtefactsDoNotDependOnTheLabel) {
  // Flipping every label (malignant_fraction 0 vs 1) must leave the artefacts as they were.
  SyntheticOptions benign, malignant;
  benign.size = malignant.size = 64;
  benign.malignant_fraction = 0.0;
  malignant.malignant_fraction = 1.0;
  int hairs = 0;
  for (int i = 0; i < 40; ++i) {
    const auto a = make_synthetic(benign, 3, i), b = make_synthetic(malignant, 3, i);
    ASSERT_EQ(a.label, 0);
    ASSERT_EQ(b.label, 1);
    EXPECT_EQ(a.hairs, b.hairs);
    EXPECT_EQ(a.ruler, b.ruler);
    EXPECT_EQ(a.ink, b.ink);
    EXPECT_EQ(a.vignette, b.vignette);
    hairs += a.hairs;
  }
  EXPECT_GT(hairs, 5);
  EXPECT_LT(hairs, 35);
}

TEST(Synthetic, WritesFilesTheGenericReaderLoads) {
  test::TempDir dir;
  SyntheticOptions o;
  o.size = 64;
  const auto ds = write_synthetic(dir.path().string(), 12, 4, o, 2);
  ASSERT_EQ(ds.samples.size(), 12u);
  EXPECT_EQ(ds.format, Format::kGeneric);
  ReadOptions read;
  read.images_dir = default_images_dir(dir / "labels.csv");
  const auto again = read_dataset(dir / "labels.csv", read);
  for (std::size_t i = 0; i < 12; ++i) {
    const auto s = make_synthetic(o, 4, static_cast<int64_t>(i));
    EXPECT_EQ(again.samples[i].image_id, s.image_id);
    EXPECT_EQ(again.samples[i].label, s.label);
    ASSERT_TRUE(again.samples[i].mask_path.has_value());
    EXPECT_EQ(cv::norm(preprocessing::decode_image(again.samples[i].path), s.image, cv::NORM_INF),
              0.0);
  }
}

// synth replaces dir/labels.csv: one it did not write (someone's ground truth) is refused before
// any file is written, and left byte for byte; its own is replaced by a rerun.
TEST(Synthetic, RefusesToReplaceALabelsCsvItDidNotWrite) {
  test::TempDir dir;
  SyntheticOptions o;
  o.size = 32;
  const std::string truth = "image_id,label\nISIC_0000000,benign\n";
  std::ofstream(dir / "labels.csv") << truth;
  EXPECT_EQ(test::error_of([&] { write_synthetic(dir.path().string(), 3, 1, o); }),
            dir / "labels.csv" +
                ": exists and was not written by attnscope synth (its first line is not synth's "
                "header); synth would replace it: choose another output folder");
  EXPECT_EQ(test::read_text(dir / "labels.csv"), truth);
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "images"));
  std::filesystem::remove(dir.path() / "labels.csv");
  write_synthetic(dir.path().string(), 3, 1, o);
  EXPECT_EQ(write_synthetic(dir.path().string(), 4, 2, o).samples.size(), 4u);
}

}  // namespace
}  // namespace attnscope::datasets
