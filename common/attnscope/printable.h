#pragma once
// Text from files (CSV ids, labels, paths) made safe to put in a message.

#include <string>

namespace attnscope {

/// A C0 control character, DEL, or a C1 control character written in UTF-8 (U+0080..U+009F,
/// bytes C2 80..C2 9F: U+0085 is a line break to some terminals): refused in ids and class
/// names, which reach file names, checkpoints, CSV headers and terminal lines. Other bytes
/// above 0x7F are kept (a Latin-1 file name is a valid id, unless it holds the pair C2 80..9F,
/// "Â" and a C1 byte).
inline bool has_control_character(const std::string& s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return true;
    if (c == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
        static_cast<unsigned char>(s[i + 1]) <= 0x9F)
      return true;
  }
  return false;
}

/// Empty or only spaces: no name for a class.
inline bool is_blank(const std::string& s) {
  return s.find_first_not_of(' ') == std::string::npos;
}

/// `text` safe to print: control characters other than newline and tab (a NUL that would cut
/// Error::what() short, a carriage return or a terminal escape from a crafted CSV id) become
/// `\0`, `\r`, `\x1b`, ..., and a C1 control in UTF-8 (U+0085, which some terminals take as
/// a line break) `\u0085`; everything else, UTF-8 included, is kept.
inline std::string printable(const std::string& text) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const auto u = static_cast<unsigned char>(c);
    const auto next = i + 1 < text.size() ? static_cast<unsigned char>(text[i + 1]) : 0;
    if (u == 0xC2 && next >= 0x80 && next <= 0x9F) {
      out += "\\u00";
      out += kHex[next >> 4];
      out += kHex[next & 15];
      ++i;
    } else if ((u >= 0x20 && u != 0x7f) || c == '\n' || c == '\t') {
      out += c;
    } else if (c == '\0') {
      out += "\\0";
    } else if (c == '\r') {
      out += "\\r";
    } else {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

/// A field from a file quoted in a one-line message: printable(), with tab and newline
/// escaped too (`\t`, `\n`), cut to `max_bytes` at a UTF-8 character boundary with
/// "... (N bytes)" after it (a crafted 10 MB id must not become a 10 MB message).
inline std::string excerpt(const std::string& text, std::size_t max_bytes = 120) {
  std::size_t end = text.size();
  if (end > max_bytes) {
    end = max_bytes;
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
      --end;
  }
  std::string out;
  for (const char c : printable(text.substr(0, end))) {
    if (c == '\n')
      out += "\\n";
    else if (c == '\t')
      out += "\\t";
    else
      out += c;
  }
  if (end < text.size()) out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

}  // namespace attnscope
