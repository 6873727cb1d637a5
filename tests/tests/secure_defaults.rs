//! `plinth spec` writes containerd's secure defaults (v2.3.4), and a container run on
//! them is really confined: the default seccomp profile, compiled by plinth's own
//! compiler, refuses what containerd's refuses and allows what it allows.
//!
//! busybox cannot make most of the calls that matter (it has no keyctl, io_uring or
//! clone3 applet), so the run tests compile a small static C probe with `cc -static`
//! at test time, put it in the rootfs and read the errno of each call it makes; they
//! are skipped, saying why, when there is no C compiler. The expectations are amd64's
//! (the architectures list, arch_prctl, the raw io_uring_setup/clone3 numbers), the
//! architecture the issue names and this project's hosts run.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use plinth_tests::{need_root, plinth_bin, unique, Bundle, TempDir};

const EPERM: i32 = libc::EPERM;
const ENOSYS: i32 = libc::ENOSYS;

/// containerd's default capabilities (pkg/oci/spec.go, defaultUnixCaps).
const CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// `plinth spec [--rootless] --bundle <new dir>`, run as `uid` (None: as we are), parsed.
fn spec(rootless: bool, uid: Option<u32>) -> (TempDir, Value) {
    let tmp = TempDir::new("plinth-spec");
    let mut cmd = Command::new(plinth_bin());
    cmd.arg("spec");
    if rootless {
        cmd.arg("--rootless");
    }
    cmd.arg("--bundle").arg(&tmp.0);
    if let Some(uid) = uid {
        chown_tree(&tmp.0, uid);
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "plinth spec: {out:?}");
    let text = std::fs::read(tmp.0.join("config.json")).unwrap();
    let config = serde_json::from_slice(&text).unwrap();
    (tmp, config)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[test]
fn spec_writes_containerds_defaults() {
    let (_tmp, c) = spec(false, None);
    let caps = &c["process"]["capabilities"];
    for set in ["bounding", "permitted", "effective"] {
        assert_eq!(strings(&caps[set]), CAPS, "{set}");
    }
    // Absent, not merely empty-looking: nothing is inheritable or ambient.
    let sets: Vec<&String> = caps.as_object().unwrap().keys().collect();
    assert_eq!(sets, ["bounding", "effective", "permitted"], "{caps}");
    assert_eq!(c["process"]["noNewPrivileges"], true);
    assert_eq!(
        c["process"]["rlimits"],
        json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}])
    );
    let linux = &c["linux"];
    assert_eq!(
        strings(&linux["maskedPaths"]),
        [
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/sys/devices/virtual/powercap",
            "/proc/scsi",
        ]
    );
    assert_eq!(
        strings(&linux["readonlyPaths"]),
        [
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]
    );
    assert_eq!(
        linux["resources"],
        json!({"devices": [{"allow": false, "access": "rwm"}]})
    );
    let proc_mount = c["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/proc")
        .unwrap();
    assert_eq!(
        strings(&proc_mount["options"]),
        ["nosuid", "noexec", "nodev"]
    );

    let sc = &linux["seccomp"];
    assert_eq!(sc["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(
        sc.get("defaultErrnoRet").is_none(),
        "EPERM, the default: {sc}"
    );
    assert_eq!(
        strings(&sc["architectures"]),
        ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    );
    let rules = sc["syscalls"].as_array().unwrap();
    assert_eq!(rules.len(), 14, "containerd's rule count for the 14 caps");
    let always = strings(&rules[0]["names"]);
    assert_eq!(always.len(), 363, "containerd's always-allowed names");
    assert_eq!(rules[0]["action"], "SCMP_ACT_ALLOW");
    assert!(rules[0].get("args").is_none());
    // Every name allowed anywhere, and what is conspicuously not.
    let allowed: Vec<&str> = rules
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|r| strings(&r["names"]))
        .collect();
    for name in [
        "chroot",
        "arch_prctl",
        "modify_ldt",
        "ptrace",
        "read",
        "execve",
    ] {
        assert!(allowed.contains(&name), "{name} is allowed");
    }
    for name in [
        "keyctl",
        "add_key",
        "io_uring_setup",
        "mount",
        "umount2",
        "unshare",
        "setns",
        "bpf",
        "reboot",
        "kexec_load",
        "open_by_handle_at",
    ] {
        assert!(!allowed.contains(&name), "{name} is not allowed");
    }
    let args_of = |name: &str| -> Vec<Value> {
        rules
            .iter()
            .filter(|r| r["names"] == json!([name]))
            .map(|r| r["args"].clone())
            .collect()
    };
    // socket: every family but AF_ALG (38) and AF_VSOCK (40).
    assert_eq!(
        args_of("socket"),
        [
            json!([{"index": 0, "value": 38, "op": "SCMP_CMP_LT"}]),
            json!([{"index": 0, "value": 39, "op": "SCMP_CMP_EQ"}]),
            json!([{"index": 0, "value": 40, "op": "SCMP_CMP_GT"}]),
        ]
    );
    let personas: Vec<u64> = args_of("personality")
        .iter()
        .map(|a| a[0]["value"].as_u64().unwrap())
        .collect();
    assert_eq!(personas, [0, 0x8, 0x20000, 0x20008, 0xffff_ffff]);
    // clone: only without namespace flags (no CAP_SYS_ADMIN in the set).
    assert_eq!(
        args_of("clone"),
        [json!([{"index": 0, "value": 0x7e02_0000_u64, "op": "SCMP_CMP_MASKED_EQ"}])]
    );
    let clone3 = rules.iter().find(|r| r["names"] == json!(["clone3"]));
    assert_eq!(
        clone3,
        Some(&json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}))
    );
}

#[test]
fn rootless_spec_keeps_the_user_namespace_and_the_profile() {
    let (_t, plain) = spec(false, None);
    let (_t2, rootless) = spec(true, None);
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let linux = &rootless["linux"];
    assert!(
        linux["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "user"})),
        "{linux}"
    );
    assert_eq!(
        linux["uidMappings"],
        json!([{"containerID": 0, "hostID": uid, "size": 1}])
    );
    assert_eq!(
        linux["gidMappings"],
        json!([{"containerID": 0, "hostID": gid, "size": 1}])
    );
    // No cgroup limits an unprivileged user may have no way to set.
    assert!(linux.get("resources").is_none(), "{linux}");
    // The rest of the secure defaults stay.
    assert_eq!(linux["seccomp"], plain["linux"]["seccomp"]);
    assert_eq!(linux["maskedPaths"], plain["linux"]["maskedPaths"]);
    assert_eq!(rootless["process"], plain["process"]);
}

/// The probe: for each name on its command line, makes that call and prints
/// `name errno` (0 when it succeeded).
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static long call(const char *n) {
    if (!strcmp(n, "keyctl")) /* KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING */
        return syscall(SYS_keyctl, 0, -3, 0);
    if (!strcmp(n, "io_uring_setup")) {
        static char params[120]; /* struct io_uring_params, zeroed */
        long fd = syscall(425, 1, params);
        if (fd >= 0) close(fd);
        return fd < 0 ? fd : 0;
    }
    if (!strcmp(n, "clone3")) /* a NULL clone_args: EINVAL if it ever got that far */
        return syscall(435, NULL, 0);
    if (!strcmp(n, "unshare_net")) return unshare(CLONE_NEWNET);
    if (!strcmp(n, "unshare_user")) return unshare(CLONE_NEWUSER);
    if (!strcmp(n, "mount")) return mount("x", "/mnt", "tmpfs", 0, NULL);
    if (!strcmp(n, "clone_newns") || !strcmp(n, "clone_plain")) {
        unsigned long flags = SIGCHLD | (n[6] == 'n' ? CLONE_NEWNS : 0);
        long pid = syscall(SYS_clone, flags, 0, 0, 0, 0);
        if (pid == 0) syscall(SYS_exit_group, 0);
        if (pid > 0) waitpid(pid, NULL, 0);
        return pid < 0 ? pid : 0;
    }
    if (!strncmp(n, "socket_", 7)) {
        int family = atoi(n + 7);
        int fd = socket(family, family == 38 ? SOCK_SEQPACKET : SOCK_DGRAM, 0);
        if (fd >= 0) close(fd);
        return fd < 0 ? fd : 0;
    }
    if (!strcmp(n, "personality_query")) return personality(0xffffffff) < 0 ? -1 : 0;
    if (!strcmp(n, "personality_no_randomize"))
        return personality(ADDR_NO_RANDOMIZE) < 0 ? -1 : 0;
    if (!strcmp(n, "chroot")) return chroot("/");
    if (!strcmp(n, "arch_prctl")) { /* ARCH_GET_FS */
        unsigned long fs;
        return syscall(SYS_arch_prctl, 0x1003, &fs);
    }
    if (!strcmp(n, "process_vm_readv")) {
        char src[8] = "probe", dst[8];
        struct iovec l = {dst, sizeof dst}, r = {src, sizeof src};
        return process_vm_readv(getpid(), &l, 1, &r, 1, 0) < 0 ? -1 : 0;
    }
    errno = 255;
    return -1;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long r = call(argv[i]);
        printf("%s %d\n", argv[i], r < 0 ? errno : 0);
        fflush(stdout);
    }
    return 0;
}
"#;

/// Compiles the probe into `rootfs/bin/probe`; false (and says why) without a compiler.
fn install_probe(b: &Bundle, test: &str) -> bool {
    // The bundle's own scratch dir: the C file must not land in the rootfs.
    let ok = plinth_tests::compile_static(PROBE_C, &b.tmp.0.join("probe"), test);
    if ok {
        std::fs::copy(b.tmp.0.join("probe"), b.dir.join("rootfs/bin/probe")).unwrap();
        std::fs::create_dir_all(b.dir.join("rootfs/mnt")).unwrap();
    }
    ok
}

/// The calls every run probes, the namespace-creating ones last (they change the
/// probe's own namespaces when they succeed).
const PROBES: &str =
    "keyctl io_uring_setup clone3 mount clone_newns clone_plain socket_1 socket_2 \
     socket_38 socket_39 socket_40 socket_44 personality_query personality_no_randomize \
     chroot arch_prctl process_vm_readv unshare_net unshare_user";

/// `name -> errno` from the probe's lines in `out`.
fn probe_results(out: &str) -> BTreeMap<String, i32> {
    let r: BTreeMap<String, i32> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(n, e)| Some((n.to_string(), e.parse().ok()?)))
        .collect();
    assert_eq!(r.len(), PROBES.split(' ').count(), "every probe ran: {out}");
    r
}

/// The shell script of a probing run: busybox's own attempts, then the probe.
fn probing_script() -> String {
    format!(
        "echo ok; ls / >/dev/null && echo ls-ok; grep '^Seccomp:' /proc/self/status; \
         unshare -n true 2>&1; echo unshare=$?; mount -t tmpfs x /mnt 2>&1; echo mount=$?; \
         probe {PROBES}"
    )
}

/// What containerd's profile refuses, whatever the capabilities: the refusals that are
/// the profile's own, checked as errno values.
fn assert_profile_refusals(r: &BTreeMap<String, i32>, out: &str) {
    for n in [
        "keyctl",
        "io_uring_setup",
        "mount",
        "clone_newns",
        "socket_38",
        "socket_40",
        "personality_no_randomize",
        "unshare_net",
        "unshare_user",
    ] {
        assert_eq!(r[n], EPERM, "{n} fails with EPERM: {out}");
    }
    assert_eq!(r["clone3"], ENOSYS, "clone3 fails with ENOSYS: {out}");
    // Allowed, by name or by argument.
    for n in [
        "clone_plain",
        "socket_1",
        "socket_2",
        "personality_query",
        "chroot",
        "arch_prctl",
        "process_vm_readv",
    ] {
        assert_eq!(r[n], 0, "{n} is allowed: {out}");
    }
    // Families around the refused ones pass the filter (the kernel may still lack them).
    for n in ["socket_39", "socket_44"] {
        assert_ne!(r[n], EPERM, "{n} passes the filter: {out}");
    }
}

#[test]
fn default_profile_confines_a_real_container() {
    let test = "default_profile_confines_a_real_container";
    if !need_root(test) {
        return;
    }
    let b = Bundle::busybox(&probing_script());
    if !install_probe(&b, test) {
        return;
    }
    // The config exactly as `plinth spec` wrote it (only args changed).
    let (code, out, err) = b.run(&unique("sd"));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["ok", "ls-ok"], "allowed calls work: {out}");
    assert_eq!(lines[2], "Seccomp:\t2", "a filter is installed: {out}");
    assert!(
        out.contains("unshare(0x40000000): Operation not permitted") && out.contains("unshare=1"),
        "{out}"
    );
    assert!(out.contains("mount=1"), "{out}");
    assert_profile_refusals(&probe_results(&out), &out);
}

#[test]
fn the_profile_not_the_capabilities_refuses() {
    let test = "the_profile_not_the_capabilities_refuses";
    if !need_root(test) {
        return;
    }
    // With CAP_SYS_ADMIN granted but the profile still the one for the 14 default
    // capabilities, mount, unshare and namespace clones are still refused: by seccomp.
    let mut b = Bundle::busybox(&probing_script());
    if !install_probe(&b, test) {
        return;
    }
    let mut caps: Vec<&str> = CAPS.to_vec();
    caps.push("CAP_SYS_ADMIN");
    for set in ["bounding", "permitted", "effective"] {
        b.config["process"]["capabilities"][set] = json!(caps);
    }
    let (code, out, err) = b.run(&unique("sd"));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("unshare=1") && out.contains("mount=1"),
        "{out}"
    );
    assert_profile_refusals(&probe_results(&out), &out);

    // The control: the same container without the profile can do all of it, so the
    // refusals above are the profile's and the probe really makes each call.
    b.config["linux"]
        .as_object_mut()
        .unwrap()
        .remove("seccomp")
        .unwrap();
    let (code, out, err) = b.run(&unique("sd"));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("Seccomp:\t0"), "{out}");
    assert!(
        out.contains("unshare=0") && out.contains("mount=0"),
        "{out}"
    );
    let r = probe_results(&out);
    for n in [
        "keyctl",
        "io_uring_setup",
        "mount",
        "clone_newns",
        "personality_no_randomize",
        "unshare_net",
        "unshare_user",
    ] {
        assert_eq!(r[n], 0, "{n} works without the profile: {out}");
    }
    assert_eq!(
        r["clone3"],
        libc::EINVAL,
        "clone3 reaches the kernel: {out}"
    );
    for n in ["socket_38", "socket_40"] {
        assert_ne!(r[n], EPERM, "{n} reaches the kernel: {out}");
    }
}

/// Gives `path` and everything below it to `uid` (the rootless run's user must be able
/// to create mount points in the rootfs and its state).
fn chown_tree(path: &Path, uid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn rootless_default_config_runs_as_an_unprivileged_user() {
    let test = "rootless_default_config_runs_as_an_unprivileged_user";
    // Root only to become an ordinary user (nobody) for the run.
    if !need_root(test) {
        return;
    }
    let nobody = 65534;
    let mut b = Bundle::busybox(&format!("id -u; {}", probing_script()));
    if !install_probe(&b, test) {
        return;
    }
    // The config exactly as `plinth spec --rootless` writes it for that user.
    let (_t, mut config) = spec(true, Some(nobody));
    config["process"]["args"] = b.config["process"]["args"].clone();
    config["process"]["terminal"] = json!(false);
    b.config = config;
    b.write();
    chown_tree(&b.tmp.0, nobody);
    let out = Command::new(plinth_bin())
        .uid(nobody)
        .gid(nobody)
        .env("XDG_RUNTIME_DIR", &b.tmp.0)
        .arg("--root")
        .arg(&b.root)
        .args(["run", "--bundle"])
        .arg(&b.dir)
        .arg(unique("sd"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..4], ["0", "ok", "ls-ok", "Seccomp:\t2"], "{stdout}");
    let r = probe_results(&stdout);
    for n in ["keyctl", "io_uring_setup", "unshare_user", "mount"] {
        assert_eq!(r[n], EPERM, "{n}: {stdout}");
    }
    assert_eq!(r["clone3"], ENOSYS, "{stdout}");
    assert_eq!(r["clone_plain"], 0, "{stdout}");
}
