#pragma once
// The results store of a batch-classification run (results.h5), as docs/hdf5-schema.md
// describes it. Crash-safe by construction: HDF5 rewrites metadata in place, so a file being
// written is never the file at `path`. The writer keeps two replicas beside it
// (`.<name>.replica-a`, `-b`); each batch is written into the replica that `path` does not name,
// which is then closed and hard-linked over `path` (link + rename, atomic). A SIGKILL at any
// moment leaves `path` a closed, complete HDF5 file holding every batch committed before it,
// and `--resume` continues it.
//
//   ResultsWriter w = ResultsWriter::create(path, header, layout);   // or ::resume(path, ...)
//   w.append(rows, errors);   // written into the idle replica, closed, renamed over path
//   w.finish(end_time);       // the replicas are removed; path remains
//
// Only one thread may use a ResultsWriter (HDF5 is not built thread-safe).

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "pipeline/h5.h"

namespace attnscope::pipeline {

inline constexpr const char* kResultsFormat = "attnscope-results";
inline constexpr const char* kResultsSchemaVersion = "1";

/// One map the file stores: name, native size and its attributes.
struct ResultsMap {
  std::string name;
  int64_t height = 0, width = 0;
  std::string source = "model";       ///< model | rollout | gradcam | gradient_rollout
  std::string normalization = "max";  ///< max | none
  /// What a value of a "none" map is (ImageClassifier::map_weights): softmax | sigmoid; written
  /// as the map's `weights` attribute when not empty.
  std::string weights;
};

/// The shapes of a file's datasets, fixed when it is created.
struct ResultsLayout {
  int64_t num_classes = 2;
  int64_t height = 224, width = 224;  ///< of /images/preprocessed
  std::vector<ResultsMap> maps;
  bool overlays = false;
  bool tta = false;
  /// "/measures/<map>/<measure>" datasets (relative names "map/measure"); empty: none.
  std::vector<std::string> measures;
};

/// Root attributes (name -> string value), written at creation (format, schema_version and
/// num_images/num_errors are added by the writer).
using ResultsHeader = std::map<std::string, std::string>;

/// A batch of classified images. Shapes: B rows each.
struct ResultRows {
  std::vector<std::string> ids, paths;
  std::vector<int64_t> index, label;           ///< input position; ground truth or -1
  at::Tensor preprocessed;                     ///< (B, H, W, 3) uint8
  at::Tensor logits, probability;              ///< (B, C) float32
  at::Tensor probability_std;                  ///< (B, C) float32, only with layout.tta
  at::Tensor prediction;                       ///< (B) int64
  std::map<std::string, at::Tensor> maps;      ///< (B, h, w) float32 per layout map
  std::map<std::string, at::Tensor> overlays;  ///< (B, H, W, 3) uint8 (layout.overlays)
  std::map<std::string, at::Tensor> measures;  ///< "map/measure" -> (B) float32
  std::size_t size() const { return ids.size(); }
};

struct ResultError {
  std::string id, path;
  int64_t index = -1;
  std::string reason;
};

class ResultsWriter {
 public:
  /// Creates (truncates) path with every dataset empty. Errors, now and in later writes, name
  /// `shown_as` (default: path) — the file the user asked for where path is a temporary
  /// renamed over it at the end (classify --overwrite).
  static ResultsWriter create(const std::string& path, const ResultsHeader& header,
                              const ResultsLayout& layout, const std::string& shown_as = "");
  /// Opens an existing file to continue it: checks that `expected` root attributes
  /// (model_checksum, preprocessing_config, class_names, maps, tta, ...) match, trims every
  /// per-row dataset to num_images/num_errors (files of older versions may hold a torn batch),
  /// and returns the writer. Throws Error naming the path and the first attribute that differs.
  static ResultsWriter resume(const std::string& path, const ResultsHeader& expected,
                              const ResultsLayout& layout);

  ResultsWriter(ResultsWriter&&) noexcept;
  ResultsWriter& operator=(ResultsWriter&&) noexcept;
  ~ResultsWriter();

  /// The ids already stored in /images/id and /errors/id, each with the source path stored
  /// with it (/images/source_path, /errors/path).
  std::map<std::string, std::string> stored() const;
  int64_t num_images() const;
  int64_t num_errors() const;

  /// Appends rows and errors, updates num_images/num_errors and commits: when it returns,
  /// path() is a closed, complete file holding them.
  void append(const ResultRows& rows, const std::vector<ResultError>& errors);
  /// A root attribute ("" when absent).
  std::string attribute(const std::string& name) const;
  /// Sets (overwrites) a root attribute; committed with the next append/finish.
  void set_attribute(const std::string& name, const std::string& value);
  /// Writes finished_at, commits and removes the replicas; throws Error when that fails.
  void finish(const std::string& finished_at);
  const std::string& path() const;

 private:
  struct State;
  explicit ResultsWriter(std::unique_ptr<State> state);
  std::unique_ptr<State> s_;
};

/// Read side (tests, merge, CSV export). Every function throws Error naming path and object.
struct ResultsFile {
  std::string path;
  ResultsHeader attributes;  ///< every root attribute
  std::vector<std::string> ids, paths;
  std::vector<int64_t> index, label;
  at::Tensor logits, probability, prediction;  ///< (N, C), (N, C), (N)
  std::vector<ResultError> errors;
};
/// Reads the root attributes and the small per-row datasets (not the images and maps). The
/// file is first read in a forked child (h5_isolation.h), as every file from elsewhere is.
ResultsFile read_results(const std::string& path);
/// The same for the file this process has just written and committed, under its output-folder
/// lock (classify's CSVs), without the child: that check reads up to 128 MiB of each dataset,
/// which was 0.4 s at the end of every classify run of 500 images or more
/// (docs/performance.md). With --resume the file's earlier rows came from elsewhere: they were
/// checked in a child when the run opened the file (ResultsWriter::resume), and this reads
/// nothing that check did not.
ResultsFile read_own_results(const std::string& path);

/// Names of every per-row dataset below the root ("images/id", "attention/stage3", ...).
std::vector<std::string> results_datasets(const std::string& path);

/// Writes DIR-style CSVs from a results file (RFC 4180), each through AtomicFile.
void write_predictions_csv(const ResultsFile& results, const std::string& csv_path);
void write_errors_csv(const ResultsFile& results, const std::string& csv_path);

/// RFC 4180 field (datasets::csv_field): quoted when it holds , " CR or LF, begins with a
/// byte-order mark or has edge spaces; quotes doubled.
std::string csv_field(const std::string& value);

/// Joins results files into `out` (written through AtomicFile): rows and errors sorted by
/// input index. Refuses (Error naming the file) a different schema version, model checksum or
/// preprocessing, class names, maps or layout, and ids present in two files. Returns the
/// warnings to say: shards of one `--shard i/N` run that are not all among the inputs.
std::vector<std::string> merge_results(const std::vector<std::string>& inputs,
                                       const std::string& out, const std::string& command_line);

/// The values every reader of a results file relies on, over the first `rows` rows: labels
/// (images/label) in -1..classes−1, predicted labels (predictions/label, any integer shape) in
/// 0..classes−1, probabilities (predictions/probability; undefined: not checked) in [0, 1], NaN
/// refused. Throws Error naming `path`, the dataset and the first bad row, `consequence`
/// appended (": cannot merge it"). report and merge both check them.
void check_result_values(const std::vector<int64_t>& labels, const at::Tensor& predicted,
                         const at::Tensor& probability, int64_t rows, int64_t classes,
                         const std::string& path, const std::string& consequence = "");

/// A row count stored as a root attribute (@num_images, @num_errors): decimal digits only, at
/// most INT64_MAX. A sign, a fraction, text or an overflow is refused, naming `subject`
/// (std::stoull had read "-3" as 18446744073709551613).
int64_t parse_row_count(const std::string& text, const std::string& subject);

/// "fnv1a64:<16 hex>" of a file's bytes.
std::string file_checksum(const std::string& path);

}  // namespace attnscope::pipeline
