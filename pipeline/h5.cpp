#include "pipeline/h5.h"

#include <filesystem>

#include <sys/stat.h>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "datasets/text/tokenizer.h"

namespace attnscope::pipeline::h5 {
namespace {

void silence_hdf5() {
  init();
}

// Before main(): H5dont_atexit() only works before the library's first call, which could
// come from any static initialiser or thread; this runs as soon as the program loads h5.o.
const bool kInitialised = (init(), true);

herr_t collect_error(unsigned n, const H5E_error2_t* e, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  (void)n;
  if (e->desc && *e->desc) out->emplace_back(e->desc);
  return 0;
}

// Largest dataset read_tensor allocates (a crafted shape must not exhaust memory).
constexpr uint64_t kMaxReadBytes = uint64_t{16} << 30;

hid_t native_type(const at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return H5T_NATIVE_FLOAT;
    case at::kDouble:
      return H5T_NATIVE_DOUBLE;
    case at::kInt:
      return H5T_NATIVE_INT32;
    case at::kLong:
      return H5T_NATIVE_INT64;
    case at::kByte:
      return H5T_NATIVE_UINT8;
    case at::kChar:
      return H5T_NATIVE_INT8;
    default:
      return -1;
  }
}

}  // namespace

std::string where(const std::string& file, const std::string& name) {
  return file + ":/" + name;
}

namespace {

// where() for `name` relative to `loc`, a group inside the file: "al.h5:/sentences/000991", not
// "al.h5:/000991".
std::string where_in(hid_t loc, const std::string& file, const std::string& name) {
  std::string base = "/";
  const auto n = H5Iget_name(loc, nullptr, 0);
  if (n > 0 && n < (1 << 20)) {
    std::vector<char> buf(static_cast<std::size_t>(n) + 1);
    if (H5Iget_name(loc, buf.data(), buf.size()) == n) base.assign(buf.data(), buf.data() + n);
  }
  if (base.empty() || base.back() != '/') base += '/';
  return file + ":" + base + (!name.empty() && name[0] == '/' ? name.substr(1) : name);
}

// where_in(), made only when a check fails: it asks HDF5 for the group's name twice, and the
// checks below run for every dataset and attribute written or read (a checkpoint's load makes
// hundreds). A string attribute's read still names it first: read_vlen_strings takes the text.
struct WhereIn {
  hid_t loc;
  const std::string& file;
  std::string name;
  std::string text() const { return where_in(loc, file, name); }
};

// The overloads below hide the ones they add to: name those too.
using attnscope::check;
using h5::check_h5;

template <typename... Args>
void check(bool cond, const WhereIn& subject, const Args&... args) {
  if (!cond) throw Error(subject.text(), concat(args...));
}

[[noreturn]] void throw_h5_error(const std::string& subject, const std::string& what,
                                 const std::string& reason) {
  // Another process (h5py, HDFView, another attnscope) holds the file, or the file system
  // has no locks (some NFS and FUSE mounts): say both, and the switch HDF5 reads.
  const bool locked = reason.find("unable to lock file") != std::string::npos;
  throw Error(subject, reason.empty() ? what
                                      : what + " (" + reason + ")" +
                                            (locked ? "; is it open in another program? on a file "
                                                      "system without locks set "
                                                      "HDF5_USE_FILE_LOCKING=FALSE"
                                                    : ""));
}

// HDF5's error stack is read before the subject is made: the name lookup, an API call, clears
// it. (As an argument, the subject was made before or after the failed call was evaluated, as
// the compiler chose: GCC kept the reason only of a call in the argument list.)
void check_h5(bool cond, const WhereIn& subject, const std::string& what) {
  if (cond) return;
  const auto reason = last_error();
  throw_h5_error(subject.text(), what, reason);
}

}  // namespace

Handle utf8_string_type() {
  Handle type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  return type;
}

void init() {
  static const bool done = [] {
    // A failed flush or close leaves a half-closed file in HDF5's id table; the library's
    // atexit clean-up then dereferences it (segfault in H5F__close_cb, HDF5 1.10.8).
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    register_string_conversion();
    return true;
  }();
  (void)done;
  // The library is thread-safe, so its error stack and the printing of it are per thread: a
  // loader or writer thread prints "HDF5-DIAG: Error detected..." stacks unless silenced too.
  thread_local const bool silenced = (H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr), true);
  (void)silenced;
}

std::string last_error() {
  std::vector<std::string> messages;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_error, &messages);
  H5Eclear2(H5E_DEFAULT);
  if (messages.empty()) return "";
  // The innermost entry is the system call's; keep its errno text when it has one.
  const std::string& inner = messages.front();
  const auto at = inner.find("error message = '");
  if (at != std::string::npos) {
    // "file write failed: time = ..., errno = 27, error message = 'File too large', ..."
    // becomes "file write failed: File too large".
    const auto start = at + 17;
    const auto end = inner.find('\'', start);
    const auto reason =
        inner.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const auto what = inner.substr(0, std::min(inner.find(','), inner.find(':')));
    return what.empty() || what.size() >= at ? reason : what + ": " + reason;
  }
  const auto comma = inner.find(", errno");
  return plain_reason(comma == std::string::npos ? inner : inner.substr(0, comma));
}

std::string plain_reason(const std::string& hdf5_text) {
  const auto has = [&](const char* text) { return hdf5_text.find(text) != std::string::npos; };
  // "truncated file: eof = 96000, sblock->base_addr = 0, stored_eof = 136616"
  if (has("truncated file")) {
    const auto number_after = [&](const std::string& key) -> std::string {
      const auto at = hdf5_text.find(key);
      if (at == std::string::npos) return "";
      const auto start = at + key.size();
      auto end = start;
      while (end < hdf5_text.size() && hdf5_text[end] >= '0' && hdf5_text[end] <= '9')
        ++end;
      return hdf5_text.substr(start, end - start);
    };
    const auto size = number_after("eof = "), stored = number_after("stored_eof = ");
    // An end past a petabyte is no cut copy but a damaged header (a flipped bit of the
    // address): said so, not as "its header says 18446744073705902344".
    if (stored.size() > 15)
      return concat("the file's header is damaged: it puts the end of the file at byte ", stored,
                    ", the file holds ", size.empty() ? std::string("fewer") : size, " bytes");
    return !size.empty() && !stored.empty()
               ? concat("the file is cut short: it holds ", size, " bytes, its header says ",
                        stored, "; a copy or download that did not finish?")
               : "the file is cut short; a copy or download that did not finish?";
  }
  if (has("Fletcher32 checksum"))
    return "a chunk's Fletcher-32 checksum does not match its data: the file is damaged";
  if (has("inflate() failed")) return "a chunk's deflate stream is damaged: the file is damaged";
  // The library's words for metadata that is not what the file's own pointers say it is.
  // (Every reader asks H5Fis_hdf5 first: a file that is no HDF5 file at all is said so.)
  if (has("signature") || has("metadata checksum") || has("bad object header"))
    return "the file's internal structure is damaged (HDF5: " + hdf5_text + ")";
  // Also what a valid file written by a newer library (a format version 1.10 does not know)
  // gives.
  if (has("bad version number"))
    return concat("the file is damaged, or written by a newer HDF5 than this build's ",
                  hdf5_version(), " reads (HDF5: ", hdf5_text, ")");
  return hdf5_text;
}

void check_h5(bool cond, const std::string& subject, const std::string& what) {
  if (cond) {
    return;
  }
  throw_h5_error(subject, what, last_error());
}

std::string hdf5_version() {
  unsigned major = 0, minor = 0, release = 0;
  H5get_libversion(&major, &minor, &release);
  return concat(major, ".", minor, ".", release);
}

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.id_;
    other.id_ = -1;
  }
  return *this;
}

void Handle::reset() {
  if (id_ < 0) return;
  switch (H5Iget_type(id_)) {
    case H5I_FILE:
      H5Fclose(id_);
      break;
    case H5I_GROUP:
      H5Gclose(id_);
      break;
    case H5I_DATASET:
      H5Dclose(id_);
      break;
    case H5I_DATASPACE:
      H5Sclose(id_);
      break;
    case H5I_DATATYPE:
      H5Tclose(id_);
      break;
    case H5I_ATTR:
      H5Aclose(id_);
      break;
    case H5I_GENPROP_LST:
      H5Pclose(id_);
      break;
    default:
      break;
  }
  id_ = -1;
}

File File::create(const std::string& path, const std::string& name) {
  silence_hdf5();
  const std::string shown = name.empty() ? path : name;
  // Strong close: H5Fclose closes every object still open in the file, so that close()
  // really ends the file (flushed and released) before OutputFile renames it.
  Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
  H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_STRONG);
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get());
  check_h5(id >= 0, shown, "cannot create HDF5 file");
  return File(Handle(id), shown);
}

void check_not_special_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;
  check(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode), path,
        "is not a regular file (a FIFO, device or socket): not an HDF5 file");
}

void check_is_hdf5(const std::string& path) {
  silence_hdf5();
  check(std::filesystem::exists(path), path, "no such file");
  check_not_special_file(path);
  if (H5Fis_hdf5(path.c_str()) > 0) return;
  std::error_code ec;
  check(!std::filesystem::is_directory(path, ec), path, "is a folder, not an HDF5 file");
  const auto size = std::filesystem::file_size(path, ec);
  check(ec || size > 0, path,
        "is empty (0 bytes), not an HDF5 file: a copy or write that did "
        "not finish?");
  check(false, path, "not an HDF5 file");
}

File File::open(const std::string& path, bool writable) {
  silence_hdf5();
  check_is_hdf5(path);
  hid_t id = H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
  check_h5(id >= 0, path, writable ? "cannot open HDF5 file for writing" : "cannot open HDF5 file");
  return File(Handle(id), path);
}

void File::flush() const {
  check_h5(H5Fflush(id(), H5F_SCOPE_GLOBAL) >= 0, path_, "cannot flush HDF5 file");
}

void File::close() {
  check(handle_.valid(), path_, "HDF5 file closed twice");
  flush();
  // Whatever H5Fclose returns, the id is no longer ours to close again.
  const hid_t id = handle_.release();
  check_h5(H5Fclose(id) >= 0, path_, "cannot close HDF5 file");
}

OutputFile::OutputFile(const std::string& path)
    : target_(path), file_(File::create(target_.temp_path(), path)) {}

void OutputFile::commit() {
  file_.close();
  target_.commit();
}

namespace {

// "file:/group/name" for an object below an open location, found from the handle itself (for
// messages of functions that are not given the file's name).
std::string located(hid_t loc, const std::string& name) {
  auto name_of = [&](auto get) {
    std::string text(4096, '\0');
    const auto n = get(loc, text.data(), text.size());
    text.resize(n > 0 ? std::min<std::size_t>(static_cast<std::size_t>(n), text.size() - 1) : 0);
    return text;
  };
  auto group = name_of(H5Iget_name);
  if (!group.empty() && group[0] == '/') group.erase(0, 1);
  if (!group.empty() && !name.empty()) group += "/";
  return where(name_of(H5Fget_name), group + name);
}

// Throws, in the reader's words, what stands at `name` below `loc` where a `wanted` object
// ("dataset", "group") belongs: a link into another file that gives none here (with HDF5's
// reason: the file or the object there), a link to nothing, or an object of another kind.
// Returns when a `wanted` object stands there (the caller says what else failed). Only the
// objects' basic information is read (H5O_INFO_BASIC: no attribute or header statistics), as
// files from elsewhere reach here after a child process read them (h5_isolation.h). `subject`
// is made only when a message is: naming an object is an HDF5 call that clears its errors.
template <typename Subject>
void throw_unless_a(hid_t loc, const std::string& name, const std::string& wanted,
                    const Subject& subject, const std::string& reason) {
  H5L_info_t link;
  if (H5Lget_info(loc, name.c_str(), &link, H5P_DEFAULT) >= 0 && link.type == H5L_TYPE_EXTERNAL) {
    H5Eclear2(H5E_DEFAULT);
    throw_h5_error(subject(), "is a link into another file that gives no " + wanted + " here",
                   reason);
  }
  if (H5Oexists_by_name(loc, name.c_str(), H5P_DEFAULT) == 0) {
    H5Eclear2(H5E_DEFAULT);
    throw Error(subject(), "is a link to nothing where a " + wanted + " belongs");
  }
  H5O_info_t info;
  const bool known =
      H5Oget_info_by_name2(loc, name.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) >= 0;
  H5Eclear2(H5E_DEFAULT);
  if (!known) return;
  const char* kind = info.type == H5O_TYPE_GROUP            ? "group"
                     : info.type == H5O_TYPE_DATASET        ? "dataset"
                     : info.type == H5O_TYPE_NAMED_DATATYPE ? "named datatype"
                                                            : "object of another kind";
  if (wanted != kind)
    throw Error(subject(), concat("is a ", kind, " where a ", wanted, " belongs"));
}

}  // namespace

bool exists(hid_t loc, const std::string& name) {
  silence_hdf5();
  // Check each path component: H5Lexists fails on a missing intermediate group.
  std::string prefix;
  std::size_t start = 0;
  while (start <= name.size()) {
    auto slash = name.find('/', start);
    prefix = name.substr(0, slash);
    if (prefix.empty()) {
      // "" (the location itself)
    } else if (const htri_t found = H5Lexists(loc, prefix.c_str(), H5P_DEFAULT); found == 0) {
      return false;
    } else if (found < 0) {
      // Not "absent": the lookup failed (a damaged group index, or a dataset, a dangling or
      // external link where a group belongs). Said so, with HDF5's reason, not as a missing
      // dataset.
      const auto reason = last_error();
      const auto cut = prefix.rfind('/');
      if (cut != std::string::npos) {
        const auto parent = prefix.substr(0, cut);
        throw_unless_a(
            loc, parent, "group", [&] { return located(loc, parent); }, reason);
      }
      H5Eclear2(H5E_DEFAULT);
      throw Error(located(loc, prefix), "cannot look it up (a damaged file?)" +
                                            (reason.empty() ? "" : " (" + reason + ")"));
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return true;
}

Handle require_group(hid_t loc, const std::string& path, const std::string& file) {
  silence_hdf5();
  if (exists(loc, path)) {
    Handle group(H5Gopen2(loc, path.c_str(), H5P_DEFAULT));
    if (group.valid()) return group;
    const auto reason = last_error();
    const WhereIn subject{loc, file, path};
    throw_unless_a(
        loc, path, "group", [&] { return subject.text(); }, reason);
    throw_h5_error(subject.text(), "cannot open the group", reason);
  }
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  hid_t id = H5Gcreate2(loc, path.c_str(), lcpl.get(), H5P_DEFAULT, H5P_DEFAULT);
  check_h5(id >= 0, WhereIn{loc, file, path}, "cannot create group");
  return Handle(id);
}

std::vector<std::string> children(hid_t loc) {
  // A caller that did not check what it opened (a dataset where a group was expected).
  check(H5Iis_valid(loc) > 0, "HDF5", "cannot list the members of a group that is not open");
  std::vector<std::string> names;
  const herr_t status = H5Literate(
      loc, H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t, const char* name, const H5L_info_t*, void* data) -> herr_t {
        static_cast<std::vector<std::string>*>(data)->emplace_back(name);
        return 0;
      },
      &names);
  if (status < 0) {
    // A damaged index (B-tree, heap) lists part of the group: the caller would take the file
    // for one that holds less, and blame something else. Name the group and HDF5's reason
    // (taken first: the calls that find the names clear the error stack).
    const auto reason = last_error();
    throw Error(located(loc, ""), "cannot list the group's members (a damaged file?)" +
                                      (reason.empty() ? "" : " (" + reason + ")"));
  }
  return names;
}

void write_tensor(hid_t loc, const std::string& name, const at::Tensor& tensor,
                  const std::string& file, int chunk_rows) {
  silence_hdf5();
  auto t = tensor.detach().to(torch::kCPU);
  if (t.scalar_type() == at::kBool) t = t.to(at::kByte);
  const hid_t type = native_type(t.scalar_type());
  check(type >= 0, WhereIn{loc, file, name}, "cannot store tensors of type ", t.scalar_type());
  t = t.contiguous();
  std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  if (chunk_rows > 0 && !dims.empty() && t.numel() > 0) {
    std::vector<hsize_t> chunk = dims;
    chunk[0] = std::min<hsize_t>(dims[0], static_cast<hsize_t>(chunk_rows));
    H5Pset_chunk(dcpl.get(), static_cast<int>(chunk.size()), chunk.data());
    H5Pset_deflate(dcpl.get(), 4);
  }
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE));
  H5Pset_create_intermediate_group(lcpl.get(), 1);
  if (exists(loc, name)) H5Ldelete(loc, name.c_str(), H5P_DEFAULT);
  Handle set(H5Dcreate2(loc, name.c_str(), type, space.get(), lcpl.get(), dcpl.get(), H5P_DEFAULT));
  check_h5(set.valid(), WhereIn{loc, file, name}, "cannot create dataset");
  if (t.numel() > 0)
    check_h5(H5Dwrite(set.get(), type, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()) >= 0,
             WhereIn{loc, file, name}, "cannot write dataset");
}

std::string type_name(hid_t type) {
  const auto cls = H5Tget_class(type);
  const auto bits = H5Tget_size(type) * 8;
  const std::string order =
      bits > 8 && H5Tget_order(type) == H5T_ORDER_BE ? std::string("big-endian ") : std::string();
  if (cls == H5T_FLOAT) return order + "float" + std::to_string(bits);
  if (cls == H5T_INTEGER)
    return order + (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
  if (cls == H5T_STRING) return "string";
  return "non-numeric";
}

bool same_numbers(hid_t a, hid_t b, bool same_order) {
  const auto cls = H5Tget_class(a);
  if (cls != H5Tget_class(b) || H5Tget_size(a) != H5Tget_size(b)) return false;
  if (same_order && H5Tget_size(a) > 1 && H5Tget_order(a) != H5Tget_order(b)) return false;
  return cls != H5T_INTEGER || H5Tget_sign(a) == H5Tget_sign(b);
}

Handle open_dataset(hid_t loc, const std::string& name, const std::string& file) {
  silence_hdf5();
  Handle set(H5Dopen2(loc, name.c_str(), H5P_DEFAULT));
  if (set.valid()) return set;
  const auto reason = last_error();
  const WhereIn subject{loc, file, name};
  if (!exists(loc, name)) throw Error(subject.text(), "no such dataset");
  throw_unless_a(
      loc, name, "dataset", [&] { return subject.text(); }, reason);
  throw_h5_error(subject.text(), "cannot open the dataset", reason);
}

std::vector<int64_t> dataset_shape(hid_t loc, const std::string& name, const std::string& file) {
  silence_hdf5();
  const auto set = open_dataset(loc, name, file);
  Handle space(H5Dget_space(set.get()));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(static_cast<std::size_t>(std::max(rank, 0)));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + ")";
}

void check_filters_available(hid_t loc, const std::string& name, const std::string& file) {
  silence_hdf5();
  const auto set = open_dataset(loc, name, file);
  Handle plist(H5Dget_create_plist(set.get()));
  check(plist.valid(), WhereIn{loc, file, name}, "cannot read the dataset's creation properties");
  const int filters = H5Pget_nfilters(plist.get());
  for (int i = 0; i < filters; ++i) {
    unsigned flags = 0, config = 0;
    std::size_t count = 0;
    char filter_name[64] = {};
    const H5Z_filter_t id = H5Pget_filter2(plist.get(), static_cast<unsigned>(i), &flags, &count,
                                           nullptr, sizeof(filter_name), filter_name, &config);
    check(id >= 0, WhereIn{loc, file, name}, "cannot read filter ", i, " of the dataset");
    check(H5Zfilter_avail(id) > 0, WhereIn{loc, file, name}, "is compressed with HDF5 filter ", id,
          filter_name[0] ? concat(" (", filter_name, ")") : std::string(),
          ", which this HDF5 build cannot decode; write it again with gzip or no compression");
  }
}

namespace {

// A numeric dataset opened for reading, its type as a tensor's and its shape, checked: what
// read_tensor refuses before reading anything.
struct ReadPlan {
  Handle set;
  at::ScalarType type;
  std::vector<int64_t> shape;
};

// With rows >= 0, of the first `rows` rows only (fewer where the dataset holds fewer): what a
// crafted file claims beyond them is never allocated.
ReadPlan plan_read(hid_t loc, const std::string& name, const std::string& file, int64_t rows) {
  silence_hdf5();
  auto set = open_dataset(loc, name, file);
  Handle type(H5Dget_type(set.get()));
  const auto cls = H5Tget_class(type.get());
  const auto size = H5Tget_size(type.get());
  at::ScalarType st;
  if (cls == H5T_FLOAT && size == 4)
    st = at::kFloat;
  else if (cls == H5T_FLOAT && size == 8)
    st = at::kDouble;
  else if (cls == H5T_INTEGER && size == 8)
    st = at::kLong;
  else if (cls == H5T_INTEGER && size == 4)
    st = at::kInt;
  else if (cls == H5T_INTEGER && size == 1)
    st = H5Tget_sign(type.get()) == H5T_SGN_NONE ? at::kByte : at::kChar;
  else {
    // The class in words: "class 3" said nothing to someone who stored a string by mistake.
    const char* kind = cls == H5T_STRING      ? "strings"
                       : cls == H5T_COMPOUND  ? "compound records"
                       : cls == H5T_ENUM      ? "enumerated values (booleans, in h5py)"
                       : cls == H5T_ARRAY     ? "arrays"
                       : cls == H5T_VLEN      ? "variable-length sequences"
                       : cls == H5T_REFERENCE ? "references"
                       : cls == H5T_OPAQUE    ? "opaque bytes"
                       : cls == H5T_BITFIELD  ? "bit fields"
                       : cls == H5T_FLOAT     ? "floating-point numbers of another width"
                       : cls == H5T_INTEGER   ? "integers of another width"
                                              : "elements of an unknown class";
    throw Error(where_in(loc, file, name),
                concat("holds ", kind, " (", size, size == 1 ? " byte" : " bytes",
                       " each), not a tensor of float32, float64, int64, int32, uint8 or int8"));
  }
  auto shape = dataset_shape(loc, name, file);
  if (rows >= 0 && !shape.empty()) shape[0] = std::min(shape[0], rows);
  // A crafted file can claim any shape: refuse what cannot be real before allocating it.
  uint64_t elements = 1;
  for (const auto d : shape) {
    check(d >= 0 && (d == 0 || elements <= kMaxReadBytes / static_cast<uint64_t>(d)),
          WhereIn{loc, file, name}, "dataset shape is too large to read");
    elements *= static_cast<uint64_t>(d);
  }
  check(elements * size <= kMaxReadBytes, WhereIn{loc, file, name}, "dataset of ", elements * size,
        " bytes is larger than the limit of ", kMaxReadBytes, " bytes");
  {
    Handle dcpl(H5Dget_create_plist(set.get()));
    if (elements > 0 && H5Pget_layout(dcpl.get()) == H5D_CONTIGUOUS)
      check(H5Dget_storage_size(set.get()) >= elements * size, WhereIn{loc, file, name},
            "dataset is truncated (", H5Dget_storage_size(set.get()), " bytes stored, ",
            elements * size, " expected)");
  }
  return {std::move(set), st, std::move(shape)};
}

}  // namespace

at::Tensor read_tensor(hid_t loc, const std::string& name, const std::string& file, int64_t rows) {
  const auto plan = plan_read(loc, name, file, rows);
  auto out = torch::empty(plan.shape, torch::TensorOptions().dtype(plan.type));
  if (out.numel() == 0) return out;
  if (rows < 0 || plan.shape.empty()) {
    check_h5(H5Dread(plan.set.get(), native_type(plan.type), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                     out.data_ptr()) >= 0,
             WhereIn{loc, file, name}, "cannot read dataset");
    return out;
  }
  const std::vector<hsize_t> start(plan.shape.size(), 0),
      count(plan.shape.begin(), plan.shape.end());
  Handle space(H5Dget_space(plan.set.get()));
  Handle memory(H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr));
  check_h5(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                               nullptr) >= 0 &&
               H5Dread(plan.set.get(), native_type(plan.type), memory.get(), space.get(),
                       H5P_DEFAULT, out.data_ptr()) >= 0,
           WhereIn{loc, file, name}, concat("cannot read rows 0..", plan.shape[0] - 1));
  return out;
}

at::Tensor read_rows_as_float(hid_t loc, const std::string& name, const std::string& file,
                              int64_t rows, float fill, std::vector<int64_t>* unreadable,
                              std::string* reason) {
  // A filter this HDF5 build lacks (h5py's lzf) is one line, not every row "damaged".
  check_filters_available(loc, name, file);
  check(rows >= 0, WhereIn{loc, file, name}, "a negative row count");
  const auto plan = plan_read(loc, name, file, rows);
  check(!plan.shape.empty() && plan.shape[0] >= rows, WhereIn{loc, file, name},
        "expected at least ", rows, " rows, got shape ",
        shape_text(dataset_shape(loc, name, file)));
  auto shape = plan.shape;
  shape[0] = rows;
  auto out = torch::empty(shape, torch::kFloat);
  if (out.numel() == 0) return out;
  const int rank = static_cast<int>(shape.size());
  Handle space(H5Dget_space(plan.set.get()));
  std::vector<hsize_t> start(shape.size(), 0), count(shape.begin(), shape.end());
  std::string why;  // taken before the next HDF5 call clears it (closing the memory space)
  const auto read = [&](float* into) {
    Handle memory(H5Screate_simple(rank, count.data(), nullptr));
    if (H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(),
                            nullptr) >= 0 &&
        H5Dread(plan.set.get(), H5T_NATIVE_FLOAT, memory.get(), space.get(), H5P_DEFAULT, into) >=
            0)
      return true;
    why = last_error();
    return false;
  };
  hsize_t step = static_cast<hsize_t>(rows);  // contiguous: one piece
  {
    Handle dcpl(H5Dget_create_plist(plan.set.get()));
    std::vector<hsize_t> chunk(shape.size(), 0);
    if (H5Pget_layout(dcpl.get()) == H5D_CHUNKED &&
        H5Pget_chunk(dcpl.get(), rank, chunk.data()) == rank && chunk[0] > 0)
      step = chunk[0];
  }
  // Whole chunks, about kBlockRows rows at a time: HDF5 keeps a selection per chunk a read
  // touches (some 7 KB each), so one read of 20,000 one-row chunks took 140 MB beside the
  // 60 MB of values.
  constexpr hsize_t kBlockRows = 512;
  const hsize_t block = std::max<hsize_t>(1, kBlockRows / step) * step;
  const int64_t per_row = out.numel() / rows;
  for (int64_t b = 0; b < rows; b += static_cast<int64_t>(block)) {
    start[0] = static_cast<hsize_t>(b);
    count[0] = std::min<hsize_t>(block, static_cast<hsize_t>(rows - b));
    if (read(out.data_ptr<float>() + b * per_row)) continue;
    // Some chunk does not hold (its checksum or deflate stream): each chunk's rows on their
    // own, read once (row by row, a damaged chunk of many rows was decoded again for each).
    const int64_t end = b + static_cast<int64_t>(count[0]);
    for (int64_t r = b; r < end; r += static_cast<int64_t>(step)) {
      start[0] = static_cast<hsize_t>(r);
      count[0] = std::min<hsize_t>(step, static_cast<hsize_t>(end - r));
      float* first = out.data_ptr<float>() + r * per_row;
      if (read(first)) continue;
      if (reason && reason->empty()) *reason = why.empty() ? "HDF5 cannot read it" : why;
      std::fill(first, first + static_cast<int64_t>(count[0]) * per_row, fill);
      for (int64_t k = 0; k < static_cast<int64_t>(count[0]); ++k)
        if (unreadable) unreadable->push_back(r + k);
    }
  }
  return out;
}

bool has_attribute(hid_t obj, const std::string& name) {
  silence_hdf5();
  return H5Aexists(obj, name.c_str()) > 0;
}

std::vector<std::string> attribute_names(hid_t obj) {
  silence_hdf5();
  std::vector<std::string> names;
  hsize_t index = 0;
  H5Aiterate2(
      obj, H5_INDEX_NAME, H5_ITER_INC, &index,
      [](hid_t, const char* name, const H5A_info_t*, void* data) -> herr_t {
        static_cast<std::vector<std::string>*>(data)->emplace_back(name);
        return 0;
      },
      &names);
  return names;
}

bool is_string_attribute(hid_t obj, const std::string& name) {
  silence_hdf5();
  Handle attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
  if (!attr.valid()) return false;
  Handle type(H5Aget_type(attr.get()));
  Handle space(H5Aget_space(attr.get()));
  return type.valid() && H5Tget_class(type.get()) == H5T_STRING && space.valid() &&
         H5Sget_simple_extent_type(space.get()) == H5S_SCALAR;
}

void write_attribute(hid_t obj, const std::string& name, const std::string& value,
                     const std::string& file) {
  silence_hdf5();
  if (has_attribute(obj, name)) H5Adelete(obj, name.c_str());
  const Handle type = utf8_string_type();
  Handle space(H5Screate(H5S_SCALAR));
  Handle attr(H5Acreate2(obj, name.c_str(), type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
  check_h5(attr.valid(), WhereIn{obj, file, "@" + name}, "cannot create attribute");
  // Typed UTF-8 (h5py decodes it to str): a command line or path in another encoding has its
  // bytes that are not UTF-8 written `\xe9` (h5py gave '\udce9', which no encoder takes).
  const std::string text = datasets::text::escaped_utf8(value);
  const char* data = text.c_str();
  check_h5(H5Awrite(attr.get(), type.get(), &data) >= 0, WhereIn{obj, file, "@" + name},
           "cannot write attribute");
}

std::string read_string_attribute(hid_t obj, const std::string& name, const std::string& file) {
  silence_hdf5();
  check(has_attribute(obj, name), WhereIn{obj, file, "@" + name}, "no such attribute");
  Handle attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT));
  Handle stored(H5Aget_type(attr.get()));
  check(H5Tget_class(stored.get()) == H5T_STRING, WhereIn{obj, file, "@" + name},
        "attribute is not a string");
  Handle space(H5Aget_space(attr.get()));
  check(H5Sget_simple_extent_npoints(space.get()) == 1, WhereIn{obj, file, "@" + name},
        "attribute is not a single string");
  if (H5Tis_variable_str(stored.get()) > 0) {
    return read_vlen_strings(attr.get(), H5S_ALL, H5S_ALL, 1, where_in(obj, file, "@" + name))
        .front();
  }
  const auto size = H5Tget_size(stored.get());
  check(size > 0 && size <= (std::size_t{1} << 30), WhereIn{obj, file, "@" + name},
        "unreasonable string size ", size);
  check(H5Aget_storage_size(attr.get()) >= size, WhereIn{obj, file, "@" + name},
        "attribute data is cut short (", H5Aget_storage_size(attr.get()), " bytes stored, ", size,
        " needed)");
  std::string value(size, '\0');
  check(H5Aread(attr.get(), stored.get(), value.data()) >= 0, WhereIn{obj, file, "@" + name},
        "cannot read attribute");
  value.resize(value.find('\0') == std::string::npos ? size : value.find('\0'));
  return value;
}

bool has_format(const std::string& path, const std::string& format) {
  if (!has_hdf5_signature(file_head(path, 8))) return false;
  try {
    check_untrusted_file(path, false);
    const auto file = File::open(path);
    return has_attribute(file.id(), "format") &&
           read_string_attribute(file.id(), "format", path) == format;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace attnscope::pipeline::h5
