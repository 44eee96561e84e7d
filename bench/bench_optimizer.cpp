// One AdamW step over every parameter of an image classifier preset (as `attnscope train`
// takes it: batch-independent, about a tenth of attn_resnet18's training step on a 2-core
// CPU). attnscope's Optimizer (pipeline/training.h: one fused pass per parameter,
// pipeline/optimizer_kernels.h) against torch.optim.AdamW's own single-tensor operations in
// PyTorch 1.13 written as the same ATen calls (the path Python takes on the CPU). Figures:
// docs/performance.md "The optimiser step".
//
//   build/bin/bench_optimizer [--benchmark_filter=attn_resnet18]

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "models/vision/presets.h"
#include "pipeline/training.h"
#include "runtime/runtime.h"
#include "runtime/tensor_cache.h"

namespace {

namespace vision = attnscope::models::vision;
using attnscope::pipeline::Optimizer;
using attnscope::pipeline::OptimizerOptions;

constexpr double kLr = 1e-3, kWeightDecay = 0.05, kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;

// The preset's parameters (channels-last convolution weights, as the models make them), each
// with a random gradient of its own layout, as backward leaves them.
std::vector<std::pair<std::string, torch::Tensor>> parameters_with_gradients(
    const std::string& arch) {
  vision::ImageModelConfig c;
  c.arch = arch;
  c.num_classes = 2;
  c.image_size = arch.rfind("vit", 0) == 0 ? 64 : 224;
  auto model = vision::make_image_classifier(c);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& item : model->named_parameters()) {
    auto p = item.value();
    p.mutable_grad() = torch::randn_like(p) * 1e-2;
    out.emplace_back(item.key(), p);
  }
  return out;
}

int64_t count(const std::vector<std::pair<std::string, torch::Tensor>>& params) {
  int64_t n = 0;
  for (const auto& [name, p] : params)
    n += p.numel();
  return n;
}

void BM_AdamW_attnscope(benchmark::State& state, const std::string& arch) {
  auto params = parameters_with_gradients(arch);
  OptimizerOptions o;
  o.kind = "adamw";
  o.weight_decay = kWeightDecay;
  Optimizer opt(params, o);
  opt.step(kLr);  // the moments exist from here on, as after the first training step
  for (auto _ : state)
    opt.step(kLr);
  state.counters["Mparams"] = static_cast<double>(count(params)) / 1e6;
}

// torch/optim/adamw.py, _single_tensor_adamw (PyTorch 1.13), in ATen calls.
void BM_AdamW_torch_optim_ops(benchmark::State& state, const std::string& arch) {
  auto params = parameters_with_gradients(arch);
  std::vector<torch::Tensor> exp_avg, exp_avg_sq;
  for (const auto& [name, p] : params) {
    exp_avg.push_back(torch::zeros_like(p));
    exp_avg_sq.push_back(torch::zeros_like(p));
  }
  torch::NoGradGuard no_grad;
  int64_t step = 0;
  for (auto _ : state) {
    ++step;
    const double bias1 = 1 - std::pow(kBeta1, static_cast<double>(step));
    const double bias2 = 1 - std::pow(kBeta2, static_cast<double>(step));
    for (std::size_t i = 0; i < params.size(); ++i) {
      auto& p = params[i].second;
      const auto& g = p.grad();
      p.mul_(1 - kLr * kWeightDecay);
      exp_avg[i].mul_(kBeta1).add_(g, 1 - kBeta1);
      exp_avg_sq[i].mul_(kBeta2).addcmul_(g, g, 1 - kBeta2);
      const auto denom = (exp_avg_sq[i].sqrt() / std::sqrt(bias2)).add_(kEps);
      p.addcdiv_(exp_avg[i], denom, -kLr / bias1);
    }
  }
  state.counters["Mparams"] = static_cast<double>(count(params)) / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  // The process as `attnscope train` runs (tools/attnscope/main.cpp), for both sides: OpenMP
  // spinning limited, every core, freed blocks kept for reuse, the tensor cache.
  namespace runtime = attnscope::runtime;
  runtime::limit_idle_spinning(runtime::available_cores(), argv);
  runtime::set_threads(0);
  runtime::keep_freed_memory_for_reuse();
  runtime::cache_tensor_memory_by_default();
  for (const std::string arch : {"attn_small", "attn_resnet18", "vit_mini_patch8"}) {
    benchmark::RegisterBenchmark(("BM_AdamW/" + arch + "/torch_optim_ops").c_str(),
                                 BM_AdamW_torch_optim_ops, arch)
        ->Unit(benchmark::kMillisecond)
        ->MinTime(1.0)
        ->Repetitions(3)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("BM_AdamW/" + arch + "/attnscope").c_str(), BM_AdamW_attnscope,
                                 arch)
        ->Unit(benchmark::kMillisecond)
        ->MinTime(1.0)
        ->Repetitions(3)
        ->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
