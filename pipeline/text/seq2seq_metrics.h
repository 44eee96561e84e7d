#pragma once
// Metrics of the seq2seq models: exact match, token accuracy and corpus BLEU as sacreBLEU
// computes it (13a tokenisation, 4-gram, brevity penalty from the closest reference length,
// `exp` smoothing, several references per sentence).

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace attnscope::pipeline {

/// sacreBLEU's default "13a" tokeniser (mteval-v13a): unescapes &quot; &amp; &lt; &gt;,
/// splits off punctuation and symbols, splits . and , unless next to digits, and - after a
/// digit; single spaces.
std::string tokenize_13a(const std::string& line);

struct BleuScore {
  double score = 0.0;                  ///< 0..100
  std::array<double, 4> precisions{};  ///< n-gram precisions in percent (smoothed)
  std::array<int64_t, 4> matches{};    ///< clipped n-gram matches
  std::array<int64_t, 4> totals{};     ///< hypothesis n-grams
  double brevity_penalty = 0.0;
  int64_t hypothesis_length = 0;
  int64_t reference_length = 0;
};

/// Corpus BLEU of tokenised sentences. references[i] holds every reference of sentence i
/// (at least one). Throws Error when the counts differ.
BleuScore corpus_bleu_tokens(const std::vector<std::vector<std::string>>& hypotheses,
                             const std::vector<std::vector<std::vector<std::string>>>& references);

/// Corpus BLEU's sums, added one sentence at a time (corpus_bleu_tokens adds every sentence):
/// an evaluation need not hold a corpus's tokens at once.
class BleuCounts {
 public:
  /// Adds sentence `hypothesis` with its references (at least one).
  void add(const std::vector<std::string>& hypothesis,
           const std::vector<std::vector<std::string>>& references);
  /// The corpus BLEU of the sentences added so far.
  BleuScore score() const;

 private:
  BleuScore sums_;
  int64_t sentences_ = 0;
};

/// Corpus BLEU of raw sentences, tokenised with tokenize_13a then split on spaces.
/// reference_streams follows sacreBLEU's layout: reference_streams[r][i] is reference r of
/// sentence i (every stream as long as hypotheses).
BleuScore corpus_bleu(const std::vector<std::string>& hypotheses,
                      const std::vector<std::vector<std::string>>& reference_streams);

/// Exact match, token accuracy and BLEU over a corpus.
struct Seq2SeqMetrics {
  int64_t sentences = 0;
  double exact_match = 0.0;     ///< fraction of outputs equal to their reference
  double token_accuracy = 0.0;  ///< Σ equal tokens at equal positions / Σ max(|output|, |ref|)
  double bleu = 0.0;            ///< corpus BLEU, 0..100
};

/// Seq2SeqMetrics added one sentence at a time (sequence_metrics adds every one).
class SequenceMetricsCounts {
 public:
  void add(const std::vector<std::string>& output, const std::vector<std::string>& reference);
  Seq2SeqMetrics metrics() const;

 private:
  int64_t sentences_ = 0, exact_ = 0, equal_ = 0, positions_ = 0;
  BleuCounts bleu_;
};

/// Metrics of token sequences against one reference each. BLEU uses the tokens as given
/// (characters for the char tokeniser), so it measures what the model outputs.
Seq2SeqMetrics sequence_metrics(const std::vector<std::vector<std::string>>& outputs,
                                const std::vector<std::vector<std::string>>& references);

}  // namespace attnscope::pipeline
