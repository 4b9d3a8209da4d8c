// Tests of the restricted pickle reader and the zip container reader on
// hand-made and hostile inputs: every one is refused with an error naming what
// was wrong, nothing is executed, and no input crashes or hangs the reader.

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "safetensors/migrate.hpp"
#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;
using safetensors::ErrorCode;
using safetensors::test::error_code_of;
using safetensors::test::TempDir;

const std::string kFixtures = std::string(SAFETENSORS_TEST_DATA_DIR) + "/pickle/";

std::string le(std::uint64_t v, int bytes) {
  std::string out;
  for (int i = 0; i < bytes; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

// A zip archive of stored entries, as torch.save writes them (CRCs are not
// checked by the reader and left zero).
std::string make_zip(const std::vector<std::pair<std::string, std::string>>& entries, int method = 0) {
  std::string body, central;
  for (const auto& [name, data] : entries) {
    const std::uint64_t local = body.size();
    body += le(0x04034b50, 4) + le(20, 2) + le(0, 2) + le(method, 2) + le(0, 4) + le(0, 4) +
            le(data.size(), 4) + le(data.size(), 4) + le(name.size(), 2) + le(0, 2) + name + data;
    central += le(0x02014b50, 4) + le(20, 2) + le(20, 2) + le(0, 2) + le(method, 2) + le(0, 4) + le(0, 4) +
               le(data.size(), 4) + le(data.size(), 4) + le(name.size(), 2) + le(0, 2) + le(0, 2) +
               le(0, 2) + le(0, 2) + le(0, 4) + le(local, 4) + name;
  }
  return body + central + le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(entries.size(), 2) +
         le(entries.size(), 2) + le(central.size(), 4) + le(body.size(), 4) + le(0, 2);
}

// Builds pickles opcode by opcode, so each test shows the stream it feeds.
class Pickler {
 public:
  Pickler& proto(int n) { return raw("\x80").raw(std::string(1, static_cast<char>(n))); }
  Pickler& raw(const std::string& bytes) { out_ += bytes; return *this; }
  Pickler& op(char c) { out_ += c; return *this; }
  Pickler& str(const std::string& s) { return op('X').raw(le(s.size(), 4) + s); }
  Pickler& integer(std::int32_t v) { return op('J').raw(le(static_cast<std::uint32_t>(v), 4)); }
  Pickler& global(const std::string& module, const std::string& name) {
    return op('c').raw(module + "\n" + name + "\n");
  }
  Pickler& ints(const std::vector<std::int32_t>& v) {
    op('(');
    for (auto x : v) integer(x);
    return op('t');
  }
  Pickler& empty_ordered_dict() { return global("collections", "OrderedDict").op(')').op('R'); }
  // _rebuild_tensor_v2 over ('storage', FloatStorage, key, 'cpu', numel).
  Pickler& tensor(const std::string& key, int numel, int offset, const std::vector<std::int32_t>& size,
                  const std::vector<std::int32_t>& stride) {
    global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", "FloatStorage").str(key).str("cpu").integer(numel).op('t').op('Q');
    integer(offset).ints(size).ints(stride).op('\x89').empty_ordered_dict();
    return op('t').op('R');
  }
  Pickler& stop() { return op('.'); }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

std::string floats(int n) {
  std::string out;
  for (int i = 0; i < n; ++i) {
    float f = static_cast<float>(i);
    out.append(reinterpret_cast<const char*>(&f), sizeof f);
  }
  return out;
}

// A checkpoint {"w": <tensor>} whose storage "0" holds `stored` floats.
std::string one_tensor_pickle(int numel, int offset, std::vector<std::int32_t> size, std::vector<std::int32_t> stride) {
  return Pickler().proto(2).op('}').str("w").tensor("0", numel, offset, size, stride).op('s').stop().bytes();
}

class PickleTest : public ::testing::Test {
 protected:
  // Writes a torch.save-shaped archive and reads it.
  safetensors::Checkpoint read(const std::string& pickle, const std::string& storage = floats(6),
                               bool with_storage = true) {
    std::vector<std::pair<std::string, std::string>> entries{{"archive/data.pkl", pickle}};
    if (with_storage) entries.emplace_back("archive/data/0", storage);
    entries.emplace_back("archive/version", "3\n");
    safetensors::test::write_bytes(path_, make_zip(entries));
    return safetensors::read_checkpoint(path_);
  }
  // The error reading `pickle` raises; fails the test when there is none.
  safetensors::Error refusal(const std::string& pickle, const std::string& storage = floats(6),
                             bool with_storage = true) {
    try {
      read(pickle, storage, with_storage);
    } catch (const safetensors::Error& e) {
      return e;
    }
    ADD_FAILURE() << "accepted";
    return safetensors::Error(ErrorCode::InvalidArgument, "", "", "accepted");
  }
  // The error reading the file at path_ raises.
  safetensors::Error refusal_of_file() {
    try {
      safetensors::read_checkpoint(path_);
    } catch (const safetensors::Error& e) {
      return e;
    }
    ADD_FAILURE() << "accepted";
    return safetensors::Error(ErrorCode::InvalidArgument, "", "", "accepted");
  }

  TempDir dir_;
  std::string path_ = dir_.file("ckpt.pt");
};

TEST_F(PickleTest, ReadsAHandMadeCheckpoint) {
  const auto ckpt = read(one_tensor_pickle(6, 1, {2, 2}, {1, 2}));
  ASSERT_EQ(ckpt.tensors.size(), 1u);
  const at::Tensor w = ckpt.tensors["w"];
  EXPECT_EQ(w.sizes(), (std::vector<std::int64_t>{2, 2}));
  EXPECT_EQ(w[0][1].item<float>(), 3.0f);  // offset 1 + 0*1 + 1*2
  EXPECT_EQ(w[1][0].item<float>(), 2.0f);
}

TEST_F(PickleTest, RefusesGlobalsThatWouldRunCode) {
  const std::string marker = dir_.file("ran");
  const std::string command = "touch " + marker;
  const std::vector<std::pair<std::string, std::string>> globals{
      {"os", "system"}, {"posix", "system"}, {"builtins", "eval"}, {"subprocess", "call"},
      {"torch", "load"}, {"torch._utils", "_rebuild_qtensor"}};
  for (const auto& [module, name] : globals) {
    const std::string p = Pickler().proto(2).global(module, name).str(command).op('\x85').op('R').stop().bytes();
    const safetensors::Error e = refusal(p);
    EXPECT_EQ(e.code(), ErrorCode::InvalidCheckpoint) << e.what();
    EXPECT_NE(std::string(e.what()).find("'" + module + "." + name + "' is not allowed"), std::string::npos) << e.what();
  }
  // Protocol 4 names globals with STACK_GLOBAL.
  const std::string p4 = Pickler().proto(4).str("builtins").str("eval").op('\x93').str("1").op('\x85').op('R').stop().bytes();
  EXPECT_NE(std::string(refusal(p4).what()).find("'builtins.eval' is not allowed"), std::string::npos);
  EXPECT_FALSE(fs::exists(marker));
}

TEST_F(PickleTest, RefusesAPythonReduceThatWouldRunAShellCommand) {
  // hostile_reduce.pt was written by torch.save from an object whose
  // __reduce__ returns (os.system, ("touch <dir>/hostile_reduce_ran",)).
  TempDir scratch;
  const std::string copy = scratch.file("hostile_reduce.pt");
  fs::copy_file(kFixtures + "hostile_reduce.pt", copy);
  try {
    safetensors::read_checkpoint(copy);
    FAIL() << "accepted";
  } catch (const safetensors::Error& e) {
    EXPECT_NE(std::string(e.what()).find("'posix.system' is not allowed"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(scratch.file("hostile_reduce_ran")));
  EXPECT_FALSE(fs::exists(kFixtures + "hostile_reduce_ran"));
}

TEST_F(PickleTest, RefusesUnknownAndDisallowedOpcodes) {
  EXPECT_NE(std::string(refusal(Pickler().proto(2).raw("\xff").bytes()).what()).find("unknown opcode 0xff"),
            std::string::npos);
  const std::string inst = Pickler().proto(2).op('(').raw("iposix\nsystem\n").stop().bytes();
  EXPECT_NE(std::string(refusal(inst).what()).find("opcode INST is not allowed"), std::string::npos);
  const std::string newobj = Pickler().proto(2).global("collections", "OrderedDict").op(')').op('\x81').stop().bytes();
  EXPECT_NE(std::string(refusal(newobj).what()).find("opcode NEWOBJ is not allowed"), std::string::npos);
  // Protocols 0 and 1 have no PROTO opcode; 6 does not exist.
  EXPECT_NE(std::string(refusal("}.").what()).find("no PROTO"), std::string::npos);
  EXPECT_NE(std::string(refusal(Pickler().proto(6).op('}').stop().bytes()).what()).find("protocol 6"),
            std::string::npos);
}

TEST_F(PickleTest, RefusesEveryTruncation) {
  const std::string full = one_tensor_pickle(6, 0, {2, 3}, {3, 1});
  for (std::size_t n = 0; n < full.size(); ++n)
    EXPECT_EQ(error_code_of([&] { read(full.substr(0, n)); }), ErrorCode::InvalidCheckpoint) << n;
}

TEST_F(PickleTest, RefusesMissingAndShortStorages) {
  const safetensors::Error missing = refusal(one_tensor_pickle(6, 0, {6}, {1}), "", false);
  EXPECT_EQ(missing.code(), ErrorCode::TensorInvalidInfo);
  EXPECT_NE(std::string(missing.what()).find("storage '0' is missing"), std::string::npos) << missing.what();
  const safetensors::Error shorter = refusal(one_tensor_pickle(6, 0, {6}, {1}), floats(5));
  EXPECT_EQ(shorter.code(), ErrorCode::TensorInvalidInfo);
  EXPECT_EQ(shorter.tensor(), "w");
}

TEST_F(PickleTest, RefusesViewsOutsideTheirStorage) {
  EXPECT_EQ(refusal(one_tensor_pickle(6, 0, {7}, {1})).code(), ErrorCode::TensorInvalidInfo);
  EXPECT_EQ(refusal(one_tensor_pickle(6, 5, {2}, {1})).code(), ErrorCode::TensorInvalidInfo);
  EXPECT_EQ(refusal(one_tensor_pickle(6, 0, {2, 2}, {1, 5})).code(), ErrorCode::TensorInvalidInfo);
  EXPECT_EQ(refusal(one_tensor_pickle(6, 0, {2}, {-1})).code(), ErrorCode::InvalidCheckpoint);
  EXPECT_EQ(refusal(one_tensor_pickle(6, 0, {0x40000000, 0x40000000, 0x40000000}, {1, 1, 1})).code(),
            ErrorCode::ValidationOverflow);
  // An empty view may sit anywhere: it reads nothing.
  EXPECT_EQ(read(one_tensor_pickle(6, 0, {0, 3}, {3, 1})).tensors["w"].numel(), 0);
}

// Two references to one storage that declare different sizes: each view fits
// its own declaration, but the storage is made once, from the first.
TEST_F(PickleTest, RefusesAStorageDeclaredWithTwoSizes) {
  const std::string pickle = Pickler()
                                 .proto(2)
                                 .op('}')
                                 .str("a").tensor("0", 2, 0, {2}, {1}).op('s')
                                 .str("b").tensor("0", 6, 0, {6}, {1}).op('s')
                                 .stop()
                                 .bytes();
  const safetensors::Error e = refusal(pickle);
  EXPECT_EQ(e.code(), ErrorCode::TensorInvalidInfo);
  EXPECT_EQ(e.tensor(), "b");
  EXPECT_NE(std::string(e.what()).find("two different sizes (2 and 6 elements)"), std::string::npos) << e.what();
}

TEST_F(PickleTest, RefusesHugeDeclaredLengths) {
  // A string claiming 2^62 bytes, a storage claiming 2^30 floats in 24 bytes.
  EXPECT_EQ(refusal(Pickler().proto(4).raw("\x8d" + le(std::uint64_t{1} << 62, 8)).bytes()).code(),
            ErrorCode::InvalidCheckpoint);
  EXPECT_EQ(refusal(one_tensor_pickle(0x40000000, 0, {6}, {1})).code(), ErrorCode::TensorInvalidInfo);
  // An integer wider than 64 bits, a memo index never stored, a frame past the end.
  EXPECT_EQ(refusal(Pickler().proto(2).raw("\x8a\x09" + std::string(9, '\x01')).bytes()).code(),
            ErrorCode::InvalidCheckpoint);
  EXPECT_EQ(refusal(Pickler().proto(2).raw("h\x07").bytes()).code(), ErrorCode::InvalidCheckpoint);
  EXPECT_EQ(refusal(Pickler().proto(4).raw("\x95" + le(1000, 8)).op('}').stop().bytes()).code(),
            ErrorCode::InvalidCheckpoint);
}

TEST_F(PickleTest, RefusesDeepNestingCyclesAndExponentialSharing) {
  constexpr int kDepth = 100000;
  Pickler deep;
  deep.proto(2).op('}').str("x");
  for (int i = 0; i < kDepth; ++i) deep.op(']');
  for (int i = 1; i < kDepth; ++i) deep.op('a');
  EXPECT_EQ(refusal(deep.op('s').stop().bytes()).code(), ErrorCode::LimitExceeded);

  // A list that contains itself.
  const std::string cycle = Pickler().proto(2).op('}').str("x").raw("]q\x00h\x00"s + "a").op('s').stop().bytes();
  EXPECT_EQ(refusal(cycle).code(), ErrorCode::LimitExceeded);

  // 60 levels of [prev, prev]: 2^60 paths through a few hundred bytes.
  Pickler shared;
  shared.proto(2).op('}').str("x").op(']');
  for (int i = 0; i < 60; ++i) shared.raw("q\x00"s).op('0').op(']').raw("h\x00h\x00"s).op('\x86').op('a');
  EXPECT_EQ(refusal(shared.op('s').stop().bytes()).code(), ErrorCode::LimitExceeded);
}

TEST_F(PickleTest, RefusesBadContainers) {
  // Compressed entries (torch.save never compresses; a small file could inflate hugely).
  safetensors::test::write_bytes(path_, make_zip({{"archive/data.pkl", "}."}}, 8));
  EXPECT_NE(std::string(refusal_of_file().what()).find("compressed"), std::string::npos);
  // A central directory that points past the end of the file.
  std::string zip = make_zip({{"archive/data.pkl", Pickler().proto(2).op('}').stop().bytes()}});
  zip.replace(zip.size() - 6, 4, le(0xfffffff0, 4));
  safetensors::test::write_bytes(path_, zip);
  EXPECT_EQ(refusal_of_file().code(), ErrorCode::InvalidCheckpoint);
  // No data.pkl at all.
  safetensors::test::write_bytes(path_, make_zip({{"archive/other", "x"}}));
  EXPECT_EQ(refusal_of_file().code(), ErrorCode::InvalidCheckpoint);
}

// What TorchScript's pickler writes for a module (torch/csrc/jit/serialization/
// pickler.cpp): NEWOBJ of its `__torch__` class, BUILD with its attributes,
// typed containers through torch.jit._pickle, devices, complex numbers and
// enums. All of it is data; none of it is called.
TEST_F(PickleTest, ReadsTorchScriptObjectsAsData) {
  Pickler p;
  p.proto(2).global("__torch__", "Net").op(')').op('\x81').op('}').op('(');
  p.str("training").op('\x88').str("_is_full_backward_hook").op('N');
  p.str("sub").global("__torch__.torch.nn.modules.linear", "Linear").op(')').op('\x81').op('}').op('(');
  p.str("weight").tensor("0", 6, 0, {2, 3}, {3, 1}).str("training").op('\x89').op('u').op('b');
  p.str("sizes").global("torch.jit._pickle", "build_intlist").op('(').op(']').op('(').integer(1).integer(2);
  p.op('e').op('t').op('R');
  p.str("table").global("torch.jit._pickle", "restore_type_tag").op('}').op('(').str("k");
  p.tensor("0", 6, 4, {2}, {1}).op('u').str("Dict[str, Tensor]").op('\x86').op('R');
  p.str("device").global("torch", "device").str("cpu").op('\x85').op('R');
  p.str("z").global("builtins", "complex").raw("G" + std::string(8, '\0') + "G" + std::string(8, '\0'));
  p.op('\x86').op('R');
  p.str("color").global("__torch__", "Color").integer(2).op('R');
  p.op('u').op('b').stop();
  const auto ckpt = read(p.bytes());
  EXPECT_EQ(ckpt.format, safetensors::CheckpointFormat::TorchArchive);
  EXPECT_EQ(ckpt.tensors.keys(), (std::vector<std::string>{"sub.weight", "table.k"}));
  EXPECT_EQ(ckpt.tensors["sub.weight"][1][2].item<float>(), 5.0f);
  EXPECT_EQ(ckpt.tensors["table.k"][1].item<float>(), 5.0f);
  std::vector<std::string> others;
  for (const auto& e : ckpt.non_tensors) others.push_back(e.name + " (" + e.description + ")");
  EXPECT_EQ(others, (std::vector<std::string>{
                        "training (bool True)", "_is_full_backward_hook (None)", "sub.training (bool False)",
                        "sizes (list of 2)", "device (object torch.device)", "z (object builtins.complex)",
                        "color (object __torch__.Color)"}));
  // A submodule is selected by its attribute names.
  const auto sub = safetensors::read_checkpoint(path_, safetensors::CheckpointOptions().key({"sub"}));
  EXPECT_EQ(sub.tensors.keys(), std::vector<std::string>{"weight"});
}

TEST_F(PickleTest, RefusesWhatTorchScriptNeverWrites) {
  // NEWOBJ of anything but a TorchScript class, a second BUILD, and the
  // torch.jit._pickle helpers that build tensors from outside the archive.
  const std::string newobj = Pickler().proto(2).global("collections", "OrderedDict").op(')').op('\x81').stop().bytes();
  EXPECT_NE(std::string(refusal(newobj).what()).find("opcode NEWOBJ is not allowed"), std::string::npos);
  const std::string twice =
      Pickler().proto(2).global("__torch__", "M").op(')').op('\x81').op('}').op('b').op('}').op('b').stop().bytes();
  EXPECT_NE(std::string(refusal(twice).what()).find("BUILD of object __torch__.M"), std::string::npos);
  const std::string by_id =
      Pickler().proto(2).global("torch.jit._pickle", "build_tensor_from_id").integer(0).op('\x85').op('R').stop().bytes();
  EXPECT_NE(std::string(refusal(by_id).what()).find("'torch.jit._pickle.build_tensor_from_id' is not allowed"),
            std::string::npos);
  // Only `__torch__` itself and its submodules are TorchScript's.
  const std::string lookalike =
      Pickler().proto(2).global("__torch__evil", "M").op(')').op('\x81').stop().bytes();
  EXPECT_NE(std::string(refusal(lookalike).what()).find("'__torch__evil.M' is not allowed"), std::string::npos);
}

// A torch.save archive that also holds a code/ folder and a constants.pkl (a
// tool added them, or a file was repacked) is still a torch.save archive: its
// pickle decides, and no entry sends it to a TorchScript loader.
TEST_F(PickleTest, AStrayCodeEntryDoesNotMakeATorchScriptArchive) {
  safetensors::test::write_bytes(path_, make_zip({{"archive/data.pkl", one_tensor_pickle(6, 0, {6}, {1})},
                                                  {"archive/data/0", floats(6)},
                                                  {"archive/code/__torch__.py", "class M(Module):\n  pass\n"},
                                                  {"archive/constants.pkl", Pickler().proto(2).op(')').stop().bytes()},
                                                  {"archive/version", "3\n"}}));
  EXPECT_EQ(safetensors::detect_format(path_), safetensors::CheckpointFormat::TorchZip);
  const auto ckpt = safetensors::read_checkpoint(path_);
  EXPECT_EQ(ckpt.format, safetensors::CheckpointFormat::TorchZip);
  EXPECT_EQ(ckpt.tensors.keys(), std::vector<std::string>{"w"});
}

// Entries whose bytes overlap would let one stretch of the file back several
// storages (and count several times against the file's size): the first
// entry's data here holds the second entry whole.
TEST_F(PickleTest, RefusesZipEntriesThatShareBytes) {
  const std::string inner_name = "archive/data/1", outer_name = "archive/data/0";
  const std::string inner_data = floats(6);
  const std::string inner = le(0x04034b50, 4) + le(20, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0, 4) +
                            le(inner_data.size(), 4) + le(inner_data.size(), 4) + le(inner_name.size(), 2) +
                            le(0, 2) + inner_name + inner_data;
  const std::string pickle = Pickler()
                                 .proto(2)
                                 .op('}')
                                 .str("a").tensor("0", 6, 0, {6}, {1}).op('s')
                                 .str("b").tensor("1", 6, 0, {6}, {1}).op('s')
                                 .stop()
                                 .bytes();
  std::string zip = make_zip({{"archive/data.pkl", pickle}, {outer_name, inner}});
  // Point a third central entry at the inner local header, inside data/0.
  const std::size_t end = zip.size() - 22, central = static_cast<std::size_t>(zip.find("PK\x01\x02"));
  const std::size_t inner_at = zip.find(inner);
  const std::string extra = le(0x02014b50, 4) + le(20, 2) + le(20, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(0, 4) +
                            le(inner_data.size(), 4) + le(inner_data.size(), 4) + le(inner_name.size(), 2) +
                            le(0, 2) + le(0, 2) + le(0, 2) + le(0, 2) + le(0, 4) + le(inner_at, 4) + inner_name;
  const std::string directory = zip.substr(central, end - central) + extra;
  zip = zip.substr(0, central) + directory + le(0x06054b50, 4) + le(0, 2) + le(0, 2) + le(3, 2) + le(3, 2) +
        le(directory.size(), 4) + le(central, 4) + le(0, 2);
  safetensors::test::write_bytes(path_, zip);
  const safetensors::Error e = refusal_of_file();
  EXPECT_EQ(e.code(), ErrorCode::InvalidCheckpoint) << e.what();
  EXPECT_NE(std::string(e.what()).find("entry 'archive/data/0' and entry 'archive/data/1' share bytes"),
            std::string::npos)
      << e.what();
}

// A view of stride 0 claims many elements from few bytes: the tensors of a
// checkpoint may not hold more than 8 times the file once written out.
TEST_F(PickleTest, RefusesViewsThatExpandTheFile) {
  // 2^40 floats from one: refused, naming the rule.
  const safetensors::Error e = refusal(one_tensor_pickle(6, 0, {1 << 20, 1 << 20}, {0, 0}));
  EXPECT_EQ(e.code(), ErrorCode::LimitExceeded) << e.what();
  EXPECT_EQ(e.tensor(), "w");
  EXPECT_NE(std::string(e.what()).find("more than 8 times the file's"), std::string::npos) << e.what();
  // A broadcast a little larger than the file is fine (torch saves expanded
  // buffers such as position ids).
  EXPECT_EQ(read(one_tensor_pickle(6, 0, {1000, 6}, {0, 1})).tensors["w"].sizes(), (at::IntArrayRef{1000, 6}));
}

TEST_F(PickleTest, SurvivesRandomCorruption) {
  // Every outcome of a flipped byte is a clean read or a safetensors::Error.
  const std::string original = safetensors::test::read_bytes(kFixtures + "training.pt");
  std::mt19937 rng(1234);
  for (int round = 0; round < 1500; ++round) {
    std::string bytes = original;
    for (int flips = 0; flips < 1 + round % 4; ++flips)
      bytes[rng() % bytes.size()] = static_cast<char>(rng());
    safetensors::test::write_bytes(path_, bytes);
    try {
      safetensors::read_checkpoint(path_);
    } catch (const safetensors::Error&) {
    }
  }
}

}  // namespace
