#!/bin/bash
# Boot the node image in $1 once over PXE against a fresh plinth-server on loopback:
# declare the machine, show the serial console while it enrols and applies its config,
# then power it off through the operator API and show its timeline.
set -euo pipefail
boot=${1:?usage: boot-demo.sh BOOT_DIR}
bin=$(cd "$(dirname "$0")/../.." && pwd)/target/release
data=$(mktemp -d)
out=$(mktemp)
mac=52:54:00:12:34:56
uuid=$(cat /proc/sys/kernel/random/uuid)
# A free port for HTTPS, advertised as qemu's slirp sees the host (10.0.2.2).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/plinth-server" --listen 127.0.0.1:0 --listen-tls "127.0.0.1:$port" \
  --advertise-tls "https://10.0.2.2:$port" --listen-sntp 127.0.0.1:0 \
  --boot-dir "$boot" --data "$data" >"$out" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$data" "$out"' EXIT
for _ in $(seq 50); do [ -s "$data/operator-token" ] && break; sleep 0.1; done
url=$(awk '{print $NF; exit}' "$out")
api=https://127.0.0.1:$port
op=(curl -sS --cacert "$data/ca.crt" -H "Authorization: Bearer $(cat "$data/operator-token")")
"${op[@]}" -X PUT "$api/v1/machines/$mac" \
  -d "{\"uuid\":\"$uuid\",\"config\":{\"apiVersion\":\"plinth/v1\",\"hostname\":\"demo-node\"}}" >/dev/null
echo "plinth-server at $url and $api; machine $mac declared"
"$bin/plinth-boot" run --boot-dir "$boot" --server "$url" --mac "$mac" --uuid "$uuid" --timeout 300 &
qemu=$!
until "${op[@]}" "$api/v1/machines/$mac" | grep -q '"applied"'; do
  kill -0 $qemu 2>/dev/null || break
  sleep 1
done
"${op[@]}" -X POST "$api/v1/machines/$mac/poweroff" >/dev/null
wait $qemu || true
echo "--- GET $api/v1/machines/$mac"
"${op[@]}" "$api/v1/machines/$mac"
echo
