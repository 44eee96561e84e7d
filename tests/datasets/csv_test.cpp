#include <fstream>
#include <sstream>

#include "attnscope/error.h"
#include "attnscope/printable.h"
#include "datasets/csv.h"
#include "datasets/formats/formats.h"
#include "test_support.h"

namespace attnscope::datasets {
namespace {

TEST(Csv, ParsesQuotesCrlfAndBom) {
  const std::string text =
      "\xEF\xBB\xBFimage_id,label,note\r\n"
      "a,benign,\"plain\"\r\n"
      "\r\n"
      "b,malignant,\"has, comma and \"\"quotes\"\"\"\n"
      "c,benign,\"two\nlines\"\n"
      "d,benign,";
  const auto t = parse_csv(text, "mem.csv");
  ASSERT_EQ(t.header, (std::vector<std::string>{"image_id", "label", "note"}));
  ASSERT_EQ(t.rows.size(), 4u);
  EXPECT_EQ(t.rows[0].fields[2], "plain");
  EXPECT_EQ(t.rows[1].fields[2], "has, comma and \"quotes\"");
  EXPECT_EQ(t.rows[1].line, 4u);
  EXPECT_EQ(t.rows[2].fields[2], "two\nlines");
  EXPECT_EQ(t.rows[3].line, 7u);
  EXPECT_EQ(t.rows[3].fields, (std::vector<std::string>{"d", "benign", ""}));
}

// A reader's field is trimmed unless it was quoted: quotes are how csv_field keeps edge spaces
// (split wrote " lead" quoted, and the reader trimmed it to "lead", an id no file has).
TEST(Csv, QuotedFieldsKeepTheirEdgeSpacesUnquotedOnesAreTrimmed) {
  const auto t = parse_csv("image_id,label\n  a  , benign\n\" b \",\"malignant \"\n", "m.csv");
  ASSERT_EQ(t.rows.size(), 2u);
  EXPECT_EQ(t.rows[0].quoted, (std::vector<bool>{false, false}));
  EXPECT_EQ(t.rows[1].quoted, (std::vector<bool>{true, true}));
  EXPECT_EQ(formats::field(t.rows[0], 0), "a");
  EXPECT_EQ(formats::field(t.rows[0], 1), "benign");
  EXPECT_EQ(formats::field(t.rows[1], 0), " b ");
  EXPECT_EQ(formats::field(t.rows[1], 1), "malignant ");
  EXPECT_EQ(formats::field(t.rows[1], 5), "");
  // A no-break space or byte-order mark at an edge is trimmed as a space is, unless quoted.
  const auto nbsp = parse_csv(
      "x\n\xC2\xA0 nevus\xE2\x80\x8B\xC2\xA0\n\"\xC2\xA0"
      "a\"\n",
      "m.csv");
  EXPECT_EQ(formats::field(nbsp.rows.at(0), 0), "nevus");
  EXPECT_EQ(formats::field(nbsp.rows.at(1), 0),
            "\xC2\xA0"
            "a");
  // Four-byte UTF-8 too: the language tag U+E0001 is trimmed; an emoji's variation selector
  // (U+FE0F) and a flag's tag characters (U+E0067 ... U+E007F) belong to it and are kept.
  const std::string tag = "\xF3\xA0\x80\x81", heart = "\xE2\x9D\xA4\xEF\xB8\x8F",
                    scotland =
                        "\xF0\x9F\x8F\xB4\xF3\xA0\x81\xA7\xF3\xA0\x81\xA2\xF3\xA0"
                        "\x81\xB3\xF3\xA0\x81\xA3\xF3\xA0\x81\xB4\xF3\xA0\x81\xBF";
  EXPECT_EQ(trim(tag + "nevus" + tag), "nevus");
  EXPECT_EQ(trim(heart), heart);
  EXPECT_EQ(trim(scotland), scotland);
  for (const std::string& v :
       {std::string(" padded "), std::string("a,b"), std::string("plain"), std::string("\ttab"),
        std::string("nevus\xC2\xA0"), std::string("\xE2\x80\x8Bzw"), std::string("in\xC2\xA0side"),
        "nevus" + tag, heart, scotland}) {
    const auto back = parse_csv("x\n" + csv_field(v) + "\n", "m.csv");
    EXPECT_EQ(formats::field(back.rows.at(0), 0), v) << v;
  }
}

// A command's output line (a translation): line breaks and the controls printable() escapes
// are escaped, so one item is one line and no escape reaches the terminal; invisible characters
// (a no-break space in French text) and backslashes are kept.
TEST(Csv, OneOutputLineEscapesLineBreaksAndControlsOnly) {
  EXPECT_EQ(one_output_line("a\nb\r\x1b[31m\x7f\t\\n"), "a\\nb\\r\\x1b[31m\\x7f\t\\n");
  EXPECT_EQ(one_output_line("\xC2\x85nel \xE2\x80\xA8ls \xE2\x80\xAErlo"),
            "\\u0085nel \\u2028ls \\u202erlo");
  EXPECT_EQ(one_output_line("d\xC3\xA9j\xC3\xA0\xC2\xA0!"), "d\xC3\xA9j\xC3\xA0\xC2\xA0!");
  EXPECT_EQ(printable("a\nb\xC2\xA0"), "a\nb\\u00a0");  // printable keeps the newline
}

// Printed, what shows as nothing is escaped, beyond the 16-bit plane as \U and 8 digits (the
// oracle: Python's and C++'s own escapes); a four-byte emoji is kept, and bytes that are no
// UTF-8 (a five-byte lead, a Latin-1 name's) are written \xNN.
TEST(Csv, PrintableEscapesWhatShowsAsNothing) {
  EXPECT_EQ(printable("nevus\xF3\xA0\x80\x81"), "nevus\\U000e0001");
  EXPECT_EQ(printable("a\xF0\x9D\x85\xB3"
                      "b"),
            "a\\U0001d173b");  // a musical format control
  EXPECT_EQ(printable("\xE2\x9D\xA4\xEF\xB8\x8F"), "\xE2\x9D\xA4\\ufe0f");
  EXPECT_EQ(printable("\xF0\x9F\x98\x80"), "\xF0\x9F\x98\x80");          // an emoji, kept
  // Bytes that start no UTF-8 character are escaped, so that a message is valid UTF-8: a
  // Latin-1 id's "\xe9" printed as is made the whole line undecodable to a UTF-8 terminal.
  EXPECT_EQ(printable("\xF8\x88\x80\x80\x80"), "\\xf8\\x88\\x80\\x80\\x80");
  EXPECT_EQ(printable("caf\xe9 caf\xc3\xa9"), "caf\\xe9 caf\xc3\xa9");
  EXPECT_EQ(printable("ab\xed\xa0\x80"), "ab\\xed\\xa0\\x80");           // a surrogate is no UTF-8
  EXPECT_TRUE(is_blank("\xF3\xA0\x80\x81 \xE3\x85\xA4"));                // a tag, a Hangul filler
  EXPECT_FALSE(is_blank("\xF0\x9F\x98\x80"));
}

// Line ends as Python's csv module reads them (the oracle): LF, CRLF and a lone CR (a file
// saved with classic Mac line ends) end a row outside quotes; inside quotes a CR is data. The
// reader dropped every CR outside quotes, so a CR-only file was one row of all its lines.
TEST(Csv, LineEndsAreReadAsPythonsCsvReadsThem) {
  const std::vector<std::string> texts = {
      "image_id,label\ra,benign\rb,malignant\r",
      "image_id,label\r\na\rb,c\nd,e",
      "x,y\r\n\"q\rr\",\"s\r\nt\"\r\nu,v\r",
      "a,b\r\r\n\rc,d\n\n\re,f",
      "\"a\"\rb,\"c\"x\r\n",
      "p\rq\r\n,\r,",
  };
  test::TempDir dir;
  for (std::size_t k = 0; k < texts.size(); ++k) {
    const auto path = dir / ("t" + std::to_string(k) + ".csv");
    std::ofstream(path, std::ios::binary) << texts[k];
    // Each non-empty row as its fields' bytes in hex, '|' between fields.
    const auto py = test::run_process(
        test::python() + " -c \"import csv; [print('|'.join(f.encode().hex() for f in r)) " +
        "for r in csv.reader(open('" + path + "', newline='')) if r]\"");
    ASSERT_EQ(py.status, 0) << py.output;
    std::vector<std::vector<std::string>> expected;
    std::istringstream lines(py.output);
    for (std::string line; std::getline(lines, line);) {
      std::vector<std::string> fields;
      if (line.empty()) {  // one empty field (`""`; none of the texts has such a row)
        expected.push_back({""});
        continue;
      }
      std::istringstream cells(line);
      for (std::string hex; std::getline(cells, hex, '|');) {
        std::string bytes;
        for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
          bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
        fields.push_back(bytes);
      }
      if (line.back() == '|') fields.emplace_back();
      expected.push_back(fields);
    }
    const auto t = parse_csv(texts[k], "t.csv", /*has_header=*/false);
    std::vector<std::vector<std::string>> got;
    for (const auto& row : t.rows)
      got.push_back(row.fields);
    EXPECT_EQ(got, expected) << printable(texts[k]);
  }
  // Line numbers count a lone CR as a line end, and CRLF as one.
  const auto t = parse_csv(texts[0], "mac.csv");
  ASSERT_EQ(t.rows.size(), 2u);
  EXPECT_EQ(t.header, (std::vector<std::string>{"image_id", "label"}));
  EXPECT_EQ(t.rows[1].line, 3u);
  EXPECT_EQ(parse_csv(texts[2], "m.csv").rows.at(1).line, 5u);  // x,y / "q / r","s / t" / u,v
}

TEST(Csv, UnterminatedQuoteNamesFileAndLine) {
  try {
    parse_csv("a,b\n1,\"oops\n2,3\n", "bad.csv");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.subject(), "bad.csv:2");
  }
}

TEST(Csv, MissingColumnListsTheHeader) {
  const auto t = parse_csv("img,Label\nx,1\n", "gt.csv");
  EXPECT_EQ(t.require_column("Label"), 1u);
  try {
    t.require_column("label_x");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("img,Label"), std::string::npos) << e.what();
  }
  // A column named twice: the first was taken without a word.
  const auto twice = parse_csv("image_id,label, label\nx,benign,malignant\n", "two.csv");
  EXPECT_EQ(test::error_of([&] { twice.require_column("label"); }),
            "two.csv: the header names the column 'label' twice (columns 2 and 3): which one "
            "holds the values is unclear");
  EXPECT_EQ(twice.require_column("image_id"), 0u);
}

TEST(DataCsv, ReadsUda1Labels) {
  ATTNSCOPE_REQUIRE_DATA();
  const auto path = (test::data_dir() / "isic-uda1" / "labels.csv").string();
  const auto t = read_csv(path);
  const auto label = t.require_column("label");
  std::size_t benign = 0, malignant = 0;
  for (const auto& row : t.rows) {
    benign += row.fields[label] == "benign";
    malignant += row.fields[label] == "malignant";
  }
  // Counts published in ../shared/data/README.md.
  EXPECT_EQ(benign, 397u);
  EXPECT_EQ(malignant, 158u);
}

}  // namespace
}  // namespace attnscope::datasets
