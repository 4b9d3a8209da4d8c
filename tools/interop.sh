#!/usr/bin/env bash
# Two-way interop with the Python reference implementation (safetensors 0.5.2,
# torch 2.6), run inside the Debian 13 root (tools/reference-root.sh):
#   1. test/interop/reference_write.py writes files with the reference;
#   2. interop_test, built against LibTorch 2.6, loads them (mmap and pread)
#      bit-exactly, slices them as the reference did and re-saves them;
#   3. test/interop/reference_check.py checks that our files equal the
#      reference's byte for byte and load in the reference, and runs the CLI
#      (verify, inspect --json, convert) on every reference file.
#
#   tools/interop.sh [--host-build DIR]
#
# --host-build also runs DIR/test/interop_test (a build on this machine, e.g.
# against LibTorch 1.13) on the same files, outside the root.
# Ends with `interop: N passed, M failed`; exits 1 on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$(dirname "$HERE")
BUILD=${SAFETENSORS_TORCH2_BUILD_DIR:-build-torch2}
DATA=$BUILD/interop  # relative to the source tree, which is /src inside the root

host_build=
case ${1:-} in
  --host-build) host_build=$(cd "${2:?--host-build needs a folder}" && pwd) ;;
  "") ;;
  *) echo "usage: $0 [--host-build DIR]" >&2; exit 2 ;;
esac

"$HERE/test-torch2.sh" --build-only

# Prints "PASSED FAILED" for a GoogleTest JSON report; "0 1" when there is none
# (the test crashed before writing it).
count_gtest='
import json, sys
try:
    suites = json.load(open(sys.argv[1]))["testsuites"]
except (OSError, ValueError):
    print(0, 1)
    sys.exit()
tests = [t for s in suites for t in s["testsuite"]]
failed = sum(1 for t in tests if t.get("failures"))
print(sum(1 for t in tests if t.get("result") != "SKIPPED") - failed, failed)
'

inside='
  set -u
  build=$1 data=$2 count_gtest=$3
  passed=0 failed=0
  add() { passed=$((passed + $1)); failed=$((failed + $2)); }
  summary() { echo "interop: $passed passed, $failed failed"; [ "$failed" -eq 0 ]; }

  rm -rf "$data"
  if ! python3 test/interop/reference_write.py "$data"; then
    add 0 1; summary; exit
  fi

  SAFETENSORS_INTEROP_DIR="$data" "$build/test/interop_test" --gtest_brief=1 \
    --gtest_output="json:$data/interop_test.json" || true
  add $(python3 -c "$count_gtest" "$data/interop_test.json")

  cli=$build/safetensors-torch
  if "$cli" --version >/dev/null 2>&1; then
    set -- --cli "$cli"
  else
    echo "interop: $cli is missing or does not run: skipping the CLI checks"
    set --
  fi
  python3 test/interop/reference_check.py "$data" "$@" | tee "$data/reference_check.log"
  counts=$(sed -n "s/^reference_check: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p" \
    "$data/reference_check.log")
  add ${counts:-0 1}
  # A distributed save by 2 ranks (ProcessGroupGloo), loaded by the reference.
  model=test/data/vectors/models/lmbuddy_tiny_gpt2/model.safetensors
  rm -rf "$data/tp_saved" && mkdir -p "$data/tp_saved"
  if "$build/tensor_parallel" "$model" --world 2 --save "$data/tp_saved" &&
     python3 test/interop/reference_load_sharded.py "$model" "$data/tp_saved"; then
    add 1 0
  else
    echo "interop: the reference could not load a distributed save"
    add 0 1
  fi
  echo "$passed $failed" >"$data/counts"
  summary
'
status=0
"$HERE/reference-root.sh" run -- sh -c "$inside" sh "$BUILD" "$DATA" "$count_gtest" || status=$?

if [[ -n $host_build ]]; then
  echo "interop: the same files with $host_build/test/interop_test, on this machine"
  report=$SRC/$DATA/interop_test_host.json
  SAFETENSORS_INTEROP_DIR=$SRC/$DATA SAFETENSORS_INTEROP_OUT=$SRC/$DATA/ours-host \
    "$host_build/test/interop_test" --gtest_brief=1 --gtest_output="json:$report" || true
  read -r passed failed <"$SRC/$DATA/counts"
  read -r p f < <(python3 -c "$count_gtest" "$report")
  passed=$((passed + p)) failed=$((failed + f))
  echo "interop: $passed passed, $failed failed"
  [[ $failed -eq 0 ]] || status=1
fi
exit "$status"
