#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for a bounded
# time, seeded from the test vectors and the hostile corpus. Exits non-zero on
# any finding (crash, sanitizer report, leak, timeout, out-of-memory). The
# checkpoint target runs with a resident-memory and a single-allocation limit
# far below what an input of -max_len may make it use if its memory bounds
# hold, so that amplification is a finding too.
#
#   tools/fuzz.sh [SECONDS_PER_TARGET]     default 60
#
# The corpus grows in build-fuzz/corpus/TARGET and is reused by later runs;
# findings are written to build-fuzz/findings/. To fuzz longer, pass a larger
# time, or run a target by hand (README "Hardening").
# SAFETENSORS_TORCH_WERROR=ON makes warnings errors (tools/test.sh sets it).
set -euo pipefail

seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SAFETENSORS_FUZZ_BUILD_DIR:-$root/build-fuzz}
targets=(fuzz_header fuzz_json fuzz_load fuzz_checkpoint)

cc=${CC:-clang-14}
cxx=${CXX:-clang++-14}
echo "== configure and build ($cxx) in $build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DSAFETENSORS_TORCH_BUILD_FUZZERS=ON -DSAFETENSORS_TORCH_BUILD_TESTS=OFF \
  -DSAFETENSORS_TORCH_BUILD_CLI=OFF -DSAFETENSORS_TORCH_BUILD_EXAMPLES=OFF \
  -DSAFETENSORS_TORCH_INSTALL=OFF -DSAFETENSORS_TORCH_WERROR="${SAFETENSORS_TORCH_WERROR:-OFF}" >/dev/null
cmake --build "$build" -j "${JOBS:-2}" --target "${targets[@]}"

# Seeds: every test file small enough to mutate quickly (larger ones would be
# cut at -max_len anyway): safetensors files for the format targets; for the
# checkpoint target, torch.save files and the pickles inside them.
seeds=$build/seeds
rm -rf "$seeds" && mkdir -p "$seeds/safetensors" "$seeds/checkpoint" "$build/findings"
find "$root/test/data/vectors" "$root/test/data/hostile" "$root/fuzz/regressions" \
  -name '*.safetensors' -size -65k -exec cp -t "$seeds/safetensors" {} + 2>/dev/null || true
find "$root/test/data/pickle" "$root/test/data/vectors" "$root/test/data/hostile" "$root/fuzz/regressions" \
  \( -name '*.pt' -o -name '*.pth' -o -name '*.bin' -o -name '*.pkl' \) -size -65k \
  -exec cp -t "$seeds/checkpoint" {} + 2>/dev/null || true
# The hostile checkpoints of the corpus, made small enough to be mutated whole.
python3 "$root/test/data/hostile/make_corpus.py" --fuzz-seeds "$seeds/checkpoint"
python3 - "$seeds/checkpoint" <<'PY' || true
import pathlib, sys, zipfile
folder = pathlib.Path(sys.argv[1])
for path in list(folder.iterdir()):
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith(".pkl"):
                    (folder / (path.name + "." + name.replace("/", "_"))).write_bytes(z.read(name))
    except (zipfile.BadZipFile, OSError):  # not a zip, or a hostile one (hand-made CRCs)
        pass
PY
# JSON as Python's json.dumps writes param groups, NaN and Infinity among them.
mkdir -p "$seeds/json"
printf '%s' '[{"lr": 0.01, "betas": [0.9, 0.999], "eps": Infinity, "dampening": NaN, "params": [0, 1]}]' \
  >"$seeds/json/groups"
printf '%s' '{"a": [-Infinity, 1e-07, "NaN", {"b": null, "c": true}], "\u00e9": "x\"y"}' >"$seeds/json/mixed"
echo "== $(ls "$seeds/safetensors" | wc -l) safetensors seeds, $(ls "$seeds/checkpoint" | wc -l) checkpoint seeds"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
status=0
shopt -s nullglob
for target in "${targets[@]}"; do
  corpus=$build/corpus/$target
  mkdir -p "$corpus"
  log=$build/$target.log
  if [[ $target == fuzz_json ]]; then
    kind=json dict=$root/fuzz/safetensors.dict regressions=() limits=(-rss_limit_mb=2048)
  elif [[ $target == fuzz_checkpoint ]]; then
    kind=checkpoint dict=$root/fuzz/checkpoint.dict
    regressions=("$root"/fuzz/regressions/*.pt "$root"/fuzz/regressions/*.pkl)
    # A 64 KiB input may make its pickle's values take 48 bytes a byte plus
    # 16 MiB, its names 8 a byte plus 16 MiB, its tensors 8 times the input
    # plus 1 MiB: well under these, above LibTorch's and ASan's own.
    limits=(-rss_limit_mb=${FUZZ_CHECKPOINT_RSS_MB:-1024} -malloc_limit_mb=${FUZZ_CHECKPOINT_MALLOC_MB:-64})
  else
    kind=safetensors dict=$root/fuzz/safetensors.dict
    regressions=("$root"/fuzz/regressions/*.safetensors)
    limits=(-rss_limit_mb=2048)
  fi
  # Past findings first: each file run once, no mutation.
  echo "== $target: ${#regressions[@]} regressions"
  if ((${#regressions[@]})); then
    "$build/fuzz/$target" "${limits[@]}" "${regressions[@]}" >"$log.regressions" 2>&1 ||
      { echo "FAIL: $target on fuzz/regressions (log: $log.regressions)"; tail -30 "$log.regressions"; status=1; continue; }
  fi
  echo "== $target: ${seconds}s"
  cmd=("$build/fuzz/$target" -max_total_time="$seconds" "${limits[@]}" -timeout=10
       -max_len=65536 -dict="$dict" -print_final_stats=1
       -artifact_prefix="$build/findings/$target-" "$corpus" "$seeds/$kind")
  echo "${cmd[*]}"
  if "${cmd[@]}" >"$log" 2>&1; then
    echo "$target: $(grep -m1 '^stat::number_of_executed_units' "$log" | awk '{print $2}') executions," \
      "$(ls "$corpus" | wc -l) corpus files, no findings"
  else
    echo "FAIL: $target found a problem (log: $log; input in $build/findings/)"
    grep -v '^#' "$log" | tail -40
    status=1
  fi
done
exit $status
