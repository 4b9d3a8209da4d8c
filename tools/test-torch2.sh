#!/usr/bin/env bash
# Builds the project against LibTorch 2.6 inside the Debian 13 reference root
# (tools/reference-root.sh) and runs the whole ctest suite there.
#
#   tools/test-torch2.sh [--build-only] [-- CTEST_ARGS...]
#
# The build folder is build-torch2/ in the source tree (ignored by git), so
# incremental rebuilds are fast; SAFETENSORS_TORCH2_BUILD_DIR overrides it (a
# path relative to the source tree, which is /src inside the root).
# SAFETENSORS_TORCH_WERROR=ON makes warnings errors (tools/test.sh sets it).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=${SAFETENSORS_TORCH2_BUILD_DIR:-build-torch2}
JOBS=${JOBS:-$(nproc)}
WERROR=${SAFETENSORS_TORCH_WERROR:-OFF}

build_only=0
ctest_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --build-only) build_only=1 ;;
    --) shift; ctest_args=("$@"); break ;;
    *) echo "usage: $0 [--build-only] [-- CTEST_ARGS...]" >&2; exit 2 ;;
  esac
  shift
done

"$HERE/reference-root.sh" ensure

# The steps run inside the root; arguments travel as positional parameters so
# nothing needs quoting twice.
inside='
  set -eu
  build=$1 jobs=$2 build_only=$3 werror=$4; shift 4
  start=$(date +%s)
  mkdir -p "$build"
  cmake -S /src -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DSAFETENSORS_TORCH_WERROR="$werror" >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log"; echo "test-torch2: configure failed" >&2; exit 1; }
  cmake --build "$build" -j "$jobs"
  echo "test-torch2: built in $(( $(date +%s) - start )) s against LibTorch $(python3 -c "import torch; print(torch.__version__)")"
  [ "$build_only" = 1 ] && exit 0
  start=$(date +%s)
  status=0
  ctest --test-dir "$build" --output-on-failure -j "$jobs" "$@" || status=$?
  echo "test-torch2: ctest took $(( $(date +%s) - start )) s"
  exit $status
'
exec "$HERE/reference-root.sh" run -- sh -c "$inside" sh "$BUILD" "$JOBS" "$build_only" "$WERROR" "${ctest_args[@]}"
