#include "pipeline/vision/faithfulness.h"

#include <cmath>
#include <limits>

#include <ATen/CPUGeneratorImpl.h>

#include "attnscope/error.h"

namespace attnscope::pipeline {
namespace F = torch::nn::functional;

namespace {

// Separable Gaussian blur with replicated borders. Shape: (3, H, W) -> (3, H, W).
torch::Tensor gaussian_blur(const torch::Tensor& image, double sigma) {
  if (sigma <= 0) return image.clone();
  const int64_t radius = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(3 * sigma)));
  auto x = torch::arange(-radius, radius + 1, image.options()).to(torch::kFloat);
  auto k = torch::exp(-x * x / (2 * sigma * sigma));
  k = (k / k.sum()).to(image.dtype());
  const auto c = image.size(0);
  auto in = image.unsqueeze(0);  // (1, 3, H, W)
  in = F::pad(in, F::PadFuncOptions({radius, radius, radius, radius}).mode(torch::kReplicate));
  const auto kh = k.view({1, 1, 1, -1}).repeat({c, 1, 1, 1});  // (3, 1, 1, K)
  const auto kv = k.view({1, 1, -1, 1}).repeat({c, 1, 1, 1});  // (3, 1, K, 1)
  auto out = F::conv2d(in, kh, F::Conv2dFuncOptions().groups(c));
  out = F::conv2d(out, kv, F::Conv2dFuncOptions().groups(c));
  return out.squeeze(0);
}

}  // namespace

double trapezoid_auc(const torch::Tensor& y) {
  check(y.dim() == 1 && y.size(0) >= 2, "trapezoid_auc", "needs a curve of >= 2 points, got ",
        y.sizes());
  const auto v = y.to(torch::kDouble);
  const auto n = y.size(0) - 1;
  const double sum = v.sum().item<double>() - 0.5 * (v[0].item<double>() + v[n].item<double>());
  return sum / static_cast<double>(n);
}

torch::Tensor upsample_maps(const torch::Tensor& maps, int64_t height, int64_t width) {
  check(maps.dim() == 3, "upsample_maps", "expects (B, h, w) maps, got ", maps.sizes());
  if (maps.size(1) == height && maps.size(2) == width) return maps.to(torch::kFloat);
  return F::interpolate(maps.unsqueeze(1).to(torch::kFloat),
                        F::InterpolateFuncOptions()
                            .size(std::vector<int64_t>{height, width})
                            .mode(torch::kBilinear)
                            .align_corners(false))
      .squeeze(1);
}

RiseResult rise_auc(const ScoreFn& score, const torch::Tensor& image, const torch::Tensor& map,
                    const RiseOptions& options) {
  check(image.dim() == 3 && image.size(0) == 3, "rise_auc", "expects a (3, H, W) image, got ",
        image.sizes());
  check(map.dim() == 2, "rise_auc", "expects an (h, w) map, got ", map.sizes());
  check(options.steps >= 1, "rise_auc", "steps must be >= 1");
  const auto h = image.size(1), w = image.size(2), n = h * w;
  const auto sal = upsample_maps(map.unsqueeze(0), h, w).reshape({n}).to(image.device());
  // Ranks: 0 for the most salient pixel; ties broken by position, so a constant map deletes
  // in raster order.
  const auto sorted =
      std::get<1>(torch::sort(sal, /*stable=*/true, /*dim=*/0, /*descending=*/true));
  auto rank = torch::empty({n}, torch::TensorOptions().dtype(torch::kLong).device(image.device()));
  rank.index_put_({sorted}, torch::arange(n, rank.options()));
  rank = rank.view({1, 1, h, w});
  const int64_t per = (n + options.steps - 1) / options.steps;
  const auto counts =
      torch::clamp(torch::arange(options.steps + 1, rank.options()) * per, 0, n);  // (S+1)
  auto substrate = options.substrate.defined()
                       ? options.substrate.to(image.options()).view({3, 1, 1})
                       : torch::zeros({3, 1, 1}, image.options());
  const auto blurred = gaussian_blur(image, options.blur_sigma);
  std::vector<torch::Tensor> del_scores, ins_scores;
  for (int64_t s = 0; s <= options.steps; s += options.batch_size) {
    const auto e = std::min<int64_t>(options.steps + 1, s + options.batch_size);
    const auto changed =
        (rank < counts.slice(0, s, e).view({-1, 1, 1, 1})).to(image.dtype());  // (K,1,H,W)
    const auto deleted = image.unsqueeze(0) * (1 - changed) + substrate.unsqueeze(0) * changed;
    const auto inserted = blurred.unsqueeze(0) * (1 - changed) + image.unsqueeze(0) * changed;
    del_scores.push_back(score(deleted).reshape({-1}).to(torch::kCPU, torch::kDouble));
    ins_scores.push_back(score(inserted).reshape({-1}).to(torch::kCPU, torch::kDouble));
  }
  RiseResult r;
  r.deletion_curve = torch::cat(del_scores);
  r.insertion_curve = torch::cat(ins_scores);
  r.deletion_auc = trapezoid_auc(r.deletion_curve);
  r.insertion_auc = trapezoid_auc(r.insertion_curve);
  return r;
}

double mass_in_mask(const torch::Tensor& map, const torch::Tensor& mask) {
  const auto m = torch::clamp_min(map.to(torch::kDouble), 0);
  const double total = m.sum().item<double>();
  if (!(total > 0)) return std::numeric_limits<double>::quiet_NaN();
  return (m * (mask.to(torch::kDouble) > 0.5)).sum().item<double>() / total;
}

double jaccard(const torch::Tensor& map, const torch::Tensor& mask, double threshold) {
  const auto m = map.to(torch::kDouble);
  const double lo = m.min().item<double>(), hi = m.max().item<double>();
  const auto on =
      hi > lo ? ((m - lo) / (hi - lo)) >= threshold : torch::ones_like(m).to(torch::kBool);
  const auto truth = mask.to(torch::kDouble) > 0.5;
  const double uni = (on | truth).sum().item<double>();
  if (uni == 0) return std::numeric_limits<double>::quiet_NaN();
  return (on & truth).sum().item<double>() / uni;
}

double pointing_game(const torch::Tensor& map, const torch::Tensor& mask) {
  const auto i = map.reshape({-1}).argmax().item<int64_t>();
  return mask.reshape({-1})[i].item<double>() > 0.5 ? 1.0 : 0.0;
}

torch::Tensor gaussian_prior(int64_t height, int64_t width, double sigma_fraction) {
  const auto y = (torch::arange(height, torch::kDouble) + 0.5 - height / 2.0) /
                 (sigma_fraction * static_cast<double>(height));
  const auto x = (torch::arange(width, torch::kDouble) + 0.5 - width / 2.0) /
                 (sigma_fraction * static_cast<double>(width));
  return torch::exp(-0.5 * (y.view({-1, 1}).pow(2) + x.view({1, -1}).pow(2))).to(torch::kFloat);
}

torch::Tensor random_map(int64_t height, int64_t width, const std::string& key, uint64_t seed) {
  uint64_t h = 14695981039346656037ull ^ seed;
  for (const unsigned char c : key) {
    h ^= c;
    h *= 1099511628211ull;
  }
  auto gen = at::make_generator<at::CPUGeneratorImpl>(h);
  return torch::rand({height, width}, gen);
}

}  // namespace attnscope::pipeline
