#pragma once
// Checks of the tensors to save, shared by save_file, deduplicate_shared and
// the distributed save. Internal.

#include <string>
#include <vector>

#include "safetensors/save.hpp"
#include "safetensors/writer.hpp"

namespace safetensors::detail {

/// Checks one item (defined, dense, a dtype the format has, raw bytes that fit
/// their declared dtype and shape) and gives its dtype and file shape. Throws
/// InvalidArgument naming `file` and the tensor.
EntrySpec describe_entry(const NamedTensors::Item& item, const std::string& file);

/// The items whose bytes overlap in one storage, in groups of two or more,
/// each in byte order. Items without data (undefined, meta, empty) are in none.
std::vector<std::vector<const NamedTensors::Item*>> overlapping_groups(const NamedTensors& tensors);

/// save_file into `path`, a temporary name, of a file that is to replace
/// `replaces` later: it takes that file's permissions (AtomicFile::Options).
void save_file_replacing(const NamedTensors& tensors, const std::string& path, const std::string& replaces,
                         const std::optional<Metadata>& metadata, const SaveOptions& options);

}  // namespace safetensors::detail
