#pragma once
// Training an image classifier on any SampleSource (image files, an HDF5 image cache, synthetic
// images) with the one training loop (pipeline/training.h), writing a run folder:
//
//   RUN/metrics.jsonl  one JSON object per completed epoch: epoch, step, lr, train_loss,
//                      val_loss and the validation metrics. Only values that the seed, data
//                      and thread count determine, so two runs give byte-identical files;
//                      rewritten whole (AtomicFile) after every epoch, so never torn.
//   RUN/timing.jsonl   per epoch: images/s, wall and CPU seconds, the loader threads' CPU
//                      seconds and the time the step waited for data (these differ run to run).
//   RUN/last.h5        after every epoch: the weights, loadable by load_image_classifier,
//                      plus the group /train_state (optimiser buffers, EMA weights, the loop's
//                      state and the metrics history) that --resume continues from.
//   RUN/best.h5        the epoch with the best validation `select_by`; root attribute
//                      `temperature` (fitted on validation) and extra.temperature.
//   RUN/skipped.csv    with skip_bad: the images left out and why.
// Every file is written to a temporary name and renamed (AtomicFile), so a kill at any moment
// leaves the previous file or the new one, never a torn one.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "datasets/loader.h"
#include "models/vision/presets.h"
#include "pipeline/distributed.h"
#include "pipeline/training.h"
#include "pipeline/vision/mixing.h"
#include "preprocessing/pipeline.h"

namespace attnscope::pipeline {

/// A SampleSource viewing `indices` of another (repeats allowed: oversampling, splits).
class IndexedSource : public datasets::SampleSource {
 public:
  IndexedSource(std::shared_ptr<const datasets::SampleSource> base,
                std::vector<std::size_t> indices);
  std::size_t size() const override { return indices_.size(); }
  const datasets::Sample& sample(std::size_t i) const override {
    return base_->sample(indices_.at(i));
  }
  const std::vector<std::string>& class_names() const override { return base_->class_names(); }
  datasets::SampleData load(std::size_t i) const override { return base_->load(indices_.at(i)); }
  bool preprocessed() const override { return base_->preprocessed(); }
  nlohmann::json preprocessing() const override { return base_->preprocessing(); }

 private:
  std::shared_ptr<const datasets::SampleSource> base_;
  std::vector<std::size_t> indices_;
};

struct ImageTrainOptions {
  /// arch and the like; num_classes is set from the data.
  models::vision::ImageModelConfig model;
  /// Steps, augmentation (used for training batches only) and normalisation.
  preprocessing::Pipeline pipeline;
  int64_t batch_size = 32;
  int64_t epochs = 30;
  /// kind (sgd | adamw), momentum, nesterov, weight_decay.
  OptimizerOptions optimizer;
  double learning_rate = 0.01;
  /// cosine | step | constant.
  std::string schedule = "cosine";
  double warmup_epochs = 0.0;
  /// step schedule: × step_gamma every step_every epochs.
  int64_t step_every = 10;
  double step_gamma = 0.1;
  /// ce | weighted-ce (scikit-learn's balanced class weights) | focal.
  std::string loss = "ce";
  double focal_gamma = 2.0;
  double label_smoothing = 0.0;
  /// Mixup / CutMix of every training batch (pipeline/vision/mixing.h); both 0 = off.
  MixOptions mix;
  /// shuffle | balanced (each class equally likely, with replacement).
  std::string sampler = "shuffle";
  /// Class name -> K: every sample of that class appears K times per epoch.
  std::map<std::string, int64_t> oversample;
  /// EMA decay; 0 = off. With EMA, validation, best.h5 and the metrics use the EMA weights.
  double ema_decay = 0.0;
  /// Dice-loss weights of the attention maps (model.map_names() order); empty = off.
  std::vector<double> mask_loss;
  /// Knowledge distillation from a trained classifier of the same classes (its checkpoint;
  /// empty = off): the loss is (1 - α) · the class loss + α · distillation_loss(student,
  /// teacher) + the mask loss. The teacher, frozen in eval mode, sees every training batch
  /// as the student does (augmented, mixed), re-normalised to its own preprocessing's
  /// normalisation and resized (bilinear) to the side its preprocessing makes.
  std::string teacher;
  /// soft | hard (distillation_loss).
  std::string distill = "soft";
  double distill_alpha = 0.5;
  double distill_temperature = 1.0;
  /// Strict initialisation from a checkpoint / everything but the head.
  std::string init;
  std::string init_backbone;
  uint64_t seed = 0;
  /// cpu | cuda.
  std::string device = "cpu";
  /// fp32 | bf16: the training forward pass in bfloat16 autocast (runtime/precision.h); the
  /// loss, gradients, optimiser, weights and validation stay float32.
  std::string precision = "fp32";
  /// Seconds; 0 = none.
  double time_budget_s = 0.0;
  std::string budget_clock = "wall";
  /// Early stopping after this many epochs without improvement of select_by; 0 = off.
  int64_t patience = 0;
  /// auc | loss | accuracy | balanced_accuracy: the validation value that picks best.h5.
  std::string select_by = "auc";
  /// Loader threads (decode and augmentation overlap the model).
  int workers = 2;
  /// The run folder (must exist and be writable).
  std::string out_dir;
  /// Continue from out_dir/last.h5.
  bool resume = false;
  /// Stored in the checkpoints: command line, data checksum, data spec, ...
  nlohmann::json provenance = nlohmann::json::object();
  std::function<void(const TrainingProgress&)> on_progress;
  int64_t progress_every = 10;
  /// After each epoch: the metrics.jsonl record and the timing record.
  std::function<void(const nlohmann::json& record, const nlohmann::json& timing)> on_epoch;
  /// Data-parallel training (docs/distributed.md); nullptr = one process. batch_size is then
  /// the global batch: each rank trains its share of every batch (shard_batches), the
  /// gradients are all-reduced (GradientReducer), validation is split over the ranks and the
  /// scores gathered, and only rank 0 writes the run folder. --resume reads RUN/last.h5 on
  /// every rank.
  DistributedGroup* group = nullptr;
  /// Polled after every batch but an epoch's last, and before every epoch
  /// (TrainingHooks::stop_requested): 0, or
  /// the signal (SIGINT, SIGTERM) that asks the run to stop; a partial epoch is then not kept,
  /// RUN/last.h5 stays the last complete epoch's. One process: the training loader reads it
  /// too, so a batch still being loaded stops after the image each worker is on.
  /// Data-parallel, the ranks agree: a signal on any rank stops all at the same batch.
  std::function<int()> stop_requested;
};

/// The words an ImageTrainOptions text field accepts, by the command-line flag that sets it:
/// "schedule", "loss", "sampler", "select-by", "distill". train_image_classifier refuses any
/// other word; the command line checks them first, with these lists.
const std::vector<std::string>& train_option_words(const std::string& flag);
/// Empty when `value` is one of train_option_words(flag), else
/// "FLAG must be A, B or C, got 'VALUE'".
std::string bad_train_word(const std::string& flag, const std::string& value);

/// The options that define the training, as stored in checkpoints ("training_config").
nlohmann::json image_train_options_to_json(const ImageTrainOptions& options);

struct ImageTrainResult {
  int64_t epochs_completed = 0;
  int64_t epochs_at_start = 0;  ///< the epochs a resumed run had completed before this process
  int64_t best_epoch = 0;
  double best = 0.0;
  double temperature = 1.0;
  bool stopped_early = false;
  bool stopped_by_budget = false;
  bool interrupted = false;  ///< options.stop_requested() stopped it
  int stop_signal = 0;       ///< the signal that stopped it (on any rank)
};

/// Trains a classifier on `train`, validating on `val` after every epoch, and writes the run
/// folder. Throws Error for bad options, a single-class training or validation set, an empty
/// set, an unloadable --init / --resume checkpoint (naming the file and the mismatch), and on
/// any failed write.
ImageTrainResult train_image_classifier(std::shared_ptr<const datasets::SampleSource> train,
                                        std::shared_ptr<const datasets::SampleSource> val,
                                        const ImageTrainOptions& options);

/// Focal loss (Lin et al. 2017) with optional label smoothing of the target distribution:
/// mean over the batch of -Σ_c q_c (1 - p_c)^γ log p_c (q = one-hot, smoothed). γ = 0 is
/// cross-entropy. Shape: logits (B, C), labels (B) int64 -> scalar.
torch::Tensor focal_loss(const torch::Tensor& logits, const torch::Tensor& labels, double gamma,
                         double label_smoothing = 0.0);

/// The distillation term per batch (mean over the images). soft (Hinton et al. 2015):
/// T² · KL(softmax(teacher / T) ‖ softmax(student / T)), the T² keeping its gradients' scale
/// independent of T; hard (DeiT, Touvron et al. 2021): cross-entropy of the student against
/// the teacher's predicted class. Shape: logits (B, C) each -> scalar.
torch::Tensor distillation_loss(const torch::Tensor& student_logits,
                                const torch::Tensor& teacher_logits, const std::string& kind,
                                double temperature);

/// The temperature T > 0 minimising the mean negative log-likelihood of softmax(logits / T)
/// (Guo et al. 2017), by golden-section search over log T in [log 0.05, log 20].
/// Shape: logits (N, C), labels (N).
double fit_temperature(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace attnscope::pipeline
