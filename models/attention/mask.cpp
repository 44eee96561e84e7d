#include "models/attention/mask.h"

#include "attnscope/error.h"

namespace attnscope::models::attention {

torch::Tensor causal_mask(int64_t q_len, int64_t k_len, torch::Device device) {
  check(q_len >= 0 && k_len >= 0, "causal_mask", "lengths must be >= 0, got q_len ", q_len,
        " and k_len ", k_len);
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  auto rows = torch::arange(q_len, opts).unsqueeze(1) + (k_len - q_len);  // (Q, 1)
  auto cols = torch::arange(k_len, opts).unsqueeze(0);                    // (1, K)
  return cols > rows;                                                     // (Q, K)
}

torch::Tensor padding_mask(const torch::Tensor& lengths, int64_t max_len) {
  check(lengths.dim() == 1, "padding_mask", "lengths must be (B), got ", lengths.sizes());
  if (max_len <= 0) max_len = lengths.numel() == 0 ? 0 : lengths.max().item<int64_t>();
  auto positions = torch::arange(max_len, lengths.options().dtype(torch::kLong));
  return positions.unsqueeze(0) >= lengths.to(torch::kLong).unsqueeze(1);  // (B, max_len)
}

torch::Tensor mask_or(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a.logical_or(b);
}

torch::Tensor combine_masks(const AttentionMasks& masks, int64_t q_len, int64_t k_len,
                            int64_t score_dims, torch::Device device) {
  check(score_dims == 3 || score_dims == 4, "combine_masks",
        "score_dims must be 3 (B, Q, K) or 4 (B, H, Q, K), got ", score_dims);
  torch::Tensor mask;
  if (masks.key_padding.defined()) {
    const auto& kp = masks.key_padding;
    check(kp.scalar_type() == torch::kBool, "key_padding mask",
          "must be bool (true = padding), got ", kp.scalar_type());
    check(kp.dim() == 2 && kp.size(1) == k_len, "key_padding mask", "must be (B, K=", k_len,
          "), got ", kp.sizes());
    // (B, 1, K) or (B, 1, 1, K)
    mask = score_dims == 3 ? kp.unsqueeze(1) : kp.unsqueeze(1).unsqueeze(2);
  }
  if (masks.attn.defined()) {
    const auto& am = masks.attn;
    check(am.scalar_type() == torch::kBool, "attn mask", "must be bool (true = masked), got ",
          am.scalar_type());
    check(am.dim() >= 2 && am.dim() <= 4 && am.size(-2) == q_len && am.size(-1) == k_len,
          "attn mask", "must be (Q=", q_len, ", K=", k_len, "), (B, Q, K) or (B, H, Q, K), got ",
          am.sizes());
    auto part = am;
    if (score_dims == 4 && am.dim() == 3) part = am.unsqueeze(1);  // (B, 1, Q, K)
    check(part.dim() <= score_dims, "attn mask", "has rank ", am.dim(), " but scores have rank ",
          score_dims);
    mask = mask_or(mask, part);
  }
  if (masks.causal) mask = mask_or(mask, causal_mask(q_len, k_len, device));
  if (mask.defined() && mask.device() != device) mask = mask.to(device);
  return mask;
}

}  // namespace attnscope::models::attention
