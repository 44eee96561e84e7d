#include "pipeline/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "attnscope/version.h"
#include "pipeline/h5.h"

namespace attnscope::pipeline {
namespace {

constexpr const char* kFormat = "attnscope-checkpoint";
constexpr const char* kFormatVersion = "1";

std::string shape_string(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << "[";
  for (std::size_t i = 0; i < shape.size(); ++i)
    out << (i ? ", " : "") << shape[i];
  out << "]";
  return out.str();
}

bool skipped(const std::string& name, const LoadOptions& options) {
  for (const auto& prefix : options.skip_prefixes)
    if (name.rfind(prefix, 0) == 0) return true;
  return false;
}

nlohmann::json parse_attribute(hid_t root, const std::string& name, const std::string& path) {
  if (!h5::has_attribute(root, name)) return nlohmann::json();
  const auto text = h5::read_string_attribute(root, name, path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ":/@" + name, concat("attribute is not valid JSON: ", e.what()));
  }
}

// Every tensor of a module by dotted name: parameters and buffers.
std::map<std::string, torch::Tensor> module_tensors(const torch::nn::Module& module) {
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& p : module.named_parameters())
    tensors[p.key()] = p.value();
  for (const auto& b : module.named_buffers())
    tensors[b.key()] = b.value();
  return tensors;
}

}  // namespace

void save_checkpoint(const std::string& path, const torch::nn::Module& module,
                     const CheckpointMeta& meta) {
  const std::string tmp = path + ".tmp";
  {
    auto file = h5::File::create(tmp);
    for (const auto& [name, tensor] : module_tensors(module))
      h5::write_tensor(file.id(), name, tensor, path);
    const auto root = file.id();
    h5::write_attribute(root, "format", kFormat, path);
    h5::write_attribute(root, "format_version", kFormatVersion, path);
    h5::write_attribute(root, "attnscope_version", kVersion, path);
    h5::write_attribute(root, "model_config", meta.model_config.dump(), path);
    h5::write_attribute(root, "preprocessing_config", meta.preprocessing_config.dump(), path);
    h5::write_attribute(root, "class_names", nlohmann::json(meta.class_names).dump(), path);
    h5::write_attribute(root, "provenance", meta.provenance.dump(), path);
    h5::write_attribute(root, "extra", meta.extra.dump(), path);
    file.flush();
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    throw Error(path, concat("cannot replace checkpoint: ", ec.message()));
  }
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  auto file = h5::File::open(path);
  const auto root = file.id();
  check(h5::has_attribute(root, "format") &&
            h5::read_string_attribute(root, "format", path) == kFormat,
        path, "not an attnscope checkpoint (root attribute format != '", kFormat, "')");
  CheckpointMeta meta;
  auto get = [&](const char* name, const nlohmann::json& fallback) {
    auto value = parse_attribute(root, name, path);
    return value.is_null() ? fallback : value;
  };
  meta.model_config = get("model_config", nlohmann::json::object());
  meta.preprocessing_config = get("preprocessing_config", nlohmann::json::object());
  meta.provenance = get("provenance", nlohmann::json::object());
  meta.extra = get("extra", nlohmann::json::object());
  const auto names = get("class_names", nlohmann::json::array());
  check(names.is_array(), path + ":/@class_names", "expected a JSON array of strings");
  for (const auto& n : names) {
    check(n.is_string(), path + ":/@class_names", "expected a JSON array of strings");
    meta.class_names.push_back(n.get<std::string>());
  }
  return meta;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_tensors(
    const std::string& path) {
  auto file = h5::File::open(path);
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  for (const auto& name : h5::children(file.id())) {
    // Groups (e.g. /train_state of a training run's last.h5) hold no model tensors.
    H5O_info_t info;
    if (H5Oget_info_by_name2(file.id(), name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) >= 0 &&
        info.type != H5O_TYPE_DATASET)
      continue;
    out.emplace_back(name, h5::dataset_shape(file.id(), name, path));
  }
  return out;
}

void load_checkpoint(const std::string& path, torch::nn::Module& module,
                     const LoadOptions& options) {
  read_checkpoint_meta(path);  // checks that it is a checkpoint at all
  auto file = h5::File::open(path);
  auto stored = checkpoint_tensors(path);
  std::map<std::string, std::vector<int64_t>> stored_shapes(stored.begin(), stored.end());
  auto targets = module_tensors(module);

  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& [name, tensor] : targets) {
    if (skipped(name, options)) continue;
    auto it = stored_shapes.find(name);
    if (it == stored_shapes.end()) {
      missing.push_back(name);
    } else if (it->second != tensor.sizes().vec()) {
      mismatched.push_back(concat("tensor '", name, "' has wrong shape: got ",
                                  shape_string(it->second), " in the file, expected ",
                                  shape_string(tensor.sizes().vec())));
    }
  }
  for (const auto& [name, shape] : stored_shapes)
    if (!skipped(name, options) && !targets.count(name)) unexpected.push_back(name);

  if (options.strict && (missing.size() + unexpected.size() + mismatched.size()) > 0) {
    std::ostringstream msg;
    msg << "checkpoint does not match the model";
    auto list = [&](const char* what, const std::vector<std::string>& items) {
      if (items.empty()) return;
      msg << "\n  " << what << " (" << items.size() << "):";
      for (const auto& item : items)
        msg << "\n    " << item;
    };
    list("missing in the file", missing);
    list("unexpected in the file", unexpected);
    list("mis-shaped", mismatched);
    throw Error(path, msg.str());
  }

  torch::NoGradGuard no_grad;
  for (auto& [name, tensor] : targets) {
    if (skipped(name, options) || !stored_shapes.count(name)) continue;
    if (stored_shapes[name] != tensor.sizes().vec()) continue;  // non-strict: leave as is
    auto value = h5::read_tensor(file.id(), name, path);
    tensor.copy_(value.to(tensor.dtype()).to(tensor.device()));
  }
}

}  // namespace attnscope::pipeline
