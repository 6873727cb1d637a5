#!/bin/bash
# Boot the node image in $1 once over PXE against a fresh plinth-server on loopback,
# show the serial console, then what the server recorded. The server answers the
# `booted` event with poweroff, so qemu ends by itself.
set -euo pipefail
boot=${1:?usage: boot-demo.sh BOOT_DIR}
bin=$(cd "$(dirname "$0")/../.." && pwd)/target/release
data=$(mktemp -d)
out=$(mktemp)
"$bin/plinth-server" --listen 127.0.0.1:0 --boot-dir "$boot" --data "$data" --poweroff-after-boot >"$out" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data" "$out"' EXIT
for _ in $(seq 50); do [ -s "$out" ] && break; sleep 0.1; done
url=$(awk '{print $NF; exit}' "$out")
echo "plinth-server at $url"
"$bin/plinth-boot" run --boot-dir "$boot" --server "$url" --timeout 180
echo "--- GET $url/v1/machines"
curl -s "$url/v1/machines"
echo
