// Tests of the safetensors-torch command-line tool: the binary is run as a
// child process on files written here, and its output and exit status checked.
// Each run pays LibTorch's start-up (most of this test's time): a case is run
// once, in the test about it; a command that takes several paths is given them
// in one run; a converted file is checked in this process, not by another run.

#include <unistd.h>

#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
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

// --- progress ---------------------------------------------------------------

// On a terminal (here the pseudo-terminal of script(1)), verify and diff of
// more than 256 MB show a progress line with bytes, throughput and the time
// left, ended before the result; piped, none. The file is sparse: its 300 MB
// of zeros cost no disk.
TEST_F(CliTest, VerifyAndDiffShowProgressOnATerminalOnly) {
  if (!fs::exists("/usr/bin/script")) GTEST_SKIP() << "no script(1) to give the tool a terminal";
  const std::uint64_t n = 300'000'000;
  const std::string big = path("big.safetensors");
  {
    std::string header = R"({"t":{"dtype":"U8","shape":[)" + std::to_string(n) + R"(],"data_offsets":[0,)" +
                         std::to_string(n) + "]}}";
    header.append((8 - header.size() % 8) % 8, ' ');
    std::string prefix(8, '\0');
    for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
    write_bytes(big, prefix + header);
    fs::resize_file(big, 8 + header.size() + n);
  }
  const std::string tool = SAFETENSORS_CLI_PATH;
  auto on_terminal = [&](const std::string& command) {
    return safetensors::test::run_program("/usr/bin/script", {"-qec", tool + " " + command, "/dev/null"},
                                          dir_.path().string());
  };
  const Result verified = on_terminal("verify " + big);
  ASSERT_EQ(verified.code, 0) << verified.out << verified.err;
  EXPECT_NE(verified.out.find("\r[verified "), std::string::npos) << verified.out;
  EXPECT_NE(verified.out.find("300.0 MB / 300.0 MB, 100%"), std::string::npos) << verified.out;
  EXPECT_NE(verified.out.find(big + ": ok (1 tensors, 300000000 bytes)"), std::string::npos) << verified.out;
  const Result compared = on_terminal("diff " + big + " " + big);
  ASSERT_EQ(compared.code, 0) << compared.out << compared.err;
  EXPECT_NE(compared.out.find("\r[compared "), std::string::npos) << compared.out;
  EXPECT_NE(compared.out.find("equal: 1 identical"), std::string::npos) << compared.out;
  // A line past the first tenth of a second also has a rate ("MB/s"); on a
  // fast machine the whole run may take less.
  const Result piped = run({"verify", big});
  EXPECT_EQ(piped.code, 0) << piped.err;
  EXPECT_EQ(piped.err.find("[verified"), std::string::npos) << piped.err;
  EXPECT_EQ(piped.out, big + ": ok (1 tensors, 300000000 bytes)\n");
}

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
  EXPECT_EQ(j.at("ok"), true);
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

TEST_F(CliTest, VerifyRejectsBrokenFilesWithoutASignal) {
  const std::string valid = read_bytes(write_sample("valid.safetensors"));
  write_bytes(path("truncated"), valid.substr(0, valid.size() - 3));
  write_bytes(path("beyond_eof"), safetensors::test::make_file(std::string(1000, ' '), "").substr(0, 40));
  write_bytes(path("empty"), "");
  fs::create_directory(path("directory"));
  // Invalid files exit 1; a path that cannot be read (a folder that is not a
  // set, a missing file) is trouble, 2.
  struct Case {
    std::string name, expected;
    int code;
  };
  const std::vector<Case> cases = {
      {"truncated", "[MetadataIncompleteBuffer]", 1},
      {"beyond_eof", "[InvalidHeaderLength]", 1},
      {"empty", "[HeaderTooSmall]", 1},
      {"directory", "neither model.safetensors.index.json nor model.safetensors [Io]", 2},
      {"missing", "cannot open", 2},
  };
  // The invalid ones in one run (its status 1 says none is trouble), the
  // others in another.
  for (const int code : {1, 2}) {
    std::vector<std::string> args{"verify"};
    for (const Case& c : cases)
      if (c.code == code) args.push_back(path(c.name));
    Result r = run(args);
    ASSERT_TRUE(r.exited);
    EXPECT_EQ(r.code, code);
    const std::vector<std::string> out = lines(r.out);
    ASSERT_EQ(out.size(), args.size() - 1) << r.out;
    std::size_t line = 0;
    for (const Case& c : cases) {
      if (c.code != code) continue;
      SCOPED_TRACE(c.name);
      const std::string p = path(c.name);
      const std::string& l = out[line++];
      EXPECT_TRUE(starts_with(l, p + ": error: ")) << l;
      EXPECT_NE(l.find(c.expected), std::string::npos) << l;
      // The library's message names the file itself; the line must not repeat it.
      EXPECT_EQ(l.find(p, 1), std::string::npos) << l;
    }
  }
}

// One line per path, valid files (one of a dtype LibTorch may lack) among
// them, and exit 1 if any is invalid.
TEST_F(CliTest, VerifyPrintsOneLinePerFileAndFailsIfAnyIsInvalid) {
  const std::string good = write_sample("good.safetensors");
  const std::string f8 = write_f8_sample("f8.safetensors");
  const std::string empty = path("empty.safetensors");
  write_bytes(empty, "");
  const std::string also_good = write_sample("also_good.safetensors", std::nullopt);
  Result r = run({"verify", good, f8, empty, also_good});
  ASSERT_TRUE(r.exited);
  EXPECT_EQ(r.code, 1);
  const std::vector<std::string> out = lines(r.out);
  ASSERT_EQ(out.size(), 4u) << r.out;
  EXPECT_EQ(out[0], good + ": ok (3 tensors, 36 bytes)");
  EXPECT_EQ(out[1], f8 + ": ok (2 tensors, 18 bytes)");
  EXPECT_TRUE(starts_with(out[2], empty + ": error: ")) << out[2];
  EXPECT_EQ(out[3], also_good + ": ok (3 tensors, 36 bytes)");
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
      {"convert", p, path("out.safetensors"), "--dtype", "f8"},
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
  EXPECT_NE(help.out.find("Exit status: 0"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("a set missing a shard included"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("a selection that leaves no tensor included"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("Example: safetensors-torch "), std::string::npos) << help.out;
  for (const std::string command : {"inspect", "verify", "convert", "diff"}) {
    SCOPED_TRACE(command);
    const Result r = run({command, "--help"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("Example: safetensors-torch " + command + " "), std::string::npos) << r.out;
  }

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
  EXPECT_TRUE(starts_with(r.out, "converted " + in + " (safetensors) -> " + out + ": 3 tensors, 36 bytes, "))
      << r.out;

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
  // Trouble: the stderr line names the input that cannot be read; with
  // --json, stdout has the failure's document too.
  const std::string missing = path("missing.safetensors");
  struct Trouble {
    std::string x, y, culprit;
    bool json;
  };
  for (const Trouble& t : std::vector<Trouble>{{a, missing, missing, true},
                                               {missing, a, missing, false},
                                               {a, broken, broken, false},
                                               {broken, a, broken, true},
                                               {a, dir_.path().string(), dir_.path().string(), false}}) {
    SCOPED_TRACE(t.x + " vs " + t.y);
    std::vector<std::string> args{"diff", t.x, t.y};
    if (t.json) args.push_back("--json");
    const Result r = run(args);
    ASSERT_TRUE(r.exited);
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_TRUE(starts_with(r.err, t.culprit + ": error: ")) << r.err;
    if (!t.json) {
      EXPECT_EQ(r.out, "");
      continue;
    }
    ASSERT_EQ(lines(r.out).size(), 1u) << r.out;
    const nlohmann::ordered_json j = nlohmann::ordered_json::parse(r.out);
    std::vector<std::string> keys;
    for (const auto& [key, value] : j.items()) keys.push_back(key);
    EXPECT_EQ(keys, (std::vector<std::string>{"a", "b", "file", "ok", "error", "code"}));
    EXPECT_EQ(j.at("a"), t.x);
    EXPECT_EQ(j.at("b"), t.y);
    EXPECT_EQ(j.at("file"), t.culprit);
    EXPECT_EQ(j.at("ok"), false);
    EXPECT_NE(j.at("error").get<std::string>().find(t.culprit), std::string::npos) << r.out;
    EXPECT_EQ(j.at("code"), t.culprit == missing ? "Io" : "InvalidCheckpoint");
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

// --- exit statuses ------------------------------------------------------------

// 0 success or equal, 1 invalid or different, 2 usage or trouble (a missing
// file, an I/O error), for every command: the tests of each command show most;
// these are the rest.
TEST_F(CliTest, ExitStatusIsOneForInvalidInputsAndTwoForTrouble) {
  const std::string good = write_sample("good.safetensors");
  const std::string corrupt = path("corrupt.safetensors");
  write_bytes(corrupt, read_bytes(good).substr(0, 20));
  const std::string missing = path("missing.safetensors");
  struct Case {
    std::vector<std::string> args;
    int code;
  };
  const std::vector<Case> cases = {
      {{"verify", corrupt, missing, good}, 2},  // the worst of its paths
      {{"convert", missing, path("out.safetensors")}, 2},
      {{"convert", good, path("no/such/folder/out.safetensors")}, 2},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::PrintToString(c.args));
    const Result r = run(c.args);
    ASSERT_TRUE(r.exited);
    EXPECT_EQ(r.code, c.code) << r.out << r.err;
  }
}

// --- sharded sets -------------------------------------------------------------

class CliSetTest : public CliTest {
 protected:
  // Six F32 [4] tensors (16 bytes each) and an I64 scalar, in shards of at
  // most 40 bytes: four shards.
  std::string write_set(const std::string& name) const {
    const std::string folder = path(name);
    fs::create_directories(folder);
    safetensors::NamedTensors tensors;
    for (int i = 0; i < 6; ++i) tensors.add("layer." + std::to_string(i) + ".w", at::full({4}, i, at::kFloat));
    tensors.add("step", at::full({}, 7, at::kLong));
    safetensors::save_sharded(tensors, folder, Metadata{{"note", "x"}},
                              safetensors::ShardedSaveOptions().max_shard_size(40));
    return folder;
  }
  // True when two files or sets hold the same tensors (names, dtypes, shapes,
  // values), each loaded in full: a check of a conversion's output that needs
  // no run of the tool.
  static ::testing::AssertionResult same_tensors(const std::string& a, const std::string& b) {
    const safetensors::ShardedOpen x(a), y(b);
    std::vector<std::string> xs = x.keys(), ys = y.keys();
    std::sort(xs.begin(), xs.end());
    std::sort(ys.begin(), ys.end());
    if (xs != ys) return ::testing::AssertionFailure() << a << " and " << b << " hold different names";
    for (const std::string& name : xs) {
      const at::Tensor s = x.get_tensor(name), t = y.get_tensor(name);
      if (s.scalar_type() != t.scalar_type() || !s.sizes().equals(t.sizes()) || !at::equal(s, t))
        return ::testing::AssertionFailure() << name << " differs between " << a << " and " << b;
    }
    return ::testing::AssertionSuccess();
  }
  // The same tensors in one file.
  std::string write_single(const std::string& name) const {
    const std::string p = path(name);
    safetensors::NamedTensors tensors;
    for (int i = 0; i < 6; ++i) tensors.add("layer." + std::to_string(i) + ".w", at::full({4}, i, at::kFloat));
    tensors.add("step", at::full({}, 7, at::kLong));
    safetensors::save_file(tensors, p);
    return p;
  }
};

TEST_F(CliSetTest, InspectListsASetWithTotalsPerShard) {
  const std::string folder = write_set("set");
  const safetensors::ShardedOpen set(folder);
  ASSERT_GT(set.shards().size(), 1u);
  // The folder as a table, the index as JSON.
  {
    const Result table = run({"inspect", folder});
    ASSERT_EQ(table.code, 0) << table.err;
    EXPECT_NE(table.out.find("SHARD"), std::string::npos) << table.out;
    EXPECT_NE(table.out.find("shards: " + std::to_string(set.shards().size())), std::string::npos) << table.out;
    EXPECT_NE(table.out.find("parameters: 25"), std::string::npos) << table.out;

    const std::string p = folder + "/model.safetensors.index.json";
    const Result r = run({"inspect", p, "--json"});
    ASSERT_EQ(r.code, 0) << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j.at("file"), p);
    EXPECT_EQ(j.at("tensors").size(), 7u);
    EXPECT_EQ(j.at("total_bytes"), 6 * 16 + 8);
    EXPECT_EQ(j.at("parameters"), 25);
    ASSERT_EQ(j.at("shards").size(), set.shards().size());
    std::uint64_t tensors = 0, bytes = 0;
    for (std::size_t i = 0; i < set.shards().size(); ++i) {
      const nlohmann::json& shard = j["shards"][i];
      EXPECT_EQ(shard.at("file"), fs::path(set.shards()[i].path()).filename().string());
      EXPECT_EQ(shard.at("tensors"), set.shards()[i].size());
      EXPECT_EQ(shard.at("bytes"), set.shards()[i].header().data_size());
      tensors += shard.at("tensors").get<std::uint64_t>();
      bytes += shard.at("bytes").get<std::uint64_t>();
    }
    EXPECT_EQ(tensors, 7u);
    EXPECT_EQ(bytes, 6u * 16 + 8);
    for (const nlohmann::json& t : j["tensors"])
      EXPECT_EQ(t.at("shard"), fs::path(set.shard_of(t.at("name")).path()).filename().string());
  }
}

TEST_F(CliSetTest, VerifyChecksEveryShardAndTheIndex) {
  const std::string folder = write_set("set");
  const safetensors::ShardedOpen set(folder);
  const std::size_t shards = set.shards().size();
  const Result ok = run({"verify", folder, folder + "/model.safetensors.index.json"});
  ASSERT_EQ(ok.code, 0) << ok.out << ok.err;
  EXPECT_EQ(ok.out, folder + ": ok (" + std::to_string(shards) + " shards, 7 tensors, 104 bytes)\n" + folder +
                        "/model.safetensors.index.json: ok (" + std::to_string(shards) +
                        " shards, 7 tensors, 104 bytes)\n");

  // A shard cut short: the line names that shard.
  const std::string last = set.shards().back().path();
  const std::string bytes = read_bytes(last);
  write_bytes(last, bytes.substr(0, bytes.size() - 2));
  const Result broken = run({"verify", folder});
  EXPECT_EQ(broken.code, 1) << broken.out;
  EXPECT_TRUE(starts_with(broken.out, last + ": error: ")) << broken.out;
  write_bytes(last, bytes);

  // An index listing a tensor its shard does not hold.
  const std::string index_path = folder + "/model.safetensors.index.json";
  nlohmann::json index = nlohmann::json::parse(read_bytes(index_path));
  index["weight_map"]["ghost"] = fs::path(last).filename().string();
  write_bytes(index_path, index.dump());
  const Result ghost = run({"verify", folder});
  EXPECT_EQ(ghost.code, 1) << ghost.out;
  EXPECT_NE(ghost.out.find("ghost"), std::string::npos) << ghost.out;
  EXPECT_NE(ghost.out.find("[InvalidIndex]"), std::string::npos) << ghost.out;
}

// A set one of whose shards is gone is an invalid set (exit 1), named by its
// index and the missing shard; diff cannot compare it (exit 2). With --json,
// the failure is a JSON document on stdout too.
TEST_F(CliSetTest, ASetMissingAShardIsInvalid) {
  const std::string folder = write_set("set");
  const std::string index = folder + "/model.safetensors.index.json";
  const safetensors::ShardedOpen set(folder);
  const std::string shard = fs::path(set.shards()[1].path()).filename().string();
  fs::remove(folder + "/" + shard);
  const std::string message = index + ": error: lists shard " + shard + ", which does not exist [InvalidIndex]";
  const Result verify = run({"verify", folder, index});
  EXPECT_EQ(verify.code, 1);
  EXPECT_EQ(verify.out, message + "\n" + message + "\n");
  const Result table = run({"inspect", folder});
  EXPECT_EQ(table.code, 1);
  EXPECT_EQ(table.err, message + "\n");
  const Result diff = run({"diff", index, folder});
  EXPECT_EQ(diff.code, 2);
  EXPECT_EQ(diff.err, message + "\n");
  const Result inspect = run({"inspect", "--json", index});
  EXPECT_EQ(inspect.code, 1);
  EXPECT_EQ(inspect.err, message + "\n");
  EXPECT_EQ(nlohmann::json::parse(inspect.out),
            nlohmann::json({{"file", index},
                            {"ok", false},
                            {"error", index + ": lists shard " + shard + ", which does not exist [InvalidIndex]"},
                            {"code", "InvalidIndex"}}));
}

TEST_F(CliSetTest, DiffComparesSetsWithSetsAndFiles) {
  const std::string folder = write_set("set");
  const std::string again = write_set("again");
  const std::string single = write_single("single.safetensors");
  for (const auto& [a, b] : std::vector<std::pair<std::string, std::string>>{
           {folder, again}, {folder, single}, {single, folder + "/model.safetensors.index.json"}}) {
    SCOPED_TRACE(a + " vs " + b);
    const Result r = run({"diff", a, b});
    EXPECT_EQ(r.code, 0) << r.out << r.err;
    EXPECT_TRUE(starts_with(r.out, "equal: 7 identical")) << r.out;
  }
  const std::string changed = path("changed.safetensors");
  safetensors::NamedTensors tensors;
  for (int i = 0; i < 6; ++i) tensors.add("layer." + std::to_string(i) + ".w", at::full({4}, i == 3 ? 9 : i, at::kFloat));
  safetensors::save_file(tensors, changed);
  const Result r = run({"diff", folder, changed});
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_NE(r.out.find("only in A: step"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("differs: layer.3.w: values differ: max abs difference 6"), std::string::npos) << r.out;
  const Result missing = run({"diff", folder, path("nothing-here/")});
  EXPECT_EQ(missing.code, 2) << missing.out << missing.err;
}

TEST_F(CliSetTest, ConvertMergesASetAndReshardsIt) {
  const std::string folder = write_set("set");
  const std::string merged = path("merged.safetensors");
  const Result m = run({"convert", folder, merged});
  ASSERT_EQ(m.code, 0) << m.err;
  EXPECT_EQ(safetensors::SafeOpen(merged).size(), 7u);
  EXPECT_EQ(safetensors::load_metadata(merged), (Metadata{{"format", "pt"}, {"note", "x"}}));
  EXPECT_TRUE(same_tensors(folder, merged));

  // Into a folder that does not exist yet, in shards of 2 x 16 bytes.
  const std::string resharded = path("new/resharded");
  const Result r = run({"convert", merged, resharded, "--shard-size", "32B"});
  ASSERT_EQ(r.code, 0) << r.err;
  const safetensors::ShardedOpen set(resharded);
  EXPECT_EQ(set.size(), 7u);
  for (const safetensors::SafeOpen& shard : set.shards()) EXPECT_LE(shard.header().data_size(), 32u);
  EXPECT_TRUE(same_tensors(resharded, folder));
}

// One file written over the index or a shard of the set being read would
// break that set: refused before anything is written.
TEST_F(CliSetTest, ConvertRefusesToWriteOverAFileOfItsInputSet) {
  const std::string folder = write_set("own");
  const safetensors::ShardedOpen before(folder);
  std::vector<std::string> targets{before.path()};
  for (const safetensors::SafeOpen& shard : before.shards()) targets.push_back(shard.path());
  ASSERT_GT(targets.size(), 2u);
  for (const std::string& target : targets) {
    SCOPED_TRACE(target);
    const Result r = run({"convert", folder, target});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("is a file of the sharded set being converted"), std::string::npos) << r.err;
    EXPECT_TRUE(same_tensors(folder, write_single("whole.safetensors")));
  }
  // Resharded into its own folder, through the set's switch, it stays whole.
  ASSERT_EQ(run({"convert", folder, folder, "--shard-size", "32B"}).code, 0);
  EXPECT_TRUE(same_tensors(folder, write_single("whole.safetensors")));
}

TEST_F(CliTest, ConvertShardSizeTakesDecimalAndBinaryUnits) {
  const std::string in = path("in.safetensors");
  safetensors::NamedTensors tensors;
  for (int i = 0; i < 8; ++i) tensors.add("t" + std::to_string(i), at::zeros({250}, at::kFloat));  // 1000 bytes
  safetensors::save_file(tensors, in);
  // 2kB holds two tensors per shard, 2KiB (2048) too, 1000 one.
  for (const auto& [size, shards] : std::vector<std::pair<std::string, std::size_t>>{
           {"2kB", 4}, {"2KB", 4}, {"2KiB", 4}, {"1000", 8}, {"1MB", 1}}) {
    SCOPED_TRACE(size);
    const std::string out = path("out-" + size);
    const Result r = run({"convert", in, out, "--shard-size", size});
    ASSERT_EQ(r.code, 0) << r.err;
    const safetensors::ShardedOpen set(out);
    EXPECT_EQ(set.shards().size(), shards);
  }
  // Zero, negative, no number, past 2^64 - 1 before and after the unit, not a
  // whole number, an unknown unit.
  for (const std::string bad : {"0MB", "-5", "GB", "18446744073709551616", "20000000TB", "1.5GB", "2GiBs"}) {
    SCOPED_TRACE(bad);
    const Result r = run({"convert", in, path("bad"), "--shard-size", bad});
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_NE(r.err.find("expected a size"), std::string::npos) << r.err;
  }
  EXPECT_FALSE(fs::exists(path("bad")));
}

// Resharding a safetensors file keeps its metadata, as every other rewrite of
// one does.
TEST_F(CliTest, ConvertShardSizeKeepsASafetensorsFilesMetadata) {
  const std::string in = path("meta.safetensors");
  safetensors::save_file({{"a", at::zeros({250})}, {"b", at::ones({250})}}, in,
                         safetensors::Metadata{{"format", "pt"}, {"epoch", "3"}});
  const std::string out = path("meta-sharded");
  const Result r = run({"convert", in, out, "--shard-size", "1kB"});
  ASSERT_EQ(r.code, 0) << r.err;
  const safetensors::ShardedOpen set(out);
  EXPECT_EQ(set.shards().size(), 2u);
  for (const safetensors::SafeOpen& shard : set.shards()) EXPECT_EQ(shard.metadata().at("epoch"), "3");
}

// --- JSON -----------------------------------------------------------------------

TEST_F(CliTest, VerifyJsonHasOneEntryPerPath) {
  const std::string good = write_sample("good.safetensors");
  const std::string empty = path("empty.safetensors");
  write_bytes(empty, "");
  const Result r = run({"verify", "--json", good, empty});
  EXPECT_EQ(r.code, 1);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("ok"), false);
  ASSERT_EQ(j.at("files").size(), 2u);
  EXPECT_EQ(j["files"][0], nlohmann::json({{"file", good}, {"ok", true}, {"shards", 0}, {"tensors", 3},
                                           {"bytes", 36}}));
  EXPECT_EQ(j["files"][1].at("file"), empty);
  EXPECT_EQ(j["files"][1].at("ok"), false);
  EXPECT_EQ(j["files"][1].at("code"), "HeaderTooSmall");
  EXPECT_NE(j["files"][1].at("error").get<std::string>().find("[HeaderTooSmall]"), std::string::npos);

  const Result ok = run({"verify", "--json", good});
  EXPECT_EQ(ok.code, 0);
  EXPECT_EQ(nlohmann::json::parse(ok.out).at("ok"), true);
}

TEST_F(CliTest, DiffJsonListsEveryDifference) {
  const std::string a = write_sample("a.safetensors");
  const std::string b = path("b.safetensors");
  safetensors::save_file({{"weight", at::arange(6, at::kFloat).reshape({3, 2})}, {"extra", at::zeros({1})}}, b);
  const Result r = run({"diff", a, b, "--json"});
  EXPECT_EQ(r.code, 1);
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("a"), a);
  EXPECT_EQ(j.at("b"), b);
  EXPECT_EQ(j.at("ok"), true);  // compared; "equal" says how
  EXPECT_EQ(j.at("equal"), false);
  EXPECT_EQ(j.at("identical"), 0);
  EXPECT_EQ(j.at("different"), nlohmann::json::parse(R"([{"name":"weight","detail":"shape [2, 3] vs [3, 2]"}])"));
  EXPECT_EQ(j.at("only_in_a"), nlohmann::json({"step", "mask"}));  // in file order
  EXPECT_EQ(j.at("only_in_b"), nlohmann::json({"extra"}));

  const Result same = run({"diff", a, a, "--json"});
  EXPECT_EQ(same.code, 0);
  EXPECT_EQ(nlohmann::json::parse(same.out).at("equal"), true);
}

// inspect --json prints one JSON document on stdout when it fails too, beside
// the stderr line and the exit status (diff's: in its test of exit statuses).
TEST_F(CliTest, JsonFailuresAreJsonDocuments) {
  const std::string good = write_sample("good.safetensors");
  const std::string corrupt = path("corrupt.safetensors");
  write_bytes(corrupt, read_bytes(good).substr(0, 20));
  const std::string missing = path("missing.safetensors");
  using Members = std::vector<std::pair<std::string, std::string>>;
  struct Case {
    std::vector<std::string> args;
    int code;
    Members head;  // the members before "ok", in order
    std::string error_code, file;
  };
  const std::vector<Case> cases = {
      {{"inspect", "--json", missing}, 2, {{"file", missing}}, "Io", missing},
      {{"inspect", "--json", corrupt}, 1, {{"file", corrupt}}, "InvalidHeaderLength", corrupt},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::PrintToString(c.args));
    const Result r = run(c.args);
    EXPECT_EQ(r.code, c.code) << r.err;
    EXPECT_TRUE(starts_with(r.err, c.file + ": error: ")) << r.err;
    ASSERT_EQ(lines(r.out).size(), 1u) << r.out;
    const nlohmann::ordered_json j = nlohmann::ordered_json::parse(r.out);
    Members members;
    for (const auto& [key, value] : j.items())
      members.emplace_back(key, value.is_string() ? value.get<std::string>() : value.dump());
    ASSERT_EQ(members.size(), c.head.size() + 3) << r.out;
    EXPECT_EQ(Members(members.begin(), members.begin() + c.head.size()), c.head);
    EXPECT_EQ(members[c.head.size()], (std::pair<std::string, std::string>{"ok", "false"}));
    EXPECT_EQ(members[c.head.size() + 1].first, "error");
    EXPECT_NE(members[c.head.size() + 1].second.find(c.file), std::string::npos) << r.out;
    EXPECT_EQ(members[c.head.size() + 2].first, "code");
    if (!c.error_code.empty()) {
      EXPECT_EQ(members[c.head.size() + 2].second, c.error_code);
    }
  }
}

// --- inspect totals, aliases, selection ------------------------------------------

TEST_F(CliTest, InspectCountsParametersPerDtypeAndListsAliases) {
  // "tied" is recorded in the metadata as an alias of "weight".
  const std::string p = write_sample("a.safetensors", Metadata{{"format", "pt"}, {"tied", "weight"}});
  const Result r = run({"inspect", p, "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("parameters"), 6 + 1 + 4);
  EXPECT_EQ(j.at("dtypes"), nlohmann::json::parse(R"({"BOOL":{"tensors":1,"parameters":4,"bytes":4},
      "F32":{"tensors":1,"parameters":6,"bytes":24},"I64":{"tensors":1,"parameters":1,"bytes":8}})"));
  EXPECT_EQ(j.at("aliases"), nlohmann::json({{"tied", "weight"}}));

  const Result table = run({"inspect", p});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.out.find("parameters: 11\n"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("  tied -> weight\n"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("  F32   1 tensors  6 parameters  24 bytes\n"), std::string::npos) << table.out;
}

TEST_F(CliTest, InspectTensorsGlobFiltersTheListingAcrossDots) {
  const std::string p = path("model.safetensors");
  safetensors::save_file({{"h.0.attn.q.weight", at::zeros({2})},
                          {"h.0.mlp.weight", at::zeros({3})},
                          {"h.1.attn.q.weight", at::zeros({4})},
                          {"lm_head.weight", at::zeros({5})}},
                         p);
  const Result r = run({"inspect", p, "--json", "--tensors", "*.attn.*", "--tensors", "lm_head.weight"});
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  std::vector<std::string> names;
  for (const nlohmann::json& t : j.at("tensors")) names.push_back(t.at("name"));
  EXPECT_EQ(names, (std::vector<std::string>{"h.0.attn.q.weight", "h.1.attn.q.weight", "lm_head.weight"}));
  EXPECT_EQ(j.at("parameters"), 2 + 4 + 5);

  const Result none = run({"inspect", p, "--tensors", "nothing*"});
  ASSERT_EQ(none.code, 0) << none.err;
  EXPECT_NE(none.out.find("tensors: 0 matching"), std::string::npos) << none.out;
}

// --- convert: selection, renaming, dtype ------------------------------------------

TEST_F(CliTest, ConvertDtypeCastsFloatingPointTensorsOnly) {
  const std::string in = write_sample("in.safetensors");  // F32 weight, I64 step, BOOL mask
  const std::string out = path("out.safetensors");
  const Result r = run({"convert", in, out, "--dtype", "bf16"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("  cast: 1 F32 -> BF16 (other tensors keep their dtype)\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.err, "");  // no value overflowed
  const safetensors::SafeOpen file(out);
  EXPECT_EQ(file.info("weight").dtype, Dtype::BF16);
  EXPECT_EQ(file.info("step").dtype, Dtype::I64);
  EXPECT_EQ(file.info("mask").dtype, Dtype::BOOL);
  EXPECT_TRUE(at::equal(file.get_tensor("weight").to(at::kFloat), at::arange(6, at::kFloat).reshape({2, 3})));
  EXPECT_EQ(safetensors::load_metadata(out), (Metadata{{"format", "pt"}}));
}

TEST_F(CliTest, ConvertSelectsAndRenamesTensors) {
  const std::string in = path("in.safetensors");
  safetensors::save_file({{"module.enc.weight", at::zeros({2})},
                          {"module.enc.bias", at::zeros({1})},
                          {"module.dec.weight", at::zeros({3})},
                          {"head", at::zeros({4})}},
                         in, Metadata{{"format", "pt"}, {"module.tied", "module.enc.weight"}});
  const std::string out = path("out.safetensors");
  const Result r = run({"convert", in, out, "--include", "module.*", "--include", "head", "--exclude", "*.bias",
                        "--strip-prefix", "module.", "--add-prefix", "model."});
  ASSERT_EQ(r.code, 0) << r.err;
  const safetensors::SafeOpen file(out);
  EXPECT_EQ(file.keys(), (std::vector<std::string>{"model.dec.weight", "model.enc.weight", "model.head"}));
  // The alias follows its tensor's new name.
  EXPECT_EQ(file.metadata(), (Metadata{{"format", "pt"}, {"model.tied", "model.enc.weight"}}));
  EXPECT_NE(r.out.find("  left out: 1 (module.enc.bias)\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("  renamed: 4\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.err, "");  // every pattern matched

  // Two names made one is refused, naming both, and nothing is written.
  const std::string clash = path("clash.safetensors");
  safetensors::save_file({{"a.x", at::zeros({1})}, {"x", at::zeros({1})}}, in);
  const Result c = run({"convert", in, clash, "--strip-prefix", "a."});
  EXPECT_EQ(c.code, 1);
  EXPECT_TRUE(starts_with(c.err, in + ": error: tensor 'x': both 'a.x' and 'x' would take this name")) << c.err;
  EXPECT_FALSE(fs::exists(clash));
}

TEST_F(CliTest, ConvertDtypeKeepsFloatingDtypesLibTorchCannotCast) {
  // A file whose F8 tensor this LibTorch may lack keeps it, and says so.
  const std::string in = write_f8_sample("f8.safetensors");
  const std::string out = path("out.safetensors");
  const Result r = run({"convert", in, out, "--dtype", "f16"});
  ASSERT_EQ(r.code, 0) << r.err;
  const safetensors::SafeOpen file(out, safetensors::LoadOptions().unsupported_as_bytes(true));
  EXPECT_EQ(file.info("w").dtype, Dtype::F16);
  if (!safetensors::to_torch_dtype(Dtype::F8_E4M3)) {
    EXPECT_EQ(file.info("f8").dtype, Dtype::F8_E4M3);
    EXPECT_EQ(tensor_bytes(out, "f8"), std::string("\x00\x38\x7e\x80\xb8\xff", 6));
    EXPECT_NE(r.out.find("cannot convert, kept: f8"), std::string::npos) << r.out;
  } else {
    EXPECT_EQ(file.info("f8").dtype, Dtype::F16);
  }
}

// A selection that leaves nothing is a usage error, refused before anything
// is written, for a safetensors input as for a torch.save one.
TEST_F(CliTest, ConvertRefusesASelectionThatLeavesNothing) {
  const std::string in = write_sample("in.safetensors");
  const std::string pickle = std::string(SAFETENSORS_TEST_DATA_DIR) + "/pickle/dtypes.pt";
  const std::string out = path("out.safetensors");
  struct Case {
    std::string input;
    std::vector<std::string> args;
    std::string selection;
  };
  for (const Case& c : std::vector<Case>{{in, {"--include", "nothing*", "--include", "x"}, "include 'nothing*', 'x'"},
                                         {in, {"--include", "weight", "--exclude", "w*", "--shard-size", "1kB"},
                                          "include 'weight'; exclude 'w*'"},
                                         {pickle, {"--exclude", "*"}, "exclude '*'"}}) {
    std::vector<std::string> args{"convert", c.input, out};
    args.insert(args.end(), c.args.begin(), c.args.end());
    SCOPED_TRACE(::testing::PrintToString(args));
    const Result r = run(args);
    EXPECT_EQ(r.code, 2) << r.out << r.err;
    EXPECT_TRUE(starts_with(r.err, c.input + ": error: the selection (" + c.selection + ") leaves none of the "))
        << r.err;
    EXPECT_EQ(r.out, "");
    EXPECT_FALSE(fs::exists(out));
  }
}

// A pattern that matches nothing while others do is most likely mistyped: the
// conversion goes on, and says so on stderr.
TEST_F(CliTest, ConvertWarnsOfPatternsThatMatchNothing) {
  const std::string in = write_sample("in.safetensors");
  const std::string out = path("out.safetensors");
  const Result r = run({"convert", in, out, "--include", "weight", "--include", "wieght*", "--exclude", "mask",
                        "--exclude", "msak"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(safetensors::SafeOpen(out).keys(), (std::vector<std::string>{"weight"}));
  EXPECT_EQ(r.err, "warning: --include 'wieght*' matches no tensor of " + in + "\n" +
                       "warning: --exclude 'msak' matches no tensor of " + in + "\n");
  // ConvertSelectsAndRenamesTensors: no warning when every pattern matches.
}

// --strip-prefix never makes a name empty, and no renaming makes two names one,
// aliases included: refused naming the tensors, nothing written.
TEST_F(CliTest, ConvertRefusesNamesTheRenamingMakesEmptyOrOne) {
  const std::string in = path("in.safetensors");
  const std::string out = path("out.safetensors");
  safetensors::save_file({{"module.", at::zeros({1})}, {"module.w", at::zeros({1})}}, in);
  const Result empty = run({"convert", in, out, "--strip-prefix", "module."});
  EXPECT_EQ(empty.code, 1) << empty.err;
  EXPECT_EQ(empty.err, in + ": error: tensor 'module.': removing the prefix 'module.' would leave it no name "
                            "[InvalidArgument]\n");
  EXPECT_FALSE(fs::exists(out));

  // "a.tied" is an alias of "a.w" in the metadata; stripped, it meets "tied".
  safetensors::save_file({{"a.w", at::zeros({1})}, {"tied", at::ones({1})}}, in,
                         Metadata{{"format", "pt"}, {"a.tied", "a.w"}});
  const Result alias = run({"convert", in, out, "--strip-prefix", "a."});
  EXPECT_EQ(alias.code, 1) << alias.err;
  EXPECT_NE(alias.err.find("tensor 'tied': both '"), std::string::npos) << alias.err;
  EXPECT_NE(alias.err.find("'a.tied'"), std::string::npos) << alias.err;
  EXPECT_FALSE(fs::exists(out));
}

// A cast that turns finite values into infinities says which tensors, and how
// many values, on stderr; one that loses none says nothing.
TEST_F(CliTest, ConvertDtypeWarnsOfValuesThatOverflow) {
  const std::string in = path("in.safetensors");
  const std::string out = path("out.safetensors");
  safetensors::save_file({{"big", at::tensor({1e300, -1e300, 1.0}, at::kDouble)},
                          {"fine", at::tensor({1.0, 2.0}, at::kDouble)},
                          {"mask", at::tensor({-3.4e38f, 0.0f}, at::kFloat)}},
                         in);
  const Result r = run({"convert", in, out, "--dtype", "f16"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "warning: finite values beyond the range of F16 became infinite: big (2 values), mask (1 value)\n");
  EXPECT_TRUE(at::isinf(safetensors::SafeOpen(out).get_tensor("big")).any().item<bool>());
  // ConvertDtypeCastsFloatingPointTensorsOnly: no warning for a cast that loses nothing.
}

// --- the benchmark's command line ----------------------------------------------

#ifdef SAFETENSORS_BENCH_PATH
TEST_F(CliTest, BenchHelpPrintsItsUsageAndRunsNothing) {
  const Result help = safetensors::test::run_program(SAFETENSORS_BENCH_PATH, {"--help"}, dir_.path().string());
  ASSERT_TRUE(help.exited);
  EXPECT_EQ(help.code, 0) << help.err;
  EXPECT_NE(help.out.find("Usage: bench"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("--cold"), std::string::npos) << help.out;
  EXPECT_NE(help.out.find("Example: bench "), std::string::npos) << help.out;
  EXPECT_EQ(help.out.find("=="), std::string::npos) << help.out;  // no workload ran
  const Result bad = safetensors::test::run_program(SAFETENSORS_BENCH_PATH, {"--reps", "0"}, dir_.path().string());
  EXPECT_EQ(bad.code, 2) << bad.out << bad.err;
}

TEST_F(CliTest, BenchColdTimesEachLoadInAFreshProcess) {
  const std::string p = write_sample("a.safetensors");
  const Result r = safetensors::test::run_program(
      SAFETENSORS_BENCH_PATH, {"--cold", "--file-pages-only", "--file", p, "--reps", "1", "--dir", dir_.path().string()},
      dir_.path().string());
  ASSERT_TRUE(r.exited);
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  for (const std::string load : {"load_file+touch", "load_file copy(true)", "read() into fresh memory",
                                 "torch::load (InputArchive)"})
    EXPECT_NE(r.out.find("\n" + load + " "), std::string::npos) << load << " missing in\n" << r.out;
  EXPECT_FALSE(fs::exists(path("bench-cold.pt")));
}
#endif

}  // namespace
