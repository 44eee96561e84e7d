// HAM10000 metadata: `lesion_id,image_id,dx,...`; the lesion is the group.

#include <algorithm>

#include "attnscope/error.h"
#include "datasets/formats/formats.h"

namespace attnscope::datasets::formats {

std::vector<RawRow> read_ham10000(const CsvTable& t, Problems& problems) {
  auto idx = require_columns(t, {"lesion_id", "image_id", "dx"});
  std::vector<RawRow> rows;
  for (const auto& row : t.rows) {
    RawRow r{row.line, field(row, idx[1])};
    r.cls = upper(field(row, idx[2]));
    if (std::find(isic2018_classes().begin(), isic2018_classes().end(), r.cls) ==
        isic2018_classes().end()) {
      problems.add(row.line, concat("unknown dx '", field(row, idx[2]),
                                    "' (expected akiec, bcc, bkl, df, mel, nv or vasc)"));
      continue;
    }
    const auto lesion = field(row, idx[0]);
    if (!lesion.empty()) r.group = lesion;
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace attnscope::datasets::formats
