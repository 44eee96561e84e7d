// The generic layout `image_id,label[,mask][,group|lesion_id|patient_id]` (what `attnscope synth`
// writes).

#include <filesystem>

#include "attnscope/error.h"
#include "datasets/formats/formats.h"

namespace attnscope::datasets::formats {

namespace fs = std::filesystem;

std::vector<RawRow> read_generic(const CsvTable& t, const std::string& csv_dir, bool masks,
                                 Problems& problems) {
  auto idx = require_columns(t, {"image_id", "label"});
  const auto mask = masks ? t.column("mask") : std::optional<std::size_t>();
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
      std::error_code mask_ec;
      // Confined to the dataset's folder, as ids are: no "../../etc/passwd" as a mask.
      // (Lexically, like ids: a masks/ folder that is a symlink elsewhere stays usable.)
      const fs::path folder = csv_dir.empty() ? fs::path(".") : fs::path(csv_dir);
      const auto rel = fs::absolute(m, mask_ec)
                           .lexically_normal()
                           .lexically_relative(fs::absolute(folder, mask_ec).lexically_normal());
      // Whether the file is there is asked when the dataset is assembled, where
      // --skip-missing is known (it reads such a row without its mask).
      if (rel.empty() || *rel.begin() == "..")
        problems.add(row.line, concat("mask path '", field(row, *mask),
                                      "' leaves the dataset folder (rejected)"));
      else
        r.mask = m.string();
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace attnscope::datasets::formats
