#!/usr/bin/env bash
# Installs what building and testing safetensors-torch needs on Debian 12 (or
# newer): a compiler, CMake, Ninja, ccache, LibTorch, nlohmann_json, CLI11 and
# GoogleTest, Gloo's headers (the tensor-parallel tests); Python's torch (the migration tests compare with torch.load);
# mmdebstrap (the Debian 13 reference root); clang 14 and its runtime (fuzzers).
# Run as root (or through sudo).
set -euo pipefail
SUDO=
[[ $(id -u) -eq 0 ]] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  g++ cmake ninja-build ccache pkg-config \
  libtorch-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgloo-dev zlib1g-dev \
  python3 python3-torch \
  mmdebstrap clang-14 libclang-rt-14-dev >/dev/null
echo "dependencies installed"
