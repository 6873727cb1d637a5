#!/usr/bin/env bash
# Builds the opencontainers/runtime-tools validation suite from the Go module proxy:
# runtimetest (static) and every validation/<name>/<name>.go as <name>.t, as its own Makefile does.
#   usage: build-runtime-tools.sh VERSION OUTDIR
set -euo pipefail
version=$1 out=$2
export PATH="/usr/local/go/bin:$PATH"
export GOFLAGS=-mod=mod
mod=$(cd /tmp && go mod download -json "github.com/opencontainers/runtime-tools@$version" |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("Dir") or sys.exit(d.get("Error")))')
rm -rf "$out.tmp"; mkdir -p "$out.tmp"
cp -a "$mod/." "$out.tmp/"; chmod -R u+w "$out.tmp"
cd "$out.tmp"
echo "building runtime-tools $version in $out"
CGO_ENABLED=0 go build -tags netgo -ldflags '-extldflags -static' -o runtimetest ./cmd/runtimetest
for f in validation/*/*.go; do
  name=$(basename "$(dirname "$f")")
  [ "$(basename "$f" .go)" = "$name" ] || continue
  go build -o "validation/$name/$name.t" "./validation/$name"
done
cd / && rm -rf "$out" && mv "$out.tmp" "$out"
echo "built $(ls "$out"/validation/*/*.t | wc -l) validation executables"
