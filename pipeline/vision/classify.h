#pragma once
// Batch classification: images through a trained classifier into results.h5
// (docs/hdf5-schema.md), predictions.csv and errors.csv.
//
// The run is a pipeline of three stages joined by bounded queues, so memory does not grow with
// the number of images:
//   decode + preprocess (datasets::Loader worker threads, `queue` batches at most)
//   -> inference in the calling thread (logits, maps, explanations, faithfulness)
//   -> one writer thread appending each batch to results.h5 and flushing it.
// A failed image (missing, empty, not an image, corrupt, truncated, too large) is recorded in
// /errors with its reason and the run goes on.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "datasets/dataset.h"
#include "pipeline/vision/results.h"

namespace attnscope::pipeline {

/// The inputs of a run, in order: files, folders (recursive, sorted), `@list.txt` (one path a
/// line; blank lines and lines starting with '#' skipped). Every regular, non-hidden file of a
/// folder is an input (a non-image becomes an error line, not a silent skip). Ids are file
/// stems escaped by datasets::text::escaped_name (bytes that are not UTF-8 as `\xNN`, a
/// backslash as `\\`), made unique by appending "~2", "~3", ... to later duplicates. A line of
/// a list ends at LF, CRLF or a lone CR.
/// Throws Error naming an input that does not exist or a list that cannot be read.
datasets::Dataset collect_inputs(const std::vector<std::string>& inputs);

/// Sets Sample::mask_path to `<dir>/<stem>_segmentation.png`, `<dir>/<stem>_Segmentation.png`,
/// `<dir>/<stem>_mask.png` or `<dir>/<stem>.png`, whichever exists first, and returns how many
/// samples got one; <stem> is the image file's own stem (its bytes, where the id escapes
/// them, or the id has a "~2" repeat suffix), else the id (a dataset's). Throws Error naming
/// `masks_dir` when it is not a folder (check_masks_folder).
int64_t attach_masks(datasets::Dataset& dataset, const std::string& masks_dir);
/// Throws Error naming `masks_dir` unless it is a folder this process can read.
void check_masks_folder(const std::string& masks_dir);

/// "i/N" (0 <= i < N). Throws Error on another form.
std::pair<int64_t, int64_t> parse_shard(const std::string& text);

struct ClassifyOptions {
  std::string model;  ///< checkpoint path
  std::string out_dir;
  int64_t batch_size = 16;
  int threads = 2;  ///< decode/preprocess worker threads
  /// Map names; empty: the model's own maps + rollout (ViT) / gradcam (CNN).
  std::vector<std::string> maps;
  bool overlays = false;
  bool tta = false;
  std::optional<double> threshold;  ///< unset: the checkpoint's (binary models), else arg-max
  bool faithfulness = false;
  int faithfulness_steps = 32;
  bool resume = false;
  /// Replace an existing results.h5 (without it, and without resume, an existing one is an
  /// error, so that a finished run is never truncated by accident).
  bool overwrite = false;
  int64_t shard = 0, num_shards = 1;
  /// Replaces the checkpoint's decode.reduce_to (preprocessing/decode.h): N > 0 decodes JPEGs
  /// at 1/2, 1/4 or 1/8 while the short side stays >= N, 0 at full size; unset: as trained.
  /// What was applied is results.h5's preprocessing_config (so --resume and merge compare it).
  std::optional<int> decode_reduce_to;
  std::string device = "cpu";
  /// fp32 | bf16: inference in bfloat16 autocast (runtime/precision.h); logits, probabilities
  /// and maps are stored as float32 either way; results.h5's root attribute `precision`.
  std::string precision = "fp32";
  std::string command_line;
  /// Polled between batches (and between the images of a --faithfulness batch): true stops
  /// the run there (a signal asked for it, runtime::stop_on_signals). Every batch already
  /// inferred is written; results.h5 is left unfinished, so --resume continues it. A run
  /// replacing an existing results.h5 (--overwrite) keeps the previous file instead.
  std::function<bool()> stop_requested;
  /// Called with each warning about the run as a whole (a resumed file that holds images
  /// that are not among `dataset`'s); the command prints it as a `warning:` line.
  std::function<void(const std::string&)> warn;
};

struct ClassifyProgress {
  int64_t done = 0, total = 0, failed = 0;
  double seconds = 0;
};

struct ClassifySummary {
  int64_t classified = 0;  ///< rows in results.h5 (resumed rows included)
  int64_t failed = 0;
  int64_t skipped = 0;               ///< already stored (--resume)
  std::vector<std::string> written;  ///< paths of the files written
  /// Lines of the end-of-run summary (metrics when labels are known, faithfulness means).
  std::vector<std::string> summary;
  /// options.stop_requested() stopped the run; `replaced_nothing`: it was replacing a file,
  /// which is kept as it was.
  bool interrupted = false;
  bool replaced_nothing = false;
};

/// The default map names of a model: its own maps, then "rollout" (ViT) or "gradcam" (CNNs).
std::vector<std::string> default_maps(const std::string& checkpoint);

/// Runs the classification of `dataset` (already collected; masks attached when known).
/// Throws Error for a bad checkpoint, unknown map names, an output folder that cannot be
/// written or a results file that cannot be resumed; never for one bad image.
ClassifySummary classify(const datasets::Dataset& dataset, const ClassifyOptions& options,
                         const std::function<void(const ClassifyProgress&)>& progress = {});

}  // namespace attnscope::pipeline
