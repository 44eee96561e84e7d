#include "pipeline/text/seq2seq_train.h"

#include <algorithm>
#include <cmath>

#include "attnscope/error.h"

namespace attnscope::pipeline {

using datasets::text::Vocabulary;

std::string format_progress(const Seq2SeqProgress& p, int bar_width) {
  TrainingProgress t;
  t.epoch = p.epoch;
  t.epochs = p.epochs;
  t.batch = p.batch;
  t.batches = p.batches;
  t.loss = p.loss;
  t.items_per_s = p.tokens_per_s;
  t.learning_rate = p.learning_rate;
  t.elapsed_s = p.elapsed_s;
  return format_training_progress(t, "tok", bar_width);
}

torch::Tensor seq2seq_loss(const torch::Tensor& logits, const torch::Tensor& target_out,
                           double label_smoothing) {
  const int64_t vocab = logits.size(-1);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, vocab}), target_out.reshape({-1}),
                                              torch::nn::functional::CrossEntropyFuncOptions()
                                                  .ignore_index(Vocabulary::kPad)
                                                  .label_smoothing(label_smoothing));
}

Seq2SeqTrainResult train_seq2seq(models::text::Seq2SeqModel& model,
                                 const datasets::text::EncodedPairs& data,
                                 const Seq2SeqTrainOptions& options) {
  check(!data.sources.empty(), "training data", "no pairs to train on");
  check(options.epochs >= 1 && options.batch_size >= 1, "training",
        "epochs and batch size must be >= 1");
  check(options.learning_rate > 0, "training", "learning rate must be > 0");
  check(options.schedule == "constant" || options.schedule == "noam", "training",
        concat("schedule must be constant or noam, got '", options.schedule, "'"));
  check(options.label_smoothing >= 0 && options.label_smoothing < 1, "training",
        "label smoothing must be in [0, 1)");

  TrainingOptions loop_options;
  loop_options.epochs = options.epochs;
  // The Transformer's Adam settings (β2 = 0.98, ε = 1e-9) work for the RNNs as well.
  loop_options.optimizer.kind = "adam";
  loop_options.optimizer.beta2 = 0.98;
  loop_options.optimizer.eps = 1e-9;
  loop_options.schedule.kind = options.schedule;
  loop_options.schedule.base_lr = options.learning_rate;
  loop_options.schedule.warmup_steps = options.schedule == "noam" ? options.warmup_steps : 0;
  loop_options.decay = options.decay;
  loop_options.clip_norm = options.clip_norm;
  loop_options.time_budget_s = options.time_budget_s;
  loop_options.budget_clock = options.budget_clock;
  loop_options.seed = options.seed;
  loop_options.progress_every = options.progress_every;
  TrainingLoop loop(model, loop_options);

  std::vector<std::size_t> lengths;
  for (const auto& s : data.sources)
    lengths.push_back(s.size());
  std::vector<std::vector<std::size_t>> batches;

  TrainingHooks hooks;
  hooks.start_epoch = [&](int64_t epoch) {
    batches = datasets::text::length_batches(lengths, static_cast<std::size_t>(options.batch_size),
                                             options.seed + static_cast<uint64_t>(epoch));
    return static_cast<int64_t>(batches.size());
  };
  hooks.train_batch = [&](int64_t, int64_t b) -> std::optional<BatchLoss> {
    const auto batch = datasets::text::make_batch(data.sources, data.targets,
                                                  batches[static_cast<std::size_t>(b)]);
    const auto out = model.forward(batch.source, batch.source_lengths, batch.target_in);
    const auto loss = seq2seq_loss(out.logits, batch.target_out, options.label_smoothing);
    loss.backward();
    const int64_t n = batch.target_out.ne(Vocabulary::kPad).sum().item<int64_t>();
    return BatchLoss{loss.item<double>() * static_cast<double>(n), n};
  };
  if (options.on_progress) {
    hooks.on_progress = [&](const TrainingProgress& t) {
      Seq2SeqProgress p;
      p.epoch = t.epoch;
      p.epochs = t.epochs;
      p.batch = t.batch;
      p.batches = t.batches;
      p.step = t.step;
      p.loss = t.loss;
      p.tokens_per_s = t.items_per_s;
      p.learning_rate = t.learning_rate;
      p.elapsed_s = t.elapsed_s;
      p.cpu_s = t.cpu_s;
      options.on_progress(p);
    };
  }
  hooks.stop_requested = options.stop_requested;
  const auto r = loop.run(hooks);
  Seq2SeqTrainResult result;
  result.steps = r.steps;
  result.epochs_completed = r.epochs_completed;
  result.final_loss = r.final_loss;
  result.seconds = r.seconds;
  result.cpu_seconds = r.cpu_seconds;
  result.stopped_by_budget = r.stopped_by_budget;
  result.interrupted = r.interrupted;
  model.eval();
  return result;
}

}  // namespace attnscope::pipeline
