#pragma once
// Sentence pairs for the seq2seq models: a TSV reader, the built-in synthetic tasks, length
// batching and padded tensor batches.

#include <cstdint>
#include <istream>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "datasets/text/tokenizer.h"

namespace attnscope::datasets::text {

struct TextPair {
  std::string source;
  std::string target;
  std::size_t line = 0;  ///< 1-based line in the TSV file; 0 for generated pairs
};

/// A line of a TSV file that was not used, and why ("empty line", "no tab", "invalid UTF-8
/// at byte 7 of the target").
struct SkippedLine {
  std::size_t line = 0;
  std::string reason;
};

struct TsvPairs {
  std::string path;
  std::vector<TextPair> pairs;
  std::vector<SkippedLine> skipped;
};

/// A TSV line longer than this is skipped (listed like any bad line): one stray line must not
/// size a model or exhaust memory.
constexpr std::size_t kMaxTsvLineBytes = 64 * 1024;
/// read_tsv_pairs refuses larger files (and anything that is not a regular file).
constexpr std::uintmax_t kMaxTsvFileBytes = std::uintmax_t{4} << 30;

/// Reads one line of `in` (without its '\n', or the "\r\n" of a CRLF line) into `line`, keeping
/// at most `max_bytes` + 1 of its bytes: the rest of a longer line is read and dropped, so one
/// endless line never sizes memory. Returns the line's full length in bytes (its '\r' not
/// counted); std::nullopt at the end of the input. Stops
/// after `max_scan` bytes without a newline and returns `max_scan` (the caller's limit on the
/// whole input: /dev/zero has no newline). With `lone_cr`, a '\r' not followed by '\n' ends a
/// line too (a file saved with classic Mac line ends).
std::optional<std::uintmax_t> read_bounded_line(
    std::istream& in, std::string& line, std::size_t max_bytes,
    std::uintmax_t max_scan = std::numeric_limits<std::uintmax_t>::max(), bool lone_cr = false);

/// Parses "source<TAB>target[<TAB>ignored...]" lines (the Tatoeba/Anki fra.txt layout): UTF-8,
/// a leading byte-order mark and CRLF endings accepted, extra columns ignored. Bad lines (empty,
/// no tab, an empty side, invalid UTF-8) are skipped and listed with their line numbers; the
/// caller decides whether that is an error. Never throws for bad content.
TsvPairs parse_tsv_pairs(const std::string& text, const std::string& path);

/// Reads a file with parse_tsv_pairs; throws Error naming the path when it cannot be read, is
/// not a regular file, or is above kMaxTsvFileBytes.
TsvPairs read_tsv_pairs(const std::string& path);

/// "path:3: no tab; path:9: empty line; ... (N lines skipped)", listing at most `limit` lines.
std::string describe_skipped(const TsvPairs& pairs, std::size_t limit = 5);

/// The built-in synthetic tasks.
///   copy:    "qhfk"  -> "qhfk"   (letters a-z, length uniform in [min_length, max_length])
///   reverse: "qhfk"  -> "kfhq"
///   dates:   "25th of June, 2009" / "06/25/09" / "Thursday, June 25 2009" / "25.06.2009" / ...
///            (14 formats, dates 1950-2049) -> "2009-06-25"; the length range does not apply.
struct TaskOptions {
  std::string task = "copy";  ///< copy | reverse | dates
  int64_t count = 1000;
  int64_t min_length = 5;
  int64_t max_length = 30;
  uint64_t seed = 0;
};

/// The task names generate_task knows.
const std::vector<std::string>& synthetic_tasks();

/// Generates options.count pairs, deterministic in options.seed. Throws Error for an unknown
/// task or an empty/invalid length range.
std::vector<TextPair> generate_task(const TaskOptions& options);

/// The human-written date formats of the `dates` task, as strftime-like descriptions.
const std::vector<std::string>& date_formats();

/// Writes a date (year 1950-2049, month 1-12, day 1-31) in format number `format`
/// (0 <= format < date_formats().size()).
std::string format_date(int year, int month, int day, std::size_t format);

/// Day of the week, 0 = Monday ... 6 = Sunday (proleptic Gregorian calendar).
int weekday(int year, int month, int day);

/// Groups indices into batches of at most batch_size whose members have similar lengths:
/// shuffle (seeded), sort by length (stable), cut into batches, shuffle the batch order.
/// Padding then costs little. seed is ignored when shuffle is false (sorted order kept).
std::vector<std::vector<std::size_t>> length_batches(const std::vector<std::size_t>& lengths,
                                                     std::size_t batch_size, uint64_t seed,
                                                     bool shuffle = true);

/// A padded batch. Targets are shifted for teacher forcing: target_in = <bos> y, target_out =
/// y <eos>.
/// Shape: source (B, S) int64 padded with <pad>; source_lengths (B); target_in and
/// target_out (B, T) int64 padded with <pad>.
struct TextBatch {
  at::Tensor source;
  at::Tensor source_lengths;
  at::Tensor target_in;
  at::Tensor target_out;
};

/// Builds a padded batch of the given items (ids without <bos>/<eos>).
TextBatch make_batch(const std::vector<std::vector<int64_t>>& sources,
                     const std::vector<std::vector<int64_t>>& targets,
                     const std::vector<std::size_t>& items);

/// Pairs as token ids (no <bos>/<eos>), with the pairs' origin kept for messages.
struct EncodedPairs {
  std::vector<std::vector<int64_t>> sources;
  std::vector<std::vector<int64_t>> targets;
  std::vector<std::size_t> index;  ///< position of each kept pair in the input
  /// Pairs whose source or target had more than max_length tokens, by input position:
  /// dropped (LengthPolicy::kSkip) or cut to max_length (LengthPolicy::kTruncate).
  std::vector<std::size_t> too_long;
};

/// What to do with a pair longer than the model's maximum.
enum class LengthPolicy { kSkip, kTruncate };

/// Tokenises and looks up every pair. Throws Error naming the pair (line, or position for
/// generated pairs) when a side is empty after tokenisation or not valid UTF-8.
EncodedPairs encode_pairs(const std::vector<TextPair>& pairs, const Vocabulary& source_vocab,
                          const Vocabulary& target_vocab, TokenizerKind tokenizer,
                          int64_t max_length, LengthPolicy policy);

/// Pads id sequences into (B, S) int64 with <pad>; lengths into (B).
std::pair<at::Tensor, at::Tensor> pad_sequences(const std::vector<std::vector<int64_t>>& sequences);

}  // namespace attnscope::datasets::text
