#pragma once
// Thin RAII layer over the HDF5 C API: files, groups, tensor datasets and string attributes.
// Every failure throws attnscope::Error naming the file and the object.

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace attnscope::pipeline::h5 {

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

 private:
  hid_t id_ = -1;
};

class File {
 public:
  /// Creates (truncates) a file.
  static File create(const std::string& path);
  /// Opens an existing file; throws Error naming the path if it is missing or not HDF5.
  static File open(const std::string& path, bool writable = false);

  hid_t id() const { return handle_.get(); }
  const std::string& path() const { return path_; }
  /// Writes buffered data to disk.
  void flush() const;

 private:
  File(Handle handle, std::string path) : handle_(std::move(handle)), path_(std::move(path)) {}
  Handle handle_;
  std::string path_;
};

/// Opens a group, creating it and its parents ("a/b/c") when absent.
Handle require_group(hid_t loc, const std::string& path, const std::string& file);

bool exists(hid_t loc, const std::string& name);

/// Names of the direct children of a group, in creation/alphabetical order.
std::vector<std::string> children(hid_t loc);

/// Writes a contiguous copy of a CPU tensor (float32/64, int32/64, uint8, bool as uint8)
/// as a dataset. chunk_rows > 0 makes it chunked and deflate-compressed.
void write_tensor(hid_t loc, const std::string& name, const at::Tensor& tensor,
                  const std::string& file, int chunk_rows = 0);

/// Reads a dataset into a CPU tensor of the stored type.
at::Tensor read_tensor(hid_t loc, const std::string& name, const std::string& file);

/// Shape of a dataset without reading it.
std::vector<int64_t> dataset_shape(hid_t loc, const std::string& name, const std::string& file);

/// Variable-length UTF-8 string attribute (h5py reads it as str). Overwrites.
void write_attribute(hid_t obj, const std::string& name, const std::string& value,
                     const std::string& file);
std::string read_string_attribute(hid_t obj, const std::string& name, const std::string& file);
bool has_attribute(hid_t obj, const std::string& name);

}  // namespace attnscope::pipeline::h5
