#pragma once
// JSON read from files (checkpoint attributes, configs): a depth limit, and values quoted in
// one-line messages. For targets that use nlohmann_json.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "attnscope/error.h"
#include "attnscope/printable.h"

namespace attnscope {

/// Deepest nesting of arrays and objects accepted in JSON from a file.
constexpr int kMaxJsonDepth = 64;

/// Nesting depth of arrays and objects in `root` (a scalar 0, [1] 1, [[1], {}] 2), without
/// recursion: nlohmann parses and destroys any depth, but dump(), comparison and get<>()
/// recurse, and 100,000 nested brackets (200 KB) overflowed the stack. Stops counting once past
/// `limit`.
inline int json_depth(const nlohmann::json& root, int limit = kMaxJsonDepth) {
  int deepest = 0;
  std::vector<std::pair<const nlohmann::json*, int>> todo{{&root, 0}};
  while (!todo.empty()) {
    const auto [j, above] = todo.back();
    todo.pop_back();
    if (!j->is_structured()) continue;
    const int d = above + 1;
    if (d > deepest) deepest = d;
    if (d > limit) return d;
    for (const auto& child : *j)
      todo.emplace_back(&child, d);
  }
  return deepest;
}

/// JSON text from a file, parsed: text that is not JSON (also anything after the first value),
/// or JSON nested deeper than kMaxJsonDepth, is an Error naming `subject` (`what` says what the
/// text is, e.g. "attribute"). With `refuse_duplicate_keys` (configs a person edits), a key
/// given twice in one object is an Error too: nlohmann keeps the last, so an edit that left a
/// stale key behind would pass unseen.
inline nlohmann::json parse_json_text(const std::string& text, const std::string& subject,
                                      const std::string& what = "text",
                                      bool refuse_duplicate_keys = false) {
  using Event = nlohmann::json::parse_event_t;
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  bool found_duplicate = false;
  const nlohmann::json::parser_callback_t note_keys = [&](int, Event event,
                                                          nlohmann::json& parsed) {
    if (event == Event::object_start) {
      open_objects.emplace_back();
    } else if (event == Event::object_end) {
      if (!open_objects.empty()) open_objects.pop_back();
    } else if (event == Event::key && !open_objects.empty() && !found_duplicate &&
               !open_objects.back().insert(parsed.get<std::string>()).second) {
      found_duplicate = true;
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  // nlohmann's parser ends the text at a NUL: `{A}\0{B}` was A, and B ignored without a word.
  // (JSON writes a NUL in a string as \u0000.)
  if (const auto nul = text.find('\0'); nul != std::string::npos)
    throw Error(subject, what + " is not valid JSON: a NUL byte at offset " + std::to_string(nul));
  nlohmann::json value;
  try {
    value = refuse_duplicate_keys ? nlohmann::json::parse(text, note_keys)
                                  : nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // nlohmann's text starts with its exception's name ("[json.exception.parse_error.101] ",
    // library words) and ends with the token read so far: an unclosed 1 MB string, whole.
    std::string message = e.what();
    if (message.rfind("[json.exception.", 0) == 0 && message.find("] ") != std::string::npos)
      message.erase(0, message.find("] ") + 2);
    throw Error(subject, what + " is not valid JSON: " + excerpt(message, 200));
  }
  if (found_duplicate)
    throw Error(subject, what + " gives the key \"" + excerpt(duplicate, 60) +
                             "\" twice in one object (JSON keeps only the last)");
  if (json_depth(value) > kMaxJsonDepth)
    throw Error(subject,
                what + " is JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  return value;
}

/// A JSON value from a file quoted in a one-line message: compact, cut to `max_bytes` as
/// excerpt() cuts text (invalid UTF-8 replaced); one nested too deep to print is named so.
inline std::string json_excerpt(const nlohmann::json& value, std::size_t max_bytes = 120) {
  if (json_depth(value) > kMaxJsonDepth)
    return "(JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels)";
  return excerpt(value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), max_bytes);
}

/// How a message names the JSON type of T ("a string", "an integer", ...).
template <class T>
const char* json_type_name() {
  if constexpr (std::is_same_v<T, std::string>)
    return "a string";
  else if constexpr (std::is_same_v<T, bool>)
    return "true or false";
  else if constexpr (std::is_integral_v<T>)
    return "an integer";
  else if constexpr (std::is_floating_point_v<T>)
    return "a number";
  else if constexpr (std::is_same_v<T, std::vector<std::string>>)
    return "a list of strings";
  else
    return "of the expected type";
}

/// `object[key]` read as T, for JSON from a file: `fallback` when `object` is not an object or
/// has no `key`; a value of another type is an Error naming `subject` and `field` (how the
/// message names it, e.g. "provenance.cwd"), where nlohmann's value() and get<>() throw a
/// type_error that names neither. An integer T takes only integers within its range (nlohmann
/// converts 1.5 to 1 and 2^64 - 1 to -1 without a word); a floating T any number.
template <class T>
T json_field(const nlohmann::json& object, const std::string& key, T fallback,
             const std::string& subject, const std::string& field) {
  if (!object.is_object()) return fallback;
  const auto it = object.find(key);
  if (it == object.end()) return fallback;
  const auto wrong = [&](const std::string& what) {
    return Error(subject, field + " is " + json_excerpt(*it, 80) + ", " + what);
  };
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    using Limits = std::numeric_limits<T>;
    const auto out_of_range = [&] {
      return wrong("an integer out of range (" + std::to_string(Limits::min()) + " to " +
                   std::to_string(Limits::max()) + ")");
    };
    if (!it->is_number_integer()) throw wrong(std::string("not ") + json_type_name<T>());
    if (it->is_number_unsigned()) {  // up to 2^64 - 1
      const auto v = it->template get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(Limits::max())) throw out_of_range();
      return static_cast<T>(v);
    }
    const auto v = it->template get<std::int64_t>();
    bool fits =
        v >= 0 && static_cast<std::uint64_t>(v) <= static_cast<std::uint64_t>(Limits::max());
    if constexpr (std::is_signed_v<T>)
      fits = v >= static_cast<std::int64_t>(Limits::min()) &&
             v <= static_cast<std::int64_t>(Limits::max());
    if (!fits) throw out_of_range();
    return static_cast<T>(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!it->is_number()) throw wrong(std::string("not ") + json_type_name<T>());
    return it->template get<T>();
  } else {
    try {
      return it->template get<T>();
    } catch (const nlohmann::json::exception&) {
      throw wrong(std::string("not ") + json_type_name<T>());
    }
  }
}

/// Names from a file (class names, ...) listed in a message as a JSON array, ["a","b"]: each
/// cut to `each_bytes` as excerpt() cuts, the list after `max_names` counted instead.
inline std::string names_excerpt(const std::vector<std::string>& names, std::size_t each_bytes = 40,
                                 std::size_t max_names = 10) {
  std::string out = "[";
  for (std::size_t i = 0; i < names.size() && i < max_names; ++i) {
    out += i ? ",\"" : "\"";
    for (const char c : excerpt(names[i], each_bytes)) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  if (names.size() > max_names) out += ",... (" + std::to_string(names.size()) + " names)";
  return out + "]";
}

/// Where JSON text `b` differs from `a`, for a message: each changed leaf as
/// "decode.reduce_to (stored 64, now null)" with `a_is`/`b_is` naming the sides ("absent" for a
/// key one side lacks), the first `max` joined by "; " and the rest counted; "" where either
/// text is no JSON object or array (nested deeper than kMaxJsonDepth included), or they are
/// equal. Two configs cut at the same place said nothing of what differed (a 630-byte
/// preprocessing config whose decode.reduce_to had changed).
inline std::string json_changes(const std::string& a_text, const std::string& b_text,
                                const std::string& a_is, const std::string& b_is,
                                std::size_t max = 3) {
  nlohmann::json a, b;
  try {
    a = parse_json_text(a_text, "", "text");
    b = parse_json_text(b_text, "", "text");
  } catch (const Error&) {
    return "";
  }
  if (!a.is_structured() || !b.is_structured()) return "";
  const auto patch = nlohmann::json::diff(a, b);
  std::string out;
  for (std::size_t i = 0; i < patch.size(); ++i) {
    if (i == max) {
      out += "; and " + std::to_string(patch.size() - max) + " more";
      break;
    }
    const auto& op = patch[i];
    const auto path = op.value("path", std::string());
    // A side's value at the path, or "absent"; an element added at an array's end has the path
    // ".../-", which names nothing in either: its new value is the operation's own.
    const auto side = [&](const nlohmann::json& j, bool added) {
      if (added && op.value("op", std::string()) == "add" && op.contains("value"))
        return json_excerpt(op.at("value"), 60);
      try {
        const nlohmann::json::json_pointer at(path);
        return j.contains(at) ? json_excerpt(j.at(at), 60) : std::string("absent");
      } catch (const nlohmann::json::exception&) {
        return std::string("absent");
      }
    };
    // The JSON pointer said with dots, its escapes undone (~1 is '/', ~0 is '~').
    std::string dotted;
    for (std::size_t k = 1; k < path.size(); ++k) {
      if (path[k] == '/') {
        dotted += '.';
      } else if (path[k] == '~' && k + 1 < path.size() &&
                 (path[k + 1] == '0' || path[k + 1] == '1')) {
        dotted += path[++k] == '1' ? '/' : '~';
      } else {
        dotted += path[k];
      }
    }
    if (path.empty()) dotted = "(the whole value)";
    if (path.size() >= 2 && path.compare(path.size() - 2, 2, "/-") == 0)
      dotted = (dotted.size() > 2 ? dotted.substr(0, dotted.size() - 2) : "") +
               "[new]";  // appended to an array
    out += (i ? "; " : "") + excerpt(dotted, 80) + " (" + a_is + " " + side(a, false) + ", " +
           b_is + " " + side(b, true) + ")";
  }
  return out;
}

}  // namespace attnscope
