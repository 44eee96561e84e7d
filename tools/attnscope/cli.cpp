#include "cli.h"

#include <cstdio>
#include <cstdlib>

#include <algorithm>
#include <iostream>
#include <sstream>
#include <typeinfo>

#include "attnscope/error.h"
#include "attnscope/printable.h"
#include "datasets/text/tokenizer.h"

namespace attnscope::cli {

std::vector<Command>& commands() {
  static std::vector<Command> table;
  return table;
}

Registration::Registration(std::string name, std::string summary, Run run) {
  auto& table = commands();
  table.push_back({std::move(name), std::move(summary), std::move(run)});
  std::sort(table.begin(), table.end(),
            [](const Command& a, const Command& b) { return a.name < b.name; });
}

void check_utf8_arguments(const std::vector<std::string>& args, const std::string& what,
                          const std::string& usage) {
  for (const auto& a : args)
    if (datasets::text::find_invalid_utf8(a) != std::string::npos)
      throw UsageError(concat("'", excerpt(a, 200), "' is not valid UTF-8: ", what), usage);
}

std::string usage_text(const std::string& usage_line, const po::options_description& desc) {
  std::ostringstream out;
  out << "usage: attnscope " << usage_line << "\n\n" << desc;
  return out.str();
}

bool parse(const std::string& usage_line, po::options_description& desc,
           const std::vector<std::string>& args, po::variables_map& vm,
           const po::positional_options_description* positional) {
  desc.add_options()("help,h", "show this help and exit");
  try {
    auto parser = po::command_line_parser(args).options(desc);
    if (positional) parser.positional(*positional);
    const auto parsed = parser.run();
    // Without a positional description Boost drops bare words silently: `preprocess --input
    // *.jpg` read the first file and ignored the rest. A word no option takes is an error.
    if (!positional)
      for (const auto& word : po::collect_unrecognized(parsed.options, po::include_positional))
        throw UsageError(concat("unexpected argument '", excerpt(word, 200),
                                "' (each value follows its option; quote or repeat the option "
                                "for several values)"),
                         usage_text(usage_line, desc));
    po::store(parsed, vm);
    // Boost reads "-1" into an unsigned option as 2^64 - 1 (lexical_cast wraps): `--seed -1`
    // trained with seed 18446744073709551615. A minus sign there is a usage error.
    for (const auto& option : parsed.options) {
      if (option.string_key.empty() || !vm.count(option.string_key)) continue;
      const auto& type = vm[option.string_key].value().type();
      const bool is_unsigned = type == typeid(unsigned) || type == typeid(unsigned long) ||
                               type == typeid(unsigned long long);
      for (const auto& value : option.value)
        if (is_unsigned && value.find('-') != std::string::npos)
          throw UsageError(concat("--", option.string_key, " must be a non-negative integer, got '",
                                  excerpt(value, 200), "'"),
                           usage_text(usage_line, desc));
    }
    // An empty value is a usage error naming the option: a path above all (`--out ""` ended in
    // "cannot create the run folder (Invalid argument)"; `--init "$CKPT"` with CKPT unset
    // trained from scratch without a word, as if --init was not given). Only --title takes ""
    // (its default: a title from the file name), and the sentences `seq2seq translate` takes
    // (an empty one is its own "empty input" line, as an empty line on stdin is).
    for (const auto& option : parsed.options) {
      if (option.string_key.empty() || option.string_key == "title" || option.string_key == "text")
        continue;
      for (const auto& value : option.value) {
        if (!value.empty()) continue;
        throw UsageError(option.position_key >= 0
                             ? std::string("an argument is empty: each must name something")
                             : concat("--", option.string_key, " is empty: give it a value"),
                         usage_text(usage_line, desc));
      }
    }
    if (vm.count("help")) {
      std::cout << usage_text(usage_line, desc);
      return false;
    }
    po::notify(vm);
  } catch (const po::unknown_option& e) {
    // The global option after a command that has none of its own: say where it goes.
    const auto name = e.get_option_name();
    throw UsageError(name == "--threads" || name.rfind("--threads=", 0) == 0
                         ? concat(e.what(),
                                  " (--threads is a global option here: give it before the "
                                  "command, as in `attnscope --threads 2 info`)")
                         : std::string(e.what()),
                     usage_text(usage_line, desc));
  } catch (const po::error& e) {
    throw UsageError(e.what(), usage_text(usage_line, desc));
  }
  return true;
}

void add_decode_reduce_to(po::options_description& desc) {
  desc.add_options()(
      "decode-reduce-to", po::value<int>(),
      "decode JPEGs at 1/2, 1/4 or 1/8 while the short side stays >= N (0: full size; N: the "
      "first resize's size, divided by any centre-crop fraction before it); default: the "
      "checkpoint's preprocessing. For full-size photographs (ISIC 2019/2020) with a checkpoint "
      "trained without it: several times faster, pixels slightly different");
}

std::optional<int> read_decode_reduce_to(const po::variables_map& vm, const std::string& usage) {
  if (!vm.count("decode-reduce-to")) return std::nullopt;
  const int n = vm["decode-reduce-to"].as<int>();
  if (n < 0 || n > 65535)
    throw UsageError("--decode-reduce-to must be in [0, 65535] (0 = full size)", usage);
  return n;
}

std::string image_error_line(const std::string& path, const std::string& image_id,
                             const std::string& message) {
  const auto& who = path.empty() ? image_id : path;
  const bool named = message.compare(0, who.size(), who) == 0;
  return concat("error: ", named ? "" : excerpt(who, 300) + ": ", excerpt(message, 1000), "\n");
}

std::string shown(double value) {
  char buf[32];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
  return buf;
}

}  // namespace attnscope::cli
