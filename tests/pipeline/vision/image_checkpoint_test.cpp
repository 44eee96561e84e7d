// Image classifier checkpoints: the model_config JSON, round trips that rebuild the
// architecture, strict loading across architectures, h5py readability.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "attnscope/error.h"
#include "models/vision/presets.h"
#include "pipeline/vision/image_model_config.h"
#include "test_support.h"

namespace attnscope::pipeline {
namespace {

namespace vision = models::vision;

vision::ImageModelConfig config_of(const std::string& arch, int64_t classes = 2) {
  vision::ImageModelConfig c;
  c.arch = arch;
  c.num_classes = classes;
  return c;
}

std::string load_error(const std::string& path, torch::nn::Module& model) {
  try {
    load_checkpoint(path, model);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ImageModelConfig, JsonRoundTripKeepsOverrides) {
  auto c = config_of("attn_small", 3);
  c.compatibility = "dp";
  c.normalizer = "sigmoid";
  c.attention_stages = std::vector<int64_t>{1, 3};
  const auto json = image_model_config_to_json(c);
  EXPECT_EQ(json["compatibility"], "dp");
  EXPECT_EQ(json["backbone"], "small_cnn");  // filled from the preset
  const auto back = vision::resolve_image_config(image_model_config_from_json(json));
  EXPECT_EQ(image_model_config_to_json(back), json);
  EXPECT_FALSE(image_model_config_to_json(config_of("resnet18")).contains("backbone"));
  // drop_path: written for a ViT that has it, absent otherwise (older configs stay as they were).
  auto vit = config_of("vit_mini_patch8");
  EXPECT_FALSE(image_model_config_to_json(vit).contains("drop_path"));
  vit.drop_path = 0.25;
  const auto vit_json = image_model_config_to_json(vit);
  EXPECT_EQ(vit_json["drop_path"], 0.25);
  EXPECT_EQ(image_model_config_to_json(image_model_config_from_json(vit_json)), vit_json);
  // SPT and LSA: written only when on, read back.
  EXPECT_FALSE(vit_json.contains("shifted_patches"));
  EXPECT_FALSE(vit_json.contains("locality_attention"));
  vit.shifted_patches = true;
  vit.locality_attention = false;
  auto small_data = image_model_config_to_json(vit);
  EXPECT_EQ(small_data["shifted_patches"], true);
  EXPECT_FALSE(small_data.contains("locality_attention"));
  vit.locality_attention = true;
  small_data = image_model_config_to_json(vit);
  EXPECT_EQ(small_data["locality_attention"], true);
  const auto read = image_model_config_from_json(small_data);
  EXPECT_TRUE(read.shifted_patches.value_or(false) && read.locality_attention.value_or(false));
  EXPECT_EQ(image_model_config_to_json(read), small_data);
  // The convolutional stem: written only when on, read back.
  EXPECT_FALSE(small_data.contains("conv_stem"));
  auto stem = config_of("vit_mini_patch8");
  stem.conv_stem = true;
  const auto stem_json = image_model_config_to_json(stem);
  EXPECT_EQ(stem_json["conv_stem"], true);
  EXPECT_TRUE(image_model_config_from_json(stem_json).conv_stem.value_or(false));
  EXPECT_EQ(image_model_config_to_json(image_model_config_from_json(stem_json)), stem_json);
}

TEST(ImageModelConfig, RejectsBadJsonNamingTheKey) {
  auto expect_error = [](const nlohmann::json& j, const std::string& needle) {
    try {
      make_image_classifier(j);
      ADD_FAILURE() << "expected an error for " << j.dump();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({{"num_classes", 2}}, "arch");
  expect_error({{"arch", "resnet18"}, {"colour", 1}}, "model_config.colour");
  expect_error({{"arch", "resnet18"}, {"num_classes", "two"}}, "model_config.num_classes");
  expect_error({{"arch", "attn_small"}, {"normalizer", "crf"}}, "softmax or sigmoid");
  expect_error({{"arch", "attn_small"}, {"compatibility", "cosine"}}, "cosine");
  expect_error({{"arch", "attn_small"}, {"drop_path", 0.1}}, "ViT presets only");
  expect_error({{"arch", "resnet18"}, {"shifted_patches", true}}, "ViT presets only");
  expect_error({{"arch", "attn_small"}, {"locality_attention", true}}, "ViT presets only");
  expect_error({{"arch", "resnet18"}, {"conv_stem", true}}, "ViT presets only");
  expect_error({{"arch", "vit_mini_patch8"}, {"conv_stem", true}, {"shifted_patches", true}},
               "cannot be combined");
  expect_error({{"arch", "vit_mini_patch8"}, {"locality_attention", "yes"}},
               "model_config.locality_attention");
}

// Crafted checkpoints: sizes outside sane ranges are refused by name before a model is built
// (no allocation of terabytes, no LibTorch stack trace).
TEST(ImageModelConfig, RejectsOutOfRangeSizesNamingTheField) {
  const std::vector<std::pair<nlohmann::json, std::string>> bad = {
      {{{"arch", "resnet18"}, {"num_classes", 0}}, "model_config.num_classes"},
      {{{"arch", "resnet18"}, {"num_classes", -1}}, "model_config.num_classes"},
      {{{"arch", "resnet18"}, {"num_classes", 1000000000}}, "model_config.num_classes"},
      {{{"arch", "resnet18"}, {"image_size", 1000000}}, "model_config.image_size"},
      {{{"arch", "resnet18"}, {"in_channels", 0}}, "model_config.in_channels"},
      {{{"arch", "resnet18"}, {"dropout", 7}}, "model_config.dropout"},
      {{{"arch", "resnet18"}, {"dropout", -0.5}}, "model_config.dropout"},
      {{{"arch", "vit_mini_patch8"}, {"drop_path", 1.0}}, "model_config.drop_path"},
      {{{"arch", "vit_mini_patch8"}, {"drop_path", -0.1}}, "model_config.drop_path"},
      {{{"arch", "attn_small"}, {"attention_stages", {0, 99}}}, "model_config.attention_stages"},
  };
  for (const auto& [json, field] : bad) {
    const auto message = test::error_of([&] { image_model_config_from_json(json); });
    EXPECT_NE(message.find(field), std::string::npos) << json.dump() << " -> " << message;
  }
}

TEST(ImageCheckpoint, RoundTripRebuildsTheArchitecture) {
  test::TempDir dir;
  const auto path = dir / "attn.h5";
  torch::manual_seed(12);
  auto c = config_of("attn_small", 3);
  c.compatibility = "pc";
  c.attention_stages = std::vector<int64_t>{1, 3};
  auto model = vision::make_image_classifier(c);
  CheckpointMeta meta;
  meta.class_names = {"nevus", "melanoma", "other"};
  save_image_classifier(path, *model, c, meta);
  const auto loaded = load_image_classifier(path);
  EXPECT_EQ(loaded.meta.class_names, meta.class_names);
  EXPECT_EQ(*loaded.config.compatibility, "pc");
  model->eval();
  loaded.model->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 3, 64, 64});
  const auto a = model->forward(x), b = loaded.model->forward(x);
  EXPECT_TRUE(torch::equal(a.logits, b.logits));
  EXPECT_TRUE(torch::equal(a.maps.at("stage2"), b.maps.at("stage2")));
  // h5py reads it without attnscope.
  const auto py = test::run_process(
      test::python() + " -c \"import h5py, json; f = h5py.File('" + path +
      "', 'r'); print(json.loads(f.attrs['model_config'])['arch'], f['attention.0.u'].shape, "
      "f['features.0.weight'].shape)\"");
  ASSERT_EQ(py.status, 0) << py.output;
  EXPECT_NE(py.output.find("attn_small (256,) (32, 3, 3, 3)"), std::string::npos) << py.output;
}

TEST(ImageCheckpoint, StrictLoadRejectsAnotherArchitecture) {
  test::TempDir dir;
  const auto path = dir / "resnet18.h5";
  auto resnet18 = vision::make_image_classifier(config_of("resnet18"));
  save_image_classifier(path, *resnet18, config_of("resnet18"));

  auto small = vision::make_image_classifier(config_of("small_cnn"));
  auto what = load_error(path, *small);
  EXPECT_NE(what.find(path), std::string::npos) << what;
  // Each list counted, its first names shown (sorted).
  EXPECT_NE(what.find("missing in the file (58):\n    classifier.1.bias"), std::string::npos)
      << what;
  EXPECT_NE(what.find("features.0.weight"), std::string::npos) << what;
  EXPECT_NE(what.find("unexpected in the file (122):\n    bn1.bias"), std::string::npos) << what;

  auto resnet34 = vision::make_image_classifier(config_of("resnet34"));
  what = load_error(path, *resnet34);
  EXPECT_NE(what.find("missing in the file (96):\n    layer1.2.bn1.bias"), std::string::npos)
      << what;
  EXPECT_NE(what.find("    ... and 88 more"), std::string::npos) << what;

  auto three = vision::make_image_classifier(config_of("resnet18", 3));
  what = load_error(path, *three);
  EXPECT_NE(what.find("tensor 'fc.weight' has wrong shape: got [2, 512] in the file, expected "
                      "[3, 512]"),
            std::string::npos)
      << what;
  // Another network's hundred names: the first 8 of each list, then how many more.
  auto vit = vision::make_image_classifier(config_of("vit_mini_patch8"));
  what = load_error(path, *vit);
  EXPECT_LT(std::count(what.begin(), what.end(), '\n'), 25) << what;
  EXPECT_NE(what.find("\n    ... and "), std::string::npos) << what;
}

// load_image_classifier names the file for a checkpoint of another kind (a seq2seq model was
// "model_config.attention: unknown key") and for a stored preprocessing config that does not
// load (evaluate, classify and train --teacher said "preprocessing config: ..." alone).
TEST(ImageCheckpoint, AnotherKindOrABadPreprocessingConfigIsNamedByFile) {
  test::TempDir dir;
  const auto path = dir / "small.h5";
  auto model = vision::make_image_classifier(config_of("small_cnn"));
  CheckpointMeta meta;
  meta.preprocessing_config = {{"steps", {{{"op", "sharpen"}}}}};
  save_image_classifier(path, *model, config_of("small_cnn"), meta);
  const auto bad_steps = test::error_of([&] { load_image_classifier(path); });
  EXPECT_EQ(bad_steps.rfind(path + ":/@preprocessing_config: ", 0), 0u) << bad_steps;
  EXPECT_NE(bad_steps.find("sharpen"), std::string::npos) << bad_steps;
  for (const auto& [arch, says] : std::vector<std::pair<std::string, std::string>>{
           {"rnn",
            "is a 'rnn' checkpoint: a seq2seq model (attnscope seq2seq), not an image "
            "classifier"},
           {"alexnet", "is a 'alexnet' checkpoint, not one of the image classifiers ("}}) {
    const auto other = dir / (arch + ".h5");
    save_image_classifier(other, *model, config_of("small_cnn"));
    const auto r = test::run_process(
        test::python() + " -c \"import h5py, json, sys; f = h5py.File('" + other +
        "', 'r+'); c = json.loads(f.attrs['model_config']); c['arch'] = '" + arch +
        "'; c['attention'] = 'additive'; f.attrs['model_config'] = json.dumps(c); f.close(); "
        "sys.path.insert(0, '" ATTNSCOPE_SOURCE_DIR
        "/tests/python'); "
        "import checkpoint_checksum; checkpoint_checksum.seal('" +
        other + "')\"");
    ASSERT_EQ(r.status, 0) << r.output;
    const auto what = test::error_of([&] { load_image_classifier(other); });
    EXPECT_EQ(what.rfind(other + ": " + says, 0), 0u) << what;
  }
}

}  // namespace
}  // namespace attnscope::pipeline
