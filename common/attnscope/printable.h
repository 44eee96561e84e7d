#pragma once
// Text from files (CSV ids, labels, paths) made safe to put in a message.

#include <string>

namespace attnscope {

namespace printable_detail {

/// The code point of the two-, three- or four-byte UTF-8 sequence at s[i] (its length in
/// `length`), or 0 where none starts there (ASCII, bytes that are not UTF-8, an overlong form).
inline char32_t utf8_at(const std::string& s, std::size_t i, std::size_t& length) {
  const auto byte = [&](std::size_t k) {
    return k < s.size() ? static_cast<unsigned char>(s[k]) : 0u;
  };
  const auto continuation = [&](std::size_t k) { return (byte(k) & 0xC0u) == 0x80u; };
  const unsigned lead = byte(i);
  if (lead >= 0xC2 && lead <= 0xDF && continuation(i + 1)) {
    length = 2;
    return static_cast<char32_t>(((lead & 0x1Fu) << 6) | (byte(i + 1) & 0x3Fu));
  }
  if (lead >= 0xE0 && lead <= 0xEF && continuation(i + 1) && continuation(i + 2)) {
    const auto c = static_cast<char32_t>(((lead & 0x0Fu) << 12) | ((byte(i + 1) & 0x3Fu) << 6) |
                                         (byte(i + 2) & 0x3Fu));
    if (c < 0x800 || (c >= 0xD800 && c <= 0xDFFF)) return 0;  // overlong, or a surrogate
    length = 3;
    return c;
  }
  if (lead >= 0xF0 && lead <= 0xF4 && continuation(i + 1) && continuation(i + 2) &&
      continuation(i + 3)) {
    const auto c = static_cast<char32_t>(((lead & 0x07u) << 18) | ((byte(i + 1) & 0x3Fu) << 12) |
                                         ((byte(i + 2) & 0x3Fu) << 6) | (byte(i + 3) & 0x3Fu));
    if (c < 0x10000 || c > 0x10FFFF) return 0;  // overlong, or beyond Unicode
    length = 4;
    return c;
  }
  return 0;
}

/// C1 controls (U+0085 is a line break to some terminals), the line and paragraph separators
/// and the bidirectional embeddings, overrides and isolates, which reorder what a terminal
/// shows of the line ("Trojan Source"): controls, as C0 ones are.
inline bool is_control(char32_t c) {
  return (c >= 0x80 && c <= 0x9F) || (c >= 0x2028 && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069);
}

/// Characters that change how the character before them looks, and show as nothing alone:
/// variation selectors (U+FE0F makes "❤" an emoji), the combining grapheme joiner and the tag
/// characters of flag sequences. Invisible (escaped when printed), but part of the text before
/// them, so never trimmed from a field's end.
inline bool is_modifier(char32_t c) {
  return c == 0x34F || (c >= 0xFE00 && c <= 0xFE0F) || (c >= 0xE0020 && c <= 0xE007F) ||
         (c >= 0xE0100 && c <= 0xE01EF);
}

/// Characters that show as a space or as nothing: no-break and other Unicode spaces, the soft
/// hyphen, zero-width characters, direction marks, word joiners, the byte-order mark, the
/// Hangul and Mongolian fillers, the interlinear annotation and other format controls, the
/// language tag, and the modifiers above. Kept in ids (a Persian name holds U+200C), but
/// escaped when printed, so that 'nevus\u00a0' is not taken for 'nevus'.
inline bool is_invisible(char32_t c) {
  return c == 0xA0 || c == 0xAD || c == 0x61C || c == 0x115F || c == 0x1160 || c == 0x17B4 ||
         c == 0x17B5 || c == 0x180E || (c >= 0x2000 && c <= 0x200F) || c == 0x202F ||
         (c >= 0x205F && c <= 0x2064) || c == 0x3000 || c == 0x3164 || c == 0xFEFF || c == 0xFFA0 ||
         (c >= 0xFFF9 && c <= 0xFFFB) || (c >= 0x1BCA0 && c <= 0x1BCA3) ||
         (c >= 0x1D173 && c <= 0x1D17A) || c == 0xE0001 || is_modifier(c);
}

}  // namespace printable_detail

/// A C0 control character, DEL, or, written in UTF-8, a C1 control (U+0080..U+009F), a line or
/// paragraph separator or a bidirectional override (printable_detail::is_control): refused in
/// ids and class names, which reach file names, checkpoints, CSV headers and terminal lines.
/// Other bytes above 0x7F are not its concern (ids that are not UTF-8 are refused apart, by
/// datasets::check_image_id; a C1 control spelled by Latin-1 bytes, such as "Â" followed by a
/// C1 byte, is one here).
inline bool has_control_character(const std::string& s) {
  for (std::size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return true;
    std::size_t length = 0;
    if (c >= 0xC2 && printable_detail::is_control(printable_detail::utf8_at(s, i, length)))
      return true;
  }
  return false;
}

/// Empty or only spaces, ASCII or Unicode (no-break, zero-width, ...: is_invisible): no name
/// for a class.
inline bool is_blank(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    if (s[i] == ' ') {
      ++i;
      continue;
    }
    std::size_t length = 0;
    if (!printable_detail::is_invisible(printable_detail::utf8_at(s, i, length))) return false;
    i += length;
  }
  return true;
}

namespace printable_detail {

// What printable() and one_output_line() share: C0 controls other than tab (and newline unless
// `newline`), DEL and the UTF-8 controls escaped, and with `invisible` the invisible characters;
// a byte that starts no UTF-8 character (Latin-1's "\xe9") is escaped too, so that a message
// is valid UTF-8 whatever the file held.
inline std::string escape(const std::string& text, bool invisible, bool newline) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const auto u = static_cast<unsigned char>(c);
    std::size_t length = 0;
    const char32_t code = u >= 0xC2 ? utf8_at(text, i, length) : 0;
    if (code != 0 && (is_control(code) || (invisible && is_invisible(code)))) {
      // \u00a0, or beyond the 16-bit plane \U000e0001 (as Python and C++ write them).
      out += code > 0xFFFF ? "\\U" : "\\u";
      for (int shift = code > 0xFFFF ? 28 : 12; shift >= 0; shift -= 4)
        out += kHex[(code >> shift) & 15];
      i += length - 1;
    } else if (code != 0) {
      out.append(text, i, length);
      i += length - 1;
    } else if ((u >= 0x20 && u < 0x7f) || c == '\t' || (c == '\n' && !newline)) {
      out += c;
    } else if (c == '\0') {
      out += "\\0";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

}  // namespace printable_detail

/// `text` safe to print: control characters other than newline and tab (a NUL that would cut
/// Error::what() short, a carriage return or a terminal escape from a crafted CSV id) become
/// `\0`, `\r`, `\x1b`, ..., and the UTF-8 controls and invisible characters above
/// (printable_detail) `\u0085`, `\u202e`, `\u00a0`, `\U000e0001`, ..., and a byte that starts
/// no UTF-8 character `\xe9`; everything else, UTF-8 included, is kept.
inline std::string printable(const std::string& text) {
  return printable_detail::escape(text, /*invisible=*/true, /*newline=*/false);
}

/// Text a command prints as its output, one line per item (a translation): the controls
/// printable() escapes and bytes that are not UTF-8, newline too (`\n`), and nothing else;
/// invisible characters (a no-break space in French text) and backslashes are kept as they are.
inline std::string one_output_line(const std::string& text) {
  return printable_detail::escape(text, /*invisible=*/false, /*newline=*/true);
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
