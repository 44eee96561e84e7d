#include "pipeline/vision/image_cache.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include <torch/torch.h>
#include <opencv2/core.hpp>

#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "attnscope/threads.h"
#include "datasets/isic.h"
#include "datasets/text/tokenizer.h"
#include "runtime/tensor_cache.h"

namespace attnscope::pipeline {
namespace {

const char kFormat[] = "attnscope-image-cache";
const char kVersion[] = "1";
// Samples decoded in parallel before they are appended: bounds the memory of the writer, at
// most 64 and at most 512 MiB of processed images (64 at 16384^2 were 48 GiB).
constexpr std::size_t kChunkSamples = 64;
constexpr std::size_t kChunkBytes = std::size_t{512} << 20;

std::size_t chunk_samples(const preprocessing::Pipeline& pipeline) {
  const auto steps = pipeline.to_json().value("steps", nlohmann::json::array());
  int64_t side = 224;
  if (!steps.empty() && steps.back().value("op", std::string()) == "resize")
    side = steps.back().value("size", int64_t{224});
  const auto per_sample = static_cast<std::size_t>(side * side * 4);  // RGB and a mask
  return std::clamp<std::size_t>(kChunkBytes / std::max<std::size_t>(per_sample, 1), 1,
                                 kChunkSamples);
}

using h5::shape_text;
using h5::where;

void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values,
                   const std::string& file) {
  const auto type = h5::utf8_string_type();
  const hsize_t n = values.size();
  h5::Handle space(H5Screate_simple(1, &n, nullptr));
  h5::Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  h5::Handle set(
      H5Dcreate2(loc, name.c_str(), type.get(), space.get(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT));
  h5::check_h5(set.valid(), where(file, name), "cannot create dataset");
  if (values.empty()) return;
  std::vector<const char*> ptrs;
  for (const auto& v : values)
    ptrs.push_back(v.c_str());
  h5::check_h5(H5Dwrite(set.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()) >= 0,
               where(file, name), "cannot write dataset");
}

// An extendible uint8 dataset (0, H, W[, 3]) with one sample per chunk.
h5::Handle create_stack(hid_t loc, const std::string& name, std::vector<hsize_t> sample_dims,
                        const std::string& file) {
  std::vector<hsize_t> dims{0}, max_dims{H5S_UNLIMITED}, chunk{1};
  for (auto d : sample_dims) {
    dims.push_back(d);
    max_dims.push_back(d);
    chunk.push_back(d);
  }
  h5::Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), max_dims.data()));
  h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
  // Uncompressed: with deflate (level 1) reading was ~10x slower (bench_loader), slower than
  // decoding the JPEGs, which defeats the purpose of the cache. A Fletcher-32 checksum per
  // chunk: a damaged sample is a read error naming it, not other pixels trained on without a
  // word (uncompressed data has no other check).
  H5Pset_fletcher32(dcpl.get());
  h5::Handle set(H5Dcreate2(loc, name.c_str(), H5T_NATIVE_UINT8, space.get(), H5P_DEFAULT,
                            dcpl.get(), H5P_DEFAULT));
  check(set.valid(), where(file, name), "cannot create dataset");
  return set;
}

// Reads or writes sample `index` of a stack through a one-sample hyperslab.
void stack_io(hid_t set, hsize_t index, const cv::Mat& data, bool write, const std::string& what) {
  h5::init();  // this thread's error stacks silenced (loader threads call this)
  h5::Handle space(H5Dget_space(set));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  if (write && index >= dims[0]) {
    dims[0] = index + 1;
    h5::check_h5(H5Dset_extent(set, dims.data()) >= 0, what, "cannot extend dataset");
    space = h5::Handle(H5Dget_space(set));
  }
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = index;
  count[0] = 1;
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  h5::Handle memory(H5Screate_simple(rank, count.data(), nullptr));
  const herr_t status =
      write ? H5Dwrite(set, H5T_NATIVE_UINT8, memory.get(), space.get(), H5P_DEFAULT, data.data)
            : H5Dread(set, H5T_NATIVE_UINT8, memory.get(), space.get(), H5P_DEFAULT, data.data);
  h5::check_h5(status >= 0, what,
               concat(write ? "cannot write sample " : "cannot read sample ", index));
}

}  // namespace

ImageCacheReport write_image_cache(const std::string& path, const datasets::SampleSource& source,
                                   const preprocessing::Pipeline& pipeline, int workers,
                                   const std::function<bool()>& stop) {
  check(workers >= 1, "cache", "workers must be >= 1, got ", workers);
  // Written beside `path` and renamed at the end: a failed or killed run leaves the
  // previous cache (or nothing) at `path`, never a truncated file.
  h5::OutputFile file(path);
  ImageCacheReport report;
  h5::Handle images, masks;
  int height = 0, width = 0;
  std::vector<std::string> ids, groups, paths;
  std::vector<int64_t> labels;
  std::vector<uint8_t> has_mask;

  const std::size_t n = source.size();
  const std::size_t chunk = chunk_samples(pipeline);
  for (std::size_t first = 0; first < n; first += chunk) {
    if (stop && stop()) throw ImageCacheStopped{};  // `file` removes its temporary
    const std::size_t last = std::min(n, first + chunk);
    std::vector<preprocessing::Processed> done(last - first);
    std::vector<std::string> errors(last - first);
    std::atomic<std::size_t> next{first};
    // The memory limit reached (runtime/tensor_cache.h) is the run's end, not one image's
    // failure: the first is thrown here after the workers have stopped.
    std::mutex fatal_mutex;
    std::exception_ptr fatal;
    auto work = [&] {
      for (std::size_t i = next++; i < last; i = next++) {
        try {
          const auto data = source.load(i);
          done[i - first] = pipeline.process(data.image, data.mask);
        } catch (const runtime::MemoryLimitExceeded&) {
          std::lock_guard<std::mutex> lock(fatal_mutex);
          if (!fatal) fatal = std::current_exception();
          next = last;
          return;
        } catch (const Error& e) {
          errors[i - first] = e.what();
        } catch (const cv::Exception& e) {
          errors[i - first] = concat("OpenCV: ", e.err);
        } catch (const std::exception& e) {
          // Anything else (bad_alloc) is this image's failure: escaping a worker thread it
          // called std::terminate and left the temporary file behind.
          errors[i - first] = e.what();
        }
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < workers; ++t)
      pool.push_back(start_thread(work));
    work();
    for (auto& t : pool)
      t.join();
    if (fatal) std::rethrow_exception(fatal);

    for (std::size_t i = first; i < last; ++i) {
      const auto& s = source.sample(i);
      auto& p = done[i - first];
      if (!errors[i - first].empty()) {
        report.failures.push_back({s.image_id, s.path, errors[i - first]});
        continue;
      }
      // The string datasets are typed UTF-8 (h5py decodes them to str): an id or group in
      // another encoding would make the whole cache unreadable there (the dataset readers
      // refuse them first). A path is escaped as classify's source_path is (a Latin-1 folder's
      // image was refused).
      std::string bad_text;
      if (datasets::text::find_invalid_utf8(s.image_id) != std::string::npos) bad_text = "image id";
      if (bad_text.empty() && s.group &&
          datasets::text::find_invalid_utf8(*s.group) != std::string::npos)
        bad_text = "group";
      if (!bad_text.empty()) {
        report.failures.push_back(
            {s.image_id, s.path, concat("the ", bad_text, " is not valid UTF-8 (not cached)")});
        continue;
      }
      if (!images.valid()) {
        height = p.image.rows;
        width = p.image.cols;
        images = create_stack(file.id(), "images", {hsize_t(height), hsize_t(width), 3}, path);
        masks = create_stack(file.id(), "masks", {hsize_t(height), hsize_t(width)}, path);
      }
      if (p.image.rows != height || p.image.cols != width) {
        report.failures.push_back(
            {s.image_id, s.path,
             concat("preprocessed to ", p.image.cols, "x", p.image.rows, ", not ", width, "x",
                    height, " like the first image: end the steps with a resize")});
        continue;
      }
      const cv::Mat image = p.image.isContinuous() ? p.image : p.image.clone();
      cv::Mat mask = p.mask.empty() ? cv::Mat::zeros(height, width, CV_8UC1) : p.mask.clone();
      const auto row = static_cast<hsize_t>(ids.size());
      stack_io(images.get(), row, image, true, where(path, "images"));
      stack_io(masks.get(), row, mask, true, where(path, "masks"));
      ids.push_back(s.image_id);
      groups.push_back(s.group.value_or(""));
      paths.push_back(datasets::text::escaped_name(s.path));
      labels.push_back(s.label);
      has_mask.push_back(p.mask.empty() ? 0 : 1);
    }
  }
  report.written = ids.size();
  if (report.written == 0) {
    check(!report.failures.empty(), path,
          "nothing to cache: the dataset holds no image (were they all left out, e.g. by "
          "--skip-missing?)");
    throw Error(path, concat("no image could be cached (", report.failures.size(),
                             " failed; first: ", report.failures.front().message, ")"));
  }
  // Chunked and deflated: a damaged label is a read error (the zlib stream's Adler-32), not
  // another class trained on.
  constexpr int kRowsPerChunk = 1 << 16;
  h5::write_tensor(file.id(), "labels", torch::tensor(labels, torch::kInt64), path, kRowsPerChunk);
  h5::write_tensor(
      file.id(), "has_mask",
      torch::from_blob(has_mask.data(), {static_cast<int64_t>(has_mask.size())}, torch::kUInt8),
      path, kRowsPerChunk);
  write_strings(file.id(), "ids", ids, path);
  write_strings(file.id(), "groups", groups, path);
  write_strings(file.id(), "paths", paths, path);
  std::vector<std::string> error_paths, error_messages;
  for (const auto& f : report.failures) {
    // The datasets are typed UTF-8 (h5py decodes them): a path escaped as /paths, a message's
    // invalid sequences as U+FFFD.
    error_paths.push_back(datasets::text::escaped_name(f.path.empty() ? f.image_id : f.path));
    error_messages.push_back(datasets::text::valid_utf8(f.message));
  }
  write_strings(file.id(), "errors/path", error_paths, path);
  write_strings(file.id(), "errors/message", error_messages, path);
  h5::write_attribute(file.id(), "format", kFormat, path);
  h5::write_attribute(file.id(), "version", kVersion, path);
  h5::write_attribute(file.id(), "class_names", nlohmann::json(source.class_names()).dump(), path);
  h5::write_attribute(file.id(), "preprocessing", pipeline.to_json().dump(), path);
  file.commit();
  return report;
}

bool is_image_cache_file(const std::string& path) {
  return h5::has_format(path, kFormat);
}

ImageCacheSource::ImageCacheSource(const std::string& path)
    : path_(path), file_((h5::check_untrusted_file(path, false), h5::File::open(path))) {
  const hid_t root = file_.id();
  check(h5::has_attribute(root, "format") &&
            h5::read_string_attribute(root, "format", path) == kFormat,
        path, "not an attnscope image cache (no format=\"", kFormat, "\" attribute)");
  const auto version = h5::read_string_attribute(root, "version", path);
  check(version == kVersion, path, "image cache version ", version, " is not supported (expected ",
        kVersion, ")");
  try {
    class_names_ =
        parse_json_text(h5::read_string_attribute(root, "class_names", path), path, "class_names")
            .get<std::vector<std::string>>();
    preprocessing_ = parse_json_text(h5::read_string_attribute(root, "preprocessing", path), path,
                                     "preprocessing");
  } catch (const nlohmann::json::exception& e) {
    throw Error(path, concat("corrupt attribute: ", e.what()));
  }
  const auto shape = h5::dataset_shape(root, "images", path);
  check(shape.size() == 4 && shape[3] == 3, where(path, "images"), "expected shape (N, H, W, 3)");
  // uint8 as `cache` writes them: HDF5 converted other numbers on reading (floats in [0, 1] to
  // black images, 16-bit values clipped to white), and evaluate and train took them silently.
  for (const char* name : {"images", "masks"}) {
    h5::Handle set(H5Dopen2(root, name, H5P_DEFAULT));
    h5::Handle type(set.valid() ? H5Dget_type(set.get()) : hid_t{-1});
    check(type.valid(), where(path, name), "cannot read its type");
    check(h5::same_numbers(type.get(), H5T_NATIVE_UINT8), where(path, name), "holds ",
          h5::type_name(type.get()), " values, expected uint8 (0..255) as attnscope cache writes");
  }
  check(shape[1] >= 1 && shape[1] <= kMaxImageSide && shape[2] >= 1 && shape[2] <= kMaxImageSide,
        where(path, "images"), "image size ", shape[2], "x", shape[1], " is outside [1, ",
        kMaxImageSide, "]");
  height_ = static_cast<int>(shape[1]);
  width_ = static_cast<int>(shape[2]);
  // The images are what the stored steps make: S x S after their final resize. Other sizes
  // mean a damaged or crafted file (30 images of 16384^2 passed every check and filled the
  // memory, a batch at a time).
  const auto& steps = preprocessing_.contains("steps") ? preprocessing_["steps"] : nlohmann::json();
  const bool ends_with_resize = steps.is_array() && !steps.empty() && steps.back().is_object() &&
                                steps.back().value("op", std::string()) == "resize" &&
                                steps.back().contains("size") &&
                                steps.back()["size"].is_number_integer();
  check(ends_with_resize, path, "the stored preprocessing does not end with a resize step");
  const auto side = steps.back()["size"].get<int64_t>();
  check(shape[1] == side && shape[2] == side, where(path, "images"), "holds ", shape[2], "x",
        shape[1], " images, but the stored preprocessing ends with a resize to ", side, "x", side);
  const auto ids = h5::read_string_rows(root, "ids", path);
  const auto groups = h5::read_string_rows(root, "groups", path);
  const auto paths = h5::read_string_rows(root, "paths", path);
  const auto labels = h5::read_tensor(root, "labels", path);
  const auto has_mask = h5::read_tensor(root, "has_mask", path);
  const auto n = static_cast<std::size_t>(shape[0]);
  check(ids.size() == n && groups.size() == n && paths.size() == n &&
            static_cast<std::size_t>(labels.numel()) == n &&
            static_cast<std::size_t>(has_mask.numel()) == n,
        path, "ids, groups, paths, labels and has_mask must all have ", n, " entries");
  // The masks' stack row for row with the images (a shorter one failed every later sample with
  // HDF5's own words, and evaluate, which needs no mask, scored only the first few).
  const auto mask_shape = h5::dataset_shape(root, "masks", path);
  check(mask_shape.size() == 3 && mask_shape[0] == shape[0] && mask_shape[1] == shape[1] &&
            mask_shape[2] == shape[2],
        where(path, "masks"), "has shape ", shape_text(mask_shape), ", /images ", shape_text(shape),
        ": expected (", shape[0], ", ", shape[1], ", ", shape[2], ")");
  check(labels.scalar_type() == torch::kLong, where(path, "labels"), "expected 64-bit integers");
  check(has_mask.scalar_type() == torch::kByte, where(path, "has_mask"), "expected uint8");
  check(class_names_.size() <= 100000, path, "has ", class_names_.size(),
        " class names (at most 100000)");
  has_mask_.assign(has_mask.data_ptr<uint8_t>(), has_mask.data_ptr<uint8_t>() + n);
  const auto* label = labels.data_ptr<int64_t>();
  for (std::size_t i = 0; i < n; ++i)
    check(label[i] >= -1 && label[i] < static_cast<int64_t>(class_names_.size()),
          where(path, "labels"), "sample '", ids[i], "' has label ", label[i], ", outside its ",
          class_names_.size(), " class names");
  // The ids go into predictions CSVs, results and terminal lines as the readers' ids do: the
  // same rules (no control character, no path separator), once each (a repeat was scored as
  // two images).
  {
    std::map<std::string, std::size_t> seen;
    for (std::size_t i = 0; i < n; ++i) {
      datasets::check_image_id(ids[i], where(path, concat("ids row ", i)));
      const auto [it, fresh] = seen.emplace(ids[i], i);
      check(fresh, where(path, "ids"), "rows ", it->second, " and ", i, " hold the same id '",
            excerpt(ids[i]), "': the file is damaged or was edited");
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    datasets::Sample s;
    s.image_id = ids[i];
    s.path = paths[i];
    s.label = label[i];
    if (!groups[i].empty()) s.group = groups[i];
    samples_.push_back(std::move(s));
  }
  if (h5::exists(root, "errors/path") && h5::exists(root, "errors/message")) {
    const auto error_paths = h5::read_string_rows(root, "errors/path", path);
    const auto error_messages = h5::read_string_rows(root, "errors/message", path);
    check(error_paths.size() == error_messages.size(), where(path, "errors"),
          "path and message must have the same length");
    for (std::size_t i = 0; i < error_paths.size(); ++i)
      build_errors_.emplace_back(error_paths[i], error_messages[i]);
  }
  h5::check_filters_available(root, "images", path);
  h5::check_filters_available(root, "masks", path);
  images_ = h5::Handle(H5Dopen2(root, "images", H5P_DEFAULT));
  masks_ = h5::Handle(H5Dopen2(root, "masks", H5P_DEFAULT));
  check(images_.valid() && masks_.valid(), path, "cannot open /images and /masks");
}

datasets::SampleData ImageCacheSource::load(std::size_t index) const {
  check(index < samples_.size(), path_, "sample ", index, " out of range (", samples_.size(), ")");
  datasets::SampleData out;
  out.image.create(height_, width_, CV_8UC3);
  std::lock_guard<std::mutex> lock(mutex_);
  stack_io(images_.get(), index, out.image, false, where(path_, "images"));
  if (has_mask_[index]) {
    out.mask.create(height_, width_, CV_8UC1);
    stack_io(masks_.get(), index, out.mask, false, where(path_, "masks"));
  }
  return out;
}

}  // namespace attnscope::pipeline
