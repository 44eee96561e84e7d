#pragma once
// Tokenisers and the vocabulary of the text models.
//
// Two tokenisers: `char` (one token per Unicode code point, spaces included, so that the
// text round-trips exactly) and `word` (runs of non-whitespace; detokenised with one space).
// The vocabulary always starts with <pad> <bos> <eos> <unk> (ids 0..3) and is saved in the
// checkpoint as a JSON array of tokens.

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "attnscope/special_tokens.h"

namespace attnscope::datasets::text {

enum class TokenizerKind { kChar, kWord };

/// "char" / "word".
std::string to_string(TokenizerKind kind);
/// Parses "char" / "word"; throws Error otherwise.
TokenizerKind tokenizer_from_string(const std::string& name);

/// Byte offset of the first invalid UTF-8 sequence (overlong forms, surrogates and code points
/// above U+10FFFF are invalid), or std::string::npos when text is valid UTF-8.
std::size_t find_invalid_utf8(const std::string& text);

/// `text` with every invalid UTF-8 sequence (also overlong forms, surrogates, past U+10FFFF)
/// replaced by U+FFFD: for strings stored or shown as UTF-8 (HTML, JSON, HDF5 UTF-8 strings).
std::string valid_utf8(const std::string& text);

/// `text` with every byte that starts no valid UTF-8 sequence written as `\xNN` (Latin-1
/// "caf\xe9" becomes the ten characters `caf\xe9`): for text stored as a UTF-8 string (a
/// reason, a command line), where U+FFFD would lose which byte it was.
std::string escaped_utf8(const std::string& text);

/// A file's name or path as a UTF-8 string that names it alone: escaped_utf8, and a backslash
/// written `\\` (so that a file literally named `caf\xe9.png` and a Latin-1 "caf\xe9.png" get
/// two ids). Valid UTF-8 without a backslash is returned as it is.
std::string escaped_name(const std::string& name);

/// The bytes escaped_name was given: `\\` and `\xNN` read back; any other text as it is.
std::string unescaped_name(const std::string& escaped);

/// Splits valid UTF-8 into code points; throws Error(subject, "invalid UTF-8 at byte N").
std::vector<std::string> utf8_code_points(const std::string& text, const std::string& subject);

/// Tokenises text; subject names it in errors (e.g. "pairs.tsv:12").
std::vector<std::string> tokenize(const std::string& text, TokenizerKind kind,
                                  const std::string& subject = "text");

/// Inverse of tokenize (exact for char; single spaces for word).
std::string detokenize(const std::vector<std::string>& tokens, TokenizerKind kind);

class Vocabulary {
 public:
  static constexpr int64_t kPad = special_tokens::kPad;
  static constexpr int64_t kBos = special_tokens::kBos;
  static constexpr int64_t kEos = special_tokens::kEos;
  static constexpr int64_t kUnk = special_tokens::kUnk;
  static const std::vector<std::string>& specials();  ///< {"<pad>", "<bos>", "<eos>", "<unk>"}

  /// Only the four special tokens.
  Vocabulary();

  /// Every token seen at least min_count times, most frequent first (ties alphabetical), so the
  /// result does not depend on the order of the sequences. max_size > 0 caps the size
  /// (specials included).
  static Vocabulary build(const std::vector<std::vector<std::string>>& sequences,
                          int64_t min_count = 1, int64_t max_size = 0);
  /// The same from each token's count, which a caller fills one sequence at a time: a
  /// corpus held as one std::string per character took 32 bytes and more per character.
  static Vocabulary build_from_counts(const std::map<std::string, int64_t>& counts,
                                      int64_t min_count = 1, int64_t max_size = 0);

  /// Adds a token if absent; returns its id.
  int64_t add(const std::string& token);
  /// Id of a token, kUnk when absent; the words "<pad>", "<bos>", "<eos>" (and "<unk>") of a
  /// text are kUnk too, never the markers.
  int64_t id(const std::string& token) const;
  /// Token of an id; throws Error for an id out of range.
  const std::string& token(int64_t id) const;
  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }

  /// Ids of tokens, optionally wrapped in <bos> ... <eos>.
  std::vector<int64_t> encode(const std::vector<std::string>& tokens, bool bos = false,
                              bool eos = false) const;
  /// Tokens of ids, stopping at the first <eos> and dropping <pad>/<bos>.
  std::vector<std::string> decode(const std::vector<int64_t>& ids) const;

  /// The tokens in id order, as a JSON array.
  nlohmann::json to_json() const;
  /// Inverse of to_json; throws Error unless it is an array of strings starting with the specials.
  static Vocabulary from_json(const nlohmann::json& json);

 private:
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t> ids_;
};

}  // namespace attnscope::datasets::text
