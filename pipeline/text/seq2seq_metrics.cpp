#include "pipeline/text/seq2seq_metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>
#include <sstream>

#include "attnscope/error.h"

namespace attnscope::pipeline {
namespace {

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  for (std::size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size())
    s.replace(pos, from.size(), to);
}

std::vector<std::string> split_spaces(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;)
    out.push_back(w);
  return out;
}

using NgramCounts = std::map<std::vector<std::string>, int64_t>;

constexpr std::size_t kOrder = 4;  // BLEU-4

NgramCounts ngrams(const std::vector<std::string>& tokens, std::size_t n) {
  NgramCounts counts;
  for (std::size_t i = 0; i + n <= tokens.size(); ++i)
    ++counts[std::vector<std::string>(tokens.begin() + static_cast<std::ptrdiff_t>(i),
                                      tokens.begin() + static_cast<std::ptrdiff_t>(i + n))];
  return counts;
}

}  // namespace

std::string tokenize_13a(const std::string& input) {
  // The same rules, in the same order, as sacrebleu/tokenizers/tokenizer_13a.py and
  // tokenizer_re.py.
  std::string line = input;
  replace_all(line, "<skipped>", "");
  replace_all(line, "-\n", "");
  replace_all(line, "\n", " ");
  if (line.find('&') != std::string::npos) {
    replace_all(line, "&quot;", "\"");
    replace_all(line, "&amp;", "&");
    replace_all(line, "&lt;", "<");
    replace_all(line, "&gt;", ">");
  }
  line = " " + line + " ";
  static const std::regex kSymbols(R"(([\{-\~\[-\` -\&\(-\+\:-\@\/]))");
  static const std::regex kPeriodCommaAfter(R"(([^0-9])([\.,]))");
  static const std::regex kPeriodCommaBefore(R"(([\.,])([^0-9]))");
  static const std::regex kDashAfterDigit(R"(([0-9])(-))");
  line = std::regex_replace(line, kSymbols, " $1 ");
  line = std::regex_replace(line, kPeriodCommaAfter, "$1 $2 ");
  line = std::regex_replace(line, kPeriodCommaBefore, " $1 $2");
  line = std::regex_replace(line, kDashAfterDigit, "$1 $2 ");
  std::string out;
  for (const auto& w : split_spaces(line))
    out += (out.empty() ? "" : " ") + w;
  return out;
}

void BleuCounts::add(const std::vector<std::string>& hyp,
                     const std::vector<std::vector<std::string>>& refs) {
  check(!refs.empty(), "BLEU", concat("sentence ", sentences_, " has no reference"));
  ++sentences_;
  const auto hyp_len = static_cast<int64_t>(hyp.size());
  // Closest reference length, ties to the shorter one (sacreBLEU).
  int64_t closest = -1;
  for (const auto& r : refs) {
    const auto len = static_cast<int64_t>(r.size());
    if (closest < 0 || std::abs(len - hyp_len) < std::abs(closest - hyp_len) ||
        (std::abs(len - hyp_len) == std::abs(closest - hyp_len) && len < closest))
      closest = len;
  }
  sums_.hypothesis_length += hyp_len;
  sums_.reference_length += closest;
  for (std::size_t n = 1; n <= kOrder; ++n) {
    // Clip each hypothesis n-gram by its largest count in any one reference.
    NgramCounts max_ref;
    for (const auto& r : refs)
      for (const auto& [gram, count] : ngrams(r, n))
        max_ref[gram] = std::max(max_ref[gram], count);
    for (const auto& [gram, count] : ngrams(hyp, n)) {
      sums_.totals[n - 1] += count;
      const auto it = max_ref.find(gram);
      if (it != max_ref.end()) sums_.matches[n - 1] += std::min(count, it->second);
    }
  }
}

BleuScore BleuCounts::score() const {
  BleuScore s = sums_;
  // sacreBLEU's compute_bleu with smooth_method="exp".
  double smooth = 1.0;
  double log_sum = 0.0;
  bool zero = false;
  for (std::size_t n = 0; n < kOrder; ++n) {
    if (s.totals[n] == 0) {
      zero = true;
      break;
    }
    if (s.matches[n] == 0) {
      smooth *= 2;
      s.precisions[n] = 100.0 / (smooth * static_cast<double>(s.totals[n]));
    } else {
      s.precisions[n] =
          100.0 * static_cast<double>(s.matches[n]) / static_cast<double>(s.totals[n]);
    }
    log_sum += std::log(s.precisions[n]);
  }
  if (s.hypothesis_length == 0) {
    s.brevity_penalty = 0.0;
  } else if (s.hypothesis_length < s.reference_length) {
    s.brevity_penalty = std::exp(1.0 - static_cast<double>(s.reference_length) /
                                           static_cast<double>(s.hypothesis_length));
  } else {
    s.brevity_penalty = 1.0;
  }
  s.score = zero ? 0.0 : s.brevity_penalty * std::exp(log_sum / static_cast<double>(kOrder));
  return s;
}

BleuScore corpus_bleu_tokens(const std::vector<std::vector<std::string>>& hypotheses,
                             const std::vector<std::vector<std::vector<std::string>>>& references) {
  check(hypotheses.size() == references.size(), "BLEU",
        concat(hypotheses.size(), " hypotheses but ", references.size(), " reference sets"));
  BleuCounts counts;
  for (std::size_t i = 0; i < hypotheses.size(); ++i)
    counts.add(hypotheses[i], references[i]);
  return counts.score();
}

BleuScore corpus_bleu(const std::vector<std::string>& hypotheses,
                      const std::vector<std::vector<std::string>>& reference_streams) {
  check(!reference_streams.empty(), "BLEU", "no reference stream");
  std::vector<std::vector<std::string>> hyps;
  std::vector<std::vector<std::vector<std::string>>> refs(hypotheses.size());
  for (const auto& h : hypotheses)
    hyps.push_back(split_spaces(tokenize_13a(h)));
  for (std::size_t r = 0; r < reference_streams.size(); ++r) {
    check(reference_streams[r].size() == hypotheses.size(), "BLEU",
          concat("reference stream ", r, " has ", reference_streams[r].size(),
                 " sentences, expected ", hypotheses.size()));
    for (std::size_t i = 0; i < hypotheses.size(); ++i)
      refs[i].push_back(split_spaces(tokenize_13a(reference_streams[r][i])));
  }
  return corpus_bleu_tokens(hyps, refs);
}

void SequenceMetricsCounts::add(const std::vector<std::string>& o,
                                const std::vector<std::string>& r) {
  ++sentences_;
  if (o == r) ++exact_;
  for (std::size_t k = 0; k < std::min(o.size(), r.size()); ++k)
    equal_ += o[k] == r[k] ? 1 : 0;
  positions_ += static_cast<int64_t>(std::max(o.size(), r.size()));
  bleu_.add(o, {r});
}

Seq2SeqMetrics SequenceMetricsCounts::metrics() const {
  Seq2SeqMetrics m;
  m.sentences = sentences_;
  if (sentences_ == 0) return m;
  m.exact_match = static_cast<double>(exact_) / static_cast<double>(sentences_);
  m.token_accuracy =
      positions_ == 0 ? 1.0 : static_cast<double>(equal_) / static_cast<double>(positions_);
  m.bleu = bleu_.score().score;
  return m;
}

Seq2SeqMetrics sequence_metrics(const std::vector<std::vector<std::string>>& outputs,
                                const std::vector<std::vector<std::string>>& references) {
  check(outputs.size() == references.size(), "metrics",
        concat(outputs.size(), " outputs but ", references.size(), " references"));
  SequenceMetricsCounts counts;
  for (std::size_t i = 0; i < outputs.size(); ++i)
    counts.add(outputs[i], references[i]);
  return counts.metrics();
}

}  // namespace attnscope::pipeline
