// Tensor-parallel loading and saving over a Communicator (c10d underneath).
//
// Every collective step is reached by every rank, whatever happened locally:
// a rank that fails records its error and takes part in the next exchange,
// where all ranks learn of it and throw together. No rank waits for a
// partner that has given up.

#include "safetensors/distributed.hpp"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>

#include "module_internal.hpp"
#include "save_internal.hpp"
#include "safetensors/error.hpp"
#include "safetensors/torch_dtype.hpp"
#include "safetensors/writer.hpp"
#include "detail/text.hpp"
#include "sharded_internal.hpp"

namespace safetensors {

namespace fs = std::filesystem;
using detail::Catalog;
using detail::Fill;
using detail::Part;
using detail::part_index;
using detail::shape_text;

namespace {

// ---------------------------------------------------------------------------
// Moving bytes

// The bytes of a contiguous CPU tensor, sharing its memory.
at::Tensor bytes_of(const at::Tensor& contiguous) {
  const at::Tensor keep = contiguous;
  return at::from_blob(
      keep.data_ptr(), {static_cast<std::int64_t>(keep.nbytes())}, [keep](void*) {},
      at::TensorOptions().dtype(at::kByte));
}

at::Tensor bytes_of(const std::string& s) {
  at::Tensor out = at::empty({static_cast<std::int64_t>(s.size())}, at::kByte);
  if (!s.empty()) std::memcpy(out.data_ptr(), s.data(), s.size());
  return out;
}

std::string string_of(const at::Tensor& bytes, std::size_t size) {
  return std::string(static_cast<const char*>(bytes.data_ptr()), size);
}

std::int64_t read_i64(const at::Tensor& bytes, std::size_t i) {
  std::int64_t v;
  std::memcpy(&v, static_cast<const std::uint8_t*>(bytes.data_ptr()) + 8 * i, 8);
  return v;
}

at::Tensor i64_bytes(const std::vector<std::int64_t>& values) {
  at::Tensor out = at::empty({static_cast<std::int64_t>(values.size() * 8)}, at::kByte);
  if (!values.empty()) std::memcpy(out.data_ptr(), values.data(), values.size() * 8);
  return out;
}

// Every rank's integers (the same count on every rank).
std::vector<std::vector<std::int64_t>> all_gather_i64(Communicator& comm,
                                                      const std::vector<std::int64_t>& mine) {
  const int world = comm.world_size();
  std::vector<at::Tensor> out;
  for (int r = 0; r < world; ++r) out.push_back(at::empty({static_cast<std::int64_t>(mine.size() * 8)}, at::kByte));
  comm.all_gather(out, i64_bytes(mine));
  std::vector<std::vector<std::int64_t>> values(static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r)
    for (std::size_t i = 0; i < mine.size(); ++i) values[r].push_back(read_i64(out[r], i));
  return values;
}

// Every rank's text, of any length.
std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& mine) {
  const auto lengths = all_gather_i64(comm, {static_cast<std::int64_t>(mine.size())});
  std::int64_t longest = 0;
  for (const auto& l : lengths) longest = std::max(longest, l[0]);
  std::string padded = mine;
  padded.resize(static_cast<std::size_t>(longest));
  std::vector<at::Tensor> out;
  for (std::size_t r = 0; r < lengths.size(); ++r) out.push_back(at::empty({longest}, at::kByte));
  comm.all_gather(out, bytes_of(padded));
  std::vector<std::string> texts;
  for (std::size_t r = 0; r < lengths.size(); ++r)
    texts.push_back(string_of(out[r], static_cast<std::size_t>(lengths[r][0])));
  return texts;
}

// Root's text, on every rank.
std::string broadcast_string(Communicator& comm, const std::string& text, int root) {
  at::Tensor length = i64_bytes({static_cast<std::int64_t>(text.size())});
  comm.broadcast(length, root);
  const std::int64_t n = read_i64(length, 0);
  at::Tensor bytes = comm.rank() == root ? bytes_of(text) : at::empty({n}, at::kByte);
  if (n > 0) comm.broadcast(bytes, root);
  return string_of(bytes, static_cast<std::size_t>(n));
}

void send_tensor(Communicator& comm, const at::Tensor& t, int dst, int tag) {
  const at::Tensor c = t.contiguous();
  if (c.nbytes() > 0) comm.send(bytes_of(c), dst, tag);
}

// Fills `t` (contiguous, CPU) from `src`.
void recv_into(Communicator& comm, at::Tensor& t, int src, int tag) {
  if (t.nbytes() == 0) return;
  at::Tensor bytes = bytes_of(t);
  comm.recv(bytes, src, tag);
}

// ---------------------------------------------------------------------------
// Agreeing on failure

// A rank's outcome of a step: 0 for success, else 1 + the error's code.
std::int64_t outcome_of(const std::exception_ptr& error) {
  if (!error) return 0;
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    return 1 + static_cast<std::int64_t>(e.code());
  } catch (...) {
    return 1 + static_cast<std::int64_t>(ErrorCode::Io);
  }
}

// Every rank learns whether any failed `what`; the ranks that did rethrow their
// error, the others throw one naming the first rank that failed.
void agree(Communicator& comm, const std::exception_ptr& error, const std::string& file,
           const std::string& what) {
  const auto outcomes = all_gather_i64(comm, {outcome_of(error)});
  if (error) std::rethrow_exception(error);
  for (std::size_t r = 0; r < outcomes.size(); ++r)
    if (outcomes[r][0] != 0)
      throw Error(static_cast<ErrorCode>(outcomes[r][0] - 1), file, "",
                  "rank " + std::to_string(r) + " failed to " + what + " (its own error says why)");
}

// ---------------------------------------------------------------------------
// A catalog sent from rank 0

// The path goes as its bytes: a file name need not be UTF-8, which JSON text is.
std::string catalog_json(const Catalog& catalog) {
  nlohmann::json doc;
  doc["path"] = std::vector<std::uint8_t>(catalog.path.begin(), catalog.path.end());
  doc["tensors"] = nlohmann::json::array();
  for (const TensorInfo& info : catalog.tensors)
    doc["tensors"].push_back({info.name, std::string(dtype_name(info.dtype)), info.shape});
  doc["aliases"] = catalog.aliases;
  return doc.dump();
}

// The message and code of a failed step, for the other ranks. Any exception
// counts: a rank that left a collective step on one the others were not told
// of would leave them waiting forever. The text is unescaped (the Error that
// relays it escapes it once), so it travels as bytes: it need not be UTF-8.
std::pair<std::string, ErrorCode> failure_of(const std::exception_ptr& error) {
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    std::string text = e.file().empty() ? "" : e.file() + ": ";
    if (!e.tensor().empty()) text += "tensor '" + e.tensor() + "': ";
    return {text + e.detail(), e.code()};
  } catch (const std::exception& e) {
    return {e.what(), ErrorCode::Io};
  } catch (...) {
    return {"an exception that is not a std::exception", ErrorCode::Io};
  }
}

using Bytes = std::vector<std::uint8_t>;
Bytes bytes_of_text(const std::string& text) { return Bytes(text.begin(), text.end()); }
std::string text_of_bytes(const nlohmann::json& bytes) {
  const Bytes b = bytes.get<Bytes>();
  return std::string(b.begin(), b.end());
}

std::string error_json(const std::exception_ptr& error) {
  const auto [text, code] = failure_of(error);
  return nlohmann::json{{"error", bytes_of_text(text)}, {"code", static_cast<int>(code)}}.dump();
}

Catalog parse_catalog(const std::string& text, const std::string& path) {
  const nlohmann::json doc = nlohmann::json::parse(text);
  if (doc.contains("error"))
    throw Error(static_cast<ErrorCode>(doc["code"].get<int>()), "", "",
                "rank 0 cannot read the checkpoint: " + text_of_bytes(doc["error"]));
  Catalog catalog;
  const auto path_bytes = doc["path"].get<std::vector<std::uint8_t>>();
  catalog.path.assign(path_bytes.begin(), path_bytes.end());
  for (const auto& t : doc["tensors"]) {
    TensorInfo info;
    info.name = t[0].get<std::string>();
    info.dtype = *parse_dtype(t[1].get<std::string>());
    info.shape = t[2].get<std::vector<std::uint64_t>>();
    catalog.add(std::move(info));
  }
  catalog.aliases = doc["aliases"].get<std::vector<std::pair<std::string, std::string>>>();
  return catalog;
}

// ---------------------------------------------------------------------------
// What each rank asks rank 0 for

// The whole of a catalog's tensor, or a part of it; ordered by tensor first.
struct Request {
  std::size_t tensor;
  bool part;
  std::int64_t dim, start, length;
  bool operator<(const Request& o) const {
    return std::tie(tensor, part, dim, start, length) < std::tie(o.tensor, o.part, o.dim, o.start, o.length);
  }
};

Request request_of(const Catalog& catalog, const Fill& f) {
  const std::size_t tensor = catalog.index.at(f.source);
  if (!f.part) return {tensor, false, 0, 0, 0};
  return {tensor, true, f.part->dim, f.part->range.start, f.part->range.length};
}

// A rank's outcome and its requests, in order.
std::string requests_json(std::int64_t outcome, const std::vector<Request>& requests) {
  nlohmann::json doc;
  doc["outcome"] = outcome;
  doc["requests"] = nlohmann::json::array();
  for (const Request& q : requests) doc["requests"].push_back({q.tensor, q.part, q.dim, q.start, q.length});
  return doc.dump();
}

std::vector<Request> parse_requests(const std::string& text, std::int64_t& outcome) {
  const nlohmann::json doc = nlohmann::json::parse(text);
  outcome = doc["outcome"].get<std::int64_t>();
  std::vector<Request> out;
  for (const auto& q : doc["requests"])
    out.push_back({q[0].get<std::size_t>(), q[1].get<bool>(), q[2].get<std::int64_t>(), q[3].get<std::int64_t>(),
                   q[4].get<std::int64_t>()});
  return out;
}

// ---------------------------------------------------------------------------
// What each rank holds of a tensor it saves

struct Described {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::int64_t split_dim;  // -1: replicated
};

struct RankState {
  std::string error;  // empty when the rank can save
  std::string set_id;
  std::vector<Described> tensors;
};

std::string describe_local(const NamedTensors& local, const PartitionPlan& plan, const std::string& set_id) {
  nlohmann::json doc;
  doc["set_id"] = set_id;
  doc["tensors"] = nlohmann::json::array();
  try {
    const Deduplicated unique = deduplicate_shared(local);
    if (!unique.aliases.empty()) {
      const auto& [removed, kept] = *unique.aliases.begin();
      throw Error(ErrorCode::InvalidArgument, "", removed,
                  "shares memory with tensor '" + kept + "'; save one (see deduplicate_shared)");
    }
    const TensorParallel tp{plan, 0, 1};
    for (const auto& item : local.items()) {
      // As save_file checks it; the other ranks read the name as JSON text.
      if (!detail::is_valid_utf8(item.name))
        throw Error(ErrorCode::InvalidArgument, "", item.name, "tensor name is not valid UTF-8");
      const EntrySpec spec = detail::describe_entry(item, "");
      const Placement p = tp.placement(item.name, spec.shape.size());
      if (p.split_dim && (item.raw_dtype || dtype_bits(spec.dtype) < 8))
        throw Error(ErrorCode::InvalidArgument, "", item.name,
                    item.raw_dtype ? "raw bytes of a dtype this LibTorch lacks cannot be split across ranks"
                                   : "a packed sub-byte dtype cannot be split across ranks");
      doc["tensors"].push_back({item.name, std::string(dtype_name(spec.dtype)), spec.shape, p.split_dim.value_or(-1)});
    }
  } catch (...) {
    doc["error"] = bytes_of_text(failure_of(std::current_exception()).first);
  }
  return doc.dump();
}

RankState parse_state(const std::string& text) {
  const nlohmann::json doc = nlohmann::json::parse(text);
  RankState state;
  if (doc.contains("error")) state.error = text_of_bytes(doc["error"]);
  state.set_id = doc["set_id"].get<std::string>();
  for (const auto& t : doc["tensors"])
    state.tensors.push_back({t[0].get<std::string>(), t[1].get<std::string>(),
                             t[2].get<std::vector<std::int64_t>>(), t[3].get<std::int64_t>()});
  return state;
}

// The same tensors on every rank, each rank's part fitting the others'.
void check_consistent(const std::vector<RankState>& states, const std::string& folder) {
  for (std::size_t r = 0; r < states.size(); ++r)
    if (!states[r].error.empty())
      throw Error(ErrorCode::InvalidArgument, folder, "", "rank " + std::to_string(r) + ": " + states[r].error);
  const RankState& first = states[0];
  for (std::size_t r = 1; r < states.size(); ++r) {
    const RankState& other = states[r];
    const std::string who = "rank " + std::to_string(r) + " and rank 0 ";
    if (other.tensors.size() != first.tensors.size())
      throw Error(ErrorCode::InvalidArgument, folder, "",
                  who + "save different numbers of tensors (" + std::to_string(other.tensors.size()) +
                      " and " + std::to_string(first.tensors.size()) + ")");
    for (std::size_t i = 0; i < first.tensors.size(); ++i) {
      const Described& a = first.tensors[i];
      const Described& b = other.tensors[i];
      if (a.name != b.name)
        throw Error(ErrorCode::InvalidArgument, folder, a.name,
                    who + "disagree on the tensors' names or order: rank " + std::to_string(r) + " has '" +
                        b.name + "' in its place");
      if (a.dtype != b.dtype)
        throw Error(ErrorCode::InvalidArgument, folder, a.name, who + "hold it as " + b.dtype + " and " + a.dtype);
      bool fits = a.shape.size() == b.shape.size();
      for (std::size_t d = 0; fits && d < a.shape.size(); ++d)
        fits = a.shape[d] == b.shape[d] || static_cast<std::int64_t>(d) == a.split_dim;
      if (!fits)
        throw Error(ErrorCode::InvalidArgument, folder, a.name,
                    who + "hold parts that do not fit together: " + shape_text(b.shape) + " and " +
                        shape_text(a.shape) +
                        (a.split_dim < 0 ? " (replicated)"
                                         : " (split along dimension " + std::to_string(a.split_dim) + ")"));
    }
  }
}

std::uint64_t dtype_bytes(const std::string& dtype, const std::vector<std::int64_t>& shape) {
  std::uint64_t bits = dtype_bits(*parse_dtype(dtype));
  for (std::int64_t d : shape) bits *= static_cast<std::uint64_t>(d);
  return (bits + 7) / 8;
}

}  // namespace

// ---------------------------------------------------------------------------
// Loading

TensorDict load_parts(const ShardedOpen& checkpoint, const TensorParallel& tp) {
  TensorDict out;
  for (const std::string& name : checkpoint.keys()) {
    const TensorInfo& info = checkpoint.info(name);
    const Placement p = tp.placement(name, info.shape.size());
    if (!p.split_dim) {
      out.insert(name, checkpoint.get_tensor(name));
      continue;
    }
    if (dtype_bits(info.dtype) < 8)
      throw Error(ErrorCode::InvalidArgument, checkpoint.path(), name,
                  "a packed sub-byte dtype cannot be split across ranks");
    const std::vector<std::int64_t> shape = detail::torch_shape(info, checkpoint.path());
    const PartRange range = part_range(shape[static_cast<std::size_t>(*p.split_dim)], tp.rank, tp.world_size);
    out.insert(name, checkpoint.get_slice(name)(part_index(*p.split_dim, range)));
  }
  return out;
}

LoadReport load_state_dict_broadcast(torch::nn::Module& module, const std::string& path, Communicator& comm,
                                     const StateDictLoadOptions& options) {
  const int rank = comm.rank(), world = comm.world_size();

  // Rank 0 opens the checkpoint and tells everyone what it holds.
  std::optional<ShardedOpen> checkpoint;
  std::string message;
  std::exception_ptr root_error;
  if (rank == 0) {
    try {
      checkpoint.emplace(path, LoadOptions().backend(detail::default_backend(options)));
      message = catalog_json(Catalog::of(*checkpoint));
    } catch (...) {
      root_error = std::current_exception();
      message = error_json(root_error);
    }
  }
  message = broadcast_string(comm, message, 0);
  if (root_error) std::rethrow_exception(root_error);
  const Catalog catalog = parse_catalog(message, path);
  const std::string& file = catalog.path;

  // Each rank matches its module; what it needs of each tensor is gathered:
  // the whole tensor, or parts of it, each at most once.
  detail::Entries targets = detail::module_state(module);
  std::exception_ptr local_error;
  LoadReport report;
  std::vector<detail::Write> writes;
  std::map<Request, std::vector<const detail::Write*>> needs;
  std::optional<detail::Matcher> matcher;
  try {
    if (const auto& tp = options.tensor_parallel(); tp && (tp->rank != rank || tp->world_size != world))
      throw Error(ErrorCode::InvalidArgument, file, "",
                  "the options are for rank " + std::to_string(tp->rank) + " of " + std::to_string(tp->world_size) +
                      " but the communicator's rank is " + std::to_string(rank) + " of " + std::to_string(world));
    matcher.emplace(targets, catalog, options);
    matcher->match();
    report = matcher->report();
    detail::refuse_mismatch(report, options, file, "rank " + std::to_string(rank) + ": the module");
    writes = matcher->writes();
    for (const detail::Write& w : writes) needs[request_of(catalog, *w.fill)].push_back(&w);
  } catch (...) {
    local_error = std::current_exception();
  }
  std::vector<Request> mine;
  for (const auto& [request, users] : needs) mine.push_back(request);
  std::vector<std::vector<Request>> requests;
  std::vector<std::int64_t> outcomes;
  for (const std::string& text : all_gather_strings(comm, requests_json(outcome_of(local_error), mine))) {
    outcomes.push_back(0);
    requests.push_back(parse_requests(text, outcomes.back()));
  }
  if (local_error) std::rethrow_exception(local_error);
  for (int r = 0; r < world; ++r)
    if (outcomes[r] != 0)
      throw Error(static_cast<ErrorCode>(outcomes[r] - 1), file, "",
                  "rank " + std::to_string(r) + " cannot load the checkpoint (its own error says why); " +
                      "no rank changed its module");

  // Rank 0 reads each rank's parts and sends them, tensor by tensor; each
  // message's tag is its place in its rank's list of requests.
  at::NoGradGuard no_grad;
  detail::Handout handout;
  std::vector<std::pair<const detail::Write*, at::Tensor>> in_place;  // linked writes, after the others
  std::vector<std::size_t> next(static_cast<std::size_t>(world), 0);  // each rank's first request not yet served
  for (std::size_t i = 0; i < catalog.tensors.size(); ++i) {
    const TensorInfo& info = catalog.tensors[i];
    std::vector<std::pair<Request, at::Tensor>> received;
    if (rank == 0) {
      at::Tensor whole;  // read once, however many ranks need all of it
      for (int r = 0; r < world; ++r) {
        const std::vector<Request>& of_rank = requests[static_cast<std::size_t>(r)];
        for (std::size_t& k = next[static_cast<std::size_t>(r)]; k < of_rank.size() && of_rank[k].tensor == i; ++k) {
          const Request& q = of_rank[k];
          if (!q.part && !whole.defined()) whole = checkpoint->get_tensor(info.name);
          const at::Tensor data = q.part ? checkpoint->get_slice(info.name)(part_index(q.dim, {q.start, q.length})) : whole;
          if (r == 0) {
            received.emplace_back(q, data);
          } else {
            send_tensor(comm, data, r, static_cast<int>(k));
          }
        }
      }
    } else {
      const std::vector<Request>& of_rank = requests[static_cast<std::size_t>(rank)];
      for (std::size_t& k = next[static_cast<std::size_t>(rank)]; k < of_rank.size() && of_rank[k].tensor == i; ++k) {
        const Request& q = of_rank[k];
        std::vector<std::int64_t> shape = detail::torch_shape(info, catalog.path);
        if (q.part) shape[static_cast<std::size_t>(q.dim)] = q.length;
        at::Tensor data = at::empty(shape, at::TensorOptions().dtype(*to_torch_dtype(info.dtype)));
        recv_into(comm, data, 0, static_cast<int>(k));
        received.emplace_back(q, std::move(data));
      }
    }
    for (const auto& [request, data] : received) {
      for (const detail::Write* w : needs.at(request)) {
        at::Tensor& target = targets[w->fill->target].second;
        if (w->linked) {
          in_place.emplace_back(w, data);
        } else if (options.mode() == LoadMode::ZeroCopy && target.device().is_cpu()) {
          const at::Tensor own = handout.own(data.to(target.scalar_type()));
          for (std::size_t m : w->members) targets[m].second.set_data(own);
        } else {
          target.copy_(data);
        }
      }
    }
  }
  // In the module's order, as writes() gives them: the last write to shared memory wins.
  std::sort(in_place.begin(), in_place.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [w, data] : in_place) targets[w->fill->target].second.copy_(data);
  return report;
}

// ---------------------------------------------------------------------------
// Saving

std::vector<std::string> save_sharded_distributed(const NamedTensors& local, const std::string& folder,
                                                  Communicator& comm, const PartitionPlan& plan,
                                                  const std::optional<Metadata>& metadata,
                                                  const DistributedSaveOptions& options) {
  const int rank = comm.rank(), world = comm.world_size();
  const std::string index_path = (fs::path(folder) / kIndexFileName).string();

  // Before anyone stages a shard: leftovers of dead writers, and what the new
  // checkpoint replaces.
  // Every rank reads the previous checkpoint (which no rank changes before the
  // index is written, and rank 0's sweep leaves what it occupies), since it
  // decides the names shards are published under.
  std::string set_id;
  if (rank == 0) {
    detail::remove_dead_writers_shards(folder);
    set_id = detail::new_set_id();
  }
  const detail::Checkpoint previous = detail::current_checkpoint(folder);

  // Every rank describes what it holds; all check the same things.
  std::vector<RankState> states;
  for (const std::string& text : all_gather_strings(comm, describe_local(local, plan, set_id)))
    states.push_back(parse_state(text));
  check_consistent(states, folder);
  set_id = states[0].set_id;
  const std::vector<Described>& tensors = states[0].tensors;
  const std::size_t n = tensors.size();

  // Whole shapes, each rank's offset along a split dimension, and owners that
  // balance the bytes (ties to the lower rank).
  std::vector<std::vector<std::int64_t>> full(n), offsets(n);
  std::vector<int> owner(n);
  std::vector<std::uint64_t> load(static_cast<std::size_t>(world), 0);
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    full[i] = tensors[i].shape;
    if (tensors[i].split_dim >= 0) {
      const auto d = static_cast<std::size_t>(tensors[i].split_dim);
      std::int64_t sum = 0;
      for (const RankState& s : states) {
        offsets[i].push_back(sum);
        sum += s.tensors[i].shape[d];
      }
      full[i][d] = sum;
    }
    const std::uint64_t bytes = dtype_bytes(tensors[i].dtype, full[i]);
    total += bytes;
    owner[i] = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    load[static_cast<std::size_t>(owner[i])] += bytes;
  }
  std::vector<int> shard_of_rank(static_cast<std::size_t>(world), -1);
  int shards = 0;
  for (int r = 0; r < world; ++r)
    if (std::count(owner.begin(), owner.end(), r) > 0) shard_of_rank[static_cast<std::size_t>(r)] = shards++;
  std::vector<std::string> names;
  for (int k = 0; k < shards; ++k) names.push_back(detail::shard_file_name(static_cast<std::size_t>(k),
                                                                           static_cast<std::size_t>(shards)));

  // Each split tensor is assembled on its owner, in one order on every rank.
  NamedTensors mine;
  const auto& items = local.items();
  for (std::size_t i = 0; i < n; ++i) {
    const auto& item = items[i];
    const int tag = static_cast<int>(i);
    if (tensors[i].split_dim < 0) {
      if (owner[i] != rank) continue;
      if (item.raw_dtype) {
        mine.add_raw(item.name, *item.raw_dtype, item.raw_shape, item.tensor);
      } else {
        mine.add(item.name, item.tensor);
      }
      continue;
    }
    const std::int64_t dim = tensors[i].split_dim;
    if (owner[i] != rank) {
      send_tensor(comm, item.tensor.cpu(), owner[i], tag);
      continue;
    }
    at::Tensor whole = at::empty(full[i], item.tensor.options().device(at::kCPU));
    for (int r = 0; r < world; ++r) {
      const std::int64_t length = states[static_cast<std::size_t>(r)].tensors[i].shape[static_cast<std::size_t>(dim)];
      at::Tensor part = whole.narrow(dim, offsets[i][static_cast<std::size_t>(r)], length);
      if (r == rank) {
        part.copy_(item.tensor);
      } else if (part.is_contiguous()) {
        recv_into(comm, part, r, tag);
      } else {
        at::Tensor buffer = at::empty(part.sizes(), part.options());
        recv_into(comm, buffer, r, tag);
        part.copy_(buffer);
      }
    }
    mine.add(item.name, whole);
  }

  Metadata meta = metadata.value_or(Metadata{});
  meta.emplace("format", "pt");
  meta[std::string(kShardSetKey)] = set_id;

  // Stage, agree, move into place, agree, then the index.
  // The lock is made inside the step too: a rank that cannot make it (a folder
  // it cannot write, no file descriptor left) fails the step for every rank.
  std::optional<detail::StagedShards> staged;
  std::exception_ptr error;
  try {
    staged.emplace(folder, set_id);
    if (shard_of_rank[static_cast<std::size_t>(rank)] >= 0)
      staged->write(mine, names[static_cast<std::size_t>(shard_of_rank[static_cast<std::size_t>(rank)])], meta,
                   SaveOptions().fsync(options.fsync()).progress(options.progress()));
  } catch (...) {  // the progress callback's exceptions too
    error = std::current_exception();
  }
  agree(comm, error, folder, "write its shard; the previous checkpoint is kept");
  try {
    staged->commit(options.fsync(), previous);
  } catch (...) {
    error = std::current_exception();
  }
  agree(comm, error, folder, "move its shard into place");
  if (rank == 0) {
    try {
      std::map<std::string, std::string> weight_map;
      for (std::size_t i = 0; i < n; ++i)
        weight_map.emplace(tensors[i].name,
                           names[static_cast<std::size_t>(shard_of_rank[static_cast<std::size_t>(owner[i])])]);
      names = detail::commit_set(folder, names, weight_map, total, set_id, previous, options.fsync());
    } catch (...) {
      error = std::current_exception();
    }
  }
  agree(comm, error, index_path, "write the index");
  names.emplace_back(kIndexFileName);
  return names;
}

std::vector<std::string> save_state_dict_distributed(const torch::nn::Module& module, const std::string& folder,
                                                     Communicator& comm, const PartitionPlan& plan,
                                                     const std::optional<Metadata>& metadata,
                                                     const DistributedSaveOptions& options) {
  auto [tensors, meta] = detail::state_to_save(detail::module_state(module), metadata);
  return save_sharded_distributed(tensors, folder, comm, plan, meta, options);
}

}  // namespace safetensors
