// ISIC 2017 (Part 3): `image_id,melanoma,seborrheic_keratosis`; nevus when both are 0.

#include <cstdlib>

#include "attnscope/error.h"
#include "datasets/formats/formats.h"

namespace attnscope::datasets::formats {

std::vector<RawRow> read_isic2017(const CsvTable& t, Problems& problems) {
  auto idx = require_columns(t, {"image_id", "melanoma", "seborrheic_keratosis"});
  std::vector<RawRow> rows;
  for (const auto& row : t.rows) {
    RawRow r{row.line, field(row, idx[0])};
    const auto mel = field(row, idx[1]), sk = field(row, idx[2]);
    auto is = [](const std::string& v, double x) {
      char* end = nullptr;
      const double d = std::strtod(v.c_str(), &end);
      return !v.empty() && *end == '\0' && d == x;
    };
    const bool m1 = is(mel, 1), m0 = is(mel, 0), s1 = is(sk, 1), s0 = is(sk, 0);
    if (!(m1 || m0) || !(s1 || s0) || (m1 && s1)) {
      problems.add(row.line,
                   concat("melanoma/seborrheic_keratosis must be 0/1 and not both 1, got '", mel,
                          "', '", sk, "'"));
      continue;
    }
    r.cls = m1 ? "melanoma" : s1 ? "seborrheic_keratosis" : "nevus";
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace attnscope::datasets::formats
