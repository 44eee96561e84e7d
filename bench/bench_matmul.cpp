// Matrix-product throughput (GFLOP/s) of LibTorch here: the peak every model benchmark is
// compared against, and the check that OpenBLAS (not the reference BLAS) is in use.

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "runtime/runtime.h"

static void BM_Matmul(benchmark::State& state) {
  attnscope::runtime::set_threads(static_cast<int>(state.range(1)));
  const int64_t n = state.range(0);
  auto a = torch::randn({n, n});
  auto b = torch::randn({n, n});
  for (auto _ : state)
    benchmark::DoNotOptimize(torch::mm(a, b));
  state.counters["FLOP/s"] = benchmark::Counter(
      2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.SetLabel(attnscope::runtime::blas_info().name);
}
BENCHMARK(BM_Matmul)
    ->ArgsProduct({{256, 1024, 2048}, {1, 0}})
    ->ArgNames({"n", "threads"})
    ->UseRealTime();

BENCHMARK_MAIN();
