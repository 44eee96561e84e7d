#pragma once
// Training of the seq2seq models: teacher forcing, cross-entropy with label smoothing, Adam,
// an optional Noam warmup schedule, gradient clipping and a wall-clock budget. Progress goes to
// a callback (library code never prints); format_progress draws the bar the CLI shows.
// The loop itself (optimiser, schedule, clipping, budget) is pipeline/training.h's
// TrainingLoop; this file supplies the seq2seq batches and loss.

#include <cstdint>
#include <functional>
#include <string>

#include "datasets/text/pairs.h"
#include "models/text/seq2seq.h"
#include "pipeline/training.h"

namespace attnscope::pipeline {

struct Seq2SeqProgress {
  int64_t epoch = 0;  ///< 1-based
  int64_t epochs = 0;
  int64_t batch = 0;  ///< 1-based within the epoch
  int64_t batches = 0;
  int64_t step = 0;           ///< optimiser steps so far
  double loss = 0.0;          ///< mean loss per target token since the epoch began
  double tokens_per_s = 0.0;  ///< target tokens per second since the epoch began
  double learning_rate = 0.0;
  double elapsed_s = 0.0;  ///< since training began (wall clock)
  double cpu_s = 0.0;      ///< process CPU time since training began
};

/// "epoch 2/10 [#######.......]  120/400 loss 1.234 3456 tok/s lr 1.0e-03 12s".
std::string format_progress(const Seq2SeqProgress& progress, int bar_width = 24);

struct Seq2SeqTrainOptions {
  int64_t epochs = 10;
  int64_t batch_size = 64;
  /// Adam's learning rate (the peak when schedule == "noam"). 2e-3: the rate the runs measured
  /// in docs/seq2seq.md were trained with (RNNs, and the transformer's noam peak); the CLI's
  /// --lr default is this value.
  double learning_rate = 2e-3;
  /// "constant" or "noam".
  std::string schedule = "constant";
  int64_t warmup_steps = 400;
  /// "none" or "linear": multiply the scheduled rate by linear_decay_factor of the part of the
  /// training already done — of time_budget_s when there is one, and of epochs × batches,
  /// whichever is further along. A time-budgeted run then ends at a rate near zero.
  std::string decay = "none";
  double label_smoothing = 0.1;
  /// Gradient-norm clipping; <= 0 disables it.
  double clip_norm = 1.0;
  /// Stop after this many seconds of training (checked after every batch); <= 0 = no limit.
  double time_budget_s = 0.0;
  /// The clock of time_budget_s: "wall" or "cpu" (this process's CPU time over all threads,
  /// which makes budgets comparable on a machine shared with other work).
  std::string budget_clock = "wall";
  uint64_t seed = 0;
  /// Called after every progress_every batches and at the end of each epoch.
  std::function<void(const Seq2SeqProgress&)> on_progress;
  int64_t progress_every = 10;
  /// Polled between batches (TrainingHooks::stop_requested): true stops training there and
  /// returns the model as it is, like a time budget.
  std::function<bool()> stop_requested;
};

struct Seq2SeqTrainResult {
  int64_t steps = 0;
  int64_t epochs_completed = 0;
  double final_loss = 0.0;   ///< mean loss per token over the last epoch (or part of it)
  double seconds = 0.0;      ///< wall clock
  double cpu_seconds = 0.0;  ///< process CPU time
  bool stopped_by_budget = false;
  bool interrupted = false;  ///< options.stop_requested() stopped it
};

/// Trains model on the pairs (ids without <bos>/<eos>). Leaves the model in eval mode.
/// Throws Error for empty data or bad options.
Seq2SeqTrainResult train_seq2seq(models::text::Seq2SeqModel& model,
                                 const datasets::text::EncodedPairs& data,
                                 const Seq2SeqTrainOptions& options);

/// Mean cross-entropy per non-<pad> target token (with label smoothing), the training loss.
/// Shape: logits (B, T, V), target_out (B, T) int64.
torch::Tensor seq2seq_loss(const torch::Tensor& logits, const torch::Tensor& target_out,
                           double label_smoothing);

}  // namespace attnscope::pipeline
