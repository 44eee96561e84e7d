// attnscope dist-check: joins the data-parallel group the launcher describes and trains a tiny
// model in lockstep on generated data. A setup check before a long `train` run (does every
// rank reach the master, do they agree, how long does an all-reduce take), a benchmark of
// the gradient all-reduce for any image preset, and the driver of the distributed tests.

#include <time.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "cli.h"
#include "distributed_flags.h"
#include "models/vision/presets.h"
#include "pipeline/distributed.h"
#include "runtime/runtime.h"

namespace attnscope::cli {
namespace {

using Clock = std::chrono::steady_clock;

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// FNV-1a over the raw bytes of every parameter: equal digests = bit-identical weights.
std::string digest(const std::vector<at::Tensor>& tensors) {
  uint64_t h = 1469598103934665603ULL;
  for (const auto& t : tensors) {
    const at::Tensor c = t.detach().contiguous();
    const auto* p = static_cast<const unsigned char*>(c.data_ptr());
    for (std::size_t i = 0; i < c.nbytes(); ++i) {
      h ^= p[i];
      h *= 1099511628211ULL;
    }
  }
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(h));
  return out;
}

struct Flags {
  std::string model = "mlp";
  int64_t image_size = 0;
  int64_t samples = 96;
  int64_t global_batch = 16;
  int64_t epochs = 3;
  int64_t max_steps = 0;
  double lr = 0.05;
  uint64_t seed = 1;
  std::string out_dir;
  bool benchmark = false;
};

// The model: a two-layer MLP on 8 features (tests), or an image preset (benchmark).
struct Net {
  torch::nn::Sequential mlp = nullptr;
  std::shared_ptr<models::vision::ImageClassifier> image;
  torch::nn::Module& module() {
    return image ? static_cast<torch::nn::Module&>(*image) : *mlp.ptr();
  }
  at::Tensor forward(const at::Tensor& x) {
    return image ? image->forward(x).logits : mlp->forward(x);
  }
};

// `announce`: set while this process is one rank of several that has not joined the group
// yet (run_dist_check_or_announce); reset once the group forms.
int run_dist_check(const std::vector<std::string>& args,
                   std::optional<pipeline::DistributedConfig>& announce) {
  Flags f;
  DistributedFlags dist;
  po::options_description desc("Options");
  // clang-format off
  desc.add_options()
      ("model", po::value(&f.model)->default_value("mlp"),
       "mlp (8 features, 2 layers) or an image preset (attn_small, attn_resnet18, ...)")
      ("image-size", po::value(&f.image_size)->default_value(0),
       "side of the generated images for an image preset; 0 = the preset's")
      ("samples", po::value(&f.samples)->default_value(96), "generated training samples")
      ("global-batch", po::value(&f.global_batch)->default_value(16),
       "samples per step over all ranks together")
      ("epochs", po::value(&f.epochs)->default_value(3), "epochs")
      ("max-steps", po::value(&f.max_steps)->default_value(0),
       "stop each epoch after this many steps; 0 = the whole epoch")
      ("lr", po::value(&f.lr)->default_value(0.05, shown(0.05)), "SGD learning rate (momentum 0.9)")
      ("seed", po::value(&f.seed)->default_value(1), "seed of the data, the model and the order")
      ("out-dir", po::value(&f.out_dir)->default_value(""),
       "each rank writes rank<r>.json here (losses, weight digests, validation scores) and "
       "rank<r>.started after its first step")
      ("benchmark", po::bool_switch(&f.benchmark),
       "rank 0 prints images/s and the time per step spent in the all-reduce (first step "
       "excluded)");
  // clang-format on
  dist.add_to(desc);
  po::variables_map vm;
  if (!parse("dist-check [options]  (under torchrun, srun or with RANK, WORLD_SIZE, "
             "MASTER_ADDR, MASTER_PORT set)",
             desc, args, vm))
    return 0;
  // No epoch, nothing checked: a check that trained nothing does not report success.
  if (f.samples < 1 || f.global_batch < 1 || f.epochs < 1 || f.max_steps < 0)
    throw UsageError("--samples, --global-batch and --epochs must be >= 1, --max-steps >= 0",
                     usage_text("dist-check [options]", desc));
  if (!(std::isfinite(f.lr) && f.lr > 0 && f.lr <= 1000))  // NaN fails every comparison
    throw UsageError(concat("--lr must be in (0, 1000], got ", f.lr),
                     usage_text("dist-check [options]", desc));
  // A check of the setup, not a training run: sizes that fit in memory.
  if (f.samples > 1'000'000 || f.image_size < 0 || f.image_size > 1024)
    throw UsageError("--samples must be at most 1000000 and --image-size in [0, 1024]",
                     usage_text("dist-check [options]", desc));

  if (!f.out_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(f.out_dir, ec);
    check(std::filesystem::is_directory(f.out_dir), f.out_dir, "cannot create the folder",
          ec ? concat(" (", ec.message(), ")") : std::string());
  }
  // Data and model: identical on every rank (same seed); the broadcast below makes the
  // weights identical even if they were not.
  torch::manual_seed(static_cast<int64_t>(f.seed));
  Net net;
  at::Tensor x, y, val_x, val_y;
  const int64_t val_n = std::max<int64_t>(f.samples / 4, 1);
  if (f.model == "mlp") {
    net.mlp = torch::nn::Sequential(torch::nn::Linear(8, 16), torch::nn::Tanh(),
                                    torch::nn::Linear(16, 3));
    const at::Tensor truth = torch::randn({8, 3});
    x = torch::randn({f.samples, 8});
    y = x.matmul(truth).argmax(1);
    val_x = torch::randn({val_n, 8});
    val_y = val_x.matmul(truth).argmax(1);
  } else {
    models::vision::ImageModelConfig config;
    config.arch = f.model;
    config.image_size = f.image_size;
    try {
      config = models::vision::resolve_image_config(config);
      net.image = models::vision::make_image_classifier(config);
    } catch (const Error& e) {  // an unknown preset, a size it cannot take: the flags' fault
      throw UsageError(concat("--model ", f.model, ": ", e.what()),
                       usage_text("dist-check [options]", desc));
    }
    const int64_t side = config.image_size;
    // One forward pass on a blank image, so a side too small for the network is said before
    // the ranks meet, not as LibTorch's reason from inside the first step.
    try {
      torch::NoGradGuard no_grad;
      net.image->eval();
      (void)net.forward(torch::zeros({1, 3, side, side}));
    } catch (const c10::Error& e) {
      throw UsageError(concat("--model ", f.model, " cannot classify ", side, " x ", side,
                              " images (--image-size): ", e.what_without_backtrace()),
                       usage_text("dist-check [options]", desc));
    } catch (const Error& e) {
      throw UsageError(concat("--model ", f.model, " cannot classify ", side, " x ", side,
                              " images (--image-size): ", e.what()),
                       usage_text("dist-check [options]", desc));
    }
    x = torch::randn({f.samples, 3, side, side});
    y = torch::randint(0, config.num_classes, {f.samples});
    val_x = torch::randn({val_n, 3, side, side});
    val_y = torch::randint(0, config.num_classes, {val_n});
  }
  // The ranks meet once the flags have passed every check of their own.
  const auto dist_config = dist.config();
  if (dist_config.world_size > 1)
    announce = dist_config;
  else
    announce.reset();
  if (dist_config.world_size > 1) pipeline::DistributedGroup::check_interfaces(dist_config);
  announce.reset();  // from here on the group names a rank that stops
  pipeline::DistributedGroup group(dist_config);
  const int rank = group.rank();
  const int world = group.world_size();
  group.check_same("the model", f.model + " " + std::to_string(f.image_size));
  group.check_same("the data",
                   concat(f.samples, " samples, global batch ", f.global_batch, ", seed ", f.seed));
  // Another step count on one rank left the other waiting out --dist-timeout in an all-reduce;
  // another learning rate gave other weights on each rank, reported as a success.
  char lr_text[32];
  std::snprintf(lr_text, sizeof lr_text, "%.17g", f.lr);
  group.check_same("the training (--epochs, --max-steps, --lr)",
                   concat("--epochs ", f.epochs, " --max-steps ", f.max_steps, " --lr ", lr_text));
  group.broadcast_module(net.module());
  std::vector<at::Tensor> params = net.module().parameters();
  pipeline::GradientReducer reducer(group, params);
  torch::optim::SGD optimizer(params, torch::optim::SGDOptions(f.lr).momentum(0.9));

  nlohmann::json report;
  report["rank"] = rank;
  report["world_size"] = world;
  report["gradient_bytes"] = reducer.gradient_bytes();
  report["buckets"] = reducer.buckets();
  report["losses"] = nlohmann::json::array();
  report["epochs"] = nlohmann::json::array();
  const auto write_report = [&] {
    if (f.out_dir.empty()) return;
    write_file_atomically(f.out_dir + "/rank" + std::to_string(rank) + ".json",
                          report.dump(1) + "\n");
  };

  int64_t steps = 0, timed_steps = 0, timed_images = 0;
  double timed_seconds = 0.0, timed_reduce = 0.0, timed_cpu = 0.0;
  try {
    for (int64_t epoch = 0; epoch < f.epochs; ++epoch) {
      net.module().train();
      // The epoch's order: a function of (seed, epoch) only, so every rank computes the same.
      auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(f.seed * 1000003 + epoch));
      const at::Tensor perm = torch::randperm(f.samples, gen, torch::kInt64);
      std::vector<std::size_t> order(perm.data_ptr<int64_t>(),
                                     perm.data_ptr<int64_t>() + f.samples);
      const auto batches = pipeline::shard_batches(order, f.global_batch, rank, world);
      int64_t step_in_epoch = 0;
      for (const auto& batch : batches) {
        if (f.max_steps > 0 && step_in_epoch >= f.max_steps) break;
        const auto start = Clock::now();
        const double cpu_start = process_cpu_seconds();
        const double reduce_before = reducer.seconds();
        optimizer.zero_grad();
        double loss_value = 0.0;
        if (!batch.empty()) {
          const at::Tensor idx =
              torch::tensor(std::vector<int64_t>(batch.begin(), batch.end()), torch::kInt64);
          const at::Tensor loss = torch::nn::functional::cross_entropy(
              net.forward(x.index_select(0, idx)), y.index_select(0, idx));
          loss.backward();
          loss_value = loss.item<double>();
        }
        const auto totals = reducer.reduce(static_cast<int64_t>(batch.size()), loss_value);
        if (totals.samples > 0) optimizer.step();
        report["losses"].push_back(totals.mean_loss);
        ++steps;
        ++step_in_epoch;
        if (steps > 1) {  // the first step warms up allocators and connections
          ++timed_steps;
          timed_images += totals.samples;
          timed_seconds += std::chrono::duration<double>(Clock::now() - start).count();
          timed_reduce += reducer.seconds() - reduce_before;
          timed_cpu += process_cpu_seconds() - cpu_start;
        }
        if (steps == 1 && !f.out_dir.empty())
          write_file_atomically(f.out_dir + "/rank" + std::to_string(rank) + ".started", "1\n");
      }
      // Buffers (BatchNorm statistics) follow rank 0, as PyTorch's DDP does.
      std::vector<at::Tensor> buffers = net.module().buffers();
      group.broadcast(buffers);
      // Validation on the full set: each rank scores its share, the scores are gathered.
      net.module().eval();
      const auto mine = pipeline::shard_indices(val_n, rank, world);
      at::Tensor logits;
      {
        torch::NoGradGuard no_grad;
        const at::Tensor idx = torch::tensor(mine, torch::kInt64);
        logits = net.forward(val_x.index_select(0, idx));
      }
      const at::Tensor all = group.gather_by_index(mine, logits, val_n);
      const double val_loss = torch::nn::functional::cross_entropy(all, val_y).item<double>();
      const double val_acc = all.argmax(1).eq(val_y).to(torch::kFloat64).mean().item<double>();
      nlohmann::json e;
      e["epoch"] = epoch;
      e["digest"] = digest(params);
      e["val_loss"] = val_loss;
      e["val_accuracy"] = val_acc;
      if (f.model == "mlp") {
        std::vector<double> flat;
        for (const auto& p : params) {
          const at::Tensor c = p.detach().to(torch::kFloat64).contiguous().reshape({-1});
          flat.insert(flat.end(), c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
        }
        e["weights"] = flat;
      }
      report["epochs"].push_back(e);
      write_report();
      // What the check is for: after every epoch, the ranks hold bit-identical weights.
      group.check_same(concat("the weights' digest after epoch ", epoch + 1),
                       e["digest"].get<std::string>());
    }
    group.finish();
  } catch (const std::exception& e) {
    group.report_failure(e.what());
    throw;
  }

  if (f.benchmark && rank == 0) {
    nlohmann::json b;
    b["model"] = f.model;
    b["world_size"] = world;
    b["threads"] = runtime::threads();
    b["global_batch"] = f.global_batch;
    b["timed_steps"] = timed_steps;
    b["images_per_s"] = timed_seconds > 0 ? static_cast<double>(timed_images) / timed_seconds : 0.0;
    b["step_ms"] =
        timed_steps > 0 ? 1000.0 * timed_seconds / static_cast<double>(timed_steps) : 0.0;
    b["allreduce_ms_per_step"] =
        timed_steps > 0 ? 1000.0 * timed_reduce / static_cast<double>(timed_steps) : 0.0;
    b["cpu_ms_per_step"] =
        timed_steps > 0 ? 1000.0 * timed_cpu / static_cast<double>(timed_steps) : 0.0;
    b["gradient_bytes"] = reducer.gradient_bytes();
    std::cout << b.dump() << "\n";
  } else if (rank == 0 && !f.benchmark) {
    std::cout << "dist-check: " << world << " rank(s) trained " << steps
              << " steps in lockstep; gradient " << reducer.gradient_bytes() << " bytes in "
              << reducer.buckets() << " bucket(s); weights digest "
              << (report["epochs"].empty() ? std::string("-")
                                           : report["epochs"].back()["digest"].get<std::string>())
              << "\n";
  }
  return 0;
}

// A rank that stops before the group forms (a flag the others lack, an --out-dir it cannot
// make, a GLOO_SOCKET_IFNAME its machine lacks) prints its line and tells the others through
// the store, as train does, instead of leaving them to wait out --dist-timeout.
int run_dist_check_or_announce(const std::vector<std::string>& args, const GlobalOptions&) {
  std::optional<pipeline::DistributedConfig> announce = DistributedFlags::quiet_config(args);
  try {
    return run_dist_check(args, announce);
  } catch (const std::exception&) {
    DistributedFlags::announce_current_error(announce);
  }
}

const Registration kDistCheck(
    "dist-check", "check a data-parallel setup (torchrun/Slurm) with a tiny lockstep training",
    run_dist_check_or_announce);

}  // namespace
}  // namespace attnscope::cli
