#include "models/attention/score.h"

#include <cmath>

#include "attnscope/error.h"

namespace attnscope::models::attention {
namespace {

void check_pair(const torch::Tensor& query, const torch::Tensor& keys, const char* who,
                bool same_dim) {
  check(query.dim() >= 2 && keys.dim() == query.dim(), who,
        "query (..., Q, Dq) and keys (..., K, Dk) must have the same rank >= 2, got ",
        query.sizes(), " and ", keys.sizes());
  if (same_dim)
    check(query.size(-1) == keys.size(-1), who, "query and keys need the same feature size, got ",
          query.sizes(), " and ", keys.sizes());
}

}  // namespace

torch::Tensor dot_score(const torch::Tensor& query, const torch::Tensor& keys) {
  check_pair(query, keys, "dot_score", true);
  return torch::matmul(query, keys.transpose(-2, -1));  // (..., Q, K)
}

torch::Tensor scaled_dot_score(const torch::Tensor& query, const torch::Tensor& keys) {
  check_pair(query, keys, "scaled_dot_score", true);
  // Scaling the queries (Q x D) is cheaper than scaling the scores (Q x K).
  const double scale = 1.0 / std::sqrt(static_cast<double>(query.size(-1)));
  return torch::matmul(query * scale, keys.transpose(-2, -1));
}

torch::Tensor general_score(const torch::Tensor& query, const torch::Tensor& keys,
                            const torch::Tensor& weight) {
  check_pair(query, keys, "general_score", false);
  check(weight.dim() == 2 && weight.size(0) == query.size(-1) && weight.size(1) == keys.size(-1),
        "general_score", "weight must be (Dq=", query.size(-1), ", Dk=", keys.size(-1), "), got ",
        weight.sizes());
  return torch::matmul(torch::matmul(query, weight), keys.transpose(-2, -1));
}

torch::Tensor additive_score(const torch::Tensor& projected_query,
                             const torch::Tensor& projected_keys, const torch::Tensor& v,
                             AdditiveActivation activation) {
  check_pair(projected_query, projected_keys, "additive_score", true);
  check(v.dim() == 1 && v.size(0) == projected_query.size(-1), "additive_score",
        "v must be (A=", projected_query.size(-1), "), got ", v.sizes());
  // (..., Q, 1, A) + (..., 1, K, A) -> (..., Q, K, A)
  // In place on the fresh sum (autograd allows it: the sum's backward needs no output).
  auto sum = projected_query.unsqueeze(-2) + projected_keys.unsqueeze(-3);
  auto hidden = activation == AdditiveActivation::relu ? sum.relu_() : sum.tanh_();
  return torch::matmul(hidden, v);  // (..., Q, K)
}

torch::Tensor aligned_additive_score(const torch::Tensor& projected_queries,
                                     const torch::Tensor& projected_keys, const torch::Tensor& v,
                                     const torch::Tensor& bias, AdditiveActivation activation) {
  check(projected_queries.dim() >= 2 && projected_queries.sizes() == projected_keys.sizes(),
        "aligned_additive_score",
        "queries and keys must both be (..., K, A) with one query per key, got ",
        projected_queries.sizes(), " and ", projected_keys.sizes());
  check(v.dim() == 1 && v.size(0) == projected_keys.size(-1), "aligned_additive_score",
        "v must be (A=", projected_keys.size(-1), "), got ", v.sizes());
  check(!bias.defined() || bias.numel() == 1, "aligned_additive_score",
        "bias must be one number, got ", bias.sizes());
  auto sum = projected_queries + projected_keys;  // (..., K, A), in place as in additive_score
  const auto hidden = activation == AdditiveActivation::relu ? sum.relu_() : sum.tanh_();
  auto scores = torch::matmul(hidden, v);  // (..., K)
  if (bias.defined()) scores = scores + bias.reshape({});
  return scores.unsqueeze(-2);  // (..., 1, K)
}

ScoreKind score_kind_from_string(const std::string& name) {
  if (name == "additive") return ScoreKind::additive;
  if (name == "dot") return ScoreKind::dot;
  if (name == "general") return ScoreKind::general;
  if (name == "scaled_dot") return ScoreKind::scaled_dot;
  throw Error("score '" + name + "'", "unknown; expected additive, dot, general or scaled_dot");
}

std::string to_string(ScoreKind kind) {
  switch (kind) {
    case ScoreKind::additive:
      return "additive";
    case ScoreKind::dot:
      return "dot";
    case ScoreKind::general:
      return "general";
    case ScoreKind::scaled_dot:
      return "scaled_dot";
  }
  return "unknown";
}

AdditiveScoreImpl::AdditiveScoreImpl(const AdditiveScoreOptions& options_) : options(options_) {
  reset();
}

void AdditiveScoreImpl::reset() {
  check(options.query_dim() > 0 && options.key_dim() > 0 && options.hidden_dim() > 0,
        "AdditiveScore", "dims must be > 0, got query_dim ", options.query_dim(), ", key_dim ",
        options.key_dim(), ", hidden_dim ", options.hidden_dim());
  namespace nn = torch::nn;
  query_proj = register_module(
      "query_proj",
      nn::Linear(nn::LinearOptions(options.query_dim(), options.hidden_dim()).bias(false)));
  key_proj = register_module(
      "key_proj",
      nn::Linear(nn::LinearOptions(options.key_dim(), options.hidden_dim()).bias(options.bias())));
  v = register_module("v", nn::Linear(nn::LinearOptions(options.hidden_dim(), 1).bias(false)));
}

torch::Tensor AdditiveScoreImpl::project_keys(const torch::Tensor& keys) {
  return key_proj->forward(keys);  // (..., K, A)
}

torch::Tensor AdditiveScoreImpl::forward_projected(const torch::Tensor& query,
                                                   const torch::Tensor& projected_keys) {
  return additive_score(query_proj->forward(query), projected_keys, v->weight.view({-1}),
                        options.activation());
}

torch::Tensor AdditiveScoreImpl::forward(const torch::Tensor& query, const torch::Tensor& keys) {
  return forward_projected(query, project_keys(keys));
}

GeneralScoreImpl::GeneralScoreImpl(const GeneralScoreOptions& options_) : options(options_) {
  reset();
}

void GeneralScoreImpl::reset() {
  check(options.query_dim() > 0 && options.key_dim() > 0, "GeneralScore",
        "dims must be > 0, got query_dim ", options.query_dim(), ", key_dim ", options.key_dim());
  // Initialised like a Linear(Dk -> Dq): uniform(-1/sqrt(Dk), 1/sqrt(Dk)).
  const double bound = 1.0 / std::sqrt(static_cast<double>(options.key_dim()));
  weight = register_parameter(
      "weight", torch::empty({options.query_dim(), options.key_dim()}).uniform_(-bound, bound));
}

torch::Tensor GeneralScoreImpl::project_keys(const torch::Tensor& keys) {
  return torch::matmul(keys, weight.t());  // (..., K, Dq)
}

torch::Tensor GeneralScoreImpl::forward(const torch::Tensor& query, const torch::Tensor& keys) {
  return general_score(query, keys, weight);
}

ScoreImpl::ScoreImpl(const ScoreOptions& options_) : options(options_) {
  reset();
}

void ScoreImpl::reset() {
  additive = nullptr;
  general = nullptr;
  switch (options.kind()) {
    case ScoreKind::additive:
      additive = register_module(
          "additive", AdditiveScore(AdditiveScoreOptions(options.query_dim(), options.key_dim(),
                                                         options.hidden_dim())));
      break;
    case ScoreKind::general:
      general = register_module(
          "general", GeneralScore(GeneralScoreOptions(options.query_dim(), options.key_dim())));
      break;
    case ScoreKind::dot:
    case ScoreKind::scaled_dot:
      check(options.query_dim() == options.key_dim(), "Score", to_string(options.kind()),
            " needs query_dim == key_dim, got ", options.query_dim(), " and ", options.key_dim());
      break;
  }
}

torch::Tensor ScoreImpl::project_keys(const torch::Tensor& keys) {
  switch (options.kind()) {
    case ScoreKind::additive:
      return additive->project_keys(keys);
    case ScoreKind::general:
      return general->project_keys(keys);
    default:
      return keys;
  }
}

torch::Tensor ScoreImpl::forward_projected(const torch::Tensor& query,
                                           const torch::Tensor& projected_keys) {
  switch (options.kind()) {
    case ScoreKind::additive:
      return additive->forward_projected(query, projected_keys);
    case ScoreKind::scaled_dot:
      return scaled_dot_score(query, projected_keys);
    default:  // dot, and general with W k already applied to the keys
      return dot_score(query, projected_keys);
  }
}

torch::Tensor ScoreImpl::forward(const torch::Tensor& query, const torch::Tensor& keys) {
  switch (options.kind()) {
    case ScoreKind::additive:
      return additive->forward(query, keys);
    case ScoreKind::dot:
      return dot_score(query, keys);
    case ScoreKind::general:
      return general->forward(query, keys);
    case ScoreKind::scaled_dot:
      return scaled_dot_score(query, keys);
  }
  throw Error("Score", "unknown kind");
}

}  // namespace attnscope::models::attention
