// Helpers of bench/classify_bench.sh (not a Google Benchmark suite):
//   bench_classify checkpoint ARCH SIZE OUT.h5   untrained checkpoint with a SIZE px resize
//   bench_classify gradcam CKPT BATCH IMAGES     the same with Grad-CAM on the trunk's features
//   bench_classify forward CKPT BATCH IMAGES     model-forward-only images/s at BATCH, on
//                                                random inputs (what classify's inference
//                                                stage does without decoding or writing),
//                                                with attnscope's threads: every core (or
//                                                ATTNSCOPE_THREADS) and its OpenMP spin limit
//                                                and BatchNorm folded as classify folds
//                                                it (FOLD_BN=0: the model as it is)

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>

#include <torch/torch.h>

#include "models/vision/explain.h"
#include "pipeline/vision/image_model_config.h"
#include "runtime/runtime.h"
#include "runtime/tensor_cache.h"

using namespace attnscope;

int main(int argc, char** argv) {
  // Before any thread runs (it calls setenv): the re-execution below may add the tunable.
  attnscope::runtime::take_back_heap_huge_pages();
  const std::string what = argc > 1 ? argv[1] : "";
  if (what == "checkpoint" && argc == 5) {
    torch::manual_seed(0);
    models::vision::ImageModelConfig config;
    config.arch = argv[2];
    config.image_size = std::stoll(argv[3]);
    auto model = models::vision::make_image_classifier(config);
    pipeline::CheckpointMeta meta;
    meta.class_names = {"benign", "malignant"};
    meta.preprocessing_config = {{"steps", {{{"op", "resize"}, {"size", config.image_size}}}}};
    pipeline::save_image_classifier(argv[4], *model, models::vision::resolve_image_config(config),
                                    meta);
    return 0;
  }
  if (what == "load" && argc == 3) {
    // Start-up cost of a checkpoint: the check in a child process, building the model (its
    // random initialisation included), then reading the weights into it; seconds each.
    using clock = std::chrono::steady_clock;
    const auto seconds = [](clock::time_point a, clock::time_point b) {
      return std::chrono::duration<double>(b - a).count();
    };
    const auto t0 = clock::now();
    pipeline::verify_checkpoint(argv[2]);
    const auto t1 = clock::now();
    const auto meta = pipeline::read_checkpoint_meta(argv[2]);
    auto model = models::vision::make_image_classifier(models::vision::resolve_image_config(
        pipeline::image_model_config_from_json(meta.model_config)));
    const auto t2 = clock::now();
    pipeline::load_checkpoint(argv[2], *model);
    const auto t3 = clock::now();
    std::printf("check %.3f build %.3f weights %.3f\n", seconds(t0, t1), seconds(t1, t2),
                seconds(t2, t3));
    return 0;
  }
  if ((what == "forward" || what == "gradcam") && argc == 5) {
    // The threads `attnscope` itself runs with (its --threads default 0 = every core), so that
    // forward-only and classify are compared at the same thread count.
    const char* env = std::getenv("ATTNSCOPE_THREADS");
    const int threads = env ? std::atoi(env) : 0;
    runtime::limit_idle_spinning(threads > 0 ? threads : runtime::available_cores(), argv);
    runtime::set_threads(threads);
    runtime::keep_freed_memory_for_reuse();  // and its malloc settings (docs/architecture.md)
    runtime::cache_tensor_memory_by_default();  // and its tensor cache
    auto loaded = pipeline::load_image_classifier(argv[2]);
    auto& model = *loaded.model;
    model.eval();
    // As classify and evaluate do; FOLD_BN=0 measures the model with its BatchNorm passes.
    const char* fold = std::getenv("FOLD_BN");
    if (!fold || std::string(fold) != "0") model.fold_batch_norm();
    const int64_t batch = std::stoll(argv[3]), images = std::stoll(argv[4]);
    const int64_t side = loaded.config.image_size > 0 ? loaded.config.image_size : 224;
    const auto x = torch::randn({batch, 3, side, side});
    const bool vit = models::vision::is_vit(loaded.config.arch);
    {
      torch::NoGradGuard ng;
      model.forward(x, vit);  // warm-up
    }
    const auto start = std::chrono::steady_clock::now();
    int64_t done = 0;
    while (done < images) {
      if (what == "gradcam") {
        // classify's inference stage with its default maps: one trunk pass, one head pass
        // with autograd, Grad-CAM from it.
        torch::NoGradGuard ng;
        const auto f = model.forward_features(x, vit);
        const auto head = models::vision::forward_head_for_grad_cam(model, f);
        models::vision::grad_cam(head, head.output.logits.detach().argmax(1));
      } else {
        torch::NoGradGuard ng;
        model.forward(x, vit);
      }
      done += batch;
    }
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("%.2f\n", static_cast<double>(done) / s);
    return 0;
  }
  std::cerr << "usage: bench_classify checkpoint ARCH SIZE OUT.h5 | load CKPT | forward|gradcam CKPT BATCH IMAGES\n";
  return 2;
}
