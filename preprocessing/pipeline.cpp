#include "preprocessing/pipeline.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <tuple>
#include <type_traits>
#include <vector>

#include <opencv2/core.hpp>

#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "preprocessing/steps.h"

namespace attnscope::preprocessing {
namespace {

using nlohmann::json;

const char kSubject[] = "preprocessing config";

// A value of the config quoted in a message: cut (a 1 MB string stayed 1 MB) and never
// throwing (dump() throws on invalid UTF-8; depth is bounded before any message is made).
std::string shown(const json& j) {
  return excerpt(j.dump(-1, ' ', false, json::error_handler_t::replace), 200);
}

template <typename T>
struct IsArray : std::false_type {};
template <typename U, std::size_t N>
struct IsArray<std::array<U, N>> : std::true_type {};

// Reads the keys of one JSON object with type checks and rejects keys nobody asked for.
class Params {
 public:
  Params(const json& j, std::string where) : j_(j), where_(std::move(where)) {
    check(j.is_object(), kSubject, where_, " must be a JSON object, got ", shown(j));
  }
  template <typename T>
  void get(const char* key, T& value) {
    used_.insert(key);
    if (!j_.contains(key)) return;
    try {
      if constexpr (std::is_same_v<T, bool>) {
        check(j_.at(key).is_boolean(), kSubject, where_, ".", key, " must be true or false");
      } else if constexpr (std::is_arithmetic_v<T>) {
        check_number<T>(j_.at(key), key);
      } else if constexpr (IsArray<T>::value) {
        // Fixed-size number lists (pad, mean, std, ranges): the length and every element
        // checked as a number of its type (1e308 in an int pad was stored as INT_MIN).
        const auto& a = j_.at(key);
        check(a.is_array() && a.size() == std::tuple_size_v<T>, kSubject, where_, ".", key,
              " must be a list of ", std::tuple_size_v<T>, " numbers, got ", shown(a));
        for (const auto& v : a)
          check_number<typename T::value_type>(v, key);
      }
      value = j_.at(key).get<T>();
    } catch (const json::exception& e) {
      throw Error(kSubject, concat(where_, ".", key, ": wrong type (", shown(j_.at(key)), ")"));
    }
  }
  void done() const {
    std::string unknown;
    for (const auto& item : j_.items())
      if (!used_.count(item.key())) unknown += (unknown.empty() ? "" : ", ") + item.key();
    check(unknown.empty(), kSubject, "unknown key(s) in ", where_, ": ", excerpt(unknown, 200));
  }

 private:
  template <typename T>
  void check_number(const json& v, const char* key) const {
    check(v.is_number(), kSubject, where_, ".", key, " must be a number, got ", shown(v));
    const double x = v.get<double>();
    if constexpr (std::is_integral_v<T>) {
      check(x == std::floor(x), kSubject, where_, ".", key, " must be an integer, got ", shown(v));
      // Out of T's range the conversion is undefined behaviour (found by fuzzing: 1e29).
      check(x >= static_cast<double>(std::numeric_limits<T>::lowest()) &&
                x <= static_cast<double>(std::numeric_limits<T>::max()),
            kSubject, where_, ".", key, " is out of range: ", shown(v));
    } else {
      // Within T (a float's 3.4e38): 1e308 became an infinite normalisation.
      check(std::isfinite(x) && std::abs(x) <= static_cast<double>(std::numeric_limits<T>::max()),
            kSubject, where_, ".", key, " is out of range: ", shown(v));
    }
  }

  const json& j_;
  std::string where_;
  std::set<std::string> used_;
};

template <typename T>
void wrap_validate(const char* op, const T& fn) {
  try {
    fn();
  } catch (const Error& e) {
    throw Error(kSubject, concat("step '", op, "': ", e.what()));
  }
}

class CenterCropStep : public Step {
 public:
  explicit CenterCropStep(Params& p) {
    p.get("ratio", o_.ratio);
    wrap_validate("center_crop", [&] {
      check(o_.ratio > 0 && o_.ratio <= 1, "ratio", "must be in (0, 1], got ", o_.ratio);
    });
  }
  std::string name() const override { return "center_crop"; }
  cv::Mat apply(const cv::Mat& rgb, cv::Mat* mask) const override {
    return center_crop(rgb, o_, mask);
  }
  json to_json() const override { return {{"op", name()}, {"ratio", o_.ratio}}; }

 private:
  CenterCropOptions o_;
};

class ResizeStep : public Step {
 public:
  explicit ResizeStep(Params& p) {
    std::string mode = "crop";
    p.get("size", o_.size);
    p.get("mode", mode);
    p.get("pad", o_.pad);
    if (mode == "crop")
      o_.mode = ResizeMode::kCrop;
    else if (mode == "letterbox")
      o_.mode = ResizeMode::kLetterbox;
    else if (mode == "stretch")
      o_.mode = ResizeMode::kStretch;
    else
      throw Error(kSubject, concat("step 'resize': mode must be crop, letterbox or stretch, got '",
                                   mode, "'"));
    // Bounded: a config must not ask for a 10^9-pixel side (OpenCV would fail to allocate).
    wrap_validate("resize", [&] {
      check(o_.size > 0 && o_.size <= kMaxImageSide, "size", "must be in [1, ", kMaxImageSide,
            "], got ", o_.size);
      for (const int v : o_.pad)
        check(v >= 0 && v <= 255, "pad", "must be three values in [0, 255], got ", v);
    });
  }
  std::string name() const override { return "resize"; }
  cv::Mat apply(const cv::Mat& rgb, cv::Mat* mask) const override { return resize(rgb, o_, mask); }
  json to_json() const override {
    const char* mode = o_.mode == ResizeMode::kCrop        ? "crop"
                       : o_.mode == ResizeMode::kLetterbox ? "letterbox"
                                                           : "stretch";
    return {{"op", name()}, {"size", o_.size}, {"mode", mode}, {"pad", o_.pad}};
  }

 private:
  ResizeOptions o_;
};

class HairRemovalStep : public Step {
 public:
  explicit HairRemovalStep(Params& p) {
    p.get("kernel", o_.kernel);
    p.get("threshold", o_.threshold);
    p.get("inpaint_radius", o_.inpaint_radius);
    wrap_validate("hair_removal", [&] {
      check(o_.kernel >= 3 && o_.kernel <= 255 && o_.kernel % 2 == 1, "kernel",
            "must be odd and in [3, 255], got ", o_.kernel);
      check(o_.threshold >= 0 && o_.threshold <= 255, "threshold", "must be in 0..255");
      // Telea's cost grows with radius^2 per masked pixel: 100 with threshold 0 ran over a
      // minute for one 512 x 384 image.
      check(o_.inpaint_radius > 0 && o_.inpaint_radius <= 20, "inpaint_radius",
            "must be in (0, 20]");
    });
  }
  std::string name() const override { return "hair_removal"; }
  cv::Mat apply(const cv::Mat& rgb, cv::Mat*) const override { return remove_hair(rgb, o_); }
  json to_json() const override {
    return {{"op", name()},
            {"kernel", o_.kernel},
            {"threshold", o_.threshold},
            {"inpaint_radius", o_.inpaint_radius}};
  }

 private:
  HairRemovalOptions o_;
};

class ShadesOfGrayStep : public Step {
 public:
  explicit ShadesOfGrayStep(Params& p) {
    p.get("p", o_.p);
    p.get("gamma", o_.gamma);
    wrap_validate("shades_of_gray", [&] {
      check(o_.p >= 1 && o_.p <= 100, "p", "must be in [1, 100], got ", o_.p);
      // 255·(x/255)^(1/gamma): past 10 every pixel above black is white (1e308 was taken).
      check(o_.gamma >= 0 && o_.gamma <= 10, "gamma", "must be in [0, 10] (0 = off), got ",
            o_.gamma);
    });
  }
  std::string name() const override { return "shades_of_gray"; }
  cv::Mat apply(const cv::Mat& rgb, cv::Mat*) const override { return shades_of_gray(rgb, o_); }
  json to_json() const override { return {{"op", name()}, {"p", o_.p}, {"gamma", o_.gamma}}; }

 private:
  ColorConstancyOptions o_;
};

class ClaheStep : public Step {
 public:
  explicit ClaheStep(Params& p) {
    p.get("clip_limit", o_.clip_limit);
    p.get("tiles", o_.tiles);
    wrap_validate("clahe", [&] {
      check(o_.clip_limit > 0, "clip_limit", "must be > 0");
      check(o_.tiles >= 1 && o_.tiles <= 256, "tiles", "must be in [1, 256]");
    });
  }
  std::string name() const override { return "clahe"; }
  cv::Mat apply(const cv::Mat& rgb, cv::Mat*) const override { return clahe(rgb, o_); }
  json to_json() const override {
    return {{"op", name()}, {"clip_limit", o_.clip_limit}, {"tiles", o_.tiles}};
  }

 private:
  ClaheOptions o_;
};

json augment_to_json(const AugmentOptions& o) {
  return {{"hflip", o.hflip},
          {"vflip", o.vflip},
          {"rot90", o.rot90},
          {"crop", o.crop},
          {"crop_scale", o.crop_scale},
          {"crop_ratio", o.crop_ratio},
          {"affine", o.affine},
          {"degrees", o.degrees},
          {"translate", o.translate},
          {"scale", o.scale},
          {"brightness", o.brightness},
          {"contrast", o.contrast},
          {"saturation", o.saturation},
          {"hue", o.hue},
          {"blur", o.blur},
          {"blur_sigma", o.blur_sigma},
          {"noise", o.noise},
          {"noise_sigma", o.noise_sigma},
          {"cutout", o.cutout},
          {"cutout_holes", o.cutout_holes},
          {"cutout_size", o.cutout_size}};
}

AugmentOptions augment_from_json(const json& j) {
  AugmentOptions o;
  Params p(j, "augment");
  p.get("hflip", o.hflip);
  p.get("vflip", o.vflip);
  p.get("rot90", o.rot90);
  p.get("crop", o.crop);
  p.get("crop_scale", o.crop_scale);
  p.get("crop_ratio", o.crop_ratio);
  p.get("affine", o.affine);
  p.get("degrees", o.degrees);
  p.get("translate", o.translate);
  p.get("scale", o.scale);
  p.get("brightness", o.brightness);
  p.get("contrast", o.contrast);
  p.get("saturation", o.saturation);
  p.get("hue", o.hue);
  p.get("blur", o.blur);
  p.get("blur_sigma", o.blur_sigma);
  p.get("noise", o.noise);
  p.get("noise_sigma", o.noise_sigma);
  p.get("cutout", o.cutout);
  p.get("cutout_holes", o.cutout_holes);
  p.get("cutout_size", o.cutout_size);
  p.done();
  try {
    o.validate();
  } catch (const Error& e) {
    throw Error(kSubject, e.what());
  }
  return o;
}

}  // namespace

std::shared_ptr<const Step> make_step(const json& config) {
  check(config.is_object() && config.contains("op") && config.at("op").is_string(), kSubject,
        "each step must be an object with an \"op\" name, got ", shown(config));
  const auto op = config.at("op").get<std::string>();
  Params p(config, "step '" + op + "'");
  std::string ignored;
  p.get("op", ignored);
  std::shared_ptr<const Step> step;
  if (op == "center_crop")
    step = std::make_shared<CenterCropStep>(p);
  else if (op == "resize")
    step = std::make_shared<ResizeStep>(p);
  else if (op == "hair_removal")
    step = std::make_shared<HairRemovalStep>(p);
  else if (op == "shades_of_gray")
    step = std::make_shared<ShadesOfGrayStep>(p);
  else if (op == "clahe")
    step = std::make_shared<ClaheStep>(p);
  else
    throw Error(kSubject, concat("unknown step '", excerpt(op, 100),
                                 "' (known: center_crop, resize, hair_removal, shades_of_gray, "
                                 "clahe)"));
  p.done();
  return step;
}

Pipeline::Pipeline() {
  steps_.push_back(make_step({{"op", "resize"}, {"size", 224}}));
}

Pipeline Pipeline::from_json(const json& config) {
  // dump() and the checks below recurse: a config of 100,000 nested brackets overflowed the
  // stack.
  check(json_depth(config) <= kMaxJsonDepth, kSubject, "nested deeper than ", kMaxJsonDepth,
        " levels");
  Params p(config, "the config");
  Pipeline pipeline;
  json decode = json::object(), steps = json::array(), augment = json::object(),
       norm = json::object();
  // An absent "steps" keeps the default resize; an empty list means no steps.
  const bool has_steps = config.is_object() && config.contains("steps");
  p.get("decode", decode);
  p.get("steps", steps);
  p.get("augment", augment);
  p.get("normalize", norm);
  p.done();

  Params d(decode, "decode");
  d.get("max_pixels", pipeline.decode_.max_pixels);
  d.get("apply_orientation", pipeline.decode_.apply_orientation);
  d.get("reduce_to", pipeline.decode_.reduce_to);
  d.done();
  check(pipeline.decode_.max_pixels > 0 && pipeline.decode_.max_pixels <= kMaxDecodePixels,
        kSubject, "decode.max_pixels must be in [1, ", kMaxDecodePixels, "] (", kMaxImageSide,
        "^2)");
  check(pipeline.decode_.reduce_to >= 0 && pipeline.decode_.reduce_to <= 65535, kSubject,
        "decode.reduce_to must be in [0, 65535] (0 = full size)");

  if (has_steps) {
    check(steps.is_array(), kSubject, "steps must be a JSON array");
    pipeline.steps_.clear();
    for (const auto& s : steps)
      pipeline.steps_.push_back(make_step(s));
  }
  pipeline.augment_ = augment_from_json(augment);

  Params n(norm, "normalize");
  n.get("mean", pipeline.norm_.mean);
  n.get("std", pipeline.norm_.std);
  n.done();
  // The values as written, checked before float32 rounds them (1e-300 was quoted as "got 0").
  const auto written = [&](const char* key, const std::array<float, 3>& stored) {
    std::vector<double> out(stored.begin(), stored.end());
    if (norm.is_object() && norm.contains(key) && norm.at(key).is_array()) {
      out.clear();
      for (const auto& v : norm.at(key))
        out.push_back(v.get<double>());  // numbers: n.get above checked the types
    }
    return out;
  };
  // Above 0 is not enough: 1e-40 is a float32 denormal, and 255 / 1e-40 is infinite.
  for (double s : written("std", pipeline.norm_.std))
    check(s >= 1e-6 && s <= 1000, kSubject, "normalize.std must be in [1e-6, 1000], got ", s);
  for (double m : written("mean", pipeline.norm_.mean))
    check(std::abs(m) <= 1000, kSubject, "normalize.mean must be in [-1000, 1000], got ", m);
  return pipeline;
}

Pipeline Pipeline::from_file(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  check(std::filesystem::exists(status), path, "no such preprocessing config");
  check(std::filesystem::is_regular_file(status), path,
        "is not a file (a folder or a device cannot be a preprocessing config)");
  check(std::filesystem::file_size(path, ec) <= (1u << 20), path,
        "preprocessing config larger than 1 MiB");
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), path, "cannot open preprocessing config");
  std::ostringstream text;
  text << in.rdbuf();
  check(!in.bad(), path, "cannot read preprocessing config");
  // The whole file is one JSON value: a second config pasted after the first, or a key given
  // twice, is an error rather than silently dropped.
  const json config = parse_json_text(text.str(), path, "preprocessing config", true);
  try {
    return from_json(config);
  } catch (const Error& e) {
    throw Error(path, e.message());
  }
}

json Pipeline::to_json() const {
  json steps = json::array();
  for (const auto& s : steps_)
    steps.push_back(s->to_json());
  json decode = {{"max_pixels", decode_.max_pixels},
                 {"apply_orientation", decode_.apply_orientation}};
  // Written only when set, so that configs (and the checkpoints and results files that store
  // them) from before the option read and compare as they did.
  if (decode_.reduce_to > 0) decode["reduce_to"] = decode_.reduce_to;
  return {{"decode", decode},
          {"steps", steps},
          {"augment", augment_to_json(augment_)},
          {"normalize", {{"mean", norm_.mean}, {"std", norm_.std}}}};
}

void Pipeline::set_augment_options(const AugmentOptions& options) {
  options.validate();
  augment_ = options;
}

cv::Mat Pipeline::decode(const std::string& path) const {
  return decode_image(path, decode_);
}

Processed Pipeline::process(const cv::Mat& rgb, const cv::Mat& mask, const AugmentKey* key) const {
  check(rgb.type() == CV_8UC3, "preprocessing", "expected an RGB uint8 image (CV_8UC3), got type ",
        rgb.type());
  if (!mask.empty())
    check(mask.type() == CV_8UC1 && mask.size() == rgb.size(), "preprocessing",
          "mask must be CV_8UC1 of the image's size (", rgb.cols, "x", rgb.rows, "), got ",
          mask.cols, "x", mask.rows, " type ", mask.type());
  // Own copies: augmentation works in place and the inputs may be shared (e.g. a cache).
  Processed out{rgb, mask.empty() ? cv::Mat() : mask.clone()};
  bool owned = false;
  for (const auto& step : steps_) {
    out.image = step->apply(out.image, &out.mask);
    owned = true;
  }
  if (key && augment_.any()) {
    if (!owned) out.image = out.image.clone();
    augment(out.image, &out.mask, augment_, *key);
  }
  return out;
}

std::vector<std::pair<std::string, cv::Mat>> Pipeline::stages(const cv::Mat& rgb) const {
  std::vector<std::pair<std::string, cv::Mat>> out{{"input", rgb}};
  cv::Mat image = rgb;
  for (const auto& step : steps_) {
    image = step->apply(image, nullptr);
    out.emplace_back(step->name(), image);
  }
  return out;
}

void ChannelStats::add(const cv::Mat& rgb) {
  check(rgb.type() == CV_8UC3, "channel statistics", "expected an RGB uint8 image");
  for (int y = 0; y < rgb.rows; ++y) {
    const auto* row = rgb.ptr<cv::Vec3b>(y);
    for (int x = 0; x < rgb.cols; ++x)
      for (int c = 0; c < 3; ++c) {
        const double v = row[x][c] / 255.0;
        sum_[c] += v;
        sum_sq_[c] += v * v;
      }
  }
  n_ += static_cast<int64_t>(rgb.total());
}

Normalization ChannelStats::result() const {
  check(n_ > 0, "channel statistics", "no pixels were added");
  Normalization norm;
  for (int c = 0; c < 3; ++c) {
    const double mean = sum_[c] / n_;
    norm.mean[c] = static_cast<float>(mean);
    norm.std[c] = static_cast<float>(std::sqrt(std::max(0.0, sum_sq_[c] / n_ - mean * mean)));
  }
  return norm;
}

}  // namespace attnscope::preprocessing
