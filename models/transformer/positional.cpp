#include "models/transformer/positional.h"

#include <cmath>

#include "attnscope/error.h"

namespace attnscope::models::transformer {
namespace {

// x's rows offset .. offset + L of the table (max_len, E), added to x (B, L, E).
torch::Tensor add_positions(const torch::Tensor& x, const torch::Tensor& table, int64_t offset,
                            const char* who) {
  check(x.dim() == 3 && x.size(2) == table.size(1), who, "input must be (B, L, E=", table.size(1),
        "), got ", x.sizes());
  check(offset >= 0 && offset + x.size(1) <= table.size(0), who, "positions ", offset, "..",
        offset + x.size(1) - 1, " exceed max_len ", table.size(0));
  return x + table.narrow(0, offset, x.size(1)).unsqueeze(0);  // (1, L, E) broadcast over B
}

void check_options(const PositionalEncodingOptions& o, const char* who) {
  check(o.d_model() > 0 && o.max_len() > 0, who, "d_model and max_len must be > 0, got ",
        o.d_model(), " and ", o.max_len());
  check(o.dropout() >= 0 && o.dropout() < 1, who, "dropout must be in [0, 1), got ", o.dropout());
}

}  // namespace

torch::Tensor sinusoidal_encoding(int64_t length, int64_t dim, int64_t offset, double base,
                                  torch::TensorOptions options) {
  check(length >= 0 && dim > 0 && offset >= 0 && base > 0, "sinusoidal_encoding",
        "need length >= 0, dim > 0, offset >= 0, base > 0; got ", length, ", ", dim, ", ", offset,
        ", ", base);
  // Computed in double, then converted: float32 positions lose precision past ~10^4.
  auto f64 = torch::TensorOptions().dtype(torch::kDouble);
  auto pos = torch::arange(offset, offset + length, f64).unsqueeze(1);  // (L, 1)
  auto two_i = torch::arange(0, dim, 2, f64);                           // (ceil(dim / 2))
  auto angle = pos * torch::exp(two_i * (-std::log(base) / static_cast<double>(dim)));
  auto pe = torch::zeros({length, dim}, f64);
  pe.slice(1, 0, dim, 2).copy_(torch::sin(angle));
  pe.slice(1, 1, dim, 2).copy_(torch::cos(angle).narrow(1, 0, dim / 2));
  const auto dtype = options.has_dtype() ? options.dtype() : caffe2::TypeMeta::Make<float>();
  return pe.to(options.dtype(dtype));
}

SinusoidalPositionalEncodingImpl::SinusoidalPositionalEncodingImpl(
    const PositionalEncodingOptions& options_)
    : options(options_) {
  reset();
}

void SinusoidalPositionalEncodingImpl::reset() {
  check_options(options, "SinusoidalPositionalEncoding");
  pe = register_buffer(
      "pe", sinusoidal_encoding(options.max_len(), options.d_model(), 0, options.base()));
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout()));
}

torch::Tensor SinusoidalPositionalEncodingImpl::forward(const torch::Tensor& x, int64_t offset) {
  return dropout->forward(add_positions(x, pe, offset, "SinusoidalPositionalEncoding"));
}

LearnedPositionEmbeddingImpl::LearnedPositionEmbeddingImpl(
    const PositionalEncodingOptions& options_)
    : options(options_) {
  reset();
}

void LearnedPositionEmbeddingImpl::reset() {
  check_options(options, "LearnedPositionEmbedding");
  weight = register_parameter(
      "weight", torch::randn({options.max_len(), options.d_model()}).mul_(options.init_std()));
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout()));
}

torch::Tensor LearnedPositionEmbeddingImpl::forward(const torch::Tensor& x, int64_t offset) {
  return dropout->forward(add_positions(x, weight, offset, "LearnedPositionEmbedding"));
}

}  // namespace attnscope::models::transformer
