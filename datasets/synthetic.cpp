#include "datasets/synthetic.h"

#include <array>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <opencv2/imgproc.hpp>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/threads.h"
#include "preprocessing/augment.h"
#include "preprocessing/decode.h"

namespace attnscope::datasets {
namespace {

namespace fs = std::filesystem;
using preprocessing::mix_seed;
using preprocessing::Rng;

constexpr double kTwoPi = 6.28318530717958647692;
constexpr int kOutlinePoints = 180;

// Independent random streams of one sample.
enum Stream : uint64_t { kLabelStream = 1, kSkinStream = 2, kArtefactStream = 3 };

cv::Vec3f mix(const cv::Vec3f& a, const cv::Vec3f& b, double t) {
  return a * static_cast<float>(1.0 - t) + b * static_cast<float>(t);
}

// Skin: a tone between fair and brown, low-frequency mottling and fine grain.
cv::Mat draw_skin(int s, Rng& rng) {
  const cv::Vec3f fair(236, 196, 178), brown(168, 118, 90);
  const cv::Vec3f tone = mix(fair, brown, rng.uniform(0.0, 1.0));
  cv::Mat coarse(std::max(2, s / 24), std::max(2, s / 24), CV_32FC1);
  for (auto it = coarse.begin<float>(); it != coarse.end<float>(); ++it)
    *it = static_cast<float>(rng.uniform(-10.0, 10.0));
  cv::Mat mottling;
  cv::resize(coarse, mottling, {s, s}, 0, 0, cv::INTER_CUBIC);
  cv::Mat grain(s, s, CV_32FC1);
  cv::RNG cv_rng(rng.next());
  cv_rng.fill(grain, cv::RNG::NORMAL, 0.0, 3.0);
  cv::Mat light = mottling + grain;
  cv::Mat img(s, s, CV_32FC3);
  for (int y = 0; y < s; ++y) {
    auto* row = img.ptr<cv::Vec3f>(y);
    const auto* l = light.ptr<float>(y);
    for (int x = 0; x < s; ++x)
      row[x] = tone + cv::Vec3f(l[x], l[x] * 0.9f, l[x] * 0.85f);
  }
  return img;
}

// The lesion outline in polar form r(θ) = R (1 + Σ a_k cos(kθ + φ_k)).
std::vector<cv::Point> outline(cv::Point2d centre, double radius, bool malignant, Rng& rng,
                               double scale = 1.0) {
  std::vector<std::array<double, 3>> terms;  // {k, amplitude, phase}
  if (malignant) {
    for (int k = 1; k <= 6; ++k)
      terms.push_back({double(k), rng.uniform(0.04, 0.13), rng.uniform(0.0, kTwoPi)});
    for (int k = 9; k <= 15; k += 2)  // a jagged, notched border
      terms.push_back({double(k), rng.uniform(0.008, 0.025), rng.uniform(0.0, kTwoPi)});
  } else {
    // An ellipse (k = 2) with a k = 4 term on the same axes: mirror-symmetric about both.
    const double phase = rng.uniform(0.0, kTwoPi);
    terms.push_back({2.0, rng.uniform(0.0, 0.12), phase});
    terms.push_back({4.0, rng.uniform(0.0, 0.02), 2.0 * phase});
  }
  std::vector<cv::Point> points;
  points.reserve(kOutlinePoints);
  for (int i = 0; i < kOutlinePoints; ++i) {
    const double t = kTwoPi * i / kOutlinePoints;
    double r = 1.0;
    for (const auto& [k, a, phi] : terms)
      r += a * std::cos(k * t + phi);
    r *= radius * scale;
    points.emplace_back(static_cast<int>(std::lround(centre.x + r * std::cos(t))),
                        static_cast<int>(std::lround(centre.y + r * std::sin(t))));
  }
  return points;
}

// Paints the lesion's colours into `paint` (float RGB) inside its outline.
void paint_lesion(cv::Mat& paint, const std::vector<cv::Point>& shape, cv::Point2d centre,
                  double radius, bool malignant, Rng& rng) {
  const int s = paint.rows;
  if (!malignant) {
    const cv::Vec3f light_brown(150, 98, 66), dark_brown(105, 65, 45);
    const cv::Vec3f base = mix(light_brown, dark_brown, rng.uniform(0.0, 0.6));
    paint.setTo(cv::Scalar(base[0], base[1], base[2]));
    if (rng.bernoulli(0.6)) {  // a second, darker brown in the centre: symmetric
      const cv::Vec3f inner = base * static_cast<float>(rng.uniform(0.7, 0.85));
      std::vector<cv::Point> core;
      for (const auto& p : shape)
        core.emplace_back(static_cast<int>(std::lround(centre.x + 0.55 * (p.x - centre.x))),
                          static_cast<int>(std::lround(centre.y + 0.55 * (p.y - centre.y))));
      cv::fillPoly(paint, std::vector<std::vector<cv::Point>>{core},
                   cv::Scalar(inner[0], inner[1], inner[2]));
    }
    cv::GaussianBlur(paint, paint, {0, 0}, std::max(1.0, s / 40.0));
    return;
  }
  const cv::Vec3f base(88, 52, 36);
  paint.setTo(cv::Scalar(base[0], base[1], base[2]));
  const cv::Vec3f colours[] = {{28, 22, 24}, {104, 114, 136}, {172, 70, 72}, {135, 85, 55}};
  const int patches = 3 + static_cast<int>(rng.below(4));
  for (int i = 0; i < patches; ++i) {  // off-centre patches of other colours
    const auto& c = colours[i < 3 ? i : rng.below(4)];
    const double a = rng.uniform(0.0, kTwoPi), d = rng.uniform(0.1, 0.7) * radius;
    const cv::Point2d at(centre.x + d * std::cos(a), centre.y + d * std::sin(a));
    const cv::Size axes(std::max(2, static_cast<int>(radius * rng.uniform(0.2, 0.45))),
                        std::max(2, static_cast<int>(radius * rng.uniform(0.15, 0.35))));
    cv::ellipse(paint, at, axes, rng.uniform(0.0, 180.0), 0, 360, cv::Scalar(c[0], c[1], c[2]),
                cv::FILLED);
  }
  cv::GaussianBlur(paint, paint, {0, 0}, std::max(1.0, s / 90.0));
  // Irregular dots and globules, crowded on one side.
  const int dots = 8 + static_cast<int>(rng.below(18));
  const double side = rng.uniform(0.0, kTwoPi);
  for (int i = 0; i < dots; ++i) {
    const double a = side + rng.normal() * 0.9, d = rng.uniform(0.3, 0.95) * radius;
    const cv::Point at(static_cast<int>(centre.x + d * std::cos(a)),
                       static_cast<int>(centre.y + d * std::sin(a)));
    const int r = std::max(1, static_cast<int>(std::lround(s * rng.uniform(0.006, 0.02))));
    const auto& c = rng.bernoulli(0.7) ? colours[0] : colours[1];
    cv::circle(paint, at, r, cv::Scalar(c[0], c[1], c[2]), cv::FILLED);  // LINE_AA is 8-bit only
  }
}

void draw_hairs(cv::Mat& img, Rng& rng, int max_hairs) {
  const int s = img.rows;
  const int n = 1 + static_cast<int>(rng.below(max_hairs));
  for (int h = 0; h < n; ++h) {
    // A quadratic Bézier from one border region to another.
    const cv::Point2d p0(rng.uniform(0, s), rng.uniform(0, s)),
        p2(rng.uniform(0, s), rng.uniform(0, s));
    const cv::Point2d p1(rng.uniform(0, s), rng.uniform(0, s));
    std::vector<cv::Point> curve;
    for (int i = 0; i <= 24; ++i) {
      const double t = i / 24.0;
      const cv::Point2d p = (1 - t) * (1 - t) * p0 + 2 * (1 - t) * t * p1 + t * t * p2;
      curve.emplace_back(static_cast<int>(p.x), static_cast<int>(p.y));
    }
    const int thickness =
        std::max(1, static_cast<int>(std::lround(s / 224.0 * rng.uniform(1, 2.5))));
    const int shade = static_cast<int>(rng.uniform(20, 60));
    cv::polylines(img, curve, false, cv::Scalar(shade + 10, shade, shade - 5), thickness,
                  cv::LINE_AA);
  }
}

void draw_ruler(cv::Mat& img, Rng& rng) {
  const int s = img.rows;
  const bool horizontal = rng.bernoulli(0.5);
  const int offset = static_cast<int>(s * rng.uniform(0.78, 0.9));
  const int step = std::max(3, s / 40);
  const int start = static_cast<int>(s * rng.uniform(0.1, 0.3)), end = s - start;
  const cv::Scalar ink(35, 35, 40);
  for (int i = 0, p = start; p < end; ++i, p += step) {
    const int len = i % 5 == 0 ? s / 20 : s / 40;
    const cv::Point a = horizontal ? cv::Point(p, offset) : cv::Point(offset, p);
    const cv::Point b = horizontal ? cv::Point(p, offset + len) : cv::Point(offset + len, p);
    cv::line(img, a, b, ink, std::max(1, s / 224), cv::LINE_AA);
  }
}

void draw_ink(cv::Mat& img, Rng& rng) {
  const int s = img.rows;
  cv::Mat layer = img.clone();
  const cv::Point at(static_cast<int>(rng.uniform(0.15, 0.85) * s),
                     static_cast<int>(rng.uniform(0.15, 0.85) * s));
  const cv::Scalar purple(95, 55, 150);
  if (rng.bernoulli(0.5))
    cv::circle(layer, at, std::max(2, s / 30), purple, cv::FILLED, cv::LINE_AA);
  else
    cv::ellipse(layer, at, {s / 4, s / 5}, rng.uniform(0, 180), 0, rng.uniform(40, 120), purple,
                std::max(2, s / 60), cv::LINE_AA);
  cv::addWeighted(img, 0.35, layer, 0.65, 0.0, img);
}

void draw_vignette(cv::Mat& img, Rng& rng) {
  const int s = img.rows;
  const double r0 = s * rng.uniform(0.46, 0.56), soft = s * 0.06;
  const double cx = (s - 1) / 2.0 + rng.uniform(-0.02, 0.02) * s;
  const double cy = (s - 1) / 2.0 + rng.uniform(-0.02, 0.02) * s;
  for (int y = 0; y < s; ++y) {
    auto* row = img.ptr<cv::Vec3b>(y);
    for (int x = 0; x < s; ++x) {
      const double d = std::hypot(x - cx, y - cy);
      if (d <= r0) continue;
      const double f = std::max(0.04, 1.0 - (d - r0) / soft);
      row[x] = cv::Vec3b(static_cast<uint8_t>(row[x][0] * f), static_cast<uint8_t>(row[x][1] * f),
                         static_cast<uint8_t>(row[x][2] * f));
    }
  }
}

}  // namespace

const char* placement_name(Placement placement) {
  return placement == Placement::kCentre ? "centre" : "anywhere";
}

Placement parse_placement(const std::string& name) {
  if (name == "centre" || name == "center") return Placement::kCentre;
  if (name == "anywhere") return Placement::kAnywhere;
  throw Error("placement", concat("expected centre or anywhere, got '", name, "'"));
}

std::string synthetic_id(int64_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "synth_%06lld", static_cast<long long>(index));
  return buf;
}

namespace {

// The index whose synthetic_id() is `id` exactly ("synth_000012" → 12); nothing for any other
// text ("synth_12", "synth_0000012", "synth_x"), so no file synth did not name is taken for one.
std::optional<int64_t> synthetic_index(const std::string& id) {
  if (id.rfind("synth_", 0) != 0 || id.size() > 24 || id.size() < 12 ||
      id.find_first_not_of("0123456789", 6) != std::string::npos)
    return std::nullopt;
  const int64_t index = std::stoll(id.substr(6));
  if (synthetic_id(index) != id) return std::nullopt;
  return index;
}

}  // namespace

int64_t synthetic_label(const SyntheticOptions& o, uint64_t seed, int64_t index) {
  Rng label_rng(mix_seed(seed, static_cast<uint64_t>(index), kLabelStream));
  return label_rng.bernoulli(o.malignant_fraction) ? 1 : 0;
}

SyntheticSample make_synthetic(const SyntheticOptions& o, uint64_t seed, int64_t index) {
  check(o.size >= 32, "synthetic", "size must be >= 32, got ", o.size);
  check(o.max_hairs >= 1, "synthetic", "max_hairs must be >= 1");
  const int s = o.size;
  const auto key = static_cast<uint64_t>(index);
  Rng label_rng(mix_seed(seed, key, kLabelStream));
  Rng skin_rng(mix_seed(seed, key, kSkinStream));
  Rng art_rng(mix_seed(seed, key, kArtefactStream));

  SyntheticSample out;
  out.image_id = synthetic_id(index);
  out.label = label_rng.bernoulli(o.malignant_fraction) ? 1 : 0;  // as synthetic_label()
  const bool malignant = out.label == 1;

  cv::Mat skin = draw_skin(s, skin_rng);
  // Both placements take three draws from the label stream, so the outline and colours that
  // follow are drawn the same way (and kCentre stays as it always was).
  cv::Point2d centre;
  double radius = 0;
  if (o.placement == Placement::kCentre) {
    centre = {(s - 1) / 2.0 + label_rng.uniform(-0.07, 0.07) * s,
              (s - 1) / 2.0 + label_rng.uniform(-0.07, 0.07) * s};
    radius = s * label_rng.uniform(0.17, 0.28);
  } else {
    const double u = label_rng.uniform(0.0, 1.0), v = label_rng.uniform(0.0, 1.0);
    radius = s * label_rng.uniform(0.09, 0.17);
    const double margin = 1.3 * radius, span = (s - 1) - 2 * margin;
    centre = {margin + u * span, margin + v * span};
  }
  const auto shape = outline(centre, radius, malignant, label_rng);
  out.mask = cv::Mat::zeros(s, s, CV_8UC1);
  cv::fillPoly(out.mask, std::vector<std::vector<cv::Point>>{shape}, cv::Scalar(255));

  cv::Mat paint(s, s, CV_32FC3);
  paint_lesion(paint, shape, centre, radius, malignant, label_rng);
  // Blend the lesion in through a softened mask: skin · (1 − α) + paint · α.
  cv::Mat alpha;
  out.mask.convertTo(alpha, CV_32F, label_rng.uniform(0.85, 0.97) / 255.0);
  cv::GaussianBlur(alpha, alpha, {0, 0}, std::max(0.8, s / (malignant ? 220.0 : 110.0)));
  cv::Mat alpha3;
  cv::merge(std::vector<cv::Mat>{alpha, alpha, alpha}, alpha3);
  cv::Mat blended = skin.mul(cv::Scalar::all(1.0) - alpha3) + paint.mul(alpha3);
  blended.convertTo(out.image, CV_8UC3);

  out.hairs = art_rng.bernoulli(o.hair_probability);
  out.ruler = art_rng.bernoulli(o.ruler_probability);
  out.ink = art_rng.bernoulli(o.ink_probability);
  out.vignette = art_rng.bernoulli(o.vignette_probability);
  Rng hair_rng(art_rng.next()), ruler_rng(art_rng.next()), ink_rng(art_rng.next()),
      vignette_rng(art_rng.next());
  if (out.ink) draw_ink(out.image, ink_rng);
  if (out.hairs) draw_hairs(out.image, hair_rng, o.max_hairs);
  if (out.ruler) draw_ruler(out.image, ruler_rng);
  if (out.vignette) draw_vignette(out.image, vignette_rng);
  return out;
}

Dataset write_synthetic(const std::string& dir, int64_t count, uint64_t seed,
                        const SyntheticOptions& options, int threads) {
  check(count >= 1, "synthetic", "count must be >= 1, got ", count);
  check(threads >= 1, "synthetic", "threads must be >= 1, got ", threads);
  std::error_code ec;
  // dir/labels.csv is replaced at the end: one that synth did not write (its first line is not
  // synth's header) is someone's ground truth, refused before anything is written.
  const auto labels_path = fs::path(dir) / "labels.csv";
  // Synth writes the indices 0 .. count-1, so what earlier runs may have left is the indices
  // below the largest count. While a run writes its images, that bound waits in this file
  // instead of labels.csv (a run that then failed or was killed left the new images under the
  // old labels, trained on as such); the next run reads it too, and removes what lies between
  // its own count and the bound. It goes once labels.csv is replaced.
  const auto extent_path = fs::path(dir) / ".synth-extent";
  const std::string extent_text = "attnscope synth: images below ";
  // The ids synth writes, zero-padded to six digits (`synth --count` is at most 9,999,999): a
  // crafted row's synth_999999999999 would make the sweep below take forever.
  constexpr int64_t kMaxIndex = 10'000'000;
  int64_t bound = 0;  // every synth_<index> an earlier run may have written is below it
  bool labels_ours = false;
  if (fs::exists(fs::symlink_status(labels_path, ec))) {
    // Opened only when a regular file (a FIFO blocked the open), its header compared by bytes
    // (a file without newlines was read whole into one line).
    std::ifstream in;
    std::string line(sizeof(kSyntheticHeader) - 1, '\0');
    if (fs::is_regular_file(labels_path, ec)) in.open(labels_path, std::ios::binary);
    labels_ours = in.is_open() && in.read(line.data(), static_cast<std::streamsize>(line.size())) &&
                  line == kSyntheticHeader;
    check(labels_ours, labels_path.string(),
          "exists and was not written by attnscope synth (its first line is not synth's "
          "header); synth would replace it: choose another output folder");
    // Only the ids are kept (a file of millions of rows read whole cost its size in memory).
    while (std::getline(in, line)) {
      const auto index = synthetic_index(line.substr(0, std::min<std::size_t>(line.find(','), 32)));
      if (index && *index < kMaxIndex) bound = std::max(bound, *index + 1);
    }
  }
  bool extent_ours = false;
  if (fs::exists(fs::symlink_status(extent_path, ec))) {
    std::ifstream in;
    if (fs::is_regular_file(fs::symlink_status(extent_path, ec)))
      in.open(extent_path, std::ios::binary);
    std::string line(64, '\0');
    line.resize(in.is_open()
                    ? static_cast<std::size_t>(
                          in.read(line.data(), static_cast<std::streamsize>(line.size())).gcount())
                    : 0);
    line = line.substr(0, line.find('\n'));
    int64_t below = -1;
    if (line.rfind(extent_text, 0) == 0) {
      const auto digits = line.substr(extent_text.size());
      const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), below);
      if (err != std::errc() || end != digits.data() + digits.size()) below = -1;
    }
    extent_ours = below >= 0 && below <= std::max(kMaxIndex, count);
    check(extent_ours, extent_path.string(),
          "exists and was not written by attnscope synth; synth would replace it: choose "
          "another output folder");
    bound = std::max(bound, below);
  }
  fs::create_directories(fs::path(dir) / "images", ec);
  fs::create_directories(fs::path(dir) / "masks", ec);
  check(fs::is_directory(fs::path(dir) / "images") && fs::is_directory(fs::path(dir) / "masks"),
        dir, "cannot create the output folders");
  // What a killed run left beside the outputs (a dead process's, not written for 10 minutes):
  // images/ and masks/ synth_<index>.png, labels.csv.
  for (const char* sub : {"images", "masks"})
    remove_dead_temporaries_in((fs::path(dir) / sub).string(), [](const std::string& name) {
      return name.size() > 4 && name.compare(name.size() - 4, 4, ".png") == 0 &&
             synthetic_index(name.substr(0, name.size() - 4)).has_value();
    });
  remove_dead_temporaries(labels_path.string());
  remove_dead_temporaries(extent_path.string());
  // Before the first image: the bound of what this and the earlier runs may leave, then
  // labels.csv removed, so that no moment leaves an image unaccounted for by both files.
  write_file_atomically(extent_path.string(),
                        extent_text + std::to_string(std::max(bound, count)) + "\n");
  if (labels_ours) {
    fs::remove(labels_path, ec);
    check(!ec, labels_path.string(),
          "cannot remove the earlier run's labels.csv before replacing its images: ", ec.message());
  }

  struct Row {
    int64_t label = 0;
    bool hairs = false, ruler = false, ink = false, vignette = false;
  };
  std::vector<Row> rows(static_cast<std::size_t>(count));
  std::atomic<int64_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  auto work = [&] {
    for (int64_t i = next++; i < count; i = next++) {
      try {
        const auto smp = make_synthetic(options, seed, i);
        preprocessing::write_image((fs::path(dir) / "images" / (smp.image_id + ".png")).string(),
                                   smp.image);
        preprocessing::write_image((fs::path(dir) / "masks" / (smp.image_id + ".png")).string(),
                                   smp.mask);
        rows[static_cast<std::size_t>(i)] = {smp.label, smp.hairs, smp.ruler, smp.ink,
                                             smp.vignette};
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
        next = count;
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t)
    pool.push_back(start_thread(work));
  work();
  for (auto& t : pool)
    t.join();
  if (failure) std::rethrow_exception(failure);

  const auto csv = (fs::path(dir) / "labels.csv").string();
  {
    std::ostringstream out;
    out << kSyntheticHeader;
    for (int64_t i = 0; i < count; ++i) {
      const auto& r = rows[static_cast<std::size_t>(i)];
      const auto id = synthetic_id(i);
      out << id << "," << (r.label ? "malignant" : "benign") << ",masks/" << id << ".png,"
          << r.hairs << "," << r.ruler << "," << r.ink << "," << r.vignette << "\n";
    }
    write_file_atomically(csv, out.str());
  }
  // A larger earlier run into this folder left images past `count` that labels.csv no longer
  // names (a folder listing, as `preprocess --input DIR/images` reads it, still found them):
  // synth's own names, with index in [count, bound).
  for (int64_t index = count; index < bound; ++index) {
    for (const char* sub : {"images", "masks"}) {
      const auto file = fs::path(dir) / sub / (synthetic_id(index) + ".png");
      std::error_code remove_ec;
      if (fs::is_regular_file(fs::symlink_status(file, remove_ec))) fs::remove(file, remove_ec);
    }
  }
  fs::remove(extent_path, ec);
  ReadOptions read;
  read.images_dir = (fs::path(dir) / "images").string();
  return read_dataset(csv, read);
}

}  // namespace attnscope::datasets
