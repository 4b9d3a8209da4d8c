// JSON as Python's json module reads and writes it (detail/json_nonfinite.hpp):
// NaN, Infinity and -Infinity as values, the same letters elsewhere, and what
// Python refuses.

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <string>

#include "detail/json_nonfinite.hpp"

namespace safetensors::detail {
namespace {

using json = nlohmann::ordered_json;

constexpr double kInf = std::numeric_limits<double>::infinity();

// What /usr/bin/python3 prints for
//   json.dumps({"x": float("nan"), "y": [float("inf"), -float("inf")], "s": "NaN", "n": None,
//               "i": 3, "f": 1e-08})
constexpr const char* kPythonText =
    R"({"x": NaN, "y": [Infinity, -Infinity], "s": "NaN", "n": null, "i": 3, "f": 1e-08})";

TEST(PythonJson, ReadsWhatJsonDumpsWrites) {
  const json v = parse_python_json(kPythonText);
  ASSERT_TRUE(v.is_object());
  EXPECT_TRUE(v["x"].is_number_float());
  EXPECT_TRUE(std::isnan(v["x"].get<double>()));
  EXPECT_EQ(v["y"][0].get<double>(), kInf);
  EXPECT_EQ(v["y"][1].get<double>(), -kInf);
  EXPECT_EQ(v["s"], "NaN");
  EXPECT_TRUE(v["n"].is_null());
  EXPECT_TRUE(v["i"].is_number_integer());
  EXPECT_EQ(v["i"], 3);
  EXPECT_EQ(v["f"].get<double>(), 1e-08);
  // Python's key order.
  EXPECT_EQ(v.begin().key(), "x");
  EXPECT_EQ((--v.end()).key(), "f");
}

TEST(PythonJson, TokensAnywhereAValueIs) {
  const json top = parse_python_json("NaN");
  EXPECT_TRUE(std::isnan(top.get<double>()));
  EXPECT_EQ(parse_python_json(" -Infinity\n").get<double>(), -kInf);
  const json nested = parse_python_json("[[[{\"a\":[Infinity,{\"b\":NaN}]}]],\t-Infinity\r\n]");
  EXPECT_EQ(nested[0][0][0]["a"][0].get<double>(), kInf);
  EXPECT_TRUE(std::isnan(nested[0][0][0]["a"][1]["b"].get<double>()));
  EXPECT_EQ(nested[1].get<double>(), -kInf);
}

// The numbers around a token keep their values and kinds: the tokens are told
// apart from the numbers by their places among them.
TEST(PythonJson, OtherNumbersKeepTheirValues) {
  const json v = parse_python_json("[0, NaN, 2.5, -3, Infinity, 1e5, 18446744073709551615, -Infinity, 0]");
  ASSERT_EQ(v.size(), 9u);
  EXPECT_TRUE(v[0].is_number_unsigned());
  EXPECT_EQ(v[0], 0);
  EXPECT_TRUE(std::isnan(v[1].get<double>()));
  EXPECT_EQ(v[2].get<double>(), 2.5);
  EXPECT_TRUE(v[3].is_number_integer());
  EXPECT_EQ(v[3], -3);
  EXPECT_EQ(v[4].get<double>(), kInf);
  EXPECT_EQ(v[5].get<double>(), 1e5);
  EXPECT_EQ(v[6].get<std::uint64_t>(), 18446744073709551615u);
  EXPECT_EQ(v[7].get<double>(), -kInf);
  EXPECT_TRUE(v[8].is_number_unsigned());
  EXPECT_EQ(v[8], 0);
}

// Inside strings the letters are text, whatever the escapes before them.
TEST(PythonJson, StringsStayStrings) {
  const json v = parse_python_json(R"(["NaN", "\" NaN", "\\", NaN, "a\\\"Infinity\\", -Infinity, "\u004eaN"])");
  ASSERT_EQ(v.size(), 7u);
  EXPECT_EQ(v[0], "NaN");
  EXPECT_EQ(v[1], "\" NaN");
  EXPECT_EQ(v[2], "\\");
  EXPECT_TRUE(std::isnan(v[3].get<double>()));
  EXPECT_EQ(v[4], "a\\\"Infinity\\");
  EXPECT_EQ(v[5].get<double>(), -kInf);
  EXPECT_EQ(v[6], "NaN");
  // As keys.
  const json keys = parse_python_json(R"({"NaN": Infinity, "Infinity": "-Infinity"})");
  EXPECT_EQ(keys["NaN"].get<double>(), kInf);
  EXPECT_EQ(keys["Infinity"], "-Infinity");
}

// Every text /usr/bin/python3's json.loads refuses (checked there) is refused.
TEST(PythonJson, RefusesWhatPythonRefuses) {
  for (const char* text : {"NaNx", "[NaN1]", "[1NaN]", "[-NaN]", "[nan]", "[inf]", "{\"a\" NaN}", "{NaN: 1}",
                           "[Infinity-]", "[- Infinity]", "[NaN NaN]", "[\"a\"NaN]", "[Infinity.5]", "[-Infinityx]",
                           "[truNaN]", "{\"a\": 1, NaN: 2}", "[NaN", "\"NaN", "[\"\\", "", "Infinit"}) {
    SCOPED_TRACE(text);
    EXPECT_THROW(parse_python_json(text), json::parse_error);
  }
}

// Errors are nlohmann's, at the byte they are at in the caller's text.
TEST(PythonJson, ErrorsPointIntoTheText) {
  std::size_t plain = 0;
  try {
    const json parsed = json::parse("[1       , x]");
    ADD_FAILURE() << parsed;
  } catch (const json::parse_error& e) {
    plain = e.byte;
  }
  ASSERT_GT(plain, 0u);
  try {
    parse_python_json("[Infinity, x]");
    FAIL() << "parsed";
  } catch (const json::parse_error& e) {
    EXPECT_EQ(e.byte, plain) << e.what();
  }
}

// Linear in the text: a million tokens, and a megabyte of escapes.
TEST(PythonJson, LargeTextsInOnePass) {
  std::string text = "[";
  for (int i = 0; i < 1'000'000; ++i) text += i % 2 ? "NaN," : "-Infinity,";
  text += "1]";
  const auto start = std::chrono::steady_clock::now();
  const json v = parse_python_json(text);
  ASSERT_EQ(v.size(), 1'000'001u);
  EXPECT_EQ(v[0].get<double>(), -kInf);
  EXPECT_TRUE(std::isnan(v[999'999].get<double>()));
  EXPECT_EQ(v[1'000'000], 1);
  const std::string escapes = "[\"" + std::string(1 << 20, '\\') + "\", NaN]";
  const json e = parse_python_json(escapes);
  EXPECT_EQ(e[0].get<std::string>().size(), std::size_t{1} << 19);
  EXPECT_TRUE(std::isnan(e[1].get<double>()));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 30.0);
}

TEST(PythonJson, WithoutTokensIsNlohmanns) {
  const char* text = R"({"lr": 0.001, "betas": [0.9, 0.999], "params": [0, 1], "s": "Infinity", "n": null})";
  EXPECT_EQ(parse_python_json(text), json::parse(text));
}

TEST(PythonJson, WritesWhatJsonLoadsReads) {
  json v = json::object();
  v["x"] = std::numeric_limits<double>::quiet_NaN();
  v["y"] = json::array({kInf, -kInf, 1.5, nullptr, "NaN", -std::numeric_limits<double>::quiet_NaN()});
  v["i"] = 3;
  v["f"] = 1e-08;
  const std::string text = dump_python_json(v);
  EXPECT_EQ(text, R"({"x":NaN,"y":[Infinity,-Infinity,1.5,null,"NaN",NaN],"i":3,"f":1e-08})");
  // Finite values as nlohmann writes them.
  json finite = json::parse(R"({"a": [1, -2, 0.1, true, false, null, "é\n", {}], "b": {}, "c": []})");
  EXPECT_EQ(dump_python_json(finite), finite.dump());
  // And back.
  const json back = parse_python_json(text);
  EXPECT_TRUE(std::isnan(back["x"].get<double>()));
  EXPECT_EQ(back["y"][0].get<double>(), kInf);
  EXPECT_EQ(back["y"][1].get<double>(), -kInf);
  EXPECT_EQ(back["y"][4], "NaN");
  EXPECT_THROW(dump_python_json(json("\xff")), json::type_error);
}

// Depth counts brackets outside strings only, escaped quotes included.
TEST(PythonJson, DepthCountsBracketsOutsideStrings) {
  EXPECT_EQ(json_depth(""), 0u);
  EXPECT_EQ(json_depth("3"), 0u);
  EXPECT_EQ(json_depth("[1, {\"a\": [2]}]"), 3u);
  EXPECT_EQ(json_depth("[[]] [[[]]]"), 3u);
  EXPECT_EQ(json_depth(R"(["[[[[", "\\", "\"[[[", {}])"), 2u);
  EXPECT_EQ(json_depth(std::string(100000, '[') + std::string(100000, ']')), 100000u);
  EXPECT_EQ(json_depth("]]]]["), 1u);  // not JSON: the count means nothing, but stays bounded
}

}  // namespace
}  // namespace safetensors::detail
