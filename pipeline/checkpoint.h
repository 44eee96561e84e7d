#pragma once
// Checkpoints: one HDF5 file per model. Every parameter and buffer is a dataset at the file's
// root under its dotted name ("blocks.3.attn.qkv.weight"), so h5py and HDFView read it
// directly. Configs, class names and provenance are JSON string attributes of the root.
// Groups at the root are not model tensors and are ignored when loading (a training run's
// last.h5 keeps its optimiser and EMA state in /train_state).
//
// Root attributes:
//   format               "attnscope-checkpoint"
//   format_version       "3" ("2": tensor_checksum over the root's tensors only; "1": without
//                        a checksum; both still read; others refused)
//   attnscope_version    the writer's version
//   model_config         JSON object (architecture and sizes: enough to rebuild the model)
//   preprocessing_config JSON object (the preprocessing the model was trained with)
//   class_names          JSON array of strings
//   provenance           JSON object (data, seed, epoch, metrics, command line, time)
//   extra                JSON object (anything else a model family needs, e.g. a vocabulary)
//   checksum             "fnv1a64:<16 hex digits>" over the whole file (file_checksum): every
//                        dataset (tensors, /train_state) and every string attribute (configs,
//                        class names, threshold, temperature); verified at load, so a flipped
//                        bit, a cut copy or an edited field is an error, not a silently wrong
//                        model. tests/python/checkpoint_checksum.py computes it with h5py.

#include <functional>
#include <string>
#include <vector>

#include <H5Ipublic.h>

#include <torch/nn/module.h>
#include <nlohmann/json.hpp>

namespace attnscope::pipeline {

struct CheckpointMeta {
  nlohmann::json model_config = nlohmann::json::object();
  nlohmann::json preprocessing_config = nlohmann::json::object();
  std::vector<std::string> class_names;
  nlohmann::json provenance = nlohmann::json::object();
  nlohmann::json extra = nlohmann::json::object();
};

struct LoadOptions {
  /// Strict: every missing, unexpected or mis-shaped tensor is an error (all listed at once).
  bool strict = true;
  /// Tensors whose name starts with one of these are neither loaded nor reported
  /// (e.g. {"fc.", "head."} to take a backbone whose classifier differs).
  std::vector<std::string> skip_prefixes;
};

/// Writes every named parameter and buffer of module, and meta, to path (replaced atomically:
/// h5::OutputFile: written beside it and renamed, so a crash, a kill or a full disk never
/// leaves a half-written checkpoint). `add`, when given, writes more into the file's root (a
/// training run's /train_state group) before the checksum, which covers it too, is computed.
void save_checkpoint(const std::string& path, const torch::nn::Module& module,
                     const CheckpointMeta& meta, const std::function<void(hid_t root)>& add = {});

/// The checksum of a checkpoint's content as it stands in the open file `root` (named `path`
/// in errors): FNV-1a 64 over every dataset in byte order of its path (the path and a NUL, the
/// element size, rank and dimensions as little-endian int64, the bytes), then over every group
/// by path (the root being "", the others ending in "/"): the path and a NUL, then each of its
/// attributes by name as "group@name" and a NUL and, for a scalar string attribute, its UTF-8
/// value and a NUL; the root's `checksum` is left out. Datasets' own attributes are not
/// covered (attnscope writes none); an object reached under two names is an Error. `visit`, when
/// given, sees each dataset as read.
std::string file_checksum(
    hid_t root, const std::string& path,
    const std::function<void(const std::string& name, const torch::Tensor&)>& visit = {});

/// (Re)writes the root's `checksum` attribute over the file as it stands. save_checkpoint
/// calls it last; a tool (or a test) that edits a checkpoint on purpose calls it after.
void seal_checkpoint(hid_t root, const std::string& path);

/// Reads only the attributes (cheap; no tensors). Throws Error naming the path when the file
/// is missing, not HDF5, or not an attnscope checkpoint.
CheckpointMeta read_checkpoint_meta(const std::string& path);

/// Names and shapes of every tensor stored in a checkpoint.
std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_tensors(
    const std::string& path);

/// Checks a checkpoint's integrity without a model: format, format_version (1 to 3), the
/// checksum (version 3; the tensor checksum of version 2) and that no floating tensor of the
/// model holds NaN. Throws Error naming
/// the path and what is wrong. load_checkpoint calls it first.
void verify_checkpoint(const std::string& path);

/// Copies the stored tensors into module's parameters and buffers (by name). With
/// options.strict, throws one Error listing every missing, unexpected and mis-shaped tensor
/// (with both shapes) and the file; nothing is copied then.
void load_checkpoint(const std::string& path, torch::nn::Module& module,
                     const LoadOptions& options = {});

}  // namespace attnscope::pipeline
