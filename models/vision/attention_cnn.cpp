#include "models/vision/attention_cnn.h"

#include <set>

#include "attnscope/error.h"
#include "models/vision/cnn_common.h"
#include "models/vision/resnet.h"
#include "models/vision/vgg.h"

namespace attnscope::models::vision {
namespace nn = torch::nn;

std::shared_ptr<Trunk> make_trunk(const std::string& backbone, int64_t in_channels) {
  if (backbone == "resnet18")
    return std::make_shared<ResNetTrunk>(resnet18_options().in_channels(in_channels));
  if (backbone == "resnet34")
    return std::make_shared<ResNetTrunk>(resnet34_options().in_channels(in_channels));
  if (backbone == "resnet50")
    return std::make_shared<ResNetTrunk>(resnet50_options().in_channels(in_channels));
  if (backbone == "vgg16")
    return std::make_shared<VggTrunk>(vgg16_options(1000, false).in_channels(in_channels));
  if (backbone == "vgg16_bn")
    return std::make_shared<VggTrunk>(vgg16_options(1000, true).in_channels(in_channels));
  if (backbone == "small_cnn")
    return std::make_shared<VggTrunk>(small_cnn_options().in_channels(in_channels));
  throw Error("backbone", concat("unknown '", backbone,
                                 "' (expected resnet18, resnet34, resnet50, vgg16, vgg16_bn or "
                                 "small_cnn)"));
}

AttentionCnnImpl::AttentionCnnImpl(const AttentionCnnOptions& options_) : options(options_) {
  reset();
}

void AttentionCnnImpl::reset() {
  check(options.num_classes() > 0, "AttentionCnn", "num_classes must be positive");
  check(!options.stages().empty(), "AttentionCnn", "needs at least one attended stage");
  trunk = make_trunk(options.backbone(), options.in_channels());
  trunk->build(*this);
  const int64_t Cg = trunk->out_channels();
  std::set<int64_t> seen;
  attention = nn::ModuleList();
  int64_t concat_channels = Cg;
  for (const int64_t s : options.stages()) {
    check(s >= 0 && s < trunk->num_stages(), "AttentionCnn", "stage ", s,
          " out of range: backbone ", options.backbone(), " has ", trunk->num_stages(),
          " stages (0-based)");
    check(seen.insert(s).second, "AttentionCnn", "stage ", s, " listed twice");
    SpatialAttention attn(SpatialAttentionOptions(trunk->stage_channels(s), Cg)
                              .compatibility(options.compatibility())
                              .gating(options.gating())
                              .normalizer(options.normalizer())
                              .hidden_dim(options.hidden_dim()));
    concat_channels += attn->out_channels();
    attention->push_back(attn);
  }
  attention = register_module("attention", attention);
  dropout = register_module("dropout", nn::Dropout(options.dropout()));
  classifier = register_module("classifier", nn::Linear(concat_channels, options.num_classes()));
  init_cnn_weights(*this);
  if (options.gating() == Gating::grid) {
    // AttnMel's initialisation of the layers it adds to the (pretrained) trunk.
    for (const auto& a : *attention)
      a->as<SpatialAttention>()->reset_parameters();
    torch::NoGradGuard no_grad;
    nn::init::normal_(classifier->weight, 0.0, 0.01);
    classifier->bias.zero_();
  }
  use_channels_last(*this);
}

std::vector<std::string> AttentionCnnImpl::map_names() const {
  std::vector<std::string> names;
  for (const int64_t s : options.stages())
    names.push_back("stage" + std::to_string(s + 1));
  return names;
}

ImageFeatures AttentionCnnImpl::forward_features(const torch::Tensor& images,
                                                 bool /*need_attention*/) {
  auto t = trunk->forward(images, options.after_pool());
  ImageFeatures out;
  out.features = t.last;
  const auto& taps = options.after_pool() ? t.pooled : t.stages;
  for (const int64_t s : options.stages())
    out.stages.push_back(taps[static_cast<std::size_t>(s)]);
  return out;
}

ImageOutput AttentionCnnImpl::forward_head(const ImageFeatures& features) {
  check(features.stages.size() == options.stages().size(), "AttentionCnn", "expected ",
        options.stages().size(), " stage tensors, got ", features.stages.size());
  ImageOutput out;
  const auto g = features.features.mean({2, 3});  // (B, Cg)
  // The query: g, or the last map (B, Cg, h, w) that grid gating up-samples per stage.
  const auto& gate = options.gating() == Gating::grid ? features.features : g;
  std::vector<torch::Tensor> parts{g};
  const auto names = map_names();
  for (std::size_t i = 0; i < features.stages.size(); ++i) {
    auto r = attention[i]->as<SpatialAttention>()->forward(features.stages[i], gate);
    parts.push_back(r.context);
    out.maps[names[i]] = r.map;
  }
  out.logits = classifier(dropout(torch::cat(parts, 1)));  // (B, Cg + Σ C_i)
  return out;
}

}  // namespace attnscope::models::vision
