#!/usr/bin/env bash
# make build's second step: the `plinth` binary the project ships, written to OUT.
#
#   usage: tests/scripts/build-plinth.sh OUT
#          tests/scripts/build-plinth.sh --has-target   (exit 0 if the musl std is there)
#   env:   PLINTH_TARGET (default x86_64-unknown-linux-musl; "none" ships the glibc
#          build), CARGO, RUSTC, CARGO_TARGET_DIR, PLINTH_CACHE (for the stamp below)
#
# Static musl: 1.6 MB stripped, where the glibc static-pie build (target/release/plinth)
# is 2.3 MB, because static glibc alone brings about 0.6 MB of code (docs/performance.md).
# It also starts without glibc's cpuid cache probing. The musl standard library comes
# from rustup, added once. Where rustup cannot add it (no rustup, or its server out of
# reach), OUT is the glibc static build and this says so on stderr; the failure is
# remembered in $PLINTH_CACHE/musl-unavailable so that later builds do not wait on the
# network again (remove the file to retry). The benchmark prints which libc the binary
# it measured carries.
set -euo pipefail
target=${PLINTH_TARGET-x86_64-unknown-linux-musl}
read -ra cargo <<<"${CARGO:-cargo}"
rustc=${RUSTC:-rustc}
root=$(cd "$(dirname "$0")/../.." && pwd)
targetdir=${CARGO_TARGET_DIR:-$root/target}
stamp=${PLINTH_CACHE:+$PLINTH_CACHE/musl-unavailable}

# The std of $target for the rustc cargo runs (not whatever rustup thinks is active).
have_target() {
  [ -n "$target" ] && [ "$target" != none ] || return 1
  local libdir
  libdir=$("$rustc" --print target-libdir --target "$target" 2>/dev/null) || return 1
  compgen -G "$libdir/libstd-*.rlib" >/dev/null
}

if [ "${1:-}" = --has-target ]; then
  have_target
  exit
fi
[ $# -eq 1 ] || { echo "usage: $0 OUT | --has-target" >&2; exit 2; }
out=$1

if [ -n "$target" ] && [ "$target" != none ] && ! have_target; then
  if [ -n "$stamp" ] && [ -e "$stamp" ]; then
    echo "build-plinth: $target was unavailable before ($stamp); not asking rustup again" >&2
  elif command -v rustup >/dev/null && rustup target add "$target"; then
    :
  elif [ -n "$stamp" ]; then
    mkdir -p "$(dirname "$stamp")" && date -u >"$stamp"
  fi
fi
if have_target; then
  (cd "$root" && "${cargo[@]}" build --release -p plinth-runtime --bin plinth --target "$target")
  src=$targetdir/$target/release/plinth
else
  [ "$target" = none ] ||
    echo "build-plinth: no ${target:-musl} standard library (rustup could not add it);" \
      "shipping the glibc static build, which is larger" >&2
  (cd "$root" && "${cargo[@]}" build --release -p plinth-runtime --bin plinth)
  src=$targetdir/release/plinth
fi
mkdir -p "$(dirname "$out")"
# Through a temporary name: a plinth running from OUT keeps its own inode.
cp -f "$src" "$out.tmp"
mv -f "$out.tmp" "$out"
