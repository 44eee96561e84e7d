#include <torch/torch.h>
#include <opencv2/core.hpp>

#include "attnscope/error.h"
#include "preprocessing/tensor.h"
#include "test_support.h"

namespace attnscope::preprocessing {
namespace {

TEST(ToTensor, NormalisesEveryPixelLikeTheFormula) {
  cv::Mat img(5, 7, CV_8UC3);
  cv::RNG rng(7);
  rng.fill(img, cv::RNG::UNIFORM, 0, 256);
  Normalization norm;
  const auto t = to_tensor(img, norm);
  ASSERT_EQ(t.sizes(), (std::vector<int64_t>{3, 5, 7}));
  auto a = t.accessor<float, 3>();
  for (int y = 0; y < img.rows; ++y)
    for (int x = 0; x < img.cols; ++x)
      for (int c = 0; c < 3; ++c) {
        const double expected = (img.at<cv::Vec3b>(y, x)[c] / 255.0 - norm.mean[c]) / norm.std[c];
        EXPECT_NEAR(a[c][y][x], expected, 1e-5) << "pixel (" << y << "," << x << ") channel " << c;
      }
}

TEST(ToTensor, RejectsNonRgbImagesWithAClearError) {
  cv::Mat grey(4, 4, CV_8UC1, cv::Scalar(0));
  try {
    to_tensor(grey);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("CV_8UC3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attnscope::preprocessing
