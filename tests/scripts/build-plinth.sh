#!/usr/bin/env bash
# make build's second step: the `plinth` binary the project ships, written to OUT.
#
#   usage: tests/scripts/build-plinth.sh OUT
#
# Static musl (x86_64-unknown-linux-musl): 1.6 MB stripped, where the glibc static-pie
# build (target/release/plinth) is 2.3 MB, because static glibc alone brings about 0.6 MB
# of code (docs/performance.md). It also starts without glibc's cpuid cache probing.
# The musl standard library comes from rustup, added once. Where rustup cannot add it (no
# rustup, or its server out of reach), OUT is the glibc static build and this says so on
# stderr; the benchmark prints which libc the binary it measured carries.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT" >&2; exit 2; }
out=$1
target=${PLINTH_TARGET:-x86_64-unknown-linux-musl}
cargo=${CARGO:-cargo}
root=$(cd "$(dirname "$0")/../.." && pwd)

have_target() { rustup target list --installed 2>/dev/null | grep -qx "$target"; }

if ! have_target && command -v rustup >/dev/null; then
  rustup target add "$target" || true
fi
if have_target; then
  (cd "$root" && "$cargo" build --release -p plinth-runtime --bin plinth --target "$target")
  src=$root/target/$target/release/plinth
else
  echo "build-plinth: no $target standard library (rustup could not add it);" \
    "shipping the glibc static build, which is larger" >&2
  src=$root/target/release/plinth
  [ -x "$src" ] || (cd "$root" && "$cargo" build --release -p plinth-runtime --bin plinth)
fi
mkdir -p "$(dirname "$out")"
# Through a temporary name: a plinth running from OUT keeps its own inode.
cp -f "$src" "$out.tmp"
mv -f "$out.tmp" "$out"
