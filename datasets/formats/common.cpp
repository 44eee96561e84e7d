#include <algorithm>
#include <cctype>
#include <iterator>
#include <set>

#include "attnscope/error.h"
#include "attnscope/printable.h"
#include "datasets/formats/formats.h"

namespace attnscope::datasets::formats {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return s;
}

const std::vector<std::string>& isic2017_classes() {
  static const std::vector<std::string> k{"melanoma", "seborrheic_keratosis", "nevus"};
  return k;
}

const std::vector<std::string>& isic2018_classes() {
  static const std::vector<std::string> k{"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"};
  return k;
}

const std::vector<std::string>& isic2019_classes() {
  static const std::vector<std::string> k{"MEL", "NV",   "BCC", "AK", "BKL",
                                          "DF",  "VASC", "SCC", "UNK"};
  return k;
}

const std::vector<std::string>& binary_classes() {
  static const std::vector<std::string> k{"benign", "malignant"};
  return k;
}

std::optional<bool> malignant_of(const std::string& name, bool ak_malignant) {
  static const std::set<std::string> kMalignant{"malignant",
                                                "1",
                                                "1.0",
                                                "mel",
                                                "melanoma",
                                                "bcc",
                                                "basal cell carcinoma",
                                                "basal_cell_carcinoma",
                                                "scc",
                                                "squamous cell carcinoma",
                                                "squamous_cell_carcinoma"};
  static const std::set<std::string> kActinic{"akiec", "ak", "actinic keratosis",
                                              "actinic_keratosis"};
  static const std::set<std::string> kBenign{"benign",
                                             "0",
                                             "0.0",
                                             "nv",
                                             "nevus",
                                             "bkl",
                                             "seborrheic keratosis",
                                             "seborrheic_keratosis",
                                             "lentigo nos",
                                             "lichenoid keratosis",
                                             "solar lentigo",
                                             "df",
                                             "dermatofibroma",
                                             "vasc",
                                             "vascular lesion",
                                             "cafe-au-lait macule",
                                             "atypical melanocytic proliferation",
                                             "unknown",
                                             "unk"};
  const std::string n = lower(trim(name));
  if (kMalignant.count(n)) return true;
  if (kActinic.count(n)) return ak_malignant;
  if (kBenign.count(n)) return false;
  return std::nullopt;
}

// A problem quotes fields of the file: each line is cut to kMaxProblemBytes with its control
// characters and tabs escaped, and the kMaxProblems earliest lines' problems are listed, in
// line order (a crafted 10 MB id, or a million bad rows, made a message of that size).
constexpr std::size_t kMaxProblemBytes = 300;
constexpr std::size_t kMaxProblems = 50;

void Problems::add(std::size_t line, const std::string& what) {
  ++count_;
  if (lines_.size() >= kMaxProblems && line >= std::prev(lines_.end())->first) return;
  const auto text = excerpt(what, kMaxProblemBytes);
  lines_.emplace(line, line ? concat(source_, ":", line, ": ", text) : concat(source_, ": ", text));
  if (lines_.size() > kMaxProblems) lines_.erase(std::prev(lines_.end()));
}

void Problems::throw_if_any() const {
  if (count_ == 0) return;
  std::string message = concat(count_, count_ == 1 ? " problem" : " problems");
  for (const auto& [line, text] : lines_)
    message += "\n  " + text;
  if (count_ > lines_.size()) message += concat("\n  ... and ", count_ - lines_.size(), " more");
  throw Error(source_, message);
}

std::string field(const CsvRow& row, std::size_t i) {
  if (i >= row.fields.size()) return std::string();
  // A quoted field keeps its edge spaces: split writes an id with them quoted, to be read back.
  return i < row.quoted.size() && row.quoted[i] ? row.fields[i] : trim(row.fields[i]);
}

std::vector<std::size_t> require_columns(const CsvTable& t, const std::vector<std::string>& names) {
  std::vector<std::size_t> idx;
  std::string missing;
  for (const auto& n : names) {
    auto i = t.column(n);
    if (!i) missing += (missing.empty() ? "'" : ", '") + n + "'";
    idx.push_back(i.value_or(0));
  }
  if (!missing.empty()) {
    std::string have;
    for (const auto& h : t.header)
      have += (have.empty() ? "" : ",") + h;
    throw Error(t.path, concat("missing column(s) ", missing, " (header is: ", have, ")"));
  }
  return idx;
}

bool has_columns(const std::vector<std::string>& header, const std::vector<std::string>& names) {
  for (const auto& n : names)
    if (std::find(header.begin(), header.end(), n) == header.end()) return false;
  return true;
}

bool is_binary_value(const std::string& v) {
  const auto l = lower(trim(v));
  return l == "benign" || l == "malignant" || l == "0" || l == "1" || l == "0.0" || l == "1.0";
}

}  // namespace attnscope::datasets::formats
