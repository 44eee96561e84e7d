// attnscope report: the self-contained HTML attention-overlay report of a results.h5.

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "cli.h"
#include "pipeline/vision/report.h"

namespace attnscope::cli {
namespace {

std::string joined(const std::vector<std::string>& args) {
  std::string out = "attnscope report";
  for (const auto& a : args)
    out += " " + a;
  return out;
}

int run_report(const std::vector<std::string>& args, const GlobalOptions&) {
  const std::string usage =
      "report --results DIR/results.h5 --out DIR/report.html [--top N] [--sort KEY] "
      "[--title TEXT]";
  po::options_description desc("Options");
  std::string results, out;
  pipeline::vision::ReportOptions o;
  // clang-format off
  desc.add_options()
      ("results", po::value(&results)->required(), "results.h5 written by attnscope classify")
      ("out", po::value(&out)->required(), "the HTML file to write (replaced atomically)")
      ("top", po::value(&o.top)->default_value(0), "keep only the first N images in --sort order (0: all)")
      ("sort", po::value(&o.sort)->default_value("index"),
       "card order: index, id, probability, uncertainty, error, or MAP/MEASURE "
       "(e.g. stage3/mass_in_mask, worst first)")
      ("title", po::value(&o.title)->default_value(""), "page title (default: from the file's folder and name, run/results.h5)")
      ("thumbnail", po::value(&o.thumbnail)->default_value(160), "side of the embedded thumbnails in pixels (16-1024)")
      ("jpeg-quality", po::value(&o.jpeg_quality)->default_value(85), "JPEG quality of the thumbnails (1-100)");
  // clang-format on
  po::variables_map vm;
  if (!parse(usage, desc, args, vm)) return 0;
  const auto fail = [&](const std::string& m) { throw UsageError(m, usage_text(usage, desc)); };
  if (o.top < 0) fail("--top must be >= 0");
  if (o.thumbnail < 16 || o.thumbnail > 1024) fail("--thumbnail must be in 16..1024");
  if (o.jpeg_quality < 1 || o.jpeg_quality > 100) fail("--jpeg-quality must be in 1..100");
  // A MAP/MEASURE key is checked against the file's measures; any other word must be a fixed
  // key (a typo is a usage error, before the file is read).
  if (o.sort.find('/') == std::string::npos) {
    std::string known;
    bool ok = false;
    for (const char* const* k = pipeline::vision::report_sort_keys(); *k; ++k) {
      ok = ok || o.sort == *k;
      known += std::string(known.empty() ? "" : ", ") + *k;
    }
    if (!ok)
      fail(concat("--sort '", excerpt(o.sort, 200), "' is not a sort key: expected one of ", known,
                  ", or MAP/MEASURE (e.g. stage3/mass_in_mask)"));
  }
  o.command_line = joined(args);
  const auto start = std::chrono::steady_clock::now();
  check_not_an_input(out, results, "--results");
  // A MAP/MEASURE the file does not hold is a typo of the option too.
  const auto s = [&] {
    try {
      return pipeline::vision::write_report(results, out, o);
    } catch (const pipeline::vision::UnknownSortKey& e) {
      throw UsageError(e.what(), usage_text(usage, desc));
    }
  }();
  // What a killed run left beside it (a dead process's, not new): after the report, as the
  // results file is checked while it is written, and a refused run touches nothing.
  remove_dead_temporaries(out);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (const auto& w : s.warnings)
    std::cerr << "warning: " << printable(w) << "\n";  // names from the file reach the terminal
  std::cout << "report: " << s.images << " of " << s.total << " images, " << s.errors
            << " failed inputs listed";
  char line[160];
  if (s.labelled && std::isfinite(s.auc)) {
    std::snprintf(line, sizeof line, "; AUC %.3f (95%% CI %.3f-%.3f), balanced accuracy %.3f",
                  s.auc, s.auc_low, s.auc_high, s.balanced_accuracy);
    std::cout << line;
  } else if (s.labelled) {  // e.g. one class among the labels: n/a, as the page says
    std::snprintf(line, sizeof line, ", balanced accuracy %.3f", s.balanced_accuracy);
    std::cout << "; AUC n/a (" << s.auc_undefined << ")" << line;
  }
  std::snprintf(line, sizeof line, " (%lld KiB, %.1f s)\n",
                static_cast<long long>((s.bytes + 512) / 1024), seconds);
  std::cout << "\nwrote " << printable(out) << line;
  return 0;
}

const Registration kReport("report",
                           "self-contained HTML report of a results.h5: overlays, metrics, plots",
                           run_report);

}  // namespace
}  // namespace attnscope::cli
