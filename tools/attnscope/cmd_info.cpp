// attnscope info: versions, threads, BLAS and CUDA — what a bug report needs.

#include <iostream>

#include <boost/version.hpp>

#include "attnscope/version.h"
#include "cli.h"
#include "pipeline/h5.h"
#include "preprocessing/tensor.h"
#include "runtime/memory_limit.h"
#include "runtime/runtime.h"
#include "runtime/tensor_cache.h"

namespace attnscope::cli {
namespace {

int run_info(const std::vector<std::string>& args, const GlobalOptions&) {
  po::options_description desc("Options");
  po::variables_map vm;
  if (!parse("info", desc, args, vm)) return 0;

  const auto blas = runtime::blas_info();
  const std::string boost_version = std::to_string(BOOST_VERSION / 100000) + "." +
                                    std::to_string(BOOST_VERSION / 100 % 1000) + "." +
                                    std::to_string(BOOST_VERSION % 100);
  std::cout << "attnscope      " << kVersion << "\n"
            << "LibTorch       " << runtime::torch_version() << "\n"
            << "OpenCV         " << preprocessing::opencv_version() << "\n"
            << "HDF5           " << pipeline::h5::hdf5_version() << "\n"
            << "Boost          " << boost_version << "\n"
            << "threads        " << runtime::threads() << " intra-op ("
            << runtime::available_cores() << " cores available)\n"
            << "BLAS           " << blas.name << (blas.path.empty() ? "" : " (" + blas.path + ")")
            << "\n";
  if (!blas.config.empty()) std::cout << "BLAS config    " << blas.config << "\n";
  if (const int n = runtime::blas_threads(); n > 0)
    std::cout << "BLAS threads   " << n << " (OpenBLAS's own pthreads)\n";
  const auto omp = runtime::openmp_policy();
  std::string wait;
  if (!omp.wait_policy.empty()) wait = "OMP_WAIT_POLICY=" + omp.wait_policy;
  if (!omp.spin_count.empty())
    wait += (wait.empty() ? "" : ", ") + std::string("GOMP_SPINCOUNT=") + omp.spin_count;
  if (wait.empty()) wait = "libgomp default (idle workers spin ~300000 times)";
  std::cout << "OpenMP wait    " << wait << (omp.set_by_attnscope ? " (set by attnscope)" : "")
            << "\n";
  if (const auto blas_wait = runtime::blas_wait_policy(); blas_wait.openblas) {
    std::cout << "BLAS wait      idle threads yield 2^" << blas_wait.yield_cycles_log2
              << " cycles, then sleep ("
              << (blas_wait.timeout_setting > 0
                      ? "OPENBLAS_THREAD_TIMEOUT=" + std::to_string(blas_wait.timeout_setting) +
                            (blas_wait.set_by_attnscope ? ", set by attnscope" : "")
                      : std::string("OpenBLAS default"))
              << ")\n";
  }
  const auto mem = runtime::malloc_policy();
  std::cout << "malloc         "
            << (mem.set_by_attnscope
                    ? "freed blocks up to 512 MiB stay in the heap for reuse (set by attnscope)"
                : mem.user.empty() ? "glibc default"
                                   : mem.user)
            << "; a 64 MiB block is "
            << (runtime::malloc_maps_blocks_of(std::size_t{64} << 20) ? "mapped" : "from the heap")
            << "\n";
  std::cout << "tensor memory  "
            << (runtime::tensor_cache_enabled()
                    ? "blocks of " + std::to_string(runtime::kTensorCacheMinBytes >> 10) +
                          " KiB and more kept for reuse by size (attnscope's tensor cache)"
                    : std::string("LibTorch's allocator"))
            << "\n";
  const auto& limit = runtime::memory_limit();
  std::cout << "memory limit   "
            << (limit.bytes == 0 ? std::string("none")
                                 : runtime::memory_size_text(limit.bytes) + ", " + limit.source)
            << (runtime::tensor_cache_enabled() ? "" : " (not enforced: the tensor cache is off)")
            << "\n";
  // Whether malloc's heap is advised is read from the kernel's own flags for its mappings.
  const bool heap_advised = runtime::heap_has_huge_page_advice();
  const std::string thp = runtime::transparent_huge_pages_mode();
  std::cout << "huge pages     THP " << (thp.empty() ? "unknown" : thp) << "; malloc's heap "
            << (heap_advised ? "advised" : "not advised")
            << (runtime::heap_huge_pages() ? " (glibc.malloc.hugetlb=1, set by attnscope)" : "")
            << "; tensor blocks of " << (runtime::kTensorCacheHugePageBytes >> 20)
            << " MiB and more " << (runtime::tensor_cache_huge_pages() ? "advised" : "not advised")
            << "\n";
  std::cout << "CUDA           " << (runtime::cuda_available() ? "available" : "not available")
            << ", " << runtime::cuda_device_count() << " device(s)\n";
  if (!blas.is_optimised())
    std::cout << "warning: LibTorch's matrix products are not using OpenBLAS or MKL (the reference "
                 "BLAS is about 30x slower); run scripts/bootstrap.sh\n";
  return 0;
}

const Registration kInfo("info", "print versions, threads, BLAS and CUDA devices", run_info);

}  // namespace
}  // namespace attnscope::cli
