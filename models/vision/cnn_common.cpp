#include "models/vision/cnn_common.h"

#include <variant>

#include "attnscope/error.h"

namespace attnscope::models::vision {
namespace nn = torch::nn;

void init_cnn_weights(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& m : module.modules(/*include_self=*/false)) {
    if (auto* c = m->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
      if (c->bias.defined()) c->bias.zero_();
    } else if (auto* b = m->as<nn::BatchNorm2d>()) {
      b->weight.fill_(1.0);
      b->bias.zero_();
    }
  }
}

void use_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters())
    if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
}

}  // namespace attnscope::models::vision

namespace attnscope::models::vision {

std::vector<ConvBnFold::Seen> ConvBnFold::seen(const torch::nn::Conv2d& conv,
                                               const torch::nn::BatchNorm2d& bn) {
  std::vector<Seen> out;
  for (const auto* t : {&conv->weight, &conv->bias, &bn->weight, &bn->bias, &bn->running_mean,
                        &bn->running_var, &bn->num_batches_tracked})
    out.push_back(t->defined() ? Seen{t->storage(), t->storage_offset(), t->_version()} : Seen{});
  return out;
}

// The options' variants are c10::variant in LibTorch 1.x and std::variant from 2.x: std's
// functions are named here, c10's are found by argument-dependent lookup.
using std::get;
using std::holds_alternative;

bool ConvBnFold::can_fold(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn) {
  return holds_alternative<torch::ExpandingArray<2>>(conv->options.padding()) &&
         holds_alternative<torch::enumtype::kZeros>(conv->options.padding_mode()) &&
         bn->options.track_running_stats() && bn->running_mean.defined() &&
         bn->running_var.defined() && bn->running_mean.numel() == conv->weight.size(0) &&
         bn->running_var.numel() == conv->weight.size(0);
}

std::optional<ConvBnFold> ConvBnFold::of(const torch::nn::Conv2d& conv,
                                         const torch::nn::BatchNorm2d& bn) {
  if (!can_fold(conv, bn)) return std::nullopt;
  return ConvBnFold(conv, bn);
}

ConvBnFold::ConvBnFold(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn) {
  torch::NoGradGuard no_grad;
  check(can_fold(conv, bn), "ConvBnFold",
        "needs a convolution with numeric zero padding and a BatchNorm2d with running "
        "statistics for its output channels");
  const auto& w = conv->weight;
  const auto d = [](const torch::Tensor& t) { return t.to(torch::kDouble); };
  auto scale = (d(bn->running_var) + bn->options.eps()).rsqrt();
  if (bn->weight.defined()) scale = scale * d(bn->weight);
  auto bias = conv->bias.defined() ? d(conv->bias) : torch::zeros_like(scale);
  bias = (bias - d(bn->running_mean)) * scale;
  if (bn->bias.defined()) bias = bias + d(bn->bias);
  weight_ = (d(w) * scale.view({w.size(0), 1, 1, 1}))
                .to(w.scalar_type())
                .contiguous(w.suggest_memory_format());
  bias_ = bias.to(w.scalar_type());
  seen_ = seen(conv, bn);
}

bool ConvBnFold::applies_to(const torch::nn::Conv2d& conv, const torch::nn::BatchNorm2d& bn) const {
  if (!weight_.defined() || bn->is_training()) return false;
  if (torch::GradMode::is_enabled())
    for (const auto* t : {&conv->weight, &conv->bias, &bn->weight, &bn->bias})
      if (t->defined() && t->requires_grad()) return false;
  return seen(conv, bn) == seen_;
}

torch::Tensor ConvBnFold::forward(const torch::Tensor& x, const torch::nn::Conv2d& conv) const {
  const auto& o = conv->options;  // numeric zero padding (can_fold)
  return torch::conv2d(x, weight_, bias_, *o.stride(), *get<torch::ExpandingArray<2>>(o.padding()),
                       *o.dilation(), o.groups());
}

torch::Tensor conv_bn(const torch::Tensor& x, torch::nn::Conv2d& conv, torch::nn::BatchNorm2d& bn,
                      const std::optional<ConvBnFold>& fold) {
  if (fold && fold->applies_to(conv, bn)) return fold->forward(x, conv);
  return bn(conv(x));
}

}  // namespace attnscope::models::vision
