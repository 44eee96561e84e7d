#include "datasets/csv.h"

#include <algorithm>
#include <cctype>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "attnscope/error.h"
#include "attnscope/printable.h"

namespace attnscope::datasets {

namespace {

// The length of the ASCII white space or the invisible character (no-break space, zero-width
// space, byte-order mark, ...: printable_detail::is_invisible) at s[i], 0 when none is there.
// A modifier (a variation selector, a flag's tag) belongs to the character before it: kept.
std::size_t space_at(const std::string& s, std::size_t i) {
  if (std::strchr(" \t\r\n\f\v", s[i]) != nullptr && s[i] != '\0') return 1;
  std::size_t length = 0;
  const auto c = printable_detail::utf8_at(s, i, length);
  return printable_detail::is_invisible(c) && !printable_detail::is_modifier(c) ? length : 0;
}

// The same, ending just before s[end].
std::size_t space_before(const std::string& s, std::size_t end) {
  for (std::size_t length = 1; length <= std::min<std::size_t>(4, end); ++length)
    if (space_at(s, end - length) == length) return length;
  return 0;
}

}  // namespace

std::string trim(const std::string& s) {
  std::size_t begin = 0, end = s.size();
  while (begin < end) {
    const auto n = space_at(s, begin);
    if (n == 0) break;
    begin += n;
  }
  while (end > begin) {
    const auto n = space_before(s, end);
    if (n == 0) break;
    end -= n;
  }
  return s.substr(begin, end - begin);
}

std::optional<std::size_t> CsvTable::column(const std::string& name) const {
  std::optional<std::size_t> found;
  for (std::size_t i = 0; i < header.size(); ++i) {
    if (trim(header[i]) != name) continue;
    // `image_id,label,label`: the first was read without a word, whichever held the labels.
    if (found)
      throw Error(path,
                  concat("the header names the column '", excerpt(name, 60), "' twice (columns ",
                         *found + 1, " and ", i + 1, "): which one holds the values is unclear"));
    found = i;
  }
  return found;
}

std::size_t CsvTable::require_column(const std::string& name) const {
  if (auto i = column(name)) return *i;
  std::string have;
  for (const auto& h : header)
    have += (have.empty() ? "" : ",") + h;
  throw Error(path, concat("missing column '", name, "' (header is: ", excerpt(have, 400), ")"));
}

CsvTable parse_csv(const std::string& text, const std::string& path, bool has_header) {
  CsvTable table;
  table.path = path;
  std::size_t i = 0;
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) i = 3;  // UTF-8 byte-order mark
  std::size_t line = 1;
  std::vector<CsvRow> rows;
  while (i < text.size()) {
    CsvRow row;
    row.line = line;
    std::string field;
    bool blank = true;
    for (;;) {
      bool quoted = false;
      if (i < text.size() && text[i] == '"') {
        blank = false;
        quoted = true;
        const std::size_t quote_line = line;
        ++i;
        for (;;) {
          if (i >= text.size())
            throw Error(concat(path, ":", quote_line), "unterminated quoted field");
          if (text[i] == '"') {
            if (i + 1 < text.size() && text[i + 1] == '"') {
              field += '"';
              i += 2;
              continue;
            }
            ++i;
            break;
          }
          // A line ends at LF, CRLF or a lone CR (a classic Mac file), as Python's csv reads it.
          if (text[i] == '\n' || (text[i] == '\r' && (i + 1 == text.size() || text[i + 1] != '\n')))
            ++line;
          field += text[i++];
        }
      }
      // A CR outside quotes ends the line, with the LF after it or alone (a file saved with
      // classic Mac line ends): it used to be dropped, which read such a file as one row of all
      // its lines run together, and `a\rb` as `ab`.
      while (i < text.size() && text[i] != ',' && text[i] != '\n' && text[i] != '\r') {
        field += text[i++];
        blank = false;
      }
      row.fields.push_back(std::move(field));
      row.quoted.push_back(quoted);
      field.clear();
      if (i < text.size() && text[i] == ',') {
        blank = false;
        ++i;
        continue;
      }
      break;  // end of line or of text
    }
    if (i < text.size() && (text[i] == '\n' || text[i] == '\r')) {
      if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      ++i;
      ++line;
    }
    if (!blank) rows.push_back(std::move(row));
  }
  if (has_header && !rows.empty()) {
    table.header = std::move(rows.front().fields);
    rows.erase(rows.begin());
  }
  table.rows = std::move(rows);
  return table;
}

CsvTable read_csv(const std::string& path, bool has_header) {
  // A regular file of bounded size: /dev/zero filled the memory, a FIFO blocked for ever.
  constexpr std::uintmax_t kMaxCsvBytes = std::uintmax_t{1} << 30;
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (std::filesystem::exists(status)) {
    check(std::filesystem::is_regular_file(status), path,
          "is not a regular file (a folder, device or pipe cannot be a CSV file)");
    const auto size = std::filesystem::file_size(path, ec);
    check(!ec && size <= kMaxCsvBytes, path, "CSV file of ", size, " bytes is above the limit of ",
          kMaxCsvBytes, " bytes");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, concat("cannot open CSV file: ", std::strerror(errno)));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return parse_csv(buffer.str(), path, has_header);
}

std::string csv_field(const std::string& value) {
  // A field starting with a UTF-8 byte-order mark is quoted: as the first field of a file
  // the reader would take the mark for the file's own and drop it (found by fuzzing).
  // Edge spaces, a no-break one included, are data only in quotes (readers trim the others).
  const bool quote = value.find_first_of(",\"\r\n") != std::string::npos ||
                     value.compare(0, 3, "\xEF\xBB\xBF") == 0 || trim(value) != value;
  if (!quote) return value;
  std::string out = "\"";
  for (const char c : value) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

}  // namespace attnscope::datasets
