#pragma once
// One writer per output folder. `attnscope train --out RUN` and `attnscope classify --out DIR`
// hold an exclusive flock(2) on the folder itself for as long as they write there, so a second
// run into the same folder (a repeated command, two Slurm tasks given the same --out, a resume
// started while the first run still goes) stops before it touches anything, with one line
// naming the folder, instead of interleaving metrics.jsonl, removing the other's temporary
// files or appending to the same results.h5.
//
//   FolderLock lock(out, "choose another --out");   // throws Error when another run holds it
//
// The lock is on the folder's own inode (no lock file: nothing to leave behind or to clean
// up), belongs to this open file description, and the kernel drops it when the process ends in
// any way, SIGKILL included, so a killed run never blocks the next one (children forked for
// HDF5 checks share the lock and die with their parent: h5_isolation.cpp). Runs on one machine
// are always kept apart; runs on several machines only where the shared file system's flock is
// cluster-wide (Lustre mounted with `flock`, GPFS, CephFS). Where flock on a folder fails (NFS,
// which emulates flock with byte-range locks that need a file open for writing) the folder is
// left unlocked with a warning, and the run goes on as before.

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "attnscope/error.h"
#include "attnscope/printable.h"

namespace attnscope {

class FolderLock {
 public:
  /// Locks the existing folder `dir`; throws Error naming it when another process (or another
  /// FolderLock in this one) holds it. `advice` ends the message.
  FolderLock(const std::string& dir, const std::string& advice) {
    fd_ = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    check(fd_ >= 0, dir, "cannot open the folder: ", std::strerror(errno));
    int rc;
    do {
      rc = ::flock(fd_, LOCK_EX | LOCK_NB);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) {
      locked_ = true;
      return;
    }
    const int err = errno;
    if (err == EWOULDBLOCK) {
      ::close(fd_);
      fd_ = -1;
      throw Error(
          dir, concat("is in use by another attnscope run (it holds the folder's lock); ", advice));
    }
    // Any other error (NFS: ENOLCK or EBADF; a file system without flock): the run goes on
    // unprotected, as before this lock existed, and says so.
    std::fprintf(stderr,
                 "warning: %s: this file system does not lock folders (%s); make sure no other "
                 "run writes here\n",
                 printable(dir).c_str(), std::strerror(err));
  }
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;
  ~FolderLock() {
    if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the lock
  }
  /// False when the file system refused flock (the folder is then not protected).
  bool locked() const { return locked_; }

 private:
  int fd_ = -1;
  bool locked_ = false;
};

}  // namespace attnscope
