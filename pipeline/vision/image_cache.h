#pragma once
// An HDF5 cache of preprocessed uint8 images, so that training epochs skip JPEG decoding.
//
// clang-format off
// Layout (h5py reads it directly):
//   /images                         (N, H, W, 3) uint8, RGB, one image per chunk, uncompressed
//                                   (deflate made reads slower than JPEG decoding)
//   /masks                          (N, H, W) uint8 0/255 (zeros where has_mask is 0)
//   /has_mask                       (N) uint8
//   /labels                         (N) int64
//   /ids, /groups, /paths           (N) variable-length UTF-8 strings (group "" = none)
//   /errors/path, /errors/message   samples that could not be cached
//   attributes on /                 format = "attnscope-image-cache", version = "1",
//                                   class_names (JSON array), preprocessing (the pipeline
//                                   config JSON that produced the images)
// clang-format on
// The images are the pipeline's steps applied without augmentation; a Loader over an
// ImageCacheSource then only augments and normalises them.

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "datasets/loader.h"
#include "pipeline/h5.h"
#include "preprocessing/pipeline.h"

namespace attnscope::pipeline {

struct ImageCacheReport {
  std::size_t written = 0;
  struct Failure {
    std::string image_id, path, message;
  };
  std::vector<Failure> failures;  ///< samples left out, with the reason
};

/// Decodes every sample of `source` (with `workers` threads), runs the pipeline's steps (no
/// augmentation) and writes the results to `path`. Every image must come out the same size
/// (end the steps with a resize). Failed samples are left out and listed; throws
/// Error(path, ...) when none succeeds or the file cannot be written. `stop`, when given, is
/// asked before each chunk of samples: true ends the run with ImageCacheStopped and nothing at
/// `path` (the temporary file removed).
struct ImageCacheStopped {};
ImageCacheReport write_image_cache(const std::string& path, const datasets::SampleSource& source,
                                   const preprocessing::Pipeline& pipeline, int workers = 1,
                                   const std::function<bool()>& stop = nullptr);

/// True when `path` is an HDF5 file with the image cache's format attribute (checked as an
/// untrusted file first: a crafted file is false, never a crash). It forks for that check
/// (h5::check_untrusted_file): call it while no worker thread runs. Any error reading the file,
/// the check's own failures included (no fork possible), answers false: "not a cache".
bool is_image_cache_file(const std::string& path);

/// A SampleSource over a cache file: load(i) reads image i (one HDF5 chunk). Thread-safe
/// (reads are serialised: the HDF5 library here is not thread-safe).
class ImageCacheSource : public datasets::SampleSource {
 public:
  /// Throws Error(path, ...) when the file is missing or is not an attnscope image cache.
  explicit ImageCacheSource(const std::string& path);
  std::size_t size() const override { return samples_.size(); }
  const datasets::Sample& sample(std::size_t index) const override { return samples_.at(index); }
  const std::vector<std::string>& class_names() const override { return class_names_; }
  datasets::SampleData load(std::size_t index) const override;
  bool preprocessed() const override { return true; }

  /// The preprocessing config that produced the images (Pipeline::to_json()).
  nlohmann::json preprocessing() const override { return preprocessing_; }
  int height() const { return height_; }
  int width() const { return width_; }
  /// The images that could not be cached when the cache was built (/errors: path, reason), so
  /// that evaluating the cache still counts them as failed.
  const std::vector<std::pair<std::string, std::string>>& build_errors() const {
    return build_errors_;
  }

 private:
  std::string path_;
  h5::File file_;
  h5::Handle images_, masks_;
  std::vector<datasets::Sample> samples_;
  std::vector<uint8_t> has_mask_;
  std::vector<std::string> class_names_;
  nlohmann::json preprocessing_;
  std::vector<std::pair<std::string, std::string>> build_errors_;
  int height_ = 0, width_ = 0;
  mutable std::mutex mutex_;
};

}  // namespace attnscope::pipeline
