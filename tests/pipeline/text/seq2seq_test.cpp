// Seq2seq pipeline: BLEU (sacreBLEU's published example, brute-force n-grams), metrics, the
// training loss and schedule, learning on the copy task, checkpoints, alignments (read back
// with h5py) and bad inputs.

#include <cmath>
#include <fstream>
#include <map>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "attnscope/special_tokens.h"
#include "datasets/text/pairs.h"
#include "models/text/decoding.h"
#include "pipeline/checkpoint.h"
#include "pipeline/h5.h"
#include "pipeline/text/seq2seq_checkpoint.h"
#include "pipeline/text/seq2seq_metrics.h"
#include "pipeline/text/seq2seq_train.h"
#include "pipeline/text/seq2seq_translate.h"
#include "test_support.h"

namespace attnscope::pipeline {
namespace {

namespace text = datasets::text;

TEST(Seq2SeqBleu, ReproducesTheSacreBleuReadmeExample) {
  // sacreBLEU README: BLEU = 48.53 82.4/50.0/45.5/37.5 (BP = 0.943 ratio = 0.944
  // hyp_len = 17 ref_len = 18).
  const std::vector<std::string> sys = {"The dog bit the man.", "It wasn't surprising.",
                                        "The man had just bitten him."};
  const std::vector<std::vector<std::string>> refs = {
      {"The dog bit the man.", "It was not unexpected.", "The man bit him first."},
      {"The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."}};
  const auto bleu = corpus_bleu(sys, refs);
  EXPECT_NEAR(bleu.score, 48.53, 0.01);
  EXPECT_EQ(bleu.hypothesis_length, 17);
  EXPECT_EQ(bleu.reference_length, 18);
  EXPECT_NEAR(bleu.precisions[0], 82.4, 0.05);
  EXPECT_NEAR(bleu.precisions[1], 50.0, 0.05);
  EXPECT_NEAR(bleu.precisions[2], 45.5, 0.05);
  EXPECT_NEAR(bleu.precisions[3], 37.5, 0.05);
  EXPECT_NEAR(bleu.brevity_penalty, 0.943, 0.0005);
}

TEST(Seq2SeqBleu, Tokenizer13aSplitsLikeSacreBleu) {
  EXPECT_EQ(tokenize_13a("It wasn't surprising."), "It wasn't surprising .");
  EXPECT_EQ(tokenize_13a("Pi is 3.14, not 3,2!"), "Pi is 3.14 , not 3,2 !");
  EXPECT_EQ(tokenize_13a("a-b 1999-2000 (x) &amp; \"q\""), "a-b 1999 - 2000 ( x ) & \" q \"");
  EXPECT_EQ(tokenize_13a("  many   spaces  "), "many spaces");
}

// Brute-force corpus BLEU with one reference per sentence: every n-gram counted by comparing
// all windows, clipped, geometric mean, brevity penalty.
double brute_force_bleu(const std::vector<std::vector<std::string>>& hyps,
                        const std::vector<std::vector<std::string>>& refs) {
  double log_sum = 0;
  int64_t hyp_len = 0, ref_len = 0;
  for (int n = 1; n <= 4; ++n) {
    int64_t match = 0, total = 0;
    for (std::size_t s = 0; s < hyps.size(); ++s) {
      const auto& h = hyps[s];
      const auto& r = refs[s];
      for (std::size_t i = 0; i + n <= h.size(); ++i) {
        ++total;
        auto same = [&](const std::vector<std::string>& a, std::size_t ai,
                        const std::vector<std::string>& b, std::size_t bi) {
          for (int k = 0; k < n; ++k)
            if (a[ai + k] != b[bi + k]) return false;
          return true;
        };
        int64_t in_hyp_before = 0, in_ref = 0;
        for (std::size_t j = 0; j < i; ++j)
          in_hyp_before += same(h, j, h, i);
        for (std::size_t j = 0; j + n <= r.size(); ++j)
          in_ref += same(h, i, r, j);
        match += in_hyp_before < in_ref;  // the (k+1)-th occurrence matches if the ref has k+1
      }
    }
    log_sum += std::log(static_cast<double>(match) / static_cast<double>(total));
  }
  for (std::size_t s = 0; s < hyps.size(); ++s) {
    hyp_len += static_cast<int64_t>(hyps[s].size());
    ref_len += static_cast<int64_t>(refs[s].size());
  }
  const double bp = hyp_len < ref_len ? std::exp(1.0 - static_cast<double>(ref_len) / hyp_len) : 1;
  return 100.0 * bp * std::exp(log_sum / 4);
}

TEST(Seq2SeqBleu, MatchesBruteForceNgramCounting) {
  const std::vector<std::vector<std::string>> hyps = {
      {"a", "b", "a", "b", "a", "c", "d"}, {"x", "y", "z", "x", "y"}, {"a", "a", "a", "a"}};
  const std::vector<std::vector<std::string>> refs = {{"a", "b", "a", "c", "d", "e", "f", "g"},
                                                      {"x", "y", "z", "w", "x", "y", "q"},
                                                      {"a", "a", "b", "a", "a"}};
  std::vector<std::vector<std::vector<std::string>>> ref_sets;
  for (const auto& r : refs)
    ref_sets.push_back({r});
  EXPECT_NEAR(corpus_bleu_tokens(hyps, ref_sets).score, brute_force_bleu(hyps, refs), 1e-9);
}

TEST(Seq2SeqMetrics, ExactMatchAndTokenAccuracy) {
  const auto m = sequence_metrics({{"a", "b", "c"}, {"a", "x"}, {"q", "r", "s", "t"}},
                                  {{"a", "b", "c"}, {"a", "b", "c"}, {"q", "r", "s", "t"}});
  EXPECT_EQ(m.sentences, 3);
  EXPECT_NEAR(m.exact_match, 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(m.token_accuracy, (3.0 + 1.0 + 4.0) / (3.0 + 3.0 + 4.0), 1e-12);
  EXPECT_GT(m.bleu, 0.0);
  EXPECT_NEAR(sequence_metrics({{"a", "b", "c", "d"}}, {{"a", "b", "c", "d"}}).bleu, 100.0, 1e-9);
}

TEST(Seq2SeqTrain, NoamScheduleIsThePapersFormulaRescaled) {
  const int64_t warmup = 400, d = 512;
  auto paper = [&](int64_t step) {
    return std::pow(d, -0.5) * std::min(std::pow(step, -0.5), step * std::pow(warmup, -1.5));
  };
  const double peak = 1e-3;
  for (const int64_t step : {1, 10, 200, 400, 401, 1000, 100000})
    EXPECT_NEAR(noam_learning_rate(step, warmup, peak) / peak, paper(step) / paper(warmup), 1e-12)
        << step;
}

TEST(Seq2SeqTrain, LossIsLabelSmoothedCrossEntropyOverNonPadTokens) {
  torch::manual_seed(1);
  const auto logits = torch::randn({2, 3, 6});
  const auto target = torch::tensor({4, 2, 0, 5, 3, 2}).view({2, 3});
  const double eps = 0.1;
  // Closed form: (1 - eps) * NLL + eps * mean over classes of -log p, averaged over non-pad.
  const auto lp = torch::log_softmax(logits, -1);
  double sum = 0;
  int n = 0;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 3; ++t) {
      const int64_t y = target[b][t].item<int64_t>();
      if (y == text::Vocabulary::kPad) continue;
      sum += (1 - eps) * -lp[b][t][y].item<double>() + eps * -lp[b][t].mean().item<double>();
      ++n;
    }
  EXPECT_NEAR(seq2seq_loss(logits, target, eps).item<double>(), sum / n, 1e-5);
}

TEST(Seq2SeqTrain, ProgressLineShowsLossAndTokensPerSecond) {
  Seq2SeqProgress p;
  p.epoch = 2;
  p.epochs = 5;
  p.batch = 5;
  p.batches = 10;
  p.loss = 1.5;
  p.tokens_per_s = 1234;
  p.learning_rate = 1e-3;
  const auto line = format_progress(p, 10);
  EXPECT_NE(line.find("epoch 2/5 [#####.....] 5/10 loss 1.5000 1234 tok/s"), std::string::npos)
      << line;
}

// Sets torch's intra-op thread count for one test and restores it afterwards, so that running
// the test binary directly (all tests in one process) leaves later tests as it found them.
class ScopedThreads {
 public:
  explicit ScopedThreads(int threads) : saved_(torch::get_num_threads()) {
    torch::set_num_threads(threads);
  }
  ~ScopedThreads() { torch::set_num_threads(saved_); }
  ScopedThreads(const ScopedThreads&) = delete;
  ScopedThreads& operator=(const ScopedThreads&) = delete;

 private:
  int saved_;
};

// A small copy model as initialised, its training pairs (encoded) and held-out pairs (text).
// ctest runs every test in its own process, so each test builds its own.
struct CopyModel {
  Seq2SeqBundle bundle;
  text::EncodedPairs train;
  std::vector<text::TextPair> valid;
};

CopyModel copy_model() {
  CopyModel t;
  text::TaskOptions task;
  task.task = "copy";
  task.count = 3000;
  task.min_length = 3;
  task.max_length = 8;
  task.seed = 1;
  const auto pairs = text::generate_task(task);
  task.seed = 2;
  task.count = 200;
  t.valid = text::generate_task(task);
  std::vector<std::vector<std::string>> tokens;
  for (const auto& p : pairs)
    tokens.push_back(text::tokenize(p.source, text::TokenizerKind::kChar));
  const auto vocab = text::Vocabulary::build(tokens);
  auto options = models::text::seq2seq_preset("gru-additive")
                     .source_vocab(vocab.size())
                     .target_vocab(vocab.size())
                     .embedding_dim(16)
                     .hidden_dim(32)
                     .dropout(0.0)
                     .max_length(16);
  torch::manual_seed(1);
  t.bundle = {"gru-additive", models::text::make_seq2seq(options), vocab, vocab,
              text::TokenizerKind::kChar};
  t.bundle.model->eval();
  t.train = text::encode_pairs(pairs, vocab, vocab, text::TokenizerKind::kChar, 16,
                               text::LengthPolicy::kSkip);
  return t;
}

// A fresh copy_model-sized model and copy_model's held-out pairs, encoded, for training tests.
std::pair<std::shared_ptr<models::text::Seq2SeqModel>, text::EncodedPairs> untrained_copy_model() {
  const auto t = copy_model();
  return {models::text::make_seq2seq(t.bundle.model->options()),
          text::encode_pairs(t.valid, t.bundle.source_vocab, t.bundle.target_vocab,
                             text::TokenizerKind::kChar, 16, text::LengthPolicy::kSkip)};
}

// Trained to convergence, not for a fixed number of epochs: another CPU takes other BLAS
// kernels and so another trajectory (an AVX-512 EPYC reached exact match 0.665 after the 8
// epochs that sufficed on the development machine). Training goes on one epoch at a time until
// the held-out exact match passes 0.97, for at most kMaxEpochs — five times what the
// development machine needs — and the test asserts the quality, not the epoch it came at.
TEST(Seq2SeqTrain, GruAdditiveLearnsTheCopyTask) {
  const ScopedThreads one_thread(1);  // on a shared machine more threads only spin
  auto t = copy_model();
  constexpr int64_t kMaxEpochs = 40;
  Seq2SeqEvaluation eval;
  int64_t epochs = 0;
  while (epochs < kMaxEpochs) {
    Seq2SeqTrainOptions train;
    train.epochs = 1;
    train.batch_size = 32;
    train.learning_rate = 3e-3;
    train.seed = static_cast<uint64_t>(epochs) + 1;  // a new batch order each epoch
    const auto result = train_seq2seq(*t.bundle.model, t.train, train);
    ASSERT_EQ(result.epochs_completed, 1);
    ++epochs;
    eval = evaluate_seq2seq(t.bundle, t.valid, models::text::DecodeOptions().max_length(16));
    if (eval.metrics.exact_match > 0.97) break;
  }
  RecordProperty("epochs", static_cast<int>(epochs));
  EXPECT_GT(eval.metrics.exact_match, 0.9) << "after " << epochs << " epochs";
  EXPECT_GT(eval.metrics.bleu, 90.0) << "after " << epochs << " epochs";
  EXPECT_EQ(eval.failed, 0);
}

TEST(Seq2SeqTrain, TimeBudgetStopsTraining) {
  const auto fresh = untrained_copy_model();  // (not a structured binding: lambdas use it)
  const auto& model = fresh.first;
  const auto& data = fresh.second;
  Seq2SeqTrainOptions train;
  train.epochs = 1000;
  train.time_budget_s = 1e-9;
  const auto result = train_seq2seq(*model, data, train);
  EXPECT_TRUE(result.stopped_by_budget);
  EXPECT_EQ(result.steps, 1);
}

TEST(Seq2SeqTrain, LinearDecayReachesZeroAtTheEndOfTheEpochs) {
  EXPECT_DOUBLE_EQ(linear_decay_factor(0.0), 1.0);
  EXPECT_DOUBLE_EQ(linear_decay_factor(0.25), 0.75);
  EXPECT_DOUBLE_EQ(linear_decay_factor(1.5), 0.0);
  const auto fresh = untrained_copy_model();  // (not a structured binding: lambdas use it)
  const auto& model = fresh.first;
  const auto& data = fresh.second;
  Seq2SeqTrainOptions train;
  train.epochs = 3;
  train.batch_size = 8;
  train.learning_rate = 1e-3;
  train.decay = "linear";
  train.progress_every = 1;
  std::vector<std::pair<int64_t, double>> rates;  // (step, learning rate)
  train.on_progress = [&](const Seq2SeqProgress& p) {
    rates.emplace_back(p.step, p.learning_rate);
  };
  const auto result = train_seq2seq(*model, data, train);
  // Closed form: lr_s = lr · (1 - (s - 1) / total), total = epochs × batches per epoch, the
  // batches counted here from the data (ceil(pairs / batch size)), not taken from the result.
  const auto pairs = static_cast<int64_t>(data.sources.size());
  const int64_t total = 3 * ((pairs + 7) / 8);
  ASSERT_GT(total, 3);
  EXPECT_EQ(result.steps, total);
  ASSERT_EQ(static_cast<int64_t>(rates.size()), total);
  for (std::size_t i = 0; i < rates.size(); ++i) {
    const auto& [step, lr] = rates[i];
    EXPECT_EQ(step, static_cast<int64_t>(i) + 1);
    const double expected =
        1e-3 * (1.0 - static_cast<double>(step - 1) / static_cast<double>(total));
    EXPECT_NEAR(lr, expected, 1e-12) << "step " << step;
  }
  train.decay = "cosine";
  EXPECT_NE(test::error_of([&] { train_seq2seq(*model, data, train); }).find("decay must be"),
            std::string::npos);
}

TEST(Seq2SeqCheckpoint, RoundTripGivesTheSameTranslations) {
  const auto t = copy_model();
  test::TempDir dir;
  save_seq2seq(dir / "model.h5", t.bundle, {{"seed", 1}});
  const auto back = load_seq2seq(dir / "model.h5");
  EXPECT_EQ(back.name, "gru-additive");
  EXPECT_EQ(back.source_vocab.to_json(), t.bundle.source_vocab.to_json());
  EXPECT_EQ(back.tokenizer, text::TokenizerKind::kChar);
  const std::vector<std::string> inputs = {"abcde", "qqrst", "zyxw"};
  const auto a = translate(t.bundle, inputs, models::text::DecodeOptions().max_length(16));
  const auto b = translate(back, inputs, models::text::DecodeOptions().max_length(16));
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    EXPECT_EQ(a[i].text, b[i].text);
    EXPECT_TRUE(torch::allclose(a[i].attention, b[i].attention));
  }
  // Another model family in the file is refused with the path in the message.
  torch::nn::Linear other(2, 2);
  save_checkpoint(dir / "other.h5", *other, CheckpointMeta{});
  try {
    load_seq2seq(dir / "other.h5");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a seq2seq checkpoint"), std::string::npos);
  }
}

// Crafted checkpoints: every config field outside its range is refused with the file and the
// field named, before a model is built (layers 0 crashed, layers 100000 hung, dropout 7 gave a
// LibTorch stack trace).
TEST(Seq2SeqCheckpoint, CraftedConfigFieldsAreRefusedByName) {
  const auto t = copy_model();
  test::TempDir dir;
  const auto good = dir / "good.h5";
  save_seq2seq(good, t.bundle);
  const std::vector<std::pair<std::string, nlohmann::json>> bad = {
      {"layers", 0},
      {"layers", -1},
      {"layers", 100000},
      {"max_length", 1e12},
      {"max_length", 0},
      {"dropout", 7},
      {"dropout", -1},
      {"hidden_dim", 0},
      {"embedding_dim", -3},
      {"heads", 0},
      {"heads", 3},
      {"source_vocab", 2},
      {"arch", "quantum"},
      {"cell", "rnn"},
      {"attention", "telepathy"},
      {"layers", "two"},
      {"model_dim", 1 << 30},
      {"positions", "random"},
      {"layers", 1.5},
      {"hidden_dim", 64.0},
      // Fields read before the sizes: nlohmann's type_error named neither file nor field.
      {"family", 5},
      {"name", nlohmann::json::array({1})},
      // A megabyte in a message: cut.
      {"cell", std::string(1000000, 'x')},
      {"layers", std::string(1000000, 'x')}};
  for (const auto& [field, value] : bad) {
    const auto path = dir / ("bad_" + field + ".h5");
    std::filesystem::copy_file(good, path, std::filesystem::copy_options::overwrite_existing);
    {
      auto file = h5::File::open(path, true);
      auto config =
          nlohmann::json::parse(h5::read_string_attribute(file.id(), "model_config", path));
      config[field] = value;
      if (field == "heads") config["arch"] = "transformer";
      h5::write_attribute(file.id(), "model_config", config.dump(), path);
      seal_checkpoint(file.id(), path);  // crafted on purpose: the checksum follows
      file.close();
    }
    const auto message = test::error_of([&] { load_seq2seq(path); });
    EXPECT_NE(message.find(path), std::string::npos) << field << ": " << message.substr(0, 500);
    EXPECT_NE(message.find("model_config." + field), std::string::npos)
        << field << ": " << message.substr(0, 500);
    EXPECT_LT(message.size(), path.size() + 400) << field << ": " << message.substr(0, 500);
  }
  // The tokenizer's name, in the extra attribute.
  const auto path = dir / "bad_tokenizer.h5";
  std::filesystem::copy_file(good, path, std::filesystem::copy_options::overwrite_existing);
  {
    auto file = h5::File::open(path, true);
    auto extra = nlohmann::json::parse(h5::read_string_attribute(file.id(), "extra", path));
    extra["tokenizer"] = 5;
    h5::write_attribute(file.id(), "extra", extra.dump(), path);
    seal_checkpoint(file.id(), path);  // crafted on purpose: the checksum follows
    file.close();
  }
  EXPECT_EQ(test::error_of([&] { load_seq2seq(path); }),
            path + ": extra.tokenizer is 5, not a string");
  EXPECT_EQ(test::error_of([&] { load_seq2seq(good); }), "");
}

// The parameter count from the options is the modules' own, within 10 % (attention's bounded
// from above), for every preset: what the size limit relies on.
TEST(Seq2SeqCheckpoint, ParameterCountFromTheOptionsMatchesTheModules) {
  for (const bool bidirectional : {false, true})
    for (const auto& name : models::text::seq2seq_model_names()) {
      const auto o = models::text::seq2seq_preset(name)
                         .source_vocab(37)
                         .target_vocab(29)
                         .embedding_dim(24)
                         .hidden_dim(40)
                         .model_dim(48)
                         .heads(4)
                         .ff_dim(96)
                         .layers(2)
                         .bidirectional(bidirectional)
                         .max_length(50);
      double actual = 0;
      for (const auto& p : models::text::make_seq2seq(o)->parameters())
        actual += static_cast<double>(p.numel());
      const double estimate = seq2seq_parameter_count(o);
      EXPECT_GE(estimate, actual * 0.98) << name << " bidirectional " << bidirectional;
      EXPECT_LE(estimate, actual * 1.10) << name << " bidirectional " << bidirectional;
    }
}

// Sizes each within range that multiply into more than memory holds are refused before a
// tensor is allocated (hidden_dim 16384 with 64 layers: over 1e11 weights, bad_alloc).
TEST(Seq2SeqCheckpoint, SizesThatMakeTooLargeAModelAreRefused) {
  const auto t = copy_model();
  test::TempDir dir;
  const auto path = dir / "huge.h5";
  save_seq2seq(path, t.bundle);
  {
    auto file = h5::File::open(path, true);
    auto config = nlohmann::json::parse(h5::read_string_attribute(file.id(), "model_config", path));
    config["hidden_dim"] = 16384;
    config["layers"] = 64;
    h5::write_attribute(file.id(), "model_config", config.dump(), path);
    seal_checkpoint(file.id(), path);  // crafted on purpose: the checksum follows
    file.close();
  }
  const auto message = test::error_of([&] { load_seq2seq(path); });
  EXPECT_NE(message.find(path + ": these sizes make a model of about "), std::string::npos)
      << message;
  EXPECT_NE(message.find("e+11 parameters; at most 2^30"), std::string::npos) << message;
}

TEST(Seq2SeqTranslate, BadInputsAreReportedAndTheOthersGoOn) {
  const auto t = copy_model();
  const std::vector<std::string> inputs = {"abc", "", "ab\xFF", std::string(40, 'a')};
  const auto out = translate(t.bundle, inputs, models::text::DecodeOptions().max_length(16));
  EXPECT_TRUE(out[0].error.empty());
  EXPECT_EQ(out[1].error, "empty input");
  EXPECT_EQ(out[2].error, "invalid UTF-8 at byte 2");
  EXPECT_TRUE(out[3].error.empty());
  EXPECT_TRUE(out[3].truncated);
  EXPECT_EQ(out[3].source_tokens.size(), 16u);
}

// Evaluation scores `chunk` pairs at a time and lets their translations go (all of them kept
// took tens of times the corpus's size): the same metrics as the whole corpus translated at
// once and scored by sequence_metrics (brute-force checked above). Batches of one, so that no
// batch's padding differs between the two.
TEST(Seq2SeqTranslate, EvaluationInChunksEqualsTheWholeCorpusScoredAtOnce) {
  const auto t = copy_model();
  auto pairs = t.valid;
  pairs.resize(50);
  pairs[3].source.clear();                  // fails: empty input
  pairs[9].target = "ab\xFF";               // a reference that is not UTF-8 matches nothing
  pairs[20].source = std::string(30, 'c');  // truncated
  const auto decode = models::text::DecodeOptions().max_length(16);
  std::vector<std::string> sources;
  for (const auto& p : pairs)
    sources.push_back(p.source);
  const auto all = translate(t.bundle, sources, decode, 1);
  std::vector<std::vector<std::string>> outputs, references;
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    outputs.push_back(all[i].tokens);
    references.push_back(i == 9 ? std::vector<std::string>{}
                                : text::tokenize(pairs[i].target, text::TokenizerKind::kChar));
  }
  const auto expected = sequence_metrics(outputs, references);
  for (const std::size_t chunk :
       {std::size_t{1}, std::size_t{7}, std::size_t{50}, std::size_t{4096}}) {
    const auto eval = evaluate_seq2seq(t.bundle, pairs, decode, 1, nullptr, chunk);
    EXPECT_EQ(eval.metrics.sentences, 50) << chunk;
    EXPECT_EQ(eval.metrics.exact_match, expected.exact_match) << chunk;
    EXPECT_EQ(eval.metrics.token_accuracy, expected.token_accuracy) << chunk;
    EXPECT_NEAR(eval.metrics.bleu, expected.bleu, 1e-9) << chunk;
    EXPECT_EQ(eval.failed, 1) << chunk;
    EXPECT_EQ(eval.truncated, 1) << chunk;
  }
  // A stop asked after the first batch: the rest are "stopped" (failed) in every later chunk.
  int asked = 0;
  const auto stopped = evaluate_seq2seq(
      t.bundle, pairs, decode, 1, [&] { return ++asked > 1; }, 7);
  EXPECT_TRUE(stopped.stopped);
  EXPECT_EQ(stopped.failed, 49);  // pair 3 (empty) among them
}

TEST(Seq2SeqTranslate, AlignmentsAreReadableWithH5py) {
  const auto t = copy_model();
  test::TempDir dir;
  const auto out =
      translate(t.bundle, {"abcd", "\xFF"}, models::text::DecodeOptions().max_length(16));
  write_alignments(dir / "al.h5", out, t.bundle.name);
  write_alignment_png(dir / "a.png", out[0]);
  EXPECT_GT(std::filesystem::file_size(dir / "a.png"), 100u);
  const std::string script =
      "import h5py, json, sys\n"
      "f = h5py.File(sys.argv[1], 'r')\n"
      "g = f['sentences/000000']\n"
      "a = g['attention'][()]\n"
      "print(f.attrs['format'], f.attrs['model'], a.shape, json.loads(g.attrs['source_tokens']),"
      " g.attrs['output'], round(float(a.sum(axis=1).mean()), 4), "
      "f['sentences/000001'].attrs['error'])\n";
  std::ofstream(dir / "read.py") << script;
  const auto r =
      test::run_process(test::python() + " " + (dir / "read.py") + " " + (dir / "al.h5"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output, "attnscope-alignments gru-additive (" + std::to_string(out[0].tokens.size()) +
                          ", 4) ['a', 'b', 'c', 'd'] " + out[0].text +
                          " 1.0 invalid UTF-8 at byte 0\n");
}

TEST(Seq2SeqTranslate, VocabularyNumbersItsSpecialsAsTheDecodersExpect) {
  // The ids are one definition (attnscope/special_tokens.h); the vocabulary must also place its
  // special tokens at those ids.
  // (id() reads the words "<pad>" etc. of a text as unknown words, so token() is the check.)
  const text::Vocabulary vocab;
  EXPECT_EQ(vocab.token(special_tokens::kPad), "<pad>");
  EXPECT_EQ(vocab.token(special_tokens::kBos), "<bos>");
  EXPECT_EQ(vocab.token(special_tokens::kEos), "<eos>");
  EXPECT_EQ(vocab.token(special_tokens::kUnk), "<unk>");
  EXPECT_EQ(vocab.id("<unk>"), special_tokens::kUnk);
  EXPECT_EQ(vocab.size(), 4);
}

}  // namespace
}  // namespace attnscope::pipeline
