// ISIC 2018 (Task 3) and ISIC 2019: one 0/1 column per class, exactly one of them set.

#include <cstdlib>

#include "attnscope/error.h"
#include "datasets/formats/formats.h"

namespace attnscope::datasets::formats {

std::vector<RawRow> read_one_hot(const CsvTable& t, const std::string& id_col,
                                 const std::vector<std::string>& classes, bool optional_last,
                                 Problems& problems) {
  std::vector<std::string> required(classes.begin(), classes.end() - (optional_last ? 1 : 0));
  required.insert(required.begin(), id_col);
  auto idx = require_columns(t, required);
  std::vector<std::optional<std::size_t>> cols;
  for (const auto& c : classes)
    cols.push_back(t.column(c));
  std::vector<RawRow> rows;
  for (const auto& row : t.rows) {
    RawRow r{row.line, field(row, idx[0])};
    int ones = 0;
    bool bad = false;
    for (std::size_t c = 0; c < classes.size(); ++c) {
      if (!cols[c]) continue;
      const auto v = field(row, *cols[c]);
      char* end = nullptr;
      const double x = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || (x != 0.0 && x != 1.0)) {
        problems.add(row.line, concat("column ", classes[c], ": expected 0 or 1, got '", v, "'"));
        bad = true;
      } else if (x == 1.0) {
        ++ones;
        r.cls = classes[c];
      }
    }
    if (!bad && ones != 1)
      problems.add(row.line, concat("expected exactly one class column set to 1, got ", ones));
    if (!bad && ones == 1) rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace attnscope::datasets::formats
