#!/usr/bin/env bash
# make build's second step: the binaries the project ships, `plinth` (the runtime) and
# `plinth-init` (the node image's PID 1), written into DIR.
#
#   usage: tests/scripts/build-plinth.sh DIR
#          tests/scripts/build-plinth.sh --has-target   (exit 0 if the musl std is there)
#   env:   PLINTH_TARGET (default x86_64-unknown-linux-musl; "none" ships the glibc
#          build), CARGO, RUSTC, CARGO_TARGET_DIR, PLINTH_CACHE (for the stamp below)
#
# Static musl: the runtime is 1.6 MB stripped, where the glibc static-pie build
# (target/release/plinth) is 2.3 MB, because static glibc alone brings about 0.6 MB of
# code (docs/performance.md); it also starts without glibc's cpuid cache probing. The
# init needs no libc in the image (the glibc build brings 2.4 MiB of shared libraries).
# The musl standard library comes from rustup, added once. Where rustup cannot add it
# (no rustup, or its server out of reach), DIR gets the glibc builds (the runtime static,
# the init dynamic) and this says so on stderr; the failure is
# remembered in $PLINTH_CACHE/musl-unavailable so that later builds do not wait on the
# network again (remove the file to retry). The benchmark prints which libc the binary
# it measured carries.
set -euo pipefail
target=${PLINTH_TARGET:-x86_64-unknown-linux-musl}
read -ra cargo <<<"${CARGO:-cargo}"
rustc=${RUSTC:-rustc}
root=$(cd "$(dirname "$0")/../.." && pwd)
targetdir=${CARGO_TARGET_DIR:-$root/target}
stamp=${PLINTH_CACHE:+$PLINTH_CACHE/musl-unavailable}

# The std of $target for the rustc cargo runs (not whatever rustup thinks is active).
have_target() {
  [ "$target" != none ] || return 1
  local libdir
  libdir=$("$rustc" --print target-libdir --target "$target" 2>/dev/null) || return 1
  compgen -G "$libdir/libstd-*.rlib" >/dev/null
}

if [ "${1:-}" = --has-target ]; then
  have_target
  exit
fi
[ $# -eq 1 ] || { echo "usage: $0 DIR | --has-target" >&2; exit 2; }
dir=$1
bins=(-p plinth-runtime -p plinth-provisioner --bin plinth --bin plinth-init)

if [ "$target" != none ] && ! have_target; then
  if [ -n "$stamp" ] && [ -e "$stamp" ]; then
    echo "build-plinth: $target was unavailable before ($stamp); not asking rustup again" >&2
  elif command -v rustup >/dev/null && rustup target add "$target"; then
    :
  elif [ -n "$stamp" ]; then
    mkdir -p "$(dirname "$stamp")" && date -u >"$stamp"
  fi
fi
if have_target; then
  # ring (rustls' crypto) compiles C and assembly: for musl, with Debian's musl-gcc
  # (musl-tools), unless the caller named a compiler.
  if [ "$target" = x86_64-unknown-linux-musl ] && [ -z "${CC_x86_64_unknown_linux_musl:-}" ] &&
    command -v musl-gcc >/dev/null; then
    export CC_x86_64_unknown_linux_musl=musl-gcc
  fi
  (cd "$root" && "${cargo[@]}" build --release "${bins[@]}" --target "$target")
  src=$targetdir/$target/release
else
  [ "$target" = none ] ||
    echo "build-plinth: no $target standard library (rustup could not add it);" \
      "shipping the glibc builds, which are larger" >&2
  (cd "$root" && "${cargo[@]}" build --release "${bins[@]}")
  src=$targetdir/release
fi
mkdir -p "$dir"
for b in plinth plinth-init; do
  # Through a temporary name: a binary running from DIR keeps its own inode.
  cp -f "$src/$b" "$dir/$b.tmp"
  mv -f "$dir/$b.tmp" "$dir/$b"
done
