// The results store: append, read back, path always a closed file (replicas), resume after a
// torn batch, merge, CSV quoting.

#include <filesystem>
#include <fstream>
#include <limits>
#include <set>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "pipeline/vision/results.h"
#include "test_support.h"

namespace attnscope::pipeline {
namespace {

ResultsLayout small_layout() {
  ResultsLayout l;
  l.num_classes = 2;
  l.height = 8;
  l.width = 6;
  l.maps = {{"stage3", 4, 3, "model", "none"}, {"gradcam", 2, 2, "gradcam", "max"}};
  return l;
}

ResultsHeader header(const std::string& checksum = "fnv1a64:0") {
  return {{"model_checksum", checksum},
          {"preprocessing_config", "{}"},
          {"class_names", "[\"benign\",\"malignant\"]"},
          {"threshold", "0.5"}};
}

ResultRows rows(int64_t first, int64_t n) {
  ResultRows r;
  for (int64_t i = first; i < first + n; ++i) {
    r.ids.push_back("img" + std::to_string(i));
    r.paths.push_back("/data/img" + std::to_string(i) + ".png");
    r.index.push_back(i);
    r.label.push_back(i % 2);
  }
  r.preprocessed = torch::full({n, 8, 6, 3}, first, torch::kByte);
  r.logits = torch::arange(first * 2, (first + n) * 2, torch::kFloat).view({n, 2});
  r.probability = torch::softmax(r.logits, 1);
  r.prediction = torch::ones({n}, torch::kLong);
  r.maps["stage3"] = torch::rand({n, 4, 3});
  r.maps["gradcam"] = torch::rand({n, 2, 2});
  return r;
}

TEST(ResultsStore, AppendsBatchesAndReadsThemBack) {
  test::TempDir dir;
  const auto path = dir / "r.h5";
  {
    auto w = ResultsWriter::create(path, header(), small_layout());
    w.append(rows(0, 3), {{"bad", "/data/bad.jpg", 3, "corrupt or truncated"}});
    w.append(rows(4, 2), {});
    w.finish("2026-01-01T00:00:00Z");
  }
  const auto r = read_results(path);
  ASSERT_EQ(r.ids.size(), 5u);
  EXPECT_EQ(r.ids[3], "img4");
  EXPECT_EQ(r.index[4], 5);
  EXPECT_EQ(r.attributes.at("num_images"), "5");
  EXPECT_EQ(r.attributes.at("schema_version"), "1");
  EXPECT_EQ(r.attributes.at("maps"), "[\"stage3\",\"gradcam\"]");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_EQ(r.errors[0].reason, "corrupt or truncated");
  EXPECT_TRUE(torch::allclose(r.logits.slice(0, 3, 5), rows(4, 2).logits));
  const auto f = h5::File::open(path);
  EXPECT_EQ(h5::dataset_shape(f.id(), "attention/stage3", path), (std::vector<int64_t>{5, 4, 3}));
  EXPECT_EQ(h5::dataset_shape(f.id(), "images/preprocessed", path),
            (std::vector<int64_t>{5, 8, 6, 3}));
}

// Images and maps are deflated once per batch and written as chunks (H5Dwrite_chunk): each
// stored chunk is a zlib stream, smaller than the row, that Python's zlib inflates to the
// row's bytes (what HDF5's deflate filter stores and reads); a row that does not shrink
// (noise) is stored raw with the filter skipped, as HDF5's optional filter does. After either
// come the 4 bytes of HDF5's Fletcher-32 filter, which the writer computes itself: HDF5 (h5py,
// and the C++ reader) checks them on every read, so rows that read back exactly are the oracle,
// and a byte flipped in the raw chunk is a read error, not other pixels.
TEST(ResultsStore, ImageChunksAreZlibStreamsOfTheRowsWithChecksumsHdf5Verifies) {
  test::TempDir dir;
  const auto path = dir / "r.h5";
  auto batch = rows(0, 3);
  batch.preprocessed[1] = torch::randint(0, 256, {8, 6, 3}, torch::kByte);  // noise
  {
    auto w = ResultsWriter::create(path, header(), small_layout());
    w.append(batch, {});
    w.append(rows(3, 2), {});
    w.finish("2026-01-01T00:00:00Z");
  }
  const auto script = dir / "chunks.py";
  std::ofstream(script) << R"(import sys, zlib, h5py
f = h5py.File(sys.argv[1], 'r')
d = f['images/preprocessed']
out = []
for i in range(d.shape[0]):
    mask, chunk = d.id.read_direct_chunk((i, 0, 0, 0))
    raw = d[i].tobytes()  # through HDF5's filters: the checksum verified
    body = chunk[:-4]
    packed = mask == 0 and zlib.decompress(body) == raw and len(body) < len(raw)
    ok = packed if mask == 0 else body == raw
    out.append('%d:%d:%s' % (i, mask, ok))
print(' '.join(out), d.fletcher32, f['attention/stage3'].fletcher32, float(f['attention/stage3'][4].sum()))
)";
  const auto r = test::run_process(test::python() + " " + script + " " + path);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.substr(0, r.output.find(' ', 50)),
            "0:0:True 1:1:True 2:0:True 3:0:True 4:0:True True True")
      << r.output;
  {
    const auto f = h5::File::open(path);
    const auto stored = h5::read_tensor(f.id(), "images/preprocessed", path);
    EXPECT_TRUE(torch::equal(stored.slice(0, 0, 3), batch.preprocessed));
    EXPECT_TRUE(torch::allclose(h5::read_tensor(f.id(), "attention/stage3", path).slice(0, 0, 3),
                                batch.maps["stage3"]));
  }
  // One byte of the raw chunk (row 1) flipped in the file: HDF5 refuses the row.
  const auto flip = test::run_process(
      test::python() +
      " -c \"import h5py, sys\nwith h5py.File(sys.argv[1], 'r') as f: "
      "info = f['images/preprocessed'].id.get_chunk_info_by_coord((1, 0, 0, 0))\n"
      "with open(sys.argv[1], 'r+b') as g:\n g.seek(info.byte_offset + 7); b = g.read(1); "
      "g.seek(info.byte_offset + 7); g.write(bytes([b[0] ^ 1]))\" " +
      path);
  ASSERT_EQ(flip.status, 0) << flip.output;
  const auto f = h5::File::open(path);
  const auto message =
      test::error_of([&] { h5::read_tensor(f.id(), "images/preprocessed", path); });
  EXPECT_NE(message.find("Fletcher-32 checksum does not match its data"), std::string::npos)
      << message;
}

int64_t rows_in(const h5::File& f, const std::string& name) {
  return h5::dataset_shape(f.id(), name, f.path()).at(0);
}

// Every append leaves path a closed, complete file (opened here read-only between appends
// while the writer goes on), a reader that keeps it open keeps its snapshot, and finish
// leaves no replica beside it.
TEST(ResultsStore, PathIsACompleteFileAfterEveryAppendAndReadersKeepTheirSnapshot) {
  test::TempDir dir;
  const auto path = dir / "r.h5";
  auto w = ResultsWriter::create(path, header(), small_layout());
  {
    const auto empty = h5::File::open(path);
    EXPECT_EQ(rows_in(empty, "images/id"), 0);
  }
  w.append(rows(0, 3), {{"bad", "/data/bad.jpg", 3, "corrupt"}});
  const auto reader = h5::File::open(path);  // held open across the next appends
  EXPECT_EQ(h5::read_string_attribute(reader.id(), "num_images", path), "3");
  for (int64_t b = 1; b < 5; ++b) {
    w.append(rows(4 * b, 2), {});
    const auto now = h5::File::open(path);
    EXPECT_EQ(rows_in(now, "images/id"), 3 + 2 * b);
    EXPECT_EQ(rows_in(now, "attention/gradcam"), 3 + 2 * b);
    EXPECT_EQ(h5::read_string_attribute(now.id(), "num_images", path), std::to_string(3 + 2 * b));
    EXPECT_EQ(rows_in(now, "errors/id"), 1);
  }
  // The reader's file was never written after it opened it.
  EXPECT_EQ(rows_in(reader, "images/id"), 3);
  EXPECT_EQ(rows_in(reader, "predictions/logits"), 3);
  w.set_attribute("note", "kept");
  w.finish("now");
  const auto r = read_results(path);
  EXPECT_EQ(r.ids.size(), 11u);
  EXPECT_EQ(r.attributes.at("note"), "kept");
  EXPECT_EQ(r.attributes.at("finished_at"), "now");
  EXPECT_TRUE(torch::allclose(r.logits.slice(0, 9, 11), rows(16, 2).logits));
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir.path()))
    names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"r.h5"});
}

TEST(ResultsStore, ResumeTrimsATornBatchAndSkipsStoredIds) {
  test::TempDir dir;
  const auto path = dir / "r.h5";
  {
    auto w = ResultsWriter::create(path, header(), small_layout());
    w.append(rows(0, 3), {});
  }
  {
    // A torn batch, as files written before the replicas could hold after a kill inside a
    // flush: one dataset already holds rows the others lack.
    auto f = h5::File::open(path, true);
    h5::Handle set(H5Dopen2(f.id(), "predictions/logits", H5P_DEFAULT));
    hsize_t dims[2] = {5, 2};
    ASSERT_GE(H5Dset_extent(set.get(), dims), 0);
  }
  auto w = ResultsWriter::resume(path, header(), small_layout());
  EXPECT_EQ(w.num_images(), 3);
  std::set<std::string> ids;
  for (const auto& [id, source] : w.stored())
    ids.insert(id);
  EXPECT_EQ(ids, (std::set<std::string>{"img0", "img1", "img2"}));
  w.append(rows(3, 2), {});
  w.finish("now");
  const auto r = read_results(path);
  EXPECT_EQ(r.ids.size(), 5u);
  EXPECT_EQ(r.logits.size(0), 5);
  EXPECT_TRUE(torch::allclose(r.logits.slice(0, 3, 5), rows(3, 2).logits));
}

TEST(ResultsStore, ResumeRefusesAnotherModel) {
  test::TempDir dir;
  const auto path = dir / "r.h5";
  ResultsWriter::create(path, header("fnv1a64:1"), small_layout()).finish("now");
  try {
    ResultsWriter::resume(path, header("fnv1a64:2"), small_layout());
    FAIL() << "resumed a file of another model";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model_checksum"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST(ResultsStore, MergeInterleavesByIndexAndRefusesOverlapsAndOtherModels) {
  test::TempDir dir;
  const auto a = dir / "a.h5", b = dir / "b.h5", c = dir / "c.h5", out = dir / "m.h5";
  auto even = rows(0, 4), odd = rows(0, 4);
  {
    // a holds inputs 0, 2, 4, 6; b holds 1, 3, 5, 7.
    auto w = ResultsWriter::create(a, header(), small_layout());
    for (int64_t i = 0; i < 4; ++i) {
      even.index[i] = 2 * i;
      even.ids[i] = "img" + std::to_string(2 * i);
    }
    w.append(even, {});
    w.finish("now");
    auto v = ResultsWriter::create(b, header(), small_layout());
    for (int64_t i = 0; i < 4; ++i) {
      odd.index[i] = 2 * i + 1;
      odd.ids[i] = "img" + std::to_string(2 * i + 1);
    }
    v.append(odd, {});
    v.finish("now");
  }
  merge_results({a, b}, out, "test");
  const auto m = read_results(out);
  ASSERT_EQ(m.ids.size(), 8u);
  for (int64_t i = 0; i < 8; ++i) {
    EXPECT_EQ(m.ids[i], "img" + std::to_string(i));
    const auto& src = i % 2 ? odd : even;
    EXPECT_TRUE(torch::equal(m.logits[i], src.logits[i / 2]));
  }
  EXPECT_THROW(merge_results({a, a}, out, "test"), Error);
  ResultsWriter::create(c, header("fnv1a64:9"), small_layout()).finish("now");
  try {
    merge_results({a, c}, dir / "m2.h5", "test");
    FAIL() << "merged files of two models";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(c), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "m2.h5"));
}

TEST(ResultsStore, CsvFieldsFollowRfc4180) {
  EXPECT_EQ(csv_field("plain"), "plain");
  EXPECT_EQ(csv_field("a,b"), "\"a,b\"");
  EXPECT_EQ(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(csv_field("two\nlines"), "\"two\nlines\"");
  // Edge spaces are data only in quotes (readers trim unquoted fields): an id " lead" of
  // predictions.csv read back as "lead".
  EXPECT_EQ(csv_field(" lead"), "\" lead\"");
  EXPECT_EQ(csv_field("nevus\xC2\xA0"), "\"nevus\xC2\xA0\"");
  EXPECT_EQ(csv_field("in side"), "in side");
}

// Row counts are decimal digits within int64, nothing else.
TEST(ResultsStore, RowCountsAreWholeNumbersAndNothingElse) {
  EXPECT_EQ(parse_row_count("0", "f"), 0);
  EXPECT_EQ(parse_row_count("007", "f"), 7);
  EXPECT_EQ(parse_row_count("9223372036854775807", "f"), std::numeric_limits<int64_t>::max());
  for (const char* bad :
       {"", "-3", "+3", " 3", "3 ", "1.5", "1e3", "x", "0x10", "9223372036854775808"})
    EXPECT_EQ(test::error_of([&] { parse_row_count(bad, "r.h5:/@num_images"); }),
              std::string("r.h5:/@num_images: is '") + bad +
                  "', expected a row count (a whole number >= 0)")
        << bad;
}

}  // namespace
}  // namespace attnscope::pipeline
