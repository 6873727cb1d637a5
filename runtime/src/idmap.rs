//! Writing a user namespace's uid and gid maps: directly when the runtime may (root,
//! or an unprivileged user mapping only itself), through the setuid helpers
//! newuidmap/newgidmap otherwise, as rootless runtimes do.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};

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

/// One line of a uid_map or gid_map: (container id, host id, size).
pub type Extent = (u32, u32, u32);

/// A user namespace's uid and gid maps, each sorted.
pub type Maps = (Vec<Extent>, Vec<Extent>);

/// The uid and gid maps of the user namespace at `path`, sorted, as the caller's own
/// namespace sees them. An engine that joins a namespace it made (containerd for a pod
/// with `hostUsers: false`) also sends that namespace's mappings, and runc accepts them
/// when they are the namespace's: this is what they are compared with.
pub fn of_namespace(path: &Path) -> Result<Maps> {
    // /proc/PID/ns/user names a process inside the namespace: its maps are readable
    // as they are. Anything else (a bind-mounted namespace) is entered by a child.
    if let Some(pid) = proc_pid(path) {
        let uid = std::fs::read_to_string(format!("/proc/{pid}/uid_map"));
        let gid = std::fs::read_to_string(format!("/proc/{pid}/gid_map"));
        if let (Ok(uid), Ok(gid)) = (uid, gid) {
            return Ok((parse_map(&uid), parse_map(&gid)));
        }
    }
    let (r, w) = nix::unistd::pipe().map_err(|e| Error::sys("pipe", e))?;
    match crate::namespaces::fork_with(CloneFlags::empty())? {
        crate::namespaces::Forked::Child => {
            drop(r);
            let mut w = std::fs::File::from(w);
            let ok = crate::namespaces::join(path, CloneFlags::CLONE_NEWUSER).is_ok()
                && ["/proc/self/uid_map", "/proc/self/gid_map"]
                    .iter()
                    .all(|f| match std::fs::read_to_string(f) {
                        Ok(text) => write!(w, "{text}\0").is_ok(),
                        Err(_) => false,
                    });
            // SAFETY: the forked child ends here without running the parent's exit path.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        crate::namespaces::Forked::Parent(child) => {
            drop(w);
            let mut text = String::new();
            let read = std::fs::File::from(r).read_to_string(&mut text);
            let status = waitpid(child, None).map_err(|e| Error::sys("waitpid", e))?;
            let mut parts = text.split('\0');
            match (read, status, parts.next(), parts.next()) {
                (Ok(_), WaitStatus::Exited(_, 0), Some(uid), Some(gid)) => {
                    Ok((parse_map(uid), parse_map(gid)))
                }
                _ => Err(Error::Invalid(format!(
                    "cannot enter the user namespace {} to read its id mappings",
                    path.display()
                ))),
            }
        }
    }
}

/// The pid in a path of the form /proc/PID/ns/user.
fn proc_pid(path: &Path) -> Option<u32> {
    let rest = path.to_str()?.strip_prefix("/proc/")?;
    let (pid, tail) = rest.split_once('/')?;
    (tail == "ns/user").then_some(())?;
    pid.parse().ok()
}

fn parse_map(text: &str) -> Vec<Extent> {
    let mut v: Vec<Extent> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|n| n.parse::<u32>());
            match (f.next(), f.next(), f.next()) {
                (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Some((a, b, c)),
                _ => None,
            }
        })
        .collect();
    v.sort_unstable();
    v
}

/// `maps` as sorted extents, to compare with [`of_namespace`].
pub fn extents(maps: &[LinuxIdMapping]) -> Vec<Extent> {
    let mut v: Vec<Extent> = maps
        .iter()
        .map(|m| (m.container_id(), m.host_id(), m.size()))
        .collect();
    v.sort_unstable();
    v
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_proc_pid_ns_user_names_a_process() {
        assert_eq!(proc_pid(Path::new("/proc/42/ns/user")), Some(42));
        assert_eq!(proc_pid(Path::new("/proc/42/ns/net")), None);
        assert_eq!(proc_pid(Path::new("/proc/self/ns/user")), None);
        assert_eq!(proc_pid(Path::new("/run/userns/pod")), None);
    }

    #[test]
    fn maps_are_read_as_the_kernel_pads_them_and_sorted() {
        let text = "      1000     200000       1000\n         0     100000      1000\n";
        assert_eq!(
            parse_map(text),
            vec![(0, 100000, 1000), (1000, 200000, 1000)]
        );
    }
}
