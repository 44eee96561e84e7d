#include "models/vision/vit.h"

#include "attnscope/error.h"
#include "models/vision/explain.h"

namespace attnscope::models::vision {
namespace nn = torch::nn;
namespace {

constexpr double kInitStd = 0.02;      // timm: trunc_normal_(std=.02), i.e. N(0, 0.02²)
constexpr double kClsTokenStd = 1e-6;  // timm: normal_(std=1e-6)

nn::LayerNorm layer_norm(int64_t dim, double eps) {
  return nn::LayerNorm(nn::LayerNormOptions({dim}).eps(eps));
}

}  // namespace

PatchEmbedImpl::PatchEmbedImpl(int64_t in_channels_, int64_t embed_dim_, int64_t patch_size_,
                               bool shifted_, bool conv_stem_)
    : in_channels(in_channels_),
      embed_dim(embed_dim_),
      patch_size(patch_size_),
      shifted(shifted_),
      conv_stem(conv_stem_) {
  reset();
}

void PatchEmbedImpl::reset() {
  check(in_channels > 0 && embed_dim > 0 && patch_size > 0, "PatchEmbed",
        "in_channels, embed_dim and patch_size must be positive");
  check(!shifted || patch_size >= 2, "PatchEmbed",
        "shifted patches need a patch size of at least 2, got ", patch_size);
  check(!(shifted && conv_stem), "PatchEmbed",
        "shifted patches and a convolutional stem cannot be combined");
  if (conv_stem) {
    int64_t blocks = 0;
    while ((int64_t{2} << blocks) <= patch_size)
      ++blocks;
    const int64_t widest_divisor = int64_t{1} << (blocks - 1);
    check(
        patch_size >= 2 && (int64_t{1} << blocks) == patch_size && embed_dim % widest_divisor == 0,
        "PatchEmbed", "a convolutional stem needs a patch size that is a power of two >= 2 (got ",
        patch_size, ") and an embedding width divisible by ", widest_divisor, " (got ", embed_dim,
        ")");
    stem = nn::Sequential();
    int64_t from = in_channels;
    for (int64_t j = 0; j < blocks; ++j) {
      const int64_t to = embed_dim >> (blocks - 1 - j);
      stem->push_back(nn::Conv2d(nn::Conv2dOptions(from, to, 3).stride(2).padding(1).bias(false)));
      stem->push_back(nn::BatchNorm2d(to));
      stem->push_back(nn::ReLU());
      from = to;
    }
    stem = register_module("stem", stem);
    proj = register_module("proj", nn::Conv2d(nn::Conv2dOptions(embed_dim, embed_dim, 1)));
    return;
  }
  const int64_t channels = shifted ? 5 * in_channels : in_channels;
  norm = shifted
             ? register_module(
                   "norm", nn::LayerNorm(nn::LayerNormOptions({channels, patch_size, patch_size})))
             : nullptr;
  proj = register_module(
      "proj", nn::Conv2d(nn::Conv2dOptions(channels, embed_dim, patch_size).stride(patch_size)));
}

torch::Tensor PatchEmbedImpl::forward(const torch::Tensor& x) {
  check(x.dim() == 4 && x.size(1) == in_channels && x.size(2) % patch_size == 0 &&
            x.size(3) % patch_size == 0,
        "PatchEmbed", "images must be (B, C=", in_channels, ", H, W) with H and W multiples of ",
        patch_size, ", got ", x.sizes());
  if (conv_stem) return proj(stem->forward(x));
  if (!shifted) return proj(x);
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3), p = patch_size, s = p / 2;
  const auto padded = nn::functional::pad(x, nn::functional::PadFuncOptions({s, s, s, s}));
  auto crop = [&](int64_t top, int64_t left) {
    return padded.narrow(2, top, H).narrow(3, left, W);
  };
  // (B, 5C, H, W): the image, then its content moved right-down, left-down, right-up, left-up.
  const auto stacked =
      torch::cat({x, crop(0, 0), crop(0, 2 * s), crop(2 * s, 0), crop(2 * s, 2 * s)}, 1);
  const int64_t C5 = stacked.size(1), h = H / p, w = W / p;
  // Every patch's (5C, p, p) values, normalised together: (B, h, w, 5C, p, p).
  auto patches = norm(stacked.reshape({B, C5, h, p, w, p}).permute({0, 2, 4, 1, 3, 5}));
  // The convolution with stride p is this product: (B, h, w, D) -> (B, D, h, w).
  auto tokens = nn::functional::linear(patches.reshape({B, h, w, C5 * p * p}),
                                       proj->weight.view({embed_dim, -1}), proj->bias);
  return tokens.permute({0, 3, 1, 2});
}

transformer::TransformerLayerOptions vit_block_options(const VisionTransformerOptions& o) {
  const auto hidden = static_cast<int64_t>(static_cast<double>(o.embed_dim()) * o.mlp_ratio());
  return transformer::TransformerLayerOptions(o.embed_dim(), o.num_heads())
      .dim_feedforward(hidden)
      .dropout(o.dropout())
      .attention_dropout(o.attn_dropout())
      .activation(transformer::Activation::gelu)
      .norm_first(true)
      .layer_norm_eps(o.layer_norm_eps())
      .qkv_bias(o.qkv_bias())
      .names(transformer::LayerNames::timm)
      .learned_attention_scale(o.locality_attention());
}

VisionTransformerImpl::VisionTransformerImpl(const VisionTransformerOptions& options_)
    : options(options_) {
  reset();
}

void VisionTransformerImpl::reset() {
  const auto& o = options;
  check(o.num_classes() > 0 && o.depth() > 0 && o.patch_size() > 0 &&
            o.image_size() % o.patch_size() == 0,
        "VisionTransformer", "num_classes and depth must be positive and image_size (",
        o.image_size(), ") a multiple of patch_size (", o.patch_size(), ")");
  const int64_t D = o.embed_dim();
  const int64_t grid = o.image_size() / o.patch_size();
  patch_embed = register_module("patch_embed", PatchEmbed(o.in_channels(), D, o.patch_size(),
                                                          o.shifted_patches(), o.conv_stem()));
  cls_token = register_parameter("cls_token", torch::zeros({1, 1, D}));
  pos_embed = register_parameter("pos_embed", torch::zeros({1, 1 + grid * grid, D}));
  pos_drop = register_module("pos_drop", nn::Dropout(o.dropout()));
  blocks = nn::ModuleList();
  check(o.drop_path() >= 0 && o.drop_path() < 1, "VisionTransformer",
        "drop_path must be in [0, 1), got ", o.drop_path());
  for (int64_t i = 0; i < o.depth(); ++i) {
    // timm: torch.linspace(0, drop_path_rate, depth)[i].
    const double rate = o.depth() > 1 ? o.drop_path() * static_cast<double>(i) /
                                            static_cast<double>(o.depth() - 1)
                                      : 0.0;
    blocks->push_back(transformer::TransformerEncoderLayer(vit_block_options(o).drop_path(rate)));
  }
  blocks = register_module("blocks", blocks);
  norm = register_module("norm", layer_norm(D, o.layer_norm_eps()));
  head = register_module("head", nn::Linear(D, o.num_classes()));

  // timm's init_weights_vit_timm.
  torch::NoGradGuard no_grad;
  pos_embed.normal_(0.0, kInitStd);
  cls_token.normal_(0.0, kClsTokenStd);
  for (auto& m : modules(false)) {
    if (auto* l = m->as<nn::Linear>()) {
      l->weight.normal_(0.0, kInitStd);
      if (l->bias.defined()) l->bias.zero_();
    }
  }
}

torch::Tensor VisionTransformerImpl::position_embedding(int64_t grid_h, int64_t grid_w) const {
  const int64_t grid = options.image_size() / options.patch_size();
  if (grid_h == grid && grid_w == grid) return pos_embed;
  const int64_t D = options.embed_dim();
  const auto cls = pos_embed.narrow(1, 0, 1);                                      // (1, 1, D)
  auto patches = pos_embed.narrow(1, 1, grid * grid).reshape({1, grid, grid, D});  // (1, g, g, D)
  patches = patches.permute({0, 3, 1, 2});                                         // (1, D, g, g)
  patches = nn::functional::interpolate(patches, nn::functional::InterpolateFuncOptions()
                                                     .size(std::vector<int64_t>{grid_h, grid_w})
                                                     .mode(torch::kBicubic)
                                                     .align_corners(false));
  patches = patches.permute({0, 2, 3, 1}).reshape({1, grid_h * grid_w, D});  // (1, h·w, D)
  return torch::cat({cls, patches}, 1);
}

ImageFeatures VisionTransformerImpl::forward_features(const torch::Tensor& images,
                                                      bool need_attention) {
  auto x = patch_embed(images);  // (B, D, h, w)
  const int64_t B = x.size(0), gh = x.size(2), gw = x.size(3);
  x = x.flatten(2).transpose(1, 2);  // (B, h·w, D)
  x = torch::cat({cls_token.expand({B, -1, -1}), x}, 1) + position_embedding(gh, gw);
  x = pos_drop(x);  // (B, T = 1 + h·w, D)
  attention::AttentionMasks masks;
  // LSA's diagonal masking: no token attends to itself.
  if (options.locality_attention())
    masks.attn =
        torch::eye(x.size(1), torch::TensorOptions().dtype(torch::kBool).device(x.device()));
  ImageFeatures out;
  out.grid_h = gh;
  out.grid_w = gw;
  for (std::size_t i = 0; i < blocks->size(); ++i) {
    auto* block = blocks[i]->as<transformer::TransformerEncoderLayer>();
    auto y = block->forward(x, masks, need_attention);
    x = y.output;
    if (need_attention) out.attention.push_back(y.self_weights);
  }
  out.features = norm(x);
  if (need_attention) out.maps["rollout"] = attention_rollout(out.attention, gh, gw);
  return out;
}

ImageOutput VisionTransformerImpl::forward_head(const ImageFeatures& features) {
  return {head(features.features.select(1, 0)), {}, {}};  // class token (B, D)
}

VisionTransformerOptions vit_tiny_patch16_options(int64_t num_classes) {
  return VisionTransformerOptions(192, 12, 3).num_classes(num_classes);
}
VisionTransformerOptions vit_small_patch16_options(int64_t num_classes) {
  return VisionTransformerOptions(384, 12, 6).num_classes(num_classes);
}
VisionTransformerOptions vit_base_patch16_options(int64_t num_classes) {
  return VisionTransformerOptions(768, 12, 12).num_classes(num_classes);
}
VisionTransformerOptions vit_mini_patch8_options(int64_t num_classes) {
  return VisionTransformerOptions(128, 6, 4).patch_size(8).image_size(64).num_classes(num_classes);
}

VisionTransformerOptions vit_preset_options(const std::string& name, int64_t num_classes) {
  if (name == "vit_tiny_patch16") return vit_tiny_patch16_options(num_classes);
  if (name == "vit_small_patch16") return vit_small_patch16_options(num_classes);
  if (name == "vit_base_patch16") return vit_base_patch16_options(num_classes);
  if (name == "vit_mini_patch8") return vit_mini_patch8_options(num_classes);
  throw Error("model config", concat("'", name, "' is not a ViT preset"));
}

}  // namespace attnscope::models::vision
