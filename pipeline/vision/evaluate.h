#pragma once
// Evaluating an image classifier on a labelled dataset: per-image probabilities (the
// checkpoint's temperature applied, optionally averaged over the 8 dihedral transforms) and
// every metric of pipeline/metrics.h. `attnscope evaluate` is a thin command over this.
//
// Checkpoint attributes read besides the model (CheckpointMeta, as pipeline/vision/train
// writes them): preprocessing_config (the pipeline the images go through; empty: the default
// Pipeline()), class_names, extra.threshold (the decision threshold, default 0.5) and
// extra.temperature (> 0; logits are divided by it before the softmax, default 1).

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/types.h>
#include <opencv2/core/types.hpp>

#include "datasets/loader.h"
#include "pipeline/metrics.h"
#include "pipeline/vision/image_model_config.h"
#include "preprocessing/pipeline.h"

namespace attnscope::pipeline {

struct EvaluateOptions {
  /// Images per forward pass.
  int64_t batch_size = 32;
  /// Loader threads decoding and preprocessing images.
  int workers = 2;
  /// Average the probabilities over the 8 dihedral transforms (pipeline/vision/tta.h).
  bool tta = false;
  /// "fp32", or "bf16": every forward pass in bfloat16 autocast (runtime/precision.h); the
  /// softmax, the TTA mean and the metrics stay float32/float64.
  std::string precision = "fp32";
  /// cpu | cuda | cuda:N: where the model runs (runtime::check_device); the probabilities and
  /// metrics come back to the CPU.
  std::string device = "cpu";
  /// Binary decision threshold on P(class 1); unset: the checkpoint's, else 0.5.
  std::optional<double> threshold;
  /// Bootstrap resamples for the AUC interval (MetricsOptions) and their seed.
  int64_t bootstrap_resamples = 1000;
  uint64_t seed = 0;
};

struct EvaluateFailure {
  std::string image_id, path, message;
};

struct EvaluateResult {
  std::vector<std::string> class_names;
  /// The evaluated images, in dataset order (failed ones left out).
  std::vector<std::string> ids;
  std::vector<std::string> paths;
  std::vector<int64_t> labels;
  /// (N, C) float64: softmax(logits / temperature), TTA-averaged when asked.
  torch::Tensor probabilities;
  /// Images that could not be read or preprocessed, with the reason.
  std::vector<EvaluateFailure> failures;
  double threshold = 0.5;
  double temperature = 1.0;
  bool tta = false;
  std::string precision = "fp32";
  ClassificationMetrics metrics;
};

/// softmax(model(images).logits / temperature) for one batch; with tta, the mean of it over
/// the 8 dihedral transforms of the batch. No gradients; the model must be in eval mode.
/// precision "bf16" runs the forward passes in bfloat16 autocast on the images' device
/// (runtime::AutocastScope, which refuses other names than fp32 and bf16); the softmax is
/// computed in float32 either way.
///
/// Shape: images (B, 3, H, W) -> (B, C) float32.
torch::Tensor predict_probabilities(models::vision::ImageClassifier& model,
                                    const torch::Tensor& images, double temperature = 1.0,
                                    bool tta = false, const std::string& precision = "fp32");

/// Checks that `model` (in eval mode) takes what `pipeline` makes of an image: one forward pass
/// on its output for a blank 256 x 256 image. Throws Error(subject, "cannot classify the W x H
/// images <made_by> makes (LibTorch's reason)") when the network cannot (a checkpoint whose
/// preprocessing makes images too small for it); a device's out-of-memory error passes through
/// as it is. The model's train/eval mode is kept. Returns the size of the images the pipeline
/// makes (of that 256 x 256 image).
cv::Size check_model_takes_pipeline_output(models::vision::ImageClassifier& model,
                                           const preprocessing::Pipeline& pipeline,
                                           const std::string& subject,
                                           const std::string& made_by = "its preprocessing");

/// The checkpoint's decision threshold (extra.threshold) and temperature (extra.temperature;
/// in files written before extra held them, provenance's), defaults 0.5 and 1. Throws Error naming
/// `path` for a threshold outside [0, 1] or a temperature outside [kMinTemperature,
/// kMaxTemperature] (training fits it in [0.05, 20]; a crafted 1e308 made every probability 0.5).
constexpr double kMinTemperature = 0.01;
constexpr double kMaxTemperature = 100;
double checkpoint_threshold(const CheckpointMeta& meta, const std::string& path);
double checkpoint_temperature(const CheckpointMeta& meta, const std::string& path);

/// Runs `model` over every sample of `source` with the checkpoint's preprocessing (through the
/// threaded loader, no augmentation) and computes the metrics. Samples that fail to load are
/// listed in failures and left out. progress (optional) is called after each batch with
/// (images done, images in total). Leaves the model in eval mode with its BatchNorm folded
/// (ImageClassifier::fold_batch_norm: a copy of the convolution weights, used only while
/// they stay as they are).
///
/// Throws Error naming `model_path` when the dataset's classes differ from the checkpoint's,
/// and Error("evaluate", ...) when a sample is unlabelled. When no image could be evaluated,
/// ids is empty, probabilities (0, C) and metrics default (count 0); failures says why.
EvaluateResult evaluate_image_classifier(
    const LoadedImageClassifier& model, const std::string& model_path,
    std::shared_ptr<const datasets::SampleSource> source, const EvaluateOptions& options = {},
    const std::function<void(int64_t, int64_t)>& progress = {});

/// The per-image probabilities as CSV: `image_id,path,label,predicted,p_<class>...` (label
/// and predicted are class names; probabilities with 17 significant digits, so they read back
/// exactly). Written atomically (AtomicFile); throws Error naming path on failure.
void write_predictions_csv(const std::string& path, const EvaluateResult& result);

}  // namespace attnscope::pipeline
