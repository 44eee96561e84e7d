#include "datasets/text/tokenizer.h"

#include <algorithm>
#include <map>

#include "attnscope/error.h"
#include "attnscope/printable.h"

namespace attnscope::datasets::text {

std::string to_string(TokenizerKind kind) {
  return kind == TokenizerKind::kChar ? "char" : "word";
}

TokenizerKind tokenizer_from_string(const std::string& name) {
  if (name == "char") return TokenizerKind::kChar;
  if (name == "word") return TokenizerKind::kWord;
  throw Error("tokenizer", concat("expected 'char' or 'word', got '", excerpt(name, 100), "'"));
}

namespace {

// Length of the UTF-8 sequence starting at text[i], or 0 when it is invalid.
std::size_t utf8_sequence_length(const std::string& text, std::size_t i) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) return 1;
  std::size_t n = 0;
  uint32_t cp = 0;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2;
    cp = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3;
    cp = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4;
    cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + n > text.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  static constexpr uint32_t kMinimum[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMinimum[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

}  // namespace

std::size_t find_invalid_utf8(const std::string& text) {
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = utf8_sequence_length(text, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string::npos;
}

std::vector<std::string> utf8_code_points(const std::string& text, const std::string& subject) {
  std::vector<std::string> out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = utf8_sequence_length(text, i);
    if (n == 0) throw Error(subject, concat("invalid UTF-8 at byte ", i));
    out.push_back(text.substr(i, n));
    i += n;
  }
  return out;
}

std::vector<std::string> tokenize(const std::string& text, TokenizerKind kind,
                                  const std::string& subject) {
  if (kind == TokenizerKind::kChar) return utf8_code_points(text, subject);
  const std::size_t bad = find_invalid_utf8(text);
  if (bad != std::string::npos) throw Error(subject, concat("invalid UTF-8 at byte ", bad));
  std::vector<std::string> words;
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_space(text[i]))
      ++i;
    const std::size_t begin = i;
    while (i < text.size() && !is_space(text[i]))
      ++i;
    if (i > begin) words.push_back(text.substr(begin, i - begin));
  }
  return words;
}

std::string detokenize(const std::vector<std::string>& tokens, TokenizerKind kind) {
  std::string out;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (kind == TokenizerKind::kWord && i > 0) out += ' ';
    out += tokens[i];
  }
  return out;
}

const std::vector<std::string>& Vocabulary::specials() {
  static const std::vector<std::string> kSpecials = {"<pad>", "<bos>", "<eos>", "<unk>"};
  return kSpecials;
}

Vocabulary::Vocabulary() {
  for (const auto& s : specials())
    add(s);
}

Vocabulary Vocabulary::build(const std::vector<std::vector<std::string>>& sequences,
                             int64_t min_count, int64_t max_size) {
  std::map<std::string, int64_t> counts;
  for (const auto& seq : sequences)
    for (const auto& t : seq)
      ++counts[t];
  return build_from_counts(counts, min_count, max_size);
}

Vocabulary Vocabulary::build_from_counts(const std::map<std::string, int64_t>& counts,
                                         int64_t min_count, int64_t max_size) {
  std::vector<std::pair<std::string, int64_t>> sorted(counts.begin(), counts.end());
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto& a, const auto& b) { return a.second > b.second; });
  Vocabulary vocab;
  for (const auto& [token, count] : sorted) {
    if (count < min_count) continue;
    if (max_size > 0 && vocab.size() >= max_size) break;
    vocab.add(token);
  }
  return vocab;
}

int64_t Vocabulary::add(const std::string& token) {
  const auto it = ids_.find(token);
  if (it != ids_.end()) return it->second;
  const auto id = static_cast<int64_t>(tokens_.size());
  tokens_.push_back(token);
  ids_.emplace(token, id);
  return id;
}

int64_t Vocabulary::id(const std::string& token) const {
  const auto it = ids_.find(token);
  // The words "<pad>", "<bos>" and "<eos>" in a text are words, not the markers: "<eos>" in
  // a sentence ended it for the model and "<pad>" was dropped from the loss.
  return it == ids_.end() || it->second < kUnk ? kUnk : it->second;
}

const std::string& Vocabulary::token(int64_t id) const {
  check(id >= 0 && id < size(), "vocabulary",
        concat("token id ", id, " out of range [0, ", size(), ")"));
  return tokens_[static_cast<std::size_t>(id)];
}

std::vector<int64_t> Vocabulary::encode(const std::vector<std::string>& tokens, bool bos,
                                        bool eos) const {
  std::vector<int64_t> ids;
  ids.reserve(tokens.size() + 2);
  if (bos) ids.push_back(kBos);
  for (const auto& t : tokens)
    ids.push_back(id(t));
  if (eos) ids.push_back(kEos);
  return ids;
}

std::vector<std::string> Vocabulary::decode(const std::vector<int64_t>& ids) const {
  std::vector<std::string> tokens;
  for (const int64_t i : ids) {
    if (i == kEos) break;
    if (i == kPad || i == kBos) continue;
    tokens.push_back(token(i));
  }
  return tokens;
}

nlohmann::json Vocabulary::to_json() const {
  return nlohmann::json(tokens_);
}

Vocabulary Vocabulary::from_json(const nlohmann::json& json) {
  check(json.is_array(), "vocabulary", "expected a JSON array of tokens");
  Vocabulary vocab;
  const auto& sp = specials();
  check(json.size() >= sp.size(), "vocabulary", "fewer tokens than the 4 special tokens");
  for (std::size_t i = 0; i < json.size(); ++i) {
    check(json[i].is_string(), "vocabulary", concat("entry ", i, " is not a string"));
    const auto token = json[i].get<std::string>();
    if (i < sp.size()) {
      check(token == sp[i], "vocabulary",
            concat("entry ", i, " should be '", sp[i], "', got '", token, "'"));
      continue;
    }
    check(vocab.ids_.count(token) == 0, "vocabulary", concat("duplicate token '", token, "'"));
    vocab.add(token);
  }
  return vocab;
}

std::string valid_utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    // The validation find_invalid_utf8 uses (overlong forms, surrogates, past U+10FFFF).
    const std::size_t len = utf8_sequence_length(s, i);
    if (len > 0) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

namespace {

std::string escaped(const std::string& s, bool backslash) {
  if (find_invalid_utf8(s) == std::string::npos &&
      (!backslash || s.find('\\') == std::string::npos))
    return s;
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 8);
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t len = utf8_sequence_length(s, i);
    if (len > 0) {
      if (backslash && s[i] == '\\') out += '\\';
      out.append(s, i, len);
      i += len;
    } else {
      const auto u = static_cast<unsigned char>(s[i++]);
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::string escaped_utf8(const std::string& s) {
  return escaped(s, /*backslash=*/false);
}

std::string escaped_name(const std::string& name) {
  return escaped(name, /*backslash=*/true);
}

std::string unescaped_name(const std::string& s) {
  if (s.find('\\') == std::string::npos) return s;
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == '\\') {
      out += '\\';
      ++i;
    } else if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] == 'x' && hex_digit(s[i + 2]) >= 0 &&
               hex_digit(s[i + 3]) >= 0) {
      out += static_cast<char>(hex_digit(s[i + 2]) * 16 + hex_digit(s[i + 3]));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

}  // namespace attnscope::datasets::text
