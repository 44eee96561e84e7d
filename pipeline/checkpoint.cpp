#include "pipeline/checkpoint.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <unordered_set>
#include <vector>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "attnscope/printable.h"
#include "attnscope/version.h"
#include "pipeline/h5.h"

namespace attnscope::pipeline {
namespace {

constexpr const char* kFormat = "attnscope-checkpoint";
// 3: `checksum` covers every dataset and string attribute (file_checksum); 2: tensor_checksum
// covers the root's tensors only; 1: no checksum. 1 and 2 are still read.
constexpr const char* kFormatVersion = "3";
constexpr const char* kChecksum = "checksum";

// FNV-1a, 64 bits: enough to catch bit flips and truncation (not an adversary).
class Fnv1a {
 public:
  void add(const void* data, std::size_t size) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < size; ++i) {
      hash_ ^= p[i];
      hash_ *= 0x100000001b3ULL;
    }
  }
  template <typename T>
  void add_value(T value) {
    add(&value, sizeof(value));
  }
  // A tensor as stored: its name and a NUL, element size, rank and dimensions (int64), bytes.
  void add_tensor(const std::string& name, const torch::Tensor& contiguous) {
    add(name.data(), name.size() + 1);
    add_value<int64_t>(static_cast<int64_t>(contiguous.element_size()));
    add_value<int64_t>(contiguous.dim());
    for (const auto d : contiguous.sizes())
      add_value<int64_t>(d);
    add(contiguous.data_ptr(), contiguous.numel() * contiguous.element_size());
  }
  std::string hex() const {
    char text[17];
    std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(hash_));
    return text;
  }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ULL;
};

// The checksum of the tensors as stored: names in sorted order, each with its element size,
// shape and bytes (bool stored as uint8, as h5::write_tensor does).
std::string tensor_checksum(const std::map<std::string, torch::Tensor>& tensors) {
  Fnv1a h;
  for (const auto& [name, tensor] : tensors) {
    auto t = tensor.detach().to(torch::kCPU);
    if (t.scalar_type() == at::kBool) t = t.to(at::kByte);
    h.add_tensor(name, t.contiguous());
  }
  return "fnv1a64:" + h.hex();
}

// Every object of the file by its path ("conv.weight", "train_state/step"): groups (the root
// is "") and datasets. Only hard links are followed (an external link would open another
// file), each object once: a crafted file's other links, an object under a second name (8
// groups each linking the next 8 times made 8^7 paths: a hang), and groups nested deeper than
// 8 are an Error.
void list_objects(hid_t group, const std::string& prefix, int depth, const std::string& path,
                  std::set<haddr_t>& seen, std::vector<std::string>& groups,
                  std::vector<std::string>& datasets) {
  check(depth <= 8, path, "holds groups nested deeper than 8: not an attnscope checkpoint");
  groups.push_back(prefix);
  for (const auto& name : h5::children(group)) {
    const auto subject = h5::where(path, prefix + name);
    H5L_info_t link;
    check(H5Lget_info(group, name.c_str(), &link, H5P_DEFAULT) >= 0 && link.type == H5L_TYPE_HARD,
          subject, "is a soft or external link: not an attnscope checkpoint");
    H5O_info_t info;
    h5::check_h5(H5Oget_info_by_name2(group, name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) >= 0,
                 subject, "cannot read the object's header");
    check(seen.insert(info.addr).second, subject,
          "is an object the file holds under another name too: not an attnscope checkpoint");
    if (info.type == H5O_TYPE_DATASET) {
      datasets.push_back(prefix + name);
    } else {
      check(info.type == H5O_TYPE_GROUP, subject, "is neither a group nor a dataset");
      auto child = h5::require_group(group, name, path);
      list_objects(child.get(), prefix + name + "/", depth + 1, path, seen, groups, datasets);
    }
  }
}

}  // namespace

std::string file_checksum(
    hid_t root, const std::string& path,
    const std::function<void(const std::string&, const torch::Tensor&)>& visit) {
  std::vector<std::string> groups, datasets;
  std::set<haddr_t> seen;
  H5O_info_t info;
  h5::check_h5(H5Oget_info2(root, &info, H5O_INFO_BASIC) >= 0, path, "cannot read the root group");
  seen.insert(info.addr);
  list_objects(root, "", 0, path, seen, groups, datasets);
  std::sort(groups.begin(), groups.end());
  std::sort(datasets.begin(), datasets.end());
  Fnv1a h;
  for (const auto& name : datasets) {
    const auto t = h5::read_tensor(root, name, path).contiguous();
    h.add_tensor(name, t);
    if (visit) visit(name, t);
  }
  for (const auto& group_path : groups) {
    auto group = group_path.empty() ? h5::Handle() : h5::require_group(root, group_path, path);
    const hid_t g = group_path.empty() ? root : group.get();
    h.add(group_path.data(), group_path.size() + 1);  // an empty group counts too
    auto names = h5::attribute_names(g);
    std::sort(names.begin(), names.end());
    for (const auto& name : names) {
      if (group_path.empty() && name == kChecksum) continue;
      const auto key = group_path + "@" + name;
      h.add(key.data(), key.size() + 1);
      // String attributes by value; another type (attnscope writes none) by its name only.
      if (h5::is_string_attribute(g, name)) {
        const auto value = h5::read_string_attribute(g, name, path);
        h.add(value.data(), value.size() + 1);
      }
    }
  }
  return "fnv1a64:" + h.hex();
}

void seal_checkpoint(hid_t root, const std::string& path) {
  h5::write_attribute(root, kChecksum, file_checksum(root, path), path);
}

namespace {

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
  return parse_json_text(h5::read_string_attribute(root, name, path), path + ":/@" + name,
                         "attribute");
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
                     const CheckpointMeta& meta, const std::function<void(hid_t)>& add) {
  {
    h5::OutputFile file(path);
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
    if (add) add(root);
    seal_checkpoint(root, path);  // last: over everything written above
    file.commit();
  }
}

namespace {

// Checkpoints come from elsewhere (downloads, colleagues): before attnscope reads one, the
// whole file is read and verified (format, checksum, NaN) in a child process
// (h5::check_untrusted_file), so that a crafted file that crashes HDF5 1.10.8 is refused
// instead of crashing the command. The verification's Error passes to this process, which
// does not read the file a second time to verify it; once per file per process.
void verify(const std::string& path);

void guard(const std::string& path) {
  h5::check_untrusted_file(path, true, [&] { verify(path); }, "checkpoint");
}

CheckpointMeta read_meta(const std::string& path) {
  auto file = h5::File::open(path);
  const auto root = file.id();
  check(h5::has_attribute(root, "format") &&
            h5::read_string_attribute(root, "format", path) == kFormat,
        path, "not an attnscope checkpoint (root attribute format != '", kFormat, "')");
  const auto version = h5::has_attribute(root, "format_version")
                           ? h5::read_string_attribute(root, "format_version", path)
                           : std::string("(none)");
  check(version == "1" || version == "2" || version == "3", path, "checkpoint format_version ",
        version, " is not supported (this build reads 1 to 3); a newer attnscope wrote it?");
  CheckpointMeta meta;
  auto get = [&](const char* name, const nlohmann::json& fallback) {
    auto value = parse_attribute(root, name, path);
    return value.is_null() ? fallback : value;
  };
  // Objects, as every reader expects (nlohmann's value() throws a bare type_error otherwise).
  auto get_object = [&](const char* name) {
    auto value = get(name, nlohmann::json::object());
    if (!value.is_object())
      throw Error(concat(path, ":/@", name),
                  concat("attribute must be a JSON object, got ", json_excerpt(value, 100)));
    return value;
  };
  meta.model_config = get_object("model_config");
  meta.preprocessing_config = get_object("preprocessing_config");
  meta.provenance = get_object("provenance");
  meta.extra = get_object("extra");
  const auto names = get("class_names", nlohmann::json::array());
  check(names.is_array(), path + ":/@class_names", "expected a JSON array of strings");
  std::unordered_set<std::string> seen;
  for (const auto& n : names) {
    check(n.is_string(), path + ":/@class_names", "expected a JSON array of strings");
    // Names become predictions.csv's columns, results.h5's attribute and the report's labels:
    // one must name one class, and print as itself.
    const auto name = n.get<std::string>();
    check(!is_blank(name) && !has_control_character(name), path + ":/@class_names", "class name '",
          excerpt(name, 60), "' is blank or holds a control character");
    check(seen.insert(name).second, path + ":/@class_names", "class '", excerpt(name, 60),
          "' is named twice");
    meta.class_names.push_back(name);
  }
  return meta;
}

std::vector<std::pair<std::string, std::vector<int64_t>>> tensor_shapes(
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

// A dataset that stores none of its values, or fewer chunks than its shape needs: a chunked
// one that declares 2 GiB and stores nothing (a 5.6 MB file) was read whole by the checksum,
// 6 GB of memory and 20 s before its "checksum mismatch". Every tensor of a checkpoint holds
// all its values, so such a dataset is damage or crafting, refused before anything reads it.
// (Not H5Dget_space_status's "partly allocated": HDF5 1.10 says that of every compressed
// dataset, and of chunks that overhang the shape; h5repack's gzip copies are checkpoints.)
herr_t refuse_unallocated(hid_t root, const char* name, const H5O_info_t* info, void* data) {
  if (info->type != H5O_TYPE_DATASET) return 0;
  auto* refused = static_cast<std::optional<std::string>*>(data);
  h5::Handle set(H5Dopen2(root, name, H5P_DEFAULT));
  h5::Handle space(set.valid() ? H5Dget_space(set.get()) : hid_t{-1});
  h5::Handle dcpl(set.valid() ? H5Dget_create_plist(set.get()) : hid_t{-1});
  H5D_space_status_t status{};
  if (!space.valid() || !dcpl.valid() || H5Sget_simple_extent_npoints(space.get()) <= 0 ||
      H5Dget_space_status(set.get(), &status) < 0)
    return 0;  // the readers say what else is wrong
  bool missing = status == H5D_SPACE_STATUS_NOT_ALLOCATED;
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (!missing && rank > 0 && H5Pget_layout(dcpl.get()) == H5D_CHUNKED) {
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank)), chunk(dims.size());
    hsize_t stored = 0;
    if (H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) == rank &&
        H5Pget_chunk(dcpl.get(), rank, chunk.data()) == rank &&
        H5Dget_num_chunks(set.get(), H5S_ALL, &stored) >= 0) {
      long double needed = 1;  // chunks covering the shape
      for (int d = 0; d < rank; ++d)
        needed *= chunk[d] ? static_cast<long double>((dims[d] + chunk[d] - 1) / chunk[d]) : 0;
      missing = static_cast<long double>(stored) < needed;
    }
  }
  H5Eclear2(H5E_DEFAULT);
  if (!missing) return 0;
  *refused = name;
  return 1;
}

void verify(const std::string& path) {
  read_meta(path);  // format and format_version
  auto file = h5::File::open(path);
  {
    std::optional<std::string> unallocated;
    H5Ovisit2(file.id(), H5_INDEX_NAME, H5_ITER_NATIVE, refuse_unallocated, &unallocated,
              H5O_INFO_BASIC);
    H5Eclear2(H5E_DEFAULT);
    if (unallocated)
      throw Error(h5::where(path, *unallocated),
                  concat("stores no data for all or part of its shape ",
                         h5::shape_text(h5::dataset_shape(file.id(), *unallocated, path)),
                         ": attnscope writes every value of a tensor; the file was cut or "
                         "crafted"));
  }
  const auto version = h5::read_string_attribute(file.id(), "format_version", path);
  // Infinities too: an infinite weight gives NaN or empty outputs without a word.
  // A negative running variance is as broken: BatchNorm takes its square root (NaN outputs,
  // which training then blamed on the metrics or the learning rate).
  auto check_finite = [&](const std::string& name, const torch::Tensor& tensor) {
    if (!tensor.is_floating_point()) return;
    check(torch::isfinite(tensor).all().item<bool>(), path, "tensor '", excerpt(name, 200),
          "' holds NaN or infinite values; refusing to load a broken model");
    const std::string var = "running_var";
    if (name.size() >= var.size() && name.compare(name.size() - var.size(), var.size(), var) == 0)
      check((tensor >= 0).all().item<bool>(), path, "tensor '", excerpt(name, 200),
            "' holds negative variances; refusing to load a broken model");
  };
  // Whatever format_version says, a checksum the file carries is verified: it covers
  // format_version too, so one flipped bit ('3' -> '1') cannot turn the verification off.
  if (version == "3" || h5::has_attribute(file.id(), kChecksum)) {
    check(h5::has_attribute(file.id(), kChecksum), path,
          "format_version 3 checkpoint without a checksum attribute");
    const auto expected = h5::read_string_attribute(file.id(), kChecksum, path);
    std::optional<Error> broken;  // said after the checksum: a flipped bit is damage first
    const auto actual = file_checksum(file.id(), path, [&](const auto& name, const auto& t) {
      if (broken || name.find('/') != std::string::npos) return;  // the model's tensors only
      try {
        check_finite(name, t);
      } catch (const Error& e) {
        broken = e;
      }
    });
    check(actual == expected, path, "checksum mismatch (stored ", expected, ", computed ", actual,
          "): the file is corrupt (a flipped bit, a cut copy) or was edited (its tensors, ",
          "configuration or training state)");
    if (broken) throw *broken;
    return;
  }
  std::map<std::string, torch::Tensor> stored;
  for (const auto& entry : tensor_shapes(path))  // datasets only: groups are not tensors
    stored[entry.first] = h5::read_tensor(file.id(), entry.first, path);
  if (version == "2" || h5::has_attribute(file.id(), "tensor_checksum")) {  // 1 predates it
    check(h5::has_attribute(file.id(), "tensor_checksum"), path, "format_version ", version,
          " checkpoint without a tensor_checksum attribute");
    const auto expected = h5::read_string_attribute(file.id(), "tensor_checksum", path);
    const auto actual = tensor_checksum(stored);
    check(actual == expected, path, "tensor checksum mismatch (stored ", expected, ", computed ",
          actual, "): the file is corrupt (a flipped bit, a cut copy) or was edited");
  }
  for (const auto& [name, tensor] : stored)
    check_finite(name, tensor);
}

}  // namespace

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  guard(path);
  return read_meta(path);
}

std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_tensors(
    const std::string& path) {
  guard(path);
  return tensor_shapes(path);
}

void verify_checkpoint(const std::string& path) {
  guard(path);
}

void load_checkpoint(const std::string& path, torch::nn::Module& module,
                     const LoadOptions& options) {
  verify_checkpoint(path);  // format, version, checksum, NaN: before anything is copied
  auto file = h5::File::open(path);
  auto stored = tensor_shapes(path);
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
      // The first few name the mismatch; a checkpoint of another network would list hundreds.
      constexpr std::size_t kShown = 8;
      for (std::size_t i = 0; i < items.size() && i < kShown; ++i)
        msg << "\n    " << excerpt(items[i], 200);
      if (items.size() > kShown) msg << "\n    ... and " << items.size() - kShown << " more";
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
    const auto value = h5::read_tensor(file.id(), name, path);
    const auto converted = value.to(tensor.dtype());
    // verify() checked the stored values; a float64 1e300 is finite there and infinite in
    // the model's float32 (NaN or empty outputs without a word).
    if (converted.is_floating_point() && value.scalar_type() != converted.scalar_type())
      check(torch::isfinite(converted).all().item<bool>(), path, "tensor '", excerpt(name, 200),
            "' holds values beyond the range of the model's ", converted.scalar_type(),
            " (stored as ", value.scalar_type(), "); refusing to load a broken model");
    tensor.copy_(converted.to(tensor.device()));
  }
}

}  // namespace attnscope::pipeline
