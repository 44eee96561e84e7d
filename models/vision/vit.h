#pragma once
// Vision Transformer (Dosovitskiy et al. 2021) with timm's names: patch_embed.proj,
// cls_token, pos_embed, blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm,
// head. Each block's `attn` IS the attention core's MultiHeadAttention (fused `qkv`, `proj`),
// so the per-layer, per-head weights a report shows are the ones the model used.
//
// Two options for small data (Lee et al. 2021, "Vision Transformer for Small-Size Datasets"),
// off in every preset: shifted_patches (SPT: each patch token also sees its four diagonal
// neighbours half a patch away) and locality_attention (LSA: a learned scale per head, and no
// token attends to itself). A third, conv_stem (Xiao et al. 2021, "Early Convolutions Help
// Transformers See Better"), replaces the patchify convolution with a stack of stride-2 3×3
// convolutions.

#include <string>
#include <vector>

#include <torch/torch.h>

#include "models/attention/multihead.h"
#include "models/transformer/layers.h"
#include "models/vision/classifier.h"

namespace attnscope::models::vision {

struct VisionTransformerOptions {
  VisionTransformerOptions(int64_t embed_dim, int64_t depth, int64_t num_heads)
      : embed_dim_(embed_dim), depth_(depth), num_heads_(num_heads) {}
  /// D, width of every token.
  TORCH_ARG(int64_t, embed_dim);
  /// Number of blocks.
  TORCH_ARG(int64_t, depth);
  /// Heads of every block's attention; D must be divisible by it.
  TORCH_ARG(int64_t, num_heads);
  /// Image side the learned position embedding is laid out for; other sizes interpolate it.
  TORCH_ARG(int64_t, image_size) = 224;
  /// Side of the square patches.
  TORCH_ARG(int64_t, patch_size) = 16;
  /// Channels of the input images.
  TORCH_ARG(int64_t, in_channels) = 3;
  /// Classes of `head`.
  TORCH_ARG(int64_t, num_classes) = 1000;
  /// Hidden width of the MLP as a multiple of D.
  TORCH_ARG(double, mlp_ratio) = 4.0;
  /// Bias of `qkv`.
  TORCH_ARG(bool, qkv_bias) = true;
  /// Dropout after the position embedding, in the MLP and after `proj` (training only).
  TORCH_ARG(double, dropout) = 0.0;
  /// Dropout on the attention weights (training only).
  TORCH_ARG(double, attn_dropout) = 0.0;
  /// Stochastic depth rate (timm's drop_path_rate, training only): block i of `depth` drops
  /// its residual branches with probability drop_path · i / (depth - 1), as timm's linspace
  /// (DeiT: 0.1 for ViT-Ti/S).
  TORCH_ARG(double, drop_path) = 0.0;
  /// Epsilon of every LayerNorm (timm: 1e-6).
  TORCH_ARG(double, layer_norm_eps) = 1e-6;
  /// Shifted Patch Tokenization (SPT, Lee et al. 2021): the image and its four copies shifted
  /// diagonally by patch_size / 2 (zero fill) are stacked to 5·C channels; each patch's
  /// 5·C·patch² values are layer-normalised (`patch_embed.norm`) and projected
  /// (`patch_embed.proj`). Needs patch_size >= 2.
  TORCH_ARG(bool, shifted_patches) = false;
  /// Locality Self-Attention (LSA, Lee et al. 2021): every block's attention learns its scale
  /// per head (`blocks.N.attn.scale`, MultiHeadAttentionOptions::learned_scale) and the
  /// diagonal is masked, so a token's weights go to the other tokens only.
  TORCH_ARG(bool, locality_attention) = false;
  /// Convolutional stem (ViTc, Xiao et al. 2021): instead of one patch_size × patch_size
  /// convolution of stride patch_size, log2(patch_size) blocks of a 3×3 convolution with stride
  /// 2 and padding 1 (no bias), BatchNorm and ReLU (`patch_embed.stem.{3j, 3j+1, 3j+2}`), of
  /// D / 2^(k-1-j) channels for block j of k (patch 8, D 128: 32, 64, 128; patch 16,
  /// D 384: 48, 96, 192, 384), then a 1×1 convolution to D (`patch_embed.proj`). The token grid
  /// is the same. Needs patch_size = 2^k (k >= 1) and D divisible by 2^(k-1); not together
  /// with shifted_patches.
  TORCH_ARG(bool, conv_stem) = false;
};

/// `proj`: a patch_size × patch_size convolution with stride patch_size. With shifted (SPT)
/// the input is first stacked with its four diagonal shifts by patch_size / 2 (order: the
/// image, then its content moved right-down, left-down, right-up, left-up, i.e. the official
/// code's x, lu, ru, lb, rb crops of the padded image), every patch's (5·C, patch, patch)
/// values pass `norm` (LayerNorm over them, eps 1e-5), and `proj` has 5·C input channels.
/// With conv_stem, `stem` (VisionTransformerOptions::conv_stem) comes first and `proj` is a 1×1
/// convolution.
/// Shape: (B, C, H, W) -> (B, D, H / patch, W / patch).
class PatchEmbedImpl : public torch::nn::Cloneable<PatchEmbedImpl> {
 public:
  PatchEmbedImpl(int64_t in_channels, int64_t embed_dim, int64_t patch_size, bool shifted = false,
                 bool conv_stem = false);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);

  int64_t in_channels, embed_dim, patch_size;
  bool shifted, conv_stem;
  torch::nn::LayerNorm norm = nullptr;   ///< shifted only
  torch::nn::Sequential stem = nullptr;  ///< conv_stem only
  torch::nn::Conv2d proj = nullptr;
};
TORCH_MODULE(PatchEmbed);

/// Maps (with need_attention): "rollout" — attention rollout (mean head fusion) of the class
/// token over the patch grid, (B, H/patch, W/patch) in [0, 1]. With locality_attention every
/// weight matrix has a zero diagonal; rollout's added identity keeps each token's own share.
///
/// Shape: images (B, C, H, W), H and W multiples of patch_size -> logits (B, num_classes);
/// features = tokens after `norm` (B, 1 + h·w, D); attention: depth × (B, heads, T, T).
class VisionTransformerImpl : public ImageClassifier {
 public:
  explicit VisionTransformerImpl(const VisionTransformerOptions& options_);
  void reset();
  std::shared_ptr<ImageClassifier> make_like() const override {
    return std::make_shared<VisionTransformerImpl>(options);
  }
  ImageFeatures forward_features(const torch::Tensor& images, bool need_attention = false) override;
  ImageOutput forward_head(const ImageFeatures& features) override;
  int64_t num_classes() const override { return options.num_classes(); }
  std::vector<std::string> head_prefixes() const override { return {"head."}; }
  std::vector<std::string> map_names() const override { return {"rollout"}; }
  bool has_spatial_features() const override { return false; }

  /// The position embedding for a grid_h × grid_w patch grid: the stored one, or its patch
  /// part resized bicubically (align_corners = false), class token position unchanged.
  /// Shape: -> (1, 1 + grid_h·grid_w, D).
  torch::Tensor position_embedding(int64_t grid_h, int64_t grid_w) const;

  VisionTransformerOptions options;
  PatchEmbed patch_embed = nullptr;
  torch::Tensor cls_token;  ///< (1, 1, D)
  torch::Tensor pos_embed;  ///< (1, 1 + (image_size / patch_size)², D)
  torch::nn::Dropout pos_drop = nullptr;
  /// depth × transformer::TransformerEncoderLayer, pre-norm, GELU, timm's names
  /// (`blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`): vit_block_options.
  torch::nn::ModuleList blocks = nullptr;
  torch::nn::LayerNorm norm = nullptr;
  torch::nn::Linear head = nullptr;
};
TORCH_MODULE(VisionTransformer);

/// timm's configurations (patch 16, 224 px).
VisionTransformerOptions vit_tiny_patch16_options(int64_t num_classes = 1000);
VisionTransformerOptions vit_small_patch16_options(int64_t num_classes = 1000);
VisionTransformerOptions vit_base_patch16_options(int64_t num_classes = 1000);
/// A CPU-trainable ViT: D 128, 6 blocks, 4 heads, patch 8, 64 px (about 1.2 M parameters).
VisionTransformerOptions vit_mini_patch8_options(int64_t num_classes = 2);

/// The options of one of a ViT's blocks: timm's Block (pre-norm, exact GELU, MLP of mlp_ratio ×
/// embed_dim, qkv_bias, attn_dropout, LayerNorm eps) as a transformer encoder layer with timm's
/// names.
transformer::TransformerLayerOptions vit_block_options(const VisionTransformerOptions& options);

/// The options of a ViT preset by name (vit_tiny_patch16, vit_small_patch16, vit_base_patch16,
/// vit_mini_patch8). Throws attnscope::Error for another name.
VisionTransformerOptions vit_preset_options(const std::string& name, int64_t num_classes);

}  // namespace attnscope::models::vision
