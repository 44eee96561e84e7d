// The JSON-configured pipeline: round trip, strict parsing, and that it runs the steps it
// says it runs.

#include <fstream>

#include <torch/torch.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "attnscope/error.h"
#include "preprocessing/pipeline.h"
#include "preprocessing/steps.h"
#include "test_support.h"

namespace attnscope::preprocessing {
namespace {

using nlohmann::json;

const json kConfig = json::parse(R"({
  "steps": [
    {"op": "center_crop", "ratio": 0.8},
    {"op": "hair_removal", "kernel": 9},
    {"op": "shades_of_gray"},
    {"op": "resize", "size": 32}
  ],
  "augment": {"hflip": 0.5, "brightness": 0.1},
  "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
})");

cv::Mat random_image(int w, int h, uint64_t seed) {
  cv::Mat img(h, w, CV_8UC3);
  cv::RNG(seed).fill(img, cv::RNG::UNIFORM, 0, 256);
  return img;
}

std::string error_of(const json& config) {
  try {
    Pipeline::from_json(config);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Pipeline, JsonRoundTripKeepsEveryParameter) {
  const auto p = Pipeline::from_json(kConfig);
  const auto j = p.to_json();
  EXPECT_EQ(Pipeline::from_json(j).to_json(), j);
  ASSERT_EQ(j["steps"].size(), 4u);
  EXPECT_EQ(j["steps"][1]["kernel"], 9);
  EXPECT_EQ(j["steps"][1]["threshold"], 10);  // default filled in
  EXPECT_EQ(j["steps"][2]["p"], 6.0);
  EXPECT_EQ(j["augment"]["hflip"], 0.5);
  EXPECT_EQ(j["normalize"]["std"][0], 0.25);
  EXPECT_EQ(j["decode"]["max_pixels"], 100000000);
}

TEST(Pipeline, DefaultIsResize224WithImageNetNormalisation) {
  const Pipeline p;
  ASSERT_EQ(p.steps().size(), 1u);
  EXPECT_EQ(p.steps()[0]->to_json(),
            json::parse(R"({"op":"resize","size":224,"mode":"crop","pad":[0,0,0]})"));
  EXPECT_FLOAT_EQ(p.normalization().mean[0], 0.485f);
  EXPECT_FALSE(p.augment_options().any());
  EXPECT_EQ(Pipeline::from_json(json::object()).to_json(), p.to_json());
  EXPECT_TRUE(Pipeline::from_json({{"steps", json::array()}}).steps().empty());
}

// decode.reduce_to: read, kept in the JSON when set, absent when not (configs stored in older
// checkpoints and results files compare as before), range-checked.
TEST(Pipeline, DecodeReduceToIsReadKeptAndChecked) {
  const auto p = Pipeline::from_json({{"decode", {{"reduce_to", 224}}}});
  EXPECT_EQ(p.decode_options().reduce_to, 224);
  EXPECT_EQ(p.to_json()["decode"]["reduce_to"], 224);
  EXPECT_EQ(Pipeline::from_json(p.to_json()).to_json(), p.to_json());
  EXPECT_EQ(Pipeline().decode_options().reduce_to, 0);
  EXPECT_FALSE(Pipeline().to_json()["decode"].contains("reduce_to"));
  EXPECT_NE(error_of({{"decode", {{"reduce_to", -1}}}}).find("reduce_to"), std::string::npos);
  EXPECT_NE(error_of({{"decode", {{"reduce_to", "big"}}}}).find("reduce_to"), std::string::npos);
  EXPECT_NE(error_of({{"decode", {{"reduce_to", 1e9}}}}).find("reduce_to"), std::string::npos);
}

TEST(Pipeline, StrictParsingNamesTheProblem) {
  EXPECT_NE(error_of({{"stepz", json::array()}}).find("stepz"), std::string::npos);
  EXPECT_NE(error_of({{"steps", {{{"op", "sharpen"}}}}}).find("unknown step 'sharpen'"),
            std::string::npos);
  EXPECT_NE(error_of({{"steps", {{{"op", "resize"}, {"sise", 3}}}}}).find("sise"),
            std::string::npos);
  EXPECT_NE(error_of({{"steps", {{{"op", "resize"}, {"size", "big"}}}}}).find("size"),
            std::string::npos);
  EXPECT_NE(error_of({{"steps", {{{"op", "hair_removal"}, {"kernel", 4}}}}}).find("kernel"),
            std::string::npos);
  EXPECT_NE(error_of({{"augment", {{"hflip", 2}}}}).find("probabilities"), std::string::npos);
  EXPECT_NE(error_of({{"normalize", {{"std", {1, 0, 1}}}}}).find("std"), std::string::npos);
  // A gamma past 10 makes every pixel above black white (1e308 was taken).
  EXPECT_NE(error_of({{"steps", {{{"op", "shades_of_gray"}, {"gamma", 1e308}}}}})
                .find("gamma: must be in [0, 10] (0 = off), got 1e+308"),
            std::string::npos)
      << error_of({{"steps", {{{"op", "shades_of_gray"}, {"gamma", 1e308}}}}});
  EXPECT_EQ(error_of({{"steps", {{{"op", "shades_of_gray"}, {"gamma", 2.2}}}}}), "");
}

// Configs that crashed or passed garbage on: 100,000 nested brackets (dump() overflowed the
// stack), a 1 MB value quoted whole, numbers outside their type or range stored as garbage.
TEST(Pipeline, HostileConfigsAreOneShortLine) {
  // Parsed from text as a config file is (nlohmann's parser and destructor do not recurse);
  // building it with initializer lists copies it recursively and overflowed a smaller stack.
  const auto deep =
      json::parse("{\"steps\": " + std::string(100000, '[') + std::string(100000, ']') + "}");
  EXPECT_NE(error_of(deep).find("nested deeper than 64 levels"), std::string::npos);
  const auto big = error_of({{"steps", {std::string(1000000, 'x')}}});
  EXPECT_NE(big.find("bytes)"), std::string::npos) << big.substr(0, 300);
  EXPECT_LT(big.size(), 1000u);
  EXPECT_NE(
      error_of({{"steps", {{{"op", "resize"}, {"size", 32}, {"pad", {1e308, 0, 0}}}}}}).find("pad"),
      std::string::npos);
  EXPECT_NE(
      error_of({{"steps", {{{"op", "resize"}, {"size", 32}, {"pad", {0, 0, 256}}}}}}).find("pad"),
      std::string::npos);
  EXPECT_NE(error_of({{"steps", {{{"op", "resize"}, {"size", 32}, {"pad", {0, 0}}}}}}).find("pad"),
            std::string::npos);
  EXPECT_NE(error_of({{"normalize", {{"mean", {1e308, 0, 0}}}}}).find("mean"), std::string::npos);
  // Positive but so small that x / std overflows float32 (it gave NaN losses in train).
  EXPECT_NE(error_of({{"normalize", {{"std", {1e-40, 1, 1}}}}}).find("normalize.std must be in"),
            std::string::npos);
  EXPECT_NE(error_of({{"normalize", {{"std", {1, 1e30, 1}}}}}).find("normalize.std must be in"),
            std::string::npos);
  // Quoted as written, not as float32 rounds it ("got 0").
  EXPECT_NE(error_of({{"normalize", {{"std", {1e-300, 1, 1}}}}})
                .find("normalize.std must be in [1e-6, 1000], got 1e-300"),
            std::string::npos);
  EXPECT_NE(error_of({{"decode", {{"max_pixels", 300000000}}}}).find("max_pixels"),
            std::string::npos);
  EXPECT_NE(error_of({{"steps", {{{"op", "hair_removal"}, {"inpaint_radius", 21}}}}})
                .find("inpaint_radius"),
            std::string::npos);
  EXPECT_EQ(error_of({{"steps", {{{"op", "hair_removal"}, {"inpaint_radius", 20}}}}}), "");
}

// Crop mode on a source more elongated than 2:1 keeps its centre 2:1 box before scaling (a
// 1 x 20000 strip made a 224 x 4.5M intermediate): the result is OpenCV's scale-then-crop of
// the whole source within a grey level or two (3:1 noise image), and exact on a flat strip.
TEST(Pipeline, ResizeCropOfAnElongatedImageMatchesScaleThenCrop) {
  cv::Mat wide(60, 180, CV_8UC3);
  cv::RNG(4).fill(wide, cv::RNG::UNIFORM, 0, 256);
  cv::GaussianBlur(wide, wide, {0, 0}, 2.0);
  ResizeOptions o;
  o.size = 32;
  const auto got = resize(wide, o, nullptr);
  cv::Mat scaled, reference;
  cv::resize(wide, scaled, {96, 32}, 0, 0, cv::INTER_AREA);
  reference = scaled(cv::Rect(32, 0, 32, 32));
  ASSERT_EQ(got.size(), reference.size());
  cv::Mat diff;
  cv::absdiff(got, reference, diff);
  EXPECT_LE(cv::mean(diff)[0], 2.0);
  const cv::Mat strip(1, 20000, CV_8UC3, cv::Scalar(10, 120, 230));
  const auto flat = resize(strip, o, nullptr);
  EXPECT_EQ(flat.size(), cv::Size(32, 32));
  EXPECT_EQ(cv::norm(flat, cv::Mat(32, 32, CV_8UC3, cv::Scalar(10, 120, 230)), cv::NORM_INF), 0);
}

TEST(Pipeline, ProcessRunsTheStepsInOrder) {
  const auto p = Pipeline::from_json(kConfig);
  const auto img = random_image(90, 60, 1);
  cv::Mat mask(60, 90, CV_8UC1, cv::Scalar(255));
  const auto out = p.process(img, mask);
  // The same steps called directly.
  auto expected = center_crop(img, {0.8});
  expected = remove_hair(expected, {9, 10, 3.0});
  expected = shades_of_gray(expected, {});
  expected = resize(expected, {32});
  EXPECT_EQ(cv::norm(out.image, expected, cv::NORM_INF), 0.0);
  EXPECT_EQ(out.mask.size(), cv::Size(32, 32));
  EXPECT_EQ(cv::countNonZero(out.mask), 32 * 32);
  // No key: no augmentation, whatever the config says; a key: augmentation.
  EXPECT_EQ(cv::norm(p.process(img).image, expected, cv::NORM_INF), 0.0);
  int changed = 0;
  for (int i = 0; i < 8; ++i) {
    const AugmentKey key{1, i, 0};
    changed += cv::norm(p.process(img, {}, &key).image, expected, cv::NORM_INF) > 0;
  }
  EXPECT_EQ(changed, 8);  // brightness jitter changes every image
}

TEST(Pipeline, ProcessNeverModifiesItsInputs) {
  Pipeline p = Pipeline::from_json({{"steps", json::array()}, {"augment", {{"hflip", 1.0}}}});
  const auto img = random_image(16, 16, 2);
  const auto copy = img.clone();
  const AugmentKey key{1, 0, 0};
  const auto out = p.process(img, {}, &key);
  EXPECT_EQ(cv::norm(img, copy, cv::NORM_INF), 0.0);
  EXPECT_GT(cv::norm(out.image, copy, cv::NORM_INF), 0.0);
}

TEST(Pipeline, StagesNameEveryStep) {
  const auto p = Pipeline::from_json(kConfig);
  const auto stages = p.stages(random_image(90, 60, 3));
  std::vector<std::string> names;
  for (const auto& [name, image] : stages)
    names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"input", "center_crop", "hair_removal",
                                             "shades_of_gray", "resize"}));
  EXPECT_EQ(stages.back().second.size(), cv::Size(32, 32));
}

TEST(Pipeline, TensorUsesTheConfiguredNormalisation) {
  const auto p = Pipeline::from_json(kConfig);
  cv::Mat img(2, 2, CV_8UC3, cv::Scalar(255, 0, 51));
  const auto t = p.tensor(img);
  EXPECT_NEAR(t[0][0][0].item<float>(), (1.0 - 0.5) / 0.25, 1e-5);
  EXPECT_NEAR(t[1][0][0].item<float>(), (0.0 - 0.5) / 0.25, 1e-5);
  EXPECT_NEAR(t[2][1][1].item<float>(), (0.2 - 0.5) / 0.25, 1e-5);
}

TEST(Pipeline, FromFileReportsBadJsonWithThePath) {
  test::TempDir dir;
  std::ofstream(dir / "bad.json") << "{\"steps\": [";
  try {
    Pipeline::from_file(dir / "bad.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.subject(), dir / "bad.json");
  }
  std::ofstream(dir / "ok.json") << kConfig.dump();
  EXPECT_EQ(Pipeline::from_file(dir / "ok.json").to_json(), Pipeline::from_json(kConfig).to_json());
  // A second config pasted after the first, or words after it: the whole file must be one
  // value (`in >> config` read the first and dropped the rest).
  std::ofstream(dir / "two.json") << kConfig.dump() << " " << kConfig.dump() << " garbage";
  const auto two = test::error_of([&] { Pipeline::from_file(dir / "two.json"); });
  EXPECT_EQ(two.rfind(dir / "two.json" + ": preprocessing config is not valid JSON: ", 0), 0u)
      << two;
  // A key given twice: the last one won without a word.
  std::ofstream(dir / "dup.json")
      << R"({"steps": [{"op": "resize", "size": 32}], "steps": [{"op": "resize", "size": 48}]})";
  EXPECT_EQ(test::error_of([&] { Pipeline::from_file(dir / "dup.json"); }),
            dir / "dup.json" +
                ": preprocessing config gives the key \"steps\" twice in one object (JSON keeps "
                "only the last)");
}

TEST(ToTensorInto, FillsABatchSliceLikeToTensor) {
  const auto img = random_image(6, 4, 4);
  auto batch = torch::zeros({2, 3, 4, 6});
  to_tensor_into(img, batch[1]);
  EXPECT_TRUE(torch::equal(batch[1], to_tensor(img)));
  EXPECT_EQ(batch[0].abs().sum().item<float>(), 0.0f);
  EXPECT_THROW(to_tensor_into(img, batch[1].transpose(1, 2)), Error);
}

TEST(ChannelStats, HalfBlackHalfWhiteHasMeanAndStdOneHalf) {
  cv::Mat img(10, 10, CV_8UC3, cv::Scalar(0, 0, 0));
  img(cv::Rect(0, 0, 10, 5)).setTo(cv::Scalar(255, 255, 255));
  ChannelStats stats;
  stats.add(img);
  stats.add(img);
  const auto n = stats.result();
  EXPECT_EQ(stats.pixels(), 200);
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(n.mean[c], 0.5, 1e-6);
    EXPECT_NEAR(n.std[c], 0.5, 1e-6);
  }
}

}  // namespace
}  // namespace attnscope::preprocessing
