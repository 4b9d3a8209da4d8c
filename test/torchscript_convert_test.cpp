// TorchScript archives read as data: what read_checkpoint and
// convert_checkpoint make of archives written by Python's torch.jit.save (1.13
// and 2.6: data/jit/make_archives.py, run again at test time with the Python
// at hand) and by LibTorch's torch::save, against what torch.jit.load(f)
// .state_dict() holds; and what they report of the rest.

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/nn.h>
#include <torch/serialize.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "checkpoint/zip.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/safetensors.hpp"
#include "support/memory.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
namespace st = safetensors;
using st::CheckpointFormat;
using st::test::bitwise_equal;
using st::test::TempDir;

const std::string kData = SAFETENSORS_TEST_DATA_DIR;
const std::string kJit = kData + "/jit/";
constexpr const char* kPython = "/usr/bin/python3";

// The folders of archives written by each Python torch.
const std::vector<std::string> kWriters = {"torch-1.13", "torch-2.6"};

bool python_has_torch() {
  return std::system((std::string(kPython) + " -c 'import torch' >/dev/null 2>&1").c_str()) == 0;
}

std::map<std::string, std::size_t> bookkeeping(const std::vector<st::Checkpoint::Bookkeeping>& kinds) {
  std::map<std::string, std::size_t> out;
  for (const auto& b : kinds) out[b.what] = b.count;
  return out;
}

std::vector<std::string> reported(const std::vector<st::NonTensorEntry>& entries) {
  std::vector<std::string> names;
  for (const auto& e : entries) names.push_back(e.name);
  return names;
}

// The archive reads as Python's state_dict of it (names in order, bytes), with
// its parameters and buffers counted as Python tells them apart; its other
// attributes are reported by name, its bookkeeping counted; its conversion
// writes those tensors (the tied one once, as an alias) and no module attribute.
void expect_python_state_dict(const std::string& dir, const std::string& name) {
  SCOPED_TRACE(dir + name);
  const std::string path = dir + name + ".pt";
  const st::TensorDict expected = st::load_file(dir + name + ".expected.safetensors");
  const auto kinds = nlohmann::json::parse(st::test::read_bytes(dir + name + ".expected.json"));
  for (st::Backend backend : {st::Backend::Mmap, st::Backend::Pread}) {
    const st::Checkpoint ckpt = st::read_checkpoint(path, st::CheckpointOptions().backend(backend));
    EXPECT_EQ(ckpt.format, CheckpointFormat::TorchArchive);
    ASSERT_EQ(ckpt.tensors.keys(), expected.keys());
    for (const auto& item : expected)
      EXPECT_TRUE(bitwise_equal(ckpt.tensors[item.key()], item.value())) << item.key();
    EXPECT_EQ(ckpt.parameters, kinds["parameters"].size());
    EXPECT_EQ(ckpt.buffers, kinds["buffers"].size());
    EXPECT_EQ(ckpt.aliases, (std::map<std::string, std::string>{{"out.weight", "embed.weight"}}));
    // 17 modules: the model; its list of 2 blocks of 4; its Sequential of 2, dict of 1, embed, out.
    auto counted = bookkeeping(ckpt.module_bookkeeping);
    EXPECT_EQ(counted["training"], 17u);
    EXPECT_EQ(counted["_is_full_backward_hook"], 17u);
    EXPECT_EQ(counted["modules without tensors"], 3u);  // blocks.*.act, seq.1
    // blocks.*.fc.bias, out.bias: a traced module has no attribute for them.
    EXPECT_EQ(counted["parameters set to None"], name == "scripted" ? 3u : 0u);
    const std::vector<std::string> others = reported(ckpt.non_tensors);
    if (name == "scripted") {
      // A scripted module keeps its other attributes; the tensor among them is not state.
      for (const char* attribute : {"steps", "label", "sizes", "offset"})
        EXPECT_NE(std::find(others.begin(), others.end(), attribute), others.end()) << attribute;
      EXPECT_EQ(ckpt.tensors.find("offset"), nullptr);
    }
    for (const std::string& other : others) EXPECT_EQ(ckpt.tensors.find(other), nullptr) << other;
  }

  TempDir out;
  const st::ConvertReport report = st::convert_checkpoint(path, out.file("x.safetensors"));
  EXPECT_EQ(report.parameters, kinds["parameters"].size());
  EXPECT_EQ(report.buffers, kinds["buffers"].size());
  EXPECT_FALSE(report.module_bookkeeping.empty());
  EXPECT_TRUE(report.metadata_keys.empty());
  EXPECT_EQ(report.tensors, expected.size() - 1);
  EXPECT_TRUE(st::diff_checkpoints(dir + name + ".expected.safetensors", out.file("x.safetensors")).equal());
  const st::SafeOpen written(out.file("x.safetensors"));
  EXPECT_EQ(written.metadata(), (st::Metadata{{"format", "pt"}, {"out.weight", "embed.weight"}}));
}

TEST(TorchScriptConvert, CommittedArchivesMatchPython) {
  for (const std::string& writer : kWriters)
    for (const char* name : {"scripted", "traced"}) expect_python_state_dict(kJit + writer + "/", name);
}

TEST(TorchScriptConvert, FreshArchivesMatchPython) {
  if (!python_has_torch())
    GTEST_SKIP() << kPython << " cannot import torch; the committed archives are still checked";
  TempDir dir;
  const std::string command = std::string(kPython) + " " + kJit + "make_archives.py " + dir.path().string();
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  for (const char* name : {"scripted", "traced"}) expect_python_state_dict(dir.path().string() + "/", name);
}

// A module with its own __getstate__ whose __setstate__ never returns (as
// torch.jit.load would run it) reads at once: what __getstate__ saved, by
// position, its split into parameters and buffers unknown.
void expect_getstate_read_as_data(const std::string& path) {
  SCOPED_TRACE(path);
  const auto start = std::chrono::steady_clock::now();
  TempDir out;
  const st::ConvertReport report = st::convert_checkpoint(path, out.file("x.safetensors"));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10);
  EXPECT_EQ(report.format, CheckpointFormat::TorchArchive);
  EXPECT_EQ(st::load_file(out.file("x.safetensors")).keys(), std::vector<std::string>{"0"});
  EXPECT_TRUE(bitwise_equal(st::load_file(out.file("x.safetensors"))["0"], at::ones({3})));
  EXPECT_FALSE(report.parameters);
  EXPECT_FALSE(report.buffers);
  EXPECT_EQ(bookkeeping(report.module_bookkeeping).at("modules whose own __getstate__ saved their state"), 1u);
  EXPECT_TRUE(report.metadata_keys.empty());
}

TEST(TorchScriptConvert, OwnGetstateIsReadAsData) {
  for (const std::string& writer : kWriters) expect_getstate_read_as_data(kJit + writer + "/getstate_loops.pt");
  expect_getstate_read_as_data(kData + "/pickle/hostile_setstate.pt");
}

// torch::save of a module (this LibTorch): its parameters and buffers, as
// LibTorch names them and, when Python's torch is at hand, as its
// torch.jit.load(f).state_dict() does.
TEST(TorchScriptConvert, LibTorchModuleArchives) {
  TempDir dir;
  torch::nn::Sequential net(torch::nn::Linear(torch::nn::LinearOptions(3, 2).bias(false)),
                            torch::nn::BatchNorm1d(2), torch::nn::ReLU());
  const std::string path = dir.file("net.pt");
  torch::save(net, path);
  std::vector<std::string> names;
  for (const auto& p : net->named_parameters()) names.push_back(p.key());
  for (const auto& b : net->named_buffers()) names.push_back(b.key());
  const st::Checkpoint ckpt = st::read_checkpoint(path);
  std::vector<std::string> got = ckpt.tensors.keys();
  std::sort(names.begin(), names.end());
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, names);
  EXPECT_EQ(ckpt.parameters, 3u);
  EXPECT_EQ(ckpt.buffers, 3u);
  EXPECT_EQ(bookkeeping(ckpt.module_bookkeeping),
            (std::map<std::string, std::size_t>{{"modules without tensors", 1}}));
  EXPECT_TRUE(ckpt.non_tensors.empty());

  if (!python_has_torch()) GTEST_SKIP() << kPython << " cannot import torch: not compared with Python";
  const std::string expected = dir.file("net.expected.safetensors");
  const std::string command = std::string(kPython) + " -c 'import sys, torch; sys.path.insert(0, \"" + kData +
                              "/pickle\"); from make_fixtures import write_safetensors; "
                              "write_safetensors(sys.argv[2], torch.jit.load(sys.argv[1]).state_dict())' " +
                              path + " " + expected;
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  const st::TensorDict python = st::load_file(expected);
  EXPECT_EQ(ckpt.tensors.keys(), python.keys());
  for (const auto& item : python)
    EXPECT_TRUE(bitwise_equal(ckpt.tensors[item.key()], item.value())) << item.key();
  st::convert_checkpoint(path, dir.file("net.safetensors"));
  EXPECT_TRUE(st::diff_checkpoints(expected, dir.file("net.safetensors")).equal());
}

// An archive whose code/ cannot be read (here: its root module's entry no
// longer inflates) still converts: every tensor attribute, without the split.
TEST(TorchScriptConvert, UnreadableCodeGivesTensorsWithoutTheSplit) {
  TempDir dir;
  const std::string path = dir.file("scripted.pt");
  fs::copy_file(kJit + "torch-2.6/scripted.pt", path);
  {
    const st::detail::ZipArchive zip(st::open_file(path, st::Backend::Mmap));
    const auto entry =
        std::find_if(zip.entries().begin(), zip.entries().end(),
                     [](const st::detail::ZipEntry& e) { return e.name == "scripted/code/__torch__.py"; });
    ASSERT_NE(entry, zip.entries().end());
    ASSERT_TRUE(entry->deflated);
    ASSERT_TRUE(zip.inflate(*entry, 16 << 20));
    std::string bytes = st::test::read_bytes(path);
    std::memset(&bytes[entry->offset], 0xff, entry->compressed_size);
    st::test::write_bytes(path, bytes);
  }
  const st::Checkpoint ckpt = st::read_checkpoint(path);
  EXPECT_FALSE(ckpt.parameters);
  EXPECT_FALSE(ckpt.buffers);
  const st::TensorDict expected = st::load_file(kJit + "torch-2.6/scripted.expected.safetensors");
  for (const auto& item : expected) EXPECT_TRUE(ckpt.tensors.contains(item.key())) << item.key();
  EXPECT_TRUE(ckpt.tensors.contains("offset"));  // not told apart from the buffers
}

// The code/ text read stays within a multiple of the file's size: a code
// entry of 12 MiB that deflates to a few kilobytes is not inflated (here it
// declares no module; the others are read as before).
TEST(TorchScriptConvert, CodeReadIsBoundedByTheFileSize) {
  TempDir dir;
  const std::string path = dir.file("scripted.pt");
  fs::copy_file(kJit + "torch-2.6/scripted.pt", path);
  const std::string command = "python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1], \"a\"); "
                              "z.writestr(\"scripted/code/__torch__/padding.py\", \"\\n\" * (12 << 20), "
                              "zipfile.ZIP_DEFLATED)' " + path;
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
  ASSERT_LT(fs::file_size(path), 256u << 10);
  st::Checkpoint ckpt;
  const long grew_kb = st::test::peak_added_kb([&] { ckpt = st::read_checkpoint(path); });
  EXPECT_LT(grew_kb, 6 << 10) << "peak memory grew by " << grew_kb << " kB";
  EXPECT_EQ(ckpt.tensors.keys(), st::load_file(kJit + "torch-2.6/scripted.expected.safetensors").keys());
  EXPECT_EQ(ckpt.parameters, 12u);
}

// A deflated entry inflates to its declared size and no further: one that
// would write more (a small file claiming much memory) is refused, as is one
// that declares more than the caller allows.
TEST(TorchScriptConvert, InflateStopsAtTheDeclaredSize) {
  const std::string text(1 << 20, 'a');
  uLongf packed_size = compressBound(text.size());
  std::string packed(packed_size, '\0');
  ASSERT_EQ(compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size,
                      reinterpret_cast<const Bytef*>(text.data()), text.size(), 9),
            Z_OK);
  // Raw deflate, as zip stores it: the zlib stream less its 2-byte header and 4-byte checksum.
  const std::string raw = packed.substr(2, packed_size - 6);
  auto zip_of = [&](std::uint32_t declared) {
    auto u16 = [](std::string& s, std::uint32_t v) { s.push_back(char(v)), s.push_back(char(v >> 8)); };
    auto u32 = [&](std::string& s, std::uint32_t v) { u16(s, v & 0xffff), u16(s, v >> 16); };
    const std::string name = "a/code/x.py";
    std::string out, central;
    u32(out, 0x04034b50), u16(out, 20), u16(out, 0), u16(out, 8), u32(out, 0), u32(out, 0);
    u32(out, std::uint32_t(raw.size())), u32(out, declared), u16(out, std::uint16_t(name.size())), u16(out, 0);
    out += name + raw;
    u32(central, 0x02014b50), u16(central, 20), u16(central, 20), u16(central, 0), u16(central, 8);
    u32(central, 0), u32(central, 0), u32(central, std::uint32_t(raw.size())), u32(central, declared);
    u16(central, std::uint16_t(name.size())), u16(central, 0), u16(central, 0), u16(central, 0), u16(central, 0);
    u32(central, 0), u32(central, 0);
    central += name;
    const std::uint32_t at = std::uint32_t(out.size());
    out += central;
    u32(out, 0x06054b50), u16(out, 0), u16(out, 0), u16(out, 1), u16(out, 1);
    u32(out, std::uint32_t(central.size())), u32(out, at), u16(out, 0);
    return out;
  };
  TempDir dir;
  for (const std::uint32_t declared : {std::uint32_t(text.size()), std::uint32_t(100)}) {
    SCOPED_TRACE(declared);
    st::test::write_bytes(dir.file("x.zip"), zip_of(declared));
    const st::detail::ZipArchive zip(st::open_file(dir.file("x.zip"), st::Backend::Mmap));
    ASSERT_EQ(zip.entries().size(), 1u);
    const auto inflated = zip.inflate(zip.entries()[0], 16 << 20);
    if (declared == text.size()) {
      ASSERT_TRUE(inflated);
      EXPECT_EQ(*inflated, text);
      EXPECT_FALSE(zip.inflate(zip.entries()[0], text.size() - 1));  // more than allowed
    } else {
      EXPECT_FALSE(inflated);  // it would write past its 100 bytes
    }
  }
}

}  // namespace
