#include "runtime/precision.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "attnscope/error.h"

namespace attnscope::runtime {
namespace {

// LibTorch 2.4 replaced autocast's per-device functions (set_enabled, set_cpu_enabled,
// get_autocast_gpu_dtype, ...) by functions of the device type; the old ones still work there
// but print a deprecation warning on every call, that is every training step.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
at::DeviceType autocast_type(bool cuda) {
  return cuda ? at::kCUDA : at::kCPU;
}
bool autocast_enabled(bool cuda) {
  return at::autocast::is_autocast_enabled(autocast_type(cuda));
}
void enable_autocast(bool cuda, bool on) {
  at::autocast::set_autocast_enabled(autocast_type(cuda), on);
}
at::ScalarType autocast_dtype(bool cuda) {
  return at::autocast::get_autocast_dtype(autocast_type(cuda));
}
void set_autocast_dtype(bool cuda, at::ScalarType dtype) {
  at::autocast::set_autocast_dtype(autocast_type(cuda), dtype);
}
#else
bool autocast_enabled(bool cuda) {
  return cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
void enable_autocast(bool cuda, bool on) {
  cuda ? at::autocast::set_enabled(on) : at::autocast::set_cpu_enabled(on);
}
at::ScalarType autocast_dtype(bool cuda) {
  return cuda ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
void set_autocast_dtype(bool cuda, at::ScalarType dtype) {
  cuda ? at::autocast::set_autocast_gpu_dtype(dtype) : at::autocast::set_autocast_cpu_dtype(dtype);
}
#endif

}  // namespace

bool is_precision_name(const std::string& precision) {
  return precision == "fp32" || precision == "bf16";
}

bool cpu_has_native_bf16() {
#if !defined(__x86_64__) && !defined(__i386__)
  return false;  // ARM's BF16 extension is not what oneDNN 2.6 in LibTorch 1.13 uses
#else
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  // The CPU's bits count only where the OS saves the registers they use (XCR0): a kernel that
  // turned AVX-512 or AMX off (a mitigation, a hypervisor without their state) lists neither
  // flag in /proc/cpuinfo, and oneDNN does not use them.
  __cpuid(1, eax, ebx, ecx, edx);
  if (!((ecx >> 27) & 1u)) return false;  // OSXSAVE: xgetbv may be asked
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const uint64_t xcr0 = (static_cast<uint64_t>(xcr0_hi) << 32) | xcr0_lo;
  const bool os_avx512 = (xcr0 & 0xE6u) == 0xE6u;  // SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM
  const bool os_amx = ((xcr0 >> 17) & 3u) == 3u;   // TILECFG, TILEDATA
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool amx_bf16 = (edx >> 22) & 1u;
  const unsigned max_subleaf = eax;
  bool avx512_bf16 = false;
  if (max_subleaf >= 1) {
    __cpuid_count(7, 1, eax, ebx, ecx, edx);
    avx512_bf16 = (eax >> 5) & 1u;
  }
  return (avx512_bf16 && os_avx512) || (amx_bf16 && os_amx);
#endif
}

std::string precision_warning(const std::string& precision, const std::string& device) {
  if (precision != "bf16" || device != "cpu" || cpu_has_native_bf16()) return "";
  return "warning: --precision bf16: this CPU has no native bfloat16 products (AVX512-BF16 or "
         "AMX); they are emulated, slower than fp32\n";
}

AutocastScope::AutocastScope(const std::string& precision, const torch::Device& device) {
  check(is_precision_name(precision), "precision", "must be fp32 or bf16, got '", precision, "'");
  const bool bf16 = precision == "bf16";
  cuda_ = device.is_cuda();
  nested_ = bf16;
  was_enabled_ = autocast_enabled(cuda_);
  was_dtype_ = autocast_dtype(cuda_);
  if (bf16) set_autocast_dtype(cuda_, at::kBFloat16);
  enable_autocast(cuda_, bf16);
  if (nested_) at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  if (nested_ && at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  enable_autocast(cuda_, was_enabled_);
  set_autocast_dtype(cuda_, was_dtype_);
}

}  // namespace attnscope::runtime
