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
                                std::string* where, std::size_t swap_total) {
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
        const auto swap = std::min(limit_in(dir + "/memory.swap.max"), swap_total);
        if (memory != 0)
          consider(memory + swap,
                   dir + (swap != 0 ? "/memory.max and memory.swap.max" : "/memory.max"));
      } else {
        // memsw is memory and swap together: at most the memory limit and the machine's swap.
        const auto both = limit_in(dir + "/memory.memsw.limit_in_bytes");
        const auto memory = limit_in(dir + "/memory.limit_in_bytes");
        const auto with_swap = memory + std::min(swap_total, both);  // both < 2^62: no overflow
        if (both == 0)
          consider(memory, dir + "/memory.limit_in_bytes");
        else if (memory != 0 && with_swap < both)
          consider(with_swap, dir + "/memory.limit_in_bytes" +
                                  (swap_total != 0 ? " and the machine's swap" : ""));
        else
          consider(both, dir + "/memory.memsw.limit_in_bytes");
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

namespace {

// MemAvailable + SwapFree + this process's resident memory; 0 without MemAvailable.
std::size_t free_memory(const std::string& meminfo) {
  const auto available = meminfo_bytes(meminfo, "MemAvailable");
  if (available == 0) return 0;
  return available + meminfo_bytes(meminfo, "SwapFree") + resident_bytes();
}

// The smaller of the cgroup's limit and `bytes` (either 0: none), from `source`.
void take_smaller(MemoryLimit& out, std::size_t bytes, const std::string& source,
                  bool from_free_memory) {
  out.bytes = bytes;
  out.source = source;
  out.from_free_memory = from_free_memory && bytes != 0;
  if (out.cgroup_bytes != 0 && (out.bytes == 0 || out.cgroup_bytes <= out.bytes)) {
    out.bytes = out.cgroup_bytes;
    out.source = "the cgroup's limit (" + out.cgroup_where + ")";
    out.from_free_memory = false;
  }
}

}  // namespace

std::string memory_size_text(std::size_t bytes, bool round_up) {
  const auto in = [&](int shift, const char* unit) {
    const std::size_t one = std::size_t{1} << shift;
    const std::size_t n = round_up ? bytes / one + (bytes % one != 0 ? 1 : 0) : bytes / one;
    return std::to_string(n) + unit;
  };
  // Rounded up, a size just below a unit is one of it ("1 MiB", not "1024 KiB").
  if (bytes >= (std::size_t{1} << 20) || (round_up && bytes > (std::size_t{1023} << 10)))
    return in(20, " MiB");
  if (bytes >= 1024) return in(10, " KiB");
  return std::to_string(bytes) + (bytes == 1 ? " byte" : " bytes");
}

const MemoryLimit& memory_limit() {
  static const MemoryLimit limit = [] {
    MemoryLimit out;
    const char* env = std::getenv(kMemoryLimitEnv);
    std::optional<std::size_t> asked;
    if (env != nullptr && *env != '\0') {
      asked = parse_memory_size(env);
      check(asked.has_value(), kMemoryLimitEnv,
            concat("expects a size such as 8G, 512M or 1073741824, or off; got '", excerpt(env, 40),
                   "'"));
      if (*asked == 0) return out;  // off: no limit at all
    }
    const auto meminfo = read_small_file("/proc/meminfo");
    out.cgroup_bytes = cgroup_memory_limit(read_small_file("/proc/self/cgroup"), "/sys/fs/cgroup",
                                           &out.cgroup_where, meminfo_bytes(meminfo, "SwapTotal"));
    if (asked) {
      take_smaller(out, *asked, kMemoryLimitEnv, false);
      return out;
    }
    take_smaller(out, free_memory(meminfo), "the memory this machine had free when the run started",
                 true);
    return out;
  }();
  return limit;
}

MemoryLimit memory_limit_now() {
  MemoryLimit now = memory_limit();
  if (now.from_free_memory)
    take_smaller(now, free_memory(read_small_file("/proc/meminfo")),
                 "the memory this machine has free (MemAvailable and SwapFree of /proc/meminfo, "
                 "and this process's own)",
                 true);
  return now;
}

}  // namespace attnscope::runtime
