#include "models/attention/multihead.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "attnscope/error.h"
#include "models/attention/normalize.h"
#include "models/attention/score.h"

namespace attnscope::models::attention {
namespace {

// (B, L, n·H·Dh) -> n tensors (B, H, L, Dh), views into the projection's output.
std::vector<torch::Tensor> split_heads(const torch::Tensor& x, int64_t n, int64_t heads) {
  const int64_t B = x.size(0), L = x.size(1);
  auto parts = x.view({B, L, n, heads, -1}).permute({2, 0, 3, 1, 4});  // (n, B, H, L, Dh)
  return parts.unbind(0);
}

// Rows [start, start + length) of the query axis of a mask broadcastable to (B, H, Q, K).
torch::Tensor mask_rows(const torch::Tensor& mask, int64_t q_len, int64_t start, int64_t length) {
  if (!mask.defined() || mask.size(-2) != q_len || q_len == 1) return mask;
  return mask.narrow(-2, start, length);
}

}  // namespace

void KvCache::reorder(const torch::Tensor& index) {
  if (!key.defined()) return;
  key = key.index_select(0, index);
  value = value.index_select(0, index);
}

MultiHeadAttentionImpl::MultiHeadAttentionImpl(const MultiHeadAttentionOptions& options_)
    : options(options_) {
  reset();
}

void MultiHeadAttentionImpl::reset() {
  const int64_t E = options.embed_dim(), H = options.num_heads();
  check(E > 0 && H > 0 && E % H == 0, "MultiHeadAttention", "embed_dim (", E,
        ") must be a positive multiple of num_heads (", H, ")");
  check(options.dropout() >= 0 && options.dropout() < 1 && options.proj_dropout() >= 0 &&
            options.proj_dropout() < 1,
        "MultiHeadAttention", "dropouts must be in [0, 1), got ", options.dropout(), " and ",
        options.proj_dropout());
  check(options.cross() || (kdim() == E && vdim() == E), "MultiHeadAttention", "kdim (", kdim(),
        ") and vdim (", vdim(), ") differ from embed_dim (", E,
        "): use the cross-attention layout (cross = true)");
  namespace nn = torch::nn;
  auto linear = [&](int64_t in, int64_t out, bool bias) {
    return nn::Linear(nn::LinearOptions(in, out).bias(bias));
  };
  qkv = q = kv = k = v = nullptr;
  if (!options.cross()) {
    qkv = register_module("qkv", linear(E, 3 * E, options.bias()));
  } else {
    q = register_module("q", linear(E, E, options.bias()));
    if (kdim() == vdim()) {
      kv = register_module("kv", linear(kdim(), 2 * E, options.bias()));
    } else {
      k = register_module("k", linear(kdim(), E, options.bias()));
      v = register_module("v", linear(vdim(), E, options.bias()));
    }
  }
  attn_drop = register_module("attn_drop", nn::Dropout(options.dropout()));
  proj = register_module("proj", linear(E, E, options.proj_bias()));
  proj_drop = register_module("proj_drop", nn::Dropout(options.proj_dropout()));
  scale =
      options.learned_scale() ? register_parameter("scale", torch::empty({H})) : torch::Tensor();
  reset_parameters();
}

void MultiHeadAttentionImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const int64_t E = options.embed_dim();
  // torch.nn.MultiheadAttention initialises the (3E, E) in_proj_weight as one matrix.
  auto init = [&](const torch::nn::Linear& layer, int64_t rows_of_full) {
    if (!layer) return;
    const double fan_in = static_cast<double>(layer->weight.size(1));
    const double bound = std::sqrt(6.0 / (fan_in + static_cast<double>(rows_of_full)));
    layer->weight.uniform_(-bound, bound);
    if (layer->bias.defined()) layer->bias.zero_();
  };
  init(qkv, 3 * E);
  init(q, 3 * E);
  init(kv, 3 * E);
  init(k, 3 * E);
  init(v, 3 * E);
  if (proj->bias.defined()) proj->bias.zero_();
  if (scale.defined()) scale.fill_(1.0 / std::sqrt(static_cast<double>(head_dim())));
}

std::pair<torch::Tensor, torch::Tensor> MultiHeadAttentionImpl::use_cache(torch::Tensor k_new,
                                                                          torch::Tensor v_new,
                                                                          KvCache* cache) {
  if (cache == nullptr) return {std::move(k_new), std::move(v_new)};
  if (!cache->key.defined()) {
    // Contiguous copies: a view would keep the whole projection output (queries too) alive.
    cache->key = k_new.contiguous();
    cache->value = v_new.contiguous();
  } else if (!cache->is_static) {
    check(cache->key.size(0) == k_new.size(0), "KvCache", "holds batch ", cache->key.size(0),
          " but the input has batch ", k_new.size(0));
    cache->key = torch::cat({cache->key, k_new}, 2);  // (B, H, T + K, Dh)
    cache->value = torch::cat({cache->value, v_new}, 2);
  }
  return {cache->key, cache->value};
}

AttentionOutput MultiHeadAttentionImpl::forward(const torch::Tensor& x, const AttentionMasks& masks,
                                                bool need_weights, KvCache* cache) {
  if (!qkv) return forward(x, x, x, masks, need_weights, cache);
  check(x.dim() == 3 && x.size(2) == options.embed_dim(), "MultiHeadAttention",
        "input must be (B, L, E=", options.embed_dim(), "), got ", x.sizes());
  check(cache == nullptr || !cache->is_static, "MultiHeadAttention",
        "self-attention cannot use a static cache");
  auto heads = split_heads(qkv->forward(x), 3, options.num_heads());  // 3 x (B, H, L, Dh)
  auto [k_all, v_all] = use_cache(heads[1], heads[2], cache);
  return attend_heads(heads[0], k_all, v_all, masks, need_weights);
}

AttentionOutput MultiHeadAttentionImpl::forward(const torch::Tensor& query,
                                                const torch::Tensor& key,
                                                const torch::Tensor& value,
                                                const AttentionMasks& masks, bool need_weights,
                                                KvCache* cache) {
  const int64_t E = options.embed_dim(), H = options.num_heads();
  check(query.dim() == 3 && query.size(2) == E, "MultiHeadAttention", "query must be (B, Q, E=", E,
        "), got ", query.sizes());
  const bool reuse = cache != nullptr && cache->is_static && cache->key.defined();
  if (qkv && !reuse && query.is_same(key) && key.is_same(value))
    return forward(query, masks, need_weights, cache);
  if (!reuse) {
    check(key.dim() == 3 && value.dim() == 3 && key.size(0) == query.size(0) &&
              value.size(0) == query.size(0) && key.size(1) == value.size(1) &&
              key.size(2) == kdim() && value.size(2) == vdim(),
          "MultiHeadAttention", "key must be (B=", query.size(0), ", K, kdim=", kdim(),
          ") and value (B, K, vdim=", vdim(), "), got ", key.sizes(), " and ", value.sizes());
  }
  namespace F = torch::nn::functional;
  // Rows [start, start + n·E) of a fused projection, as (weight, bias).
  auto rows = [&](const torch::nn::Linear& layer, int64_t start, int64_t n) {
    auto b = layer->bias.defined() ? layer->bias.narrow(0, start, n * E) : torch::Tensor();
    return std::make_pair(layer->weight.narrow(0, start, n * E), b);
  };
  torch::Tensor q_heads;
  if (qkv) {
    auto [w, b] = rows(qkv, 0, 1);
    q_heads = split_heads(F::linear(query, w, b), 1, H)[0];
  } else {
    q_heads = split_heads(q->forward(query), 1, H)[0];  // (B, H, Q, Dh)
  }
  torch::Tensor k_heads, v_heads;
  if (!reuse) {
    const torch::nn::Linear& fused = qkv ? qkv : kv;
    const int64_t offset = qkv ? E : 0;
    if (fused && key.is_same(value)) {
      auto [w, b] = rows(fused, offset, 2);
      auto kv_heads = split_heads(F::linear(key, w, b), 2, H);  // 2 x (B, H, K, Dh)
      k_heads = kv_heads[0];
      v_heads = kv_heads[1];
    } else if (fused) {
      auto [wk, bk] = rows(fused, offset, 1);
      auto [wv, bv] = rows(fused, offset + E, 1);
      k_heads = split_heads(F::linear(key, wk, bk), 1, H)[0];
      v_heads = split_heads(F::linear(value, wv, bv), 1, H)[0];
    } else {
      k_heads = split_heads(k->forward(key), 1, H)[0];
      v_heads = split_heads(v->forward(value), 1, H)[0];
    }
  }
  auto [k_all, v_all] = use_cache(k_heads, v_heads, cache);
  return attend_heads(q_heads, k_all, v_all, masks, need_weights);
}

AttentionOutput MultiHeadAttentionImpl::attend_heads(const torch::Tensor& q,
                                                     const torch::Tensor& k_heads,
                                                     const torch::Tensor& v_heads,
                                                     const AttentionMasks& masks,
                                                     bool need_weights) {
  const int64_t B = q.size(0), H = q.size(1), Q = q.size(2), K = k_heads.size(2);
  // k and v are strided views into the projection's output; the batched products would copy
  // them anyway, and once per query chunk: copy them once here.
  const auto k = k_heads.contiguous();  // (B, H, K, Dh)
  const auto v = v_heads.contiguous();  // (B, H, K, Dh)
  auto mask = combine_masks(masks, Q, K, /*score_dims=*/4, q.device());
  // A learned scale multiplies the queries, (q · s)·k = s (q·k), before any chunking.
  const auto queries = scale.defined() ? q * scale.view({1, H, 1, 1}).to(q.scalar_type()) : q;
  const bool dropout = is_training() && options.dropout() > 0;
  auto one_block = [&](const torch::Tensor& q_rows, const torch::Tensor& mask_block,
                       torch::Tensor* weights) {
    // The scores are fresh and needed by nothing but the softmax, whose gradient needs only
    // its output: normalise them in place, with or without autograd.
    auto scores = scale.defined() ? dot_score(q_rows, k) : scaled_dot_score(q_rows, k);
    auto w = softmax_normalize_owned(std::move(scores), mask_block);  // (B, H, q, K)
    if (weights != nullptr) *weights = w;
    return attend(dropout ? attn_drop->forward(w) : w, v);  // (B, H, q, Dh)
  };

  torch::Tensor context, weights;
  const int64_t row_elements = B * H * K;
  // Under autograd every chunk's weights are kept for the backward pass anyway, so chunking
  // would save no memory: it is used for inference only.
  const bool chunk = !need_weights && options.max_score_elements() > 0 &&
                     row_elements * Q > options.max_score_elements() && Q > 1 &&
                     !torch::GradMode::is_enabled();
  if (!chunk) {
    context = one_block(queries, mask, need_weights ? &weights : nullptr);
  } else {
    const int64_t rows =
        std::max<int64_t>(1, options.chunk_elements() / std::max<int64_t>(1, row_elements));
    std::vector<torch::Tensor> parts;
    for (int64_t start = 0; start < Q; start += rows) {
      const int64_t n = std::min(rows, Q - start);
      parts.push_back(
          one_block(queries.narrow(2, start, n), mask_rows(mask, Q, start, n), nullptr));
    }
    context = torch::cat(parts, 2);  // (B, H, Q, Dh)
  }
  // (B, H, Q, Dh) -> (B, Q, H, Dh) -> (B, Q, E)
  auto merged = context.transpose(1, 2).reshape({B, Q, options.embed_dim()});
  auto out = proj->forward(merged);
  if (is_training() && options.proj_dropout() > 0) out = proj_drop->forward(out);
  return {out, weights};
}

}  // namespace attnscope::models::attention
