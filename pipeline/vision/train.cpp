#include "pipeline/vision/train.h"

#include <algorithm>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "attnscope/printable.h"
#include "attnscope/version.h"
#include "datasets/splits.h"
#include "models/vision/presets.h"
#include "pipeline/checkpoint.h"
#include "pipeline/h5.h"
#include "pipeline/metrics.h"
#include "pipeline/vision/evaluate.h"
#include "pipeline/vision/image_losses.h"
#include "pipeline/vision/image_model_config.h"
#include "pipeline/vision/results.h"
#include "runtime/precision.h"
#include "runtime/runtime.h"

namespace attnscope::pipeline {

IndexedSource::IndexedSource(std::shared_ptr<const datasets::SampleSource> base,
                             std::vector<std::size_t> indices)
    : base_(std::move(base)), indices_(std::move(indices)) {
  for (auto i : indices_)
    check(i < base_->size(), "indexed source", "index ", i, " out of range (", base_->size(), ")");
}

// ---------------------------------------------------------------------------------------------
// Losses and metrics

torch::Tensor focal_loss(const torch::Tensor& logits, const torch::Tensor& labels, double gamma,
                         double label_smoothing) {
  const int64_t classes = logits.size(1);
  const auto logp = torch::log_softmax(logits, 1);  // (B, C)
  const auto q = torch::one_hot(labels, classes).to(logits.dtype()) * (1 - label_smoothing) +
                 label_smoothing / static_cast<double>(classes);  // (B, C)
  const auto weight = (1 - logp.exp()).clamp_min(0).pow(gamma);   // (B, C)
  return -(q * weight * logp).sum(1).mean();
}

torch::Tensor distillation_loss(const torch::Tensor& student_logits,
                                const torch::Tensor& teacher_logits, const std::string& kind,
                                double temperature) {
  check(student_logits.sizes() == teacher_logits.sizes() && student_logits.dim() == 2,
        "distillation", "student and teacher logits must both be (B, C), got ",
        student_logits.sizes(), " and ", teacher_logits.sizes());
  const auto teacher = teacher_logits.detach();
  if (kind == "hard")
    return torch::nn::functional::cross_entropy(student_logits, teacher.argmax(1));
  check(kind == "soft", "distillation", "must be soft or hard, got '", kind, "'");
  check(temperature > 0, "distillation", "temperature must be > 0, got ", temperature);
  const auto log_q = torch::log_softmax(student_logits / temperature, 1);
  const auto log_p = torch::log_softmax(teacher / temperature, 1);
  return (log_p.exp() * (log_p - log_q)).sum(1).mean() * (temperature * temperature);
}

double fit_temperature(const torch::Tensor& logits, const torch::Tensor& labels) {
  const auto z = logits.detach().to(torch::kFloat64).cpu();
  const auto y = labels.cpu().to(torch::kInt64);
  check(z.dim() == 2 && z.size(0) == y.size(0) && z.size(0) > 0, "temperature scaling",
        "expects (N, C) logits and N labels, N > 0");
  auto nll = [&](double log_t) {
    return torch::nll_loss(torch::log_softmax(z / std::exp(log_t), 1), y).item<double>();
  };
  // Golden-section search: NLL is convex in 1/T, hence unimodal in log T.
  const double phi = (std::sqrt(5.0) - 1) / 2;
  double a = std::log(0.05), b = std::log(20.0);
  double c = b - phi * (b - a), d = a + phi * (b - a);
  double fc = nll(c), fd = nll(d);
  for (int i = 0; i < 80; ++i) {
    if (fc <= fd) {
      b = d;
      d = c;
      fd = fc;
      c = b - phi * (b - a);
      fc = nll(c);
    } else {
      a = c;
      c = d;
      fc = fd;
      d = a + phi * (b - a);
      fd = nll(d);
    }
  }
  return std::exp((a + b) / 2);
}

// ---------------------------------------------------------------------------------------------
// Training

nlohmann::json image_train_options_to_json(const ImageTrainOptions& o) {
  nlohmann::json j;
  j["model"] = image_model_config_to_json(models::vision::resolve_image_config(o.model));
  j["batch_size"] = o.batch_size;
  j["epochs"] = o.epochs;
  j["optimizer"] = o.optimizer.kind;
  j["learning_rate"] = o.learning_rate;
  j["momentum"] = o.optimizer.momentum;
  j["nesterov"] = o.optimizer.nesterov;
  j["weight_decay"] = o.optimizer.weight_decay;
  j["schedule"] = o.schedule;
  j["warmup_epochs"] = o.warmup_epochs;
  j["step_every"] = o.step_every;
  j["step_gamma"] = o.step_gamma;
  j["loss"] = o.loss;
  j["focal_gamma"] = o.focal_gamma;
  j["label_smoothing"] = o.label_smoothing;
  j["mixup"] = o.mix.mixup_alpha;
  j["cutmix"] = o.mix.cutmix_alpha;
  j["sampler"] = o.sampler;
  j["oversample"] = o.oversample;
  j["ema"] = o.ema_decay;
  j["mask_loss"] = o.mask_loss;
  if (!o.teacher.empty()) {  // written only when on: earlier checkpoints stay as they were
    j["teacher"] = o.teacher;
    j["distill"] = o.distill;
    j["distill_alpha"] = o.distill_alpha;
    j["distill_temperature"] = o.distill_temperature;
  }
  j["init"] = o.init;
  j["init_backbone"] = o.init_backbone;
  j["seed"] = o.seed;
  j["device"] = o.device;
  j["precision"] = o.precision;
  j["time_budget_s"] = o.time_budget_s;
  j["patience"] = o.patience;
  j["select_by"] = o.select_by;
  return j;
}

namespace {

constexpr const char* kStateGroup = "train_state";

std::string join_lines(const std::vector<nlohmann::json>& records) {
  std::string text;
  for (const auto& r : records)
    text += r.dump() + "\n";
  return text;
}

std::vector<nlohmann::json> split_lines(const std::string& text, const std::string& subject) {
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    out.push_back(parse_json_text(line, subject, concat("record ", out.size() + 1)));
  }
  return out;
}

torch::Tensor text_tensor(const std::string& text) {
  auto t = torch::empty({static_cast<int64_t>(text.size())}, torch::kUInt8);
  std::copy(text.begin(), text.end(), t.data_ptr<uint8_t>());
  return t;
}

std::string tensor_text(const torch::Tensor& t) {
  const auto c = t.contiguous().to(torch::kUInt8);
  return std::string(reinterpret_cast<const char*>(c.data_ptr<uint8_t>()),
                     static_cast<std::size_t>(c.numel()));
}

struct TrainState {
  nlohmann::json loop;
  std::map<std::string, torch::Tensor> tensors;
  std::vector<nlohmann::json> history, timing;
};

// Writes a checkpoint (and, for last.h5, the training state). save_image_classifier writes a
// temporary beside `path` and renames it over path once complete (h5::OutputFile); errors name
// path, the file the user knows, not the temporary.
void write_checkpoint(const std::string& path, const models::vision::ImageClassifier& model,
                      const models::vision::ImageModelConfig& config, const CheckpointMeta& meta,
                      const TrainState* state, const double* temperature) {
  try {
    // The state goes in before the checksum is computed: it covers the optimiser's buffers too.
    save_image_classifier(path, model, config, meta, [&](hid_t root) {
      if (temperature) h5::write_attribute(root, "temperature", concat(*temperature), path);
      if (!state) return;
      auto group = h5::require_group(root, kStateGroup, path);
      h5::write_attribute(group.get(), "loop", state->loop.dump(), path);
      for (const auto& [name, tensor] : state->tensors) {
        std::string key = name;
        std::replace(key.begin(), key.end(), '/', ':');
        h5::write_tensor(group.get(), key, tensor.detach().cpu(), path);
      }
      h5::write_tensor(group.get(), "_history", text_tensor(join_lines(state->history)), path);
      h5::write_tensor(group.get(), "_timing", text_tensor(join_lines(state->timing)), path);
    });
  } catch (const Error& e) {
    // Named once: "best.h5:/layer: cannot write the checkpoint: cannot write dataset (...)".
    const auto& subject = e.subject();
    if (subject == path || subject.rfind(path + ":/", 0) == 0)
      throw Error(e.subject(), concat("cannot write the checkpoint: ", e.message()));
    throw Error(path, concat("cannot write the checkpoint: ", e.what()));
  }
}

TrainState read_state(const std::string& path) {
  h5::check_untrusted_file(path, true);
  auto file = h5::File::open(path);
  check(h5::exists(file.id(), kStateGroup), path, "has no /", kStateGroup,
        " group: not the last.h5 of an `attnscope train` run");
  auto group = h5::require_group(file.id(), kStateGroup, path);
  TrainState state;
  check(h5::has_attribute(group.get(), "loop"), path, "/", kStateGroup,
        " has no loop attribute (the training loop's state)");
  state.loop = parse_json_text(h5::read_string_attribute(group.get(), "loop", path), path,
                               concat("/", kStateGroup, "@loop"));
  for (const auto& name : h5::children(group.get())) {
    auto tensor = h5::read_tensor(group.get(), name, path);
    const auto subject = h5::where(path, concat(kStateGroup, "/", name));
    if (name == "_history") {
      state.history = split_lines(tensor_text(tensor), subject);
    } else if (name == "_timing") {
      state.timing = split_lines(tensor_text(tensor), subject);
    } else {
      std::string key = name;
      std::replace(key.begin(), key.end(), ':', '/');
      state.tensors[key] = tensor;
    }
  }
  return state;
}

std::string class_list(const std::vector<std::string>& names, const std::vector<int64_t>& counts) {
  std::string out;
  for (std::size_t c = 0; c < names.size(); ++c)
    out += concat(c ? ", " : "", names[c], " ", counts[c]);
  return out;
}

std::vector<int64_t> source_counts(const datasets::SampleSource& source) {
  std::vector<int64_t> counts(source.class_names().size(), 0);
  for (std::size_t i = 0; i < source.size(); ++i) {
    const auto label = source.sample(i).label;
    check(label >= 0 && label < static_cast<int64_t>(counts.size()), source.sample(i).image_id,
          "is unlabelled or has a label outside the class list; training needs labelled images");
    ++counts[static_cast<std::size_t>(label)];
  }
  return counts;
}

// Training needs an image of every class of the list (a class without one is never learnt, and
// its probability is only pushed down); validation needs two classes, and every class when the
// best epoch is chosen by AUC (the macro AUC is undefined without one: no best.h5 would be
// written).
void check_classes(const datasets::SampleSource& source, const std::string& which,
                   bool needs_every_class) {
  check(source.size() > 0, which, "is empty: no images to ",
        which == "training set" ? "train on" : "validate on");
  const auto counts = source_counts(source);
  const auto present = std::count_if(counts.begin(), counts.end(), [](int64_t c) { return c > 0; });
  check(present >= 2, which, "has a single class (", class_list(source.class_names(), counts),
        "); training and validation need at least two");
  if (!needs_every_class || present == static_cast<std::ptrdiff_t>(counts.size())) return;
  std::string missing;
  for (std::size_t c = 0; c < counts.size(); ++c)
    if (counts[c] == 0)
      missing += concat(missing.empty() ? "" : ", ", "'", source.class_names()[c], "'");
  check(false, which, "has no image of class ", missing, " (",
        class_list(source.class_names(), counts),
        which == "training set"
            ? "); every class of the list needs training images (remove the class or add images)"
            : "); its AUC is undefined, so --select-by auc cannot pick best.h5: add images of it "
              "to the validation data, or use --select-by loss or balanced_accuracy");
}

// The command lists (or with --skip-bad leaves out) the unreadable images before the first
// step, so an image that fails now became unreadable during the run (a file replaced, a disk
// error): stop naming it rather than train on a smaller set than the one recorded.
void check_no_failures(const datasets::Batch& batch, const char* phase) {
  if (batch.errors.empty()) return;
  const auto& e = batch.errors.front();
  throw Error(e.image_id, concat("could not be read during ", phase, " (", e.message, ")",
                                 batch.errors.size() > 1 ? concat(", nor ", batch.errors.size() - 1,
                                                                  " other image(s) of the batch")
                                                         : std::string(),
                                 "; the run stops (last.h5 keeps the last complete epoch)"));
}

}  // namespace

const std::vector<std::string>& train_option_words(const std::string& flag) {
  static const std::map<std::string, std::vector<std::string>> words = {
      {"schedule", {"cosine", "step", "constant"}},
      {"loss", {"ce", "weighted-ce", "focal"}},
      {"sampler", {"shuffle", "balanced"}},
      {"select-by", {"auc", "loss", "accuracy", "balanced_accuracy"}},
      {"distill", {"soft", "hard"}},
  };
  const auto it = words.find(flag);
  check(it != words.end(), "train", "no option words for '", flag, "'");
  return it->second;
}

std::string bad_train_word(const std::string& flag, const std::string& value) {
  const auto& allowed = train_option_words(flag);
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return {};
  std::string list;
  for (std::size_t i = 0; i < allowed.size(); ++i)
    list += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + allowed[i];
  return concat(flag, " must be ", list, ", got '", excerpt(value, 60), "'");
}

ImageTrainResult train_image_classifier(std::shared_ptr<const datasets::SampleSource> train,
                                        std::shared_ptr<const datasets::SampleSource> val,
                                        const ImageTrainOptions& options) {
  const auto& o = options;
  check(o.batch_size >= 1 && o.epochs >= 1, "train", "batch size and epochs must be >= 1");
  for (const auto& [flag, value] :
       std::initializer_list<std::pair<const char*, const std::string*>>{
           {"loss", &o.loss},
           {"sampler", &o.sampler},
           {"select-by", &o.select_by},
           {"schedule", &o.schedule},
           {"distill", &o.distill}}) {
    const auto bad = bad_train_word(flag, *value);
    check(bad.empty(), "train", bad);
  }
  runtime::check_device(o.device, "train");  // the command checked it before reading data
  runtime::use_device(o.device);             // cuda:N: LibTorch's work goes there, not to GPU 0
  check(runtime::is_precision_name(o.precision), "train", "precision must be fp32 or bf16, got '",
        o.precision, "'");
  check(o.label_smoothing >= 0 && o.label_smoothing < 1, "train",
        "label smoothing must be in [0, 1)");
  check(o.warmup_epochs >= 0 && o.focal_gamma >= 0, "train",
        "warmup epochs and focal gamma must be >= 0");
  check(!o.out_dir.empty(), "train", "no run folder given");
  check(o.distill_alpha >= 0 && o.distill_alpha <= 1 && o.distill_temperature > 0, "train",
        "distill alpha must be in [0, 1] and the temperature > 0");
  check_classes(*train, "training set", true);
  check_classes(*val, "validation set", o.select_by == "auc");
  const auto class_names = train->class_names();
  check(val->class_names() == class_names, "validation set", "has the classes ",
        names_excerpt(val->class_names()), ", the training set ", names_excerpt(class_names),
        ": give both the same classes");
  const int64_t classes = static_cast<int64_t>(class_names.size());

  // Oversampling: sample i appears K times per epoch when its class has K.
  std::shared_ptr<const datasets::SampleSource> train_source = train;
  if (!o.oversample.empty()) {
    std::map<int64_t, int64_t> repeat;
    for (const auto& [name, k] : o.oversample) {
      const auto it = std::find(class_names.begin(), class_names.end(), name);
      check(it != class_names.end(), "--oversample", "unknown class '", name, "'");
      check(k >= 1, "--oversample", "factor of '", name, "' must be >= 1, got ", k);
      repeat[it - class_names.begin()] = k;
    }
    std::vector<std::size_t> indices;
    for (std::size_t i = 0; i < train->size(); ++i) {
      const auto it = repeat.find(train->sample(i).label);
      const int64_t k = it == repeat.end() ? 1 : it->second;
      for (int64_t r = 0; r < k; ++r)
        indices.push_back(i);
    }
    train_source = std::make_shared<IndexedSource>(train, std::move(indices));
  }

  const torch::Device device(o.device);
  auto config = o.model;
  config.num_classes = classes;
  config = models::vision::resolve_image_config(config);
  torch::manual_seed(o.seed);
  auto model = models::vision::make_image_classifier(config);
  const auto check_arch = [&](const std::string& path) {
    const auto meta = read_checkpoint_meta(path);
    // An object (read_checkpoint_meta checks), but its fields may have any type: value() would
    // throw nlohmann's type errors.
    const auto& mc = meta.model_config;
    const auto field = [&](const char* key) {
      return mc.contains(key) ? mc.at(key) : nlohmann::json();
    };
    const auto arch = field("arch").is_string() ? field("arch").get<std::string>() : "";
    check(arch == config.arch, path, "is a '",
          arch.empty() ? "(no model config)" : excerpt(arch, 100),
          "' checkpoint; this run trains '", config.arch, "'");
    const auto stored_classes =
        field("num_classes").is_number_integer() ? field("num_classes").get<int64_t>() : 0;
    check(stored_classes == classes, path, "has ", stored_classes, " classes; the data has ",
          classes, " (", class_list(class_names, source_counts(*train)), ")");
    return meta;
  };
  if (!o.init.empty()) {
    const auto meta = check_arch(o.init);
    // Strict: the head's outputs keep their meaning only for the same classes in the same order.
    check(meta.class_names.empty() || meta.class_names == class_names, o.init,
          "was trained on the classes ", names_excerpt(meta.class_names), "; this data has ",
          names_excerpt(class_names),
          " (--init keeps the head: for other classes use --init-backbone)");
    load_image_classifier(o.init);  // its configs and tensors checked as classify checks them
    load_checkpoint(o.init, *model);
  }
  if (!o.init_backbone.empty()) {
    build_image_classifier(o.init_backbone, read_checkpoint_meta(o.init_backbone));
    load_image_backbone(o.init_backbone, *model);
  }
  model->to(device);
  check_model_takes_pipeline_output(*model, o.pipeline, "--model " + config.arch,
                                    "this run's preprocessing (--size or --augment)");
  // The teacher: frozen, folded, in eval mode, on the same device.
  std::shared_ptr<models::vision::ImageClassifier> teacher;
  torch::Tensor teacher_scale, teacher_shift;  // x_teacher = x · scale + shift, per channel
  int64_t teacher_h = 0, teacher_w = 0;
  std::string teacher_checksum;  // of the file: a resumed run must have the same teacher
  if (!o.teacher.empty()) {
    auto loaded = load_image_classifier(o.teacher);
    teacher_checksum = file_checksum(o.teacher);
    check(loaded.meta.class_names == class_names, o.teacher,
          "the teacher was trained on the classes ", names_excerpt(loaded.meta.class_names),
          "; this data has ", names_excerpt(class_names));
    const auto teacher_pipeline =
        loaded.meta.preprocessing_config.is_object()
            ? preprocessing::Pipeline::from_json(loaded.meta.preprocessing_config)
            : preprocessing::Pipeline();
    // Undo this run's normalisation, apply the teacher's: x · (s / s_t) + (m - m_t) / s_t.
    const auto& mine = o.pipeline.normalization();
    const auto& its = teacher_pipeline.normalization();
    std::vector<float> scale(3), shift(3);
    for (int c = 0; c < 3; ++c) {
      scale[c] = mine.std[c] / its.std[c];
      shift[c] = (mine.mean[c] - its.mean[c]) / its.std[c];
    }
    teacher_scale = torch::tensor(scale).reshape({1, 3, 1, 1}).to(device);
    teacher_shift = torch::tensor(shift).reshape({1, 3, 1, 1}).to(device);
    teacher = loaded.model;
    teacher->to(device);
    teacher->eval();
    for (auto& p : teacher->parameters())
      p.requires_grad_(false);
    teacher->fold_batch_norm();
    // The side its preprocessing makes, which its batches are resized to.
    const auto made = check_model_takes_pipeline_output(*teacher, teacher_pipeline, o.teacher,
                                                        "its own preprocessing");
    teacher_h = made.height;
    teacher_w = made.width;
  }
  DistributedGroup* const group = o.group;
  const bool main_rank = !group || group->is_main();
  const int world = group ? group->world_size() : 1;
  const int rank = group ? group->rank() : 0;
  std::optional<GradientReducer> reducer;
  if (group) {
    check(o.batch_size >= world, "--batch-size", o.batch_size,
          " is the global batch of a data-parallel run: it must be at least the number of "
          "ranks (",
          world, ")");
    // Every rank starts from rank 0's weights (they already agree: same seed).
    group->broadcast_module(*model);
    reducer.emplace(*group, model->parameters());
  }

  datasets::LoaderOptions train_loader_options;
  train_loader_options.batch_size = o.batch_size;
  train_loader_options.workers = o.workers;
  train_loader_options.order =
      o.sampler == "balanced" ? datasets::Order::kBalanced : datasets::Order::kShuffle;
  train_loader_options.augment = true;
  train_loader_options.seed = o.seed;
  // One process: a stop request also ends the batch being loaded, between images (a batch of
  // slow images, such as hair removal on large photographs, would delay the stop by seconds);
  // the partial epoch is not kept either way. Data-parallel ranks must stop at the same batch,
  // so they finish it and agree after it (hooks.stop_requested).
  if (o.stop_requested && !group)
    train_loader_options.cancelled = [&o] { return o.stop_requested() != 0; };
  // A lone last image joins the batch before it: BatchNorm cannot train on one image whose maps
  // are 1 x 1 (a ResNet's last stage below 64 px). Data-parallel runs cut the same order into
  // every rank's share and keep their batches as they are.
  train_loader_options.join_single_last = !group;
  datasets::Loader train_loader(train_source, o.pipeline, train_loader_options);
  datasets::LoaderOptions val_loader_options;
  val_loader_options.batch_size = o.batch_size;
  val_loader_options.workers = o.workers;
  val_loader_options.order = datasets::Order::kSequential;
  val_loader_options.seed = o.seed;
  datasets::Loader val_loader(val, o.pipeline, val_loader_options);
  const int64_t batches = train_loader.batches_per_epoch();

  TrainingOptions lo;
  lo.epochs = o.epochs;
  lo.optimizer = o.optimizer;
  lo.schedule.kind = o.schedule;
  lo.schedule.base_lr = o.learning_rate;
  lo.schedule.warmup_steps = static_cast<int64_t>(std::llround(o.warmup_epochs * batches));
  // Epochs to steps: a product past int64 ran a step schedule at a rate of 0 (--step-every).
  const auto steps_of = [&](int64_t epochs, const char* what) {
    check(epochs <= std::numeric_limits<int64_t>::max() / batches, "training", what, " ", epochs,
          " epochs of ", batches, " batches are more steps than can be counted");
    return epochs * batches;
  };
  lo.schedule.total_steps = steps_of(o.epochs, "--epochs");
  lo.schedule.step_every = steps_of(std::max<int64_t>(o.step_every, 1), "--step-every");
  lo.schedule.gamma = o.step_gamma;
  lo.ema_decay = o.ema_decay;
  lo.patience = o.patience;
  lo.maximize = o.select_by != "loss";
  lo.seed = o.seed;
  lo.time_budget_s = o.time_budget_s;
  lo.budget_clock = o.budget_clock;
  lo.progress_every = o.progress_every;
  TrainingLoop loop(*model, lo);

  torch::Tensor class_weight;
  if (o.loss == "weighted-ce") {
    std::vector<int64_t> labels;
    for (std::size_t i = 0; i < train_source->size(); ++i)
      labels.push_back(train_source->sample(i).label);
    class_weight =
        torch::tensor(datasets::class_weights(labels, static_cast<int>(classes)), torch::kFloat32)
            .to(device);
  }
  AttentionMaskLossOptions mask_options;
  if (!o.mask_loss.empty()) {
    const auto names = model->map_names();
    check(!names.empty(), "--mask-loss", "model '", config.arch, "' has no attention maps");
    // (A run started before this check resumes as it ran: the term adds a constant.)
    check(o.resume || !models::vision::is_vit(config.arch), "--mask-loss", "model '", config.arch,
          "' is a ViT: its rollout map has no gradient to train");
    check(o.mask_loss.size() == names.size(), "--mask-loss", "gives ", o.mask_loss.size(),
          " weights; model '", config.arch, "' has ", names.size(), " attention maps");
    mask_options.weights.clear();
    for (std::size_t i = 0; i < names.size(); ++i)
      mask_options.weights[names[i]] = o.mask_loss[i];
  }

  const std::string run = o.out_dir;
  const std::string last_path = run + "/last.h5", best_path = run + "/best.h5";
  CheckpointMeta meta;
  meta.preprocessing_config = o.pipeline.to_json();
  meta.class_names = class_names;
  meta.provenance = o.provenance;
  meta.provenance["attnscope_version"] = kVersion;
  meta.extra["command"] = "train";
  meta.extra["threshold"] = 0.5;
  meta.extra["training_config"] = image_train_options_to_json(o);
  if (!teacher_checksum.empty())
    meta.extra["training_config"]["teacher_checksum"] = teacher_checksum;

  TrainState state;
  double resumed_temperature = 1.0;
  if (o.resume) {
    const auto stored = check_arch(last_path);
    check(stored.class_names == class_names, last_path, "was trained on the classes ",
          names_excerpt(stored.class_names), "; this data has ", names_excerpt(class_names));
    const auto stored_sum = json_field(stored.provenance, "data_checksum", std::string(), last_path,
                                       "provenance.data_checksum");
    const auto sum = o.provenance.value("data_checksum", std::string());
    check(stored_sum.empty() || sum.empty() || stored_sum == sum, last_path,
          "was trained on other data (checksum ", stored_sum, ", now ", sum, ")");
    // The teacher takes part in every step: another file under its name would continue the
    // run with other targets.
    if (!teacher_checksum.empty()) {
      const auto& extra = stored.extra;
      const auto stored_config = extra.is_object() && extra.contains("training_config")
                                     ? extra.at("training_config")
                                     : nlohmann::json();
      const auto stored_teacher = json_field(stored_config, "teacher_checksum", std::string(),
                                             last_path, "extra.training_config.teacher_checksum");
      check(stored_teacher.empty() || stored_teacher == teacher_checksum, o.teacher,
            "is not the teacher ", last_path, " was trained with (checksum ", stored_teacher,
            ", now ", teacher_checksum, "): resuming would not continue the same run");
    }
    state = read_state(last_path);
    load_checkpoint(last_path, *model);
    // The calibration of the best epoch so far, in case no later epoch is better. Read now,
    // not at the end: a distributed run's threads would then be running (attnscope/threads.h).
    if (std::filesystem::exists(best_path))
      resumed_temperature = checkpoint_temperature(read_checkpoint_meta(best_path), best_path);
    try {
      loop.restore(state.loop, state.tensors);
    } catch (const Error& e) {
      throw Error(last_path, e.what());
    } catch (const c10::Error& e) {  // LibTorch's checks of a crafted tensor: still one line
      throw Error(last_path, concat("train_state: ", e.what_without_backtrace()));
    }
    // The best value of the metric the run selects by: a log loss >= 0, the others in [0, 1]
    // (an AUC of 7 kept best.h5 from ever being written again).
    const double best = loop.best();
    check(std::isnan(best) || (best >= 0 && (o.select_by == "loss" || best <= 1)), last_path, "/",
          kStateGroup, "@loop: 'best' is ", best, ", not a value of ", o.select_by);
    // metrics.jsonl and timing.jsonl are rewritten from these: one record per completed epoch,
    // in order (an emptied history would lose the epochs before the resume).
    const int64_t done = loop.epochs_completed();
    for (const auto* lines : {&state.history, &state.timing}) {
      const char* what = lines == &state.history ? "_history" : "_timing";
      check(static_cast<int64_t>(lines->size()) == done, last_path, "/", kStateGroup, "/", what,
            " holds ", lines->size(), " record(s) for ", done, " completed epoch(s)");
      for (std::size_t i = 0; i < lines->size(); ++i) {
        const auto& r = (*lines)[i];
        const auto e = r.is_object() ? r.find("epoch") : r.end();
        check(e != r.end() && e->is_number_integer() &&
                  e->get<int64_t>() == static_cast<int64_t>(i) + 1,
              last_path, "/", kStateGroup, "/", what, " record ", i + 1,
              " is not that of epoch ", i + 1);
      }
    }
    if (main_rank) {
      write_file_atomically(run + "/metrics.jsonl", join_lines(state.history));
      write_file_atomically(run + "/timing.jsonl", join_lines(state.timing));
    }
  }

  auto class_loss = [&](const torch::Tensor& logits, const torch::Tensor& labels) {
    if (o.loss == "focal") return focal_loss(logits, labels, o.focal_gamma, o.label_smoothing);
    auto ce = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(o.label_smoothing);
    if (class_weight.defined()) ce.weight(class_weight);
    return torch::nn::functional::cross_entropy(logits, labels, ce);
  };
  // lambda < 1: a mixed batch (pipeline/vision/mixing.h), each image's loss shared between its
  // own label and that of the image it was mixed with (the batch reversed).
  auto compute_loss = [&](const models::vision::ImageOutput& out, const torch::Tensor& labels,
                          const torch::Tensor& masks, double lambda,
                          const torch::Tensor& teacher_logits) {
    auto loss = mixed_loss(
        [&](const torch::Tensor& targets) { return class_loss(out.logits, targets); }, labels,
        lambda);
    if (teacher_logits.defined())
      loss = (1 - o.distill_alpha) * loss +
             o.distill_alpha *
                 distillation_loss(out.logits, teacher_logits, o.distill, o.distill_temperature);
    if (!o.mask_loss.empty() && masks.defined())
      loss = loss + attention_mask_loss(out.maps, masks, mask_options);
    return loss;
  };

  // Data-parallel: this rank's share of every global batch (shard_batches over the order the
  // one-process loader would use), loaded by a loader of its own made per epoch. Every full
  // global batch gives this rank the same number of samples, so a sequential loader with that
  // batch size cuts the rank's list exactly into its shares.
  std::unique_ptr<datasets::Loader> shard_loader;
  const int64_t shard_batch = (o.batch_size * (rank + 1)) / world - (o.batch_size * rank) / world;

  TrainingHooks hooks;
  hooks.start_epoch = [&](int64_t epoch) {
    if (!group) {
      train_loader.start_epoch(epoch);
      return batches;
    }
    shard_loader.reset();
    std::vector<std::size_t> mine;
    for (const auto& b : shard_batches(train_loader.epoch_order(epoch), o.batch_size, rank, world))
      mine.insert(mine.end(), b.begin(), b.end());
    if (!mine.empty()) {
      auto options = train_loader_options;
      options.order = datasets::Order::kSequential;
      options.batch_size = shard_batch;
      shard_loader = std::make_unique<datasets::Loader>(
          std::make_shared<IndexedSource>(train_source, std::move(mine)), o.pipeline, options);
      shard_loader->start_epoch(epoch);
    }
    return batches;
  };
  hooks.train_batch = [&](int64_t, int64_t) -> std::optional<BatchLoss> {
    std::optional<datasets::Batch> batch;
    if (!group) {
      batch = train_loader.next();
      if (!batch && train_loader_options.cancelled && train_loader_options.cancelled())
        return BatchLoss{0.0, 0, true};
    } else if (shard_loader)
      batch = shard_loader->next();
    if (batch) check_no_failures(*batch, "training");
    int64_t items = 0;
    double mean_loss = 0.0;
    if (batch && batch->size() > 0) {
      const auto labels = batch->labels.to(device);
      const auto mixed =
          mix_batch(batch->images.to(device),
                    batch->masks.defined() ? batch->masks.to(device) : torch::Tensor(), o.mix);
      const auto& images = mixed.images;
      const auto& masks = mixed.masks;
      models::vision::ImageOutput out;
      try {
        runtime::AutocastScope autocast(o.precision, device);
        out = model->forward(images);
      } catch (const c10::Error& e) {
        // BatchNorm's check, which only a batch of one image can fail (--batch-size 1, or a
        // rank's share of a data-parallel batch): say what to change, not LibTorch's words.
        if (images.size(0) == 1 &&
            std::string(e.what_without_backtrace())
                    .find("Expected more than 1 value per channel") != std::string::npos)
          throw Error("training",
                      concat("model '", config.arch, "' at ", images.size(2), " x ", images.size(3),
                             " px has BatchNorm over 1 x 1 maps, which cannot train "
                             "on a batch of one image: use a larger --batch-size (2 "
                             "or more images per rank) or larger images (--size 64 "
                             "or more)"));
        throw;
      }
      // The loss in float32 whatever the forward's precision (the casts are in the graph).
      out.logits = out.logits.to(torch::kFloat);
      for (auto& [name, map] : out.maps)
        map = map.to(torch::kFloat);
      torch::Tensor teacher_logits;
      if (teacher) {
        torch::NoGradGuard no_grad;
        auto x = images * teacher_scale + teacher_shift;
        if (x.size(2) != teacher_h || x.size(3) != teacher_w)
          x = torch::nn::functional::interpolate(
              x, torch::nn::functional::InterpolateFuncOptions()
                     .size(std::vector<int64_t>{teacher_h, teacher_w})
                     .mode(torch::kBilinear)
                     .align_corners(false));
        runtime::AutocastScope autocast(o.precision, device);
        teacher_logits = teacher->forward(x).logits.to(torch::kFloat);
      }
      const auto loss = compute_loss(out, labels, masks, mixed.lambda, teacher_logits);
      loss.backward();
      items = batch->size();
      mean_loss = loss.item<double>();
    }
    if (group) {
      // Every rank takes part, also with nothing to train on, so the ranks stay in step.
      const auto totals = reducer->reduce(items, mean_loss);
      items = totals.samples;
      mean_loss = totals.mean_loss;
    }
    if (items == 0) return std::nullopt;
    return BatchLoss{mean_loss * static_cast<double>(items), items};
  };
  if (o.on_progress) hooks.on_progress = o.on_progress;

  torch::Tensor val_logits, val_labels;
  nlohmann::json val_metrics;
  // Data-parallel validation: rank r scores positions r, r + world, ... of the validation set.
  std::unique_ptr<datasets::Loader> val_shard_loader;
  std::vector<std::size_t> val_mine;
  if (group) {
    for (int64_t i : shard_indices(static_cast<int64_t>(val->size()), rank, world))
      val_mine.push_back(static_cast<std::size_t>(i));
    if (!val_mine.empty())
      val_shard_loader = std::make_unique<datasets::Loader>(
          std::make_shared<IndexedSource>(val, val_mine), o.pipeline, val_loader_options);
  }
  hooks.evaluate = [&](const EpochSummary& summary) {
    torch::NoGradGuard no_grad;
    // BatchNorm statistics follow rank 0 (as PyTorch's DDP does), the EMA's too.
    if (group) group->broadcast(model->buffers());
    if (loop.ema()) loop.ema()->swap();
    if (group && loop.ema()) group->broadcast(model->buffers());
    model->eval();
    std::vector<torch::Tensor> logits, labels;
    std::vector<int64_t> positions;
    datasets::Loader* loader = group ? val_shard_loader.get() : &val_loader;
    if (loader) {
      loader->start_epoch(1);
      while (auto batch = loader->next()) {
        check_no_failures(*batch, "validation");
        if (batch->size() == 0) continue;
        logits.push_back(model->forward(batch->images.to(device)).logits.to(torch::kCPU));
        labels.push_back(batch->labels);
        for (auto i : batch->indices)
          positions.push_back(group ? static_cast<int64_t>(val_mine.at(i))
                                    : static_cast<int64_t>(i));
      }
    }
    model->train();
    if (loop.ema()) loop.ema()->swap();
    if (group) {
      // Every rank's scores, gathered and put in dataset order: the full validation set,
      // each image once (no padding).
      const auto classes_now = static_cast<int64_t>(class_names.size());
      auto local_logits =
          logits.empty() ? torch::zeros({0, classes_now}) : torch::cat(logits).to(torch::kFloat64);
      auto local_labels = labels.empty() ? torch::zeros({0}, torch::kInt64) : torch::cat(labels);
      const auto all_positions =
          group->all_gather_rows(torch::tensor(positions, torch::kInt64).reshape({-1}));
      const auto all_logits = group->all_gather_rows(local_logits.to(torch::kFloat64));
      const auto all_labels = group->all_gather_rows(local_labels.to(torch::kInt64));
      const auto order = all_positions.argsort();
      logits = {all_logits.index_select(0, order)};
      labels = {all_labels.index_select(0, order)};
      if (logits[0].size(0) == 0) logits.clear();
    }
    check(!logits.empty(), "validation set", "no image could be loaded");
    val_logits = torch::cat(logits).to(torch::kFloat64);
    // Weights a diverged step made infinite give NaN outputs while the epoch's loss (taken
    // before that step) was still finite: name the divergence, not the metrics' NaN.
    check(torch::isfinite(val_logits).all().item<bool>(), "training",
          "the model's outputs on the validation set are not finite after epoch ", summary.epoch,
          ": the run diverged; lower the learning rate (the last complete epoch is ",
          summary.epoch - 1, ")");
    val_labels = torch::cat(labels).to(torch::kInt64).contiguous();
    const std::vector<int64_t> truth(val_labels.data_ptr<int64_t>(),
                                     val_labels.data_ptr<int64_t>() + val_labels.numel());
    MetricsOptions metrics_options;
    metrics_options.class_names = class_names;
    metrics_options.curves = false;
    metrics_options.bootstrap_seed = o.seed;
    const auto m = compute_metrics(truth, torch::softmax(val_logits, 1), metrics_options);
    val_metrics = to_json(m);
    val_metrics.erase("reliability");
    if (o.select_by == "loss") return m.log_loss;
    if (o.select_by == "accuracy") return m.accuracy;
    if (o.select_by == "balanced_accuracy") return m.balanced_accuracy;
    return m.auc;
  };
  ImageTrainResult result;
  result.temperature = resumed_temperature;
  hooks.end_epoch = [&](const EpochSummary& s, double, bool is_best) {
    nlohmann::json record;
    record["epoch"] = s.epoch;
    record["step"] = s.step;
    record["lr"] = s.learning_rate;
    record["train_loss"] = s.train_loss;
    record["val_loss"] = val_metrics.at("log_loss");
    record["val_auc"] = val_metrics.at("auc");
    record["val"] = val_metrics;
    record["best"] = is_best;
    nlohmann::json timing;
    timing["epoch"] = s.epoch;
    timing["images_per_s"] = s.items_per_s;
    timing["wall_s"] = s.seconds;
    timing["cpu_s"] = s.cpu_seconds;
    // Data loading in this epoch's training part (validation is outside wall_s and cpu_s too):
    // the loader threads' CPU seconds, their share of the process's CPU time, and how long the
    // training step waited for a batch.
    datasets::LoaderStats data;
    if (const datasets::Loader* l = group ? shard_loader.get() : &train_loader) data = l->stats();
    timing["loader_cpu_s"] = data.cpu_s;
    timing["loader_cpu_share"] = s.cpu_seconds > 0 ? data.cpu_s / s.cpu_seconds : 0.0;
    timing["loader_wait_s"] = data.wait_s;
    timing["loader_wait_share"] = s.seconds > 0 ? data.wait_s / s.seconds : 0.0;
    state.history.push_back(record);
    state.timing.push_back(timing);
    auto epoch_meta = meta;
    epoch_meta.provenance["epoch"] = s.epoch;
    epoch_meta.provenance["metrics"] = record;
    if (is_best) result.temperature = fit_temperature(val_logits, val_labels);
    // Only rank 0 writes the run folder (the other ranks hold the same weights and state).
    if (!main_rank) return;
    if (is_best) {
      auto best_meta = epoch_meta;
      best_meta.extra["temperature"] = result.temperature;
      best_meta.extra["ema"] = loop.ema() != nullptr;
      if (loop.ema()) loop.ema()->swap();
      try {
        write_checkpoint(best_path, *model, config, best_meta, nullptr, &result.temperature);
      } catch (...) {
        if (loop.ema()) loop.ema()->swap();
        throw;
      }
      if (loop.ema()) loop.ema()->swap();
    }
    state.loop = loop.state_json();
    state.tensors = loop.state_tensors();
    write_checkpoint(last_path, *model, config, epoch_meta, &state, nullptr);
    write_file_atomically(run + "/metrics.jsonl", join_lines(state.history));
    write_file_atomically(run + "/timing.jsonl", join_lines(state.timing));
    if (o.on_epoch) o.on_epoch(record, timing);
  };

  int stop_signal = 0;
  if (o.stop_requested) {
    // Data-parallel: every rank stops at the same batch when any rank was asked to (a signal
    // reaches the ranks at slightly different moments, or only one of them), so none waits
    // for a peer that left. The ranks sum one flag per signal: SIGTERM wins over SIGINT.
    hooks.stop_requested = [&]() -> bool {
      stop_signal = o.stop_requested();
      if (!group) return stop_signal != 0;
      auto flags = torch::tensor({stop_signal == SIGINT ? 1.0f : 0.0f,
                                  stop_signal != 0 && stop_signal != SIGINT ? 1.0f : 0.0f});
      group->all_reduce_sum(flags);
      stop_signal = flags[1].item<float>() > 0.0f   ? SIGTERM
                    : flags[0].item<float>() > 0.0f ? SIGINT
                                                    : 0;
      return stop_signal != 0;
    };
  }
  result.epochs_at_start = loop.epochs_completed();
  const auto r = loop.run(hooks);
  model->eval();
  result.epochs_completed = r.epochs_completed;
  result.best_epoch = r.best_epoch;
  result.best = r.best;
  result.stopped_early = r.stopped_early;
  result.stopped_by_budget = r.stopped_by_budget;
  result.interrupted = r.interrupted;
  result.stop_signal = r.interrupted ? stop_signal : 0;
  return result;
}

}  // namespace attnscope::pipeline
