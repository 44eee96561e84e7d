// The model code and the training primitives on a CUDA device, checked against the same
// computation on the CPU. Built and run by tests/device/run-cuda-check.sh on a machine with a
// GPU (CI has none, so it is not a ctest); `cuda_check cpu` runs every comparison with the CPU
// as both sides, which checks the program itself anywhere.
//
// The oracle is the CPU: every model is built twice from the same seed, one copy moved to the
// device, both in float64 (so that cuDNN's and cuBLAS's other algorithms and summation orders
// leave differences of ~1e-14, not TF32's ~1e-3); forward outputs, attention maps and weights,
// every parameter's gradient, explanations, decoded tokens and optimiser steps must agree to a
// relative error of 1e-8 (max |a - b| over max |b|; for parameters and gradients over at
// least 1e-3, see expect_close and noise_gradients). Then the same models in float32 (TF32
// allowed, as LibTorch's default is: relative error 5e-2) and in bfloat16 autocast on the
// device (relative error 0.25, gradients finite and float32) — what `train --device cuda
// --precision bf16` runs. A tensor made on the CPU inside a module's forward, a CPU-only
// operation or a dtype hard-coded to float shows up here as an exception or a mismatch.
//
// Exit status: 0 when every check passed, 1 otherwise (each failure is one line naming it).

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "attnscope/special_tokens.h"
#include "models/text/decoding.h"
#include "models/text/seq2seq.h"
#include "models/vision/explain.h"
#include "models/vision/presets.h"
#include "pipeline/training.h"
#include "pipeline/vision/image_losses.h"
#include "pipeline/vision/mixing.h"
#include "pipeline/vision/tta.h"
#ifdef ATTNSCOPE_CHECK_PRECISION
#include "runtime/precision.h"
#endif

namespace {

namespace vision = attnscope::models::vision;
namespace text = attnscope::models::text;
namespace pipeline = attnscope::pipeline;

constexpr double kExact = 1e-8;           // float64 on both sides
constexpr double kFloat32 = 5e-2;         // float32 (TF32 convolutions) against float64
constexpr double kBf16 = 0.25;            // bfloat16 autocast against float32
constexpr double kParameterFloor = 1e-3;  // see expect_close

torch::Device g_device = torch::kCPU;
int g_passed = 0;
int g_failed = 0;

void fail(const std::string& what, const std::string& why) {
  ++g_failed;
  std::cout << "FAIL " << what << ": " << why << std::endl;
}

/// max |a - b| / max(max |b|, floor) (0 when both are all zero).
double relative_error(const torch::Tensor& a, const torch::Tensor& b, double floor) {
  const auto x = a.detach().to(torch::kCPU, torch::kFloat64);
  const auto y = b.detach().to(torch::kCPU, torch::kFloat64);
  const double scale = std::max(y.numel() ? y.abs().max().item<double>() : 0.0, floor);
  const double diff = y.numel() ? (x - y).abs().max().item<double>() : 0.0;
  if (scale == 0) return diff;
  return diff / scale;
}

/// Where a result is expected.
enum class On { device, cpu };

/// One comparison: the device's tensor `got` against the CPU's `want`, relative to the largest
/// |want| or `floor`, whichever is larger. The floor is for gradients that are mathematically
/// zero: a convolution's bias before BatchNorm has a gradient of rounding noise (~1e-17) that
/// differs between the devices (see also noise_gradients).
void expect_close(const std::string& what, const torch::Tensor& got, const torch::Tensor& want,
                  double tolerance, double floor = 0.0, On on = On::device) {
  if (!got.defined() || !want.defined()) {
    if (got.defined() != want.defined()) return fail(what, "defined on one side only");
    ++g_passed;
    return;
  }
  if (got.sizes() != want.sizes()) {
    std::ostringstream s;
    s << "shape " << got.sizes() << ", CPU " << want.sizes();
    return fail(what, s.str());
  }
  if (on == On::device && g_device.is_cuda() && !got.device().is_cuda())
    return fail(what, "the result is on the CPU, not on the device");
  if (on == On::cpu && !got.device().is_cpu()) return fail(what, "the result is not on the CPU");
  if (!torch::isfinite(got.detach().to(torch::kCPU, torch::kFloat64)).all().item<bool>())
    return fail(what, "not finite");
  const double e = relative_error(got, want, floor);
  if (!(e <= tolerance)) {
    std::ostringstream s;
    s << "relative error " << e << " > " << tolerance;
    return fail(what, s.str());
  }
  ++g_passed;
}

void expect_true(const std::string& what, bool ok, const std::string& why) {
  if (ok) {
    ++g_passed;
  } else {
    fail(what, why);
  }
}

/// Runs one named check; an exception is a failure naming it (the usual symptom of a tensor
/// left on the CPU: "Expected all tensors to be on the same device").
void run(const std::string& what, const std::function<void()>& body) {
  const int failed_before = g_failed;
  try {
    body();
  } catch (const std::exception& e) {
    std::string message = e.what();
    message = message.substr(0, message.find('\n'));
    fail(what, "threw: " + message);
  }
  std::cout << (g_failed == failed_before ? "ok   " : "--   ") << what << std::endl;
}

template <class Module>
void expect_same_gradients(const std::string& what, Module& dev, Module& cpu) {
  const auto a = dev.named_parameters(), b = cpu.named_parameters();
  expect_true(what + " parameter count", a.size() == b.size(), "the two copies differ");
  int compared = 0;
  for (const auto& item : b) {
    const auto* other = a.find(item.key());
    if (other == nullptr) {
      fail(what, "no parameter " + item.key() + " on the device");
      continue;
    }
    expect_close(what + " grad " + item.key(), other->grad(), item.value().grad(), kExact,
                 kParameterFloor);
    compared += item.value().grad().defined() ? 1 : 0;
  }
  expect_true(what + " gradients", compared > 0, "no parameter has a gradient");
}

/// Parameters whose gradient is rounding noise (below 1e-12 of the largest): mathematically
/// constant ones, as a convolution's bias before BatchNorm. Adam turns the noise, which differs
/// between the devices, into updates of ~1e-10 (g / (sqrt(v) + eps) with g ~ 1e-16).
std::set<std::string> noise_gradients(torch::nn::Module& module) {
  double largest = 0.0;
  for (const auto& p : module.parameters())
    if (p.grad().defined()) largest = std::max(largest, p.grad().abs().max().item<double>());
  std::set<std::string> out;
  for (const auto& item : module.named_parameters())
    if (item.value().grad().defined() &&
        item.value().grad().abs().max().item<double>() < 1e-12 * largest)
      out.insert(item.key());
  return out;
}

template <class Module>
void expect_same_parameters(const std::string& what, Module& dev, Module& cpu, double tol,
                            const std::set<std::string>& skip = {}) {
  const auto a = dev.named_parameters(), b = cpu.named_parameters();
  for (const auto& item : b) {
    if (skip.count(item.key())) continue;
    const auto* other = a.find(item.key());
    if (other == nullptr) {
      fail(what, "no parameter " + item.key() + " on the device");
      continue;
    }
    expect_close(what + " " + item.key(), *other, item.value(), tol, kParameterFloor);
  }
}

// ---------------------------------------------------------------------------------------------
// Image classifiers

std::shared_ptr<vision::ImageClassifier> build(const vision::ImageModelConfig& config) {
  torch::manual_seed(0);
  return vision::make_image_classifier(config);
}

void check_image_model(const std::string& label, vision::ImageModelConfig config, int64_t size) {
  config.dropout = 0.0;  // train mode without randomness: BatchNorm uses the batch's statistics
  const bool vit = vision::is_vit(config.arch);
  auto cpu = build(config);
  auto dev = build(config);
  cpu->to(torch::kFloat64);
  dev->to(g_device, torch::kFloat64);
  torch::manual_seed(1);
  const auto x = torch::rand({3, 3, size, size}, torch::kFloat64);
  const auto xd = x.to(g_device);

  run(label + " train-mode forward and backward", [&] {
    cpu->train();
    dev->train();
    const auto want = cpu->forward(x, /*need_attention=*/true);
    const auto got = dev->forward(xd, /*need_attention=*/true);
    expect_close(label + " logits", got.logits, want.logits, kExact);
    expect_true(label + " map names", got.maps.size() == want.maps.size(), "map sets differ");
    torch::manual_seed(2);
    auto loss_cpu = (want.logits * torch::randn(want.logits.sizes(), torch::kFloat64)).sum();
    torch::manual_seed(2);
    auto loss_dev =
        (got.logits * torch::randn(want.logits.sizes(), torch::kFloat64).to(g_device)).sum();
    for (const auto& [name, map] : want.maps) {
      auto it = got.maps.find(name);
      if (it == got.maps.end()) {
        fail(label, "no map " + name + " on the device");
        continue;
      }
      expect_close(label + " map " + name, it->second, map, kExact);
      const auto w = torch::randn(map.sizes(), torch::kFloat64);
      loss_cpu = loss_cpu + (map * w).sum();
      loss_dev = loss_dev + (it->second * w.to(g_device)).sum();
    }
    expect_true(label + " attention layers", got.attention.size() == want.attention.size(),
                "layer counts differ");
    for (std::size_t i = 0; i < want.attention.size() && i < got.attention.size(); ++i)
      expect_close(label + " attention " + std::to_string(i), got.attention[i], want.attention[i],
                   kExact);
    cpu->zero_grad();
    dev->zero_grad();
    loss_cpu.backward();
    loss_dev.backward();
    expect_same_gradients(label, *dev, *cpu);
  });

  run(label + " clone onto the device", [&] {
    // ImageClassifier::clone: the CPU model's copy on the device computes what the CPU does.
    cpu->eval();
    auto copy = std::dynamic_pointer_cast<vision::ImageClassifier>(cpu->clone(g_device));
    expect_true(label + " clone is a classifier", copy != nullptr, "clone() lost the type");
    if (!copy) return;
    torch::NoGradGuard no_grad;
    expect_close(label + " clone logits", copy->forward(xd).logits, cpu->forward(x).logits, kExact);
  });

  run(label + " eval-mode forward (BatchNorm folded)", [&] {
    cpu->eval();
    dev->eval();
    cpu->fold_batch_norm();
    dev->fold_batch_norm();
    torch::NoGradGuard no_grad;
    const auto want = cpu->forward(x, true);
    const auto got = dev->forward(xd, true);
    expect_close(label + " eval logits", got.logits, want.logits, kExact);
    for (const auto& [name, map] : want.maps)
      if (got.maps.count(name))
        expect_close(label + " eval map " + name, got.maps.at(name), map, kExact);
  });

  run(label + " explanations", [&] {
    cpu->eval();
    dev->eval();
    if (vit) {
      torch::NoGradGuard no_grad;
      const auto fc = cpu->forward_features(x, true);
      const auto fd = dev->forward_features(xd, true);
      expect_close(label + " rollout",
                   vision::attention_rollout(fd.attention, fd.grid_h, fd.grid_w),
                   vision::attention_rollout(fc.attention, fc.grid_h, fc.grid_w), kExact);
    }
    if (vit) {
      expect_close(label + " gradient rollout", vision::vit_gradient_rollout(*dev, xd),
                   vision::vit_gradient_rollout(*cpu, x), kExact);
    }
    if (cpu->has_spatial_features()) {
      const auto targets = torch::tensor({0, 1, 0}, torch::kInt64);
      expect_close(label + " grad-cam", vision::grad_cam(*dev, xd, targets.to(g_device)),
                   vision::grad_cam(*cpu, x, targets), kExact);
    }
  });

  run(label + " float32 forward and backward", [&] {
    auto want = build(config);
    want->to(torch::kFloat64);
    auto got = build(config);
    got->to(g_device, torch::kFloat32);
    want->train();
    got->train();
    const auto w = want->forward(x, true).logits;
    const auto g = got->forward(xd.to(torch::kFloat32), true).logits;
    expect_true(label + " float32 logits dtype", g.scalar_type() == torch::kFloat32,
                "logits are not float32");
    expect_close(label + " float32 logits", g, w, kFloat32);
    g.sum().backward();
    for (const auto& p : got->parameters())
      if (p.grad().defined() && !torch::isfinite(p.grad()).all().item<bool>())
        return fail(label + " float32 gradients", "not finite");
    ++g_passed;
  });

#ifdef ATTNSCOPE_CHECK_PRECISION
  run(label + " bfloat16 autocast forward and backward", [&] {
    auto model = build(config);
    model->to(g_device, torch::kFloat32);
    model->train();
    const auto xf = xd.to(torch::kFloat32);
    const auto reference = model->forward(xf, true).logits.detach();
    torch::Tensor logits;
    {
      attnscope::runtime::AutocastScope autocast("bf16", g_device);
      logits = model->forward(xf, true).logits;
    }
    expect_close(label + " bf16 logits", logits.to(torch::kFloat32), reference, kBf16);
    model->zero_grad();
    logits.to(torch::kFloat32).sum().backward();
    bool finite = true, float32 = true;
    for (const auto& p : model->parameters()) {
      if (!p.grad().defined()) continue;
      finite = finite && torch::isfinite(p.grad()).all().item<bool>();
      float32 = float32 && p.grad().scalar_type() == torch::kFloat32;
    }
    expect_true(label + " bf16 gradients finite", finite, "a gradient is not finite");
    expect_true(label + " bf16 gradients float32", float32, "a gradient is not float32");
    // The scope ended: the next forward pass is float32 again.
    expect_true(label + " autocast restored",
                model->forward(xf, true).logits.scalar_type() == torch::kFloat32,
                "logits after the scope are not float32");
  });
#endif
}

// ---------------------------------------------------------------------------------------------
// Seq2seq models

void check_seq2seq(const std::string& name) {
  auto options = text::seq2seq_preset(name);
  options.source_vocab(17).target_vocab(19).dropout(0.0);
  torch::manual_seed(0);
  auto cpu = text::make_seq2seq(options);
  torch::manual_seed(0);
  auto dev = text::make_seq2seq(options);
  cpu->to(torch::kFloat64);
  dev->to(g_device, torch::kFloat64);
  torch::manual_seed(3);
  auto source = torch::randint(4, 17, {3, 7}, torch::kInt64);
  const auto lengths = torch::tensor({7, 5, 3}, torch::kInt64);
  source.index_put_({1, torch::indexing::Slice(5, torch::indexing::None)},
                    attnscope::special_tokens::kPad);
  source.index_put_({2, torch::indexing::Slice(3, torch::indexing::None)},
                    attnscope::special_tokens::kPad);
  auto target_in = torch::randint(4, 19, {3, 6}, torch::kInt64);
  target_in.index_put_({torch::indexing::Slice(), 0}, attnscope::special_tokens::kBos);
  const std::string label = "seq2seq " + name;

  run(label + " teacher-forced forward and backward", [&] {
    cpu->train();
    dev->train();
    const auto want = cpu->forward(source, lengths, target_in);
    const auto got =
        dev->forward(source.to(g_device), lengths.to(g_device), target_in.to(g_device));
    expect_close(label + " logits", got.logits, want.logits, kExact);
    expect_close(label + " attention", got.attention, want.attention, kExact);
    const auto w = torch::randn(want.logits.sizes(), torch::kFloat64);
    cpu->zero_grad();
    dev->zero_grad();
    (want.logits * w).sum().backward();
    (got.logits * w.to(g_device)).sum().backward();
    expect_same_gradients(label, *dev, *cpu);
  });

  for (const int64_t beam : {1, 3}) {
    const auto what = label + (beam == 1 ? " greedy decoding" : " beam search (3)");
    run(what, [&] {
      cpu->eval();
      dev->eval();
      const auto decode = text::DecodeOptions().beam_size(beam).max_length(9);
      const auto want = text::decode(*cpu, source, lengths, decode);
      const auto got = text::decode(*dev, source.to(g_device), lengths.to(g_device), decode);
      expect_true(what + " count", got.size() == want.size(), "hypothesis counts differ");
      for (std::size_t i = 0; i < want.size() && i < got.size(); ++i) {
        expect_true(what + " tokens " + std::to_string(i), got[i].tokens == want[i].tokens,
                    "decoded tokens differ");
        expect_true(what + " log-probability " + std::to_string(i),
                    std::abs(got[i].log_prob - want[i].log_prob) <=
                        1e-8 * std::max(1.0, std::abs(want[i].log_prob)),
                    "log-probabilities differ");
        if (got[i].tokens == want[i].tokens)
          expect_close(what + " attention " + std::to_string(i), got[i].attention,
                       want[i].attention, 1e-5, 0.0, On::cpu);  // float32, on the CPU
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Training primitives

void check_training_loop(const std::string& optimizer) {
  vision::ImageModelConfig config;
  config.arch = "attn_small";
  config.dropout = 0.0;
  auto cpu = build(config);
  auto dev = build(config);
  cpu->to(torch::kFloat64);
  dev->to(g_device, torch::kFloat64);
  pipeline::TrainingOptions options;
  options.optimizer.kind = optimizer;
  options.optimizer.nesterov = optimizer == "sgd";
  options.optimizer.weight_decay = optimizer == "sgd" ? 1e-4 : 0.05;
  options.clip_norm = 1.0;
  options.ema_decay = 0.9;
  pipeline::TrainingLoop loop_cpu(*cpu, options), loop_dev(*dev, options);
  torch::manual_seed(4);
  const auto x = torch::rand({4, 3, 64, 64}, torch::kFloat64);
  const auto y = torch::tensor({0, 1, 1, 0}, torch::kInt64);
  const auto step = [&](vision::ImageClassifier& model, pipeline::TrainingLoop& loop,
                        const torch::Device& device) {
    model.train();
    loop.optimizer().zero_grad();
    torch::nn::functional::cross_entropy(model.forward(x.to(device)).logits, y.to(device))
        .backward();
    return loop.apply_step(optimizer == "sgd" ? 0.01 : 1e-3);
  };
  const std::string label = "training loop " + optimizer;
  std::set<std::string> noise;
  run(label + " steps with clipping and EMA", [&] {
    for (int i = 0; i < 3; ++i) {
      const double nc = step(*cpu, loop_cpu, torch::kCPU);
      if (i == 0) noise = noise_gradients(*cpu);
      const double nd = step(*dev, loop_dev, g_device);
      expect_true(label + " gradient norm " + std::to_string(i),
                  std::abs(nc - nd) <= 1e-8 * std::max(1.0, nc), "gradient norms differ");
    }
    std::cout << "     " << label << ": " << noise.size()
              << " parameters without a gradient (rounding noise) not compared" << std::endl;
    expect_same_parameters(label + " weights", *dev, *cpu, kExact, noise);
    const auto ec = loop_cpu.ema()->state(), ed = loop_dev.ema()->state();
    for (const auto& [name, t] : ec)
      if (ed.count(name) && !noise.count(name))
        expect_close(label + " ema " + name, ed.at(name), t, kExact, kParameterFloor);
  });
  run(label + " resume on the device from a CPU copy of the state", [&] {
    // What `train --resume --device cuda` does: the state read from last.h5 is on the CPU.
    auto resumed = build(config);
    resumed->to(g_device, torch::kFloat64);
    {
      torch::NoGradGuard no_grad;
      auto from = dev->named_parameters();
      for (auto& item : resumed->named_parameters())
        item.value().copy_(*from.find(item.key()));
      auto from_buffers = dev->named_buffers();
      for (auto& item : resumed->named_buffers())
        item.value().copy_(*from_buffers.find(item.key()));
    }
    pipeline::TrainingLoop loop(*resumed, options);
    std::map<std::string, torch::Tensor> tensors;
    for (const auto& [name, t] : loop_dev.state_tensors())
      tensors[name] = t.to(torch::kCPU);
    loop.restore(loop_dev.state_json(), tensors);
    step(*resumed, loop, g_device);
    step(*dev, loop_dev, g_device);
    expect_same_parameters(label + " resumed weights", *resumed, *dev, kExact, noise);
  });
}

void check_image_functions() {
  torch::manual_seed(5);
  const auto maps = torch::rand({2, 8, 8}, torch::kFloat64);
  const auto mask = (torch::rand({2, 32, 32}) > 0.5).to(torch::kFloat64);
  const auto d = [](const torch::Tensor& t) { return t.to(g_device); };
  run("dice and attention-mask losses", [&] {
    expect_close("dice loss", pipeline::dice_loss(d(maps), d(maps.gt(0.5).to(torch::kFloat64))),
                 pipeline::dice_loss(maps, maps.gt(0.5).to(torch::kFloat64)), kExact);
    const std::map<std::string, torch::Tensor> m_cpu = {{"stage3", maps}, {"stage4", maps * 0.5}};
    const std::map<std::string, torch::Tensor> m_dev = {{"stage3", d(maps)},
                                                        {"stage4", d(maps * 0.5)}};
    expect_close("attention-mask loss", pipeline::attention_mask_loss(m_dev, d(mask)),
                 pipeline::attention_mask_loss(m_cpu, mask), kExact);
  });
  const auto images = torch::rand({4, 3, 16, 12}, torch::kFloat64);
  run("mixup and cutmix", [&] {
    expect_close("mixup", pipeline::mixup_reversed(d(images), 0.3),
                 pipeline::mixup_reversed(images, 0.3), kExact);
    const auto box = pipeline::cutmix_box(16, 12, 0.6, 5, 4);
    expect_close("cutmix", pipeline::cutmix_reversed(d(images), box),
                 pipeline::cutmix_reversed(images, box), kExact);
  });
  run("dihedral test-time augmentation", [&] {
    std::vector<torch::Tensor> got, want;
    const auto square = images.narrow(3, 0, 12).narrow(2, 0, 12);
    for (int64_t k = 0; k < 8; ++k) {
      expect_close("dihedral " + pipeline::dihedral_name(k),
                   pipeline::dihedral_transform(d(square), k),
                   pipeline::dihedral_transform(square, k), kExact);
      want.push_back(pipeline::dihedral_transform(square.select(1, 0), k) * (k + 1));
      got.push_back(d(want.back()));
    }
    expect_close("inverted maps mean", pipeline::mean_of_inverted_maps(got),
                 pipeline::mean_of_inverted_maps(want), kExact);
    const auto fn = [](const torch::Tensor& t) { return t.mean({2, 3}); };
    expect_close("tta mean", pipeline::tta_mean(fn, d(square)), pipeline::tta_mean(fn, square),
                 kExact);
  });
}

}  // namespace

int main(int argc, char** argv) {
  const std::string device = argc > 1 ? argv[1] : "cuda";
  if (device != "cpu") {
    if (!torch::cuda::is_available()) {
      std::cout << "FAIL no CUDA device is available to this process" << std::endl;
      return 1;
    }
    std::cout << "CUDA devices: " << static_cast<int>(torch::cuda::device_count()) << std::endl;
  }
  g_device = torch::Device(device);
  std::cout << "LibTorch " << TORCH_VERSION << ", checking " << g_device << " against the CPU"
            << std::endl;

  const auto cfg = [](const std::string& arch) {
    vision::ImageModelConfig c;
    c.arch = arch;
    return c;
  };
  check_image_model("small_cnn", cfg("small_cnn"), 64);
  check_image_model("resnet18", cfg("resnet18"), 64);
  check_image_model("attn_small", cfg("attn_small"), 64);
  check_image_model("attn_resnet18", cfg("attn_resnet18"), 64);
  check_image_model("attn_vgg16", cfg("attn_vgg16"), 64);
  check_image_model("vit_mini_patch8", cfg("vit_mini_patch8"), 64);
  auto spt = cfg("vit_mini_patch8");
  spt.shifted_patches = true;
  spt.locality_attention = true;
  check_image_model("vit_mini_patch8 SPT+LSA", spt, 64);
  auto tiny = cfg("vit_tiny_patch16");
  tiny.image_size = 64;
  check_image_model("vit_tiny_patch16 at 64 px", tiny, 64);

  for (const auto& name : {"gru", "gru-additive", "gru-dot", "gru-general", "gru-crf",
                           "lstm-additive", "lstm-crf", "transformer"})
    check_seq2seq(name);

  check_training_loop("adamw");
  check_training_loop("sgd");
  check_image_functions();

  std::cout << (g_failed == 0 ? "PASSED" : "FAILED") << ": " << g_passed << " checks passed, "
            << g_failed << " failed (" << g_device << " against the CPU)" << std::endl;
  return g_failed == 0 ? 0 : 1;
}
