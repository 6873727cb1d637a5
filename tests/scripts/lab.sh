#!/usr/bin/env bash
# The lab ("The lab" in ../shared/DESIGN.md): a site network on one machine, built with
# iproute2 as a person would, in two network namespaces of its own, each made with
# `unshare --net=FILE` (`ip netns exec` would remount /sys and hide the cgroup mounts):
#
#   site.net    the site: bridge br0 10.33.0.1/24, Debian's dnsmasq on it as the site's
#               DHCP server (addresses only: no PXE option at all), and the machines'
#               tap devices (tap0, tap1, ... made by whoever powers a machine on)
#   server.net  the provisioning host: eth0 10.33.0.2/24, a veth whose other end (srv0)
#               is a port of br0; plinth-server runs here
#
# Neither namespace has a route or a device out: nothing leaves the lab.
#
#   lab.sh up DIR     builds the lab in DIR (under /run), prints `lab ready`, and holds it
#                     until its standard input closes or it gets SIGTERM, SIGINT or SIGHUP;
#                     then it tears the lab down. Whoever starts it keeps its stdin open
#                     for as long as the lab is needed: when that process ends, however
#                     it ends (a failed test, SIGKILL), the pipe closes and the lab goes.
#   lab.sh down DIR   tears down the lab in DIR (one whose keeper was killed itself).
#   lab.sh sweep      tears down every lab under /run/plinth-lab whose keeper is gone.
#
# Tearing down: every process in either namespace is sent SIGTERM (plinth-boot then stops
# its qemu), and SIGKILL 5 s later; both namespace files are unmounted (the kernel frees
# a namespace, with its bridge, veths and taps, when nothing holds it); DIR is removed.
set -uo pipefail

ROOT=/run/plinth-lab
SUBNET=10.33.0
SUBNET6=fd33

# The inode of the network namespace mounted at $1, or nothing.
ns_inode() {
  mountpoint -q "$1" 2>/dev/null && stat -L -c %i "$1" 2>/dev/null
}

# PIDs of the processes in the network namespace with inode $1.
ns_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(stat -L -c %i "$p/ns/net" 2>/dev/null)" = "$1" ] && echo "${p#/proc/}"
  done
}

teardown() {
  local dir=$1 f ino pids=() p
  local inodes=()
  for f in "$dir/site.net" "$dir/server.net"; do
    ino=$(ns_inode "$f") && inodes+=("$ino")
  done
  for ino in "${inodes[@]}"; do
    for p in $(ns_pids "$ino"); do pids+=("$p"); done
  done
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null
    for _ in $(seq 50); do
      local alive=()
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
      [ ${#alive[@]} -eq 0 ] && break
      sleep 0.1
    done
    for ino in "${inodes[@]}"; do
      for p in $(ns_pids "$ino"); do kill -KILL "$p" 2>/dev/null; done
    done
  fi
  for f in "$dir/site.net" "$dir/server.net"; do
    mountpoint -q "$f" 2>/dev/null && umount "$f"
  done
  rm -rf "$dir"
}

# Labs whose keeper is gone (killed with SIGKILL, or the machine went down under it).
sweep() {
  local d pid
  for d in "$ROOT"/*/; do
    [ -d "$d" ] || continue
    d=${d%/}
    pid=$(cat "$d/keeper.pid" 2>/dev/null)
    if [ -n "$pid" ] && grep -qs lab.sh "/proc/$pid/cmdline"; then
      continue
    fi
    echo "lab.sh: tearing down $d, left behind by keeper ${pid:-?}" >&2
    teardown "$d"
  done
}

up() {
  LAB=$1
  local dir=$LAB
  case $dir in
    /run/*) ;;
    *) echo "lab.sh: DIR must be under /run (tmpfs; the namespace files are mounted there): $dir" >&2; exit 2 ;;
  esac
  if [ -e "$dir" ]; then
    echo "lab.sh: $dir already exists" >&2
    exit 2
  fi
  sweep
  mkdir -p "$dir" || exit 1
  echo $$ >"$dir/keeper.pid"
  trap 'teardown "$LAB"; [ -n "${HOLD:-}" ] && kill "$HOLD" 2>/dev/null' EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  trap 'exit 129' HUP
  set -e
  touch "$dir/site.net" "$dir/server.net"
  unshare --net="$dir/site.net" true
  unshare --net="$dir/server.net" true
  local site=(nsenter --net="$dir/site.net") srv=(nsenter --net="$dir/server.net")
  "${site[@]}" ip link set lo up
  "${site[@]}" ip link add br0 type bridge
  "${site[@]}" ip addr add "$SUBNET.1/24" dev br0
  # A ULA prefix for the site's router advertisements (below); nodad: usable at once.
  "${site[@]}" ip -6 addr add "$SUBNET6::1/64" dev br0 nodad
  "${site[@]}" ip link set br0 up
  "${site[@]}" ip link add srv0 type veth peer name eth0 netns "$dir/server.net"
  "${site[@]}" ip link set srv0 master br0 up
  "${srv[@]}" ip link set lo up
  "${srv[@]}" ip addr add "$SUBNET.2/24" dev eth0
  "${srv[@]}" ip link set eth0 up
  # The site's DHCP server: addresses for the machines, a name server and domain (no DNS
  # answers there: nodes only write them down), and nothing about PXE. It also
  # sends IPv6 router advertisements (no DHCPv6, no route out), as a site's router does:
  # iPXE configures IPv4 and IPv6 together and, on a network without a router, waits
  # about 13 s for one before it boots.
  "${site[@]}" dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --no-resolv \
    --no-hosts --interface=br0 --bind-interfaces --user=root --group=root \
    --dhcp-range="$SUBNET.100,$SUBNET.199,255.255.255.0,1h" --dhcp-authoritative \
    --dhcp-option=option:dns-server,"$SUBNET.1" --dhcp-option=option:domain-name,lab.example \
    --enable-ra --dhcp-range="$SUBNET6::,ra-only,64,1h" \
    --dhcp-leasefile="$dir/dnsmasq.leases" --log-dhcp --log-facility="$dir/dnsmasq.log" \
    </dev/null >>"$dir/dnsmasq.log" 2>&1 &
  echo $! >"$dir/dnsmasq.pid"
  for _ in $(seq 100); do
    grep -qs "DHCP, IP range" "$dir/dnsmasq.log" && break
    kill -0 "$(cat "$dir/dnsmasq.pid")" 2>/dev/null || { echo "lab.sh: dnsmasq failed:" >&2; cat "$dir/dnsmasq.log" >&2; exit 1; }
    sleep 0.1
  done
  set +e
  echo "lab ready $dir"
  # Hold the lab until stdin closes; `wait` returns at once on a trapped signal.
  exec 3<&0
  cat <&3 >/dev/null &
  HOLD=$!
  wait $HOLD
  HOLD=
}

case ${1:-} in
  up) up "${2:?usage: lab.sh up DIR}" ;;
  down) teardown "${2:?usage: lab.sh down DIR}" ;;
  sweep) sweep ;;
  *) echo "usage: lab.sh up DIR | down DIR | sweep" >&2; exit 2 ;;
esac
