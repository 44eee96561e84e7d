// Reading untrusted HDF5 files without letting the HDF5 library crash attnscope.
//
// HDF5 1.10.8 (Debian 12's) trusts what a file says about its own structure in places:
// fuzzing checkpoint loading found a use-after-free inside H5Aexists (object header message
// iteration) on a crafted file, after attnscope's own global-heap reader had removed the
// first finding (h5_strings.cpp). Such bugs sit below every check attnscope can make before a
// call, so a file from elsewhere is first read in a forked child: if the library crashes
// there, the child dies and the caller gets one clear error instead.
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <set>
#include <tuple>
#include <vector>

#include <ATen/Parallel.h>

#include "attnscope/error.h"
#include "attnscope/threads.h"
#include "pipeline/h5.h"

namespace attnscope::pipeline::h5 {
namespace {

constexpr int kChildError = 3;      // `read` threw attnscope::Error: subject \0 message follow
constexpr int kChildException = 4;  // another exception: what() follows

void write_all(int fd, const std::string& data) {
  std::size_t done = 0;
  while (done < data.size()) {
    const auto n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

std::string read_all(int fd) {
  std::string out;
  char buf[4096];
  while (true) {
    const auto n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

struct Walk {
  std::string path;
  bool all_data;
  std::exception_ptr error;  // exceptions must not unwind through HDF5's C frames
};

// Reads every attribute of an object: strings through attnscope's heap reader, anything
// else as raw bytes of its stored size.
void read_attributes(hid_t obj, const std::string& subject) {
  H5O_info_t info;
  check_h5(H5Oget_info2(obj, &info, H5O_INFO_NUM_ATTRS) >= 0, subject, "cannot read object info");
  for (hsize_t i = 0; i < info.num_attrs; ++i) {
    Handle attr(H5Aopen_by_idx(obj, ".", H5_INDEX_CRT_ORDER, H5_ITER_NATIVE, i, H5P_DEFAULT,
                               H5P_DEFAULT));
    if (!attr.valid()) attr = Handle(H5Aopen_by_idx(obj, ".", H5_INDEX_NAME, H5_ITER_NATIVE, i,
                                                    H5P_DEFAULT, H5P_DEFAULT));
    check_h5(attr.valid(), subject, concat("cannot open attribute ", i));
    Handle type(H5Aget_type(attr.get()));
    Handle space(H5Aget_space(attr.get()));
    const auto n = H5Sget_simple_extent_npoints(space.get());
    check(n >= 0 && n <= (int64_t{1} << 24), subject, "attribute ", i, " of ", n, " elements");
    if (H5Tis_variable_str(type.get()) > 0) {
      read_vlen_strings(attr.get(), H5S_ALL, H5S_ALL, static_cast<std::size_t>(n), subject);
      continue;
    }
    if (H5Tdetect_class(type.get(), H5T_VLEN) > 0) continue;  // attnscope writes none
    const auto size = H5Tget_size(type.get());
    check(size > 0 && size * static_cast<std::size_t>(n) <= (std::size_t{1} << 30), subject,
          "attribute ", i, " is too large");
    if (H5Aget_storage_size(attr.get()) < size * static_cast<std::size_t>(n)) continue;
    std::vector<char> buf(size * static_cast<std::size_t>(n) + 1);
    H5Aread(attr.get(), type.get(), buf.data());
  }
}

void read_dataset(hid_t set, const std::string& subject, bool all_data) {
  Handle type(H5Dget_type(set));
  Handle space(H5Dget_space(set));
  Handle dcpl(H5Dget_create_plist(set));
  const auto n = H5Sget_simple_extent_npoints(space.get());
  check(n >= 0, subject, "unreadable dataspace");
  if (n == 0) return;
  // Nothing stored (a crafted file declaring gigabytes): no byte of the file to read, only the
  // fill value; the readers refuse or bound it.
  H5D_space_status_t status{};
  if (H5Dget_space_status(set, &status) >= 0 && status == H5D_SPACE_STATUS_NOT_ALLOCATED) return;
  if (H5Tis_variable_str(type.get()) > 0) {
    check(n <= (int64_t{1} << 24), subject, "string dataset of ", n, " elements");
    read_vlen_strings(set, H5S_ALL, H5S_ALL, static_cast<std::size_t>(n), subject);
    return;
  }
  if (H5Tdetect_class(type.get(), H5T_VLEN) > 0) return;  // attnscope writes none
  Handle native(H5Tget_native_type(type.get(), H5T_DIR_ASCEND));
  const std::size_t size = native.valid() ? H5Tget_size(native.get()) : 0;
  if (size == 0) return;
  // The readers refuse more than 16 GiB before reading (read_tensor); so does this.
  if (static_cast<uint64_t>(n) > (uint64_t{16} << 30) / size) return;
  const std::size_t bytes = size * static_cast<std::size_t>(n);
  // Read in slabs of the first dimension: the whole file, never more than 64 MiB at a time.
  const int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank <= 0) {
    std::vector<char> buf(bytes);
    H5Dread(set, native.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data());
    return;
  }
  std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  const std::size_t row = bytes / dims[0];
  const hsize_t rows = std::max<hsize_t>(1, (std::size_t{64} << 20) / std::max<std::size_t>(row, 1));
  std::vector<char> buf(static_cast<std::size_t>(std::min(rows, dims[0])) * row);
  // Without all_data: the first and the last slab (each reaches the chunk index).
  for (hsize_t start = 0; start < dims[0];
       start = all_data || start + rows >= dims[0] ? start + rows
                                                   : std::max(start + rows, dims[0] - rows)) {
    std::vector<hsize_t> offset(dims.size(), 0), count = dims;
    offset[0] = start;
    count[0] = std::min(rows, dims[0] - start);
    H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, offset.data(), nullptr, count.data(),
                        nullptr);
    Handle memory(H5Screate_simple(rank, count.data(), nullptr));
    H5Dread(set, native.get(), memory.get(), space.get(), H5P_DEFAULT, buf.data());
  }
}

herr_t visit(hid_t root, const char* name, const H5O_info_t* info, void* data) {
  auto* walk = static_cast<Walk*>(data);
  try {
    const std::string subject = where(walk->path, name);
    Handle obj(H5Oopen(root, name, H5P_DEFAULT));
    if (!obj.valid()) return 0;
    read_attributes(obj.get(), subject);
    if (info->type == H5O_TYPE_DATASET) read_dataset(obj.get(), subject, walk->all_data);
    return 0;
  } catch (...) {
    walk->error = std::current_exception();
    return -1;
  }
}

// What reads outside the file: an external link (into another file, opened on the way: a
// FIFO there hung every reader, in open()), a dataset whose raw data lives in other files
// (HDF5 external storage: a report showed a local file's bytes) or a virtual dataset. No file
// attnscope writes holds one; a file from elsewhere that does is refused before any read.
struct Foreign {
  std::string path;
  std::exception_ptr error;
};

herr_t refuse_foreign(hid_t group, const char* name, const H5L_info_t* info, void* data) {
  auto* walk = static_cast<Foreign*>(data);
  try {
    const std::string subject = where(walk->path, name);
    if (info->type != H5L_TYPE_HARD && info->type != H5L_TYPE_SOFT)
      throw Error(subject,
                  "is a link into another file (or of a user-defined kind): no file "
                  "attnscope writes holds one, and it is not followed (a crafted file?)");
    if (info->type != H5L_TYPE_HARD) return 0;
    H5O_info_t object;
    if (H5Oget_info_by_name2(group, name, &object, H5O_INFO_BASIC, H5P_DEFAULT) < 0 ||
        object.type != H5O_TYPE_DATASET)
      return 0;  // the readers say what is wrong with it
    Handle set(H5Dopen2(group, name, H5P_DEFAULT));
    if (!set.valid()) return 0;
    Handle dcpl(H5Dget_create_plist(set.get()));
    if (!dcpl.valid()) return 0;
    if (H5Pget_layout(dcpl.get()) == H5D_VIRTUAL)
      throw Error(subject,
                  "is a virtual dataset (its data in other files): no file attnscope "
                  "writes holds one, and it is not read (a crafted file?)");
    if (H5Pget_external_count(dcpl.get()) > 0)
      throw Error(subject,
                  "keeps its data in other files (HDF5 external storage): no file "
                  "attnscope writes does, and they are not read (a crafted file?)");
    return 0;
  } catch (...) {
    walk->error = std::current_exception();
    return -1;
  }
}

void refuse_foreign_storage(const std::string& path) {
  init();
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!file.valid()) {  // not HDF5, damaged: the reader says so in its words
    H5Eclear2(H5E_DEFAULT);
    return;
  }
  Foreign walk{path, nullptr};
  H5Lvisit(file.get(), H5_INDEX_NAME, H5_ITER_NATIVE, refuse_foreign, &walk);
  H5Eclear2(H5E_DEFAULT);
  if (walk.error) std::rethrow_exception(walk.error);
}

}  // namespace

void read_in_child(const std::string& subject, const std::function<void()>& read) {
  init();
  // A thread of ours running now could hold a lock the child needs (attnscope/threads.h).
  check(running_threads() == 0, subject, "internal error: cannot check the file in a child "
        "process while ", running_threads(), " worker thread(s) run (fork would hang)");
  int fds[2];
  check(::pipe(fds) == 0, subject, "cannot check the file (pipe: ", std::strerror(errno), ")");
  std::fflush(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    throw Error(subject, concat("cannot check the file (fork: ", std::strerror(err), ")"));
  }
  if (pid == 0) {
    ::close(fds[0]);
    // Ctrl-C reaches the whole process group: the parent's handler (runtime::stop_on_signals)
    // answers it; the child finishes its short check.
    ::signal(SIGINT, SIG_IGN);
    ::signal(SIGTERM, SIG_IGN);
    // The child shares the parent's open file descriptions, the output folder's lock among
    // them (attnscope/folder_lock.h): if the parent is killed, the child goes at once rather
    // than finish its check holding the lock. (The parent may have gone before prctl.)
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(kChildException);
    int code = 0;
    std::string message;
    try {
      // A forked child must not enter an OpenMP team the parent created.
      at::set_num_threads(1);
      read();
    } catch (const Error& e) {
      code = kChildError;
      message = e.subject() + '\0' + e.message();
    } catch (const std::exception& e) {
      code = kChildException;
      message = e.what();
    } catch (...) {
      code = kChildException;
      message = "unknown exception";
    }
    write_all(fds[1], message);
    ::_exit(code);
  }
  ::close(fds[1]);
  const std::string message = read_all(fds[0]);
  ::close(fds[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) {
    switch (WEXITSTATUS(status)) {
      case 0:
        return;
      case kChildError: {
        const auto nul = message.find('\0');
        if (nul != std::string::npos)
          throw Error(message.substr(0, nul), message.substr(nul + 1));
        break;
      }
      case kChildException:
        throw Error(subject, "cannot read: " + message);
      default:
        break;
    }
  }
  const std::string how =
      WIFSIGNALED(status) ? concat("signal ", WTERMSIG(status), ", ", ::strsignal(WTERMSIG(status)))
                          : concat("exit status ", WEXITSTATUS(status));
  throw Error(subject, "corrupt HDF5 file: reading it crashed the HDF5 library (" + how +
                           "); the file is damaged or crafted");
}

void read_everything(const std::string& path, bool all_data) {
  auto file = File::open(path);
  Walk walk{path, all_data, nullptr};
  const bool ok =
      H5Ovisit2(file.id(), H5_INDEX_NAME, H5_ITER_NATIVE, visit, &walk, H5O_INFO_BASIC) >= 0;
  if (walk.error) std::rethrow_exception(walk.error);
  check_h5(ok, path, "cannot walk the file's objects");
}

void check_untrusted_file(const std::string& path, bool all_data,
                          const std::function<void()>& also, const std::string& also_name) {
#ifdef ATTNSCOPE_FUZZING
  // scripts/fuzz.sh checkpoint fuzzes the readers themselves (a fork per input would slow
  // libFuzzer to a few inputs a second and hide where a crash is); every input it keeps is
  // replayed through this check by FuzzCorpus.CheckpointInputsNeverCrash.
  (void)path, (void)all_data, (void)also_name;
  if (also) also();
  return;
#endif
  check_not_special_file(path);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    if (also) also();  // the reader says what is wrong
    return;
  }
  using Key =
      std::tuple<dev_t, ino_t, off_t, int64_t, int64_t, int64_t, int64_t, bool, std::string>;
  const auto key = [&](const std::string& name) {
    return Key{st.st_dev,          st.st_ino,          st.st_size,        st.st_mtim.tv_sec,
               st.st_mtim.tv_nsec, st.st_ctim.tv_sec, st.st_ctim.tv_nsec, all_data,
               name};
  };
  const std::string name = also ? also_name : std::string();
  static std::mutex mutex;
  static std::set<Key> checked;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (checked.count(key(name))) return;
  }
  read_in_child(path, [&] {
    refuse_foreign_storage(path);  // before anything reads: its Error passes to the caller
    try {
      read_everything(path, all_data);
    } catch (...) {
    }
    if (also) also();  // its Error passes to the caller
  });
  std::lock_guard<std::mutex> lock(mutex);
  checked.insert(key(name));
  checked.insert(key(std::string()));
}

}  // namespace attnscope::pipeline::h5
