#pragma once
// The flags of data-parallel subcommands (--master-addr, --dist-timeout) and the one place the
// command reads the launcher's environment variables (library code never reads the
// environment).

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cli.h"
#include "pipeline/distributed.h"

namespace attnscope::cli {

struct DistributedFlags {
  std::string master_addr;
  double timeout_s = 1800;

  void add_to(po::options_description& desc) {
    // clang-format off
    desc.add_options()
        ("master-addr", po::value(&master_addr)->default_value(""),
         "address of rank 0's machine (the rendezvous store); default: MASTER_ADDR. Needed "
         "under srun unless MASTER_ADDR is set")
        ("dist-timeout", po::value(&timeout_s)->default_value(1800),
         "seconds a rendezvous, a collective or a missing rank may take before every rank "
         "stops with an error naming the rank");
    // clang-format on
  }

  /// What the environment and a --master-addr and --dist-timeout among `args` say, before the
  /// options are parsed: a world of several, or nothing (one process, or variables that make
  /// no world). Prints nothing and never throws.
  static std::optional<pipeline::DistributedConfig> quiet_config(
      const std::vector<std::string>& args) {
    pipeline::LaunchOptions options;
    for (std::size_t i = 0; i < args.size(); ++i) {
      std::string flag = args[i], value;
      if (const auto eq = flag.find('='); eq != std::string::npos) {
        value = flag.substr(eq + 1);
        flag.resize(eq);
      } else if (i + 1 < args.size()) {
        value = args[i + 1];
      }
      if (flag == "--master-addr") options.master_addr = value;
      if (flag == "--dist-timeout") {
        try {
          const double seconds = std::stod(value);
          if (seconds > 0 && seconds <= 1e7)
            options.timeout = std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000.0));
        } catch (const std::exception&) {
        }
      }
    }
    try {
      auto config = pipeline::distributed_config(environment(), options);
      if (config.world_size > 1) return config;
    } catch (const std::exception&) {
    }
    return std::nullopt;
  }

  /// Called inside a catch block of a rank that has not joined the group: rethrows the error
  /// when `announce` is empty (one process, or no world yet); else prints its line, tells the
  /// other ranks through the store (they stop at once with its reason instead of waiting out
  /// --dist-timeout) and throws ReportedError with its status.
  [[noreturn]] static void announce_current_error(
      const std::optional<pipeline::DistributedConfig>& announce) {
    if (!announce) throw;
    // The line first (the others may take a while to hear), then the others are told.
    std::string line;
    const int status = report_error(std::current_exception(), &line);
    pipeline::DistributedGroup::announce_failure(*announce, line, status);
    throw ReportedError(status);
  }

  /// The launcher's variables (torchrun, Slurm, GLOO_SOCKET_IFNAME) read from the
  /// environment, plus these flags; prints the warning line of variables set but not used.
  pipeline::DistributedConfig config() const {
    if (!(timeout_s > 0) || timeout_s > 1e7)
      throw UsageError("--dist-timeout expects seconds > 0", "");
    pipeline::LaunchOptions options;
    options.master_addr = master_addr;
    options.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000.0));
    auto config = pipeline::distributed_config(environment(), options);
    if (!config.note.empty()) std::cerr << "warning: " << config.note << "\n";
    return config;
  }

 private:
  static std::map<std::string, std::string> environment() {
    std::map<std::string, std::string> env;
    for (const auto& name : pipeline::distributed_variables())
      if (const char* value = std::getenv(name.c_str())) env[name] = value;
    return env;
  }
};

}  // namespace attnscope::cli
