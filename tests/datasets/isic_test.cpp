// ISIC readers: every layout, binary and multi-class labels, image lookup, and bad CSVs whose
// problems are all reported at once. Real fixtures are counted independently (Python's csv
// module, run at test time).

#include <sys/stat.h>
#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "attnscope/error.h"
#include "datasets/isic.h"
#include "test_support.h"

namespace attnscope::datasets {
namespace {

namespace fs = std::filesystem;

std::string write(const test::TempDir& dir, const std::string& name, const std::string& text) {
  std::ofstream(dir / name) << text;
  return dir / name;
}

using test::error_of;

std::vector<std::string> ids(const Dataset& ds) {
  std::vector<std::string> out;
  for (const auto& s : ds.samples)
    out.push_back(s.image_id);
  return out;
}

ReadOptions multi() {
  ReadOptions o;
  o.mode = LabelMode::kMultiClass;
  return o;
}

TEST(IsicReaders, DetectsEveryLayoutFromItsHeader) {
  test::TempDir dir;
  const std::map<std::string, Format> cases{
      {"ISIC_1,benign\nISIC_2,malignant\n", Format::kIsic2016},
      {"ISIC_1,0.0\nISIC_2,1.0\n", Format::kIsic2016},
      {"img_id,Label\nISIC_1,benign\n", Format::kIsic2016},
      {"image_id,melanoma,seborrheic_keratosis\nISIC_1,0.0,1.0\n", Format::kIsic2017},
      {"image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0,1,0,0,0,0,0\n", Format::kIsic2018},
      {"lesion_id,image_id,dx,dx_type\nHAM_1,ISIC_1,nv,histo\n", Format::kHam10000},
      {"image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\nISIC_1,0,0,0,0,0,0,0,1,0\n", Format::kIsic2019},
      {"image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_"
       "malignant,target\nISIC_1,IP_1,male,45,torso,nevus,benign,0\n",
       Format::kIsic2020},
      {"image_id,label,extra\nISIC_1,benign,x\n", Format::kGeneric}};
  int i = 0;
  for (const auto& [text, format] : cases) {
    const auto path = write(dir, "gt" + std::to_string(i++) + ".csv", text);
    EXPECT_EQ(detect_format(path), format) << text;
  }
  EXPECT_EQ(detect_format(dir.path().string()), Format::kFolders);
  const auto msg = error_of([&] { detect_format(write(dir, "odd.csv", "foo,bar,baz\n1,2,3\n")); });
  EXPECT_NE(msg.find("unrecognised"), std::string::npos) << msg;
  EXPECT_NE(msg.find("foo,bar,baz"), std::string::npos) << msg;
}

TEST(IsicReaders, Isic2018OneHotInBothModes) {
  test::TempDir dir;
  const auto path = write(dir, "gt.csv",
                          "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
                          "a,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
                          "b,0.0,1.0,0.0,0.0,0.0,0.0,0.0\n"
                          "c,0.0,0.0,1.0,0.0,0.0,0.0,0.0\n"
                          "d,0.0,0.0,0.0,1.0,0.0,0.0,0.0\n"
                          "e,0.0,0.0,0.0,0.0,0.0,0.0,1.0\n");
  const auto bin = read_dataset(path);
  EXPECT_EQ(bin.class_names, (std::vector<std::string>{"benign", "malignant"}));
  EXPECT_EQ(bin.labels(), (std::vector<int64_t>{1, 0, 1, 1, 0}));
  ReadOptions ak_benign;
  ak_benign.ak_malignant = false;
  EXPECT_EQ(read_dataset(path, ak_benign).labels(), (std::vector<int64_t>{1, 0, 1, 0, 0}));
  const auto m = read_dataset(path, multi());
  EXPECT_EQ(m.class_names,
            (std::vector<std::string>{"MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"}));
  EXPECT_EQ(m.labels(), (std::vector<int64_t>{0, 1, 2, 3, 6}));
}

TEST(IsicReaders, Isic2019SccAndAkAreMalignant) {
  test::TempDir dir;
  const auto path = write(dir, "gt.csv",
                          "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n"
                          "a,0,0,0,0,0,0,0,1,0\n"
                          "b,0,0,0,1,0,0,0,0,0\n"
                          "c,0,0,0,0,1,0,0,0,0\n");
  EXPECT_EQ(read_dataset(path).labels(), (std::vector<int64_t>{1, 1, 0}));
  EXPECT_EQ(read_dataset(path, multi()).labels(), (std::vector<int64_t>{7, 3, 4}));
}

TEST(IsicReaders, Isic2017NevusWhenBothColumnsAreZero) {
  test::TempDir dir;
  const auto path = write(dir, "gt.csv",
                          "image_id,melanoma,seborrheic_keratosis\n"
                          "a,1.0,0.0\nb,0.0,1.0\nc,0.0,0.0\n");
  EXPECT_EQ(read_dataset(path).labels(), (std::vector<int64_t>{1, 0, 0}));
  const auto m = read_dataset(path, multi());
  EXPECT_EQ(m.class_names, (std::vector<std::string>{"melanoma", "seborrheic_keratosis", "nevus"}));
  EXPECT_EQ(m.labels(), (std::vector<int64_t>{0, 1, 2}));
}

TEST(IsicReaders, Isic2020UsesTargetAndGroupsByPatient) {
  test::TempDir dir;
  const auto path = write(dir, "gt.csv",
                          "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,"
                          "diagnosis,benign_malignant,target\n"
                          "a,IP_1,male,45,torso,nevus,benign,0\n"
                          "b,IP_1,male,45,torso,melanoma,malignant,1\n"
                          "c,IP_2,female,30,head,unknown,benign,0\n");
  const auto ds = read_dataset(path);
  EXPECT_EQ(ds.labels(), (std::vector<int64_t>{0, 1, 0}));
  EXPECT_EQ(ds.samples[1].group, std::optional<std::string>("IP_1"));
  const auto m = read_dataset(path, multi());
  EXPECT_EQ(m.class_names, (std::vector<std::string>{"melanoma", "nevus", "unknown"}));
  EXPECT_EQ(m.labels(), (std::vector<int64_t>{1, 0, 2}));
}

TEST(IsicReaders, GenericCsvWithMasksAndGroups) {
  test::TempDir dir;
  fs::create_directories(dir.path() / "masks");
  std::ofstream(dir / "masks/a.png") << "x";
  const auto path = write(dir, "labels.csv",
                          "image_id,label,mask,lesion_id\n"
                          "a,malignant,masks/a.png,L1\n"
                          "b,benign,,L1\n");
  const auto ds = read_dataset(path);
  ASSERT_EQ(ds.samples.size(), 2u);
  EXPECT_EQ(ds.samples[0].mask_path, std::optional<std::string>(dir / "masks/a.png"));
  EXPECT_FALSE(ds.samples[1].mask_path.has_value());
  EXPECT_EQ(ds.samples[1].group, std::optional<std::string>("L1"));
  EXPECT_EQ(ds.labels(), (std::vector<int64_t>{1, 0}));
}

// A mask file named but missing is a problem of its line naming --skip-missing; with it the
// image is read without its mask and listed (before, nothing could read such a dataset, not even
// a command that never uses masks).
TEST(IsicReaders, AMissingMaskFileIsAProblemOrWithSkipMissingTheImageWithoutItsMask) {
  test::TempDir dir;
  fs::create_directories(dir.path() / "masks");
  std::ofstream(dir / "masks/a.png") << "x";
  const auto path = write(dir, "labels.csv",
                          "image_id,label,mask\n"
                          "a,malignant,masks/a.png\n"
                          "b,benign,masks/b.png\n"
                          "c,benign,\n"
                          "d,benign,masks/d.png\n");
  fs::create_directories(dir.path() / "img");
  for (const auto& name : {"a.png", "b.png", "c.png"})  // d has neither image nor mask
    std::ofstream(dir.path() / "img" / name) << "x";
  const auto message = test::error_of([&] { read_dataset(path); });
  EXPECT_NE(message.find(":3: mask file not found: " + (dir / "masks/b.png") +
                         " (--skip-missing reads the image without it)"),
            std::string::npos)
      << message;
  EXPECT_EQ(message.find(":2:"), std::string::npos) << message;
  ReadOptions o;
  o.skip_missing = true;
  o.images_dir = (dir.path() / "img").string();
  const auto ds = read_dataset(path, o);
  EXPECT_EQ(ids(ds), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ds.samples[0].mask_path, std::optional<std::string>(dir / "masks/a.png"));
  EXPECT_FALSE(ds.samples[1].mask_path.has_value());
  // d is dropped for its image, not also listed as read without its mask.
  EXPECT_EQ(ds.masks_skipped, (std::vector<std::string>{"b"}));
  EXPECT_EQ(ds.skipped, (std::vector<std::string>{"d"}));
}

// Mask paths are confined to the dataset's folder, as ids are (issue 14, defect 11).
TEST(IsicReaders, MaskPathsOutsideTheDatasetFolderAreRejected) {
  test::TempDir dir;
  fs::create_directories(dir.path() / "data/masks");
  std::ofstream(dir / "outside.png") << "x";
  std::ofstream(dir / "data/masks/a.png") << "x";
  const auto path = write(dir, "data/labels.csv",
                          "image_id,label,mask\n"
                          "a,malignant,masks/a.png\n"
                          "b,benign,../outside.png\n"
                          "c,benign," +
                              (dir / "outside.png") + "\n");
  const auto message = test::error_of([&] { read_dataset(path); });
  EXPECT_NE(message.find(":3: mask path '../outside.png' leaves the dataset folder"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find(":4: mask path '" + (dir / "outside.png") + "' leaves the dataset folder"),
            std::string::npos)
      << message;
  EXPECT_EQ(message.find(":2:"), std::string::npos) << message;
}

// Problems quote fields of the file: a 1 MB label with a tab in it is cut and escaped, and of a
// thousand bad rows the count and the first 50 are given (the message was the file's size).
TEST(IsicReaders, ProblemsQuoteFieldsCutAndEscapedAndListTheFirstFifty) {
  test::TempDir dir;
  std::string csv = "image_id,label\n";
  csv += "big,ab\tc" + std::string(1000000, 'x') + "\n";  // line 2
  for (int i = 0; i < 999; ++i)
    csv += "id_" + std::to_string(i) + ",purple\n";  // lines 3..1001
  const auto path = write(dir, "huge.csv", csv);
  const auto msg = error_of([&] { read_dataset(path); });
  EXPECT_NE(msg.find("1000 problems"), std::string::npos) << msg.substr(0, 2000);
  EXPECT_NE(msg.find(path + ":2: unknown label 'ab\\tcxxx"), std::string::npos)
      << msg.substr(0, 2000);
  EXPECT_NE(msg.find("... (1000004 bytes)"), std::string::npos) << msg.substr(0, 2000);
  EXPECT_EQ(msg.find('\t'), std::string::npos);
  EXPECT_NE(msg.find(path + ":51: unknown label 'purple'"), std::string::npos);
  EXPECT_EQ(msg.find(path + ":52: "), std::string::npos);
  EXPECT_NE(msg.find("... and 950 more"), std::string::npos);
  EXPECT_LT(msg.size(), 50u * 400u);
}

// A device or a pipe is no CSV file: /dev/zero filled the memory, a FIFO blocked for ever.
TEST(IsicReaders, ADeviceOrPipeIsNoCsvFile) {
  test::TempDir dir;
  ASSERT_EQ(::mkfifo((dir / "pipe.csv").c_str(), 0600), 0);
  for (const std::string& path : {std::string("/dev/zero"), dir / "pipe.csv"}) {
    const auto msg = error_of([&] { read_dataset(path); });
    EXPECT_NE(msg.find("is not a regular file"), std::string::npos) << path << ": " << msg;
  }
}

// An image cache, a checkpoint or an image given as the ground truth is named as such (its raw
// header bytes were quoted as a CSV header).
TEST(IsicReaders, ABinaryFileIsNoCsvAndIsNamedAsWhatItIs) {
  test::TempDir dir;
  std::ofstream(dir / "c.h5", std::ios::binary) << std::string("\x89HDF\r\n\x1a\n\0\0\0\0", 12);
  std::ofstream(dir / "i.png", std::ios::binary)
      << std::string("\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 16);
  EXPECT_EQ(error_of([&] { read_dataset(dir / "c.h5"); }),
            dir / "c.h5" +
                ": is an HDF5 file (an attnscope image cache or checkpoint?), not a ground-truth "
                "CSV: give a CSV or a folder of class folders (train and evaluate also take an "
                "image cache)");
  std::ofstream(dir / "j.jpg", std::ios::binary) << std::string("\xFF\xD8\xFF\xE0\0\x10JFIF\0", 11);
  EXPECT_EQ(error_of([&] { read_dataset(dir / "j.jpg"); }),
            dir / "j.jpg" +
                ": is not a text file (an image or another binary file?), not a "
                "ground-truth CSV");
  EXPECT_EQ(error_of([&] { read_dataset(dir / "i.png"); }),
            dir / "i.png" +
                ": is not a text file (an image or another binary file?), not a ground-truth CSV");
}

TEST(IsicReaders, ReportsEveryProblemOfACsvAtOnce) {
  test::TempDir dir;
  const auto path = write(dir, "bad.csv",
                          "image_id,label\n"
                          "ok_1,benign\n"
                          "ok_1,malignant\n"        // line 3: duplicate
                          "x_2,purple\n"            // line 4: unknown label
                          "../etc/passwd,benign\n"  // line 5: traversal
                          "sub/x,benign\n"          // line 6: separator
                          ",benign\n");             // line 7: empty id
  const auto msg = error_of([&] { read_dataset(path); });
  EXPECT_NE(msg.find("5 problems"), std::string::npos) << msg;
  for (const auto& expected :
       {":3: duplicate image id 'ok_1' (first on line 2)", ":4: unknown label 'purple'",
        ":5: image id '../etc/passwd'", ":6: image id 'sub/x'", ":7: empty image id"})
    EXPECT_NE(msg.find(path + expected), std::string::npos) << expected << "\n" << msg;

  const auto one_hot = write(dir, "hot.csv",
                             "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n"
                             "a,1,1,0,0,0,0,0\n"
                             "b,0,0,0,0,0,0,0\n"
                             "c,0,yes,0,0,0,0,0\n");
  const auto hot = error_of([&] { read_dataset(one_hot); });
  EXPECT_NE(hot.find("3 problems"), std::string::npos) << hot;
  EXPECT_NE(hot.find(":2: expected exactly one class column set to 1, got 2"), std::string::npos);
  EXPECT_NE(hot.find(":4: column NV: expected 0 or 1, got 'yes'"), std::string::npos) << hot;

  const auto missing = write(dir, "missing.csv", "image,MEL,NV,BCC,AKIEC\na,1,0,0,0\n");
  ReadOptions forced;
  forced.format = Format::kIsic2018;
  const auto miss = error_of([&] { read_dataset(missing, forced); });
  EXPECT_NE(miss.find("missing column(s) 'BKL', 'DF', 'VASC'"), std::string::npos) << miss;
}

TEST(IsicReaders, FindsImagesWithAnyExtensionAndListsAllMissing) {
  test::TempDir dir;
  fs::create_directories(dir.path() / "img");
  for (const auto& name : {"a.jpg", "b.PNG", "c.jpeg", "c.tif", "notes.txt"})
    std::ofstream(dir.path() / "img" / name) << "x";
  const auto path = write(dir, "labels.csv",
                          "image_id,label\na,benign\nb,benign\nc,malignant\nd,benign\ne,benign\n");
  ReadOptions o;
  o.images_dir = (dir.path() / "img").string();
  const auto msg = error_of([&] { read_dataset(path, o); });
  EXPECT_NE(msg.find("2 image(s)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\n  d"), std::string::npos) << msg;
  EXPECT_NE(msg.find("\n  e"), std::string::npos) << msg;
  o.skip_missing = true;
  const auto ds = read_dataset(path, o);
  EXPECT_EQ(ids(ds), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ds.skipped, (std::vector<std::string>{"d", "e"}));
  EXPECT_EQ(fs::path(ds.samples[1].path).filename(), "b.PNG");
  EXPECT_EQ(fs::path(ds.samples[2].path).filename(), "c.jpeg");  // .jpeg before .tif
}

TEST(IsicReaders, ClassFolders) {
  test::TempDir dir;
  for (const auto& f : {"benign/x1.jpg", "benign/x2.png", "malignant/y1.jpg", "malignant/z.txt"}) {
    fs::create_directories((dir.path() / f).parent_path());
    std::ofstream(dir.path() / f) << "x";
  }
  const auto ds = read_dataset(dir.path().string());
  EXPECT_EQ(ds.format, Format::kFolders);
  EXPECT_EQ(ids(ds), (std::vector<std::string>{"x1", "x2", "y1"}));
  EXPECT_EQ(ds.labels(), (std::vector<int64_t>{0, 0, 1}));
  EXPECT_EQ(fs::path(ds.samples[2].path), dir.path() / "malignant/y1.jpg");
  // Hidden folders, files and links (a notebook's checkpoints, macOS's "._y1.jpg", a dangling
  // ".last" at the root or among the images) are neither classes nor images; the same dataset,
  // without a warning.
  for (const auto& f : {".ipynb_checkpoints/a.jpg", "malignant/._y1.jpg", "benign/.x3.jpg"}) {
    fs::create_directories((dir.path() / f).parent_path());
    std::ofstream(dir.path() / f) << "x";
  }
  fs::create_symlink("nowhere", dir.path() / ".last");
  fs::create_symlink("nowhere", dir.path() / "benign/.last.jpg");
  const auto hidden = read_dataset(dir.path().string());
  EXPECT_EQ(ids(hidden), ids(ds));
  EXPECT_EQ(hidden.class_names, ds.class_names);
  EXPECT_TRUE(hidden.warnings.empty()) << hidden.warnings.front();
  fs::create_directories(dir.path() / "freckle");
  EXPECT_NE(error_of([&] { read_dataset(dir.path().string()); }).find("'freckle'"),
            std::string::npos);
  const auto m = read_dataset(dir.path().string(), multi());
  EXPECT_EQ(m.class_names, (std::vector<std::string>{"benign", "freckle", "malignant"}));
}

// A file whose name no image id may have (a control character, "..") is one warning naming it,
// and the others are read: it refused the whole dataset.
TEST(IsicReaders, ClassFolderFileWithABadNameIsAWarning) {
  test::TempDir dir;
  for (const auto& f :
       {"benign/x1.jpg", "benign/bad\tname.jpg", "malignant/y1.jpg", "malignant/a..b.png"}) {
    fs::create_directories((dir.path() / f).parent_path());
    std::ofstream(dir.path() / f) << "x";
  }
  const auto ds = read_dataset(dir.path().string());
  EXPECT_EQ(ids(ds), (std::vector<std::string>{"x1", "y1"}));
  std::string all;
  for (const auto& w : ds.warnings)
    all += w + "\n";
  ASSERT_EQ(ds.warnings.size(), 2u) << all;
  EXPECT_NE(all.find("contains a control character (rejected), skipped"), std::string::npos) << all;
  EXPECT_NE(all.find("malignant/a..b.png: image id 'a..b' contains a path separator or '..' "
                     "(rejected), skipped"),
            std::string::npos)
      << all;
}

// A row longer than its header read its first fields without a word (`a,nevus, benign` gave the
// label `nevus`); empty fields past the header's (a spreadsheet's trailing comma) are no value.
TEST(IsicReaders, ARowLongerThanItsHeaderIsAProblemOfItsLine) {
  test::TempDir dir;
  const auto path = write(dir, "long.csv",
                          "image_id,label\na,benign,\nb,nevus, benign\n\"c\",malignant, ,\"\"\n"
                          "d,benign,\"\"\"x\"\n");
  const auto msg = error_of([&] { read_dataset(path); });
  EXPECT_NE(msg.find("2 problems"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path + ":3: 3 fields where the header names 2: a value with an unquoted "
                            "comma? (put it in double quotes)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(path + ":5: 3 fields where the header names 2"), std::string::npos) << msg;
  // Listed in line order with the format's own problems (an unknown label on line 4).
  const auto mixed = write(dir, "mixed.csv", "image_id,label\na,benign,x\nb,purple\nc,benign,y\n");
  const auto order = error_of([&] { read_dataset(mixed, {}); });
  const auto at2 = order.find(mixed + ":2: "), at3 = order.find(mixed + ":3: "),
             at4 = order.find(mixed + ":4: ");
  ASSERT_NE(at3, std::string::npos) << order;
  EXPECT_LT(at2, at3) << order;
  EXPECT_LT(at3, at4) << order;
  // The headerless ISIC 2016 test ground truth has two columns.
  const auto isbi = write(dir, "isbi.csv", "ISIC_0000000,0.0\nISIC_0000001,1.0,x\n");
  ReadOptions isic2016;
  isic2016.format = Format::kIsic2016;
  EXPECT_NE(error_of([&] {
              read_dataset(isbi, isic2016);
            }).find(isbi + ":2: 3 fields where the format has 2: a value with an unquoted comma?"),
            std::string::npos);
  // Line 4's extra fields are blank or an empty quoted one: no value.
  const auto ok = write(dir, "ok.csv", "image_id,label\na,benign,\nc,malignant, , \n");
  EXPECT_EQ(read_dataset(ok).samples.size(), 2u);
  // A header's own trailing commas name no column: a value under them is a problem too, blanks
  // are not.
  const auto trailing =
      write(dir, "trailing.csv", "image_id,label,,\na,benign,,\nb,benign, ,x\nc,nevus,y\n");
  const auto unnamed = error_of([&] { read_dataset(trailing); });
  EXPECT_NE(unnamed.find("2 problems"), std::string::npos) << unnamed;
  EXPECT_NE(unnamed.find(trailing + ":3: 4 fields where the header names 2"), std::string::npos)
      << unnamed;
  EXPECT_NE(unnamed.find(trailing + ":4: 3 fields where the header names 2"), std::string::npos)
      << unnamed;
  const auto blank = write(dir, "blank.csv", "image_id,label,\na,benign,\nb,malignant, \n");
  EXPECT_EQ(read_dataset(blank).samples.size(), 2u);
}

// Ids are stored as UTF-8 strings (results.h5, the image cache): a Latin-1 id is a problem of
// its line, and a class folder's file under such a name a warning; the messages escape the byte.
TEST(IsicReaders, AnIdThatIsNotUtf8IsRefusedAndEscapedInTheMessage) {
  test::TempDir dir;
  const auto path =
      write(dir, "latin1.csv", "image_id,label\ncaf\xe9,benign\ncaf\xc3\xa9,benign\n");
  const auto msg = error_of([&] { read_dataset(path); });
  EXPECT_NE(msg.find(path + ":2: image id 'caf\\xe9' is not valid UTF-8 (byte 3; saved in another "
                            "encoding than UTF-8?) (rejected)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("1 problem"), std::string::npos) << msg;
  // Labels and groups are stored as text too (class names in checkpoints and JSON, where the
  // JSON library failed after the training; groups in split's CSV and the cache).
  const auto other =
      write(dir, "other.csv", "image_id,label,group\na,n\xe6vus,g1\nb,nevus,les\xe9\nc,nevus,g2\n");
  ReadOptions multi;
  multi.mode = LabelMode::kMultiClass;
  const auto texts = error_of([&] { read_dataset(other, multi); });
  EXPECT_NE(texts.find(other + ":2: label 'n\\xe6vus' is not valid UTF-8 (rejected)"),
            std::string::npos)
      << texts;
  EXPECT_NE(texts.find(other + ":3: group 'les\\xe9' is not valid UTF-8 (rejected)"),
            std::string::npos)
      << texts;
  EXPECT_NE(texts.find("2 problems"), std::string::npos) << texts;
  fs::create_directories(dir.path() / "folders" / "n\xe6vus");
  std::ofstream(dir.path() / "folders" / "n\xe6vus" / "z.jpg") << "x";
  for (const auto& f : {"benign/x1.jpg", "benign/caf\xe9.jpg", "malignant/\xc3\xa9t\xc3\xa9.jpg"}) {
    fs::create_directories((dir.path() / "folders" / f).parent_path());
    std::ofstream(dir.path() / "folders" / f) << "x";
  }
  const auto ds = read_dataset((dir.path() / "folders").string());
  EXPECT_EQ(ids(ds), (std::vector<std::string>{"x1", "\xc3\xa9t\xc3\xa9"}));
  std::string all;
  for (const auto& w : ds.warnings)
    all += w + "\n";
  ASSERT_EQ(ds.warnings.size(), 2u) << all;
  EXPECT_NE(all.find("image id 'caf\\xe9' is not valid UTF-8"), std::string::npos) << all;
  EXPECT_NE(all.find("/folders/n\\xe6vus: a class folder whose name is not valid UTF-8, skipped"),
            std::string::npos)
      << all;
}

// A CSV label becomes a class name (checkpoints, predictions.csv's columns, terminal lines): one
// holding a control character (a quoted tab or escape) is a problem of its line, as an id is.
TEST(IsicReaders, LabelsWithControlCharactersAreProblemsOfTheirLines) {
  test::TempDir dir;
  const auto path = write(dir, "gt.csv",
                          "image_id,label\n"
                          "a,nevus\n"
                          "b,\"mel\x1b[31m\"\n"
                          "c,\"ne\tvus\"\n"
                          "d,\"  \"\n"
                          "e,\"mal\xC2\x85\"\n"
                          "f,\"mélanome\"\n"
                          "g,nevus\xC2\xA0\n"
                          "h,\"\xC2\xA0\xE2\x80\x8B \xEF\xBB\xBF\"\n"
                          "i,\"mel\xE2\x80\xAEsuben\"\n"
                          "j,\"nevus\xE2\x80\xA8x\"\n"
                          "k,\"\xD9\x85\xE2\x80\x8C\xD9\x85\"\n"
                          "l,\"nevus\xC2\xA0\"\n"
                          "m,\" nevus\"\n");
  const auto msg = error_of([&] { read_dataset(path, multi()); });
  EXPECT_NE(msg.find(path + ":3: label 'mel\\x1b[31m' contains a control character (rejected)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(path + ":4: label 'ne\\tvus' contains a control character (rejected)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(path + ":5: label '  ' is blank (rejected)"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path + ":6: label 'mal\\u0085' contains a control character"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find(":7:"), std::string::npos) << msg;  // accents are letters
  // Unquoted, a no-break space at the edge is trimmed as a space is (a spreadsheet's "nevus "
  // is nevus); quoted, an edge space is no part of a class name (it prints as the name
  // without). Spaces that print as nothing are blank; a direction override or a line
  // separator is a control (it reorders or breaks the line a terminal shows). A zero-width
  // non-joiner inside a Persian word is kept.
  EXPECT_EQ(msg.find(":8:"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path + ":9: label '\\u00a0\\u200b \\ufeff' is blank (rejected)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(path + ":10: label 'mel\\u202esuben' contains a control character"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(path + ":11: label 'nevus\\u2028x' contains a control character"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find(":12:"), std::string::npos) << msg;
  EXPECT_NE(msg.find(path + ":13: label 'nevus\\u00a0' begins or ends with a space (rejected)"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find(path + ":14: label ' nevus' begins or ends with a space (rejected)"),
            std::string::npos)
      << msg;
}

// A class folder whose name holds a control character is one warning and no class (it went
// into class_names and every summary line, terminal escapes included); an id given by two
// files names both files (a folder dataset has no lines: "first on line 0" said nothing).
TEST(IsicReaders, ClassFolderNamesAreCheckedAndDuplicateIdsNameBothFiles) {
  test::TempDir dir;
  const std::string escape = "x\x1b[2Jy";
  for (const auto& f :
       {std::string("benign/a.jpg"), std::string("malignant/b.jpg"), escape + "/c.jpg"}) {
    fs::create_directories((dir.path() / f).parent_path());
    std::ofstream(dir.path() / f) << "x";
  }
  const auto ds = read_dataset(dir.path().string(), multi());
  EXPECT_EQ(ds.class_names, (std::vector<std::string>{"benign", "malignant"}));
  EXPECT_EQ(ids(ds), (std::vector<std::string>{"a", "b"}));
  ASSERT_EQ(ds.warnings.size(), 1u);
  EXPECT_EQ(ds.warnings[0], (dir.path() / "x\\x1b[2Jy").string() +
                                ": a class folder whose name contains a control character, "
                                "skipped");
  // A folder named with spaces only names no class either.
  fs::create_directories(dir.path() / "  ");
  std::ofstream(dir.path() / "  " / "d.jpg") << "x";
  const auto blank = read_dataset(dir.path().string(), multi());
  EXPECT_EQ(blank.class_names, (std::vector<std::string>{"benign", "malignant"}));
  ASSERT_EQ(blank.warnings.size(), 2u);
  const auto said = (dir.path() / "  ").string() + ": a class folder whose name is blank, skipped";
  EXPECT_NE(std::find(blank.warnings.begin(), blank.warnings.end(), said), blank.warnings.end())
      << blank.warnings[0] << "\n"
      << blank.warnings[1];
  fs::remove_all(dir.path() / "  ");
  // Nor one whose name ends with a no-break space: it would print as "benign".
  fs::create_directories(dir.path() / "benign\xC2\xA0");
  std::ofstream(dir.path() / "benign\xC2\xA0" / "e.jpg") << "x";
  const auto nbsp = read_dataset(dir.path().string(), multi());
  EXPECT_EQ(nbsp.class_names, (std::vector<std::string>{"benign", "malignant"}));
  const auto nbsp_said = (dir.path() / "benign\\u00a0").string() +
                         ": a class folder whose name begins or ends with a space (it would print "
                         "as another), skipped";
  EXPECT_NE(std::find(nbsp.warnings.begin(), nbsp.warnings.end(), nbsp_said), nbsp.warnings.end())
      << nbsp.warnings.size();
  fs::remove_all(dir.path() / "benign\xC2\xA0");
  std::ofstream(dir.path() / "malignant/a.png") << "x";
  const auto msg = error_of([&] { read_dataset(dir.path().string(), multi()); });
  EXPECT_NE(msg.find((dir.path() / "malignant/a.png").string() + ": duplicate image id 'a' (also " +
                     (dir.path() / "benign/a.jpg").string() + ")"),
            std::string::npos)
      << msg;
  EXPECT_EQ(msg.find("line 0"), std::string::npos) << msg;
}

// An image the folder's listing passed over (a FIFO, a dangling link under the image's name)
// is said in the "not found" error itself: the warnings that explained it were never printed,
// since the error ends the command first.
TEST(IsicReaders, MissingImagesNameWhatTheListingPassedOver) {
  test::TempDir dir;
  fs::create_directories(dir.path() / "img");
  std::ofstream(dir.path() / "img/a.jpg") << "x";
  ASSERT_EQ(::mkfifo((dir.path() / "img/b.png").c_str(), 0600), 0);
  fs::create_symlink("gone.png", dir.path() / "img/c.png");
  fs::create_directories(dir.path() / "img/d.jpg");  // a folder under an image's name
  fs::create_directories(dir.path() / "img/sub");    // an ordinary folder: not an entry to name
  const auto path =
      write(dir, "labels.csv", "image_id,label\na,benign\nb,benign\nc,malignant\nd,benign\n");
  ReadOptions o;
  o.images_dir = (dir.path() / "img").string();
  const auto msg = error_of([&] { read_dataset(path, o); });
  EXPECT_NE(msg.find("3 image(s) named in"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the folder's listing passed over 3 entries:"), std::string::npos) << msg;
  EXPECT_NE(
      msg.find((dir.path() / "img/d.jpg").string() + ": a folder, not an image file, skipped"),
      std::string::npos)
      << msg;
  EXPECT_EQ(msg.find("img/sub"), std::string::npos) << msg;
  // --images naming a file (the CSV itself) is said as such, not as a folder not found.
  o.images_dir = path;
  EXPECT_NE(error_of([&] {
              read_dataset(path, o);
            }).find(path + ": is not a folder (--images names the folder of the images)"),
            std::string::npos);
  EXPECT_NE(msg.find((dir.path() / "img/b.png").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir.path() / "img/c.png").string()), std::string::npos) << msg;
}

TEST(IsicReaders, ADatasetFolderIsItsLabelsCsvBesideAnImagesFolder) {
  test::TempDir dir;
  const auto d = dir.path() / "synth";
  fs::create_directories(d / "images");
  EXPECT_EQ(dataset_folder_csv(d.string()), "");  // no labels.csv yet
  const auto csv = write(dir, "synth/labels.csv", "image_id,label\n");
  EXPECT_EQ(dataset_folder_csv(d.string()), csv);
  EXPECT_EQ(dataset_folder_csv(csv), "");  // a file is not a folder
  // Class folders with a labels.csv but no images/ folder stay class folders; a labels.csv
  // that is a folder is not a CSV.
  fs::create_directories(dir.path() / "classes/benign");
  write(dir, "classes/labels.csv", "image_id,label\n");
  EXPECT_EQ(dataset_folder_csv((dir.path() / "classes").string()), "");
  fs::create_directories(dir.path() / "odd/images");
  fs::create_directories(dir.path() / "odd/labels.csv");
  EXPECT_EQ(dataset_folder_csv((dir.path() / "odd").string()), "");
  EXPECT_EQ(dataset_folder_csv((dir.path() / "none").string()), "");
}

TEST(IsicReaders, FormatNamesRoundTrip) {
  for (auto f : {Format::kIsic2016, Format::kHam10000, Format::kGeneric, Format::kFolders})
    EXPECT_EQ(format_from_name(format_name(f)), f);
  EXPECT_THROW(format_from_name("isic1999"), Error);
}

// Counts of a CSV column's values by Python's csv module: an independent reader.
std::map<std::string, int64_t> python_counts(const std::string& path, int column, bool header) {
  const auto r = test::run_process(
      test::python() + " -c \"import csv, collections; rows = list(csv.reader(open('" + path +
      "')))" + (header ? "[1:]" : "") + "; c = collections.Counter(r[" + std::to_string(column) +
      "] for r in rows if r); print('\\n'.join(f'{k} {v}' for k, v in sorted(c.items())))\"");
  EXPECT_EQ(r.status, 0) << r.output;
  std::map<std::string, int64_t> out;
  std::istringstream in(r.output);
  std::string key;
  int64_t n = 0;
  while (in >> key >> n)
    out[key] = n;
  return out;
}

TEST(DataIsicReaders, Isbi2016TrainingAndTestGroundTruth) {
  ATTNSCOPE_REQUIRE_DATA();
  const auto dir = test::data_dir() / "isic-formats";
  const auto train = (dir / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv").string();
  const auto test_gt = (dir / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").string();
  EXPECT_EQ(detect_format(train), Format::kIsic2016);
  EXPECT_EQ(detect_format(test_gt), Format::kIsic2016);
  const auto a = read_dataset(train);
  const auto ca = python_counts(train, 1, true);
  EXPECT_EQ(a.class_counts(), (std::vector<int64_t>{ca.at("benign"), ca.at("malignant")}));
  const auto b = read_dataset(test_gt);
  const auto cb = python_counts(test_gt, 1, false);
  EXPECT_EQ(b.class_counts(), (std::vector<int64_t>{cb.at("0.0"), cb.at("1.0")}));
  EXPECT_EQ(b.samples.front().image_id, "ISIC_0000003");
}

TEST(DataIsicReaders, Ham10000GroupsByLesion) {
  ATTNSCOPE_REQUIRE_DATA();
  const auto path = (test::data_dir() / "isic-formats" / "HAM10000_metadata.csv").string();
  EXPECT_EQ(detect_format(path), Format::kHam10000);
  const auto m = read_dataset(path, multi());
  const auto counts = python_counts(path, 2, true);
  ASSERT_EQ(m.class_names.size(), 7u);
  for (std::size_t c = 0; c < 7; ++c) {
    std::string dx = m.class_names[c];
    std::transform(dx.begin(), dx.end(), dx.begin(), ::tolower);
    EXPECT_EQ(m.class_counts()[c], counts.at(dx)) << dx;
  }
  const auto lesions = python_counts(path, 0, true);
  std::set<std::string> groups;
  for (const auto& s : m.samples)
    groups.insert(s.group.value());
  EXPECT_EQ(groups.size(), lesions.size());
  const auto bin = read_dataset(path);
  EXPECT_EQ(bin.class_counts()[1], counts.at("mel") + counts.at("bcc") + counts.at("akiec"));
}

TEST(DataIsicReaders, Uda1LabelsWithImages) {
  ATTNSCOPE_REQUIRE_DATA();
  const auto csv = (test::data_dir() / "isic-uda1" / "labels.csv").string();
  EXPECT_EQ(detect_format(csv), Format::kGeneric);
  ReadOptions o;
  o.images_dir = default_images_dir(csv);
  const auto ds = read_dataset(csv, o);
  const auto counts = python_counts(csv, 1, true);
  EXPECT_EQ(ds.class_counts(), (std::vector<int64_t>{counts.at("benign"), counts.at("malignant")}));
  for (const auto& s : ds.samples)
    ASSERT_TRUE(fs::is_regular_file(s.path)) << s.path;
}

}  // namespace
}  // namespace attnscope::datasets
