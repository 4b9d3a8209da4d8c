#!/usr/bin/env bash
# Builds the consumer project against an installed copy of the library and
# against the source tree, and runs it both ways.
set -euo pipefail
source_dir=$1
build_dir=$2
work=$(mktemp -d "${build_dir}/package-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)

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

echo "== add_subdirectory"
cmake -S "$source_dir/test/package/consumer" -B "$work/sub" "${generator[@]}" "${launcher[@]}" \
  -DSAFETENSORS_TORCH_SOURCE_DIR="$source_dir" >/dev/null
cmake --build "$work/sub" -j2 >/dev/null
"$work/sub/consumer" "$work/b.safetensors"
cmp "$work/a.safetensors" "$work/b.safetensors"
echo "package test passed"
