#pragma once
// Selecting, renaming and casting the tensors of a checkpoint on their way to
// a new file: what `safetensors-torch convert --include/--exclude/--strip-prefix/
// --add-prefix/--dtype` does, for library users too.
//
//   auto transform = safetensors::TensorTransform()
//                        .exclude({"*.attn.bias"})
//                        .strip_prefix("module.")
//                        .dtype(safetensors::Dtype::BF16);
//   safetensors::TransformReport report;
//   safetensors::NamedTensors out = safetensors::transform_tensors(tensors, transform, &aliases, &report);

#include <map>
#include <optional>
#include <string>
#include <vector>

#include <torch/arg.h>

#include "safetensors/dtype.hpp"
#include "safetensors/error.hpp"
#include "safetensors/save.hpp"

namespace safetensors {

/// What happens to each tensor, in this order: selection by its original
/// name, then renaming, then the dtype.
struct TensorTransform {
  /// True when it changes nothing.
  bool identity() const noexcept;
  /// True when `name` is selected.
  bool selects(const std::string& name) const;
  /// The name a selected tensor takes.
  std::string rename(const std::string& name) const;

  /// Patterns (`*` any run of characters, dots included; `?` one character;
  /// `[...]` a set; a name without these matches itself only). Empty: every
  /// tensor is selected; else only those matching one of them.
  TORCH_ARG(std::vector<std::string>, include) = {};
  /// Tensors matching one of these are left out, whether or not included.
  TORCH_ARG(std::vector<std::string>, exclude) = {};
  /// Removed from the names that begin with it; other names are kept.
  TORCH_ARG(std::string, strip_prefix) = "";
  /// Put before every name (after strip_prefix is removed).
  TORCH_ARG(std::string, add_prefix) = "";
  /// Floating-point tensors are cast to this dtype, which must be F16, BF16,
  /// F32 or F64; integer, bool and complex tensors keep theirs. A cast tensor
  /// is a new tensor in memory, no longer a view of its file.
  TORCH_ARG(std::optional<Dtype>, dtype) = std::nullopt;
};

/// What transform_tensors did, by original name.
struct TransformReport {
  struct Cast {
    std::string name;  ///< the new name
    Dtype from;
    Dtype to;
    /// Finite values the cast made infinite: out of the range of `to` (F64 to
    /// F32, BF16 or F16; F32 or BF16 to F16; F32 to BF16 at its very top).
    std::uint64_t overflowed = 0;
  };
  std::vector<std::string> excluded;  ///< original names left out, tensors and aliases
  std::size_t renamed = 0;            ///< names that changed
  std::vector<Cast> cast;             ///< tensors whose dtype changed
  /// Floating-point tensors that keep their dtype because the LibTorch in use
  /// cannot compute with it (raw items: F8 on LibTorch 1.13, F4, F6): new names.
  std::vector<std::string> not_cast;
  /// Include and exclude patterns that match no name of the input, tensor or
  /// alias: likely mistyped. The selection still applies.
  std::vector<std::string> unmatched_include, unmatched_exclude;
};

/// Thrown by transform_tensors (code InvalidArgument) when the include and
/// exclude patterns leave none of a non-empty input's names: the selection,
/// not the input, is wrong.
class EmptySelection : public Error {
 public:
  using Error::Error;
};

/// The selected tensors of `tensors`, renamed and cast. `aliases` (name ->
/// kept name, as Checkpoint::aliases), when given, are selected and renamed as
/// tensors are, in place; an alias whose kept tensor is left out becomes a
/// tensor of its own (the kept one's bytes) so that no selected name is lost.
/// Throws InvalidArgument for a dtype that is not F16, BF16, F32 or F64, for two
/// names that the renaming makes one (naming both) and for a name it makes
/// empty; EmptySelection when nothing of a non-empty input is selected. An
/// empty input gives an empty output. `values`, when given, are the names of
/// non-tensor values written beside the tensors (a checkpoint's epoch, its
/// param groups): each is selected and renamed in place as tensors are (an
/// empty string when left out), and counts for the selection, the patterns
/// matched and the names the renaming makes one.
NamedTensors transform_tensors(const NamedTensors& tensors, const TensorTransform& transform,
                               std::map<std::string, std::string>* aliases = nullptr,
                               TransformReport* report = nullptr, std::vector<std::string>* values = nullptr);

}  // namespace safetensors
