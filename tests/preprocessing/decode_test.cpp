// Decoding: formats, depth, channels, EXIF orientation, size guard and every kind of bad file.
// All fixtures are written by the tests themselves.

#include <array>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>

#include <png.h>

#include <opencv2/core/utility.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "attnscope/error.h"
#include "preprocessing/decode.h"
#include "test_support.h"

namespace attnscope::preprocessing {
namespace {

// A 32 × 16 (W × H) BGR image with four flat quadrants: TL red, TR green, BL blue, BR white.
cv::Mat quadrants_bgr() {
  cv::Mat img(16, 32, CV_8UC3);
  img(cv::Rect(0, 0, 16, 8)).setTo(cv::Scalar(0, 0, 255));
  img(cv::Rect(16, 0, 16, 8)).setTo(cv::Scalar(0, 255, 0));
  img(cv::Rect(0, 8, 16, 8)).setTo(cv::Scalar(255, 0, 0));
  img(cv::Rect(16, 8, 16, 8)).setTo(cv::Scalar(255, 255, 255));
  return img;
}

std::vector<uint8_t> encode(const std::string& ext, const cv::Mat& img,
                            const std::vector<int>& params = {}) {
  std::vector<uint8_t> buf;
  EXPECT_TRUE(cv::imencode(ext, img, buf, params));
  return buf;
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Inserts an APP1 Exif segment holding only an orientation tag right after the JPEG's SOI.
std::vector<uint8_t> with_exif_orientation(std::vector<uint8_t> jpeg, int orientation,
                                           bool little_endian) {
  std::vector<uint8_t> tiff;
  auto u16 = [&](int v) {
    if (little_endian)
      tiff.insert(tiff.end(), {uint8_t(v & 0xFF), uint8_t(v >> 8)});
    else
      tiff.insert(tiff.end(), {uint8_t(v >> 8), uint8_t(v & 0xFF)});
  };
  auto u32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i)
      tiff.push_back(little_endian ? uint8_t(v >> (8 * i)) : uint8_t(v >> (8 * (3 - i))));
  };
  if (little_endian)
    tiff.insert(tiff.end(), {'I', 'I', 42, 0});
  else
    tiff.insert(tiff.end(), {'M', 'M', 0, 42});
  u32(8);            // offset of IFD0
  u16(1);            // one entry
  u16(0x0112);       // Orientation
  u16(3);            // SHORT
  u32(1);            // count
  u16(orientation);  // value, left-aligned in the 4-byte field
  u16(0);
  u32(0);  // no next IFD
  std::vector<uint8_t> app1{0xFF, 0xE1};
  const int len = 2 + 6 + static_cast<int>(tiff.size());
  app1.push_back(uint8_t(len >> 8));
  app1.push_back(uint8_t(len & 0xFF));
  app1.insert(app1.end(), {'E', 'x', 'i', 'f', 0, 0});
  app1.insert(app1.end(), tiff.begin(), tiff.end());
  jpeg.insert(jpeg.begin() + 2, app1.begin(), app1.end());
  return jpeg;
}

// Which quadrant colour (RGB) sits at each corner of an RGB image.
cv::Vec3b corner(const cv::Mat& rgb, char which) {
  const int x = (which == 'R' || which == 'r') ? rgb.cols - 2 : 1;
  const int y = (which == 'b' || which == 'r') ? rgb.rows - 2 : 1;
  return rgb.at<cv::Vec3b>(y, x);
}

bool near(const cv::Vec3b& a, const cv::Vec3b& b, int tol = 40) {
  for (int c = 0; c < 3; ++c)
    if (std::abs(a[c] - b[c]) > tol) return false;
  return true;
}

using test::error_of;

TEST(Decode, PngBecomesRgbWithExactPixels) {
  test::TempDir dir;
  cv::Mat bgr(7, 5, CV_8UC3);
  cv::RNG(3).fill(bgr, cv::RNG::UNIFORM, 0, 256);
  ASSERT_TRUE(cv::imwrite(dir / "a.png", bgr));
  const auto rgb = decode_image(dir / "a.png");
  ASSERT_EQ(rgb.type(), CV_8UC3);
  for (int y = 0; y < 7; ++y)
    for (int x = 0; x < 5; ++x) {
      const auto b = bgr.at<cv::Vec3b>(y, x);
      EXPECT_EQ(rgb.at<cv::Vec3b>(y, x), cv::Vec3b(b[2], b[1], b[0]));
    }
}

// A PNG written with libpng: `samples` holds width × height × channels values of `depth` bits
// (row-major, channels as the colour type orders them); palette entries are RGB triples.
std::vector<uint8_t> libpng_encode(int width, int height, int depth, int colour, bool interlace,
                                   const std::vector<int>& samples,
                                   const std::vector<png_color>& palette = {},
                                   const std::vector<png_byte>& trns = {}) {
  std::vector<uint8_t> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(
      png, &out,
      [](png_structp p, png_bytep data, png_size_t n) {
        auto* v = static_cast<std::vector<uint8_t>*>(png_get_io_ptr(p));
        v->insert(v->end(), data, data + n);
      },
      nullptr);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height),
               depth, colour, interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (!palette.empty())
    png_set_PLTE(png, info, palette.data(), static_cast<int>(palette.size()));
  if (!trns.empty()) png_set_tRNS(png, info, trns.data(), static_cast<int>(trns.size()), nullptr);
  png_write_info(png, info);
  const int channels = png_get_channels(png, info);
  const std::size_t row_bytes = (std::size_t(width) * channels * depth + 7) / 8;
  std::vector<std::vector<png_byte>> rows(height, std::vector<png_byte>(row_bytes, 0));
  for (int y = 0; y < height; ++y)
    for (int i = 0; i < width * channels; ++i) {
      const int v = samples[std::size_t(y) * width * channels + i];
      if (depth == 16) {
        rows[y][2 * i] = png_byte(v >> 8);  // PNG is big-endian
        rows[y][2 * i + 1] = png_byte(v & 0xFF);
      } else {
        const int bit = i * depth;
        rows[y][bit / 8] |= png_byte(v << (8 - depth - bit % 8));
      }
    }
  std::vector<png_bytep> pointers;
  for (auto& r : rows)
    pointers.push_back(r.data());
  png_write_image(png, pointers.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// What decoding gave before attnscope decoded PNG itself: cv::imdecode(IMREAD_UNCHANGED),
// 16-bit scaled by 1/257, then grey/BGR/BGRA to RGB.
cv::Mat opencv_reference(const std::vector<uint8_t>& bytes) {
  const auto raw = cv::imdecode(bytes, cv::IMREAD_UNCHANGED);
  cv::Mat img8, rgb;
  if (raw.depth() == CV_16U)
    raw.convertTo(img8, CV_8U, 1.0 / 257.0);
  else
    img8 = raw;
  const int code = img8.channels() == 1   ? cv::COLOR_GRAY2RGB
                   : img8.channels() == 3 ? cv::COLOR_BGR2RGB
                                          : cv::COLOR_BGRA2RGB;
  cv::cvtColor(img8, rgb, code);
  return rgb;
}

// Every PNG colour type, bit depth and interlacing: the pixels follow from the samples in
// closed form (grey v of d bits → v·255/(2^d − 1), 16 bits → round(v/257), palette looked up,
// alpha and tRNS ignored) and equal what OpenCV's own PNG reader gives.
TEST(Decode, EveryPngColourTypeDepthAndInterlacingGivesThePixelsOfTheSamples) {
  const int w = 13, h = 9;  // odd sizes: partial bytes at low depths, uneven Adam7 passes
  const std::vector<png_color> palette{{200, 10, 30}, {0, 128, 255}, {17, 17, 17}, {255, 255, 0}};
  struct Case {
    const char* name;
    int colour, depth;
  };
  const std::vector<Case> cases{
      {"grey1", PNG_COLOR_TYPE_GRAY, 1},           {"grey2", PNG_COLOR_TYPE_GRAY, 2},
      {"grey4", PNG_COLOR_TYPE_GRAY, 4},           {"grey8", PNG_COLOR_TYPE_GRAY, 8},
      {"grey16", PNG_COLOR_TYPE_GRAY, 16},         {"grey_alpha8", PNG_COLOR_TYPE_GRAY_ALPHA, 8},
      {"grey_alpha16", PNG_COLOR_TYPE_GRAY_ALPHA, 16}, {"rgb8", PNG_COLOR_TYPE_RGB, 8},
      {"rgb16", PNG_COLOR_TYPE_RGB, 16},           {"rgba8", PNG_COLOR_TYPE_RGB_ALPHA, 8},
      {"rgba16", PNG_COLOR_TYPE_RGB_ALPHA, 16},    {"palette2", PNG_COLOR_TYPE_PALETTE, 2},
      {"palette8_trns", PNG_COLOR_TYPE_PALETTE, 8}};
  cv::RNG rng(11);
  for (const auto& c : cases)
    for (const bool interlace : {false, true}) {
      const bool palette_type = c.colour == PNG_COLOR_TYPE_PALETTE;
      const int channels = palette_type ? 1
                           : c.colour == PNG_COLOR_TYPE_GRAY       ? 1
                           : c.colour == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
                           : c.colour == PNG_COLOR_TYPE_RGB        ? 3
                                                                   : 4;
      const int top = palette_type ? int(palette.size()) : (1 << c.depth);
      std::vector<int> samples(std::size_t(w) * h * channels);
      for (auto& v : samples)
        v = rng.uniform(0, top);
      const auto bytes = libpng_encode(
          w, h, c.depth, c.colour, interlace, samples, palette_type ? palette : std::vector<png_color>{},
          std::string(c.name) == "palette8_trns" ? std::vector<png_byte>{0, 128} : std::vector<png_byte>{});
      const std::string label = std::string(c.name) + (interlace ? " interlaced" : "");
      cv::Mat rgb;
      ASSERT_NO_THROW(rgb = decode_image_bytes(bytes, label)) << label;
      ASSERT_EQ(rgb.type(), CV_8UC3) << label;
      ASSERT_EQ(rgb.size(), cv::Size(w, h)) << label;
      const auto scale = [&](int v) {
        return c.depth == 16 ? int(std::lround(v / 257.0)) : v * 255 / ((1 << c.depth) - 1);
      };
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          const int* s = samples.data() + (std::size_t(y) * w + x) * channels;
          cv::Vec3b want;
          if (palette_type)
            want = {palette[s[0]].red, palette[s[0]].green, palette[s[0]].blue};
          else if (channels <= 2)
            want = cv::Vec3b::all(uchar(scale(s[0])));
          else
            want = {uchar(scale(s[0])), uchar(scale(s[1])), uchar(scale(s[2]))};
          ASSERT_EQ(rgb.at<cv::Vec3b>(y, x), want) << label << " at " << x << "," << y;
        }
      const auto reference = opencv_reference(bytes);
      EXPECT_EQ(cv::norm(rgb, reference, cv::NORM_INF), 0) << label << " differs from OpenCV";
    }
}

TEST(Decode, SixteenBitIsScaledToEightBit) {
  test::TempDir dir;
  cv::Mat img16(4, 4, CV_16UC3);
  cv::RNG(5).fill(img16, cv::RNG::UNIFORM, 0, 65536);
  ASSERT_TRUE(cv::imwrite(dir / "deep.png", img16));
  ASSERT_TRUE(cv::imwrite(dir / "deep.tiff", img16));
  for (const auto& name : {"deep.png", "deep.tiff"}) {
    const auto rgb = decode_image(dir / name);
    ASSERT_EQ(rgb.type(), CV_8UC3) << name;
    for (int y = 0; y < 4; ++y)
      for (int x = 0; x < 4; ++x)
        for (int c = 0; c < 3; ++c)
          EXPECT_NEAR(rgb.at<cv::Vec3b>(y, x)[c], img16.at<cv::Vec3w>(y, x)[2 - c] / 257.0, 0.5)
              << name;
  }
}

TEST(Decode, GreyBecomesThreeEqualChannelsAndAlphaIsDropped) {
  test::TempDir dir;
  cv::Mat grey(3, 3, CV_8UC1, cv::Scalar(77));
  cv::Mat bgra(3, 3, CV_8UC4, cv::Scalar(10, 20, 30, 0));  // fully transparent
  ASSERT_TRUE(cv::imwrite(dir / "g.png", grey));
  ASSERT_TRUE(cv::imwrite(dir / "a.png", bgra));
  EXPECT_EQ(decode_image(dir / "g.png").at<cv::Vec3b>(1, 1), cv::Vec3b(77, 77, 77));
  const auto rgb = decode_image(dir / "a.png");
  ASSERT_EQ(rgb.type(), CV_8UC3);
  EXPECT_EQ(rgb.at<cv::Vec3b>(1, 1), cv::Vec3b(30, 20, 10));
}

TEST(Decode, ReadsBmpTiffAndWebp) {
  test::TempDir dir;
  const auto bgr = quadrants_bgr();
  std::vector<std::string> exts{".bmp", ".tiff", ".jpg"};
  if (cv::haveImageWriter(".webp")) exts.push_back(".webp");
  for (const auto& ext : exts) {
    const auto path = dir / ("q" + ext);
    ASSERT_TRUE(cv::imwrite(path, bgr)) << ext;
    const auto bytes = read_file_bytes(path);
    const auto info = probe_image(bytes, path);
    EXPECT_EQ(info.width, 32) << ext;
    EXPECT_EQ(info.height, 16) << ext;
    const auto rgb = decode_image(path);
    EXPECT_TRUE(near(corner(rgb, 'l'), {255, 0, 0})) << ext;
    EXPECT_TRUE(near(corner(rgb, 'R'), {0, 255, 0})) << ext;
  }
}

// EXIF orientations 1..8: where the stored top-left (red) and top-right (green) quadrants end
// up, from the EXIF 2.3 specification's table; 'l' top-left, 'R' top-right, 'b' bottom-left,
// 'r' bottom-right.
TEST(Decode, AppliesEveryExifOrientationLikeTheSpecification) {
  test::TempDir dir;
  const auto jpeg = encode(".jpg", quadrants_bgr(), {cv::IMWRITE_JPEG_QUALITY, 95});
  const std::map<int, std::pair<char, char>> expected{
      {1, {'l', 'R'}}, {2, {'R', 'l'}}, {3, {'r', 'b'}}, {4, {'b', 'r'}},
      {5, {'l', 'b'}}, {6, {'R', 'r'}}, {7, {'r', 'R'}}, {8, {'b', 'l'}}};
  for (const bool little : {false, true})
    for (const auto& [orientation, corners] : expected) {
      const auto path = dir / ("o" + std::to_string(orientation) + ".jpg");
      write_bytes(path, with_exif_orientation(jpeg, orientation, little));
      const auto rgb = decode_image(path);
      const bool swapped = orientation >= 5;
      EXPECT_EQ(rgb.cols, swapped ? 16 : 32) << orientation;
      EXPECT_TRUE(near(corner(rgb, corners.first), {255, 0, 0})) << "orientation " << orientation;
      EXPECT_TRUE(near(corner(rgb, corners.second), {0, 255, 0})) << "orientation " << orientation;
      // OpenCV's own reader (IMREAD_COLOR applies EXIF orientation) agrees.
      cv::Mat ref = cv::imread(path, cv::IMREAD_COLOR);
      cv::cvtColor(ref, ref, cv::COLOR_BGR2RGB);
      ASSERT_EQ(ref.size(), rgb.size()) << orientation;
      EXPECT_EQ(cv::norm(ref, rgb, cv::NORM_INF), 0.0) << orientation;
      // ...and turning it off leaves the stored layout.
      DecodeOptions raw;
      raw.apply_orientation = false;
      EXPECT_EQ(decode_image(path, raw).cols, 32);
    }
}

TEST(Decode, CmykJpegBecomesRgb) {
  test::TempDir dir;
  const auto path = dir / "cmyk.jpg";
  const auto r = test::run_process(test::python() +
                                   " -c \"from PIL import Image; Image.new('CMYK', (20, 10), (0, "
                                   "255, 255, 0)).save('" +
                                   path + "')\"");
  // PIL comes with python3-torchvision (bootstrap.sh); its absence is a broken setup, not a skip.
  ASSERT_EQ(r.status, 0) << "writing a CMYK JPEG with PIL failed: " << r.output;
  const auto rgb = decode_image(path);
  ASSERT_EQ(rgb.type(), CV_8UC3);
  const auto p = rgb.at<cv::Vec3b>(5, 10);  // cyan 0, magenta and yellow full: red
  EXPECT_GT(p[0], 200);
  EXPECT_LT(p[1], 60);
  EXPECT_LT(p[2], 60);
}

// JPEGs are decoded by libjpeg directly (one pass, RGB); the oracle is OpenCV's own reader,
// which must give the very same pixels: baseline 4:2:0 and 4:4:4, progressive, restart
// markers, grey, odd sizes, an EXIF orientation, and real dermoscopy photos when present.
// JPEGs of every kind attnscope's libjpeg pass decodes, from a blurred random photo of
// rows × cols: baseline (first), progressive, restart markers, grey, an odd size (the `odd`
// part of the photo) and EXIF orientation 6; written into dir, paths returned.
std::vector<std::string> write_jpeg_kinds(const test::TempDir& dir, int rows, int cols,
                                          cv::Rect odd) {
  cv::Mat photo(rows, cols, CV_8UC3);
  cv::randu(photo, cv::Scalar::all(0), cv::Scalar::all(255));
  cv::GaussianBlur(photo, photo, {7, 7}, 2.0);
  cv::Mat grey;
  cv::cvtColor(photo, grey, cv::COLOR_BGR2GRAY);
  std::vector<std::pair<std::string, std::vector<uint8_t>>> files{
      {"baseline", encode(".jpg", photo, {cv::IMWRITE_JPEG_QUALITY, 90})},
      {"progressive", encode(".jpg", photo, {cv::IMWRITE_JPEG_PROGRESSIVE, 1})},
      {"restarts", encode(".jpg", photo, {cv::IMWRITE_JPEG_RST_INTERVAL, 3})},
      {"grey", encode(".jpg", grey)},
      {"odd", encode(".jpg", photo(odd).clone())},
  };
  files.emplace_back("exif6", with_exif_orientation(files[0].second, 6, true));
  std::vector<std::string> paths;
  for (const auto& [name, bytes] : files) {
    paths.push_back(dir / (name + ".jpg"));
    write_bytes(paths.back(), bytes);
  }
  return paths;
}

// Every `every`-th real dermoscopy JPEG of ../shared/data/isic-uda1, when present.
std::vector<std::string> real_jpegs(int every) {
  std::vector<std::string> paths;
  int real = 0;
  if (!test::data_dir().empty())
    for (const auto& entry :
         std::filesystem::directory_iterator(test::data_dir() / "isic-uda1" / "images"))
      if (entry.path().extension() == ".jpg" && real++ % every == 0)
        paths.push_back(entry.path().string());
  return paths;
}

TEST(Decode, JpegPixelsAreExactlyOpenCvsForEveryKindOfJpeg) {
  test::TempDir dir;
  auto paths = write_jpeg_kinds(dir, 77, 123, cv::Rect(0, 0, 33, 17));
  // Chroma 4:4:4 and 4:2:2 (OpenCV 4.6 writes 4:2:0 only): PIL, from python3-torchvision.
  const auto pil = test::run_process(
      test::python() + " -c \"from PIL import Image; im = Image.open('" + paths[0] +
      "'); im.save('" + dir / "444.jpg" + "', quality=95, subsampling=0); im.save('" +
      dir / "422.jpg" + "', quality=95, subsampling=1)\"");
  ASSERT_EQ(pil.status, 0) << pil.output;
  paths.push_back(dir / "444.jpg");
  paths.push_back(dir / "422.jpg");
  for (const auto& path : real_jpegs(25))
    paths.push_back(path);
  for (const auto& path : paths) {
    const auto rgb = decode_image(path);
    cv::Mat ref = cv::imread(path, cv::IMREAD_COLOR);  // BGR, EXIF orientation applied
    ASSERT_FALSE(ref.empty()) << path;
    cv::cvtColor(ref, ref, cv::COLOR_BGR2RGB);
    ASSERT_EQ(rgb.type(), CV_8UC3) << path;
    ASSERT_EQ(ref.size(), rgb.size()) << path;
    EXPECT_EQ(cv::norm(ref, rgb, cv::NORM_INF), 0.0) << path;
  }
  EXPECT_EQ(decode_image(dir / "exif6.jpg").cols, 77);
}

// reduce_to: JPEGs decoded at 1/2, 1/4 or 1/8 are pixel for pixel OpenCV's reduced reads
// (IMREAD_REDUCED_COLOR_*: the same libjpeg scaled IDCT), the reduction is the largest that
// keeps the short side >= reduce_to (one more pixel asked for picks the next smaller one),
// EXIF orientation is applied after it, and other formats stay at full size.
TEST(Decode, ReducedJpegsAreOpenCvsReducedReadsAtTheLargestReductionAllowed) {
  test::TempDir dir;
  auto paths = write_jpeg_kinds(dir, 203, 301, cv::Rect(0, 0, 123, 77));
  for (const auto& path : real_jpegs(50))
    paths.push_back(path);
  const std::map<int, int> flags{{2, cv::IMREAD_REDUCED_COLOR_2},
                                 {4, cv::IMREAD_REDUCED_COLOR_4},
                                 {8, cv::IMREAD_REDUCED_COLOR_8}};
  for (const auto& path : paths) {
    const cv::Mat full = decode_image(path);
    const int short_side = std::min(full.rows, full.cols);
    for (const auto& [d, flag] : flags) {
      DecodeOptions o;
      o.reduce_to = (short_side + d - 1) / d;  // exactly what 1/d keeps
      const auto rgb = decode_image(path, o);
      cv::Mat ref = cv::imread(path, flag);  // BGR, EXIF orientation applied
      ASSERT_FALSE(ref.empty()) << path;
      cv::cvtColor(ref, ref, cv::COLOR_BGR2RGB);
      ASSERT_EQ(ref.size(), rgb.size()) << path << " 1/" << d;
      EXPECT_EQ(rgb.cols, (full.cols + d - 1) / d) << path << " 1/" << d;
      EXPECT_EQ(cv::norm(ref, rgb, cv::NORM_INF), 0.0) << path << " 1/" << d;
      // One pixel more than 1/d keeps: a smaller reduction (or none).
      o.reduce_to += 1;
      EXPECT_GT(decode_image(path, o).cols, rgb.cols) << path << " 1/" << d;
    }
    DecodeOptions none;
    none.reduce_to = short_side + 1;  // more than the image has: full size
    EXPECT_EQ(decode_image(path, none).size(), full.size()) << path;
  }
  // A PNG is never reduced.
  const cv::Mat photo = cv::imread(paths[0]);
  ASSERT_TRUE(cv::imwrite(dir / "p.png", photo));
  DecodeOptions o;
  o.reduce_to = 10;
  EXPECT_EQ(decode_image(dir / "p.png", o).size(), photo.size());
}

TEST(Decode, RefusesImagesAboveThePixelLimitFromTheHeader) {
  test::TempDir dir;
  // A PNG signature and IHDR claiming 20000 × 20000, and nothing else: refused before decoding.
  std::vector<uint8_t> png{0x89, 'P',  'N', 'G', '\r', '\n', 0x1A, '\n', 0,    0, 0,
                           13,   'I',  'H', 'D', 'R',  0,    0,    0x4E, 0x20, 0, 0,
                           0x4E, 0x20, 8,   2,   0,    0,    0,    0,    0,    0, 0};
  write_bytes(dir / "huge.png", png);
  const auto msg = error_of([&] { decode_image(dir / "huge.png"); });
  EXPECT_NE(msg.find("too large"), std::string::npos) << msg;
  EXPECT_NE(msg.find("20000x20000"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir / "huge.png"), std::string::npos) << msg;

  cv::Mat img(100, 100, CV_8UC3, cv::Scalar::all(9));
  ASSERT_TRUE(cv::imwrite(dir / "ok.jpg", img));
  DecodeOptions small;
  small.max_pixels = 9999;
  EXPECT_NE(error_of([&] { decode_image(dir / "ok.jpg", small); }).find("above the limit of 9999"),
            std::string::npos);
  small.max_pixels = 10000;
  EXPECT_EQ(decode_image(dir / "ok.jpg", small).rows, 100);
}

// Crafted files that cost time or memory far beyond their size: a TIFF whose repeated size tags
// hid 20000^2 behind a small second pair (libtiff takes the first: so do we, and what OpenCV
// decodes is held to the limit too); a progressive JPEG repeating a scan 300 times (each scan
// a pass over the image); 1 MB of zeros named .jpg (refused from its first bytes).
TEST(Decode, CraftedFilesAreRefusedBeforeTheCostTheyAskFor) {
  test::TempDir dir;
  {
    // Little-endian TIFF, 20000 x 20000 grey then 1 x 1: one strip of 4 bytes (never read).
    std::vector<uint8_t> t{'I', 'I', 42, 0, 8, 0, 0, 0};
    const std::vector<std::array<uint32_t, 3>> entries{
        {256, 4, 20000}, {256, 4, 1}, {257, 4, 20000}, {257, 4, 1}, {258, 3, 8}, {259, 3, 1},
        {262, 3, 1},     {273, 4, 0}, {277, 3, 1},     {278, 4, 1}, {279, 4, 4}};
    const auto put = [&](uint32_t v, int n) {
      for (int i = 0; i < n; ++i)
        t.push_back(static_cast<uint8_t>(v >> (8 * i)));
    };
    put(static_cast<uint32_t>(entries.size()), 2);
    for (const auto& [tag, type, value] : entries) {
      put(tag, 2);
      put(type, 2);
      put(1, 4);
      put(value, 4);
    }
    put(0, 4);
    write_bytes(dir / "dup.tif", t);
    const auto msg = error_of([&] { decode_image(dir / "dup.tif"); });
    EXPECT_NE(msg.find("image too large: 20000x20000"), std::string::npos) << msg;
  }
  {
    cv::Mat noise(64, 64, CV_8UC3);
    cv::randu(noise, cv::Scalar::all(0), cv::Scalar::all(255));
    auto jpeg = encode(".jpg", noise, {cv::IMWRITE_JPEG_PROGRESSIVE, 1});
    // The last scan (from its SOS marker to the end-of-image marker) repeated 300 times.
    std::size_t sos = 0;
    for (std::size_t i = 0; i + 1 < jpeg.size(); ++i)
      if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xDA) sos = i;
    ASSERT_GT(sos, 0u);
    const std::vector<uint8_t> scan(jpeg.begin() + static_cast<std::ptrdiff_t>(sos),
                                    jpeg.end() - 2);
    std::vector<uint8_t> crafted(jpeg.begin(), jpeg.end() - 2);
    for (int i = 0; i < 300; ++i)
      crafted.insert(crafted.end(), scan.begin(), scan.end());
    crafted.push_back(0xFF);
    crafted.push_back(0xD9);
    write_bytes(dir / "scans.jpg", crafted);
    const auto msg = error_of([&] { decode_image(dir / "scans.jpg"); });
    EXPECT_NE(msg.find("more than 100 scans"), std::string::npos) << msg;
    write_bytes(dir / "progressive.jpg", jpeg);
    EXPECT_EQ(error_of([&] { decode_image(dir / "progressive.jpg"); }), "");
  }
  write_bytes(dir / "zeros.jpg", std::vector<uint8_t>(1 << 20, 0));
  EXPECT_NE(error_of([&] { decode_image(dir / "zeros.jpg"); }).find("not an image"),
            std::string::npos);
}

// The file-size bounds, with sparse files (no disk used): a file above 2 GiB is refused from its
// size, and one of exactly 2 GiB in a format OpenCV decodes (a valid 1 x 1 BMP header followed
// by zeros) from its size and first 64 KiB: cv::Mat counts the bytes in int (2^31 overflowed
// to a negative width, said as a corrupt image), and the whole file was read first (2 GiB of
// memory and 13 s here before the refusal).
TEST(Decode, FilesOfTwoGibibytesAndMoreAreRefusedByTheirSize) {
  namespace fs = std::filesystem;
  test::TempDir dir;
  const auto bmp = encode(".bmp", cv::Mat(1, 1, CV_8UC3, cv::Scalar::all(7)));
  write_bytes(dir / "big.bmp", bmp);
  fs::resize_file(dir / "big.bmp", (uintmax_t{2} << 30) + 1);
  EXPECT_EQ(error_of([&] { decode_image(dir / "big.bmp"); }),
            dir / "big.bmp" +
                ": file of 2147483649 bytes is above the image file limit of "
                "2147483648 bytes");
  fs::resize_file(dir / "big.bmp", uintmax_t{2} << 30);
  EXPECT_EQ(error_of([&] { decode_image(dir / "big.bmp"); }),
            dir / "big.bmp" +
                ": too large for OpenCV's bmp decoder: 2147483648 bytes, above 2 "
                "GiB - 1");
}

TEST(Decode, EveryBadFileGetsAnErrorNamingItAndTheProblem) {
  test::TempDir dir;
  const auto good_jpeg = encode(".jpg", quadrants_bgr());
  const auto good_png = encode(".png", quadrants_bgr());
  write_bytes(dir / "empty.jpg", {});
  write_bytes(dir / "text.jpg", std::vector<uint8_t>{'h', 'e', 'l', 'l', 'o', '\n'});
  write_bytes(dir / "cut.jpg",
              std::vector<uint8_t>(good_jpeg.begin(), good_jpeg.begin() + good_jpeg.size() / 2));
  write_bytes(dir / "cut.png",
              std::vector<uint8_t>(good_png.begin(), good_png.begin() + good_png.size() / 2));
  write_bytes(dir / "header.jpg", std::vector<uint8_t>(good_jpeg.begin(), good_jpeg.begin() + 5));
  auto corrupt = good_png;  // damage the compressed data inside IDAT
  for (std::size_t i = 45; i < 60 && i < corrupt.size() - 12; ++i)
    corrupt[i] ^= 0x5A;
  write_bytes(dir / "corrupt.png", corrupt);
  const std::map<std::string, std::string> expected{
      {"empty.jpg", "empty file"},     {"text.jpg", "not an image"}, {"cut.jpg", "truncated"},
      {"cut.png", "truncated"},        {"header.jpg", "truncated"},  {"corrupt.png", "corrupt"},
      {"missing.jpg", "no such file"}, {"", "is a folder"}};
  for (const auto& [name, problem] : expected) {
    const auto path = name.empty() ? dir.path().string() : dir / name;
    const auto msg = error_of([&] { decode_image(path); });
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << name << " -> " << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << name << " -> " << msg;
  }
}

// BMP, TIFF and WebP go through cv::imdecode, which printed the decoder's exception to stderr
// itself ("imdecode_(''): can't read data: OpenCV(4.6.0) ...", "> " lines, a [ WARN ] line)
// before attnscope's line naming the file: now nothing, and the reason is in the error.
TEST(Decode, CorruptBmpTiffAndWebpAreOneErrorWithOpenCvsReasonAndNothingOnStderr) {
  test::TempDir dir;
  const cv::Mat black(8, 8, CV_8UC3, cv::Scalar(0, 0, 0));
  auto put32 = [](std::vector<uint8_t>& b, std::size_t at, uint32_t v) {
    for (int k = 0; k < 4; ++k)
      b[at + k] = static_cast<uint8_t>(v >> (8 * k));
  };
  auto bmp = encode(".bmp", black);  // a header of 9000 x -9000 over 8 x 8 of data
  put32(bmp, 18, 9000);
  put32(bmp, 22, static_cast<uint32_t>(-9000));
  write_bytes(dir / "cut.bmp", bmp);
  auto tif = encode(".tiff", black);  // a header of 10000 x 10000 over 8 x 8 of data
  ASSERT_EQ(tif[0], 'I');
  const uint32_t ifd = tif[4] | tif[5] << 8 | tif[6] << 16 | static_cast<uint32_t>(tif[7]) << 24;
  const int entries = tif[ifd] | tif[ifd + 1] << 8;
  for (int k = 0; k < entries; ++k) {
    const std::size_t e = ifd + 2 + 12 * static_cast<std::size_t>(k);
    const int tag = tif[e] | tif[e + 1] << 8, type = tif[e + 2] | tif[e + 3] << 8;
    if (tag != 256 && tag != 257) continue;
    if (type == 3) {
      tif[e + 8] = 10000 & 0xff;
      tif[e + 9] = 10000 >> 8;
    } else {
      put32(tif, e + 8, 10000);
    }
  }
  write_bytes(dir / "cut.tif", tif);
  std::vector<std::string> names{"cut.bmp", "cut.tif"};
  if (cv::haveImageWriter(".webp")) {
    auto webp = encode(".webp", cv::Mat(16, 16, CV_8UC3, cv::Scalar(0, 0, 0)));
    webp.resize(30);
    write_bytes(dir / "cut.webp", webp);
    names.push_back("cut.webp");
  }
  for (const auto& name : names) {
    testing::internal::CaptureStderr();
    const auto msg = error_of([&] { decode_image(dir / name); });
    const auto said = testing::internal::GetCapturedStderr();
    EXPECT_EQ(said, "") << name;
    EXPECT_EQ(msg.rfind(dir / name + ": corrupt or truncated ", 0), 0u) << msg;
    EXPECT_NE(msg.find(": OpenCV could not decode it ("), std::string::npos) << msg;
    // OpenCV's reason instead, where (as 4.6 does) OpenCV prints it to std::cerr.
    if (cv::getVersionMajor() == 4 && cv::getVersionMinor() == 6)
      EXPECT_EQ(msg.find("or has no"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  // What is written to std::cerr outside a decode still reaches stderr.
  testing::internal::CaptureStderr();
  std::cerr << "still said" << std::endl;
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "still said\n");
}

// Defect 10: corrupt entropy-coded data used to decode to garbage with only libjpeg's bare
// warning on stderr. The oracle is libjpeg's own diagnosis of the damage the test made.
TEST(Decode, JpegWithCorruptScanDataIsAnError) {
  test::TempDir dir;
  cv::Mat noise(64, 64, CV_8UC3);
  cv::randu(noise, cv::Scalar::all(0), cv::Scalar::all(255));
  const auto good = encode(".jpg", noise);
  // The scan cut at two thirds, then an end-of-image marker: the end marker is there (so the
  // truncation check passes), but the entropy-coded data stops in the middle of an MCU.
  std::vector<uint8_t> cut(good.begin(),
                           good.begin() + static_cast<std::ptrdiff_t>(good.size() * 2 / 3));
  cut.push_back(0xFF);
  cut.push_back(0xD9);
  write_bytes(dir / "cut_scan.jpg", cut);
  const auto msg = error_of([&] { decode_image(dir / "cut_scan.jpg"); });
  EXPECT_EQ(msg.rfind(dir / "cut_scan.jpg" + ": corrupt JPEG stream: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("premature end of data segment"), std::string::npos) << msg;
  write_bytes(dir / "good.jpg", good);
  EXPECT_EQ(error_of([&] { decode_image(dir / "good.jpg"); }), "");
}

TEST(Decode, WriteImageRoundTripsRgb) {
  test::TempDir dir;
  cv::Mat rgb(5, 6, CV_8UC3);
  cv::RNG(9).fill(rgb, cv::RNG::UNIFORM, 0, 256);
  write_image(dir / "w.png", rgb);
  EXPECT_EQ(cv::norm(decode_image(dir / "w.png"), rgb, cv::NORM_INF), 0.0);
  EXPECT_NE(error_of([&] { write_image(dir / "nofolder/w.png", rgb); }).find("nofolder"),
            std::string::npos);
}

}  // namespace
}  // namespace attnscope::preprocessing
