#include "attnscope/json_text.h"

#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_support.h"

namespace attnscope {
namespace {

using nlohmann::json;

// The oracle: nesting depth of arrays and objects by recursion (fine for the small trees here).
int recursive_depth(const json& j) {
  if (!j.is_structured()) return 0;
  int deepest = 0;
  for (const auto& child : j)
    deepest = std::max(deepest, recursive_depth(child));
  return deepest + 1;
}

json random_tree(std::mt19937& rng, int budget) {
  const int kind = static_cast<int>(rng() % 4);
  if (budget <= 0 || kind == 0) return static_cast<int>(rng() % 100);
  json node = kind == 1 ? json::array() : json::object();
  const int children = static_cast<int>(rng() % 4);
  for (int i = 0; i < children; ++i) {
    if (node.is_array())
      node.push_back(random_tree(rng, budget - 1));
    else
      node["k" + std::to_string(i)] = random_tree(rng, budget - 1);
  }
  return node;
}

TEST(JsonText, DepthEqualsTheRecursiveCount) {
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    const auto tree = random_tree(rng, 12);
    EXPECT_EQ(json_depth(tree, 100), recursive_depth(tree)) << tree.dump();
  }
  EXPECT_EQ(json_depth(json(3)), 0);
  EXPECT_EQ(json_depth(json::parse("[[], {\"a\": [1]}]")), 3);
}

TEST(JsonText, ADuplicateKeyIsRefusedWhenAskedAndSiblingsMayShareKeys) {
  const auto strict = [](const std::string& text) {
    return test::error_of([&] { parse_json_text(text, "c.json", "config", true); });
  };
  EXPECT_EQ(strict(R"({"a": 1, "b": {"a": 2}, "a": 3})"),
            "c.json: config gives the key \"a\" twice in one object (JSON keeps only the last)");
  EXPECT_EQ(strict(R"({"a": {"x": 1, "y": [{"x": 2}, {"x": 3, "z": {"x": 4}}], "x": 5}})"),
            "c.json: config gives the key \"x\" twice in one object (JSON keeps only the last)");
  // The same key in sibling or nested objects is no duplicate.
  for (const char* ok : {R"({"a": {"x": 1}, "b": {"x": 2}})", R"([{"a": 1}, {"a": 2}])",
                         R"({"a": {"a": {"a": 1}}})", "{}", "[]", "3"}) {
    EXPECT_EQ(strict(ok), "") << ok;
    EXPECT_EQ(parse_json_text(ok, "c.json", "config", true), json::parse(ok)) << ok;
  }
  // Without the flag nlohmann's rule stands: the last value.
  EXPECT_EQ(parse_json_text(R"({"a": 1, "a": 2})", "c.json")["a"], 2);
  // Anything after the value is refused either way.
  EXPECT_NE(strict("{} {}").find("c.json: config is not valid JSON: "), std::string::npos);
  EXPECT_NE(test::error_of([&] {
              parse_json_text("[1] x", "c.json");
            }).find("c.json: text is not valid JSON: "),
            std::string::npos);
  // A NUL ended nlohmann's text: what came after it was dropped without a word.
  for (const bool flag : {false, true}) {
    const std::string two("{\"a\": 1}\0{\"a\": 2}", 17);
    EXPECT_EQ(test::error_of([&] { parse_json_text(two, "c.json", "config", flag); }),
              "c.json: config is not valid JSON: a NUL byte at offset 8");
  }
  EXPECT_EQ(parse_json_text(R"(["\u0000"])", "c.json")[0], std::string(1, '\0'));
  // Where and why, in words: nlohmann's exception name is left out.
  EXPECT_EQ(test::error_of([&] { parse_json_text("x", "f.h5:/@threshold", "attribute"); }),
            "f.h5:/@threshold: attribute is not valid JSON: parse error at line 1, column 1: "
            "syntax error while parsing value - invalid literal; last read: 'x'");
}

TEST(JsonText, DeepJsonIsRefusedAndQuotedWithoutRecursion) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  // At the limit: accepted; one more level: refused, naming the subject.
  const std::string at_limit = std::string(64, '[') + std::string(64, ']');
  EXPECT_EQ(json_depth(parse_json_text(at_limit, "f.h5:/@a", "attribute")), 64);
  EXPECT_EQ(test::error_of([&] { parse_json_text("[" + at_limit + "]", "f.h5:/@a", "attribute"); }),
            "f.h5:/@a: attribute is JSON nested deeper than 64 levels");
  EXPECT_EQ(test::error_of([&] { parse_json_text(deep, "f.h5:/@a", "attribute"); }),
            "f.h5:/@a: attribute is JSON nested deeper than 64 levels");
  EXPECT_NE(test::error_of([&] {
              parse_json_text("{\"a\": ", "f.h5:/@a", "attribute");
            }).find("f.h5:/@a: attribute is not valid JSON: "),
            std::string::npos);
  // nlohmann's message quotes the token read so far: an unclosed 1 MB string is cut.
  const auto unclosed =
      test::error_of([&] { parse_json_text("\"" + std::string(1000000, 'x'), "f.h5:/@a"); });
  EXPECT_NE(unclosed.find("f.h5:/@a: text is not valid JSON: "), std::string::npos) << unclosed;
  EXPECT_LT(unclosed.size(), 400u);
  // Quoting a deep value says so instead of calling the recursive dump().
  EXPECT_EQ(json_excerpt(json::parse(deep)), "(JSON nested deeper than 64 levels)");
}

TEST(JsonText, ExcerptsAreCutAndOtherwiseTheCompactDump) {
  const json small = {{"arch", "attn_small"}, {"sizes", {1, 2, 3}}};
  EXPECT_EQ(json_excerpt(small), small.dump());
  const json big = std::string(1000000, 'x') + "\x1b";
  const auto cut = json_excerpt(big, 100);
  EXPECT_EQ(cut,
            "\"" + std::string(99, 'x') + "... (" + std::to_string(big.dump().size()) + " bytes)");
}

TEST(JsonText, NameListsAreJsonArraysOfCutNames) {
  // Short names with quotes and a backslash: the list parses back as JSON to the same names.
  const std::vector<std::string> names = {"benign", "mel\"anoma", "nevus, atypical", "back\\"};
  EXPECT_EQ(json::parse(names_excerpt(names)).get<std::vector<std::string>>(), names);
  EXPECT_EQ(names_excerpt({}), "[]");
  std::vector<std::string> many;
  for (int i = 0; i < 12; ++i)
    many.push_back("c" + std::to_string(i));
  EXPECT_EQ(names_excerpt(many, 40, 3), "[\"c0\",\"c1\",\"c2\",... (12 names)]");
  EXPECT_EQ(names_excerpt({std::string(1000, 'y')}, 10),
            "[\"" + std::string(10, 'y') + "... (1000 bytes)\"]");
}

TEST(JsonText, FieldsAreReadOrTheirFallbackAndAnotherTypeIsNamed) {
  const auto o = json::parse(R"({"s": "text", "n": 3, "x": 2.5, "b": true, "l": ["a", "b"],
                                "bad_l": ["a", 1], "null": null})");
  EXPECT_EQ(json_field(o, "s", std::string("-"), "f.h5", "extra.s"), "text");
  EXPECT_EQ(json_field(o, "n", int64_t{0}, "f.h5", "extra.n"), 3);
  EXPECT_EQ(json_field(o, "x", 0.0, "f.h5", "extra.x"), 2.5);
  EXPECT_EQ(json_field(o, "b", false, "f.h5", "extra.b"), true);
  EXPECT_EQ(json_field(o, "l", std::vector<std::string>(), "f.h5", "extra.l"),
            (std::vector<std::string>{"a", "b"}));
  // Absent, or no object at all: the fallback.
  EXPECT_EQ(json_field(o, "absent", std::string("-"), "f.h5", "extra.absent"), "-");
  EXPECT_EQ(json_field(json::array({1}), "s", int64_t{7}, "f.h5", "extra.s"), 7);
  // Another type: one line with file, field and the value (cut).
  const auto message = [&](const auto& read) { return test::error_of(read); };
  EXPECT_EQ(message([&] { json_field(o, "n", std::string(), "f.h5", "extra.n"); }),
            "f.h5: extra.n is 3, not a string");
  EXPECT_EQ(message([&] { json_field(o, "s", int64_t{0}, "f.h5", "extra.s"); }),
            "f.h5: extra.s is \"text\", not an integer");
  EXPECT_EQ(message([&] { json_field(o, "n", false, "f.h5", "extra.n"); }),
            "f.h5: extra.n is 3, not true or false");
  EXPECT_EQ(message([&] { json_field(o, "bad_l", std::vector<std::string>(), "f.h5", "p.l"); }),
            "f.h5: p.l is [\"a\",1], not a list of strings");
  EXPECT_EQ(message([&] { json_field(o, "null", 1.0, "f.h5", "extra.null"); }),
            "f.h5: extra.null is null, not a number");
  // Integers only where an integer is read, within the type's range (nlohmann's get<> turns
  // 1.5 into 1 and 2^64 - 1 into -1); a number of any kind where a double is read.
  const auto n = json::parse(R"({"half": 1.5, "big": 18446744073709551615, "neg": -1,
                                 "e": 1e300, "i": 4})");
  EXPECT_EQ(message([&] { json_field(n, "half", int64_t{0}, "f.h5", "p.world_size"); }),
            "f.h5: p.world_size is 1.5, not an integer");
  EXPECT_EQ(message([&] { json_field(n, "e", int64_t{0}, "f.h5", "p.e"); }),
            "f.h5: p.e is 1e+300, not an integer");
  EXPECT_EQ(message([&] { json_field(n, "big", int64_t{0}, "f.h5", "p.big"); }),
            "f.h5: p.big is 18446744073709551615, an integer out of range "
            "(-9223372036854775808 to 9223372036854775807)");
  EXPECT_EQ(message([&] { json_field(n, "neg", uint32_t{0}, "f.h5", "p.neg"); }),
            "f.h5: p.neg is -1, an integer out of range (0 to 4294967295)");
  EXPECT_EQ(message([&] { json_field(n, "big", int32_t{0}, "f.h5", "p.big"); }),
            "f.h5: p.big is 18446744073709551615, an integer out of range "
            "(-2147483648 to 2147483647)");
  EXPECT_EQ(json_field(n, "big", uint64_t{0}, "f.h5", "p.big"), UINT64_MAX);
  // A signed integer made in code (not parsed) is read as an unsigned one when it fits.
  EXPECT_EQ(json_field(json{{"k", int64_t{5}}}, "k", uint32_t{0}, "f.h5", "p.k"), 5u);
  EXPECT_EQ(message([&] {
              json_field(json{{"k", int64_t{-5}}}, "k", uint32_t{0}, "f.h5", "p.k");
            }),
            "f.h5: p.k is -5, an integer out of range (0 to 4294967295)");
  EXPECT_EQ(json_field(n, "neg", int64_t{0}, "f.h5", "p.neg"), -1);
  EXPECT_EQ(json_field(n, "i", 0.0, "f.h5", "p.i"), 4.0);
  EXPECT_EQ(json_field(n, "half", 0.0f, "f.h5", "p.half"), 1.5f);
  const auto big = json{{"k", std::string(100000, 'z')}};
  const auto cut = message([&] { json_field(big, "k", 1.0, "f.h5", "extra.k"); });
  EXPECT_LT(cut.size(), 200u) << cut.substr(0, 300);
  EXPECT_NE(cut.find("(100002 bytes), not a number"), std::string::npos) << cut.substr(0, 300);
}

// What differs between two JSON texts, leaf by leaf (the oracle: the documented rule applied by
// hand to small configs); texts that are no JSON object or array, or too deep, give "".
TEST(JsonText, ChangesNameTheLeavesThatDiffer) {
  const std::string a =
      R"({"decode":{"reduce_to":64,"max_pixels":100},"steps":[{"op":"resize","size":224}]})";
  const std::string b =
      R"({"decode":{"reduce_to":null,"max_pixels":100},"steps":[{"op":"resize","size":256}]})";
  EXPECT_EQ(json_changes(a, b, "stored", "now"),
            "decode.reduce_to (stored 64, now null); steps.0.size (stored 224, now 256)");
  EXPECT_EQ(json_changes(a, a, "stored", "now"), "");
  EXPECT_EQ(json_changes(R"({"a":1})", R"({"a":1,"b":[2]})", "x", "y"), "b (x absent, y [2])");
  EXPECT_EQ(
      json_changes(R"({"a":1,"b":2,"c":3,"d":4})", R"({"a":5,"b":6,"c":7,"d":8})", "x", "y", 2),
      "a (x 1, y 5); b (x 2, y 6); and 2 more");
  EXPECT_EQ(json_changes("bf16", "fp32", "x", "y"), "");  // no JSON
  EXPECT_EQ(json_changes("1", "2", "x", "y"), "");        // scalars: the caller quotes them
  EXPECT_EQ(json_changes(R"([1,2])", R"([1])", "x", "y"), "1 (x 2, y absent)");
  // An element appended to an array ("/-" in the patch) and a key holding '/' or '~' (escaped
  // in the pointer as ~1 and ~0).
  EXPECT_EQ(json_changes(R"({"steps":[1]})", R"({"steps":[1,{"op":"blur"}]})", "x", "y"),
            "steps[new] (x absent, y {\"op\":\"blur\"})");
  EXPECT_EQ(json_changes(R"({"a/b~c":1})", R"({"a/b~c":2})", "x", "y"), "a/b~c (x 1, y 2)");
  EXPECT_EQ(json_changes(R"(["a"])", R"(["a","b"])", "x", "y"), "[new] (x absent, y \"b\")");
  const std::string deep = std::string(100, '[') + std::string(100, ']');
  EXPECT_EQ(json_changes(deep, "[]", "x", "y"), "");
}

}  // namespace
}  // namespace attnscope
