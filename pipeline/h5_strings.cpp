// Variable-length strings read without HDF5's own global-heap reader.
//
// HDF5 stores a variable-length string as a heap ID (length, collection address, object index)
// and the bytes in a global heap collection ("GCOL"). HDF5 1.10.8's H5HG_read copies the
// object's size as the collection claims it into a buffer sized by the ID's length: a crafted
// file makes it copy gigabytes (found by scripts/fuzz.sh checkpoint). So attnscope reads the
// heap IDs raw — a registered conversion from a variable-length string to an opaque type of
// the same size, which passes the bytes through untouched — and then finds the object in the
// collection itself, every offset and size checked against the collection and the file.
//
// Format (HDF5 File Format Specification, "Global Heap", version 1), little-endian:
//   collection: "GCOL", version 1, 3 reserved, collection size (size of lengths), then objects
//   object:     index (2), reference count (2), reserved (4), size (size of lengths),
//               data padded to a multiple of 8; index 0 is free space, its size covering its
//               header.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>

#include "attnscope/error.h"
#include "pipeline/h5.h"

namespace attnscope::pipeline::h5 {
namespace {

constexpr const char* kHeapIdTag = "attnscope: raw global heap ID";
// Largest collection read (HDF5 writes 4 KiB ones unless one object is larger).
constexpr uint64_t kMaxCollection = uint64_t{1} << 30;

uint64_t align8(uint64_t n) {
  return (n + 7) & ~uint64_t{7};
}

uint64_t decode(const unsigned char* p, std::size_t bytes) {
  uint64_t v = 0;
  for (std::size_t i = 0; i < bytes; ++i)
    v |= uint64_t{p[i]} << (8 * i);
  return v;
}

// Passes the disk form of a variable-length string (its heap ID) through to an opaque type
// of the same size tagged kHeapIdTag; refuses every other pair so HDF5 looks further.
herr_t pass_heap_ids(hid_t src, hid_t dst, H5T_cdata_t* cdata, size_t, size_t buf_stride,
                     size_t, void*, void*, hid_t) {
  switch (cdata->command) {
    case H5T_CONV_INIT: {
      if (H5Tis_variable_str(src) <= 0 || H5Tget_class(dst) != H5T_OPAQUE) return -1;
      char* tag = H5Tget_tag(dst);
      const bool ours = tag && std::strcmp(tag, kHeapIdTag) == 0;
      H5free_memory(tag);
      if (!ours) return -1;
      cdata->need_bkg = H5T_BKG_NO;
      return 0;
    }
    case H5T_CONV_CONV: {
      const auto size = H5Tget_size(src);
      // In place and packed with equal sizes: the bytes already are the result.
      return size == H5Tget_size(dst) && (buf_stride == 0 || buf_stride == size) ? 0 : -1;
    }
    case H5T_CONV_FREE:
      return 0;
  }
  return -1;
}

// The global heap of one open file, read with pread from HDF5's own descriptor.
class GlobalHeap {
 public:
  GlobalHeap(hid_t obj, std::string subject) : subject_(std::move(subject)) {
    file_ = Handle(H5Iget_file_id(obj));
    check(file_.valid(), subject_, "cannot find the object's file");
    Handle fcpl(H5Fget_create_plist(file_.get()));
    std::size_t addr = 0, len = 0;
    check(fcpl.valid() && H5Pget_sizes(fcpl.get(), &addr, &len) >= 0, subject_,
          "cannot read the file's offset sizes");
    check(addr >= 2 && addr <= 8 && len >= 2 && len <= 8, subject_,
          "unsupported offset or length size (", addr, ", ", len, " bytes)");
    sizeof_addr_ = addr;
    sizeof_size_ = len;
    hsize_t userblock = 0;
    H5Pget_userblock(fcpl.get(), &userblock);
    base_ = userblock;
    Handle fapl(H5Fget_access_plist(file_.get()));
    check(fapl.valid() && H5Pget_driver(fapl.get()) == H5FD_SEC2, subject_,
          "strings can only be read from files opened with the default (sec2) driver");
    void* handle = nullptr;
    check(H5Fget_vfd_handle(file_.get(), fapl.get(), &handle) >= 0 && handle, subject_,
          "cannot reach the file's descriptor");
    fd_ = *static_cast<int*>(handle);
    const auto end = ::lseek(fd_, 0, SEEK_END);
    check(end >= 0, subject_, "cannot size the file: ", std::strerror(errno));
    file_size_ = static_cast<uint64_t>(end);
  }

  std::size_t id_size() const { return 4 + sizeof_addr_ + 4; }

  /// The string a heap ID (disk form) names: "" for a null or empty one, cut at a NUL as
  /// HDF5's own C-string read is.
  std::string object(const unsigned char* id) {
    const uint64_t length = decode(id, 4);
    const uint64_t address = decode(id + 4, sizeof_addr_);
    const uint64_t index = decode(id + 4 + sizeof_addr_, 4);
    if (address == 0 || length == 0) return "";
    const auto& c = collection(address);
    const uint64_t header = align8(8 + sizeof_size_);
    uint64_t at = header;
    while (at + header <= c.size()) {
      const uint64_t idx = decode(c.data() + at, 2);
      const uint64_t size = decode(c.data() + at + 8, sizeof_size_);
      check(size <= c.size(), subject_, "corrupt global heap at ", address,
            ": object size ", size, " exceeds its collection of ", c.size(), " bytes");
      const uint64_t need = idx == 0 ? size : header + align8(size);
      check(need >= header && at + need <= c.size(), subject_, "corrupt global heap at ",
            address, ": object ", idx, " runs past its collection");
      if (idx != 0 && idx == index) {
        check(size >= length, subject_, "corrupt global heap at ", address, ": object ", idx,
              " holds ", size, " bytes, the string claims ", length);
        const char* data = reinterpret_cast<const char*>(c.data() + at + header);
        return std::string(data, ::strnlen(data, static_cast<std::size_t>(length)));
      }
      at += need;
    }
    throw Error(subject_, concat("corrupt global heap at ", address, ": no object ", index));
  }

 private:
  const std::vector<unsigned char>& collection(uint64_t address) {
    const auto found = cache_.find(address);
    if (found != cache_.end()) return found->second;
    const uint64_t header = align8(8 + sizeof_size_);
    check(address <= file_size_ && base_ <= file_size_ - address &&
              header <= file_size_ - address - base_,
          subject_, "global heap address ", address, " lies outside the file");
    const uint64_t at = base_ + address;
    std::vector<unsigned char> head(header);
    read_at(head.data(), header, at);
    check(std::memcmp(head.data(), "GCOL", 4) == 0 && head[4] == 1, subject_,
          "corrupt global heap at ", address, ": no collection signature");
    const uint64_t size = decode(head.data() + 8, sizeof_size_);
    check(size >= header && size <= kMaxCollection && size <= file_size_ - at, subject_,
          "corrupt global heap at ", address, ": collection size ", size);
    if (cached_ + size > kMaxCollection) {
      cache_.clear();
      cached_ = 0;
    }
    std::vector<unsigned char> bytes(size);
    read_at(bytes.data(), size, at);
    cached_ += size;
    return cache_.emplace(address, std::move(bytes)).first->second;
  }

  void read_at(unsigned char* out, uint64_t n, uint64_t at) const {
    while (n > 0) {
      const auto got = ::pread(fd_, out, n, static_cast<off_t>(at));
      if (got < 0 && errno == EINTR) continue;
      check(got > 0, subject_, "cannot read the global heap: ",
            got < 0 ? std::strerror(errno) : "unexpected end of file");
      out += got;
      at += static_cast<uint64_t>(got);
      n -= static_cast<uint64_t>(got);
    }
  }

  std::string subject_;
  Handle file_;
  int fd_ = -1;
  std::size_t sizeof_addr_ = 8, sizeof_size_ = 8;
  uint64_t base_ = 0, file_size_ = 0, cached_ = 0;
  std::map<uint64_t, std::vector<unsigned char>> cache_;
};

// Reads n elements of `type` from an attribute (whole) or a dataset (selection into memory).
bool read_elements(hid_t obj, bool attribute, hid_t type, hid_t memory, hid_t selection,
                   void* out) {
  return attribute ? H5Aread(obj, type, out) >= 0
                   : H5Dread(obj, type, memory, selection, H5P_DEFAULT, out) >= 0;
}

// HDF5's own read, for files open for writing (their heap may be newer in memory than on disk).
std::vector<std::string> read_through_hdf5(hid_t obj, bool attribute, hid_t memory,
                                           hid_t selection, std::size_t n,
                                           const std::string& subject) {
  const Handle type = utf8_string_type();
  std::vector<char*> ptrs(n, nullptr);
  check_h5(read_elements(obj, attribute, type.get(), memory, selection, ptrs.data()), subject,
           "cannot read strings");
  std::vector<std::string> out;
  out.reserve(n);
  for (auto* p : ptrs)
    out.emplace_back(p ? p : "");
  Handle space(memory == H5S_ALL ? (attribute ? H5Aget_space(obj) : H5Dget_space(obj))
                                 : H5Scopy(memory));
  H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, ptrs.data());
  return out;
}

}  // namespace

void register_string_conversion() {
  Handle src = utf8_string_type();
  Handle dst(H5Tcreate(H5T_OPAQUE, 16));
  H5Tset_tag(dst.get(), kHeapIdTag);
  H5Tregister(H5T_PERS_SOFT, "attnscope_raw_heap_id", src.get(), dst.get(), pass_heap_ids);
}

std::vector<std::string> read_vlen_strings(hid_t obj, hid_t memory, hid_t selection,
                                           std::size_t n, const std::string& subject) {
  init();
  const bool attribute = H5Iget_type(obj) == H5I_ATTR;
  if (n == 0) return {};
  {
    Handle file(H5Iget_file_id(obj));
    unsigned intent = 0;
    check(file.valid() && H5Fget_intent(file.get(), &intent) >= 0, subject,
          "cannot find the object's file");
    if (intent & H5F_ACC_RDWR)
      return read_through_hdf5(obj, attribute, memory, selection, n, subject);
  }
  GlobalHeap heap(obj, subject);
  const std::size_t id_size = heap.id_size();
  // HDF5 1.10.8 copies n IDs out of an attribute's stored data without comparing sizes.
  if (attribute)
    check(H5Aget_storage_size(obj) >= n * id_size, subject, "attribute data is cut short (",
          H5Aget_storage_size(obj), " bytes stored, ", n * id_size, " needed)");
  Handle type(H5Tcreate(H5T_OPAQUE, id_size));
  H5Tset_tag(type.get(), kHeapIdTag);
  std::vector<unsigned char> ids(n * id_size);
  check_h5(read_elements(obj, attribute, type.get(), memory, selection, ids.data()), subject,
           "cannot read strings");
  std::vector<std::string> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    out.push_back(heap.object(ids.data() + i * id_size));
  return out;
}

std::vector<std::string> read_string_rows(hid_t loc, const std::string& name,
                                          const std::string& file, int64_t limit, bool fixed_too) {
  const auto subject = where(file, name);
  const auto set = open_dataset(loc, name, file);
  Handle space(H5Dget_space(set.get()));
  check(H5Sget_simple_extent_ndims(space.get()) == 1, subject, "expected a 1-D string dataset");
  Handle stored(H5Dget_type(set.get()));
  const bool variable = H5Tis_variable_str(stored.get()) > 0;
  check(variable || (fixed_too && H5Tget_class(stored.get()) == H5T_STRING), subject,
        fixed_too ? "is not a string dataset" : "is not a variable-length string dataset");
  auto n = static_cast<hsize_t>(H5Sget_simple_extent_npoints(space.get()));
  if (limit >= 0) n = std::min(n, static_cast<hsize_t>(limit));
  std::vector<std::string> out;
  if (n == 0) return out;
  const hsize_t start = 0;
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &start, nullptr, &n, nullptr);
  Handle memory(H5Screate_simple(1, &n, nullptr));
  if (variable) return read_vlen_strings(set.get(), memory.get(), space.get(), n, subject);
  const std::size_t size = H5Tget_size(stored.get());
  check(size > 0 && size < (1u << 20), subject, "unreasonable string size ", size);
  std::vector<char> buf(n * size);
  check_h5(
      H5Dread(set.get(), stored.get(), memory.get(), space.get(), H5P_DEFAULT, buf.data()) >= 0,
      subject, "cannot read strings");
  return fixed_strings(buf.data(), n, size, stored.get());
}

std::vector<std::string> fixed_strings(const char* data, std::size_t n, std::size_t size,
                                       hid_t type) {
  const bool spaces = H5Tget_strpad(type) == H5T_STR_SPACEPAD;
  std::vector<std::string> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const char* s = data + i * size;
    std::size_t length = strnlen(s, size);  // a NUL ends it (NUL-padded, NUL-terminated)
    if (spaces)                             // Fortran's padding, dropped as HDF5 and h5py drop it
      while (length > 0 && s[length - 1] == ' ')
        --length;
    out.emplace_back(s, length);
  }
  return out;
}

}  // namespace attnscope::pipeline::h5
