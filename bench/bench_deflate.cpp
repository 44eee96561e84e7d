// Deflating results.h5's image chunks (pipeline/vision/results.cpp): zlib's compress2 at
// level 1 (what HDF5's own deflate filter runs) against libdeflate's zlib format at level 1
// (what the writer uses), on the preprocessed inputs classify stores — the first 64
// ../shared/data/isic-uda1 photographs resized to 224 × 224 (INTER_AREA), one 150,528-byte
// chunk each. items_per_second = images per second; ratio = compressed / raw bytes.
//   build/bin/bench_deflate [--benchmark_repetitions=5]

#include <benchmark/benchmark.h>
#include <libdeflate.h>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "bench/bench_support.h"

namespace {

const std::vector<cv::Mat>& inputs() {
  static const std::vector<cv::Mat> images = [] {
    const auto files = attnscope::bench::isic_uda1_images();
    std::vector<cv::Mat> out;
    for (const auto& f : files) {
      if (out.size() == 64) break;
      const cv::Mat m = cv::imread(f, cv::IMREAD_COLOR);
      if (m.empty()) continue;
      cv::Mat r;
      cv::resize(m, r, {224, 224}, 0, 0, cv::INTER_AREA);
      out.push_back(r);
    }
    return out;
  }();
  return images;
}

template <typename Compress>
void run(benchmark::State& state, Compress compress) {
  const auto& images = inputs();
  if (images.empty()) {
    state.SkipWithError(attnscope::bench::kNoData);
    return;
  }
  const std::size_t raw = images[0].total() * images[0].elemSize();
  std::vector<unsigned char> out(raw);
  std::size_t packed = 0, rows = 0;
  for (auto _ : state) {
    for (const auto& m : images) {
      packed += compress(m.data, raw, out.data(), out.size());
      ++rows;
    }
  }
  state.SetItemsProcessed(static_cast<int64_t>(rows));
  state.counters["ratio"] = static_cast<double>(packed) / static_cast<double>(rows * raw);
}

void BM_DeflateChunkZlib1(benchmark::State& state) {
  run(state, [](const unsigned char* in, std::size_t n, unsigned char* out, std::size_t cap) {
    uLongf size = cap;
    return compress2(out, &size, in, n, 1) == Z_OK ? std::size_t{size} : n;
  });
}
BENCHMARK(BM_DeflateChunkZlib1)->Unit(benchmark::kMillisecond);

void BM_DeflateChunkLibdeflate1(benchmark::State& state) {
  const std::unique_ptr<libdeflate_compressor, void (*)(libdeflate_compressor*)> c(
      libdeflate_alloc_compressor(1), libdeflate_free_compressor);
  run(state, [&](const unsigned char* in, std::size_t n, unsigned char* out, std::size_t cap) {
    const std::size_t size = libdeflate_zlib_compress(c.get(), in, n, out, cap);
    return size > 0 ? size : n;
  });
}
BENCHMARK(BM_DeflateChunkLibdeflate1)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
