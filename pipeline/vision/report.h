#pragma once
// The attention-overlay report: one self-contained HTML file made from a results.h5 of
// `attnscope classify` (docs/hdf5-schema.md), for a person to look at where the model looked,
// how sure it was and whether it was right.
//
// The page needs nothing but itself: images are embedded as base64 JPEG thumbnails, plots are
// inline SVG, the sorting/filtering script is inline, and a Content-Security-Policy forbids
// every network access. Per image it shows the input, each stored map as a JET overlay (with
// one opacity slider for the page and a colour bar per map on an absolute scale), the
// probabilities (± the TTA spread when stored), prediction, ground truth, correctness and the
// per-image measures. The summary holds counts, failures, the label metrics (AUC with its
// bootstrap 95% interval, AP, balanced accuracy, sensitivity/specificity at the threshold,
// confusion matrix, ROC and PR curves, reliability diagram, probability histograms per class),
// the measures beside their baselines, and the run's provenance.
//
// Every string from the file (ids, paths, configs, reasons, class names) reaches the page
// HTML-escaped, or as JSON with <, > and & escaped inside the script block, and the script
// writes it with textContent only, so an id such as `<img src=x onerror=alert(1)>` shows as
// text. Image cards are built by the script from that JSON and their images are attached only
// when a card scrolls into view, so pages with thousands of images open fast
// (docs/performance.md).

#include <cstdint>
#include <string>
#include <vector>

#include "attnscope/error.h"

namespace attnscope::pipeline::vision {

struct ReportOptions {
  /// Keep only the first `top` images in `sort` order (0: all).
  int64_t top = 0;
  /// Order of the cards (and of the --top selection): "index" (input order), "id",
  /// "probability" (positive / top class, highest first), "uncertainty" (TTA spread when
  /// stored, else closeness to the decision boundary; most uncertain first), "error"
  /// (misclassified first, most confident mistakes first), or "<map>/<measure>" (e.g.
  /// "stage3/mass_in_mask"; worst first). The page can re-sort.
  std::string sort = "index";
  /// Page title; empty: "attnscope report: <results file name>".
  std::string title;
  /// Side of the embedded thumbnails in pixels (input and overlays).
  int thumbnail = 160;
  /// JPEG quality of the thumbnails (1-100).
  int jpeg_quality = 85;
  /// The command line that made the report (provenance); may be empty.
  std::string command_line;
};

/// The mean of one per-image measure over the images where it applies.
struct MeasureMean {
  std::string map, measure;  ///< e.g. "stage3", "mass_in_mask"; baselines: "random", "gaussian"
  double mean = 0;
  int64_t count = 0;
};

struct ReportSummary {
  int64_t images = 0;  ///< cards in the report (after --top)
  int64_t total = 0;   ///< classified images in the results file
  int64_t errors = 0;  ///< failed inputs listed in the results file
  int64_t bytes = 0;   ///< size of the HTML file
  bool labelled = false;
  /// With labels (binary: AUC of class 1, else macro one-vs-rest; NaN when undefined), its
  /// bootstrap 95% interval, and the balanced accuracy.
  double auc = 0, auc_low = 0, auc_high = 0, balanced_accuracy = 0;
  /// Why the AUC is undefined (NaN), as the page says it (e.g. one class among the labels).
  std::string auc_undefined;
  std::vector<MeasureMean> measures;
  /// Damage the report worked around (a dataset shorter than @num_images), one line each.
  std::vector<std::string> warnings;
};

/// The sort keys `sort` accepts besides "<map>/<measure>".
const char* const* report_sort_keys();

/// What render_report throws for a sort key that is neither a fixed key nor a measure the file
/// holds: a mistake in the option, not in the file (the command line says it as a usage error).
class UnknownSortKey : public Error {
 public:
  using Error::Error;
};

/// Renders the report of `results_path` as HTML. Throws Error naming the file (or the
/// object in it) when it is not a readable results file of a known schema version, and
/// UnknownSortKey naming the option for a bad sort key.
std::string render_report(const std::string& results_path, const ReportOptions& options,
                          ReportSummary* summary = nullptr);

/// Checks `results_path` as render_report reads it (attributes, schema version, the datasets
/// and their shapes, labels, predictions and probabilities; maps and measures by their shapes,
/// not read), without rendering: throws the Error render_report's reading would. merge_results
/// checks its inputs with it. (The preprocessed images' rows are read only when rendered.)
void check_report_reads(const std::string& results_path);

/// render_report, then written to `out_path` through AtomicFile (the previous report stays
/// intact on any failure).
ReportSummary write_report(const std::string& results_path, const std::string& out_path,
                           const ReportOptions& options);

/// Text with &, <, >, " and ' replaced by entities (and invalid UTF-8 replaced by U+FFFD):
/// safe in element content and in quoted attribute values.
std::string html_escape(const std::string& text);

/// Standard base64 (RFC 4648, with padding).
std::string base64(const void* data, std::size_t size);

}  // namespace attnscope::pipeline::vision
