#!/usr/bin/env bash
# Builds the consumer projects against an installed copy of the library and
# against the source tree, and runs them:
#   - consumer/: safetensors::torch, through find_package and add_subdirectory;
#   - format_consumer/: safetensors::format alone, found with
#     `find_package(safetensors_torch COMPONENTS format)` where LibTorch cannot
#     be found, with static and with shared libraries.
set -euo pipefail
source_dir=$1
build_dir=$2
work=$(mktemp -d "${build_dir}/package-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fail() { echo "package test: $*" >&2; exit 1; }

# The public headers of the torch-free core.
format_headers=(dtype error header source tensor_parallel version writer)

# Configures, builds and runs format_consumer against PREFIX, with LibTorch
# out of reach of find_package, and checks that it does not link LibTorch.
format_consumer() {  # PREFIX BUILD
  env -u CMAKE_PREFIX_PATH -u Torch_DIR \
    cmake -S "$source_dir/test/package/format_consumer" -B "$2" "${generator[@]}" "${launcher[@]}" \
    --no-warn-unused-cli -DCMAKE_PREFIX_PATH="$1" -DCMAKE_DISABLE_FIND_PACKAGE_Torch=ON >/dev/null
  cmake --build "$2" -j2 >/dev/null
  LD_LIBRARY_PATH="$1/lib:${LD_LIBRARY_PATH:-}" "$2/format_consumer" "$work/a.safetensors"
  if LD_LIBRARY_PATH="$1/lib:${LD_LIBRARY_PATH:-}" ldd "$2/format_consumer" | grep -E 'lib(torch|c10)'; then
    fail "format_consumer links LibTorch"
  fi
}

echo "== install"
cmake -S "$source_dir" -B "$work/lib" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DSAFETENSORS_TORCH_BUILD_TESTS=OFF -DCMAKE_INSTALL_PREFIX="$work/prefix" >/dev/null
cmake --build "$work/lib" -j2 >/dev/null
cmake --install "$work/lib" >/dev/null
test -x "$work/prefix/bin/safetensors-torch"
# A consumer has the installed headers only: none may include a private one.
if grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$work/prefix/include/safetensors/"*.hpp |
    grep -vE '#[[:space:]]*include[[:space:]]*"safetensors/'; then
  echo "an installed header includes a header that is not installed" >&2
  exit 1
fi

echo "== find_package"
cmake -S "$source_dir/test/package/consumer" -B "$work/found" "${generator[@]}" "${launcher[@]}" \
  -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/found" -j2 >/dev/null
LD_LIBRARY_PATH="$work/prefix/lib:${LD_LIBRARY_PATH:-}" "$work/found/consumer" "$work/a.safetensors"
"$work/prefix/bin/safetensors-torch" verify "$work/a.safetensors"

echo "== find_package COMPONENTS format, without LibTorch"
format_consumer "$work/prefix" "$work/format"
# Each header of the core compiles alone, and includes no LibTorch header.
for h in "${format_headers[@]}"; do
  included=$(echo "#include <safetensors/$h.hpp>" |
    "${CXX:-c++}" -std=c++17 -fsyntax-only -H -I"$work/prefix/include" -x c++ - 2>&1) ||
    fail "safetensors/$h.hpp does not compile alone: $included"
  if grep -E '/(torch|ATen|c10|caffe2)/' <<<"$included"; then
    fail "safetensors/$h.hpp includes LibTorch"
  fi
done

echo "== shared libraries"
cmake -S "$source_dir" -B "$work/shared" "${generator[@]}" "${launcher[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON -DSAFETENSORS_TORCH_BUILD_TESTS=OFF -DSAFETENSORS_TORCH_BUILD_CLI=OFF \
  -DSAFETENSORS_TORCH_BUILD_EXAMPLES=OFF -DSAFETENSORS_TORCH_BUILD_BENCHMARKS=OFF \
  -DCMAKE_INSTALL_PREFIX="$work/shared-prefix" >/dev/null
cmake --build "$work/shared" -j2 >/dev/null
cmake --install "$work/shared" >/dev/null
lib=$work/shared-prefix/lib
for name in format torch; do
  soname=$(objdump -p "$lib/libsafetensors_$name.so" | awk '$1 == "SONAME" {print $2}')
  [[ $soname == "libsafetensors_$name.so.0.1" ]] || fail "libsafetensors_$name.so has SONAME '$soname'"
done
# Each tool's output is read whole before grep sees it: under pipefail, a
# `grep -q` that stops at the first match can make the writer die of SIGPIPE
# and the pipeline fail, or an `if` pass, depending on the output's length.
needed=$(objdump -p "$lib/libsafetensors_torch.so")
grep -q 'NEEDED *libsafetensors_format\.so\.0\.1$' <<<"$needed" ||
  fail "libsafetensors_torch.so does not link libsafetensors_format.so.0.1"
# The core is in one library only: safetensors::torch does not define its symbols.
defined=$(nm -D --defined-only "$lib/libsafetensors_torch.so")
if grep -q 'safetensors12parse_header' <<<"$defined"; then
  fail "libsafetensors_torch.so carries a copy of the core"
fi
format_consumer "$work/shared-prefix" "$work/format-shared"
cmake -S "$source_dir/test/package/consumer" -B "$work/found-shared" "${generator[@]}" "${launcher[@]}" \
  -DCMAKE_PREFIX_PATH="$work/shared-prefix" >/dev/null
cmake --build "$work/found-shared" -j2 >/dev/null
LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}" "$work/found-shared/consumer" "$work/c.safetensors"
cmp "$work/a.safetensors" "$work/c.safetensors"

echo "== add_subdirectory"
cmake -S "$source_dir/test/package/consumer" -B "$work/sub" "${generator[@]}" "${launcher[@]}" \
  -DSAFETENSORS_TORCH_SOURCE_DIR="$source_dir" >/dev/null
cmake --build "$work/sub" -j2 >/dev/null
"$work/sub/consumer" "$work/b.safetensors"
cmp "$work/a.safetensors" "$work/b.safetensors"
echo "package test passed"
