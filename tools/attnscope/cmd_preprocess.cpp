// attnscope preprocess: run the preprocessing pipeline over images and write the results (and,
// with --steps, a strip of every stage for a person to check); `preprocess stats` computes a
// dataset's per-channel mean and standard deviation for the "normalize" config.

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <new>
#include <set>
#include <utility>
#include <vector>

#include <opencv2/imgproc.hpp>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "cli.h"
#include "dataset_flags.h"
#include "datasets/isic.h"
#include "datasets/walk.h"
#include "preprocessing/decode.h"
#include "preprocessing/pipeline.h"

namespace attnscope::cli {
namespace {

namespace fs = std::filesystem;

// A per-image line quotes file names: control characters escaped (a terminal escape, or a
// newline that would forge a line of its own), cut to a readable length.
std::string one_line(const std::string& text) {
  return excerpt(text, 1000);
}
using preprocessing::Pipeline;

constexpr int kStripHeight = 256;

Pipeline load_pipeline(const std::string& config) {
  return config.empty() ? Pipeline() : Pipeline::from_file(config);
}

// Every stage scaled to one height, side by side, each labelled with its step's name.
cv::Mat stage_strip(const std::vector<std::pair<std::string, cv::Mat>>& stages) {
  std::vector<cv::Mat> tiles;
  for (const auto& [name, image] : stages) {
    // At most 4 heights wide: a 1 x 5000 input made a 1.1M-pixel-wide tile (2.4 GB, beyond
    // PNG's width limit); wider stages are shown squeezed.
    const int w =
        std::clamp(static_cast<int>(int64_t{image.cols} * kStripHeight / std::max(1, image.rows)),
                   1, 4 * kStripHeight);
    cv::Mat tile;
    cv::resize(image, tile, {w, kStripHeight}, 0, 0, cv::INTER_AREA);
    cv::copyMakeBorder(tile, tile, 24, 0, 0, 4, cv::BORDER_CONSTANT, cv::Scalar(255, 255, 255));
    cv::putText(tile, name, {4, 17}, cv::FONT_HERSHEY_SIMPLEX, 0.5, cv::Scalar(0, 0, 0), 1,
                cv::LINE_AA);
    tiles.push_back(tile);
  }
  cv::Mat strip;
  cv::hconcat(tiles, strip);
  return strip;
}

int run_stats(const std::vector<std::string>& args) {
  const std::string usage = "preprocess stats --data CSV_OR_DIR [options]";
  po::options_description desc("Options");
  DatasetFlags data;
  data.masks = false;  // statistics of the images: a missing mask file fails nothing
  data.add_to(desc);
  std::string config;
  int limit = 0;
  // clang-format off
  desc.add_options()
      ("config", po::value(&config)->default_value(""),
       "preprocessing config (JSON); its steps run before counting; default: resize 224")
      ("limit", po::value(&limit)->default_value(0), "use at most this many images; 0 = all");
  // clang-format on
  po::variables_map vm;
  if (!parse(usage, desc, args, vm)) return 0;
  if (limit < 0) throw UsageError("--limit must be >= 0", usage_text(usage, desc));
  const auto pipeline = load_pipeline(config);
  const auto ds = data.read(usage_text(usage, desc));
  preprocessing::ChannelStats stats;
  std::size_t failed = 0, used = 0;
  // A CSV read without an images folder names no file at all: one line, not one per sample
  // (10,015 for HAM10000, whatever --limit).
  check(ds.samples.empty() || std::any_of(ds.samples.begin(), ds.samples.end(),
                                          [](const auto& s) { return !s.path.empty(); }),
        data.data, "names no image file for any of its ", ds.samples.size(),
        " samples: give --images with the folder of the images");
  for (const auto& s : ds.samples) {
    if (limit > 0 && used >= static_cast<std::size_t>(limit)) break;
    try {
      check(!s.path.empty(), s.image_id, "no image file (give --images)");
      stats.add(pipeline.process(pipeline.decode(s.path)).image);
      ++used;
    } catch (const Error& e) {
      std::cerr << "error: " << one_line(e.what()) << "\n";
      ++failed;
    } catch (const cv::Exception& e) {  // e.g. out of memory in a step: this image's failure
      std::cerr << "error: " << one_line(s.path) << ": OpenCV: " << one_line(e.err) << "\n";
      ++failed;
    } catch (const std::exception& e) {
      std::cerr << "error: " << one_line(s.path) << ": " << one_line(e.what()) << "\n";
      ++failed;
    }
  }
  check(used > 0, data.data, "no image could be read");
  const auto n = stats.result();
  const nlohmann::json out = {
      {"images", used}, {"failed", failed}, {"mean", n.mean}, {"std", n.std}};
  std::cout << out.dump() << "\n";
  return failed ? 1 : 0;
}

int run_preprocess(const std::vector<std::string>& args, const GlobalOptions&) {
  if (!args.empty() && args[0] == "stats")
    return run_stats(std::vector<std::string>(args.begin() + 1, args.end()));
  const std::string usage =
      "preprocess --input IMAGE_OR_DIR --out DIR [--config FILE] [--steps]\n"
      "       attnscope preprocess stats --data CSV_OR_DIR [--images DIR] [--config FILE]";
  po::options_description desc("Options");
  std::string input, out, config;
  bool steps = false;
  int64_t max_pixels = 0;
  // clang-format off
  desc.add_options()
      ("input", po::value(&input)->required(), "an image, or a folder of images")
      ("out", po::value(&out)->required(), "folder for the preprocessed images (PNG)")
      ("config", po::value(&config)->default_value(""),
       "preprocessing config (JSON); default: resize 224 + centre crop")
      ("steps", po::bool_switch(&steps),
       "also write <name>_steps.png: every stage side by side")
      ("max-pixels", po::value(&max_pixels)->default_value(0),
       "refuse images above this many pixels; 0 = the config's limit (100 megapixels)");
  // clang-format on
  po::variables_map vm;
  if (!parse(usage, desc, args, vm)) return 0;
  if (max_pixels < 0 || max_pixels > kMaxDecodePixels)
    throw UsageError(concat("--max-pixels must be in [0, ", kMaxDecodePixels, "]"),
                     usage_text(usage, desc));
  auto pipeline = load_pipeline(config);
  if (max_pixels > 0) {
    auto j = pipeline.to_json();
    j["decode"]["max_pixels"] = max_pixels;
    pipeline = Pipeline::from_json(j);
  }

  std::vector<fs::path> files;
  std::size_t ignored = 0, subfolders = 0;
  std::size_t failed = 0;
  std::error_code ec;
  if (fs::is_directory(input, ec)) {
    // The output folder must not be the input folder or inside it: outputs would replace
    // originals, or be read back as inputs on the next run.
    check(!folder_contains(input, out), out,
          "is the input folder or inside it; choose an output folder outside ", input);
    // Hidden entries (macOS's "._x.jpg", a running writer's ".x.png.<pid>-0.tmp.png", a hidden
    // dangling link) are no images, as in classify and the class folders.
    auto listing = datasets::list_folder(input, /*skip_hidden=*/true);
    for (const auto& problem : listing.problems) {  // one bad entry, one line; the run goes on
      std::cerr << "error: " << one_line(problem) << "\n";
      ++failed;
    }
    for (const auto& file : listing.files) {
      if (datasets::image_extension_rank(file) >= 0)
        files.push_back(file);
      else
        ++ignored;
    }
    subfolders = listing.folders.size();
  } else {
    const auto status = fs::status(input, ec);
    check(ec != std::errc::too_many_symbolic_link_levels, input, "symlink loop (", ec.message(),
          ")");
    check(fs::exists(status), input, "no such file or folder");
    check(fs::is_regular_file(status), input,
          "is not a regular file or a folder (a device or a pipe cannot be an image)");
    // Outputs beside their input would replace its neighbours (lesion.jpg's output replaced
    // the user's lesion.png), as the input folder's rule above says for folders.
    const auto beside = fs::path(input).parent_path().empty()
                            ? std::string(".")
                            : fs::path(input).parent_path().string();
    check(!same_file(beside, out), out, "is the folder of the input ", input,
          " (an output would replace the image of its name there); choose another output "
          "folder");
    files.push_back(input);
  }
  // Output names keep the input's extension when two inputs share a stem (a.jpg, a.png,
  // a.JPG -> a.jpg.png, a.png.png, a.JPG.png), so that no output replaces another. A name
  // still taken (a.png.jpg beside those; x_steps.jpg beside x.jpg's strip) gets ".2", ".3"
  // before ".png", with a warning: one output replaced another before.
  std::map<std::string, int> stems;
  for (const auto& file : files)
    ++stems[file.stem().string()];
  std::set<std::string> taken;
  const auto claim = [&](const std::string& name) {
    if (taken.insert(name).second) return name;
    for (int n = 2;; ++n)
      if (const auto other = concat(name, ".", n); taken.insert(other).second) return other;
  };
  // A name past a file name's 255 bytes (a 251-byte stem's ".jpg.png" or "_steps.png") failed
  // at the rename, after the work: such a stem is cut at a character boundary to `max` bytes,
  // "~" its last, so that "<name><suffix>.png" fits, with room for claim's ".N" when it adds one.
  const auto cut = [](const std::string& stem, std::size_t max) {
    std::size_t end = max - 1;
    while (end > 0 && (static_cast<unsigned char>(stem[end]) & 0xC0) == 0x80)
      --end;
    return stem.substr(0, end) + "~";
  };
  const auto claim_fitting = [&](const std::string& stem, const std::string& suffix) {
    const std::size_t limit = 255 - 4 - suffix.size();
    auto name = claim((stem.size() > limit ? cut(stem, limit) : stem) + suffix);
    if (name.size() + 4 > 255) {
      taken.erase(name);
      name = claim(cut(stem, limit - 8) + suffix);
    }
    return name;
  };
  std::vector<std::pair<std::string, std::string>> names;  // (image, strip) per input
  for (const auto& file : files) {
    const auto stem =
        stems[file.stem().string()] > 1 ? file.filename().string() : file.stem().string();
    names.emplace_back(claim_fitting(stem, ""), steps ? claim_fitting(stem, "_steps") : "");
    const auto whole = [&](const std::string& name, const std::string& suffix) {
      return name.compare(0, stem.size() + suffix.size(), stem + suffix) == 0;
    };
    if (!whole(names.back().first, "") || (steps && !whole(names.back().second, "_steps")))
      std::cerr << "warning: " << excerpt(file.string(), 300)
                << ": the output's name is cut to fit a file name's 255 bytes: "
                << excerpt(names.back().first, 300) << ".png\n";
    else if (names.back().first != stem)
      std::cerr << "warning: " << excerpt(file.string(), 300) << ": " << excerpt(stem, 300)
                << ".png is another input's output; written as " << excerpt(names.back().first)
                << ".png\n";
    check_not_an_input((fs::path(out) / (names.back().first + ".png")).string(), file.string(),
                       "an input image");
  }
  ensure_writable_output_folder(out);
  fs::create_directories(out, ec);
  check(fs::is_directory(out), out, "cannot create the output folder");
  // What a killed run left beside the outputs (a dead process's, not written for 10 minutes).
  std::vector<std::string> long_outputs;  // up to 255 bytes: they stand cut in a temporary's name
  for (const auto& name : taken)
    if (name.size() + 4 >= 200) long_outputs.push_back(name + ".png");
  remove_dead_temporaries_in(
      out,
      [&](const std::string& name) {
        return name.size() > 4 && name.compare(name.size() - 4, 4, ".png") == 0 &&
               taken.count(name.substr(0, name.size() - 4)) > 0;
      },
      long_outputs);

  const std::size_t failed_entries = failed;
  // An image written whose --steps strip was not (a full disk) counts as preprocessed; the
  // strips not written are counted apart (the image was counted failed, its file there).
  std::size_t strips_failed = 0;
  const auto attempt = [&](const fs::path& file, std::size_t& count, const auto& work) {
    try {
      work();
      return true;
    } catch (const Error& e) {
      std::cerr << "error: " << one_line(e.what()) << "\n";
    } catch (const cv::Exception& e) {
      std::cerr << "error: " << one_line(file.string()) << ": OpenCV: " << one_line(e.err) << "\n";
    } catch (const std::bad_alloc&) {  // this image's failure: the next may fit
      std::cerr << "error: " << one_line(file.string())
                << ": out of memory decoding or preprocessing it\n";
    } catch (const std::exception& e) {
      std::cerr << "error: " << one_line(file.string()) << ": " << one_line(e.what()) << "\n";
    }
    ++count;
    return false;
  };
  for (std::size_t i = 0; i < files.size(); ++i) {
    const auto& file = files[i];
    cv::Mat rgb;
    const bool written = attempt(file, failed, [&] {
      rgb = pipeline.decode(file.string());
      preprocessing::write_image((fs::path(out) / (names[i].first + ".png")).string(),
                                 pipeline.process(rgb).image);
    });
    if (written && steps)
      attempt(file, strips_failed, [&] {
        preprocessing::write_image((fs::path(out) / (names[i].second + ".png")).string(),
                                   stage_strip(pipeline.stages(rgb)));
      });
  }
  const auto total = files.size() + failed_entries;
  std::cout << "preprocessed " << total - failed << " of " << total << " images into "
            << one_line(out);
  if (failed) std::cout << " (" << failed << " failed)";
  if (strips_failed)
    std::cout << "; " << strips_failed << " --steps strip" << (strips_failed > 1 ? "s" : "")
              << " not written";
  if (ignored) std::cout << "; ignored " << ignored << " files without an image extension";
  // Not read, and not silently: a folder of class folders gave "preprocessed 0 of 0".
  if (subfolders)
    std::cout << "; did not read " << subfolders << " subfolder" << (subfolders > 1 ? "s" : "")
              << " (one folder's images are read, not its subfolders')";
  std::cout << "\n";
  return failed || strips_failed ? 1 : 0;
}

const Registration kPreprocess("preprocess",
                               "preprocess images (decode, hair removal, colour constancy, "
                               "resize); `preprocess stats` for mean/std",
                               run_preprocess);

}  // namespace
}  // namespace attnscope::cli
