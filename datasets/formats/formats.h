#pragma once
// What the format readers of datasets/isic.cpp share (internal to attnscope::datasets): one
// CSV row before class names become indices, the collector of problems, column helpers, the
// binary label of an ISIC diagnosis, and one reader per ground-truth format, each in its own
// file under datasets/formats/. The formats themselves are described in datasets/isic.h.

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "datasets/csv.h"
#include "datasets/dataset.h"

namespace attnscope::datasets::formats {

std::string lower(std::string s);
std::string upper(std::string s);

/// The class lists of the formats that define theirs, in the format's order.
const std::vector<std::string>& isic2017_classes();  ///< melanoma, seborrheic_keratosis, nevus
const std::vector<std::string>& isic2018_classes();  ///< also HAM10000's
const std::vector<std::string>& isic2019_classes();
const std::vector<std::string>& binary_classes();  ///< benign, malignant

/// Binary label of a class or diagnosis name; nullopt when the name is not known.
std::optional<bool> malignant_of(const std::string& name, bool ak_malignant);

/// One CSV row, before class names are turned into indices.
struct RawRow {
  RawRow(std::size_t line_, std::string id_, std::string cls_ = {})
      : line(line_), id(std::move(id_)), cls(std::move(cls_)) {}
  std::size_t line = 0;
  std::string id;
  std::string cls;  // the format's class name
  std::optional<std::string> group;
  std::optional<std::string> mask;
};

/// Collects every problem of one input (lines "<source>:<line>: <what>"), then throws them
/// at once in one Error: the count, and the 50 earliest lines' problems in line order, each cut
/// to 300 bytes.
class Problems {
 public:
  explicit Problems(std::string source) : source_(std::move(source)) {}
  /// line 0: a problem of the whole input.
  void add(std::size_t line, const std::string& what);
  void throw_if_any() const;

 private:
  std::string source_;
  /// The earliest lines' problems, each cut to a readable length, in line order (the checks of
  /// a whole file and those of its format run one after the other), at most kMaxProblems.
  std::multimap<std::size_t, std::string> lines_;
  std::size_t count_ = 0;
};

/// Field i of the row, trimmed; "" when the row is shorter.
std::string field(const CsvRow& row, std::size_t i);

/// The indices of the named columns; throws Error(t.path) naming every missing one.
std::vector<std::size_t> require_columns(const CsvTable& t, const std::vector<std::string>& names);

bool has_columns(const std::vector<std::string>& header, const std::vector<std::string>& names);

/// benign/malignant, 0/1 or 0.0/1.0 (any case).
bool is_binary_value(const std::string& v);

// One reader per format. Each returns the good rows and adds a problem per bad one; a missing
// column throws at once.

/// isic2016.cpp: headerless or `img_id,Label`.
std::vector<RawRow> read_isic2016(const CsvTable& t, Problems& problems);
/// isic2017.cpp: `image_id,melanoma,seborrheic_keratosis`.
std::vector<RawRow> read_isic2017(const CsvTable& t, Problems& problems);
/// one_hot.cpp: ISIC 2018 and 2019, one 0/1 column per class, exactly one set. optional_last:
/// the last class column may be absent (ISIC 2019's UNK).
std::vector<RawRow> read_one_hot(const CsvTable& t, const std::string& id_col,
                                 const std::vector<std::string>& classes, bool optional_last,
                                 Problems& problems);
/// ham10000.cpp: `lesion_id,image_id,dx` (group = lesion_id).
std::vector<RawRow> read_ham10000(const CsvTable& t, Problems& problems);
/// isic2020.cpp: `image_name,patient_id,...,target` (group = patient_id).
std::vector<RawRow> read_isic2020(const CsvTable& t, LabelMode mode, Problems& problems);
/// generic.cpp: `image_id,label[,mask][,group|lesion_id|patient_id]`; relative mask paths are
/// resolved against csv_dir; with masks false the mask column is not read.
std::vector<RawRow> read_generic(const CsvTable& t, const std::string& csv_dir, bool masks,
                                 Problems& problems);

}  // namespace attnscope::datasets::formats
