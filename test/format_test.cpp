// The format rules, torch-free: header length, JSON shape, offsets, dtypes,
// limits, and the writer's exact bytes. Cases follow the reference
// implementation's own tests where it has them.

#include <chrono>

#include "detail/text.hpp"
#include "safetensors/header.hpp"
#include "safetensors/writer.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

using detail::append_json_string;
using detail::is_valid_utf8;
using test::error_code_of;
using test::make_file;

Header parse(const std::string& file) { return parse_header(file.data(), file.size(), "t.safetensors"); }

ErrorCode code_of(const std::string& file) {
  return error_code_of([&] { parse(file); });
}

ErrorCode code_of_json(const std::string& json, const std::string& data = "") {
  return code_of(make_file(json, data));
}

// ---------------------------------------------------------------- length rules

TEST(HeaderLength, FewerThanEightBytesIsHeaderTooSmall) {
  EXPECT_EQ(code_of(""), ErrorCode::HeaderTooSmall);
  EXPECT_EQ(code_of(std::string(7, '\0')), ErrorCode::HeaderTooSmall);
}

TEST(HeaderLength, AboveTheLimitIsHeaderTooLarge) {
  std::string file = make_file("{}");
  std::uint64_t n = kMaxHeaderSize + 1;
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  EXPECT_EQ(code_of(file), ErrorCode::HeaderTooLarge);
  std::string huge(8, '\xff');  // 2^64 - 1
  EXPECT_EQ(code_of(huge + "{}"), ErrorCode::HeaderTooLarge);
}

TEST(HeaderLength, PastTheEndIsInvalidHeaderLength) {
  std::string file = make_file("{}      ");
  EXPECT_EQ(code_of(file.substr(0, file.size() - 1)), ErrorCode::InvalidHeaderLength);
  EXPECT_EQ(code_of(std::string(8, '\0').replace(0, 1, "\x10")), ErrorCode::InvalidHeaderLength);
}

// ---------------------------------------------------------------- text rules

TEST(HeaderText, NonUtf8IsInvalidHeader) {
  EXPECT_EQ(code_of_json("{\"\xff\":1}"), ErrorCode::InvalidHeader);
  EXPECT_EQ(code_of_json("{\"\xc0\xaf\":{}}"), ErrorCode::InvalidHeader);        // overlong '/'
  EXPECT_EQ(code_of_json("{\"\xed\xa0\x80\":{}}"), ErrorCode::InvalidHeader);     // surrogate
  EXPECT_EQ(code_of_json("{\"\xf4\x90\x80\x80\":{}}"), ErrorCode::InvalidHeader); // > U+10FFFF
  EXPECT_EQ(code_of_json("{\"\xe2\x82\":{}}"), ErrorCode::InvalidHeader);         // truncated
}

TEST(HeaderText, ByteOrderMarkIsInvalidHeader) {
  EXPECT_EQ(code_of_json("\xef\xbb\xbf{}"), ErrorCode::InvalidHeader);
}

TEST(HeaderText, NotJsonIsInvalidHeaderDeserialization) {
  for (const char* json : {"{}}", "{", "", "[]", "null", "1", "\"x\"", "{\"a\":}", "{} {}",
                           "{,}", "{'a':1}", "{\"a\":{\"dtype\":\"F32\"} // c\n}"})
    EXPECT_EQ(code_of_json(json), ErrorCode::InvalidHeaderDeserialization) << json;
}

TEST(HeaderText, SpacePaddingIsAcceptedNulPaddingIsNot) {
  EXPECT_EQ(parse(make_file("{}      ")).tensors().size(), 0u);
  EXPECT_EQ(parse(make_file(" \t\n\r{} \n")).tensors().size(), 0u);
  EXPECT_EQ(code_of_json(std::string("{}\0\0\0\0\0\0", 8)), ErrorCode::InvalidHeaderDeserialization);
  // A NUL must not end the JSON early and hide what follows.
  EXPECT_EQ(code_of_json(std::string("{}\0{\"a\":1}", 10)), ErrorCode::InvalidHeaderDeserialization);
}

TEST(HeaderText, EmptyObjectIsAValidFileWithNoTensors) {
  Header h = parse(make_file("{}"));
  EXPECT_TRUE(h.tensors().empty());
  EXPECT_FALSE(h.has_metadata());
  EXPECT_EQ(h.data_size(), 0u);
}

// ---------------------------------------------------------------- JSON shape

const std::string kOne = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST(HeaderJson, ParsesDtypeShapeOffsetsAndMetadata) {
  Header h = parse(make_file(
      R"({"__metadata__":{"format":"pt","k":"v"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]},"a":{"dtype":"I64","shape":[],"data_offsets":[0,8]}})",
      std::string(20, '\0')));
  ASSERT_EQ(h.tensors().size(), 2u);
  EXPECT_EQ(h.tensors()[0].name, "a");  // file order, not header order
  EXPECT_EQ(h.tensors()[0].dtype, Dtype::I64);
  EXPECT_TRUE(h.tensors()[0].shape.empty());
  EXPECT_EQ(h.tensors()[0].numel(), 1u);
  EXPECT_EQ(h.tensors()[1].name, "b");
  EXPECT_EQ(h.tensors()[1].dtype, Dtype::BF16);
  EXPECT_EQ(h.tensors()[1].shape, (std::vector<std::uint64_t>{2, 3}));
  EXPECT_EQ(h.tensors()[1].begin, 8u);
  EXPECT_EQ(h.tensors()[1].end, 20u);
  EXPECT_TRUE(h.has_metadata());
  EXPECT_EQ(h.metadata(), (Metadata{{"format", "pt"}, {"k", "v"}}));
  ASSERT_NE(h.find("b"), nullptr);
  EXPECT_EQ(h.find("b")->dtype, Dtype::BF16);
  EXPECT_EQ(h.find("c"), nullptr);
}

TEST(HeaderJson, NullMetadataAsWrittenByMlxIsAccepted) {
  Header h = parse(make_file(R"({"__metadata__":null})"));
  EXPECT_FALSE(h.has_metadata());
  EXPECT_TRUE(h.metadata().empty());
}

TEST(HeaderJson, MetadataValuesMustBeStrings) {
  EXPECT_EQ(code_of_json(R"({"__metadata__":{"a":1}})"), ErrorCode::InvalidHeaderDeserialization);
  EXPECT_EQ(code_of_json(R"({"__metadata__":{"a":null}})"), ErrorCode::InvalidHeaderDeserialization);
  EXPECT_EQ(code_of_json(R"({"__metadata__":{"a":{"b":"c"}}})"), ErrorCode::InvalidHeaderDeserialization);
  EXPECT_EQ(code_of_json(R"({"__metadata__":["a"]})"), ErrorCode::InvalidHeaderDeserialization);
  EXPECT_EQ(code_of_json(R"({"__metadata__":"a"})"), ErrorCode::InvalidHeaderDeserialization);
}

TEST(HeaderJson, WrongTypesAreInvalidHeaderDeserialization) {
  for (const char* json : {
           R"({"a":1})",
           R"({"a":null})",
           R"({"a":[]})",
           R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"f32","shape":[2],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"F32","shape":[2,-0],"data_offsets":[0,0]}})",  // the reference refuses -0
           R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[-0,0]}})",
           R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"F32","shape":[1e1],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,9]}})",
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})",
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})",
           R"({"a":{"dtype":"F32","shape":[2]}})",
           R"({"a":{"shape":[2],"data_offsets":[0,8]}})",
           R"({"a":{"dtype":"F32","data_offsets":[0,8]}})",
       })
    EXPECT_EQ(code_of_json(json, std::string(8, '\0')), ErrorCode::InvalidHeaderDeserialization)
        << json;
}

TEST(HeaderJson, UnknownFieldsInATensorEntryAreIgnored) {
  Header h = parse(make_file(
      R"({"a":{"extra":{"x":[1,{"y":null}],"z":-1.5},"dtype":"F32","shape":[2],"more":"s","data_offsets":[0,8]}})",
      std::string(8, '\0')));
  ASSERT_EQ(h.tensors().size(), 1u);
  EXPECT_EQ(h.tensors()[0].shape, std::vector<std::uint64_t>{2});
}

// Checked against python3-safetensors 0.5.2: an unknown field may hold any JSON
// value, directly or nested; only numbers JSON readers cannot represent fail.
TEST(HeaderJson, UnknownFieldsMayHoldAnyJsonValue) {
  for (const char* value : {"-1", "1.5", "1e300", "-0.0", "true", "null", "\"s\"", "[]", "{}",
                            "18446744073709551616", "-99999999999999999999", "[-1, 2.5]"}) {
    const std::string json =
        std::string(R"({"a":{"dtype":"F32","shape":[2],"x":)") + value + R"(,"data_offsets":[0,8]}})";
    Header h = parse(make_file(json, std::string(8, '\0')));
    ASSERT_EQ(h.tensors().size(), 1u) << json;
    EXPECT_EQ(h.tensors()[0].end, 8u) << json;
  }
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"F32","shape":[2],"x":1e400,"data_offsets":[0,8]}})",
                         std::string(8, '\0')),
            ErrorCode::InvalidHeaderDeserialization);
  // The fields the format defines stay strict.
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", std::string(8, '\0')),
            ErrorCode::InvalidHeaderDeserialization);
}

// Checked against python3-safetensors 0.5.2: an unknown field may nest 125
// arrays deep (127 levels with the header's object and the entry), not 126.
TEST(HeaderJson, UnknownFieldsNestAsDeepAsTheReferenceAllows) {
  const auto header_nesting = [](std::size_t arrays) {
    return R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":)" + std::string(arrays, '[') +
           std::string(arrays, ']') + "}}";
  };
  EXPECT_EQ(parse(make_file(header_nesting(125), std::string(1, '\0'))).tensors().size(), 1u);
  EXPECT_EQ(code_of_json(header_nesting(126), std::string(1, '\0')),
            ErrorCode::InvalidHeaderDeserialization);
}

TEST(HeaderJson, DuplicatesAreDuplicateKey) {
  EXPECT_EQ(code_of_json(
                R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                std::string(8, '\0')),
            ErrorCode::DuplicateKey);
  // Aliasing one range under two names is reported as the duplicate it is.
  EXPECT_EQ(code_of_json(
                R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                std::string(4, '\0')),
            ErrorCode::DuplicateKey);
  EXPECT_EQ(code_of_json(R"({"__metadata__":{"k":"1","k":"2"}})"), ErrorCode::DuplicateKey);
  EXPECT_EQ(code_of_json(R"({"__metadata__":{},"__metadata__":null})"), ErrorCode::DuplicateKey);
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                         std::string(4, '\0')),
            ErrorCode::DuplicateKey);
}

TEST(HeaderJson, ATensorNamedMetadataIsRefused) {
  EXPECT_NE(code_of_json(R"({"__metadata__":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                         std::string(4, '\0')),
            ErrorCode::HeaderTooSmall);  // refused, as metadata with a non-string value
}

TEST(HeaderJson, DeepNestingIsRefusedQuickly) {
  const std::size_t depth = 1'000'000;
  std::string json = R"({"a":{"x":)" + std::string(depth, '[') + std::string(depth, ']') + "}}";
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(code_of_json(json), ErrorCode::InvalidHeaderDeserialization);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(HeaderJson, UnicodeAndEmptyNamesAreValid) {
  Header h = parse(make_file(
      R"({"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"权重.ü\n\"q\"":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
      "ab"));
  ASSERT_EQ(h.tensors().size(), 2u);
  EXPECT_EQ(h.tensors()[0].name, "");
  EXPECT_EQ(h.tensors()[1].name, "权重.ü\n\"q\"");
}

// ---------------------------------------------------------------- offsets and sizes

TEST(Offsets, OutOfKeyOrderIsValidAndComesBackInFileOrder) {
  Header h = parse(make_file(
      R"({"z":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})",
      "abc"));
  EXPECT_EQ(h.tensors()[0].name, "z");
  EXPECT_EQ(h.tensors()[1].name, "a");
}

// Names in or out of order, offsets in or out of header order: the tensors
// come back in file order and every name is found (the parser skips sorting
// what is already sorted, and must get each case right).
TEST(Offsets, EveryOrderOfNamesAndOffsetsIsFoundAndInFileOrder) {
  struct Case {
    std::vector<std::string> names;       // in header order
    std::vector<int> slots;               // each one's place in the data
  };
  const std::vector<Case> cases = {
      {{"a", "b", "c", "d"}, {0, 1, 2, 3}},  // both sorted
      {{"a", "b", "c", "d"}, {2, 0, 3, 1}},  // names sorted, offsets not
      {{"c", "a", "d", "b"}, {0, 1, 2, 3}},  // offsets sorted, names not
      {{"d", "b", "a", "c"}, {3, 1, 0, 2}},  // neither
  };
  for (const Case& c : cases) {
    std::string json = "{";
    for (std::size_t i = 0; i < c.names.size(); ++i)
      json += (i ? "," : "") + std::string("\"") + c.names[i] + R"(":{"dtype":"U8","shape":[1],"data_offsets":[)" +
              std::to_string(c.slots[i]) + "," + std::to_string(c.slots[i] + 1) + "]}";
    json += "}";
    Header h = parse(make_file(json, "wxyz"));
    ASSERT_EQ(h.tensors().size(), 4u) << json;
    for (std::size_t i = 0; i < c.names.size(); ++i) {
      const TensorInfo* t = h.find(c.names[i]);
      ASSERT_NE(t, nullptr) << json << " " << c.names[i];
      EXPECT_EQ(t->name, c.names[i]);
      EXPECT_EQ(t->begin, static_cast<std::uint64_t>(c.slots[i])) << json;
      EXPECT_EQ(h.tensors()[c.slots[i]].name, c.names[i]) << json;
    }
    EXPECT_EQ(h.find("e"), nullptr);
    EXPECT_EQ(h.find(""), nullptr);
  }
  // A duplicate among unsorted names is still found.
  EXPECT_EQ(code_of_json(
                R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}})",
                "xyz"),
            ErrorCode::DuplicateKey);
}

TEST(Offsets, GapsOverlapsAndReversedRangesAreInvalidOffset) {
  const std::string data(16, '\0');
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data.substr(0, 8)),
            ErrorCode::InvalidOffset);  // gap at the start
  EXPECT_EQ(code_of_json(
                R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                data.substr(0, 12)),
            ErrorCode::InvalidOffset);  // gap between
  EXPECT_EQ(code_of_json(
                R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                data.substr(0, 12)),
            ErrorCode::InvalidOffset);  // overlap
  EXPECT_EQ(code_of_json(
                R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                data.substr(0, 4)),
            ErrorCode::InvalidOffset);  // aliasing
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", ""),
            ErrorCode::InvalidOffset);  // reversed
}

TEST(Offsets, SizeMismatchIsTensorInvalidInfo) {
  EXPECT_EQ(code_of_json(R"({"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,4]}})",
                         std::string(4, '\0')),
            ErrorCode::TensorInvalidInfo);
}

TEST(Offsets, ShapeOverflowIsValidationOverflow) {
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})"),
            ErrorCode::ValidationOverflow);
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})"),
            ErrorCode::ValidationOverflow);  // elements fit, bits do not
  // A zero anywhere makes the product 0 first: valid, like the reference.
  EXPECT_EQ(parse(make_file(R"({"a":{"dtype":"F32","shape":[0,18446744073709551615],"data_offsets":[0,0]}})"))
                .tensors()[0].nbytes(), 0u);
}

TEST(Offsets, SubByteDtypesMustFillWholeBytes) {
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", "ab"),
            ErrorCode::MisalignedSlice);
  EXPECT_EQ(parse(make_file(R"({"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}})", "abc"))
                .tensors()[0].nbytes(), 3u);
}

TEST(Offsets, BufferMustBeCoveredExactly) {
  EXPECT_EQ(code_of_json(kOne, std::string(9, '\0')), ErrorCode::MetadataIncompleteBuffer);
  EXPECT_EQ(code_of_json(kOne, std::string(7, '\0')), ErrorCode::MetadataIncompleteBuffer);
  EXPECT_EQ(code_of_json("{}", "x"), ErrorCode::MetadataIncompleteBuffer);  // polyglot tail
}

TEST(Offsets, HugeOffsetsAreRefusedWithoutOverflow) {
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,0]}})"),
            ErrorCode::InvalidOffset);
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}})"),
            ErrorCode::ValidationOverflow);
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"U8","shape":[2305843009213693951],"data_offsets":[0,2305843009213693951]}})"),
            ErrorCode::MetadataIncompleteBuffer);
}

TEST(Offsets, ScalarsAndZeroSizedTensorsAreValid) {
  Header h = parse(make_file(
      R"({"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[2,0],"data_offsets":[8,8]}})",
      std::string(8, '\0')));
  EXPECT_EQ(h.tensors().size(), 2u);
}

TEST(Limits, RankAboveTheLimitIsLimitExceeded) {
  std::string shape;
  for (std::size_t i = 0; i <= kMaxRank; ++i) shape += i ? ",1" : "1";
  EXPECT_EQ(code_of_json(R"({"a":{"dtype":"U8","shape":[)" + shape + R"(],"data_offsets":[0,1]}})", "x"),
            ErrorCode::LimitExceeded);
}

TEST(Errors, MessageNamesFileTensorAndRule) {
  try {
    parse(make_file(R"({"w.0":{"dtype":"I32","shape":[2],"data_offsets":[0,4]}})", "abcd"));
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("t.safetensors"), std::string::npos) << what;
    EXPECT_NE(what.find("'w.0'"), std::string::npos) << what;
    EXPECT_NE(what.find("TensorInvalidInfo"), std::string::npos) << what;
    EXPECT_EQ(e.file(), "t.safetensors");
    EXPECT_EQ(e.tensor(), "w.0");
    EXPECT_EQ(std::string(to_string(e.code())), "TensorInvalidInfo");
  }
}

TEST(Errors, MessageEscapesControlCharactersAndInvalidUtf8) {
  // ESC, a C1 CSI (U+009B), DEL, a stray continuation byte, a newline; a valid
  // multi-byte name stays as it is.
  const Error e(ErrorCode::TensorInvalidInfo, "dir\n/f\x1b[2J.st", "w\xc2\x9b" "1m\x7f\x80\xc3\xbc",
                "first line\nsecond \x1b line");
  EXPECT_EQ(std::string(e.what()),
            "dir\\x0a/f\\x1b[2J.st: tensor 'w\\u009b1m\\x7f\\x80\xc3\xbc': first line\\x0asecond \\x1b line "
            "[TensorInvalidInfo]");
  // Only a strict load's list of problems keeps its lines.
  EXPECT_EQ(std::string(Error(ErrorCode::StateDictMismatch, "", "", "a\nb").what()), "a\nb [StateDictMismatch]");
  EXPECT_EQ(e.file(), "dir\n/f\x1b[2J.st");  // the accessors are unescaped
  EXPECT_EQ(e.tensor(), "w\xc2\x9b" "1m\x7f\x80\xc3\xbc");
  EXPECT_EQ(e.detail(), "first line\nsecond \x1b line");
  EXPECT_EQ(detail::escape_control("\xe2\x82"), "\\xe2\\x82");  // a sequence cut short
  EXPECT_EQ(detail::escape_control("\xf0\x9f\x98\x80 \xc2\xa0"), "\xf0\x9f\x98\x80 \xc2\xa0");
  // Two names that differ never read alike: a backslash is doubled, so the
  // text "\x1b" is not taken for the escaped byte.
  EXPECT_NE(detail::escape_control("a\x1b[31m"), detail::escape_control("a\\x1b[31m"));
  EXPECT_EQ(detail::escape_control("a\\x1b"), "a\\\\x1b");
  // Characters that reorder or hide text: a right-to-left override (which makes
  // "weight\u202etxt.exe" show as "weightexe.txt"), zero-width space and joiner,
  // BOM, line separator.
  EXPECT_EQ(detail::escape_control("weight\xe2\x80\xaetxt.exe"), "weight\\u202etxt.exe");
  EXPECT_EQ(detail::escape_control("a\xe2\x80\x8b\xe2\x80\x8d\xef\xbb\xbf\xe2\x80\xa8"),
            "a\\u200b\\u200d\\ufeff\\u2028");
  // Text joined from escaped pieces (a strict load's list) is not escaped twice.
  EXPECT_EQ(std::string(Error(ErrorCode::StateDictMismatch, "", "", "missing: 'a\\x1b'\nb").what()),
            "missing: 'a\\x1b'\nb [StateDictMismatch]");
}

TEST(Utf8, Validator) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain ascii, long enough for the fast path"));
  EXPECT_TRUE(is_valid_utf8("\xc3\xbc\xe6\x9d\x83\xf0\x9f\x98\x80"));
  EXPECT_TRUE(is_valid_utf8("\xf4\x8f\xbf\xbf"));  // U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\x80"));
  EXPECT_FALSE(is_valid_utf8("\xe0\x80\xaf"));  // overlong
  EXPECT_FALSE(is_valid_utf8("\xf0\x80\x80\xaf"));
  EXPECT_FALSE(is_valid_utf8("\xed\xbf\xbf"));  // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf5\x80\x80\x80"));
  EXPECT_FALSE(is_valid_utf8("abcdefgh\xc3"));
}

// ---------------------------------------------------------------- the writer

Header parse_bytes(const std::string& file) { return parse_header(file.data(), file.size()); }

TEST(Writer, NoTensorsNoMetadataIsTheReferenceBytes) {
  WritePlan plan = plan_write({}, std::nullopt);
  EXPECT_EQ(plan.header, make_file("{}      "));
  EXPECT_EQ(plan.data_size, 0u);
}

TEST(Writer, OneTensorIsTheReferenceBytes) {
  WritePlan plan = plan_write({{"attn.0", Dtype::F32, {1, 2, 3}}}, std::nullopt);
  const std::string json = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  EXPECT_EQ(plan.header, make_file(json + std::string(64 - json.size(), ' ')));
  EXPECT_EQ(plan.header.size(), 8u + 64u);
}

TEST(Writer, OrdersByDtypeDescendingThenName) {
  std::vector<EntrySpec> entries = {
      {"b", Dtype::F32, {1}}, {"a", Dtype::F32, {1}}, {"c", Dtype::BOOL, {3}},
      {"d", Dtype::U64, {1}}, {"e", Dtype::F16, {1}}, {"B", Dtype::F32, {1}},
  };
  WritePlan plan = plan_write(entries, Metadata{{"format", "pt"}});
  std::vector<std::string> order;
  for (std::size_t i : plan.order) order.push_back(entries[i].name);
  EXPECT_EQ(order, (std::vector<std::string>{"d", "B", "a", "b", "e", "c"}));
  Header h = parse_bytes(plan.header + std::string(plan.data_size, '\0'));
  ASSERT_EQ(h.tensors().size(), entries.size());
  for (std::size_t k = 0; k < order.size(); ++k) EXPECT_EQ(h.tensors()[k].name, order[k]);
  // Metadata first, then tensors in data order.
  EXPECT_EQ(plan.header.substr(8, 33), R"({"__metadata__":{"format":"pt"},")");
  // Every tensor starts aligned to its element size.
  for (const TensorInfo& t : h.tensors())
    EXPECT_EQ((h.data_offset() + t.begin) % (dtype_bits(t.dtype) / 8), 0u) << t.name;
  EXPECT_EQ(h.data_offset() % 8, 0u);
}

TEST(Writer, EmptyMetadataIsWrittenAndAbsentMetadataIsNot) {
  EXPECT_EQ(plan_write({}, Metadata{}).header, make_file(R"({"__metadata__":{}}     )"));
  EXPECT_TRUE(parse_bytes(plan_write({}, Metadata{}).header).has_metadata());
  EXPECT_FALSE(parse_bytes(plan_write({}, std::nullopt).header).has_metadata());
}

TEST(Writer, EscapesLikeTheReference) {
  std::string out;
  append_json_string(out, std::string("a\"b\\c\n\t\r\b\f\x01\x1f\x7f/ü", 16));
  EXPECT_EQ(out, std::string("\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\x7f/ü\""));
  WritePlan plan = plan_write({{"q\"\n", Dtype::U8, {1}}}, Metadata{{"k\\", "v\x02"}});
  Header h = parse_bytes(plan.header + "x");
  EXPECT_EQ(h.tensors()[0].name, "q\"\n");
  EXPECT_EQ(h.metadata().at("k\\"), "v\x02");
}

TEST(Writer, RefusesBadEntries) {
  EXPECT_EQ(error_code_of([] { plan_write({{"__metadata__", Dtype::U8, {1}}}, std::nullopt); }),
            ErrorCode::ReservedName);
  EXPECT_EQ(error_code_of([] { plan_write({{"a", Dtype::U8, {1}}, {"a", Dtype::F32, {1}}}, std::nullopt); }),
            ErrorCode::DuplicateKey);
  EXPECT_EQ(error_code_of([] { plan_write({{"\xff", Dtype::U8, {1}}}, std::nullopt); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([] { plan_write({}, Metadata{{"k", "\xc0\x80"}}); }),
            ErrorCode::InvalidArgument);
  EXPECT_EQ(error_code_of([] { plan_write({{"a", Dtype::F4, {3}}}, std::nullopt); }),
            ErrorCode::MisalignedSlice);
  EXPECT_EQ(error_code_of([] { plan_write({{"a", Dtype::F64, {1ull << 62}}}, std::nullopt); }),
            ErrorCode::ValidationOverflow);
}

TEST(Writer, RefusesHeadersOverTheLimit) {
  std::vector<EntrySpec> entries;
  const std::string name(1000, 'n');
  for (int i = 0; i < 100'001; ++i) entries.push_back({name + std::to_string(i), Dtype::U8, {1}});
  EXPECT_EQ(error_code_of([&] { plan_write(entries, std::nullopt); }), ErrorCode::HeaderTooLarge);
}

TEST(Dtypes, TableIsComplete) {
  EXPECT_EQ(kAllDtypes.size(), 22u);
  for (Dtype d : kAllDtypes) {
    EXPECT_EQ(parse_dtype(dtype_name(d)), d);
    EXPECT_GT(dtype_bits(d), 0u);
  }
  EXPECT_EQ(dtype_bits(Dtype::F4), 4u);
  EXPECT_EQ(dtype_bits(Dtype::F6_E3M2), 6u);
  EXPECT_EQ(dtype_bits(Dtype::C64), 64u);
  EXPECT_EQ(dtype_bits(Dtype::BF16), 16u);
  EXPECT_FALSE(parse_dtype("F128"));
}

}  // namespace
}  // namespace safetensors
