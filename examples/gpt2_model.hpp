#pragma once
// GPT-2 in LibTorch, with the module names of Hugging Face's `GPT2Model`
// (`h.0.attn.c_attn.weight`, ...), so its checkpoints load strictly with
// safetensors::load_state_dict.

#include <torch/torch.h>

#include <cmath>
#include <cstdint>

namespace gpt2 {

/// The fields of the checkpoint's config.json that shape the model.
struct Config {
  std::int64_t vocab_size = 50257;
  std::int64_t n_positions = 1024;
  std::int64_t n_embd = 768;
  std::int64_t n_layer = 12;
  std::int64_t n_head = 12;
  double layer_norm_epsilon = 1e-5;
};

/// GPT-2's "Conv1D": a linear layer whose weight is stored [in, out].
struct Conv1DImpl : torch::nn::Module {
  Conv1DImpl(std::int64_t in, std::int64_t out)
      : weight(register_parameter("weight", torch::empty({in, out}))),
        bias(register_parameter("bias", torch::zeros({out}))) {}

  torch::Tensor forward(const torch::Tensor& x) {
    auto shape = x.sizes().vec();
    shape.back() = weight.size(1);
    return torch::addmm(bias, x.reshape({-1, weight.size(0)}), weight).view(shape);
  }

  torch::Tensor weight;
  torch::Tensor bias;
};
TORCH_MODULE(Conv1D);

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const Config& c)
      : c_attn(register_module("c_attn", Conv1D(c.n_embd, 3 * c.n_embd))),
        c_proj(register_module("c_proj", Conv1D(c.n_embd, c.n_embd))),
        n_head(c.n_head) {}

  torch::Tensor forward(const torch::Tensor& x) {
    const std::int64_t batch = x.size(0), len = x.size(1), width = x.size(2);
    auto heads = [&](const torch::Tensor& t) {
      return t.view({batch, len, n_head, width / n_head}).transpose(1, 2);
    };
    auto qkv = c_attn(x).split(width, /*dim=*/2);
    auto q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);
    auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(width / n_head));
    auto future = torch::ones({len, len}, torch::kBool).triu(1);
    auto weights = torch::softmax(scores.masked_fill(future, -INFINITY), -1);
    auto out = torch::matmul(weights, v).transpose(1, 2).reshape({batch, len, width});
    return c_proj(out);
  }

  Conv1D c_attn, c_proj;
  std::int64_t n_head;
};
TORCH_MODULE(Attention);

struct MLPImpl : torch::nn::Module {
  explicit MLPImpl(const Config& c)
      : c_fc(register_module("c_fc", Conv1D(c.n_embd, 4 * c.n_embd))),
        c_proj(register_module("c_proj", Conv1D(4 * c.n_embd, c.n_embd))) {}

  // GPT-2's activation is "gelu_new", the tanh approximation.
  torch::Tensor forward(const torch::Tensor& x) { return c_proj(torch::gelu(c_fc(x), "tanh")); }

  Conv1D c_fc, c_proj;
};
TORCH_MODULE(MLP);

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(const Config& c)
      : ln_1(register_module("ln_1", torch::nn::LayerNorm(norm(c)))),
        attn(register_module("attn", Attention(c))),
        ln_2(register_module("ln_2", torch::nn::LayerNorm(norm(c)))),
        mlp(register_module("mlp", MLP(c))) {}

  static torch::nn::LayerNormOptions norm(const Config& c) {
    return torch::nn::LayerNormOptions({c.n_embd}).eps(c.layer_norm_epsilon);
  }

  torch::Tensor forward(torch::Tensor x) {
    x = x + attn(ln_1(x));
    return x + mlp(ln_2(x));
  }

  torch::nn::LayerNorm ln_1;
  Attention attn;
  torch::nn::LayerNorm ln_2;
  MLP mlp;
};
TORCH_MODULE(Block);

/// The transformer: token ids [batch, len] to hidden states [batch, len, n_embd].
struct ModelImpl : torch::nn::Module {
  explicit ModelImpl(const Config& c)
      : wte(register_module("wte", torch::nn::Embedding(c.vocab_size, c.n_embd))),
        wpe(register_module("wpe", torch::nn::Embedding(c.n_positions, c.n_embd))),
        h(register_module("h", torch::nn::ModuleList())),
        ln_f(register_module("ln_f", torch::nn::LayerNorm(BlockImpl::norm(c)))) {
    for (std::int64_t i = 0; i < c.n_layer; ++i) h->push_back(Block(c));
  }

  torch::Tensor forward(const torch::Tensor& ids) {
    auto x = wte(ids) + wpe(torch::arange(ids.size(1), torch::kLong));
    for (const auto& block : *h) x = block->as<Block>()->forward(x);
    return ln_f(x);
  }

  torch::nn::Embedding wte, wpe;
  torch::nn::ModuleList h;
  torch::nn::LayerNorm ln_f;
};
TORCH_MODULE(Model);

/// The output layer: its weight is the token embedding's (a tied parameter).
struct TiedHeadImpl : torch::nn::Module {
  explicit TiedHeadImpl(const torch::Tensor& embedding)
      : weight(register_parameter("weight", embedding)) {}
  torch::Tensor forward(const torch::Tensor& x) { return torch::matmul(x, weight.t()); }
  torch::Tensor weight;
};
TORCH_MODULE(TiedHead);

/// `GPT2LMHeadModel`: the transformer under "transformer." and next-token logits.
struct LMHeadModelImpl : torch::nn::Module {
  explicit LMHeadModelImpl(const Config& c)
      : transformer(register_module("transformer", Model(c))),
        lm_head(register_module("lm_head", TiedHead(transformer->wte->weight))) {}

  torch::Tensor forward(const torch::Tensor& ids) { return lm_head(transformer(ids)); }

  Model transformer;
  TiedHead lm_head;
};
TORCH_MODULE(LMHeadModel);

}  // namespace gpt2
