// The one training loop (pipeline/training.h): schedules against their closed forms, the
// optimisers against PyTorch's own torch.optim on the same parameters and gradients, EMA and
// clipping against their formulas, resume equality, early stopping, budgets, and convergence
// on a tiny separable task.

#include <cmath>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "attnscope/atomic_file.h"
#include "pipeline/h5.h"
#include "pipeline/training.h"
#include "test_support.h"

namespace attnscope::pipeline {
namespace {

TEST(Schedule, WarmupThenCosineFollowsTheClosedForm) {
  ScheduleOptions o;
  o.kind = "cosine";
  o.base_lr = 0.1;
  o.warmup_steps = 4;
  o.total_steps = 14;
  o.min_lr = 0.001;
  for (int64_t s = 0; s < 4; ++s)
    EXPECT_NEAR(scheduled_learning_rate(o, s), 0.1 * (s + 1) / 4.0, 1e-15) << s;
  for (int64_t s = 4; s <= 20; ++s) {
    const double t = std::min(1.0, (s - 4) / 10.0);
    EXPECT_NEAR(scheduled_learning_rate(o, s), 0.001 + 0.099 * 0.5 * (1 + std::cos(M_PI * t)),
                1e-15)
        << s;
  }
  EXPECT_NEAR(scheduled_learning_rate(o, 9), 0.001 + 0.099 * 0.5, 1e-15);  // half way
}

TEST(Schedule, StepLinearConstantAndNoam) {
  ScheduleOptions step;
  step.kind = "step";
  step.base_lr = 0.01;
  step.step_every = 10;
  step.gamma = 0.1;
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(step, 0), 0.01);
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(step, 9), 0.01);
  EXPECT_NEAR(scheduled_learning_rate(step, 10), 0.001, 1e-15);
  EXPECT_NEAR(scheduled_learning_rate(step, 25), 0.0001, 1e-15);
  ScheduleOptions linear;
  linear.kind = "linear";
  linear.base_lr = 2.0;
  linear.total_steps = 8;
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(linear, 0), 2.0);
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(linear, 2), 1.5);
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(linear, 8), 0.0);
  ScheduleOptions constant;
  constant.base_lr = 0.3;
  constant.warmup_steps = 2;
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(constant, 0), 0.15);
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(constant, 1), 0.3);
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(constant, 100), 0.3);
  ScheduleOptions noam;
  noam.kind = "noam";
  noam.base_lr = 1.0;
  noam.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(noam, 3), 1.0);   // the peak at step == warmup
  EXPECT_DOUBLE_EQ(scheduled_learning_rate(noam, 15), 0.5);  // sqrt(4 / 16)
  ScheduleOptions bad;
  bad.kind = "exponential";
  EXPECT_NE(test::error_of([&] { check_schedule(bad); }).find("exponential"), std::string::npos);
}

// The parameters an optimiser test runs on: the weight's shape, the type of both parameters,
// and whether the weight (4-D) and its gradients are channels-last, as a convolution's are
// when a model runs channels-last.
struct OptimizerCase {
  std::vector<int64_t> weight_shape = {5, 3};
  torch::Dtype dtype = torch::kFloat64;
  bool channels_last = false;
  /// Gradients contiguous whatever the weight's layout (the one-pass kernel then declines).
  bool contiguous_grads = false;
  int threads = 0;  // at::set_num_threads for our side; 0 = as it is
};

// Runs `steps` steps of our optimiser and of torch.optim (Debian's python3-torch) on the same
// parameters, gradients and rates; returns the largest absolute difference of the parameters.
// `ours`, when given, receives our weight after the last step.
double max_difference_to_pytorch(const OptimizerOptions& options, const std::string& py_ctor,
                                 const OptimizerCase& c = {}, torch::Tensor* ours = nullptr) {
  test::TempDir dir;
  torch::manual_seed(7);
  const int steps = 6;
  const auto& shape = c.weight_shape;
  std::vector<int64_t> steps_shape = {steps};
  steps_shape.insert(steps_shape.end(), shape.begin(), shape.end());
  auto w0 = torch::randn(shape, torch::kFloat64).to(c.dtype);
  auto b0 = torch::randn({3}, torch::kFloat64).to(c.dtype);
  auto grads_w = torch::randn(steps_shape, torch::kFloat64).to(c.dtype);
  auto grads_b = torch::randn({steps, 3}, torch::kFloat64).to(c.dtype);
  const std::vector<double> lrs = {0.1, 0.05, 0.2, 0.01, 0.3, 0.07};
  {
    auto f = h5::File::create(dir / "in.h5");
    h5::write_tensor(f.id(), "w0", w0, f.path());
    h5::write_tensor(f.id(), "b0", b0, f.path());
    h5::write_tensor(f.id(), "gw", grads_w, f.path());
    h5::write_tensor(f.id(), "gb", grads_b, f.path());
    h5::write_tensor(f.id(), "lr", torch::tensor(lrs, torch::kFloat64), f.path());
  }
  const auto layout =
      c.channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
  auto w = w0.contiguous(layout).requires_grad_(true);
  auto b = b0.clone().requires_grad_(true);
  const int threads_before = at::get_num_threads();
  if (c.threads > 0) at::set_num_threads(c.threads);
  Optimizer opt({{"w", w}, {"b", b}}, options);
  for (int s = 0; s < steps; ++s) {
    opt.zero_grad();
    w.mutable_grad() =
        grads_w[s].contiguous(c.contiguous_grads ? torch::MemoryFormat::Contiguous : layout);
    // The bias gets no gradient at step 2: PyTorch skips it there (its own step count).
    if (s != 2) b.mutable_grad() = grads_b[s].clone();
    opt.step(lrs[static_cast<std::size_t>(s)]);
  }
  at::set_num_threads(threads_before);
  if (ours) *ours = w.detach().clone();
  const std::string script = R"(
import sys, h5py, torch
f = h5py.File(sys.argv[1], 'r')
w = torch.tensor(f['w0'][()], requires_grad=True)
b = torch.tensor(f['b0'][()], requires_grad=True)
opt = )" + py_ctor + R"(
for s in range(f['gw'].shape[0]):
    for g in opt.param_groups: g['lr'] = float(f['lr'][s])
    opt.zero_grad(set_to_none=True)
    w.grad = torch.tensor(f['gw'][s])
    if s != 2: b.grad = torch.tensor(f['gb'][s])
    opt.step()
o = h5py.File(sys.argv[2], 'w')
o['w'] = w.detach().numpy(); o['b'] = b.detach().numpy()
)";
  write_file_atomically(dir / "opt.py", script);
  const auto r = test::run_process(test::python() + " " + (dir / "opt.py") + " " + (dir / "in.h5") +
                                   " " + (dir / "out.h5"));
  EXPECT_EQ(r.status, 0) << r.output;
  if (r.status != 0) return 1e9;
  auto f = h5::File::open(dir / "out.h5");
  const auto pw = h5::read_tensor(f.id(), "w", f.path());
  const auto pb = h5::read_tensor(f.id(), "b", f.path());
  EXPECT_EQ(pw.scalar_type(), c.dtype);
  return std::max(
      (pw.to(torch::kFloat64) - w.detach().to(torch::kFloat64)).abs().max().item<double>(),
      (pb.to(torch::kFloat64) - b.detach().to(torch::kFloat64)).abs().max().item<double>());
}

TEST(Optimizer, SgdNesterovWithWeightDecayMatchesTorchOptim) {
  OptimizerOptions o;
  o.kind = "sgd";
  o.momentum = 0.9;
  o.nesterov = true;
  o.weight_decay = 1e-2;
  EXPECT_LT(
      max_difference_to_pytorch(o,
                                "torch.optim.SGD([w, b], lr=0.1, momentum=0.9, nesterov=True, "
                                "weight_decay=1e-2)"),
      1e-12);
}

TEST(Optimizer, SgdPlainMomentumMatchesTorchOptim) {
  OptimizerOptions o;
  o.kind = "sgd";
  o.momentum = 0.8;
  o.dampening = 0.1;
  EXPECT_LT(
      max_difference_to_pytorch(o, "torch.optim.SGD([w, b], lr=0.1, momentum=0.8, dampening=0.1)"),
      1e-12);
}

TEST(Optimizer, AdamWMatchesTorchOptim) {
  OptimizerOptions o;
  o.kind = "adamw";
  o.weight_decay = 0.05;
  o.beta1 = 0.85;
  o.beta2 = 0.99;
  o.eps = 1e-6;
  EXPECT_LT(max_difference_to_pytorch(o,
                                      "torch.optim.AdamW([w, b], lr=0.1, betas=(0.85, 0.99), "
                                      "eps=1e-6, weight_decay=0.05)"),
            1e-12);
}

TEST(Optimizer, AdamWithL2MatchesTorchOptim) {
  OptimizerOptions o;
  o.kind = "adam";
  o.weight_decay = 1e-3;
  o.beta2 = 0.98;
  o.eps = 1e-9;
  EXPECT_LT(max_difference_to_pytorch(o,
                                      "torch.optim.Adam([w, b], lr=0.1, betas=(0.9, 0.98), "
                                      "eps=1e-9, weight_decay=1e-3)"),
            1e-12);
}

// Float32 parameters large enough for the one-pass kernel to split them between threads
// (pipeline/optimizer_kernels.h), a channels-last convolution weight among them: the same
// values as torch.optim's operations to within float32 rounding (ATen may fuse a multiply-add
// where the kernel rounds twice; parameters are about 1, Adam's steps about lr), and the
// same bits whatever the number of threads.
TEST(Optimizer, AdamWOnLargeFloat32ParametersMatchesTorchOptimAtAnyThreadCount) {
  OptimizerOptions o;
  o.kind = "adamw";
  o.weight_decay = 0.05;
  const std::string ctor = "torch.optim.AdamW([w, b], lr=0.1, weight_decay=0.05)";
  for (const bool channels_last : {false, true}) {
    OptimizerCase c;
    c.dtype = torch::kFloat32;
    c.channels_last = channels_last;
    c.weight_shape = channels_last ? std::vector<int64_t>{64, 32, 3, 3}  // 18,432 elements
                                   : std::vector<int64_t>{300, 257};     // 77,100 elements
    torch::Tensor two_threads, one_thread;
    c.threads = 2;
    const double difference = max_difference_to_pytorch(o, ctor, c, &two_threads);
    EXPECT_LT(difference, 1e-5) << channels_last;
    // The figure docs/performance.md quotes.
    std::cout << "largest difference to torch.optim (channels_last " << channels_last
              << "): " << difference << "\n";
    c.threads = 1;
    EXPECT_LT(max_difference_to_pytorch(o, ctor, c, &one_thread), 1e-5) << channels_last;
    EXPECT_TRUE(torch::equal(two_threads, one_thread)) << channels_last;
  }
}

TEST(Optimizer, AdamWithL2OnFloat32ParametersMatchesTorchOptim) {
  OptimizerOptions o;
  o.kind = "adam";
  o.weight_decay = 1e-2;
  OptimizerCase c;
  c.dtype = torch::kFloat32;
  c.weight_shape = {200, 100};
  EXPECT_LT(max_difference_to_pytorch(o, "torch.optim.Adam([w, b], lr=0.1, weight_decay=1e-2)", c),
            1e-5);
}

// A gradient laid out unlike its weight (a channels-last weight, a contiguous gradient) takes
// ATen's operations instead of the one-pass kernel: the same values as torch.optim.
TEST(Optimizer, AdamWWithAGradientLaidOutUnlikeItsWeightMatchesTorchOptim) {
  OptimizerOptions o;
  o.kind = "adamw";
  o.weight_decay = 0.05;
  OptimizerCase c;
  c.dtype = torch::kFloat32;
  c.channels_last = true;
  c.contiguous_grads = true;
  c.weight_shape = {16, 8, 3, 3};
  EXPECT_LT(max_difference_to_pytorch(o, "torch.optim.AdamW([w, b], lr=0.1, weight_decay=0.05)", c),
            1e-5);
}

// A step changes the parameter and the moments in place: their version counters move, as
// ATen's in-place operations move them (autograd and the BatchNorm fold, models/vision/
// cnn_common.h, rely on them), on the one-pass kernel's path and on ATen's.
TEST(Optimizer, AStepMovesTheVersionCountersOfWhatItWrites) {
  for (const bool contiguous_grad : {false, true}) {
    auto w = torch::randn({8, 4, 3, 3}).contiguous(torch::MemoryFormat::ChannelsLast);
    w.requires_grad_(true);
    OptimizerOptions o;
    o.kind = "adamw";
    Optimizer opt({{"w", w}}, o);
    for (int s = 0; s < 2; ++s) {
      const auto g = torch::randn({8, 4, 3, 3});
      w.mutable_grad() = contiguous_grad ? g : g.contiguous(torch::MemoryFormat::ChannelsLast);
      const auto before = w._version();
      const auto state = opt.state();
      std::map<std::string, int64_t> moments;
      if (s > 0) {
        for (const auto& [name, t] : state)
          if (t.dim() == 4) moments[name] = t._version();
      }
      opt.step(0.1);
      EXPECT_GT(w._version(), before) << contiguous_grad;
      for (const auto& [name, t] : opt.state())
        if (moments.count(name)) {
          EXPECT_GT(t._version(), moments[name]) << name;
        }
      if (s > 0) {
        EXPECT_EQ(moments.size(), 2u);
      }
    }
  }
}

// The state goes through a checkpoint as contiguous tensors; a channels-last weight's moments
// get its layout back, so the resumed steps take the same path and give the same bits.
TEST(Optimizer, StateRoundTripsAndRefusesAnotherModel) {
  const auto cl = torch::MemoryFormat::ChannelsLast;
  auto w = torch::randn({32, 16, 3, 3}).contiguous(cl).requires_grad_(true);
  OptimizerOptions o;
  o.kind = "adamw";
  o.weight_decay = 0.01;
  Optimizer a({{"w", w}}, o);
  w.mutable_grad() = torch::randn({32, 16, 3, 3}).contiguous(cl);
  a.step(0.1);
  auto w2 = w.detach().clone().requires_grad_(true);
  Optimizer b({{"w", w2}}, o);
  auto saved = a.state();
  for (auto& [name, t] : saved)
    t = t.contiguous();  // as h5::read_tensor gives them back
  b.load_state(saved);
  for (int s = 0; s < 3; ++s) {
    const auto g = torch::randn({32, 16, 3, 3}).contiguous(cl);
    w.mutable_grad() = g.clone();
    w2.mutable_grad() = g.clone();
    a.step(0.1);
    b.step(0.1);
  }
  EXPECT_TRUE(torch::equal(w.detach(), w2.detach()));
  for (const auto& [name, t] : b.state()) {
    if (t.dim() == 4) {
      EXPECT_TRUE(t.is_contiguous(cl)) << name;
    }
  }
  auto other = torch::randn({5}).requires_grad_(true);
  Optimizer c({{"w", other}}, o);
  EXPECT_NE(test::error_of([&] { c.load_state(a.state()); }).find("shape"), std::string::npos);
  Optimizer d({{"v", other}}, o);
  EXPECT_NE(test::error_of([&] { d.load_state(a.state()); }).find("'v'"), std::string::npos);
  // A float64 moment finite in the file and infinite in the float32 weight's type (the next
  // step's loss was blamed on the learning rate).
  auto wide = a.state();
  int widened = 0;
  for (auto& [name, t] : wide)
    if (name.size() > 8 && name.compare(name.size() - 8, 8, "/exp_avg") == 0) {
      t = t.to(torch::kDouble).contiguous();
      t.view(-1)[0] = 1e300;
      ++widened;
    }
  ASSERT_EQ(widened, 1);
  Optimizer e({{"w", w2}}, o);
  EXPECT_NE(test::error_of([&] {
              e.load_state(wide);
            }).find("tensor 'w/exp_avg' holds NaN or inf as Float"),
            std::string::npos)
      << test::error_of([&] { e.load_state(wide); });
}

TEST(WeightEma, FollowsItsUpdateFormulaAndSwaps) {
  torch::nn::Linear lin(2, 1);
  torch::NoGradGuard no_grad;
  lin->weight.fill_(1.0);
  lin->bias.fill_(0.0);
  WeightEma ema(*lin, 0.9);
  // ema_k = 0.9 ema_{k-1} + 0.1 value_k with values 2, 3 from an average of 1.
  lin->weight.fill_(2.0);
  ema.update();
  lin->weight.fill_(3.0);
  ema.update();
  const double expected = 0.9 * (0.9 * 1 + 0.1 * 2) + 0.1 * 3;
  EXPECT_NEAR(ema.state().at("weight")[0][0].item<double>(), expected, 1e-6);
  ema.swap();
  EXPECT_NEAR(lin->weight[0][1].item<double>(), expected, 1e-6);
  ema.swap();
  EXPECT_DOUBLE_EQ(lin->weight[0][1].item<double>(), 3.0);
  // A float64 average finite in the file and infinite in the float32 weight's type.
  auto wide = ema.state();
  wide["weight"] = wide["weight"].to(torch::kDouble);
  wide["weight"][0][0] = 1e300;
  EXPECT_EQ(test::error_of([&] { ema.load_state(wide); }),
            "ema state: tensor 'weight' holds NaN or inf as Float");
  wide["weight"][0][0] = 1e30;  // within float's range
  EXPECT_EQ(test::error_of([&] { ema.load_state(wide); }), "");
  // A float stored for an integer buffer converted to INT64_MIN without a word.
  torch::nn::BatchNorm1d bn(2);
  WeightEma bn_ema(*bn, 0.9);
  auto floated = bn_ema.state();
  ASSERT_EQ(floated.count("num_batches_tracked"), 1u);
  floated["num_batches_tracked"] = torch::tensor(1e30);
  EXPECT_EQ(
      test::error_of([&] { bn_ema.load_state(floated); }),
      "ema state: tensor 'num_batches_tracked' is stored as Float where the model holds Long");
  EXPECT_EQ(test::error_of([&] { bn_ema.load_state(bn_ema.state()); }), "");
}

// A tiny model: y = x·w (one weight vector), squared error.
struct Tiny : torch::nn::Module {
  Tiny() { w = register_parameter("w", torch::zeros({3}, torch::kFloat64)); }
  torch::Tensor w;
};

TEST(TrainingLoop, ClippingScalesTheGradientToTheNorm) {
  Tiny model;
  TrainingOptions o;
  o.optimizer.kind = "sgd";
  o.optimizer.momentum = 0;
  o.clip_norm = 1.0;
  TrainingLoop loop(model, o);
  model.w.mutable_grad() = torch::tensor({3.0, 4.0, 0.0}, torch::kFloat64);  // norm 5
  const double norm = loop.apply_step(0.5);
  EXPECT_NEAR(norm, 5.0, 1e-12);
  // p = 0 - 0.5 · g · (1 / 5)   (torch's clip multiplies by max_norm / (norm + 1e-6))
  const double scale = 1.0 / (5.0 + 1e-6);
  EXPECT_NEAR(model.w[0].item<double>(), -0.5 * 3 * scale, 1e-12);
  EXPECT_NEAR(model.w[1].item<double>(), -0.5 * 4 * scale, 1e-12);
}

// Hooks fitting w to y = x·[1, -2, 0.5] on 8 fixed points, 2 batches per epoch.
struct Regression {
  torch::Tensor x = torch::tensor({1.0,  0.0, 0.0, 0.0, 1.0, 0.0,  0.0, 0.0, 1.0, 1.0, 1.0,  1.0,
                                   -1.0, 2.0, 0.0, 0.5, 0.5, -1.0, 2.0, 0.0, 1.0, 0.0, -1.0, 3.0},
                                  torch::kFloat64)
                        .reshape({8, 3});
  torch::Tensor y = torch::mv(x, torch::tensor({1.0, -2.0, 0.5}, torch::kFloat64));
  TrainingHooks hooks(Tiny& model) {
    TrainingHooks h;
    h.start_epoch = [](int64_t) { return int64_t{2}; };
    h.train_batch = [this, &model](int64_t, int64_t b) -> std::optional<BatchLoss> {
      auto xb = x.slice(0, b * 4, b * 4 + 4), yb = y.slice(0, b * 4, b * 4 + 4);
      // Dropout-like noise from the torch RNG, so that the per-epoch seeding matters.
      auto noise = 1e-3 * torch::randn({4}, torch::kFloat64);
      auto loss = (torch::mv(xb, model.w) - yb + noise).pow(2).mean();
      loss.backward();
      return BatchLoss{loss.item<double>() * 4, 4};
    };
    return h;
  }
};

TEST(TrainingLoop, ConvergesOnATinyRegression) {
  Tiny model;
  Regression task;
  TrainingOptions o;
  o.epochs = 400;
  o.optimizer.kind = "sgd";
  o.optimizer.momentum = 0.9;
  o.optimizer.nesterov = true;
  o.schedule.base_lr = 0.05;
  auto result = TrainingLoop(model, o).run(task.hooks(model));
  EXPECT_EQ(result.steps, 800);
  EXPECT_LT(result.final_loss, 1e-3);
  EXPECT_NEAR(model.w[0].item<double>(), 1.0, 0.05);
  EXPECT_NEAR(model.w[1].item<double>(), -2.0, 0.05);
  EXPECT_NEAR(model.w[2].item<double>(), 0.5, 0.05);
}

// A loss that is no longer finite stops the run at that batch, before the step, naming where;
// a learning rate of 1e6 on the regression overflows the squared error (float64) long before
// the weights, so the weights the error leaves are finite.
TEST(TrainingLoop, ALossThatIsNotFiniteStopsTheRunBeforeTheStep) {
  {
    Tiny model;
    Regression task;
    TrainingOptions o;
    o.epochs = 3;
    o.optimizer.kind = "sgd";
    o.optimizer.momentum = 0;
    o.schedule.base_lr = 0.01;
    auto hooks = task.hooks(model);
    const auto train = hooks.train_batch;
    torch::Tensor before;
    hooks.train_batch = [&](int64_t e, int64_t b) -> std::optional<BatchLoss> {
      auto loss = train(e, b);
      if (e == 2 && b == 1) {
        before = model.w.detach().clone();
        loss->loss_sum = std::nan("");
      }
      return loss;
    };
    try {
      TrainingLoop(model, o).run(hooks);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()),
                "training: the loss became NaN at epoch 2, batch 2 of 2 (learning rate 0.01): "
                "the run diverged; lower the learning rate (the last complete epoch is 1)");
    }
    ASSERT_TRUE(before.defined());
    EXPECT_TRUE(torch::equal(before, model.w));  // no step taken with it
  }
  Tiny model;
  Regression task;
  TrainingOptions o;
  o.epochs = 1000;
  o.optimizer.kind = "sgd";
  o.optimizer.momentum = 0;
  o.schedule.base_lr = 1e6;
  try {
    TrainingLoop(model, o).run(task.hooks(model));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("training: the loss became "), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("the run diverged"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(torch::isfinite(model.w).all().item<bool>()) << model.w;
}

TEST(TrainingLoop, ResumedAfterAnEpochEqualsAnUninterruptedRun) {
  Regression task;
  TrainingOptions o;
  o.epochs = 6;
  o.optimizer.kind = "adamw";
  o.optimizer.weight_decay = 0.01;
  o.schedule.kind = "cosine";
  o.schedule.base_lr = 0.1;
  o.schedule.warmup_steps = 3;
  o.ema_decay = 0.9;
  o.seed = 11;
  Tiny whole;
  TrainingLoop full(whole, o);
  full.run(task.hooks(whole));

  // A run saving its state after epoch 4 (as last.h5 does), then a fresh model and loop
  // restored from it (as --resume does).
  Tiny part;
  nlohmann::json state;
  std::map<std::string, torch::Tensor> tensors;
  torch::Tensor weights;
  {
    TrainingLoop loop(part, o);
    auto hooks = task.hooks(part);
    hooks.end_epoch = [&](const EpochSummary& s, double, bool) {
      if (s.epoch != 4) return;
      state = loop.state_json();
      tensors.clear();
      for (auto& [k, v] : loop.state_tensors())
        tensors[k] = v.clone();
      weights = part.w.detach().clone();
    };
    loop.run(hooks);
  }
  EXPECT_TRUE(torch::equal(part.w, whole.w));  // the same run, not interrupted
  Tiny resumed;
  {
    torch::NoGradGuard no_grad;
    resumed.w.copy_(weights);
  }
  TrainingLoop loop(resumed, o);
  loop.restore(state, tensors);
  EXPECT_EQ(loop.epochs_completed(), 4);
  const auto r = loop.run(task.hooks(resumed));
  EXPECT_EQ(r.steps, 12);
  EXPECT_TRUE(torch::equal(resumed.w, whole.w)) << resumed.w << whole.w;
  EXPECT_TRUE(torch::equal(loop.ema()->state().at("w"), full.ema()->state().at("w")));
}

TEST(TrainingLoop, EarlyStoppingAfterPatienceEpochsWithoutImprovement) {
  Tiny model;
  Regression task;
  TrainingOptions o;
  o.epochs = 50;
  o.patience = 3;
  o.optimizer.kind = "sgd";
  o.schedule.base_lr = 0.01;
  auto hooks = task.hooks(model);
  const std::vector<double> auc = {0.6, 0.7, 0.65, 0.7, 0.69, 0.71, 0.5};
  std::vector<int64_t> best_epochs;
  hooks.evaluate = [&](const EpochSummary& s) {
    return auc[static_cast<std::size_t>(s.epoch - 1)];
  };
  hooks.end_epoch = [&](const EpochSummary& s, double, bool is_best) {
    if (is_best) best_epochs.push_back(s.epoch);
  };
  TrainingLoop loop(model, o);
  const auto r = loop.run(hooks);
  // Best at 1, 2; epochs 3, 4, 5 do not beat 0.7 (a tie is no improvement): stop after 5.
  EXPECT_TRUE(r.stopped_early);
  EXPECT_EQ(r.epochs_completed, 5);
  EXPECT_EQ(best_epochs, (std::vector<int64_t>{1, 2}));
  EXPECT_DOUBLE_EQ(r.best, 0.7);
  EXPECT_EQ(r.best_epoch, 2);
  // Restored from its state (what --resume does), the stopped run is finished: no epoch more
  // (each resume trained one).
  const auto weights = model.w.detach().clone();
  TrainingLoop again(model, o);
  again.restore(loop.state_json(), loop.state_tensors());
  const auto r2 = again.run(hooks);
  EXPECT_TRUE(r2.stopped_early);
  EXPECT_EQ(r2.epochs_completed, 5);
  EXPECT_EQ(r2.steps, r.steps);
  EXPECT_EQ(r2.best_epoch, 2);
  EXPECT_TRUE(torch::equal(model.w, weights));
}

// A resumed run whose earlier processes spent the time budget trains no batch of an epoch it
// could not keep; one with budget left trains on (a fresh run takes its first batch whatever
// the budget: TimeBudgetStopsAfterTheFirstBatchAndHookRunsBeforeTheStep).
TEST(TrainingLoop, ARestoredRunWhoseBudgetIsSpentTrainsNoBatch) {
  Regression task;
  TrainingOptions o;
  o.epochs = 3;
  o.optimizer.kind = "sgd";
  o.schedule.base_lr = 0.01;
  o.time_budget_s = 3600;
  Tiny model;
  auto hooks = task.hooks(model);
  int ended = 0;
  hooks.end_epoch = [&](const EpochSummary&, double, bool) { ++ended; };
  hooks.stop_requested = [&] { return ended >= 1; };  // stop once epoch 1 is saved
  TrainingLoop loop(model, o);
  ASSERT_EQ(loop.run(hooks).epochs_completed, 1);
  hooks.stop_requested = nullptr;
  for (const double wall_s : {3600.0, 5000.0, 10.0}) {
    auto state = loop.state_json();
    state["wall_s"] = wall_s;
    Tiny resumed;
    resumed.w.data().copy_(model.w.detach());
    int batches = 0;
    auto counting = task.hooks(resumed);
    const auto train_batch = counting.train_batch;
    counting.train_batch = [&](int64_t e, int64_t b) {
      ++batches;
      return train_batch(e, b);
    };
    TrainingLoop again(resumed, o);
    again.restore(state, loop.state_tensors());
    const auto r = again.run(counting);
    if (wall_s >= 3600) {
      EXPECT_TRUE(r.stopped_by_budget) << wall_s;
      EXPECT_EQ(batches, 0) << wall_s;
      EXPECT_EQ(r.epochs_completed, 1) << wall_s;
      EXPECT_TRUE(torch::equal(resumed.w, model.w)) << wall_s;
    } else {
      EXPECT_FALSE(r.stopped_by_budget) << wall_s;
      EXPECT_EQ(batches, 4) << wall_s;  // epochs 2 and 3, 2 batches each
      EXPECT_EQ(r.epochs_completed, 3) << wall_s;
    }
  }
}

// A saved state is input: a file re-sealed after an edit passes its checksum. Each field out of
// what a run can save is refused naming it, and the state as saved still restores.
TEST(TrainingLoop, RestoreRefusesStatesNoRunCouldHaveSaved) {
  Regression task;
  TrainingOptions o;
  o.epochs = 3;
  o.schedule.total_steps = 6;  // as image training sets it: 3 epochs of 2 batches
  o.optimizer.kind = "sgd";
  o.optimizer.momentum = 0.9;
  o.schedule.base_lr = 0.01;
  auto values = std::vector<double>{0.6, 0.5, 0.4};
  Tiny model;
  auto hooks = task.hooks(model);
  hooks.evaluate = [&](const EpochSummary& s) { return values[s.epoch - 1]; };
  TrainingLoop loop(model, o);
  loop.run(hooks);
  const auto state = loop.state_json();
  const auto tensors = loop.state_tensors();
  ASSERT_EQ(state.at("epoch"), 3);
  ASSERT_EQ(state.at("best_epoch"), 1);
  ASSERT_EQ(state.at("bad_epochs"), 2);

  const auto refused = [&](const nlohmann::json& edited,
                           const std::map<std::string, torch::Tensor>& t) {
    Tiny fresh;
    TrainingLoop again(fresh, o);
    return test::error_of([&] { again.restore(edited, t); });
  };
  EXPECT_EQ(refused(state, tensors), "");
  const std::vector<std::pair<std::string, nlohmann::json>> edits = {
      {"epoch", -1},
      {"epoch", 2.5},
      {"step", 1e19},
      {"step", 2},
      {"total_steps", 0},
      {"bad_epochs", -5},
      {"bad_epochs", 3},
      {"best_epoch", 4},
      {"best", "x"},
      {"optimizer", 7},
      {"ema", "no"},
      {"wall_s", -1},
      {"step", nlohmann::json::parse("18446744073709551615")},
      // 2 steps an epoch: 3 epochs are 6 steps, and the schedule spans 3 epochs' steps.
      {"step", 5},
      {"step", 7},
      {"total_steps", 7},
      {"total_steps", 9}};
  for (const auto& [key, value] : edits) {
    auto edited = state;
    edited[key] = value;
    const auto e = refused(edited, tensors);
    EXPECT_NE(e.find("'" + key + "'"), std::string::npos) << key << " = " << value << ": " << e;
  }
  for (const char* key : {"wall_s", "cpu_s"}) {  // a time budget continues from them
    auto no_clock = state;
    no_clock.erase(key);
    EXPECT_NE(refused(no_clock, tensors).find(concat("has no '", key, "'")), std::string::npos);
  }
  auto missing = state;
  missing.erase("step");
  EXPECT_NE(refused(missing, tensors).find("has no 'step'"), std::string::npos);
  EXPECT_NE(refused(nlohmann::json::object(), tensors).find("has no 'optimizer'"),
            std::string::npos);
  EXPECT_NE(refused(nlohmann::json::array(), tensors).find("expected a JSON object"),
            std::string::npos);
  // A best value has its epoch; with none yet (every value NaN so far, as a state restores)
  // there is no best epoch and no epoch without improvement either.
  auto zero = state;
  zero["best_epoch"] = 0;
  EXPECT_NE(refused(zero, tensors).find("'best_epoch'"), std::string::npos);
  auto unset = state;
  unset["best"] = nullptr;
  EXPECT_NE(refused(unset, tensors).find("'best_epoch'"), std::string::npos);
  unset["best_epoch"] = 0;
  EXPECT_NE(refused(unset, tensors).find("'bad_epochs'"), std::string::npos);
  unset["bad_epochs"] = 0;
  EXPECT_EQ(refused(unset, tensors), "");
  // A parameter that took steps keeps its momentum (SGD) or its moments (Adam).
  auto no_momentum = tensors;
  ASSERT_EQ(no_momentum.erase("optimizer/w/momentum_buffer"), 1u);
  EXPECT_NE(refused(state, no_momentum).find("no momentum_buffer"), std::string::npos);
  auto adam = o;
  adam.optimizer.kind = "adamw";
  adam.ema_decay = 0.9;
  Tiny adam_model;
  auto adam_hooks = task.hooks(adam_model);
  TrainingLoop adam_loop(adam_model, adam);
  adam_loop.run(adam_hooks);
  const auto adam_state = adam_loop.state_tensors();
  const auto adam_refused = [&](const std::map<std::string, torch::Tensor>& t) {
    Tiny m;
    TrainingLoop l(m, adam);
    return test::error_of([&] { l.restore(adam_loop.state_json(), t); });
  };
  EXPECT_EQ(adam_refused(adam_state), "");
  // A negative mean of squares (a NaN square root at the next step) and a parameter's step
  // count past the loop's.
  auto negative = adam_state;
  negative["optimizer/w/exp_avg_sq"] = -negative["optimizer/w/exp_avg_sq"] - 1;
  EXPECT_NE(adam_refused(negative).find("'w/exp_avg_sq' holds negative values"), std::string::npos);
  auto ahead = adam_state;
  ahead["optimizer/w/step"] = torch::tensor(int64_t{1000000000});
  EXPECT_NE(adam_refused(ahead).find("'w/step' is 1000000000, past the loop's step 6"),
            std::string::npos);
  auto nan_average = adam_state;
  nan_average["ema/w"] = torch::full_like(nan_average["ema/w"], std::nan(""));
  EXPECT_NE(adam_refused(nan_average).find("ema state: tensor 'w' holds NaN or inf"),
            std::string::npos);
  auto moments = adam_state;
  ASSERT_EQ(moments.erase("optimizer/w/exp_avg"), 1u);
  ASSERT_EQ(moments.erase("optimizer/w/exp_avg_sq"), 1u);
  EXPECT_NE(adam_refused(moments).find("no exp_avg and exp_avg_sq"), std::string::npos);
}

TEST(TrainingLoop, TimeBudgetStopsAfterTheFirstBatchAndHookRunsBeforeTheStep) {
  Tiny model;
  Regression task;
  TrainingOptions o;
  o.epochs = 5;
  o.time_budget_s = 1e-12;
  o.budget_clock = "cpu";
  o.optimizer.kind = "sgd";
  o.optimizer.momentum = 0;
  auto hooks = task.hooks(model);
  int calls = 0;
  // The all-reduce hook sees the gradients before the step: zeroing them leaves w unchanged.
  hooks.after_backward = [&] {
    ++calls;
    model.w.mutable_grad().zero_();
  };
  const auto r = TrainingLoop(model, o).run(hooks);
  EXPECT_TRUE(r.stopped_by_budget);
  EXPECT_EQ(r.steps, 1);
  EXPECT_EQ(r.epochs_completed, 0);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(torch::equal(model.w, torch::zeros({3}, torch::kFloat64)));
}

// The epochs a run evaluated and ended (end_epoch), in order; each is evaluated at 0.5.
struct EpochLog {
  std::vector<int64_t> evaluated, ended;
  void attach(TrainingHooks& hooks) {
    hooks.evaluate = [this](const EpochSummary& s) {
      evaluated.push_back(s.epoch);
      return 0.5;
    };
    hooks.end_epoch = [this](const EpochSummary& s, double, bool) { ended.push_back(s.epoch); };
  }
};

// A stop request (a signal) after the first batch of epoch 3 ends the run there: epoch 3 is not
// completed (no evaluate, no end_epoch), and a request during the last batch of an epoch lets
// that epoch complete and stops before the next one.
TEST(TrainingLoop, StopRequestEndsTheRunWithoutKeepingThePartialEpoch) {
  Regression task;
  TrainingOptions o;
  o.epochs = 5;
  o.optimizer.kind = "sgd";
  for (const int64_t stop_at_batch : {0, 1}) {
    Tiny model;
    auto hooks = task.hooks(model);
    int64_t epoch_now = 0, batch_now = -1;
    const auto train = hooks.train_batch;
    hooks.train_batch = [&](int64_t e, int64_t b) {
      epoch_now = e;
      batch_now = b;
      return train(e, b);
    };
    EpochLog log;
    log.attach(hooks);
    int polls = 0;
    hooks.stop_requested = [&] {
      ++polls;
      return epoch_now == 3 && batch_now == stop_at_batch;
    };
    const auto r = TrainingLoop(model, o).run(hooks);
    EXPECT_TRUE(r.interrupted);
    EXPECT_FALSE(r.stopped_by_budget);
    // Two batches per epoch: stopped after batch 0 of epoch 3, or after epoch 3 completed.
    const std::vector<int64_t> done =
        stop_at_batch == 0 ? std::vector<int64_t>{1, 2} : std::vector<int64_t>{1, 2, 3};
    EXPECT_EQ(r.epochs_completed, static_cast<int64_t>(done.size()));
    EXPECT_EQ(log.evaluated, done);
    EXPECT_EQ(log.ended, done);
    EXPECT_EQ(r.steps, stop_at_batch == 0 ? 5 : 6);
    EXPECT_GT(polls, 0);
  }
  // Never asked: the run is not interrupted.
  Tiny model;
  auto hooks = task.hooks(model);
  hooks.stop_requested = [] { return false; };
  const auto r = TrainingLoop(model, o).run(hooks);
  EXPECT_FALSE(r.interrupted);
  EXPECT_EQ(r.epochs_completed, 5);
}

// A batch that train_batch reports stopped while loading (the loader read the stop request
// between images) makes no step and ends the epoch incomplete, even when it is the epoch's
// last batch, whereas a request during the last step lets that epoch complete (above).
TEST(TrainingLoop, ABatchStoppedWhileLoadingEndsTheEpochIncomplete) {
  Regression task;
  TrainingOptions o;
  o.epochs = 4;
  o.optimizer.kind = "sgd";
  for (const int64_t stopped_batch : {0, 1}) {
    Tiny model;
    auto hooks = task.hooks(model);
    const auto train = hooks.train_batch;
    bool requested = false;
    int64_t calls = 0;
    hooks.train_batch = [&](int64_t e, int64_t b) -> std::optional<BatchLoss> {
      ++calls;
      if (e == 2 && b == stopped_batch) {
        requested = true;  // the signal came while this batch was loading
        return BatchLoss{0.0, 0, true};
      }
      return train(e, b);
    };
    EpochLog log;
    log.attach(hooks);
    int polls_after = 0;
    hooks.stop_requested = [&] {
      if (requested) ++polls_after;
      return requested;
    };
    const torch::Tensor before = model.w.detach().clone();
    const auto r = TrainingLoop(model, o).run(hooks);
    EXPECT_TRUE(r.interrupted) << stopped_batch;
    EXPECT_FALSE(r.stopped_by_budget);
    EXPECT_EQ(r.epochs_completed, 1) << stopped_batch;
    EXPECT_EQ(log.evaluated, std::vector<int64_t>{1});
    EXPECT_EQ(log.ended, std::vector<int64_t>{1});
    // Two steps in epoch 1, then epoch 2's batches before the stopped one; nothing after it.
    EXPECT_EQ(r.steps, 2 + stopped_batch) << stopped_batch;
    EXPECT_EQ(calls, 3 + stopped_batch) << stopped_batch;
    EXPECT_GE(polls_after, 1);  // asked, so the caller learns which signal it was
    EXPECT_FALSE(torch::equal(model.w, before));
  }
}

TEST(TrainingLoop, LinearDecayReachesZeroAtTheEnd) {
  Tiny model;
  Regression task;
  TrainingOptions o;
  o.epochs = 2;
  o.decay = "linear";
  o.schedule.base_lr = 0.4;
  o.optimizer.kind = "sgd";
  std::vector<double> lrs;
  auto hooks = task.hooks(model);
  hooks.on_progress = [&](const TrainingProgress& p) { lrs.push_back(p.learning_rate); };
  o.progress_every = 1;
  TrainingLoop(model, o).run(hooks);
  ASSERT_EQ(lrs.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i)
    EXPECT_NEAR(lrs[i], 0.4 * (1 - static_cast<double>(i) / 4), 1e-15) << i;
  // Steps past int64 (epochs × batches overflowed, and the decay ran at 0) are an error before
  // the first step.
  o.epochs = std::numeric_limits<int64_t>::max() / 2 + 1;
  o.time_budget_s = 60;  // without the check it would not end (a wrong code fails, not hangs)
  Tiny other;
  const auto e = test::error_of([&] { TrainingLoop(other, o).run(task.hooks(other)); });
  EXPECT_NE(e.find("batches are more steps than can be counted"), std::string::npos) << e;
  EXPECT_TRUE(torch::equal(other.w, torch::zeros({3}, torch::kFloat64)));
}

}  // namespace
}  // namespace attnscope::pipeline
