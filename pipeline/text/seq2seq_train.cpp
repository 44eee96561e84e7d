#include "pipeline/text/seq2seq_train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>

#include "attnscope/error.h"

namespace attnscope::pipeline {

using datasets::text::Vocabulary;

double noam_learning_rate(int64_t step, int64_t warmup, double peak) {
  check(step >= 1 && warmup >= 1, "noam schedule", "step and warmup must be >= 1");
  const double s = static_cast<double>(step), w = static_cast<double>(warmup);
  return peak * std::min(s / w, std::sqrt(w / s));
}

double linear_decay_factor(double done) {
  return std::clamp(1.0 - done, 0.0, 1.0);
}

std::string format_progress(const Seq2SeqProgress& p, int bar_width) {
  const double fraction =
      p.batches > 0 ? static_cast<double>(p.batch) / static_cast<double>(p.batches) : 0.0;
  const int filled = static_cast<int>(std::round(fraction * bar_width));
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(static_cast<std::size_t>(bar_width), '.');
  char tail[160];
  std::snprintf(tail, sizeof(tail), " %lld/%lld loss %.4f %.0f tok/s lr %.1e %.0fs",
                static_cast<long long>(p.batch), static_cast<long long>(p.batches), p.loss,
                p.tokens_per_s, p.learning_rate, p.elapsed_s);
  return concat("epoch ", p.epoch, "/", p.epochs, " [", bar, "]", tail);
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
  check(options.decay == "none" || options.decay == "linear", "training",
        concat("decay must be none or linear, got '", options.decay, "'"));
  check(options.label_smoothing >= 0 && options.label_smoothing < 1, "training",
        "label smoothing must be in [0, 1)");
  check(options.budget_clock == "wall" || options.budget_clock == "cpu", "training",
        concat("budget clock must be wall or cpu, got '", options.budget_clock, "'"));
  torch::manual_seed(options.seed);
  model.train();
  // The Transformer's Adam settings (β2 = 0.98, ε = 1e-9) work for the RNNs as well.
  torch::optim::Adam optimizer(
      model.parameters(),
      torch::optim::AdamOptions(options.learning_rate).betas({0.9, 0.98}).eps(1e-9));
  std::vector<std::size_t> lengths;
  for (const auto& s : data.sources)
    lengths.push_back(s.size());

  using Clock = std::chrono::steady_clock;
  const auto begin = Clock::now();
  const std::clock_t cpu_begin = std::clock();
  auto cpu_seconds = [&] { return static_cast<double>(std::clock() - cpu_begin) / CLOCKS_PER_SEC; };
  auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  Seq2SeqTrainResult result;
  int64_t total_steps = 0;  // epochs x batches, known once the first epoch is cut into batches
  for (int64_t epoch = 1; epoch <= options.epochs && !result.stopped_by_budget; ++epoch) {
    const auto batches =
        datasets::text::length_batches(lengths, static_cast<std::size_t>(options.batch_size),
                                       options.seed + static_cast<uint64_t>(epoch));
    const auto epoch_begin = Clock::now();
    double loss_sum = 0.0;
    int64_t tokens = 0;
    Seq2SeqProgress progress;
    progress.epoch = epoch;
    progress.epochs = options.epochs;
    progress.batches = static_cast<int64_t>(batches.size());
    if (total_steps == 0) total_steps = options.epochs * static_cast<int64_t>(batches.size());
    for (std::size_t b = 0; b < batches.size(); ++b) {
      const auto batch = datasets::text::make_batch(data.sources, data.targets, batches[b]);
      ++result.steps;
      double lr =
          options.schedule == "noam"
              ? noam_learning_rate(result.steps, options.warmup_steps, options.learning_rate)
              : options.learning_rate;
      if (options.decay == "linear") {
        double done = static_cast<double>(result.steps - 1) /
                      static_cast<double>(std::max<int64_t>(total_steps, 1));
        if (options.time_budget_s > 0) {
          const double spent = options.budget_clock == "cpu" ? cpu_seconds() : seconds_since(begin);
          done = std::max(done, spent / options.time_budget_s);
        }
        lr *= linear_decay_factor(done);
      }
      for (auto& group : optimizer.param_groups())
        static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
      optimizer.zero_grad();
      const auto out = model.forward(batch.source, batch.source_lengths, batch.target_in);
      const auto loss = seq2seq_loss(out.logits, batch.target_out, options.label_smoothing);
      loss.backward();
      if (options.clip_norm > 0)
        torch::nn::utils::clip_grad_norm_(model.parameters(), options.clip_norm);
      optimizer.step();
      const int64_t n = batch.target_out.ne(Vocabulary::kPad).sum().item<int64_t>();
      loss_sum += loss.item<double>() * static_cast<double>(n);
      tokens += n;
      progress.batch = static_cast<int64_t>(b) + 1;
      progress.step = result.steps;
      progress.loss = loss_sum / static_cast<double>(std::max<int64_t>(tokens, 1));
      progress.tokens_per_s =
          static_cast<double>(tokens) / std::max(seconds_since(epoch_begin), 1e-9);
      progress.learning_rate = lr;
      progress.elapsed_s = seconds_since(begin);
      progress.cpu_s = cpu_seconds();
      const double spent = options.budget_clock == "cpu" ? progress.cpu_s : progress.elapsed_s;
      const bool out_of_time = options.time_budget_s > 0 && spent >= options.time_budget_s;
      const bool last = b + 1 == batches.size() || out_of_time;
      if (options.on_progress &&
          (last || (options.progress_every > 0 && progress.batch % options.progress_every == 0)))
        options.on_progress(progress);
      if (out_of_time) {
        result.stopped_by_budget = true;
        break;
      }
    }
    result.final_loss = progress.loss;
    if (!result.stopped_by_budget) result.epochs_completed = epoch;
  }
  result.seconds = seconds_since(begin);
  result.cpu_seconds = cpu_seconds();
  model.eval();
  return result;
}

}  // namespace attnscope::pipeline
