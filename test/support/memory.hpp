#pragma once
// What Linux says of this process's memory, read from /proc. Torch-free.

#include <cstdint>
#include <functional>
#include <string>

namespace safetensors::test {

/// A field of /proc/self/status ("VmRSS", "VmHWM", ...), in kB; -1 if absent.
long status_kb(const std::string& field);

/// A field of /proc/meminfo ("MemTotal", "SwapTotal", ...), in bytes; 0 if absent.
std::uint64_t meminfo_bytes(const std::string& field);

/// Drops the page cache's copy of a file, as a cold start finds it: its dirty
/// pages are written first (fdatasync), since only clean pages can be dropped,
/// then posix_fadvise(POSIX_FADV_DONTNEED), which needs no privileges. Throws
/// std::runtime_error naming the file.
void drop_file_pages(const std::string& path);

/// Resets the kernel's high-water mark of resident memory (VmHWM) to the
/// current resident size ("5" into /proc/self/clear_refs).
void reset_peak_memory();

/// The resident memory `f` adds at its peak, in kB: VmHWM after `f` less VmRSS
/// before it, the mark reset first. File pages mapped into the process count.
long peak_added_kb(const std::function<void()>& f);

}  // namespace safetensors::test
