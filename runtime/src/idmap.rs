//! Writing a user namespace's uid and gid maps: directly when the runtime may (root,
//! or an unprivileged user mapping only itself), through the setuid helpers
//! newuidmap/newgidmap otherwise, as rootless runtimes do.

use std::path::Path;
use std::process::Command;

use oci_spec::runtime::LinuxIdMapping;

use crate::error::{Error, Result};

fn map_text(maps: &[LinuxIdMapping]) -> String {
    maps.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

/// Whether the unprivileged caller may write `maps` itself: one mapping of size 1
/// onto its own id.
fn self_map_only(maps: &[LinuxIdMapping], own: u32) -> bool {
    maps.len() == 1 && maps[0].size() == 1 && maps[0].host_id() == own
}

/// Writes the maps of `pid`'s user namespace.
pub fn write(pid: i32, uid_maps: &[LinuxIdMapping], gid_maps: &[LinuxIdMapping]) -> Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let euid = nix::unistd::geteuid().as_raw();
    let egid = nix::unistd::getegid().as_raw();
    if root || self_map_only(gid_maps, egid) {
        if !root {
            // An unprivileged gid map is only accepted once setgroups is denied.
            write_file(&format!("/proc/{pid}/setgroups"), "deny")?;
        }
        write_file(&format!("/proc/{pid}/gid_map"), &map_text(gid_maps))?;
    } else {
        helper("newgidmap", pid, gid_maps)?;
    }
    if root || self_map_only(uid_maps, euid) {
        write_file(&format!("/proc/{pid}/uid_map"), &map_text(uid_maps))
    } else {
        helper("newuidmap", pid, uid_maps)
    }
}

/// Whether setgroups(2) is allowed in the user namespace of the calling process.
pub fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() != "deny")
        .unwrap_or(true)
}

fn write_file(path: &str, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io("write", Path::new(path), e))
}

fn helper(name: &str, pid: i32, maps: &[LinuxIdMapping]) -> Result<()> {
    let mut cmd = Command::new(name);
    cmd.arg(pid.to_string());
    for m in maps {
        cmd.arg(m.container_id().to_string())
            .arg(m.host_id().to_string())
            .arg(m.size().to_string());
    }
    let out = cmd.output().map_err(|e| {
        Error::Invalid(format!(
            "{name} (from the uidmap package) is needed to map more than your own id: {e}"
        ))
    })?;
    if !out.status.success() {
        return Err(Error::Invalid(format!(
            "{name} {pid}: {} (are the ranges in /etc/subuid and /etc/subgid?)",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
