// The generic layout `image_id,label[,mask][,group|lesion_id|patient_id]` (what `attnscope synth`
// writes).

#include <filesystem>

#include "attnscope/error.h"
#include "datasets/formats/formats.h"

namespace attnscope::datasets::formats {

namespace fs = std::filesystem;

std::vector<RawRow> read_generic(const CsvTable& t, const std::string& csv_dir,
                                 Problems& problems) {
  auto idx = require_columns(t, {"image_id", "label"});
  auto mask = t.column("mask");
  auto group = t.column("group");
  if (!group) group = t.column("lesion_id");
  if (!group) group = t.column("patient_id");
  std::vector<RawRow> rows;
  for (const auto& row : t.rows) {
    RawRow r{row.line, field(row, idx[0]), field(row, idx[1])};
    if (r.cls.empty()) {
      problems.add(row.line, "empty label");
      continue;
    }
    if (group && !field(row, *group).empty()) r.group = field(row, *group);
    if (mask && !field(row, *mask).empty()) {
      fs::path m = field(row, *mask);
      if (m.is_relative()) m = fs::path(csv_dir) / m;
      if (!fs::is_regular_file(m))
        problems.add(row.line, concat("mask file not found: ", m.string()));
      else
        r.mask = m.string();
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace attnscope::datasets::formats
