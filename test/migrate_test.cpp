// Tests of reading torch.save files and TorchScript archives (torch::save,
// torch.jit.save), converting them to safetensors and comparing checkpoints.
// Each torch.save fixture comes with the tensors Python's torch.load returned
// for it, each TorchScript fixture with its module's state_dict
// (data/pickle/make_fixtures.py); the same script is run again at test time
// when Debian's python3-torch is there.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/nn.h>
#include <torch/serialize.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "safetensors/safetensors.hpp"
#include "safetensors/migrate.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
namespace st = safetensors;
using st::CheckpointFormat;
using st::ErrorCode;
using st::test::bitwise_equal;
using st::test::error_code_of;
using st::test::TempDir;

const std::string kData = SAFETENSORS_TEST_DATA_DIR;
const std::string kFixtures = kData + "/pickle/";
constexpr const char* kPython = "/usr/bin/python3";

const std::vector<std::string> kFixtureNames = {
    "state_dict", "plain_dict", "training", "views", "strided", "dtypes",
    "protocol2", "protocol3", "protocol4", "protocol5", "lone_tensor",
    "legacy", "legacy_state_dict", "legacy_views", "legacy_dtypes",
    "legacy_protocol3", "legacy_protocol4", "legacy_protocol5", "dotted_keys", "legacy_many",
    "sizes_and_dtypes"};

// torch.jit.save of a scripted and of a traced module.
const std::vector<std::string> kTorchScriptNames = {"scripted", "traced"};

// The checkpoint holds exactly the tensors (bitwise) and non-tensor entries
// that Python's torch.load gave for it.
void expect_matches_python(const std::string& dir, const std::string& name) {
  SCOPED_TRACE(name);
  const st::Checkpoint ckpt = st::read_checkpoint(dir + name + ".pt");
  EXPECT_EQ(ckpt.format, name.rfind("legacy", 0) == 0 ? CheckpointFormat::TorchLegacy : CheckpointFormat::TorchZip);
  const st::TensorDict expected = st::load_file(dir + name + ".expected.safetensors");
  ASSERT_EQ(ckpt.tensors.size(), expected.size());
  for (const auto& item : expected) {
    const at::Tensor* got = ckpt.tensors.find(item.key());
    ASSERT_NE(got, nullptr) << item.key();
    EXPECT_TRUE(bitwise_equal(*got, item.value())) << item.key();
  }
  const auto json = nlohmann::json::parse(st::test::read_bytes(dir + name + ".expected.json"));
  std::vector<std::string> others;
  for (const auto& entry : ckpt.non_tensors) others.push_back(entry.name);
  EXPECT_EQ(others, json["non_tensors"].get<std::vector<std::string>>());
}

// The archive reads as the module's state_dict: the same names in the same
// order, bitwise the same tensors, with either backend.
void expect_state_dict(const std::string& dir, const std::string& name) {
  SCOPED_TRACE(name);
  const st::TensorDict expected = st::load_file(dir + name + ".expected.safetensors");
  for (st::Backend backend : {st::Backend::Mmap, st::Backend::Pread}) {
    const st::Checkpoint ckpt = st::read_checkpoint(dir + name + ".pt", st::CheckpointOptions().backend(backend));
    EXPECT_EQ(ckpt.format, CheckpointFormat::TorchArchive);
    EXPECT_EQ(ckpt.tensors.keys(), expected.keys());
    for (const auto& item : expected) {
      const at::Tensor* got = ckpt.tensors.find(item.key());
      ASSERT_NE(got, nullptr) << item.key();
      EXPECT_TRUE(bitwise_equal(*got, item.value())) << item.key();
    }
  }
}

TEST(Migrate, CommittedFixturesMatchPython) {
  for (const std::string& name : kFixtureNames) expect_matches_python(kFixtures, name);
  for (const std::string& name : kTorchScriptNames) expect_state_dict(kFixtures, name);
}

bool python_has_torch() {
  return std::system((std::string(kPython) + " -c 'import torch' >/dev/null 2>&1").c_str()) == 0;
}

TEST(Migrate, FreshPythonFilesMatchPython) {
  if (!python_has_torch())
    GTEST_SKIP() << kPython << " cannot import torch (apt-get install python3-torch); "
                 << "the committed fixtures are still checked";
  TempDir dir;
  const std::string command = std::string(kPython) + " " + kFixtures + "make_fixtures.py " + dir.path().string();
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  for (const std::string& name : kFixtureNames) expect_matches_python(dir.path().string() + "/", name);
  for (const std::string& name : kTorchScriptNames) expect_state_dict(dir.path().string() + "/", name);
  EXPECT_THROW(st::read_checkpoint(dir.file("hostile_reduce.pt")), st::Error);
  EXPECT_FALSE(fs::exists(dir.file("hostile_reduce_ran")));
  // torch.jit.load would hang in this module's __setstate__; it is read as data.
  const st::Checkpoint loops = st::read_checkpoint(dir.file("hostile_setstate.pt"));
  EXPECT_EQ(loops.tensors.keys(), std::vector<std::string>{"0"});
}

// torch.save of nn.Sequential(*[nn.Linear(512, 512)] * 12).state_dict(): 24
// names of one 1 MB weight and one bias, in a 1 MB file. Its tensors are
// written once, so they count once against the bound on how far views may
// expand a file (counted once per name, 12 MB went past its 9.4 MB).
TEST(Migrate, TiedWeightsCountOnce) {
  const std::string path = kFixtures + "tied_sequential.pt";
  const st::Checkpoint ckpt = st::read_checkpoint(path);
  ASSERT_EQ(ckpt.tensors.size(), 24u);
  EXPECT_EQ(ckpt.aliases.size(), 22u);
  EXPECT_EQ(ckpt.aliases.at("11.weight"), "0.weight");
  TempDir dir;
  const st::ConvertReport summary = st::convert_checkpoint(path, dir.file("tied.safetensors"));
  EXPECT_EQ(summary.tensors, 2u);
  EXPECT_EQ(summary.bytes, (512u * 512 + 512) * 4);
  const st::TensorDict out = st::load_file(dir.file("tied.safetensors"));
  EXPECT_EQ(out.keys(), (std::vector<std::string>{"0.bias", "0.weight"}));
  EXPECT_TRUE(bitwise_equal(out["0.weight"], ckpt.tensors["7.weight"]));
}

// TorchScript's modules are records of their attributes: a scripted module
// whose __setstate__ never returns (written by torch.jit.save) is read and
// converted without running it; its state is what its __getstate__ saved.
TEST(Migrate, ReadsATorchScriptModuleWithoutRunningIt) {
  TempDir dir;
  const st::ConvertReport summary = st::convert_checkpoint(kFixtures + "hostile_setstate.pt", dir.file("x.safetensors"));
  EXPECT_EQ(summary.format, CheckpointFormat::TorchArchive);
  EXPECT_TRUE(bitwise_equal(st::load_file(dir.file("x.safetensors"))["0"], at::ones({3})));
  // What it saved besides: its `training` flag, by position, reported and not kept.
  ASSERT_EQ(summary.non_tensors.size(), 1u);
  EXPECT_EQ(summary.non_tensors[0].description, "bool True");
  EXPECT_TRUE(summary.metadata_keys.empty());
  EXPECT_EQ(st::SafeOpen(dir.file("x.safetensors")).metadata(), (st::Metadata{{"format", "pt"}}));
}

// Detection asks the safetensors parser: whatever it accepts is a safetensors
// file (a header that starts with whitespace, or is padded after the object),
// and a file that only looks like one by its length is told the parser's reason.
TEST(Migrate, DetectionAcceptsWhatTheParserAccepts) {
  TempDir dir;
  const std::string data(8, '\0');
  for (const std::string& json : {std::string(R"( {"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})"),
                                  std::string("\n\t\r {\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}  "),
                                  std::string(R"({"__metadata__":null,"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})")}) {
    SCOPED_TRACE(json);
    const std::string path = dir.file("w.safetensors");
    st::test::write_bytes(path, st::test::make_file(json, data));
    ASSERT_NO_THROW(st::parse_header(st::test::read_bytes(path).data(), fs::file_size(path)));
    EXPECT_EQ(st::detect_format(path), CheckpointFormat::Safetensors);
    EXPECT_EQ(st::read_checkpoint(path).tensors.keys(), std::vector<std::string>{"w"});
    st::convert_checkpoint(path, dir.file("out.safetensors"));
    EXPECT_TRUE(st::diff_checkpoints(path, dir.file("out.safetensors")).equal());
  }
  // Every test vector the parser accepts is detected as safetensors.
  std::size_t accepted = 0;
  for (const auto& entry : fs::recursive_directory_iterator(kData + "/vectors")) {
    if (entry.path().extension() != ".safetensors") continue;
    const std::string bytes = st::test::read_bytes(entry.path().string());
    try {
      st::parse_header(bytes.data(), bytes.size());
    } catch (const st::Error&) {
      continue;
    }
    ++accepted;
    EXPECT_EQ(st::detect_format(entry.path().string()), CheckpointFormat::Safetensors) << entry.path();
  }
  EXPECT_GT(accepted, 5u);
  // A plausible length with a broken header: the parser's own error.
  const std::string broken = dir.file("broken.bin");
  st::test::write_bytes(broken, st::test::make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", data));
  EXPECT_EQ(st::detect_format(broken), CheckpointFormat::Unknown);
  EXPECT_EQ(error_code_of([&] { st::read_checkpoint(broken); }), ErrorCode::TensorInvalidInfo);
}

TEST(Migrate, DetectsFormatsByContent) {
  TempDir dir;
  const std::string renamed = dir.file("weights.safetensors");
  fs::copy_file(kFixtures + "state_dict.pt", renamed);
  EXPECT_EQ(st::detect_format(renamed), CheckpointFormat::TorchZip);
  EXPECT_EQ(st::detect_format(kFixtures + "legacy.pt"), CheckpointFormat::TorchLegacy);
  EXPECT_EQ(st::detect_format(kFixtures + "state_dict.expected.safetensors"), CheckpointFormat::Safetensors);
  st::test::write_bytes(dir.file("text"), "hello");
  EXPECT_EQ(st::detect_format(dir.file("text")), CheckpointFormat::Unknown);
}

// Views of one storage stay views of one tensor in the legacy layout too, so
// a conversion keeps one copy and records the alias.
TEST(Migrate, LegacyViewsShareTheirStorage) {
  const st::Checkpoint ckpt = st::read_checkpoint(kFixtures + "legacy_views.pt");
  EXPECT_EQ(ckpt.tensors["base"].storage().unsafeGetStorageImpl(),
            ckpt.tensors["rows"].storage().unsafeGetStorageImpl());
  EXPECT_EQ(ckpt.aliases.at("same"), "base");
}

// What can go wrong in the legacy layout's storage table, each refused with
// the file and the storage named.
TEST(Migrate, RefusesBrokenLegacyFiles) {
  TempDir dir;
  const std::string good = st::test::read_bytes(kFixtures + "legacy.pt");  // {"w": 3 F32}: count, 12 bytes
  auto refusal = [&](const std::string& bytes) {
    st::test::write_bytes(dir.file("broken.pt"), bytes);
    try {
      st::read_checkpoint(dir.file("broken.pt"));
    } catch (const st::Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidCheckpoint) << e.what();
      EXPECT_NE(std::string(e.what()).find("broken.pt"), std::string::npos) << e.what();
      return std::string(e.what());
    }
    ADD_FAILURE() << "accepted";
    return std::string();
  };
  EXPECT_NE(refusal(good.substr(0, good.size() - 1)).find("the file ends inside storage"), std::string::npos);
  EXPECT_NE(refusal(good.substr(0, good.size() - 14)).find("the file ends before storage"), std::string::npos);
  std::string recount = good;
  recount[good.size() - 20] = 4;  // the element count: 4 where the tensor says 3
  EXPECT_NE(refusal(recount).find("holds 4 elements, its tensors say 3"), std::string::npos);
  std::string big_endian = good;
  const std::size_t flag = big_endian.find("little_endian");
  ASSERT_NE(flag, std::string::npos);
  const std::size_t value = big_endian.find('\x88', flag);  // NEWTRUE, after a memo opcode
  ASSERT_NE(value, std::string::npos);
  big_endian[value] = '\x89';  // NEWFALSE
  EXPECT_NE(refusal(big_endian).find("big-endian"), std::string::npos);
  std::string version = good;
  const std::size_t at = version.find("M\xe9\x03");  // BININT2 1001
  ASSERT_NE(at, std::string::npos);
  version[at + 1] = '\xea';
  EXPECT_NE(refusal(version).find("protocol version 1002"), std::string::npos);
}

TEST(Migrate, SelectsANestedStateDict) {
  const st::Checkpoint model = st::read_checkpoint(kFixtures + "training.pt", st::CheckpointOptions().key({"model"}));
  const st::Checkpoint plain = st::read_checkpoint(kFixtures + "state_dict.pt");
  ASSERT_EQ(model.tensors.keys(), plain.tensors.keys());
  for (const auto& item : plain.tensors) EXPECT_TRUE(bitwise_equal(model.tensors[item.key()], item.value()));
  EXPECT_TRUE(model.non_tensors.empty());
  EXPECT_EQ(error_code_of([] { st::read_checkpoint(kFixtures + "training.pt", st::CheckpointOptions().key({"nope"})); }),
            ErrorCode::TensorNotFound);
  EXPECT_EQ(error_code_of([] { st::read_checkpoint(kFixtures + "training.pt", st::CheckpointOptions().key({"epoch", "x"})); }),
            ErrorCode::TensorNotFound);
}

// torch.Size and dtypes, which torch.load(weights_only=True) accepts, are
// read as data and reported.
TEST(Migrate, ReadsSizesAndDtypesAsData) {
  const st::Checkpoint ckpt = st::read_checkpoint(kFixtures + "sizes_and_dtypes.pt");
  EXPECT_EQ(ckpt.tensors.keys(), std::vector<std::string>{"w"});
  std::map<std::string, std::string> others;
  for (const auto& entry : ckpt.non_tensors) others[entry.name] = entry.description;
  EXPECT_EQ(others, (std::map<std::string, std::string>{{"shape", "torch.Size([2, 3])"},
                                                        {"config", "dict of 2"}}));
}

// Every name the flattener makes can be selected: through lists and tuples
// by position as well as through dicts by key.
TEST(Migrate, SelectsThroughListsAndTuples) {
  TempDir dir;
  const std::string path = dir.file("lists.pt");
  c10::impl::GenericDict inner(c10::StringType::get(), c10::TensorType::get());
  inner.insert("u", at::full({2}, 3.0));
  c10::impl::GenericDict root(c10::StringType::get(), c10::AnyType::get());
  root.insert("l", c10::List<at::Tensor>({at::full({2}, 1.0), at::full({2}, 2.0)}));
  root.insert("t", c10::ivalue::Tuple::create({at::full({1}, 4.0), inner}));
  const std::vector<char> bytes = torch::pickle_save(root);
  st::test::write_bytes(path, std::string(bytes.begin(), bytes.end()));
  EXPECT_EQ(st::read_checkpoint(path).tensors.keys(), (std::vector<std::string>{"l.0", "l.1", "t.0", "t.1.u"}));
  const st::Checkpoint second = st::read_checkpoint(path, st::CheckpointOptions().key({"l", "1"}));
  ASSERT_EQ(second.tensors.keys(), std::vector<std::string>{"tensor"});
  EXPECT_TRUE(bitwise_equal(second.tensors["tensor"], at::full({2}, 2.0)));
  EXPECT_EQ(st::read_checkpoint(path, st::CheckpointOptions().key({"t", "1"})).tensors.keys(),
            std::vector<std::string>{"u"});
  EXPECT_EQ(st::read_checkpoint(path, st::CheckpointOptions().key({"t", "1", "u"})).tensors.size(), 1u);
  for (const std::string bad : {"2", "01", "+1", "-1", "x", ""}) {
    const st::Error e = [&] {
      try {
        st::read_checkpoint(path, st::CheckpointOptions().key({"l", bad}));
      } catch (const st::Error& e) {
        return e;
      }
      return st::Error(ErrorCode::Io, "", "", "accepted");
    }();
    EXPECT_EQ(e.code(), ErrorCode::TensorNotFound) << bad;
    EXPECT_NE(std::string(e.what()).find("(positions: 0 to 1)"), std::string::npos) << e.what();
  }
}

TEST(Migrate, FindsAliasesAndOverlappingViews) {
  const st::Checkpoint ckpt = st::read_checkpoint(kFixtures + "views.pt");
  EXPECT_EQ(ckpt.aliases, (std::map<std::string, std::string>{{"same", "base"}}));
  // Everything overlaps `base` except nothing: chunk0 and chunk1 are disjoint
  // from each other but not from base.
  EXPECT_EQ(ckpt.copied_views,
            (std::vector<std::string>{"base", "rows", "transposed", "columns", "chunk0", "chunk1"}));
}

// The name of release 0.1 compiles, with a deprecation warning, and is the report.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
TEST(Migrate, TheNameOfRelease01StillWorks) {
  static_assert(std::is_same_v<st::ConvertSummary, st::ConvertReport>);
  TempDir dir;
  const st::ConvertSummary summary = st::convert_checkpoint(kFixtures + "views.pt", dir.file("views.safetensors"));
  EXPECT_EQ(summary.tensors, 6u);
}
#pragma GCC diagnostic pop

// An alias is recorded under its own name as a metadata key; one whose name
// is already a key ("format", or one the caller gives) is written as a tensor
// instead, so that no metadata is overwritten.
TEST(Migrate, AliasesNeverOverwriteMetadata) {
  TempDir dir;
  const std::string in = dir.file("tied.pt");
  const at::Tensor t = at::arange(4, at::kFloat);
  c10::impl::GenericDict root(c10::StringType::get(), c10::TensorType::get());
  root.insert("w", t);
  root.insert("format", t);
  root.insert("note", t);
  root.insert("same", t);
  const std::vector<char> bytes = torch::pickle_save(root);
  st::test::write_bytes(in, std::string(bytes.begin(), bytes.end()));
  ASSERT_EQ(st::read_checkpoint(in).aliases.size(), 3u);

  const std::string out = dir.file("tied.safetensors");
  const st::ConvertReport summary =
      st::convert_checkpoint(in, out, st::ConvertOptions().metadata({{"note", "kept"}}));
  EXPECT_EQ(summary.aliases, (std::map<std::string, std::string>{{"same", "w"}}));
  EXPECT_EQ(st::load_metadata(out),
            (st::Metadata{{"format", "pt"}, {"note", "kept"}, {"same", "w"}}));
  EXPECT_EQ(st::load_file(out).keys(), (std::vector<std::string>{"format", "note", "w"}));
  // Read back, the names are those of the input: "format" is not an alias.
  const st::Checkpoint back = st::read_checkpoint(out);
  std::vector<std::string> names = back.tensors.keys();
  for (const auto& alias : back.aliases) names.push_back(alias.first);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"format", "note", "same", "w"}));
  EXPECT_TRUE(st::diff_checkpoints(in, out).equal());
  // From a safetensors file, whose aliases are names only: the alias that
  // meets a metadata key is still written, as a copy of its tensor.
  const std::string again = dir.file("again");
  const st::ConvertReport report = st::convert_checkpoint(
      out, again, st::ConvertOptions().metadata({{"same", "user"}}).max_shard_size(1000));
  EXPECT_TRUE(report.aliases.empty());
  const st::ShardedOpen written(again);
  EXPECT_TRUE(written.contains("same"));
  EXPECT_EQ(written.metadata().at("same"), "user");
  EXPECT_TRUE(st::diff_checkpoints(in, written.shards().front().path()).equal());
  // A tensor named "pt" is not read as the target of a "format" alias.
  const std::string pt = dir.file("pt.safetensors");
  st::save_file({{"pt", t}}, pt, st::Metadata{{"format", "pt"}});
  EXPECT_EQ(st::read_checkpoint(pt).tensors.keys(), std::vector<std::string>{"pt"});
}

TEST(Migrate, ConvertsWithAliasesInTheMetadata) {
  TempDir dir;
  const std::string out = dir.file("views.safetensors");
  const st::ConvertReport summary = st::convert_checkpoint(kFixtures + "views.pt", out);
  EXPECT_EQ(summary.tensors, 6u);
  EXPECT_EQ(summary.aliases.at("same"), "base");
  const st::Metadata meta = st::load_metadata(out);
  EXPECT_EQ(meta.at("same"), "base");
  EXPECT_EQ(meta.at("format"), "pt");
  const st::TensorDict got = st::load_file(out);
  const st::TensorDict expected = st::load_file(kFixtures + "views.expected.safetensors");
  for (const auto& item : got) EXPECT_TRUE(bitwise_equal(item.value(), expected[item.key()])) << item.key();
  EXPECT_FALSE(got.contains("same"));

  // Nothing is lost: the alias reads back through the metadata.
  EXPECT_TRUE(st::diff_checkpoints(kFixtures + "views.pt", out).equal());
  EXPECT_EQ(st::read_checkpoint(out).aliases.at("same"), "base");
}

// One call per written tensor (an alias is written once, so it is not one),
// counting up to the bytes the summary reports.
TEST(Migrate, ReportsProgressPerTensor) {
  TempDir dir;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  const st::ConvertReport summary = st::convert_checkpoint(
      kFixtures + "views.pt", dir.file("views.safetensors"),
      st::ConvertOptions().progress([&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); }));
  ASSERT_EQ(calls.size(), summary.tensors);
  std::uint64_t previous = 0;
  for (const auto& [done, total] : calls) {
    EXPECT_GE(done, previous);
    EXPECT_LE(done, total);
    EXPECT_EQ(total, summary.bytes);
    previous = done;
  }
  EXPECT_GT(summary.bytes, 0u);
  EXPECT_EQ(calls.back().first, summary.bytes);
}

TEST(Migrate, DiffReportsDifferences) {
  TempDir dir;
  const std::string a = dir.file("a.safetensors"), b = dir.file("b.safetensors");
  st::save_file({{"x", at::arange(4, at::kFloat)}, {"y", at::zeros({2})}, {"z", at::ones({1})}}, a);
  st::save_file({{"x", at::arange(4, at::kFloat) * 1.5}, {"y", at::zeros({3})}, {"w", at::ones({1})}}, b);
  const st::DiffReport report = st::diff_checkpoints(a, b);
  EXPECT_FALSE(report.equal());
  EXPECT_EQ(report.only_in_a, std::vector<std::string>{"z"});
  EXPECT_EQ(report.only_in_b, std::vector<std::string>{"w"});
  ASSERT_EQ(report.different.size(), 2u);
  EXPECT_NE(report.different[0].detail.find("max abs difference 1.5"), std::string::npos) << report.different[0].detail;
  EXPECT_NE(report.different[1].detail.find("shape [2] vs [3]"), std::string::npos) << report.different[1].detail;
  EXPECT_TRUE(st::diff_checkpoints(a, a).equal());
}

TEST(Migrate, ConvertsEveryFixtureLosslessly) {
  TempDir dir;
  for (const std::string& name : kFixtureNames) {
    const std::string out = dir.file(name + ".safetensors");
    st::convert_checkpoint(kFixtures + name + ".pt", out);
    EXPECT_TRUE(st::diff_checkpoints(kFixtures + name + ".expected.safetensors", out).equal()) << name;
  }
}

TEST(Migrate, ReadsTorchSaveArchivesFromCpp) {
  TempDir dir;
  torch::nn::Sequential net(torch::nn::Linear(3, 2), torch::nn::BatchNorm1d(2));
  const std::string path = dir.file("net.pt");
  torch::save(net, path);
  const st::Checkpoint ckpt = st::read_checkpoint(path);
  EXPECT_EQ(ckpt.format, CheckpointFormat::TorchArchive);
  std::vector<std::string> names;
  for (const auto& p : net->named_parameters()) names.push_back(p.key());
  for (const auto& b : net->named_buffers()) names.push_back(b.key());
  std::vector<std::string> got = ckpt.tensors.keys();
  std::sort(names.begin(), names.end());
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, names);
  for (const auto& p : net->named_parameters()) EXPECT_TRUE(bitwise_equal(ckpt.tensors[p.key()], p.value()));

  const std::string out = dir.file("net.safetensors");
  st::convert_checkpoint(path, out);
  EXPECT_TRUE(st::diff_checkpoints(path, out).equal());
  for (const std::string& name : names) EXPECT_FALSE(ckpt.aliases.count(name)) << name;

  // A submodule by its name, and the archive's non-tensor attributes.
  const st::Checkpoint first = st::read_checkpoint(path, st::CheckpointOptions().key({"0"}));
  EXPECT_EQ(first.tensors.keys(), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(error_code_of([&] { st::read_checkpoint(path, st::CheckpointOptions().key({"2"})); }),
            ErrorCode::TensorNotFound);
}

// An archive written by torch::serialize::OutputArchive with values of every
// kind: tensors, nested archives and other IValues, read with the names
// LibTorch's InputArchive gives them.
TEST(Migrate, ReadsOutputArchivesWithValuesOfEveryKind) {
  TempDir dir;
  torch::serialize::OutputArchive archive, nested;
  nested.write("w", at::arange(6, at::kFloat).reshape({2, 3}));
  nested.write("b", at::ones({2}, at::kDouble), /*is_buffer=*/true);
  archive.write("lr", c10::IValue(0.5));
  archive.write("step", c10::IValue(int64_t{7}));
  archive.write("name", c10::IValue(std::string("adam")));
  archive.write("sizes", c10::IValue(std::vector<int64_t>{1, 2}));
  archive.write("layer", nested);
  archive.write("t", at::arange(4, at::kInt));
  const std::string path = dir.file("archive.pt");
  archive.save_to(path);

  torch::serialize::InputArchive input;
  input.load_from(path);
  std::vector<std::string> expected;
  for (const std::string& key : input.keys()) {
    torch::serialize::InputArchive child;
    c10::IValue value;
    if (input.try_read(key, value) && value.isTensor()) expected.push_back(key);
    else if (input.try_read(key, child))
      for (const std::string& inner : child.keys()) {
        c10::IValue v;
        if (child.try_read(inner, v) && v.isTensor()) expected.push_back(key + "." + inner);
      }
  }
  for (st::Backend backend : {st::Backend::Mmap, st::Backend::Pread}) {
    const st::Checkpoint ckpt = st::read_checkpoint(path, st::CheckpointOptions().backend(backend));
    EXPECT_EQ(ckpt.format, CheckpointFormat::TorchArchive);
    EXPECT_EQ(ckpt.tensors.keys(), expected);
    EXPECT_TRUE(bitwise_equal(ckpt.tensors["layer.w"], at::arange(6, at::kFloat).reshape({2, 3})));
    EXPECT_TRUE(bitwise_equal(ckpt.tensors["layer.b"], at::ones({2}, at::kDouble)));
    EXPECT_TRUE(bitwise_equal(ckpt.tensors["t"], at::arange(4, at::kInt)));
    std::map<std::string, std::string> others;
    for (const auto& e : ckpt.non_tensors) others[e.name] = e.description;
    EXPECT_EQ(others.at("lr"), "float 0.5");
    EXPECT_EQ(others.at("step"), "int 7");
    EXPECT_EQ(others.at("name"), "str 'adam'");
    EXPECT_EQ(others.at("sizes"), "list of 2");
  }
}

// With the pread backend nothing is mapped: tensors own their bytes, read
// once, and keep them when the file is then overwritten in place (the mapping's
// pages would follow the file). Every format, each the same as with mmap.
TEST(Migrate, PreadTensorsOwnTheirBytes) {
  TempDir dir;
  for (const std::string& name : {std::string("views"), std::string("legacy_views"), std::string("legacy_many"),
                                  std::string("scripted"), std::string("state_dict.expected")}) {
    SCOPED_TRACE(name);
    const std::string ext = name == "state_dict.expected" ? ".safetensors" : ".pt";
    const std::string path = dir.file(name + ext);
    fs::copy_file(kFixtures + name + ext, path);
    const st::Checkpoint mapped = st::read_checkpoint(kFixtures + name + ext);
    const st::Checkpoint read = st::read_checkpoint(path, st::CheckpointOptions().backend(st::Backend::Pread));
    EXPECT_EQ(read.format, mapped.format);
    ASSERT_EQ(read.tensors.keys(), mapped.tensors.keys());
    EXPECT_EQ(read.aliases, mapped.aliases);
    EXPECT_EQ(read.copied_views, mapped.copied_views);
    {
      std::fstream overwrite(path, std::ios::in | std::ios::out | std::ios::binary);
      overwrite.write(std::string(fs::file_size(path), '\x55').data(), static_cast<std::streamsize>(fs::file_size(path)));
    }
    for (const auto& item : mapped.tensors) EXPECT_TRUE(bitwise_equal(read.tensors[item.key()], item.value())) << item.key();
  }
  // Converting and comparing read the same way.
  const std::string out = dir.file("training.safetensors");
  st::convert_checkpoint(kFixtures + "training.pt", out, st::ConvertOptions().backend(st::Backend::Pread));
  const st::CheckpointOptions pread = st::CheckpointOptions().backend(st::Backend::Pread);
  EXPECT_TRUE(st::diff_checkpoints(kFixtures + "training.pt", out, pread, pread).equal());
  EXPECT_EQ(st::detect_format(kFixtures + "legacy.pt", st::Backend::Pread), CheckpointFormat::TorchLegacy);
}

// diff compares piece by piece: two files of 64 MiB tensors that differ cost
// a few pieces of memory beyond their own mapped bytes, where widening them
// whole to 64 bits would take 8 bytes per element, several times over.
TEST(Migrate, DiffMemoryDoesNotGrowWithTheTensors) {
  TempDir dir;
  const std::int64_t n = 8192;
  at::Tensor a = at::zeros({n, n}, at::kByte), b = a.clone();
  b[5][7] = 3;
  b[n - 1][n - 1] = 200;
  st::save_file({{"x", a}, {"y", a.clone()}}, dir.file("a.safetensors"));
  st::save_file({{"x", b}, {"y", a.clone()}}, dir.file("b.safetensors"));
  a.reset();
  b.reset();
  st::DiffReport report;
  const long grew_kb = st::test::peak_added_kb(
      [&] { report = st::diff_checkpoints(dir.file("a.safetensors"), dir.file("b.safetensors")); });
  ASSERT_EQ(report.different.size(), 1u);
  EXPECT_EQ(report.different[0].detail, "values differ: max abs difference 200");
  EXPECT_EQ(report.identical, 1u);
  // The two mapped files (256 MiB), plus pieces.
  EXPECT_LT(grew_kb, (256 + 128) * 1024) << "peak memory grew by " << grew_kb << " kB";
}

TEST(Migrate, ReadsThirdPartyPickles) {
  const std::string dir = kData + "/vectors/pickle/";
  for (const char* name : {"candle_test.pt", "candle_test_with_key.pt", "candle_fortran_tensor_3d.pth",
                           "torchtune_tiny_fair_checkpoint.pt", "torchtune_tiny_state_dict_with_one_key.pt"}) {
    SCOPED_TRACE(name);
    const st::Checkpoint ckpt = st::read_checkpoint(dir + name);
    EXPECT_FALSE(ckpt.tensors.is_empty());
    TempDir out;
    st::convert_checkpoint(dir + name, out.file("x.safetensors"));
    EXPECT_TRUE(st::diff_checkpoints(dir + name, out.file("x.safetensors")).equal());
  }
}

// --- sharded sets -----------------------------------------------------------------

// Written by Python's safetensors 0.5.2 with an index as the Hugging Face tools
// write it (data/sharded/make_python_set.py): shards that agree on "note" and
// disagree on "producer", an alias in shard 2 of a tensor in shard 1, an F8
// tensor, and index metadata beside total_size.
const std::string kPythonSet = kData + "/sharded/python_set";
const std::string kShard1 = "model-00001-of-00002.safetensors";
const std::string kShard2 = "model-00002-of-00002.safetensors";

st::MetadataConflict producer_conflict() {
  return {"producer", {{"trainer 1", {kShard1}}, {"trainer 2", {kShard2}}}};
}

bool operator==(const st::MetadataConflict& a, const st::MetadataConflict& b) {
  if (a.key != b.key || a.values.size() != b.values.size()) return false;
  for (std::size_t i = 0; i < a.values.size(); ++i)
    if (a.values[i].value != b.values[i].value || a.values[i].files != b.values[i].files) return false;
  return true;
}

TEST(MigrateSet, ReadsASetByItsFolderOrItsIndex) {
  for (const std::string& path : {kPythonSet, kPythonSet + "/model.safetensors.index.json"}) {
    SCOPED_TRACE(path);
    EXPECT_EQ(st::detect_format(path), CheckpointFormat::SafetensorsSet);
    const st::Checkpoint ckpt = st::read_checkpoint(path);
    EXPECT_EQ(ckpt.format, CheckpointFormat::SafetensorsSet);
    std::vector<std::string> names;
    for (const auto& item : ckpt.tensors) names.push_back(item.key());
    EXPECT_EQ(names, (std::vector<std::string>{"embed.weight", "f8", "layer.0.bias", "layer.0.weight"}));
    EXPECT_TRUE(at::equal(ckpt.tensors["embed.weight"], at::arange(12, at::kFloat).reshape({3, 4})));
    EXPECT_EQ(ckpt.aliases, (std::map<std::string, std::string>{{"lm_head.weight", "embed.weight"}}));
    ASSERT_TRUE(ckpt.metadata);
    EXPECT_EQ(*ckpt.metadata,
              (st::Metadata{{"format", "pt"}, {"note", "x"}, {"producer", "trainer 1"}, {"model_type", "toy"}}));
    ASSERT_EQ(ckpt.metadata_conflicts.size(), 1u);
    EXPECT_TRUE(ckpt.metadata_conflicts[0] == producer_conflict());
  }
  EXPECT_EQ(error_code_of([&] { st::read_checkpoint(kPythonSet, st::CheckpointOptions().key({"embed"})); }),
            ErrorCode::InvalidArgument);
}

// A set's tensors view its shards' mappings (on Linux, a private mapping sees
// what another writer changes in a page it has not written); read with
// pread, they own copies.
TEST(MigrateSet, TensorsViewTheShardsMappings) {
  TempDir dir;
  const std::string folder = dir.file("set");
  fs::create_directories(folder);
  for (const auto& entry : fs::directory_iterator(kPythonSet))
    fs::copy_file(entry.path(), folder / entry.path().filename());
  const st::Checkpoint mapped = st::read_checkpoint(folder);
  const st::Checkpoint read = st::read_checkpoint(folder, st::CheckpointOptions().backend(st::Backend::Pread));
  const at::Tensor original = mapped.tensors["embed.weight"].clone();
  {
    const std::string shard = folder + "/" + kShard1;
    const st::SafeOpen file(shard);
    const st::TensorInfo& info = file.info("embed.weight");
    std::fstream overwrite(shard, std::ios::in | std::ios::out | std::ios::binary);
    overwrite.seekp(static_cast<std::streamoff>(file.header().data_offset() + info.begin));
    overwrite.write(std::string(info.nbytes(), '\0').data(), static_cast<std::streamsize>(info.nbytes()));
  }
  EXPECT_TRUE(at::equal(mapped.tensors["embed.weight"], at::zeros({3, 4})));
  EXPECT_TRUE(at::equal(read.tensors["embed.weight"], original));
}

// One file out of a set: every tensor (the F8 one with its dtype, whatever
// this LibTorch has), the alias across shards, the shards' metadata with the
// first shard's value of a key they disagree on, reported, and the index's.
TEST(MigrateSet, ConvertsASetToOneFileKeepingItsMetadata) {
  TempDir dir;
  const std::string out = dir.file("merged.safetensors");
  const st::ConvertReport report = st::convert_checkpoint(kPythonSet, out, st::ConvertOptions().fsync(false));
  EXPECT_EQ(report.format, CheckpointFormat::SafetensorsSet);
  EXPECT_EQ(report.tensors, 4u);
  EXPECT_EQ(report.bytes, 76u);
  EXPECT_EQ(report.aliases, (std::map<std::string, std::string>{{"lm_head.weight", "embed.weight"}}));
  ASSERT_EQ(report.metadata_conflicts.size(), 1u);
  EXPECT_TRUE(report.metadata_conflicts[0] == producer_conflict());

  const st::SafeOpen file(out, st::LoadOptions().unsupported_as_bytes(true));
  EXPECT_EQ(file.metadata(), (st::Metadata{{"format", "pt"},
                                           {"note", "x"},
                                           {"producer", "trainer 1"},
                                           {"model_type", "toy"},
                                           {"lm_head.weight", "embed.weight"}}));
  EXPECT_EQ(file.info("f8").dtype, st::Dtype::F8_E4M3);
  EXPECT_EQ(file.info("layer.0.weight").dtype, st::Dtype::BF16);
  const st::ShardedOpen set(kPythonSet, st::LoadOptions().unsupported_as_bytes(true));
  for (const std::string& name : set.keys())
    EXPECT_TRUE(bitwise_equal(file.get_tensor(name), set.get_tensor(name))) << name;

  const st::DiffReport diff = st::diff_checkpoints(kPythonSet, out);
  EXPECT_TRUE(diff.equal());
  EXPECT_EQ(diff.identical, 5u);  // the alias too
}

// The caller's metadata replaces the input's keys; a key it sets is no conflict.
TEST(MigrateSet, MetadataGivenOverridesTheSets) {
  TempDir dir;
  const std::string out = dir.file("merged.safetensors");
  const st::ConvertReport report = st::convert_checkpoint(
      kPythonSet, out, st::ConvertOptions().fsync(false).metadata({{"producer", "me"}, {"extra", "1"}}));
  EXPECT_TRUE(report.metadata_conflicts.empty());
  const st::Metadata metadata = st::SafeOpen(out).metadata();
  EXPECT_EQ(metadata.at("producer"), "me");
  EXPECT_EQ(metadata.at("extra"), "1");
  EXPECT_EQ(metadata.at("model_type"), "toy");
}

// A set this library saved: its bookkeeping (kShardSetKey, total_size) is not
// carried over, its metadata is, and an alias recorded in one shard follows
// its tensor through a renaming.
TEST(MigrateSet, ConvertsItsOwnSetsWithTheTransform) {
  TempDir dir;
  const std::string folder = dir.file("set");
  fs::create_directories(folder);
  st::NamedTensors tensors;
  for (int i = 0; i < 4; ++i) tensors.add("m.layer." + std::to_string(i), at::full({4}, i, at::kFloat));
  st::save_sharded(tensors, folder, st::Metadata{{"note", "x"}, {"m.tied", "m.layer.0"}},
                   st::ShardedSaveOptions().max_shard_size(32).fsync(false));
  const st::ShardedOpen input(folder);
  ASSERT_GT(input.shards().size(), 1u);

  const std::string out = dir.file("one.safetensors");
  const st::ConvertReport report = st::convert_checkpoint(
      folder, out, st::ConvertOptions().fsync(false).transform(st::TensorTransform().strip_prefix("m.")));
  EXPECT_TRUE(report.metadata_conflicts.empty());
  const st::SafeOpen file(out);
  EXPECT_EQ(file.metadata(), (st::Metadata{{"format", "pt"}, {"note", "x"}, {"tied", "layer.0"}}));
  EXPECT_EQ(file.size(), 4u);

  // Resharded into another folder: the same tensors, a new set of its own.
  const std::string again = dir.file("again");
  st::convert_checkpoint(folder, again, st::ConvertOptions().fsync(false).max_shard_size(16));
  EXPECT_TRUE(st::diff_checkpoints(folder, again).equal());
  const st::ShardedOpen resharded(again);
  EXPECT_EQ(resharded.shards().size(), 4u);
}

// One file written over the index or a shard of the set being read would
// break the set: refused before anything is written.
TEST(MigrateSet, RefusesToWriteOneFileOverAFileOfItsInputSet) {
  TempDir dir;
  const std::string folder = dir.file("set");
  fs::create_directories(folder);
  for (const auto& entry : fs::directory_iterator(kPythonSet))
    fs::copy_file(entry.path(), folder / entry.path().filename());
  const std::string before = st::test::read_bytes(folder + "/" + kShard2);
  for (const std::string& target : {folder + "/model.safetensors.index.json", folder + "/" + kShard1,
                                    folder + "/" + kShard2}) {
    SCOPED_TRACE(target);
    try {
      st::convert_checkpoint(folder, target, st::ConvertOptions().fsync(false));
      ADD_FAILURE() << "did not throw";
    } catch (const st::Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
      EXPECT_EQ(e.file(), target);
      EXPECT_NE(std::string(e.what()).find("is a file of the sharded set being converted"), std::string::npos)
          << e.what();
    }
    EXPECT_EQ(st::ShardedOpen(folder).size(), 4u);
  }
  EXPECT_EQ(st::test::read_bytes(folder + "/" + kShard2), before);
}

// A safetensors file keeps its metadata; converted with nothing asked of it,
// it is written byte for byte as it was, with metadata or without.
TEST(MigrateSet, ASafetensorsFileConvertsToTheSameBytes) {
  TempDir dir;
  st::NamedTensors tensors;
  tensors.add("b", at::arange(6, at::kFloat).reshape({2, 3}));
  tensors.add("a", at::arange(4, at::kLong));
  tensors.add_raw("f8", st::Dtype::F8_E4M3, {2}, at::tensor({0x38, 0x7e}, at::kByte));
  for (const std::optional<st::Metadata>& metadata :
       {std::optional<st::Metadata>(), std::optional<st::Metadata>(st::Metadata{{"note", "x"}, {"tied", "a"}})}) {
    SCOPED_TRACE(metadata ? "with metadata" : "without");
    const std::string in = dir.file("in.safetensors"), out = dir.file("out.safetensors");
    st::save_file(tensors, in, metadata, st::SaveOptions().fsync(false));
    const st::ConvertReport report = st::convert_checkpoint(in, out, st::ConvertOptions().fsync(false));
    EXPECT_EQ(report.format, CheckpointFormat::Safetensors);
    EXPECT_EQ(st::test::read_bytes(out), st::test::read_bytes(in));
  }
  // The caller's keys over the file's.
  const std::string in = dir.file("in.safetensors"), out = dir.file("over.safetensors");
  st::convert_checkpoint(in, out, st::ConvertOptions().fsync(false).metadata({{"note", "y"}, {"format", "pt"}}));
  EXPECT_EQ(st::SafeOpen(out).metadata(), (st::Metadata{{"format", "pt"}, {"note", "y"}, {"tied", "a"}}));
}

// The non-tensor values of a pickle are names of its tree: selected and
// renamed as its tensors are.
TEST(Migrate, NonTensorValuesFollowTheTransform) {
  TempDir dir;
  const std::string out = dir.file("out.safetensors");
  const st::ConvertReport report = st::convert_checkpoint(
      kFixtures + "training.pt", out,
      st::ConvertOptions().fsync(false).metadata({{"by", "me"}}).transform(
          st::TensorTransform().exclude({"epoch"}).add_prefix("ckpt.")));
  EXPECT_EQ(report.metadata_keys, (std::vector<std::string>{"ckpt.optimizer", "ckpt.note"}));
  EXPECT_NE(std::find(report.transform.excluded.begin(), report.transform.excluded.end(), "epoch"),
            report.transform.excluded.end());
  EXPECT_EQ(report.transform.renamed, report.tensors + 2);
  const st::Metadata metadata = st::SafeOpen(out).metadata();
  EXPECT_EQ(metadata.count("ckpt.optimizer"), 1u);
  EXPECT_EQ(metadata.count("ckpt.note"), 1u);
  EXPECT_EQ(metadata.count("epoch") + metadata.count("ckpt.epoch") + metadata.count("optimizer"), 0u);
  EXPECT_EQ(metadata.at("by"), "me");  // never renamed
  EXPECT_EQ(metadata.at("format"), "pt");

  // Selected by include patterns, as tensors are; a value left out is not
  // reported as one not converted.
  const st::ConvertReport only = st::convert_checkpoint(
      kFixtures + "training.pt", out,
      st::ConvertOptions().fsync(false).transform(st::TensorTransform().include({"model.*", "note"})));
  EXPECT_EQ(only.metadata_keys, std::vector<std::string>{"note"});
  EXPECT_TRUE(only.non_tensors.empty());
}

}  // namespace
