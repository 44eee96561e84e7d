#include "datasets/isic.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <set>
#include <unordered_map>

#include "attnscope/error.h"
#include "datasets/csv.h"
#include "datasets/walk.h"

namespace attnscope::datasets {
namespace {

namespace fs = std::filesystem;

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

const std::vector<std::string> kIsic2018Classes{"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"};
const std::vector<std::string> kIsic2019Classes{"MEL", "NV",   "BCC", "AK", "BKL",
                                                "DF",  "VASC", "SCC", "UNK"};
const std::vector<std::string> kIsic2017Classes{"melanoma", "seborrheic_keratosis", "nevus"};
const std::vector<std::string> kBinaryClasses{"benign", "malignant"};

// Binary label of a class or diagnosis name; nullopt when the name is not known.
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

// One CSV row, before class names are turned into indices.
struct RawRow {
  RawRow(std::size_t line_, std::string id_, std::string cls_ = {})
      : line(line_), id(std::move(id_)), cls(std::move(cls_)) {}
  std::size_t line = 0;
  std::string id;
  std::string cls;  // the format's class name
  std::optional<std::string> group;
  std::optional<std::string> mask;
};

// Collects every problem of one input, then throws them all at once.
class Problems {
 public:
  explicit Problems(std::string source) : source_(std::move(source)) {}
  void add(std::size_t line, const std::string& what) {
    lines_.push_back(line ? concat(source_, ":", line, ": ", what) : concat(source_, ": ", what));
  }
  void throw_if_any() const {
    if (lines_.empty()) return;
    std::string message = concat(lines_.size(), lines_.size() == 1 ? " problem" : " problems");
    for (const auto& l : lines_)
      message += "\n  " + l;
    throw Error(source_, message);
  }

 private:
  std::string source_;
  std::vector<std::string> lines_;
};

std::string field(const CsvRow& row, std::size_t i) {
  return i < row.fields.size() ? trim(row.fields[i]) : std::string();
}

// Requires all the named columns; reports every missing one at once.
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

// Reads one-hot class columns: exactly one value must be 1.
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

std::vector<RawRow> read_ham10000(const CsvTable& t, Problems& problems) {
  auto idx = require_columns(t, {"lesion_id", "image_id", "dx"});
  std::vector<RawRow> rows;
  for (const auto& row : t.rows) {
    RawRow r{row.line, field(row, idx[1])};
    r.cls = upper(field(row, idx[2]));
    if (std::find(kIsic2018Classes.begin(), kIsic2018Classes.end(), r.cls) ==
        kIsic2018Classes.end()) {
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
      std::error_code mask_ec;
      // Confined to the dataset's folder, as ids are: no "../../etc/passwd" as a mask.
      // (Lexically, like ids: a masks/ folder that is a symlink elsewhere stays usable.)
      const fs::path folder = csv_dir.empty() ? fs::path(".") : fs::path(csv_dir);
      const auto rel = fs::absolute(m, mask_ec)
                           .lexically_normal()
                           .lexically_relative(fs::absolute(folder, mask_ec).lexically_normal());
      if (rel.empty() || *rel.begin() == "..")
        problems.add(row.line, concat("mask path '", field(row, *mask),
                                      "' leaves the dataset folder (rejected)"));
      else if (!fs::is_regular_file(m, mask_ec))
        problems.add(row.line, concat("mask file not found: ", m.string()));
      else
        r.mask = m.string();
    }
    rows.push_back(std::move(r));
  }
  return rows;
}

// Maps ids to image files by listing the folder once.
class ImageIndex {
 public:
  explicit ImageIndex(const std::string& dir) : dir_(dir) {
    check(fs::is_directory(dir), dir, "image folder not found");
    auto listing = list_folder(dir);  // a symlink loop is one problem, not the end of the run
    problems_ = std::move(listing.problems);
    for (const auto& file : listing.files) {
      const auto name = file.filename().string();
      const auto dot = name.rfind('.');
      if (dot == std::string::npos) continue;
      const auto ext = lower(name.substr(dot));
      const auto& exts = image_extensions();
      const auto rank = std::find(exts.begin(), exts.end(), ext) - exts.begin();
      if (rank == static_cast<std::ptrdiff_t>(exts.size())) continue;
      auto& best = files_[name.substr(0, dot)];
      if (best.first.empty() || rank < best.second) best = {file.string(), rank};
    }
  }
  std::optional<std::string> find(const std::string& id) const {
    auto it = files_.find(id);
    if (it == files_.end()) return std::nullopt;
    return it->second.first;
  }
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::string dir_;
  std::vector<std::string> problems_;
  std::unordered_map<std::string, std::pair<std::string, std::ptrdiff_t>> files_;
};

Dataset assemble(std::vector<RawRow> rows, Format format, std::vector<std::string> classes,
                 const ReadOptions& options, const std::string& source, Problems& problems) {
  Dataset ds;
  ds.format = format;
  ds.source = source;
  // Class names: the format's own list, or (generic / ISIC 2020 multi-class) sorted unique labels.
  const bool binary = options.mode == LabelMode::kBinary;
  if (binary) {
    classes = kBinaryClasses;
  } else if (classes.empty()) {
    std::set<std::string> unique;
    for (const auto& r : rows)
      unique.insert(r.cls);
    classes.assign(unique.begin(), unique.end());
  }
  std::map<std::string, std::size_t> first_line;
  for (auto& r : rows) {
    try {
      check_image_id(r.id, "");
    } catch (const Error& e) {
      problems.add(r.line, e.message());
      continue;
    }
    auto [it, fresh] = first_line.emplace(r.id, r.line);
    if (!fresh) {
      problems.add(r.line,
                   concat("duplicate image id '", r.id, "' (first on line ", it->second, ")"));
      continue;
    }
    Sample s{r.id, "", 0, r.group, r.mask};
    if (binary) {
      const auto m = malignant_of(r.cls, options.ak_malignant);
      if (!m) {
        problems.add(r.line, concat("unknown label '", r.cls,
                                    "' (binary mode expects benign/malignant, 0/1 or an ISIC "
                                    "diagnosis)"));
        continue;
      }
      s.label = *m ? 1 : 0;
    } else {
      auto c = std::find(classes.begin(), classes.end(), r.cls);
      if (c == classes.end()) {
        problems.add(r.line, concat("unknown label '", r.cls, "'"));
        continue;
      }
      s.label = c - classes.begin();
    }
    ds.samples.push_back(std::move(s));
  }
  problems.throw_if_any();
  ds.class_names = std::move(classes);

  if (!options.images_dir.empty()) {
    const ImageIndex index(options.images_dir);
    ds.warnings.insert(ds.warnings.end(), index.problems().begin(), index.problems().end());
    std::vector<Sample> kept;
    std::string missing;
    std::size_t n_missing = 0;
    for (auto& s : ds.samples) {
      if (auto p = index.find(s.image_id)) {
        s.path = *p;
        kept.push_back(std::move(s));
      } else if (options.skip_missing) {
        ds.skipped.push_back(s.image_id);
      } else {
        ++n_missing;
        missing += "\n  " + s.image_id;
      }
    }
    check(n_missing == 0, options.images_dir,
          concat(n_missing, " image(s) named in ", source,
                 " not found (looked for .jpg .jpeg .png .tif .tiff .bmp .webp; "
                 "--skip-missing drops them):",
                 missing));
    ds.samples = std::move(kept);
  }
  return ds;
}

}  // namespace

std::vector<int64_t> Dataset::class_counts() const {
  std::vector<int64_t> counts(class_names.size(), 0);
  for (const auto& s : samples)
    if (s.labelled()) ++counts.at(static_cast<std::size_t>(s.label));
  return counts;
}

std::vector<int64_t> Dataset::labels() const {
  std::vector<int64_t> out;
  out.reserve(samples.size());
  for (const auto& s : samples)
    out.push_back(s.label);
  return out;
}

std::string format_name(Format format) {
  switch (format) {
    case Format::kAuto:
      return "auto";
    case Format::kIsic2016:
      return "isic2016";
    case Format::kIsic2017:
      return "isic2017";
    case Format::kIsic2018:
      return "isic2018";
    case Format::kHam10000:
      return "ham10000";
    case Format::kIsic2019:
      return "isic2019";
    case Format::kIsic2020:
      return "isic2020";
    case Format::kGeneric:
      return "generic";
    case Format::kFolders:
      return "folders";
  }
  return "?";
}

Format format_from_name(const std::string& name) {
  for (auto f :
       {Format::kAuto, Format::kIsic2016, Format::kIsic2017, Format::kIsic2018, Format::kHam10000,
        Format::kIsic2019, Format::kIsic2020, Format::kGeneric, Format::kFolders})
    if (format_name(f) == lower(name)) return f;
  throw Error("format", concat("unknown format '", name,
                               "' (known: auto, isic2016, isic2017, isic2018, ham10000, isic2019, "
                               "isic2020, generic, folders)"));
}

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> kExts{".jpg",  ".jpeg", ".png", ".tif",
                                              ".tiff", ".bmp",  ".webp"};
  return kExts;
}

void check_image_id(const std::string& id, const std::string& where) {
  check(!id.empty(), where, "empty image id");
  const bool bad = id.find("..") != std::string::npos || id.find('/') != std::string::npos ||
                   id.find('\\') != std::string::npos || id.find('\0') != std::string::npos;
  check(!bad, where, "image id '", id, "' contains a path separator or '..' (rejected)");
}

std::string default_images_dir(const std::string& csv_path) {
  const auto dir = fs::path(csv_path).parent_path() / "images";
  return fs::is_directory(dir) ? dir.string() : std::string();
}

Format detect_format(const std::string& csv_path) {
  if (fs::is_directory(csv_path)) return Format::kFolders;
  const auto t = read_csv(csv_path, true);
  check(!t.header.empty(), csv_path, "empty file: no header and no rows");
  std::vector<std::string> h;
  for (const auto& c : t.header)
    h.push_back(trim(c));
  if (has_columns(h, {"image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}))
    return Format::kIsic2018;
  if (has_columns(h, {"image", "MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"}))
    return Format::kIsic2019;
  if (has_columns(h, {"image_id", "melanoma", "seborrheic_keratosis"})) return Format::kIsic2017;
  if (has_columns(h, {"lesion_id", "image_id", "dx"})) return Format::kHam10000;
  if (has_columns(h, {"image_name", "target"})) return Format::kIsic2020;
  if (h.size() >= 2 && h[0] == "img_id" && (h[1] == "Label" || h[1] == "label"))
    return Format::kIsic2016;
  if (has_columns(h, {"image_id", "label"})) return Format::kGeneric;
  // Headerless ISIC 2016: two columns, the second a binary label.
  if (h.size() == 2 && is_binary_value(h[1]) && h[0] != "image_id") return Format::kIsic2016;
  std::string have;
  for (const auto& c : h)
    have += (have.empty() ? "" : ",") + c;
  throw Error(csv_path, concat("unrecognised ground-truth layout (header: ", have,
                               "); expected an ISIC 2016-2020, HAM10000 or image_id,label CSV, or "
                               "use --format"));
}

Dataset read_class_folders(const std::string& root, const ReadOptions& options) {
  check(fs::is_directory(root), root, "not a folder");
  std::vector<std::string> classes;
  auto top = list_folder(root);
  std::vector<std::string> warnings = std::move(top.problems);
  for (const auto& folder : top.folders)
    classes.push_back(folder.filename().string());
  check(!classes.empty(), root, "no class folders inside");
  Problems problems(root);
  if (options.mode == LabelMode::kBinary) {
    for (const auto& cls : classes)
      if (!malignant_of(cls, options.ak_malignant))
        problems.add(0, concat("class folder '", cls,
                               "' is not benign/malignant or an ISIC diagnosis (binary mode)"));
    problems.throw_if_any();
  }
  std::vector<RawRow> rows;
  std::vector<Sample> samples;
  for (const auto& cls : classes) {
    std::vector<fs::path> files;
    auto listing = list_folder(fs::path(root) / cls);
    warnings.insert(warnings.end(), listing.problems.begin(), listing.problems.end());
    for (const auto& file : listing.files) {
      const auto ext = lower(file.extension().string());
      const auto& exts = image_extensions();
      if (std::find(exts.begin(), exts.end(), ext) != exts.end()) files.push_back(file);
    }
    for (const auto& f : files) {
      rows.push_back({0, f.stem().string(), cls});
      Sample smp;
      smp.path = f.string();
      samples.push_back(std::move(smp));
    }
  }
  ReadOptions o = options;
  o.images_dir.clear();  // paths come from the folders themselves
  auto ds = assemble(rows, Format::kFolders, classes, o, root, problems);
  for (std::size_t i = 0; i < ds.samples.size(); ++i)
    ds.samples[i].path = samples[i].path;
  ds.warnings.insert(ds.warnings.begin(), warnings.begin(), warnings.end());
  return ds;
}

Dataset read_dataset(const std::string& path, const ReadOptions& options) {
  Format format = options.format;
  if (format == Format::kAuto) format = detect_format(path);
  if (format == Format::kFolders) return read_class_folders(path, options);
  check(fs::is_regular_file(path), path, "no such file");
  const bool headerless = format == Format::kIsic2016 && [&] {
    const auto peek = read_csv(path, true);
    return !peek.header.empty() && peek.header[0] != "img_id";
  }();
  const auto t = read_csv(path, !headerless);
  Problems problems(path);
  std::vector<RawRow> rows;
  std::vector<std::string> classes;
  switch (format) {
    case Format::kIsic2016:
      rows = read_isic2016(t, problems);
      classes = kBinaryClasses;
      break;
    case Format::kIsic2017:
      rows = read_isic2017(t, problems);
      classes = kIsic2017Classes;
      break;
    case Format::kIsic2018:
      rows = read_one_hot(t, "image", kIsic2018Classes, false, problems);
      classes = kIsic2018Classes;
      break;
    case Format::kHam10000:
      rows = read_ham10000(t, problems);
      classes = kIsic2018Classes;
      break;
    case Format::kIsic2019:
      rows = read_one_hot(t, "image", kIsic2019Classes, true, problems);
      classes = kIsic2019Classes;
      break;
    case Format::kIsic2020:
      rows = read_isic2020(t, options.mode, problems);
      break;
    case Format::kGeneric:
      rows = read_generic(t, fs::path(path).parent_path().string(), problems);
      break;
    default:
      throw Error(path, "unsupported format");
  }
  return assemble(std::move(rows), format, classes, options, path, problems);
}

}  // namespace attnscope::datasets
