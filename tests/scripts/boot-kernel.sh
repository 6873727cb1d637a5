#!/bin/bash
# Fetch Debian's kernel image package into $1 and unpack it there (dpkg-deb -x).
# The newest linux-image-amd64 apt offers (bookworm-backports' 6.12 here): the node
# runs its containers' roots through idmapped mounts of a tmpfs, which 6.3 added.
# linux-image-amd64 is a metapackage: resolve the real linux-image-<ver>-amd64 it
# depends on (the -unsigned variant is preferred: it is the same kernel without the
# signature wrapper). Downloads only when the .deb is not cached yet.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
dest=${1:?usage: boot-kernel.sh DEST}
mkdir -p "$dest/debs"
cd "$dest/debs"
newest=$(apt-cache madison linux-image-amd64 | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -V | tail -n1)
dep=$(apt-cache depends "linux-image-amd64=$newest" | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n1)
if [ -z "$dep" ]; then
  echo "boot-kernel.sh: cannot resolve the kernel package linux-image-amd64 depends on" >&2
  exit 1
fi
pkg=$dep
# A kernel without idmapped mounts of a tmpfs would boot and fail every container: refuse
# it here, naming what to do.
kver=$(echo "$pkg" | sed -n 's/^linux-image-\([0-9]*\.[0-9]*\).*/\1/p')
if [ -z "$kver" ] || [ "$(printf '%s\n' 6.3 "$kver" | sort -V | head -n1)" != 6.3 ]; then
  echo "boot-kernel.sh: apt's newest kernel is $pkg; the node needs 6.3 or later (idmapped mounts of a tmpfs): add bookworm-backports (make boot-deps does)" >&2
  exit 1
fi
case "$pkg" in *-unsigned) ;; *) apt-cache show "${pkg}-unsigned" >/dev/null 2>&1 && pkg="${pkg}-unsigned" ;; esac
if ! ls "${pkg}"_*.deb >/dev/null 2>&1; then
  echo "downloading $pkg"
  apt-get download "$pkg"
fi
deb=$(ls "${pkg}"_*.deb | head -n1)
rm -rf "$dest/root.tmp"
dpkg-deb -x "$deb" "$dest/root.tmp"
# The package ships no modules.dep (its postinst runs depmod on install): generate it
# here, against the unpacked tree, so the image builder can read module dependencies.
for moddir in "$dest"/root.tmp/lib/modules/*/; do
  ver=$(basename "$moddir")
  depmod -b "$dest/root.tmp" "$ver"
done
rm -rf "$dest/root"
mv "$dest/root.tmp" "$dest/root"
echo "kernel: $(ls "$dest"/root/boot/vmlinuz-*)"
