#pragma once
// Image classifiers <-> checkpoints: the model_config JSON of a checkpoint, and saving/loading
// a classifier with it, so `load_image_classifier(path)` rebuilds the right architecture.
//
// model_config (every key written; on reading only "arch" is required):
//   {"arch": "attn_vgg16", "num_classes": 2, "image_size": 224, "in_channels": 3,
//    "dropout": 0.0,
//    // ViT presets, only when > 0 (stochastic depth, training only):
//    "drop_path": 0.1,
//    // ViT presets, only when true (Lee et al. 2021's SPT and LSA, docs/vision.md):
//    "shifted_patches": true, "locality_attention": true,
//    // ViT presets, only when true (Xiao et al. 2021's convolutional stem, docs/vision.md):
//    "conv_stem": true,
//    // attention-CNN presets only:
//    "backbone": "vgg16_bn", "attention_stages": [2, 3], "compatibility": "additive",
//    "gating": "grid", "normalizer": "sigmoid", "after_pool": true}

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "models/vision/classifier.h"
#include "models/vision/presets.h"
#include "pipeline/checkpoint.h"

namespace attnscope::pipeline {

/// The JSON of a resolved config (every field the architecture uses).
nlohmann::json image_model_config_to_json(const models::vision::ImageModelConfig& config);

/// Parses model_config JSON. Throws attnscope::Error naming the key on a missing "arch", an
/// unknown key or a value of the wrong type.
models::vision::ImageModelConfig image_model_config_from_json(const nlohmann::json& json);

/// make_image_classifier(image_model_config_from_json(json)).
std::shared_ptr<models::vision::ImageClassifier> make_image_classifier(const nlohmann::json& json);

/// Saves model with meta, setting meta.model_config to the resolved config's JSON (`add`: as
/// save_checkpoint's).
void save_image_classifier(const std::string& path, const models::vision::ImageClassifier& model,
                           const models::vision::ImageModelConfig& config, CheckpointMeta meta = {},
                           const std::function<void(hid_t root)>& add = {});

struct LoadedImageClassifier {
  std::shared_ptr<models::vision::ImageClassifier> model;
  models::vision::ImageModelConfig config;  ///< resolved
  CheckpointMeta meta;
};

/// Rebuilds the classifier a checkpoint's model_config describes and loads its tensors
/// strictly. Throws attnscope::Error naming the file on any mismatch.
LoadedImageClassifier load_image_classifier(const std::string& path);

/// load_image_classifier's checks of a checkpoint's stored configs (the preset, the
/// preprocessing, every model_config field and the model's own checks), the classifier built
/// but its tensors not loaded: for a checkpoint another model starts from (train's --init,
/// --init-backbone), which accepted an image size of -1 or a std of 0 without a word.
LoadedImageClassifier build_image_classifier(const std::string& path, CheckpointMeta meta);

/// Loads everything but the head of model (model.head_prefixes()) from a checkpoint, e.g. an
/// ImageNet backbone exported with `export_weights.py --backbone-only`; strict otherwise.
void load_image_backbone(const std::string& path, models::vision::ImageClassifier& model);

}  // namespace attnscope::pipeline
