// The fused BatchNorm → ReLU against ATen's own two operations (the oracle): outputs, the
// gradients of the input, γ and β, the running statistics, in training and in evaluation,
// over several reduction chunks, with a large mean, and at any thread count.

#include <torch/torch.h>

#include <gtest/gtest.h>

#include "models/vision/batch_norm_relu.h"

namespace attnscope::models::vision {
namespace {

namespace nn = torch::nn;

struct Pair {
  nn::BatchNorm2d fused{nullptr}, reference{nullptr};
};

Pair make_pair(int64_t channels, uint64_t seed) {
  torch::manual_seed(seed);
  Pair p;
  p.fused = nn::BatchNorm2d(channels);
  p.reference = nn::BatchNorm2d(channels);
  torch::NoGradGuard no_grad;
  p.fused->weight.uniform_(0.5, 1.5);
  p.fused->bias.uniform_(-0.5, 0.5);
  p.fused->running_mean.uniform_(-1, 1);
  p.fused->running_var.uniform_(0.5, 2);
  p.reference->weight.copy_(p.fused->weight);
  p.reference->bias.copy_(p.fused->bias);
  p.reference->running_mean.copy_(p.fused->running_mean);
  p.reference->running_var.copy_(p.fused->running_var);
  return p;
}

torch::Tensor channels_last_input(std::vector<int64_t> shape, double mean, uint64_t seed) {
  torch::manual_seed(seed);
  return (torch::randn(shape) + mean).contiguous(torch::MemoryFormat::ChannelsLast);
}

void expect_close(const torch::Tensor& a, const torch::Tensor& b, double atol, const char* what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  const double diff = (a - b).abs().max().item<double>();
  EXPECT_LE(diff, atol) << what;
}

// Training mode, output and all gradients, for shapes of one and of many 256-row chunks,
// against ATen's BatchNorm and ReLU in double precision: within a fixed tolerance or within
// twice the error of ATen's own float computation (with 3 rows and a mean of 100, float's
// rounding of the mean is amplified by a large 1/σ on both sides).
TEST(BatchNormRelu, TrainingMatchesAtensBatchNormAndRelu) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{
           {2, 3, 5, 7}, {4, 16, 9, 7}, {8, 8, 20, 20}, {3, 64, 1, 1}}) {
    for (double mean : {0.0, 100.0}) {
      SCOPED_TRACE(::testing::Message() << "shape " << c10::IntArrayRef(shape) << " mean " << mean);
      auto fused = make_pair(shape[1], 7), aten = make_pair(shape[1], 7);
      fused.reference->to(torch::kFloat64);  // the oracle
      const auto x0 = channels_last_input(shape, mean, 3);
      const auto g = torch::randn(x0.sizes());
      const auto xf = x0.clone().requires_grad_(true);
      const auto xa = x0.clone().requires_grad_(true);
      const auto xr = x0.to(torch::kFloat64).requires_grad_(true);
      const auto yf = batch_norm_relu(xf, *fused.fused);
      const auto ya = batch_norm_relu_unfused(xa, *aten.fused);
      const auto yr = batch_norm_relu_unfused(xr, *fused.reference);
      (yf * g).sum().backward();
      (ya * g).sum().backward();
      (yr * g.to(torch::kFloat64)).sum().backward();
      const auto check = [](const torch::Tensor& ours, const torch::Tensor& atens,
                            const torch::Tensor& truth, double atol, const char* what) {
        ASSERT_EQ(ours.sizes(), truth.sizes()) << what;
        const double err = (ours.to(torch::kFloat64) - truth).abs().max().item<double>();
        const double aten_err = (atens.to(torch::kFloat64) - truth).abs().max().item<double>();
        EXPECT_LE(err, std::max(atol, 2 * aten_err)) << what << " (ATen float: " << aten_err << ")";
      };
      check(yf, ya, yr, 2e-5, "output");
      EXPECT_TRUE(yf.is_contiguous(torch::MemoryFormat::ChannelsLast));
      check(xf.grad(), xa.grad(), xr.grad(), 1e-4, "input gradient");
      check(fused.fused->weight.grad(), aten.fused->weight.grad(), fused.reference->weight.grad(),
            1e-3, "gamma gradient");
      check(fused.fused->bias.grad(), aten.fused->bias.grad(), fused.reference->bias.grad(), 1e-3,
            "beta gradient");
      check(fused.fused->running_mean, aten.fused->running_mean, fused.reference->running_mean,
            1e-4, "running mean");
      check(fused.fused->running_var, aten.fused->running_var, fused.reference->running_var, 1e-4,
            "running var");
      EXPECT_EQ(fused.fused->num_batches_tracked.item<int64_t>(),
                fused.reference->num_batches_tracked.item<int64_t>());
      // A good share of the positions is cut by the ReLU: the mask matters to the gradients.
      const double zero = (yr == 0).to(torch::kFloat64).mean().item<double>();
      EXPECT_GT(zero, 0.2);
      EXPECT_LT(zero, 0.8);
    }
  }
}

TEST(BatchNormRelu, EvaluationMatchesAtenWithAndWithoutGradients) {
  auto p = make_pair(12, 5);
  p.fused->eval();
  p.reference->eval();
  const auto x0 = channels_last_input({3, 12, 11, 6}, 0.3, 9);
  {
    torch::NoGradGuard no_grad;
    expect_close(batch_norm_relu(x0, *p.fused), batch_norm_relu_unfused(x0, *p.reference), 1e-5,
                 "no-grad evaluation");
  }
  const auto xf = x0.clone().requires_grad_(true);
  const auto xr = x0.clone().requires_grad_(true);
  batch_norm_relu(xf, *p.fused).sum().backward();
  batch_norm_relu_unfused(xr, *p.reference).sum().backward();
  expect_close(xf.grad(), xr.grad(), 1e-5, "evaluation gradient");
  expect_close(p.fused->running_mean, p.reference->running_mean, 0.0, "running mean untouched");
}

TEST(BatchNormRelu, ContiguousAndDoubleInputsGiveAtensResult) {
  auto p = make_pair(5, 2);
  torch::manual_seed(4);
  const auto x = torch::randn({2, 5, 6, 6});  // NCHW: not fused
  expect_close(batch_norm_relu(x, *p.fused), batch_norm_relu_unfused(x, *p.reference), 1e-6,
               "contiguous input");
  auto q = make_pair(5, 2);
  q.fused->to(torch::kFloat64);
  q.reference->to(torch::kFloat64);
  const auto xd = x.to(torch::kFloat64).contiguous(torch::MemoryFormat::ChannelsLast);
  expect_close(batch_norm_relu(xd, *q.fused), batch_norm_relu_unfused(xd, *q.reference), 1e-12,
               "double input");
}

// The reductions are chunked independently of the thread count: bit-identical results.
TEST(BatchNormRelu, ResultsDoNotDependOnTheThreadCount) {
  const int before = at::get_num_threads();
  std::vector<torch::Tensor> outs;
  for (int threads : {1, 2, 3}) {
    at::set_num_threads(threads);
    auto p = make_pair(32, 1);
    const auto x = channels_last_input({6, 32, 17, 15}, 0.0, 8).requires_grad_(true);
    const auto y = batch_norm_relu(x, *p.fused);
    (y * y).sum().backward();
    outs.push_back(torch::cat({y.flatten(), x.grad().flatten(), p.fused->weight.grad(),
                               p.fused->bias.grad(), p.fused->running_var}));
  }
  at::set_num_threads(before);
  EXPECT_TRUE(torch::equal(outs[0], outs[1]));
  EXPECT_TRUE(torch::equal(outs[0], outs[2]));
}

}  // namespace
}  // namespace attnscope::models::vision
