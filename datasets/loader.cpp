#include "datasets/loader.h"

#include <chrono>
#include <ctime>
#include <numeric>

#include <torch/torch.h>
#include <opencv2/imgproc.hpp>

#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "attnscope/printable.h"
#include "attnscope/threads.h"
#include "datasets/splits.h"
#include "preprocessing/augment.h"
#include "preprocessing/decode.h"
#include "runtime/tensor_cache.h"

namespace attnscope::datasets {

namespace {

double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

double wall_seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

cv::Mat read_mask(const std::string& path) {
  const cv::Mat rgb = preprocessing::decode_image(path);
  cv::Mat grey, mask;
  cv::cvtColor(rgb, grey, cv::COLOR_RGB2GRAY);
  // 0/255 masks are cut at 127; a mask of exactly two levels, 0 and one below 128 (0/1, as
  // many segmentation tools write it), at half the upper one: cut at 127 it read as empty. A
  // soft or multi-level mask keeps the cut at 127.
  double largest = 0;
  cv::minMaxLoc(grey, nullptr, &largest);
  const bool two_levels =
      largest > 0 && largest < 128 && cv::countNonZero(grey) == cv::countNonZero(grey == largest);
  const double cut = two_levels ? largest / 2 : 127;
  cv::threshold(grey, mask, cut, 255, cv::THRESH_BINARY);
  return mask;
}

ImageFileSource::ImageFileSource(Dataset dataset, preprocessing::DecodeOptions decode)
    : dataset_(std::move(dataset)), decode_(decode) {
  for (const auto& s : dataset_.samples)
    check(!s.path.empty(), dataset_.source, "names no image folder, so image '",
          excerpt(s.image_id, 100),
          "' and the others have no file: give the folder with --images, or put the images in "
          "an images/ folder beside the CSV");
}

SampleData ImageFileSource::load(std::size_t index) const {
  const auto& s = dataset_.samples.at(index);
  SampleData out;
  out.image = preprocessing::decode_image(s.path, decode_);
  if (s.mask_path) {
    out.mask = read_mask(*s.mask_path);
    // An image decoded reduced (DecodeOptions::reduce_to: a JPEG at 1/2, 1/4 or 1/8, sides
    // rounded up): its full-size mask is reduced to match, by area, thresholded again.
    const int d = preprocessing::jpeg_reduction(out.mask.cols, out.mask.rows, decode_.reduce_to);
    if (d > 1 && out.mask.size() != out.image.size() &&
        out.image.size() == cv::Size((out.mask.cols + d - 1) / d, (out.mask.rows + d - 1) / d)) {
      cv::Mat reduced;
      cv::resize(out.mask, reduced, out.image.size(), 0, 0, cv::INTER_AREA);
      cv::threshold(reduced, out.mask, 127, 255, cv::THRESH_BINARY);
    }
    check(out.mask.size() == out.image.size(), *s.mask_path, "mask is ", out.mask.cols, "x",
          out.mask.rows, " but its image ", s.path, " is ", out.image.cols, "x", out.image.rows);
  }
  return out;
}

SyntheticSource::SyntheticSource(std::size_t count, uint64_t seed, SyntheticOptions options)
    : seed_(seed), options_(options) {
  check(count > 0, "synthetic source", "count must be > 0");
  samples_.reserve(count);
  for (std::size_t i = 0; i < count; ++i) {
    const auto index = static_cast<int64_t>(i);
    Sample smp;
    smp.image_id = synthetic_id(index);
    smp.label = synthetic_label(options_, seed_, index);
    samples_.push_back(std::move(smp));
  }
}

SampleData SyntheticSource::load(std::size_t index) const {
  auto smp = make_synthetic(options_, seed_, static_cast<int64_t>(index));
  return {std::move(smp.image), std::move(smp.mask)};
}

namespace {
// Thrown by build() between images at a stop request; never leaves the loader.
struct BuildCancelled {};
}  // namespace

Loader::Loader(std::shared_ptr<const SampleSource> source, preprocessing::Pipeline pipeline,
               LoaderOptions options)
    : source_(std::move(source)), pipeline_(std::move(pipeline)), options_(options) {
  check(source_ != nullptr && source_->size() > 0, "loader", "no samples to load");
  check(options_.batch_size >= 1, "loader", "batch size must be >= 1, got ", options_.batch_size);
  check(options_.workers >= 0, "loader", "workers must be >= 0, got ", options_.workers);
  check(options_.queue >= 1, "loader", "queue must be >= 1, got ", options_.queue);
  check(options_.oversample >= 1.0, "loader", "oversample must be >= 1, got ", options_.oversample);
  runner_ = pipeline_;
  if (source_->preprocessed()) {
    const auto made_by = source_->preprocessing();
    const auto steps = pipeline_.to_json()["steps"];
    if (!made_by.is_null())
      check(made_by.value("steps", nlohmann::json()) == steps, "loader",
            "the cached images were made with the steps ",
            json_excerpt(made_by.value("steps", nlohmann::json()), 300), " but the pipeline has ",
            json_excerpt(steps, 300),
            ": rebuild the cache or use Pipeline::from_json(cache.preprocessing())");
    runner_.set_steps({});  // the cache already holds their output
  }
}

Loader::~Loader() {
  stop();
}

std::vector<std::size_t> Loader::epoch_order(int64_t epoch) const {
  const std::size_t n = source_->size();
  std::vector<int64_t> labels(n);
  for (std::size_t i = 0; i < n; ++i)
    labels[i] = source_->sample(i).label;
  const int classes = static_cast<int>(source_->class_names().size());
  if (options_.order == Order::kBalanced) {
    const std::size_t count = options_.balanced_samples ? options_.balanced_samples : n;
    return weighted_sample(balanced_sample_weights(labels, classes), count, options_.seed, epoch);
  }
  std::vector<std::size_t> order;
  if (options_.oversample > 1.0) {
    order = oversample(labels, options_.oversample, options_.seed);
  } else {
    order.resize(n);
    std::iota(order.begin(), order.end(), 0);
  }
  if (options_.order == Order::kShuffle) {
    preprocessing::Rng rng(
        preprocessing::mix_seed(options_.seed, static_cast<uint64_t>(epoch), 0x5F0F));
    for (std::size_t i = order.size(); i > 1; --i)
      std::swap(order[i - 1], order[static_cast<std::size_t>(rng.below(static_cast<int64_t>(i)))]);
  }
  return order;
}

int64_t Loader::batches_per_epoch() const {
  return count_batches(static_cast<int64_t>(epoch_order(0).size()));
}

int64_t Loader::count_batches(int64_t n) const {
  const int64_t bs = options_.batch_size;
  if (options_.drop_last) return n / bs;
  if (options_.join_single_last && bs > 1 && n > bs && n % bs == 1) return n / bs;
  return n / bs + (n % bs != 0 ? 1 : 0);
}

void Loader::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_)
    t.join();
  workers_.clear();
}

void Loader::start_epoch(int64_t epoch) {
  stop();
  epoch_ = epoch;
  order_ = epoch_order(epoch);
  occurrence_.assign(order_.size(), 0);
  std::map<std::size_t, int64_t> seen;
  for (std::size_t i = 0; i < order_.size(); ++i)
    occurrence_[i] = seen[order_[i]]++;
  num_batches_ = count_batches(static_cast<int64_t>(order_.size()));
  claimed_ = consumed_ = 0;
  ready_.clear();
  stats_ = LoaderStats{};
  stopping_ = false;
  for (int w = 0; w < options_.workers; ++w)
    workers_.push_back(start_thread([this] { work(); }));
}

void Loader::work() {
  for (;;) {
    int64_t b = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] {
        return stopping_ || (claimed_ < num_batches_ && claimed_ - consumed_ < options_.queue);
      });
      if (stopping_) return;
      b = claimed_++;
    }
    Slot slot;
    const double cpu_begin = thread_cpu_seconds();
    try {
      slot.batch = build(b);
    } catch (const BuildCancelled&) {
      slot.cancelled = true;
    } catch (...) {
      slot.error = std::current_exception();
    }
    const double cpu = thread_cpu_seconds() - cpu_begin;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.cpu_s += cpu;
      ready_[b] = std::move(slot);
    }
    cv_.notify_all();
  }
}

std::optional<Batch> Loader::next() {
  Slot slot;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (consumed_ >= num_batches_) return std::nullopt;
    const double wait_begin = wall_seconds_now();
    if (options_.workers == 0) {
      lock.unlock();
      const double cpu_begin = thread_cpu_seconds();
      try {
        slot.batch = build(consumed_);
      } catch (const BuildCancelled&) {
        slot.cancelled = true;
      } catch (...) {
        slot.error = std::current_exception();
      }
      const double cpu = thread_cpu_seconds() - cpu_begin;
      lock.lock();
      stats_.cpu_s += cpu;
    } else if (!options_.cancelled) {
      cv_.wait(lock, [&] { return ready_.count(consumed_) > 0; });
    } else {
      // A stop request comes from a signal handler, which cannot notify: poll it.
      while (!ready_.count(consumed_)) {
        if (cancel_requested()) return std::nullopt;
        cv_.wait_for(lock, std::chrono::milliseconds(50));
      }
    }
    if (options_.workers > 0) {
      slot = std::move(ready_[consumed_]);
      ready_.erase(consumed_);
    }
    if (slot.cancelled) return std::nullopt;
    stats_.wait_s += wall_seconds_now() - wait_begin;
    ++stats_.batches;
    ++consumed_;
  }
  cv_.notify_all();
  if (slot.error) std::rethrow_exception(slot.error);
  return std::move(slot.batch);
}

LoaderStats Loader::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

Batch Loader::build(int64_t batch_index) const {
  const auto bs = static_cast<std::size_t>(options_.batch_size);
  const auto begin = static_cast<std::size_t>(batch_index) * bs;
  // The last batch takes whatever is left: one sample more than bs when join_single_last joined
  // a lone last sample to it (drop_last: the rest is never asked for).
  const auto end = batch_index + 1 == num_batches_ && !options_.drop_last
                       ? order_.size()
                       : begin + std::min(bs, order_.size() - begin);
  Batch batch;
  batch.index = batch_index;
  std::vector<preprocessing::Processed> done;
  std::vector<int64_t> labels;
  for (std::size_t pos = begin; pos < end; ++pos) {
    if (cancel_requested()) throw BuildCancelled{};
    const std::size_t index = order_[pos];
    const auto& meta = source_->sample(index);
    try {
      const SampleData data = source_->load(index);
      // Repeats of a sample within an epoch (oversampling) get their own augmentation.
      const preprocessing::AugmentKey key{
          options_.seed,
          static_cast<int64_t>(index) + occurrence_[pos] * static_cast<int64_t>(source_->size()),
          epoch_};
      done.push_back(runner_.process(data.image, data.mask, options_.augment ? &key : nullptr));
    } catch (const Error& e) {
      batch.errors.push_back({meta.image_id, meta.path, e.what()});
      continue;
    } catch (const cv::Exception& e) {
      batch.errors.push_back({meta.image_id, meta.path, concat("OpenCV: ", e.err)});
      continue;
    } catch (const runtime::MemoryLimitExceeded&) {
      throw;  // the run's (a batch or image size too large), not this image's: to next()
    } catch (const std::bad_alloc&) {
      batch.errors.push_back({meta.image_id, meta.path, "out of memory while decoding"});
      continue;
    } catch (const std::exception& e) {
      // Anything else one image raises (LibTorch, the standard library) is that image's
      // failure, not the run's.
      batch.errors.push_back({meta.image_id, meta.path, e.what()});
      continue;
    }
    batch.ids.push_back(meta.image_id);
    batch.indices.push_back(index);
    labels.push_back(meta.label);
  }
  const auto b = static_cast<int64_t>(done.size());
  batch.labels = torch::tensor(labels, torch::kInt64);
  if (b == 0) {
    batch.images = torch::empty({0, 3, 0, 0});
    return batch;
  }
  const int h = done[0].image.rows, w = done[0].image.cols;
  bool all_masks = true, any_mask = false;
  for (std::size_t i = 0; i < done.size(); ++i) {
    check(done[i].image.rows == h && done[i].image.cols == w, "loader", "image '", batch.ids[i],
          "' is ", done[i].image.cols, "x", done[i].image.rows, " but the batch's first is ", w,
          "x", h, ": add a resize step to the preprocessing config");
    batch.has_mask.push_back(done[i].mask.empty() ? 0 : 1);
    all_masks = all_masks && !done[i].mask.empty();
    any_mask = any_mask || !done[i].mask.empty();
  }
  batch.images = torch::empty({b, 3, h, w}, torch::kFloat32);  // (B, 3, H, W)
  for (int64_t i = 0; i < b; ++i)
    preprocessing::to_tensor_into(done[i].image, batch.images[i], runner_.normalization());
  if (any_mask) {
    auto masks = torch::zeros({b, 1, h, w}, torch::kFloat32);  // (B, 1, H, W)
    for (int64_t i = 0; i < b; ++i) {
      if (done[static_cast<std::size_t>(i)].mask.empty()) continue;
      cv::Mat view(h, w, CV_32FC1, masks[i].data_ptr<float>());
      done[static_cast<std::size_t>(i)].mask.convertTo(view, CV_32F, 1.0 / 255.0);
    }
    (all_masks ? batch.masks : batch.partial_masks) = masks;
  }
  return batch;
}

}  // namespace attnscope::datasets
