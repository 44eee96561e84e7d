// ISIC 2020: `image_name,patient_id,...,benign_malignant,target`; the patient is the group.

#include "attnscope/error.h"
#include "datasets/formats/formats.h"

namespace attnscope::datasets::formats {

std::vector<RawRow> read_isic2020(const CsvTable& t, LabelMode mode, Problems& problems) {
  auto idx = require_columns(t, {"image_name", "patient_id", "target"});
  const auto diagnosis = t.column("diagnosis");
  const auto bm = t.column("benign_malignant");
  std::vector<RawRow> rows;
  for (const auto& row : t.rows) {
    RawRow r{row.line, field(row, idx[0])};
    const auto target = field(row, idx[2]);
    if (target != "0" && target != "1") {
      problems.add(row.line, concat("target must be 0 or 1, got '", target, "'"));
      continue;
    }
    if (mode == LabelMode::kBinary)
      r.cls = target == "1" ? "malignant" : "benign";
    else
      r.cls = diagnosis ? field(row, *diagnosis) : bm ? field(row, *bm) : target;
    if (r.cls.empty()) {
      problems.add(row.line, "empty diagnosis");
      continue;
    }
    const auto patient = field(row, idx[1]);
    if (!patient.empty()) r.group = patient;
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace attnscope::datasets::formats
