#include "pipeline/vision/results.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iterator>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include <libdeflate.h>
#include <torch/torch.h>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "attnscope/printable.h"
#include "datasets/csv.h"
#include "datasets/text/tokenizer.h"
#include "pipeline/vision/report.h"
#include "preprocessing/decode.h"

namespace attnscope::pipeline {
namespace {

// Files written before the root attribute `precision` existed ran in float32: resume and
// merge read its absence as that.
constexpr const char* kPrecisionBeforeTheAttribute = "fp32";

using h5::where;

constexpr int kDeflateLevel = 1;

// Per-row datasets of a layout: name -> (memory type, trailing dims, compressed).
struct Column {
  std::string name;
  hid_t type;  // H5T_NATIVE_* or -1 for a UTF-8 string
  std::vector<hsize_t> dims;
  bool compress = false;
};

std::vector<Column> columns(const ResultsLayout& l) {
  const auto c = static_cast<hsize_t>(l.num_classes);
  const auto h = static_cast<hsize_t>(l.height), w = static_cast<hsize_t>(l.width);
  std::vector<Column> cols{
      {"images/id", -1, {}},
      {"images/source_path", -1, {}},
      {"images/index", H5T_NATIVE_INT64, {}},
      {"images/label", H5T_NATIVE_INT64, {}},
      {"images/preprocessed", H5T_NATIVE_UINT8, {h, w, 3}, true},
      {"predictions/logits", H5T_NATIVE_FLOAT, {c}},
      {"predictions/probability", H5T_NATIVE_FLOAT, {c}},
      {"predictions/label", H5T_NATIVE_INT64, {}},
  };
  if (l.tta) cols.push_back({"predictions/probability_std", H5T_NATIVE_FLOAT, {c}});
  for (const auto& m : l.maps)
    cols.push_back({"attention/" + m.name,
                    H5T_NATIVE_FLOAT,
                    {static_cast<hsize_t>(m.height), static_cast<hsize_t>(m.width)},
                    true});
  if (l.overlays)
    for (const auto& m : l.maps)
      cols.push_back({"overlays/" + m.name, H5T_NATIVE_UINT8, {h, w, 3}, true});
  for (const auto& m : l.measures)
    cols.push_back({"measures/" + m, H5T_NATIVE_FLOAT, {}});
  return cols;
}

const std::vector<Column> kErrorColumns{
    {"errors/id", -1, {}},
    {"errors/path", -1, {}},
    {"errors/index", H5T_NATIVE_INT64, {}},
    {"errors/reason", -1, {}},
};

void create_column(hid_t file, const Column& col, const std::string& path) {
  std::vector<hsize_t> dims{0}, max_dims{H5S_UNLIMITED}, chunk;
  // Strings and scalars: chunks of many rows; images and maps: one row per chunk.
  chunk.push_back(col.dims.empty() || (col.dims.size() == 1 && !col.compress) ? 256 : 1);
  for (const auto d : col.dims) {
    dims.push_back(d);
    max_dims.push_back(d);
    chunk.push_back(d);
  }
  h5::Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), max_dims.data()));
  h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
  // Level 1: 224 px dermoscopy photos shrink to ~0.68 of their size, as at level 4, in less
  // than half the time (zlib, isic-uda1: 3.0 vs 6.7 ms per image).
  if (col.compress) H5Pset_deflate(dcpl.get(), kDeflateLevel);
  // A Fletcher-32 checksum per chunk of every numeric dataset (logits, probabilities, labels,
  // measures, and after deflate the images, maps and overlays, whose chunks deflate_rows
  // checksums itself): a damaged chunk is a read error naming the dataset (ResultsWriter::resume
  // reads every row), not other numbers. A row that deflate does not shrink (a 7 x 7 map) is
  // stored raw and has only this check. Variable-length strings' chunks hold only references to
  // the heap.
  if (col.type >= 0) H5Pset_fletcher32(dcpl.get());
  h5::Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  const auto stype = h5::utf8_string_type();
  h5::Handle set(H5Dcreate2(file, col.name.c_str(), col.type < 0 ? stype.get() : col.type,
                            space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT));
  h5::check_h5(set.valid(), where(path, col.name), "cannot create dataset");
}

// "(rows, d1, d2, ...)": how messages show the shape of a per-row dataset.
std::string row_shape_text(const std::vector<hsize_t>& dims) {
  std::string text = "(rows";
  for (const auto d : dims)
    text += ", " + std::to_string(d);
  return text + ")";
}

// Rows of col's dataset in file, checked to have col's shape (rows, col.dims...).
int64_t rows_of(hid_t file, const Column& col, const std::string& path) {
  h5::Handle set(H5Dopen2(file, col.name.c_str(), H5P_DEFAULT));
  h5::check_h5(set.valid(), where(path, col.name), "missing dataset");
  h5::Handle space(H5Dget_space(set.get()));
  hsize_t dims[H5S_MAX_RANK] = {};
  const int rank = H5Sget_simple_extent_ndims(space.get());
  check(rank == static_cast<int>(1 + col.dims.size()) &&
            H5Sget_simple_extent_dims(space.get(), dims, nullptr) == rank &&
            std::equal(col.dims.begin(), col.dims.end(), dims + 1),
        where(path, col.name), "does not have the shape ", row_shape_text(col.dims),
        " this run writes");
  // Rows of this run's numbers written into a dataset of others (float32 images edited with
  // h5py) read back as other values (NaN, 6e34).
  if (col.type >= 0) {
    h5::Handle type(H5Dget_type(set.get()));
    // Compressed columns are written as raw chunks (deflate_rows): in this machine's order.
    check(type.valid() && h5::same_numbers(type.get(), col.type, col.compress),
          where(path, col.name), "holds ", type.valid() ? h5::type_name(type.get()) : "unreadable",
          " values, where this run writes ", h5::type_name(col.type),
          ": the file cannot be resumed; classify again into another --out, without --resume");
  }
  return static_cast<int64_t>(dims[0]);
}

// Names of the datasets below group `name` of file ("name/a", "name/b/c"), depth first.
void list_datasets(hid_t file, const std::string& name, std::vector<std::string>& out,
                   int depth = 0) {
  if (depth > 4 || !h5::exists(file, name)) return;
  h5::Handle obj(H5Oopen(file, name.c_str(), H5P_DEFAULT));
  if (!obj.valid()) return;
  if (H5Iget_type(obj.get()) != H5I_GROUP) {
    out.push_back(name);
    return;
  }
  for (const auto& child : h5::children(obj.get()))
    list_datasets(file, name + "/" + child, out, depth + 1);
}

// Writes `rows` rows (contiguous, memory type col.type) at row `at` of the dataset, extending it.
void write_rows(hid_t file, const Column& col, int64_t at, int64_t rows, const void* data,
                const std::string& path) {
  if (rows == 0) return;
  h5::Handle set(H5Dopen2(file, col.name.c_str(), H5P_DEFAULT));
  h5::check_h5(set.valid(), where(path, col.name), "missing dataset");
  std::vector<hsize_t> dims{static_cast<hsize_t>(at + rows)};
  dims.insert(dims.end(), col.dims.begin(), col.dims.end());
  check(H5Dset_extent(set.get(), dims.data()) >= 0, where(path, col.name), "cannot extend dataset");
  h5::Handle space(H5Dget_space(set.get()));
  std::vector<hsize_t> start(dims.size(), 0), count = dims;
  start[0] = static_cast<hsize_t>(at);
  count[0] = static_cast<hsize_t>(rows);
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  h5::Handle memory(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr));
  const auto stype = h5::utf8_string_type();
  h5::check_h5(H5Dwrite(set.get(), col.type < 0 ? stype.get() : col.type, memory.get(), space.get(),
                        H5P_DEFAULT, data) >= 0,
               where(path, col.name), "cannot write rows");
}

// The columns are typed UTF-8 (h5py decodes them to str). classify gives ids and paths
// escaped (datasets::text::escaped_name); any other text that is not UTF-8 has those bytes
// written `\xe9` here (escaped_utf8 keeps valid UTF-8 as it is, so a merge copies rows as
// they are).
void write_string_rows(hid_t file, const Column& col, int64_t at,
                       const std::vector<std::string>& values, const std::string& path) {
  std::vector<std::string> utf8;
  utf8.reserve(values.size());
  for (const auto& v : values)
    utf8.push_back(datasets::text::escaped_utf8(v));
  std::vector<const char*> ptrs;
  ptrs.reserve(values.size());
  for (const auto& v : utf8)
    ptrs.push_back(v.c_str());
  write_rows(file, col, at, static_cast<int64_t>(values.size()), ptrs.data(), path);
}

void write_tensor_rows(hid_t file, const Column& col, int64_t at, const at::Tensor& t, int64_t rows,
                       const std::string& path) {
  check(t.defined() && t.size(0) == rows, where(path, col.name), "expected ", rows,
        " rows to write, got ", t.defined() ? t.size(0) : -1);
  at::Tensor c;
  if (col.type == H5T_NATIVE_FLOAT)
    c = t.to(torch::kCPU, torch::kFloat).contiguous();
  else if (col.type == H5T_NATIVE_INT64)
    c = t.to(torch::kCPU, torch::kLong).contiguous();
  else
    c = t.to(torch::kCPU, torch::kByte).contiguous();
  check(c.numel() == rows * static_cast<int64_t>(std::accumulate(col.dims.begin(), col.dims.end(),
                                                                 hsize_t{1}, std::multiplies<>())),
        where(path, col.name), "tensor of shape ", c.sizes(), " does not fit the dataset");
  write_rows(file, col, at, rows, c.data_ptr(), path);
}

// Compressed columns (images, maps, overlays: one row per chunk) are deflated once per batch
// here and the chunks written as they are into both replicas (H5Dwrite_chunk), so the writer
// does not compress every batch twice (perf: zlib was 13 % of a classify run's CPU). The chunks
// are zlib streams, which is what HDF5's deflate filter (H5Z_FILTER_DEFLATE) stores and
// inflates; they are made by libdeflate at level kDeflateLevel, which on 224 px dermoscopy
// inputs takes half of zlib's level-1 time (1.05 vs 2.05 ms per image, bench_deflate,
// docs/performance.md) for chunks 3-5 % larger. Like HDF5's optional deflate filter, a row that
// does not shrink is stored raw with the filter skipped (filter mask bit 0).
struct Chunk {
  std::string bytes;
  uint32_t filter_mask = 0;
};
using Chunks = std::vector<Chunk>;

// HDF5's Fletcher-32 (H5_checksum_fletcher32, which its filter appends to a chunk as 4 bytes,
// little-endian): 16-bit words, big-endian, an odd last byte as the high byte of a word, the
// sums folded every 360 words. Written out here because the writer stores chunks itself
// (H5Dwrite_chunk); HDF5 checks it on every read, and the tests read the chunks back with HDF5.
uint32_t fletcher32(const unsigned char* data, std::size_t size) {
  uint32_t sum1 = 0, sum2 = 0;
  std::size_t words = size / 2;
  while (words > 0) {
    std::size_t block = std::min<std::size_t>(words, 360);
    words -= block;
    for (; block > 0; --block, data += 2) {
      sum1 += (static_cast<uint32_t>(data[0]) << 8) | data[1];
      sum2 += sum1;
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  if (size % 2) {
    sum1 += static_cast<uint32_t>(data[0]) << 8;
    sum2 += sum1;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  sum1 = (sum1 & 0xffff) + (sum1 >> 16);
  sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  return (sum2 << 16) | sum1;
}

// Whether a compressed dataset's chunks carry Fletcher-32 after deflate (files written before
// 2026-12-06 have deflate alone: their chunks are appended without it). Any other filter
// pipeline (a file rewritten by another tool) cannot take the chunks deflate_rows makes.
bool has_fletcher32(hid_t file, const std::string& name, const std::string& path) {
  h5::Handle set(H5Dopen2(file, name.c_str(), H5P_DEFAULT));
  h5::check_h5(set.valid(), where(path, name), "missing dataset");
  h5::Handle dcpl(H5Dget_create_plist(set.get()));
  std::vector<H5Z_filter_t> filters;
  const int n = H5Pget_nfilters(dcpl.get());
  for (int i = 0; i < n; ++i) {
    unsigned flags = 0, config = 0;
    std::size_t elements = 0;
    filters.push_back(H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &elements,
                                     nullptr, 0, nullptr, &config));
  }
  const std::vector<H5Z_filter_t> plain{H5Z_FILTER_DEFLATE},
      checked{H5Z_FILTER_DEFLATE, H5Z_FILTER_FLETCHER32};
  check(filters == plain || filters == checked, where(path, name),
        "cannot resume: its filters are not deflate (then Fletcher-32), which attnscope writes "
        "(a file rewritten by another tool?)");
  // The chunks deflate_rows makes are one row each: under another chunk shape (h5repack, h5py
  // with chunks=...) HDF5 took them without a word, and the appended maps read back half zero,
  // or beyond the stored bytes.
  h5::Handle space(H5Dget_space(set.get()));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(static_cast<std::size_t>(std::max(rank, 0))), chunk(dims.size());
  const bool one_row = rank >= 1 && H5Pget_layout(dcpl.get()) == H5D_CHUNKED &&
                       H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr) == rank &&
                       H5Pget_chunk(dcpl.get(), rank, chunk.data()) == rank && chunk[0] == 1 &&
                       std::equal(chunk.begin() + 1, chunk.end(), dims.begin() + 1);
  if (!one_row) {
    H5Eclear2(H5E_DEFAULT);
    std::string shape;
    for (std::size_t i = 0; i < chunk.size(); ++i)
      shape += concat(i ? ", " : "", chunk[i]);
    throw Error(where(path, name),
                concat("cannot resume: its chunks are (", shape,
                       "), not one row each as attnscope writes them (a file rewritten by "
                       "another tool?)"));
  }
  return filters == checked;
}

Chunks deflate_rows(const Column& col, const at::Tensor& t, int64_t rows, const std::string& path,
                    bool checksum) {
  check(t.defined() && t.size(0) == rows, where(path, col.name), "expected ", rows,
        " rows to write, got ", t.defined() ? t.size(0) : -1);
  const auto c = (col.type == H5T_NATIVE_FLOAT ? t.to(torch::kCPU, torch::kFloat)
                                               : t.to(torch::kCPU, torch::kByte))
                     .contiguous();
  const auto row_elements = static_cast<int64_t>(
      std::accumulate(col.dims.begin(), col.dims.end(), hsize_t{1}, std::multiplies<>()));
  check(c.numel() == rows * row_elements, where(path, col.name), "tensor of shape ", c.sizes(),
        " does not fit the dataset");
  const auto row_bytes = static_cast<std::size_t>(row_elements * c.element_size());
  const auto* src = static_cast<const char*>(c.data_ptr());
  // One compressor per thread that writes (its tables are ~0.5 MB; made once).
  thread_local const std::unique_ptr<libdeflate_compressor, void (*)(libdeflate_compressor*)>
      compressor(libdeflate_alloc_compressor(kDeflateLevel), libdeflate_free_compressor);
  check(compressor != nullptr, where(path, col.name), "cannot allocate a deflate compressor");
  Chunks out(static_cast<std::size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    auto& chunk = out[static_cast<std::size_t>(r)];
    const char* row = src + static_cast<std::size_t>(r) * row_bytes;
    chunk.bytes.resize(row_bytes);  // no more room than the raw row: else it is stored raw
    const std::size_t size = libdeflate_zlib_compress(compressor.get(), row, row_bytes,
                                                      chunk.bytes.data(), chunk.bytes.size());
    if (size > 0) {
      chunk.bytes.resize(size);
    } else {
      chunk.bytes.assign(row, row_bytes);
      chunk.filter_mask = 1;  // deflate (filter 0) skipped; Fletcher-32 (filter 1) applied
    }
    if (checksum) {
      const auto sum = fletcher32(reinterpret_cast<const unsigned char*>(chunk.bytes.data()),
                                  chunk.bytes.size());
      for (int b = 0; b < 4; ++b)
        chunk.bytes.push_back(static_cast<char>((sum >> (8 * b)) & 0xff));
    }
  }
  return out;
}

void write_chunk_rows(hid_t file, const Column& col, int64_t at, const Chunks& chunks,
                      const std::string& path) {
  if (chunks.empty()) return;
  h5::Handle set(H5Dopen2(file, col.name.c_str(), H5P_DEFAULT));
  h5::check_h5(set.valid(), where(path, col.name), "missing dataset");
  std::vector<hsize_t> dims{static_cast<hsize_t>(at + static_cast<int64_t>(chunks.size()))};
  dims.insert(dims.end(), col.dims.begin(), col.dims.end());
  check(H5Dset_extent(set.get(), dims.data()) >= 0, where(path, col.name), "cannot extend dataset");
  std::vector<hsize_t> offset(dims.size(), 0);
  for (std::size_t r = 0; r < chunks.size(); ++r) {
    offset[0] = static_cast<hsize_t>(at) + r;
    h5::check_h5(H5Dwrite_chunk(set.get(), H5P_DEFAULT, chunks[r].filter_mask, offset.data(),
                                chunks[r].bytes.size(), chunks[r].bytes.data()) >= 0,
                 where(path, col.name), "cannot write rows");
  }
}

std::vector<int64_t> read_int_rows(hid_t file, const std::string& name, const std::string& path,
                                   int64_t limit = -1) {
  const auto t = h5::read_tensor(file, name, path, limit);
  std::vector<int64_t> out(static_cast<std::size_t>(t.numel()));
  const auto l = t.to(torch::kLong).contiguous();
  std::copy(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + l.numel(), out.begin());
  return out;
}

// Reads rows [0, n) of each column through once, in slabs of at most 64 MiB, and throws Error
// naming the dataset and the rows where HDF5 refuses the read: a chunk whose Fletcher-32
// checksum or deflate stream does not hold. (Files written before 2026-12-05 carry no
// checksum, and before 2026-12-06 none on a raw chunk of a compressed dataset: nothing tells
// there.)
void verify_rows(hid_t file, const std::vector<Column>& cols, int64_t n, const std::string& path) {
  if (n <= 0) return;
  for (const auto& col : cols) {
    if (col.type < 0) {
      h5::read_string_rows(file, col.name, path, n);
      continue;
    }
    h5::Handle set(H5Dopen2(file, col.name.c_str(), H5P_DEFAULT));
    h5::check_h5(set.valid(), where(path, col.name), "missing dataset");
    const auto row_bytes = H5Tget_size(col.type) *
                           static_cast<std::size_t>(std::accumulate(
                               col.dims.begin(), col.dims.end(), hsize_t{1}, std::multiplies<>()));
    const auto slab = static_cast<int64_t>(
        std::max<std::size_t>(1, (std::size_t{64} << 20) / std::max<std::size_t>(row_bytes, 1)));
    std::vector<char> buf(static_cast<std::size_t>(std::min(slab, n)) * row_bytes);
    h5::Handle space(H5Dget_space(set.get()));
    std::vector<hsize_t> start(1 + col.dims.size(), 0), count{0};
    count.insert(count.end(), col.dims.begin(), col.dims.end());
    for (int64_t at = 0; at < n; at += slab) {
      start[0] = static_cast<hsize_t>(at);
      count[0] = static_cast<hsize_t>(std::min(slab, n - at));
      H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                          nullptr);
      h5::Handle memory(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr));
      h5::check_h5(
          H5Dread(set.get(), col.type, memory.get(), space.get(), H5P_DEFAULT, buf.data()) >= 0,
          where(path, col.name),
          concat("cannot read rows ", at, "..", at + static_cast<int64_t>(count[0]) - 1));
    }
  }
}

// Errors name `shown` (default: path): the file the user named, where path is a temporary or
// a replica standing in for it.
h5::Handle open_file(const std::string& path, bool create, const std::string& shown = "") {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  const std::string& name = shown.empty() ? path : shown;
  hid_t id = -1;
  if (create) {
    id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    h5::check_h5(id >= 0, name, "cannot create HDF5 file");
  } else {
    h5::check_is_hdf5(path);
    id = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    h5::check_h5(id >= 0, name, "cannot open HDF5 file for writing");
  }
  return h5::Handle(id);
}

std::string json_list(const std::vector<std::string>& v) {
  return nlohmann::json(v).dump();
}

// A model of more than two classes labels by arg-max: a threshold stored beside it (files of
// builds before the attribute became null for them) decided nothing, and differs from a new
// run's null without meaning anything.
bool threshold_means_nothing(const std::string& class_names) {
  const auto names = nlohmann::json::parse(class_names, nullptr, false);
  return names.is_array() && names.size() > 2;
}

}  // namespace

std::string csv_field(const std::string& value) {
  // The datasets' writer: an id with edge spaces is quoted too, so that a CSV reader that
  // trims unquoted fields (attnscope's own) reads it back whole.
  return datasets::csv_field(value);
}

void check_result_values(const std::vector<int64_t>& labels, const at::Tensor& predicted,
                         const at::Tensor& probability, int64_t rows, int64_t classes,
                         const std::string& path, const std::string& consequence) {
  for (int64_t r = 0; r < rows && r < static_cast<int64_t>(labels.size()); ++r) {
    const auto label = labels[static_cast<std::size_t>(r)];
    check(label >= -1 && label < classes, where(path, "images/label"), "row ", r, " holds class ",
          label, ", outside -1..", classes - 1, consequence);
  }
  if (rows <= 0) return;
  const auto pred = predicted.flatten().narrow(0, 0, rows);
  const auto bad_pred = ((pred < 0) | (pred >= classes)).nonzero();
  if (bad_pred.size(0) > 0) {
    const auto r = bad_pred[0][0].item<int64_t>();
    throw Error(where(path, "predictions/label"),
                concat("row ", r, " holds class ", pred[r].item<int64_t>(), ", outside 0..",
                       classes - 1, consequence));
  }
  if (!probability.defined()) return;
  const auto p = probability.narrow(0, 0, rows).to(at::kFloat);
  const auto bad = (p.isnan() | (p < 0) | (p > 1)).nonzero();
  check(bad.size(0) == 0, where(path, "predictions/probability"), "row ",
        bad.size(0) ? bad[0][0].item<int64_t>() : 0, " holds a value outside [0, 1]", consequence);
  // Each row a distribution (softmax, or the mean of 8: 1 within float32's rounding); a file
  // edited to other numbers was drawn and counted as if they were one.
  const auto sums = p.sum(1, /*keepdim=*/false, at::kDouble);
  const auto off = ((sums - 1).abs() > 1e-3).nonzero();
  if (off.size(0) > 0) {
    const auto r = off[0][0].item<int64_t>();
    throw Error(where(path, "predictions/probability"),
                concat("row ", r, " sums to ", sums[r].item<double>(), ", not 1", consequence));
  }
}

int64_t parse_row_count(const std::string& text, const std::string& subject) {
  int64_t n = -1;
  const char* end = text.data() + text.size();
  const bool digits = !text.empty() && std::all_of(text.begin(), text.end(),
                                                   [](char c) { return c >= '0' && c <= '9'; });
  const auto [ptr, ec] = std::from_chars(text.data(), end, n);
  check(digits && ec == std::errc() && ptr == end, subject, "is '", excerpt(text),
        "', expected a row count (a whole number >= 0)");
  return n;
}

std::string file_checksum(const std::string& path) {
  const auto bytes = preprocessing::read_file_bytes(path);
  uint64_t h = 14695981039346656037ull;
  for (const uint8_t b : bytes) {
    h ^= b;
    h *= 1099511628211ull;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return std::string("fnv1a64:") + buf;
}

// ---- writing: two replicas, the committed one hard-linked at path ----------------------

namespace {

// Flushes and closes a file, checked; the id is released whatever H5Fclose returns.
// HDF5's own reason is added (no space left, file too large, an I/O error).
void close_checked(h5::Handle& file, const std::string& shown) {
  h5::check_h5(H5Fflush(file.get(), H5F_SCOPE_GLOBAL) >= 0, shown, "cannot flush");
  h5::check_h5(H5Fclose(file.release()) >= 0, shown, "cannot close");
}

// Copies a file (replacing `to`, which is scaffolding: a replica or a staging name); throws
// Error naming `shown` with the system's reason. read/write, not std::filesystem::copy_file,
// whose short sendfile turns "File too large" and "No space left on device" into EIO.
void copy_checked(const std::string& from, const std::string& to, const std::string& shown) {
  const auto fail = [&](const char* what, int err) {
    check(false, shown, "cannot copy its committed state (", what, ": ", std::strerror(err), ")");
  };
  std::vector<char> buffer(1 << 20);  // before any descriptor: a bad_alloc leaks none
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) fail("open", errno);
  struct stat st {};
  const bool stated = ::fstat(in, &st) == 0;
  ::unlink(to.c_str());  // a reader may hold the old inode: a new one
  const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  // The source's permission bits exactly (as copy_file kept them: fchmod ignores the umask), so
  // that a results.h5 shared with a group stays so when a replica takes its name; best effort.
  if (out >= 0 && stated) (void)::fchmod(out, st.st_mode & 07777);
  if (out < 0) {
    const int err = errno;
    ::close(in);
    fail("create", err);
  }
  for (;;) {
    const ssize_t n = ::read(in, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(in);
      ::close(out);
      fail("read", err);
    }
    if (n == 0) break;
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = ::write(out, buffer.data() + done, static_cast<std::size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = w < 0 ? errno : ENOSPC;
        ::close(in);
        ::close(out);
        fail("write", err);
      }
      done += w;
    }
  }
  ::close(in);
  if (::close(out) != 0) fail("close", errno);
}

void sync_path(const std::string& path, const std::string& shown) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  check(fd >= 0, shown, "cannot open to sync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  check(rc == 0, shown, "cannot sync: ", std::strerror(err));
}

// Makes `path` name the same file as `replica`: a hard link under a temporary name renamed
// over path (atomic). Where hard links are refused, a copy takes its place.
// Errors name `shown`.
void link_over(const std::string& replica, const std::string& path, const std::string& shown) {
  namespace fs = std::filesystem;
  AtomicFile staging(path);  // only for its temporary name; it is never written
  const auto& temp = staging.temp_path();
  ::unlink(temp.c_str());
  if (::link(replica.c_str(), temp.c_str()) != 0) {
    copy_checked(replica, temp, shown);
    sync_path(temp, shown);
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp.c_str());
    check(false, shown, "cannot rename the new state over it: ", std::strerror(err));
  }
  const auto dir = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // best effort: some file systems refuse fsync on folders
    ::close(dfd);
  }
}

std::string replica_path(const std::string& path, char which) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  return (dir / ("." + p.filename().string() + ".replica-" + which)).string();
}

}  // namespace

struct ResultsWriter::State {
  // One committed change: a batch (possibly empty) and the root attributes set before it.
  struct Op {
    ResultRows rows;
    std::vector<ResultError> errors;
    std::map<std::string, std::string> attributes;
    std::map<std::string, Chunks> chunks;  // compressed columns, deflated once for both replicas
  };

  static const at::Tensor& column_tensor(const ResultRows& rows, const std::string& name) {
    if (name == "images/preprocessed") return rows.preprocessed;
    const auto slash = name.find('/');
    const auto group = name.substr(0, slash), key = name.substr(slash + 1);
    const auto& source = group == "attention" ? rows.maps : rows.overlays;
    static const at::Tensor none;
    const auto it = source.find(key);
    return it == source.end() ? none : it->second;
  }
  struct Replica {
    std::string path;
    std::size_t applied = 0;  // ops already in this file (absolute op numbers)
    int64_t rows = 0, errors = 0;
    bool damaged = false;  // a write into it failed: start it again from the committed file
  };
  State(const std::string& path_, const ResultsLayout& layout_, const std::string& shown_)
      : path(path_), shown(shown_.empty() ? path_ : shown_), layout(layout_) {
    replicas[0].path = replica_path(path, 'a');
    replicas[1].path = replica_path(path, 'b');
  }

  std::string path;
  // The name errors give: path, or the file path stands in for (classify --overwrite writes
  // a temporary that is renamed over results.h5 at the end; the user asked for results.h5).
  std::string shown;
  ResultsLayout layout;
  // Compressed columns of a resumed file written before their chunks had Fletcher-32.
  std::set<std::string> unchecked;
  std::array<Replica, 2> replicas;
  int committed = 0;   // the replica that path names
  std::deque<Op> ops;  // ops not yet in both replicas; ops[i] is op number base + i
  std::size_t base = 0, next = 0;
  std::map<std::string, std::string> pending_attributes;
  int64_t rows = 0, errors = 0;  // including ops not yet committed
  bool finished = false;

  ~State() {
    // path names the committed inode on its own; the replica names are scaffolding.
    for (const auto& r : replicas)
      if (!r.path.empty()) ::unlink(r.path.c_str());
  }

  void apply(hid_t f, Replica& r, const Op& op) {
    const auto n = static_cast<int64_t>(op.rows.size());
    const auto& rows_in = op.rows;
    if (n > 0) {
      for (const auto& col : columns(layout)) {
        const auto& name = col.name;
        if (col.compress) {
          write_chunk_rows(f, col, r.rows, op.chunks.at(name), shown);
        } else if (name == "images/id") {
          write_string_rows(f, col, r.rows, rows_in.ids, shown);
        } else if (name == "images/source_path") {
          write_string_rows(f, col, r.rows, rows_in.paths, shown);
        } else if (name == "images/index" || name == "images/label") {
          const auto& v = name == "images/index" ? rows_in.index : rows_in.label;
          check(static_cast<int64_t>(v.size()) == n, where(shown, name), "row count differs");
          write_rows(f, col, r.rows, n, v.data(), shown);
        } else if (name == "images/preprocessed") {
          write_tensor_rows(f, col, r.rows, rows_in.preprocessed, n, shown);
        } else if (name == "predictions/logits") {
          write_tensor_rows(f, col, r.rows, rows_in.logits, n, shown);
        } else if (name == "predictions/probability") {
          write_tensor_rows(f, col, r.rows, rows_in.probability, n, shown);
        } else if (name == "predictions/probability_std") {
          write_tensor_rows(f, col, r.rows, rows_in.probability_std, n, shown);
        } else if (name == "predictions/label") {
          write_tensor_rows(f, col, r.rows, rows_in.prediction, n, shown);
        } else {
          const auto slash = name.find('/');
          const auto group = name.substr(0, slash), key = name.substr(slash + 1);
          const auto& source = group == "attention"  ? rows_in.maps
                               : group == "overlays" ? rows_in.overlays
                                                     : rows_in.measures;
          const auto it = source.find(key);
          check(it != source.end(), where(shown, name), "no values for this dataset in the batch");
          write_tensor_rows(f, col, r.rows, it->second, n, shown);
        }
      }
    }
    const auto e = static_cast<int64_t>(op.errors.size());
    if (e > 0) {
      std::vector<std::string> ids, paths, reasons;
      std::vector<int64_t> index;
      for (const auto& err : op.errors) {
        ids.push_back(err.id);
        paths.push_back(err.path);
        reasons.push_back(err.reason);
        index.push_back(err.index);
      }
      write_string_rows(f, kErrorColumns[0], r.errors, ids, shown);
      write_string_rows(f, kErrorColumns[1], r.errors, paths, shown);
      write_rows(f, kErrorColumns[2], r.errors, e, index.data(), shown);
      write_string_rows(f, kErrorColumns[3], r.errors, reasons, shown);
    }
    r.rows += n;
    r.errors += e;
    for (const auto& [k, v] : op.attributes)
      h5::write_attribute(f, k, v, shown);
    h5::write_attribute(f, "num_images", std::to_string(r.rows), shown);
    h5::write_attribute(f, "num_errors", std::to_string(r.errors), shown);
  }

  // Replaces replica r by a copy of the committed file (a fresh inode), e.g. when a reader
  // still holds the old one open.
  void recopy(Replica& r) {
    const auto& c = replicas[static_cast<std::size_t>(committed)];
    ::unlink(r.path.c_str());  // a reader may still hold the old inode: a new one
    copy_checked(c.path, r.path, shown);
    r.applied = c.applied;
    r.rows = c.rows;
    r.errors = c.errors;
    r.damaged = false;
  }

  // Brings the idle replica up to every op, closes it and makes path name it.
  void commit() {
    auto& r = replicas[static_cast<std::size_t>(1 - committed)];
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    if (r.damaged) recopy(r);
    hid_t id = H5Fopen(r.path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    if (id < 0) {
      // A reader (h5py, a report) still has this inode open from when path named it, or the
      // replica was damaged by a failed write: start it again from the committed file.
      H5Eclear2(H5E_DEFAULT);
      recopy(r);
      id = H5Fopen(r.path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
      h5::check_h5(id >= 0, shown, "cannot open for writing");
    }
    h5::Handle file(id);
    try {
      for (std::size_t k = r.applied; k < next; ++k)
        apply(file.get(), r, ops[k - base]);
      r.applied = next;
      close_checked(file, shown);
      sync_path(r.path, shown);
    } catch (...) {
      r.damaged = true;
      throw;
    }
    link_over(r.path, path, shown);
    committed = 1 - committed;
    while (!ops.empty() && base < std::min(replicas[0].applied, replicas[1].applied)) {
      ops.pop_front();
      ++base;
    }
  }

  void push(ResultRows rows_in, std::vector<ResultError> errors_in) {
    Op op;
    op.rows = std::move(rows_in);
    op.errors = std::move(errors_in);
    op.attributes = std::move(pending_attributes);
    pending_attributes.clear();
    const auto n = static_cast<int64_t>(op.rows.size());
    if (n > 0)
      for (const auto& col : columns(layout))
        if (col.compress)
          op.chunks[col.name] = deflate_rows(col, column_tensor(op.rows, col.name), n, shown,
                                             !unchecked.count(col.name));
    rows += static_cast<int64_t>(op.rows.size());
    errors += static_cast<int64_t>(op.errors.size());
    ops.push_back(std::move(op));
    ++next;
    commit();
  }
};

ResultsWriter::ResultsWriter(std::unique_ptr<State> state) : s_(std::move(state)) {}
ResultsWriter::ResultsWriter(ResultsWriter&&) noexcept = default;
ResultsWriter& ResultsWriter::operator=(ResultsWriter&&) noexcept = default;
ResultsWriter::~ResultsWriter() = default;

ResultsWriter ResultsWriter::create(const std::string& path, const ResultsHeader& header,
                                    const ResultsLayout& layout, const std::string& shown_as) {
  auto s = std::make_unique<State>(path, layout, shown_as);
  // The empty file is built as replica a, copied to b, and linked at path: a kill before that
  // leaves no file at path (or the previous one, with --overwrite), never a partial one.
  const std::string& shown = s->shown;
  h5::Handle file = open_file(s->replicas[0].path, true, shown);
  const hid_t f = file.get();
  h5::write_attribute(f, "format", kResultsFormat, shown);
  h5::write_attribute(f, "schema_version", kResultsSchemaVersion, shown);
  for (const auto& [k, v] : header)
    h5::write_attribute(f, k, v, shown);
  std::vector<std::string> names;
  for (const auto& m : layout.maps)
    names.push_back(m.name);
  h5::write_attribute(f, "maps", json_list(names), shown);
  h5::write_attribute(f, "tta", layout.tta ? "dihedral8" : "none", shown);
  h5::write_attribute(f, "num_images", "0", shown);
  h5::write_attribute(f, "num_errors", "0", shown);
  h5::write_attribute(f, "finished_at", "", shown);
  for (const auto& col : columns(layout))
    create_column(f, col, shown);
  for (const auto& col : kErrorColumns)
    create_column(f, col, shown);
  const std::string size = nlohmann::json({layout.height, layout.width}).dump();
  for (const auto& m : layout.maps) {
    const auto name = "attention/" + m.name;
    h5::Handle set(H5Dopen2(f, name.c_str(), H5P_DEFAULT));
    h5::write_attribute(set.get(), "source", m.source, shown);
    h5::write_attribute(set.get(), "normalization", m.normalization, shown);
    if (!m.weights.empty()) h5::write_attribute(set.get(), "weights", m.weights, shown);
    h5::write_attribute(set.get(), "upsample", "bilinear", shown);
    h5::write_attribute(set.get(), "align_corners", "false", shown);
    h5::write_attribute(set.get(), "target_size", size, shown);
    h5::write_attribute(set.get(), "native_size", nlohmann::json({m.height, m.width}).dump(),
                        shown);
    h5::write_attribute(set.get(), "tta_inverse", layout.tta ? "applied" : "none", shown);
    if (layout.overlays) {
      const auto oname = "overlays/" + m.name;
      h5::Handle o(H5Dopen2(f, oname.c_str(), H5P_DEFAULT));
      h5::write_attribute(o.get(), "colormap", "jet", shown);
      h5::write_attribute(o.get(), "alpha", "0.5", shown);
    }
  }
  close_checked(file, shown);
  s->recopy(s->replicas[1]);
  sync_path(s->replicas[0].path, shown);
  link_over(s->replicas[0].path, path, shown);
  return ResultsWriter(std::move(s));
}

ResultsWriter ResultsWriter::resume(const std::string& path, const ResultsHeader& expected,
                                    const ResultsLayout& layout) {
  auto s = std::make_unique<State>(path, layout, "");
  int64_t rows = 0, errors = 0;
  bool torn = false;
  {
    check(std::filesystem::exists(path), path, "no such file");
    // Also what lets classify read the file back without a child at the end
    // (read_own_results): its earlier rows are checked here.
    h5::check_untrusted_file(path, false);
    h5::Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    h5::check_h5(file.valid(), path, "cannot open as HDF5");
    const hid_t f = file.get();
    auto attr = [&](const std::string& name) {
      if (h5::has_attribute(f, name)) return h5::read_string_attribute(f, name, path);
      return std::string(name == "precision" ? kPrecisionBeforeTheAttribute : "<absent>");
    };
    check(attr("format") == kResultsFormat, path, "is not an attnscope results file");
    check(attr("schema_version") == kResultsSchemaVersion, path, "has schema version ",
          excerpt(attr("schema_version"), 40), ", this attnscope writes ", kResultsSchemaVersion,
          "; cannot resume it");
    for (const auto& [k, v] : expected) {
      if (attr(k) == v) continue;
      if (k == "threshold" && threshold_means_nothing(attr("class_names"))) continue;
      // A config's changed fields by name (both texts cut at 200 bytes hid them).
      const auto changes = json_changes(attr(k), v, "stored", "now");
      throw Error(path,
                  changes.empty()
                      ? concat("cannot resume: its ", k, " differs from this run's (stored ",
                               excerpt(attr(k), 200), ", now ", excerpt(v, 200), ")")
                      : concat("cannot resume: its ", k, " differs from this run's in ", changes));
    }
    std::vector<std::string> names;
    for (const auto& m : layout.maps)
      names.push_back(m.name);
    check(attr("maps") == json_list(names), path, "cannot resume: it stores the maps ",
          excerpt(attr("maps"), 200), ", this run asks for ", json_list(names));
    check(attr("tta") == (layout.tta ? "dihedral8" : "none"), path,
          "cannot resume: --tta differs from the stored run");
    // Overlays and per-image measures: the stored run's and this run's must be the same
    // datasets, or the resumed file would end with some of them short.
    std::set<std::string> writes;
    for (const auto& col : columns(layout))
      writes.insert(col.name);
    // The option that writes a dataset, and the stored run's command line: the hint names what
    // differs instead of every option that could.
    const auto option_of = [](const std::string& name) -> std::string {
      if (name.rfind("overlays/", 0) == 0) return "--overlays";
      return "--faithfulness";
    };
    const auto stored_command = attr("command_line");
    const auto made_by = stored_command.empty() || stored_command == "<absent>"
                             ? std::string()
                             : concat("; its command line: ", excerpt(stored_command, 300));
    for (const char* group : {"overlays", "measures"}) {
      std::vector<std::string> stored;
      list_datasets(f, group, stored);
      for (const auto& name : stored)
        check(writes.count(name) != 0, path, "cannot resume: it stores /", name,
              ", which this run does not write (it was made with ", option_of(name), made_by, ")");
      for (const auto& name : writes)
        check(name.rfind(std::string(group) + "/", 0) != 0 || h5::exists(f, name), path,
              "cannot resume: this run writes /", name,
              ", which it does not store (it was made "
              "without ",
              option_of(name), made_by, ")");
    }
    // Rows of the last complete batch: num_images, or the shortest dataset (files written by
    // attnscope before the replicas could hold a torn batch).
    auto consistent = [&](const std::vector<Column>& cols, const std::string& count_attr) {
      int64_t n = std::numeric_limits<int64_t>::max(), longest = 0;
      for (const auto& col : cols) {
        const auto k = rows_of(f, col, path);
        n = std::min(n, k);
        longest = std::max(longest, k);
      }
      if (h5::has_attribute(f, count_attr))
        n = std::min(n, parse_row_count(attr(count_attr), where(path, "@" + count_attr)));
      torn = torn || longest != n;
      return n;
    };
    rows = consistent(columns(layout), "num_images");
    errors = consistent(kErrorColumns, "num_errors");
    // Every row the run continues is read through once, in a child (the file came from
    // elsewhere): a damaged chunk would otherwise stay in the file the resumed run completes.
    // Rows past the counts (a torn batch of an older version) are trimmed below, not read.
    try {
      h5::read_in_child(path, [&] {
        verify_rows(f, columns(layout), rows, path);
        verify_rows(f, kErrorColumns, errors, path);
      });
    } catch (const Error& e) {
      if (e.subject().rfind(path + ":/", 0) != 0) throw;  // not the read (fork, pipe)
      throw Error(e.subject(), e.message() +
                                   ": the file cannot be resumed; classify again into another "
                                   "--out, without --resume");
    }
    // Builds before the --tta "max" maps were divided again by their maximum stored the mean of
    // 8 maps each peaking at 1, which peaks below 1: rows appended now would be on another
    // scale. The first rows tell (a map of this build peaks at 1, or is all 0).
    if (layout.tta && rows > 0)
      for (const auto& m : layout.maps) {
        if (m.normalization != "max") continue;
        const std::string name = "attention/" + m.name;
        h5::Handle set(H5Dopen2(f, name.c_str(), H5P_DEFAULT));
        h5::check_h5(set.valid(), where(path, name), "missing dataset");
        const hsize_t k = static_cast<hsize_t>(std::min<int64_t>(rows, 16));
        const std::vector<hsize_t> start{0, 0, 0},
            count{k, static_cast<hsize_t>(m.height), static_cast<hsize_t>(m.width)};
        std::vector<float> values(k * count[1] * count[2]);
        h5::Handle space(H5Dget_space(set.get()));
        H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                            nullptr);
        h5::Handle memory(H5Screate_simple(3, count.data(), nullptr));
        h5::check_h5(H5Dread(set.get(), H5T_NATIVE_FLOAT, memory.get(), space.get(), H5P_DEFAULT,
                             values.data()) >= 0,
                     where(path, name), "cannot read its first rows");
        const std::size_t per = count[1] * count[2];
        for (hsize_t r = 0; r < k; ++r) {
          const auto first = values.begin() + static_cast<std::ptrdiff_t>(r * per);
          const float peak = *std::max_element(first, first + static_cast<std::ptrdiff_t>(per));
          check(!(peak > 0 && peak < 1 - 1e-3), where(path, name), "row ", r, " peaks at ", peak,
                ": written by an attnscope before the --tta \"max\" maps were divided again by "
                "their maximum (each peaks at 1 now); the rows this run adds would be on another "
                "scale: classify again with --overwrite, without --resume");
        }
      }
    // An id is stored once, as an image or as an error (classify makes repeated names unique):
    // a damaged or edited id that repeats another would be classified again and stored twice.
    std::map<std::string, std::string> seen;  // id -> "images/id row N" or "errors/id row N"
    for (const char* name : {"images/id", "errors/id"}) {
      const auto ids = h5::read_string_rows(f, name, path, name[0] == 'i' ? rows : errors);
      for (std::size_t i = 0; i < ids.size(); ++i) {
        const auto [it, fresh] = seen.emplace(ids[i], concat(name, " row ", i));
        check(fresh, where(path, name), "row ", i, " holds the id '", excerpt(ids[i], 100), "' of ",
              fresh ? "" : it->second,
              " too (the file is damaged or was edited): the file cannot be resumed; classify "
              "again into another --out, without --resume");
      }
    }
    for (const auto& col : columns(layout))
      if (col.compress && !has_fletcher32(f, col.name, path)) s->unchecked.insert(col.name);
    // What report refuses to show (a stored class 7 of 2, NaN probabilities) is refused here
    // too: the resumed run completed such a file, exit 0, and report and merge then refused it.
    try {
      vision::check_report_reads(path);
    } catch (const Error& e) {
      throw Error(e.subject(), e.message() +
                                   ": the file cannot be resumed; classify again into "
                                   "another --out, without --resume");
    }
  }
  // Stale replicas of a killed run are scaffolding: path is the state to continue.
  for (auto& r : s->replicas)
    ::unlink(r.path.c_str());
  for (auto& r : s->replicas) {
    r.rows = rows;
    r.errors = errors;
  }
  s->rows = rows;
  s->errors = errors;
  // Both replicas start as copies of path (a stands for the committed state; the first
  // commit writes b), trimmed when the file holds a torn batch.
  for (auto& r : s->replicas) {
    copy_checked(path, r.path, path);
    if (!torn) continue;
    h5::Handle file = open_file(r.path, false, path);
    auto trim = [&](const std::vector<Column>& cols, int64_t n) {
      for (const auto& col : cols) {
        h5::Handle set(H5Dopen2(file.get(), col.name.c_str(), H5P_DEFAULT));
        std::vector<hsize_t> dims{static_cast<hsize_t>(n)};
        dims.insert(dims.end(), col.dims.begin(), col.dims.end());
        check(H5Dset_extent(set.get(), dims.data()) >= 0, where(path, col.name),
              "cannot trim dataset");
      }
    };
    trim(columns(layout), rows);
    trim(kErrorColumns, errors);
    close_checked(file, path);
  }
  ResultsWriter w(std::move(s));
  w.set_attribute("finished_at", "");
  return w;
}

std::map<std::string, std::string> ResultsWriter::stored() const {
  // The committed state (path, or its trimmed copy right after resume).
  h5::Handle file(H5Fopen(s_->replicas[static_cast<std::size_t>(s_->committed)].path.c_str(),
                          H5F_ACC_RDONLY, H5P_DEFAULT));
  h5::check_h5(file.valid(), s_->shown, "cannot open to read the stored ids");
  const auto& r = s_->replicas[static_cast<std::size_t>(s_->committed)];
  std::map<std::string, std::string> paths;
  for (const auto& [ids, sources, rows] : {std::tuple{"images/id", "images/source_path", r.rows},
                                           std::tuple{"errors/id", "errors/path", r.errors}}) {
    const auto id = h5::read_string_rows(file.get(), ids, s_->shown, rows);
    auto source = h5::read_string_rows(file.get(), sources, s_->shown, rows);
    for (std::size_t i = 0; i < id.size() && i < source.size(); ++i)
      paths.emplace(id[i], std::move(source[i]));
  }
  return paths;
}

int64_t ResultsWriter::num_images() const {
  return s_->rows;
}
int64_t ResultsWriter::num_errors() const {
  return s_->errors;
}
const std::string& ResultsWriter::path() const {
  return s_->path;
}

std::string ResultsWriter::attribute(const std::string& name) const {
  const auto it = s_->pending_attributes.find(name);
  if (it != s_->pending_attributes.end()) return it->second;
  for (auto op = s_->ops.rbegin(); op != s_->ops.rend(); ++op) {
    const auto a = op->attributes.find(name);
    if (a != op->attributes.end()) return a->second;
  }
  h5::Handle file(H5Fopen(s_->path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  h5::check_h5(file.valid(), s_->shown, "cannot open to read an attribute");
  return h5::has_attribute(file.get(), name)
             ? h5::read_string_attribute(file.get(), name, s_->shown)
             : std::string();
}

void ResultsWriter::set_attribute(const std::string& name, const std::string& value) {
  s_->pending_attributes[name] = value;
}

void ResultsWriter::append(const ResultRows& rows, const std::vector<ResultError>& errors) {
  s_->push(rows, errors);
}

void ResultsWriter::finish(const std::string& finished_at) {
  check(!s_->finished, s_->shown, "finished twice");
  set_attribute("finished_at", finished_at);
  s_->push({}, {});
  s_->finished = true;
  for (auto& r : s_->replicas) {  // path names the committed inode on its own
    ::unlink(r.path.c_str());
    r.path.clear();
  }
}

// ---- reading ----------------------------------------------------------------------------

namespace {

// `isolated`: first read in a forked child (h5_isolation.cpp), as every file from elsewhere is;
// false only for the file this process has just written (read_own_results).
h5::Handle open_read(const std::string& path, bool isolated = true) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  check(std::filesystem::exists(path), path, "no such file");
  if (isolated) h5::check_untrusted_file(path, false);  // a crafted file must not crash HDF5 here
  h5::Handle f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!f.valid()) {
    // Out of file descriptors (merge holds every shard open: ~1,000 shards under the usual
    // `ulimit -n` of 1024) is the process's limit, not the file's damage: asked of open(2)
    // itself, not of what HDF5 left in errno.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    const int error = fd < 0 ? errno : 0;
    if (fd >= 0) ::close(fd);
    check(error != EMFILE && error != ENFILE, path,
          "cannot be opened: the process is out of file descriptors (", std::strerror(error),
          "); raise the limit (ulimit -n) or merge the shards in groups");
  }
  if (!f.valid()) {  // said as every reader says it: empty, cut short, damaged
    h5::check_is_hdf5(path);
    h5::Handle again(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    h5::check_h5(again.valid(), path, "cannot open as HDF5");
    f = std::move(again);
  }
  check(h5::has_attribute(f.get(), "format") &&
            h5::read_string_attribute(f.get(), "format", path) == kResultsFormat,
        path, "is not an attnscope results file");
  return f;
}

herr_t collect_attribute_name(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<std::vector<std::string>*>(data)->push_back(name);
  return 0;
}

ResultsHeader read_attributes(hid_t obj, const std::string& path) {
  std::vector<std::string> names;
  hsize_t at = 0;
  check(H5Aiterate_by_name(obj, ".", H5_INDEX_NAME, H5_ITER_INC, &at, collect_attribute_name,
                           &names, H5P_DEFAULT) >= 0,
        path, "cannot list attributes");
  ResultsHeader out;
  for (const auto& name : names)
    out[name] = h5::read_string_attribute(obj, name, path);
  return out;
}

// Each group is entered once (by its address in the file): a hard link back to a group above
// (a cycle, which h5py makes with f['a/loop'] = f['a']) recursed without end before.
void collect_datasets(hid_t loc, const std::string& prefix, std::vector<std::string>& out,
                      std::set<haddr_t>& groups, const std::string& file) {
  for (const auto& child : h5::children(loc)) {
    const auto name = prefix.empty() ? child : prefix + "/" + child;
    H5O_info_t info;
    // A member that cannot be read is a damaged file, not one made with other options.
    h5::check_h5(H5Oget_info_by_name2(loc, child.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) >= 0,
                 where(file, name), "cannot read the object's header (a damaged file?)");
    if (info.type == H5O_TYPE_GROUP) {
      if (!groups.insert(info.addr).second) continue;
      h5::Handle g(H5Gopen2(loc, child.c_str(), H5P_DEFAULT));
      h5::check_h5(g.valid(), where(file, name), "cannot open the group (a damaged file?)");
      collect_datasets(g.get(), name, out, groups, file);
    } else if (info.type == H5O_TYPE_DATASET) {
      out.push_back(name);
    }
  }
}

}  // namespace

namespace {

ResultsFile read_results_from(const std::string& path, bool isolated) {
  const auto f = open_read(path, isolated);
  ResultsFile r;
  r.path = path;
  r.attributes = read_attributes(f.get(), path);
  // The rows the file counts, when it counts them (files before the counts: every row): a
  // crafted file declaring 2^25 ids beside 8 images took gigabytes to read them all in merge,
  // as it did in report. Rows past the count are a killed run's torn batch.
  const auto counted = [&](const char* key) -> int64_t {
    const auto it = r.attributes.find(key);
    return it == r.attributes.end()
               ? -1
               : parse_row_count(it->second, where(path, std::string("@") + key));
  };
  const auto images = counted("num_images"), errors = counted("num_errors");
  // Fixed-length strings too, as report reads them (h5py writes numpy "S" arrays so): a shard
  // report showed was refused by merge. The merged file stores them variable-length.
  const auto strings = [&](const char* name, int64_t limit) {
    return h5::read_string_rows(f.get(), name, path, limit, /*fixed_too=*/true);
  };
  r.ids = strings("images/id", images);
  r.paths = strings("images/source_path", images);
  r.index = read_int_rows(f.get(), "images/index", path, images);
  r.label = read_int_rows(f.get(), "images/label", path, images);
  r.logits = h5::read_tensor(f.get(), "predictions/logits", path, images);
  r.probability = h5::read_tensor(f.get(), "predictions/probability", path, images);
  r.prediction = h5::read_tensor(f.get(), "predictions/label", path, images);
  const auto eids = strings("errors/id", errors);
  const auto epaths = strings("errors/path", errors);
  const auto ereasons = strings("errors/reason", errors);
  const auto eindex = read_int_rows(f.get(), "errors/index", path, errors);
  const auto ne = std::min({eids.size(), epaths.size(), ereasons.size(), eindex.size()});
  for (std::size_t i = 0; i < ne; ++i)
    r.errors.push_back({eids[i], epaths[i], eindex[i], ereasons[i]});
  return r;
}

}  // namespace

ResultsFile read_results(const std::string& path) {
  return read_results_from(path, true);
}

ResultsFile read_own_results(const std::string& path) {
  return read_results_from(path, false);
}

std::vector<std::string> results_datasets(const std::string& path) {
  const auto f = open_read(path);
  std::vector<std::string> out;
  std::set<haddr_t> groups;
  collect_datasets(f.get(), "", out, groups, path);
  std::sort(out.begin(), out.end());
  return out;
}

void write_predictions_csv(const ResultsFile& r, const std::string& csv_path) {
  const auto classes =
      nlohmann::json::parse(r.attributes.at("class_names")).get<std::vector<std::string>>();
  std::string text = "id,path";
  for (const auto& c : classes)
    text += "," + csv_field("p_" + c);
  text += ",prediction,label\n";
  const auto prob = r.probability.to(torch::kFloat).contiguous();
  const auto pred = r.prediction.to(torch::kLong).contiguous();
  const auto n = std::min<std::size_t>(r.ids.size(), static_cast<std::size_t>(pred.numel()));
  auto name = [&](int64_t c) {
    return c >= 0 && c < static_cast<int64_t>(classes.size()) ? classes[c] : std::string();
  };
  for (std::size_t i = 0; i < n; ++i) {
    text += csv_field(r.ids[i]) + "," + csv_field(r.paths[i]);
    for (int64_t c = 0; c < static_cast<int64_t>(classes.size()); ++c) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.6g",
                    prob.index({static_cast<int64_t>(i), c}).item<float>());
      text += std::string(",") + buf;
    }
    text += "," + csv_field(name(pred[static_cast<int64_t>(i)].item<int64_t>())) + "," +
            csv_field(name(r.label[i])) + "\n";
  }
  write_file_atomically(csv_path, text);
}

void write_errors_csv(const ResultsFile& r, const std::string& csv_path) {
  std::string text = "id,path,reason\n";
  for (const auto& e : r.errors)
    text += csv_field(e.id) + "," + csv_field(e.path) + "," + csv_field(e.reason) + "\n";
  write_file_atomically(csv_path, text);
}

// ---- merge ------------------------------------------------------------------------------

namespace {

// Bytes of one row of any dataset: a float32 map at the largest image side, 4 * 16384^2.
constexpr uint64_t kMaxMergeRowBytes = uint64_t{1} << 30;

// Copies rows of one dataset of `in` to rows `dest[i]` of the same dataset of `out`.
void copy_rows(hid_t in, hid_t out, const std::string& name, const std::vector<int64_t>& dest,
               const std::string& in_path, const std::string& out_path) {
  if (dest.empty()) return;
  h5::Handle src(H5Dopen2(in, name.c_str(), H5P_DEFAULT));
  h5::Handle dst(H5Dopen2(out, name.c_str(), H5P_DEFAULT));
  h5::check_h5(src.valid(), where(in_path, name), "missing dataset");
  h5::check_h5(dst.valid(), where(out_path, name), "missing dataset");
  h5::Handle ftype(H5Dget_type(src.get()));
  const bool is_string = H5Tget_class(ftype.get()) == H5T_STRING;
  const bool variable = is_string && H5Tis_variable_str(ftype.get()) > 0;
  const std::size_t fixed_size = is_string && !variable ? H5Tget_size(ftype.get()) : 0;
  check(!is_string || variable || (fixed_size > 0 && fixed_size < (1u << 20)), where(in_path, name),
        "unreasonable string size ", fixed_size);
  h5::Handle mtype(is_string ? H5Tcopy(h5::utf8_string_type().get())
                             : H5Tget_native_type(ftype.get(), H5T_DIR_ASCEND));
  h5::Handle sspace(H5Dget_space(src.get()));
  const int rank = H5Sget_simple_extent_ndims(sspace.get());
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  H5Sget_simple_extent_dims(sspace.get(), dims.data(), nullptr);
  hsize_t row_elems = 1;
  for (int d = 1; d < rank; ++d)
    row_elems *= dims[static_cast<std::size_t>(d)];
  const std::size_t row_bytes = row_elems * H5Tget_size(mtype.get());
  std::vector<char> buffer(row_bytes);
  h5::Handle dspace(H5Dget_space(dst.get()));
  std::vector<hsize_t> count = dims, start(dims.size(), 0);
  count[0] = 1;
  h5::Handle memory(H5Screate_simple(rank, count.data(), nullptr));
  for (std::size_t r = 0; r < dest.size(); ++r) {
    start[0] = r;
    H5Sselect_hyperslab(sspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    std::vector<std::string> strings;
    std::vector<const char*> ptrs;
    const void* row = buffer.data();
    if (is_string && !variable) {
      // Fixed-length, NUL-padded (a shard rewritten by h5py): stored variable-length here.
      std::vector<char> fixed(row_elems * fixed_size);
      h5::check_h5(H5Dread(src.get(), ftype.get(), memory.get(), sspace.get(), H5P_DEFAULT,
                           fixed.data()) >= 0,
                   where(in_path, name), concat("cannot read row ", r));
      strings = h5::fixed_strings(fixed.data(), row_elems, fixed_size, ftype.get());
      for (const auto& v : strings)
        ptrs.push_back(v.c_str());
      row = ptrs.data();
    } else if (is_string) {
      strings = h5::read_vlen_strings(src.get(), memory.get(), sspace.get(), row_elems,
                                      where(in_path, name));
      for (const auto& v : strings)
        ptrs.push_back(v.c_str());
      row = ptrs.data();
    } else {
      h5::check_h5(H5Dread(src.get(), mtype.get(), memory.get(), sspace.get(), H5P_DEFAULT,
                           buffer.data()) >= 0,
                   where(in_path, name), concat("cannot read row ", r));
    }
    start[0] = static_cast<hsize_t>(dest[r]);
    H5Sselect_hyperslab(dspace.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    h5::check_h5(
        H5Dwrite(dst.get(), mtype.get(), memory.get(), dspace.get(), H5P_DEFAULT, row) >= 0,
        where(out_path, name), "cannot write");
  }
}

// Creates `name` in out like it is in `in` (type, chunking, filters, attributes) with `rows` rows.
void create_like(hid_t in, hid_t out, const std::string& name, int64_t rows,
                 const std::string& in_path, const std::string& out_path) {
  h5::Handle src(H5Dopen2(in, name.c_str(), H5P_DEFAULT));
  h5::Handle type(H5Dget_type(src.get()));
  h5::Handle dcpl(H5Dget_create_plist(src.get()));
  // Strings are stored variable-length, as classify writes them, whatever the first shard held;
  // a fixed-length one's filters (Fletcher-32) and fill value do not apply to them: its chunk
  // shape only.
  if (H5Tget_class(type.get()) == H5T_STRING) {
    if (H5Tis_variable_str(type.get()) <= 0) {
      h5::Handle fresh(H5Pcreate(H5P_DATASET_CREATE));
      hsize_t chunk[H5S_MAX_RANK] = {0};
      const int chunk_rank = H5Pget_layout(dcpl.get()) == H5D_CHUNKED
                                 ? H5Pget_chunk(dcpl.get(), H5S_MAX_RANK, chunk)
                                 : -1;
      if (chunk_rank > 0) H5Pset_chunk(fresh.get(), chunk_rank, chunk);
      dcpl = std::move(fresh);
    }
    type = h5::Handle(H5Tcopy(h5::utf8_string_type().get()));
  }
  h5::Handle sspace(H5Dget_space(src.get()));
  const int rank = H5Sget_simple_extent_ndims(sspace.get());
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank)), max_dims;
  H5Sget_simple_extent_dims(sspace.get(), dims.data(), nullptr);
  max_dims = dims;
  dims[0] = static_cast<hsize_t>(rows);
  max_dims[0] = H5S_UNLIMITED;
  h5::Handle space(H5Screate_simple(rank, dims.data(), max_dims.data()));
  h5::Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  if (H5Pget_layout(dcpl.get()) != H5D_CHUNKED) {
    // A file rewritten by another tool (h5py's default is contiguous): an unlimited first
    // dimension needs chunks, one row each as attnscope writes them.
    dcpl = h5::Handle(H5Pcreate(H5P_DATASET_CREATE));
    std::vector<hsize_t> chunk(dims.begin(), dims.end());
    chunk[0] = 1;
    for (auto& c : chunk)
      c = std::max<hsize_t>(c, 1);
    H5Pset_chunk(dcpl.get(), rank, chunk.data());
  }
  h5::Handle dst(
      H5Dcreate2(out, name.c_str(), type.get(), space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT));
  check(dst.valid(), where(out_path, name), "cannot create dataset");
  for (const auto& [k, v] : read_attributes(src.get(), where(in_path, name)))
    h5::write_attribute(dst.get(), k, v, out_path);
}

}  // namespace

namespace {

// The shards "i/N" of one N that `files` hold together: each file's `shard` attribute, or for a
// file merge wrote its `merged_shards` (a JSON array of "i/N"). Nothing when a file's shards
// are not known (an older merged file, a crafted value: not two numbers of up to 18 digits) or
// the files name shards of different N.
struct HeldShards {
  std::set<long long> held;
  long long of = 0;
};

std::optional<HeldShards> held_shards(const std::vector<ResultsFile>& files) {
  const auto number = [](const std::string& t) -> long long {
    if (t.empty() || t.size() > 18 || t.find_first_not_of("0123456789") != std::string::npos)
      return -1;
    return std::stoll(t);
  };
  HeldShards out;
  const auto add = [&](const std::string& shard) {
    const auto slash = shard.find('/');
    if (slash == std::string::npos) return false;
    const long long index = number(shard.substr(0, slash)), n = number(shard.substr(slash + 1));
    if (index < 0 || n < 1 || index >= n || (out.of != 0 && n != out.of)) return false;
    out.of = n;
    out.held.insert(index);
    return true;
  };
  for (const auto& f : files) {
    const auto it = f.attributes.find("shard");
    if (it == f.attributes.end()) return std::nullopt;
    if (it->second != "merged") {
      if (!add(it->second)) return std::nullopt;
      continue;
    }
    const auto list = f.attributes.find("merged_shards");
    if (list == f.attributes.end()) return std::nullopt;
    const auto parsed = nlohmann::json::parse(list->second, nullptr, false);
    if (!parsed.is_array() || parsed.empty()) return std::nullopt;
    for (const auto& s : parsed)
      if (!s.is_string() || !add(s.get<std::string>())) return std::nullopt;
  }
  if (out.of == 0) return std::nullopt;
  return out;
}

// Says which shards of the N are not among `files`: the merged file lacks their images.
std::vector<std::string> missing_shards(const std::optional<HeldShards>& shards,
                                        const std::string& out) {
  if (!shards || shards->of <= 1 || static_cast<long long>(shards->held.size()) >= shards->of)
    return {};
  const auto& [held, of] = *shards;
  std::string missing;
  int named = 0;
  for (long long i = 0; i < of && named < 3; ++i)
    if (!held.count(i)) missing += concat(named++ ? ", " : "", i, "/", of);
  const auto count = of - static_cast<long long>(held.size());
  return {concat(out, " holds ", held.size(), " of ", of,
                 " shards: ", count > 1 ? "shards " : "shard ", missing,
                 count > 3 ? concat(" and ", count - 3, " more") : std::string(),
                 count > 1 ? " are" : " is", " missing (merge every shard's results.h5)")};
}

}  // namespace

std::vector<std::string> merge_results(const std::vector<std::string>& inputs,
                                       const std::string& out, const std::string& command_line) {
  check(!inputs.empty(), "merge", "no input files");
  std::vector<ResultsFile> files;
  for (const auto& p : inputs)
    files.push_back(read_results(p));
  const auto& first = files.front();
  const auto datasets = results_datasets(first.path);
  auto attr = [](const ResultsFile& f, const std::string& k) {
    const auto it = f.attributes.find(k);
    if (it != f.attributes.end()) return it->second;
    return std::string(k == "precision" ? kPrecisionBeforeTheAttribute : "<absent>");
  };
  // A shard whose classify run was stopped or killed (finished_at "") misses images; merged,
  // they would be lost without a word and the file could claim to be finished.
  for (const auto& f : files)
    check(attr(f, "finished_at") != "", f.path,
          "is from a classify run that did not finish (finished_at is empty): complete it with "
          "the same command and --resume, then merge");
  for (std::size_t i = 1; i < files.size(); ++i) {
    const auto& f = files[i];
    for (const char* k :
         {"schema_version", "model_checksum", "model_config", "preprocessing_config", "class_names",
          "maps", "tta", "threshold", "temperature", "faithfulness", "precision"}) {
      if (attr(f, k) == attr(first, k)) continue;
      if (std::string(k) == "threshold" && threshold_means_nothing(attr(first, "class_names")))
        continue;
      const auto changes = json_changes(attr(first, k), attr(f, k), "there", "here");
      throw Error(f.path, changes.empty() ? concat("cannot be merged with ", first.path, ": its ",
                                                   k, " differs (", excerpt(attr(f, k)), " vs ",
                                                   excerpt(attr(first, k)), ")")
                                          : concat("cannot be merged with ", first.path, ": its ",
                                                   k, " differs in ", changes));
    }
    const auto own = results_datasets(f.path);
    if (own != datasets) {
      std::vector<std::string> only_here, only_there;
      std::set_difference(own.begin(), own.end(), datasets.begin(), datasets.end(),
                          std::back_inserter(only_here));
      std::set_difference(datasets.begin(), datasets.end(), own.begin(), own.end(),
                          std::back_inserter(only_there));
      throw Error(f.path,
                  concat("cannot be merged with ", first.path, ": it holds other datasets (",
                         only_here.empty() ? "lacks /" + excerpt(only_there.front(), 100)
                                           : "has /" + excerpt(only_here.front(), 100),
                         only_here.size() + only_there.size() > 1 ? " and more" : "",
                         "; --overlays, --faithfulness or maps differ?)"));
    }
  }
  std::vector<h5::Handle> ins;
  for (const auto& f : files)
    ins.push_back(open_read(f.path));
  // The earliest start and the latest end of the shards (ISO 8601 UTC text sorts by time).
  std::string started = attr(first, "started_at"), finished = attr(first, "finished_at");
  for (const auto& f : files) {
    if (f.attributes.count("started_at")) started = std::min(started, attr(f, "started_at"));
    if (f.attributes.count("finished_at")) finished = std::max(finished, attr(f, "finished_at"));
  }
  // Every dataset holds a row for each image (errors/*: each error) the merge copies — the
  // file's num_images / num_errors, or where those are absent its longest id or prediction
  // list (so a short dataset is refused, not a cause to drop rows) — and rows of the first
  // file's shape (per-class datasets: one column per class name).
  const auto classes = nlohmann::json::parse(attr(first, "class_names"), nullptr, false);
  const auto num_classes = classes.is_array() ? static_cast<hsize_t>(classes.size()) : 0;
  std::map<std::string, std::vector<hsize_t>> row_shape;  // of the first file
  // Each dataset's type and attributes, of the first file: the merged file keeps the first's
  // (create_like), so a shard whose map is on another scale (@normalization "max" vs "none")
  // or of other numbers (float32 overlays, converted to uint8) was merged under them silently.
  std::map<std::string, std::pair<std::string, ResultsHeader>> kind;
  std::vector<std::size_t> file_images(files.size()), file_errors(files.size());
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& f = files[i];
    const auto& in = ins[i];
    auto count = [&](const char* key, std::size_t fallback) {
      const auto it = f.attributes.find(key);
      if (it == f.attributes.end()) return fallback;
      return static_cast<std::size_t>(
          parse_row_count(it->second, where(f.path, std::string("@") + key)));
    };
    const auto images = count("num_images", std::max(f.ids.size(),
                                                     static_cast<std::size_t>(f.prediction.numel())));
    const auto errors = count("num_errors", f.errors.size());
    check(f.ids.size() >= images && static_cast<std::size_t>(f.prediction.numel()) >= images,
          f.path, "holds ", std::min(f.ids.size(), static_cast<std::size_t>(f.prediction.numel())),
          " ids or predictions for its ", images, " images: the file is damaged");
    check(f.errors.size() >= errors, f.path, "holds ", f.errors.size(),
          " complete error rows for its ", errors, " errors: the file is damaged");
    file_images[i] = images;
    file_errors[i] = errors;
    // The values report checks, so that a merged file is one report reads.
    const auto n = static_cast<int64_t>(images);
    const bool probabilities =
        f.probability.defined() && f.probability.dim() == 2 && f.probability.size(0) >= n;
    check_result_values(f.label, f.prediction, probabilities ? f.probability : at::Tensor(), n,
                        static_cast<int64_t>(num_classes), f.path, ": cannot merge it");
    for (const auto& name : datasets) {
      const bool is_error = name.rfind("errors/", 0) == 0;
      const auto needed = is_error ? errors : images;
      h5::Handle set(H5Dopen2(in.get(), name.c_str(), H5P_DEFAULT));
      check(set.valid(), where(f.path, name), "cannot open the dataset");
      h5::Handle space(H5Dget_space(set.get()));
      hsize_t dims[H5S_MAX_RANK] = {0};
      const int rank = H5Sget_simple_extent_dims(space.get(), dims, nullptr);
      check(rank >= 1 && dims[0] >= needed, where(f.path, name), "holds ", rank >= 1 ? dims[0] : 0,
            " rows for the file's ", needed, is_error ? " errors" : " images",
            ": the file is damaged");
      const std::vector<hsize_t> shape(dims + 1, dims + rank);
      const auto show = row_shape_text;
      {
        // One row is copied at a time: bounded, so that a crafted (sparse) shape is one line,
        // not an allocation of its size (a (100000, 100000) map row was 40 GB: bad_alloc). Each
        // shard's own: a string costs its bytes (a fixed-length shard's size may differ from
        // the first's) and some 64 more (a std::string, a pointer, the entry written).
        h5::Handle type(H5Dget_type(set.get()));
        const bool text = H5Tget_class(type.get()) == H5T_STRING;
        const bool variable = text && H5Tis_variable_str(type.get()) > 0;
        long double row_bytes = static_cast<long double>(
            text ? (variable ? 0 : H5Tget_size(type.get())) + 64 : H5Tget_size(type.get()));
        for (const auto d : shape)
          row_bytes *= static_cast<long double>(d);
        check(row_bytes <= static_cast<long double>(kMaxMergeRowBytes), where(f.path, name),
              "has rows of shape ", show(shape), ", larger than the ", kMaxMergeRowBytes >> 20,
              " MiB a results file's row can hold: the file is damaged or not attnscope's");
      }
      if (i == 0) {
        const bool per_class = name == "predictions/logits" || name == "predictions/probability" ||
                               name == "predictions/probability_std";
        check(!per_class || (shape.size() == 1 && shape[0] == num_classes), where(f.path, name),
              "has rows of shape ", show(shape), " for the file's ", num_classes,
              " class names: the file is damaged");
        row_shape[name] = shape;
      } else {
        check(shape == row_shape[name], where(f.path, name), "has rows of shape ", show(shape),
              ", ", first.path, " has ", show(row_shape[name]), ": cannot merge them");
      }
      h5::Handle type(H5Dget_type(set.get()));
      std::pair<std::string, ResultsHeader> own{h5::type_name(type.get()),
                                                read_attributes(set.get(), f.path)};
      if (i == 0) {
        kind[name] = std::move(own);
        continue;
      }
      const auto& theirs = kind[name];
      check(own.first == theirs.first, where(f.path, name), "holds ", own.first, " values, ",
            first.path, " ", theirs.first, ": cannot merge them");
      for (const auto& [key, value] : own.second) {
        const auto at = theirs.second.find(key);
        const auto there = at == theirs.second.end() ? std::string("<absent>") : at->second;
        check(there == value, where(f.path, name + "/@" + key), "is '", excerpt(value), "', ",
              first.path, "'s '", excerpt(there), "': cannot merge them");
      }
      for (const auto& [key, value] : theirs.second)
        check(own.second.count(key) > 0, where(f.path, name), "has no @", key, ", ", first.path,
              "'s is '", excerpt(value), "': cannot merge them");
    }
  }
  // Merged order: by input index, rows and errors separately.
  struct Ref {
    int64_t index;
    std::size_t file, row;
  };
  std::vector<Ref> rows, errs;
  // id -> the input holding it and where ("images/id row 3")
  std::map<std::string, std::pair<std::size_t, std::string>> owner;
  // Where else an id is: another input, or another row of this one.
  auto also_in = [&](const std::pair<std::size_t, std::string>& other, std::size_t i,
                     const std::string& here) -> std::string {
    return other.first != i ? "is also in " + files[other.first].path
                            : concat("is in two of its rows (", other.second, " and ", here, ")");
  };
  std::map<int64_t, std::string> index_owner;  // an input's position is one image's (or error's)
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& f = files[i];
    for (std::size_t r = 0; r < file_images[i]; ++r) {
      const auto here = concat("images/id row ", r);
      const auto [it, fresh] = owner.emplace(f.ids[r], std::make_pair(i, here));
      check(fresh, f.path, "cannot be merged: image id '", excerpt(f.ids[r]), "' ",
            fresh ? "" : also_in(it->second, i, here));
      const auto [at, unique] = index_owner.emplace(f.index[r], f.path);
      check(unique, where(f.path, "images/index"), "row ", r, " holds input position ", f.index[r],
            ", which ", at->second == f.path ? "another row of it" : at->second,
            " also holds: cannot merge it");
      rows.push_back({f.index[r], i, r});
    }
    for (std::size_t r = 0; r < file_errors[i]; ++r) {
      const auto here = concat("errors/id row ", r);
      const auto [it, fresh] = owner.emplace(f.errors[r].id, std::make_pair(i, here));
      check(fresh, f.path, "cannot be merged: id '", excerpt(f.errors[r].id), "' ",
            fresh ? "" : also_in(it->second, i, here));
      // An error's position too (one an image holds as well wrote both; -1: none known).
      if (f.errors[r].index >= 0) {
        const auto [at, unique] = index_owner.emplace(f.errors[r].index, f.path);
        check(unique, where(f.path, "errors/index"), "row ", r, " holds input position ",
              f.errors[r].index, ", which ",
              at->second == f.path ? "another row of it" : at->second,
              " also holds: cannot merge it");
      }
      errs.push_back({f.errors[r].index, i, r});
    }
  }
  auto by_index = [](const Ref& a, const Ref& b) {
    return a.index != b.index ? a.index < b.index : a.file < b.file;
  };
  std::stable_sort(rows.begin(), rows.end(), by_index);
  std::stable_sort(errs.begin(), errs.end(), by_index);
  // dest[file][row] = merged row
  std::vector<std::vector<int64_t>> dest_rows(files.size()), dest_errs(files.size());
  for (std::size_t i = 0; i < files.size(); ++i) {
    dest_rows[i].resize(file_images[i]);
    dest_errs[i].resize(file_errors[i]);
  }
  for (std::size_t k = 0; k < rows.size(); ++k)
    dest_rows[rows[k].file][rows[k].row] = static_cast<int64_t>(k);
  for (std::size_t k = 0; k < errs.size(); ++k)
    dest_errs[errs[k].file][errs[k].row] = static_cast<int64_t>(k);

  // Whatever report would refuse to show (a schema version, a map or a value it cannot read)
  // is refused here too, so that a merged file is one report reads.
  for (const auto& f : files)
    vision::check_report_reads(f.path);

  const auto shards = held_shards(files);
  const auto warnings = missing_shards(shards, out);
  AtomicFile target(out);
  {
    auto o = open_file(target.temp_path(), true, out);
    for (const auto& [k, v] : first.attributes)
      if (k != "merged_shards") h5::write_attribute(o.get(), k, v, out);
    if (first.attributes.count("started_at"))
      h5::write_attribute(o.get(), "started_at", started, out);
    if (first.attributes.count("finished_at"))
      h5::write_attribute(o.get(), "finished_at", finished, out);
    if (threshold_means_nothing(attr(first, "class_names")))
      h5::write_attribute(o.get(), "threshold", "null", out);
    h5::write_attribute(o.get(), "shard", "merged", out);
    h5::write_attribute(o.get(), "command_line", command_line, out);
    h5::write_attribute(o.get(), "num_images", std::to_string(rows.size()), out);
    h5::write_attribute(o.get(), "num_errors", std::to_string(errs.size()), out);
    nlohmann::json sources = nlohmann::json::array();
    for (const auto& f : files)
      sources.push_back(datasets::text::escaped_name(f.path));  // JSON text is UTF-8
    h5::write_attribute(o.get(), "merged_from", sources.dump(), out);
    // The shards it holds, so that a later merge of it with the others can tell which are
    // missing.
    if (shards) {
      nlohmann::json held = nlohmann::json::array();
      for (const auto i : shards->held)
        held.push_back(concat(i, "/", shards->of));
      h5::write_attribute(o.get(), "merged_shards", held.dump(), out);
    }
    for (const auto& name : datasets) {
      const bool is_error = name.rfind("errors/", 0) == 0;
      create_like(ins[0].get(), o.get(), name,
                  static_cast<int64_t>(is_error ? errs.size() : rows.size()), files[0].path, out);
      for (std::size_t i = 0; i < files.size(); ++i)
        copy_rows(ins[i].get(), o.get(), name, is_error ? dest_errs[i] : dest_rows[i],
                  files[i].path, out);
    }
    close_checked(o, out);
  }
  target.commit();
  return warnings;
}

}  // namespace attnscope::pipeline
