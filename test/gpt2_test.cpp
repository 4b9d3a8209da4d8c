// A real checkpoint written by Python's `transformers` (a tiny GPT-2: n_embd 2,
// one layer, vocabulary 21) loads strictly into a C++ module with the same
// names, and its logits are those of an independent NumPy implementation of
// transformers' GPT-2 (test/data/gpt2/gpt2_reference.py).

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "gpt2_model.hpp"
#include "safetensors/load.hpp"
#include "safetensors/module.hpp"
#include "test_util.hpp"

namespace safetensors {
namespace {

const std::string kFolder = std::string(SAFETENSORS_TEST_DATA_DIR) + "/vectors/models/lmbuddy_tiny_gpt2";
const std::string kFile = kFolder + "/model.safetensors";

gpt2::Config tiny_config() {
  gpt2::Config c;  // from the checkpoint's config.json
  c.vocab_size = 21;
  c.n_positions = 1024;
  c.n_embd = 2;
  c.n_layer = 1;
  c.n_head = 1;
  return c;
}

TEST(Gpt2, TheTransformersCheckpointLoadsStrictly) {
  gpt2::Model model(tiny_config());
  LoadReport report = load_state_dict(*model, kFile);
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.loaded_keys.size(), 16u);
  SafeOpen file(kFile);
  for (const auto& p : model->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), file.get_tensor(p.key()))) << p.key();
  EXPECT_EQ(model->h[0]->as<gpt2::Block>()->attn->c_attn->weight.sizes(), (std::vector<std::int64_t>{2, 6}));
}

TEST(Gpt2, TheLanguageModelHeadLoadsWithAPrefixAndItsTiedWeight) {
  gpt2::LMHeadModel model(tiny_config());
  LoadReport report = load_state_dict(*model, kFolder, StateDictLoadOptions().add_prefix("transformer."));
  EXPECT_TRUE(report.ok());
  EXPECT_EQ(report.loaded_keys.back(), "lm_head.weight");
  EXPECT_EQ(model->lm_head->weight.data_ptr(), model->transformer->wte->weight.data_ptr());
  EXPECT_TRUE(torch::equal(model->lm_head->weight, SafeOpen(kFile).get_tensor("wte.weight")));
}

TEST(Gpt2, AForwardPassRunsOnTheLoadedWeights) {
  gpt2::LMHeadModel model(tiny_config());
  load_state_dict(*model, kFolder,
                  StateDictLoadOptions().add_prefix("transformer.").mode(LoadMode::ZeroCopy));
  model->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor ids = torch::tensor({1, 2, 3}, torch::kLong).unsqueeze(0);
  torch::Tensor hidden = model->transformer(ids);
  torch::Tensor logits = model(ids);
  EXPECT_EQ(logits.sizes(), (std::vector<std::int64_t>{1, 3, 21}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  // The first position attends to itself only, so it does not depend on later tokens.
  torch::Tensor alone = model->transformer(ids.slice(1, 0, 1));
  EXPECT_TRUE(torch::allclose(alone[0][0], hidden[0][0]));
  EXPECT_TRUE(torch::allclose(logits, torch::matmul(hidden, model->transformer->wte->weight.t())));
}

// The logits, position by position, of the NumPy reference for the same
// tokens (test/data/gpt2/reference_logits.json, made by `python3
// test/data/gpt2/gpt2_reference.py test/data/vectors/models/lmbuddy_tiny_gpt2 1 2 3 7 20 0`).
// A weight loaded transposed, a tie lost or a prefix misapplied changes them.
TEST(Gpt2, LogitsMatchAnIndependentImplementation) {
  const auto json = nlohmann::json::parse(test::read_bytes(std::string(SAFETENSORS_TEST_DATA_DIR) +
                                                           "/gpt2/reference_logits.json"));
  const std::vector<std::int64_t> ids = json["ids"].get<std::vector<std::int64_t>>();
  const std::vector<std::vector<double>> rows = json["logits"].get<std::vector<std::vector<double>>>();
  std::vector<double> flat;
  for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  const torch::Tensor expected =
      torch::tensor(flat, torch::kDouble).view({static_cast<std::int64_t>(rows.size()), -1});
  for (LoadMode mode : {LoadMode::Copy, LoadMode::ZeroCopy}) {
    gpt2::LMHeadModel model(tiny_config());
    load_state_dict(*model, kFolder, StateDictLoadOptions().add_prefix("transformer.").mode(mode));
    model->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor logits = model(torch::tensor(ids, torch::kLong).unsqueeze(0))[0].to(torch::kDouble);
    ASSERT_EQ(logits.sizes(), expected.sizes());
    // float32 against float64: 1.5e-8 apart; a transposed c_proj moves them 1.2e-5.
    EXPECT_TRUE(torch::allclose(logits, expected, /*rtol=*/1e-5, /*atol=*/1e-7))
        << "max difference " << (logits - expected).abs().max().item<double>();
  }
}

TEST(Gpt2, ASavedModelLoadsBackWithTheTieRecorded) {
  test::TempDir dir;
  gpt2::LMHeadModel saved(tiny_config());
  load_state_dict(*saved, kFile, StateDictLoadOptions().add_prefix("transformer."));
  save_state_dict(*saved, dir.file("lm.safetensors"));
  SafeOpen file(dir.file("lm.safetensors"));
  EXPECT_EQ(file.size(), 16u);  // the tied pair once
  EXPECT_EQ(file.metadata().at("transformer.wte.weight"), "lm_head.weight");
  gpt2::LMHeadModel loaded(tiny_config());
  EXPECT_TRUE(load_state_dict(*loaded, dir.file("lm.safetensors")).ok());
  EXPECT_TRUE(torch::equal(loaded->transformer->wte->weight, saved->transformer->wte->weight));
}

}  // namespace
}  // namespace safetensors
