// attnscope: the command-line front end of the libraries (data preparation, the seq2seq
// models, presets, info; `attnscope --help` lists what is built). Global options come before
// the subcommand; each subcommand lives in its own cmd_*.cpp and registers itself (cli.h).

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <iostream>
#include <map>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

#include "attnscope/atomic_file.h"
#include "attnscope/error.h"
#include "attnscope/output_checks.h"
#include "attnscope/printable.h"
#include "attnscope/version.h"
#include "cli.h"
#include "runtime/memory_limit.h"
#include "runtime/runtime.h"
#include "runtime/tensor_cache.h"

namespace {

using attnscope::cli::commands;
using attnscope::cli::GlobalOptions;
using attnscope::cli::UsageError;

// The command run() started ("" before one): what an out-of-memory line advises depends on it.
std::string g_command;

std::string main_usage() {
  std::string text =
      "usage: attnscope [--threads N] <command> [options]\n"
      "       attnscope --help | --version\n"
      "       attnscope <command> --help\n\n"
      "Interpretable skin-lesion classification and the attention mechanisms behind it.\n\n"
      "Global options:\n"
      "  -h [ --help ]          show this help and exit\n"
      "  --version              print the attnscope version and exit\n"
      "  --threads N (=0)       LibTorch intra-op threads (0 = every core, at most 256)\n\n"
      "Commands:\n";
  for (const auto& c : commands()) {
    text += "  " + c.name + std::string(c.name.size() < 14 ? 14 - c.name.size() : 1, ' ') +
            c.summary + "\n";
  }
  return text;
}

int parse_threads(const std::string& value) {
  std::size_t used = 0;
  int n = -1;
  try {
    n = std::stoi(value, &used);
  } catch (const std::exception&) {
  }
  if (used != value.size() || n < 0 || n > attnscope::kMaxWorkers)
    throw UsageError("--threads expects a whole number in [0, " +
                         std::to_string(attnscope::kMaxWorkers) + "], got '" + value + "'",
                     main_usage());
  return n;
}

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  GlobalOptions global;
  std::size_t i = 0;
  for (; i < args.size() && args[i].rfind("-", 0) == 0; ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h") {
      std::cout << main_usage();
      return 0;
    }
    if (a == "--version") {
      std::cout << "attnscope " << attnscope::kVersion << "\n";
      return 0;
    }
    if (a == "--threads" && i + 1 < args.size()) {
      global.threads = parse_threads(args[++i]);
    } else if (a.rfind("--threads=", 0) == 0) {
      global.threads = parse_threads(a.substr(10));
    } else {
      throw UsageError("unknown global option '" + a + "'", main_usage());
    }
  }
  if (i == args.size()) throw UsageError("no command given", main_usage());
  const std::string name = args[i];
  for (const auto& c : commands()) {
    if (c.name == name) {
      attnscope::runtime::limit_idle_spinning(
          global.threads > 0 ? global.threads : attnscope::runtime::available_cores(), argv);
      attnscope::runtime::set_threads(global.threads);
      attnscope::runtime::keep_freed_memory_for_reuse();
      attnscope::runtime::memory_limit();  // ATTNSCOPE_MEMORY_LIMIT checked before any work
      attnscope::runtime::cache_tensor_memory_by_default();
      g_command = c.name;
      return c.run(std::vector<std::string>(args.begin() + i + 1, args.end()), global);
    }
  }
  throw UsageError("unknown command '" + name + "'", main_usage());
}

}  // namespace

// What a command printed must have reached standard output: `attnscope presets > /dev/full`
// exited 0 with nothing written. Like coreutils' close_stdout, a failed flush is exit 1.
static int checked_stdout(int status) {
  // std::cout writes through stdout's buffer: its flush is the write that fails, and its errno
  // the reason (cleared after it, the line had none).
  errno = 0;
  std::cout.flush();
  int error = errno;
  errno = 0;
  if (std::fflush(stdout) != 0 || std::ferror(stdout) || !std::cout) {
    if (errno != 0) error = errno;
    // A failure in an earlier flush leaves no errno to name: then the line has no reason.
    std::cerr << "error: writing standard output failed"
              << (error ? attnscope::concat(" (", std::strerror(error), ")") : std::string())
              << "\n";
    return status == 0 ? 1 : status;
  }
  return status;
}

namespace attnscope::cli {

// The line (and a usage error's usage) into `std_err`; the exit status.
static int format_error(std::exception_ptr error, std::ostream& std_err) {
  try {
    std::rethrow_exception(error);
  } catch (const UsageError& e) {
    // The line, then the command's usage line and where its options are listed: its whole
    // option list (60-odd lines for classify or train) pushed the line off the screen. A
    // mistake before any command (an unknown one) gets the list of commands, and one before a
    // seq2seq verb the list of verbs.
    std_err << "error: " << attnscope::printable(e.what()) << "\n\n";
    const std::string& usage = e.usage();
    const auto block = usage.find("\n\n");
    const std::string prefix = "usage: attnscope ";
    std::string command;
    if (usage.rfind(prefix, 0) == 0) {
      std::istringstream words(usage.substr(prefix.size(), usage.find('\n') - prefix.size()));
      // The command's words ("seq2seq translate"), up to its first option or placeholder.
      const auto is_word = [](const std::string& w) {
        return w[0] >= 'a' && w[0] <= 'z' &&
               w.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") == std::string::npos;
      };
      std::string w;
      while (words >> w && is_word(w))
        command += (command.empty() ? "" : " ") + w;
      // `seq2seq <verb>`: a mistake before the verb gets the list of verbs.
      if (w.rfind('<', 0) == 0) command.clear();
    }
    if (command.empty() || block == std::string::npos) {
      std_err << usage;
    } else {
      std_err << usage.substr(0, block) << "\n(attnscope " << command
              << " --help lists every option)\n";
    }
    return 2;
  } catch (const attnscope::runtime::MemoryLimitExceeded& e) {
    std_err << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::bad_alloc&) {
    // "error: std::bad_alloc" said nothing a user could act on; what to lower is the command's
    // own options (merge and report have no --batch-size, classify no --workers).
    static const std::map<std::string, const char*> advice = {
        {"train", "lower --batch-size, --workers or --size"},
        {"evaluate", "lower --batch-size or --workers"},
        {"classify", "lower --batch-size (or ask for fewer --maps, no --tta)"},
        {"demo", "lower --size"},
        {"dist-check", "lower --global-batch or --image-size"},
        {"cache", "lower --size or --workers"},
        {"synth", "lower --size or --workers"},
        {"seq2seq", "lower --batch-size or the sentence lengths"},
        {"report", "show fewer images (--top N)"},
        {"merge", "merge fewer shards at once"},
    };
    const auto it = advice.find(g_command);
    std_err << "error: out of memory (std::bad_alloc): "
            << (it == advice.end() ? std::string("free memory")
                                   : std::string(it->second) + ", or free memory")
            << "\n";
    return 1;
  } catch (const c10::OutOfMemoryError& e) {
    // A GPU's memory (CUDA's caching allocator): LibTorch's message says how much and where.
    std_err << "error: out of memory on the device: lower --batch-size or the image size "
               "(classify: fewer --maps, no --tta), or free the GPU ("
            << attnscope::printable(e.what_without_backtrace()) << ")\n";
    return 1;
  } catch (const c10::Error& e) {
    // LibTorch's own errors: the message without the C++ stack LibTorch appends to what().
    std_err << "error: " << attnscope::printable(e.what_without_backtrace()) << "\n";
    return 1;
  } catch (const std::filesystem::filesystem_error& e) {
    // The library's "filesystem error: status: Too many levels of symbolic links [loopA]": the
    // path first and the system's reason, as every other line.
    std::string who = e.path1().string();
    if (!e.path2().empty()) who += " -> " + e.path2().string();
    if (who.empty()) {  // no path to name: the library's words, without its prefix
      std::string what = e.what();
      if (what.rfind("filesystem error: ", 0) == 0) what.erase(0, 18);
      std_err << "error: " << attnscope::printable(what) << "\n";
    } else {
      std_err << "error: " << attnscope::printable(who) << ": "
              << attnscope::printable(e.code().message()) << "\n";
    }
    return 1;
  } catch (const std::exception& e) {
    // printable(): a message quoting a crafted id must not send escapes to the terminal.
    std_err << "error: " << attnscope::printable(e.what()) << "\n";
    return 1;
  } catch (...) {
    std_err << "error: an unknown exception\n";
    return 1;
  }
}

int report_error(std::exception_ptr error, std::string* line) {
  std::ostringstream text;
  const int status = format_error(std::move(error), text);
  std::cerr << text.str();
  if (line) {
    const auto all = text.str();
    *line = all.substr(0, all.find('\n'));
    if (line->rfind("error: ", 0) == 0) line->erase(0, 7);
  }
  return status;
}

}  // namespace attnscope::cli

int main(int argc, char** argv) {
  // Before anything reads GLIBC_TUNABLES or starts a process: the launcher's addition goes.
  attnscope::runtime::take_back_heap_huge_pages();
  // A signal that ends a command removes its temporary files (attnscope/atomic_file.h).
  attnscope::remove_temporaries_on_signals();
  // A write past the file-size limit (`ulimit -f`, a batch system's) fails with EFBIG and is
  // said as on a full disk: with SIGXFSZ's default action the command ended without a word, its
  // temporary file left behind.
  ::signal(SIGXFSZ, SIG_IGN);
  try {
    return checked_stdout(run(argc, argv));
  } catch (const attnscope::cli::ReportedError& e) {
    return e.status();  // its line is printed
  } catch (...) {
    return attnscope::cli::report_error(std::current_exception());
  }
}
