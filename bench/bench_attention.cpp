// The attention core against LibTorch's own modules, and what structured attention costs.
//
//   bench_attention [google-benchmark flags]   timings; prints ours/torch and crf/softmax ratios
//   bench_attention --peak-rss=all             peak RSS of a long sequence (B 1, H 6, E 384,
//                                              L 4096) per path, each in its own process
//
// Run with --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// --benchmark_enable_random_interleaving=true so the compared pairs share the machine's noise.
// Ratios are printed for real time and for CPU time: on a shared machine the CPU-time ratio
// of the one-thread runs is the steadier figure.

#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "models/attention/multihead.h"
#include "models/attention/normalize.h"
#include "runtime/runtime.h"

namespace {

namespace att = attnscope::models::attention;

constexpr int64_t kBatch = 8, kEmbed = 384, kHeads = 6;

// Our module and torch's with the same weights.
struct Pair {
  att::MultiHeadAttention ours{att::MultiHeadAttentionOptions(kEmbed, kHeads)};
  torch::nn::MultiheadAttention torch_mha{torch::nn::MultiheadAttentionOptions(kEmbed, kHeads)};
  Pair() {
    torch::NoGradGuard no_grad;
    ours->qkv->weight.copy_(torch_mha->in_proj_weight);
    ours->qkv->bias.copy_(torch_mha->in_proj_bias);
    ours->proj->weight.copy_(torch_mha->out_proj->weight);
    ours->proj->bias.copy_(torch_mha->out_proj->bias);
  }
};

// Second argument: intra-op threads, 0 = every available core.
void set_threads(benchmark::State& state) {
  attnscope::runtime::set_threads(static_cast<int>(state.range(1)));
}

void BM_MhaForward_Ours(benchmark::State& state) {
  set_threads(state);
  Pair pair;
  torch::NoGradGuard no_grad;
  auto x = torch::randn({kBatch, state.range(0), kEmbed});  // (B, L, E)
  for (auto _ : state)
    benchmark::DoNotOptimize(pair.ours->forward(x).context);
}

// The same without query chunks: what chunking costs (or saves) in time.
void BM_MhaForward_OursUnchunked(benchmark::State& state) {
  set_threads(state);
  Pair pair;
  pair.ours->options.max_score_elements(0);
  torch::NoGradGuard no_grad;
  auto x = torch::randn({kBatch, state.range(0), kEmbed});  // (B, L, E)
  for (auto _ : state)
    benchmark::DoNotOptimize(pair.ours->forward(x).context);
}

void BM_MhaForward_Torch(benchmark::State& state) {
  set_threads(state);
  Pair pair;
  torch::NoGradGuard no_grad;
  auto x = torch::randn({state.range(0), kBatch, kEmbed});  // torch's (L, B, E)
  for (auto _ : state)
    benchmark::DoNotOptimize(std::get<0>(pair.torch_mha->forward(x, x, x, {}, false)));
}

void BM_MhaForwardBackward_Ours(benchmark::State& state) {
  set_threads(state);
  Pair pair;
  auto x = torch::randn({kBatch, state.range(0), kEmbed}, torch::requires_grad());
  for (auto _ : state)
    pair.ours->forward(x).context.sum().backward();
}

void BM_MhaForwardBackward_Torch(benchmark::State& state) {
  set_threads(state);
  Pair pair;
  auto x = torch::randn({state.range(0), kBatch, kEmbed}, torch::requires_grad());
  for (auto _ : state)
    std::get<0>(pair.torch_mha->forward(x, x, x, {}, false)).sum().backward();
}

// Normalising scores (B 8, Q 32, K) over the keys, forward and backward.
constexpr int64_t kNormRows = 32;

void BM_Normalize_Softmax(benchmark::State& state) {
  set_threads(state);
  auto scores = torch::randn({kBatch, kNormRows, state.range(0)}, torch::requires_grad());
  for (auto _ : state)
    att::softmax_normalize(scores).sum().backward();
}

void BM_Normalize_Crf(benchmark::State& state) {
  set_threads(state);
  att::CrfNormalizer crf;
  auto scores = torch::randn({kBatch, kNormRows, state.range(0)}, torch::requires_grad());
  for (auto _ : state)
    crf->forward(scores).sum().backward();
}

BENCHMARK(BM_MhaForward_Ours)
    ->ArgsProduct({{64, 256, 1024}, {1, 0}})
    ->ArgNames({"L", "threads"})
    ->UseRealTime();
BENCHMARK(BM_MhaForward_OursUnchunked)
    ->ArgsProduct({{1024}, {1, 0}})
    ->ArgNames({"L", "threads"})
    ->UseRealTime();
BENCHMARK(BM_MhaForward_Torch)
    ->ArgsProduct({{64, 256, 1024}, {1, 0}})
    ->ArgNames({"L", "threads"})
    ->UseRealTime();
BENCHMARK(BM_MhaForwardBackward_Ours)
    ->ArgsProduct({{64, 256, 1024}, {1, 0}})
    ->ArgNames({"L", "threads"})
    ->UseRealTime();
BENCHMARK(BM_MhaForwardBackward_Torch)
    ->ArgsProduct({{64, 256, 1024}, {1, 0}})
    ->ArgNames({"L", "threads"})
    ->UseRealTime();
BENCHMARK(BM_Normalize_Softmax)
    ->ArgsProduct({{32, 128, 512}, {1}})
    ->ArgNames({"K", "threads"})
    ->UseRealTime();
BENCHMARK(BM_Normalize_Crf)
    ->ArgsProduct({{32, 128, 512}, {1}})
    ->ArgNames({"K", "threads"})
    ->UseRealTime();

// Console output plus, at the end, the ratio of each pair (median when repeated).
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& run : runs) {
      const bool use = run.run_type == Run::RT_Iteration || run.aggregate_name == "median";
      if (use)
        times_[run.run_name.function_name + "/" + run.run_name.args] = {run.GetAdjustedRealTime(),
                                                                        run.GetAdjustedCPUTime()};
    }
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    ratio("_Ours", "_Torch", "ours/torch");
    ratio("_Crf", "_Softmax", "crf/softmax");
  }

 private:
  void ratio(const std::string& a, const std::string& b, const std::string& label) {
    for (const auto& [name, time] : times_) {
      const auto at = name.find(a + "/");
      if (at == std::string::npos) continue;
      auto other = name;
      other.replace(at, a.size(), b);
      const auto found = times_.find(other);
      if (found == times_.end()) continue;
      std::printf("ratio %-12s %-44s real %.3f  cpu %.3f\n", label.c_str(), name.c_str(),
                  time.first / found->second.first, time.second / found->second.second);
    }
  }
  std::map<std::string, std::pair<double, double>> times_;  // (real, cpu)
};

// --- peak memory of one long sequence, one path per process -------------------------------

constexpr int64_t kLongLength = 4096;

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // KiB on Linux
}

// baseline: module and input only; chunked: no weights requested (query chunks);
// unchunked: no weights, chunking off (the (H, L, L) scores exist); weights: weights requested.
int peak_rss_mode(const std::string& mode) {
  if (mode != "baseline" && mode != "chunked" && mode != "unchunked" && mode != "weights") {
    std::fprintf(stderr,
                 "error: --peak-rss must be all, baseline, chunked, unchunked or weights\n");
    return 2;
  }
  attnscope::runtime::set_threads(0);
  torch::NoGradGuard no_grad;
  att::MultiHeadAttention mha(att::MultiHeadAttentionOptions(kEmbed, kHeads));
  mha->eval();
  auto x = torch::randn({1, kLongLength, kEmbed});
  if (mode == "unchunked") mha->options.max_score_elements(0);
  if (mode != "baseline") {
    auto out = mha->forward(x, {}, /*need_weights=*/mode == "weights");
    benchmark::DoNotOptimize(out.context.sum().item<float>());
  }
  std::printf("peak_rss_mib %-9s %.1f\n", mode.c_str(), peak_rss_mib());
  return 0;
}

int peak_rss_all(const char* self) {
  const double weights_mib = kHeads * kLongLength * kLongLength * 4.0 / (1 << 20);
  std::printf("long sequence: B 1, H %ld, E %ld, L %ld; one (H, L, L) float32 tensor = %.0f MiB\n",
              static_cast<long>(kHeads), static_cast<long>(kEmbed), static_cast<long>(kLongLength),
              weights_mib);
  std::fflush(stdout);
  int status = 0;
  for (const char* mode : {"baseline", "chunked", "unchunked", "weights"}) {
    const std::string command = std::string(self) + " --peak-rss=" + mode;
    status |= std::system(command.c_str());
  }
  return status == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Before any thread runs (it calls setenv): the re-execution below may add the tunable.
  attnscope::runtime::take_back_heap_huge_pages();
  // Idle OpenMP workers must not spin for long, as in the attnscope command (runtime/runtime.h).
  attnscope::runtime::limit_idle_spinning(attnscope::runtime::available_cores(), argv);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--peak-rss=all")
      return peak_rss_all(std::filesystem::read_symlink("/proc/self/exe").c_str());
    if (arg.rfind("--peak-rss=", 0) == 0) return peak_rss_mode(arg.substr(11));
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
