#pragma once
// Data-parallel training on PyTorch's own distributed engine, c10d: the same rendezvous
// (TCPStore at MASTER_ADDR:MASTER_PORT) and the same collectives (ProcessGroupGloo on CPU) a
// Python job under torchrun uses, so torchrun, Slurm's srun and hand-set variables all launch
// attnscope unchanged.
//
//   DistributedConfig  what the launcher's variables say (rank, world size, master, timeout)
//   DistributedGroup   one process's membership: rendezvous, broadcast, all-reduce, gather,
//                      failure diagnosis naming the rank that died or hangs
//   GradientReducer    the per-step gradient all-reduce in flattened buckets
//   shard_batches / shard_indices   which samples each rank takes
//
// Library code reads no environment: the command copies the variables named by
// distributed_variables() from getenv into a map and hands it to distributed_config().

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

namespace attnscope::pipeline {

/// Names of every environment variable distributed_config() looks at (torchrun's, Slurm's,
/// the torchrun agent's and GLOO_SOCKET_IFNAME).
const std::vector<std::string>& distributed_variables();

struct DistributedConfig {
  int rank = 0;
  int world_size = 1;
  /// The process's index on its machine (picks the CUDA device under NCCL).
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  /// "torchrun" (RANK/WORLD_SIZE), "slurm" (SLURM_PROCID/SLURM_NTASKS) or "none".
  std::string launcher = "none";
  /// TORCHELASTIC_USE_AGENT_STORE=True: torchrun's agent already hosts the store at
  /// MASTER_ADDR:MASTER_PORT, so every rank (rank 0 too) connects as a client.
  bool agent_store = false;
  /// Key prefix under the agent's store ("/worker/attempt_<TORCHELASTIC_RESTART_COUNT>").
  std::string store_prefix;
  /// GLOO_SOCKET_IFNAME: comma-separated network interfaces Gloo binds to; empty = the
  /// address this machine's hostname resolves to (loopback when it resolves to nothing).
  std::string socket_ifname;
  /// How long a rendezvous, a collective or a missing rank may take before every rank stops.
  std::chrono::milliseconds timeout{std::chrono::minutes(30)};
  /// A warning for the command to print when the launcher's variables were set but not used
  /// (Slurm's batch step: SLURM_NTASKS=4 outside srun); empty otherwise.
  std::string note;
};

/// The command-line side of the configuration.
struct LaunchOptions {
  /// --master-addr; overrides MASTER_ADDR (needed under Slurm unless MASTER_ADDR is set).
  std::string master_addr;
  /// --dist-timeout.
  std::chrono::milliseconds timeout{std::chrono::minutes(30)};
};

/// Whether `env` is that of a task srun started: SLURM_STEP_ID (or the older SLURM_STEPID) is
/// an ordinary step number (an empty value counts as unset). Slurm's batch script also carries
/// SLURM_PROCID=0 and the job's SLURM_NTASKS, but it is one process however many tasks the job
/// asked for: Slurm gives it no step number (salloc's shell under use_interactive_step gets
/// 0xfffffffa; every special step is 0xfffffffa and above).
bool is_srun_task(const std::map<std::string, std::string>& env);

/// Reads the launcher's variables from `env` (name → value, only the variables that are set).
/// torchrun's RANK + WORLD_SIZE win over Slurm's SLURM_PROCID + SLURM_NTASKS, which count only
/// in a task srun started (is_srun_task; elsewhere the process runs alone and `note` says why
/// when SLURM_NTASKS is not 1); neither = one process (world size 1). Throws Error("distributed",
/// ...) naming the variable for a value that is not a number, a rank outside [0, world size), a
/// missing master address under Slurm, or a port outside 1..65535.
DistributedConfig distributed_config(const std::map<std::string, std::string>& env,
                                     const LaunchOptions& options = {});

/// One process's membership of the group. World size 1 needs no network: every collective
/// returns its input.
///
/// Failures: every collective and the rendezvous stop after config.timeout at the latest.
/// When one fails, the rank finds out which peers stopped (every rank beats a heartbeat into
/// the store once a second; a rank that beat no more for 3 s died or hangs) and throws
/// Error("distributed", "rank <me>: ... rank <r> stopped ...").
class DistributedGroup {
 public:
  /// Joins: rank 0 starts the TCPStore (unless torchrun's agent hosts it), every rank checks
  /// in with its world size, then the Gloo process group connects. Throws Error naming the
  /// master address and port when the store cannot be reached or started, the rank(s) that
  /// did not join within the timeout, a world size that differs between ranks, a rank taken
  /// twice, and an unknown GLOO_SOCKET_IFNAME interface.
  explicit DistributedGroup(DistributedConfig config);

  /// For a rank that stops before it joins (a file missing on its machine, a flag the others
  /// lack), after its error line is printed: tells the others through the store, so that they
  /// stop at once with "rank <r> stopped before the group formed: <message>" instead of
  /// waiting out the timeout. Best effort and bounded: waits at most 30 s (or the timeout) for
  /// the store (rank 0 starts it, and keeps it up until every other rank has heard or stopped
  /// itself, within the same bound); a store that never answers or breaks off ends the process
  /// with `status` (after 2 bounds + 5 s at the latest). Never throws. Does nothing for a world
  /// of 1.
  static void announce_failure(const DistributedConfig& config, const std::string& message,
                               int status = 1);

  /// Throws the constructor's Error for a GLOO_SOCKET_IFNAME this machine lacks, without
  /// joining: a check a rank makes before the group forms.
  static void check_interfaces(const DistributedConfig& config);
  ~DistributedGroup();
  DistributedGroup(const DistributedGroup&) = delete;
  DistributedGroup& operator=(const DistributedGroup&) = delete;

  int rank() const;
  int world_size() const;
  /// Rank 0: the one process that writes checkpoints, metrics and the progress bar.
  bool is_main() const { return rank() == 0; }
  const DistributedConfig& config() const;

  /// Replaces every tensor with root's values (in place; flattened into one message per
  /// dtype).
  void broadcast(const std::vector<at::Tensor>& tensors, int root = 0);
  /// Broadcasts every parameter and buffer of `module` from rank 0.
  void broadcast_module(torch::nn::Module& module);
  /// Throws Error naming the first rank whose `value` differs from rank 0's (e.g. a model
  /// config or the number of samples): the ranks must agree before they train together.
  void check_same(const std::string& what, const std::string& value);
  /// Element-wise sum over the ranks (in place).
  void all_reduce_sum(at::Tensor& tensor);
  /// The same for several contiguous tensors: all are started before the first is waited
  /// for, so Gloo's worker threads can run them side by side.
  void all_reduce_sum(const std::vector<at::Tensor>& tensors);
  /// Every rank's `rows` (same shape past dim 0, any number of rows, also 0) concatenated in
  /// rank order; no padding rows are left in the result.
  at::Tensor all_gather_rows(const at::Tensor& rows);
  /// Rows gathered from every rank and put in index order: local_indices[i] is the global
  /// position of local_rows[i]; together the ranks must cover 0..total-1 exactly once
  /// (Error otherwise). The full validation set's scores, with no padding bias.
  at::Tensor gather_by_index(const std::vector<int64_t>& local_indices,
                             const at::Tensor& local_rows, int64_t total);
  void barrier();
  /// Clean end of a run: a barrier, then rank 0 (which hosts the store) waits until every
  /// rank has left before it may exit.
  void finish();
  /// Tells the others why this rank stops (shown in their error) — call before leaving a
  /// training loop on an exception. Never throws.
  void report_failure(const std::string& message) noexcept;

  /// Wall-clock seconds spent inside collectives so far (benchmarks).
  double collective_seconds() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

/// The per-step gradient all-reduce. Gradients are copied into flattened buckets (one per
/// dtype, at most bucket_bytes each), scaled by this rank's number of samples, summed over
/// the ranks, and divided by the total number of samples only after the reduction has
/// completed: the result is exactly the gradient of the mean loss over the global batch,
/// also when the ranks' batches differ in size (the last batch) or one is empty.
class GradientReducer {
 public:
  GradientReducer(DistributedGroup& group, std::vector<at::Tensor> parameters,
                  int64_t bucket_bytes = 25 << 20);

  struct Totals {
    int64_t samples = 0;     ///< samples in the global batch
    double mean_loss = 0.0;  ///< the global batch's mean loss
  };
  /// Call after backward and before the optimiser step. local_samples: this rank's batch
  /// size (0 allowed: its gradients count as zero); local_mean_loss: its mean loss. A
  /// parameter no rank produced a gradient for keeps an undefined gradient (as in one
  /// process). Returns the global batch's totals; samples == 0 means skip the step.
  Totals reduce(int64_t local_samples, double local_mean_loss);

  /// Bytes all-reduced per step (gradients, each rank sends and receives about twice this in
  /// a ring all-reduce).
  int64_t gradient_bytes() const { return gradient_bytes_; }
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  /// Seconds spent in reduce() so far (copying included).
  double seconds() const { return seconds_; }

 private:
  struct Bucket {
    at::Tensor buffer;
    std::vector<std::size_t> params;  // indices into parameters_
    std::vector<int64_t> offsets;
  };
  DistributedGroup& group_;
  std::vector<at::Tensor> parameters_;
  std::vector<Bucket> buckets_;
  int64_t gradient_bytes_ = 0;
  double seconds_ = 0.0;
};

/// This rank's batches of an epoch. `epoch_order` is the epoch's sample order, identical on
/// every rank (the same seed and epoch); it is cut into global batches of `global_batch` and
/// each global batch into `world_size` contiguous parts whose sizes differ by at most one.
/// Every rank gets the same number of batches (some may be empty at the end), so the ranks
/// stay in step, and one process (world_size 1) gets exactly the global batches.
std::vector<std::vector<std::size_t>> shard_batches(const std::vector<std::size_t>& epoch_order,
                                                    int64_t global_batch, int rank, int world_size,
                                                    bool drop_last = false);

/// Positions rank, rank + world_size, … below n: a rank's share of a validation set (no
/// padding, no repeats).
std::vector<int64_t> shard_indices(int64_t n, int rank, int world_size);

}  // namespace attnscope::pipeline
