// Forward throughput of every image classifier preset at 224 px (batch 1 and 16): images/s,
// parameters, GFLOP per image (convolutions and matrix products, counted by LibTorch's
// profiler) and GFLOP/s achieved. Compare GFLOP/s with bench_matmul's peak.
// BM_TrainStep: one training step (forward, cross-entropy, backward, SGD with momentum) of
// attn_small at 128 px and attn_resnet18 at 224 px, batch 32, random inputs: the model's
// share of `attnscope train` without data loading, for A/B comparisons of training kernels.
//
//   bench_vision [--resnet18-checkpoint=PATH] [google-benchmark flags]
//
// --resnet18-checkpoint loads the given weights into resnet18 (bench/torchvision_forward.py
// uses it to time attnscope and torchvision on the same weights side by side).

#include <benchmark/benchmark.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/torch.h>

#include <cstring>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "models/vision/presets.h"
#include "pipeline/vision/image_model_config.h"
#include "runtime/runtime.h"

namespace {

namespace vision = attnscope::models::vision;
namespace profiler = torch::autograd::profiler;

constexpr int64_t kImageSize = 224;
std::string g_resnet18_checkpoint;

std::shared_ptr<vision::ImageClassifier> build(const std::string& arch) {
  if (arch == "resnet18" && !g_resnet18_checkpoint.empty())
    return attnscope::pipeline::load_image_classifier(g_resnet18_checkpoint).model;
  vision::ImageModelConfig c;
  c.arch = arch;
  c.num_classes = 2;
  c.image_size = kImageSize;
  return vision::make_image_classifier(c);
}

// FLOPs of one forward: LibTorch's profiler counts conv2d and the matrix products.
double forward_flops(vision::ImageClassifier& model, const torch::Tensor& x) {
  static const std::set<std::string> kCounted = {"aten::conv2d", "aten::mm", "aten::addmm",
                                                 "aten::bmm", "aten::baddbmm"};
  torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::CPU,
                                               /*report_input_shapes=*/true,
                                               /*profile_memory=*/false, /*with_stack=*/false,
                                               /*with_flops=*/true);
  profiler::enableProfilerLegacy(config);
  model.forward(x);
  const auto lists = profiler::disableProfilerLegacy();
  double total = 0;
  for (const auto& list : lists)
    for (auto event : list)
      if (event.kind() == profiler::EventKind::PushRange && kCounted.count(event.name()))
        total += static_cast<double>(event.flops());
  return total;
}

void BM_Forward(benchmark::State& state, const std::string& arch) {
  attnscope::runtime::set_threads(0);
  const int64_t batch = state.range(0);
  auto model = build(arch);
  model->eval();
  c10::InferenceMode inference;
  torch::manual_seed(0);
  const auto x = torch::randn({batch, 3, kImageSize, kImageSize});
  const double flops_per_image = forward_flops(*model, x.narrow(0, 0, 1));
  int64_t params = 0;
  for (const auto& p : model->parameters())
    params += p.numel();
  model->forward(x);  // warm-up
  for (auto _ : state)
    benchmark::DoNotOptimize(model->forward(x).logits);
  using benchmark::Counter;
  state.counters["images/s"] =
      Counter(static_cast<double>(batch), Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = Counter(flops_per_image * static_cast<double>(batch) / 1e9,
                                      Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/image"] = flops_per_image / 1e9;
  state.counters["Mparams"] = static_cast<double>(params) / 1e6;
  state.counters["threads"] = attnscope::runtime::threads();
}

void BM_TrainStep(benchmark::State& state, const std::string& arch, int64_t size) {
  attnscope::runtime::set_threads(0);
  const int64_t batch = state.range(0);
  vision::ImageModelConfig c;
  c.arch = arch;
  c.num_classes = 2;
  c.image_size = size;
  auto model = vision::make_image_classifier(c);
  model->train();
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  torch::manual_seed(0);
  const auto x = torch::randn({batch, 3, size, size});
  const auto y = torch::randint(0, 2, {batch}, torch::kLong);
  auto step = [&] {
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model->forward(x).logits, y);
    loss.backward();
    opt.step();
  };
  step();  // warm-up
  for (auto _ : state)
    step();
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = attnscope::runtime::threads();
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread runs (it calls setenv): the re-execution below may add the tunable.
  attnscope::runtime::take_back_heap_huge_pages();
  // Idle OpenMP workers must not spin for long, as in the attnscope command (runtime/runtime.h).
  attnscope::runtime::limit_idle_spinning(attnscope::runtime::available_cores(), argv);
  // Our own flag first; the rest goes to Google Benchmark.
  std::vector<char*> rest;
  const char* kFlag = "--resnet18-checkpoint=";
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], kFlag, std::strlen(kFlag)) == 0)
      g_resnet18_checkpoint = argv[i] + std::strlen(kFlag);
    else
      rest.push_back(argv[i]);
  }
  for (const auto& arch : vision::image_presets()) {
    benchmark::RegisterBenchmark(("BM_Forward/" + arch).c_str(), BM_Forward, arch)
        ->ArgName("batch")
        ->Arg(1)
        ->Arg(16)
        ->Unit(benchmark::kMillisecond)
        ->MinTime(0.2)
        ->UseRealTime();
  }
  for (const auto& [arch, size] :
       std::vector<std::pair<std::string, int64_t>>{{"attn_small", 128}, {"attn_resnet18", 224}}) {
    benchmark::RegisterBenchmark(("BM_TrainStep/" + arch + "/" + std::to_string(size)).c_str(),
                                 BM_TrainStep, arch, size)
        ->ArgName("batch")
        ->Arg(32)
        ->Unit(benchmark::kMillisecond)
        ->MinTime(3.0)
        ->UseRealTime();
  }
  int n = static_cast<int>(rest.size());
  benchmark::Initialize(&n, rest.data());
  if (benchmark::ReportUnrecognizedArguments(n, rest.data())) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
