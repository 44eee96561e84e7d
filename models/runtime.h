#pragma once
// What LibTorch runs on: versions, intra-op threads, the BLAS library and CUDA devices.

#include <string>

namespace attnscope::models {

/// LibTorch's version, e.g. "1.13.0".
std::string torch_version();

/// Cores this process may run on (its CPU affinity mask), at least 1.
int available_cores();

/// Sets LibTorch's intra-op thread count. n <= 0 means available_cores(): LibTorch's
/// default here is one thread, which leaves all other cores idle.
void set_threads(int n);

/// LibTorch's current intra-op thread count.
int threads();

struct BlasInfo {
  std::string name;    ///< "OpenBLAS", "reference BLAS" or "unknown"
  std::string path;    ///< resolved path of the loaded libblas, empty if none was found
  std::string config;  ///< OpenBLAS's own build description, when it is OpenBLAS
  bool is_openblas() const { return name == "OpenBLAS"; }
};

/// The BLAS library loaded into this process (LibTorch's matrix products go through it).
BlasInfo blas_info();

/// OpenMP's wait policy as libgomp read it at start-up, and whether attnscope set it
/// (ensure_passive_openmp) rather than the user's environment.
struct OpenMpPolicy {
  std::string wait_policy;  ///< OMP_WAIT_POLICY, empty when unset (libgomp then spins a while)
  bool set_by_attnscope = false;
};
OpenMpPolicy openmp_policy();

/// LibTorch runs element-wise kernels on OpenMP (libgomp) threads and matrix products on
/// OpenBLAS's own threads. By default an idle libgomp worker spins for a while after every
/// parallel region and takes the core OpenBLAS needs next: on 2 cores a ViT-Tiny forward pass
/// took 3.7x longer and a small Transformer trained 3x fewer steps per second
/// (docs/performance.md). libgomp reads OMP_WAIT_POLICY once, before main() runs, so when it is
/// unset and more than one intra-op thread will run, this sets OMP_WAIT_POLICY=PASSIVE and
/// re-executes the program with the same arguments (/proc/self/exe). It returns when nothing
/// had to be done, when the user set OMP_WAIT_POLICY, or when the re-execution failed.
void ensure_passive_openmp(int intra_op_threads, char** argv);

bool cuda_available();
int cuda_device_count();

}  // namespace attnscope::models
