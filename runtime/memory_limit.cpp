#include "runtime/memory_limit.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include "attnscope/error.h"
#include "attnscope/printable.h"

namespace attnscope::runtime {
namespace {

// A whole file of /proc or /sys, "" when it cannot be read.
std::string read_small_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A cgroup limit file's number; 0 for "max", v1's "unlimited" (2^63 rounded down to a page)
// and anything unreadable.
std::size_t limit_in(const std::string& path) {
  const auto text = read_small_file(path);
  if (text.empty() || text.rfind("max", 0) == 0) return 0;
  errno = 0;
  char* end = nullptr;
  const unsigned long long value = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || value >= (1ULL << 62)) return 0;
  return static_cast<std::size_t>(value);
}

// A /proc/meminfo field in bytes, 0 when absent.
std::size_t meminfo_bytes(const std::string& meminfo, const std::string& field) {
  std::istringstream in(meminfo);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(field.size() + 1));
    unsigned long long kib = 0;
    if (fields >> kib) return static_cast<std::size_t>(kib) * 1024;
  }
  return 0;
}

}  // namespace

std::optional<std::size_t> parse_memory_size(const std::string& text) {
  if (text == "off" || text == "0") return std::size_t{0};
  std::size_t digits = 0;
  while (digits < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[digits])) || text[digits] == '.'))
    ++digits;
  if (digits == 0 || std::count(text.begin(), text.begin() + digits, '.') > 1) return std::nullopt;
  std::string unit = text.substr(digits);
  if (unit.size() == 3 && (unit[1] == 'i' || unit[1] == 'I') && (unit[2] == 'B' || unit[2] == 'b'))
    unit = unit.substr(0, 1);
  int shift = -1;
  if (unit.empty())
    shift = 0;
  else if (unit.size() == 1) {
    const std::string units = "KMGT";
    const auto at =
        units.find(static_cast<char>(std::toupper(static_cast<unsigned char>(unit[0]))));
    if (at != std::string::npos) shift = 10 * (static_cast<int>(at) + 1);
  }
  if (shift < 0) return std::nullopt;
  const std::string number = text.substr(0, digits);
  if (shift == 0 && number.find('.') != std::string::npos) return std::nullopt;  // bytes: whole
  const double value = std::ldexp(std::strtod(number.c_str(), nullptr), shift);
  if (!std::isfinite(value) || value < 1 || value >= std::ldexp(1.0, 62)) return std::nullopt;
  return static_cast<std::size_t>(value);
}

std::size_t cgroup_memory_limit(const std::string& proc_self_cgroup, const std::string& root,
                                std::string* where) {
  std::size_t best = 0;
  const auto consider = [&](std::size_t bytes, const std::string& file) {
    if (bytes == 0 || (best != 0 && bytes >= best)) return;
    best = bytes;
    if (where != nullptr) *where = file;
  };
  // Each line: hierarchy-ID:controllers:path. v2 is "0::/path"; v1 names "memory".
  std::istringstream in(proc_self_cgroup);
  std::string line;
  while (std::getline(in, line)) {
    const auto first = line.find(':');
    const auto second = first == std::string::npos ? first : line.find(':', first + 1);
    if (second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    std::string path = line.substr(second + 1);
    if (path.empty() || path[0] != '/' || path.find("..") != std::string::npos) continue;
    const bool v2 = line.substr(0, first) == "0" && controllers.empty();
    std::istringstream names(controllers);
    std::string name;
    bool v1 = false;
    while (std::getline(names, name, ','))
      v1 = v1 || name == "memory";
    if (!v2 && !v1) continue;
    const std::string base = v2 ? root : root + "/memory";
    // The limits of every ancestor apply too; inside a container the path may not exist below
    // the namespace's root, whose own files are then the container's.
    while (true) {
      const std::string dir = base + (path == "/" ? "" : path);
      if (v2) {
        const auto memory = limit_in(dir + "/memory.max");
        const auto swap = limit_in(dir + "/memory.swap.max");
        if (memory != 0) consider(memory + swap, dir + "/memory.max");
      } else {
        const auto both = limit_in(dir + "/memory.memsw.limit_in_bytes");
        if (both != 0)
          consider(both, dir + "/memory.memsw.limit_in_bytes");
        else
          consider(limit_in(dir + "/memory.limit_in_bytes"), dir + "/memory.limit_in_bytes");
      }
      if (path == "/") break;
      const auto slash = path.rfind('/');
      path = slash == 0 ? "/" : path.substr(0, slash);
    }
  }
  return best;
}

std::size_t resident_bytes() {
  // read(2) rather than a stream: called before each new tensor block is mapped.
  const int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char text[128];
  const auto n = ::read(fd, text, sizeof text - 1);
  ::close(fd);
  if (n <= 0) return 0;
  text[n] = '\0';
  unsigned long long size = 0, resident = 0;
  if (std::sscanf(text, "%llu %llu", &size, &resident) != 2) return 0;
  return static_cast<std::size_t>(resident) * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

const MemoryLimit& memory_limit() {
  static const MemoryLimit limit = [] {
    MemoryLimit out;
    if (const char* env = std::getenv(kMemoryLimitEnv); env != nullptr && *env != '\0') {
      const auto bytes = parse_memory_size(env);
      check(bytes.has_value(), kMemoryLimitEnv,
            concat("expects a size such as 8G, 512M or 1073741824, or off; got '", excerpt(env, 40),
                   "'"));
      out.bytes = *bytes;
      out.source = kMemoryLimitEnv;
      return out;
    }
    const auto meminfo = read_small_file("/proc/meminfo");
    const std::size_t free = meminfo_bytes(meminfo, "MemAvailable") +
                             meminfo_bytes(meminfo, "SwapFree") + resident_bytes();
    if (meminfo_bytes(meminfo, "MemAvailable") > 0) {
      out.bytes = free;
      out.source = "the memory this machine had free when the run started";
    }
    std::string where;
    const auto cgroup =
        cgroup_memory_limit(read_small_file("/proc/self/cgroup"), "/sys/fs/cgroup", &where);
    if (cgroup != 0 && (out.bytes == 0 || cgroup < out.bytes)) {
      out.bytes = cgroup;
      out.source = "the cgroup's limit (" + where + ")";
    }
    return out;
  }();
  return limit;
}

}  // namespace attnscope::runtime
