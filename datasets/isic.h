#pragma once
// Labelled image datasets: the ISIC ground-truth layouts of every year, class folders and a
// generic `image_id,label` CSV, read into one list of samples.
//
// Formats (detected from the header and the shape of the rows; ReadOptions::format forces one):
//   isic2016   no header, or `img_id,Label`; labels benign/malignant or 0/1 (0.0/1.0)
//   isic2017   `image_id,melanoma,seborrheic_keratosis` (nevus when both are 0)
//   isic2018   `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC` one-hot
//   ham10000   `lesion_id,image_id,dx,...` (group = lesion_id)
//   isic2019   `image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC[,UNK]` one-hot
//   isic2020   `image_name,patient_id,...,benign_malignant,target` (group = patient_id)
//   generic    `image_id,label[,mask][,group|lesion_id|patient_id]` (also what `attnscope synth`
//   writes) folders    <root>/<class name>/<image files>
// Binary mode maps MEL, BCC, SCC and AKIEC/AK to malignant and everything else to benign
// (classes {benign, malignant}); ISIC 2020 uses its `target` column. Multi-class mode keeps
// the original classes, in the order the format defines them.
//
// Every problem of a CSV (missing columns, duplicate ids, unknown labels, ids with path
// separators or "..", bad one-hot rows, missing images) is collected and reported together
// in one Error, one line per problem naming the file and line.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace attnscope::datasets {

enum class Format {
  kAuto,
  kIsic2016,
  kIsic2017,
  kIsic2018,
  kHam10000,
  kIsic2019,
  kIsic2020,
  kGeneric,
  kFolders,
};

/// "isic2016", ... ; format_from_name throws Error for an unknown name.
std::string format_name(Format format);
Format format_from_name(const std::string& name);

enum class LabelMode {
  kBinary,      ///< {benign, malignant}
  kMultiClass,  ///< the format's own classes
};

/// One labelled image.
struct Sample {
  std::string image_id;
  std::string path;                  ///< the image file ("" when read without an image folder)
  int64_t label = 0;                 ///< index into Dataset::class_names
  std::optional<std::string> group;  ///< lesion_id / patient_id: samples that must stay together
  std::optional<std::string> mask_path;  ///< ground-truth lesion mask, when known
};

struct Dataset {
  std::vector<Sample> samples;
  std::vector<std::string> class_names;
  Format format = Format::kAuto;  ///< the format that was read
  std::string source;             ///< the CSV or folder read
  /// Ids dropped because their image was missing (ReadOptions::skip_missing).
  std::vector<std::string> skipped;

  /// Number of samples per class. Shape: (num_classes).
  std::vector<int64_t> class_counts() const;
  std::vector<int64_t> labels() const;
};

struct ReadOptions {
  Format format = Format::kAuto;
  LabelMode mode = LabelMode::kBinary;
  /// Binary mode: count actinic keratosis (AKIEC / AK) as malignant.
  bool ak_malignant = true;
  /// Folder holding the images; "" reads labels only (paths stay empty).
  std::string images_dir;
  /// Drop samples whose image is missing (listed in Dataset::skipped) instead of failing.
  bool skip_missing = false;
};

/// The image extensions looked for, in order of preference (lower case; upper case also matches).
const std::vector<std::string>& image_extensions();

/// Detects the format of a ground-truth CSV from its header and first row.
/// Throws Error(path, ...) when no known layout fits.
Format detect_format(const std::string& csv_path);

/// Reads a dataset: a CSV (any format above) or a folder of class folders.
Dataset read_dataset(const std::string& path, const ReadOptions& options = {});

/// `<folder of csv_path>/images` when that folder exists, else "": where `attnscope synth`
/// and the shared ISIC folders keep their images.
std::string default_images_dir(const std::string& csv_path);

/// Reads class folders: every sub-folder of root is a class (sorted by name; binary mode
/// needs exactly {benign, malignant}), every image file in it a sample (sorted by name).
Dataset read_class_folders(const std::string& root, const ReadOptions& options = {});

/// Throws Error(where, ...) when an id could escape its folder: empty, or containing "..",
/// '/', '\\' or a NUL byte. `where` names the CSV line.
void check_image_id(const std::string& id, const std::string& where);

}  // namespace attnscope::datasets
