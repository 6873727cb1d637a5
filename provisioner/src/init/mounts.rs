//! The early mounts every node needs, in order. An already-mounted target (EBUSY) is fine:
//! the kernel may have mounted devtmpfs itself.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::error::{io, Error, Result};

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// (source, target, fstype, flags, data)
const MOUNTS: &[(&str, &str, &str, MsFlags, &str)] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, ""),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    ),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "mode=0620,ptmxmode=0666",
    ),
    ("tmpfs", "/dev/shm", "tmpfs", NOSUID_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", NOSUID_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, "mode=1777"),
    // Pure cgroup v2: containers and kubelet expect the unified hierarchy here.
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        "nsdelegate",
    ),
];

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and cgroup2 under `root`.
/// Returns the targets that were already mounted.
pub fn mount_all(root: &Path) -> Result<Vec<String>> {
    let mut busy = Vec::new();
    for (src, target, fstype, flags, data) in MOUNTS {
        let path = root.join(target.trim_start_matches('/'));
        std::fs::create_dir_all(&path).map_err(io("creating mount point", &path))?;
        let data = if data.is_empty() { None } else { Some(*data) };
        match mount(Some(*src), &path, Some(*fstype), *flags, data) {
            Ok(()) => {}
            Err(nix::Error::EBUSY) => busy.push(target.to_string()),
            Err(e) => {
                return Err(Error::Sys {
                    what: format!("mounting {fstype} on {}", path.display()),
                    source: e,
                })
            }
        }
    }
    Ok(busy)
}
