#pragma once
// Thin RAII layer over the HDF5 C API: files, groups, tensor datasets and string attributes.
// THE way attnscope reads and writes HDF5:
// - every failure throws attnscope::Error naming the file and the object, with the reason
//   taken from HDF5's error stack ("File too large", "unable to lock file"); HDF5 never
//   prints its stack itself;
// - a new file is written through OutputFile: to a temporary file beside the target, closed
//   with a checked close, then renamed (AtomicFile), so a failed run, a full disk or a kill
//   leaves the previous file untouched;
// - a failed flush or close can leave HDF5's file object half torn down; the library's own
//   atexit clean-up would then crash inside H5F__close_cb (HDF5 1.10). attnscope therefore
//   turns that clean-up off (H5dont_atexit, before the library starts): the kernel closes
//   the descriptors at exit, and every file attnscope keeps was closed explicitly before.

#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "attnscope/atomic_file.h"

namespace attnscope::pipeline::h5 {

/// Starts the HDF5 library the attnscope way (no atexit clean-up, no printed error stacks).
/// Every function here calls it; call it yourself before using the HDF5 C API directly, in
/// every thread (the silencing of error stacks is per thread).
void init();

/// The most specific reason on HDF5's current error stack ("File too large", "unable to
/// lock file, errno = 11, ..."), or "" when the stack is empty. Clears the stack.
std::string last_error();

/// HDF5's words for a damaged or cut file in plain ones (last_error uses it): "truncated file:
/// eof = 96000, ..., stored_eof = 136616" is "the file is cut short: it holds 96000 bytes, its
/// header says 136616; ..."; a chunk's checksum or deflate stream that does not hold, and
/// metadata with a wrong signature or checksum, say the file is damaged (an unknown format
/// version: damaged or from a newer HDF5). Other text as given.
std::string plain_reason(const std::string& hdf5_text);

/// Throws Error(subject, what + " (" + last_error() + ")") unless cond holds.
void check_h5(bool cond, const std::string& subject, const std::string& what);

/// HDF5's library version, e.g. "1.10.8".
std::string hdf5_version();

/// An owned HDF5 identifier, closed with the right H5*close on destruction.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(Handle&& other) noexcept : id_(other.id_) { other.id_ = -1; }
  Handle& operator=(Handle&& other) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  /// Gives up ownership without closing.
  hid_t release() {
    const hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_ = -1;
};

class File {
 public:
  /// Creates (truncates) a file in place. New outputs go through OutputFile instead.
  /// `name` is what errors call the file (default: path).
  static File create(const std::string& path, const std::string& name = "");
  /// Opens an existing file; throws Error naming the path if it is missing or not HDF5.
  static File open(const std::string& path, bool writable = false);

  hid_t id() const { return handle_.get(); }
  const std::string& path() const { return path_; }
  /// Writes buffered data to disk.
  void flush() const;
  /// Flushes and closes, checked: throws Error naming the file when the data did not reach
  /// the disk. The destructor closes without checking (for the error path).
  void close();

 private:
  File(Handle handle, std::string path) : handle_(std::move(handle)), path_(std::move(path)) {}
  Handle handle_;
  std::string path_;
};

/// A new HDF5 file written atomically: created at a temporary name beside `path`, then
/// commit() closes it (checked) and renames it over `path`. Without commit() (an exception,
/// a full disk) the temporary file is removed and `path` is untouched.
///
///   h5::OutputFile out(path);
///   h5::write_tensor(out.id(), "x", x, path);
///   out.commit();
class OutputFile {
 public:
  explicit OutputFile(const std::string& path);
  hid_t id() const { return file_.id(); }
  const std::string& path() const { return target_.path(); }
  /// Closes the HDF5 file (checked), fsyncs and renames it to path(); throws Error on failure.
  void commit();

 private:
  AtomicFile target_;
  File file_;
};

/// Opens a group, creating it and its parents ("a/b/c") when absent.
Handle require_group(hid_t loc, const std::string& path, const std::string& file);

/// Whether the object `name` ("a/b/c") exists below `loc`. Absent at any level is false; a
/// lookup that fails otherwise (a damaged group index, a dataset or dangling link where a
/// group belongs) throws Error naming the file and object, with HDF5's reason.
bool exists(hid_t loc, const std::string& name);

/// H5Dopen2, and when it fails an Error in the reader's words naming file:/name: no such
/// dataset, what else stands there ("is a group where a dataset belongs", a link to nothing, a
/// link into another file), or else HDF5's reason.
Handle open_dataset(hid_t loc, const std::string& name, const std::string& file);

/// "file:/name": how errors name an object inside a file.
std::string where(const std::string& file, const std::string& name);

/// The variable-length UTF-8 string type h5py reads as str.
Handle utf8_string_type();

/// Throws Error(path, "is not a regular file ...") when path is a FIFO, a device or a socket:
/// opening one to read it as HDF5 blocks (a FIFO without a writer) or reads without end.
void check_not_special_file(const std::string& path);

/// Throws Error(path, ...) unless path is a regular file with HDF5's signature: "no such
/// file", a FIFO or device, "is a folder", "is empty (0 bytes)" or "not an HDF5 file".
void check_is_hdf5(const std::string& path);

/// Names of the direct children of a group, in creation/alphabetical order. A group whose
/// index cannot be read throws Error naming the file and group (never a partial list).
std::vector<std::string> children(hid_t loc);

/// Writes a contiguous copy of a CPU tensor (float32/64, int32/64, uint8, bool as uint8)
/// as a dataset. chunk_rows > 0 makes it chunked and deflate-compressed.
void write_tensor(hid_t loc, const std::string& name, const at::Tensor& tensor,
                  const std::string& file, int chunk_rows = 0);

/// Reads a dataset into a CPU tensor of the stored type; with rows >= 0 only its first `rows`
/// rows (fewer where it holds fewer), so that what a crafted file claims past the rows a
/// reader needs is never allocated.
at::Tensor read_tensor(hid_t loc, const std::string& name, const std::string& file,
                       int64_t rows = -1);

/// Rows [0, rows) of a numeric dataset (N, ...) as float32, checked as read_tensor checks it.
/// Where HDF5 cannot read them at once (a chunk whose checksum or deflate stream does not
/// hold), they are read chunk by chunk: each row of a chunk that cannot be read is filled
/// with `fill` and its index appended to `unreadable`, and `reason` gets the first failure's
/// reason; the other rows are read. One damaged image is then one image, not the whole file.
/// A compression filter this build lacks is an Error (check_filters_available), not damage.
at::Tensor read_rows_as_float(hid_t loc, const std::string& name, const std::string& file,
                              int64_t rows, float fill, std::vector<int64_t>* unreadable,
                              std::string* reason);

/// Shape of a dataset without reading it.
std::vector<int64_t> dataset_shape(hid_t loc, const std::string& name, const std::string& file);

/// A datatype as a user reads it: "uint8", "int64", "float32", "big-endian float32", "string",
/// else "non-numeric".
std::string type_name(hid_t type);

/// Whether two numeric datatypes hold the same numbers: class, size and sign, and with
/// `same_order` byte order too (chunks written raw, H5Dwrite_chunk, are not converted; HDF5
/// converts the order of everything else).
bool same_numbers(hid_t a, hid_t b, bool same_order = false);

/// "(3, 24, 24)": a dataset's shape as messages show it.
std::string shape_text(const std::vector<int64_t>& shape);

/// Throws Error(file:/name, ...) naming the first filter (compression) of the dataset that this
/// HDF5 build cannot decode (LZF, Blosc, ... from h5py or plugins): one line before reading,
/// instead of one read error per chunk.
void check_filters_available(hid_t loc, const std::string& name, const std::string& file);

/// Variable-length UTF-8 string attribute (h5py reads it as str); bytes of `value` that are not
/// UTF-8 are written `\xNN` (datasets::text::escaped_utf8). Overwrites.
void write_attribute(hid_t obj, const std::string& name, const std::string& value,
                     const std::string& file);
std::string read_string_attribute(hid_t obj, const std::string& name, const std::string& file);
bool has_attribute(hid_t obj, const std::string& name);
/// Names of an object's attributes, in name order.
std::vector<std::string> attribute_names(hid_t obj);
/// Whether the attribute `name` of obj holds one string (fixed or variable length) in a scalar
/// dataspace, as attnscope and h5py write them.
bool is_string_attribute(hid_t obj, const std::string& name);

/// Reads n variable-length strings from a dataset (the `selection` of its file space, into a
/// `memory` space of n elements; H5S_ALL for both reads it whole) or from an attribute
/// (memory and selection ignored). In files opened read-only the bytes are found in the
/// global heap by attnscope itself, every offset and size checked, because HDF5 1.10.8's
/// reader trusts a crafted object size (h5_strings.cpp); a corrupt heap throws Error naming
/// `subject`. A NUL ends a string, as in HDF5's own C-string read.
std::vector<std::string> read_vlen_strings(hid_t obj, hid_t memory, hid_t selection,
                                           std::size_t n, const std::string& subject);

/// The first `limit` strings (every one with limit < 0) of a 1-D dataset of variable-length
/// strings (read_vlen_strings), or with `fixed_too` also of fixed-length ones (NUL-padded, cut
/// at the first NUL, as h5py and HDF5 read them). Error naming file:/name for a missing
/// dataset, another rank or type.
std::vector<std::string> read_string_rows(hid_t loc, const std::string& name,
                                          const std::string& file, int64_t limit = -1,
                                          bool fixed_too = false);

/// The n strings of `data`, n fixed-length strings of `size` bytes of the string type `type`:
/// each cut at its first NUL, and with its trailing spaces dropped when `type` pads with spaces.
std::vector<std::string> fixed_strings(const char* data, std::size_t n, std::size_t size,
                                       hid_t type);

/// Runs `read` in a forked child process first, so that a crafted file that crashes the
/// HDF5 library (1.10.8 has memory errors on crafted object headers that no check before
/// the call can see) kills the child, not this process: a crash becomes
/// Error(subject, "corrupt HDF5 file: reading it crashed the HDF5 library (...)"), an Error
/// thrown by `read` in the child is thrown here as it was. Returns when the child read the
/// file without failing; the caller then reads it itself, along the same paths. The child
/// uses one LibTorch thread and leaves with _exit (no atexit handlers, no flushes). Refuses
/// (Error) while a thread started through attnscope/threads.h runs: the child would inherit
/// the locks it holds.
void read_in_child(const std::string& subject, const std::function<void()>& read);

/// Opens `path` read-only and reads every object in it: each group's and dataset's
/// attributes (strings through read_vlen_strings) and each dataset (whole with all_data,
/// else its first and last slab, which reach the chunk index; at most 16 GiB), a superset
/// of what attnscope's readers do. Throws Error on what it can tell is wrong.
void read_everything(const std::string& path, bool all_data = true);

/// read_in_child for a file another program or person may have written: the child runs
/// read_everything(path, all_data), ignoring the Errors it throws (the caller meets them
/// itself), so that only a crash is reported. Each file (device, inode, size, modification
/// and change times) is checked once per process.
///
/// With `also` (named `also_name`: the check it makes, e.g. "checkpoint"), the child then runs
/// it too and its Error passes to the caller: a file that passed is not checked again with
/// that name, so a caller can leave a whole-file verification (checksums) to the child instead
/// of reading the file twice. Fuzzing builds (ATTNSCOPE_FUZZING) run `also` in this process.
///
/// Like read_in_child, it forks: call it while no other thread of the process runs (idle
/// OpenMP workers aside), or before, for a file read later. A thread that holds a lock at
/// the fork (malloc's, a sanitizer allocator's, a static initialiser's) leaves it held
/// forever in the child.
void check_untrusted_file(const std::string& path, bool all_data,
                          const std::function<void()>& also = {},
                          const std::string& also_name = {});

/// True when `path` is an HDF5 file (checked as untrusted first) whose root attribute `format`
/// is `format`: the test of "a file this command wrote", which it may replace. False for
/// anything else, unreadable or damaged files included; never throws.
bool has_format(const std::string& path, const std::string& format);

/// Registers the conversion read_vlen_strings relies on (called once by init()).
void register_string_conversion();

}  // namespace attnscope::pipeline::h5
