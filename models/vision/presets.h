#pragma once
// Image classifier presets by name, and the factory that builds any of them. The config is a
// plain struct here (models/ depends on LibTorch alone); pipeline/vision/image_model_config.h turns
// it into / out of the JSON a checkpoint stores.
//
// Presets:
//   resnet18, resnet34, resnet50, vgg16, vgg16_bn     torchvision's backbones
//   small_cnn                                         VGG-style, ~1.2 M parameters, CPU-trainable
//   attn_vgg16     AttnMel (Yan et al. 2019): vgg16_bn, pool3 + pool4 gated by the pool5 map
//                  (grid), additive, sigmoid
//   attn_resnet18  LTPA-style (Jetley et al. 2018): layer2 + layer3, pc, softmax
//   attn_small     small_cnn, stage3 + stage4, additive, softmax
//   vit_tiny_patch16, vit_small_patch16, vit_base_patch16   timm's ViT-Ti/S/B at 224 px
//   vit_mini_patch8                                   CPU-trainable ViT (D 128, 6 blocks, 64 px)

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/vision/classifier.h"

namespace attnscope::models::vision {

/// Everything needed to rebuild an image classifier. Unset optional fields take the preset's
/// value (resolve_image_config fills them in).
struct ImageModelConfig {
  /// The preset name (see image_presets()).
  std::string arch = "small_cnn";
  /// Classes of the head.
  int64_t num_classes = 2;
  /// Input side the model is meant for (ViT: the position-embedding grid); 0 = the preset's.
  int64_t image_size = 0;
  /// Channels of the input images.
  int64_t in_channels = 3;
  /// Dropout before the classifier (CNNs) / in the blocks (ViT).
  std::optional<double> dropout;
  /// ViT only: stochastic depth rate of the last block (VisionTransformerOptions::drop_path);
  /// training only, so it changes no prediction. Unset or 0 on other presets.
  std::optional<double> drop_path;
  /// ViT only: Shifted Patch Tokenization and Locality Self-Attention (Lee et al. 2021;
  /// VisionTransformerOptions::shifted_patches, ::locality_attention). Unset or false on other
  /// presets.
  std::optional<bool> shifted_patches;
  std::optional<bool> locality_attention;
  /// ViT only: a convolutional stem instead of the patchify convolution (Xiao et al. 2021;
  /// VisionTransformerOptions::conv_stem). Unset or false on other presets.
  std::optional<bool> conv_stem;
  // Attention-CNN only:
  /// Trunk: resnet18 | resnet34 | resnet50 | vgg16 | vgg16_bn | small_cnn.
  std::optional<std::string> backbone;
  /// 0-based attended stages.
  std::optional<std::vector<int64_t>> attention_stages;
  /// dp | pc | additive.
  std::optional<std::string> compatibility;
  /// global | grid (grid needs additive).
  std::optional<std::string> gating;
  /// softmax | sigmoid.
  std::optional<std::string> normalizer;
  /// Attend after the stage's pooling layer.
  std::optional<bool> after_pool;
};

/// Every preset name.
std::vector<std::string> image_presets();
/// True when `arch` is one of image_presets().
bool is_image_preset(const std::string& arch);
/// image_presets() joined by ", ", for messages that list them.
std::string image_preset_list();

/// True for attn_* presets.
bool is_attention_cnn(const std::string& arch);
/// True for vit_* presets.
bool is_vit(const std::string& arch);

/// config with every unset field set to the preset's value (and the fields that do not apply
/// to the architecture cleared). Throws attnscope::Error naming an unknown preset and listing
/// the known ones.
ImageModelConfig resolve_image_config(const ImageModelConfig& config);

/// Builds the classifier (freshly initialised). Throws attnscope::Error on a bad config.
std::shared_ptr<ImageClassifier> make_image_classifier(const ImageModelConfig& config);

}  // namespace attnscope::models::vision
