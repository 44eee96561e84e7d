#include "datasets/text/pairs.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include <torch/torch.h>

#include "attnscope/error.h"

namespace attnscope::datasets::text {

std::optional<std::uintmax_t> read_bounded_line(std::istream& in, std::string& line,
                                                std::size_t max_bytes, std::uintmax_t max_scan,
                                                bool lone_cr) {
  line.clear();
  std::streambuf* buf = in.rdbuf();
  std::uintmax_t length = 0;
  bool any = false;
  int last = 0;
  while (length < max_scan) {
    const int c = buf->sbumpc();
    if (c == std::char_traits<char>::eof()) {
      in.setstate(std::ios::eofbit);
      break;
    }
    any = true;
    if (c == '\n') break;
    if (lone_cr && c == '\r') {  // CR or CRLF
      if (buf->sgetc() == '\n') buf->sbumpc();
      break;
    }
    last = c;
    ++length;
    if (line.size() <= max_bytes) line.push_back(static_cast<char>(c));
  }
  if (!any) return std::nullopt;
  if (last == '\r' && length < max_scan) {  // CRLF: the '\r' is part of the line's end
    --length;
    if (line.size() > length) line.pop_back();
  }
  return length;
}

namespace {

// parse_tsv_pairs over a stream, one bounded line at a time.
TsvPairs parse_tsv_stream(std::istream& in, const std::string& path) {
  TsvPairs out;
  out.path = path;
  std::size_t line = 0;
  std::string row;
  while (const auto length = read_bounded_line(in, row, kMaxTsvLineBytes + 3)) {
    ++line;
    std::uintmax_t size = *length;
    if (line == 1 && row.compare(0, 3, "\xEF\xBB\xBF") == 0) {  // byte-order mark
      row.erase(0, 3);
      size -= 3;
    }
    if (size > kMaxTsvLineBytes) {
      out.skipped.push_back(
          {line, concat("line of ", size, " bytes, above the limit of ", kMaxTsvLineBytes)});
      continue;
    }
    if (row.find_first_not_of(" \t\r\f\v") == std::string::npos) {
      out.skipped.push_back({line, "empty line"});
      continue;
    }
    const std::size_t tab = row.find('\t');
    if (tab == std::string::npos) {
      out.skipped.push_back({line, "no tab (expected source<TAB>target)"});
      continue;
    }
    const std::size_t tab2 = row.find('\t', tab + 1);
    TextPair pair{
        row.substr(0, tab),
        row.substr(tab + 1, tab2 == std::string::npos ? std::string::npos : tab2 - tab - 1), line};
    std::string problem;
    for (const auto& [side, value] :
         {std::pair<const char*, const std::string&>{"source", pair.source},
          {"target", pair.target}}) {
      if (!problem.empty()) break;
      const std::size_t bad = find_invalid_utf8(value);
      if (bad != std::string::npos)
        problem = concat("invalid UTF-8 at byte ", bad, " of the ", side);
      else if (value.find_first_not_of(" \t\r\n\f\v") == std::string::npos)
        problem =
            concat("empty ", side);  // whitespace only: no word tokens ("\f" stopped training)
    }
    if (!problem.empty()) {
      out.skipped.push_back({line, problem});
      continue;
    }
    out.pairs.push_back(std::move(pair));
  }
  return out;
}

}  // namespace

TsvPairs parse_tsv_pairs(const std::string& text, const std::string& path) {
  std::istringstream in(text);
  return parse_tsv_stream(in, path);
}

TsvPairs read_tsv_pairs(const std::string& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  check(std::filesystem::exists(status), path, "no such file");
  check(std::filesystem::is_regular_file(status), path,
        "is not a regular file (a folder, a device or a pipe cannot be a TSV)");
  const auto size = std::filesystem::file_size(path, ec);
  check(!ec && size <= kMaxTsvFileBytes, path, "file of ", size, " bytes is above the limit of ",
        kMaxTsvFileBytes);
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), path, "cannot open for reading");
  // Line by line: a 1 GB line took 4 GB of memory to be refused when the file was read whole.
  return parse_tsv_stream(in, path);
}

std::string describe_skipped(const TsvPairs& pairs, std::size_t limit) {
  std::string out;
  for (std::size_t i = 0; i < pairs.skipped.size() && i < limit; ++i)
    out += concat(i ? "; " : "", pairs.path, ":", pairs.skipped[i].line, ": ",
                  pairs.skipped[i].reason);
  if (pairs.skipped.size() > limit) out += "; ...";
  if (!pairs.skipped.empty()) out += concat(" (", pairs.skipped.size(), " lines skipped)");
  return out;
}

const std::vector<std::string>& synthetic_tasks() {
  static const std::vector<std::string> kTasks = {"copy", "reverse", "dates"};
  return kTasks;
}

namespace {

const char* const kMonths[] = {"January",   "February", "March",    "April",
                               "May",       "June",     "July",     "August",
                               "September", "October",  "November", "December"};
const char* const kWeekdays[] = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                 "Friday", "Saturday", "Sunday"};

std::string two(int v) {
  return concat(v < 10 ? "0" : "", v);
}

std::string ordinal(int day) {
  const int tens = day % 100;
  const char* suffix = (tens >= 11 && tens <= 13) ? "th"
                       : day % 10 == 1            ? "st"
                       : day % 10 == 2            ? "nd"
                       : day % 10 == 3            ? "rd"
                                                  : "th";
  return concat(day, suffix);
}

std::string lower(std::string s) {
  for (auto& c : s)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

int days_in_month(int year, int month) {
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  return month == 2 && leap ? 29 : kDays[month - 1];
}

}  // namespace

const std::vector<std::string>& date_formats() {
  static const std::vector<std::string> kFormats = {
      "<ordinal day> of <Month>, YYYY",  // 25th of June, 2009
      "MM/DD/YY",                        // 06/25/09
      "<Weekday>, <Month> D YYYY",       // Thursday, June 25 2009
      "DD.MM.YYYY",                      // 25.06.2009
      "<Month> D, YYYY",                 // June 25, 2009
      "D <Month> YYYY",                  // 25 June 2009
      "YYYY/MM/DD",                      // 2009/06/25
      "<Mon> D YYYY",                    // Jun 25 2009
      "<Wkd>, D <Mon> YYYY",             // Thu, 25 Jun 2009
      "<weekday> d <month> yyyy",        // thursday 25 june 2009
      "D/M/YYYY",                        // 25/6/2009
      "<Month> <ordinal day>, YYYY",     // June 25th, 2009
      "YYYYMMDD",                        // 20090625
      "D-<Mon>-YY",                      // 25-Jun-09
  };
  return kFormats;
}

int weekday(int year, int month, int day) {
  // Days since 1970-01-01 (Howard Hinnant's days_from_civil); 1970-01-01 was a Thursday.
  const int y = month <= 2 ? year - 1 : year;
  const int era = (y >= 0 ? y : y - 399) / 400;
  const int yoe = y - era * 400;
  const int doy = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
  const int doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  const long days = static_cast<long>(era) * 146097 + doe - 719468;
  return static_cast<int>(((days % 7) + 7 + 3) % 7);
}

std::string format_date(int year, int month, int day, std::size_t format) {
  check(month >= 1 && month <= 12 && day >= 1 && day <= days_in_month(year, month), "date",
        concat("invalid date ", year, "-", month, "-", day));
  const std::string m = kMonths[month - 1];
  const std::string mon = m.substr(0, 3);
  const std::string wd = kWeekdays[weekday(year, month, day)];
  const std::string yy = two(year % 100);
  const std::string yyyy = std::to_string(year);
  switch (format) {
    case 0:
      return concat(ordinal(day), " of ", m, ", ", yyyy);
    case 1:
      return concat(two(month), "/", two(day), "/", yy);
    case 2:
      return concat(wd, ", ", m, " ", day, " ", yyyy);
    case 3:
      return concat(two(day), ".", two(month), ".", yyyy);
    case 4:
      return concat(m, " ", day, ", ", yyyy);
    case 5:
      return concat(day, " ", m, " ", yyyy);
    case 6:
      return concat(yyyy, "/", two(month), "/", two(day));
    case 7:
      return concat(mon, " ", day, " ", yyyy);
    case 8:
      return concat(wd.substr(0, 3), ", ", day, " ", mon, " ", yyyy);
    case 9:
      return lower(concat(wd, " ", day, " ", m, " ", yyyy));
    case 10:
      return concat(day, "/", month, "/", yyyy);
    case 11:
      return concat(m, " ", ordinal(day), ", ", yyyy);
    case 12:
      return concat(yyyy, two(month), two(day));
    case 13:
      return concat(day, "-", mon, "-", yy);
    default:
      break;
  }
  throw Error("date format", concat("expected 0..", date_formats().size() - 1, ", got ", format));
}

std::vector<TextPair> generate_task(const TaskOptions& options) {
  const auto& tasks = synthetic_tasks();
  check(std::find(tasks.begin(), tasks.end(), options.task) != tasks.end(), "task",
        concat("unknown task '", options.task, "' (expected copy, reverse or dates)"));
  check(options.count >= 0, "task", concat("count must be >= 0, got ", options.count));
  std::mt19937_64 rng(options.seed);
  std::vector<TextPair> pairs;
  pairs.reserve(static_cast<std::size_t>(options.count));
  if (options.task == "dates") {
    constexpr int kFirstYear = 1950;
    constexpr int kYears = 100;  // 1950-2049: two-digit years stay unambiguous
    std::uniform_int_distribution<int> year_dist(kFirstYear, kFirstYear + kYears - 1);
    std::uniform_int_distribution<int> month_dist(1, 12);
    std::uniform_int_distribution<std::size_t> format_dist(0, date_formats().size() - 1);
    for (int64_t i = 0; i < options.count; ++i) {
      const int year = year_dist(rng);
      const int month = month_dist(rng);
      const int day = std::uniform_int_distribution<int>(1, days_in_month(year, month))(rng);
      pairs.push_back({format_date(year, month, day, format_dist(rng)),
                       concat(year, "-", two(month), "-", two(day)), 0});
    }
    return pairs;
  }
  check(options.min_length >= 1 && options.min_length <= options.max_length, "task",
        concat("length range must satisfy 1 <= min <= max, got ", options.min_length, "-",
               options.max_length));
  std::uniform_int_distribution<int64_t> length_dist(options.min_length, options.max_length);
  std::uniform_int_distribution<int> letter_dist(0, 25);
  for (int64_t i = 0; i < options.count; ++i) {
    std::string s(static_cast<std::size_t>(length_dist(rng)), 'a');
    for (auto& c : s)
      c = static_cast<char>('a' + letter_dist(rng));
    std::string t = s;
    if (options.task == "reverse") std::reverse(t.begin(), t.end());
    pairs.push_back({std::move(s), std::move(t), 0});
  }
  return pairs;
}

std::vector<std::vector<std::size_t>> length_batches(const std::vector<std::size_t>& lengths,
                                                     std::size_t batch_size, uint64_t seed,
                                                     bool shuffle) {
  check(batch_size > 0, "batch size", "must be > 0");
  std::vector<std::size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  if (shuffle) std::shuffle(order.begin(), order.end(), rng);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return lengths[a] < lengths[b]; });
  std::vector<std::vector<std::size_t>> batches;
  for (std::size_t i = 0; i < order.size(); i += batch_size)
    batches.emplace_back(
        order.begin() + static_cast<std::ptrdiff_t>(i),
        order.begin() + static_cast<std::ptrdiff_t>(std::min(i + batch_size, order.size())));
  if (shuffle) std::shuffle(batches.begin(), batches.end(), rng);
  return batches;
}

EncodedPairs encode_pairs(const std::vector<TextPair>& pairs, const Vocabulary& source_vocab,
                          const Vocabulary& target_vocab, TokenizerKind tokenizer,
                          int64_t max_length, LengthPolicy policy) {
  check(max_length >= 1, "max length", concat("must be >= 1, got ", max_length));
  EncodedPairs out;
  const auto limit = static_cast<std::size_t>(max_length);
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    const auto& p = pairs[i];
    const std::string subject = p.line > 0 ? concat("line ", p.line) : concat("pair ", i + 1);
    auto src = source_vocab.encode(tokenize(p.source, tokenizer, subject + " (source)"));
    auto tgt = target_vocab.encode(tokenize(p.target, tokenizer, subject + " (target)"));
    check(!src.empty() && !tgt.empty(), subject, "empty source or target after tokenisation");
    if (src.size() > limit || tgt.size() > limit) {
      out.too_long.push_back(i);
      if (policy == LengthPolicy::kSkip) continue;
      src.resize(std::min(src.size(), limit));
      tgt.resize(std::min(tgt.size(), limit));
    }
    out.sources.push_back(std::move(src));
    out.targets.push_back(std::move(tgt));
    out.index.push_back(i);
  }
  return out;
}

std::pair<at::Tensor, at::Tensor> pad_sequences(
    const std::vector<std::vector<int64_t>>& sequences) {
  std::size_t longest = 0;
  for (const auto& s : sequences)
    longest = std::max(longest, s.size());
  const auto b = static_cast<int64_t>(sequences.size());
  auto padded = torch::full({b, static_cast<int64_t>(longest)}, Vocabulary::kPad, torch::kLong);
  auto lengths = torch::empty({b}, torch::kLong);
  auto p = padded.accessor<int64_t, 2>();
  auto l = lengths.accessor<int64_t, 1>();
  for (int64_t i = 0; i < b; ++i) {
    const auto& s = sequences[static_cast<std::size_t>(i)];
    l[i] = static_cast<int64_t>(s.size());
    for (std::size_t j = 0; j < s.size(); ++j)
      p[i][static_cast<int64_t>(j)] = s[j];
  }
  return {padded, lengths};
}

TextBatch make_batch(const std::vector<std::vector<int64_t>>& sources,
                     const std::vector<std::vector<int64_t>>& targets,
                     const std::vector<std::size_t>& items) {
  std::vector<std::vector<int64_t>> src, tin, tout;
  for (const std::size_t i : items) {
    check(i < sources.size() && i < targets.size(), "batch", concat("item ", i, " out of range"));
    src.push_back(sources[i]);
    std::vector<int64_t> in{Vocabulary::kBos};
    in.insert(in.end(), targets[i].begin(), targets[i].end());
    std::vector<int64_t> out(targets[i]);
    out.push_back(Vocabulary::kEos);
    tin.push_back(std::move(in));
    tout.push_back(std::move(out));
  }
  TextBatch batch;
  std::tie(batch.source, batch.source_lengths) = pad_sequences(src);
  batch.target_in = pad_sequences(tin).first;
  batch.target_out = pad_sequences(tout).first;
  return batch;
}

}  // namespace attnscope::datasets::text
