#pragma once
// A small RFC 4180 CSV reader: quoted fields, doubled quotes, a UTF-8 BOM; a line ends at LF,
// CRLF or a lone CR outside quotes (as Python's csv module reads it).
// Every row keeps its line number so that errors can point at it.

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

namespace attnscope::datasets {

struct CsvRow {
  std::size_t line = 0;  ///< 1-based line number where the row starts
  std::vector<std::string> fields;
  /// quoted[i]: field i was written in quotes, so its edge spaces are data (csv_field quotes a
  /// value with edge spaces to keep them); readers trim only unquoted fields.
  std::vector<bool> quoted;
};

struct CsvTable {
  std::string path;                 ///< where it came from (for messages)
  std::vector<std::string> header;  ///< empty when read with has_header = false
  std::vector<CsvRow> rows;

  /// Index of a header column (exact match after trimming), or nullopt; a column named twice
  /// throws Error naming the file and both columns.
  std::optional<std::size_t> column(const std::string& name) const;
  /// Index of a header column; throws Error naming the file and the column otherwise.
  std::size_t require_column(const std::string& name) const;
};

/// Parses CSV text. Blank lines are skipped. Throws Error("<path>:<line>", ...) for an
/// unterminated quote.
CsvTable parse_csv(const std::string& text, const std::string& path, bool has_header = true);

/// Reads and parses a CSV file; throws Error naming the path if it cannot be read.
CsvTable read_csv(const std::string& path, bool has_header = true);

/// Trims ASCII white space and the characters that print as a space or as nothing (no-break,
/// zero-width, byte-order mark: printable_detail::is_invisible) at both ends: a label
/// "nevus\u00a0" from a spreadsheet is "nevus", not a second class that prints the same.
std::string trim(const std::string& s);

/// One CSV field as RFC 4180 writes it: quoted (inner quotes doubled) when it holds a comma,
/// a quote, CR or LF, or leading/trailing whitespace; as is otherwise. parse_csv reads it back.
std::string csv_field(const std::string& value);

}  // namespace attnscope::datasets
