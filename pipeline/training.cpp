#include "pipeline/training.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <limits>

#include <ATen/Parallel.h>

#include "attnscope/error.h"
#include "attnscope/printable.h"
#include "pipeline/optimizer_kernels.h"

namespace attnscope::pipeline {

// ---------------------------------------------------------------------------------------------
// Optimisers

Optimizer::Optimizer(std::vector<std::pair<std::string, torch::Tensor>> params,
                     OptimizerOptions options)
    : params_(std::move(params)), slots_(params_.size()), options_(std::move(options)) {
  const auto& o = options_;
  check(o.kind == "sgd" || o.kind == "adam" || o.kind == "adamw", "optimizer",
        "kind must be sgd, adam or adamw, got '", o.kind, "'");
  check(o.weight_decay >= 0, "optimizer", "weight decay must be >= 0, got ", o.weight_decay);
  check(o.momentum >= 0 && o.momentum < 1, "optimizer", "momentum must be in [0, 1), got ",
        o.momentum);
  check(!o.nesterov || (o.momentum > 0 && o.dampening == 0), "optimizer",
        "Nesterov momentum requires momentum > 0 and zero dampening");
  check(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1 && o.eps > 0, "optimizer",
        "betas must be in [0, 1) and eps > 0");
}

void Optimizer::zero_grad() {
  for (auto& [name, p] : params_)
    if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
}

namespace {

// Elements per task of the fused Adam pass (64 KiB of float32 per array).
constexpr int64_t kFusedGrain = int64_t{1} << 14;

// The one-pass kernel (pipeline/optimizer_kernels.h) takes CPU float32/float64 parameters
// whose gradient and moments are dense, of the same type and laid out alike (channels-last
// weights included), and none of them aliasing another; anything else (CUDA, half precision,
// a sparse or strided gradient) takes ATen's operations below, the same formulas.
bool fused_adam_applies(const torch::Tensor& p, const torch::Tensor& g, const torch::Tensor& m,
                        const torch::Tensor& v) {
  if (!p.device().is_cpu() ||
      !(p.scalar_type() == torch::kFloat || p.scalar_type() == torch::kDouble))
    return false;
  for (const auto* t : {&g, &m, &v}) {
    if (t->layout() != torch::kStrided || !t->device().is_cpu() ||
        t->scalar_type() != p.scalar_type() || t->strides() != p.strides() ||
        t->sizes() != p.sizes())
      return false;
  }
  if (!p.is_non_overlapping_and_dense()) return false;
  // The four arrays must not share memory (a gradient that is a view of its parameter).
  const auto bytes = static_cast<std::uintptr_t>(p.numel()) * p.element_size();
  const std::array<std::uintptr_t, 4> starts = {reinterpret_cast<std::uintptr_t>(p.data_ptr()),
                                                reinterpret_cast<std::uintptr_t>(g.data_ptr()),
                                                reinterpret_cast<std::uintptr_t>(m.data_ptr()),
                                                reinterpret_cast<std::uintptr_t>(v.data_ptr())};
  for (std::size_t i = 0; i < starts.size(); ++i)
    for (std::size_t j = i + 1; j < starts.size(); ++j)
      if (starts[i] < starts[j] + bytes && starts[j] < starts[i] + bytes) return false;
  return true;
}

}  // namespace

void Optimizer::step(double lr) {
  torch::NoGradGuard no_grad;
  const auto& o = options_;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    auto& p = params_[i].second;
    if (!p.grad().defined()) continue;
    auto grad = p.grad();
    auto& s = slots_[i];
    ++s.step;
    if (o.kind == "sgd") {
      // torch.optim.SGD (single-tensor path).
      if (o.weight_decay != 0) grad = grad.add(p, o.weight_decay);
      if (o.momentum != 0) {
        if (!s.momentum_buffer.defined()) {
          s.momentum_buffer = grad.clone().detach();
        } else {
          s.momentum_buffer.mul_(o.momentum).add_(grad, 1 - o.dampening);
        }
        grad = o.nesterov ? grad.add(s.momentum_buffer, o.momentum) : s.momentum_buffer;
      }
      p.add_(grad, -lr);
      continue;
    }
    if (!s.exp_avg.defined()) {
      s.exp_avg = torch::zeros_like(p);
      s.exp_avg_sq = torch::zeros_like(p);
    }
    const double bias1 = 1 - std::pow(o.beta1, static_cast<double>(s.step));
    const double bias2 = 1 - std::pow(o.beta2, static_cast<double>(s.step));
    if (fused_adam_applies(p, grad, s.exp_avg, s.exp_avg_sq)) {
      kernels::AdamScalars k;
      k.decay = o.kind == "adamw" ? 1 - lr * o.weight_decay : 1.0;
      k.l2 = o.kind == "adamw" ? 0.0 : o.weight_decay;
      k.beta1 = o.beta1;
      k.beta2 = o.beta2;
      k.bias2_sqrt = std::sqrt(bias2);
      k.eps = o.eps;
      k.step_size = -lr / bias1;
      AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "adam_step", [&] {
        auto* pp = p.data_ptr<scalar_t>();
        const auto* gp = grad.data_ptr<scalar_t>();
        auto* mp = s.exp_avg.data_ptr<scalar_t>();
        auto* vp = s.exp_avg_sq.data_ptr<scalar_t>();
        at::parallel_for(0, p.numel(), kFusedGrain, [&](int64_t begin, int64_t end) {
          kernels::adam_step(pp, gp, mp, vp, begin, end, k);
        });
      });
      // Written through raw pointers: tell autograd and every cache keyed on version counters
      // (the BatchNorm fold, models/vision/cnn_common.h) what an in-place operation would.
      for (const auto* t : {&p, &s.exp_avg, &s.exp_avg_sq})
        t->unsafeGetTensorImpl()->bump_version();
      continue;
    }
    // torch.optim.Adam / AdamW (single-tensor path).
    if (o.kind == "adamw") {
      p.mul_(1 - lr * o.weight_decay);
    } else if (o.weight_decay != 0) {
      grad = grad.add(p, o.weight_decay);
    }
    s.exp_avg.mul_(o.beta1).add_(grad, 1 - o.beta1);
    s.exp_avg_sq.mul_(o.beta2).addcmul_(grad, grad, 1 - o.beta2);
    const auto denom = (s.exp_avg_sq.sqrt() / std::sqrt(bias2)).add_(o.eps);
    p.addcdiv_(s.exp_avg, denom, -lr / bias1);
  }
}

std::map<std::string, torch::Tensor> Optimizer::state() const {
  std::map<std::string, torch::Tensor> out;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& name = params_[i].first;
    const auto& s = slots_[i];
    out[name + "/step"] = torch::tensor(s.step, torch::kInt64);
    if (s.momentum_buffer.defined()) out[name + "/momentum_buffer"] = s.momentum_buffer;
    if (s.exp_avg.defined()) {
      out[name + "/exp_avg"] = s.exp_avg;
      out[name + "/exp_avg_sq"] = s.exp_avg_sq;
    }
  }
  return out;
}

namespace {

// `stored` in `type`, refused (Error naming `subject` and the tensor) when a value is NaN or
// inf there: a float64 1e300 is finite in the file and infinite in float32, and the next
// step's loss was then blamed on the learning rate.
torch::Tensor finite_as(const torch::Tensor& stored, at::ScalarType type, const char* subject,
                        const std::string& name) {
  const auto same = stored.to(type);
  const bool converted = same.scalar_type() != stored.scalar_type();
  check(!same.is_floating_point() || torch::isfinite(same).all().item<bool>(), subject, "tensor '",
        name, "' holds NaN or inf", converted ? " as " : "", converted ? c10::toString(type) : "");
  return same;
}

}  // namespace

void Optimizer::load_state(const std::map<std::string, torch::Tensor>& state) {
  std::vector<Slot> slots(params_.size());
  std::size_t used = 0;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    auto find = [&](const std::string& key) -> torch::Tensor {
      auto it = state.find(name + "/" + key);
      if (it == state.end()) return {};
      ++used;
      check(key == "step" || it->second.sizes() == p.sizes(), "optimizer state", "tensor '", name,
            "/", key, "' has shape ", it->second.sizes(), ", the parameter ", p.sizes());
      return it->second;
    };
    const auto step = find("step");
    check(step.defined(), "optimizer state", "no step count for parameter '", name,
          "' (a state of another model?)");
    // A file's values: a step of 1e30 or NaN moments would overflow or poison the run.
    check(step.numel() == 1, "optimizer state", "step count of '", name, "' has shape ",
          step.sizes(), "; expected one number");
    const double count = step.to(torch::kDouble).item<double>();
    check(std::isfinite(count) && count >= 0 && count <= 1e15 && count == std::floor(count),
          "optimizer state", "step count of '", name, "' is ", count,
          "; expected a whole number >= 0");
    slots[i].step = static_cast<int64_t>(count);
    // Buffers take the parameter's layout (a channels-last weight's moments are
    // channels-last, as zeros_like makes them in a run that was not resumed).
    auto like_param = [&](const torch::Tensor& t, const char* key) {
      return torch::empty_like(p, torch::MemoryFormat::Preserve)
          .copy_(finite_as(t, p.scalar_type(), "optimizer state", name + "/" + key));
    };
    if (auto t = find("momentum_buffer"); t.defined())
      slots[i].momentum_buffer = like_param(t, "momentum_buffer");
    if (auto t = find("exp_avg"); t.defined()) slots[i].exp_avg = like_param(t, "exp_avg");
    if (auto t = find("exp_avg_sq"); t.defined()) {
      // A mean of squares: a negative one made the step's square root NaN.
      check(!(t < 0).any().item<bool>(), "optimizer state", "tensor '", name,
            "/exp_avg_sq' holds negative values");
      slots[i].exp_avg_sq = like_param(t, "exp_avg_sq");
    }
    check(slots[i].exp_avg.defined() == slots[i].exp_avg_sq.defined(), "optimizer state",
          "parameter '", name, "' has only one of exp_avg and exp_avg_sq");
    // A parameter that took a step has its buffers (a deleted one would restart from zero
    // and the run would not continue as it was).
    const bool uses_momentum = options_.kind == "sgd" && options_.momentum != 0;
    const bool uses_moments = options_.kind != "sgd";
    if (slots[i].step > 0) {
      check(!uses_momentum || slots[i].momentum_buffer.defined(), "optimizer state",
            "parameter '", name, "' took ", slots[i].step, " step(s) but has no momentum_buffer");
      check(!uses_moments || slots[i].exp_avg.defined(), "optimizer state", "parameter '", name,
            "' took ", slots[i].step, " step(s) but has no exp_avg and exp_avg_sq");
    }
  }
  check(used == state.size(), "optimizer state", state.size() - used,
        " tensors belong to no parameter of the model (a state of another model?)");
  slots_ = std::move(slots);
}

// ---------------------------------------------------------------------------------------------
// Schedules

double noam_learning_rate(int64_t step, int64_t warmup, double peak) {
  check(step >= 1 && warmup >= 1, "noam schedule", "step and warmup must be >= 1");
  const double s = static_cast<double>(step), w = static_cast<double>(warmup);
  return peak * std::min(s / w, std::sqrt(w / s));
}

double linear_decay_factor(double done) {
  return std::clamp(1.0 - done, 0.0, 1.0);
}

void check_schedule(const ScheduleOptions& o) {
  check(o.kind == "constant" || o.kind == "cosine" || o.kind == "step" || o.kind == "linear" ||
            o.kind == "noam",
        "schedule", "kind must be constant, cosine, step, linear or noam, got '", o.kind, "'");
  check(o.base_lr > 0, "schedule", "learning rate must be > 0, got ", o.base_lr);
  check(o.warmup_steps >= 0, "schedule", "warmup must be >= 0");
  check(o.kind != "noam" || o.warmup_steps >= 1, "schedule", "noam needs warmup >= 1");
  check(o.kind != "step" || (o.step_every >= 1 && o.gamma > 0), "schedule",
        "step schedule needs step_every >= 1 and gamma > 0");
  check(o.min_lr >= 0 && o.min_lr <= o.base_lr, "schedule", "min_lr must be in [0, base_lr]");
}

double scheduled_learning_rate(const ScheduleOptions& o, int64_t step) {
  check(step >= 0, "schedule", "step must be >= 0");
  if (o.kind == "noam") return noam_learning_rate(step + 1, o.warmup_steps, o.base_lr);
  if (step < o.warmup_steps)
    return o.base_lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  if (o.kind == "constant") return o.base_lr;
  if (o.kind == "step")
    return o.base_lr * std::pow(o.gamma, static_cast<double>(step / o.step_every));
  const int64_t span = std::max<int64_t>(o.total_steps - o.warmup_steps, 1);
  const double t =
      std::clamp(static_cast<double>(step - o.warmup_steps) / static_cast<double>(span), 0.0, 1.0);
  if (o.kind == "linear") return o.base_lr * (1 - t);
  return o.min_lr + (o.base_lr - o.min_lr) * 0.5 * (1 + std::cos(M_PI * t));
}

// ---------------------------------------------------------------------------------------------
// EMA

std::vector<std::pair<std::string, torch::Tensor>> named_tensors(torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& item : module.named_parameters())
    out.emplace_back(item.key(), item.value());
  for (auto& item : module.named_buffers())
    out.emplace_back(item.key(), item.value());
  return out;
}

WeightEma::WeightEma(torch::nn::Module& module, double decay) : decay_(decay) {
  check(decay > 0 && decay < 1, "ema", "decay must be in (0, 1), got ", decay);
  live_ = named_tensors(module);
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : live_)
    average_.push_back(t.detach().clone());
}

void WeightEma::update() {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < live_.size(); ++i) {
    const auto& value = live_[i].second;
    if (value.is_floating_point()) {
      average_[i].mul_(decay_).add_(value.detach(), 1 - decay_);
    } else {
      average_[i].copy_(value);
    }
  }
}

void WeightEma::swap() {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < live_.size(); ++i) {
    auto tmp = live_[i].second.detach().clone();
    live_[i].second.detach().copy_(average_[i]);
    average_[i].copy_(tmp);
  }
}

std::map<std::string, torch::Tensor> WeightEma::state() const {
  std::map<std::string, torch::Tensor> out;
  for (std::size_t i = 0; i < live_.size(); ++i)
    out[live_[i].first] = average_[i];
  return out;
}

void WeightEma::load_state(const std::map<std::string, torch::Tensor>& state) {
  torch::NoGradGuard no_grad;
  check(state.size() == live_.size(), "ema state", "has ", state.size(), " tensors, the model ",
        live_.size());
  for (std::size_t i = 0; i < live_.size(); ++i) {
    auto it = state.find(live_[i].first);
    check(it != state.end(), "ema state", "no tensor '", live_[i].first, "'");
    check(it->second.sizes() == average_[i].sizes(), "ema state", "tensor '", live_[i].first,
          "' has shape ", it->second.sizes(), ", the model ", average_[i].sizes());
    // An average of finite weights is finite (a NaN was blamed on the learning rate later);
    // checked in the average's type (a float64 1e300 is infinite in float32).
    // A float stored for an integer buffer (num_batches_tracked) converted to INT64_MIN.
    check(!it->second.is_floating_point() || average_[i].is_floating_point(), "ema state",
          "tensor '", live_[i].first, "' is stored as ", it->second.scalar_type(),
          " where the model holds ", average_[i].scalar_type());
    average_[i].copy_(
        finite_as(it->second, average_[i].scalar_type(), "ema state", live_[i].first));
  }
}

// ---------------------------------------------------------------------------------------------
// The loop

double process_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double wall_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

uint64_t epoch_seed(uint64_t seed, int64_t epoch) {
  return seed + 1000003ULL * static_cast<uint64_t>(epoch - 1);
}

std::string format_training_progress(const TrainingProgress& p, const std::string& unit,
                                     int bar_width) {
  const double fraction =
      p.batches > 0 ? static_cast<double>(p.batch) / static_cast<double>(p.batches) : 0.0;
  const int filled = static_cast<int>(std::round(fraction * bar_width));
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(static_cast<std::size_t>(bar_width), '.');
  char tail[200];
  std::snprintf(tail, sizeof(tail), " %lld/%lld loss %.4f %.0f %s/s lr %.1e %.0fs",
                static_cast<long long>(p.batch), static_cast<long long>(p.batches), p.loss,
                p.items_per_s, unit.c_str(), p.learning_rate, p.elapsed_s);
  return concat("epoch ", p.epoch, "/", p.epochs, " [", bar, "]", tail);
}

namespace {

std::vector<std::pair<std::string, torch::Tensor>> trainable(torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& item : model.named_parameters())
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  return out;
}

}  // namespace

TrainingLoop::TrainingLoop(torch::nn::Module& model, TrainingOptions options)
    : model_(model),
      options_(std::move(options)),
      optimizer_(trainable(model), options_.optimizer) {
  const auto& o = options_;
  check(o.epochs >= 1, "training", "epochs must be >= 1, got ", o.epochs);
  check_schedule(o.schedule);
  check(o.decay == "none" || o.decay == "linear", "training", "decay must be none or linear, got '",
        o.decay, "'");
  check(o.budget_clock == "wall" || o.budget_clock == "cpu", "training",
        "budget clock must be wall or cpu, got '", o.budget_clock, "'");
  check(o.patience >= 0, "training", "patience must be >= 0");
  if (o.ema_decay > 0) ema_.emplace(model_, o.ema_decay);
  total_steps_ = o.schedule.total_steps;
}

double TrainingLoop::spent_s() const {
  return options_.budget_clock == "cpu" ? prior_cpu_s_ + process_cpu_seconds() - cpu_begin_
                                        : prior_wall_s_ + wall_seconds() - wall_begin_;
}

double TrainingLoop::next_learning_rate() const {
  auto schedule = options_.schedule;
  schedule.total_steps = total_steps_;
  double lr = scheduled_learning_rate(schedule, step_);
  if (options_.decay == "linear") {
    double done =
        static_cast<double>(step_) / static_cast<double>(std::max<int64_t>(total_steps_, 1));
    if (options_.time_budget_s > 0) done = std::max(done, spent_s() / options_.time_budget_s);
    lr *= linear_decay_factor(done);
  }
  return lr;
}

double TrainingLoop::apply_step(double lr) {
  double norm = 0.0;
  if (options_.clip_norm > 0) {
    std::vector<torch::Tensor> params;
    for (const auto& [name, p] : optimizer_.parameters())
      params.push_back(p);
    norm = torch::nn::utils::clip_grad_norm_(params, options_.clip_norm);
  }
  optimizer_.step(lr);
  if (ema_) ema_->update();
  ++step_;
  return norm;
}

TrainingResult TrainingLoop::run(const TrainingHooks& hooks) {
  check(static_cast<bool>(hooks.start_epoch) && static_cast<bool>(hooks.train_batch), "training",
        "start_epoch and train_batch hooks are required");
  wall_begin_ = wall_seconds();
  cpu_begin_ = process_cpu_seconds();
  TrainingResult result;
  model_.train();
  bool stop = false;
  bool stepped = false;  // by this process: before its first step the learning rate did nothing
  // A run restored from a state whose patience had run out stopped early: it is finished, as
  // one that reached its last epoch is (each --resume of it trained one more epoch).
  if (options_.patience > 0 && bad_epochs_ >= options_.patience) {
    result.stopped_early = true;
    stop = true;
  }
  const auto interrupted = [&] { return hooks.stop_requested && hooks.stop_requested(); };
  for (int64_t epoch = epoch_ + 1; epoch <= options_.epochs && !stop; ++epoch) {
    if (interrupted()) {
      result.interrupted = true;
      break;
    }
    // A budget the run's earlier processes spent (a resumed run whose last epoch ended past
    // it) trains no batch of an epoch it could not finish. (A fresh run takes its first
    // batch whatever the budget.)
    const double spent_before = options_.budget_clock == "cpu" ? prior_cpu_s_ : prior_wall_s_;
    if (options_.time_budget_s > 0 && spent_before >= options_.time_budget_s) {
      result.stopped_by_budget = true;
      break;
    }
    torch::manual_seed(epoch_seed(options_.seed, epoch));
    const int64_t batches = hooks.start_epoch(epoch);
    check(batches >= 1, "training", "epoch ", epoch, " has no batches");
    if (total_steps_ <= 0) {
      // epochs × batches past int64 was undefined, and ran every step at a learning rate of 0.
      check(batches <= std::numeric_limits<int64_t>::max() / options_.epochs, "training",
            options_.epochs, " epochs of ", batches, " batches are more steps than can be counted");
      total_steps_ = options_.epochs * batches;
    }
    const double epoch_wall = wall_seconds(), epoch_cpu = process_cpu_seconds();
    EpochSummary summary;
    summary.epoch = epoch;
    TrainingProgress progress;
    progress.epoch = epoch;
    progress.epochs = options_.epochs;
    progress.batches = batches;
    double loss_sum = 0.0;
    for (int64_t b = 0; b < batches; ++b) {
      const double lr = next_learning_rate();
      optimizer_.zero_grad();
      const auto loss = hooks.train_batch(epoch, b);
      if (loss && loss->stopped) {
        interrupted();  // the hook records which signal asked
        summary.complete = false;
        result.interrupted = true;
        stop = true;
        break;
      }
      // A loss that is no longer finite has diverged: stepping with it would only spread NaN
      // through the weights, and every later epoch would be lost. Stop naming where it happened.
      // Before this process's first step the learning rate has done nothing: the weights it
      // started from (an --init checkpoint, a resumed state) or the data give such a loss (a
      // checkpoint of 1e38 weights was blamed on the learning rate).
      if (loss && loss->items > 0 && !std::isfinite(loss->loss_sum) && !stepped)
        throw Error("training",
                    concat("the loss is ", std::isnan(loss->loss_sum) ? "NaN" : "infinite",
                           " at epoch ", epoch, ", batch ", b + 1, " of ", batches,
                           ", before this process's first step: the weights it "
                           "starts from (--init, or the state --resume restored) or the images "
                           "give outputs that are not finite"));
      if (loss && loss->items > 0 && !std::isfinite(loss->loss_sum))
        throw Error("training",
                    concat("the loss became ", std::isnan(loss->loss_sum) ? "NaN" : "infinite",
                           " at epoch ", epoch, ", batch ", b + 1, " of ", batches,
                           " (learning rate ", lr, "): the run diverged; lower the learning rate",
                           epoch_ > 0 ? concat(" (the last complete epoch is ", epoch_, ")")
                                      : std::string()));
      if (loss && loss->items > 0) {
        if (hooks.after_backward) hooks.after_backward();
        stepped = true;
        apply_step(lr);
        loss_sum += loss->loss_sum;
        summary.items += loss->items;
      }
      summary.learning_rate = lr;
      progress.batch = b + 1;
      progress.step = step_;
      progress.loss = loss_sum / static_cast<double>(std::max<int64_t>(summary.items, 1));
      progress.items_per_s =
          static_cast<double>(summary.items) / std::max(wall_seconds() - epoch_wall, 1e-9);
      progress.learning_rate = lr;
      progress.elapsed_s = prior_wall_s_ + wall_seconds() - wall_begin_;
      progress.cpu_s = prior_cpu_s_ + process_cpu_seconds() - cpu_begin_;
      const bool out_of_time = options_.time_budget_s > 0 && spent_s() >= options_.time_budget_s;
      const bool last = b + 1 == batches || out_of_time;
      if (hooks.on_progress &&
          (last || (options_.progress_every > 0 && progress.batch % options_.progress_every == 0)))
        hooks.on_progress(progress);
      if (out_of_time && b + 1 < batches) summary.complete = false;
      if (out_of_time) {
        result.stopped_by_budget = true;
        stop = true;
        break;
      }
      if (b + 1 < batches && interrupted()) {
        summary.complete = false;
        result.interrupted = true;
        stop = true;
        break;
      }
    }
    summary.step = step_;
    summary.train_loss = progress.loss;
    summary.seconds = wall_seconds() - epoch_wall;
    summary.cpu_seconds = process_cpu_seconds() - epoch_cpu;
    summary.items_per_s = static_cast<double>(summary.items) / std::max(summary.seconds, 1e-9);
    result.final_loss = summary.train_loss;
    if (!summary.complete) break;
    epoch_ = epoch;
    double monitored = std::numeric_limits<double>::quiet_NaN();
    if (hooks.evaluate) {
      monitored = hooks.evaluate(summary);
      model_.train();
    }
    bool is_best = false;
    if (!std::isnan(monitored)) {
      is_best = std::isnan(best_) || (options_.maximize ? monitored > best_ : monitored < best_);
      if (is_best) {
        best_ = monitored;
        best_epoch_ = epoch;
        bad_epochs_ = 0;
      } else {
        ++bad_epochs_;
      }
      if (options_.patience > 0 && bad_epochs_ >= options_.patience) {
        result.stopped_early = true;
        stop = true;
      }
    }
    if (hooks.end_epoch) hooks.end_epoch(summary, monitored, is_best);
  }
  result.steps = step_;
  result.epochs_completed = epoch_;
  result.seconds = wall_seconds() - wall_begin_;
  result.cpu_seconds = process_cpu_seconds() - cpu_begin_;
  result.best = best_;
  result.best_epoch = best_epoch_;
  return result;
}

nlohmann::json TrainingLoop::state_json() const {
  nlohmann::json j;
  j["epoch"] = epoch_;
  j["step"] = step_;
  j["total_steps"] = total_steps_;
  j["optimizer"] = options_.optimizer.kind;
  j["schedule"] = options_.schedule.kind;
  j["ema"] = ema_.has_value();
  j["best"] = std::isnan(best_) ? nlohmann::json() : nlohmann::json(best_);
  j["best_epoch"] = best_epoch_;
  j["bad_epochs"] = bad_epochs_;
  j["wall_s"] = prior_wall_s_ + (wall_begin_ > 0 ? wall_seconds() - wall_begin_ : 0.0);
  j["cpu_s"] = prior_cpu_s_ + (cpu_begin_ > 0 ? process_cpu_seconds() - cpu_begin_ : 0.0);
  j["rng"] = "torch seeded per epoch: seed + 1000003 * (epoch - 1)";
  return j;
}

std::map<std::string, torch::Tensor> TrainingLoop::state_tensors() const {
  std::map<std::string, torch::Tensor> out;
  for (auto& [name, t] : optimizer_.state())
    out["optimizer/" + name] = t;
  if (ema_)
    for (auto& [name, t] : ema_->state())
      out["ema/" + name] = t;
  return out;
}

namespace {

// The fields of a saved loop state, each checked for its type and range: the file is input
// (a state re-sealed after an edit passes the checksum), and a negative epoch, a step of 2.5
// or 1e19 would continue some other run, or overflow.
struct StateFields {
  const nlohmann::json& state;

  const nlohmann::json& at(const char* key) const {
    check(state.is_object(), "training state", "is ", excerpt(state.dump(), 60),
          "; expected a JSON object");
    auto it = state.find(key);
    check(it != state.end(), "training state", "has no '", key, "'");
    return *it;
  }
  std::string text(const char* key) const {
    const auto& v = at(key);
    check(v.is_string(), "training state", "'", key, "' is ", excerpt(v.dump(), 60),
          "; expected a string");
    return v.get<std::string>();
  }
  bool flag(const char* key) const {
    const auto& v = at(key);
    check(v.is_boolean(), "training state", "'", key, "' is ", excerpt(v.dump(), 60),
          "; expected true or false");
    return v.get<bool>();
  }
  int64_t whole(const char* key, int64_t lo, int64_t hi) const {
    const auto& v = at(key);
    const bool ok = (v.is_number_unsigned() && v.get<uint64_t>() <= static_cast<uint64_t>(hi)) ||
                    (v.is_number_integer() && !v.is_number_unsigned());
    check(ok && v.get<int64_t>() >= lo && v.get<int64_t>() <= hi, "training state", "'", key,
          "' is ", excerpt(v.dump(), 60), "; expected a whole number from ", lo, " to ", hi);
    return v.get<int64_t>();
  }
  double seconds(const char* key) const {
    const auto& v = at(key);  // a time budget continues from them
    check(v.is_number() && std::isfinite(v.get<double>()) && v.get<double>() >= 0,
          "training state", "'", key, "' is ", excerpt(v.dump(), 60),
          "; expected a number of seconds >= 0");
    return v.get<double>();
  }
};

}  // namespace

void TrainingLoop::restore(const nlohmann::json& state,
                           const std::map<std::string, torch::Tensor>& tensors) {
  try {
    restore_checked(state, tensors);
  } catch (const nlohmann::json::exception& e) {
    throw Error("training state", concat("malformed: ", e.what()));
  }
}

void TrainingLoop::restore_checked(const nlohmann::json& state,
                                   const std::map<std::string, torch::Tensor>& tensors) {
  const StateFields f{state};
  const auto optimizer = f.text("optimizer");
  check(optimizer == options_.optimizer.kind, "training state", "was saved with optimizer '",
        excerpt(optimizer, 100), "', this run uses '", options_.optimizer.kind, "'");
  check(f.flag("ema") == ema_.has_value(), "training state",
        "EMA on/off differs from this run's");
  constexpr int64_t kMany = 1'000'000'000'000'000;  // 1e15: more than any run takes
  const int64_t epoch = f.whole("epoch", 0, kMany);
  const int64_t step = f.whole("step", epoch, kMany);  // every epoch takes a step or more
  const int64_t total_steps = f.whole("total_steps", 1, kMany);
  // A caller that sets the schedule's length (image training: epochs x batches) takes that
  // many steps every epoch: the total and the completed epochs' steps are known. Otherwise the
  // loop knows only that no step is past the schedule's end.
  const int64_t planned = options_.schedule.total_steps;
  if (planned > 0) {
    check(total_steps == planned, "training state", "'total_steps' is ", total_steps,
          "; this run's schedule spans ", planned, " steps");
    check(total_steps % options_.epochs == 0, "training state", "'total_steps' is ", total_steps,
          ", not a multiple of the ", options_.epochs, " epochs");
    const int64_t per_epoch = total_steps / options_.epochs;
    check(step == epoch * per_epoch, "training state", "'step' is ", step, " and 'total_steps' ",
          total_steps, ": ", epoch, " completed epoch(s) of the ", options_.epochs, " take ",
          epoch * per_epoch, " steps");
  } else {
    check(step <= total_steps, "training state", "'step' is ", step, ", past 'total_steps' ",
          total_steps);
  }
  const auto& best_value = f.at("best");
  const bool no_best = best_value.is_null();
  check(best_value.is_null() || (best_value.is_number() && std::isfinite(best_value.get<double>())),
        "training state", "'best' is ", excerpt(best_value.dump(), 60),
        "; expected a number or null");
  const double best =
      no_best ? std::numeric_limits<double>::quiet_NaN() : best_value.get<double>();
  check(no_best || epoch >= 1, "training state", "'best' is ", best_value.dump(),
        " but no epoch is completed");
  const int64_t best_epoch = f.whole("best_epoch", no_best ? 0 : 1, no_best ? 0 : epoch);
  // Epochs without a better value since the best one (an epoch whose value was NaN counts
  // neither way); none before any value.
  const int64_t bad_epochs = f.whole("bad_epochs", 0, no_best ? 0 : epoch - best_epoch);
  const double wall_s = f.seconds("wall_s"), cpu_s = f.seconds("cpu_s");

  std::map<std::string, torch::Tensor> opt, ema;
  for (const auto& [name, t] : tensors) {
    if (name.rfind("optimizer/", 0) == 0) {
      opt[name.substr(10)] = t;
    } else if (name.rfind("ema/", 0) == 0) {
      ema[name.substr(4)] = t;
    } else {
      throw Error("training state", concat("unknown tensor '", excerpt(name, 100), "'"));
    }
  }
  optimizer_.load_state(opt);
  // A parameter steps with the loop or, without a gradient, less often: never more.
  for (const auto& [name, t] : optimizer_.state())
    if (name.size() > 5 && name.compare(name.size() - 5, 5, "/step") == 0)
      check(t.item<int64_t>() <= step, "optimizer state", "'", excerpt(name, 100), "' is ",
            t.item<int64_t>(), ", past the loop's step ", step);
  if (ema_) ema_->load_state(ema);
  epoch_ = epoch;
  step_ = step;
  total_steps_ = total_steps;
  best_ = best;
  best_epoch_ = best_epoch;
  bad_epochs_ = bad_epochs;
  prior_wall_s_ = wall_s;
  prior_cpu_s_ = cpu_s;
}

}  // namespace attnscope::pipeline
