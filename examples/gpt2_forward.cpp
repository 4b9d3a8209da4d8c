// Builds GPT-2 from its config.json, loads a Hugging Face checkpoint written by
// Python's `transformers` into it strictly (every parameter, exact shapes), and
// runs a forward pass: the most likely next token after each prefix.
//
//   gpt2_forward test/data/vectors/models/lmbuddy_tiny_gpt2 1 2 3
//
// The folder holds config.json and model.safetensors (or a sharded set).

#include <safetensors/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <iostream>

#include "gpt2_model.hpp"

namespace {

gpt2::Config read_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  const auto json = nlohmann::json::parse(in);
  gpt2::Config c;
  c.vocab_size = json.at("vocab_size");
  c.n_positions = json.at("n_positions");
  c.n_embd = json.at("n_embd");
  c.n_layer = json.at("n_layer");
  c.n_head = json.at("n_head");
  c.layer_norm_epsilon = json.value("layer_norm_epsilon", 1e-5);
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " MODEL_FOLDER TOKEN_ID...\n";
    return 2;
  }
  try {
    const std::string folder = argv[1];
    gpt2::LMHeadModel model(read_config(folder + "/config.json"));
    // The checkpoint is a GPT2Model: its names lack our "transformer." level.
    // lm_head.weight is tied to the embedding, so it is not missing.
    safetensors::LoadReport report = safetensors::load_state_dict(
        *model, folder, safetensors::StateDictLoadOptions().add_prefix("transformer."));
    std::cout << "loaded " << report.loaded_keys.size() << " tensors\n";

    std::vector<std::int64_t> ids;
    for (int i = 2; i < argc; ++i) ids.push_back(std::atoll(argv[i]));
    model->eval();
    torch::NoGradGuard no_grad;
    torch::Tensor logits = model(torch::tensor(ids).unsqueeze(0));  // [1, len, vocab]
    torch::Tensor next = logits.argmax(-1).squeeze(0);
    for (std::size_t i = 0; i < ids.size(); ++i)
      std::cout << "after token " << ids[i] << ": next token " << next[i].item<std::int64_t>() << "\n";
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
  return 0;
}
