#pragma once
// The flags every image-data subcommand shares (--data, --images, --format, --skip-missing,
// --multiclass, --ak-benign), so that cache, preprocess stats, train and classify read
// datasets the same way.

#include <filesystem>
#include <iostream>
#include <string>
#include <utility>

#include "attnscope/error.h"
#include "attnscope/printable.h"
#include "cli.h"
#include "datasets/isic.h"

namespace attnscope::cli {

struct DatasetFlags {
  std::string data;
  std::string images;
  std::string format = "auto";
  bool skip_missing = false;
  bool multiclass = false;
  bool ak_benign = false;
  /// Whether the command uses the masks a dataset names (false: they are neither read nor
  /// checked, so a missing mask file fails nothing).
  bool masks = true;

  /// Adds the flags to a subcommand's options (--data optional when `required` is false).
  void add_to(po::options_description& desc, bool required = true) {
    auto* data_value = po::value(&data);
    if (required) data_value->required();
    // clang-format off
    desc.add_options()
        ("data", data_value,
         "ground-truth CSV (any ISIC layout, HAM10000, image_id,label), a folder holding "
         "labels.csv and images/ (as synth writes it), or a folder of class folders")
        ("images", po::value(&images)->default_value(""),
         "folder holding the images; default: the images/ folder next to the CSV")
        ("format", po::value(&format)->default_value("auto"),
         "auto, isic2016, isic2017, isic2018, ham10000, isic2019, isic2020, generic, folders")
        ("skip-missing", po::bool_switch(&skip_missing),
         "drop ids whose image is missing, and read an image whose mask file is missing "
         "without its mask, instead of failing")
        ("multiclass", po::bool_switch(&multiclass),
         "keep the format's own classes instead of benign/malignant")
        ("ak-benign", po::bool_switch(&ak_benign),
         "binary mode: count actinic keratosis (AKIEC/AK) as benign");
    // clang-format on
  }

  /// What --data names: a dataset folder (labels.csv beside images/, as synth writes it) is
  /// its labels.csv unless --format folders asks for class folders; anything else as given.
  std::string resolved() const {
    try {
      if (datasets::format_from_name(format) == datasets::Format::kFolders) return data;
    } catch (const Error&) {  // read() names a bad --format
    }
    const auto csv = datasets::dataset_folder_csv(data);
    if (!csv.empty()) return csv;
    // --images names the images of a CSV: a folder holding labels.csv without images/ beside
    // it, given with --images, is that CSV (it was read as class folders, --images unused).
    // Not when it also holds folders: class folders whose root holds a labels.csv stay class
    // folders, as they were (their labels, not the CSV's).
    std::error_code ec;
    const auto labels = std::filesystem::path(data) / "labels.csv";
    if (images.empty() || !std::filesystem::is_directory(data, ec) ||
        !std::filesystem::is_regular_file(labels, ec))
      return data;
    for (std::filesystem::directory_iterator it(data, ec), end; !ec && it != end;
         it.increment(ec)) {
      std::error_code entry_ec;  // a dangling link in the folder is no folder
      if (it->is_directory(entry_ec)) return data;
    }
    return ec ? data : labels.string();
  }

  /// Reads the dataset; a bad --format is a UsageError.
  datasets::Dataset read(const std::string& usage) const {
    datasets::ReadOptions o;
    try {
      o.format = datasets::format_from_name(format);
    } catch (const Error& e) {
      throw UsageError(e.what(), usage);
    }
    o.mode = multiclass ? datasets::LabelMode::kMultiClass : datasets::LabelMode::kBinary;
    // Each class is its own with --multiclass: --ak-benign would change nothing, unsaid.
    static bool ak_said = false;  // once a process (train reads --data and --val)
    if (multiclass && ak_benign && !std::exchange(ak_said, true))
      std::cerr << "warning: --ak-benign is for benign/malignant labels; with --multiclass "
                   "actinic keratosis keeps its own class\n";
    o.ak_malignant = !ak_benign;
    o.skip_missing = skip_missing;
    o.masks = masks;
    const auto path = resolved();
    o.images_dir = images.empty() ? datasets::default_images_dir(path) : images;
    auto ds = datasets::read_dataset(path, o);
    // Unusable folder entries (symlink loops, dangling links): one line each, the run goes on.
    for (const auto& w : ds.warnings)
      std::cerr << "warning: " << w << "\n";
    // --skip-missing: what it dropped, the first 20 by name (100,000 ids made as many lines).
    constexpr std::size_t kNamed = 20;
    for (std::size_t i = 0; i < ds.skipped.size() && i < kNamed; ++i)
      std::cerr << "warning: " << excerpt(ds.skipped[i], 200) << ": image not found, skipped\n";
    if (ds.skipped.size() > kNamed)
      std::cerr << "warning: ... and " << ds.skipped.size() - kNamed
                << " more images not found, skipped (" << ds.skipped.size() << " in all)\n";
    for (std::size_t i = 0; i < ds.masks_skipped.size() && i < kNamed; ++i)
      std::cerr << "warning: " << excerpt(ds.masks_skipped[i], 200)
                << ": its mask file is missing; the sample has no mask (--skip-missing)\n";
    if (ds.masks_skipped.size() > kNamed)
      std::cerr << "warning: ... and " << ds.masks_skipped.size() - kNamed
                << " more samples without their missing mask file (" << ds.masks_skipped.size()
                << " in all)\n";
    return ds;
  }
};

}  // namespace attnscope::cli
