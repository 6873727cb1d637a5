#!/usr/bin/env bash
# Builds the images the Kubernetes tests run, as single-layer OCI image archives (an OCI
# layout in a tar, what `ctr images import` reads): no registry is reachable here.
#   pause.oci.tar    plinth.test/pause:1    tests/images/pause.c, static (the pod sandbox)
#   busybox.oci.tar  plinth.test/busybox:1  Debian's busybox-static with its applet links
#   web.oci.tar      plinth.test/web:1      the same, serving /www on port 80 (critest's web server)
# The archives are byte-for-byte reproducible: fixed mtimes, owners and order.
#   usage: build-images.sh OUTDIR
set -euo pipefail
out=${1:?usage: build-images.sh OUTDIR}
src=$(cd "$(dirname "$0")/../images" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# blob FILE MEDIATYPE: moves FILE into the layout's blobs, prints its descriptor.
blob() {
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
  mv "$1" "$layout/blobs/sha256/$d"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "$2" "$d" "$s"
}

# image NAME REF ROOTFS ENTRYPOINT_JSON CMD_JSON
image() {
  local name=$1 ref=$2 rootfs=$3 entrypoint=$4 cmd=$5 layer diff config manifest
  layout="$work/$name"
  rm -rf "$layout"; mkdir -p "$layout/blobs/sha256"
  tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -cf "$work/layer.tar" .
  diff=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  layer=$(blob "$work/layer.tar" application/vnd.oci.image.layer.v1.tar)
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":%s,"Cmd":%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$entrypoint" "$cmd" "$diff" >"$work/config.json"
  config=$(blob "$work/config.json" application/vnd.oci.image.config.v1+json)
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
    "$config" "$layer" >"$work/manifest.json"
  manifest=$(blob "$work/manifest.json" application/vnd.oci.image.manifest.v1+json)
  # containerd names the image after io.containerd.image.name; ref.name is the tag alone.
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' \
    "${manifest%\}},\"annotations\":{\"io.containerd.image.name\":\"$ref\",\"org.opencontainers.image.ref.name\":\"${ref##*:}\"}}" \
    >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  tar -C "$layout" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    -cf "$out/$name.oci.tar.tmp" oci-layout index.json blobs
  mv "$out/$name.oci.tar.tmp" "$out/$name.oci.tar"
  echo "build-images: $ref -> $out/$name.oci.tar ($(stat -c %s "$out/$name.oci.tar") bytes)"
}

base() {
  mkdir -p "$1"/{bin,dev,etc,proc,sys,tmp,root}
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$1/etc/group"
}

r="$work/pause-root"
mkdir -p "$r"
gcc -static -O2 -Wall -Werror -o "$r/pause" "$src/pause.c"
strip "$r/pause"
image pause plinth.test/pause:1 "$r" '["/pause"]' 'null'

bb=$(command -v busybox)
r="$work/busybox-root"
base "$r"
cp "$bb" "$r/bin/busybox"
for a in $("$bb" --list); do
  [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"
done
image busybox plinth.test/busybox:1 "$r" 'null' '["sh"]'

echo plinth-web >"$r/index.html"
mkdir -p "$r/www" && mv "$r/index.html" "$r/www/index.html"
image web plinth.test/web:1 "$r" 'null' '["httpd","-f","-p","80","-h","/www"]'
