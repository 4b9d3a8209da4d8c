#!/usr/bin/env bash
# The test suite under sanitizers:
#   1. AddressSanitizer + UndefinedBehaviorSanitizer: the whole suite (build-asan/).
#   2. ThreadSanitizer: the concurrency test (build-tsan/).
# LibTorch itself is not instrumented; ASan still sees its allocations.
#
#   tools/sanitize.sh [asan|tsan]...     default: both
#
# Warnings are not errors in these builds (see configure); SAFETENSORS_TORCH_WERROR is ignored.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${JOBS:-2}
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(asan tsan)

configure() {  # DIR FLAGS [CMAKE_ARGS...]
  # Warnings stay warnings here: GCC's flow warnings are unreliable under the
  # sanitizers' instrumentation (with ASan, -Wmaybe-uninitialized flags
  # c10::optional<at::Generator> inside LibTorch 1.13's own headers). The
  # regular builds of tools/test.sh make them errors, on both compilers.
  local flags="$2 -fno-omit-frame-pointer -g"
  echo "== configure $1: $2"
  cmake -S "$root" -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$2" -DCMAKE_SHARED_LINKER_FLAGS="$2" \
    -DSAFETENSORS_TORCH_BUILD_EXAMPLES=OFF -DSAFETENSORS_TORCH_WERROR=OFF \
    "${@:3}" >/dev/null
}

for step in "${steps[@]}"; do
  case $step in
    asan)
      build=${SAFETENSORS_ASAN_BUILD_DIR:-$root/build-asan}
      configure "$build" "-fsanitize=address,undefined"
      cmake --build "$build" -j "$jobs"
      # Findings abort the test; leaks are reported at exit.
      export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
      export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:suppressions=$root/tools/ubsan.supp}
      echo "== ctest (ASan + UBSan), all but the package test"
      (cd "$build" && ctest -LE package -j "$jobs" --output-on-failure --timeout 1200)
      ;;
    tsan)
      build=${SAFETENSORS_TSAN_BUILD_DIR:-$root/build-tsan}
      # libgomp is not built for TSan, whose reports about its threads would be noise.
      configure "$build" "-fsanitize=thread" -DSAFETENSORS_TORCH_OPENMP=OFF
      cmake --build "$build" -j "$jobs" --target concurrency_test
      export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
      echo "== concurrency_test (TSan)"
      "$build/test/concurrency_test" --gtest_color=no
      ;;
    *)
      echo "usage: $0 [asan|tsan]..." >&2
      exit 2
      ;;
  esac
done
echo "== sanitizers: no findings"
