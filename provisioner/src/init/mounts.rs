//! The early mounts every node needs, in order. An already-mounted target (EBUSY) is fine:
//! the kernel may have mounted devtmpfs itself.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::error::{io, Error, Result};

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// (source, target, fstype, flags, data): each data string is tried in turn while the
/// kernel refuses it (EINVAL), for options an older kernel lacks.
const MOUNTS: &[(&str, &str, &str, MsFlags, &[&str])] = &[
    ("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, &[""]),
    ("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, &[""]),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        &["mode=0755"],
    ),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        &["mode=0620,ptmxmode=0666"],
    ),
    ("tmpfs", "/dev/shm", "tmpfs", NOSUID_NODEV, &["mode=1777"]),
    ("tmpfs", "/run", "tmpfs", NOSUID_NODEV, &["mode=0755"]),
    ("tmpfs", "/tmp", "tmpfs", NOSUID_NODEV, &["mode=1777"]),
    // Pure cgroup v2, where containers and kubelet expect the unified hierarchy, with
    // the options systemd mounts it with: `nsdelegate` (a cgroup namespace is a
    // delegation boundary) and `memory_recursiveprot` (memory.min and memory.low protect
    // a whole subtree, as kubelet's memory QoS assumes; Linux 5.7).
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        &["nsdelegate,memory_recursiveprot", "nsdelegate"],
    ),
];

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run, /tmp and cgroup2 under `root`.
/// Returns the targets that were already mounted.
pub fn mount_all(root: &Path) -> Result<Vec<String>> {
    let mut busy = Vec::new();
    for (src, target, fstype, flags, datas) in MOUNTS {
        let path = root.join(target.trim_start_matches('/'));
        std::fs::create_dir_all(&path).map_err(io("creating mount point", &path))?;
        let mut result = Err(nix::Error::EINVAL);
        for data in datas.iter() {
            let data = Some(*data).filter(|d| !d.is_empty());
            result = mount(Some(*src), &path, Some(*fstype), *flags, data);
            if result != Err(nix::Error::EINVAL) {
                break;
            }
        }
        match result {
            Ok(()) => {}
            Err(nix::Error::EBUSY) => busy.push(target.to_string()),
            Err(e) => return Err(mount_error(fstype, &path, e)),
        }
    }
    Ok(busy)
}

fn mount_error(fstype: &str, path: &Path, source: nix::Error) -> Error {
    Error::Sys {
        what: format!("mounting {fstype} on {}", path.display()),
        source,
    }
}

/// The superblock options of the mount on `target` in a /proc/self/mountinfo text (the
/// last one there, which is the one in view), e.g. "rw,nsdelegate" for cgroup2. The
/// target is compared as mountinfo writes it: one with a space or a backslash would
/// have to be given escaped (`\040`).
pub fn super_options(mountinfo: &str, target: &str) -> Option<String> {
    mountinfo.lines().rev().find_map(|line| {
        // id parent maj:min root mount-point options [optional...] - type source super
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        let opts = right.split(' ').nth(2)?;
        (point == target).then(|| opts.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
31 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
40 22 0:30 / /mnt/a\\040b rw shared:5 - tmpfs tmpfs rw,size=64k
";

    #[test]
    fn super_options_are_those_of_the_mount_in_view() {
        assert_eq!(
            super_options(MOUNTINFO, "/sys/fs/cgroup").as_deref(),
            Some("rw,nsdelegate,memory_recursiveprot")
        );
        assert_eq!(super_options(MOUNTINFO, "/proc").as_deref(), Some("rw"));
        // As mountinfo writes it, escapes included.
        assert_eq!(
            super_options(MOUNTINFO, "/mnt/a\\040b").as_deref(),
            Some("rw,size=64k")
        );
        assert_eq!(super_options(MOUNTINFO, "/nowhere"), None);
    }
}
