#include "pipeline/vision/evaluate.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include <torch/torch.h>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "datasets/text/tokenizer.h"
#include "pipeline/vision/results.h"
#include "pipeline/vision/tta.h"
#include "preprocessing/pipeline.h"
#include "runtime/precision.h"
#include "runtime/runtime.h"

namespace attnscope::pipeline {
namespace {

/// A number from extra[key], also when written as a string; nullopt when absent.
std::optional<double> extra_number(const CheckpointMeta& meta, const char* key,
                                   const std::string& path) {
  if (!meta.extra.is_object() || !meta.extra.contains(key)) return std::nullopt;
  const auto& v = meta.extra.at(key);
  if (v.is_number()) return v.get<double>();
  if (v.is_string()) {
    try {
      size_t used = 0;
      const double d = std::stod(v.get<std::string>(), &used);
      if (used == v.get<std::string>().size()) return d;
    } catch (const std::exception&) {
    }
  }
  throw Error(path, concat("checkpoint attribute extra.", key, " is ", json_excerpt(v),
                           "; expected a number"));
}

// extra.<key>, or in files written before extra held it, provenance.<key> when a number.
std::optional<double> stored_number(const CheckpointMeta& meta, const char* key,
                                    const std::string& path) {
  if (auto v = extra_number(meta, key, path)) return v;
  const auto& p = meta.provenance;
  if (p.is_object() && p.contains(key) && p.at(key).is_number()) return p.at(key).get<double>();
  return std::nullopt;
}

void check_temperature(double t, const std::string& path) {
  check(t >= kMinTemperature && t <= kMaxTemperature, path, "checkpoint temperature ", t,
        " must be in [", kMinTemperature, ", ", kMaxTemperature, "]");
}

}  // namespace

double checkpoint_threshold(const CheckpointMeta& meta, const std::string& path) {
  const auto t = stored_number(meta, "threshold", path).value_or(0.5);
  check(std::isfinite(t) && t >= 0 && t <= 1, path, "checkpoint threshold ", t,
        " must lie in [0, 1]");
  return t;
}

double checkpoint_temperature(const CheckpointMeta& meta, const std::string& path) {
  const auto t = stored_number(meta, "temperature", path).value_or(1.0);
  check_temperature(t, path);
  return t;
}

torch::Tensor predict_probabilities(models::vision::ImageClassifier& model,
                                    const torch::Tensor& images, double temperature, bool tta,
                                    const std::string& precision) {
  torch::NoGradGuard no_grad;
  const auto probabilities = [&](const torch::Tensor& x) {
    torch::Tensor logits;
    {
      const runtime::AutocastScope autocast(precision, x.device());
      logits = model.forward(x).logits;
    }
    return torch::softmax(logits.to(torch::kFloat) / temperature, 1);
  };
  return tta ? tta_mean(probabilities, images) : probabilities(images);
}

cv::Size check_model_takes_pipeline_output(models::vision::ImageClassifier& model,
                                           const preprocessing::Pipeline& pipeline,
                                           const std::string& subject, const std::string& made_by) {
  const auto image = pipeline.process(cv::Mat(256, 256, CV_8UC3, cv::Scalar(128, 128, 128))).image;
  const auto device =
      model.parameters().empty() ? torch::Device(torch::kCPU) : model.parameters().front().device();
  const bool training = model.is_training();
  model.eval();  // batch norm's running statistics stay as they are
  try {
    torch::NoGradGuard no_grad;
    (void)model.forward(pipeline.tensor(image).unsqueeze(0).to(device));
  } catch (const c10::OutOfMemoryError&) {
    model.train(training);
    throw;  // the device's memory, not the size of the images
  } catch (const c10::Error& e) {
    model.train(training);
    throw Error(subject, concat("cannot classify the ", image.cols, " x ", image.rows, " images ",
                                made_by, " makes (", e.what_without_backtrace(), ")"));
  } catch (const Error& e) {
    // The model's own check (a ViT's patch grid: "multiples of 8"), said for the file.
    model.train(training);
    throw Error(subject, concat("cannot classify the ", image.cols, " x ", image.rows, " images ",
                                made_by, " makes (", e.what(), ")"));
  }
  model.train(training);
  return image.size();
}

EvaluateResult evaluate_image_classifier(const LoadedImageClassifier& loaded,
                                         const std::string& model_path,
                                         std::shared_ptr<const datasets::SampleSource> source,
                                         const EvaluateOptions& options,
                                         const std::function<void(int64_t, int64_t)>& progress) {
  check(options.batch_size >= 1, "evaluate", "batch size must be >= 1, got ", options.batch_size);
  check(source && source->size() > 0, "evaluate", "the dataset holds no images");
  const int64_t num_classes = loaded.model->num_classes();
  const auto& classes = source->class_names();
  if (!loaded.meta.class_names.empty()) {
    check(loaded.meta.class_names == classes, model_path, "the checkpoint's classes are ",
          names_excerpt(loaded.meta.class_names), " but the dataset's are ", names_excerpt(classes),
          " (--multiclass / --ak-benign choose the dataset's classes)");
  }
  check(static_cast<int64_t>(classes.size()) == num_classes, model_path, "the model predicts ",
        num_classes, " classes but the dataset has ", classes.size(), " ", names_excerpt(classes));
  int64_t unlabelled = 0;
  std::string example;
  for (size_t i = 0; i < source->size(); ++i) {
    if (source->sample(i).labelled()) continue;
    if (unlabelled++ == 0) example = source->sample(i).image_id;
  }
  check(unlabelled == 0, "evaluate", "needs labelled images; ", unlabelled,
        " have no label (e.g. '", example, "')");

  EvaluateResult result;
  result.class_names = classes;
  result.tta = options.tta;
  result.precision = options.precision;
  check(runtime::is_precision_name(options.precision), "evaluate",
        "precision must be fp32 or bf16, got '", options.precision, "'");
  result.temperature = checkpoint_temperature(loaded.meta, model_path);
  result.threshold =
      options.threshold ? *options.threshold : checkpoint_threshold(loaded.meta, model_path);
  check(std::isfinite(result.threshold) && result.threshold >= 0 && result.threshold <= 1,
        "evaluate", "threshold ", result.threshold, " must lie in [0, 1]");

  const auto config = loaded.meta.preprocessing_config;
  const auto pipeline = config.is_null() || (config.is_object() && config.empty())
                            ? preprocessing::Pipeline()
                            : preprocessing::Pipeline::from_json(config);
  datasets::LoaderOptions lo;
  lo.batch_size = options.batch_size;
  lo.workers = options.workers;
  lo.queue = std::max(2, 2 * options.workers);
  lo.order = datasets::Order::kSequential;
  lo.augment = false;
  datasets::Loader loader(source, pipeline, lo);

  runtime::check_device(options.device, "evaluate");
  runtime::use_device(options.device);  // cuda:N: LibTorch's work goes there, not to GPU 0
  const torch::Device device(options.device);
  auto& model = *loaded.model;
  model.to(device);
  model.eval();
  model.fold_batch_norm();  // inference only (ImageClassifier::fold_batch_norm)
  check_model_takes_pipeline_output(model, pipeline, model_path);
  std::vector<torch::Tensor> chunks;
  const auto total = static_cast<int64_t>(source->size());
  int64_t done = 0;
  loader.start_epoch(0);
  while (auto batch = loader.next()) {
    for (const auto& f : batch->errors)
      result.failures.push_back({f.image_id, f.path, f.message});
    done += batch->size() + static_cast<int64_t>(batch->errors.size());
    if (batch->size() > 0) {
      chunks.push_back(predict_probabilities(model, batch->images.to(device), result.temperature,
                                             options.tta, options.precision)
                           .to(torch::kCPU, torch::kDouble));
      // Overflowing weights pass the checkpoint's NaN/inf check: named here, with the image,
      // as classify names them (the metrics said "probability [0, 0] is -nan", naming neither).
      const auto finite = torch::isfinite(chunks.back()).all(1);
      if (!finite.all().item<bool>()) {
        const auto first = (~finite).nonzero()[0][0].item<int64_t>();
        throw Error(model_path,
                    concat("gives non-finite outputs (NaN or inf) for ",
                           source->sample(batch->indices[static_cast<std::size_t>(first)]).path,
                           (options.precision == "bf16" ? " in bfloat16" : ""),
                           ": the weights are damaged or overflow"));
      }
      const auto labels = batch->labels.to(torch::kLong).contiguous();
      for (int64_t i = 0; i < batch->size(); ++i) {
        result.ids.push_back(batch->ids[i]);
        result.paths.push_back(source->sample(batch->indices[i]).path);
        result.labels.push_back(labels[i].item<int64_t>());
      }
    }
    if (progress) progress(done, total);
  }
  if (chunks.empty()) {
    result.probabilities = torch::empty({0, num_classes}, torch::kDouble);
    return result;
  }
  result.probabilities = torch::cat(chunks, 0);
  MetricsOptions mo;
  mo.threshold = result.threshold;
  mo.bootstrap_resamples = options.bootstrap_resamples;
  mo.bootstrap_seed = options.seed;
  mo.class_names = classes;
  result.metrics = compute_metrics(result.labels, result.probabilities, mo);
  return result;
}

void write_predictions_csv(const std::string& path, const EvaluateResult& result) {
  std::ostringstream out;
  out << "image_id,path,label,predicted";
  for (const auto& c : result.class_names)
    out << "," << csv_field("p_" + c);
  out << "\n";
  const auto n = static_cast<int64_t>(result.ids.size());
  const auto predicted =
      n > 0 ? predict(result.probabilities, result.threshold) : std::vector<int64_t>{};
  const auto p = result.probabilities.to(torch::kDouble).contiguous();
  const int64_t c = p.size(1);
  const double* data = p.data_ptr<double>();
  char number[32];
  for (int64_t i = 0; i < n; ++i) {
    // Ids and paths as classify's predictions.csv has them: UTF-8 (escaped_name).
    out << csv_field(datasets::text::escaped_name(result.ids[i])) << ","
        << csv_field(datasets::text::escaped_name(result.paths[i])) << ","
        << csv_field(result.class_names[result.labels[i]]) << ","
        << csv_field(result.class_names[predicted[i]]);
    for (int64_t k = 0; k < c; ++k) {
      std::snprintf(number, sizeof number, "%.17g", data[i * c + k]);
      out << "," << number;
    }
    out << "\n";
  }
  write_file_atomically(path, out.str());
}

}  // namespace attnscope::pipeline
