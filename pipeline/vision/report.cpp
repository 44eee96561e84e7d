#include "pipeline/vision/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string_view>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/json_text.h"
#include "attnscope/printable.h"
#include "attnscope/version.h"
#include "datasets/text/tokenizer.h"
#include "pipeline/h5.h"
#include "pipeline/metrics.h"
#include "pipeline/vision/results.h"

namespace attnscope::pipeline::vision {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kSchemaVersion = "1";
constexpr std::size_t kMaxFailureRows = 500;

// ---------------------------------------------------------------------------------------------
// Text

using datasets::text::valid_utf8;

// JSON for a <script type="application/json"> block: <, > and & only occur inside JSON
// strings, so escaping them everywhere keeps "</script>" and "<!--" from ending the block.
// script_json_size: the bytes append_script_json adds for `text`.
std::size_t script_json_size(std::string_view text) {
  std::size_t size = text.size();
  for (char c : text)
    size += c == '<' || c == '>' || c == '&' ? 5 : 0;
  return size;
}

void append_script_json(std::string& out, std::string_view text) {
  for (char c : text) {
    if (c == '<')
      out += "\\u003c";
    else if (c == '>')
      out += "\\u003e";
    else if (c == '&')
      out += "\\u0026";
    else
      out += c;
  }
}

std::string fmt(double v, int digits = 3) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Reading results.h5 (docs/hdf5-schema.md)

using h5::where;

// The first `limit` rows of a string dataset, fixed-length strings too (h5py writes them): the
// file's image or error count (a crafted file declaring 2^25 ids beside 8 images took 1.7 GB
// to read them all).
std::vector<std::string> read_strings(hid_t loc, const std::string& name, const std::string& file,
                                      int64_t limit) {
  return h5::read_string_rows(loc, name, file, limit, /*fixed_too=*/true);
}

std::string attribute(hid_t obj, const std::string& name, const std::string& file,
                      const std::string& otherwise = "") {
  return h5::has_attribute(obj, name) ? h5::read_string_attribute(obj, name, file) : otherwise;
}

json parse_json(const std::string& text, const std::string& subject) {
  return text.empty() ? json() : parse_json_text(text, subject, "attribute");
}

struct MapData {
  std::string name, normalization, source;
  std::string weights;  // of a "none" map: softmax (files before the attribute too) | sigmoid
  at::Tensor values;    // (N, h, w) float32
  double scale = 1;     // values are multiplied by this before colouring (1 or h·w)
  double vmax = 1;      // the top of the colour bar, in scaled units
  std::string unit;     // what the colour bar's numbers mean
  std::vector<char> unreadable;  // per row: its chunk cannot be read (shown without this map)
};

struct Measure {
  std::string map, name;
  std::vector<float> values;  // N, NaN where it does not apply
};

struct Results {
  explicit Results(const std::string& p)
      : path(p), file((h5::check_untrusted_file(p, false), h5::File::open(p))) {}
  std::string path;
  h5::File file;
  std::map<std::string, std::string> attrs;
  std::vector<std::string> class_names;
  double threshold = std::numeric_limits<double>::quiet_NaN();  // NaN: arg-max
  int64_t n = 0, c = 0;
  std::vector<std::string> ids, paths;
  std::vector<int64_t> index, truth, predicted;
  at::Tensor probability, probability_std;  // (N, C) float32; std undefined without TTA
  std::vector<MapData> maps;
  std::vector<Measure> measures;
  std::vector<std::array<std::string, 3>> errors;  // id, path, reason
  int height = 0, width = 0;
  bool has_images = false;
  std::vector<std::string> warnings;  ///< damage the report worked around
  /// The index in `warnings` of the line saying finished_at is empty (a stopped or killed
  /// classify run); -1 when finished.
  int64_t unfinished_warning = -1;
};

// "row 2 ('ISIC_0001'), row 7 ('b') and 3 more": the rows a damage warning names.
std::string rows_named(const std::vector<int64_t>& rows, const std::vector<std::string>& ids) {
  constexpr std::size_t kNamed = 3;
  std::string text;
  for (std::size_t i = 0; i < std::min(rows.size(), kNamed); ++i) {
    const auto r = static_cast<std::size_t>(rows[i]);
    text += concat(i == 0                 ? ""
                   : i + 1 == rows.size() ? " and "
                                          : ", ",
                   "row ", rows[i],
                   r < ids.size() ? concat(" ('", excerpt(ids[r], 60), "')") : std::string());
  }
  if (rows.size() > kNamed) text += concat(" and ", rows.size() - kNamed, " more");
  return text;
}

// One warning for the rows of a per-image dataset that cannot be read (a damaged chunk): the
// report shows the others, and says what the damaged ones are shown without.
// `read`: how many rows were read (the pictures of the --top images only), all by default.
void warn_unreadable(Results& r, const std::string& name, const std::vector<int64_t>& rows,
                     const std::string& reason, const std::string& shown, int64_t read = -1) {
  if (rows.empty()) return;
  const auto of = read < 0 || read == r.n
                      ? concat("of its ", r.n, r.n == 1 ? " row" : " rows")
                      : concat("of the ", read, read == 1 ? " row" : " rows", " shown");
  r.warnings.push_back(concat(where(r.path, name), ": ", rows.size(), " ", of, " cannot be read (",
                              reason, "): ", rows_named(rows, r.ids), "; ",
                              rows.size() == 1 ? "its card shows" : "their cards show", " ",
                              shown));
}

// Rows valid in every per-image dataset: num_images, capped by each dataset's length (a run
// killed inside a flush may leave some longer than others).
int64_t rows_of(hid_t loc, const std::string& name, const std::string& file) {
  const auto shape = h5::dataset_shape(loc, name, file);
  check(!shape.empty(), where(file, name), "is a scalar, expected one row per image");
  return shape[0];
}

// `values` false: every check, but maps and measures are checked by their shapes, not read
// (merge checks its shards with it: a shard's maps read whole cost memory in their size).
Results read_results(const std::string& path, bool values = true) {
  Results r(path);
  const hid_t root = r.file.id();
  for (const char* name : {"format", "schema_version", "attnscope_version", "model_path",
                           "model_config", "model_checksum", "preprocessing_config", "class_names",
                           "threshold", "temperature", "maps", "tta", "shard", "command_line",
                           "started_at", "finished_at", "num_images", "num_errors", "faithfulness"})
    if (h5::has_attribute(root, name)) r.attrs[name] = h5::read_string_attribute(root, name, path);
  check(r.attrs["format"] == "attnscope-results", path,
        "is not an attnscope results file (root attribute format = '", r.attrs["format"],
        "', expected 'attnscope-results')");
  check(r.attrs["schema_version"] == kSchemaVersion, path, "has results schema version '",
        r.attrs["schema_version"], "'; this attnscope reads version ", kSchemaVersion);
  const auto names = parse_json(r.attrs["class_names"], where(path, "@class_names"));
  check(names.is_array() && !names.empty(), where(path, "@class_names"),
        "expected a non-empty JSON array of class names");
  for (const auto& v : names)
    r.class_names.push_back(v.is_string() ? v.get<std::string>() : v.dump());
  r.c = static_cast<int64_t>(r.class_names.size());
  // The threshold a probability is compared with, and the temperature that calibrated it:
  // out-of-range values (a crafted or hand-edited file) would show wrong outcomes.
  const auto thr = parse_json(r.attrs["threshold"], where(path, "@threshold"));
  check(thr.is_null() || (thr.is_number() && thr.get<double>() >= 0 && thr.get<double>() <= 1),
        where(path, "@threshold"), "is '", excerpt(r.attrs["threshold"]),
        "', expected a number in [0, 1] or null (arg-max)");
  if (thr.is_number()) r.threshold = thr.get<double>();
  const auto temperature = parse_json(r.attrs["temperature"], where(path, "@temperature"));
  check(temperature.is_null() || (temperature.is_number() && temperature.get<double>() > 0 &&
                                  std::isfinite(temperature.get<double>())),
        where(path, "@temperature"), "is '", excerpt(r.attrs["temperature"]),
        "', expected a positive number or null");

  // Rows: num_images capped by every per-image dataset.
  int64_t n = std::numeric_limits<int64_t>::max();
  const bool has_count = r.attrs.count("num_images") > 0;  // present, even if empty: checked
  if (has_count) n = parse_row_count(r.attrs["num_images"], where(path, "@num_images"));
  // A dataset shorter than @num_images is damage (a killed run leaves them longer, never
  // shorter): the report shows the rows every dataset holds and says which one was short.
  const int64_t declared = has_count ? n : -1;
  const auto cap = [&](const std::string& name) {
    const auto rows = rows_of(root, name, path);
    if (declared >= 0 && rows < declared && r.warnings.empty())
      r.warnings.push_back(concat(where(path, name), " holds ", rows, " rows but @num_images is ",
                                  declared,
                                  ": the file is damaged; the report shows the rows "
                                  "every dataset holds"));
    n = std::min(n, rows);
  };
  const std::vector<std::string> per_image = {"images/id", "images/source_path", "images/label",
                                              "predictions/probability", "predictions/label"};
  for (const auto& name : per_image) {
    check(h5::exists(root, name), where(path, name), "missing (required by schema version 1)");
    cap(name);
  }
  const bool tta = h5::exists(root, "predictions/probability_std");
  if (tta) cap("predictions/probability_std");
  r.has_images = h5::exists(root, "images/preprocessed");
  if (r.has_images) cap("images/preprocessed");
  const bool has_index = h5::exists(root, "images/index");
  if (has_index) cap("images/index");
  if (h5::exists(root, "attention"))
    for (const auto& name : h5::children(h5::require_group(root, "attention", path).get()))
      cap("attention/" + name);
  // The per-image measures too (a short one stopped the report, where a short label only
  // warned).
  if (h5::exists(root, "measures")) {
    const auto group = h5::require_group(root, "measures", path);
    for (const auto& map : h5::children(group.get())) {
      h5::Handle sub(H5Gopen2(group.get(), map.c_str(), H5P_DEFAULT));
      if (!sub.valid()) continue;
      for (const auto& name : h5::children(sub.get()))
        cap("measures/" + map + "/" + name);
    }
  }
  r.n = n;
  // A run stopped or killed before its end (merge refuses such a file): the report is of the
  // images stored so far, and says so.
  if (r.attrs.count("finished_at") && r.attrs["finished_at"].empty()) {
    r.unfinished_warning = static_cast<int64_t>(r.warnings.size());
    r.warnings.push_back(concat(path,
                                " is from a classify run that did not finish (finished_at "
                                "is empty): the report shows the ",
                                n,
                                " images stored so far; complete it with the same classify "
                                "command and --resume"));
  }

  r.ids = read_strings(root, "images/id", path, n);
  r.paths = read_strings(root, "images/source_path", path, n);
  r.ids.resize(static_cast<std::size_t>(n));
  r.paths.resize(static_cast<std::size_t>(n));
  // classify stores an id once: a repeat is a damaged or edited file (its rows are shown).
  {
    std::map<std::string, std::size_t> seen;
    for (std::size_t i = 0; i < r.ids.size(); ++i) {
      const auto [it, fresh] = seen.emplace(r.ids[i], i);
      if (fresh) continue;
      r.warnings.push_back(concat(where(path, "images/id"), " holds '", excerpt(r.ids[i], 100),
                                  "' in rows ", it->second, " and ", i,
                                  ": the file is damaged or was edited"));
      break;
    }
  }
  const auto as_longs = [&](const std::string& name) {
    const auto stored = h5::read_tensor(root, name, path, n);
    // A class index stored as a float (0.7) would be truncated to another class.
    check(!stored.is_floating_point() && !stored.is_complex(), where(path, name), "holds ",
          stored.scalar_type(), " values, expected integer class indices");
    const auto t = stored.to(at::kLong).contiguous();
    check(t.dim() == 1, where(path, name), "expected one value per image");
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
  };
  r.truth = as_longs("images/label");
  r.predicted = as_longs("predictions/label");
  if (has_index) r.index = as_longs("images/index");
  if (static_cast<int64_t>(r.index.size()) != n) {
    r.index.resize(static_cast<std::size_t>(n));
    std::iota(r.index.begin(), r.index.end(), int64_t{0});
  }
  const auto probs = [&](const std::string& name) {
    auto t = h5::read_tensor(root, name, path, n).to(at::kFloat).contiguous();
    check(t.dim() == 2 && t.size(1) == r.c, where(path, name), "expected shape (N, ", r.c, ") for ",
          r.c, " classes, got ", t.sizes());
    return t;
  };
  r.probability = probs("predictions/probability");
  check_result_values(r.truth, torch::tensor(r.predicted, torch::kInt64), r.probability, n, r.c,
                      path);
  // classify's rule for predictions/label: p(class 1) >= the threshold (compared in float32) for
  // a binary model with one, else the most probable class. A row that breaks it (an edited or
  // damaged file) is shown as stored, and said: its outcome contradicted its probabilities
  // without a word. Within 1e-6 either side counts (ties, another rounding).
  {
    int64_t disagree = 0, first = -1;
    const bool by_threshold = r.c == 2 && std::isfinite(r.threshold);
    const float* p = r.probability.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      const float* pi = p + i * r.c;
      const int64_t y = r.predicted[static_cast<std::size_t>(i)];
      const float t = static_cast<float>(r.threshold);
      const bool ok = by_threshold ? (pi[1] >= t) == (y == 1) || std::abs(pi[1] - t) <= 1e-6f
                                   : pi[y] >= *std::max_element(pi, pi + r.c) - 1e-6f;
      if (!ok && disagree++ == 0) first = i;
    }
    if (disagree > 0) {
      const auto u = static_cast<std::size_t>(first);
      r.warnings.push_back(concat(
          where(path, "predictions/label"), ": ", disagree, " of its ", n,
          " rows disagree with their probabilities and ",
          by_threshold ? concat("the threshold ", fmt(r.threshold, 3)) : "the most probable class",
          " (first: row ", first, " ('", excerpt(r.ids[u], 60), "'), class ", r.predicted[u],
          by_threshold
              ? concat(" where p(class 1) = ", fmt(p[first * r.c + 1], 3))
              : concat(" (p = ", fmt(p[first * r.c + r.predicted[u]], 3), ") where class ",
                       std::max_element(p + first * r.c, p + (first + 1) * r.c) - (p + first * r.c),
                       " has ", fmt(*std::max_element(p + first * r.c, p + (first + 1) * r.c), 3)),
          "): the file is damaged or was edited; shown as stored"));
    }
  }
  if (tta) {
    r.probability_std = probs("predictions/probability_std");
    // The spread of 8 values in [0, 1] lies in [0, 0.5]; another value (a crafted file) sorted
    // and drew the cards by a meaningless uncertainty.
    const auto bad =
        (r.probability_std.isnan() | (r.probability_std < 0) | (r.probability_std > 0.5 + 1e-6))
            .nonzero();
    check(bad.size(0) == 0, where(path, "predictions/probability_std"), "row ",
          bad.size(0) ? bad[0][0].item<int64_t>() : 0,
          " holds a value outside [0, 0.5], which no spread of probabilities has");
  }

  if (r.has_images) {
    const auto shape = h5::dataset_shape(root, "images/preprocessed", path);
    check(shape.size() == 4 && shape[3] == 3 && shape[1] > 0 && shape[2] > 0 && shape[1] <= 16384 &&
              shape[2] <= 16384,
          where(path, "images/preprocessed"), "expected shape (N, H, W, 3)");
    // A filter this build lacks (h5py's lzf) is one line, not every picture "damaged".
    h5::check_filters_available(root, "images/preprocessed", path);
    // classify stores uint8 RGB; HDF5 would convert other numbers to uint8 on reading (floats
    // in [0, 1] drawn as a black picture, 16-bit values clipped to white).
    {
      h5::Handle set(H5Dopen2(root, "images/preprocessed", H5P_DEFAULT));
      h5::Handle type(set.valid() ? H5Dget_type(set.get()) : hid_t{-1});
      check(type.valid(), where(path, "images/preprocessed"), "cannot read its type");
      check(h5::same_numbers(type.get(), H5T_NATIVE_UINT8), where(path, "images/preprocessed"),
            "holds ", h5::type_name(type.get()),
            " values, expected uint8 RGB (0..255) as classify writes");
    }
    r.height = static_cast<int>(shape[1]);
    r.width = static_cast<int>(shape[2]);
  }

  if (h5::exists(root, "attention")) {
    const auto group = h5::require_group(root, "attention", path);
    std::vector<std::string> order;
    const auto listed = parse_json(r.attrs["maps"], where(path, "@maps"));
    const auto present = h5::children(group.get());
    int64_t absent = 0;  // classify lists exactly the maps it writes: damaged or edited
    std::string first_absent;
    std::set<std::string> listed_once, repeated;  // by their JSON text
    if (listed.is_array())
      for (const auto& v : listed) {
        const auto text = v.dump();
        const bool held =
            v.is_string() && std::count(present.begin(), present.end(), v.get<std::string>());
        if (!listed_once.insert(text).second) {
          // Listed twice (an edited file): it was drawn twice, each card one map longer. (One
          // /attention lacks is said below, once.)
          if (values && held && repeated.insert(text).second)
            r.warnings.push_back(concat(where(path, "@maps"), " lists ", json_excerpt(v, 100),
                                        " more than once: shown once"));
        } else if (held) {
          order.push_back(v.get<std::string>());
        } else if (absent++ == 0) {
          first_absent = json_excerpt(v, 100);
        }
      }
    if (values && absent > 0)  // one line, however many
      r.warnings.push_back(concat(where(path, "@maps"), " lists ", first_absent,
                                  absent > 1 ? concat(" and ", absent - 1, " more") : "",
                                  ", which /attention does not hold: not shown"));
    for (const auto& name : present)
      if (!std::count(order.begin(), order.end(), name)) order.push_back(name);
    // Files written before the maps' `weights` attribute: the model config's normalizer says
    // what its own maps hold (attn_vgg16's sigmoid gates), else softmax weights.
    std::string older_weights = "softmax";
    try {
      const auto config = parse_json(r.attrs["model_config"], where(path, "@model_config"));
      if (config.is_object() && config.value("normalizer", json()) == "sigmoid")
        older_weights = "sigmoid";
    } catch (const Error&) {  // shown as stored; the page's model section quotes it
    }
    for (const auto& name : order) {
      const std::string full = "attention/" + name;
      MapData m;
      m.name = name;
      if (!values) {
        const auto shape = h5::dataset_shape(root, full, path);
        check(shape.size() == 3 && shape[1] > 0 && shape[2] > 0, where(path, full),
              "expected shape (N, h, w)");
      } else {
        // A damaged chunk is one image's map (every map is one chunk per image): that card
        // shows no such map, the others do.
        std::vector<int64_t> bad;
        std::string reason;
        m.values = h5::read_rows_as_float(root, full, path, n, 0.0f, &bad, &reason);
        m.unreadable.assign(static_cast<std::size_t>(n), 0);
        for (const auto b : bad)
          m.unreadable[static_cast<std::size_t>(b)] = 1;
        warn_unreadable(r, full, bad, reason, "no " + name + " map");
        check(m.values.dim() == 3 && m.values.size(1) > 0 && m.values.size(2) > 0,
              where(path, full), "expected shape (N, h, w)");
      }
      h5::Handle set(H5Dopen2(root, full.c_str(), H5P_DEFAULT));
      m.normalization = attribute(set.get(), "normalization", path, "max");
      m.source = attribute(set.get(), "source", path);
      m.weights = attribute(set.get(), "weights", path, older_weights);
      if (!values) continue;
      // Non-finite values (a crafted or broken file) would poison the scale: shown as 0, and
      // said so (a blank map would otherwise look like a model that attended to nothing). One
      // pass over the values, which also takes each row's maximum, in place: isfinite(), its
      // sum (in int64) and nan_to_num() made copies of up to twice the maps' size (20,000 maps
      // of 28 x 28: 64 MB of values, 330 MB at the peak).
      const int64_t rows = m.values.size(0), per = m.values.size(1) * m.values.size(2);
      std::vector<float> row_max(static_cast<std::size_t>(rows), 0.0f);
      int64_t non_finite = 0;
      float* v = m.values.data_ptr<float>();
      for (int64_t i = 0; i < rows; ++i) {
        float top = -std::numeric_limits<float>::infinity();
        for (float *x = v + i * per, *end = x + per; x != end; ++x) {
          if (!std::isfinite(*x)) {
            ++non_finite;
            *x = 0.0f;
          }
          top = std::max(top, *x);
        }
        row_max[static_cast<std::size_t>(i)] = top;
      }
      if (non_finite > 0)
        r.warnings.push_back(concat(where(path, full), " holds ", non_finite,
                                    " non-finite values (NaN or infinity), shown as 0"));
      if (m.normalization == "none" && m.weights == "sigmoid") {
        // Each position's own gate in (0, 1) (AttnMel): no sum to compare with uniform.
        m.unit = "sigmoid gate of each position, 0 to 1";
        m.vmax = 1;
      } else if (m.normalization == "none" && m.weights == "softmax") {
        // Raw softmax weights sum to 1 over h·w positions: shown as multiples of uniform.
        m.scale = static_cast<double>(m.values.size(1) * m.values.size(2));
        m.unit = "× uniform attention (1 = every position equal)";
        // Of the rows read: an unreadable row's zeros would pull the scale down.
        std::vector<float> maxima;
        for (int64_t i = 0; i < rows; ++i)
          if (m.unreadable.empty() || !m.unreadable[static_cast<std::size_t>(i)])
            maxima.push_back(row_max[static_cast<std::size_t>(i)] * static_cast<float>(m.scale));
        m.vmax = maxima.empty()
                     ? 1.0
                     : torch::from_blob(maxima.data(), {static_cast<int64_t>(maxima.size())})
                           .quantile(0.99)
                           .item<double>();
        if (!(m.vmax > 0)) m.vmax = 1;
      } else {
        m.unit = m.normalization == "max"    ? "fraction of the image's maximum"
                 : m.normalization == "none" ? m.weights
                                             : m.normalization;
        m.vmax = 1;
      }
      r.maps.push_back(std::move(m));
    }
  }

  if (h5::exists(root, "measures")) {
    const auto group = h5::require_group(root, "measures", path);
    for (const auto& map : h5::children(group.get())) {
      h5::Handle sub(H5Gopen2(group.get(), map.c_str(), H5P_DEFAULT));
      if (!sub.valid()) continue;
      for (const auto& name : h5::children(sub.get())) {
        const std::string full = "measures/" + map + "/" + name;
        if (!values) {
          const auto shape = h5::dataset_shape(root, full, path);
          check(shape.size() == 1 && shape[0] >= n, where(path, full), "expected ", n,
                " values, got ", h5::shape_text(shape));
          continue;
        }
        std::vector<int64_t> bad;
        std::string reason;
        const auto t = h5::read_rows_as_float(root, full, path, n, NAN, &bad, &reason);
        check(t.dim() == 1, where(path, full), "expected ", n, " values, got ", t.sizes());
        warn_unreadable(r, full, bad, reason, "it as n/a");
        // NaN is a measure that does not apply (no mask); an infinity is none that attnscope
        // computes (each lies in [0, 1]): damage, shown as n/a as it was, but said.
        const auto infinite = t.isinf().sum().item<int64_t>();
        if (infinite > 0)
          r.warnings.push_back(concat(where(path, full), " holds ", infinite,
                                      infinite == 1 ? " infinite value" : " infinite values",
                                      ", which no measure has: shown as n/a"));
        Measure m{map, name, std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + n)};
        r.measures.push_back(std::move(m));
      }
    }
  }

  if (h5::exists(root, "errors/reason")) {
    // @num_errors is checked as @num_images is: "-3" left a failed input off the page, "1abc"
    // read as 1, and a number past 64 bits was ignored, without a word.
    const bool counted = r.attrs.count("num_errors") > 0;
    const int64_t limit =
        counted ? parse_row_count(r.attrs["num_errors"], where(path, "@num_errors")) : -1;
    auto ids = h5::exists(root, "errors/id") ? read_strings(root, "errors/id", path, limit)
                                             : std::vector<std::string>();
    auto paths = h5::exists(root, "errors/path") ? read_strings(root, "errors/path", path, limit)
                                                 : std::vector<std::string>();
    const auto reasons = read_strings(root, "errors/reason", path, limit);
    const std::size_t declared = counted ? static_cast<std::size_t>(limit)
                                         : std::max({ids.size(), paths.size(), reasons.size()});
    const std::size_t e = std::min(reasons.size(), declared);
    // classify writes the three columns together, @num_errors rows each: a column short of
    // that is a damaged or edited file (longer ones, a killed run's torn batch, are cut).
    if (std::min({ids.size(), paths.size(), reasons.size()}) < declared)
      r.warnings.push_back(concat(where(path, "errors"), " holds ", ids.size(), " ids, ",
                                  paths.size(), " paths and ", reasons.size(), " reasons for its ",
                                  declared,
                                  " failed inputs: the file is damaged or was edited; the report "
                                  "lists ",
                                  e));
    ids.resize(std::max(ids.size(), e));
    paths.resize(std::max(paths.size(), e));
    for (std::size_t i = 0; i < e; ++i)
      r.errors.push_back({ids[i], paths[i], reasons[i]});
  }
  return r;
}

// One preprocessed image (H, W, 3) RGB uint8, read as one hyperslab (one chunk); empty when
// HDF5 cannot read that chunk (damage), `reason` then saying why.
cv::Mat read_image(const Results& r, int64_t row, std::string* reason) {
  h5::Handle set(H5Dopen2(r.file.id(), "images/preprocessed", H5P_DEFAULT));
  check(set.valid(), where(r.path, "images/preprocessed"), "cannot open");
  h5::Handle space(H5Dget_space(set.get()));
  const std::vector<hsize_t> start{static_cast<hsize_t>(row), 0, 0, 0},
      count{1, static_cast<hsize_t>(r.height), static_cast<hsize_t>(r.width), 3};
  H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
  h5::Handle mem(H5Screate_simple(4, count.data(), nullptr));
  cv::Mat img(r.height, r.width, CV_8UC3);
  if (H5Dread(set.get(), H5T_NATIVE_UINT8, mem.get(), space.get(), H5P_DEFAULT, img.data) >= 0)
    return img;
  *reason = h5::last_error();
  if (reason->empty()) *reason = "HDF5 cannot read it";
  return cv::Mat();
}

// ---------------------------------------------------------------------------------------------
// Images

std::string jpeg_base64(const cv::Mat& bgr, int quality) {
  std::vector<uchar> buf;
  check(cv::imencode(".jpg", bgr, buf, {cv::IMWRITE_JPEG_QUALITY, quality}), "report",
        "cannot encode a JPEG thumbnail");
  return base64(buf.data(), buf.size());
}

std::string png_base64(const cv::Mat& bgr) {
  std::vector<uchar> buf;
  check(cv::imencode(".png", bgr, buf), "report", "cannot encode a PNG");
  return base64(buf.data(), buf.size());
}

// A map value in [0, vmax] as JET, as pytorch-grad-cam does (cv2.applyColorMap(COLORMAP_JET),
// which returns BGR: kept as BGR here because cv::imencode expects BGR).
cv::Mat jet_bgr(const cv::Mat& values, double vmax) {
  cv::Mat u8;
  values.convertTo(u8, CV_8U, 255.0 / vmax);  // saturates outside [0, vmax]
  cv::Mat bgr;
  cv::applyColorMap(u8, bgr, cv::COLORMAP_JET);
  return bgr;
}

// The input, square-padded? No: resized to the thumbnail's width, keeping the aspect.
cv::Size thumb_size(int h, int w, int side) {
  if (h <= 0 || w <= 0) return {side, side};
  if (w >= h) return {side, std::max(1, static_cast<int>(std::lround(double(side) * h / w)))};
  return {std::max(1, static_cast<int>(std::lround(double(side) * w / h))), side};
}

std::string colour_bar(const MapData& m) {
  cv::Mat ramp(1, 256, CV_32F);
  for (int i = 0; i < 256; ++i)
    ramp.at<float>(0, i) = static_cast<float>(i / 255.0);
  cv::Mat bar;
  cv::resize(jet_bgr(ramp, 1.0), bar, {256, 12}, 0, 0, cv::INTER_NEAREST);
  return png_base64(bar);
}

// ---------------------------------------------------------------------------------------------
// Sorting

struct Row {
  int64_t i = 0;
  double score = 0, uncertainty = 0;
  int outcome = 0;  // 0 unknown, 1 correct, 2 false positive / wrong, 3 false negative
};

const char* const kSortKeys[] = {"index", "id", "probability", "uncertainty", "error", nullptr};

bool higher_is_better(const std::string& measure) {
  return measure != "deletion_auc";
}

std::vector<Row> make_rows(const Results& r) {
  std::vector<Row> rows(static_cast<std::size_t>(r.n));
  const auto* p = r.probability.data_ptr<float>();
  const float* sd = r.probability_std.defined() ? r.probability_std.data_ptr<float>() : nullptr;
  const double thr = std::isfinite(r.threshold) ? r.threshold : 0.5;
  for (int64_t i = 0; i < r.n; ++i) {
    auto& row = rows[static_cast<std::size_t>(i)];
    row.i = i;
    const float* pi = p + i * r.c;
    const int64_t y = r.predicted[static_cast<std::size_t>(i)];
    const int64_t t = r.truth[static_cast<std::size_t>(i)];
    if (r.c == 2) {
      row.score = pi[1];
    } else {
      row.score = *std::max_element(pi, pi + r.c);
    }
    if (sd) {
      row.uncertainty = sd[i * r.c + y];
    } else if (r.c == 2) {
      row.uncertainty = 1.0 - std::abs(pi[1] - thr) / std::max(thr, 1 - thr);
    } else {
      std::vector<float> s(pi, pi + r.c);
      std::sort(s.rbegin(), s.rend());
      row.uncertainty = 1.0 - (s[0] - s[1]);
    }
    if (t < 0)
      row.outcome = 0;
    else if (t == y)
      row.outcome = 1;
    else if (r.c == 2 && t == 0)
      row.outcome = 2;
    else if (r.c == 2)
      row.outcome = 3;
    else
      row.outcome = 2;
  }
  return rows;
}

void sort_rows(std::vector<Row>& rows, const Results& r, const std::string& key) {
  const auto by = [&](auto less) { std::stable_sort(rows.begin(), rows.end(), less); };
  if (key == "index") {
    by([&](const Row& a, const Row& b) {
      return r.index[static_cast<std::size_t>(a.i)] < r.index[static_cast<std::size_t>(b.i)];
    });
  } else if (key == "id") {
    by([&](const Row& a, const Row& b) {
      return r.ids[static_cast<std::size_t>(a.i)] < r.ids[static_cast<std::size_t>(b.i)];
    });
  } else if (key == "probability") {
    by([](const Row& a, const Row& b) { return a.score > b.score; });
  } else if (key == "uncertainty") {
    by([](const Row& a, const Row& b) { return a.uncertainty > b.uncertainty; });
  } else if (key == "error") {
    // Mistakes first, the most confident ones first; then the rest by uncertainty.
    by([](const Row& a, const Row& b) {
      const bool ea = a.outcome >= 2, eb = b.outcome >= 2;
      if (ea != eb) return ea;
      return a.uncertainty < b.uncertainty;
    });
  } else {
    const auto slash = key.find('/');
    const Measure* m = nullptr;
    if (slash != std::string::npos)
      for (const auto& x : r.measures)
        if (x.map == key.substr(0, slash) && x.name == key.substr(slash + 1)) m = &x;
    if (!m) {
      std::string known;
      for (const char* const* k = kSortKeys; *k; ++k)
        known += std::string(*k) + ", ";
      for (const auto& x : r.measures)
        known += x.map + "/" + x.name + ", ";
      throw UnknownSortKey("--sort",
                           concat("unknown sort key '", excerpt(key, 200), "'; expected one of ",
                                  known.substr(0, known.size() - 2),
                                  slash != std::string::npos && r.measures.empty()
                                      ? " (this file holds no measures: MAP/MEASURE keys need "
                                        "a classify run with --faithfulness)"
                                      : ""));
    }
    const bool up = higher_is_better(m->name);  // worst first
    by([&](const Row& a, const Row& b) {
      const float va = m->values[static_cast<std::size_t>(a.i)],
                  vb = m->values[static_cast<std::size_t>(b.i)];
      if (std::isnan(va) != std::isnan(vb)) return std::isnan(vb);
      return up ? va < vb : va > vb;
    });
  }
}

// ---------------------------------------------------------------------------------------------
// SVG plots

struct Series {
  std::vector<std::pair<double, double>> points;
  std::string colour, label;
  bool bars = false;  // histogram bars of width `bar_width`, starting at x
  double bar_width = 0;
  bool markers = false;  // dots at the points
};

std::string svg_plot(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                     const std::vector<Series>& series, double ymax = 1, bool diagonal = false,
                     const std::string& metric = "") {
  const double W = 300, H = 240, L = 44, R = 10, T = 24, B = 40;
  const double pw = W - L - R, ph = H - T - B;
  const auto X = [&](double x) { return L + x * pw; };
  const auto Y = [&](double y) { return T + ph - std::min(y, ymax) / ymax * ph; };
  std::ostringstream s;
  s << "<figure class=\"plot\"" << (metric.empty() ? "" : " data-plot=\"" + metric + "\"")
    << "><svg viewBox=\"0 0 " << W << " " << H << "\" role=\"img\" aria-label=\""
    << html_escape(title) << "\">";
  s << "<text x=\"" << W / 2 << "\" y=\"15\" class=\"t\">" << html_escape(title) << "</text>";
  s << "<rect x=\"" << L << "\" y=\"" << T << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" class=\"frame\"/>";
  for (int k = 0; k <= 4; ++k) {
    const double v = k / 4.0;
    s << "<line x1=\"" << X(v) << "\" y1=\"" << T << "\" x2=\"" << X(v) << "\" y2=\"" << T + ph
      << "\" class=\"grid\"/>";
    s << "<line x1=\"" << L << "\" y1=\"" << Y(v * ymax) << "\" x2=\"" << L + pw << "\" y2=\""
      << Y(v * ymax) << "\" class=\"grid\"/>";
    s << "<text x=\"" << X(v) << "\" y=\"" << T + ph + 13 << "\" class=\"tick\">" << fmt(v, 2)
      << "</text>";
    s << "<text x=\"" << L - 4 << "\" y=\"" << Y(v * ymax) + 3 << "\" class=\"tick ty\">"
      << (ymax == 1 ? fmt(v, 2) : fmt(v * ymax, 0)) << "</text>";
  }
  s << "<text x=\"" << L + pw / 2 << "\" y=\"" << H - 6 << "\" class=\"lab\">"
    << html_escape(xlabel) << "</text>";
  s << "<text transform=\"translate(11 " << T + ph / 2 << ") rotate(-90)\" class=\"lab\">"
    << html_escape(ylabel) << "</text>";
  if (diagonal)
    s << "<line x1=\"" << X(0) << "\" y1=\"" << Y(0) << "\" x2=\"" << X(1) << "\" y2=\"" << Y(ymax)
      << "\" class=\"diag\"/>";
  int legend = 0;
  for (const auto& se : series) {
    if (se.bars) {
      for (const auto& [x, y] : se.points)
        if (y > 0)
          s << "<rect x=\"" << X(x) << "\" y=\"" << Y(y) << "\" width=\"" << se.bar_width * pw
            << "\" height=\"" << Y(0) - Y(y) << "\" fill=\"" << se.colour
            << "\" fill-opacity=\"0.55\"/>";
    } else if (!se.points.empty()) {
      s << "<polyline fill=\"none\" stroke=\"" << se.colour << "\" stroke-width=\"1.8\" points=\"";
      for (const auto& [x, y] : se.points)
        s << fmt(X(x), 1) << "," << fmt(Y(y), 1) << " ";
      s << "\"/>";
      if (se.markers)
        for (const auto& [x, y] : se.points)
          s << "<circle cx=\"" << fmt(X(x), 1) << "\" cy=\"" << fmt(Y(y), 1)
            << "\" r=\"2.5\" fill=\"" << se.colour << "\"/>";
    }
    if (!se.label.empty()) {
      s << "<rect x=\"" << L + 8 << "\" y=\"" << T + 6 + 13 * legend
        << "\" width=\"9\" height=\"9\" fill=\"" << se.colour << "\"/><text x=\"" << L + 21
        << "\" y=\"" << T + 14 + 13 * legend << "\" class=\"leg\">" << html_escape(se.label)
        << "</text>";
      ++legend;
    }
  }
  s << "</svg></figure>";
  return s.str();
}

// ---------------------------------------------------------------------------------------------
// The page

const char* kStyle = R"CSS(
:root{--alpha:0.5;--fg:#1d232a;--mute:#5f6b76;--line:#d8dee4;--bg:#f6f8fa;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:#fff}
header{padding:14px 22px;border-bottom:1px solid var(--line);background:var(--bg)}h1{font-size:20px;margin:0 0 4px}
h2{font-size:16px;margin:22px 0 8px}main{padding:0 22px 40px}.sub{color:var(--mute);font-size:12px}
.tiles{display:flex;flex-wrap:wrap;gap:10px}.tile{border:1px solid var(--line);border-radius:6px;padding:8px 12px;min-width:120px;background:#fff}
.tile b{display:block;font-size:20px}.tile span{color:var(--mute);font-size:12px}
.warning{border:1px solid #c62828;background:#fdecea;padding:6px 10px;border-radius:4px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid var(--line);padding:3px 8px;text-align:right}th{background:var(--bg)}
td.l,th.l{text-align:left}.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{margin:0;border:1px solid var(--line);border-radius:6px}
.plot svg{width:300px;height:240px;display:block}.plot .t{font-size:12px;font-weight:600;text-anchor:middle}
.plot .tick{font-size:9px;text-anchor:middle;fill:var(--mute)}.plot .ty{text-anchor:end}.plot .lab{font-size:10px;text-anchor:middle;fill:var(--mute)}
.plot .leg{font-size:10px}.plot .frame{fill:none;stroke:#8c959f}.plot .grid{stroke:#eaeef2}.plot .diag{stroke:#8c959f;stroke-dasharray:4 3}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}pre{white-space:pre-wrap;word-break:break-all;background:var(--bg);padding:8px;border-radius:6px;font-size:12px;max-height:300px;overflow:auto}
.bar{position:sticky;top:0;z-index:5;background:#fffffff0;border-bottom:1px solid var(--line);padding:8px 0;display:flex;flex-wrap:wrap;gap:10px;align-items:center}
.bar label{font-size:12px;color:var(--mute)}.bar input[type=number]{width:70px}.bar input[type=search]{width:160px}
.cbars{display:flex;flex-wrap:wrap;gap:16px;margin:8px 0}.cbar{font-size:11px}.cbar img{width:200px;height:10px;display:block}.cbar .ends{display:flex;justify-content:space-between;width:200px;color:var(--mute)}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(var(--cw),1fr));gap:12px;margin-top:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px;content-visibility:auto;contain-intrinsic-size:auto 330px}
.card.o2,.card.o3{border-color:var(--bad)}.card .id{font-weight:600;word-break:break-all}.card .path{color:var(--mute);font-size:11px;word-break:break-all}
.ims{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}.im{position:relative;background:#eee}.im img{display:block}.im img.ov{position:absolute;left:0;top:0;opacity:var(--alpha)}
.im .cap{font-size:10px;color:var(--mute);text-align:center}.badge{display:inline-block;padding:0 6px;border-radius:9px;font-size:11px;color:#fff}
.b0{background:#8c959f}.b1{background:var(--ok)}.b2,.b3{background:var(--bad)}.kv{font-size:12px;margin-top:4px}.kv td,.kv th{padding:1px 5px}
.pager{margin:12px 0;display:flex;gap:8px;align-items:center}.hide{display:none}
)CSS";

// The inline script: builds the cards of the current page from the JSON block, sorts, filters,
// attaches images lazily, and drives the opacity slider. Strings go in through textContent.
const char* kScript = R"JS(
(function(){
'use strict';
var D=JSON.parse(document.getElementById('report-data').textContent);
var $=function(id){return document.getElementById(id);};
function el(tag,cls,text){var e=document.createElement(tag);if(cls)e.className=cls;if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
function f3(v){return (v===null||v===undefined||!isFinite(v))?'n/a':Number(v).toFixed(3);}
var C=D.classes,IMGS=D.images,MAPS=D.maps,MEAS=D.measures,PAGE=D.page_size;
var OUT=['unlabelled','correct',C.length===2?'false positive':'wrong','false negative'];
var state={sort:D.sort,desc:true,outcome:'all',q:'',field:'probability',lo:'',hi:'',page:0};
function value(r,key){
  if(key==='index')return r.n;if(key==='id')return r.id;if(key==='probability')return r.sc;
  if(key==='uncertainty')return r.u;if(key==='error')return (r.o>=2?2:0)-r.u;
  var k=MEAS.indexOf(key);if(k>=0)return r.m[k];return null;}
function defaultDesc(key){if(key==='index'||key==='id')return false;
  if(key.indexOf('/')>0)return /deletion/.test(key);return true;}
function filtered(){
  var q=state.q.toLowerCase(),lo=parseFloat(state.lo),hi=parseFloat(state.hi),out=[];
  for(var i=0;i<IMGS.length;i++){var r=IMGS[i];
    if(state.outcome==='errors'&&r.o<2)continue;
    if(state.outcome==='fp'&&r.o!==2)continue;if(state.outcome==='fn'&&r.o!==3)continue;
    if(state.outcome==='correct'&&r.o!==1)continue;if(state.outcome==='unlabelled'&&r.o!==0)continue;
    if(q&&r.id.toLowerCase().indexOf(q)<0&&r.path.toLowerCase().indexOf(q)<0)continue;
    if(!isNaN(lo)||!isNaN(hi)){var v=value(r,state.field);if(v===null||v===undefined)continue;
      if(!isNaN(lo)&&v<lo)continue;if(!isNaN(hi)&&v>hi)continue;}
    out.push(r);}
  var key=state.sort,sgn=state.desc?-1:1;
  out.sort(function(a,b){var x=value(a,key),y=value(b,key);
    var xn=(x===null||x===undefined||(typeof x==='number'&&isNaN(x))),yn=(y===null||y===undefined||(typeof y==='number'&&isNaN(y)));
    if(xn||yn)return xn===yn?a.n-b.n:(xn?1:-1);
    if(x<y)return -sgn;if(x>y)return sgn;return a.n-b.n;});
  return out;}
var io=('IntersectionObserver' in window)?new IntersectionObserver(function(es){es.forEach(function(e){if(e.isIntersecting){attach(e.target);io.unobserve(e.target);}});},{rootMargin:'600px'}):null;
function attach(card){var r=IMGS[card.dataset.k];var ims=card.querySelectorAll('img[data-s]');
  for(var i=0;i<ims.length;i++){var s=ims[i].dataset.s;ims[i].src='data:image/jpeg;base64,'+(s==='in'?r.img:r.maps[+s]);ims[i].removeAttribute('data-s');}}
function card(r,k){
  var c=el('div','card o'+r.o);c.dataset.k=k;c.dataset.id=r.id;
  c.appendChild(el('div','id',r.id));c.appendChild(el('div','path',r.path));
  var ims=el('div','ims');
  function tile(cap,ov){var t=el('div','im');var a=el('img');a.width=r.w;a.height=r.h;a.alt=cap;a.dataset.s='in';t.appendChild(a);
    if(ov!==null){var b=el('img','ov');b.width=r.w;b.height=r.h;b.alt=cap;b.dataset.s=String(ov);t.appendChild(b);}
    t.appendChild(el('div','cap',cap));return t;}
  if(r.img){ims.appendChild(tile('input',null));for(var j=0;j<MAPS.length;j++)ims.appendChild(r.maps[j]===null?tile(MAPS[j]+' (unreadable)',null):tile(MAPS[j],j));}
  c.appendChild(ims);if(r.x)c.appendChild(el('div','path',r.x));
  var kv=el('table','kv');function row(k,v,cls){var tr=el('tr');tr.appendChild(el('td','l',k));var td=el('td','l'+(cls?' '+cls:''),v);tr.appendChild(td);kv.appendChild(tr);return td;}
  for(var q=0;q<C.length;q++){if(C.length===2&&q===0)continue;
    row('p('+C[q]+')',f3(r.p[q])+(r.s?' ± '+f3(r.s[q]):''));}
  row('prediction',C[r.y]);row('truth',r.t>=0?C[r.t]:'unknown');
  var td=row('outcome','');td.appendChild(el('span','badge b'+r.o,OUT[r.o]));
  c.appendChild(kv);
  if(MEAS.length){var mt=el('table','kv mt'),hd=el('tr');hd.appendChild(el('th','l','measure'));
    MMAPS.forEach(function(mp){hd.appendChild(el('th',null,mp));});mt.appendChild(hd);
    MNAMES.forEach(function(nm){var tr=el('tr');tr.appendChild(el('td','l',nm));
      MMAPS.forEach(function(mp){var k=MEAS.indexOf(mp+'/'+nm);tr.appendChild(el('td',null,k>=0&&r.m[k]!==null?f3(r.m[k]):''));});
      mt.appendChild(tr);});
    c.appendChild(mt);}
  return c;}
var MMAPS=[],MNAMES=[];MEAS.forEach(function(k){var i=k.indexOf('/'),mp=k.slice(0,i),nm=k.slice(i+1);
  if(MMAPS.indexOf(mp)<0)MMAPS.push(mp);if(MNAMES.indexOf(nm)<0)MNAMES.push(nm);});
var current=[];
function render(){
  current=filtered();var n=current.length,pages=Math.max(1,Math.ceil(n/PAGE));
  if(state.page>=pages)state.page=pages-1;
  var box=$('cards');box.textContent='';var frag=document.createDocumentFragment();
  var from=state.page*PAGE,to=Math.min(n,from+PAGE);
  for(var i=from;i<to;i++){var c=card(current[i],current[i].k);frag.appendChild(c);}
  box.appendChild(frag);
  var cs=box.children;for(var j=0;j<cs.length;j++){if(io)io.observe(cs[j]);else attach(cs[j]);}
  $('count').textContent=n+' of '+IMGS.length+' images'+(pages>1?' — page '+(state.page+1)+' of '+pages:'');
  $('prev').disabled=state.page<=0;$('next').disabled=state.page>=pages-1;}
for(var i=0;i<IMGS.length;i++)IMGS[i].k=i;
function opt(sel,v,t){var o=el('option',null,t);o.value=v;sel.appendChild(o);}
var keys=[['index','input order'],['id','id'],['probability','probability'],['uncertainty','uncertainty'],['error','errors first']];
MEAS.forEach(function(m){keys.push([m,m]);});
keys.forEach(function(k){opt($('sort'),k[0],k[1]);});
[['probability','probability'],['uncertainty','uncertainty']].concat(MEAS.map(function(m){return [m,m];})).forEach(function(k){opt($('field'),k[0],k[1]);});
$('sort').value=state.sort;state.desc=defaultDesc(state.sort);
function dir(){$('dir').textContent=state.desc?'↓ descending':'↑ ascending';}dir();
$('sort').onchange=function(){state.sort=this.value;state.desc=defaultDesc(this.value);dir();state.page=0;render();};
$('dir').onclick=function(){state.desc=!state.desc;dir();render();};
$('outcome').onchange=function(){state.outcome=this.value;state.page=0;render();};
$('q').oninput=function(){state.q=this.value;state.page=0;render();};
$('field').onchange=function(){state.field=this.value;state.page=0;render();};
$('lo').oninput=function(){state.lo=this.value;state.page=0;render();};
$('hi').oninput=function(){state.hi=this.value;state.page=0;render();};
$('alpha').oninput=function(){document.documentElement.style.setProperty('--alpha',this.value);$('alphav').textContent=Number(this.value).toFixed(2);};
$('prev').onclick=function(){state.page--;render();window.scrollTo(0,$('images').offsetTop);};
$('next').onclick=function(){state.page++;render();window.scrollTo(0,$('images').offsetTop);};
$('psize').onchange=function(){PAGE=Math.max(1,parseInt(this.value,10)||100);state.page=0;render();};
document.documentElement.style.setProperty('--cw',(D.thumb*(1+Math.min(MAPS.length,3))+40)+'px');
render();
document.body.dataset.ready='1';
document.body.dataset.readyMs=String(Math.round(performance.now()));
})();
)JS";

struct Tile {
  std::string label, value, metric, note;
};

std::string tiles(const std::vector<Tile>& ts) {
  std::ostringstream s;
  s << "<div class=\"tiles\">";
  for (const auto& t : ts) {
    s << "<div class=\"tile\"><b";
    if (!t.metric.empty()) s << " data-metric=\"" << t.metric << "\"";
    s << ">" << html_escape(t.value) << "</b><span>" << html_escape(t.label) << "</span>";
    if (!t.note.empty()) s << "<div class=\"sub\">" << html_escape(t.note) << "</div>";
    s << "</div>";
  }
  s << "</div>";
  return s.str();
}

std::string pretty_json(const std::string& text) {
  try {
    const auto value = json::parse(text);
    if (json_depth(value) > kMaxJsonDepth) return text;  // dump() recurses: shown as stored
    return value.dump(2, ' ', false, json::error_handler_t::replace);
  } catch (const std::exception&) {
    return text;
  }
}

std::string label_summary(const Results& r, const std::vector<Row>& rows, ReportSummary* out) {
  // In the file's order, not the cards': the bootstrap interval resamples by position, so
  // --sort and --top changed it.
  std::vector<int64_t> truth, keep;
  for (const auto& row : rows)
    if (r.truth[static_cast<std::size_t>(row.i)] >= 0) keep.push_back(row.i);
  std::sort(keep.begin(), keep.end());
  for (const auto i : keep)
    truth.push_back(r.truth[static_cast<std::size_t>(i)]);
  std::ostringstream s;
  s << "<h2>Against the ground truth</h2>";
  if (truth.empty()) {
    s << "<p class=\"sub\" data-metric=\"unlabelled\">No image has a known label: no accuracy "
         "measures.</p>";
    return s.str();
  }
  const auto probs = r.probability.index_select(0, torch::tensor(keep, torch::kLong));
  MetricsOptions o;
  o.threshold = std::isfinite(r.threshold) ? r.threshold : 0.5;
  o.class_names = r.class_names;
  o.curves = true;
  const ClassificationMetrics m = compute_metrics(truth, probs, o);
  const bool binary = r.c == 2;
  out->labelled = true;
  out->auc = m.auc;
  out->auc_low = m.auc_interval.low;
  out->auc_high = m.auc_interval.high;
  out->auc_undefined = m.auc_undefined;
  out->balanced_accuracy = m.balanced_accuracy;

  std::vector<Tile> ts;
  ts.push_back({"labelled images", std::to_string(truth.size()), "labelled", ""});
  const std::string auc_label =
      binary ? "ROC AUC (" + r.class_names[1] + ")" : "ROC AUC (macro one-vs-rest)";
  if (std::isfinite(m.auc)) {
    const std::string ci = m.auc_interval.resamples > 0
                               ? "95% CI " + fmt(m.auc_interval.low) + "–" +
                                     fmt(m.auc_interval.high) + " (bootstrap, " +
                                     std::to_string(m.auc_interval.resamples) + " resamples)"
                               : "";
    ts.push_back({auc_label, fmt(m.auc), "auc", ci});
    ts.push_back({binary ? "average precision" : "average precision (macro)",
                  fmt(m.average_precision), "average_precision", ""});
  } else {
    ts.push_back({auc_label, "n/a", "auc_undefined", m.auc_undefined});
  }
  ts.push_back({"balanced accuracy", fmt(m.balanced_accuracy), "balanced_accuracy", ""});
  ts.push_back({"accuracy", fmt(m.accuracy), "accuracy", ""});
  const std::string at = binary ? "at threshold " + fmt(m.threshold) : "macro average";
  ts.push_back({"sensitivity", fmt(m.sensitivity), "sensitivity", at});
  ts.push_back({"specificity", fmt(m.specificity), "specificity", at});
  ts.push_back({"expected calibration error", fmt(m.ece), "ece",
                std::to_string(m.reliability.size()) + " bins, top-label"});
  s << tiles(ts);

  s << "<h2>Confusion matrix</h2><table data-metric=\"confusion\"><tr><th class=\"l\">truth ↓ / "
       "prediction →</th>";
  for (const auto& c : r.class_names)
    s << "<th>" << html_escape(c) << "</th>";
  s << "</tr>";
  for (std::size_t a = 0; a < r.class_names.size(); ++a) {
    s << "<tr><th class=\"l\">" << html_escape(r.class_names[a]) << "</th>";
    for (std::size_t b = 0; b < r.class_names.size(); ++b)
      s << "<td data-cell=\"" << a << "," << b << "\">" << m.confusion[a][b] << "</td>";
    s << "</tr>";
  }
  s << "</table>";

  const char* colours[] = {"#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#57606a"};
  std::vector<Series> roc, pr;
  for (std::size_t c = 0; c < m.per_class.size(); ++c) {
    if (binary && c != 1) continue;
    const auto& pc = m.per_class[c];
    Series a, b;
    a.colour = b.colour = binary ? "#0969da" : colours[c % 6];
    if (!binary) a.label = b.label = pc.name + " (AUC " + fmt(pc.auc) + ")";
    for (std::size_t k = 0; k < pc.roc.fpr.size(); ++k)
      a.points.emplace_back(pc.roc.fpr[k], pc.roc.tpr[k]);
    for (std::size_t k = 0; k < pc.pr.recall.size(); ++k)
      b.points.emplace_back(pc.pr.recall[k], pc.pr.precision[k]);
    roc.push_back(std::move(a));
    pr.push_back(std::move(b));
  }
  s << "<h2>Curves</h2><div class=\"plots\">";
  if (std::isfinite(m.auc)) {
    s << svg_plot("ROC curve (AUC " + fmt(m.auc) + ")", "false positive rate", "true positive rate",
                  roc, 1, true, "roc");
    s << svg_plot("Precision-recall (AP " + fmt(m.average_precision) + ")", "recall", "precision",
                  pr, 1, false, "pr");
  }
  Series rel;
  rel.colour = "#bf3989";
  rel.markers = true;
  for (const auto& bin : m.reliability)
    if (bin.count > 0) rel.points.emplace_back(bin.mean_confidence, bin.accuracy);
  s << svg_plot("Reliability (ECE " + fmt(m.ece) + ")", "confidence (top probability)", "accuracy",
                {rel}, 1, true, "reliability");
  // Probability histograms per true class (binary: p(class 1); else the top probability).
  constexpr int kBins = 20;
  std::vector<Series> hist;
  double top = 0;
  const auto p = probs.contiguous();
  for (std::size_t c = 0; c < r.class_names.size(); ++c) {
    std::vector<double> counts(kBins, 0);
    for (std::size_t i = 0; i < truth.size(); ++i) {
      if (truth[i] != static_cast<int64_t>(c)) continue;
      const float* pi = p.data_ptr<float>() + static_cast<int64_t>(i) * r.c;
      const double v = binary ? pi[1] : *std::max_element(pi, pi + r.c);
      counts[static_cast<std::size_t>(std::clamp(static_cast<int>(v * kBins), 0, kBins - 1))] += 1;
    }
    Series se;
    se.bars = true;
    se.bar_width = 1.0 / kBins;
    se.colour = colours[c % 6];
    se.label = "truth: " + r.class_names[c];
    for (int b = 0; b < kBins; ++b) {
      se.points.emplace_back(double(b) / kBins, counts[static_cast<std::size_t>(b)]);
      top = std::max(top, counts[static_cast<std::size_t>(b)]);
    }
    hist.push_back(std::move(se));
  }
  s << svg_plot("Probabilities per true class",
                binary ? "p(" + r.class_names[1] + ")" : "top probability", "images", hist,
                std::max(4.0, std::ceil(top / 4) * 4), false, "histogram");  // whole ticks
  s << "</div>";
  return s.str();
}

std::string measures_summary(const Results& r, ReportSummary* out) {
  if (r.measures.empty()) return "";
  // (measure) -> (map) -> values; baselines are the pseudo-maps "random" and "gaussian".
  std::vector<std::string> names;
  std::vector<std::string> maps;
  for (const auto& m : r.measures) {
    if (!std::count(names.begin(), names.end(), m.name)) names.push_back(m.name);
    if (!std::count(maps.begin(), maps.end(), m.map)) maps.push_back(m.map);
  }
  // Real maps first, then the baselines.
  std::stable_partition(maps.begin(), maps.end(),
                        [](const std::string& m) { return m != "random" && m != "gaussian"; });
  const auto find = [&](const std::string& map, const std::string& name) -> const Measure* {
    for (const auto& m : r.measures)
      if (m.map == map && m.name == name) return &m;
    return nullptr;
  };
  const auto mean_of = [](const std::vector<float>& v, int64_t* count) {
    double sum = 0;
    int64_t n = 0;
    for (float x : v)
      if (std::isfinite(x)) {
        sum += x;
        ++n;
      }
    *count = n;
    return n ? sum / n : std::numeric_limits<double>::quiet_NaN();
  };
  std::ostringstream s;
  s << "<h2>Faithfulness and localisation</h2><p class=\"sub\">Means over the images where the "
       "measure applies (n). Baselines: <i>random</i> = a uniform random map of the same image, "
       "<i>gaussian</i> = a centred Gaussian (the centre prior). Deletion AUC: lower is better; "
       "the others: higher is better.</p><table data-metric=\"measures\"><tr><th "
       "class=\"l\">measure</th>";
  for (const auto& map : maps)
    s << "<th>" << html_escape(map) << "</th>";
  s << "</tr>";
  for (const auto& name : names) {
    s << "<tr><th class=\"l\">" << html_escape(name) << (higher_is_better(name) ? " ↑" : " ↓")
      << "</th>";
    for (const auto& map : maps) {
      const Measure* m = find(map, name);
      if (!m) {
        s << "<td>–</td>";
        continue;
      }
      int64_t n = 0;
      const double mean = mean_of(m->values, &n);
      out->measures.push_back({map, name, mean, n});
      s << "<td data-measure=\"" << html_escape(map + "/" + name) << "\" data-value=\""
        << (std::isfinite(mean) ? fmt(mean, 6) : "nan") << "\">" << fmt(mean)
        << " <span class=\"sub\">(n " << n << ")</span></td>";
    }
    s << "</tr>";
  }
  s << "</table>";
  return s.str();
}

}  // namespace

const char* const* report_sort_keys() {
  return kSortKeys;
}

std::string html_escape(const std::string& text) {
  const std::string valid = valid_utf8(text);
  std::string out;
  out.reserve(valid.size() + 16);
  for (char c : valid) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        // C0 controls and DEL are not allowed in HTML text (a character reference to one is a
        // parse error too): shown as U+FFFD. Tab, newline and carriage return are whitespace.
        if ((static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') ||
            c == 0x7f)
          out += "\xEF\xBF\xBD";
        else
          out += c;
    }
  }
  return out;
}

std::string base64(const void* data, std::size_t size) {
  static const char* kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto* p = static_cast<const unsigned char*>(data);
  std::string out;
  out.reserve((size + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 2 < size; i += 3) {
    const uint32_t v = (uint32_t(p[i]) << 16) | (uint32_t(p[i + 1]) << 8) | p[i + 2];
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i < size) {
    uint32_t v = uint32_t(p[i]) << 16;
    if (i + 1 < size) v |= uint32_t(p[i + 1]) << 8;
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < size ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

void check_report_reads(const std::string& results_path) {
  (void)read_results(results_path, false);
}

std::string render_report(const std::string& results_path, const ReportOptions& options,
                          ReportSummary* summary) {
  check(options.top >= 0, "--top", "must be >= 0, got ", options.top);
  check(options.thumbnail >= 16 && options.thumbnail <= 1024, "--thumbnail",
        "must be in 16..1024, got ", options.thumbnail);
  check(options.jpeg_quality >= 1 && options.jpeg_quality <= 100, "jpeg quality",
        "must be in 1..100, got ", options.jpeg_quality);
  Results r = read_results(results_path);
  auto rows = make_rows(r);
  sort_rows(rows, r, options.sort);  // also validates the key
  std::vector<Row> shown = rows;
  if (options.top > 0 && static_cast<int64_t>(shown.size()) > options.top)
    shown.resize(static_cast<std::size_t>(options.top));

  // By default the file's folder and name: every classify run writes results.h5, so its name
  // alone gave every report the same title.
  const auto folder = fs::path(results_path).parent_path().filename().string();
  const std::string title =
      !options.title.empty()
          ? options.title
          : concat("attnscope report: ",
                   folder.empty() || folder == "." || folder == ".." ? std::string() : folder + "/",
                   fs::path(results_path).filename().string());

  // Per-image JSON, images encoded one at a time so memory stays flat.
  std::vector<std::string> measure_keys;
  for (const auto& m : r.measures)
    measure_keys.push_back(m.map + "/" + m.name);
  const cv::Size ts = thumb_size(r.height, r.width, options.thumbnail);
  // Each card's JSON text: a tree of every card held as much memory again as the page.
  std::vector<std::string> images;
  std::vector<int64_t> unreadable_images;  // a damaged chunk: the card shows no pictures
  std::string unreadable_reason;
  for (const auto& row : shown) {
    const auto u = static_cast<std::size_t>(row.i);
    json j;
    j["n"] = r.index[u];
    j["id"] = valid_utf8(r.ids[u]);
    j["path"] = valid_utf8(r.paths[u]);
    const float* p = r.probability.data_ptr<float>() + row.i * r.c;
    j["p"] = std::vector<float>(p, p + r.c);
    if (r.probability_std.defined()) {
      const float* sd = r.probability_std.data_ptr<float>() + row.i * r.c;
      j["s"] = std::vector<float>(sd, sd + r.c);
    } else {
      j["s"] = nullptr;
    }
    j["y"] = r.predicted[u];
    j["t"] = r.truth[u];
    j["o"] = row.outcome;
    j["sc"] = row.score;
    j["u"] = row.uncertainty;
    json m = json::array();
    for (const auto& x : r.measures)
      m.push_back(std::isfinite(x.values[u]) ? json(x.values[u]) : json(nullptr));
    j["m"] = std::move(m);
    j["w"] = ts.width;
    j["h"] = ts.height;
    cv::Mat rgb;
    if (r.has_images) {
      std::string reason;
      rgb = read_image(r, row.i, &reason);
      if (rgb.empty()) {
        unreadable_images.push_back(row.i);
        if (unreadable_reason.empty()) unreadable_reason = reason;
        j["x"] = "stored picture unreadable (damaged file)";
      }
    }
    if (!rgb.empty()) {
      cv::Mat small, bgr;
      cv::resize(rgb, small, ts, 0, 0, cv::INTER_AREA);
      cv::cvtColor(small, bgr, cv::COLOR_RGB2BGR);
      j["img"] = jpeg_base64(bgr, options.jpeg_quality);
      json maps = json::array();
      for (const auto& map : r.maps) {
        if (map.unreadable[u]) {
          maps.push_back(nullptr);
          continue;
        }
        const auto t = map.values[row.i];
        cv::Mat native(static_cast<int>(t.size(0)), static_cast<int>(t.size(1)), CV_32F,
                       const_cast<float*>(t.data_ptr<float>()));
        cv::Mat up;
        // Bilinear with half-pixel centres: align_corners=False, as the schema says.
        cv::resize(native * map.scale, up, ts, 0, 0, cv::INTER_LINEAR);
        maps.push_back(jpeg_base64(jet_bgr(up, map.vmax), options.jpeg_quality));
      }
      j["maps"] = std::move(maps);
    } else {
      j["img"] = nullptr;
      j["maps"] = json::array();
    }
    images.push_back(j.dump(-1, ' ', false, json::error_handler_t::replace));
  }
  std::sort(unreadable_images.begin(), unreadable_images.end());
  warn_unreadable(r, "images/preprocessed", unreadable_images, unreadable_reason, "no pictures",
                  static_cast<int64_t>(shown.size()));
  json data;
  data["classes"] = json::array();
  for (const auto& c : r.class_names)
    data["classes"].push_back(valid_utf8(c));
  data["maps"] = json::array();
  for (const auto& m : r.maps)
    data["maps"].push_back(valid_utf8(m.name));
  data["measures"] = measure_keys;
  data["sort"] = options.sort;
  data["thumb"] = options.thumbnail;
  data["page_size"] = 100;
  data["images"] = "\x01images\x01";  // where the cards go (below)

  const auto attr = [&](const std::string& k) {
    const auto it = r.attrs.find(k);
    return it == r.attrs.end() ? std::string() : it->second;
  };
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
       "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
       "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
       "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
       "<meta name=\"generator\" content=\"attnscope "
    << kVersion << "\">\n<title>" << html_escape(title) << "</title>\n<style>" << kStyle
    << "</style></head>\n<body>\n<header><h1>" << html_escape(title) << "</h1><div class=\"sub\">"
    << html_escape(results_path) << " · model " << html_escape(attr("model_path")) << " · "
    << html_escape(attr("model_checksum")) << "</div></header>\n<main>\n";

  // Summary: counts and failures.
  std::vector<int64_t> per_pred(static_cast<std::size_t>(r.c), 0);
  for (auto y : r.predicted)
    ++per_pred[static_cast<std::size_t>(y)];
  h << "<section id=\"summary\"><h2>Summary</h2>";
  std::vector<Tile> counts = {
      {"classified images", std::to_string(r.n), "classified", ""},
      {"failed inputs", std::to_string(r.errors.size()), "failed", ""},
      {"in this report", std::to_string(shown.size()), "shown",
       options.top > 0 ? "top " + std::to_string(options.top) + " by " + options.sort : ""}};
  for (int64_t c = 0; c < r.c; ++c)
    counts.push_back({"predicted " + r.class_names[static_cast<std::size_t>(c)],
                      std::to_string(per_pred[static_cast<std::size_t>(c)]),
                      "predicted_" + std::to_string(c), ""});
  if (r.probability_std.defined())
    counts.push_back({"test-time augmentation",
                      attr("tta").empty() ? std::string("yes") : attr("tta"), "",
                      "probabilities ± their spread over the transforms"});
  h << tiles(counts);
  for (std::size_t i = 0; i < r.warnings.size(); ++i)
    h << "<p class=\"warning\"><b>"
      << (static_cast<int64_t>(i) == r.unfinished_warning ? "Unfinished run:" : "Damaged file:")
      << "</b> " << html_escape(r.warnings[i]) << "</p>";
  ReportSummary local;
  h << label_summary(r, rows, &local);
  h << measures_summary(r, &local);
  if (!r.errors.empty()) {
    h << "<h2>Failures</h2><table id=\"failures\"><tr><th class=\"l\">id</th><th "
         "class=\"l\">path</th><th class=\"l\">reason</th></tr>";
    for (std::size_t i = 0; i < std::min(r.errors.size(), kMaxFailureRows); ++i)
      h << "<tr class=\"failure\"><td class=\"l\">" << html_escape(r.errors[i][0])
        << "</td><td class=\"l\">" << html_escape(r.errors[i][1]) << "</td><td class=\"l\">"
        << html_escape(r.errors[i][2]) << "</td></tr>";
    h << "</table>";
    if (r.errors.size() > kMaxFailureRows)
      h << "<p class=\"sub\">and " << r.errors.size() - kMaxFailureRows
        << " more: see errors.csv beside results.h5.</p>";
  }

  // Provenance.
  h << "<h2>Provenance</h2><table id=\"provenance\">";
  const auto prov = [&](const std::string& k, const std::string& v) {
    h << "<tr><th class=\"l\">" << html_escape(k) << "</th><td class=\"l\">" << html_escape(v)
      << "</td></tr>";
  };
  prov("model", attr("model_path"));
  prov("model checksum", attr("model_checksum"));
  prov("classes", attr("class_names"));
  prov("threshold", attr("threshold"));
  prov("temperature", attr("temperature"));
  prov("test-time augmentation", attr("tta"));
  prov("maps", attr("maps"));
  prov("shard", attr("shard"));
  prov("classify command line", attr("command_line"));
  prov("started / finished", attr("started_at") + " / " + attr("finished_at"));
  prov("written by", "attnscope " + attr("attnscope_version"));
  prov("report by", std::string("attnscope ") + kVersion);
  if (!options.command_line.empty()) prov("report command line", options.command_line);
  h << "</table>";
  h << "<details><summary>model config</summary><pre>"
    << html_escape(pretty_json(attr("model_config"))) << "</pre></details>";
  h << "<details><summary>preprocessing</summary><pre>"
    << html_escape(pretty_json(attr("preprocessing_config"))) << "</pre></details>";
  if (!attr("faithfulness").empty())
    h << "<details><summary>faithfulness settings</summary><pre>"
      << html_escape(pretty_json(attr("faithfulness"))) << "</pre></details>";
  h << "</section>\n";

  // Images: toolbar, colour bars, cards (built by the script).
  h << "<section id=\"images\"><h2>Images</h2><div class=\"bar\">"
       "<label>sort <select id=\"sort\"></select></label><button id=\"dir\" "
       "type=\"button\"></button>"
       "<label>show <select id=\"outcome\"><option value=\"all\">all</option><option "
       "value=\"correct\">correct</option><option value=\"errors\">errors</option>";
  if (r.c == 2)
    h << "<option value=\"fp\">false positives</option><option value=\"fn\">false "
         "negatives</option>";
  h << "<option value=\"unlabelled\">unlabelled</option></select></label>"
       "<label>id <input id=\"q\" type=\"search\" placeholder=\"search id or path\"></label>"
       "<label><select id=\"field\"></select> from <input id=\"lo\" type=\"number\" "
       "step=\"any\"> to <input id=\"hi\" type=\"number\" step=\"any\"></label>"
       "<label>overlay opacity <input id=\"alpha\" type=\"range\" min=\"0\" max=\"1\" "
       "step=\"0.05\" value=\"0.5\"> <span id=\"alphav\">0.50</span></label>"
       "<label>per page <select id=\"psize\"><option>50</option><option "
       "selected>100</option><option>500</option><option "
       "value=\"1000000\">all</option></select></label>"
       "<span id=\"count\" class=\"sub\"></span></div>";
  if (!r.maps.empty()) {
    h << "<div class=\"cbars\">";
    for (const auto& m : r.maps)
      h << "<div class=\"cbar\" data-map=\"" << html_escape(m.name) << "\"><b>"
        << html_escape(m.name) << "</b> <span class=\"sub\">(" << html_escape(m.unit)
        << ")</span><img alt=\"JET colour bar\" src=\"data:image/png;base64," << colour_bar(m)
        << "\"><div class=\"ends\"><span>0</span><span>" << fmt(m.vmax / 2, m.vmax >= 10 ? 1 : 2)
        << "</span><span>" << fmt(m.vmax, m.vmax >= 10 ? 1 : 2) << "</span></div></div>";
    h << "</div>";
  }
  h << "<div id=\"cards\"></div><div class=\"pager\"><button id=\"prev\" "
       "type=\"button\">previous</button><button id=\"next\" type=\"button\">next</button></div>"
       "</section>\n</main>\n";
  h << "<script type=\"application/json\" id=\"report-data\">";
  // The page is most of the memory a report takes (its thumbnails, base64): held twice, as
  // the cards' texts and the page, reserved at once. (A JSON tree, its text, a stream, the
  // escaped text and the page's copy held it five to six times over: 1.54 GB for 20,000
  // images, whose page is 235 MB.) The cards go where the placeholder stands; an object's keys
  // are sorted, and the sequence "images":" occurs outside strings only (a quote inside one is
  // escaped).
  std::string html = h.str();
  h = std::ostringstream();
  {
    const std::string text = data.dump(-1, ' ', false, json::error_handler_t::replace);
    data = json();
    const std::string mark = "\"images\":\"\\u0001images\\u0001\"";
    const auto at = text.find(mark);
    check(at != std::string::npos, "report", "the page's data has no place for its cards");
    const std::string_view head(text.data(), at + 9), tail(text.data() + at + mark.size());
    std::size_t size = html.size() + script_json_size(head) + script_json_size(tail) +
                       images.size() + 2 + std::strlen(kScript) + 64;
    for (const auto& t : images)
      size += script_json_size(t);
    html.reserve(size);
    append_script_json(html, head);
    html += '[';
    for (std::size_t i = 0; i < images.size(); ++i) {
      if (i) html += ',';
      append_script_json(html, images[i]);
      std::string().swap(images[i]);
    }
    html += ']';
    append_script_json(html, tail);
  }
  html += "</script>\n<script>";
  html += kScript;
  html += "</script>\n</body></html>\n";
  if (summary) {
    *summary = local;
    summary->images = static_cast<int64_t>(shown.size());
    summary->total = r.n;
    summary->errors = static_cast<int64_t>(r.errors.size());
    summary->warnings = r.warnings;
    summary->bytes = static_cast<int64_t>(html.size());
  }
  return html;
}

ReportSummary write_report(const std::string& results_path, const std::string& out_path,
                           const ReportOptions& options) {
  ReportSummary summary;
  const std::string html = render_report(results_path, options, &summary);
  write_file_atomically(out_path, html);
  return summary;
}

}  // namespace attnscope::pipeline::vision
