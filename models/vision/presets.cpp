#include "models/vision/presets.h"

#include <algorithm>

#include "attnscope/error.h"
#include "attnscope/printable.h"
#include "models/vision/attention_cnn.h"
#include "models/vision/resnet.h"
#include "models/vision/vgg.h"
#include "models/vision/vit.h"

namespace attnscope::models::vision {
namespace {

constexpr int64_t kImageNetSize = 224;
constexpr int64_t kSmallImageSize = 128;

struct AttentionPreset {
  const char* name;
  const char* backbone;
  std::vector<int64_t> stages;
  const char* compatibility;
  const char* gating;
  const char* normalizer;
  bool after_pool;
  int64_t image_size;
};

const std::vector<AttentionPreset>& attention_presets() {
  static const std::vector<AttentionPreset> presets = {
      // AttnMel: pool-3 and pool-4 gated by the pool-5 map, sigmoid (the paper's default).
      {"attn_vgg16", "vgg16_bn", {2, 3}, "additive", "grid", "sigmoid", true, kImageNetSize},
      {"attn_resnet18", "resnet18", {1, 2}, "pc", "global", "softmax", false, kImageNetSize},
      {"attn_small", "small_cnn", {2, 3}, "additive", "global", "softmax", false, kSmallImageSize},
  };
  return presets;
}

const std::vector<std::string> kCnnPresets = {"resnet18", "resnet34", "resnet50",
                                              "vgg16",    "vgg16_bn", "small_cnn"};
const std::vector<std::string> kVitPresets = {"vit_tiny_patch16", "vit_small_patch16",
                                              "vit_base_patch16", "vit_mini_patch8"};

}  // namespace

std::vector<std::string> image_presets() {
  std::vector<std::string> names = kCnnPresets;
  for (const auto& p : attention_presets())
    names.emplace_back(p.name);
  names.insert(names.end(), kVitPresets.begin(), kVitPresets.end());
  return names;
}

bool is_image_preset(const std::string& arch) {
  const auto names = image_presets();
  return std::find(names.begin(), names.end(), arch) != names.end();
}

std::string image_preset_list() {
  std::string out;
  for (const auto& name : image_presets())
    out += (out.empty() ? "" : ", ") + name;
  return out;
}

bool is_attention_cnn(const std::string& arch) {
  return std::any_of(attention_presets().begin(), attention_presets().end(),
                     [&](const AttentionPreset& p) { return arch == p.name; });
}

bool is_vit(const std::string& arch) {
  return std::find(kVitPresets.begin(), kVitPresets.end(), arch) != kVitPresets.end();
}

ImageModelConfig resolve_image_config(const ImageModelConfig& config) {
  check(is_image_preset(config.arch), "model config", "unknown arch '", excerpt(config.arch, 100),
        "' (presets: ", image_preset_list(), ")");
  check(config.num_classes > 0, "model config", "num_classes must be positive, got ",
        config.num_classes);
  check(config.in_channels > 0, "model config", "in_channels must be positive, got ",
        config.in_channels);
  check(config.image_size >= 0, "model config", "image_size must be >= 0, got ", config.image_size);
  check(!config.drop_path || *config.drop_path == 0 || is_vit(config.arch), "model config",
        "drop_path (stochastic depth) applies to the ViT presets only, not '", config.arch, "'");
  const bool small_data_options =
      config.shifted_patches.value_or(false) || config.locality_attention.value_or(false);
  check(!small_data_options || is_vit(config.arch), "model config",
        "shifted patches and locality self-attention apply to the ViT presets only, not '",
        config.arch, "'");
  check(!config.conv_stem.value_or(false) || is_vit(config.arch), "model config",
        "a convolutional stem applies to the ViT presets only, not '", config.arch, "'");
  check(!(config.conv_stem.value_or(false) && config.shifted_patches.value_or(false)),
        "model config", "shifted patches and a convolutional stem cannot be combined");
  ImageModelConfig out = config;
  if (!is_vit(config.arch)) {
    out.drop_path.reset();
    out.shifted_patches.reset();
    out.locality_attention.reset();
    out.conv_stem.reset();
  }
  if (is_attention_cnn(config.arch)) {
    const auto& p = *std::find_if(attention_presets().begin(), attention_presets().end(),
                                  [&](const AttentionPreset& a) { return config.arch == a.name; });
    if (!out.backbone) out.backbone = p.backbone;
    if (!out.attention_stages) out.attention_stages = p.stages;
    if (!out.compatibility) out.compatibility = p.compatibility;
    if (!out.gating) out.gating = p.gating;
    if (!out.normalizer) out.normalizer = p.normalizer;
    if (!out.after_pool) out.after_pool = p.after_pool;
    if (!out.dropout) out.dropout = 0.0;
    if (out.image_size == 0) out.image_size = p.image_size;
    return out;
  }
  out.backbone.reset();
  out.attention_stages.reset();
  out.compatibility.reset();
  out.gating.reset();
  out.normalizer.reset();
  out.after_pool.reset();
  if (is_vit(config.arch)) {
    const auto o = vit_preset_options(config.arch, config.num_classes);
    if (out.image_size == 0) out.image_size = o.image_size();
    if (!out.dropout) out.dropout = o.dropout();
    if (!out.drop_path) out.drop_path = o.drop_path();
    if (!out.shifted_patches) out.shifted_patches = o.shifted_patches();
    if (!out.locality_attention) out.locality_attention = o.locality_attention();
    if (!out.conv_stem) out.conv_stem = o.conv_stem();
  } else if (config.arch == "small_cnn") {
    if (out.image_size == 0) out.image_size = kSmallImageSize;
    if (!out.dropout) out.dropout = small_cnn_options().dropout();
  } else {
    if (out.image_size == 0) out.image_size = kImageNetSize;
    if (!out.dropout) out.dropout = config.arch.rfind("vgg", 0) == 0 ? 0.5 : 0.0;
  }
  return out;
}

std::shared_ptr<ImageClassifier> make_image_classifier(const ImageModelConfig& config) {
  const auto c = resolve_image_config(config);
  const int64_t n = c.num_classes;
  if (c.arch == "resnet18" || c.arch == "resnet34" || c.arch == "resnet50") {
    auto o = c.arch == "resnet18"   ? resnet18_options(n)
             : c.arch == "resnet34" ? resnet34_options(n)
                                    : resnet50_options(n);
    return std::make_shared<ResNetImpl>(o.in_channels(c.in_channels));
  }
  if (c.arch == "vgg16" || c.arch == "vgg16_bn")
    return std::make_shared<VggImpl>(
        vgg16_options(n, c.arch == "vgg16_bn").in_channels(c.in_channels).dropout(*c.dropout));
  if (c.arch == "small_cnn")
    return std::make_shared<VggImpl>(
        small_cnn_options(n).in_channels(c.in_channels).dropout(*c.dropout));
  if (is_vit(c.arch)) {
    auto o = vit_preset_options(c.arch, n);
    check(c.image_size % o.patch_size() == 0, "model config", "image_size (", c.image_size,
          ") must be a multiple of the patch size (", o.patch_size(), ")");
    return std::make_shared<VisionTransformerImpl>(o.image_size(c.image_size)
                                                       .in_channels(c.in_channels)
                                                       .dropout(*c.dropout)
                                                       .drop_path(*c.drop_path)
                                                       .shifted_patches(*c.shifted_patches)
                                                       .locality_attention(*c.locality_attention)
                                                       .conv_stem(*c.conv_stem));
  }
  return std::make_shared<AttentionCnnImpl>(
      AttentionCnnOptions(*c.backbone, *c.attention_stages)
          .compatibility(compatibility_from_string(*c.compatibility))
          .gating(gating_from_string(*c.gating))
          .normalizer(attention::norm_kind_from_string(*c.normalizer))
          .after_pool(*c.after_pool)
          .num_classes(n)
          .dropout(*c.dropout)
          .in_channels(c.in_channels));
}

}  // namespace attnscope::models::vision
