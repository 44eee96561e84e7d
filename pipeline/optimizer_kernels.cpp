#include "pipeline/optimizer_kernels.h"

#include <cmath>

namespace attnscope::pipeline::kernels {
namespace {

// The order of operations is ATen's scalar code's: mul_(Scalar) is a · s; add_(b, alpha) is
// a + alpha · b; addcmul_(t1, t2, value) is a + (value · t1) · t2; addcdiv_(t1, t2, value) is
// a + (value · t1) / t2; the denominator is sqrt(v) / bias2_sqrt + eps. With L2 (Adam) the gradient
// is g + l2 · p (Adam has no decay: decay is 1 and p · 1 is p).
template <typename T, bool kL2>
void adam_range(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
                int64_t begin, int64_t end, const AdamScalars& s) {
  const T decay = static_cast<T>(s.decay), l2 = static_cast<T>(s.l2);
  const T beta1 = static_cast<T>(s.beta1), one_minus_beta1 = static_cast<T>(1 - s.beta1);
  const T beta2 = static_cast<T>(s.beta2), one_minus_beta2 = static_cast<T>(1 - s.beta2);
  const T bias2_sqrt = static_cast<T>(s.bias2_sqrt), eps = static_cast<T>(s.eps);
  const T step_size = static_cast<T>(s.step_size);
  for (int64_t i = begin; i < end; ++i) {
    T gi = g[i];
    if constexpr (kL2) gi = gi + l2 * p[i];
    const T mi = m[i] * beta1 + one_minus_beta1 * gi;
    const T vi = v[i] * beta2 + one_minus_beta2 * gi * gi;
    p[i] = p[i] * decay + (step_size * mi) / (std::sqrt(vi) / bias2_sqrt + eps);
    m[i] = mi;
    v[i] = vi;
  }
}

template <typename T>
void dispatch(T* p, const T* g, T* m, T* v, int64_t begin, int64_t end, const AdamScalars& s) {
  if (s.l2 != 0) {
    adam_range<T, true>(p, g, m, v, begin, end, s);
  } else {
    adam_range<T, false>(p, g, m, v, begin, end, s);
  }
}

}  // namespace

void adam_step(float* p, const float* g, float* m, float* v, int64_t begin, int64_t end,
               const AdamScalars& s) {
  dispatch(p, g, m, v, begin, end, s);
}

void adam_step(double* p, const double* g, double* m, double* v, int64_t begin, int64_t end,
               const AdamScalars& s) {
  dispatch(p, g, m, v, begin, end, s);
}

}  // namespace attnscope::pipeline::kernels
