#!/bin/bash
# Boot the node image in $1 once over PXE in the lab (tests/scripts/lab.sh): the site's
# dnsmasq hands out the address, plinth-server on the provisioning host answers proxyDHCP
# and serves the boot chain; one BIOS machine on a tap device, its serial console on the
# terminal. Declare the machine, wait until it has applied its config, power it off
# through the operator API and show its timeline. The lab goes when this script ends.
set -euo pipefail
boot=$(cd "${1:?usage: boot-demo.sh BOOT_DIR}" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/release
lab=/run/plinth-lab/boot-demo-$$
data=$(mktemp -d)
mac=52:54:00:12:34:56
uuid=$(cat /proc/sys/kernel/random/uuid)
# The lab lives while this script holds the keeper's stdin.
coproc KEEPER { "$root/tests/scripts/lab.sh" up "$lab"; }
keeper=$KEEPER_PID
trap 'exec {KEEPER[1]}>&-; wait $keeper 2>/dev/null; rm -rf "$data"' EXIT
read -r ready <&"${KEEPER[0]}"
echo "$ready"
site=(nsenter --net="$lab/site.net")
srv=(nsenter --net="$lab/server.net")
"${srv[@]}" "$bin/plinth-server" --listen 10.33.0.2:8080 --listen-tls 10.33.0.2:8443 \
  --listen-sntp 10.33.0.2:123 --proxy-dhcp 10.33.0.2 \
  --boot-dir "$boot" --data "$data/state" >"$data/out" 2>"$data/server.log" &
for _ in $(seq 100); do [ -s "$data/state/operator-token" ] && break; sleep 0.1; done
api=https://10.33.0.2:8443
op=("${srv[@]}" curl -sS --cacert "$data/state/ca.crt" -H "Authorization: Bearer $(cat "$data/state/operator-token")")
"${op[@]}" -X PUT "$api/v1/machines/$mac" \
  -d "{\"uuid\":\"$uuid\",\"config\":{\"apiVersion\":\"plinth/v1\",\"hostname\":\"demo-node\"}}" >/dev/null
echo "plinth-server at http://10.33.0.2:8080 and $api (proxyDHCP, TFTP); machine $mac declared"
"${site[@]}" ip tuntap add tap0 mode tap
"${site[@]}" ip link set tap0 master br0 up
"${site[@]}" "$bin/plinth-boot" run --tap tap0 --mac "$mac" --uuid "$uuid" --timeout 300 &
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
