// ISIC 2016 (Part 3): headerless `id,label` or `img_id,Label`; labels benign/malignant or 0/1.

#include "attnscope/error.h"
#include "datasets/formats/formats.h"

namespace attnscope::datasets::formats {

std::vector<RawRow> read_isic2016(const CsvTable& t, Problems& problems) {
  std::size_t id = 0, label = 1;
  if (!t.header.empty()) {
    id = require_columns(t, {"img_id"})[0];
    label = t.column("label") ? *t.column("label") : require_columns(t, {"Label"})[0];
  }
  std::vector<RawRow> rows;
  for (const auto& row : t.rows) {
    RawRow r{row.line, field(row, id)};
    const auto v = lower(field(row, label));
    if (v == "benign" || v == "0" || v == "0.0")
      r.cls = "benign";
    else if (v == "malignant" || v == "1" || v == "1.0")
      r.cls = "malignant";
    else {
      problems.add(row.line, concat("unknown label '", field(row, label),
                                    "' (expected benign/malignant or 0/1)"));
      continue;
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace attnscope::datasets::formats
