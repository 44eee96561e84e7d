#pragma once
// Mixed precision: the forward pass of a model in bfloat16 where it pays (LibTorch's autocast:
// convolutions, linear layers and matrix products take bfloat16 copies of their inputs and
// weights; reductions, normalisations' statistics and losses stay float32), with the
// parameters, their gradients and the optimiser in float32. On CPUs that compute bfloat16
// products natively (AVX512-BF16, AMX) a CNN trains 1.66x as fast (attn_resnet18 on a Zen 4
// CPU, docs/performance.md "Mixed precision"); elsewhere bfloat16 is emulated and slower.

#include <string>

#include <torch/types.h>

namespace attnscope::runtime {

/// "fp32" (everything float32) or "bf16" (autocast to bfloat16).
bool is_precision_name(const std::string& precision);

/// Whether this CPU multiplies bfloat16 natively: AVX512-BF16 (CPUID leaf 7 sub-leaf 1, EAX bit
/// 5) or AMX-BF16 (leaf 7 sub-leaf 0, EDX bit 22), as the kernel lists them in /proc/cpuinfo
/// (avx512_bf16, amx_bf16).
bool cpu_has_native_bf16();

/// The warning line (with its newline) for bf16 on a CPU device without native bfloat16
/// products, where it is emulated and slower than fp32; empty otherwise.
std::string precision_warning(const std::string& precision, const std::string& device);

/// While alive, the calling thread's forward passes on `device` run in `precision`: "bf16"
/// turns autocast on, "fp32" turns it off (a float32 computation inside a bf16 scope).
/// Restores the previous autocast state when destroyed (also on an exception); autocast's
/// cache of bfloat16 weight copies is cleared when the outermost bf16 scope ends, so the next
/// step casts the updated weights again. Backward may run after the scope: autograd records
/// the casts. Throws Error for any other name than fp32 or bf16.
class AutocastScope {
 public:
  AutocastScope(const std::string& precision, const torch::Device& device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool nested_ = false;  // a bf16 scope: counted in autocast's nesting
  bool cuda_ = false;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kFloat;
};

}  // namespace attnscope::runtime
