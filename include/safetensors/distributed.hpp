#pragma once
// Tensor-parallel checkpoints on torch.distributed (c10d): each rank reads only
// its part of each tensor; a save gathers each tensor on one rank, every rank
// writes its own shard, and rank 0 writes the index last.
//
//   auto store = c10::make_intrusive<c10d::TCPStore>(master_addr, store_options);
//   auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, gloo_options);
//   auto comm = safetensors::make_communicator(group);
//   safetensors::TensorParallel tp{plan, rank, world};
//   safetensors::load_state_dict(model, "ckpt/", safetensors::StateDictLoadOptions().tensor_parallel(tp));
//   safetensors::save_state_dict_distributed(model, "out/", *comm, plan);
//
// The loads with a plan need no communication at all (see
// StateDictLoadOptions::tensor_parallel and load_parts); the collectives
// serve load_state_dict_broadcast (rank 0 reads, for files only one host
// sees) and the distributed save.
//
// Opt-in: the umbrella header safetensors.hpp leaves this one out, since it
// includes c10d's headers (torch/csrc/distributed), which a program that does
// not use torch.distributed need not compile.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "safetensors/load.hpp"
#include "safetensors/module.hpp"
#include "safetensors/save.hpp"
#include "safetensors/sharded.hpp"
#include "safetensors/tensor_parallel.hpp"

#if __has_include(<torch/csrc/distributed/c10d/Types.hpp>)
#include <torch/csrc/distributed/c10d/Types.hpp>
#define SAFETENSORS_HAS_C10D 1
#endif

namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace safetensors {

/// The collectives the distributed functions need. Every tensor they pass is a
/// contiguous CPU tensor of bytes (kByte), so any backend that moves CPU
/// tensors serves (Gloo, MPI); on GPU clusters use a Gloo group beside NCCL.
/// make_communicator() adapts a c10d process group; a custom implementation
/// (tests, another transport) can derive from this class. Every method blocks
/// until its part of the operation is done; ranks call them in the same order.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  /// `outputs[r]` receives rank r's `input`; all inputs have the same size.
  virtual void all_gather(std::vector<at::Tensor>& outputs, const at::Tensor& input) = 0;
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  virtual void send(const at::Tensor& tensor, int dst, int tag) = 0;
  virtual void recv(at::Tensor& tensor, int src, int tag) = 0;
};

#ifdef SAFETENSORS_HAS_C10D
/// A Communicator over a c10d process group: `c10d::ProcessGroup` (LibTorch
/// 1.13 and 2.x) or a backend such as `c10d::ProcessGroupGloo` (2.x). The
/// group is kept alive by the communicator.
template <class Group>
std::shared_ptr<Communicator> make_communicator(c10::intrusive_ptr<Group> group) {
  class Adapter final : public Communicator {
   public:
    explicit Adapter(c10::intrusive_ptr<Group> g) : group_(std::move(g)) {}
    int rank() const override { return group_->getRank(); }
    int world_size() const override { return group_->getSize(); }
    void all_gather(std::vector<at::Tensor>& outputs, const at::Tensor& input) override {
      std::vector<std::vector<at::Tensor>> out{outputs};
      std::vector<at::Tensor> in{input};
      group_->allgather(out, in, ::c10d::AllgatherOptions())->wait();
      for (std::size_t r = 0; r < outputs.size(); ++r)
        if (!out[0][r].is_same(outputs[r])) outputs[r].copy_(out[0][r]);
    }
    void broadcast(at::Tensor& tensor, int root) override {
      std::vector<at::Tensor> tensors{tensor};
      ::c10d::BroadcastOptions options;
      options.rootRank = root;
      group_->broadcast(tensors, options)->wait();
    }
    void send(const at::Tensor& tensor, int dst, int tag) override {
      std::vector<at::Tensor> tensors{tensor};
      group_->send(tensors, dst, tag)->wait();
    }
    void recv(at::Tensor& tensor, int src, int tag) override {
      std::vector<at::Tensor> tensors{tensor};
      group_->recv(tensors, src, tag)->wait();
    }

   private:
    c10::intrusive_ptr<Group> group_;
  };
  return std::make_shared<Adapter>(std::move(group));
}
#endif

/// This rank's part of every tensor of a checkpoint (the whole of the
/// replicated ones), in keys() order, reading only those bytes. The plan is
/// matched against the checkpoint's names.
TensorDict load_parts(const ShardedOpen& checkpoint, const TensorParallel& tp);
[[deprecated("use load_parts")]] inline TensorDict load_shards(const ShardedOpen& checkpoint,
                                                               const TensorParallel& tp) {
  return load_parts(checkpoint, tp);
}

/// load_state_dict for files that only rank 0 can see: rank 0 opens `path`
/// (ignored on the other ranks), every rank matches the checkpoint's tensors
/// to its module, and rank 0 reads each rank's part (the
/// options' tensor_parallel, whose rank and world size must be the
/// communicator's) and sends it; an alias of a tensor gets the part its own
/// name's placement asks for. A problem on any rank (a strict mismatch, a
/// file rank 0 cannot read) makes every rank throw, and no module is changed.
/// Collective: every rank calls it.
LoadReport load_state_dict_broadcast(torch::nn::Module& module, const std::string& path,
                                     Communicator& comm, const StateDictLoadOptions& options = {});

/// Options of the distributed saves. Each rank's progress counts the shard
/// that rank writes (none, on a rank that owns no tensor); an exception thrown
/// from it makes every rank throw, leaving the previous checkpoint.
struct DistributedSaveOptions : WriteOptions<DistributedSaveOptions> {};

/// Saves a tensor-parallel state into `folder` (which must exist) as one
/// sharded checkpoint (`model-0000k-of-0000n.safetensors` and
/// `model.safetensors.index.json`) that a single process and the reference
/// implementation load. Each rank passes its part of every tensor (the same
/// names, dtypes and placements on every rank; a split tensor's parts, in rank
/// order, make the whole: any lengths). Each tensor is assembled on one owner
/// rank (owners balance bytes), each owner writes one shard, and rank 0 writes
/// the index after every shard is in place, removing the files of the
/// checkpoint it replaces. Crash-safety as save_sharded: shards are staged
/// under temporary names and renamed after every rank has written its own,
/// and all carry the save's kShardSetKey. Any rank's failure makes every rank
/// throw, leaving the previous checkpoint. `metadata` must be the same on
/// every rank. Collective. Returns the files of the checkpoint (shards, then
/// the index).
std::vector<std::string> save_sharded_distributed(const NamedTensors& local, const std::string& folder,
                                                  Communicator& comm, const PartitionPlan& plan,
                                                  const std::optional<Metadata>& metadata = std::nullopt,
                                                  const DistributedSaveOptions& options = {});

/// save_sharded_distributed of a module's parameters and buffers (copied to
/// CPU), tied tensors saved once as save_state_dict does.
std::vector<std::string> save_state_dict_distributed(const torch::nn::Module& module,
                                                     const std::string& folder, Communicator& comm,
                                                     const PartitionPlan& plan,
                                                     const std::optional<Metadata>& metadata = std::nullopt,
                                                     const DistributedSaveOptions& options = {});

}  // namespace safetensors
