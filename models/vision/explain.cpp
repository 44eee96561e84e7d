#include "models/vision/explain.h"

#include <c10/core/impl/LocalDispatchKeySet.h>

#include "attnscope/error.h"

namespace attnscope::models::vision {
namespace {

// What is computed from a model's outputs is computed in float32 even when the model ran in
// bfloat16 or half (autocast, runtime/precision.h): reduced-precision inputs are widened, and
// NoAutocast keeps autocast from narrowing the products again.
torch::Tensor widened(const torch::Tensor& t) {
  return t.is_floating_point() && t.element_size() < 4 ? t.to(torch::kFloat) : t;
}

struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{
      c10::DispatchKeySet({c10::DispatchKey::AutocastCPU, c10::DispatchKey::AutocastCUDA})};
};

void check_layers(const std::vector<torch::Tensor>& attention, const char* what) {
  check(!attention.empty(), what, "needs the attention of at least one layer");
  const auto& a = attention.front();
  check(a.dim() == 4 && a.size(2) == a.size(3), what,
        "attention must be (B, H, T, T) per layer, got ", a.sizes());
  for (const auto& l : attention)
    check(l.sizes() == a.sizes(), what, "every layer must have shape ", a.sizes(), ", got ",
          l.sizes());
}

torch::Tensor fuse_heads(const torch::Tensor& a, HeadFusion fusion) {
  switch (fusion) {
    case HeadFusion::max:
      return std::get<0>(a.max(1));
    case HeadFusion::min:
      return std::get<0>(a.min(1));
    case HeadFusion::mean:
      break;
  }
  return a.mean(1);
}

// Sets the lowest `ratio` of each (T, T) matrix to 0, except entry (0, 0).
torch::Tensor discard_lowest(const torch::Tensor& fused, double ratio) {
  const int64_t B = fused.size(0), T = fused.size(1);
  const auto k = static_cast<int64_t>(static_cast<double>(T * T) * ratio);
  if (k <= 0) return fused;
  auto flat = fused.reshape({B, T * T});  // (B, T·T)
  const auto lowest = std::get<1>(flat.topk(k, /*dim=*/-1, /*largest=*/false));
  auto drop = torch::zeros_like(flat, torch::kBool).scatter_(1, lowest, true);
  drop.select(1, 0).fill_(false);
  return flat.masked_fill(drop, 0.0).view({B, T, T});
}

// Π over layers of renormalised (A + I) / 2, given each layer's fused (B, T, T) matrix.
torch::Tensor roll(const std::vector<torch::Tensor>& layers, double discard_ratio) {
  const NoAutocast no_autocast;
  std::vector<torch::Tensor> fused_layers;
  for (const auto& l : layers)
    fused_layers.push_back(widened(l));
  const auto& first = fused_layers.front();
  const int64_t B = first.size(0), T = first.size(1);
  const auto eye = torch::eye(T, first.options()).expand({B, T, T});
  auto result = eye.clone();
  for (const auto& fused : fused_layers) {
    auto a = (discard_lowest(fused, discard_ratio) + eye) / 2.0;
    a = a / a.sum(-1, /*keepdim=*/true);
    result = torch::bmm(a, result);
  }
  return result;
}

torch::Tensor class_token_map(const torch::Tensor& rollout, int64_t grid_h, int64_t grid_w) {
  const int64_t B = rollout.size(0), T = rollout.size(1);
  check(T == 1 + grid_h * grid_w, "attention rollout", "T = ", T, " tokens do not match 1 + ",
        grid_h, "×", grid_w, " (class token + patch grid)");
  return scale_maps(rollout.select(1, 0).narrow(1, 1, T - 1).reshape({B, grid_h, grid_w}));
}

torch::Tensor default_targets(const torch::Tensor& logits, const torch::Tensor& targets) {
  if (!targets.defined()) return logits.argmax(1);
  check(targets.dim() == 1 && targets.size(0) == logits.size(0), "targets",
        "expected one class per image (", logits.size(0), "), got ", targets.sizes());
  return targets.to(torch::kLong);
}

}  // namespace

HeadFusion head_fusion_from_string(const std::string& name) {
  if (name == "mean") return HeadFusion::mean;
  if (name == "max") return HeadFusion::max;
  if (name == "min") return HeadFusion::min;
  throw Error("head fusion", concat("unknown '", name, "' (expected mean, max or min)"));
}

torch::Tensor scale_maps(const torch::Tensor& maps) {
  check(maps.dim() == 3, "scale_maps", "maps must be (B, h, w), got ", maps.sizes());
  const auto peak = std::get<0>(maps.flatten(1).max(1)).view({-1, 1, 1});  // (B, 1, 1)
  return torch::where(peak > 0, maps / peak.clamp_min(1e-12), torch::zeros_like(maps));
}

torch::Tensor rollout_matrix(const std::vector<torch::Tensor>& attention,
                             const RolloutOptions& options) {
  check_layers(attention, "attention rollout");
  check(options.discard_ratio() >= 0 && options.discard_ratio() < 1, "attention rollout",
        "discard_ratio must be in [0, 1), got ", options.discard_ratio());
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> fused;
  for (const auto& a : attention)
    fused.push_back(fuse_heads(widened(a), options.head_fusion()));
  return roll(fused, options.discard_ratio());
}

torch::Tensor attention_rollout(const std::vector<torch::Tensor>& attention, int64_t grid_h,
                                int64_t grid_w, const RolloutOptions& options) {
  return class_token_map(rollout_matrix(attention, options), grid_h, grid_w);
}

torch::Tensor gradient_rollout(const std::vector<torch::Tensor>& attention,
                               const std::vector<torch::Tensor>& gradients, int64_t grid_h,
                               int64_t grid_w, double discard_ratio) {
  check_layers(attention, "gradient rollout");
  check(gradients.size() == attention.size(), "gradient rollout", "got ", gradients.size(),
        " gradients for ", attention.size(), " layers");
  check(discard_ratio >= 0 && discard_ratio < 1, "gradient rollout",
        "discard_ratio must be in [0, 1), got ", discard_ratio);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> fused;
  for (std::size_t i = 0; i < attention.size(); ++i) {
    check(gradients[i].sizes() == attention[i].sizes(), "gradient rollout", "gradient of layer ", i,
          " has shape ", gradients[i].sizes(), ", expected ", attention[i].sizes());
    fused.push_back((widened(attention[i]) * widened(gradients[i])).mean(1).clamp_min(0.0));
  }
  return class_token_map(roll(fused, discard_ratio), grid_h, grid_w);
}

torch::Tensor grad_cam(ImageClassifier& model, const torch::Tensor& images,
                       const torch::Tensor& targets) {
  check(model.has_spatial_features(), "Grad-CAM",
        "the model has no spatial feature map (a ViT?): use attention rollout instead");
  ImageFeatures f;
  {
    // The gradient is taken with respect to the features, so the trunk needs no graph.
    torch::NoGradGuard no_grad;
    f = model.forward_features(images);
  }
  return grad_cam(model, f, targets);
}

torch::Tensor grad_cam(ImageClassifier& model, const ImageFeatures& features,
                       const torch::Tensor& targets) {
  return grad_cam(forward_head_for_grad_cam(model, features), targets);
}

HeadForGradCam forward_head_for_grad_cam(ImageClassifier& model, const ImageFeatures& features) {
  check(model.has_spatial_features(), "Grad-CAM",
        "the model has no spatial feature map (a ViT?): use attention rollout instead");
  check(features.features.dim() == 4, "Grad-CAM", "features must be (B, C, h, w), got ",
        features.features.sizes());
  torch::AutoGradMode grad_mode(true);
  HeadForGradCam head;
  ImageFeatures f = features;
  head.features = features.features.detach().requires_grad_(true);  // (B, C, h, w)
  f.features = head.features;
  head.output = model.forward_head(f);
  return head;
}

torch::Tensor grad_cam(const HeadForGradCam& head, const torch::Tensor& targets) {
  const auto& logits = head.output.logits;
  check(logits.defined() && logits.requires_grad(), "Grad-CAM",
        "the head pass carries no graph (run forward_head_for_grad_cam)");
  const auto cls = default_targets(logits.detach(), targets);
  torch::AutoGradMode grad_mode(true);  // the caller may hold a NoGradGuard
  const auto chosen = logits.gather(1, cls.view({-1, 1})).sum();
  const auto grads = torch::autograd::grad({chosen}, {head.features})[0];  // (B, C, h, w)
  torch::NoGradGuard no_grad;
  const NoAutocast no_autocast;
  const auto weights = widened(grads).mean({2, 3}, /*keepdim=*/true);  // (B, C, 1, 1)
  return scale_maps(torch::relu((weights * widened(head.features)).sum(1)));
}

torch::Tensor vit_gradient_rollout(ImageClassifier& model, const torch::Tensor& images,
                                   const torch::Tensor& targets, double discard_ratio) {
  torch::AutoGradMode grad_mode(true);
  // A leaf input that needs a gradient puts the weights in the graph even if the parameters
  // are frozen.
  const auto x = images.detach().requires_grad_(true);
  auto f = model.forward_features(x, /*need_attention=*/true);
  check(!f.attention.empty() && f.grid_h > 0, "gradient rollout",
        "the model returned no per-layer attention (not a ViT?)");
  const auto logits = model.forward_head(f).logits;
  const auto cls = default_targets(logits, targets);
  const auto chosen = logits.gather(1, cls.view({-1, 1})).sum();
  const auto grads = torch::autograd::grad({chosen}, f.attention);
  std::vector<torch::Tensor> detached;
  for (const auto& a : f.attention)
    detached.push_back(a.detach());
  return gradient_rollout(detached, grads, f.grid_h, f.grid_w, discard_ratio);
}

}  // namespace attnscope::models::vision
