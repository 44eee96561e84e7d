// attnscope seq2seq train|evaluate|translate: the text encoder-decoders from the command line.

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/folder_lock.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "attnscope/version.h"
#include "cli.h"
#include "datasets/text/pairs.h"
#include "models/text/decoding.h"
#include "models/text/seq2seq.h"
#include "pipeline/text/seq2seq_checkpoint.h"
#include "pipeline/text/seq2seq_train.h"
#include "pipeline/text/seq2seq_translate.h"
#include "runtime/runtime.h"

namespace attnscope::cli {
namespace {

namespace text = datasets::text;
namespace fs = std::filesystem;

const char* const kVerbsUsage =
    "usage: attnscope seq2seq <verb> [options]\n\n"
    "Text encoder-decoders: the fixed-context RNN, attention RNNs and the Transformer.\n\n"
    "Verbs:\n"
    "  train       train a model on a task and write DIR/model.h5\n"
    "  evaluate    exact match, token accuracy and BLEU of a model on a task\n"
    "  translate   decode sentences (arguments or stdin), optionally with alignments\n\n"
    "Tasks: copy, reverse, dates (generated from --seed) or tsv:PATH (source<TAB>target lines).\n"
    "Run 'attnscope seq2seq <verb> --help' for a verb's options.\n";

// The pairs of a task: generated, or read from a TSV file (bad lines reported, not fatal).
struct TaskData {
  std::vector<text::TextPair> pairs;
  bool from_file = false;
  std::string skipped;  // description of skipped TSV lines
  std::size_t skipped_count = 0;
};

TaskData load_task(const std::string& spec, int64_t count, int64_t min_length, int64_t max_length,
                   uint64_t seed) {
  TaskData data;
  if (spec.rfind("tsv:", 0) == 0) {
    auto tsv = text::read_tsv_pairs(spec.substr(4));
    data.skipped = text::describe_skipped(tsv);
    data.pairs = std::move(tsv.pairs);  // not a second copy of the corpus
    data.from_file = true;
    data.skipped_count = tsv.skipped.size();
    check(!data.pairs.empty(), tsv.path,
          concat("no usable source<TAB>target lines", data.skipped.empty() ? "" : ": ",
                 data.skipped));
    return data;
  }
  text::TaskOptions options;
  options.task = spec;
  options.count = count;
  options.min_length = min_length;
  options.max_length = max_length;
  options.seed = seed;
  data.pairs = text::generate_task(options);
  return data;
}

void check_task_spec(const std::string& spec, const std::string& usage) {
  const auto& tasks = text::synthetic_tasks();
  if (spec.rfind("tsv:", 0) == 0 && spec.size() > 4) return;
  if (std::find(tasks.begin(), tasks.end(), spec) != tasks.end()) return;
  throw UsageError("--task must be copy, reverse, dates or tsv:PATH, got '" + spec + "'", usage);
}

template <typename T>
void require_at_least(const po::variables_map& vm, const char* name, T minimum,
                      const std::string& usage) {
  if (vm[name].as<T>() < minimum)
    throw UsageError(concat("--", name, " must be >= ", minimum, ", got ", vm[name].as<T>()),
                     usage);
}

// `seed_note`: what else the seed decides ("" for evaluate, which builds no model).
void add_task_options(po::options_description& desc, int64_t default_count, uint64_t seed,
                      const char* seed_note) {
  // clang-format off
  desc.add_options()
      ("task", po::value<std::string>()->required(), "copy | reverse | dates | tsv:PATH (required)")
      ("count", po::value<int64_t>()->default_value(default_count),
       "pairs generated for a synthetic task")
      ("min-length", po::value<int64_t>()->default_value(5), "shortest source of copy/reverse")
      ("max-length", po::value<int64_t>()->default_value(30), "longest source of copy/reverse")
      ("seed", po::value<uint64_t>()->default_value(seed),
       (std::string("random seed of the data") + seed_note).c_str());
  // clang-format on
}

// Synthetic tasks are generated in memory: 10 million pairs of up to 4,096 tokens is already
// far past what the models here train on; more ends in std::bad_alloc, not in a dataset.
constexpr int64_t kMaxTaskCount = 10'000'000;
constexpr int64_t kMaxTaskLength = 4096;
constexpr int64_t kMaxBeam = 1024;

void check_task_options(const po::variables_map& vm, const std::string& usage) {
  check_task_spec(vm["task"].as<std::string>(), usage);
  require_at_least<int64_t>(vm, "count", 1, usage);
  require_at_least<int64_t>(vm, "min-length", 1, usage);
  if (vm["count"].as<int64_t>() > kMaxTaskCount)
    throw UsageError(
        concat("--count must be in [1, ", kMaxTaskCount, "], got ", vm["count"].as<int64_t>()),
        usage);
  if (vm["max-length"].as<int64_t>() > kMaxTaskLength)
    throw UsageError(concat("--max-length must be <= ", kMaxTaskLength, ", got ",
                            vm["max-length"].as<int64_t>()),
                     usage);
  if (vm["max-length"].as<int64_t>() < vm["min-length"].as<int64_t>())
    throw UsageError("--max-length must be >= --min-length", usage);
}

void add_decode_options(po::options_description& desc) {
  const models::text::DecodeOptions defaults;
  // clang-format off
  desc.add_options()
      ("beam", po::value<int64_t>()->default_value(defaults.beam_size()),
       "beam size (1 = greedy decoding)")
      ("length-penalty", po::value<double>()->default_value(defaults.length_penalty()),
       "GNMT length penalty alpha of the beam search (0 = none)")
      ("max-output-length", po::value<int64_t>()->default_value(0),
       "most output tokens (0 = the model's maximum)")
      ("batch-size", po::value<int64_t>()->default_value(64), "sentences decoded at once");
  // clang-format on
}

// The decoding flags, checked before the model is read.
void check_decode_options(const po::variables_map& vm, const std::string& usage) {
  // Memory grows with the beam (a beam of 100,000 took 2.7 GB for one short sentence).
  if (vm["beam"].as<int64_t>() < 1 || vm["beam"].as<int64_t>() > kMaxBeam)
    throw UsageError(
        concat("--beam must be in [1, ", kMaxBeam, "], got ", vm["beam"].as<int64_t>()), usage);
  require_at_least<int64_t>(vm, "max-output-length", 0, usage);
  const double penalty = vm["length-penalty"].as<double>();
  // GNMT's α is 0.6 to 1; ((5 + length)/6)^α past 10 ranks by length alone, and past a few
  // hundred overflows (every score -0: the beam's choice arbitrary).
  if (!std::isfinite(penalty) || penalty < 0 || penalty > 10)
    throw UsageError("--length-penalty must be in [0, 10]", usage);
  if (vm["max-output-length"].as<int64_t>() > pipeline::kMaxSeq2SeqLength)
    throw UsageError(concat("--max-output-length must be <= ", pipeline::kMaxSeq2SeqLength), usage);
  require_at_least<int64_t>(vm, "batch-size", 1, usage);
}

models::text::DecodeOptions decode_options(const po::variables_map& vm,
                                           const pipeline::Seq2SeqBundle& bundle,
                                           const std::string& usage) {
  const int64_t max_out = vm["max-output-length"].as<int64_t>();
  // A transformer has a position for each of max_length tokens and no more: it stopped at the
  // first sentence that reached them ("cannot decode more than 8 tokens", exit 1). An RNN
  // decodes any length.
  const auto& o = bundle.model->options();
  if (o.arch() == "transformer" && max_out > o.max_length())
    throw UsageError(concat("--max-output-length ", max_out, " is above the ", o.max_length(),
                            " positions of this transformer (its --model-max-length); give at "
                            "most ",
                            o.max_length(), ", or 0 for that"),
                     usage);
  return models::text::DecodeOptions()
      .beam_size(vm["beam"].as<int64_t>())
      .length_penalty(vm["length-penalty"].as<double>())
      .max_length(max_out > 0 ? max_out : bundle.model->options().max_length());
}

void print_metrics(const pipeline::Seq2SeqEvaluation& eval, bool json,
                   const nlohmann::json& extra = nlohmann::json::object()) {
  if (json) {
    nlohmann::json out = {{"exact_match", eval.metrics.exact_match},
                          {"token_accuracy", eval.metrics.token_accuracy},
                          {"bleu", eval.metrics.bleu},
                          {"sentences", eval.metrics.sentences},
                          {"truncated", eval.truncated},
                          {"failed", eval.failed}};
    out.update(extra);
    std::cout << out.dump() << "\n";
    return;
  }
  std::cout << std::fixed << std::setprecision(4) << "sentences       " << eval.metrics.sentences
            << "\nexact match     " << eval.metrics.exact_match << "\ntoken accuracy  "
            << eval.metrics.token_accuracy << "\nBLEU            " << std::setprecision(2)
            << eval.metrics.bleu << "\n";
  if (eval.truncated > 0)
    std::cout << "truncated       " << eval.truncated << " sources (model maximum)\n";
  if (eval.failed > 0) std::cout << "failed          " << eval.failed << " sources\n";
}

int run_train(const std::vector<std::string>& args) {
  const std::string usage_line = "seq2seq train --task TASK --model MODEL --out DIR [options]";
  po::options_description desc("Options");
  add_task_options(desc, 20000, 0, " and of the model's initial weights");
  // Defaults come from the library's option structs (and the preset for --layers).
  const pipeline::Seq2SeqTrainOptions train_defaults;
  const models::text::Seq2SeqOptions model_defaults;
  // clang-format off
  desc.add_options()
      ("model", po::value<std::string>()->default_value("gru-additive"),
       "gru | gru-additive | gru-dot | gru-general | gru-crf | lstm-additive | transformer "
       "(and lstm, lstm-dot, lstm-general, lstm-crf)")
      ("out", po::value<std::string>()->required(), "output folder (DIR/model.h5) (required)")
      ("tokenizer", po::value<std::string>()->default_value("char"),
       "char | word (synthetic tasks are always char)")
      ("epochs", po::value<int64_t>()->default_value(train_defaults.epochs),
       "passes over the training pairs")
      ("time-budget", po::value<double>()->default_value(train_defaults.time_budget_s),
       "stop training after this many seconds (0 = no limit)")
      ("budget-clock", po::value<std::string>()->default_value(train_defaults.budget_clock),
       "clock of --time-budget: wall | cpu (process CPU time, for shared machines)")
      ("batch-size", po::value<int64_t>()->default_value(train_defaults.batch_size),
       "pairs per optimiser step")
      ("lr", po::value<double>()->default_value(train_defaults.learning_rate),
       "Adam learning rate (the peak for the noam schedule)")
      ("schedule", po::value<std::string>()->default_value("auto"),
       "constant | noam | auto (noam for the transformer)")
      ("warmup", po::value<int64_t>()->default_value(train_defaults.warmup_steps),
       "warmup steps of the noam schedule")
      ("decay", po::value<std::string>()->default_value(train_defaults.decay),
       "none | linear (to zero at the end of --time-budget or of the epochs)")
      ("label-smoothing", po::value<double>()->default_value(train_defaults.label_smoothing,
                                                         shown(train_defaults.label_smoothing)),
       "label smoothing epsilon")
      ("clip-norm", po::value<double>()->default_value(train_defaults.clip_norm),
       "gradient-norm clipping (0 = off)")
      ("embedding-dim", po::value<int64_t>()->default_value(model_defaults.embedding_dim()),
       "RNN token embedding size")
      ("hidden-dim", po::value<int64_t>()->default_value(model_defaults.hidden_dim()),
       "RNN hidden size per direction")
      ("layers", po::value<int64_t>()->default_value(0),
       "encoder and decoder layers (0 = the model's preset: 1 for RNNs, 2 for the transformer)")
      ("model-dim", po::value<int64_t>()->default_value(model_defaults.model_dim()),
       "transformer width")
      ("heads", po::value<int64_t>()->default_value(model_defaults.heads()),
       "transformer attention heads")
      ("ff-dim", po::value<int64_t>()->default_value(model_defaults.ff_dim()),
       "transformer feed-forward width")
      ("positions", po::value<std::string>()->default_value(model_defaults.positions()),
       "transformer positions: sinusoidal | learned")
      ("dropout", po::value<double>()->default_value(model_defaults.dropout(),
                                                         shown(model_defaults.dropout())),
       "dropout probability")
      ("model-max-length", po::value<int64_t>()->default_value(0),
       "longest sequence the model accepts, at most 4096 (0 = the task's longest, at least 32 and "
       "at most 256; longer pairs are skipped and counted)")
      ("valid-size", po::value<int64_t>()->default_value(500),
       "held-out pairs evaluated after training")
      ("quiet", po::bool_switch(), "no progress bar");
  // clang-format on
  po::variables_map vm;
  if (!parse(usage_line, desc, args, vm)) return 0;
  const std::string usage = usage_text(usage_line, desc);
  check_task_options(vm, usage);
  for (const char* n : {"epochs", "batch-size", "embedding-dim", "hidden-dim", "model-dim", "heads",
                        "ff-dim", "warmup"})
    require_at_least<int64_t>(vm, n, 1, usage);
  for (const char* n : {"layers", "model-max-length", "valid-size"})
    require_at_least<int64_t>(vm, n, 0, usage);
  // Far past any run (a --time-budget ends it first): epochs × batches overflowed, and every
  // step ran at a linear decay's learning rate of 0.
  if (vm["epochs"].as<int64_t>() > 1000000)
    throw UsageError("--epochs must be at most 1000000", usage);
  if (!(vm["lr"].as<double>() > 0)) throw UsageError("--lr must be > 0", usage);
  const std::string name = vm["model"].as<std::string>();
  models::text::Seq2SeqOptions options;
  try {
    options = models::text::seq2seq_preset(name);
  } catch (const Error& e) {
    throw UsageError("--model: " + e.message(), usage);
  }
  const bool is_transformer = options.arch() == "transformer";
  // A size of the other family's networks changes nothing: said in one line (scripts that
  // train every model with one set of sizes give them all).
  std::string unused;
  for (const char* n : is_transformer
                           ? std::vector<const char*>{"embedding-dim", "hidden-dim"}
                           : std::vector<const char*>{"model-dim", "heads", "ff-dim", "positions"})
    if (!vm[n].defaulted()) unused += concat(unused.empty() ? "--" : ", --", n);
  if (!unused.empty())
    std::cerr << "warning: " << unused << (is_transformer ? ": RNN" : ": transformer")
              << " sizes, which --model " << name << " does not use\n";
  std::string schedule = vm["schedule"].as<std::string>();
  if (schedule == "auto") schedule = is_transformer ? "noam" : "constant";
  if (schedule != "constant" && schedule != "noam")
    throw UsageError("--schedule must be constant, noam or auto, got '" + schedule + "'", usage);
  const std::string decay = vm["decay"].as<std::string>();
  if (decay != "none" && decay != "linear")
    throw UsageError("--decay must be none or linear, got '" + decay + "'", usage);
  // Numbers that NaN would slip past (every comparison with NaN is false).
  for (const char* n : {"dropout", "label-smoothing", "lr", "clip-norm", "time-budget"}) {
    const double v = vm[n].as<double>();
    if (!std::isfinite(v) || v < 0)
      throw UsageError(concat("--", n, " must be a finite number >= 0"), usage);
  }
  // Bounds a float32 holds (--clip-norm 1e308 was LibTorch's "cannot be converted to type
  // float without overflow", after the data was read) and a held-out set that fits in memory.
  for (const char* n : {"lr", "clip-norm"})
    if (vm[n].as<double>() > 1e6) throw UsageError(concat("--", n, " must be at most 1e6"), usage);
  if (vm["valid-size"].as<int64_t>() > 1'000'000)
    throw UsageError("--valid-size must be at most 1000000", usage);
  // The output folder is checked before any long work: an unwritable --out must not be found
  // only after hours of training.
  const std::string out_dir = vm["out"].as<std::string>();
  ensure_writable_output_folder(out_dir);
  const auto model_path = (fs::path(out_dir) / "model.h5").string();
  check_replaceable_file(model_path);  // before the training
  // Notes, an image checkpoint or an alignments file named model.h5 was replaced without a word.
  check_replaces_only_its_own(model_path, "--out",
                              "a checkpoint written by attnscope seq2seq train",
                              [&] { return pipeline::is_seq2seq_checkpoint(model_path); });
  const double dropout = vm["dropout"].as<double>();
  if (dropout < 0 || dropout >= 1) throw UsageError("--dropout must be in [0, 1)", usage);
  const double smoothing = vm["label-smoothing"].as<double>();
  if (smoothing < 0 || smoothing >= 1)
    throw UsageError("--label-smoothing must be in [0, 1)", usage);
  const std::string positions = vm["positions"].as<std::string>();
  if (positions != "sinusoidal" && positions != "learned")
    throw UsageError("--positions must be sinusoidal or learned", usage);
  if (vm["model-dim"].as<int64_t>() % vm["heads"].as<int64_t>() != 0)
    throw UsageError("--model-dim must be divisible by --heads", usage);
  text::TokenizerKind tokenizer;
  try {
    tokenizer = text::tokenizer_from_string(vm["tokenizer"].as<std::string>());
  } catch (const Error& e) {
    throw UsageError("--tokenizer: " + e.message(), usage);
  }

  const std::string spec = vm["task"].as<std::string>();
  check_utf8_arguments(
      {spec}, "seq2seq train records its --task in model.h5 as UTF-8 text; rename the file", usage);
  // The model must not replace its own data (a TSV named OUT/model.h5 was overwritten).
  if (spec.rfind("tsv:", 0) == 0)
    check_not_an_input((fs::path(out_dir) / "model.h5").string(), spec.substr(4), "--task tsv:");
  const uint64_t seed = vm["seed"].as<uint64_t>();
  auto data = load_task(spec, vm["count"].as<int64_t>(), vm["min-length"].as<int64_t>(),
                        vm["max-length"].as<int64_t>(), seed);
  if (!data.from_file) {
    // A synthetic task's sentences are letters without spaces: one word each.
    if (tokenizer != text::TokenizerKind::kChar)
      std::cerr << "warning: --tokenizer " << vm["tokenizer"].as<std::string>()
                << " is for --task tsv:FILE; the synthetic task '" << printable(spec)
                << "' is tokenised by character\n";
    tokenizer = text::TokenizerKind::kChar;
  }
  if (!data.skipped.empty()) std::cerr << "warning: " << data.skipped << "\n";
  // Held-out pairs: freshly generated (another seed) or the tail of the shuffled file.
  std::vector<text::TextPair> valid;
  const int64_t valid_size = vm["valid-size"].as<int64_t>();
  if (data.from_file) {
    std::mt19937_64 rng(seed);
    std::shuffle(data.pairs.begin(), data.pairs.end(), rng);
    const auto n =
        std::min<std::size_t>(static_cast<std::size_t>(valid_size), data.pairs.size() / 10);
    valid.assign(data.pairs.end() - static_cast<std::ptrdiff_t>(n), data.pairs.end());
    data.pairs.resize(data.pairs.size() - n);
  } else if (valid_size > 0) {
    valid = load_task(spec, valid_size, vm["min-length"].as<int64_t>(),
                      vm["max-length"].as<int64_t>(), seed + 1000003)
                .pairs;
  }
  // Vocabularies from the training pairs, counted one pair at a time: every pair's tokens
  // kept as strings took 32 bytes and more per character (a 51 MB TSV, 2.4 GB).
  std::map<std::string, int64_t> src_counts, tgt_counts;
  std::size_t longest = 0;
  for (const auto& p : data.pairs) {
    const std::string where =
        p.line > 0 ? concat(spec.substr(4), ":", p.line) : std::string("task");
    const auto src = text::tokenize(p.source, tokenizer, where);
    const auto tgt = text::tokenize(p.target, tokenizer, where);
    for (const auto& t : src)
      ++src_counts[t];
    for (const auto& t : tgt)
      ++tgt_counts[t];
    longest = std::max({longest, src.size(), tgt.size()});
  }
  constexpr int64_t kMinimumMaxLength = 32, kAutoMaxLength = 256;
  int64_t max_length = vm["model-max-length"].as<int64_t>();
  if (max_length > pipeline::kMaxSeq2SeqLength)
    throw UsageError(concat("--model-max-length must be <= ", pipeline::kMaxSeq2SeqLength), usage);
  // A single very long line must not set the model's size (memory grows with its square):
  // the automatic maximum is capped, longer pairs are skipped and reported below.
  if (max_length == 0)
    max_length = std::min<int64_t>(
        kAutoMaxLength, std::max<int64_t>(kMinimumMaxLength, static_cast<int64_t>(longest)));
  const auto source_vocab = text::Vocabulary::build_from_counts(src_counts);
  const auto target_vocab = text::Vocabulary::build_from_counts(tgt_counts);
  src_counts.clear();
  tgt_counts.clear();
  const auto encoded = text::encode_pairs(data.pairs, source_vocab, target_vocab, tokenizer,
                                          max_length, text::LengthPolicy::kSkip);
  if (!encoded.too_long.empty()) {
    std::cerr << "warning: skipped " << encoded.too_long.size() << " pairs longer than "
              << max_length << " tokens (--model-max-length)";
    // The earliest line: the pairs were shuffled before they were encoded.
    const auto& first = data.pairs[*std::min_element(
        encoded.too_long.begin(), encoded.too_long.end(),
        [&](auto a, auto b) { return data.pairs[a].line < data.pairs[b].line; })];
    if (first.line > 0) std::cerr << ", first at " << spec.substr(4) << ":" << first.line;
    std::cerr << "\n";
  }
  check(!encoded.sources.empty(), spec, "no training pairs left");
  std::vector<text::TextPair>().swap(data.pairs);  // the text: training reads `encoded`

  options.source_vocab(source_vocab.size())
      .target_vocab(target_vocab.size())
      .embedding_dim(vm["embedding-dim"].as<int64_t>())
      .hidden_dim(vm["hidden-dim"].as<int64_t>())
      .model_dim(vm["model-dim"].as<int64_t>())
      .heads(vm["heads"].as<int64_t>())
      .ff_dim(vm["ff-dim"].as<int64_t>())
      .positions(positions)
      .dropout(dropout)
      .max_length(max_length);
  const int64_t layers = vm["layers"].as<int64_t>();
  if (layers > 0) options.layers(layers);
  // Sizes are named by the flags that set them, not by the checkpoint's field names.
  const auto flag_of = [](const std::string& field) -> std::string {
    static const std::map<std::string, std::string> kFlags{
        {"embedding_dim", "--embedding-dim"},
        {"hidden_dim", "--hidden-dim"},
        {"model_dim", "--model-dim"},
        {"ff_dim", "--ff-dim"},
        {"heads", "--heads"},
        {"layers", "--layers"},
        {"max_length", "--model-max-length"},
        {"dropout", "--dropout"},
        {"source_vocab", "the source vocabulary's size"},
        {"target_vocab", "the target vocabulary's size"}};
    const auto at = kFlags.find(field);
    return at != kFlags.end() ? at->second : "model_config." + field;
  };
  try {
    pipeline::validate_seq2seq_options(options, "seq2seq train", flag_of);
  } catch (const Error& e) {
    throw UsageError(e.message(), usage);
  }
  torch::manual_seed(seed);
  pipeline::Seq2SeqBundle bundle{name, models::text::make_seq2seq(options), source_vocab,
                                 target_vocab, tokenizer};

  pipeline::Seq2SeqTrainOptions train;
  train.epochs = vm["epochs"].as<int64_t>();
  train.batch_size = vm["batch-size"].as<int64_t>();
  train.learning_rate = vm["lr"].as<double>();
  train.schedule = schedule;
  train.warmup_steps = vm["warmup"].as<int64_t>();
  train.decay = decay;
  train.label_smoothing = smoothing;
  train.clip_norm = vm["clip-norm"].as<double>();
  train.time_budget_s = vm["time-budget"].as<double>();
  train.budget_clock = vm["budget-clock"].as<std::string>();
  if (train.budget_clock != "wall" && train.budget_clock != "cpu")
    throw UsageError("--budget-clock must be wall or cpu", usage);
  train.seed = seed;
  const bool quiet = vm["quiet"].as<bool>();
  const bool tty = isatty(STDERR_FILENO) != 0;
  train.on_progress = [&](const pipeline::Seq2SeqProgress& p) {
    if (quiet) return;
    const bool end_of_epoch = p.batch == p.batches;
    if (tty)
      std::cerr << "\r" << pipeline::format_progress(p) << (end_of_epoch ? "\n" : "") << std::flush;
    else if (end_of_epoch)
      std::cerr << pipeline::format_progress(p) << "\n";
  };
  // One run per folder (attnscope/folder_lock.h), from here until model.h5 is written: a second
  // run given the same --out stops here instead of replacing the first's model when it ends.
  fs::create_directories(out_dir);
  const FolderLock folder_lock(out_dir, "wait for it to end or choose another --out");
  remove_dead_temporaries((fs::path(out_dir) / "model.h5").string());  // a killed run's
  std::cerr << "training " << name << " on " << spec << ": " << encoded.sources.size()
            << " pairs, vocabularies " << source_vocab.size() << "/" << target_vocab.size() << ", "
            << bundle.model->parameters().size() << " tensors\n";
  // SIGINT / SIGTERM end training after the current batch; the model as trained so far is
  // saved (without the held-out evaluation) and the exit status is 128 + the signal.
  runtime::stop_on_signals();
  train.stop_requested = [] { return runtime::stop_requested() != 0; };
  const auto result = pipeline::train_seq2seq(*bundle.model, encoded, train);
  if (result.interrupted)
    std::cerr << "\nstopped by " << runtime::stop_signal_name(runtime::stop_requested())
              << " after " << result.steps << " steps; saving the model trained so far\n";
  if (result.stopped_by_budget && !quiet)
    std::cerr << "\nstopped by --time-budget after " << std::fixed << std::setprecision(1)
              << result.seconds << " s (" << result.steps << " steps)\n";

  nlohmann::json provenance = {{"task", spec},
                               {"seed", seed},
                               {"train_pairs", encoded.sources.size()},
                               {"steps", result.steps},
                               {"epochs_completed", result.epochs_completed},
                               {"final_loss", result.final_loss},
                               {"train_seconds", result.seconds},
                               {"train_cpu_seconds", result.cpu_seconds},
                               {"attnscope_version", kVersion}};
  if (result.interrupted)
    provenance["interrupted_by"] = runtime::stop_signal_name(runtime::stop_requested());
  bool interrupted = result.interrupted;
  if (!valid.empty() && !interrupted) {
    // A signal during the held-out evaluation stops it after the current batch: the model is
    // saved without it (it ran on for minutes and exited 0).
    const auto eval = pipeline::evaluate_seq2seq(
        bundle, valid, models::text::DecodeOptions().max_length(max_length), 64,
        [] { return runtime::stop_requested() != 0; });
    if (eval.stopped) {
      interrupted = true;
      provenance["interrupted_by"] = runtime::stop_signal_name(runtime::stop_requested());
      std::cerr << "\nstopped by " << runtime::stop_signal_name(runtime::stop_requested())
                << " during the held-out evaluation; saving the model without it\n";
    } else {
      provenance["valid"] = {{"exact_match", eval.metrics.exact_match},
                             {"token_accuracy", eval.metrics.token_accuracy},
                             {"bleu", eval.metrics.bleu},
                             {"sentences", eval.metrics.sentences}};
      std::cout << "held-out " << valid.size() << " pairs: ";
      std::cout << std::fixed << std::setprecision(4) << "exact match " << eval.metrics.exact_match
                << ", token accuracy " << eval.metrics.token_accuracy << ", BLEU "
                << std::setprecision(2) << eval.metrics.bleu << "\n";
    }
  }
  // What is left (the save) is not stopped: a signal now stops nothing, and says so.
  if (const auto late = runtime::finish_stop_requests(); !late.empty() && !interrupted)
    std::cerr << late << "\n";
  const std::string path = (fs::path(out_dir) / "model.h5").string();
  pipeline::save_seq2seq(path, bundle, provenance);
  std::cout << "wrote " << printable(path) << " (" << result.steps << " steps, " << std::fixed
            << std::setprecision(1) << result.seconds << " s, " << result.cpu_seconds
            << " s CPU)\n";
  return interrupted ? runtime::stopped_exit_status() : 0;
}

int run_evaluate(const std::vector<std::string>& args) {
  const std::string usage_line = "seq2seq evaluate --model DIR/model.h5 --task TASK [options]";
  po::options_description desc("Options");
  desc.add_options()("model", po::value<std::string>()->required(),
                     "checkpoint written by seq2seq train (required)");
  add_task_options(desc, 1000, 12345, "");
  add_decode_options(desc);
  desc.add_options()("json", po::bool_switch(), "print the metrics as one JSON object");
  po::variables_map vm;
  if (!parse(usage_line, desc, args, vm)) return 0;
  const std::string usage = usage_text(usage_line, desc);
  check_task_options(vm, usage);
  check_decode_options(vm, usage);
  const auto bundle = pipeline::load_seq2seq(vm["model"].as<std::string>());
  const auto decode = decode_options(vm, bundle, usage);
  const auto data = load_task(vm["task"].as<std::string>(), vm["count"].as<int64_t>(),
                              vm["min-length"].as<int64_t>(), vm["max-length"].as<int64_t>(),
                              vm["seed"].as<uint64_t>());
  if (!data.skipped.empty()) std::cerr << "warning: " << data.skipped << "\n";
  const auto eval =
      pipeline::evaluate_seq2seq(bundle, data.pairs, decode, vm["batch-size"].as<int64_t>());
  if (eval.truncated > 0)
    std::cerr << "warning: " << eval.truncated << " sources truncated to the model's maximum of "
              << bundle.model->options().max_length() << " tokens\n";
  print_metrics(eval, vm["json"].as<bool>(),
                {{"model", bundle.name}, {"skipped_lines", data.skipped_count}});
  return 0;
}

// The heatmap of input i: NNNNNN.png, zero-padded to six digits.
std::string heatmap_name(std::size_t i) {
  char name[32];
  std::snprintf(name, sizeof(name), "%06zu.png", i);
  return name;
}

// The input of a name heatmap_name writes, or nullopt (0000007.png, a photo, anything else).
std::optional<std::size_t> heatmap_index(const std::string& name) {
  if (name.size() < 10 || name.size() > 23 || name.compare(name.size() - 4, 4, ".png") != 0 ||
      name.find_first_not_of("0123456789") != name.size() - 4)
    return std::nullopt;
  const auto index = static_cast<std::size_t>(std::stoull(name.substr(0, name.size() - 4)));
  if (heatmap_name(index) != name) return std::nullopt;
  return index;
}

int run_translate(const std::vector<std::string>& args) {
  const std::string usage_line = "seq2seq translate --model DIR/model.h5 [options] [TEXT...]";
  po::options_description desc("Options");
  desc.add_options()("model", po::value<std::string>()->required(),
                     "checkpoint written by seq2seq train (required)");
  add_decode_options(desc);
  // clang-format off
  desc.add_options()
      ("alignments", po::value<std::string>()->default_value(""),
       "write every sentence's attention matrix to this HDF5 file")
      ("alignment-png", po::value<std::string>()->default_value(""),
       "write one heatmap PNG per sentence into this folder")
      ("text", po::value<std::vector<std::string>>()->multitoken(),
       "sentences to translate (default: one per line from stdin)");
  // clang-format on
  po::positional_options_description positional;
  positional.add("text", -1);
  po::variables_map vm;
  if (!parse(usage_line, desc, args, vm, &positional)) return 0;
  const std::string usage = usage_text(usage_line, desc);
  check_decode_options(vm, usage);
  // The outputs before the model is read: `--alignments X --alignment-png X` wrote the HDF5
  // file and then failed making the folder, and a file in the PNGs' place was found last.
  const std::string alignments = vm["alignments"].as<std::string>();
  const std::string png_dir = vm["alignment-png"].as<std::string>();
  if (!alignments.empty() && !png_dir.empty() && same_file(alignments, png_dir))
    throw UsageError(
        "--alignments and --alignment-png must be different paths (a file and a "
        "folder)",
        usage);
  if (!alignments.empty()) {
    check_not_an_input(alignments, vm["model"].as<std::string>(), "--model");
    check(!fs::is_directory(alignments), alignments, "--alignments is a folder; give a file");
    check_replaceable_file(alignments);  // /dev/full, a FIFO: before every sentence is translated
    ensure_writable_folder(alignments);
    // A checkpoint, an image cache or a CSV given by mistake was replaced without a word.
    check_replaces_only_its_own(alignments, "--alignments",
                                "an alignments file written by "
                                "attnscope seq2seq translate",
                                [&] { return pipeline::is_alignments_file(alignments); });
  }
  if (!png_dir.empty()) {
    check(!fs::exists(png_dir) || fs::is_directory(png_dir), png_dir,
          "--alignment-png is a file; give a folder");
    ensure_writable_output_folder(png_dir);
  }
  const auto bundle = pipeline::load_seq2seq(vm["model"].as<std::string>());
  const auto decode = decode_options(vm, bundle, usage);
  if ((!alignments.empty() || !png_dir.empty()) && !bundle.model->has_attention())
    throw Error(vm["model"].as<std::string>(),
                concat("model '", bundle.name,
                       "' has no attention (fixed context): no alignments to write"));
  std::vector<std::string> sources;
  std::map<std::size_t, std::uintmax_t> too_long;  // input index -> its length in bytes
  if (vm.count("text")) {
    sources = vm["text"].as<std::vector<std::string>>();
  } else {
    // Bounded lines: a line above the limit keeps only its first bytes (a 1 GiB line took
    // 3.2 GB and a minute to be refused; /dev/zero grew without end), and the whole input as
    // much as a TSV file may hold.
    constexpr std::uintmax_t kMaxInput = datasets::text::kMaxTsvFileBytes;
    std::uintmax_t total = 0;
    std::string line;
    while (const auto length = datasets::text::read_bounded_line(
               std::cin, line, pipeline::kMaxSourceBytes + 1, kMaxInput + 1)) {
      total += *length + 1;
      check(total <= kMaxInput, "standard input", "above the limit of ", kMaxInput,
            " bytes (one sentence per line)");
      if (*length > line.size()) too_long[sources.size()] = *length;
      sources.push_back(line);
    }
  }
  // One heatmap per input, NNNNNN.png: a file of the user's under such a name (a photo in the
  // folder given) was replaced without a word; a heatmap of an earlier run is replaced.
  const auto png_path = [&](std::size_t i) {
    return (fs::path(png_dir) / heatmap_name(i)).string();
  };
  if (!png_dir.empty() && fs::is_directory(png_dir))
    for (std::size_t i = 0; i < sources.size(); ++i) {
      const auto path = png_path(i);
      check_replaces_only_its_own(path, "--alignment-png",
                                  "an alignment heatmap written by attnscope seq2seq translate",
                                  [&] { return pipeline::is_alignment_png(path); });
    }
  // What a killed run left beside the heatmaps NNNNNN.png (a dead process's, 10 minutes old).
  if (!png_dir.empty())
    remove_dead_temporaries_in(
        png_dir, [](const std::string& name) { return heatmap_index(name).has_value(); });
  const auto translations =
      pipeline::translate(bundle, sources, decode, vm["batch-size"].as<int64_t>());
  int failed = 0, truncated = 0;
  std::size_t unknown_inputs = 0, unknown_tokens = 0, first_unknown = 0;
  for (std::size_t i = 0; i < translations.size(); ++i) {
    const auto& t = translations[i];
    // One line per input whatever the vocabulary's tokens hold (a newline, ESC).
    std::cout << one_output_line(t.text) << "\n";
    if (!t.error.empty()) {
      ++failed;
      const auto cut = too_long.find(i);  // the error names the line's length, not its kept part
      std::cerr << "error: input " << i + 1 << ": "
                << (cut == too_long.end()
                        ? t.error
                        : concat("input of ", cut->second, " bytes, above the limit of ",
                                 pipeline::kMaxSourceBytes))
                << "\n";
    }
    truncated += t.truncated ? 1 : 0;
    if (t.error.empty() && t.unknown > 0) {
      if (unknown_inputs++ == 0) first_unknown = i;
      unknown_tokens += t.unknown;
    }
  }
  if (truncated > 0)
    std::cerr << "warning: " << truncated << " of " << translations.size()
              << " inputs truncated to the model's maximum of "
              << bundle.model->options().max_length() << " tokens\n";
  // The model read them as <unk>: its output for them says little (the copy task's "ZZZZ").
  if (unknown_inputs > 0)
    std::cerr << "warning: " << unknown_inputs << " of " << translations.size()
              << " inputs hold tokens outside the model's vocabulary (" << unknown_tokens
              << " in all, each read as <unk>), the first input " << first_unknown + 1 << "\n";
  if (!alignments.empty()) {
    remove_dead_temporaries(alignments);  // what a killed run left beside it, once nothing refuses
    pipeline::write_alignments(alignments, translations, bundle.name);
  }
  if (!png_dir.empty()) {
    fs::create_directories(png_dir);
    // A heatmap that cannot be drawn is its sentence's line; the others are written (one
    // too large to draw ended the run). An earlier run's heatmap under the number of a
    // sentence without one, or past this run's last, is removed: read as this run's before.
    auto remove_earlier = [&](const std::string& path) {
      std::error_code ec;
      if (fs::is_regular_file(fs::symlink_status(path, ec)) && pipeline::is_alignment_png(path))
        fs::remove(path, ec);
    };
    for (std::size_t i = 0; i < translations.size(); ++i) {
      if (!translations[i].error.empty()) {
        remove_earlier(png_path(i));
        continue;
      }
      try {
        pipeline::write_alignment_png(png_path(i), translations[i]);
      } catch (const Error& e) {
        ++failed;
        std::cerr << "error: " << excerpt(e.what(), 1000) << "\n";
        remove_earlier(png_path(i));
      }
    }
    std::error_code ec;
    for (fs::directory_iterator it(png_dir, ec), end; !ec && it != end; it.increment(ec)) {
      const auto index = heatmap_index(it->path().filename().string());
      if (index && *index >= translations.size()) remove_earlier(it->path().string());
    }
  }
  return failed > 0 ? 1 : 0;
}

int run_seq2seq(const std::vector<std::string>& args, const GlobalOptions&) {
  if (args.empty()) throw UsageError("no verb given", kVerbsUsage);
  const std::string verb = args[0];
  if (verb == "--help" || verb == "-h") {
    std::cout << kVerbsUsage;
    return 0;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (verb == "train") return run_train(rest);
  if (verb == "evaluate") return run_evaluate(rest);
  if (verb == "translate") return run_translate(rest);
  throw UsageError("unknown verb '" + verb + "' (expected train, evaluate or translate)",
                   kVerbsUsage);
}

const Registration kSeq2Seq("seq2seq", "train, evaluate and run text encoder-decoders",
                            run_seq2seq);

}  // namespace
}  // namespace attnscope::cli
