// TensorTransform and transform_tensors: selection, renaming and casting of
// tensors on their way to a new file, with aliases carried along; and
// diff_checkpoints over checkpoints already read.

#include <ATen/ops/arange.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <limits>
#include <map>
#include <string>
#include <vector>

#include "safetensors/error.hpp"
#include "safetensors/load.hpp"
#include "safetensors/migrate.hpp"
#include "safetensors/tensor_parallel.hpp"
#include "safetensors/transform.hpp"

namespace {

namespace st = safetensors;

std::vector<std::string> names(const st::NamedTensors& tensors) {
  std::vector<std::string> out;
  for (const auto& item : tensors.items()) out.push_back(item.name);
  return out;
}

TEST(TransformTest, IncludeExcludeMatchAsPlansDoStarCrossingDots) {
  const auto t = st::TensorTransform().include({"h.*.attn.*", "lm_head.weight"}).exclude({"*.bias"});
  EXPECT_TRUE(t.selects("h.0.attn.q.weight"));
  EXPECT_TRUE(t.selects("h.11.attn.weight"));
  EXPECT_FALSE(t.selects("h.0.attn.q.bias"));
  EXPECT_TRUE(t.selects("lm_head.weight"));
  EXPECT_FALSE(t.selects("lm_head.weightx"));  // no pattern character: exact
  EXPECT_FALSE(t.selects("h.0.mlp.weight"));
  // The same matcher as PartitionPlan's.
  const st::PartitionPlan plan = st::PartitionPlan().split("h.*.attn.*", 0);
  for (const std::string name : {"h.0.attn.q.weight", "h.0.mlp.weight", "h.[1].attn.x"})
    EXPECT_EQ(plan.placement(name).is_split(), st::TensorTransform().include({"h.*.attn.*"}).selects(name)) << name;
  EXPECT_TRUE(st::TensorTransform().selects("anything"));
  EXPECT_TRUE(st::TensorTransform().identity());
  EXPECT_FALSE(st::TensorTransform().add_prefix("x").identity());
}

TEST(TransformTest, RenamesCastsFloatingPointOnlyAndReports) {
  st::NamedTensors in;
  in.add("module.w", at::arange(4, at::kFloat));
  in.add("module.step", at::arange(1, at::kLong));
  in.add("other", at::zeros({2}, at::kDouble));
  in.add("module.drop", at::zeros({1}));
  st::TransformReport report;
  const st::NamedTensors out = st::transform_tensors(
      in, st::TensorTransform().exclude({"*.drop"}).strip_prefix("module.").add_prefix("m.").dtype(st::Dtype::F16),
      nullptr, &report);
  EXPECT_EQ(names(out), (std::vector<std::string>{"m.w", "m.step", "m.other"}));
  EXPECT_EQ(out.items()[0].tensor.scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(out.items()[0].tensor.to(at::kFloat), at::arange(4, at::kFloat)));
  EXPECT_EQ(out.items()[1].tensor.scalar_type(), at::kLong);
  EXPECT_EQ(out.items()[2].tensor.scalar_type(), at::kHalf);
  EXPECT_EQ(report.excluded, (std::vector<std::string>{"module.drop"}));
  EXPECT_EQ(report.renamed, 3u);
  ASSERT_EQ(report.cast.size(), 2u);
  EXPECT_EQ(report.cast[0].name, "m.w");
  EXPECT_EQ(report.cast[0].from, st::Dtype::F32);
  EXPECT_EQ(report.cast[1].from, st::Dtype::F64);
  EXPECT_EQ(report.cast[1].to, st::Dtype::F16);
}

TEST(TransformTest, RawFloatingPointItemsKeepTheirDtypeAndAreListed) {
  st::NamedTensors in;
  in.add_raw("f8", st::Dtype::F8_E4M3, {3}, at::zeros({3}, at::kByte));
  in.add_raw("u8ish", st::Dtype::F4, {4}, at::zeros({2}, at::kByte));
  st::TransformReport report;
  const st::NamedTensors out = st::transform_tensors(in, st::TensorTransform().dtype(st::Dtype::BF16), nullptr, &report);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out.items()[0].raw_dtype, st::Dtype::F8_E4M3);
  EXPECT_EQ(report.not_cast, (std::vector<std::string>{"f8", "u8ish"}));
  EXPECT_TRUE(report.cast.empty());
}

TEST(TransformTest, RefusesOtherTargetsAndNamesMadeOne) {
  st::NamedTensors in;
  in.add("a.x", at::zeros({1}));
  in.add("x", at::zeros({1}));
  try {
    st::transform_tensors(in, st::TensorTransform().strip_prefix("a."));
    FAIL() << "two tensors named x";
  } catch (const st::Error& e) {
    EXPECT_EQ(e.code(), st::ErrorCode::InvalidArgument);
    EXPECT_EQ(e.tensor(), "x");
    EXPECT_NE(std::string(e.what()).find("both 'a.x' and 'x'"), std::string::npos) << e.what();
  }
  for (const st::Dtype bad : {st::Dtype::I32, st::Dtype::F8_E4M3, st::Dtype::C64}) {
    try {
      st::transform_tensors(in, st::TensorTransform().dtype(bad));
      FAIL() << st::dtype_name(bad);
    } catch (const st::Error& e) {
      EXPECT_EQ(e.code(), st::ErrorCode::InvalidArgument);
    }
  }
}

// A selection that keeps nothing of a non-empty input is the caller's
// mistake, refused naming its patterns; an empty input stays empty.
TEST(TransformTest, RefusesASelectionThatLeavesNothing) {
  st::NamedTensors in;
  in.add("w", at::zeros({1}));
  in.add("b", at::zeros({1}));
  std::map<std::string, std::string> aliases = {{"tied", "w"}};
  for (const st::TensorTransform& t : {st::TensorTransform().include({"nothing*", "x"}),
                                       st::TensorTransform().exclude({"*"}),
                                       st::TensorTransform().include({"w"}).exclude({"w", "tied"})}) {
    std::map<std::string, std::string> kept = aliases;
    try {
      st::transform_tensors(in, t, &kept);
      FAIL() << "nothing selected, nothing refused";
    } catch (const st::EmptySelection& e) {
      EXPECT_EQ(e.code(), st::ErrorCode::InvalidArgument);
      EXPECT_NE(std::string(e.what()).find("leaves none of the 2 tensors and 1 alias"), std::string::npos) << e.what();
      const std::string what = e.what();
      if (!t.include().empty() && t.include()[0] == "nothing*") {
        EXPECT_NE(what.find("the selection (include 'nothing*', 'x')"), std::string::npos) << what;
      }
      if (!t.exclude().empty() && t.exclude()[0] == "w") {
        EXPECT_NE(what.find("(include 'w'; exclude 'w', 'tied')"), std::string::npos) << what;
      }
    }
    EXPECT_EQ(kept, aliases);  // untouched
  }
  // An alias alone is a selection: it takes its tensor's bytes.
  EXPECT_EQ(names(st::transform_tensors(in, st::TensorTransform().include({"tied"}), &aliases)),
            (std::vector<std::string>{"tied"}));
  EXPECT_EQ(st::transform_tensors(st::NamedTensors(), st::TensorTransform().include({"x"})).size(), 0u);
  EXPECT_EQ(st::transform_tensors(st::NamedTensors(), st::TensorTransform()).size(), 0u);
}

TEST(TransformTest, ReportsPatternsThatMatchNoName) {
  st::NamedTensors in;
  in.add("h.0.w", at::zeros({1}));
  in.add("head", at::zeros({1}));
  std::map<std::string, std::string> aliases = {{"tied", "head"}};
  st::TransformReport report;
  const st::NamedTensors out = st::transform_tensors(
      in, st::TensorTransform().include({"h.*", "typo*", "tied"}).exclude({"head", "nope", "h.1.*"}), &aliases,
      &report);
  EXPECT_EQ(names(out), (std::vector<std::string>{"h.0.w", "tied"}));
  EXPECT_EQ(report.unmatched_include, (std::vector<std::string>{"typo*"}));
  EXPECT_EQ(report.unmatched_exclude, (std::vector<std::string>{"nope", "h.1.*"}));
  st::transform_tensors(in, st::TensorTransform().include({"head"}), nullptr, &report);
  EXPECT_TRUE(report.unmatched_include.empty());
  EXPECT_TRUE(report.unmatched_exclude.empty());
}

TEST(TransformTest, RefusesANameTheRenamingMakesEmpty) {
  st::NamedTensors in;
  in.add("module.", at::zeros({1}));
  in.add("module.w", at::zeros({1}));
  try {
    st::transform_tensors(in, st::TensorTransform().strip_prefix("module."));
    FAIL() << "a tensor named ''";
  } catch (const st::Error& e) {
    EXPECT_EQ(e.code(), st::ErrorCode::InvalidArgument);
    EXPECT_EQ(e.tensor(), "module.");
    EXPECT_NE(std::string(e.what()).find("removing the prefix 'module.' would leave it no name"), std::string::npos)
        << e.what();
  }
  // With a prefix put back, the name is that prefix.
  EXPECT_EQ(names(st::transform_tensors(in, st::TensorTransform().strip_prefix("module.").add_prefix("m"))),
            (std::vector<std::string>{"m", "mw"}));
}

// A cast never loses a value silently: finite values beyond the target's range
// become infinite and are counted; infinities and NaNs already there are not.
TEST(TransformTest, CountsFiniteValuesACastMakesInfinite) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  auto overflowed = [](const at::Tensor& t, st::Dtype to) {
    st::NamedTensors in;
    in.add("t", t);
    st::TransformReport report;
    st::transform_tensors(in, st::TensorTransform().dtype(to), nullptr, &report);
    EXPECT_EQ(report.cast.size(), 1u);
    return report.cast.empty() ? ~std::uint64_t{0} : report.cast[0].overflowed;
  };
  const at::Tensor f64 = at::tensor({1e300, -1e300, inf, -inf, nan, 1.0, 7e4, 3.5e38}, at::kDouble);
  EXPECT_EQ(overflowed(f64, st::Dtype::F16), 4u);  // 1e300, -1e300, 7e4, 3.5e38
  EXPECT_EQ(overflowed(f64, st::Dtype::BF16), 3u);
  EXPECT_EQ(overflowed(f64, st::Dtype::F32), 3u);
  const at::Tensor f32 = at::tensor({3.4e38f, 3.0e38f, 7e4f, 1.0f}, at::kFloat);
  EXPECT_EQ(overflowed(f32, st::Dtype::BF16), 1u);  // 3.4e38 rounds up past BF16's largest
  EXPECT_EQ(overflowed(f32, st::Dtype::F16), 3u);
  EXPECT_EQ(overflowed(f32, st::Dtype::F64), 0u);
  EXPECT_EQ(overflowed(at::tensor({1e38f}, at::kFloat).to(at::kBFloat16), st::Dtype::F16), 1u);
  EXPECT_EQ(overflowed(at::tensor({65504.0f, -65504.0f}, at::kFloat).to(at::kHalf), st::Dtype::BF16), 0u);
  EXPECT_EQ(overflowed(at::tensor({inf, nan}, at::kDouble), st::Dtype::F16), 0u);
  // Counted across the slices a large tensor is checked in, and in a strided view.
  at::Tensor large = at::zeros({(std::int64_t{1} << 24) + 3}, at::kFloat);
  large[0] = 1e6f;
  large[-1] = -1e6f;
  EXPECT_EQ(overflowed(large, st::Dtype::F16), 2u);
  EXPECT_EQ(overflowed(at::tensor({1e6, 1.0, 1e6, 1.0}, at::kDouble).slice(0, 0, 4, 2), st::Dtype::F16), 2u);
}

TEST(TransformTest, AliasesFollowTheirTensorsOrBecomeTensors) {
  st::NamedTensors in;
  in.add("enc.w", at::arange(3, at::kFloat));
  in.add("dec.w", at::zeros({2}));
  std::map<std::string, std::string> aliases = {{"enc.tied", "enc.w"}, {"dec.tied", "enc.w"}, {"x.tied", "dec.w"}};
  st::TransformReport report;
  const st::NamedTensors out = st::transform_tensors(
      in, st::TensorTransform().exclude({"enc.w", "x.*"}).add_prefix("p."), &aliases, &report);
  // enc.w is left out: its aliases that stay take its bytes; x.tied is left out.
  EXPECT_EQ(names(out), (std::vector<std::string>{"p.dec.w", "p.dec.tied", "p.enc.tied"}));
  EXPECT_TRUE(at::equal(out.items()[1].tensor, at::arange(3, at::kFloat)));
  EXPECT_TRUE(aliases.empty());
  EXPECT_EQ(report.excluded, (std::vector<std::string>{"enc.w", "x.tied"}));

  std::map<std::string, std::string> kept = {{"tied", "enc.w"}};
  const st::NamedTensors renamed = st::transform_tensors(in, st::TensorTransform().add_prefix("m."), &kept);
  EXPECT_EQ(names(renamed), (std::vector<std::string>{"m.enc.w", "m.dec.w"}));
  EXPECT_EQ(kept, (std::map<std::string, std::string>{{"m.tied", "m.enc.w"}}));
}

TEST(TransformTest, DiffOfCheckpointsReadAlready) {
  st::Checkpoint a, b;
  a.tensors.insert("w", at::arange(4, at::kFloat));
  a.tensors.insert("only_a", at::zeros({1}));
  a.aliases["tied"] = "w";
  b.tensors.insert("w", at::arange(0, 8, 2, at::kFloat));
  b.tensors.insert("tied", at::arange(4, at::kFloat));
  b.tensors.insert("only_b", at::zeros({1}));
  const st::DiffReport d = st::diff_checkpoints(a, b);
  EXPECT_EQ(d.only_in_a, (std::vector<std::string>{"only_a"}));
  EXPECT_EQ(d.only_in_b, (std::vector<std::string>{"only_b"}));
  ASSERT_EQ(d.different.size(), 1u);
  EXPECT_EQ(d.different[0].name, "w");
  EXPECT_EQ(d.different[0].detail, "values differ: max abs difference 3.000000");
  EXPECT_EQ(d.identical, 1u);  // the alias compares with b's tensor of that name
  EXPECT_TRUE(st::diff_checkpoints(a, a).equal());
}

// convert_checkpoint applies ConvertOptions::transform before it records the
// aliases: a tie follows its tensor's new name, and the report says what changed.
TEST(TransformTest, ConvertCheckpointSelectsRenamesAndCasts) {
  const std::string dir = ::testing::TempDir() + "transform_convert_" + std::to_string(::getpid());
  const std::string in = dir + ".in.safetensors", out = dir + ".out.safetensors";
  st::save_file({{"module.w", at::arange(4, at::kFloat)},
                 {"module.step", at::arange(2, at::kLong)},
                 {"module.drop", at::zeros({1})}},
                in, st::Metadata{{"module.tied", "module.w"}});
  const st::ConvertReport r = st::convert_checkpoint(
      in, out,
      st::ConvertOptions().fsync(false).transform(
          st::TensorTransform().exclude({"*.drop"}).strip_prefix("module.").dtype(st::Dtype::BF16)));
  st::SafeOpen f(out);
  EXPECT_EQ(f.keys(), (std::vector<std::string>{"step", "w"}));
  EXPECT_EQ(f.get_tensor("w").scalar_type(), at::kBFloat16);
  EXPECT_EQ(f.get_tensor("step").scalar_type(), at::kLong);
  EXPECT_EQ(f.metadata().at("tied"), "w");
  EXPECT_EQ(r.aliases, (std::map<std::string, std::string>{{"tied", "w"}}));
  EXPECT_EQ(r.transform.excluded, (std::vector<std::string>{"module.drop"}));
  ASSERT_EQ(r.transform.cast.size(), 1u);
  EXPECT_EQ(r.transform.cast[0].name, "w");
  EXPECT_EQ(r.tensors, 2u);
  EXPECT_EQ(r.bytes, 4u * 2 + 2u * 8);
  ::unlink(in.c_str());
  ::unlink(out.c_str());
}

}  // namespace
