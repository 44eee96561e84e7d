// attnscope presets: the image-classifier presets of models/vision/presets.cpp, resolved, as a
// table or as JSON. tools/python/export_weights.py reads the JSON, so the presets are written
// once, in C++.

#include <iomanip>
#include <iostream>

#include <nlohmann/json.hpp>

#include "cli.h"
#include "models/vision/presets.h"
#include "models/vision/vit.h"
#include "pipeline/vision/image_model_config.h"

namespace attnscope::cli {
namespace {

namespace vision = models::vision;

std::string family_of(const std::string& arch) {
  if (vision::is_vit(arch)) return "vit";
  if (vision::is_attention_cnn(arch)) return "attention_cnn";
  if (arch.rfind("resnet", 0) == 0) return "resnet";
  return "vgg";  // vgg16, vgg16_bn and the VGG-style small_cnn
}

// One preset: its resolved config (as a checkpoint stores it, num_classes left at the
// default), its family and, for a ViT, the sizes its name stands for.
nlohmann::json preset_json(const std::string& arch) {
  vision::ImageModelConfig config;
  config.arch = arch;
  auto j = pipeline::image_model_config_to_json(vision::resolve_image_config(config));
  j["family"] = family_of(arch);
  if (vision::is_vit(arch)) {
    const auto o = vision::vit_preset_options(arch, config.num_classes);
    j["embed_dim"] = o.embed_dim();
    j["depth"] = o.depth();
    j["num_heads"] = o.num_heads();
    j["patch_size"] = o.patch_size();
    j["mlp_ratio"] = o.mlp_ratio();
  }
  return j;
}

int run_presets(const std::vector<std::string>& args, const GlobalOptions&) {
  po::options_description desc("Options");
  desc.add_options()("json", po::bool_switch(), "print one JSON object {\"presets\": [...]}");
  po::variables_map vm;
  if (!parse("presets [--json]", desc, args, vm)) return 0;
  nlohmann::json presets = nlohmann::json::array();
  for (const auto& arch : vision::image_presets())
    presets.push_back(preset_json(arch));
  if (vm["json"].as<bool>()) {
    std::cout << nlohmann::json{{"presets", presets}}.dump() << "\n";
    return 0;
  }
  std::cout << std::left << std::setw(20) << "preset" << std::setw(15) << "family" << std::setw(7)
            << "size"
            << "details\n";
  for (const auto& p : presets) {
    std::string details;
    if (p.contains("backbone"))
      details = "backbone " + p["backbone"].get<std::string>() + ", stages " +
                p["attention_stages"].dump() + ", " + p["compatibility"].get<std::string>() + ", " +
                p["normalizer"].get<std::string>();
    if (p.contains("embed_dim"))
      details = "dim " + p["embed_dim"].dump() + ", depth " + p["depth"].dump() + ", heads " +
                p["num_heads"].dump() + ", patch " + p["patch_size"].dump();
    std::cout << std::setw(20) << p["arch"].get<std::string>() << std::setw(15)
              << p["family"].get<std::string>() << std::setw(7) << p["image_size"].dump() << details
              << "\n";
  }
  return 0;
}

const Registration kPresets("presets", "list the image-classifier presets (--json for tools)",
                            run_presets);

}  // namespace
}  // namespace attnscope::cli
