#!/usr/bin/env bash
# Checks that LibTorch's TorchScript loader is nowhere in the conversion path:
# none of FILE... (the library, the command-line tool) refers to torch::jit::load,
# torch::jit::import_ir_module or torch::serialize::InputArchive::load_from, which
# compile and run an archive's code. CONTROL, a program that calls torch::jit::load,
# must be seen to refer to it, so that the check can fail.
#
#   no_jit_loader.sh CONTROL FILE...
set -euo pipefail
loader='torch::jit::load\(|torch::jit::import_ir_module\(|torch::serialize::InputArchive::load_from\('

# Every symbol FILE refers to or defines, demangled (a static library: each object's).
symbols() { nm -C "$1" 2>/dev/null; nm -C -D "$1" 2>/dev/null || true; }

control=$(symbols "$1")
grep -Eq "$loader" <<<"$control" || { echo "no_jit_loader: the check does not see the loader in $1" >&2; exit 1; }
shift
status=0
for file in "$@"; do
  found=$(symbols "$file")
  if grep -E "$loader" <<<"$found" >&2; then
    echo "no_jit_loader: $file refers to LibTorch's TorchScript loader" >&2
    status=1
  fi
done
[[ $status -eq 0 ]] && echo "no_jit_loader: none of $# files refers to the loader"
exit $status
