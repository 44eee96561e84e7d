#include "pipeline/vision/image_model_config.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <type_traits>

#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "preprocessing/pipeline.h"

namespace attnscope::pipeline {
namespace vision = models::vision;
namespace {

constexpr const char* kSubject = "model_config";

template <typename T>
T get(const nlohmann::json& json, const char* key) {
  // nlohmann converts 1e30 to an integer without a word (and without a defined result).
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>)
    check(json.at(key).is_number_integer(), concat(kSubject, ".", key), "bad value ",
          json_excerpt(json.at(key)), ": expected an integer");
  try {
    return json.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw Error(concat(kSubject, ".", key),
                concat("bad value ", json_excerpt(json.at(key)), ": ", e.what()));
  }
}

}  // namespace

nlohmann::json image_model_config_to_json(const vision::ImageModelConfig& config) {
  const auto c = vision::resolve_image_config(config);
  nlohmann::json j = {{"arch", c.arch},
                      {"num_classes", c.num_classes},
                      {"image_size", c.image_size},
                      {"in_channels", c.in_channels},
                      {"dropout", c.dropout.value_or(0.0)}};
  // Written only when set (ViT, > 0), so every other checkpoint's config stays as it was.
  if (c.drop_path && *c.drop_path > 0) j["drop_path"] = *c.drop_path;
  if (c.shifted_patches.value_or(false)) j["shifted_patches"] = true;
  if (c.locality_attention.value_or(false)) j["locality_attention"] = true;
  if (c.conv_stem.value_or(false)) j["conv_stem"] = true;
  if (c.backbone) j["backbone"] = *c.backbone;
  if (c.attention_stages) j["attention_stages"] = *c.attention_stages;
  if (c.compatibility) j["compatibility"] = *c.compatibility;
  if (c.gating) j["gating"] = *c.gating;
  if (c.normalizer) j["normalizer"] = *c.normalizer;
  if (c.after_pool) j["after_pool"] = *c.after_pool;
  return j;
}

vision::ImageModelConfig image_model_config_from_json(const nlohmann::json& json) {
  check(json.is_object(), kSubject, "expected a JSON object, got ", json_excerpt(json));
  check(json.contains("arch"), kSubject, "missing key \"arch\" (one of the image presets)");
  static const std::set<std::string> known = {
      "arch",     "num_classes",      "image_size",      "in_channels",        "dropout",
      "backbone", "attention_stages", "compatibility",   "normalizer",         "after_pool",
      "gating",   "drop_path",        "shifted_patches", "locality_attention", "conv_stem"};
  for (const auto& item : json.items())
    check(known.count(item.key()) > 0, concat(kSubject, ".", item.key()),
          "unknown key for an image classifier");
  vision::ImageModelConfig c;
  c.arch = get<std::string>(json, "arch");
  if (json.contains("num_classes")) c.num_classes = get<int64_t>(json, "num_classes");
  if (json.contains("image_size")) c.image_size = get<int64_t>(json, "image_size");
  if (json.contains("in_channels")) c.in_channels = get<int64_t>(json, "in_channels");
  if (json.contains("dropout")) c.dropout = get<double>(json, "dropout");
  if (json.contains("drop_path")) c.drop_path = get<double>(json, "drop_path");
  if (json.contains("shifted_patches")) c.shifted_patches = get<bool>(json, "shifted_patches");
  if (json.contains("locality_attention"))
    c.locality_attention = get<bool>(json, "locality_attention");
  if (json.contains("conv_stem")) c.conv_stem = get<bool>(json, "conv_stem");
  if (json.contains("backbone")) c.backbone = get<std::string>(json, "backbone");
  if (json.contains("attention_stages"))
    c.attention_stages = get<std::vector<int64_t>>(json, "attention_stages");
  if (json.contains("compatibility")) c.compatibility = get<std::string>(json, "compatibility");
  if (json.contains("gating")) c.gating = get<std::string>(json, "gating");
  if (json.contains("normalizer")) c.normalizer = get<std::string>(json, "normalizer");
  if (json.contains("after_pool")) c.after_pool = get<bool>(json, "after_pool");
  // Ranges before any model is built: a crafted checkpoint must not allocate terabytes,
  // hang or reach LibTorch's own checks (a stack trace instead of a message).
  auto in_range = [](const char* key, int64_t value, int64_t lo, int64_t hi) {
    check(value >= lo && value <= hi, concat(kSubject, ".", key), "is ", value,
          "; expected an integer in [", lo, ", ", hi, "]");
  };
  in_range("num_classes", c.num_classes, 1, 100'000);
  in_range("image_size", c.image_size, 0, 4096);  // 0: the preset's
  in_range("in_channels", c.in_channels, 1, 64);
  if (c.dropout)
    check(std::isfinite(*c.dropout) && *c.dropout >= 0 && *c.dropout < 1,
          concat(kSubject, ".dropout"), "is ", *c.dropout, "; expected a number in [0, 1)");
  if (c.drop_path)
    check(std::isfinite(*c.drop_path) && *c.drop_path >= 0 && *c.drop_path < 1,
          concat(kSubject, ".drop_path"), "is ", *c.drop_path, "; expected a number in [0, 1)");
  if (c.attention_stages) {
    check(c.attention_stages->size() <= 8, concat(kSubject, ".attention_stages"), "has ",
          c.attention_stages->size(), " entries; expected at most 8");
    for (const auto stage : *c.attention_stages)
      in_range("attention_stages[]", stage, 0, 16);
  }
  return c;
}

std::shared_ptr<vision::ImageClassifier> make_image_classifier(const nlohmann::json& json) {
  return vision::make_image_classifier(image_model_config_from_json(json));
}

void save_image_classifier(const std::string& path, const vision::ImageClassifier& model,
                           const vision::ImageModelConfig& config, CheckpointMeta meta,
                           const std::function<void(hid_t root)>& add) {
  meta.model_config = image_model_config_to_json(config);
  save_checkpoint(path, model, meta, add);
}

LoadedImageClassifier load_image_classifier(const std::string& path) {
  auto out = build_image_classifier(path, read_checkpoint_meta(path));
  load_checkpoint(path, *out.model);
  return out;
}

LoadedImageClassifier build_image_classifier(const std::string& path, CheckpointMeta meta) {
  LoadedImageClassifier out;
  out.meta = std::move(meta);
  // A checkpoint of another kind (a seq2seq model) is named as such, not by the first key an
  // image classifier does not know.
  const auto& mc = out.meta.model_config;
  if (mc.contains("arch") && mc.at("arch").is_string()) {
    const auto arch = mc.at("arch").get<std::string>();
    check(arch != "rnn" && arch != "transformer", path, "is a '", arch,
          "' checkpoint: a seq2seq model (attnscope seq2seq), not an image classifier");
    check(vision::is_image_preset(arch), path, "is a '", excerpt(arch, 100),
          "' checkpoint, not one of the image classifiers (", vision::image_preset_list(), ")");
  }
  // The stored preprocessing, checked here so that every command's error names the file.
  const auto& pc = out.meta.preprocessing_config;
  if (pc.is_object() && !pc.empty()) {
    try {
      preprocessing::Pipeline::from_json(pc);
    } catch (const Error& e) {
      throw Error(path + ":/@preprocessing_config", e.what());
    }
  }
  // Every error of the stored config names the file: the key's own checks and the model's
  // (an unknown backbone, a stage listed twice).
  try {
    out.config = vision::resolve_image_config(image_model_config_from_json(out.meta.model_config));
    out.model = vision::make_image_classifier(out.config);
  } catch (const Error& e) {
    const std::string what = e.what();
    throw Error(path, what.rfind(kSubject, 0) == 0 ? what : concat(kSubject, ": ", what));
  }
  return out;
}

void load_image_backbone(const std::string& path, vision::ImageClassifier& model) {
  LoadOptions options;
  options.skip_prefixes = model.head_prefixes();
  load_checkpoint(path, model, options);
}

}  // namespace attnscope::pipeline
