#pragma once
// The dataset types every layer uses: one image (Sample), a list of them with its class names
// (Dataset), and how a reader is asked to read (ReadOptions). The readers of the ISIC formats,
// class folders and generic CSVs are in datasets/isic.h.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace attnscope::datasets {

/// The ground-truth layouts a reader understands (datasets/isic.h describes each).
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

/// Sample::label of an image whose class is not known (a folder of images to classify).
constexpr int64_t kUnlabelled = -1;

/// One image, labelled or not.
struct Sample {
  std::string image_id;
  std::string path;                  ///< the image file ("" when read without an image folder)
  int64_t label = kUnlabelled;       ///< index into Dataset::class_names, or kUnlabelled
  std::optional<std::string> group;  ///< lesion_id / patient_id: samples that must stay together
  std::optional<std::string> mask_path;  ///< ground-truth lesion mask, when known

  bool labelled() const { return label != kUnlabelled; }
};

struct Dataset {
  std::vector<Sample> samples;
  std::vector<std::string> class_names;
  Format format = Format::kAuto;  ///< the format that was read
  std::string source;             ///< the CSV or folder read
  /// Ids dropped because their image was missing (ReadOptions::skip_missing).
  std::vector<std::string> skipped;
  /// Ids read without their mask because the mask file named for them was missing
  /// (ReadOptions::skip_missing).
  std::vector<std::string> masks_skipped;
  /// Folder entries that could not be used (symlink loops, dangling symlinks), one line each;
  /// the dataset was read without them.
  std::vector<std::string> warnings;

  /// Number of labelled samples per class. Shape: (num_classes).
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
  /// Drop samples whose image is missing (listed in Dataset::skipped), and read a sample whose
  /// mask file is missing without its mask (Dataset::masks_skipped), instead of failing.
  bool skip_missing = false;
  /// Read the lesion masks a CSV names (the generic layout's mask column). false: samples get
  /// no mask and the column is not looked at, for commands that use none (evaluate).
  bool masks = true;
};

}  // namespace attnscope::datasets
