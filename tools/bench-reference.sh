#!/usr/bin/env bash
# Times the Python reference implementation (safetensors.torch load_file and
# save_file, torch.load, torch.load(mmap=True)) and our library, built against
# the same LibTorch 2.6, on the same files inside the Debian 13 root, and prints
# every figure as a ratio to ours.
#
#   tools/bench-reference.sh [REPS] [--cold]   (--cold: loads in fresh processes, pages dropped)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=${SAFETENSORS_TORCH2_BUILD_DIR:-build-torch2}
"$HERE/test-torch2.sh" --build-only
exec "$HERE/reference-root.sh" run -- \
  python3 bench/reference_bench.py "$BUILD/bench" "$BUILD/bench-files" "${1:-5}" "${@:2}"
