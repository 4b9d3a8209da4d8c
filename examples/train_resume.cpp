// Trains a small model, stops half way with a training checkpoint, resumes in
// a fresh model and optimizer, and checks that the losses continue exactly as
// in a run without the break. The batches (and the dropout masks) come from
// the default CPU generator, whose state the checkpoint carries.
//
//   train_resume [FOLDER]     FOLDER (default: a temporary one) receives the checkpoint
//
// Exits 1 when any loss after the resume differs from the uninterrupted run's.

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "safetensors/training.hpp"

namespace {

constexpr int kSteps = 40;
constexpr int kBreak = 20;

torch::nn::Sequential make_model(std::uint64_t seed) {
  torch::manual_seed(seed);
  return torch::nn::Sequential(torch::nn::Linear(8, 32), torch::nn::Tanh(), torch::nn::Dropout(0.1),
                               torch::nn::Linear(32, 1));
}

// One step on a batch drawn from the default generator: y = sum of the inputs' sines.
float train_step(torch::nn::Sequential& model, torch::optim::Optimizer& optimizer) {
  const torch::Tensor x = torch::randn({64, 8});
  const torch::Tensor y = x.sin().sum(1, /*keepdim=*/true);
  optimizer.zero_grad();
  torch::Tensor loss = torch::mse_loss(model->forward(x), y);
  loss.backward();
  optimizer.step();
  return loss.item<float>();
}

torch::optim::AdamW make_optimizer(torch::nn::Sequential& model) {
  return torch::optim::AdamW(model->parameters(), torch::optim::AdamWOptions(3e-3).weight_decay(0.01));
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  const fs::path folder = argc > 1 ? fs::path(argv[1]) : fs::temp_directory_path() / "train_resume";
  fs::create_directories(folder);
  const std::string checkpoint = (folder / "checkpoint.safetensors").string();

  // Without a break.
  std::vector<float> straight;
  {
    torch::nn::Sequential model = make_model(1);
    torch::optim::AdamW optimizer = make_optimizer(model);
    for (int step = 0; step < kSteps; ++step) straight.push_back(train_step(model, optimizer));
  }

  // Stopped after kBreak steps...
  std::vector<float> resumed;
  {
    torch::nn::Sequential model = make_model(1);
    torch::optim::AdamW optimizer = make_optimizer(model);
    for (int step = 0; step < kBreak; ++step) resumed.push_back(train_step(model, optimizer));
    safetensors::save_training_checkpoint(checkpoint, *model, optimizer, {kBreak, /*epoch=*/0, {}});
  }
  // ... and resumed in another model (initialized differently) and optimizer.
  {
    torch::nn::Sequential model = make_model(2);
    torch::optim::AdamW optimizer = make_optimizer(model);
    torch::manual_seed(3);  // the checkpoint's generator state replaces this one
    const safetensors::TrainingLoadResult loaded =
        safetensors::load_training_checkpoint(checkpoint, *model, optimizer);
    std::printf("resumed %s at step %lld\n", checkpoint.c_str(), static_cast<long long>(loaded.state.step));
    for (std::int64_t step = loaded.state.step; step < kSteps; ++step)
      resumed.push_back(train_step(model, optimizer));
  }

  int differ = 0;
  std::printf("step  uninterrupted  resumed\n");
  for (int step = 0; step < kSteps; ++step) {
    const bool same = std::memcmp(&straight[step], &resumed[step], sizeof(float)) == 0;
    differ += !same;
    std::printf("%4d  %.9g  %.9g%s%s\n", step, straight[step], resumed[step], step == kBreak ? "  <- resumed" : "",
                same ? "" : "  DIFFERS");
  }
  if (differ) {
    std::printf("%d losses differ after the resume\n", differ);
    return 1;
  }
  std::printf("the losses continue exactly (bit for bit) after the resume\n");
  return 0;
}
