// The HDF5 image cache: what is written is what the pipeline produced, h5py reads it, and a
// loader over the cache yields the same batches as a loader over the images.

#include <fstream>
#include <tuple>
#include <vector>

#include <torch/torch.h>
#include <opencv2/core.hpp>

#include "attnscope/error.h"
#include "pipeline/vision/image_cache.h"
#include "test_support.h"

namespace attnscope::pipeline {
namespace {

using nlohmann::json;

preprocessing::Pipeline resize_to(int size, bool augment = false) {
  json config = {{"steps", {{{"op", "shades_of_gray"}}, {{"op", "resize"}, {"size", size}}}}};
  if (augment) config["augment"] = {{"hflip", 0.5}, {"rot90", 0.5}, {"brightness", 0.2}};
  return preprocessing::Pipeline::from_json(config);
}

TEST(ImageCache, StoresThePipelineOutputAndReadsItBack) {
  test::TempDir dir;
  datasets::SyntheticOptions so;
  so.size = 64;
  const datasets::SyntheticSource source(7, 5, so);
  const auto pipeline = resize_to(40);
  const auto report = write_image_cache(dir / "c.h5", source, pipeline, 2);
  EXPECT_EQ(report.written, 7u);
  EXPECT_TRUE(report.failures.empty());
  const ImageCacheSource cache(dir / "c.h5");
  ASSERT_EQ(cache.size(), 7u);
  EXPECT_EQ(cache.class_names(), source.class_names());
  EXPECT_EQ(cache.preprocessing(), pipeline.to_json());
  for (std::size_t i = 0; i < 7; ++i) {
    const auto expected = pipeline.process(source.load(i).image, source.load(i).mask);
    const auto got = cache.load(i);
    EXPECT_EQ(cache.sample(i).image_id, source.sample(i).image_id);
    EXPECT_EQ(cache.sample(i).label, source.sample(i).label);
    EXPECT_EQ(cv::norm(got.image, expected.image, cv::NORM_INF), 0.0) << i;
    EXPECT_EQ(cv::norm(got.mask, expected.mask, cv::NORM_INF), 0.0) << i;
  }
  // h5py, independently: shapes, types, ids and the format attribute.
  const auto r =
      test::run_process(test::python() + " -c \"import h5py; f = h5py.File('" + dir / "c.h5" +
                        "', 'r'); print(f['images'].shape, f['images'].dtype, f['masks'].shape, "
                        "f['labels'].dtype, f['ids'][0].decode(), f.attrs['format'])\"");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output,
            "(7, 40, 40, 3) uint8 (7, 40, 40) int64 synth_000000 attnscope-image-cache\n");
}

TEST(ImageCache, LoaderOverTheCacheMatchesTheLoaderOverTheSource) {
  test::TempDir dir;
  datasets::SyntheticOptions so;
  so.size = 56;
  auto source = std::make_shared<datasets::SyntheticSource>(9, 2, so);
  const auto pipeline = resize_to(32, true);
  write_image_cache(dir / "c.h5", *source, pipeline);
  auto cache = std::make_shared<ImageCacheSource>(dir / "c.h5");
  datasets::LoaderOptions o;
  o.batch_size = 4;
  o.order = datasets::Order::kShuffle;
  o.augment = true;
  o.seed = 8;
  o.workers = 2;
  datasets::Loader from_source(source, pipeline, o), from_cache(cache, pipeline, o);
  from_source.start_epoch(1);
  from_cache.start_epoch(1);
  int batches = 0;
  while (auto a = from_source.next()) {
    auto b = from_cache.next();
    ASSERT_TRUE(b.has_value());
    EXPECT_EQ(a->ids, b->ids);
    EXPECT_TRUE(torch::equal(a->images, b->images)) << "batch " << batches;
    EXPECT_TRUE(torch::equal(a->masks, b->masks));
    ++batches;
  }
  EXPECT_EQ(batches, 3);
  EXPECT_FALSE(from_cache.next().has_value());
  // The loader keeps the full pipeline (for checkpoints) and refuses steps the cache lacks.
  EXPECT_EQ(from_cache.pipeline().to_json(), pipeline.to_json());
  EXPECT_THROW(datasets::Loader(cache, resize_to(48), o), Error);
  EXPECT_NO_THROW(
      datasets::Loader(cache, preprocessing::Pipeline::from_json(cache->preprocessing()), o));
}

TEST(ImageCache, BadImagesAreListedAndOthersCached) {
  test::TempDir dir;
  datasets::SyntheticOptions so;
  so.size = 48;
  auto ds = datasets::write_synthetic(dir.path().string(), 4, 1, so);
  std::ofstream(ds.samples[2].path, std::ios::trunc) << "garbage";
  const datasets::ImageFileSource source(ds);
  const auto report = write_image_cache(dir / "c.h5", source, resize_to(32));
  EXPECT_EQ(report.written, 3u);
  ASSERT_EQ(report.failures.size(), 1u);
  EXPECT_EQ(report.failures[0].image_id, ds.samples[2].image_id);
  EXPECT_NE(report.failures[0].message.find("not an image"), std::string::npos);
  EXPECT_EQ(ImageCacheSource(dir / "c.h5").size(), 3u);
}

// Ids in another encoding than UTF-8 are one failure each (h5py must still read the cache:
// its string datasets are typed UTF-8); a path in one (an image in a Latin-1 folder) is cached
// with its bytes escaped as classify's source_path (it was refused).
TEST(ImageCache, NonUtf8IdsAreListedAndTheCacheStaysReadableByH5py) {
  test::TempDir dir;
  datasets::SyntheticOptions so;
  so.size = 48;
  auto ds = datasets::write_synthetic(dir.path().string(), 3, 1, so);
  ds.samples[1].image_id = "caf\xe9";  // Latin-1
  const auto latin1 = std::filesystem::path(dir / "caf\xe9") / "x.png";
  std::filesystem::create_directories(latin1.parent_path());
  std::filesystem::rename(ds.samples[2].path, latin1);
  ds.samples[2].path = latin1.string();
  const datasets::ImageFileSource source(ds);
  const auto report = write_image_cache(dir / "c.h5", source, resize_to(32));
  EXPECT_EQ(report.written, 2u);
  ASSERT_EQ(report.failures.size(), 1u);
  EXPECT_NE(report.failures[0].message.find("not valid UTF-8"), std::string::npos);
  const auto r =
      test::run_process(test::python() + " -c \"import h5py; f = h5py.File('" + dir / "c.h5" +
                        "', 'r'); print([s.decode() for s in f['ids']], f['paths'][1].decode())\"");
  EXPECT_EQ(r.output, "['synth_000000', 'synth_000002'] " + dir / "caf\\xe9/x.png\n");
  EXPECT_EQ(ImageCacheSource(dir / "c.h5").size(), 2u);
}

TEST(ImageCache, RefusesFilesThatAreNotACache) {
  test::TempDir dir;
  { auto f = h5::File::create(dir / "other.h5"); }
  std::ofstream(dir / "text.h5") << "hello";
  for (const auto& name : {"other.h5", "text.h5", "missing.h5"}) {
    try {
      ImageCacheSource source(dir / name);
      FAIL() << name;
    } catch (const Error& e) {
      EXPECT_EQ(e.subject(), dir / name);
    }
  }
}

}  // namespace
}  // namespace attnscope::pipeline

namespace attnscope::pipeline {
namespace {

// A cache whose labels are outside its class list, or not integers, is one error naming the
// dataset and the sample (a raw vector::_M_range_check or LibTorch's "expected scalar type
// Long" reached the user before). Crafted with h5py.
TEST(ImageCache, LabelsOutsideTheClassListOrNotIntegersAreRefusedNamingTheSample) {
  test::TempDir dir;
  datasets::SyntheticOptions so;
  so.size = 32;
  const datasets::SyntheticSource source(3, 5, so);
  for (const auto& [name, code, says] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"oob.h5", "d = f['labels'][...]; d[1] = 5; f['labels'][...] = d",
            "labels: sample 'synth_000001' has label 5, outside its 2 class names"},
           // A mask stack shorter than the images: refused at open, not sample by sample.
           {"masks.h5",
            "import numpy as np; del f['masks']; f['masks'] = np.zeros((1, 24, 24), np.uint8)",
            "masks: has shape (1, 24, 24), /images (3, 24, 24, 3): expected (3, 24, 24)"},
           {"float.h5", "d = f['labels'][...]; del f['labels']; f['labels'] = d.astype('f4')",
            "labels: expected 64-bit integers"},
           // Images of other numbers were converted on reading (floats in [0, 1] to black,
           // 16-bit values to white) and trained on without a word.
           {"f32.h5",
            "d = f['images'][...]; del f['images']; f['images'] = (d / 255.0).astype('f4')",
            ":/images: holds float32 values, expected uint8 (0..255) as attnscope cache writes"},
           {"u16.h5", "d = f['masks'][...]; del f['masks']; f['masks'] = d.astype('u2') * 257",
            ":/masks: holds uint16 values, expected uint8 (0..255) as attnscope cache writes"},
           // Ids go into predictions CSVs and terminal lines raw: the readers' rules hold, and
           // each is once (a repeat was scored as two images).
           {"dup.h5", "d = f['ids']; d[1] = d[0]",
            ":/ids: rows 0 and 1 hold the same id 'synth_000000': the file is damaged or was "
            "edited"},
           {"escape.h5", "d = f['ids']; d[2] = b'a\\x1b[31mb'",
            ":/ids row 2: image id 'a\\x1b[31mb' contains a control character (rejected)"},
           {"slash.h5", "d = f['ids']; d[2] = b'../x'",
            ":/ids row 2: image id '../x' contains a path separator or '..' (rejected)"}}) {
    const auto path = dir / name;
    write_image_cache(path, source, resize_to(24), 1);
    const auto r = test::run_process(test::python() + " -c \"import h5py; f = h5py.File('" + path +
                                     "', 'r+'); " + code + "\"");
    ASSERT_EQ(r.status, 0) << r.output;
    try {
      ImageCacheSource cache(path);
      FAIL() << name;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace attnscope::pipeline
