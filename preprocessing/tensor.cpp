#include "preprocessing/tensor.h"

#include <torch/torch.h>
#include <opencv2/core.hpp>

#include "attnscope/error.h"

namespace attnscope::preprocessing {

std::string opencv_version() {
  return CV_VERSION;
}

at::Tensor to_tensor(const cv::Mat& rgb, const Normalization& norm) {
  check(rgb.type() == CV_8UC3, "to_tensor", "expected an RGB uint8 image (CV_8UC3), got type ",
        rgb.type(), " with ", rgb.channels(), " channels");
  check(!rgb.empty(), "to_tensor", "image is empty");
  auto out = torch::empty({3, rgb.rows, rgb.cols}, torch::kFloat32);  // (C, H, W)
  to_tensor_into(rgb, out, norm);
  return out;
}

void to_tensor_into(const cv::Mat& rgb, const at::Tensor& out, const Normalization& norm) {
  check(rgb.type() == CV_8UC3, "to_tensor", "expected an RGB uint8 image (CV_8UC3), got type ",
        rgb.type(), " with ", rgb.channels(), " channels");
  check(!rgb.empty(), "to_tensor", "image is empty");
  const int h = rgb.rows, w = rgb.cols;
  check(out.scalar_type() == at::kFloat && out.is_contiguous() && out.dim() == 3 &&
            out.size(0) == 3 && out.size(1) == h && out.size(2) == w,
        "to_tensor", "output must be a contiguous float32 tensor of shape (3, ", h, ", ", w,
        "), got ", out.sizes(), " ", out.scalar_type());
  float* dst = out.data_ptr<float>();
  const int64_t plane = static_cast<int64_t>(h) * w;
  std::array<float, 3> scale{}, shift{};
  for (int c = 0; c < 3; ++c) {
    check(norm.std[c] > 0.f, "to_tensor", "std of channel ", c, " must be > 0, got ", norm.std[c]);
    scale[c] = 1.f / (255.f * norm.std[c]);
    shift[c] = -norm.mean[c] / norm.std[c];
  }
  at::parallel_for(0, h, 16, [&](int64_t begin, int64_t end) {
    for (int64_t y = begin; y < end; ++y) {
      const uint8_t* src = rgb.ptr<uint8_t>(static_cast<int>(y));
      float* r = dst + y * w;
      float* g = r + plane;
      float* b = g + plane;
      for (int x = 0; x < w; ++x) {
        r[x] = src[3 * x] * scale[0] + shift[0];
        g[x] = src[3 * x + 1] * scale[1] + shift[1];
        b[x] = src[3 * x + 2] * scale[2] + shift[2];
      }
    }
  });
}

}  // namespace attnscope::preprocessing
