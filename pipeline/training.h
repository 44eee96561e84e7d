#pragma once
// The one training loop every model family uses (seq2seq in pipeline/text, image classifiers
// in pipeline/vision): optimisers whose state is plain named tensors (so it goes into a
// checkpoint), learning-rate schedules with warmup, gradient clipping, time budgets on the
// wall or CPU clock, an exponential moving average (EMA) of the weights, early stopping, and a
// progress callback. Library code: nothing is printed; errors are attnscope::Error.
//
// One optimiser step is, in order:
//   lr = schedule(step) [× linear decay]      TrainingLoop computes it
//   zero_grad; forward; loss.backward()       TrainingHooks::train_batch (the model family)
//   after_backward()                          TrainingHooks::after_backward: the hook where a
//                                             data-parallel run all-reduces the gradients
//   clip_grad_norm; optimizer.step(lr); ema.update()
//
// Resume: TrainingLoop::state_json() / state_tensors() hold everything the loop needs to
// continue after a completed epoch (optimiser buffers, step, schedule position, EMA, early
// stopping, history); restore() puts them back. Each epoch's torch RNG seed is a function of
// (seed, epoch) only, so a run resumed at an epoch boundary draws what an uninterrupted one
// draws.

#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace attnscope::pipeline {

// ---------------------------------------------------------------------------------------------
// Optimisers

struct OptimizerOptions {
  /// sgd | adam | adamw (PyTorch's torch.optim.SGD / Adam / AdamW, same formulas).
  std::string kind = "adamw";
  /// SGD: momentum (0 = plain SGD), dampening, Nesterov momentum.
  double momentum = 0.9;
  double dampening = 0.0;
  bool nesterov = false;
  /// SGD and Adam: L2 added to the gradient; AdamW: decoupled decay p *= 1 - lr·wd.
  double weight_decay = 0.0;
  /// Adam / AdamW.
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

/// First-order optimiser over named parameters. Its state (momentum buffers, moments, step
/// counts) is a map of named tensors for checkpoints. Parameters whose gradient is undefined
/// are skipped at a step, as PyTorch does.
class Optimizer {
 public:
  /// Throws Error("optimizer", ...) for an unknown kind or bad values.
  Optimizer(std::vector<std::pair<std::string, torch::Tensor>> params, OptimizerOptions options);

  /// Sets every gradient to undefined (set_to_none, as PyTorch 2 does by default).
  void zero_grad();
  /// One update with learning rate lr using each parameter's .grad().
  void step(double lr);

  const OptimizerOptions& options() const { return options_; }
  const std::vector<std::pair<std::string, torch::Tensor>>& parameters() const { return params_; }

  /// Named state tensors: "<param>/step" (int64 scalar), "<param>/momentum_buffer" (SGD),
  /// "<param>/exp_avg", "<param>/exp_avg_sq" (Adam/AdamW); only those that exist.
  std::map<std::string, torch::Tensor> state() const;
  /// Restores state(); throws Error naming the first tensor that is unknown or mis-shaped.
  void load_state(const std::map<std::string, torch::Tensor>& state);

 private:
  struct Slot {
    int64_t step = 0;
    torch::Tensor momentum_buffer, exp_avg, exp_avg_sq;
  };
  std::vector<std::pair<std::string, torch::Tensor>> params_;
  std::vector<Slot> slots_;
  OptimizerOptions options_;
};

// ---------------------------------------------------------------------------------------------
// Learning-rate schedules

/// The Transformer's learning-rate schedule (Vaswani et al. 2017, §5.3),
/// lr = d^-0.5 · min(step^-0.5, step · warmup^-1.5), rescaled so that its peak (at step ==
/// warmup) equals `peak`: lr = peak · min(step / warmup, sqrt(warmup / step)). step >= 1.
double noam_learning_rate(int64_t step, int64_t warmup, double peak);

/// Linear decay to zero over a training budget ("Budgeted Training", Li et al., ICLR 2020):
/// the factor 1 - done that multiplies the learning rate when `done` of the budget (time or
/// steps, in [0, 1]) is spent; 0 once it is all spent.
double linear_decay_factor(double done);

struct ScheduleOptions {
  /// constant | cosine | step | linear | noam.
  std::string kind = "constant";
  /// The rate after warmup (the peak for noam).
  double base_lr = 1e-3;
  /// Linear warmup from base_lr / warmup_steps to base_lr over the first warmup_steps steps
  /// (noam: its own warmup parameter).
  int64_t warmup_steps = 0;
  /// cosine / linear: the steps of the whole run (warmup included); 0 = epochs × batches of
  /// the first epoch (TrainingLoop fills it in).
  int64_t total_steps = 0;
  /// step: multiply by gamma every step_every steps (counted from the first step, as
  /// torch.optim.lr_scheduler.StepLR counts epochs).
  int64_t step_every = 0;
  double gamma = 0.1;
  /// cosine: the rate at the end.
  double min_lr = 0.0;
};

/// Throws Error("schedule", ...) for an unknown kind or inconsistent values.
void check_schedule(const ScheduleOptions& options);

/// The rate of the optimiser step with 0-based index `step`:
///   warmup (step < warmup_steps, not noam): base · (step + 1) / warmup_steps
///   constant: base;   step: base · gamma^floor(step / step_every)
///   cosine:   min + (base - min) · (1 + cos(π · t)) / 2,  t = (step - warmup) / (total - warmup)
///   linear:   base · (1 - t);   noam: noam_learning_rate(step + 1, warmup_steps, base)
/// t is clamped to [0, 1].
double scheduled_learning_rate(const ScheduleOptions& options, int64_t step);

// ---------------------------------------------------------------------------------------------
// EMA of the weights

/// Exponential moving average of a module's parameters and floating-point buffers
/// (timm's ModelEmaV2): after each step ema ← decay · ema + (1 - decay) · value; integer
/// buffers are copied.
class WeightEma {
 public:
  WeightEma(torch::nn::Module& module, double decay);
  void update();
  double decay() const { return decay_; }
  /// Swaps the module's tensors with the averages (call twice to swap back): evaluate or save
  /// the EMA weights with the same module.
  void swap();
  /// Named averages, "<tensor name>".
  std::map<std::string, torch::Tensor> state() const;
  /// Throws Error naming a missing or mis-shaped tensor.
  void load_state(const std::map<std::string, torch::Tensor>& state);

 private:
  std::vector<std::pair<std::string, torch::Tensor>> live_;
  std::vector<torch::Tensor> average_;
  double decay_;
};

/// Every named parameter and buffer of module (parameters first), the tensors a checkpoint and
/// WeightEma cover.
std::vector<std::pair<std::string, torch::Tensor>> named_tensors(torch::nn::Module& module);

// ---------------------------------------------------------------------------------------------
// The loop

struct TrainingProgress {
  int64_t epoch = 0;  ///< 1-based
  int64_t epochs = 0;
  int64_t batch = 0;  ///< 1-based within the epoch
  int64_t batches = 0;
  int64_t step = 0;          ///< optimiser steps so far (whole run)
  double loss = 0.0;         ///< mean loss per item since the epoch began
  double items_per_s = 0.0;  ///< items (images, target tokens) per second in this epoch
  double learning_rate = 0.0;
  double elapsed_s = 0.0;  ///< since training began (wall clock; resumed runs add what was spent)
  double cpu_s = 0.0;      ///< process CPU time since training began (likewise)
};

/// What train_batch reports: the loss summed over the batch's items and their number.
struct BatchLoss {
  double loss_sum = 0.0;
  int64_t items = 0;
  /// The batch was not loaded because a stop was requested while it was (the loader stops
  /// between images): no step is made and the epoch ends there, incomplete, even at its last
  /// batch.
  bool stopped = false;
};

struct EpochSummary {
  int64_t epoch = 0;
  int64_t step = 0;
  double train_loss = 0.0;  ///< mean per item
  int64_t items = 0;
  double learning_rate = 0.0;  ///< of the epoch's last step
  double seconds = 0.0;        ///< wall clock of this epoch
  double cpu_seconds = 0.0;    ///< process CPU time of this epoch
  double items_per_s = 0.0;
  bool complete = true;  ///< false when the time budget stopped it midway
};

struct TrainingHooks {
  /// Starts an epoch (1-based); returns its number of batches (>= 1).
  std::function<int64_t(int64_t epoch)> start_epoch;
  /// Runs forward and backward of batch `batch` (0-based) of the current epoch; gradients
  /// were zeroed before. nullopt: nothing to train on (every sample failed); no step is made.
  std::function<std::optional<BatchLoss>(int64_t epoch, int64_t batch)> train_batch;
  /// After backward, before clipping and the optimiser step: all-reduce gradients here.
  std::function<void()> after_backward;
  /// After every progress_every batches and the last one of an epoch.
  std::function<void(const TrainingProgress&)> on_progress;
  /// After a complete epoch: validates and returns the monitored value (NaN when there is
  /// none; then early stopping and "best" do not apply).
  std::function<double(const EpochSummary&)> evaluate;
  /// After evaluate and the loop's bookkeeping (state_json() now includes this epoch): write
  /// checkpoints here. is_best: the monitored value improved on every earlier epoch.
  std::function<void(const EpochSummary&, double monitored, bool is_best)> end_epoch;
  /// Polled after every batch but an epoch's last, before every epoch, and when train_batch
  /// reports a batch stopped while loading; true stops the run there (a signal asked for it,
  /// runtime::stop_on_signals). A request during an epoch's last step or its validation lets
  /// that epoch complete. A partial epoch is not kept: the model's
  /// weights are the last batch's, but no evaluate or end_epoch runs for it, so what was saved
  /// after the last complete epoch is what a resumed run continues from.
  std::function<bool()> stop_requested;
};

struct TrainingOptions {
  int64_t epochs = 10;
  OptimizerOptions optimizer;
  ScheduleOptions schedule;
  /// "none" or "linear": multiply the scheduled rate by linear_decay_factor of the part of the
  /// training already done — of time_budget_s when there is one, and of the total steps,
  /// whichever is further along.
  std::string decay = "none";
  /// Gradient-norm clipping (global L2 over all parameters); <= 0 disables it.
  double clip_norm = 0.0;
  /// Stop after this many seconds of training (checked after every batch); <= 0 = no limit.
  double time_budget_s = 0.0;
  /// "wall" or "cpu" (this process's CPU time over all threads).
  std::string budget_clock = "wall";
  /// EMA decay of the weights; 0 = no EMA.
  double ema_decay = 0.0;
  /// Early stopping: stop after this many epochs without improvement; 0 = never.
  int64_t patience = 0;
  /// True when a larger monitored value is better (AUC), false for a loss.
  bool maximize = true;
  uint64_t seed = 0;
  int64_t progress_every = 10;
};

struct TrainingResult {
  int64_t steps = 0;
  int64_t epochs_completed = 0;
  double final_loss = 0.0;  ///< mean loss per item over the last epoch (or part of it)
  double seconds = 0.0;     ///< wall clock (this process)
  double cpu_seconds = 0.0;
  bool stopped_by_budget = false;
  bool stopped_early = false;  ///< patience ran out
  bool interrupted = false;    ///< hooks.stop_requested() said stop
  double best = std::numeric_limits<double>::quiet_NaN();
  int64_t best_epoch = 0;
};

/// The torch RNG seed of an epoch: seed + 1000003 · (epoch - 1).
uint64_t epoch_seed(uint64_t seed, int64_t epoch);

class TrainingLoop {
 public:
  /// Throws Error("training", ...) for bad options.
  TrainingLoop(torch::nn::Module& model, TrainingOptions options);

  /// Trains from the epoch after the last completed one (1 for a fresh loop) to
  /// options.epochs. Leaves the model in train mode.
  TrainingResult run(const TrainingHooks& hooks);

  Optimizer& optimizer() { return optimizer_; }
  /// nullptr without EMA.
  WeightEma* ema() { return ema_ ? &*ema_ : nullptr; }
  const TrainingOptions& options() const { return options_; }
  int64_t epochs_completed() const { return epoch_; }
  int64_t steps() const { return step_; }
  /// The best monitored value so far (NaN before any).
  double best() const { return best_; }

  /// The clip + step + EMA part of a step (for callers that drive batches themselves):
  /// after_backward must already have run. Returns the gradient norm before clipping
  /// (0 when clipping is off).
  double apply_step(double lr);
  /// The rate of the next step (schedule × decay).
  double next_learning_rate() const;

  /// JSON state: epoch, step, schedule, early-stopping state, clocks.
  nlohmann::json state_json() const;
  /// Tensors: "optimizer/<param>/<buffer>", "ema/<tensor>".
  std::map<std::string, torch::Tensor> state_tensors() const;
  /// Restores a state saved after a completed epoch. Throws Error naming what does not match
  /// (other optimiser, missing tensors, other parameters).
  void restore(const nlohmann::json& state, const std::map<std::string, torch::Tensor>& tensors);

 private:
  double spent_s() const;
  void restore_checked(const nlohmann::json& state,
                       const std::map<std::string, torch::Tensor>& tensors);

  torch::nn::Module& model_;
  TrainingOptions options_;
  Optimizer optimizer_;
  std::optional<WeightEma> ema_;
  int64_t epoch_ = 0;  // completed epochs
  int64_t step_ = 0;
  int64_t total_steps_ = 0;
  double best_ = std::numeric_limits<double>::quiet_NaN();
  int64_t best_epoch_ = 0;
  int64_t bad_epochs_ = 0;
  double prior_wall_s_ = 0.0, prior_cpu_s_ = 0.0;  // spent before a resume
  double wall_begin_ = 0.0, cpu_begin_ = 0.0;
};

/// "epoch 2/10 [#######.......]  120/400 loss 1.234 3456 <unit>/s lr 1.0e-03 12s".
std::string format_training_progress(const TrainingProgress& progress, const std::string& unit,
                                     int bar_width = 24);

/// Process CPU time in seconds (all threads).
double process_cpu_seconds();
/// Monotonic wall clock in seconds.
double wall_seconds();

}  // namespace attnscope::pipeline
