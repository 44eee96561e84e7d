#pragma once
// Text from files (CSV ids, labels, paths) made safe to put in a message.

#include <string>

namespace attnscope {

/// `text` safe to print: control characters other than newline and tab (a NUL that would cut
/// Error::what() short, a carriage return or a terminal escape from a crafted CSV id) become
/// `\0`, `\r`, `\x1b`, ...; everything else, UTF-8 included, is kept.
inline std::string printable(const std::string& text) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if ((u >= 0x20 && u != 0x7f) || c == '\n' || c == '\t') {
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

}  // namespace attnscope
