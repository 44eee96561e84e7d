#pragma once
// One pass over a parameter's memory for an Adam / AdamW step (pipeline/training.cpp uses it
// for CPU parameters whose gradient and moments share its layout). torch.optim's single-tensor
// Adam in PyTorch 1.13 — its default CPU path — makes nine passes over parameter-sized tensors
// per step (mul_, mul_, add_, mul_, addcmul_, sqrt, div, add_, addcdiv_), two of them into
// temporaries; this kernel reads p, g, m and v once and writes p, m and v once, with the same
// operations in the order of ATen's scalar code, rounding to T after each. ATen's vector code
// may fuse a multiply and an add (FMA), so the two differ by float rounding (a few ulps of
// the update; Optimizer tests compare with torch.optim at 1e-5).
//
// Every element is computed on its own, so the result does not depend on how the range is
// split between threads. The file is compiled with -ffp-contract=off (no fused multiply-adds
// whatever -march is: the vector loop and its scalar tail round alike) and -fno-math-errno (so
// the square root vectorises); it includes no LibTorch header.

#include <cstdint>

namespace attnscope::pipeline::kernels {

/// The scalars of one step, in double as torch.optim computes them; each is rounded to the
/// parameter's type once, as ATen rounds a Scalar argument.
struct AdamScalars {
  /// AdamW: p ← p · decay with decay = 1 - lr · weight_decay (1 for Adam).
  double decay = 1.0;
  /// Adam: g ← g + l2 · p (0 for AdamW).
  double l2 = 0.0;
  double beta1 = 0.9, beta2 = 0.999;
  /// sqrt(1 - beta2^step).
  double bias2_sqrt = 1.0;
  double eps = 1e-8;
  /// -lr / (1 - beta1^step).
  double step_size = 0.0;
};

/// Elements [begin, end) of
///   p ← p · decay;  g' = g + l2 · p   (Adam; AdamW keeps g' = g)
///   m ← m · β1 + (1 - β1) · g';  v ← v · β2 + (1 - β2) · g' · g'
///   p ← p + (step_size · m) / (sqrt(v) / bias2_sqrt + eps)
void adam_step(float* p, const float* g, float* m, float* v, int64_t begin, int64_t end,
               const AdamScalars& s);
void adam_step(double* p, const double* g, double* m, double* v, int64_t begin, int64_t end,
               const AdamScalars& s);

}  // namespace attnscope::pipeline::kernels
