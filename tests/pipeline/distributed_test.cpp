// The pure parts of pipeline/distributed.h: reading the launcher's variables, sharding, and
// the gradient reducer of a one-process group. The multi-process behaviour is tested in
// tests/cli/distributed_cli_test.cpp with real processes.

#include "pipeline/distributed.h"

#include <gtest/gtest.h>

#include <numeric>
#include <set>

#include <torch/torch.h>

#include "attnscope/error.h"

namespace attnscope::pipeline {
namespace {

using Env = std::map<std::string, std::string>;

std::string error_of(const Env& env, const LaunchOptions& options = {}) {
  try {
    distributed_config(env, options);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(DistributedConfig, NoLauncherMeansOneProcess) {
  const auto c = distributed_config({});
  EXPECT_EQ(c.world_size, 1);
  EXPECT_EQ(c.rank, 0);
  EXPECT_EQ(c.launcher, "none");
}

TEST(DistributedConfig, ReadsTorchrunVariables) {
  const auto c = distributed_config({{"RANK", "3"},
                                     {"WORLD_SIZE", "8"},
                                     {"LOCAL_RANK", "1"},
                                     {"MASTER_ADDR", "node07"},
                                     {"MASTER_PORT", "29400"},
                                     {"GLOO_SOCKET_IFNAME", "eth1"}});
  EXPECT_EQ(c.launcher, "torchrun");
  EXPECT_EQ(c.rank, 3);
  EXPECT_EQ(c.world_size, 8);
  EXPECT_EQ(c.local_rank, 1);
  EXPECT_EQ(c.master_addr, "node07");
  EXPECT_EQ(c.master_port, 29400);
  EXPECT_EQ(c.socket_ifname, "eth1");
  EXPECT_FALSE(c.agent_store);
}

TEST(DistributedConfig, TorchrunAgentStoreUsesTheAttemptPrefix) {
  // What torch/distributed/elastic's agent sets for its static rendezvous; Python's
  // _create_c10d_store then makes every rank a client under this prefix.
  const auto c = distributed_config({{"RANK", "0"},
                                     {"WORLD_SIZE", "2"},
                                     {"MASTER_ADDR", "127.0.0.1"},
                                     {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                     {"TORCHELASTIC_RESTART_COUNT", "2"}});
  EXPECT_TRUE(c.agent_store);
  EXPECT_EQ(c.store_prefix, "/worker/attempt_2");
}

TEST(DistributedConfig, ReadsSlurmVariablesWithTheMasterFromTheOption) {
  LaunchOptions options;
  options.master_addr = "head";
  const auto c = distributed_config({{"SLURM_PROCID", "5"},
                                     {"SLURM_NTASKS", "6"},
                                     {"SLURM_LOCALID", "1"},
                                     {"SLURM_STEP_ID", "0"}},
                                    options);
  EXPECT_EQ(c.launcher, "slurm");
  EXPECT_EQ(c.rank, 5);
  EXPECT_EQ(c.world_size, 6);
  EXPECT_EQ(c.local_rank, 1);
  EXPECT_EQ(c.master_addr, "head");
  EXPECT_EQ(c.master_port, 29500);
  EXPECT_EQ(c.note, "");
}

// Slurm's batch script carries SLURM_PROCID=0 and the job's SLURM_NTASKS but is one process:
// taken as rank 0 of 4 it waited for three ranks that never come. Only a task srun started (an
// ordinary SLURM_STEP_ID, or the older SLURM_STEPID) is a rank.
TEST(DistributedConfig, SlurmsBatchScriptRunsAloneAndSaysSo) {
  const std::map<std::string, std::string> job{
      {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}};
  for (const char* step : {"", "4294967291", "4294967290", "batch", "-1", "99999999999"}) {
    SCOPED_TRACE(step);
    auto env = job;
    if (*step) env["SLURM_STEP_ID"] = step;
    EXPECT_FALSE(is_srun_task(env));
    const auto c = distributed_config(env);
    EXPECT_EQ(c.launcher, "none");
    EXPECT_EQ(c.world_size, 1);
    EXPECT_EQ(c.rank, 0);
    EXPECT_EQ(c.note.rfind("SLURM_NTASKS=4 is set but srun did not start this process", 0), 0u)
        << c.note;
    EXPECT_NE(c.note.find("start it with srun"), std::string::npos) << c.note;
  }
  // A job of one task has nothing to say; a shell of salloc's (SLURM_NTASKS alone) says it.
  EXPECT_EQ(distributed_config({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}).note, "");
  EXPECT_EQ(distributed_config({{"SLURM_NTASKS", "3"}}).note.rfind("SLURM_NTASKS=3 is set", 0), 0u);
  // An empty SLURM_STEP_ID counts as unset: the older SLURM_STEPID decides.
  EXPECT_TRUE(is_srun_task({{"SLURM_STEP_ID", ""}, {"SLURM_STEPID", "2"}}));
  EXPECT_FALSE(is_srun_task({{"SLURM_STEP_ID", ""}}));
  for (const char* name : {"SLURM_STEP_ID", "SLURM_STEPID"}) {
    auto env = job;
    env[name] = "4294967289";
    env["SLURM_PROCID"] = "3";
    env["MASTER_ADDR"] = "head";
    EXPECT_TRUE(is_srun_task(env)) << name;
    const auto c = distributed_config(env);
    EXPECT_EQ(c.launcher, "slurm") << name;
    EXPECT_EQ(c.rank, 3) << name;
    EXPECT_EQ(c.world_size, 4) << name;
    EXPECT_EQ(c.note, "") << name;
  }
}

TEST(DistributedConfig, TorchrunVariablesWinOverSlurms) {
  const auto c = distributed_config({{"RANK", "1"},
                                     {"WORLD_SIZE", "2"},
                                     {"MASTER_ADDR", "a"},
                                     {"SLURM_PROCID", "0"},
                                     {"SLURM_NTASKS", "1"},
                                     {"SLURM_STEP_ID", "0"}});
  EXPECT_EQ(c.launcher, "torchrun");
  EXPECT_EQ(c.rank, 1);
}

TEST(DistributedConfig, BadValuesAreClearErrors) {
  EXPECT_NE(error_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}}).find("RANK='x'"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}})
                .find("outside a world of 2"),
            std::string::npos);
  EXPECT_NE(error_of({{"RANK", "0"}}).find("WORLD_SIZE is not"), std::string::npos);
  EXPECT_NE(error_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"SLURM_STEP_ID", "7"}})
                .find("MASTER_ADDR"),
            std::string::npos);
  EXPECT_NE(
      error_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "a"}, {"MASTER_PORT", "70000"}})
          .find("MASTER_PORT='70000'"),
      std::string::npos);
  LaunchOptions zero;
  zero.timeout = std::chrono::milliseconds(0);
  EXPECT_NE(error_of({}, zero).find("--dist-timeout"), std::string::npos);
}

TEST(ShardBatches, RanksTogetherHoldEachGlobalBatchInOrder) {
  std::vector<std::size_t> order(83);
  std::iota(order.begin(), order.end(), 100);
  std::reverse(order.begin(), order.end());
  for (int world : {1, 2, 3, 5}) {
    std::vector<std::vector<std::vector<std::size_t>>> per_rank;
    for (int r = 0; r < world; ++r)
      per_rank.push_back(shard_batches(order, 15, r, world));
    const std::size_t batches = (83 + 14) / 15;  // brute force: ceil(83 / 15)
    for (int r = 0; r < world; ++r)
      ASSERT_EQ(per_rank[r].size(), batches) << "world " << world;
    for (std::size_t k = 0; k < batches; ++k) {
      std::vector<std::size_t> joined;
      std::size_t smallest = 1000, largest = 0;
      for (int r = 0; r < world; ++r) {
        joined.insert(joined.end(), per_rank[r][k].begin(), per_rank[r][k].end());
        smallest = std::min(smallest, per_rank[r][k].size());
        largest = std::max(largest, per_rank[r][k].size());
      }
      const std::size_t from = k * 15, to = std::min<std::size_t>(from + 15, 83);
      EXPECT_EQ(joined, std::vector<std::size_t>(order.begin() + from, order.begin() + to));
      EXPECT_LE(largest - smallest, 1u);
    }
  }
}

TEST(ShardBatches, DropLastAndBadArguments) {
  std::vector<std::size_t> order(10);
  std::iota(order.begin(), order.end(), 0);
  EXPECT_EQ(shard_batches(order, 4, 0, 2, true).size(), 2u);
  EXPECT_THROW(shard_batches(order, 1, 0, 2), Error);  // less than one sample per rank
  EXPECT_THROW(shard_batches(order, 4, 2, 2), Error);
}

TEST(ShardIndices, CoverEveryPositionOnce) {
  std::multiset<int64_t> all;
  for (int r = 0; r < 3; ++r)
    for (int64_t i : shard_indices(10, r, 3))
      all.insert(i);
  ASSERT_EQ(all.size(), 10u);
  for (int64_t i = 0; i < 10; ++i)
    EXPECT_EQ(all.count(i), 1u);
}

TEST(DistributedGroup, OneProcessNeedsNoNetwork) {
  DistributedGroup group(DistributedConfig{});
  EXPECT_EQ(group.world_size(), 1);
  at::Tensor t = torch::arange(4, torch::kFloat32);
  group.all_reduce_sum(t);
  EXPECT_TRUE(t.equal(torch::arange(4, torch::kFloat32)));
  const at::Tensor rows = torch::rand({3, 2});
  EXPECT_TRUE(group.gather_by_index({2, 0, 1}, rows, 3)
                  .equal(rows.index_select(
                      0, torch::tensor(std::vector<int64_t>{1, 2, 0}, torch::kInt64))));
  EXPECT_THROW(group.gather_by_index({0, 0, 1}, rows, 3), Error);
  group.finish();
}

TEST(GradientReducer, OneProcessKeepsTheMeanGradientAcrossBuckets) {
  torch::manual_seed(3);
  DistributedGroup group(DistributedConfig{});
  torch::nn::Linear a(5, 4), b(4, 2);
  std::vector<at::Tensor> params = a->parameters();
  for (const auto& p : b->parameters())
    params.push_back(p);
  const at::Tensor x = torch::randn({6, 5});
  torch::nn::functional::cross_entropy(b(torch::tanh(a(x))), torch::tensor({0, 1, 1, 0, 1, 0}))
      .backward();
  std::vector<at::Tensor> expected;
  for (const auto& p : params)
    expected.push_back(p.grad().clone());
  // 40-byte buckets: every parameter in a bucket of its own or shared with a small one.
  GradientReducer reducer(group, params, 40);
  EXPECT_GT(reducer.buckets(), 2);
  EXPECT_EQ(reducer.gradient_bytes(), (5 * 4 + 4 + 4 * 2 + 2) * 4);
  const auto totals = reducer.reduce(6, 0.75);
  EXPECT_EQ(totals.samples, 6);
  EXPECT_DOUBLE_EQ(totals.mean_loss, 0.75);
  for (std::size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(torch::allclose(params[i].grad(), expected[i], 1e-6, 1e-7)) << i;
}

}  // namespace
}  // namespace attnscope::pipeline
