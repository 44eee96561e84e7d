#pragma once
// The command table and the option-parsing helpers every subcommand uses.

#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

namespace attnscope::cli {

namespace po = boost::program_options;

/// Options given before the subcommand; they apply to every subcommand.
struct GlobalOptions {
  int threads = 0;  ///< LibTorch intra-op threads; 0 = every available core
};

/// Prints the one line (a usage error: the line, the usage line and where its options are
/// listed) that main prints for `error` and returns the exit status (2 for a usage error, else
/// 1); `line`, when given, receives the line without its "error: ".
int report_error(std::exception_ptr error, std::string* line = nullptr);

/// An error whose line report_error has printed already (a command that had more to do after
/// printing it): main exits with status() and prints nothing.
class ReportedError : public std::exception {
 public:
  explicit ReportedError(int status) : status_(status) {}
  int status() const { return status_; }
  const char* what() const noexcept override { return "the error was reported"; }

 private:
  int status_;
};

/// A mistake on the command line: printed as "error: ...", the usage line and where the options
/// are listed (main.cpp's format_error), exit status 2.
class UsageError : public std::runtime_error {
 public:
  UsageError(const std::string& message, std::string usage)
      : std::runtime_error(message), usage_(std::move(usage)) {}
  const std::string& usage() const { return usage_; }

 private:
  std::string usage_;
};

using Run = std::function<int(const std::vector<std::string>& args, const GlobalOptions&)>;

struct Command {
  std::string name;
  std::string summary;
  Run run;
};

/// Every registered subcommand, sorted by name.
std::vector<Command>& commands();

/// Registers a subcommand at static-initialisation time (one per cmd_*.cpp).
struct Registration {
  Registration(std::string name, std::string summary, Run run);
};

/// Parses args against desc (+ positional), storing into vm. Returns false when --help was
/// asked for (the usage has then been printed). Bad flags throw UsageError with the usage.
bool parse(const std::string& usage_line, po::options_description& desc,
           const std::vector<std::string>& args, po::variables_map& vm,
           const po::positional_options_description* positional = nullptr);

/// Usage text: "usage: attnscope <usage_line>" plus the options with their defaults.
std::string usage_text(const std::string& usage_line, const po::options_description& desc);

/// For a command that records some of its arguments as UTF-8 text (train's command line and
/// working folder, which --resume reads back; seq2seq train's --task): one that is not UTF-8
/// (a Latin-1 path) is a UsageError naming it before any work; it failed after the training
/// with the JSON library's words. `what` ends the line: what is recorded and what to do
/// ("train records its command line as UTF-8 text; rename the file or folder").
void check_utf8_arguments(const std::vector<std::string>& args, const std::string& what,
                          const std::string& usage);

/// --decode-reduce-to N (classify, evaluate): DecodeOptions::reduce_to replacing the
/// checkpoint's. Adds the option to desc; read_decode_reduce_to gives it when given (checked:
/// [0, 65535], else UsageError with `usage`).
void add_decode_reduce_to(po::options_description& desc);
std::optional<int> read_decode_reduce_to(const po::variables_map& vm, const std::string& usage);

/// How --help shows a floating-point default: the shortest text that reads back as the same
/// double ("0.1", not Boost's "0.10000000000000001").
///   ("dropout", po::value<double>()->default_value(d, shown(d)), "...")
std::string shown(double value);

/// The `error:` line of an image that failed (cache, evaluate), naming it once: decoding errors
/// start with the path already, the others (LibTorch, OpenCV, an id that is not UTF-8) do not.
/// `path` may be empty (then the id names it); both are cut and escaped (excerpt()).
std::string image_error_line(const std::string& path, const std::string& image_id,
                             const std::string& message);

}  // namespace attnscope::cli
