// Tokenisers, vocabulary, TSV pairs, synthetic tasks and length batching of datasets/text.

#include <fstream>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "attnscope/error.h"
#include "datasets/text/pairs.h"
#include "datasets/text/tokenizer.h"
#include "test_support.h"

namespace attnscope::datasets::text {
namespace {

TEST(TextTokenizer, CharSplitsCodePointsAndRoundTrips) {
  const std::string s = "h\xC3\xA9 \xE2\x9C\x93\xF0\x9F\x98\x80";  // "hé ✓😀"
  const auto tokens = tokenize(s, TokenizerKind::kChar);
  const std::vector<std::string> expected = {"h", "\xC3\xA9", " ", "\xE2\x9C\x93",
                                             "\xF0\x9F\x98\x80"};
  EXPECT_EQ(tokens, expected);
  EXPECT_EQ(detokenize(tokens, TokenizerKind::kChar), s);
}

TEST(TextTokenizer, WordSplitsOnAnyWhitespace) {
  const auto tokens = tokenize("  Va  !\tCours\n", TokenizerKind::kWord);
  EXPECT_EQ(tokens, (std::vector<std::string>{"Va", "!", "Cours"}));
  EXPECT_EQ(detokenize(tokens, TokenizerKind::kWord), "Va ! Cours");
}

TEST(TextTokenizer, InvalidUtf8IsFoundAtItsByte) {
  // Overlong '/', a lone continuation byte, a UTF-16 surrogate, a truncated sequence, > U+10FFFF.
  EXPECT_EQ(find_invalid_utf8("ab\xC0\xAF"), 2u);
  EXPECT_EQ(find_invalid_utf8("\x80"), 0u);
  EXPECT_EQ(find_invalid_utf8("x\xED\xA0\x80"), 1u);
  EXPECT_EQ(find_invalid_utf8("abc\xE2\x9C"), 3u);
  EXPECT_EQ(find_invalid_utf8("\xF4\x90\x80\x80"), 0u);
  EXPECT_EQ(find_invalid_utf8("ok \xF4\x8F\xBF\xBF"), std::string::npos);
  try {
    tokenize("ab\xFF", TokenizerKind::kWord, "pairs.tsv:3");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "pairs.tsv:3: invalid UTF-8 at byte 2");
  }
}

TEST(TextVocabulary, SpecialsFirstThenByFrequencyAndJsonRoundTrip) {
  const auto vocab = Vocabulary::build({{"b", "a", "b"}, {"c", "b", "a"}});
  ASSERT_EQ(vocab.size(), 7);
  EXPECT_EQ(vocab.token(Vocabulary::kPad), "<pad>");
  EXPECT_EQ(vocab.token(Vocabulary::kBos), "<bos>");
  EXPECT_EQ(vocab.token(Vocabulary::kEos), "<eos>");
  EXPECT_EQ(vocab.token(Vocabulary::kUnk), "<unk>");
  EXPECT_EQ(vocab.token(4), "b");  // 3 times
  EXPECT_EQ(vocab.token(5), "a");  // 2 times
  EXPECT_EQ(vocab.token(6), "c");
  EXPECT_EQ(vocab.id("zzz"), Vocabulary::kUnk);
  EXPECT_EQ(vocab.encode({"a", "zzz"}, true, true),
            (std::vector<int64_t>{Vocabulary::kBos, 5, Vocabulary::kUnk, Vocabulary::kEos}));
  EXPECT_EQ(vocab.decode({Vocabulary::kBos, 6, 4, Vocabulary::kEos, 5}),
            (std::vector<std::string>{"c", "b"}));
  const auto back = Vocabulary::from_json(nlohmann::json::parse(vocab.to_json().dump()));
  for (int64_t i = 0; i < vocab.size(); ++i)
    EXPECT_EQ(back.token(i), vocab.token(i));
  EXPECT_THROW(Vocabulary::from_json(nlohmann::json{"<pad>", "<eos>", "<bos>", "<unk>"}), Error);
  EXPECT_THROW(Vocabulary::from_json(nlohmann::json{"<pad>", "<bos>", "<eos>", "<unk>", "a", "a"}),
               Error);
  EXPECT_THROW(vocab.token(99), Error);
  EXPECT_THROW(
      Vocabulary::from_json(nlohmann::json{"<pad>", "<bos>", "<eos>", "<unk>", "a", "<eos>"}),
      Error);
}

// The words "<eos>", "<pad>", "<bos>" in a text are unknown words, not the markers: "<eos>" in a
// sentence ended it for the model, "<pad>" was dropped from the loss.
TEST(TextVocabulary, SpecialTokenWordsInATextAreUnknownWords) {
  const auto vocab = Vocabulary::build({{"a", "<eos>", "b", "<pad>", "<bos>", "<unk>"}});
  EXPECT_EQ(vocab.size(), 6);  // the four markers, a and b: no second "<eos>"
  EXPECT_EQ(
      vocab.encode({"a", "<eos>", "<pad>", "<bos>", "<unk>", "b"}, true, true),
      (std::vector<int64_t>{Vocabulary::kBos, vocab.id("a"), Vocabulary::kUnk, Vocabulary::kUnk,
                            Vocabulary::kUnk, Vocabulary::kUnk, vocab.id("b"), Vocabulary::kEos}));
  EXPECT_GE(vocab.id("a"), 4);
  EXPECT_GE(vocab.id("b"), 4);
}

// Defect 8: one very long line is one skipped line, not the size of the model; a device or a
// folder is not read at all.
TEST(TextTsv, OverlongLinesAreSkippedAndDevicesRefused) {
  const std::string text = "ab\tba\n" + std::string(kMaxTsvLineBytes + 1, 'x') + "\ty\ncd\tdc\n";
  const auto pairs = parse_tsv_pairs(text, "long.tsv");
  ASSERT_EQ(pairs.pairs.size(), 2u);
  ASSERT_EQ(pairs.skipped.size(), 1u);
  EXPECT_EQ(pairs.skipped[0].line, 2u);
  EXPECT_NE(pairs.skipped[0].reason.find("above the limit"), std::string::npos);
  EXPECT_NE(test::error_of([] { read_tsv_pairs("/dev/zero"); }).find("not a regular file"),
            std::string::npos);
  test::TempDir dir;
  EXPECT_NE(test::error_of([&] { read_tsv_pairs(dir.path().string()); }).find("not a regular file"),
            std::string::npos);
}

// A line is read keeping only max_bytes + 1 of its bytes (a 1.1 GB one-line TSV took 4 GB to be
// refused); its full length is still told, and the next line read whole.
TEST(TextTsv, BoundedLinesKeepTheirFirstBytesAndTellTheFullLength) {
  std::istringstream in("ab\r\ncdefg\r\n\nxyz");
  std::string line;
  std::vector<std::pair<std::uintmax_t, std::string>> got;
  while (const auto n = read_bounded_line(in, line, 2))
    got.emplace_back(*n, line);
  EXPECT_EQ(got, (std::vector<std::pair<std::uintmax_t, std::string>>{
                     {2, "ab"}, {5, "cde"}, {0, ""}, {3, "xyz"}}));
  std::istringstream endless(std::string(100, 'z'));
  EXPECT_EQ(read_bounded_line(endless, line, 4, 10), std::uintmax_t{10});
  EXPECT_EQ(line, "zzzzz");
  // The file reader gives what parse_tsv_pairs gives for the same bytes (line numbers, the
  // overlong line's length, a BOM and CRLF), read line by line.
  test::TempDir dir;
  const std::string text =
      "\xEF\xBB\xBF"
      "ab\tba\r\n" +
      std::string(kMaxTsvLineBytes + 7, 'x') + "\ty\r\ncd\tdc";
  const auto path = (dir.path() / "p.tsv").string();
  std::ofstream(path, std::ios::binary) << text;
  const auto pairs = read_tsv_pairs(path);
  ASSERT_EQ(pairs.pairs.size(), 2u);
  EXPECT_EQ(pairs.pairs[0].source, "ab");
  EXPECT_EQ(pairs.pairs[0].target, "ba");
  EXPECT_EQ(pairs.pairs[1].line, 3u);
  EXPECT_EQ(pairs.pairs[1].target, "dc");
  ASSERT_EQ(pairs.skipped.size(), 1u);
  // (an overlong line's length: its bytes before the "\r\n", as for a line kept whole)
  EXPECT_EQ(pairs.skipped[0].reason, concat("line of ", kMaxTsvLineBytes + 9,
                                            " bytes, above the limit of ", kMaxTsvLineBytes));
}

TEST(TextTsv, ReadsPairsIgnoringExtraColumnsAndListsBadLines) {
  const std::string text =
      "\xEF\xBB\xBFGo.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272\r\n"
      "\n"
      "no tab here\n"
      "Hi.\tSalut \xFF!\n"
      "\tvide\n"
      "Run!\tCours\xE2\x80\xAF!\n";
  const auto pairs = parse_tsv_pairs(text, "fra.txt");
  ASSERT_EQ(pairs.pairs.size(), 2u);
  EXPECT_EQ(pairs.pairs[0].source, "Go.");
  EXPECT_EQ(pairs.pairs[0].target, "Va !");
  EXPECT_EQ(pairs.pairs[0].line, 1u);
  EXPECT_EQ(pairs.pairs[1].source, "Run!");
  EXPECT_EQ(pairs.pairs[1].line, 6u);
  ASSERT_EQ(pairs.skipped.size(), 4u);
  EXPECT_EQ(pairs.skipped[0].line, 2u);
  EXPECT_EQ(pairs.skipped[0].reason, "empty line");
  EXPECT_EQ(pairs.skipped[1].line, 3u);
  EXPECT_NE(pairs.skipped[1].reason.find("no tab"), std::string::npos);
  EXPECT_EQ(pairs.skipped[2].line, 4u);
  EXPECT_EQ(pairs.skipped[2].reason, "invalid UTF-8 at byte 6 of the target");
  EXPECT_EQ(pairs.skipped[3].reason, "empty source");
  const auto description = describe_skipped(pairs);
  EXPECT_NE(description.find("fra.txt:3: no tab"), std::string::npos) << description;
  EXPECT_NE(description.find("(4 lines skipped)"), std::string::npos) << description;
  EXPECT_THROW(read_tsv_pairs("/nonexistent/pairs.tsv"), Error);
  // Whitespace other than spaces is no text either: "\f<TAB>x y" stopped `seq2seq train` at
  // encoding ("empty source or target after tokenisation") instead of being skipped here.
  const auto blank = parse_tsv_pairs("a b\tb a\n\f\tx y\nx y\t\v\r\n", "ws.tsv");
  ASSERT_EQ(blank.pairs.size(), 1u);
  ASSERT_EQ(blank.skipped.size(), 2u);
  EXPECT_EQ(blank.skipped[0].reason, "empty source");
  EXPECT_EQ(blank.skipped[1].reason, "empty target");
}

TEST(TextTasks, CopyAndReverseAreSeededAndInTheLengthRange) {
  TaskOptions options;
  options.count = 300;
  options.min_length = 4;
  options.max_length = 9;
  options.seed = 5;
  options.task = "reverse";
  const auto a = generate_task(options), b = generate_task(options);
  std::set<std::size_t> lengths;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].source, b[i].source);
    EXPECT_EQ(a[i].target, std::string(a[i].source.rbegin(), a[i].source.rend()));
    lengths.insert(a[i].source.size());
  }
  EXPECT_EQ(lengths, (std::set<std::size_t>{4, 5, 6, 7, 8, 9}));
  options.task = "copy";
  options.seed = 6;
  for (const auto& p : generate_task(options))
    EXPECT_EQ(p.source, p.target);
  options.task = "sort";
  EXPECT_THROW(generate_task(options), Error);
  options.task = "copy";
  options.min_length = 10;
  EXPECT_THROW(generate_task(options), Error);
}

TEST(TextTasks, DatesCoverTheIssueFormats) {
  ASSERT_GE(date_formats().size(), 10u);
  std::set<std::string> written;
  for (std::size_t f = 0; f < date_formats().size(); ++f)
    written.insert(format_date(2009, 6, 25, f));
  EXPECT_EQ(written.size(), date_formats().size());  // all formats differ
  for (const char* example :
       {"25th of June, 2009", "06/25/09", "Thursday, June 25 2009", "25.06.2009"})
    EXPECT_TRUE(written.count(example)) << example;
  EXPECT_EQ(format_date(2011, 3, 1, 0), "1st of March, 2011");
  EXPECT_EQ(format_date(2012, 1, 12, 11), "January 12th, 2012");
  EXPECT_EQ(format_date(1999, 12, 22, 0), "22nd of December, 1999");
  EXPECT_THROW(format_date(2009, 2, 30, 0), Error);
  TaskOptions options;
  options.task = "dates";
  options.count = 200;
  for (const auto& p : generate_task(options)) {
    ASSERT_EQ(p.target.size(), 10u);
    const int y = std::stoi(p.target.substr(0, 4)), m = std::stoi(p.target.substr(5, 2)),
              d = std::stoi(p.target.substr(8, 2));
    bool found = false;
    for (std::size_t f = 0; f < date_formats().size() && !found; ++f)
      found = format_date(y, m, d, f) == p.source;
    EXPECT_TRUE(found) << p.source << " -> " << p.target;
  }
}

TEST(TextTasks, WeekdayMatchesDayCounting) {
  // Brute force: walk day by day from 1950-01-01, a Sunday.
  int wd = 6;
  for (int y = 1950; y < 2050; ++y)
    for (int m = 1; m <= 12; ++m)
      for (int d = 1; d <= 31; ++d) {
        const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        const int days[] = {31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
        if (d > days[m - 1]) break;
        ASSERT_EQ(weekday(y, m, d), wd) << y << "-" << m << "-" << d;
        wd = (wd + 1) % 7;
      }
}

TEST(TextBatching, LengthBatchesCoverEveryIndexOnceWithSimilarLengths) {
  std::vector<std::size_t> lengths;
  for (std::size_t i = 0; i < 103; ++i)
    lengths.push_back((i * 37) % 50);
  const auto batches = length_batches(lengths, 10, 3);
  ASSERT_EQ(batches.size(), 11u);
  std::vector<int> seen(lengths.size(), 0);
  std::size_t max_spread = 0;
  for (const auto& b : batches) {
    EXPECT_LE(b.size(), 10u);
    std::size_t lo = 1000, hi = 0;
    for (const auto i : b) {
      ++seen[i];
      lo = std::min(lo, lengths[i]);
      hi = std::max(hi, lengths[i]);
    }
    max_spread = std::max(max_spread, hi - lo);
  }
  for (const int s : seen)
    EXPECT_EQ(s, 1);
  EXPECT_LE(max_spread, 5u);  // sorted by length: 10 of 103 lengths spread over 0..49
  EXPECT_EQ(length_batches(lengths, 10, 3), batches);
}

TEST(TextBatching, MakeBatchPadsAndShiftsTargets) {
  const std::vector<std::vector<int64_t>> src = {{5, 6, 7}, {8}}, tgt = {{9}, {10, 11}};
  const auto batch = make_batch(src, tgt, {0, 1});
  EXPECT_TRUE(torch::equal(batch.source, torch::tensor({5, 6, 7, 8, 0, 0}).view({2, 3})));
  EXPECT_TRUE(torch::equal(batch.source_lengths, torch::tensor({3, 1})));
  EXPECT_TRUE(torch::equal(batch.target_in, torch::tensor({1, 9, 0, 1, 10, 11}).view({2, 3})));
  EXPECT_TRUE(torch::equal(batch.target_out, torch::tensor({9, 2, 0, 10, 11, 2}).view({2, 3})));
}

TEST(TextBatching, EncodePairsSkipsOrTruncatesLongPairs) {
  const std::vector<TextPair> pairs = {{"abc", "cba", 1}, {"abcdefgh", "hgfedcba", 2}};
  Vocabulary vocab;
  for (const char* t : {"a", "b", "c", "d", "e", "f", "g", "h"})
    vocab.add(t);
  const auto skip = encode_pairs(pairs, vocab, vocab, TokenizerKind::kChar, 5, LengthPolicy::kSkip);
  EXPECT_EQ(skip.sources.size(), 1u);
  EXPECT_EQ(skip.too_long, std::vector<std::size_t>{1});
  const auto cut =
      encode_pairs(pairs, vocab, vocab, TokenizerKind::kChar, 5, LengthPolicy::kTruncate);
  ASSERT_EQ(cut.sources.size(), 2u);
  EXPECT_EQ(cut.sources[1].size(), 5u);
  EXPECT_EQ(cut.too_long, std::vector<std::size_t>{1});
}

}  // namespace
}  // namespace attnscope::datasets::text
