#!/usr/bin/env bash
# The whole test suite, as CI runs it:
#   1. the project built and tested against this machine's LibTorch (Debian 12: 1.13);
#   2. the same against LibTorch 2.6 in a Debian 13 root (tools/test-torch2.sh);
#   3. two-way checks with the Python reference implementation (tools/interop.sh);
#   4. the suite under AddressSanitizer + UndefinedBehaviorSanitizer, and the
#      concurrency test under ThreadSanitizer (tools/sanitize.sh);
#   5. each fuzz target for a bounded time (tools/fuzz.sh).
#
#   tools/test.sh [--quick] [--no-deps]
#
# --quick runs step 1 only; --no-deps skips installing Debian packages.
# Every step builds with warnings as errors (SAFETENSORS_TORCH_WERROR=ON, which
# the other scripts read from the environment).
# Exits non-zero when any step fails; prints a line per step and their times.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

quick=0 deps=1
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    --no-deps) deps=0 ;;
    *) echo "usage: $0 [--quick] [--no-deps]" >&2; exit 2 ;;
  esac
done

export SAFETENSORS_TORCH_WERROR=ON

summary=()
failed=0
step() {
  local name=$1; shift
  local start=$SECONDS status=0
  echo "=== $name"
  "$@" || status=$?
  local line="$name: $([[ $status -eq 0 ]] && echo ok || echo "FAILED (exit $status)") in $((SECONDS - start)) s"
  echo "=== $line"
  summary+=("$line")
  [[ $status -eq 0 ]] || failed=1
}

build_and_test() {
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSAFETENSORS_TORCH_WERROR=ON >/dev/null
  cmake --build build -j2
  ctest --test-dir build -j2 --output-on-failure
}

if [[ $deps -eq 1 ]]; then step "install dependencies" tools/install-deps.sh; fi
step "suite against this machine's LibTorch" build_and_test
if [[ $quick -eq 0 ]]; then
  # The package test only repeats the build with other CMake flags: once is enough.
  step "LibTorch 2.6 suite (Debian 13 root)" tools/test-torch2.sh -- -LE package
  step "interop with the Python reference" tools/interop.sh --host-build build
  step "sanitizers" tools/sanitize.sh
  step "fuzzing" tools/fuzz.sh 60
fi

echo
printf '%s\n' "${summary[@]}"
failures=$(printf '%s\n' "${summary[@]}" | grep -c FAILED || true)
echo "steps: $(( ${#summary[@]} - failures )) passed, $failures failed"
exit $failed
