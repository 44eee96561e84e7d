#include "models/vision/batch_norm_relu.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include <ATen/Parallel.h>

namespace attnscope::models::vision {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows (positions n·h·w) per reduction chunk: fixed, so the chunks and the order they are
// combined in do not depend on the thread count. Within a chunk, sums run in float over at
// most this many rows, then go into double.
constexpr int64_t kChunkRows = 256;

struct View {
  int64_t rows = 0, channels = 0;
};

View view_of(const torch::Tensor& x) {
  return {x.numel() / x.size(1), x.size(1)};
}

// The row loops, written so that the compiler vectorises them over channels: restrict
// pointers, no branch (the ReLU mask is a select), every load unconditional.

// s1 += x − shift, s2 += (x − shift)² over rows [r0, r1).
void stats_rows(const float* __restrict x, const float* __restrict shift, float* __restrict s1,
                float* __restrict s2, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict xr = x + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float d = xr[c] - shift[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

// With g = gy where (x − μ)·k + β > 0, else 0: s1 += g, s2 += g·(x − μ).
void grad_sums_rows(const float* __restrict x, const float* __restrict gy,
                    const float* __restrict mean, const float* __restrict k,
                    const float* __restrict beta, float* __restrict s1, float* __restrict s2,
                    int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict xr = x + r * C;
    const float* __restrict gr = gy + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float d = xr[c] - mean[c];
      const float gv = gr[c];
      const float g = d * k[c] + beta[c] > 0.0f ? gv : 0.0f;
      s1[c] += g;
      s2[c] += g * d;
    }
  }
}

// gx = k·g − q − (x − μ)·r, g masked as above.
void grad_input_rows(const float* __restrict x, const float* __restrict gy,
                     const float* __restrict mean, const float* __restrict k,
                     const float* __restrict beta, const float* __restrict q,
                     const float* __restrict r, float* __restrict gx, int64_t r0, int64_t r1,
                     int64_t C) {
  for (int64_t row = r0; row < r1; ++row) {
    const float* __restrict xr = x + row * C;
    const float* __restrict gr = gy + row * C;
    float* __restrict out = gx + row * C;
    for (int64_t c = 0; c < C; ++c) {
      const float d = xr[c] - mean[c];
      const float gv = gr[c];
      const float g = d * k[c] + beta[c] > 0.0f ? gv : 0.0f;
      out[c] = k[c] * g - q[c] - d * r[c];
    }
  }
}

// y = max(0, (x − m)·k + β).
void normalize_relu_rows(const float* __restrict x, const float* __restrict m,
                         const float* __restrict k, const float* __restrict beta,
                         float* __restrict y, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* __restrict xr = x + r * C;
    float* __restrict yr = y + r * C;
    for (int64_t c = 0; c < C; ++c) {
      const float z = (xr[c] - m[c]) * k[c] + beta[c];
      yr[c] = z > 0.0f ? z : 0.0f;
    }
  }
}

// Per-channel sums over all rows of f(row, channel) (two sums at once), chunked as above.
// `accumulate(r0, r1, s1, s2)` adds rows [r0, r1) into the float arrays s1, s2 (length C).
template <class Accumulate>
void reduce_rows(const View& v, Accumulate accumulate, std::vector<double>& sum1,
                 std::vector<double>& sum2) {
  const int64_t C = v.channels;
  const int64_t chunks = (v.rows + kChunkRows - 1) / kChunkRows;
  std::vector<double> partial(static_cast<std::size_t>(chunks * 2 * C), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s1(static_cast<std::size_t>(C)), s2(static_cast<std::size_t>(C));
    for (int64_t k = begin; k < end; ++k) {
      std::fill(s1.begin(), s1.end(), 0.0f);
      std::fill(s2.begin(), s2.end(), 0.0f);
      accumulate(k * kChunkRows, std::min(v.rows, (k + 1) * kChunkRows), s1.data(), s2.data());
      double* out = partial.data() + k * 2 * C;
      for (int64_t c = 0; c < C; ++c) {
        out[c] = s1[static_cast<std::size_t>(c)];
        out[C + c] = s2[static_cast<std::size_t>(c)];
      }
    }
  });
  sum1.assign(static_cast<std::size_t>(C), 0.0);
  sum2.assign(static_cast<std::size_t>(C), 0.0);
  for (int64_t k = 0; k < chunks; ++k)
    for (int64_t c = 0; c < C; ++c) {
      sum1[static_cast<std::size_t>(c)] += partial[static_cast<std::size_t>(k * 2 * C + c)];
      sum2[static_cast<std::size_t>(c)] += partial[static_cast<std::size_t>(k * 2 * C + C + c)];
    }
}

// y = max(0, (x − m_c)·k_c + β_c) over rows × channels (channels-last memory). x − m first:
// exact when x is near m, so a large mean costs no precision (k·x + b would cancel).
void normalize_relu(const float* __restrict x, const float* __restrict m,
                    const float* __restrict k, const float* __restrict beta, float* __restrict y,
                    const View& v) {
  const int64_t C = v.channels;
  at::parallel_for(0, v.rows, std::max<int64_t>(1, 32768 / C), [&](int64_t r0, int64_t r1) {
    normalize_relu_rows(x, m, k, beta, y, r0, r1, C);
  });
}

torch::Tensor float_tensor(const std::vector<double>& v) {
  auto t = torch::empty({static_cast<int64_t>(v.size())}, torch::kFloat32);
  auto* p = t.data_ptr<float>();
  for (std::size_t i = 0; i < v.size(); ++i) p[i] = static_cast<float>(v[i]);
  return t;
}

// Saved: x, the batch mean and 1/σ, the scale k = γ/σ and β (so the backward pass recomputes
// exactly the pre-activations whose sign the forward pass used).
struct BatchNormReluFunction : public torch::autograd::Function<BatchNormReluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& bias,
                               const torch::Tensor& mean, const torch::Tensor& invstd) {
    const View v = view_of(x);
    const auto a = (weight * invstd).contiguous();
    const auto b = bias.contiguous();
    auto y = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    normalize_relu(x.data_ptr<float>(), mean.data_ptr<float>(), a.data_ptr<float>(),
                   b.data_ptr<float>(), y.data_ptr<float>(), v);
    ctx->save_for_backward({x, mean, invstd, a, b});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& mean = saved[1];
    const auto& invstd = saved[2];
    const auto& a = saved[3];
    const auto& b = saved[4];
    const auto gy = grads[0].contiguous(torch::MemoryFormat::ChannelsLast);
    const View v = view_of(x);
    const int64_t C = v.channels;
    const float* xp = x.data_ptr<float>();
    const float* gp = gy.data_ptr<float>();
    const float* ap = a.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    const float* mp = mean.data_ptr<float>();
    const float* ip = invstd.data_ptr<float>();
    // Σg and Σg·(x − μ) over the positions whose pre-activation was positive.
    std::vector<double> sum_g, sum_gx;
    reduce_rows(
        v,
        [&](int64_t r0, int64_t r1, float* s1, float* s2) {
          grad_sums_rows(xp, gp, mp, ap, bp, s1, s2, r0, r1, C);
        },
        sum_g, sum_gx);
    // x̂ = (x − μ)·σ⁻¹: ∂γ = Σg·x̂, ∂β = Σg, ∂x = a·g − a·Σg/M − (x − μ)·a·σ⁻¹·Σg·x̂/M.
    const double M = static_cast<double>(v.rows);
    std::vector<double> grad_weight(static_cast<std::size_t>(C)), q(grad_weight.size()),
        r(grad_weight.size());
    for (int64_t c = 0; c < C; ++c) {
      const auto i = static_cast<std::size_t>(c);
      grad_weight[i] = sum_gx[i] * ip[c];
      q[i] = ap[c] * sum_g[i] / M;
      r[i] = ap[c] * ip[c] * grad_weight[i] / M;
    }
    const auto qt = float_tensor(q), rt = float_tensor(r);
    const float* qp = qt.data_ptr<float>();
    const float* rp = rt.data_ptr<float>();
    auto gx = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    float* op = gx.data_ptr<float>();
    at::parallel_for(0, v.rows, std::max<int64_t>(1, 32768 / C), [&](int64_t r0, int64_t r1) {
      grad_input_rows(xp, gp, mp, ap, bp, qp, rp, op, r0, r1, C);
    });
    return {gx, float_tensor(grad_weight), float_tensor(sum_g), torch::Tensor(), torch::Tensor()};
  }
};

// ATTNSCOPE_FUSED_BN_RELU=0 turns the fusion off (for side-by-side benchmarks).
bool fusion_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("ATTNSCOPE_FUSED_BN_RELU");
    return v == nullptr || std::string(v) != "0";
  }();
  return enabled;
}

bool fusable(const torch::Tensor& x, const torch::nn::BatchNorm2dImpl& bn) {
  const auto& o = bn.options;
  return fusion_enabled() && x.dim() == 4 && x.scalar_type() == torch::kFloat32 && x.device().is_cpu() &&
         x.numel() > 0 && x.is_contiguous(torch::MemoryFormat::ChannelsLast) && o.affine() &&
         o.track_running_stats() && o.momentum().has_value() && bn.weight.defined() &&
         bn.weight.scalar_type() == torch::kFloat32 && bn.weight.device().is_cpu() &&
         !bn.weight.is_inference() && x.size(1) == bn.weight.size(0);
}

}  // namespace

torch::Tensor batch_norm_relu_unfused(const torch::Tensor& x, torch::nn::BatchNorm2dImpl& bn) {
  return bn.forward(x).relu();
}

torch::Tensor batch_norm_relu(const torch::Tensor& x, torch::nn::BatchNorm2dImpl& bn) {
  if (!fusable(x, bn)) return bn.forward(x).relu_();
  const auto& o = bn.options;
  const View v = view_of(x);
  const int64_t C = v.channels;
  if (!bn.is_training()) {
    // Evaluation: running statistics. With gradients wanted (Grad-CAM through the trunk), the
    // ATen operations, whose backward autograd knows.
    if (torch::GradMode::is_enabled() &&
        (x.requires_grad() || bn.weight.requires_grad() || bn.bias.requires_grad()))
      return bn.forward(x).relu_();
    torch::NoGradGuard no_grad;
    const auto m = bn.running_mean.contiguous();
    const auto k = (bn.weight / (bn.running_var + o.eps()).sqrt()).contiguous();
    const auto b = bn.bias.contiguous();
    auto y = torch::empty_like(x, torch::MemoryFormat::ChannelsLast);
    normalize_relu(x.data_ptr<float>(), m.data_ptr<float>(), k.data_ptr<float>(),
                   b.data_ptr<float>(), y.data_ptr<float>(), v);
    return y;
  }
  // Training: batch statistics, shifted by the first row's values for accuracy.
  const auto xc = x.detach();
  const float* xp = xc.data_ptr<float>();
  std::vector<float> shift(xp, xp + C);
  const float* sp = shift.data();
  std::vector<double> sum, sum_sq;
  reduce_rows(
      v,
      [&](int64_t r0, int64_t r1, float* s1, float* s2) {
        stats_rows(xp, sp, s1, s2, r0, r1, C);
      },
      sum, sum_sq);
  const double M = static_cast<double>(v.rows);
  std::vector<double> mean(static_cast<std::size_t>(C)), var(mean.size()), invstd(mean.size());
  for (std::size_t c = 0; c < mean.size(); ++c) {
    const double d = sum[c] / M;
    mean[c] = shift[c] + d;
    var[c] = std::max(0.0, sum_sq[c] / M - d * d);
    invstd[c] = 1.0 / std::sqrt(var[c] + o.eps());
  }
  {
    torch::NoGradGuard no_grad;
    double factor = *o.momentum();
    if (bn.num_batches_tracked.defined()) bn.num_batches_tracked += 1;
    std::vector<double> unbiased(var);
    for (auto& u : unbiased) u *= M > 1 ? M / (M - 1) : 1.0;
    bn.running_mean.mul_(1.0 - factor).add_(float_tensor(mean), factor);
    bn.running_var.mul_(1.0 - factor).add_(float_tensor(unbiased), factor);
  }
  return BatchNormReluFunction::apply(x, bn.weight, bn.bias, float_tensor(mean),
                                      float_tensor(invstd));
}

}  // namespace attnscope::models::vision
