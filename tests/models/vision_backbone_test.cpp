// Backbones: parameter counts against torchvision's / timm's published figures, torchvision's
// tensor names, output shapes.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <set>
#include <utility>
#include <vector>

#include <ATen/record_function.h>

#include "attnscope/error.h"
#include "models/vision/cnn_common.h"
#include "models/vision/presets.h"
#include "models/vision/resnet.h"
#include "models/vision/vgg.h"
#include "models/vision/vit.h"

namespace attnscope::models::vision {
namespace {

int64_t count_parameters(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters())
    n += p.numel();
  return n;
}

std::set<std::string> names(const torch::nn::Module& m) {
  std::set<std::string> out;
  for (const auto& p : m.named_parameters())
    out.insert(p.key());
  for (const auto& b : m.named_buffers())
    out.insert(b.key());
  return out;
}

std::shared_ptr<ImageClassifier> make(const std::string& arch, int64_t classes = 1000) {
  ImageModelConfig c;
  c.arch = arch;
  c.num_classes = classes;
  return make_image_classifier(c);
}

// torchvision's model cards (1000 classes): resnet18 11,689,512; resnet34 21,797,672;
// resnet50 25,557,032; vgg16_bn 138,365,992. timm: ViT-Ti/16 5,717,416; ViT-S/16 22,050,664;
// ViT-B/16 86,567,656.
TEST(VisionBackbone, ParameterCountsMatchPublishedFigures) {
  torch::manual_seed(0);
  EXPECT_EQ(count_parameters(*make("resnet18")), 11689512);
  EXPECT_EQ(count_parameters(*make("resnet34")), 21797672);
  EXPECT_EQ(count_parameters(*make("resnet50")), 25557032);
  EXPECT_EQ(count_parameters(*make("vgg16_bn")), 138365992);
  EXPECT_EQ(count_parameters(*make("vit_tiny_patch16")), 5717416);
  EXPECT_EQ(count_parameters(*make("vit_small_patch16")), 22050664);
  EXPECT_EQ(count_parameters(*make("vit_base_patch16")), 86567656);
}

TEST(VisionBackbone, SmallPresetsHaveOneToThreeMillionParameters) {
  for (const char* arch : {"small_cnn", "attn_small", "vit_mini_patch8"}) {
    const auto n = count_parameters(*make(arch, 2));
    EXPECT_GT(n, 1000000) << arch;
    EXPECT_LT(n, 3000000) << arch;
  }
}

TEST(VisionBackbone, UsesTorchvisionAndTimmNames) {
  const auto r = names(*make("resnet18"));
  for (const char* n : {"conv1.weight", "bn1.running_var", "bn1.num_batches_tracked",
                        "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                        "layer2.0.downsample.1.running_mean", "layer4.1.bn2.bias", "fc.weight"})
    EXPECT_TRUE(r.count(n)) << n;
  EXPECT_EQ(r.size(), 122u);  // len(torchvision.models.resnet18().state_dict())
  const auto r50 = names(*make("resnet50"));
  EXPECT_TRUE(r50.count("layer3.5.conv3.weight"));
  const auto v = names(*make("vgg16_bn"));
  for (const char* n : {"features.0.weight", "features.1.running_mean", "features.41.weight",
                        "classifier.0.weight", "classifier.3.weight", "classifier.6.bias"})
    EXPECT_TRUE(v.count(n)) << n;
  const auto vit = names(*make("vit_tiny_patch16"));
  for (const char* n :
       {"patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.norm1.weight",
        "blocks.11.attn.qkv.weight", "blocks.11.attn.proj.bias", "blocks.3.norm2.bias",
        "blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias", "norm.weight", "head.weight"})
    EXPECT_TRUE(vit.count(n)) << n;
  EXPECT_EQ(vit.size(), 152u);  // len(timm vit_tiny_patch16_224 state_dict)
}

TEST(VisionBackbone, OutputShapes) {
  torch::manual_seed(1);
  const auto x = torch::randn({2, 3, 64, 64});
  for (const auto& [arch, side] : {std::pair{"resnet18", 2}, {"resnet50", 2}, {"small_cnn", 4}}) {
    auto m = make(arch, 3);
    m->eval();
    torch::NoGradGuard g;
    const auto f = m->forward_features(x);
    EXPECT_EQ(f.features.size(2), side) << arch;  // 64 / 32 (small_cnn: 4 stages, 64 / 16)
    EXPECT_EQ(m->forward(x).logits.sizes(), (std::vector<int64_t>{2, 3})) << arch;
  }
}

TEST(VisionBackbone, TrunkStagesHalveTheResolution) {
  auto trunk = std::make_shared<VggTrunk>(small_cnn_options());
  torch::nn::Module owner;
  trunk->build(owner);
  const auto out = trunk->forward(torch::randn({1, 3, 32, 32}), /*pooled=*/true);
  ASSERT_EQ(out.stages.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(out.stages[i].size(2), 32 >> i);
    EXPECT_EQ(out.pooled[i].size(2), 16 >> i);
    EXPECT_EQ(out.stages[i].size(1), trunk->stage_channels(i));
  }
  EXPECT_TRUE(out.last.equal(out.pooled.back()));
}

TEST(VisionBackbone, CloneCopiesWeights) {
  torch::manual_seed(2);
  ResNet a(resnet18_options(2));
  auto b = std::dynamic_pointer_cast<ResNetImpl>(a->clone());
  ASSERT_TRUE(b);
  a->eval();
  b->eval();
  const auto x = torch::randn({1, 3, 32, 32});
  EXPECT_TRUE(torch::allclose(a->forward(x).logits, b->forward(x).logits));
  EXPECT_NE(a->fc->weight.data_ptr(), b->fc->weight.data_ptr());
}

// clone() is ImageClassifier's own (not torch::nn::Cloneable's): every kind of classifier is
// copied with its parameters, its BatchNorm statistics and its mode, into tensors of its own.
TEST(VisionPresets, CloneOfEveryKindOfClassifierIsAnIndependentCopy) {
  for (const std::string arch : {"resnet18", "small_cnn", "attn_small", "vit_mini_patch8"}) {
    SCOPED_TRACE(arch);
    ImageModelConfig c;
    c.arch = arch;
    c.dropout = 0.0;
    torch::manual_seed(3);
    auto a = make_image_classifier(c);
    const auto x = torch::rand({2, 3, 64, 64});
    a->train();
    a->forward(x);  // moves the BatchNorm running statistics away from their initial values
    a->eval();
    auto copy = a->clone();
    auto b = std::dynamic_pointer_cast<ImageClassifier>(copy);
    ASSERT_TRUE(b);
    EXPECT_FALSE(b->is_training());
    torch::NoGradGuard no_grad;
    const auto before = a->forward(x).logits;
    EXPECT_TRUE(b->forward(x).logits.equal(before));
    const auto pa = a->named_parameters(), pb = b->named_parameters();
    ASSERT_EQ(pa.size(), pb.size());
    for (const auto& item : pa) {
      const auto& other = pb[item.key()];
      EXPECT_TRUE(other.equal(item.value())) << item.key();
      EXPECT_NE(other.data_ptr(), item.value().data_ptr()) << item.key();
      EXPECT_TRUE(other.requires_grad()) << item.key();
    }
    const auto ba = a->named_buffers(), bb = b->named_buffers();
    ASSERT_EQ(ba.size(), bb.size());
    for (const auto& item : ba)
      EXPECT_TRUE(bb[item.key()].equal(item.value())) << item.key();
    for (auto& p : a->parameters())
      p.add_(1.0);  // the copy does not follow
    EXPECT_TRUE(b->forward(x).logits.equal(before));
    EXPECT_FALSE(a->forward(x).logits.equal(before));
  }
}

TEST(VisionPresets, UnknownArchListsThePresets) {
  ImageModelConfig c;
  c.arch = "resnet19";
  try {
    make_image_classifier(c);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("resnet19"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("attn_vgg16"), std::string::npos);
  }
}

TEST(VisionPresets, ResolveFillsThePresetValues) {
  ImageModelConfig c;
  c.arch = "attn_vgg16";
  const auto r = resolve_image_config(c);
  EXPECT_EQ(*r.backbone, "vgg16_bn");
  EXPECT_EQ(*r.attention_stages, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(*r.compatibility, "additive");
  EXPECT_EQ(*r.normalizer, "sigmoid");
  EXPECT_EQ(r.image_size, 224);
  c.arch = "resnet18";
  c.backbone = "vgg16";
  EXPECT_FALSE(resolve_image_config(c).backbone.has_value());
}

}  // namespace
}  // namespace attnscope::models::vision

namespace attnscope::models::vision {
namespace {

// The in-place ReLUs and residual sums must leave autograd a valid graph in training mode.
TEST(VisionBackbone, BackwardRunsInTrainingMode) {
  torch::manual_seed(13);
  for (const char* arch : {"resnet18", "attn_small"}) {
    auto m = make(arch, 2);
    m->train();
    const auto loss = torch::nn::functional::cross_entropy(
        m->forward(torch::randn({2, 3, 32, 32})).logits, torch::tensor({0, 1}));
    loss.backward();
    for (const auto& p : m->named_parameters()) {
      ASSERT_TRUE(p.value().grad().defined()) << arch << " " << p.key();
      EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>()) << p.key();
    }
  }
}

}  // namespace
}  // namespace attnscope::models::vision

namespace attnscope::models::vision {
namespace {

// Counts the aten::batch_norm calls made on this thread while it lives (LibTorch's own
// RecordFunction callbacks: an observer independent of the models' code).
thread_local int g_batch_norms = 0;
class CountBatchNorms {
 public:
  CountBatchNorms() {
    g_batch_norms = 0;
    handle_ = at::addThreadLocalCallback(at::RecordFunctionCallback(
        [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
          if (std::string(fn.name()) == "aten::batch_norm") ++g_batch_norms;
          return nullptr;
        }));
  }
  ~CountBatchNorms() { at::removeCallback(handle_); }
  int count() const { return g_batch_norms; }

 private:
  at::CallbackHandle handle_;
};

// Random BatchNorm statistics and affine parameters, so a fold has something to fold.
void randomise_batch_norms(torch::nn::Module& m) {
  torch::NoGradGuard no_grad;
  for (auto& b : m.named_buffers())
    if (b.key().find("running_mean") != std::string::npos)
      b.value().normal_(0.0, 0.3);
    else if (b.key().find("running_var") != std::string::npos)
      b.value().uniform_(0.5, 2.0);
  for (auto& module : m.modules(false))
    if (auto* bn = module->as<torch::nn::BatchNorm2d>()) {
      bn->weight.uniform_(0.5, 1.5);
      bn->bias.normal_(0.0, 0.2);
    }
}

// Every parameter and buffer of from into to (the same architecture), by name.
void copy_state(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto params = to.named_parameters(), buffers = to.named_buffers();
  for (const auto& p : from.named_parameters())
    params[p.key()].copy_(p.value());
  for (const auto& b : from.named_buffers())
    buffers[b.key()].copy_(b.value());
}

torch::Tensor logits_of(ImageClassifier& m, const torch::Tensor& x, int* batch_norms) {
  torch::NoGradGuard no_grad;
  CountBatchNorms counter;
  auto out = m.forward(x).logits;
  *batch_norms = counter.count();
  return out;
}

// Oracle: the same model with its BatchNorm modules run as they are.
TEST(VisionBackbone, FoldedBatchNormGivesTheSameOutputsAndSkipsTheBatchNormPasses) {
  torch::manual_seed(21);
  // name, BatchNorm2d modules (ResNet-18: 1 + 8 blocks × 2 + 3 downsamples; ResNet-50:
  // 1 + 16 × 3 + 4; small_cnn: 8 convolutions).
  for (const auto& [arch, bns] : std::vector<std::pair<std::string, int>>{{"resnet18", 20},
                                                                          {"resnet50", 53},
                                                                          {"small_cnn", 8},
                                                                          {"attn_small", 8},
                                                                          {"attn_resnet18", 20},
                                                                          {"vgg16", 0}}) {
    SCOPED_TRACE(arch);
    auto m = make(arch, 3);
    randomise_batch_norms(*m);
    m->eval();
    const auto x = torch::randn({2, 3, 64, 64});
    int before = -1, after = -1;
    const auto expected = logits_of(*m, x, &before);
    std::map<std::string, torch::Tensor> expected_maps;
    {
      torch::NoGradGuard no_grad;
      expected_maps = m->forward(x).maps;
    }
    EXPECT_EQ(before, bns);
    m->fold_batch_norm();
    const auto got = logits_of(*m, x, &after);
    EXPECT_EQ(after, 0);
    const double scale = expected.abs().max().item<double>();
    EXPECT_LT((got - expected).abs().max().item<double>(), 1e-4 * scale + 1e-5) << got << expected;
    // The maps the attention-CNNs return are the same too.
    torch::NoGradGuard no_grad;
    const auto maps = m->forward(x).maps;
    ASSERT_EQ(maps.size(), expected_maps.size());
    for (const auto& [name, map] : maps)
      EXPECT_LT((map - expected_maps.at(name)).abs().max().item<double>(), 1e-5) << name;
  }
}

// The fold is a copy: it stops applying the moment anything it was made from changes, in
// training mode, and while the convolution weights record gradients.
TEST(VisionBackbone, AFoldIsNotUsedOnceAWeightChangesInTrainingOrUnderAutograd) {
  torch::manual_seed(22);
  auto m = make("resnet18", 3);
  randomise_batch_norms(*m);
  m->eval();
  m->fold_batch_norm();
  const auto x = torch::randn({2, 3, 64, 64});
  int n = -1;
  (void)logits_of(*m, x, &n);
  ASSERT_EQ(n, 0);

  // A weight changed in place (an optimiser step, copy_ from a checkpoint): the modules run.
  {
    torch::NoGradGuard no_grad;
    m->named_parameters()["layer2.0.conv2.weight"].mul_(1.5);
  }
  const auto changed = logits_of(*m, x, &n);
  EXPECT_EQ(n, 1);  // only the BatchNorm after that convolution
  auto reference = make("resnet18", 3);
  copy_state(*m, *reference);
  reference->eval();
  int unfolded = -1;
  const auto expected = logits_of(*reference, x, &unfolded);
  EXPECT_EQ(unfolded, 20);
  EXPECT_LT((changed - expected).abs().max().item<double>(),
            1e-4 * expected.abs().max().item<double>() + 1e-5);

  // A running statistic changed: that BatchNorm runs again.
  m->fold_batch_norm();
  (void)logits_of(*m, x, &n);
  ASSERT_EQ(n, 0);
  {
    torch::NoGradGuard no_grad;
    m->named_buffers()["layer3.1.bn1.running_var"].add_(0.5);
  }
  (void)logits_of(*m, x, &n);
  EXPECT_EQ(n, 1);

  // Eval mode with autograd recording the weights (fine-tuning with frozen BatchNorm): the
  // modules run and the convolution weights get gradients.
  m->fold_batch_norm();
  {
    CountBatchNorms counter;
    m->forward(x).logits.sum().backward();
    EXPECT_EQ(counter.count(), 20);
  }
  EXPECT_TRUE(m->named_parameters()["layer1.0.conv1.weight"].grad().defined());

  // Only BatchNorm's affine parameters tuned (the convolutions frozen): no fold either.
  m->fold_batch_norm();
  for (auto& p : m->named_parameters())
    p.value().set_requires_grad(p.key().find("bn") != std::string::npos ||
                                p.key().find("downsample.1") != std::string::npos);
  {
    CountBatchNorms counter;
    m->forward(x).logits.sum().backward();
    EXPECT_EQ(counter.count(), 20);
  }
  EXPECT_TRUE(m->named_parameters()["layer1.0.bn1.weight"].grad().defined());
  for (auto& p : m->parameters())
    p.set_requires_grad(true);

  // A weight replaced by set_data (new storage, the same version counter): not used.
  m->fold_batch_norm();
  {
    torch::NoGradGuard no_grad;
    auto w = m->named_parameters()["conv1.weight"];
    w.set_data(w.clone() * 0.5);
  }
  (void)logits_of(*m, x, &n);
  EXPECT_EQ(n, 1);

  // Training mode: BatchNorm in training mode, whatever was folded. Its running statistics
  // change there (without a new version of running_mean in LibTorch 1.13), so back in eval
  // mode the old folds no longer apply, and the model equals one never folded.
  m->fold_batch_norm();
  m->train();
  {
    torch::NoGradGuard no_grad;
    CountBatchNorms counter;
    m->forward(x);
    EXPECT_EQ(counter.count(), 20);
  }
  m->eval();
  const auto after_training = logits_of(*m, x, &n);
  EXPECT_EQ(n, 20);
  copy_state(*m, *reference);
  const auto unfolded_after_training = logits_of(*reference, x, &unfolded);
  EXPECT_LT((after_training - unfolded_after_training).abs().max().item<double>(), 1e-6);
}

// One fold against bn(conv(x)) itself, for what the presets do not use: convolution bias,
// stride, dilation, groups, BatchNorm without affine parameters, another eps; and what is not
// folded at all.
TEST(VisionBackbone, AConvBnFoldEqualsTheConvolutionThenTheBatchNorm) {
  namespace nn = torch::nn;
  torch::manual_seed(23);
  for (const bool affine : {true, false}) {
    SCOPED_TRACE(affine);
    nn::Conv2d conv(nn::Conv2dOptions(4, 6, 3).stride(2).padding(2).dilation(2).groups(2));
    nn::BatchNorm2d bn(nn::BatchNorm2dOptions(6).eps(1e-3).affine(affine));
    randomise_batch_norms(*bn);
    {
      torch::NoGradGuard no_grad;
      bn->running_mean.normal_(0.0, 0.5);
      bn->running_var.uniform_(0.2, 3.0);
    }
    bn->eval();
    const auto x = torch::randn({2, 4, 11, 13});
    torch::NoGradGuard no_grad;
    const auto expected = bn(conv(x));
    const auto fold = ConvBnFold::of(conv, bn);
    ASSERT_TRUE(fold.has_value());
    ASSERT_TRUE(fold->applies_to(conv, bn));
    const auto got = fold->forward(x, conv);
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_LT((got - expected).abs().max().item<double>(), 1e-5);
  }
  nn::Conv2d same(nn::Conv2dOptions(4, 6, 3).padding(torch::kSame));
  nn::BatchNorm2d bn(6);
  EXPECT_FALSE(ConvBnFold::of(same, bn).has_value());
  nn::Conv2d conv(nn::Conv2dOptions(4, 6, 3));
  nn::BatchNorm2d no_stats(nn::BatchNorm2dOptions(6).track_running_stats(false));
  EXPECT_FALSE(ConvBnFold::of(conv, no_stats).has_value());
  EXPECT_TRUE(ConvBnFold::of(conv, bn).has_value());
}

// Stochastic depth in the ViT: block i of `depth` gets drop_path · i / (depth - 1), the rates
// of timm's torch.linspace(0, drop_path_rate, depth); it adds no parameter, leaves evaluation
// unchanged and changes training outputs; other presets refuse it.
TEST(VisionBackbone, VitDropPathRisesLinearlyOverTheBlocksAndLeavesEvaluationAlone) {
  ImageModelConfig config;
  config.arch = "vit_mini_patch8";
  config.num_classes = 2;
  torch::manual_seed(0);
  const auto plain = make_image_classifier(config);
  config.drop_path = 0.3;
  torch::manual_seed(0);
  const auto dropping = make_image_classifier(config);
  auto* vit = dynamic_cast<VisionTransformerImpl*>(dropping.get());
  ASSERT_NE(vit, nullptr);
  const auto rates = torch::linspace(0.0, 0.3, 6, torch::kDouble);
  ASSERT_EQ(vit->blocks->size(), 6u);
  for (std::size_t i = 0; i < vit->blocks->size(); ++i)
    EXPECT_NEAR(vit->blocks[i]->as<transformer::TransformerEncoderLayer>()->options.drop_path(),
                rates[static_cast<int64_t>(i)].item<double>(), 1e-12)
        << i;
  EXPECT_EQ(count_parameters(*dropping), count_parameters(*plain));
  const auto images = torch::randn({8, 3, 64, 64});
  torch::NoGradGuard no_grad;
  plain->eval();
  dropping->eval();
  EXPECT_TRUE(torch::equal(dropping->forward(images).logits, plain->forward(images).logits));
  plain->train();
  dropping->train();
  EXPECT_TRUE(torch::equal(plain->forward(images).logits, plain->forward(images).logits));
  EXPECT_FALSE(torch::allclose(dropping->forward(images).logits, plain->forward(images).logits));
  ImageModelConfig cnn;
  cnn.arch = "attn_small";
  cnn.drop_path = 0.1;
  EXPECT_THROW(make_image_classifier(cnn), Error);
  cnn.drop_path = 0.0;
  EXPECT_NO_THROW(make_image_classifier(cnn));
}

// Xiao et al. 2021's convolutional stem: k = log2(patch) stride-2 3x3 blocks of D/2^(k-1-j)
// channels, the same token grid as the patchify convolution, and each token sees beyond its
// patch. Three 3x3 convolutions of stride 2 and padding 1 give token row r the input rows
// 8r - 7 .. 8r + 7 (each layer: output i reads inputs 2i - 1 .. 2i + 1): a pixel changes no
// token outside that window, and (unlike the patchify convolution) some token outside its own
// patch. Bad patch sizes and widths, and SPT together with the stem, are refused.
TEST(VisionBackbone, VitConvolutionalStemKeepsTheGridAndReachesBeyondThePatch) {
  ImageModelConfig config;
  config.arch = "vit_mini_patch8";
  config.conv_stem = true;
  torch::manual_seed(0);
  const auto model = make_image_classifier(config);
  auto* vit = dynamic_cast<VisionTransformerImpl*>(model.get());
  ASSERT_NE(vit, nullptr);
  auto& embed = *vit->patch_embed;
  ASSERT_TRUE(embed.stem);
  std::vector<int64_t> widths;
  for (const auto& m : embed.stem->children())
    if (auto* conv = m->as<torch::nn::Conv2d>()) {
      EXPECT_EQ(conv->options.stride()->at(0), 2);
      EXPECT_FALSE(conv->bias.defined());
      widths.push_back(conv->options.out_channels());
    }
  EXPECT_EQ(widths, (std::vector<int64_t>{32, 64, 128}));
  EXPECT_EQ(embed.proj->options.kernel_size()->at(0), 1);
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t H = 32, W = 40;
  const auto x = torch::randn({1, 3, H, W});
  const auto tokens = embed.forward(x);
  ASSERT_EQ(tokens.sizes(), (std::vector<int64_t>{1, 128, H / 8, W / 8}));
  EXPECT_EQ(model->forward(torch::randn({2, 3, 64, 64})).logits.sizes(),
            (std::vector<int64_t>{2, 2}));
  for (const auto& [y, xx] : std::vector<std::pair<int64_t, int64_t>>{{9, 17}, {15, 8}, {0, 39}}) {
    auto moved = x.clone();
    moved[0][1][y][xx] += 50.0f;
    const auto changed = (embed.forward(moved) - tokens).abs().amax(1)[0] > 0;  // (h, w)
    int64_t outside_own_patch = 0, reachable_outside = 0;
    for (int64_t r = 0; r < H / 8; ++r)
      for (int64_t c = 0; c < W / 8; ++c) {
        const bool reachable =
            8 * r - 7 <= y && y <= 8 * r + 7 && 8 * c - 7 <= xx && xx <= 8 * c + 7;
        const bool did = changed[r][c].item<bool>();
        if (!reachable) EXPECT_FALSE(did) << y << "," << xx << " -> " << r << "," << c;
        const bool own = r == y / 8 && c == xx / 8;
        outside_own_patch += did && !own;
        reachable_outside += reachable && !own;
      }
    // At the corner (0, 39) the window holds the own patch only.
    EXPECT_EQ(outside_own_patch > 0, reachable_outside > 0) << y << "," << xx;
  }
  EXPECT_THROW(PatchEmbed(3, 128, 6, false, true), Error);   // not a power of two
  EXPECT_THROW(PatchEmbed(3, 100, 16, false, true), Error);  // 100 not divisible by 8
  EXPECT_NO_THROW(PatchEmbed(3, 96, 16, false, true));
  EXPECT_THROW(PatchEmbed(3, 128, 8, true, true), Error);
  config.shifted_patches = true;
  EXPECT_THROW(make_image_classifier(config), Error);
}

// Shifted Patch Tokenization against the brute force of its definition (Lee et al. 2021): the
// token of patch (r, c) is proj applied to LayerNorm of the patch's pixels in the image and in
// its four copies shifted diagonally by patch / 2 with zero fill, gathered pixel by pixel.
// LSA adds one scale per head and no other parameter.
TEST(VisionBackbone, VitShiftedPatchTokensAreTheNormalisedPatchesOfTheShiftedImages) {
  ImageModelConfig config;
  config.arch = "vit_mini_patch8";
  config.shifted_patches = true;
  config.locality_attention = true;
  torch::manual_seed(0);
  const auto model = make_image_classifier(config);
  auto* vit = dynamic_cast<VisionTransformerImpl*>(model.get());
  ASSERT_NE(vit, nullptr);
  auto& embed = *vit->patch_embed;
  {
    torch::NoGradGuard no_grad;
    embed.norm->weight.uniform_(0.5, 1.5);
    embed.norm->bias.uniform_(-0.2, 0.2);
  }
  const int64_t p = 8, s = 4, C = 3, H = 16, W = 24;
  const auto x = torch::randn({2, C, H, W});
  torch::NoGradGuard no_grad;
  const auto tokens = embed.forward(x);  // (2, D, 2, 3)
  ASSERT_EQ(tokens.sizes(), (std::vector<int64_t>{2, 128, 2, 3}));
  // Any memory layout of the input (a CNN's pipeline may hand over channels-last tensors).
  EXPECT_TRUE(torch::allclose(embed.forward(x.contiguous(torch::MemoryFormat::ChannelsLast)),
                              tokens, 1e-5, 1e-6));
  // Copy k's pixel (i, j) is the image's (i + di[k], j + dj[k]), zero outside.
  const int di[5] = {0, -s, -s, s, s}, dj[5] = {0, -s, s, -s, s};
  const auto xa = x.accessor<float, 4>();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t r = 0; r < H / p; ++r)
      for (int64_t c = 0; c < W / p; ++c) {
        auto patch = torch::zeros({5 * C, p, p});
        auto pa = patch.accessor<float, 3>();
        for (int k = 0; k < 5; ++k)
          for (int64_t ch = 0; ch < C; ++ch)
            for (int64_t i = 0; i < p; ++i)
              for (int64_t j = 0; j < p; ++j) {
                const int64_t y = r * p + i + di[k], xx = c * p + j + dj[k];
                pa[k * C + ch][i][j] = y >= 0 && y < H && xx >= 0 && xx < W ? xa[b][ch][y][xx] : 0;
              }
        const auto mean = patch.mean();
        const auto var = (patch - mean).pow(2).mean();
        const auto normed =
            (patch - mean) / torch::sqrt(var + 1e-5) * embed.norm->weight + embed.norm->bias;
        const auto want =
            torch::mv(embed.proj->weight.flatten(1), normed.flatten()) + embed.proj->bias;  // (D)
        EXPECT_TRUE(
            torch::allclose(tokens.select(0, b).select(1, r).select(1, c), want, 1e-4, 1e-4))
            << b << " " << r << " " << c;
      }
  ImageModelConfig plain;
  plain.arch = "vit_mini_patch8";
  // SPT: norm (15·8·8 weights and biases) and 12 more input channels of proj (12·8·8·128);
  // LSA: 4 scales in each of 6 blocks.
  EXPECT_EQ(count_parameters(*model) - count_parameters(*make_image_classifier(plain)),
            2 * 15 * 64 + 12 * 64 * 128 + 6 * 4);
  EXPECT_THROW(PatchEmbed(3, 16, 1, /*shifted=*/true), Error);
}

}  // namespace
}  // namespace attnscope::models::vision
