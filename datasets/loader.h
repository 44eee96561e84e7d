#pragma once
// Sample sources and the threaded batch loader.
//
// A SampleSource says how many samples there are, what each is (Sample: id, label, group,
// paths) and loads one (RGB uint8 image + optional mask). ImageFileSource decodes image
// files, SyntheticSource draws synthetic dermoscopy on the fly, and pipeline/vision/image_cache.h
// adds an HDF5 cache of already-preprocessed images.
//
// The Loader runs worker threads that load, preprocess and augment samples into batches,
// delivered in order through a bounded queue: at most LoaderOptions::queue batches exist at
// any time (being built or waiting), so memory is bounded by queue × batch size. The sample
// order of an epoch and each sample's augmentation depend only on (seed, epoch, sample), never
// on the number of workers. A sample that fails to load or preprocess is left out of its
// batch and recorded in Batch::errors (id, path and reason); the epoch goes on.

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>
#include <opencv2/core/mat.hpp>

#include "datasets/isic.h"
#include "datasets/synthetic.h"
#include "preprocessing/pipeline.h"

namespace attnscope::datasets {

/// One loaded sample, before preprocessing.
struct SampleData {
  cv::Mat image;  ///< RGB uint8
  cv::Mat mask;   ///< CV_8UC1 (0 / 255) or empty
};

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual std::size_t size() const = 0;
  virtual const Sample& sample(std::size_t index) const = 0;
  virtual const std::vector<std::string>& class_names() const = 0;
  /// Loads sample `index`. Must be thread-safe. Throws attnscope::Error naming the file.
  virtual SampleData load(std::size_t index) const = 0;
  /// True when load() returns images that already went through the pipeline's steps (a cache):
  /// the loader then only augments and normalises them.
  virtual bool preprocessed() const { return false; }
  /// For a preprocessed source: the pipeline config (Pipeline::to_json()) that produced its
  /// images, or null when unknown. The loader refuses a pipeline whose steps differ.
  virtual nlohmann::json preprocessing() const { return nullptr; }
};

/// Decodes the dataset's image files (and masks, thresholded at 128).
class ImageFileSource : public SampleSource {
 public:
  explicit ImageFileSource(Dataset dataset, preprocessing::DecodeOptions decode = {});
  std::size_t size() const override { return dataset_.samples.size(); }
  const Sample& sample(std::size_t index) const override { return dataset_.samples.at(index); }
  const std::vector<std::string>& class_names() const override { return dataset_.class_names; }
  SampleData load(std::size_t index) const override;
  const Dataset& dataset() const { return dataset_; }

 private:
  Dataset dataset_;
  preprocessing::DecodeOptions decode_;
};

/// Synthetic dermoscopy generated on demand: sample i is make_synthetic(options, seed, i).
/// No files; image ids "synth_<i>", paths empty, masks always present.
class SyntheticSource : public SampleSource {
 public:
  SyntheticSource(std::size_t count, uint64_t seed, SyntheticOptions options = {});
  std::size_t size() const override { return samples_.size(); }
  const Sample& sample(std::size_t index) const override { return samples_.at(index); }
  const std::vector<std::string>& class_names() const override { return classes_; }
  SampleData load(std::size_t index) const override;

 private:
  uint64_t seed_;
  SyntheticOptions options_;
  std::vector<Sample> samples_;
  std::vector<std::string> classes_{"benign", "malignant"};
};

/// Reads a mask image as CV_8UC1 with values 0 / 255: grey levels above 127, or, for a mask of
/// two levels, 0 and one below 128 (0/1 masks), that upper level.
cv::Mat read_mask(const std::string& path);

enum class Order {
  kSequential,  ///< dataset order (plus oversampled repeats at the end)
  kShuffle,     ///< a fresh permutation per epoch
  kBalanced,    ///< weighted sampling with replacement, each class equally likely
};

struct LoaderOptions {
  int64_t batch_size = 32;
  /// Worker threads; 0 loads in the thread that calls next().
  int workers = 2;
  /// Batches that may exist at once (being built or waiting to be taken); ≥ 1.
  int queue = 4;
  Order order = Order::kSequential;
  /// Apply the pipeline's augmentation (training); off for evaluation and inference.
  bool augment = false;
  uint64_t seed = 0;
  bool drop_last = false;
  /// A last batch of one sample joins the batch before it (training: BatchNorm cannot
  /// normalise one image whose maps are 1 x 1). Ignored with drop_last.
  bool join_single_last = false;
  /// Repeat the samples of the smaller classes (datasets::oversample); 1 = off.
  double oversample = 1.0;
  /// Samples per epoch for Order::kBalanced; 0 = the source's size.
  std::size_t balanced_samples = 0;
  /// A stop request (a signal flag), read between images and while next() waits: once it
  /// returns true, next() returns nullopt within about 50 ms and each worker stops after the
  /// image it is on, so a run stops mid-batch instead of after a batch of slow images. The
  /// caller tells the end of the epoch from a stop by asking it. Empty: never.
  std::function<bool()> cancelled;
};

/// One batch. Shape: images (B, 3, H, W), labels (B), masks (B, 1, H, W); B = size() may be
/// less than the batch size (the last batch, failed samples), 0 when every sample failed.
struct Batch {
  int64_t index = 0;                 ///< batch number within the epoch
  at::Tensor images;                 ///< (B, 3, H, W) float32, normalised
  at::Tensor labels;                 ///< (B) int64
  at::Tensor masks;                  ///< (B, 1, H, W) float32 in {0, 1}; undefined unless every
                                     ///< sample of the batch has a mask
  /// When some samples of the batch have a mask but not all: (B, 1, H, W) with the masks
  /// there and zeros elsewhere (has_mask says which are real); undefined otherwise.
  at::Tensor partial_masks;
  std::vector<uint8_t> has_mask;  ///< per image, in batch order: 1 where it has a mask
  std::vector<std::string> ids;      ///< image ids, in batch order
  std::vector<std::size_t> indices;  ///< source indices, in batch order
  struct Failure {
    std::string image_id, path, message;
  };
  std::vector<Failure> errors;  ///< samples of this batch that could not be loaded
  int64_t size() const { return static_cast<int64_t>(ids.size()); }
};

/// What building the batches of the current epoch cost (since the last start_epoch()).
struct LoaderStats {
  int64_t batches = 0;  ///< batches handed out by next()
  /// CPU seconds the loader spent building batches (decoding, preprocessing, augmenting,
  /// stacking): each worker's own thread clock, summed over workers. Work that OpenCV hands
  /// to its own thread pool (it splits only large images into stripes) is not counted.
  double cpu_s = 0.0;
  /// Wall seconds next() waited for a batch that was not ready yet (with no workers: the time
  /// next() spent building it) — the consumer's stall on data loading.
  double wait_s = 0.0;
};

class Loader {
 public:
  /// Throws Error("loader", ...) for bad options, an empty source, or a preprocessed source
  /// (cache) made with other steps than `pipeline`'s.
  Loader(std::shared_ptr<const SampleSource> source, preprocessing::Pipeline pipeline,
         LoaderOptions options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  /// The sample order of an epoch (source indices): a function of (options, seed, epoch) only.
  std::vector<std::size_t> epoch_order(int64_t epoch) const;
  int64_t batches_per_epoch() const;
  /// Starts (or restarts) an epoch: stops the workers of the previous one.
  void start_epoch(int64_t epoch);
  /// The next batch of the current epoch, in order; nullopt when the epoch is over (or no
  /// epoch was started), or at a stop request (LoaderOptions::cancelled).
  /// Rethrows a worker's unexpected failure (e.g. images of different sizes).
  std::optional<Batch> next();
  /// The cost of the current epoch's batches so far.
  LoaderStats stats() const;

  const SampleSource& source() const { return *source_; }
  /// The full pipeline (steps included, also over a cache): what a checkpoint should store.
  const preprocessing::Pipeline& pipeline() const { return pipeline_; }

 private:
  struct Slot {
    std::optional<Batch> batch;
    std::exception_ptr error;
    bool cancelled = false;  ///< build() stopped at a stop request: no batch
  };
  bool cancel_requested() const { return options_.cancelled && options_.cancelled(); }
  Batch build(int64_t batch_index) const;
  int64_t count_batches(int64_t samples) const;
  void work();
  void stop();

  std::shared_ptr<const SampleSource> source_;
  preprocessing::Pipeline pipeline_;
  preprocessing::Pipeline runner_;  // what build() runs: pipeline_ without steps over a cache
  LoaderOptions options_;
  // The current epoch.
  int64_t epoch_ = 0;
  std::vector<std::size_t> order_;
  std::vector<int64_t> occurrence_;  // how often order_[i] appeared before position i
  int64_t num_batches_ = 0;
  int64_t claimed_ = 0, consumed_ = 0;
  bool stopping_ = false;
  std::map<int64_t, Slot> ready_;
  LoaderStats stats_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
};

}  // namespace attnscope::datasets
