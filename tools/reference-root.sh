#!/usr/bin/env bash
# A Debian 13 (trixie) root with LibTorch 2.6 and the Python reference
# implementation (safetensors 0.5.2, torch 2.6), for building against LibTorch 2.x
# and cross-checking files with the reference. Needs root and mmdebstrap.
#
#   tools/reference-root.sh ensure           build the root unless a complete one is cached
#   tools/reference-root.sh run -- CMD...    run CMD inside it, the project at /src
#   tools/reference-root.sh path             print where the root lives
#
# Environment:
#   SAFETENSORS_REFERENCE_ROOT    the root's folder (default /var/cache/safetensors-torch/trixie-root)
#   SAFETENSORS_REFERENCE_MIRROR  Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

ROOT=${SAFETENSORS_REFERENCE_ROOT:-/var/cache/safetensors-torch/trixie-root}
MIRROR=${SAFETENSORS_REFERENCE_MIRROR:-http://deb.debian.org/debian}
SUITE=trixie
PACKAGES=(
  python3-safetensors python3-torch python3-numpy python3-setuptools
  libtorch-dev nlohmann-json3-dev libgtest-dev libcli11-dev libgloo-dev zlib1g-dev
  cmake g++ ninja-build ccache
)
SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The stamp records what the root was built from; it is written last, so a root
# without it (an interrupted build) is never used.
STAMP=.safetensors-reference-root
WANT="suite=$SUITE mirror=$MIRROR packages=${PACKAGES[*]}"

die() { echo "reference-root: error: $*" >&2; exit 1; }
say() { echo "reference-root: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

is_current() { [[ -f $ROOT/$STAMP && $(<"$ROOT/$STAMP") == "$WANT" ]]; }

# Deleting a folder with a live mount inside would delete through the mount.
assert_unmounted() {
  local dir=$1
  if awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { found = 1 } END { exit !found }' \
      /proc/self/mountinfo; then
    die "something is still mounted under $dir; unmount it first"
  fi
}

ensure() {
  [[ $EUID -eq 0 ]] || die "must run as root (mmdebstrap, mount)"
  command -v mmdebstrap >/dev/null || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
  mkdir -p "$(dirname "$ROOT")"
  # One builder at a time; a second caller waits and then finds the root ready.
  exec 9>"$ROOT.lock"
  flock 9
  if is_current; then
    say "using cached root $ROOT"
    return
  fi
  if [[ -e $ROOT ]]; then
    say "root $ROOT is incomplete or out of date: rebuilding"
    assert_unmounted "$ROOT"
    rm -rf --one-file-system "$ROOT"
  fi
  # Build next to the target and rename, so a half-built root is never at $ROOT.
  local tmp=$ROOT.building
  assert_unmounted "$tmp"
  rm -rf --one-file-system "$tmp"
  say "building $SUITE root in $ROOT (a few minutes, ~2 GiB)"
  local start=$SECONDS
  local include
  include=$(IFS=,; echo "${PACKAGES[*]}")
  if ! mmdebstrap --variant=apt --include="$include" \
      --aptopt='Acquire::Retries "3"' \
      "$SUITE" "$tmp" "$MIRROR"; then
    rm -rf --one-file-system "$tmp"
    die "mmdebstrap failed (is $MIRROR reachable, are the package names right for $SUITE?)"
  fi
  printf '%s\n' "$WANT" >"$tmp/$STAMP"
  mv "$tmp" "$ROOT"
  say "root ready in $((SECONDS - start)) s"
}

# Runs inside a private mount namespace (see run): the mounts can never leak to
# the host, and the trap removes them explicitly as well.
MOUNTED=()
run_inside() {
  cleanup() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
      umount -l "${MOUNTED[i]}" 2>/dev/null || say "could not unmount ${MOUNTED[i]}"
    done
  }
  trap cleanup EXIT
  mount -t proc proc "$ROOT/proc"; MOUNTED+=("$ROOT/proc")
  mount --rbind /dev "$ROOT/dev"; mount --make-rslave "$ROOT/dev"; MOUNTED+=("$ROOT/dev")
  # Read-only: torch reads CPU topology there; nothing inside should change it.
  mount --bind /sys "$ROOT/sys"; mount -o remount,bind,ro "$ROOT/sys"; MOUNTED+=("$ROOT/sys")
  mkdir -p "$ROOT/src"
  mount --bind "$SRC_DIR" "$ROOT/src"; MOUNTED+=("$ROOT/src")
  local status=0
  chroot "$ROOT" /usr/bin/env -i \
    HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" \
    /bin/sh -c 'cd /src && exec "$@"' sh "$@" || status=$?
  return "$status"
}

run() {
  [[ $EUID -eq 0 ]] || die "must run as root (chroot, mount)"
  [[ ${1:-} == -- ]] && shift
  [[ $# -gt 0 ]] || die "run: no command given (usage: run -- CMD...)"
  is_current || die "no complete root at $ROOT; run '$0 ensure' first"
  # Shared: runs may overlap each other, but ensure never rebuilds under one.
  exec 9>"$ROOT.lock"
  flock -s 9
  is_current || die "the root at $ROOT was replaced meanwhile; run '$0 ensure' again"
  if command -v unshare >/dev/null && unshare --mount --propagation private true 2>/dev/null; then
    exec unshare --mount --propagation private "${BASH_SOURCE[0]}" __run-inside "$@"
  fi
  run_inside "$@"
}

case ${1:-} in
  ensure) ensure ;;
  run) shift; run "$@" ;;
  __run-inside) shift; run_inside "$@" ;;
  path) echo "$ROOT" ;;
  -h|--help|help|"") usage ;;
  *) echo "reference-root: unknown command '$1'" >&2; usage ;;
esac
