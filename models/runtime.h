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

bool cuda_available();
int cuda_device_count();

}  // namespace attnscope::models
