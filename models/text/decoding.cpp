#include "models/text/decoding.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "attnscope/error.h"
#include "attnscope/special_tokens.h"

namespace attnscope::models::text {
namespace {

using special_tokens::kBos;
using special_tokens::kEos;

void check_inputs(const torch::Tensor& source, const torch::Tensor& lengths,
                  const DecodeOptions& options) {
  check(source.dim() == 2 && lengths.dim() == 1 && lengths.size(0) == source.size(0), "decode",
        "expected source (B, S) and lengths (B), got ", source.sizes(), " and ", lengths.sizes());
  check(options.beam_size() >= 1, "decode", "beam size must be >= 1, got ", options.beam_size());
  check(options.max_length() >= 1, "decode", "max length must be >= 1, got ", options.max_length());
}

// After max_length tokens only <eos> may follow: every other token gets log-probability -inf.
torch::Tensor only_eos(const torch::Tensor& log_probs) {
  auto out = torch::full_like(log_probs, -std::numeric_limits<double>::infinity());
  out.select(1, kEos).copy_(log_probs.select(1, kEos));
  return out;
}

}  // namespace

double length_penalty(int64_t length, double alpha) {
  return std::pow((5.0 + static_cast<double>(length)) / 6.0, alpha);
}

std::vector<Hypothesis> greedy_decode(Seq2SeqModel& model, const torch::Tensor& source,
                                      const torch::Tensor& source_lengths,
                                      const DecodeOptions& options) {
  check_inputs(source, source_lengths, options);
  torch::NoGradGuard no_grad;
  const int64_t batch = source.size(0);
  auto state = model.start(source, source_lengths);
  // The model's inputs on the source's device; what is read per token on the CPU.
  auto previous = torch::full({batch}, kBos, source.options().dtype(torch::kLong));
  std::vector<Hypothesis> out(static_cast<std::size_t>(batch));
  std::vector<std::vector<torch::Tensor>> rows(static_cast<std::size_t>(batch));
  auto lengths = source_lengths.to(torch::kCPU);
  // max_length tokens, then one more step that may only end the sequence.
  for (int64_t t = 0; t <= options.max_length(); ++t) {
    auto step = model.step(state, previous);
    auto log_probs = torch::log_softmax(step.logits, -1);  // (B, V)
    if (t == options.max_length()) log_probs = only_eos(log_probs);
    auto best = log_probs.argmax(-1);  // (B)
    const auto best_lp = log_probs.gather(1, best.unsqueeze(1)).squeeze(1).to(torch::kCPU);
    const auto best_cpu = best.to(torch::kCPU);
    auto attention =
        step.attention.defined() ? step.attention.to(torch::kCPU, torch::kFloat) : torch::Tensor();
    bool all_done = true;
    for (int64_t b = 0; b < batch; ++b) {
      auto& h = out[static_cast<std::size_t>(b)];
      if (h.finished) continue;
      const int64_t token = best_cpu[b].item<int64_t>();
      h.log_prob += best_lp[b].item<double>();
      if (token == kEos) {
        h.finished = true;
        continue;
      }
      h.tokens.push_back(token);
      if (attention.defined())
        rows[static_cast<std::size_t>(b)].push_back(
            attention[b].slice(0, 0, lengths[b].item<int64_t>()));
      all_done = false;
    }
    if (all_done) break;
    previous = best;
  }
  for (int64_t b = 0; b < batch; ++b) {
    auto& h = out[static_cast<std::size_t>(b)];
    const auto& r = rows[static_cast<std::size_t>(b)];
    if (model.has_attention())
      h.attention = r.empty() ? torch::zeros({0, lengths[b].item<int64_t>()}) : torch::stack(r);
  }
  return out;
}

std::vector<Hypothesis> beam_decode(Seq2SeqModel& model, const torch::Tensor& source,
                                    const torch::Tensor& source_lengths,
                                    const DecodeOptions& options) {
  check_inputs(source, source_lengths, options);
  if (options.beam_size() == 1) return greedy_decode(model, source, source_lengths, options);
  torch::NoGradGuard no_grad;
  const int64_t k = options.beam_size();
  std::vector<Hypothesis> results;
  for (int64_t b = 0; b < source.size(0); ++b) {
    const int64_t length = source_lengths[b].item<int64_t>();
    auto src = source[b].slice(0, 0, length).unsqueeze(0);  // (1, S_b)
    auto state = model.start(src, source_lengths[b].reshape({1}));
    // Live hypotheses: tokens, attention rows, running log-probability.
    std::vector<Hypothesis> live(1);
    std::vector<std::vector<torch::Tensor>> live_rows(1);
    std::vector<Hypothesis> finished;
    auto score = [&](const Hypothesis& h) {
      return h.log_prob /
             length_penalty(static_cast<int64_t>(h.tokens.size()) + (h.finished ? 1 : 0),
                            options.length_penalty());
    };
    auto previous = torch::full({1}, kBos, source.options().dtype(torch::kLong));
    for (int64_t t = 0; t <= options.max_length() && !live.empty(); ++t) {
      auto step = model.step(state, previous);
      auto log_probs = torch::log_softmax(step.logits, -1);  // (n, V)
      if (t == options.max_length()) log_probs = only_eos(log_probs);
      const int64_t n = log_probs.size(0), vocab = log_probs.size(1);
      auto base = torch::empty({n, 1}, torch::kDouble);
      for (int64_t i = 0; i < n; ++i)
        base[i][0] = live[static_cast<std::size_t>(i)].log_prob;
      auto total = (log_probs.to(torch::kCPU, torch::kDouble) + base).view({-1});  // (n * V)
      auto top = total.topk(std::min<int64_t>(2 * k, n * vocab));
      auto values = std::get<0>(top), indices = std::get<1>(top);
      std::vector<Hypothesis> next;
      std::vector<std::vector<torch::Tensor>> next_rows;
      std::vector<int64_t> parents, tokens;
      for (int64_t j = 0; j < indices.size(0) && static_cast<int64_t>(next.size()) < k; ++j) {
        const int64_t flat = indices[j].item<int64_t>();
        const int64_t parent = flat / vocab, token = flat % vocab;
        Hypothesis h = live[static_cast<std::size_t>(parent)];
        h.log_prob = values[j].item<double>();
        if (token == kEos) {
          h.finished = true;
          if (step.attention.defined()) {
            const auto& r = live_rows[static_cast<std::size_t>(parent)];
            h.attention = r.empty() ? torch::zeros({0, length}) : torch::stack(r);
          }
          finished.push_back(std::move(h));
          continue;
        }
        h.tokens.push_back(token);
        auto rows = live_rows[static_cast<std::size_t>(parent)];
        if (step.attention.defined())
          rows.push_back(step.attention[parent].to(torch::kCPU, torch::kFloat));
        next.push_back(std::move(h));
        next_rows.push_back(std::move(rows));
        parents.push_back(parent);
        tokens.push_back(token);
      }
      // Stop when the best finished hypothesis beats every live one (scores only fall with
      // length when α = 0; with α > 0 this is the usual early-stopping approximation).
      if (static_cast<int64_t>(finished.size()) >= k) break;
      live = std::move(next);
      live_rows = std::move(next_rows);
      if (live.empty()) break;
      state.reorder(torch::tensor(parents, torch::kLong).to(source.device()));
      previous = torch::tensor(tokens, torch::kLong).to(source.device());
    }
    for (std::size_t i = 0; i < live.size(); ++i) {
      if (model.has_attention())
        live[i].attention =
            live_rows[i].empty() ? torch::zeros({0, length}) : torch::stack(live_rows[i]);
      finished.push_back(std::move(live[i]));
    }
    auto best = std::max_element(finished.begin(), finished.end(),
                                 [&](const Hypothesis& a, const Hypothesis& c) {
                                   // Unfinished hypotheses rank after finished ones.
                                   if (a.finished != c.finished) return !a.finished;
                                   return score(a) < score(c);
                                 });
    results.push_back(*best);
  }
  return results;
}

std::vector<Hypothesis> decode(Seq2SeqModel& model, const torch::Tensor& source,
                               const torch::Tensor& source_lengths, const DecodeOptions& options) {
  return options.beam_size() == 1 ? greedy_decode(model, source, source_lengths, options)
                                  : beam_decode(model, source, source_lengths, options);
}

}  // namespace attnscope::models::text
