#!/usr/bin/env bash
# make bench: plinth side by side with crun, runc and youki (whichever are installed).
#
#   usage: tests/scripts/bench.sh [PLINTH]      (PLINTH defaults to target/release/plinth)
#   env:   BENCH_N=20 containers per round, BENCH_ROUNDS=7 rounds, BENCH_SCALE=100 containers,
#          BENCH_CONFIGS="plain seccomp userns", BENCH_RUNTIMES="crun runc youki" (the others)
#
# Latency: each runtime runs N containers of /bin/true one after another (`run ID`, then
# `delete -f ID`), in rounds that alternate between the runtimes (the order rotates each
# round); the figure is the median over rounds of the mean ms per container. The bundles
# are the ones of ../shared/bench/runtime-latency (plain, plus the default seccomp profile of
# containers-common, plus a user namespace), one bundle per config shared by every runtime.
# Peak RSS: ru_maxrss of wait4() on the runtime's `run` process, which the kernel takes
# as the largest RSS of that process and every descendant it reaped (the container's
# init included), the same measure for every runtime; the median of 5 runs.
# Scale: BENCH_SCALE containers `create`d in parallel, then all `start`ed in parallel,
# then all `delete`d in parallel; wall time of each phase and failures, then a check that
# no cgroup directory, mount or state directory of theirs is left behind.
#
# A benchmark, not a test: it never fails because the machine is slow or noisy. It exits
# non-zero only when plinth itself fails a container (or leaks), after printing everything.
set -euo pipefail
plinth=$(readlink -f "${1:-target/release/plinth}")
[ -x "$plinth" ] || { echo "bench: no plinth binary at ${1:-target/release/plinth} (make build)" >&2; exit 1; }
if [ "$(id -u)" != 0 ]; then
  echo "bench: needs root (containers with cgroups and namespaces); skipped" >&2
  exit 0
fi

# BENCH_PURE_V2=1 (make bench runs it second): the same comparison on a pure cgroup v2
# view of a hybrid host, for the node image's case. A private mount namespace gets cgroup2
# (the kernel's one v2 hierarchy) on /sys/fs/cgroup, so every runtime makes v2 cgroups
# there: plinth and crun start the init inside it (clone3 CLONE_INTO_CGROUP), runc moves
# it in. On a host that is already pure v2 the first table is that measure.
if [ -n "${BENCH_PURE_V2:-}" ] && [ -z "${PLINTH_BENCH_NS:-}" ]; then
  if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
    echo "bench: no pure-v2 view needed: this host is pure cgroup v2 (the table above)"; exit 0
  fi
  if [ ! -e /sys/fs/cgroup/unified/cgroup.controllers ]; then
    echo "bench: pure-v2 view skipped: no cgroup2 hierarchy is mounted on this host"; exit 0
  fi
  export PLINTH_BENCH_NS=1 BENCH_CONFIGS=v2 BENCH_SCALE=0
  exec unshare -m --propagation private bash -c \
    'umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec "$0" "$@"' "$0" "$plinth"
fi

# On a hybrid host (cgroup v1 controllers plus a v2 mount carrying a controller) crun
# refuses to start. Run everything in a private mount namespace with that v2 mount
# removed, for every runtime alike (as runtime-latency does).
if [ -z "${PLINTH_BENCH_NS:-}" ] && [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]; then
  export PLINTH_BENCH_NS=1
  exec unshare -m --propagation private bash -c 'umount /sys/fs/cgroup/unified && exec "$0" "$@"' "$0" "$plinth"
fi

bb=$(command -v busybox) || { echo "bench: busybox not found (make deps installs busybox-static)" >&2; exit 1; }
prof=/usr/share/containers/seccomp.json
if [ ! -f "$prof" ]; then
  echo "bench: installing golang-github-containers-common for $prof" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-github-containers-common; } >&2 || true
fi

configs=${BENCH_CONFIGS:-plain seccomp userns}
rts=("$plinth")
for r in ${BENCH_RUNTIMES:-crun runc youki}; do
  p=$(command -v "$r" 2>/dev/null) && rts+=("$(readlink -f "$p")")
done

work=$(mktemp -d /tmp/plinth-bench.XXXXXX); chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/bin" "$rootfs/"{proc,sys,dev,tmp,etc}
cp "$bb" "$rootfs/bin/busybox"; ln -s busybox "$rootfs/bin/true"

# The config of runtime-latency, byte for byte in meaning; root.path points at the shared rootfs.
mkbundle() { # NAME
  local b=$work/$1
  mkdir -p "$b"
  cat >"$b/config.json" <<JSON
{"ociVersion":"1.0.2","process":{"terminal":false,"user":{"uid":0,"gid":0},"args":["/bin/true"],
"env":["PATH=/bin"],"cwd":"/","capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"],"permitted":["CAP_KILL"]},
"rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}],"noNewPrivileges":true},
"root":{"path":"$rootfs","readonly":true},"hostname":"bench",
"mounts":[{"destination":"/proc","type":"proc","source":"proc"},
{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},
{"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","noexec","nodev","ro"]}],
"linux":{"resources":{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":67108864},"pids":{"limit":64}},
"namespaces":[{"type":"pid"},{"type":"network"},{"type":"ipc"},{"type":"uts"},{"type":"mount"}],
"maskedPaths":["/proc/kcore","/proc/keys","/sys/firmware"],"readonlyPaths":["/proc/sys","/proc/sysrq-trigger"]}}
JSON
}
for c in $configs; do
  case $c in
  plain) mkbundle plain ;;
  seccomp)
    if [ ! -f "$prof" ]; then echo "bench: no $prof; the seccomp config is skipped" >&2; continue; fi
    mkbundle seccomp
    python3 - "$prof" "$work/seccomp/config.json" <<'PY'
import json, sys
moby, cfg_path = json.load(open(sys.argv[1])), sys.argv[2]
cfg = json.load(open(cfg_path))
caps = set(cfg["process"]["capabilities"]["bounding"])
rules = []
for r in moby["syscalls"]:
    inc, exc = r.get("includes", {}), r.get("excludes", {})
    if inc.get("arches") and "amd64" not in inc["arches"]: continue
    if inc.get("caps") and not all(c in caps for c in inc["caps"]): continue
    if exc.get("caps") and any(c in caps for c in exc["caps"]): continue
    if exc.get("arches") and "amd64" in exc["arches"]: continue
    out = {"names": r["names"], "action": r["action"]}
    for k in ("args", "errnoRet"):
        if r.get(k) is not None: out[k] = r[k]
    rules.append(out)
sec = {"defaultAction": moby["defaultAction"], "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"], "syscalls": rules}
if "defaultErrnoRet" in moby: sec["defaultErrnoRet"] = moby["defaultErrnoRet"]
cfg["linux"]["seccomp"] = sec
json.dump(cfg, open(cfg_path, "w"))
PY
    ;;
  userns)
    mkbundle userns
    python3 - "$work/userns/config.json" <<'PY'
import json, sys
p = sys.argv[1]; cfg = json.load(open(p))
cfg["linux"]["namespaces"].append({"type": "user"})
cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
json.dump(cfg, open(p, "w"))
PY
    ;;
  v2)
    # The plain config without linux.resources. On a hybrid host the memory and pids
    # controllers are bound to v1, so the v2 hierarchy cannot have them; and crun raises
    # RLIMIT_MEMLOCK to load its v2 device program, which needs CAP_SYS_RESOURCE (not in
    # this VM's bounding set). The cgroup is still made, joined and removed.
    mkbundle v2
    python3 - "$work/v2/config.json" <<'PY'
import json, sys
p = sys.argv[1]; cfg = json.load(open(p))
del cfg["linux"]["resources"]
json.dump(cfg, open(p, "w"))
PY
    echo
    echo "Pure cgroup v2 view of this host (private mount namespace, cgroup2 on /sys/fs/cgroup):"
    echo "the plain config without linux.resources (this host's v2 hierarchy has no memory or pids"
    echo "controller, and crun's v2 device program needs CAP_SYS_RESOURCE, which this VM lacks)."
    ;;
  *) echo "bench: unknown config $c (plain, seccomp, userns, v2)" >&2; exit 2 ;;
  esac
done
configs_made=$(cd "$work" && for c in $configs; do [ -d "$c" ] && printf '%s ' "$c"; done)

# The harness: python3 as a child subreaper, so the inits of detached containers (scale
# test) are reaped here and not left as zombies under a PID 1 that may not reap. Not
# exec'd: the EXIT trap removes $work afterwards; set -e passes python's status on.
python3 - "$work" "${BENCH_N:-20}" "${BENCH_ROUNDS:-7}" "${BENCH_SCALE:-100}" "$configs_made" "${rts[@]}" <<'PY'
import ctypes, glob, os, shutil, statistics, subprocess, sys, time

work, n, rounds, scale, configs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5].split()
rts = sys.argv[6:]
plinth = rts[0]
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
tag = f"pb{os.getpid()}"
name = lambda rt: os.path.basename(rt) if rt != plinth else "plinth"
broken = []  # what makes the benchmark exit non-zero: plinth failing

def reap_orphans():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

_errs = [0]
def spawn(argv, cwd=None):
    """Starts argv with stderr in a file: a container's init inherits the runtime's
    stderr and may hold it open long after the runtime exits (create)."""
    _errs[0] += 1
    f = open(os.path.join(work, f"stderr-{_errs[0] % 1000}"), "w+b")
    p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f)
    p.errfile = f
    return p

def finish(p, timeout):
    """Waits for p; returns its stderr (tail) or None if it exited 0."""
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()
        p.errfile.close()
        return f"hung {timeout} s"
    p.errfile.seek(0)
    err = p.errfile.read().decode(errors="replace").strip()
    p.errfile.close()
    return None if p.returncode == 0 else (err[-300:] or f"exit status {p.returncode}")

def delete(rt, cid):
    subprocess.run([rt, "delete", "-f", cid], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)

def run_one(rt, bundle, cid):
    """`rt run cid`, then `rt delete -f cid`; returns the error or None."""
    err = finish(spawn([rt, "run", cid], cwd=bundle), 30)
    delete(rt, cid)
    return err

time_bin = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
def rss_one(rt, bundle, cid):
    """Peak RSS (KiB) of one `rt run` under GNU time (wait4's ru_maxrss), or None."""
    out = os.path.join(work, "rss")
    err = finish(spawn([time_bin, "-f", "%M", "-o", out, rt, "run", cid], cwd=bundle), 30)
    delete(rt, cid)
    return None if err else int(open(out).read().split()[-1])

results = {}  # (rt, cfg) -> (ms median, ms list) or error string
for cfg in configs:
    bundle = os.path.join(work, cfg)
    per = {rt: [] for rt in rts}
    failed = {}
    for r in range(rounds):
        order = rts[r % len(rts):] + rts[:r % len(rts)]
        for rt in order:
            if rt in failed:
                continue
            t0 = time.perf_counter()
            for i in range(n):
                err = run_one(rt, bundle, f"{tag}-{cfg}-{r}-{i}")
                if err:
                    failed[rt] = err
                    break
            else:
                per[rt].append((time.perf_counter() - t0) * 1000 / n)
    for rt in rts:
        results[(rt, cfg)] = failed.get(rt) or (statistics.median(per[rt]), per[rt])
        if rt in failed and rt == plinth:
            broken.append(f"plinth failed the {cfg} config: {failed[rt]}")

rss = {}
for rt in rts:
    vals = [rss_one(rt, os.path.join(work, configs[0]), f"{tag}-rss-{i}") for i in range(5)] if time_bin else []
    vals = [v for v in vals if v]
    rss[rt] = statistics.median(vals) if vals else None
floor = rss_one("/bin/true", work, "x") if time_bin else None

def binary(rt):
    size = os.path.getsize(rt)
    out = subprocess.run(["readelf", "-d", rt], capture_output=True, text=True).stdout
    needed = [l.split("[")[1].rstrip("]") for l in out.splitlines() if "(NEEDED)" in l]
    # A static binary names its libc only if it is glibc (its tunables); musl leaves no mark.
    with open(rt, "rb") as f:
        glibc = b"GLIBC_TUNABLES" in f.read()
    return size, needed, glibc

crun = next((rt for rt in rts if name(rt) == "crun"), None)
print()
print(f"Latency: /bin/true per container (run + delete -f), median of {rounds} alternating rounds of {n};"
      f" ratio to crun (lower is better)")
print(f"{'runtime':<10} {'config':<8} {'ms/ctr':>8} {'ratio':>6} {'spread':>13} {'peak RSS':>9} {'binary':>8}  linking")
for rt in rts:
    size, needed, glibc = binary(rt)
    link = ("static, glibc" if glibc else "static") if not needed else \
        "dynamic: " + " ".join(x.split(".so")[0] for x in needed)
    for j, cfg in enumerate(configs):
        res = results[(rt, cfg)]
        c = results.get((crun, cfg)) if crun else None
        if isinstance(res, str):
            cols = f"{'FAIL':>8} {'':>6} {'':>13}"
        else:
            ratio = f"{res[0] / c[0]:.2f}" if c and not isinstance(c, str) else "-"
            spread = f"{min(res[1]):.1f}..{max(res[1]):.1f}"
            cols = f"{res[0]:8.2f} {ratio:>6} {spread:>13}"
        extra = ""
        if j == 0:
            m = rss[rt]
            extra = f" {(f'{m / 1024:.1f} MB' if m else 'n/a'):>9} {size / 1e6:6.2f}MB  {link}"
        print(f"{name(rt):<10} {cfg:<8} {cols}{extra}")
        if isinstance(res, str):
            print(f"{'':<10}   FAIL: {res}")
print(f"peak RSS: /usr/bin/time -f %M (wait4 ru_maxrss) of one `run` of the {configs[0]} config: the largest"
      f" single process of the runtime's reaped tree, median of 5 (floor: {floor or 0} KiB for /bin/true);"
      f" binary: bytes on disk")

# Scale: create in parallel, start in parallel, delete in parallel.
def cgroup_dirs(prefix):
    found = []
    for top in glob.glob("/sys/fs/cgroup/*"):
        for d, subs, _ in os.walk(top):
            found += [os.path.join(d, s) for s in subs if s.startswith(prefix) or f":{prefix}" in s]
            if d.count("/") >= 6:
                subs[:] = []
    return sorted(found)

def remove_leftovers(prefix):
    """Removes what a runtime left under /sys/fs/cgroup (reported before): empty cgroups,
    and the plain directories crun makes in the tmpfs under an unmounted v2 mount point."""
    n = 0
    for d in sorted(cgroup_dirs(prefix), key=len, reverse=True):
        real = os.path.exists(os.path.join(d, "cgroup.controllers")) or os.path.exists(os.path.join(d, "tasks"))
        try:
            os.rmdir(d) if real else shutil.rmtree(d)
            n += 1
        except OSError:
            pass
    return n

def mounts():
    return [l for l in open("/proc/self/mountinfo") if tag in l or work in l.split()[4]]

def phase(argvs, cwd):
    t0 = time.perf_counter()
    procs = [spawn(a, cwd) for a in argvs]
    errs = [e for e in (finish(p, 120) for p in procs) if e is not None]
    dt = time.perf_counter() - t0
    reap_orphans()
    return dt, errs

if scale > 0:
    print()
    print(f"Scale: {scale} containers of the plain config, each phase in parallel (wall time; failures)")
    print(f"{'runtime':<10} {'create':>14} {'start':>14} {'delete':>14} {'total':>9}  leaks after delete")
    bundle = os.path.join(work, "plain")
    mounts_before = len(open("/proc/self/mountinfo").readlines())
    for rt in [rt for rt in rts if rt in (plinth, crun)] + [rt for rt in rts if rt not in (plinth, crun)]:
        ids = [f"{tag}-s-{name(rt)}-{i}" for i in range(scale)]
        tc, ec = phase([[rt, "create", i] for i in ids], bundle)
        ts, es = phase([[rt, "start", i] for i in ids], bundle)
        time.sleep(0.2)  # let the /bin/true of each exit
        reap_orphans()
        td, ed = phase([[rt, "delete", "-f", i] for i in ids], bundle)
        leaks = []
        cg = cgroup_dirs(f"{tag}-s-{name(rt)}-")
        if cg:
            leaks.append(f"{len(cg)} cgroup dirs (e.g. {cg[0]})")
        mnt = len(open("/proc/self/mountinfo").readlines()) - mounts_before
        if mnt or mounts():
            leaks.append(f"{mnt} mounts more than before")
        # State directories: every runtime keeps one per container id under its --root.
        st = [p for p in glob.glob("/run/*/*") if tag in os.path.basename(p)]
        if st:
            leaks.append(f"{len(st)} state dirs (e.g. {st[0]})")
        cell = lambda t, e: f"{t * 1000:8.0f}ms {len(e):>3}F"
        print(f"{name(rt):<10} {cell(tc, ec):>14} {cell(ts, es):>14} {cell(td, ed):>14} {(tc + ts + td) * 1000:7.0f}ms  "
              f"{'; '.join(leaks) or 'none'}")
        for what, e in (("create", ec), ("start", es), ("delete", ed)):
            if e:
                print(f"{'':<10}   {what}: {len(e)} failed, e.g. {e[0]}")
        if rt == plinth and (ec or es or ed or leaks):
            broken.append(f"plinth scale test: {len(ec)}+{len(es)}+{len(ed)} failures, leaks: {'; '.join(leaks) or 'none'}")
        # Clean up after any runtime that failed, so the next one starts from the same place.
        for i in ids:
            delete(rt, i)
        reap_orphans()
        remove_leftovers(f"{tag}-s-{name(rt)}-")

# The latency runs leave the same tmpfs directories behind (crun, hybrid host).
left = remove_leftovers(f"{tag}-")
if left:
    print(f"(removed {left} directories runtimes left under /sys/fs/cgroup during the latency runs)")
print()
for b in broken:
    print(f"bench: {b}", file=sys.stderr)
reap_orphans()
sys.exit(1 if broken else 0)
PY
