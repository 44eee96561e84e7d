// The `attnscope` command users run: a few kilobytes that set the OpenMP and OpenBLAS
// environment and then execute the program itself (attnscope.real, beside this file). libgomp
// reads GOMP_SPINCOUNT and OpenBLAS OPENBLAS_THREAD_TIMEOUT once, when LibTorch is loaded and
// before main() runs; setting them here, in a process that never loads LibTorch, saves the
// second LibTorch load (about 0.5 s on every command) that re-executing the program itself
// costs (runtime::limit_idle_spinning, still the fallback when attnscope.real is run
// directly). docs/architecture.md, "Threads and BLAS".

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "runtime/runtime.h"

namespace {

// The intra-op thread count the program will use: the global --threads N (before the
// command), else every core this process may run on. -1 when --threads is malformed (the
// program itself then says so).
int intra_op_threads(int argc, char** argv) {
  int threads = 0;
  for (int i = 1; i < argc && argv[i][0] == '-'; ++i) {
    const char* value = nullptr;
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
      value = argv[++i];
    else if (std::strncmp(argv[i], "--threads=", 10) == 0)
      value = argv[i] + 10;
    if (value == nullptr) continue;
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || n < 0 || n > INT_MAX) return -1;
    threads = static_cast<int>(n);
  }
  return threads > 0 ? threads : attnscope::runtime::available_cores();
}

}  // namespace

int main(int argc, char** argv) {
  namespace rt = attnscope::runtime;
  char self[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) {
    std::fprintf(stderr, "error: attnscope: cannot find its own program file (/proc/self/exe: %s)\n",
                 std::strerror(errno));
    return 127;
  }
  self[n] = '\0';
  std::string program(self);
  program = program.substr(0, program.rfind('/') + 1) + rt::kProgramFile;

  // When this fails to set it, the program re-executes itself instead.
  const int threads = intra_op_threads(argc, argv);
  rt::set_openmp_spin_limit(threads);
  rt::set_blas_wait_limit(threads);
  rt::set_heap_huge_pages();  // glibc reads its tunables once, when the program starts
  ::execv(program.c_str(), argv);
  std::fprintf(stderr, "error: attnscope: cannot run %s: %s\n", program.c_str(),
               std::strerror(errno));
  return 127;
}
