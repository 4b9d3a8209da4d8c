// Tensor-parallel loading and saving of a checkpoint over c10d (Gloo).
//
//   tensor_parallel CHECKPOINT [--world N] [--save FOLDER] [--split PATTERN=DIM]...
//
// Without RANK in the environment it starts N ranks of itself (default 2) on
// this machine. With the torchrun-style variables RANK, WORLD_SIZE,
// MASTER_ADDR and MASTER_PORT set it runs as that rank (rank 0 serves the
// TCPStore), so any launcher that sets them works across hosts.
//
// Each rank reads only its part of every tensor (the plan below: a GPT-2
// split the Megatron way, unless --split rules are given), reports how many
// bytes that was, and with --save the ranks write one sharded checkpoint
// together, which rank 0 then reloads and compares with the original.

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "safetensors/distributed.hpp"

extern char** environ;
namespace st = safetensors;

namespace {

// GPT-2 (Hugging Face names, Conv1D weights stored [in, out]): attention and
// MLP inputs column-parallel, their outputs row-parallel, the vocabulary split.
st::PartitionPlan gpt2_plan() {
  return st::PartitionPlan()
      .split("*.attn.c_attn.weight", 1)
      .split("*.attn.c_attn.bias", 0)
      .split("*.attn.c_proj.weight", 0)
      .split("*.mlp.c_fc.weight", 1)
      .split("*.mlp.c_fc.bias", 0)
      .split("*.mlp.c_proj.weight", 0)
      .split("*wte.weight", 0);
}

// LibTorch 2.4+ asks for libuv in TCPStore by default, which builds such as
// Debian's lack: the classic server is used where the option exists.
template <class Options>
auto without_libuv(Options& o, int) -> decltype(o.useLibUV = false, void()) {
  o.useLibUV = false;
}
template <class Options>
void without_libuv(Options&, long) {}

int env_int(const char* name) { return std::atoi(std::getenv(name)); }

int run_rank(const std::string& checkpoint_path, const std::string& save, const st::PartitionPlan& plan) {
  const int rank = env_int("RANK"), world = env_int("WORLD_SIZE");
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<std::uint16_t>(env_int("MASTER_PORT"));
  store_options.isServer = rank == 0;
  store_options.numWorkers = world;
  store_options.timeout = std::chrono::seconds(120);
  without_libuv(store_options, 0);
  auto store = c10::make_intrusive<c10d::TCPStore>(std::getenv("MASTER_ADDR"), store_options);
  auto gloo = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(120));
  gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  auto comm = st::make_communicator(c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, gloo));

  const st::TensorParallel tp{plan, rank, world};
  const auto start = std::chrono::steady_clock::now();
  const st::ShardedOpen checkpoint(checkpoint_path, st::LoadOptions().backend(st::Backend::Pread));
  const st::TensorDict parts = st::load_parts(checkpoint, tp);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::uint64_t mine = 0, whole = 0, split = 0;
  for (const auto& item : parts) {
    mine += item.value().nbytes();
    whole += checkpoint.info(item.key()).nbytes();
    split += tp.range(item.key(), item.value().sizes().vec()) ? 1 : 0;
  }
  std::printf("rank %d/%d: %zu tensors (%llu split), %.2f MB of %.2f MB (%.1f%%) read in %.1f ms\n", rank, world,
              parts.size(), static_cast<unsigned long long>(split), mine / 1e6, whole / 1e6, 100.0 * mine / whole, ms);

  if (!save.empty()) {
    std::filesystem::create_directories(save);  // every rank: whoever comes first makes it
    st::save_sharded_distributed(parts, save, *comm, plan);
    if (rank == 0) {
      const st::ShardedOpen saved(save), original(checkpoint_path);
      bool same = saved.size() == original.size();
      for (const std::string& name : original.keys())
        same = same && saved.contains(name) && saved.get_tensor(name).equal(original.get_tensor(name));
      std::printf("saved %zu shards to %s: %s the original\n", saved.shards().size(), save.c_str(),
                  same ? "identical to" : "DIFFERENT FROM");
      if (!same) return 1;
    }
  }
  return 0;
}

// A free TCP port on the loopback interface.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::perror("free_port");
    std::exit(1);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Starts `world` copies of this program as ranks on this machine.
int launch(int world, char** argv) {
  const std::string port = std::to_string(free_port());
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world; ++rank) {
    std::vector<std::string> env = {"RANK=" + std::to_string(rank), "WORLD_SIZE=" + std::to_string(world),
                                    "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + port};
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    for (char** e = environ; *e; ++e) envp.push_back(*e);
    envp.push_back(nullptr);
    pid_t pid;
    if (::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data()) != 0) {
      std::perror("posix_spawn");
      return 1;
    }
    pids.push_back(pid);
  }
  int failed = 0;
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  return failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string checkpoint, save;
  int world = 2;
  st::PartitionPlan custom;
  bool has_custom = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--world" && i + 1 < argc) {
      world = std::atoi(argv[++i]);
    } else if (arg == "--save" && i + 1 < argc) {
      save = argv[++i];
    } else if (arg == "--split" && i + 1 < argc) {
      const std::string rule = argv[++i];
      const auto eq = rule.rfind('=');
      if (eq == std::string::npos) {
        std::fprintf(stderr, "--split takes PATTERN=DIM\n");
        return 2;
      }
      custom.split(rule.substr(0, eq), std::atoll(rule.c_str() + eq + 1));
      has_custom = true;
    } else if (checkpoint.empty() && arg[0] != '-') {
      checkpoint = arg;
    } else {
      checkpoint.clear();
      break;
    }
  }
  if (checkpoint.empty() || world < 1) {
    std::fprintf(stderr, "usage: %s CHECKPOINT [--world N] [--save FOLDER] [--split PATTERN=DIM]...\n", argv[0]);
    return 2;
  }
  if (!std::getenv("RANK")) return launch(world, argv);
  try {
    return run_rank(checkpoint, save, has_custom ? custom : gpt2_plan());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %s: %s\n", std::getenv("RANK"), e.what());
    return 1;
  }
}
