#include "datasets/isic.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <unordered_map>

#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "datasets/csv.h"
#include "datasets/formats/formats.h"
#include "datasets/text/tokenizer.h"
#include "datasets/walk.h"

// Format detection, the assembly of rows into a Dataset (class indices, duplicate and unsafe
// ids, image lookup) and class folders. Each CSV format's reader is in datasets/formats/.

namespace attnscope::datasets {

using namespace formats;  // NOLINT(google-build-using-namespace): this file is their one caller

namespace {

namespace fs = std::filesystem;

// Maps ids to image files by listing the folder once.
class ImageIndex {
 public:
  explicit ImageIndex(const std::string& dir) : dir_(dir) {
    std::error_code ec;
    check(fs::is_directory(dir, ec) || !fs::exists(dir, ec), dir,
          "is not a folder (--images names the folder of the images)");
    check(fs::is_directory(dir, ec), dir, "image folder not found");
    auto listing = list_folder(dir);  // a symlink loop is one problem, not the end of the run
    problems_ = std::move(listing.problems);
    for (const auto& file : listing.files) {
      const int rank = image_extension_rank(file);
      if (rank < 0) continue;
      auto& best = files_[file.stem().string()];
      if (best.first.empty() || rank < best.second) best = {file.string(), rank};
    }
    // A folder under an image's name (ISIC_0000010.jpg/) is no image: said where its id is
    // then missing, as the listing's other skipped entries are.
    for (const auto& folder : listing.folders) {
      if (image_extension_rank(folder) >= 0)
        problems_.push_back(
            concat(excerpt(folder.string(), 300), ": a folder, not an image file, skipped"));
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
  std::unordered_map<std::string, std::pair<std::string, int>> files_;
};

Dataset assemble(std::vector<RawRow> rows, Format format, std::vector<std::string> classes,
                 const ReadOptions& options, const std::string& source, Problems& problems) {
  Dataset ds;
  ds.format = format;
  ds.source = source;
  // Class names: the format's own list, or (generic / ISIC 2020 multi-class) sorted unique labels.
  const bool binary = options.mode == LabelMode::kBinary;
  if (binary) {
    classes = binary_classes();
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
      problems.add(r.line, concat("duplicate image id '", excerpt(r.id), "' (first on line ",
                                  it->second, ")"));
      continue;
    }
    // A group is stored as UTF-8 text too (split's CSV, the image cache, which refused the
    // image without naming its line).
    if (r.group && text::find_invalid_utf8(*r.group) != std::string::npos) {
      problems.add(r.line, concat("group '", excerpt(*r.group), "' is not valid UTF-8 (rejected)"));
      continue;
    }
    Sample s{r.id, "", 0, r.group, r.mask};
    if (s.mask_path) {
      std::error_code ec;
      if (!fs::is_regular_file(*s.mask_path, ec)) {
        // Without --skip-missing a problem of the line; its other problems are said too.
        if (!options.skip_missing)
          problems.add(r.line, concat("mask file not found: ", *s.mask_path,
                                      " (--skip-missing reads the image without it)"));
        else
          ds.masks_skipped.push_back(s.image_id);
        s.mask_path.reset();
      }
    }
    if (binary) {
      const auto m = malignant_of(r.cls, options.ak_malignant);
      if (!m) {
        problems.add(r.line, concat("unknown label '", excerpt(r.cls),
                                    "' (binary mode expects benign/malignant, 0/1 or an ISIC "
                                    "diagnosis)"));
        continue;
      }
      s.label = *m ? 1 : 0;
    } else {
      // A label becomes a class name: in checkpoints, CSV headers and terminal lines.
      // Edge spaces are kept only in quotes (an id's), and a class name with them prints as
      // another without them.
      const bool not_utf8 = text::find_invalid_utf8(r.cls) != std::string::npos;
      if (has_control_character(r.cls) || is_blank(r.cls) || trim(r.cls) != r.cls || not_utf8) {
        problems.add(r.line, concat("label '", excerpt(r.cls), "' ",
                                    is_blank(r.cls)                ? "is blank"
                                    : has_control_character(r.cls) ? "contains a control character"
                                    : not_utf8                     ? "is not valid UTF-8"
                                                                   : "begins or ends with a space",
                                    " (rejected)"));
        continue;
      }
      auto c = std::find(classes.begin(), classes.end(), r.cls);
      if (c == classes.end()) {
        problems.add(r.line, concat("unknown label '", excerpt(r.cls), "'"));
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
        // The first 20, each cut (10,000 missing ids made a message of 10,000 lines).
        if (++n_missing <= 20) missing += "\n  " + excerpt(s.image_id, 200);
      }
    }
    // What the listing passed over (a FIFO, a device, a dangling link under an image's name)
    // is said here too: the error ends the command before its warnings are printed.
    std::string passed_over;
    const auto& skipped = index.problems();
    for (std::size_t i = 0; i < skipped.size() && i < 10; ++i)
      passed_over += "\n  " + skipped[i];
    if (skipped.size() > 10) passed_over += concat("\n  ... and ", skipped.size() - 10, " more");
    check(n_missing == 0, options.images_dir,
          concat(n_missing, " image(s) named in ", source,
                 " not found (looked for .jpg .jpeg .png .tif .tiff .bmp .webp; "
                 "--skip-missing drops them):",
                 missing, n_missing > 20 ? concat("\n  ... and ", n_missing - 20, " more") : "",
                 skipped.empty() ? ""
                                 : concat("\nthe folder's listing passed over ", skipped.size(),
                                          " entries:", passed_over)));
    ds.samples = std::move(kept);
    // An id dropped for its missing image is not also "read without its mask".
    if (!ds.skipped.empty() && !ds.masks_skipped.empty()) {
      const std::set<std::string> dropped(ds.skipped.begin(), ds.skipped.end());
      ds.masks_skipped.erase(std::remove_if(ds.masks_skipped.begin(), ds.masks_skipped.end(),
                                            [&](const auto& id) { return dropped.count(id); }),
                             ds.masks_skipped.end());
    }
  }
  return ds;
}

}  // namespace

const std::vector<std::string>& image_extensions() {
  static const std::vector<std::string> kExts{".jpg",  ".jpeg", ".png", ".tif",
                                              ".tiff", ".bmp",  ".webp"};
  return kExts;
}

int image_extension_rank(const fs::path& file) {
  const auto& exts = image_extensions();
  const auto at = std::find(exts.begin(), exts.end(), lower(file.extension().string()));
  return at == exts.end() ? -1 : static_cast<int>(at - exts.begin());
}

void check_image_id(const std::string& id, const std::string& where) {
  check(!id.empty(), where, "empty image id");
  check(!has_control_character(id), where, "image id '", excerpt(id),
        "' contains a control character (rejected)");
  const bool bad = id.find("..") != std::string::npos || id.find('/') != std::string::npos ||
                   id.find('\\') != std::string::npos;
  check(!bad, where, "image id '", excerpt(id), "' contains a path separator or '..' (rejected)");
  // Ids are stored as UTF-8 strings (results.h5, the image cache, predictions.csv): a Latin-1
  // "caf\xe9" made a results file whose ids h5py cannot decode.
  const auto invalid = text::find_invalid_utf8(id);
  check(invalid == std::string::npos, where, "image id '", excerpt(id),
        "' is not valid UTF-8 (byte ", invalid,
        "; saved in another encoding than UTF-8?) (rejected)");
}

std::string default_images_dir(const std::string& csv_path) {
  const auto dir = fs::path(csv_path).parent_path() / "images";
  return fs::is_directory(dir) ? dir.string() : std::string();
}

std::string dataset_folder_csv(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  const auto csv = fs::path(dir) / "labels.csv";
  if (!fs::is_regular_file(csv, ec) || !fs::is_directory(fs::path(dir) / "images", ec)) return {};
  return csv.string();
}

Format detect_format(const std::string& csv_path) {
  if (fs::is_directory(csv_path)) return Format::kFolders;
  // A binary file given where a CSV belongs (an image cache, a checkpoint, an image) is named as
  // what it is, instead of quoting its header bytes as a CSV header. (A FIFO or device is
  // refused by read_csv without being read.)
  std::error_code ec;
  if (fs::is_regular_file(csv_path, ec)) {
    const auto head = file_head(csv_path, 4096);
    check(!has_hdf5_signature(head), csv_path,
          "is an HDF5 file (an attnscope image cache or checkpoint?), not a ground-truth CSV: "
          "give a CSV or a folder of class folders (train and evaluate also take an image cache)");
    // A NUL in the header line, or an image's signature (a PNG's first line has no NUL). A NUL
    // further down is a row's problem, named with its line.
    const bool binary =
        head.substr(0, head.find_first_of("\r\n")).find('\0') != std::string::npos ||
        head.rfind("\x89PNG\r\n\x1a\n", 0) == 0 || head.rfind("RIFF", 0) == 0;
    check(!binary, csv_path,
          "is not a text file (an image or another binary file?), not a ground-truth CSV");
  }
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
  throw Error(csv_path, concat("unrecognised ground-truth layout (header: ", excerpt(have, 300),
                               "); expected an ISIC 2016-2020, HAM10000 or image_id,label CSV, or "
                               "use --format"));
}

Dataset read_class_folders(const std::string& root, const ReadOptions& options) {
  check(fs::is_directory(root), root, "not a folder");
  std::vector<std::string> classes;
  // Hidden entries (.ipynb_checkpoints/, .git/, a hidden dangling link) are no class: each
  // refused the whole dataset.
  auto top = list_folder(root, /*skip_hidden=*/true);
  std::vector<std::string> warnings = std::move(top.problems);
  for (const auto& folder : top.folders) {
    // A class name goes into checkpoints, reports and terminal lines: a control character in
    // it is refused as in an image id (a terminal escape would reach every summary line).
    const auto name = folder.filename().string();
    // Edge spaces: a multi-class name would print as another (binary mode reads the name
    // trimmed, as benign/malignant or a diagnosis).
    const bool edge_spaces = options.mode != LabelMode::kBinary && trim(name) != name;
    // Not UTF-8 (a Latin-1 "n\xe6vus"): class names are stored as UTF-8 text (checkpoints,
    // JSON), where it failed after the training with the JSON library's words.
    const bool not_utf8 = text::find_invalid_utf8(name) != std::string::npos;
    if (has_control_character(name) || is_blank(name) || edge_spaces || not_utf8) {
      warnings.push_back(
          concat(excerpt(folder.string(), 300),
                 is_blank(name)                ? ": a class folder whose name is blank, skipped"
                 : has_control_character(name) ? ": a class folder whose name contains a control "
                                                 "character, skipped"
                 : not_utf8 ? ": a class folder whose name is not valid UTF-8, skipped"
                            : ": a class folder whose name begins or ends with a "
                              "space (it would print as another), skipped"));
      continue;
    }
    classes.push_back(name);
  }
  // A folder of a labels.csv whose images are elsewhere (no images/ beside it) is read as class
  // folders: the message said nothing of the CSV.
  std::error_code csv_ec;
  const bool has_csv = fs::exists(fs::symlink_status(fs::path(root) / "labels.csv", csv_ec));
  check(!classes.empty(), root, "no class folders inside",
        has_csv ? "; it holds labels.csv but no images/ folder beside it: give --data " +
                      (fs::path(root) / "labels.csv").string() +
                      " and --images with the folder of its images"
                : std::string());
  Problems problems(root);
  if (options.mode == LabelMode::kBinary) {
    for (const auto& cls : classes)
      if (!malignant_of(cls, options.ak_malignant))
        problems.add(0, concat("class folder '", excerpt(cls),
                               "' is not benign/malignant or an ISIC diagnosis (binary mode)"));
    problems.throw_if_any();
  }
  std::vector<RawRow> rows;
  std::vector<Sample> samples;
  std::map<std::string, std::string> first_file;  // id -> the file that gave it first
  for (const auto& cls : classes) {
    std::vector<fs::path> files;
    // Hidden entries (macOS's "._x.jpg" metadata beside x.jpg) are no images, as in classify.
    auto listing = list_folder(fs::path(root) / cls, /*skip_hidden=*/true);
    warnings.insert(warnings.end(), listing.problems.begin(), listing.problems.end());
    for (const auto& file : listing.files) {
      if (image_extension_rank(file) >= 0) files.push_back(file);
    }
    for (const auto& f : files) {
      // A file name no id may have (a control character, "..") is one warning: it refused the
      // whole dataset.
      try {
        check_image_id(f.stem().string(), f.string());
      } catch (const Error& e) {
        warnings.push_back(concat(excerpt(e.what(), 300), ", skipped"));
        continue;
      }
      // Named by both files: a folder dataset has no lines to point at.
      const auto [first, fresh] = first_file.emplace(f.stem().string(), f.string());
      if (!fresh) {
        problems.add(
            0, concat(excerpt(f.string(), 300), ": duplicate image id '",
                      excerpt(f.stem().string()), "' (also ", excerpt(first->second, 300), ")"));
        continue;
      }
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
  // A row longer than the header read its first fields without a word: `a,nevus, benign` gave
  // the label `nevus`, and a comma in an unquoted id shifted the label into the next column.
  // Empty fields past the header's (a trailing comma a spreadsheet wrote) are no value. The
  // headerless ISIC 2016 test ground truth has two columns: id and label. Unnamed columns that
  // end the header (its own trailing comma, `image_id,label,`) name nothing either: a value
  // under them was ignored without a word.
  std::size_t named = t.header.size();
  while (named > 0 && trim(t.header[named - 1]).empty())
    --named;
  const std::size_t width = headerless ? 2 : named;
  for (const auto& row : t.rows) {
    for (std::size_t i = width; i < row.fields.size(); ++i) {
      if (trim(row.fields[i]).empty()) continue;
      problems.add(row.line, concat(row.fields.size(), " fields where ",
                                    headerless ? "the format has " : "the header names ", width,
                                    ": a value with an unquoted comma? (put it in double quotes)"));
      break;
    }
  }
  std::vector<RawRow> rows;
  std::vector<std::string> classes;
  switch (format) {
    case Format::kIsic2016:
      rows = read_isic2016(t, problems);
      classes = binary_classes();
      break;
    case Format::kIsic2017:
      rows = read_isic2017(t, problems);
      classes = isic2017_classes();
      break;
    case Format::kIsic2018:
      rows = read_one_hot(t, "image", isic2018_classes(), false, problems);
      classes = isic2018_classes();
      break;
    case Format::kHam10000:
      rows = read_ham10000(t, problems);
      classes = isic2018_classes();
      break;
    case Format::kIsic2019:
      rows = read_one_hot(t, "image", isic2019_classes(), true, problems);
      classes = isic2019_classes();
      break;
    case Format::kIsic2020:
      rows = read_isic2020(t, options.mode, problems);
      break;
    case Format::kGeneric:
      rows = read_generic(t, fs::path(path).parent_path().string(), options.masks, problems);
      break;
    default:
      throw Error(path, "unsupported format");
  }
  return assemble(std::move(rows), format, classes, options, path, problems);
}

}  // namespace attnscope::datasets
