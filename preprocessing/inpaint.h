#pragma once

#include <cstdint>

#include <opencv2/core.hpp>

namespace attnscope::preprocessing {

/// Telea's inpainting (A. Telea, "An Image Inpainting Technique Based on the Fast Marching
/// Method", J. Graphics Tools 2004): the masked pixels are filled in the order of their distance
/// from the known region (a fast-marching front), each as the weighted first-order extrapolation
/// I(q) + ½∇I(q)·(p − q) of the known pixels q within `radius`, weighted by direction (along the
/// distance gradient), distance and level-set closeness. The gradient term is damped by ½
/// (Telea's has none; measured in inpaint.cpp): 13-40 % less error than cv::inpaint under hairs
/// drawn over real photographs.
///
/// The method of cv::inpaint(INPAINT_TELEA); the front is a binary heap ordered by (distance,
/// arrival), where OpenCV keeps a sorted linked list whose insertions walk it: a mask of many
/// small specks (a low black-hat threshold) made OpenCV's quadratic, 6.1 s for a 512 × 512 mask of
/// 10 % random specks (0.1 s here). Here the cost is O(n log n + n·w) for n masked pixels and w
/// pixels in the radius' window (inpaint_work), whatever the mask's shape.
///
/// image: CV_8UC3 or CV_8UC1; mask: CV_8UC1 of the image's size, nonzero = fill; radius in
/// (0, 20]. Returns a new image; pixels outside the mask are copied. A mask covering the whole
/// image has nothing to extrapolate from and leaves the image as it was.
cv::Mat inpaint_telea(const cv::Mat& image, const cv::Mat& mask, double radius);

/// The work of inpaint_telea, in neighbour visits: masked pixels × pixels of the window of
/// side 2·ceil(radius) + 1. Bounded by callers so that a crafted config cannot run for hours.
int64_t inpaint_work(int64_t masked, double radius);

}  // namespace attnscope::preprocessing
