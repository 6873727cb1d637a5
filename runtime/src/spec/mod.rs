//! `plinth spec`: a default config.json with containerd's secure defaults (v2.3.4,
//! commit db8809540e1a, `pkg/oci/spec.go` and `pkg/oci/mounts.go`): the 14 default
//! capabilities in the bounding, permitted and effective sets (never inheritable or
//! ambient), no_new_privs, the masked and read-only /proc and /sys paths,
//! RLIMIT_NOFILE 1024, a deny-all device cgroup, containerd's mounts, and containerd's
//! default seccomp profile ([`seccomp_default`]) for those capabilities.
//!
//! Kept from runc's `spec`, since containerd's base spec leaves them to the engine and
//! scripts written for `runc spec` should work unchanged: the process (`sh` on a
//! terminal), runc's namespaces (pid, network, ipc, uts, mount; rootless: no network,
//! a user namespace), a read-only root, the hostname, and a read-only /sys/fs/cgroup
//! mount (which containerd's CRI plugin adds too).

pub mod seccomp_default;

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// containerd's default capabilities, in containerd's order.
pub const DEFAULT_CAPS: [&str; 14] = [
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

/// containerd's masked paths, in containerd's order.
pub const MASKED_PATHS: [&str; 11] = [
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
];

/// containerd's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The default config; `rootless` maps the caller's ids to root in a user namespace
/// and drops what an unprivileged user cannot have (cgroup limits, gid-5 devpts, and,
/// as runc's rootless spec, a network namespace of its own). The seccomp profile stays
/// in both: an unprivileged process may install one once no_new_privs is set, which it
/// is. The process and the namespaces are runc's `spec` defaults (a terminal, `sh`),
/// so that scripts written for `runc spec` work unchanged.
pub fn default_spec(rootless: bool) -> Value {
    let caps = json!(DEFAULT_CAPS);
    let mut spec = json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "plinth",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp_default::profile(&DEFAULT_CAPS)
        }
    });
    if rootless {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let linux = &mut spec["linux"];
        if let Some(ns) = linux["namespaces"].as_array_mut() {
            ns.retain(|n| n["type"] != "network");
            ns.push(json!({"type": "user"}));
        }
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        if let Some(o) = linux.as_object_mut() {
            o.remove("resources");
        }
        if let Some(mounts) = spec["mounts"].as_array_mut() {
            for m in mounts.iter_mut() {
                if m["type"] == "devpts" {
                    m["options"] = json!([
                        "nosuid",
                        "noexec",
                        "newinstance",
                        "ptmxmode=0666",
                        "mode=0620"
                    ]);
                }
            }
        }
    }
    spec
}

/// `spec`: writes the default config (rootless or not) to `bundle/config.json`, which
/// must not exist yet.
pub fn write(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(Error::Invalid(format!(
            "{} exists already; remove it first",
            path.display()
        )));
    }
    let text = serde_json::to_string_pretty(&default_spec(rootless))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io("write", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_parses_and_validates_as_oci() {
        for rootless in [false, true] {
            let text = serde_json::to_vec(&default_spec(rootless)).expect("json");
            let spec = crate::config::parse(&text).expect("parses");
            let caps = spec
                .process()
                .as_ref()
                .and_then(|p| p.capabilities().as_ref())
                .and_then(|c| c.bounding().as_ref())
                .map(|b| b.len());
            assert_eq!(caps, Some(14));
            let linux = spec.linux().as_ref().expect("linux");
            assert_eq!(linux.masked_paths().as_ref().map(|m| m.len()), Some(11));
            assert_eq!(linux.readonly_paths().as_ref().map(|m| m.len()), Some(5));
            assert_eq!(linux.uid_mappings().is_some(), rootless);
            // The profile must be one plinth's own compiler accepts, or every default
            // container would fail at create.
            let seccomp = linux.seccomp().as_ref().expect("seccomp");
            let program = crate::seccomp::compile(seccomp).expect("the profile compiles");
            assert!(program.instructions() < crate::seccomp::MAX_INSTRUCTIONS);
        }
    }
}
