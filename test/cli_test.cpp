// Tests of the safetensors-torch command-line tool: the binary is run as a
// child process on files written here, and its output and exit status checked.

#include <unistd.h>

#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli_util.hpp"
#include "safetensors/safetensors.hpp"

namespace {

namespace fs = std::filesystem;
using safetensors::Dtype;
using safetensors::Metadata;

using Result = safetensors::test::CliResult;
using safetensors::test::read_bytes;
using safetensors::test::write_bytes;

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// The bytes a file stores for one tensor.
std::string tensor_bytes(const std::string& path, const std::string& name) {
  const std::string file = read_bytes(path);
  const safetensors::Header header = safetensors::parse_header(file.data(), file.size(), path);
  const safetensors::TensorInfo* info = header.find(name);
  if (!info) return "<missing>";
  return file.substr(header.data_offset() + info->begin, info->nbytes());
}

at::Tensor f8_bytes() {
  static const std::uint8_t bytes[] = {0x00, 0x38, 0x7e, 0x80, 0xb8, 0xff};
  return at::from_blob(const_cast<std::uint8_t*>(bytes), {6}, at::kByte).clone();
}

class CliTest : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return dir_.file(name); }

  Result run(const std::vector<std::string>& args) const {
    return safetensors::test::run_cli(args, dir_.path().string());
  }

  // Three tensors of different dtypes (a scalar among them), optionally metadata.
  std::string write_sample(const std::string& name,
                           const std::optional<Metadata>& metadata = Metadata{{"format", "pt"}}) const {
    const std::string p = path(name);
    safetensors::save_file({{"weight", at::arange(6, at::kFloat).reshape({2, 3})},
                            {"step", at::full({}, 7, at::kLong)},
                            {"mask", at::arange(4, at::kLong).remainder(2).to(at::kBool)}},
                           p, metadata);
    return p;
  }

  // An F8_E4M3 tensor (which LibTorch 1.13 lacks) beside an F32 one.
  std::string write_f8_sample(const std::string& name) const {
    const std::string p = path(name);
    safetensors::NamedTensors tensors;
    tensors.add_raw("f8", Dtype::F8_E4M3, {2, 3}, f8_bytes());
    tensors.add("w", at::arange(3, at::kFloat));
    safetensors::save_file(tensors, p, Metadata{{"format", "pt"}});
    return p;
  }

  safetensors::test::TempDir dir_;
};

// --- inspect ----------------------------------------------------------------

TEST_F(CliTest, InspectPrintsTensorsInFileOrderThenMetadataAndTotals) {
  const std::string p = write_sample("a.safetensors");
  Result r = run({"inspect", p});
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("F32"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("I64"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("BOOL"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[2, 3]"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[0, 8)"), std::string::npos) << r.out;  // the I64 scalar comes first
  EXPECT_NE(r.out.find("format = pt"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("tensors: 3"), std::string::npos) << r.out;

  const safetensors::SafeOpen file(p);
  EXPECT_NE(r.out.find("data bytes: " + std::to_string(file.header().data_size())), std::string::npos);
  EXPECT_NE(r.out.find("header size: " + std::to_string(file.header().header_size())), std::string::npos);
  std::size_t previous = 0;
  for (const std::string& name : file.keys()) {
    const std::size_t at = r.out.find("\n" + name + " ");
    ASSERT_NE(at, std::string::npos) << name << " missing in\n" << r.out;
    EXPECT_GT(at, previous) << name << " out of file order in\n" << r.out;
    previous = at;
  }
}

TEST_F(CliTest, InspectJsonHasEveryField) {
  const std::string p = write_sample("a.safetensors");
  Result r = run({"inspect", p, "--json"});
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);

  const safetensors::SafeOpen file(p);
  const safetensors::Header& header = file.header();
  EXPECT_EQ(j.at("file"), p);
  EXPECT_EQ(j.at("header_size"), header.header_size());
  EXPECT_EQ(j.at("data_offset"), header.header_size() + 8);
  EXPECT_EQ(j.at("metadata"), nlohmann::json({{"format", "pt"}}));
  EXPECT_EQ(j.at("total_bytes"), 24 + 8 + 4);
  ASSERT_EQ(j.at("tensors").size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    const nlohmann::json& t = j["tensors"][i];
    const safetensors::TensorInfo& info = header.tensors()[i];
    EXPECT_EQ(t.at("name"), info.name);
    EXPECT_EQ(t.at("dtype"), safetensors::dtype_name(info.dtype));
    EXPECT_EQ(t.at("shape"), nlohmann::json(info.shape));
    EXPECT_EQ(t.at("data_offsets"), nlohmann::json({info.begin, info.end}));
    EXPECT_EQ(t.at("nbytes"), info.nbytes());
  }
  const nlohmann::json& weight = j["tensors"][1];
  EXPECT_EQ(weight.at("name"), "weight");
  EXPECT_EQ(weight.at("dtype"), "F32");
  EXPECT_EQ(weight.at("shape"), nlohmann::json({2, 3}));
  EXPECT_EQ(weight.at("data_offsets"), nlohmann::json({8, 32}));
  EXPECT_EQ(weight.at("nbytes"), 24);
}

TEST_F(CliTest, InspectJsonMetadataIsNullWhenAbsent) {
  Result r = run({"inspect", "--json", write_sample("a.safetensors", std::nullopt)});
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_TRUE(j.contains("metadata"));
  EXPECT_TRUE(j["metadata"].is_null()) << j["metadata"];
}

TEST_F(CliTest, InspectShowsDtypesLibTorchLacks) {
  Result r = run({"inspect", "--json", write_f8_sample("f8.safetensors")});
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.at("tensors").size(), 2u);
  EXPECT_EQ(j["tensors"][1].at("name"), "f8");
  EXPECT_EQ(j["tensors"][1].at("dtype"), "F8_E4M3");
  EXPECT_EQ(j["tensors"][1].at("shape"), nlohmann::json({2, 3}));
}

TEST_F(CliTest, InspectOfAnInvalidFileFailsWithExitOne) {
  const std::string p = path("bad.safetensors");
  write_bytes(p, safetensors::test::make_file(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234"));
  Result r = run({"inspect", p});
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(starts_with(r.err, p + ": error: ")) << r.err;
  EXPECT_NE(r.err.find("[MetadataIncompleteBuffer]"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

// --- verify -----------------------------------------------------------------

TEST_F(CliTest, VerifyReportsAValidFile) {
  const std::string p = write_sample("a.safetensors");
  Result r = run({"verify", p});
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(r.out, p + ": ok (3 tensors, 36 bytes)\n");
}

TEST_F(CliTest, VerifyLoadsDtypesLibTorchLacks) {
  const std::string p = write_f8_sample("f8.safetensors");
  Result r = run({"verify", p});
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(r.out, p + ": ok (2 tensors, 18 bytes)\n");
}

TEST_F(CliTest, VerifyRejectsBrokenFilesWithoutASignal) {
  const std::string valid = read_bytes(write_sample("valid.safetensors"));
  write_bytes(path("truncated"), valid.substr(0, valid.size() - 3));
  write_bytes(path("beyond_eof"), safetensors::test::make_file(std::string(1000, ' '), "").substr(0, 40));
  write_bytes(path("empty"), "");
  fs::create_directory(path("directory"));
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"truncated", "[MetadataIncompleteBuffer]"},
      {"beyond_eof", "[InvalidHeaderLength]"},
      {"empty", "[HeaderTooSmall]"},
      {"directory", "is a directory [Io]"},
      {"missing", "cannot open"},
  };
  for (const auto& [name, expected] : cases) {
    SCOPED_TRACE(name);
    const std::string p = path(name);
    Result r = run({"verify", p});
    ASSERT_TRUE(r.exited);
    EXPECT_EQ(r.code, 1);
    const std::vector<std::string> out = lines(r.out);
    ASSERT_EQ(out.size(), 1u) << r.out;
    EXPECT_TRUE(starts_with(out[0], p + ": error: ")) << out[0];
    EXPECT_NE(out[0].find(expected), std::string::npos) << out[0];
    // The library's message names the file itself; the line must not repeat it.
    EXPECT_EQ(out[0].find(p, 1), std::string::npos) << out[0];
  }
}

TEST_F(CliTest, VerifyPrintsOneLinePerFileAndFailsIfAnyIsInvalid) {
  const std::string good = write_sample("good.safetensors");
  const std::string empty = path("empty.safetensors");
  write_bytes(empty, "");
  const std::string also_good = write_sample("also_good.safetensors", std::nullopt);
  Result r = run({"verify", good, empty, also_good});
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 1);
  const std::vector<std::string> out = lines(r.out);
  ASSERT_EQ(out.size(), 3u) << r.out;
  EXPECT_EQ(out[0], good + ": ok (3 tensors, 36 bytes)");
  EXPECT_TRUE(starts_with(out[1], empty + ": error: ")) << out[1];
  EXPECT_EQ(out[2], also_good + ": ok (3 tensors, 36 bytes)");
}

TEST_F(CliTest, VerifyEscapesControlCharactersInMessages) {
  // A tensor named "a\nb" whose byte range does not fit its shape.
  const std::string p = path("newline.safetensors");
  write_bytes(p, safetensors::test::make_file(R"({"a\nb":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "abcd"));
  Result r = run({"verify", p});
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 1);
  const std::vector<std::string> out = lines(r.out);
  ASSERT_EQ(out.size(), 1u) << r.out;
  EXPECT_NE(out[0].find("a\\x0ab"), std::string::npos) << out[0];
  EXPECT_NE(out[0].find("[TensorInvalidInfo]"), std::string::npos) << out[0];
}

TEST_F(CliTest, EscapesTerminalControlSequencesInNamesAndPaths) {
  // ESC and the one-byte CSI U+009B in a tensor name and in the file's name.
  const std::string p = path("evil\x1b]0;title\x07.safetensors");
  write_bytes(p, safetensors::test::make_file(
                     "{\"w\xc2\x9b" "31m\\u001b[2J\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", "abcd"));
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"verify", p}, {"inspect", p}, {"convert", p, path("o.safetensors")}}) {
    SCOPED_TRACE(args[0]);
    Result r = run(args);
    ASSERT_TRUE(r.exited);
    EXPECT_EQ(r.code, 1);
    const std::string all = r.out + r.err;
    EXPECT_EQ(all.find('\x1b'), std::string::npos) << all;
    EXPECT_EQ(all.find('\x07'), std::string::npos) << all;
    EXPECT_EQ(all.find("\xc2\x9b"), std::string::npos) << all;
    EXPECT_NE(all.find("evil\\x1b]0;title\\x07.safetensors: error: tensor 'w\\u009b31m\\x1b[2J'"), std::string::npos)
        << all;
  }
}

// --- usage --------------------------------------------------------------------

TEST_F(CliTest, UsageErrorsExitWithTwo) {
  const std::string p = write_sample("a.safetensors");
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"verify"},
      {"verify", "--bogus", p},
      {"inspect"},
      {"convert", p},
      {"convert", p, path("out.safetensors"), "--metadata", "no-equals-sign"},
      {"convert", p, path("out.safetensors"), "--shard-size", "0"},
      {"convert", p, path("out.safetensors"), "--shard-size", "-5"},
      {"convert", p, path("out.safetensors"), "--shard-size", "18446744073709551616"},
      {"convert", p, path("out.safetensors"), "--shard-size", "1e6"},
  };
  for (const auto& args : cases) {
    SCOPED_TRACE(::testing::PrintToString(args));
    Result r = run(args);
    ASSERT_TRUE(r.exited);
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_NE(r.err, "");
  }
  EXPECT_FALSE(fs::exists(path("out.safetensors")));
  // The argument quoted back is escaped: no control byte reaches the terminal.
  Result r = run({"convert", p, path("out.safetensors"), "--shard-size", "1\x1b[2J"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << r.err;
}

TEST_F(CliTest, HelpAndVersionSucceed) {
  Result help = run({"--help"});
  ASSERT_TRUE(help.exited);
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("verify"), std::string::npos) << help.out;

  Result version = run({"--version"});
  ASSERT_TRUE(version.exited);
  EXPECT_EQ(version.code, 0);
  EXPECT_NE(version.out.find(SAFETENSORS_TORCH_VERSION), std::string::npos) << version.out;
  EXPECT_NE(version.out.find(safetensors::torch_version()), std::string::npos) << version.out;
}

// --- convert ------------------------------------------------------------------

TEST_F(CliTest, ConvertRoundTripsTensorsAndKeepsMetadata) {
  const std::string in = write_sample("in.safetensors", Metadata{{"format", "pt"}, {"note", "x"}});
  const std::string out = path("out.safetensors");
  Result r = run({"convert", in, out});
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "converted " + in + " -> " + out + ": 3 tensors, 36 bytes\n");

  const auto expected = safetensors::load_file(in);
  const auto actual = safetensors::load_file(out);
  ASSERT_EQ(actual.keys(), expected.keys());
  for (const auto& item : expected) {
    SCOPED_TRACE(item.key());
    const at::Tensor& t = actual[item.key()];
    EXPECT_EQ(t.scalar_type(), item.value().scalar_type());
    EXPECT_EQ(t.sizes(), item.value().sizes());
    EXPECT_TRUE(at::equal(t, item.value()));
  }
  EXPECT_EQ(safetensors::load_metadata(out), (Metadata{{"format", "pt"}, {"note", "x"}}));
}

TEST_F(CliTest, ConvertOverridesAndAddsMetadataKeys) {
  const std::string in = write_sample("in.safetensors", Metadata{{"format", "pt"}, {"note", "x"}});
  const std::string out = path("out.safetensors");
  Result r = run({"convert", in, out, "--metadata", "format=np", "--metadata", "eq=a=b"});
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(safetensors::load_metadata(out),
            (Metadata{{"format", "np"}, {"note", "x"}, {"eq", "a=b"}}));
}

// OUT may be IN: the tensors stream from the old file's mapping into the new
// one, which is renamed over it.
TEST_F(CliTest, ConvertRewritesAFileInPlace) {
  const std::string p = write_sample("in.safetensors", Metadata{{"format", "pt"}});
  const auto before = safetensors::load_file(p, safetensors::LoadOptions().copy(true));
  Result r = run({"convert", p, p, "--metadata", "note=rewritten"});
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(safetensors::load_metadata(p), (Metadata{{"format", "pt"}, {"note", "rewritten"}}));
  const auto after = safetensors::load_file(p);
  ASSERT_EQ(after.keys(), before.keys());
  for (const auto& item : before) EXPECT_TRUE(after[item.key()].equal(item.value())) << item.key();
}

TEST_F(CliTest, ConvertWritesNoMetadataWhenThereIsNone) {
  const std::string in = write_sample("in.safetensors", std::nullopt);
  const std::string out = path("out.safetensors");
  Result r = run({"convert", in, out});
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(safetensors::SafeOpen(out).header().has_metadata());
}

TEST_F(CliTest, ConvertKeepsDtypesLibTorchLacks) {
  const std::string in = write_f8_sample("in.safetensors");
  const std::string out = path("out.safetensors");
  Result r = run({"convert", in, out});
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0) << r.err;

  const safetensors::SafeOpen file(out, safetensors::LoadOptions().unsupported_as_bytes(true));
  const safetensors::TensorInfo& info = file.info("f8");
  EXPECT_EQ(info.dtype, Dtype::F8_E4M3);
  EXPECT_EQ(info.shape, (std::vector<std::uint64_t>{2, 3}));
  EXPECT_EQ(tensor_bytes(out, "f8"), std::string("\x00\x38\x7e\x80\xb8\xff", 6));
  EXPECT_EQ(file.info("w").dtype, Dtype::F32);
  EXPECT_TRUE(at::equal(file.get_tensor("w"), at::arange(3, at::kFloat)));
}

TEST_F(CliTest, ConvertOfAnInvalidInputFailsAndWritesNothing) {
  const std::string in = path("bad.safetensors");
  write_bytes(in, safetensors::test::make_file(std::string(1000, ' '), "").substr(0, 40));
  const std::string out = path("out.safetensors");
  Result r = run({"convert", in, out});
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(starts_with(r.err, in + ": error: ")) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

// --- diff -------------------------------------------------------------------

TEST_F(CliTest, DiffExitsZeroWhenEqualOneWhenDifferentTwoOnTrouble) {
  const std::string a = write_sample("a.safetensors");
  const std::string same = write_sample("same.safetensors");
  const std::string other = path("other.safetensors");
  safetensors::save_file({{"weight", at::arange(6, at::kFloat).reshape({3, 2})}}, other);
  const std::string broken = path("broken.safetensors");
  write_bytes(broken, "not a checkpoint at all");
  EXPECT_EQ(run({"diff", a, same}).code, 0);
  const Result different = run({"diff", a, other});
  EXPECT_EQ(different.code, 1) << different.out << different.err;
  EXPECT_NE(different.out.find("different: "), std::string::npos) << different.out;
  for (const auto& [x, y] : std::vector<std::pair<std::string, std::string>>{
           {a, path("missing.safetensors")}, {path("missing.safetensors"), a}, {a, broken}, {broken, a},
           {a, dir_.path().string()}}) {
    SCOPED_TRACE(x + " vs " + y);
    const Result r = run({"diff", x, y});
    ASSERT_TRUE(r.exited);
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_EQ(r.out, "");
    EXPECT_NE(r.err.find(": error: "), std::string::npos) << r.err;
  }
}

// --- convert to shards -----------------------------------------------------------

TEST_F(CliTest, ConvertCountsTheShardsItWrites) {
  const std::string in = path("many.safetensors");
  safetensors::NamedTensors tensors;
  for (int i = 0; i < 19; ++i) tensors.add("t" + std::to_string(100 + i), at::full({4}, i, at::kFloat));
  safetensors::save_file(tensors, in);
  const std::string folder = path("sharded");
  const Result r = run({"convert", in, folder, "--shard-size", "100"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::size_t shards = 0;
  for (const auto& entry : fs::directory_iterator(folder))
    if (entry.path().extension() == ".safetensors") ++shards;
  EXPECT_GT(shards, 1u);
  EXPECT_NE(r.out.find(" in " + std::to_string(shards) + " shards with an index"), std::string::npos) << r.out;
  EXPECT_EQ(safetensors::ShardedOpen(folder).size(), 19u);
}

}  // namespace
