#pragma once
// RGB uint8 images to normalised float tensors.

#include <array>
#include <string>

#include <ATen/core/Tensor.h>
#include <opencv2/core/mat.hpp>

namespace attnscope::preprocessing {

/// Per-channel normalisation: x' = (x / 255 - mean) / std.
struct Normalization {
  /// ImageNet defaults, as torchvision's pretrained models expect.
  std::array<float, 3> mean{0.485f, 0.456f, 0.406f};
  std::array<float, 3> std{0.229f, 0.224f, 0.225f};
};

/// OpenCV's version, e.g. "4.6.0".
std::string opencv_version();

/// RGB uint8 HWC image (CV_8UC3) → normalised float32 CHW tensor.
/// The pixels are read once and written once, straight into the tensor's storage.
/// Shape: (3, H, W).
at::Tensor to_tensor(const cv::Mat& rgb, const Normalization& norm = {});

/// The same conversion written into `out`, a contiguous float32 (3, H, W) tensor or view
/// (e.g. batch[i]), so that a batch is filled with one copy per image.
/// Shape: out (3, H, W) with H, W the image's.
void to_tensor_into(const cv::Mat& rgb, const at::Tensor& out, const Normalization& norm = {});

}  // namespace attnscope::preprocessing
