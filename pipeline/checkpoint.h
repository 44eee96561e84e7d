#pragma once
// Checkpoints: one HDF5 file per model. Every parameter and buffer is a dataset at the file's
// root under its dotted name ("blocks.3.attn.qkv.weight"), so h5py and HDFView read it
// directly. Configs, class names and provenance are JSON string attributes of the root.
// Groups at the root are not model tensors and are ignored when loading (a training run's
// last.h5 keeps its optimiser and EMA state in /train_state).
//
// Root attributes:
//   format               "attnscope-checkpoint"
//   format_version       "1"
//   attnscope_version    the writer's version
//   model_config         JSON object (architecture and sizes: enough to rebuild the model)
//   preprocessing_config JSON object (the preprocessing the model was trained with)
//   class_names          JSON array of strings
//   provenance           JSON object (data, seed, epoch, metrics, command line, time)
//   extra                JSON object (anything else a model family needs, e.g. a vocabulary)

#include <string>
#include <vector>

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
/// written to path + ".tmp" and renamed, so a crash never leaves a half-written checkpoint).
void save_checkpoint(const std::string& path, const torch::nn::Module& module,
                     const CheckpointMeta& meta);

/// Reads only the attributes (cheap; no tensors). Throws Error naming the path when the file
/// is missing, not HDF5, or not an attnscope checkpoint.
CheckpointMeta read_checkpoint_meta(const std::string& path);

/// Names and shapes of every tensor stored in a checkpoint.
std::vector<std::pair<std::string, std::vector<int64_t>>> checkpoint_tensors(
    const std::string& path);

/// Copies the stored tensors into module's parameters and buffers (by name). With
/// options.strict, throws one Error listing every missing, unexpected and mis-shaped tensor
/// (with both shapes) and the file; nothing is copied then.
void load_checkpoint(const std::string& path, torch::nn::Module& module,
                     const LoadOptions& options = {});

}  // namespace attnscope::pipeline
