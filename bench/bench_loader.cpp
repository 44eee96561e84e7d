// Loader throughput (images/s) on ../shared/data/isic-uda1 (555 JPEGs, 512 px long side) at
// 224 px with 1 and 2 workers, decoding the JPEGs or reading the HDF5 cache that
// `attnscope cache` writes. One benchmark iteration = one epoch, batch 32, flips on.
// The data folder: bench_support.h.

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <filesystem>

#include "bench/bench_support.h"
#include "datasets/loader.h"
#include "pipeline/vision/image_cache.h"

namespace ds = attnscope::datasets;
namespace fs = std::filesystem;

namespace {

using attnscope::bench::data_dir;

const attnscope::preprocessing::Pipeline& pipeline() {
  static const auto p = attnscope::preprocessing::Pipeline::from_json(
      {{"steps", {{{"op", "resize"}, {"size", 224}}}}, {"augment", {{"hflip", 0.5}}}});
  return p;
}

std::shared_ptr<const ds::SampleSource> jpeg_source() {
  static std::shared_ptr<const ds::SampleSource> source = [] {
    const auto csv = (data_dir() / "isic-uda1" / "labels.csv").string();
    ds::ReadOptions o;
    o.images_dir = ds::default_images_dir(csv);
    return std::make_shared<ds::ImageFileSource>(ds::read_dataset(csv, o));
  }();
  return source;
}

std::shared_ptr<const ds::SampleSource> cache_source() {
  static std::shared_ptr<const ds::SampleSource> source = [] {
    const auto path = (fs::temp_directory_path() / "attnscope-bench-uda1-224.h5").string();
    attnscope::pipeline::write_image_cache(path, *jpeg_source(), pipeline(), 2);
    return std::make_shared<attnscope::pipeline::ImageCacheSource>(path);
  }();
  return source;
}

// One epoch per iteration over the source `make()` returns (built on first use).
void run_epochs(benchmark::State& state, std::shared_ptr<const ds::SampleSource> (*make)()) {
  if (!fs::is_directory(data_dir() / "isic-uda1")) {
    state.SkipWithError(attnscope::bench::kNoData);
    return;
  }
  ds::LoaderOptions o;
  o.batch_size = 32;
  o.workers = static_cast<int>(state.range(0));
  o.augment = true;
  ds::Loader loader(make(), pipeline(), o);
  int64_t images = 0, epoch = 0;
  for (auto _ : state) {
    loader.start_epoch(epoch++);
    while (auto b = loader.next())
      images += b->size();
  }
  state.SetItemsProcessed(images);
}

// 1 and 2 workers; an epoch takes seconds, so two per repetition.
void loader_args(benchmark::internal::Benchmark* b) {
  b->Arg(1)->Arg(2)->ArgName("workers")->Iterations(2)->UseRealTime()->Unit(
      benchmark::kMillisecond);
}

void BM_LoaderJpeg(benchmark::State& state) {
  run_epochs(state, jpeg_source);
}
BENCHMARK(BM_LoaderJpeg)->Apply(loader_args);

void BM_LoaderHdf5Cache(benchmark::State& state) {
  run_epochs(state, cache_source);
}
BENCHMARK(BM_LoaderHdf5Cache)->Apply(loader_args);

}  // namespace

BENCHMARK_MAIN();
