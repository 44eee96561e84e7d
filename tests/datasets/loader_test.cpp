// The threaded loader: the same batches for any number of workers, every sample once per
// epoch, bad files reported and skipped, memory bounded by the queue.

#include <atomic>
#include <chrono>
#include <ctime>
#include <fstream>
#include <functional>
#include <set>
#include <thread>
#include <tuple>

#include <torch/torch.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "attnscope/error.h"
#include "datasets/loader.h"
#include "runtime/tensor_cache.h"
#include "test_support.h"

namespace attnscope::datasets {
namespace {

using nlohmann::json;

preprocessing::Pipeline small_pipeline(bool augment) {
  json config = {{"steps", {{{"op", "resize"}, {"size", 32}}}}};
  if (augment)
    config["augment"] = {{"hflip", 0.5}, {"rot90", 0.5}, {"brightness", 0.2}, {"crop", 0.5}};
  return preprocessing::Pipeline::from_json(config);
}

std::shared_ptr<SyntheticSource> synthetic(std::size_t n) {
  SyntheticOptions o;
  o.size = 48;
  return std::make_shared<SyntheticSource>(n, 11, o);
}

std::vector<Batch> epoch(Loader& loader, int64_t e) {
  loader.start_epoch(e);
  std::vector<Batch> out;
  while (auto b = loader.next())
    out.push_back(std::move(*b));
  return out;
}

TEST(Loader, BatchesDoNotDependOnTheNumberOfWorkers) {
  const auto source = synthetic(21);
  LoaderOptions o;
  o.batch_size = 4;
  o.order = Order::kShuffle;
  o.augment = true;
  o.seed = 3;
  std::vector<std::vector<Batch>> runs;
  for (int workers : {0, 1, 3}) {
    o.workers = workers;
    Loader loader(source, small_pipeline(true), o);
    runs.push_back(epoch(loader, 2));
  }
  for (std::size_t r = 1; r < runs.size(); ++r) {
    ASSERT_EQ(runs[r].size(), runs[0].size());
    for (std::size_t b = 0; b < runs[0].size(); ++b) {
      EXPECT_EQ(runs[r][b].ids, runs[0][b].ids);
      EXPECT_TRUE(torch::equal(runs[r][b].images, runs[0][b].images))
          << "run " << r << " batch " << b;
      EXPECT_TRUE(torch::equal(runs[r][b].masks, runs[0][b].masks));
      EXPECT_TRUE(torch::equal(runs[r][b].labels, runs[0][b].labels));
    }
  }
}

TEST(Loader, EveryEpochVisitsEverySampleOnceInANewOrder) {
  const auto source = synthetic(10);
  LoaderOptions o;
  o.batch_size = 3;
  o.order = Order::kShuffle;
  o.workers = 2;
  Loader loader(source, small_pipeline(false), o);
  EXPECT_EQ(loader.batches_per_epoch(), 4);
  std::vector<std::string> first, second;
  for (const auto& b : epoch(loader, 0)) {
    EXPECT_EQ(b.images.sizes(), (std::vector<int64_t>{b.size(), 3, 32, 32}));
    EXPECT_EQ(b.masks.sizes(), (std::vector<int64_t>{b.size(), 1, 32, 32}));
    first.insert(first.end(), b.ids.begin(), b.ids.end());
  }
  for (const auto& b : epoch(loader, 1))
    second.insert(second.end(), b.ids.begin(), b.ids.end());
  EXPECT_EQ(std::set<std::string>(first.begin(), first.end()).size(), 10u);
  EXPECT_EQ(std::set<std::string>(second.begin(), second.end()).size(), 10u);
  EXPECT_NE(first, second);
  // Labels and images agree with the source.
  loader.start_epoch(0);
  const auto b = *loader.next();
  for (int64_t i = 0; i < b.size(); ++i) {
    EXPECT_EQ(b.labels[i].item<int64_t>(), source->sample(b.indices[i]).label);
    const auto expected = small_pipeline(false).process(source->load(b.indices[i]).image).image;
    EXPECT_TRUE(torch::allclose(b.images[i], preprocessing::to_tensor(expected)));
  }
}

// Training joins a lone last sample to the batch before it (BatchNorm cannot train on one
// image whose maps are 1 x 1); every sample is still seen once, and other remainders keep their
// own last batch. Compared with the same order cut by hand.
TEST(Loader, ALoneLastSampleJoinsTheBatchBeforeIt) {
  for (const auto& [n, bs, expected_sizes] :
       std::vector<std::tuple<std::size_t, int64_t, std::vector<int64_t>>>{{9, 4, {4, 5}},
                                                                           {10, 4, {4, 4, 2}},
                                                                           {8, 4, {4, 4}},
                                                                           {1, 4, {1}},
                                                                           {5, 1, {1, 1, 1, 1, 1}},
                                                                           {5, 4, {5}}}) {
    const auto source = synthetic(n);
    LoaderOptions o;
    o.batch_size = bs;
    o.order = Order::kShuffle;
    o.seed = 5;
    o.workers = 2;
    o.join_single_last = true;
    Loader loader(source, small_pipeline(false), o);
    EXPECT_EQ(loader.batches_per_epoch(), static_cast<int64_t>(expected_sizes.size())) << n;
    const auto order = loader.epoch_order(3);
    std::vector<int64_t> sizes;
    std::vector<std::size_t> seen;
    for (const auto& b : epoch(loader, 3)) {
      sizes.push_back(b.size());
      EXPECT_EQ(b.images.size(0), b.size());
      seen.insert(seen.end(), b.indices.begin(), b.indices.end());
    }
    EXPECT_EQ(sizes, expected_sizes) << n << " samples in batches of " << bs;
    EXPECT_EQ(seen, order) << n;
  }
}

TEST(Loader, BadFilesAreReportedAndTheEpochGoesOn) {
  test::TempDir dir;
  SyntheticOptions so;
  so.size = 40;
  auto ds = write_synthetic(dir.path().string(), 6, 2, so);
  std::ofstream(ds.samples[1].path, std::ios::trunc) << "not a png";
  std::ofstream(ds.samples[4].path, std::ios::trunc);  // zero bytes
  LoaderOptions o;
  o.batch_size = 4;
  o.workers = 2;
  Loader loader(std::make_shared<ImageFileSource>(ds), small_pipeline(false), o);
  const auto batches = epoch(loader, 0);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[0].size(), 3);
  EXPECT_EQ(batches[1].size(), 1);
  ASSERT_EQ(batches[0].errors.size(), 1u);
  EXPECT_EQ(batches[0].errors[0].image_id, ds.samples[1].image_id);
  EXPECT_NE(batches[0].errors[0].message.find("not an image"), std::string::npos);
  ASSERT_EQ(batches[1].errors.size(), 1u);
  EXPECT_NE(batches[1].errors[0].message.find("empty file"), std::string::npos);
  EXPECT_TRUE(batches[0].masks.defined());
}

// Counts loads, so the test can see how far ahead the workers run.
// Counts loads and checks each against a bound the test raises as it takes batches: the
// check is made by the worker at the moment it starts a load, so it holds or fails whatever the
// timing (a quiet window would be mistaken on a loaded machine).
class BoundedSource : public SampleSource {
 public:
  BoundedSource(std::shared_ptr<SyntheticSource> inner, int bound)
      : bound(bound), inner_(std::move(inner)) {}
  std::size_t size() const override { return inner_->size(); }
  const Sample& sample(std::size_t i) const override { return inner_->sample(i); }
  const std::vector<std::string>& class_names() const override { return inner_->class_names(); }
  SampleData load(std::size_t i) const override {
    if (++loads > bound) ++over_bound;
    return inner_->load(i);
  }
  mutable std::atomic<int> loads{0};
  mutable std::atomic<int> over_bound{0};
  std::atomic<int> bound;

 private:
  std::shared_ptr<SyntheticSource> inner_;
};

TEST(Loader, WorkersStopAtTheQueueBound) {
  LoaderOptions o;
  o.batch_size = 2;
  o.workers = 3;
  o.queue = 3;
  // While nobody takes a batch, at most `queue` batches may be loaded; each batch taken allows
  // one more. The bound is raised before a batch is taken, so it is never too tight.
  auto source = std::make_shared<BoundedSource>(synthetic(40), o.queue * o.batch_size);
  Loader loader(source, small_pipeline(false), o);
  loader.start_epoch(0);
  // The workers fill the queue (a deadline only against a hang), then get time to overrun it.
  for (int i = 0; i < 3000 && source->loads < o.queue * o.batch_size; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(source->loads, o.queue * o.batch_size);
  int total = 0;
  while (true) {
    source->bound += o.batch_size;
    if (!loader.next()) break;
    ++total;
  }
  EXPECT_EQ(total, 20);
  EXPECT_EQ(source->loads, 40);
  EXPECT_EQ(source->over_bound, 0) << "loads started beyond the queue bound";
}

// Raises a stop flag as its `at`-th load starts, and counts loads.
class StoppingSource : public SampleSource {
 public:
  StoppingSource(std::shared_ptr<SyntheticSource> inner, int at)
      : at(at), inner_(std::move(inner)) {}
  std::size_t size() const override { return inner_->size(); }
  const Sample& sample(std::size_t i) const override { return inner_->sample(i); }
  const std::vector<std::string>& class_names() const override { return inner_->class_names(); }
  SampleData load(std::size_t i) const override {
    if (++loads == at) stop = true;
    return inner_->load(i);
  }
  mutable std::atomic<int> loads{0};
  mutable std::atomic<bool> stop{false};
  int at;

 private:
  std::shared_ptr<SyntheticSource> inner_;
};

// A stop request is seen between images: the workers stop after the image they are on and
// next() returns nullopt without the batch, instead of finishing a batch of 50 slow images.
TEST(Loader, AStopRequestEndsTheEpochBetweenImages) {
  for (const int workers : {0, 2}) {
    SCOPED_TRACE(workers);
    LoaderOptions o;
    o.batch_size = 50;
    o.workers = workers;
    o.queue = 2;
    auto source = std::make_shared<StoppingSource>(synthetic(200), 3);
    o.cancelled = [&] { return source->stop.load(); };
    {
      Loader loader(source, small_pipeline(false), o);
      loader.start_epoch(0);
      EXPECT_FALSE(loader.next().has_value());
      EXPECT_FALSE(loader.next().has_value());
    }  // the workers are joined
    // Load 3 raised the flag; a worker already inside a load finishes only that one.
    EXPECT_LE(source->loads, 3 + workers);
    EXPECT_GE(source->loads, 3);
    // With the flag never raised, the same options give the whole epoch.
    auto whole = std::make_shared<StoppingSource>(synthetic(200), 1000);
    o.cancelled = [&] { return whole->stop.load(); };
    Loader loader(whole, small_pipeline(false), o);
    loader.start_epoch(0);
    int batches = 0;
    while (auto b = loader.next()) {
      EXPECT_EQ(b->size(), 50);
      ++batches;
    }
    EXPECT_EQ(batches, 4);
  }
}

// A source whose load() of one sample throws what it is given (an allocation failure).
class ThrowingSource : public SampleSource {
 public:
  ThrowingSource(std::shared_ptr<SyntheticSource> inner, std::size_t bad,
                 std::function<void()> raise)
      : inner_(std::move(inner)), bad_(bad), raise_(std::move(raise)) {}
  std::size_t size() const override { return inner_->size(); }
  const Sample& sample(std::size_t i) const override { return inner_->sample(i); }
  const std::vector<std::string>& class_names() const override { return inner_->class_names(); }
  SampleData load(std::size_t i) const override {
    if (i == bad_) raise_();
    return inner_->load(i);
  }

 private:
  std::shared_ptr<SyntheticSource> inner_;
  std::size_t bad_;
  std::function<void()> raise_;
};

// Running out of memory in one image is that image's error; reaching the memory limit
// (runtime::MemoryLimitExceeded: the batch or image size is too large for the run) ends the
// epoch in next(), with the limit's own message, whichever thread loads.
TEST(Loader, TheMemoryLimitEndsTheRunWhereOtherOutOfMemoryIsTheImagesError) {
  for (int workers : {0, 2}) {
    LoaderOptions o;
    o.batch_size = 2;
    o.workers = workers;
    {
      auto source =
          std::make_shared<ThrowingSource>(synthetic(6), 3, [] { throw std::bad_alloc(); });
      Loader loader(source, small_pipeline(false), o);
      const auto batches = epoch(loader, 0);
      ASSERT_EQ(batches.size(), 3u) << workers;
      ASSERT_EQ(batches[1].errors.size(), 1u) << workers;
      EXPECT_EQ(batches[1].errors[0].message, "out of memory while decoding");
      EXPECT_EQ(batches[1].size(), 1);
    }
    auto source = std::make_shared<ThrowingSource>(synthetic(6), 3, [] {
      throw runtime::MemoryLimitExceeded("out of memory: the next tensor (9 MiB) ...");
    });
    Loader loader(source, small_pipeline(false), o);
    loader.start_epoch(0);
    ASSERT_TRUE(loader.next().has_value()) << workers;  // samples 0 and 1
    try {
      loader.next();
      ADD_FAILURE() << "no exception, workers " << workers;
    } catch (const runtime::MemoryLimitExceeded& e) {
      EXPECT_STREQ(e.what(), "out of memory: the next tensor (9 MiB) ...");
    }
  }
}

// A source whose load() spends a known time: `cpu_ms` of its own thread's CPU (a busy loop on
// the thread clock) and then `sleep_ms` asleep (no CPU).
class TimedSource : public SampleSource {
 public:
  TimedSource(std::shared_ptr<SyntheticSource> inner, double cpu_ms, int sleep_ms)
      : inner_(std::move(inner)), cpu_ms_(cpu_ms), sleep_ms_(sleep_ms) {}
  std::size_t size() const override { return inner_->size(); }
  const Sample& sample(std::size_t i) const override { return inner_->sample(i); }
  const std::vector<std::string>& class_names() const override { return inner_->class_names(); }
  SampleData load(std::size_t i) const override {
    const double until = thread_cpu() + cpu_ms_ / 1000.0;
    volatile double sink = 0.0;
    while (thread_cpu() < until)
      for (int k = 0; k < 1000; ++k)
        sink = sink + k;
    std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms_));
    return inner_->load(i);
  }
  static double thread_cpu() {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
  }
  static double process_cpu() {
    timespec t{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
  }

 private:
  std::shared_ptr<SyntheticSource> inner_;
  double cpu_ms_;
  int sleep_ms_;
};

// stats() against what the source is known to spend: every load's CPU is counted (a lower
// bound) and nothing beyond the process's own CPU clock (an upper bound); a consumer that
// takes batches at once waits at least for the sleeps a single worker does one after another.
TEST(Loader, StatsCountTheWorkersCpuAndTheConsumersWait) {
  for (int workers : {0, 2}) {
    LoaderOptions o;
    o.batch_size = 3;
    o.workers = workers;
    auto source = std::make_shared<TimedSource>(synthetic(12), 5.0, 0);
    Loader loader(source, small_pipeline(false), o);
    const double cpu_before = TimedSource::process_cpu();
    const auto batches = epoch(loader, 1);
    const double cpu_spent = TimedSource::process_cpu() - cpu_before;
    const auto st = loader.stats();
    EXPECT_EQ(st.batches, 4) << workers;
    EXPECT_EQ(static_cast<int64_t>(batches.size()), st.batches);
    EXPECT_GE(st.cpu_s, 12 * 0.005) << workers;
    EXPECT_LE(st.cpu_s, cpu_spent + 1e-3) << workers;
    if (workers == 0) {
      EXPECT_GE(st.wait_s, st.cpu_s * 0.5);  // next() builds the batch: it waits as long
    }
    loader.start_epoch(2);
    const auto fresh = loader.stats();
    EXPECT_EQ(fresh.batches, 0);
    EXPECT_EQ(fresh.wait_s, 0.0) << "a new epoch starts from zero";
  }
  LoaderOptions o;
  o.batch_size = 2;
  o.workers = 1;
  // 100 ms of sleep per image: far more than preprocessing a small image takes on any CPU
  // (also under a sanitizer), so the CPU time counted stays well below the time slept.
  auto source = std::make_shared<TimedSource>(synthetic(8), 0.0, 100);
  Loader loader(source, small_pipeline(false), o);
  const auto begin = std::chrono::steady_clock::now();
  epoch(loader, 1);
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
  const auto st = loader.stats();
  EXPECT_GE(st.wait_s, 0.5 * 8 * 0.100) << "one worker sleeps 8 x 100 ms while the consumer waits";
  EXPECT_LE(st.wait_s, wall);
  EXPECT_LT(st.cpu_s, 0.5 * 8 * 0.100) << "sleeping is not CPU time";
}

TEST(Loader, BalancedOrderDrawsBothClasses) {
  SyntheticOptions so;
  so.size = 32;
  so.malignant_fraction = 0.1;
  auto source = std::make_shared<SyntheticSource>(200, 1, so);
  LoaderOptions o;
  o.order = Order::kBalanced;
  o.balanced_samples = 2000;
  Loader loader(source, small_pipeline(false), o);
  int malignant = 0;
  for (auto i : loader.epoch_order(0))
    malignant += source->sample(i).label == 1;
  EXPECT_NEAR(malignant, 1000, 120);  // sd ≈ 22
}

// With DecodeOptions::reduce_to a 400 x 300 JPEG is decoded at 1/2 (150 >= 100 > 75) and
// its full-size PNG mask is reduced with it, staying on the lesion.
TEST(Loader, AMaskFollowsItsImageDecodedReduced) {
  test::TempDir dir;
  cv::Mat image(300, 400, CV_8UC3, cv::Scalar(200, 180, 160));
  cv::Mat mask(300, 400, CV_8UC1, cv::Scalar(0));
  cv::rectangle(mask, cv::Rect(100, 60, 160, 120), cv::Scalar(255), cv::FILLED);
  image.setTo(cv::Scalar(60, 40, 30), mask);
  ASSERT_TRUE(cv::imwrite(dir / "a.jpg", image));
  ASSERT_TRUE(cv::imwrite(dir / "a_mask.png", mask));
  Dataset ds;
  ds.class_names = {"benign", "malignant"};
  Sample s;
  s.image_id = "a";
  s.path = dir / "a.jpg";
  s.label = 0;
  s.mask_path = dir / "a_mask.png";
  ds.samples.push_back(s);
  preprocessing::DecodeOptions reduce;
  reduce.reduce_to = 100;
  const auto out = ImageFileSource(ds, reduce).load(0);
  ASSERT_EQ(out.image.size(), cv::Size(200, 150));
  ASSERT_EQ(out.mask.size(), cv::Size(200, 150));
  EXPECT_EQ(out.mask.at<uint8_t>(60, 90), 255);  // inside (rows 30-89, cols 50-129)
  EXPECT_EQ(out.mask.at<uint8_t>(20, 90), 0);    // above
  EXPECT_EQ(out.mask.at<uint8_t>(60, 150), 0);   // right of it
  EXPECT_EQ(cv::countNonZero(out.mask), 80 * 60);
  // Full size without the option.
  EXPECT_EQ(ImageFileSource(ds).load(0).mask.size(), cv::Size(400, 300));
}

// A mask written 0/1 (many segmentation tools do) is the same lesion as its 0/255 form (cut
// at 127 it read as empty); a grey or soft mask keeps the cut at 127; an empty mask stays
// empty.
TEST(Loader, MasksOfZeroAndOneReadAsBinaryMasks) {
  test::TempDir dir;
  cv::Mat full(30, 40, CV_8UC1, cv::Scalar(0));
  cv::rectangle(full, cv::Rect(10, 5, 12, 9), cv::Scalar(255), cv::FILLED);
  cv::Mat ones = full / 255, grey = full.clone();
  grey.setTo(cv::Scalar(100), full == 0);  // a soft background at 100: below the cut
  ASSERT_TRUE(cv::imwrite(dir / "full.png", full));
  ASSERT_TRUE(cv::imwrite(dir / "ones.png", ones));
  ASSERT_TRUE(cv::imwrite(dir / "grey.png", grey));
  ASSERT_TRUE(cv::imwrite(dir / "empty.png", cv::Mat(30, 40, CV_8UC1, cv::Scalar(0))));
  // A soft mask below 128 (levels 0, 30, 76) is no 0/1 mask: cut at 127, empty as before.
  cv::Mat soft = full / 255 * 76;
  soft.setTo(cv::Scalar(30), full == 0);
  soft.at<uint8_t>(0, 0) = 0;
  ASSERT_TRUE(cv::imwrite(dir / "soft.png", soft));
  EXPECT_EQ(cv::countNonZero(read_mask(dir / "soft.png")), 0);
  ASSERT_EQ(cv::countNonZero(read_mask(dir / "full.png") != full), 0);
  EXPECT_EQ(cv::countNonZero(read_mask(dir / "ones.png") != full), 0);
  EXPECT_EQ(cv::countNonZero(read_mask(dir / "grey.png") != full), 0);
  EXPECT_EQ(cv::countNonZero(read_mask(dir / "empty.png")), 0);
}

TEST(Loader, ImagesOfDifferentSizesAreAnErrorWithoutAResize) {
  test::TempDir a, b;
  SyntheticOptions so;
  so.size = 40;
  auto ds = write_synthetic(a.path().string(), 2, 1, so);
  so.size = 48;
  const auto other = write_synthetic(b.path().string(), 2, 1, so);
  ds.samples.push_back(other.samples[0]);
  ds.samples.back().image_id = "other";
  LoaderOptions o;
  o.batch_size = 3;
  o.workers = 1;
  Loader raw(std::make_shared<ImageFileSource>(ds),
             preprocessing::Pipeline::from_json({{"steps", json::array()}}), o);
  raw.start_epoch(0);
  try {
    raw.next();
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add a resize step"), std::string::npos) << e.what();
  }
  Loader resized(std::make_shared<ImageFileSource>(ds), small_pipeline(false), o);
  EXPECT_EQ(epoch(resized, 0)[0].size(), 3);
  LoaderOptions bad;
  bad.batch_size = 0;
  EXPECT_THROW(Loader(std::make_shared<ImageFileSource>(ds), small_pipeline(false), bad), Error);
}

}  // namespace
}  // namespace attnscope::datasets
