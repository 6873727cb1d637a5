#!/usr/bin/env bash
# make demo: a busybox container run by plinth on its default config (plinth spec),
# as root, showing what the container sees.
set -euo pipefail
plinth=${1:-target/release/plinth}
[ "$(id -u)" = 0 ] || { echo "make demo runs containers as root: run it with sudo" >&2; exit 1; }
bb=$(command -v busybox) || { echo "busybox not found (make deps installs busybox-static)" >&2; exit 1; }
bundle=${PLINTH_CACHE:-.cache}/demo-bundle
rm -rf "$bundle"; mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/"{proc,sys,dev,tmp,etc,root}
cp "$bb" "$bundle/rootfs/bin/busybox"
"$bundle/rootfs/bin/busybox" --list | while read -r a; do [ "$a" = busybox ] || ln -sf busybox "$bundle/rootfs/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" > "$bundle/rootfs/etc/passwd"
echo "root:x:0:" > "$bundle/rootfs/etc/group"
"$plinth" spec --bundle "$bundle"
python3 - "$bundle/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["terminal"] = False  # plinth spec asks for one, as runc spec does
c["process"]["args"] = ["sh", "-c",
  "echo \"hello from $(hostname): $(id)\"; echo; echo 'processes:'; ps; echo; echo 'mounts:'; "
  "cut -d' ' -f2,3 /proc/mounts | head -20; echo; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status"]
json.dump(c, open(p, "w"), indent=2)
PY
echo "+ $plinth run --bundle $bundle demo-$$"
exec "$plinth" run --bundle "$bundle" "demo-$$"
