#include "models/transformer/layers.h"

#include "attnscope/error.h"

namespace attnscope::models::transformer {
namespace {

namespace nn = torch::nn;
using attention::MultiHeadAttention;
using attention::MultiHeadAttentionOptions;

void check_options(const TransformerLayerOptions& o, const char* who) {
  check(o.d_model() > 0 && o.nhead() > 0 && o.d_model() % o.nhead() == 0, who, "d_model (",
        o.d_model(), ") must be a positive multiple of nhead (", o.nhead(), ")");
  check(o.dim_feedforward() > 0, who, "dim_feedforward must be > 0, got ", o.dim_feedforward());
  check(o.dropout() >= 0 && o.dropout() < 1, who, "dropout must be in [0, 1), got ", o.dropout());
  check(o.drop_path() >= 0 && o.drop_path() < 1, who, "drop_path must be in [0, 1), got ",
        o.drop_path());
}

MultiHeadAttention make_attention(const TransformerLayerOptions& o, bool cross) {
  return MultiHeadAttention(MultiHeadAttentionOptions(o.d_model(), o.nhead())
                                .dropout(o.attention_dropout().value_or(o.dropout()))
                                .bias(o.qkv_bias())
                                .cross(cross)
                                .learned_scale(o.learned_attention_scale()));
}

nn::LayerNorm make_norm(const TransformerLayerOptions& o) {
  return nn::LayerNorm(nn::LayerNormOptions({o.d_model()}).eps(o.layer_norm_eps()));
}

// linear2(dropout(activation(linear1(x)))), as torch.nn's layers.
torch::Tensor feed_forward(const torch::Tensor& x, const TransformerLayerOptions& o,
                           nn::Linear& linear1, nn::Dropout& dropout, nn::Linear& linear2) {
  auto hidden = linear1->forward(x);
  hidden = o.activation() == Activation::gelu ? torch::gelu(hidden) : torch::relu(hidden);
  return linear2->forward(dropout->forward(hidden));
}

// One residual sub-layer: post-norm norm(x + drop_path(dropout(f(x)))) or pre-norm
// x + drop_path(dropout(f(norm(x)))).
template <typename Sublayer>
torch::Tensor residual(const torch::Tensor& x, const TransformerLayerOptions& o, bool training,
                       nn::LayerNorm& norm, nn::Dropout& dropout, Sublayer&& sublayer) {
  if (o.norm_first())
    return x + drop_path(dropout->forward(sublayer(norm->forward(x))), o.drop_path(), training);
  return norm->forward(x + drop_path(dropout->forward(sublayer(x)), o.drop_path(), training));
}

}  // namespace

torch::Tensor drop_path(const torch::Tensor& x, double p, bool training) {
  if (!training || p <= 0) return x;
  std::vector<int64_t> shape(static_cast<std::size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  const auto keep = torch::empty(shape, x.options()).bernoulli_(1.0 - p);
  return x * keep.div_(1.0 - p);
}

MlpImpl::MlpImpl(int64_t dim_, int64_t hidden_, double dropout_)
    : dim(dim_), hidden(hidden_), dropout(dropout_) {
  reset();
}

void MlpImpl::reset() {
  fc1 = register_module("fc1", nn::Linear(dim, hidden));
  drop = register_module("drop", nn::Dropout(dropout));
  fc2 = register_module("fc2", nn::Linear(hidden, dim));
}

TransformerEncoderLayerImpl::TransformerEncoderLayerImpl(const TransformerLayerOptions& options_)
    : options(options_) {
  reset();
}

void TransformerEncoderLayerImpl::reset() {
  check_options(options, "TransformerEncoderLayer");
  const int64_t d = options.d_model(), ff = options.dim_feedforward();
  if (options.names() == LayerNames::timm) {
    // timm's Block, in its registration order: norm1, attn, norm2, mlp.{fc1, drop, fc2}.
    norm1 = register_module("norm1", make_norm(options));
    self_attn = register_module("attn", make_attention(options, /*cross=*/false));
    norm2 = register_module("norm2", make_norm(options));
    mlp = register_module("mlp", Mlp(d, ff, options.dropout()));
    linear1 = mlp->fc1;
    dropout = mlp->drop;
    linear2 = mlp->fc2;
  } else {
    self_attn = register_module("self_attn", make_attention(options, /*cross=*/false));
    linear1 = register_module("linear1", nn::Linear(d, ff));
    dropout = register_module("dropout", nn::Dropout(options.dropout()));
    linear2 = register_module("linear2", nn::Linear(ff, d));
    norm1 = register_module("norm1", make_norm(options));
    norm2 = register_module("norm2", make_norm(options));
  }
  // Parameter-free: registered under these names with either naming (timm applies the same
  // dropouts as attn.proj_drop and mlp.drop2).
  dropout1 = register_module("dropout1", nn::Dropout(options.dropout()));
  dropout2 = register_module("dropout2", nn::Dropout(options.dropout()));
}

EncoderLayerOutput TransformerEncoderLayerImpl::forward(const torch::Tensor& src,
                                                        const AttentionMasks& masks,
                                                        bool need_weights) {
  EncoderLayerOutput out;
  auto x = residual(src, options, is_training(), norm1, dropout1, [&](const torch::Tensor& h) {
    auto attended = self_attn->forward(h, masks, need_weights);
    out.self_weights = attended.weights;
    return attended.context;
  });
  out.output = residual(x, options, is_training(), norm2, dropout2, [&](const torch::Tensor& h) {
    return feed_forward(h, options, linear1, dropout, linear2);
  });
  return out;
}

TransformerDecoderLayerImpl::TransformerDecoderLayerImpl(const TransformerLayerOptions& options_)
    : options(options_) {
  reset();
}

void TransformerDecoderLayerImpl::reset() {
  check_options(options, "TransformerDecoderLayer");
  self_attn = register_module("self_attn", make_attention(options, /*cross=*/false));
  multihead_attn = register_module("multihead_attn", make_attention(options, /*cross=*/true));
  linear1 = register_module("linear1", nn::Linear(options.d_model(), options.dim_feedforward()));
  dropout = register_module("dropout", nn::Dropout(options.dropout()));
  linear2 = register_module("linear2", nn::Linear(options.dim_feedforward(), options.d_model()));
  norm1 = register_module("norm1", make_norm(options));
  norm2 = register_module("norm2", make_norm(options));
  norm3 = register_module("norm3", make_norm(options));
  dropout1 = register_module("dropout1", nn::Dropout(options.dropout()));
  dropout2 = register_module("dropout2", nn::Dropout(options.dropout()));
  dropout3 = register_module("dropout3", nn::Dropout(options.dropout()));
}

DecoderLayerOutput TransformerDecoderLayerImpl::forward(
    const torch::Tensor& tgt, const torch::Tensor& memory, const AttentionMasks& tgt_masks,
    const AttentionMasks& memory_masks, bool need_weights, DecoderLayerCache* cache) {
  DecoderLayerOutput out;
  auto x = residual(tgt, options, is_training(), norm1, dropout1, [&](const torch::Tensor& h) {
    auto attended =
        self_attn->forward(h, tgt_masks, need_weights, cache ? &cache->self_attn : nullptr);
    out.self_weights = attended.weights;
    return attended.context;
  });
  x = residual(x, options, is_training(), norm2, dropout2, [&](const torch::Tensor& h) {
    auto attended = multihead_attn->forward(h, memory, memory, memory_masks, need_weights,
                                            cache ? &cache->cross_attn : nullptr);
    out.cross_weights = attended.weights;
    return attended.context;
  });
  out.output = residual(x, options, is_training(), norm3, dropout3, [&](const torch::Tensor& h) {
    return feed_forward(h, options, linear1, dropout, linear2);
  });
  return out;
}

}  // namespace attnscope::models::transformer
