#include "pipeline/vision/mixing.h"

#include <algorithm>
#include <cmath>

#include "attnscope/error.h"

namespace attnscope::pipeline {

torch::Tensor mixup_reversed(const torch::Tensor& x, double lambda) {
  return x * lambda + x.flip(0) * (1.0 - lambda);
}

torch::Tensor cutmix_reversed(const torch::Tensor& x, const MixBox& box) {
  check(x.dim() >= 3, "cutmix", "expected (B, ..., H, W), got ", x.sizes());
  auto out = x.clone();
  if (box.area() <= 0) return out;
  const auto rows = [&](const torch::Tensor& t) {
    return t.narrow(-2, box.y0, box.y1 - box.y0).narrow(-1, box.x0, box.x1 - box.x0);
  };
  rows(out).copy_(rows(x.flip(0)));
  return out;
}

MixBox cutmix_box(int64_t height, int64_t width, double lambda, int64_t cy, int64_t cx) {
  const double ratio = std::sqrt(std::clamp(1.0 - lambda, 0.0, 1.0));
  const auto half_h = static_cast<int64_t>(static_cast<double>(height) * ratio) / 2;
  const auto half_w = static_cast<int64_t>(static_cast<double>(width) * ratio) / 2;
  MixBox box;
  box.y0 = std::clamp<int64_t>(cy - half_h, 0, height);
  box.y1 = std::clamp<int64_t>(cy + half_h, 0, height);
  box.x0 = std::clamp<int64_t>(cx - half_w, 0, width);
  box.x1 = std::clamp<int64_t>(cx + half_w, 0, width);
  return box;
}

double sample_beta(double alpha) {
  check(alpha > 0 && std::isfinite(alpha), "mixing", "Beta(α, α) needs α > 0, got ", alpha);
  const auto g = at::_standard_gamma(torch::full({2}, alpha, torch::kDouble));
  const double a = g[0].item<double>(), b = g[1].item<double>();
  // Both can underflow to 0 for a tiny α; the draw is then all one image or the other.
  if (a + b <= 0) return 0.5;
  return a / (a + b);
}

torch::Tensor mixed_loss(const std::function<torch::Tensor(const torch::Tensor&)>& loss,
                         const torch::Tensor& labels, double lambda) {
  if (lambda >= 1.0) return loss(labels);
  return loss(labels) * lambda + loss(labels.flip(0)) * (1.0 - lambda);
}

MixedBatch mix_batch(const torch::Tensor& images, const torch::Tensor& masks,
                     const MixOptions& options) {
  MixedBatch out;
  out.images = images;
  out.masks = masks;
  if (!options.enabled()) return out;
  check(images.dim() == 4, "mixing", "expected images (B, C, H, W), got ", images.sizes());
  bool cutmix = options.cutmix_alpha > 0;
  if (options.mixup_alpha > 0 && options.cutmix_alpha > 0)
    cutmix = torch::rand({1}, torch::kDouble).item<double>() < 0.5;
  const double lambda = sample_beta(cutmix ? options.cutmix_alpha : options.mixup_alpha);
  out.cutmix = cutmix;
  if (!cutmix) {
    out.lambda = lambda;
    out.images = mixup_reversed(images, lambda);
    if (masks.defined()) out.masks = mixup_reversed(masks, lambda);
    return out;
  }
  const int64_t h = images.size(2), w = images.size(3);
  const auto cy = torch::randint(h, {1}, torch::kLong).item<int64_t>();
  const auto cx = torch::randint(w, {1}, torch::kLong).item<int64_t>();
  const auto box = cutmix_box(h, w, lambda, cy, cx);
  // timm's correct_lam: the label weight is the share of the image left its own.
  out.lambda = 1.0 - static_cast<double>(box.area()) / static_cast<double>(h * w);
  out.images = cutmix_reversed(images, box);
  if (masks.defined()) {
    check(masks.size(-2) == h && masks.size(-1) == w, "mixing", "masks ", masks.sizes(),
          " are not the images' size ", images.sizes());
    out.masks = cutmix_reversed(masks, box);
  }
  return out;
}

}  // namespace attnscope::pipeline
