#include "pipeline/vision/classify.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include <torch/torch.h>
#include <opencv2/imgproc.hpp>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/folder_lock.h"
#include "attnscope/json_text.h"
#include "attnscope/printable.h"
#include "attnscope/threads.h"
#include "attnscope/version.h"
#include "datasets/loader.h"
#include "datasets/text/pairs.h"
#include "datasets/text/tokenizer.h"
#include "models/vision/explain.h"
#include "pipeline/h5.h"
#include "pipeline/metrics.h"
#include "pipeline/vision/evaluate.h"
#include "pipeline/vision/faithfulness.h"
#include "pipeline/vision/image_model_config.h"
#include "pipeline/vision/tta.h"
#include "runtime/precision.h"
#include "runtime/runtime.h"

namespace attnscope::pipeline {
namespace fs = std::filesystem;

namespace {

std::string utc_now() {
  const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool hidden(const fs::path& p) {
  const auto name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

// Temporary files a killed run left in its folder: `.results.h5.<pid>-<n>.tmp.h5` (an
// --overwrite run's new file, atomic_file.h), its replicas `..results.h5.<pid>-<n>.tmp.h5.replica-a/b`,
// and the CSVs' `.predictions.csv.<pid>-<n>.tmp.csv`. Called with the folder lock held, so no
// other run is writing them; returns how many were removed.
int remove_stale_temporaries(const std::string& dir) {
  static const std::regex kTemporary(
      R"(^\.\.?(results\.h5|predictions\.csv|errors\.csv)\.[0-9]+-[0-9]+\.tmp\.(h5|csv)(\.replica-[ab])?$)");
  int removed = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const auto name = entry.path().filename().string();
    if (!std::regex_match(name, kTemporary)) continue;
    if (fs::remove(entry.path(), ec)) ++removed;
  }
  return removed;
}

// An input file, its id for now its own stem (unique_ids makes repeats unique). Ids are stored
// as UTF-8 strings: a byte of a name that is not UTF-8 (Latin-1 "caf\xe9.jpg") is written
// `\xe9` (h5py could not decode the id, and --resume never found it stored), and a backslash
// `\\`, so that a file literally named `caf\xe9.jpg` has another id (escaped_name).
void add_file(datasets::Dataset& ds, const std::string& path) {
  datasets::Sample s;
  s.path = path;
  s.image_id = datasets::text::escaped_name(fs::path(path).stem().string());
  if (s.image_id.empty())
    s.image_id = datasets::text::escaped_name(fs::path(path).filename().string());
  ds.samples.push_back(std::move(s));
}

// Every input keeps its own stem where it is the first with it; a repeated stem gets "~2",
// "~3", ...: the first of those that is no input's own stem (a file named "x~2.jpg" keeps
// "x~2", wherever it comes in the inputs) and not given to an earlier repeat.
void unique_ids(datasets::Dataset& ds) {
  std::set<std::string> own;
  for (const auto& s : ds.samples)
    own.insert(s.image_id);
  std::set<std::string> taken;
  std::map<std::string, int> repeats;  // stem -> the last suffix tried
  for (auto& s : ds.samples) {
    if (taken.insert(s.image_id).second) continue;
    auto& n = repeats.emplace(s.image_id, 1).first->second;
    std::string candidate;
    do {
      candidate = s.image_id + "~" + std::to_string(++n);
    } while (own.count(candidate) != 0 || taken.count(candidate) != 0);
    s.image_id = candidate;
    taken.insert(candidate);
  }
}

constexpr const char* kListRule =
    "relative paths in a list are taken from the list's folder; write them from there or give "
    "absolute paths";

void add_input(datasets::Dataset& ds, const std::string& input, int depth) {
  check(depth < 8, input, "list files nest too deeply");
  if (!input.empty() && input[0] == '@') {
    const std::string list = input.substr(1);
    std::error_code ec;
    // A folder, FIFO or device (@/dev/zero read without end) is no list.
    check(fs::is_regular_file(list, ec), list,
          fs::exists(list, ec) ? "is not a list file (a folder, FIFO or device)"
                               : "cannot read the list file (no such file)");
    std::ifstream in(list);
    check(in.good(), list, "cannot read the list file");
    const auto base = fs::path(list).parent_path();
    std::string line;
    int64_t number = 0;
    // Relative lines missing under the list's folder that exist under the current one: the
    // list was likely written from there (`ls images/*.jpg > lists/a.txt`); said once.
    int64_t from_cwd = 0;
    std::string first_from_cwd;
    // Lines read bounded: a -print0 list or a binary file is one long line, never held whole.
    // A line ends at LF, CRLF or a lone CR (a list saved with classic Mac line ends was one
    // path of all its lines).
    for (std::optional<std::uintmax_t> length;
         (length = datasets::text::read_bounded_line(in, line, 65536,
                                                     std::numeric_limits<std::uintmax_t>::max(),
                                                     /*lone_cr=*/true));) {
      ++number;
      // A NUL ends the path the system opens but not the line: `find -print0` output named
      // one file and stored it under another's id. One path per line (`find -print`). Before
      // the length: a -print0 list is one long line.
      check(line.find('\0') == std::string::npos, list, "line ", number,
            " holds a NUL byte: a list holds one path per line (find -print, not -print0)");
      check(*length <= 65536, list, "line ", number,
            " is longer than 65536 bytes: not a list of paths");
      while (!line.empty() && (line.back() == ' ' || line.back() == '\t'))
        line.pop_back();
      if (line.empty() || line[0] == '#') continue;
      // "@other.txt" is a list too, its path taken like any other line's.
      // (A file whose name starts with '@' is written ./@name.)
      const bool nested = line[0] == '@';
      const std::string path = nested ? line.substr(1) : line;
      check(!path.empty(), list, "line ", number, ": '@' names no list");
      fs::path p(path);
      // Relative lines are relative to the list's folder, wherever the command runs.
      if (p.is_relative() && !base.empty()) {
        p = base / p;
        std::error_code exists_ec;
        const bool from_here = !fs::exists(fs::symlink_status(p, exists_ec)) &&
                               fs::exists(fs::symlink_status(path, exists_ec));
        // A nested list is read at once: its absence ends the run, so the hint goes with it.
        if (nested && from_here)
          throw Error(list, concat("line ", number, ": the list '@", excerpt(path, 200),
                                   "' is not under the list's folder '", base.string(),
                                   "' but is under the current folder: ", kListRule));
        if (from_here && from_cwd++ == 0) first_from_cwd = path;
      }
      add_input(ds, (nested ? "@" : "") + p.string(), depth + 1);
    }
    if (from_cwd > 0)
      ds.warnings.push_back(concat(
          list, ": ", from_cwd, from_cwd == 1 ? " relative path (" : " relative paths (first: ",
          excerpt(first_from_cwd, 200), ") not found under the list's folder '", base.string(),
          "' but found under the current folder: ", kListRule));
    return;
  }
  std::error_code ec;
  const auto status = fs::status(input, ec);
  if (fs::is_directory(status)) {
    // Every entry but a folder is an input: a dangling link or a FIFO fails with its reason in
    // errors.csv, as when given by name (they were left out without a word). What cannot be
    // walked is one warning line.
    std::vector<std::string> files;
    // A folder that cannot be read and searched is not walked (one that can be read but not
    // searched would give a "no such file" per entry).
    const auto unreadable = [](const fs::path& folder) {
      return ::access(folder.c_str(), R_OK | X_OK) != 0 ? errno : 0;
    };
    auto it =
        fs::recursive_directory_iterator(input, fs::directory_options::skip_permission_denied, ec);
    const int top = ec ? 0 : unreadable(input);
    if (ec || top != 0) {
      // Paths cut to 400 bytes: the line is cut at 1000 when printed, and the reason must stay.
      ds.warnings.push_back(concat(excerpt(input, 400), ": cannot list the folder (",
                                   ec ? ec.message() : std::strerror(top),
                                   "): its files are not classified"));
      return;
    }
    for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      const auto& path = it->path();
      std::error_code type_ec;
      const bool folder = it->is_directory(type_ec);  // follows links
      if (hidden(path)) {
        if (folder) it.disable_recursion_pending();
        continue;
      }
      if (!folder) {
        files.push_back(path.string());
      } else if (it->is_symlink(type_ec)) {
        ds.warnings.push_back(concat(excerpt(path.string(), 400),
                                     ": a link to a folder, not followed (give the folder itself "
                                     "as an input)"));
      } else if (const int err = unreadable(path); err != 0) {
        it.disable_recursion_pending();
        ds.warnings.push_back(concat(excerpt(path.string(), 400), ": cannot read the folder (",
                                     std::strerror(err), "): its files are not classified"));
      }
    }
    if (ec)  // from increment(): the iterator may or may not have reached its end
      ds.warnings.push_back(concat(excerpt(input, 400), ": cannot list the folder further (",
                                   ec.message(),
                                   "): the files after that point are not classified"));
    std::sort(files.begin(), files.end());
    for (const auto& f : files)
      add_file(ds, f);
    return;
  }
  // A file, or a missing path: a missing file becomes an error line of the run, like any
  // other unreadable input.
  add_file(ds, input);
}

// Own maps, and the explanations this model supports.
struct MapSupport {
  std::vector<std::string> own;
  bool gradcam = false, vit = false;
};

MapSupport map_support(models::vision::ImageClassifier& model, const std::string& arch) {
  MapSupport s;
  s.own = model.map_names();
  s.vit = models::vision::is_vit(arch);
  s.gradcam = model.has_spatial_features() && !s.vit;
  if (s.vit && std::find(s.own.begin(), s.own.end(), "rollout") == s.own.end())
    s.own.push_back("rollout");
  return s;
}

std::vector<std::string> defaults_of(const MapSupport& s) {
  auto names = s.own;
  if (s.gradcam) names.push_back("gradcam");
  return names;
}

// A bounded queue between the inference loop and the writer thread.
struct WriteJob {
  ResultRows rows;
  std::vector<ResultError> errors;
};

class WriterThread {
 public:
  WriterThread(ResultsWriter& writer, std::size_t capacity)
      : writer_(writer), capacity_(capacity), thread_(start_thread([this] { run(); })) {}
  ~WriterThread() { close(); }

  void push(WriteJob job) {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return jobs_.size() < capacity_ || error_; });
    rethrow_locked();
    jobs_.push_back(std::move(job));
    cv_.notify_all();
  }
  /// Waits for every job to be written; rethrows the writer's failure.
  void close() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (closed_) return;
      closed_ = true;
      cv_.notify_all();
    }
    thread_.join();
  }
  void rethrow() {
    std::lock_guard<std::mutex> lock(mutex_);
    rethrow_locked();
  }

 private:
  void rethrow_locked() {
    if (error_) std::rethrow_exception(error_);
  }
  void run() {
    h5::init();  // this thread's HDF5 error stacks silenced too
    for (;;) {
      WriteJob job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return !jobs_.empty() || closed_; });
        if (jobs_.empty()) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
        cv_.notify_all();
      }
      try {
        writer_.append(job.rows, job.errors);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = std::current_exception();
        jobs_.clear();
        cv_.notify_all();
        return;
      }
    }
  }

  ResultsWriter& writer_;
  std::size_t capacity_;
  std::deque<WriteJob> jobs_;
  bool closed_ = false;
  std::exception_ptr error_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::thread thread_;
};

// Jet colour map overlay of a [0, 1] map (h, w) over an RGB uint8 image (H, W, 3).
at::Tensor overlay(const at::Tensor& image, const at::Tensor& map) {
  const auto h = image.size(0), w = image.size(1);
  auto m = map.to(torch::kFloat).contiguous();
  const float mx = m.max().item<float>();
  if (mx > 0) m = m / mx;
  cv::Mat small(static_cast<int>(m.size(0)), static_cast<int>(m.size(1)), CV_32F, m.data_ptr());
  cv::Mat big, grey, colour;
  cv::resize(small, big, cv::Size(static_cast<int>(w), static_cast<int>(h)), 0, 0,
             cv::INTER_LINEAR);
  big.convertTo(grey, CV_8U, 255.0);
  cv::applyColorMap(grey, colour, cv::COLORMAP_JET);
  cv::cvtColor(colour, colour, cv::COLOR_BGR2RGB);
  const auto img = image.contiguous();
  cv::Mat base(static_cast<int>(h), static_cast<int>(w), CV_8UC3, img.data_ptr());
  cv::Mat out;
  cv::addWeighted(base, 0.5, colour, 0.5, 0, out);
  return torch::from_blob(out.data, {h, w, 3}, torch::kByte).clone();
}

}  // namespace

datasets::Dataset collect_inputs(const std::vector<std::string>& inputs) {
  datasets::Dataset ds;
  for (const auto& input : inputs)
    add_input(ds, input, 0);
  unique_ids(ds);
  return ds;
}

void check_masks_folder(const std::string& masks_dir) {
  std::error_code ec;
  const auto status = fs::status(masks_dir, ec);
  check(!ec || ec == std::errc::no_such_file_or_directory, masks_dir, "cannot read the folder (",
        ec.message(), ") (--masks)");
  check(fs::is_directory(status), masks_dir, "is not a folder (--masks)");
  check(::access(masks_dir.c_str(), R_OK | X_OK) == 0, masks_dir,
        "cannot read the folder (permission denied) (--masks)");
}

int64_t attach_masks(datasets::Dataset& dataset, const std::string& masks_dir) {
  check_masks_folder(masks_dir);
  int64_t attached = 0;
  for (auto& s : dataset.samples) {
    // The image file's own stem where the id is it or it with a "~n" repeat suffix (a file
    // named "x~y.jpg" keeps "x~y"), otherwise the dataset's id.
    // (An id escapes the bytes of a file name that are not UTF-8; the mask's name is in the
    // file name's own bytes.)
    const std::string file_stem = fs::path(s.path).stem().string();
    const std::string stem =
        !file_stem.empty() && s.image_id.rfind(datasets::text::escaped_name(file_stem), 0) == 0
            ? file_stem
            : s.image_id;
    for (const auto& suffix : {"_segmentation.png", "_Segmentation.png", "_mask.png", ".png"}) {
      const auto p = fs::path(masks_dir) / (stem + suffix);
      if (fs::is_regular_file(p)) {
        s.mask_path = p.string();
        ++attached;
        break;
      }
    }
  }
  return attached;
}

std::pair<int64_t, int64_t> parse_shard(const std::string& text) {
  // Digits only on both sides of the slash: no sign, no spaces (std::stoll took " 1/2" and
  // "1/ 2" but not "1 /2").
  const auto number = [](const std::string& digits) -> int64_t {
    if (digits.empty() || digits.size() > 18) return -1;
    for (const char c : digits)
      if (c < '0' || c > '9') return -1;
    return std::stoll(digits);
  };
  const auto slash = text.find('/');
  const int64_t i = slash == std::string::npos ? -1 : number(text.substr(0, slash));
  const int64_t n = slash == std::string::npos ? -1 : number(text.substr(slash + 1));
  check(i >= 0 && n >= 1 && i < n, "--shard", "expects i/N with 0 <= i < N, got '",
        excerpt(text, 100), "'");
  return {i, n};
}

std::vector<std::string> default_maps(const std::string& checkpoint) {
  auto loaded = load_image_classifier(checkpoint);
  return defaults_of(map_support(*loaded.model, loaded.config.arch));
}

ClassifySummary classify(const datasets::Dataset& dataset, const ClassifyOptions& o,
                         const std::function<void(const ClassifyProgress&)>& progress) {
  namespace mv = models::vision;
  check(o.batch_size >= 1, "--batch-size", "must be >= 1");
  check(o.threads >= 1, "--threads", "must be >= 1");
  const auto started = std::chrono::steady_clock::now();
  // The checkpoint is verified in a forked child first (once per process; load_image_classifier
  // then skips it): no fork may happen while another thread runs, since the child inherits
  // whatever lock that thread held (GCC 12's AddressSanitizer allocator deadlocked it in CI).
  // Then the checksum of its bytes (results.h5's model_checksum) is computed while the model is
  // built (about 0.15 s for 45 MB, on a core that would otherwise wait).
  verify_checkpoint(o.model);
  runtime::check_device(o.device, "classify");  // the command checked it before reading inputs
  runtime::use_device(o.device);                // cuda:N: LibTorch's work goes there, not to GPU 0
  check(runtime::is_precision_name(o.precision), "classify",
        "precision must be fp32 or bf16, got '", o.precision, "'");
  auto model_checksum = start_async([&] { return file_checksum(o.model); });
  auto loaded = load_image_classifier(o.model);
  auto& model = *loaded.model;
  const torch::Device device(o.device);
  model.to(device);
  model.eval();
  model.fold_batch_norm();  // inference only (ImageClassifier::fold_batch_norm)
  const auto support = map_support(model, loaded.config.arch);
  const auto maps = o.maps.empty() ? defaults_of(support) : o.maps;
  for (const auto& m : maps) {
    const bool own = std::find(support.own.begin(), support.own.end(), m) != support.own.end();
    const bool ok =
        own || (m == "gradcam" && support.gradcam) || (m == "gradient_rollout" && support.vit);
    auto known = defaults_of(support);
    if (support.vit) known.push_back("gradient_rollout");
    check(ok, o.model, "has no map '", m, "' (", loaded.config.arch, " offers ",
          nlohmann::json(known).dump(), ")");
  }
  const auto& meta = loaded.meta;
  const auto pipeline = [&] {
    nlohmann::json config =
        meta.preprocessing_config.is_object() && !meta.preprocessing_config.empty()
            ? meta.preprocessing_config
            : nlohmann::json{
                  {"steps",
                   {{{"op", "resize"},
                     {"size", loaded.config.image_size > 0 ? loaded.config.image_size : 224}}}}};
    if (o.decode_reduce_to) {
      config = preprocessing::Pipeline::from_json(config).to_json();  // "decode" filled in
      config["decode"]["reduce_to"] = *o.decode_reduce_to;
    }
    return preprocessing::Pipeline::from_json(config);
  }();
  const auto& classes = meta.class_names;
  const auto num_classes = model.num_classes();
  std::vector<std::string> class_names = classes;
  check(class_names.empty() || static_cast<int64_t>(class_names.size()) == num_classes, o.model,
        "names ", class_names.size(), " classes ", names_excerpt(class_names), " for a model of ",
        num_classes, " classes");
  if (class_names.empty()) {
    for (int64_t c = 0; c < num_classes; ++c)
      class_names.push_back(num_classes == 2 ? (c ? "malignant" : "benign")
                                             : "class_" + std::to_string(c));
  }
  // The checkpoint's threshold and temperature, checked as evaluate checks them (a crafted
  // threshold of 5 would label every image benign).
  std::optional<double> threshold = o.threshold;
  if (!threshold && num_classes == 2) threshold = checkpoint_threshold(meta, o.model);
  if (threshold && num_classes != 2) {
    if (o.warn)  // it decided nothing, without a word
      o.warn(concat("--threshold is for binary models; ", o.model, " has ", num_classes,
                    " classes, and each image's class is its most probable one"));
    // Nor is it recorded: results.h5's threshold is the rule its labels were made by (null:
    // arg-max), and merge compares it.
    threshold.reset();
  }
  const double temperature = checkpoint_temperature(meta, o.model);

  // The dataset's labels index its own classes: each is stored as the model's class of its
  // name. A binary model given --multiclass labels stored MEL, NV, ... by position (as class 0,
  // 1 and beyond), without a word. By position still when the checkpoint names no classes (or
  // only export_weights.py's class_0, class_1, ...), or when no name matches and the counts
  // agree (said once). A label of a class the model does not have is not stored (-1), counted
  // in one warning after this run's inputs are chosen.
  const bool named = [&] {
    for (std::size_t c = 0; c < classes.size(); ++c)
      if (classes[c] != "class_" + std::to_string(c)) return true;
    return false;
  }();
  // ISIC 2018 and HAM10000 say AKIEC where ISIC 2019 says AK: one diagnosis.
  const auto same_class = [](const std::string& a, const std::string& b) {
    return a == b || (a == "AKIEC" && b == "AK") || (a == "AK" && b == "AKIEC");
  };
  std::vector<int64_t> label_of(dataset.class_names.size(), -1);
  bool matched = false;
  for (std::size_t c = 0; named && c < dataset.class_names.size(); ++c) {
    const auto at = std::find_if(class_names.begin(), class_names.end(), [&](const auto& name) {
      return same_class(name, dataset.class_names[c]);
    });
    if (at != class_names.end()) label_of[c] = at - class_names.begin();
    matched = matched || at != class_names.end();
  }
  const bool by_position =
      !matched && static_cast<int64_t>(dataset.class_names.size()) == num_classes;
  if (by_position) {
    for (std::size_t c = 0; c < label_of.size(); ++c)
      label_of[c] = static_cast<int64_t>(c);
    const bool labelled = std::any_of(dataset.samples.begin(), dataset.samples.end(),
                                      [](const datasets::Sample& s) { return s.labelled(); });
    if (named && labelled && o.warn)
      o.warn(concat("the dataset's classes ", names_excerpt(dataset.class_names),
                    " are not the model's ", names_excerpt(class_names),
                    ": its labels are read by position (the first as the first, ...)"));
  }

  // Shapes: the pipeline's output size and each map's native size, from one blank image.
  const auto probe = pipeline.process(cv::Mat(256, 256, CV_8UC3, cv::Scalar(128, 128, 128)));
  const int64_t H = probe.image.rows, W = probe.image.cols;
  // results.h5 holds one image size: a pipeline whose output follows the input's size (no
  // resize, or one that keeps the aspect) could store no photograph of another shape.
  const auto photo = pipeline.process(cv::Mat(384, 512, CV_8UC3, cv::Scalar(128, 128, 128))).image;
  check(photo.rows == H && photo.cols == W, o.model,
        "its preprocessing makes images whose size follows the input's (", W, " x ", H,
        " from 256 x 256, ", photo.cols, " x ", photo.rows,
        " from 512 x 384): classify needs one size for every image (a resize step with mode "
        "crop, docs/preprocessing.md)");
  ResultsLayout layout;
  layout.num_classes = num_classes;
  layout.height = H;
  layout.width = W;
  layout.overlays = o.overlays;
  layout.tta = o.tta;
  {
    const auto x = pipeline.tensor(probe.image).unsqueeze(0).to(device);
    mv::ImageOutput out;
    try {
      torch::NoGradGuard ng;
      out = model.forward(x, support.vit);
    } catch (const c10::Error&) {
      check_model_takes_pipeline_output(model, pipeline, o.model);  // says why, naming the size
      throw;
    } catch (const Error&) {  // the model's own check (a ViT's patch grid), said for the file
      check_model_takes_pipeline_output(model, pipeline, o.model);
      throw;
    }
    const std::map<std::string, at::Tensor> shapes = out.maps;
    // A negative BatchNorm variance or an overflowing weight passes the checkpoint's NaN/inf
    // check and makes NaN for every image: labels from it would be meaningless.
    check(torch::isfinite(out.logits).all().item<bool>(), o.model,
          "gives non-finite outputs (NaN or inf) for a plain grey image: the weights are "
          "damaged");
    // Finite logits that the temperature takes past the largest float give NaN probabilities.
    check(torch::isfinite(torch::softmax(out.logits.to(torch::kFloat) / temperature, 1))
              .all()
              .item<bool>(),
          o.model, "its temperature ", temperature,
          " takes the logits of a plain grey image past the largest float (the probabilities "
          "are NaN): the weights or the temperature are damaged");
    for (const auto& m : maps) {
      ResultsMap rm;
      rm.name = m;
      at::Tensor t;
      if (m == "gradcam") {
        t = mv::grad_cam(model, x);
        rm.source = "gradcam";
      } else if (m == "gradient_rollout") {
        t = mv::vit_gradient_rollout(model, x);
        rm.source = "gradient_rollout";
      } else {
        t = shapes.at(m);
        rm.source = m == "rollout" ? "rollout" : "model";
        rm.normalization = m == "rollout" ? "max" : "none";
        if (m != "rollout") rm.weights = model.map_weights();
      }
      rm.height = t.size(1);
      rm.width = t.size(2);
      layout.maps.push_back(rm);
    }
  }
  std::set<std::string> max_normalized;  // maps whose values are divided by their maximum
  for (const auto& rm : layout.maps)
    if (rm.normalization == "max") max_normalized.insert(rm.name);
  if (o.faithfulness) {
    for (const auto& m : maps)
      for (const char* k :
           {"deletion_auc", "insertion_auc", "mass_in_mask", "jaccard", "pointing_game"})
        layout.measures.push_back(m + "/" + k);
    layout.measures.push_back("random/deletion_auc");
    layout.measures.push_back("random/insertion_auc");
    for (const char* k : {"mass_in_mask", "jaccard", "pointing_game"})
      layout.measures.push_back(std::string("gaussian/") + k);
  }
  preprocessing::Normalization norm = pipeline.normalization();
  const auto mean = torch::tensor(std::vector<float>(norm.mean.begin(), norm.mean.end()));
  const auto stdv = torch::tensor(std::vector<float>(norm.std.begin(), norm.std.end()));
  const nlohmann::json faith_config = {{"steps", o.faithfulness_steps},
                                       {"substrate", "zero"},
                                       {"blur_sigma_px", 5.0},
                                       {"random_seed", 0},
                                       {"gaussian_sigma", 0.15}};

  ResultsHeader expected{
      {"model_checksum", model_checksum.get()},
      {"model_config", image_model_config_to_json(loaded.config).dump()},
      {"preprocessing_config", pipeline.to_json().dump()},
      {"class_names", nlohmann::json(class_names).dump()},
      {"threshold", threshold ? nlohmann::json(*threshold).dump() : "null"},
      {"temperature", nlohmann::json(temperature).dump()},
      {"shard", std::to_string(o.shard) + "/" + std::to_string(o.num_shards)},
      {"precision", o.precision},
  };
  if (o.faithfulness) expected["faithfulness"] = faith_config.dump();

  fs::create_directories(o.out_dir);
  // One run per folder (attnscope/folder_lock.h); held until classify returns.
  const FolderLock folder_lock(o.out_dir,
                               "wait for it to end, or give this run (each shard) its own --out");
  remove_stale_temporaries(o.out_dir);
  const auto h5_path = (fs::path(o.out_dir) / "results.h5").string();
  check(!fs::is_directory(h5_path), h5_path,
        "is a folder, not a results file: remove it or choose another --out");
  const bool resuming = o.resume && fs::exists(h5_path);
  check(resuming || o.overwrite || !fs::exists(h5_path), h5_path,
        "exists; pass --resume to continue it or --overwrite to replace it");
  // Replacing a file: the new one is built beside it and renamed at the end, so a failed or
  // killed run leaves the old one intact. A fresh file is written in place (resumable).
  std::optional<AtomicFile> replacement;
  if (!resuming && fs::exists(h5_path)) replacement.emplace(h5_path);
  const std::string write_path = replacement ? replacement->temp_path() : h5_path;
  std::optional<ResultsWriter> writer;
  if (resuming) {
    writer.emplace(ResultsWriter::resume(h5_path, expected, layout));
    writer->set_attribute("command_line",
                          writer->attribute("command_line") + " ; " + o.command_line);
  } else {
    ResultsHeader header = expected;
    header["attnscope_version"] = kVersion;
    header["model_path"] = o.model;
    header["command_line"] = o.command_line;
    header["started_at"] = utc_now();
    writer.emplace(ResultsWriter::create(write_path, header, layout, h5_path));
  }

  // Inputs of this run: this shard's, less what is stored.
  const auto stored = writer->stored();  // id -> the source path stored with it
  if (resuming && o.warn && !stored.empty()) {
    // Another input set: the file would hold both runs' images, as one run's.
    std::set<std::string> inputs;
    for (const auto& s : dataset.samples)
      inputs.insert(s.image_id);
    int64_t others = 0;
    std::string example;
    for (const auto& [id, source] : stored)
      if (!inputs.count(id)) {
        if (others++ == 0) example = id;
      }
    if (others > 0)
      o.warn(concat(h5_path, " holds ", others, " of ", stored.size(),
                    " images that are not among this run's inputs (e.g. '", excerpt(example, 100),
                    "'): it was started on other inputs, and --resume adds this run's images to "
                    "them (the file then cannot be merged with shards: input positions repeat); "
                    "classify into another --out to keep the runs apart"));
    // The same id from another file (another folder of the same names): its stored row is
    // kept and the file given now is never read, so say so.
    int64_t moved = 0;
    std::string moved_example;
    // Another spelling of the same file (./x, an absolute path) is the same file; a stored path
    // that no longer resolves from here (a relative one of another working directory) tells
    // nothing either way. The stored path is escaped (escaped_name): its own bytes are read
    // back to find the file.
    const auto other_file = [](const std::string& stored_path, const std::string& now) {
      const auto then = datasets::text::unescaped_name(stored_path);
      std::error_code ec;
      if (then == now || !fs::exists(then, ec) || !fs::exists(now, ec)) return false;
      return !fs::equivalent(then, now, ec) && !ec;
    };
    for (const auto& s : dataset.samples) {
      const auto at = stored.find(s.image_id);
      if (at != stored.end() && other_file(at->second, s.path) && moved++ == 0)
        moved_example =
            concat("'", excerpt(s.image_id, 100), "': stored from '", excerpt(at->second, 200),
                   "', given now as '", excerpt(s.path, 200), "'");
    }
    if (moved > 0)
      o.warn(concat(h5_path, " holds ", moved, " of this run's ids from another file (e.g. ",
                    moved_example,
                    "): --resume keeps the stored rows and does not read those "
                    "files; classify into another --out to classify them"));
  }
  datasets::Dataset todo;
  todo.class_names = class_names;
  int64_t dropped = 0;  // this run's labels of classes the model does not have
  std::vector<int64_t> global_index;
  ClassifySummary summary;
  // --faithfulness: images whose deletion or insertion curve held a non-finite score (a model
  // giving NaN on the black substrate): their AUC is NaN, which reads as "does not apply".
  int64_t unscored = 0, scored = 0;
  std::string first_unscored;
  for (std::size_t i = 0; i < dataset.samples.size(); ++i) {
    if (static_cast<int64_t>(i) % o.num_shards != o.shard) continue;
    const auto& s = dataset.samples[i];
    if (stored.count(s.image_id)) {
      ++summary.skipped;
      continue;
    }
    todo.samples.push_back(s);
    if (s.labelled()) {
      auto& label = todo.samples.back().label;
      label = s.label >= 0 && s.label < static_cast<int64_t>(label_of.size())
                  ? label_of[static_cast<std::size_t>(s.label)]
                  : -1;
      dropped += label < 0;
    }
    global_index.push_back(static_cast<int64_t>(i));
  }
  if (dropped > 0 && o.warn)
    o.warn(named ? concat("the dataset's classes are ", names_excerpt(dataset.class_names),
                          " and the model's ", names_excerpt(class_names), ": ", dropped,
                          " labels of classes the model does not have are not stored, nor "
                          "counted in the metrics (--multiclass / --ak-benign choose the "
                          "dataset's classes)")
                 : concat(o.model, " names no classes and predicts ", num_classes,
                          "; the dataset has ", dataset.class_names.size(), " ",
                          names_excerpt(dataset.class_names), ": its ", dropped,
                          " labels are not stored, nor counted in the metrics"));

  const auto stopping = [&] { return o.stop_requested && o.stop_requested(); };
  std::map<std::string, std::size_t> position;
  for (std::size_t k = 0; k < todo.samples.size(); ++k)
    position.emplace(todo.samples[k].image_id, k);
  ClassifyProgress prog;
  prog.total = static_cast<int64_t>(todo.samples.size());
  {
    WriterThread writer_thread(*writer, 2);
    if (!todo.samples.empty()) {
      auto source = std::make_shared<datasets::ImageFileSource>(todo, pipeline.decode_options());
      datasets::LoaderOptions lo;
      lo.batch_size = o.batch_size;
      lo.workers = o.threads;
      lo.queue = std::max(2, o.threads + 1);
      lo.order = datasets::Order::kSequential;
      lo.augment = false;
      // A stop request ends the wait for a batch of slow images, not only the run after it.
      if (o.stop_requested) lo.cancelled = o.stop_requested;
      datasets::Loader loader(source, pipeline, lo);
      loader.start_epoch(0);
      while (auto batch = loader.next()) {
        WriteJob job;
        bool cut_short = false;  // a stop request came between the images of --faithfulness
        for (const auto& f : batch->errors) {
          ResultError e;
          e.id = f.image_id;
          e.path = datasets::text::escaped_name(f.path);
          e.reason = f.message;
          // Batch::errors holds no source index: find it by id.
          const auto it = position.find(f.image_id);
          if (it != position.end()) e.index = global_index[it->second];
          job.errors.push_back(std::move(e));
        }
        const int64_t B = batch->size();
        if (B > 0) {
          auto& rows = job.rows;
          const auto images = batch->images.to(device);
          for (int64_t b = 0; b < B; ++b) {
            const auto src = batch->indices[static_cast<std::size_t>(b)];
            rows.ids.push_back(batch->ids[static_cast<std::size_t>(b)]);
            rows.paths.push_back(datasets::text::escaped_name(todo.samples[src].path));
            rows.index.push_back(global_index[src]);
            rows.label.push_back(todo.samples[src].label);
          }
          const int T = o.tta ? static_cast<int>(kDihedralCount) : 1;
          std::vector<torch::Tensor> logits_t, probs_t;
          std::vector<std::map<std::string, torch::Tensor>> own_t;
          // With Grad-CAM the head runs once, with autograd, on the trunk's detached features:
          // its logits and own maps are the predictions, its graph gives Grad-CAM of the class
          // predicted from all transforms. The trunk runs once per image either way.
          const bool cam = std::find(maps.begin(), maps.end(), "gradcam") != maps.end();
          std::vector<mv::HeadForGradCam> heads_t;
          {
            torch::NoGradGuard ng;
            for (int t = 0; t < T; ++t) {
              // Every forward pass of the model (here, gradient rollout's, the faithfulness
              // curves') runs in the run's precision; what is computed from its outputs
              // (Grad-CAM's weighted sum, rollout's products, the curves' blur) in float32.
              const runtime::AutocastScope autocast(o.precision, device);
              const auto x = o.tta ? dihedral_transform(images, t).contiguous() : images;
              auto f = model.forward_features(x, support.vit);
              mv::ImageOutput out;
              if (cam) {
                heads_t.push_back(mv::forward_head_for_grad_cam(model, f));
                out.logits = heads_t.back().output.logits.detach();
                for (const auto& [name, map] : heads_t.back().output.maps)
                  out.maps[name] = map.detach();
              } else {
                out = model.forward_head(f);
              }
              out.maps.merge(f.maps);
              logits_t.push_back(out.logits.to(torch::kFloat));
              probs_t.push_back(torch::softmax(out.logits.to(torch::kFloat) / temperature, 1));
              own_t.push_back(out.maps);
            }
          }
          // In double: the mean of 8 finite float32 logits near the largest float overflowed.
          const auto logits =
              torch::stack(logits_t).to(torch::kDouble).mean(0).to(logits_t.front().dtype());
          const auto probs_all = torch::stack(probs_t);  // (T, B, C)
          const auto probs = probs_all.mean(0);
          // Logits and probabilities: a temperature below 1 (0.01 may be stored) takes finite
          // logits past the largest float, and softmax then gives NaN.
          const auto finite =
              torch::isfinite(logits).all(1).logical_and(torch::isfinite(probs).all(1));
          if (!finite.all().item<bool>()) {
            const auto first = (~finite).nonzero()[0][0].item<int64_t>();
            throw Error(o.model, concat("gives non-finite outputs (NaN or inf) for ",
                                        rows.paths[static_cast<std::size_t>(first)],
                                        "; the images before it are stored"));
          }
          at::Tensor pred = probs.argmax(1);
          if (threshold && num_classes == 2)
            pred = (probs.select(1, 1) >= *threshold).to(torch::kLong);
          rows.logits = logits.cpu();
          rows.probability = probs.cpu();
          if (o.tta) rows.probability_std = probs_all.std(0, /*unbiased=*/false).cpu();
          rows.prediction = pred.cpu();
          for (const auto& m : maps) {
            std::vector<torch::Tensor> per_t;
            for (int t = 0; t < T; ++t) {
              torch::Tensor v;
              if (m == "gradcam")
                v = mv::grad_cam(heads_t[static_cast<std::size_t>(t)], pred);
              else if (m == "gradient_rollout") {
                const runtime::AutocastScope autocast(o.precision, device);
                v = mv::vit_gradient_rollout(
                    model, o.tta ? dihedral_transform(images, t).contiguous() : images, pred);
              } else
                v = own_t[static_cast<std::size_t>(t)].at(m);
              v = v.detach().to(torch::kFloat);
              per_t.push_back(o.tta ? dihedral_inverse(v, t) : v);
            }
            auto mean_map = torch::stack(per_t).mean(0);
            // A "max" map has its maximum at 1 (an all-zero map stays 0): so has the mean of
            // the 8, divided again by its maximum (the report draws maps on one 0-1 scale).
            if (o.tta && max_normalized.count(m) != 0)
              mean_map = mean_map / mean_map.flatten(1)
                                        .amax(1)
                                        .clamp_min(std::numeric_limits<float>::min())
                                        .view({-1, 1, 1});
            rows.maps[m] = mean_map.cpu().contiguous();
          }
          // The input before normalisation, (B, H, W, 3) uint8.
          const auto cpu_images = batch->images.to(torch::kFloat);
          rows.preprocessed =
              ((cpu_images * stdv.view({1, 3, 1, 1}) + mean.view({1, 3, 1, 1})) * 255.0f)
                  .round()
                  .clamp(0, 255)
                  .to(torch::kByte)
                  .permute({0, 2, 3, 1})
                  .contiguous();
          if (o.overlays)
            for (const auto& m : maps) {
              std::vector<at::Tensor> ov;
              for (int64_t b = 0; b < B; ++b)
                ov.push_back(overlay(rows.preprocessed[b], rows.maps[m][b]));
              rows.overlays[m] = torch::stack(ov);
            }
          if (o.faithfulness) {
            std::map<std::string, std::vector<float>> values;
            const float nan = std::numeric_limits<float>::quiet_NaN();
            RiseOptions ro;
            ro.steps = o.faithfulness_steps;
            ro.substrate = ((torch::zeros({3}) - mean) / stdv);
            const auto& batch_masks =
                batch->masks.defined() ? batch->masks : batch->partial_masks;
            const auto gauss = gaussian_prior(H, W);
            for (int64_t b = 0; b < B; ++b) {
              if (stopping()) {
                cut_short = true;
                break;
              }
              const int64_t target = pred[b].item<int64_t>();
              const ScoreFn score = [&](const torch::Tensor& x) {
                torch::NoGradGuard ng;
                const runtime::AutocastScope autocast(o.precision, device);
                return torch::softmax(
                           model.forward(x.to(device)).logits.to(torch::kFloat) / temperature, 1)
                    .select(1, target)
                    .cpu();
              };
              const auto image = images[b];
              // NaN for an image without a mask, whatever the rest of its batch has.
              const bool has_mask = batch_masks.defined() &&
                                    static_cast<std::size_t>(b) < batch->has_mask.size() &&
                                    batch->has_mask[static_cast<std::size_t>(b)] != 0;
              auto mask = has_mask ? batch_masks[b][0].cpu() : torch::Tensor();
              // An empty mask (no lesion pixel left after preprocessing) measures nothing: NaN,
              // not scores of 0 that read as a map missing the lesion.
              const bool masks = has_mask && mask.max().item<float>() > 0;
              auto localise = [&](const std::string& name, const torch::Tensor& up) {
                values[name + "/mass_in_mask"].push_back(
                    masks ? static_cast<float>(mass_in_mask(up, mask)) : nan);
                values[name + "/jaccard"].push_back(masks ? static_cast<float>(jaccard(up, mask))
                                                          : nan);
                values[name + "/pointing_game"].push_back(
                    masks ? static_cast<float>(pointing_game(up, mask)) : nan);
              };
              bool finite_scores = true;
              const auto rise = [&](const torch::Tensor& map) {
                const auto r = rise_auc(score, image, map, ro);
                finite_scores = finite_scores && std::isfinite(r.deletion_auc) &&
                                std::isfinite(r.insertion_auc);
                return r;
              };
              for (const auto& m : maps) {
                const auto map = rows.maps[m][b];
                const auto r = rise(map);
                values[m + "/deletion_auc"].push_back(static_cast<float>(r.deletion_auc));
                values[m + "/insertion_auc"].push_back(static_cast<float>(r.insertion_auc));
                localise(m, upsample_maps(map.unsqueeze(0), H, W)[0]);
              }
              const auto r = rise(random_map(H, W, rows.ids[b]));
              ++scored;
              if (!finite_scores && unscored++ == 0)
                first_unscored = rows.paths[static_cast<std::size_t>(b)];
              values["random/deletion_auc"].push_back(static_cast<float>(r.deletion_auc));
              values["random/insertion_auc"].push_back(static_cast<float>(r.insertion_auc));
              localise("gaussian", gauss);
            }
            for (const auto& name : layout.measures)
              rows.measures[name] = torch::tensor(values[name]);
          }
        }
        // A faithfulness batch cut short by a stop request is dropped whole: --resume redoes it.
        if (cut_short) {
          summary.interrupted = true;
          break;
        }
        prog.done += B + static_cast<int64_t>(job.errors.size());
        prog.failed += static_cast<int64_t>(job.errors.size());
        writer_thread.push(std::move(job));
        prog.seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        if (progress) progress(prog);
        // A request during the last batch: the run is complete, and ends as one.
        if (prog.done < prog.total && stopping()) {
          summary.interrupted = true;
          break;
        }
      }
      // The loader ends the epoch early at a stop request.
      if (prog.done < prog.total && stopping()) summary.interrupted = true;
    }
    writer_thread.close();
    writer_thread.rethrow();
  }
  if (summary.interrupted && replacement) {
    // The previous results.h5 stays; this run's file and its replicas are removed.
    writer.reset();
    summary.replaced_nothing = true;
    summary.classified = 0;
    return summary;
  }
  // Interrupted: every written batch is committed at h5_path; without finished_at the file
  // reads as a run to continue with --resume.
  if (!summary.interrupted) writer->finish(utc_now());
  writer.reset();  // the replicas go; h5_path remains
  if (replacement) replacement->commit();
  const auto results = read_own_results(h5_path);
  const auto pred_csv = (fs::path(o.out_dir) / "predictions.csv").string();
  const auto err_csv = (fs::path(o.out_dir) / "errors.csv").string();
  write_predictions_csv(results, pred_csv);
  write_errors_csv(results, err_csv);
  summary.classified = static_cast<int64_t>(results.ids.size());
  summary.failed = static_cast<int64_t>(results.errors.size());
  summary.written = {h5_path, pred_csv, err_csv};
  if (unscored > 0 && o.warn)
    o.warn(
        concat("--faithfulness: the model's output is not finite (NaN or inf) on the deletion or "
               "insertion images of ",
               unscored, " of ", scored, " images (the first ", first_unscored,
               "): the AUC of each such curve is stored as NaN, which reads as \"does not "
               "apply\"; the model's weights overflow on such inputs"));
  // Metrics over every labelled row of the file (resumed rows included).
  std::vector<int64_t> labels;
  std::vector<int64_t> rows_labelled;
  for (std::size_t i = 0; i < results.label.size(); ++i)
    if (results.label[i] >= 0) {
      labels.push_back(results.label[i]);
      rows_labelled.push_back(static_cast<int64_t>(i));
    }
  if (!labels.empty()) {
    MetricsOptions mo;
    mo.threshold = threshold.value_or(0.5);
    mo.class_names = class_names;
    mo.curves = false;
    mo.bootstrap_resamples = 0;
    try {
      const auto m = compute_metrics(
          labels, results.probability.index_select(0, torch::tensor(rows_labelled)), mo);
      summary.summary.push_back(concat(
          "labelled ", m.count, ": accuracy ", m.accuracy, ", balanced accuracy ",
          m.balanced_accuracy, ", AUC ",
          std::isnan(m.auc) ? std::string("undefined (") + m.auc_undefined + ")"
                            : std::to_string(m.auc),
          ", sensitivity ", m.sensitivity, ", specificity ", m.specificity, ", ECE ", m.ece));
    } catch (const Error& e) {
      summary.summary.push_back(concat("metrics not computed: ", e.what()));
    }
  }
  // The measures' means over every row of the file too (a resumed run said those of its own
  // images only), NaN (no mask) left out.
  if (!layout.measures.empty()) {
    const auto file = h5::File::open(h5_path);
    for (const auto& name : layout.measures) {
      const auto v = h5::read_tensor(file.id(), "measures/" + name, h5_path).to(torch::kDouble);
      const auto known = v.isfinite();
      const auto n = known.sum().item<int64_t>();
      if (n > 0)
        summary.summary.push_back(concat(
            "mean ", name, " ", v.masked_select(known).mean().item<double>(), " (", n, " images)"));
    }
  }
  return summary;
}

}  // namespace attnscope::pipeline
