//! What the process inside sees: namespaces, mounts, devices, user, capabilities,
//! rlimits and the other process attributes, checked from inside the container.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use plinth_tests::{need_root, pass_fd, unique, Bundle};

fn run_ok(b: &Bundle) -> String {
    let (code, out, err) = b.run(&unique("c"));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    out
}

#[test]
fn process_attributes() {
    if !need_root("process_attributes") {
        return;
    }
    let mut b = Bundle::busybox(
        "id -u; id -g; id -G; umask; pwd; echo $FOO; ulimit -n; ulimit -Hn; \
         grep -E '^(NoNewPrivs|CapEff|CapBnd|CapInh|CapAmb)' /proc/self/status; cat /proc/self/oom_score_adj",
    );
    let p = &mut b.config["process"];
    p["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [5, 7], "umask": 0o027});
    p["cwd"] = json!("/work/dir");
    p["env"] = json!(["PATH=/bin", "FOO=bar baz"]);
    p["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 768}]);
    p["capabilities"] = json!({"bounding": ["CAP_KILL", "CAP_CHOWN"], "effective": ["CAP_KILL"],
        "permitted": ["CAP_KILL"], "inheritable": [], "ambient": []});
    p["oomScoreAdj"] = json!(123);
    let out = run_ok(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "1001");
    let groups: Vec<&str> = lines[2].split(' ').collect();
    for g in ["1001", "5", "7"] {
        assert!(groups.contains(&g), "groups {groups:?}");
    }
    assert_eq!(lines[3], "0027");
    assert_eq!(lines[4], "/work/dir");
    assert_eq!(lines[5], "bar baz");
    assert_eq!(lines[6], "512");
    assert_eq!(lines[7], "768");
    let status = &lines[8..13];
    for want in [
        "NoNewPrivs:\t1",
        "CapInh:\t0000000000000000",
        // CAP_KILL is bit 5; CAP_CHOWN bit 0. A non-root user keeps no effective
        // capability across execve without ambient ones (kernel semantics).
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000021",
        "CapAmb:\t0000000000000000",
    ] {
        assert!(status.contains(&want), "{want:?} not in {status:?}");
    }
    assert_eq!(lines[13], "123");
}

#[test]
fn root_gets_exactly_the_configured_capabilities() {
    if !need_root("root_gets_exactly_the_configured_capabilities") {
        return;
    }
    let mut b = Bundle::busybox("grep -E '^Cap' /proc/self/status");
    b.config["process"]["capabilities"] = json!({"bounding": ["CAP_KILL", "CAP_CHOWN"],
        "effective": ["CAP_KILL"], "permitted": ["CAP_KILL", "CAP_CHOWN"], "inheritable": [], "ambient": []});
    let out = run_ok(&b);
    // For uid 0 the kernel raises effective to permitted at execve (no file caps).
    assert_eq!(
        out,
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000021\nCapEff:\t0000000000000021\n\
         CapBnd:\t0000000000000021\nCapAmb:\t0000000000000000\n"
    );
}

#[test]
fn ambient_capabilities_when_asked() {
    if !need_root("ambient_capabilities_when_asked") {
        return;
    }
    let mut b = Bundle::busybox("grep CapAmb /proc/self/status");
    let caps = json!(["CAP_NET_BIND_SERVICE"]);
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    b.config["process"]["capabilities"] = json!({"bounding": caps, "effective": caps,
        "permitted": caps, "inheritable": caps, "ambient": caps});
    let out = run_ok(&b);
    assert_eq!(out.trim(), "CapAmb:\t0000000000000400");
}

#[test]
fn namespaces_are_new_and_hostname_set() {
    if !need_root("namespaces_are_new_and_hostname_set") {
        return;
    }
    let mut b = Bundle::busybox(
        "hostname; cat /proc/sys/kernel/domainname; echo $$; for n in net ipc uts mnt pid cgroup; do readlink /proc/self/ns/$n; done",
    );
    // runc's spec (and so plinth's) has no cgroup namespace: asked for here.
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "cgroup"}));
    b.config["hostname"] = json!("box");
    b.config["domainname"] = json!("example.test");
    let out = run_ok(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box");
    assert_eq!(lines[1], "example.test");
    assert_eq!(lines[2], "1", "the process is pid 1 of its pid namespace");
    for (i, n) in ["net", "ipc", "uts", "mnt", "pid", "cgroup"]
        .iter()
        .enumerate()
    {
        let host = std::fs::read_link(format!("/proc/self/ns/{n}")).unwrap();
        assert_ne!(
            lines[3 + i],
            host.to_str().unwrap(),
            "{n} namespace is the host's"
        );
    }
}

#[test]
fn joins_a_network_namespace_by_path() {
    if !need_root("joins_a_network_namespace_by_path") {
        return;
    }
    // A real process holds a namespace; the container joins it through /proc/PID/ns/net.
    let holder = std::process::Command::new("unshare")
        .args(["--net", "sleep", "30"])
        .spawn()
        .unwrap();
    let pid = holder.id();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let path = format!("/proc/{pid}/ns/net");
    let want = std::fs::read_link(&path).unwrap();
    let mut b = Bundle::busybox("readlink /proc/self/ns/net; echo $$");
    for ns in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = json!(path);
        }
    }
    let out = run_ok(&b);
    let mut holder = holder;
    let _ = holder.kill();
    let _ = holder.wait();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], want.to_str().unwrap());
    assert_eq!(lines[1], "1", "still pid 1 in a new pid namespace");
}

#[test]
fn user_namespace_maps_ids() {
    if !need_root("user_namespace_maps_ids") {
        return;
    }
    let root = tmp_owned_dir();
    let mut b = Bundle::busybox(
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; touch /shared/made-inside",
    );
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    b.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"destination": "/shared", "type": "bind", "source": root.0, "options": ["rbind", "rw"]}));
    // The rootfs must be reachable by the mapped root.
    std::process::Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(b.dir.join("rootfs"))
        .status()
        .unwrap();
    let out = run_ok(&b);
    let fields: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(fields[0], vec!["0", "100000", "65536"]);
    assert_eq!(fields[1], vec!["0", "100000", "65536"]);
    assert_eq!(fields[2], vec!["0"]);
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(root.0.join("made-inside")).unwrap();
    assert_eq!(
        md.uid(),
        100000,
        "a file made by container root belongs to the mapped uid"
    );
}

fn tmp_owned_dir() -> plinth_tests::TempDir {
    let d = plinth_tests::TempDir::new("plinth-shared");
    std::process::Command::new("chown")
        .args(["100000:100000"])
        .arg(&d.0)
        .status()
        .unwrap();
    d
}

#[test]
fn mounts_devices_and_paths() {
    if !need_root("mounts_devices_and_paths") {
        return;
    }
    let host = plinth_tests::TempDir::new("plinth-bind");
    std::fs::write(host.0.join("file"), "from the host\n").unwrap();
    let mut b = Bundle::busybox(
        "cat /data/file; touch /data/x 2>/dev/null && echo data-writable || echo data-ro; \
         touch /scratch/x && echo scratch-writable; touch /rootfile 2>/dev/null && echo root-writable || echo root-ro; \
         stat -c '%t:%T %a' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/mydev; \
         readlink /dev/fd; readlink /dev/ptmx; stat -c '%t:%T' /proc/keys; ls /proc/acpi | wc -l; \
         echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo sys-writable || echo sys-ro; \
         grep ' /scratch ' /proc/self/mountinfo | cut -d' ' -f6",
    );
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/data", "type": "bind", "source": host.0, "options": ["bind", "ro"]}));
    mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m"]}));
    b.config["linux"]["devices"] =
        json!([{"path": "/dev/mydev", "type": "c", "major": 1, "minor": 5, "fileMode": 0o640}]);
    let out = run_ok(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "from the host");
    assert_eq!(lines[1], "data-ro");
    assert_eq!(lines[2], "scratch-writable");
    assert_eq!(lines[3], "root-ro");
    assert_eq!(
        &lines[4..11],
        ["1:3 666", "1:5 666", "1:7 666", "1:8 666", "1:9 666", "5:0 666", "1:5 640"]
    );
    assert_eq!(lines[11], "/proc/self/fd");
    assert_eq!(lines[12], "pts/ptmx");
    assert_eq!(lines[13], "1:3", "masked /proc/keys is /dev/null");
    assert_eq!(
        lines[14].trim(),
        "0",
        "masked /proc/acpi is an empty directory"
    );
    assert_eq!(lines[15], "sys-ro");
    assert!(
        lines[16].contains("nosuid") && lines[16].contains("nodev"),
        "{}",
        lines[16]
    );
    assert!(!host.0.join("x").exists());
}

#[test]
fn sysctl_is_set_inside_only() {
    if !need_root("sysctl_is_set_inside_only") {
        return;
    }
    let mut b = Bundle::busybox("cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni");
    b.config["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1", "kernel.shmmni": "1234"});
    // readonlyPaths would make /proc/sys read-only only after the sysctls are written.
    let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let out = run_ok(&b);
    assert_eq!(out, "1\n1234\n");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forward
    );
}

#[test]
fn no_pivot_moves_the_root() {
    if !need_root("no_pivot_moves_the_root") {
        return;
    }
    // The host's files are gone from view: only the rootfs is /.
    let b = Bundle::busybox(
        "ls /bin/busybox && if [ -e /etc/debian_version ]; then echo host-visible; else echo host-hidden; fi",
    );
    assert!(
        std::path::Path::new("/etc/debian_version").exists(),
        "the check needs a file the host has and the busybox rootfs lacks"
    );
    b.write();
    let out = b
        .cmd()
        .args(["run", "--no-pivot", "--bundle"])
        .arg(&b.dir)
        .arg(unique("nopivot"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/bin/busybox\nhost-hidden\n"
    );
}

/// `rootfsPropagation: rshared` (what a pod with a Bidirectional mount gets from
/// containerd) on a rootfs that is a mount point of its own, as an engine's overlay
/// mount is: pivot_root refuses a new root whose parent mount is shared, so the mount
/// holding the rootfs is made private first, and the container's / ends up shared.
#[test]
fn rshared_rootfs_propagation_on_a_mounted_rootfs() {
    if !need_root("rshared_rootfs_propagation_on_a_mounted_rootfs") {
        return;
    }
    let mut b = Bundle::busybox("awk '$5 == \"/\"' /proc/self/mountinfo");
    b.config["linux"]["rootfsPropagation"] = serde_json::json!("rshared");
    let rootfs = b.dir.join("rootfs");
    let m = std::process::Command::new("mount")
        .arg("--bind")
        .arg(&rootfs)
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(m.status.success(), "mount --bind: {m:?}");
    let (code, out, err) = b.run(&unique("rshared"));
    let _ = std::process::Command::new("umount").arg(&rootfs).status();
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(" shared:"), "/ is not shared: {out}");
}

#[test]
fn preserve_fds_passes_exactly_those() {
    if !need_root("preserve_fds_passes_exactly_those") {
        return;
    }
    let b = Bundle::busybox("ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; cat <&3");
    b.write();
    let tmp = b.tmp.0.join("passed");
    std::fs::write(&tmp, "through fd 3\n").unwrap();
    let f = std::fs::File::open(&tmp).unwrap();
    // Also open a non-CLOEXEC fd 4 that must not reach the container.
    let leak = std::fs::File::open("/").unwrap();
    let mut cmd = b.cmd();
    cmd.args(["run", "--preserve-fds", "1", "--bundle"])
        .arg(&b.dir)
        .arg(unique("fds"));
    pass_fd(&mut cmd, &f, 3);
    pass_fd(&mut cmd, &leak, 4);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    // ls itself holds one fd open on the directory it lists.
    let fds: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    // 0-2, the preserved 3, and ls's own directory fd (4): the caller's fd 4 would
    // have pushed that to 5.
    assert_eq!(
        fds,
        ["0", "1", "2", "3", "4"],
        "fds in the container: {fds:?}"
    );
    assert!(text.contains("through fd 3"));
}

#[test]
fn cwd_through_a_leaked_fd_is_refused() {
    if !need_root("cwd_through_a_leaked_fd_is_refused") {
        return;
    }
    for n in 3..8 {
        let mut b = Bundle::busybox("pwd");
        b.config["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        let (code, out, err) = b.run(&unique("cwd"));
        assert_eq!(code, 1, "fd {n}: the container ran with cwd {out:?}");
        assert!(err.contains("process.cwd"), "fd {n}: {err}");
    }
}

/// A script printing its shell's (nice, rt_priority, policy) from /proc/$$/stat
/// (fields 19, 40 and 41): sourced, the container's process's; run, a child's.
const SCHED_FIELDS: &str = "tr -d '\\n' < /proc/$$/stat | sed 's/.*) //' | cut -d' ' -f17,38,39";

/// `process.scheduler` (runtime-spec 1.2; runc 1.2 applies it too, runc 1.1.5 has no
/// such field): the policy and nice value reach the process, and
/// SCHED_FLAG_RESET_ON_FORK (runtime-spec's name) resets its children.
#[test]
fn the_scheduler_reaches_the_process() {
    if !need_root("the_scheduler_reaches_the_process") {
        return;
    }
    let mut b = Bundle::busybox(". /bin/sched-fields");
    let script = b.dir.join("rootfs/bin/sched-fields");
    std::fs::write(&script, format!("#!/bin/sh\n{SCHED_FIELDS}\n")).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    b.config["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 7});
    // nice 7, rt_priority 0, policy 3 (SCHED_BATCH).
    assert_eq!(run_ok(&b).trim(), "7 0 3");
    // A negative nice with SCHED_FLAG_RESET_ON_FORK: the process has it, its children
    // are back to 0. (A real-time policy would show the same reset, but this host's
    // cgroups give real-time tasks no runtime: sched_setattr refuses them there.)
    // (`; true`: busybox sh execs a last command in place instead of forking it.)
    b.config["process"]["args"] =
        json!(["sh", "-c", ". /bin/sched-fields; /bin/sched-fields; true"]);
    b.config["process"]["scheduler"] = json!({"policy": "SCHED_OTHER", "nice": -5,
        "flags": ["SCHED_FLAG_RESET_ON_FORK"]});
    let out = run_ok(&b);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["-5 0 0", "0 0 0"], "{out}");
    b.config["process"]["args"] = json!(["sh", "-c", ". /bin/sched-fields"]);
    b.config["process"]["scheduler"] = json!({"policy": "SCHED_IDLE"});
    assert_eq!(run_ok(&b).trim(), "0 0 5");
}

/// `process.ioPriority` (runtime-spec 1.2; runc 1.2 applies it): the class and
/// priority reach the process, as ioprio_get reads them from the host.
#[test]
fn the_io_priority_and_cpu_affinity_reach_the_process() {
    if !need_root("the_io_priority_and_cpu_affinity_reach_the_process") {
        return;
    }
    let mut b = Bundle::busybox("grep Cpus_allowed_list /proc/self/status; sleep 100");
    b.config["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_IDLE", "priority": 5});
    b.config["process"]["execCPUAffinity"] = json!({"initial": "0", "final": "0"});
    let id = unique("ioprio");
    let out = b.tmp.0.join("ioprio.out");
    b.write();
    let status = b
        .cmd()
        .args(["run", "-d", "--bundle"])
        .arg(&b.dir)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid = b.state(&id)["pid"].as_i64().unwrap();
    // SAFETY: ioprio_get(IOPRIO_WHO_PROCESS, pid) takes integers and returns one.
    let prio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, pid) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut text = String::new();
    while !text.contains('\n') && std::time::Instant::now() < deadline {
        text = std::fs::read_to_string(&out).unwrap_or_default();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = b.plinth(&["delete", "--force", &id]);
    // IOPRIO_CLASS_IDLE (3) << 13 | 5.
    assert_eq!(prio, (3 << 13) | 5, "ioprio_get of the container's process");
    assert_eq!(text.split_whitespace().nth(1), Some("0"), "{text}");
}

/// `linux.personality` LINUX32 (runc 1.2 applies it): uname reports a 32-bit machine.
#[test]
fn the_personality_reaches_the_process() {
    if !need_root("the_personality_reaches_the_process") {
        return;
    }
    let mut b = Bundle::busybox("uname -m");
    b.config["linux"]["personality"] = json!({"domain": "LINUX32"});
    assert_eq!(run_ok(&b).trim(), "i686");
    b.config["linux"]["personality"] = json!({"domain": "LINUX"});
    assert_eq!(run_ok(&b).trim(), std::env::consts::ARCH);
}

/// Id-mapped mounts (runtime-spec 1.2 `idmap`/`ridmap`; runc 1.2 makes them, runc
/// 1.1.5 has none), as containerd 2 asks for them for `hostUsers: false` pods: a host
/// directory owned by root appears owned by the container's root inside a user
/// namespace, and what the container writes lands on the host with the ids it has
/// there. Without the option the same mount shows nobody. Mappings that are not the
/// namespace's are refused by field.
#[test]
fn idmapped_mounts_show_host_files_as_the_containers_own() {
    use std::os::unix::fs::MetadataExt;
    if !need_root("idmapped_mounts_show_host_files_as_the_containers_own") {
        return;
    }
    let data = plinth_tests::TempDir::new("plinth-idmap");
    std::fs::set_permissions(&data.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(data.0.join("f"), "").unwrap();
    std::fs::write(data.0.join("g"), "").unwrap();
    std::os::unix::fs::chown(data.0.join("g"), Some(1000), Some(1000)).unwrap();
    let script = "stat -c '%u %g' /data /data/f /data/g; touch /data/new && echo wrote";
    let mount = |opts: serde_json::Value| {
        json!({"destination": "/data", "type": "bind",
        "source": data.0, "options": opts})
    };

    let mut b = Bundle::busybox(script);
    b.user_namespaced();
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(mount(json!(["rbind", "idmap"])));
    assert_eq!(run_ok(&b), "0 0\n0 0\n1000 1000\nwrote\n");
    let made = std::fs::metadata(data.0.join("new")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (0, 0),
        "the container's root wrote as host root through the id-mapped mount"
    );
    std::fs::remove_file(data.0.join("new")).unwrap();

    // The same with the mount's own mappings, the namespace's, and ridmap.
    let mut b = Bundle::busybox(script);
    b.user_namespaced();
    let mut m = mount(json!(["rbind", "ridmap"]));
    m["uidMappings"] = b.config["linux"]["uidMappings"].clone();
    m["gidMappings"] = b.config["linux"]["gidMappings"].clone();
    b.config["mounts"].as_array_mut().unwrap().push(m);
    assert_eq!(run_ok(&b), "0 0\n0 0\n1000 1000\nwrote\n");
    std::fs::remove_file(data.0.join("new")).unwrap();

    // Without idmap: host root is nobody there, and the write is refused.
    let mut b =
        Bundle::busybox("stat -c '%u %g' /data; touch /data/new 2>/dev/null || echo refused");
    b.user_namespaced();
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(mount(json!(["rbind"])));
    assert_eq!(run_ok(&b), "65534 65534\nrefused\n");

    // Mappings other than the namespace's: refused, naming the field.
    let mut b = Bundle::busybox("true");
    b.user_namespaced();
    let mut m = mount(json!(["rbind", "idmap"]));
    m["uidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    m["gidMappings"] = b.config["linux"]["gidMappings"].clone();
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(m);
    let i = mounts.len() - 1;
    b.write();
    let (code, err) = b.create_failing(&unique("idmapbad"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("mounts[{i}].uidMappings")), "{err}");
}
