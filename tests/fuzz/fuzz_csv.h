#pragma once
#include "datasets/csv.h"
#include "fuzz/fuzz_targets.h"

namespace attnscope::fuzz {

/// The RFC 4180 reader, and the writer's quoting round trip on every parsed field.
inline void csv(const uint8_t* data, std::size_t size) {
  try {
    const auto table = datasets::parse_csv(as_text(data, size), "fuzz.csv");
    for (const auto& row : table.rows) {
      std::string line;
      for (std::size_t i = 0; i < row.fields.size(); ++i)
        line += (i ? "," : "") + datasets::csv_field(row.fields[i]);
      const auto back = datasets::parse_csv(line + "\n", "roundtrip.csv", false);
      // A row of one empty field is a blank line, which the reader skips.
      if (line.empty()) continue;
      if (back.rows.size() != 1 || back.rows[0].fields != row.fields)
        throw std::logic_error("csv_field does not round-trip through parse_csv");
    }
  } catch (const Error&) {
  }
}

}  // namespace attnscope::fuzz
