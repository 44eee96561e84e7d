#include "cli.h"

#include <cstdio>
#include <cstdlib>

#include <algorithm>
#include <iostream>
#include <sstream>

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
    po::store(parser.run(), vm);
    if (vm.count("help")) {
      std::cout << usage_text(usage_line, desc);
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what(), usage_text(usage_line, desc));
  }
  return true;
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
