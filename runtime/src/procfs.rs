//! Files under /proc that the runtime writes (sysctls, oom_score_adj, time namespace
//! offsets), each opened and checked to be on a real procfs first: an image may ship a
//! fake /proc, and a write meant for the kernel must never land in a file of its.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Refuses an fd that is not on procfs (a fake /proc in the image).
pub fn check_procfs(fd: &OwnedFd, path: &Path) -> Result<()> {
    let st = nix::sys::statfs::fstatfs(fd)
        .map_err(|e| Error::sys(format!("statfs {}", path.display()), e))?;
    if st.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(Error::Invalid(format!(
            "{} is not on procfs",
            path.display()
        )));
    }
    Ok(())
}

/// Writes a sysctl through the container's /proc/sys, checking that the file opened
/// is on a real procfs.
pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let rel = PathBuf::from("sys").join(key.replace('.', "/"));
    let path = Path::new("/proc").join(&rel);
    // From a /proc verified to be procfs, and without crossing a mount point: a file
    // bind-mounted over the one asked for (even another real procfs file) is refused
    // rather than written (CVE-2025-52881).
    let proc_dir = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("linux.sysctl.{key}: open /proc"), e))?;
    check_procfs(&proc_dir, Path::new("/proc"))?;
    let how = OpenHow::new()
        .flags(OFlag::O_WRONLY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_XDEV
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let fd = openat2(&proc_dir, &rel, how).map_err(|e| {
        Error::sys(
            format!(
                "linux.sysctl.{key}: open {}{}",
                path.display(),
                if e == nix::errno::Errno::EXDEV {
                    " (something is mounted over it)"
                } else {
                    ""
                }
            ),
            e,
        )
    })?;
    check_procfs(&fd, &path)?;
    nix::unistd::write(&fd, value.as_bytes())
        .map_err(|e| Error::sys(format!("linux.sysctl.{key}: write {value:?}"), e))?;
    Ok(())
}

/// Writes oom_score_adj through an fd checked to be on the host's procfs.
pub fn write_oom_score_adj(pid: Pid, adj: i32) -> Result<()> {
    let path = PathBuf::from(format!("/proc/{}/oom_score_adj", pid.as_raw()));
    let fd = nix::fcntl::open(&path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| Error::sys(format!("process.oomScoreAdj: open {}", path.display()), e))?;
    check_procfs(&fd, &path)?;
    nix::unistd::write(&fd, adj.to_string().as_bytes())
        .map_err(|e| Error::sys(format!("process.oomScoreAdj: write {adj}"), e))?;
    Ok(())
}

/// Writes the offsets of the time namespace this process has just made (before any
/// process lives in it, as the kernel requires): one `CLOCK SECS NANOS` line each.
pub fn write_time_offsets(
    offsets: &std::collections::HashMap<String, oci_spec::runtime::LinuxTimeOffset>,
) -> Result<()> {
    let path = Path::new("/proc/self/timens_offsets");
    let mut text = String::new();
    for (clock, o) in offsets {
        text.push_str(&format!(
            "{clock} {} {}\n",
            o.secs().unwrap_or(0),
            o.nanosecs().unwrap_or(0)
        ));
    }
    let fd = nix::fcntl::open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| Error::sys(format!("linux.timeOffsets: open {}", path.display()), e))?;
    check_procfs(&fd, path)?;
    nix::unistd::write(&fd, text.as_bytes())
        .map_err(|e| Error::sys("linux.timeOffsets: write /proc/self/timens_offsets", e))?;
    Ok(())
}
