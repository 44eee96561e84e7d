// The text seq2seq models (models/text): presets, teacher forcing vs step-by-step decoding,
// padding invariance, attention from the core, and greedy/beam search against brute force.

#include <cmath>
#include <map>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "models/attention/attend.h"
#include "models/text/decoding.h"
#include "models/text/rnn_seq2seq.h"
#include "models/text/seq2seq.h"
#include "test_support.h"

namespace attnscope::models::text {
namespace {

Seq2SeqOptions tiny(const std::string& name) {
  return seq2seq_preset(name)
      .source_vocab(11)
      .target_vocab(9)
      .embedding_dim(8)
      .hidden_dim(6)
      .model_dim(16)
      .heads(2)
      .ff_dim(24)
      .layers(2)
      .dropout(0.0)
      .max_length(12);
}

const std::vector<std::string> kModels = {"gru",     "gru-additive",  "gru-dot",    "gru-general",
                                          "gru-crf", "lstm-additive", "transformer"};

TEST(TextSeq2Seq, PresetsMapModelNames) {
  EXPECT_EQ(seq2seq_preset("gru").attention(), "none");
  EXPECT_EQ(seq2seq_preset("gru-crf").attention(), "crf");
  EXPECT_EQ(seq2seq_preset("lstm-additive").cell(), "lstm");
  EXPECT_EQ(seq2seq_preset("transformer").arch(), "transformer");
  EXPECT_THROW(seq2seq_preset("gru-magic"), Error);
  EXPECT_THROW(make_seq2seq(tiny("gru").attention("magic")), Error);
  EXPECT_THROW(make_seq2seq(tiny("gru").source_vocab(3)), Error);
}

TEST(TextSeq2Seq, TeacherForcingEqualsStepByStepDecoding) {
  // The Transformer's forward uses a causal mask over the whole target, its steps the
  // key/value caches: both must give the same logits and alignments.
  for (const auto& name : kModels) {
    torch::manual_seed(3);
    auto model = make_seq2seq(tiny(name));
    model->eval();
    const auto source = torch::tensor({4, 5, 6, 7, 8, 3, 9, 10, 0, 0}).view({2, 5});
    const auto lengths = torch::tensor({5, 3});
    const auto target_in = torch::tensor({1, 4, 5, 6, 1, 7, 8, 0}).view({2, 4});
    torch::NoGradGuard no_grad;
    const auto full = model->forward(source, lengths, target_in);
    auto state = model->start(source, lengths);
    for (int64_t t = 0; t < 4; ++t) {
      const auto step = model->step(state, target_in.select(1, t));
      EXPECT_TRUE(torch::allclose(step.logits, full.logits.select(1, t), 1e-4, 1e-5)) << name;
      if (model->has_attention()) {
        EXPECT_TRUE(torch::allclose(step.attention, full.attention.select(1, t), 1e-4, 1e-5))
            << name;
      }
    }
    ASSERT_EQ(full.attention.defined(), name != "gru") << name;
    if (full.attention.defined()) {
      // Normalised weights: rows sum to 1 and padding keys get exactly 0.
      EXPECT_TRUE(torch::allclose(full.attention.sum(-1), torch::ones({2, 4}), 1e-4, 1e-5)) << name;
      EXPECT_EQ(full.attention[1].slice(1, 3).abs().max().item<float>(), 0.0f) << name;
    }
  }
}

TEST(TextSeq2Seq, PaddingDoesNotChangeTheOutput) {
  for (const auto& name : kModels) {
    torch::manual_seed(4);
    auto model = make_seq2seq(tiny(name));
    model->eval();
    torch::NoGradGuard no_grad;
    const auto alone =
        model->forward(torch::tensor({{6, 7, 8}}), torch::tensor({3}), torch::tensor({{1, 4, 5}}));
    const auto padded =
        model->forward(torch::tensor({{6, 7, 8, 0, 0, 0}, {4, 5, 6, 7, 8, 9}}),
                       torch::tensor({3, 6}), torch::tensor({{1, 4, 5}, {1, 6, 6}}));
    EXPECT_TRUE(torch::allclose(alone.logits[0], padded.logits[0], 1e-4, 1e-5)) << name;
  }
}

TEST(TextSeq2Seq, AdditiveDecoderAttentionIsTheCoreModule) {
  // The decoder's weights are those of attention::Attention given the previous decoder state.
  torch::manual_seed(5);
  RnnSeq2Seq model(tiny("gru-additive").layers(1));
  model->eval();
  torch::NoGradGuard no_grad;
  const auto source = torch::tensor({{4, 5, 6, 7}});
  const auto lengths = torch::tensor({4});
  auto state = model->start(source, lengths);
  const auto h0 = state.at("h").select(1, 0).unsqueeze(1);  // (1, 1, D)
  const auto memory = state.at("memory");
  const auto expected = model->attention->forward(h0, memory, memory).weights.squeeze(1);
  const auto step = model->step(state, torch::tensor({1}));
  EXPECT_TRUE(torch::allclose(step.attention, expected, 1e-5, 1e-6));
  EXPECT_EQ(model->attention->options.score(), attention::ScoreKind::additive);
}

// A model whose next-token distribution depends on the previous token only (a Markov chain
// over 5 tokens), to check the search against enumeration of every sequence.
class MarkovModel : public Seq2SeqModel {
 public:
  explicit MarkovModel(torch::Tensor table) : table_(std::move(table)) {
    options_.source_vocab(5).target_vocab(5).max_length(4);
  }
  Seq2SeqOutput forward(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&) override {
    return {};
  }
  DecoderState start(const torch::Tensor& source, const torch::Tensor&) override {
    DecoderState s;
    s.tensors["dummy"] = torch::zeros({source.size(0), 1});
    return s;
  }
  StepOutput step(DecoderState&, const torch::Tensor& previous) override {
    return {table_.index_select(0, previous), torch::Tensor()};
  }
  bool has_attention() const override { return false; }
  const Seq2SeqOptions& options() const override { return options_; }

 private:
  torch::Tensor table_;  // (5, 5) logits of the next token given the previous
  Seq2SeqOptions options_;
};

// GNMT's length penalty written from the paper (Wu et al. 2016, eq. 14):
// lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha, |Y| counting the final <eos>.
double gnmt_length_penalty(std::size_t length, double alpha) {
  return std::pow(5.0 + static_cast<double>(length), alpha) / std::pow(6.0, alpha);
}

// Best finished sequence (ending in <eos> = 2) of at most max_len tokens, by brute force.
std::pair<std::vector<int64_t>, double> brute_force_best(const torch::Tensor& table, int max_len,
                                                         double alpha) {
  const auto lp = torch::log_softmax(table.to(torch::kDouble), -1);
  std::vector<int64_t> best;
  double best_score = -1e30;
  std::function<void(std::vector<int64_t>&, int64_t, double)> walk =
      [&](std::vector<int64_t>& seq, int64_t prev, double logp) {
        const double end = logp + lp[prev][2].item<double>();
        const double score = end / gnmt_length_penalty(seq.size() + 1, alpha);
        if (score > best_score) {
          best_score = score;
          best = seq;
        }
        if (static_cast<int>(seq.size()) == max_len) return;
        for (int64_t t = 0; t < 5; ++t) {
          if (t == 2) continue;
          seq.push_back(t);
          walk(seq, t, logp + lp[prev][t].item<double>());
          seq.pop_back();
        }
      };
  std::vector<int64_t> seq;
  walk(seq, 1, 0.0);
  return {best, best_score};
}

TEST(TextDecoding, WideBeamFindsTheBruteForceBest) {
  torch::manual_seed(6);
  for (int trial = 0; trial < 5; ++trial) {
    const auto table = torch::randn({5, 5}) * 2;
    MarkovModel model(table);
    for (const double alpha : {0.0, 0.6, 1.0}) {
      const auto [best, score] = brute_force_best(table, 3, alpha);
      // A beam as wide as every live sequence (4^3) is exhaustive.
      const auto hyp =
          beam_decode(model, torch::ones({1, 2}, torch::kLong), torch::tensor({2}),
                      DecodeOptions().beam_size(64).max_length(3).length_penalty(alpha));
      ASSERT_EQ(hyp.size(), 1u);
      // At step max_length only <eos> may follow, so every hypothesis ends within 3 tokens.
      ASSERT_TRUE(hyp[0].finished) << "trial " << trial << " alpha " << alpha;
      EXPECT_EQ(hyp[0].tokens, best) << "trial " << trial << " alpha " << alpha;
    }
  }
}

TEST(TextDecoding, GreedyFollowsTheArgmaxChain) {
  torch::manual_seed(7);
  const auto table = torch::randn({5, 5});
  MarkovModel model(table);
  const auto hyps = greedy_decode(model, torch::ones({3, 2}, torch::kLong),
                                  torch::tensor({2, 2, 1}), DecodeOptions().max_length(6));
  std::vector<int64_t> expected;
  int64_t prev = 1;
  for (int i = 0; i < 6; ++i) {
    const int64_t next = table[prev].argmax().item<int64_t>();
    if (next == 2) break;
    expected.push_back(next);
    prev = next;
  }
  for (const auto& h : hyps)
    EXPECT_EQ(h.tokens, expected);
  const auto beam1 = beam_decode(model, torch::ones({1, 2}, torch::kLong), torch::tensor({2}),
                                 DecodeOptions().max_length(6));
  EXPECT_EQ(beam1[0].tokens, expected);
}

TEST(TextDecoding, AlignmentsHaveOneRowPerOutputToken) {
  torch::manual_seed(8);
  auto model = make_seq2seq(tiny("gru-additive"));
  model->eval();
  const auto source = torch::tensor({4, 5, 6, 7, 8, 9, 0, 0}).view({2, 4});
  const auto lengths = torch::tensor({4, 2});
  for (const int64_t beam : {1, 3}) {
    const auto hyps =
        decode(*model, source, lengths, DecodeOptions().beam_size(beam).max_length(5));
    ASSERT_EQ(hyps.size(), 2u);
    for (std::size_t b = 0; b < 2; ++b) {
      ASSERT_TRUE(hyps[b].attention.defined());
      EXPECT_EQ(hyps[b].attention.size(0), static_cast<int64_t>(hyps[b].tokens.size()));
      EXPECT_EQ(hyps[b].attention.size(1), lengths[static_cast<int64_t>(b)].item<int64_t>());
    }
  }
}

TEST(TextDecoding, LengthPenaltyIsGnmts) {
  for (const double alpha : {0.0, 0.2, 0.6, 1.0, 2.0})
    for (const int64_t length : {0, 1, 2, 7, 50})
      EXPECT_NEAR(length_penalty(length, alpha),
                  gnmt_length_penalty(static_cast<std::size_t>(length), alpha), 1e-12)
          << "length " << length << " alpha " << alpha;
  EXPECT_NEAR(length_penalty(7, 1.0), 2.0, 1e-12);  // (5 + 7) / 6
}

}  // namespace
}  // namespace attnscope::models::text
