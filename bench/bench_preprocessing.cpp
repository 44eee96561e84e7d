// Time per preprocessing step on a 1024 × 768 dermoscopy-like image (synthetic, so the
// benchmark needs no data), plus decoding the same image from JPEG and the tensor conversion.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/photo.hpp>

#include "bench/bench_support.h"
#include "datasets/synthetic.h"
#include "preprocessing/augment.h"
#include "preprocessing/decode.h"
#include "preprocessing/inpaint.h"
#include "preprocessing/pipeline.h"
#include "preprocessing/steps.h"
#include "preprocessing/tensor.h"

namespace pp = attnscope::preprocessing;

namespace {

// A 1024 × 768 RGB image: a synthetic lesion (with hairs) stretched to 4:3.
const cv::Mat& image() {
  static const cv::Mat img = [] {
    attnscope::datasets::SyntheticOptions o;
    o.size = 1024;
    o.hair_probability = 1.0;
    cv::Mat out;
    cv::resize(attnscope::datasets::make_synthetic(o, 1, 0).image, out, {1024, 768}, 0, 0,
               cv::INTER_AREA);
    return out;
  }();
  return img;
}

// The image above as a quality-90 JPEG.
std::vector<uint8_t> jpeg_of_image() {
  cv::Mat bgr;
  cv::cvtColor(image(), bgr, cv::COLOR_RGB2BGR);
  std::vector<uint8_t> jpeg;
  cv::imencode(".jpg", bgr, jpeg, {cv::IMWRITE_JPEG_QUALITY, 90});
  return jpeg;
}

void BM_DecodeJpeg(benchmark::State& state) {
  const auto jpeg = jpeg_of_image();
  for (auto _ : state)
    benchmark::DoNotOptimize(pp::decode_image_bytes(jpeg, "bench.jpg"));
}
BENCHMARK(BM_DecodeJpeg)->Unit(benchmark::kMillisecond);

// OpenCV's decode alone (BGR, no checks): what decode_image_bytes adds is the difference.
void BM_DecodeJpegOpenCvOnly(benchmark::State& state) {
  const auto jpeg = jpeg_of_image();
  for (auto _ : state)
    benchmark::DoNotOptimize(cv::imdecode(jpeg, cv::IMREAD_COLOR));
}
BENCHMARK(BM_DecodeJpegOpenCvOnly)->Unit(benchmark::kMillisecond);

// A full-size ISIC 2019/2020 photograph is up to 6000 × 4000. Decoding it and resizing to the
// model's 224 px, against libjpeg's DCT-domain reduction (1/2, 1/4, 1/8; OpenCV's
// IMREAD_REDUCED_COLOR_*, the same scaled IDCT attnscope's decoder could request) followed by
// the same resize: the cost per image that decides classify's speed on such photographs.
// Arg: the reduction (1 = full size). The JPEG is the synthetic image above upscaled.
void BM_DecodeAndResize6000x4000(benchmark::State& state) {
  static const std::vector<uint8_t> jpeg = [] {
    cv::Mat big;
    cv::resize(image(), big, {6000, 4000}, 0, 0, cv::INTER_CUBIC);
    std::vector<uint8_t> out;
    cv::imencode(".jpg", big, out, {cv::IMWRITE_JPEG_QUALITY, 90});
    return out;
  }();
  const int reduce = static_cast<int>(state.range(0));
  const int flag = reduce == 2   ? cv::IMREAD_REDUCED_COLOR_2
                   : reduce == 4 ? cv::IMREAD_REDUCED_COLOR_4
                   : reduce == 8 ? cv::IMREAD_REDUCED_COLOR_8
                                 : cv::IMREAD_COLOR;
  for (auto _ : state) {
    const cv::Mat decoded = cv::imdecode(jpeg, flag);
    cv::Mat small;
    cv::resize(decoded, small, {299, 224}, 0, 0, cv::INTER_AREA);
    benchmark::DoNotOptimize(small.data);
  }
}
BENCHMARK(BM_DecodeAndResize6000x4000)
    ->Arg(1)
    ->Arg(2)
    ->Arg(4)
    ->Arg(8)
    ->Unit(benchmark::kMillisecond);

void BM_CenterCrop(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(pp::center_crop(image(), {0.8}));
}
BENCHMARK(BM_CenterCrop)->Unit(benchmark::kMillisecond);

void BM_Resize224(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(pp::resize(image(), {224, pp::ResizeMode::kCrop}));
}
BENCHMARK(BM_Resize224)->Unit(benchmark::kMillisecond);

void BM_Letterbox224(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(pp::resize(image(), {224, pp::ResizeMode::kLetterbox}));
}
BENCHMARK(BM_Letterbox224)->Unit(benchmark::kMillisecond);

void BM_HairRemoval(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(pp::remove_hair(image(), {}));
}
BENCHMARK(BM_HairRemoval)->Unit(benchmark::kMillisecond);

// The inpainting alone on hair_removal's default mask of the same image: ours (a heap-ordered
// front) beside OpenCV's cv::inpaint (a sorted list), which the step used before 2026-12-05.
const cv::Mat& default_hair_mask() {
  static const cv::Mat mask = pp::hair_mask(image(), {});
  return mask;
}
void BM_InpaintTelea(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(pp::inpaint_telea(image(), default_hair_mask(), 3.0));
}
BENCHMARK(BM_InpaintTelea)->Unit(benchmark::kMillisecond);
void BM_InpaintOpenCv(benchmark::State& state) {
  for (auto _ : state) {
    cv::Mat out;
    cv::inpaint(image(), default_hair_mask(), out, 3.0, cv::INPAINT_TELEA);
    benchmark::DoNotOptimize(out);
  }
}
BENCHMARK(BM_InpaintOpenCv)->Unit(benchmark::kMillisecond);

// The same two on real photographs: the first 20 isic-uda1 JPEGs (512 x 384) with
// hair_removal's default mask, whose skin-texture specks are what makes OpenCV's front slow.
struct Photo {
  cv::Mat image, mask;
};
const std::vector<Photo>& photos() {
  static const std::vector<Photo> all = [] {
    const auto files = attnscope::bench::isic_uda1_images(20);
    std::vector<Photo> out;
    for (const auto& file : files) {
      cv::Mat rgb;
      cv::cvtColor(cv::imread(file), rgb, cv::COLOR_BGR2RGB);
      out.push_back({rgb, pp::hair_mask(rgb, {})});
    }
    return out;
  }();
  return all;
}
template <bool kOpenCv>
void BM_InpaintPhotographs(benchmark::State& state) {
  if (photos().empty()) {
    state.SkipWithError(attnscope::bench::kNoData);
    return;
  }
  for (auto _ : state)
    for (const auto& p : photos()) {
      cv::Mat out;
      if (kOpenCv)
        cv::inpaint(p.image, p.mask, out, 3.0, cv::INPAINT_TELEA);
      else
        out = pp::inpaint_telea(p.image, p.mask, 3.0);
      benchmark::DoNotOptimize(out);
    }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(photos().size()));
}
BENCHMARK(BM_InpaintPhotographs<false>)
    ->Name("BM_InpaintTelea20Photographs")
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_InpaintPhotographs<true>)
    ->Name("BM_InpaintOpenCv20Photographs")
    ->Unit(benchmark::kMillisecond);

void BM_ShadesOfGray(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(pp::shades_of_gray(image(), {6.0, 0.0}));
}
BENCHMARK(BM_ShadesOfGray)->Unit(benchmark::kMillisecond);

void BM_Clahe(benchmark::State& state) {
  for (auto _ : state)
    benchmark::DoNotOptimize(pp::clahe(image(), {}));
}
BENCHMARK(BM_Clahe)->Unit(benchmark::kMillisecond);

// Every augmentation on (probability 1) on the full-size image.
void BM_AugmentAll(benchmark::State& state) {
  pp::AugmentOptions o;
  o.hflip = o.vflip = o.rot90 = o.crop = o.affine = o.blur = o.noise = o.cutout = 1.0;
  o.degrees = 15;
  o.translate = 0.05;
  o.brightness = o.contrast = o.saturation = 0.2;
  o.hue = 0.05;
  int64_t i = 0;
  for (auto _ : state) {
    cv::Mat img = image().clone();
    pp::augment(img, nullptr, o, {1, i++, 0});
    benchmark::DoNotOptimize(img);
  }
}
BENCHMARK(BM_AugmentAll)->Unit(benchmark::kMillisecond);

void BM_ToTensor(benchmark::State& state) {
  const cv::Mat img = state.range(0) == 224 ? pp::resize(image(), {224}) : image();
  for (auto _ : state)
    benchmark::DoNotOptimize(pp::to_tensor(img));
  state.SetLabel(state.range(0) == 224 ? "224x224" : "1024x768");
}
BENCHMARK(BM_ToTensor)->Arg(224)->Arg(1024)->Unit(benchmark::kMillisecond);

// The training pipeline most runs use: centre crop 0.8, hair removal, Shades of Gray, resize 224.
void BM_FullPipeline(benchmark::State& state) {
  const auto p = pp::Pipeline::from_json(nlohmann::json::parse(R"({"steps": [
    {"op": "center_crop", "ratio": 0.8}, {"op": "hair_removal"}, {"op": "shades_of_gray"},
    {"op": "resize", "size": 224}]})"));
  for (auto _ : state)
    benchmark::DoNotOptimize(p.tensor(p.process(image()).image));
}
BENCHMARK(BM_FullPipeline)->Unit(benchmark::kMillisecond);

// Synthetic image generation at 224 px (training tests generate hundreds).
void BM_Synthetic224(benchmark::State& state) {
  attnscope::datasets::SyntheticOptions o;
  int64_t i = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(attnscope::datasets::make_synthetic(o, 1, i++));
}
BENCHMARK(BM_Synthetic224)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
