#pragma once
// Labelled image datasets: the ISIC ground-truth layouts of every year, class folders and a
// generic `image_id,label` CSV, read into one list of samples.
//
// clang-format off
// Formats (detected from the header and the shape of the rows; ReadOptions::format forces one):
//   isic2016   no header, or `img_id,Label`; labels benign/malignant or 0/1 (0.0/1.0)
//   isic2017   `image_id,melanoma,seborrheic_keratosis` (nevus when both are 0)
//   isic2018   `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC` one-hot
//   ham10000   `lesion_id,image_id,dx,...` (group = lesion_id)
//   isic2019   `image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC[,UNK]` one-hot
//   isic2020   `image_name,patient_id,...,benign_malignant,target` (group = patient_id)
//   generic    `image_id,label[,mask][,group|lesion_id|patient_id]` (also what `attnscope synth` writes)
//   folders    <root>/<class name>/<image files>
// clang-format on
// Binary mode maps MEL, BCC, SCC and AKIEC/AK to malignant and everything else to benign
// (classes {benign, malignant}); ISIC 2020 uses its `target` column. Multi-class mode keeps
// the original classes, in the order the format defines them.
//
// Every problem of a CSV (missing columns, duplicate ids, unknown labels, ids with path
// separators or "..", bad one-hot rows, missing images) is collected and reported together
// in one Error, one line per problem naming the file and line.

#include <filesystem>
#include <string>
#include <vector>

#include "datasets/dataset.h"

namespace attnscope::datasets {

/// The image extensions looked for, in order of preference (lower case; upper case also matches).
const std::vector<std::string>& image_extensions();

/// The position of a file's extension in image_extensions() (any case), or -1 where it is none
/// of them (also for a hidden file named only `.jpg`, which has no extension).
int image_extension_rank(const std::filesystem::path& file);

/// Detects the format of a ground-truth CSV from its header and first row.
/// Throws Error(path, ...) when no known layout fits.
Format detect_format(const std::string& csv_path);

/// Reads a dataset: a CSV (any format above) or a folder of class folders.
Dataset read_dataset(const std::string& path, const ReadOptions& options = {});

/// `<folder of csv_path>/images` when that folder exists, else "": where `attnscope synth`
/// and the shared ISIC folders keep their images.
std::string default_images_dir(const std::string& csv_path);

/// `<dir>/labels.csv` when `dir` is a dataset folder as `attnscope synth` writes it and the
/// shared ISIC folders are laid out (a regular file labels.csv beside an images/ folder), else
/// "". The command line's --data reads such a folder as that CSV unless --format folders asks
/// for class folders.
std::string dataset_folder_csv(const std::string& dir);

/// Reads class folders: every sub-folder of root is a class (sorted by name; binary mode
/// needs exactly {benign, malignant}), every image file in it a sample (sorted by name).
Dataset read_class_folders(const std::string& root, const ReadOptions& options = {});

/// Throws Error(where, ...) when an id could escape its folder (empty, or containing "..",
/// '/', '\\' or a NUL byte), holds a control character, or is not valid UTF-8. `where` names
/// the CSV line.
void check_image_id(const std::string& id, const std::string& where);

}  // namespace attnscope::datasets
