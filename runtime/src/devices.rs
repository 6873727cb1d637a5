//! Device nodes in the container's /dev: the default set every container gets, the
//! config's `linux.devices`, and the usual /dev symlinks.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use crate::error::{Error, Result};
use crate::mount::{self, Create};

/// One device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Absolute path inside the container.
    pub path: PathBuf,
    /// S_IFCHR, S_IFBLK or S_IFIFO.
    pub kind: SFlag,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner, as seen inside the container.
    pub uid: u32,
    /// Group, as seen inside the container.
    pub gid: u32,
}

/// The devices every container gets (the runtime spec's "default devices").
pub fn defaults() -> Vec<Device> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(p, major, minor)| Device {
        path: PathBuf::from(p),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// Converts `linux.devices[i]`, validating it.
pub fn from_config(d: &LinuxDevice, i: usize) -> Result<Device> {
    let field = format!("linux.devices[{i}]");
    if !d.path().is_absolute() {
        return Err(Error::config(
            format!("{field}.path"),
            format!("{} is not an absolute path", d.path().display()),
        ));
    }
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(Error::config(
                format!("{field}.type"),
                "\"a\" is not a device type (c, b, u or p)",
            ))
        }
    };
    if kind != SFlag::S_IFIFO && (d.major() < 0 || d.minor() < 0) {
        return Err(Error::config(
            format!("{field}.major"),
            "major and minor must be non-negative",
        ));
    }
    Ok(Device {
        path: d.path().clone(),
        kind,
        major: d.major().max(0) as u64,
        minor: d.minor().max(0) as u64,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// Creates `dev` below `root` (the rootfs, before the pivot). In a user namespace,
/// where mknod(2) is not allowed, the host's node is bind-mounted instead, as runc does.
pub fn create(root: &OwnedFd, dev: &Device, bind: bool) -> Result<()> {
    let parent = dev.path.parent().unwrap_or(Path::new("/"));
    let name = dev
        .path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("device path {} has no name", dev.path.display())))?;
    if bind {
        let target = mount::open_in_root(root, &dev.path, Create::File)?;
        return mount::do_mount(
            Some(&dev.path),
            &mount::fd_path(&target),
            None,
            MsFlags::MS_BIND,
            None,
            &dev.path,
        );
    }
    let dir = mount::open_in_root(root, parent, Create::Dir)?;
    let dirfd = nix::fcntl::openat(
        &dir,
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {}", parent.display()), e))?;
    // A file already there (from the image) is replaced: the config is authoritative.
    match nix::unistd::unlinkat(&dirfd, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::sys(format!("remove {}", dev.path.display()), e)),
    }
    nix::sys::stat::mknodat(
        &dirfd,
        name,
        dev.kind,
        Mode::from_bits_truncate(dev.mode),
        nix::sys::stat::makedev(dev.major, dev.minor),
    )
    .map_err(|e| Error::sys(format!("mknod {}", dev.path.display()), e))?;
    // mknod is subject to the umask; set the exact mode asked for.
    nix::sys::stat::fchmodat(
        &dirfd,
        name,
        Mode::from_bits_truncate(dev.mode),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .or_else(|e| {
        if e == Errno::EOPNOTSUPP {
            Ok(())
        } else {
            Err(e)
        }
    })
    .map_err(|e| Error::sys(format!("chmod {}", dev.path.display()), e))?;
    nix::unistd::fchownat(
        &dirfd,
        name,
        Some(nix::unistd::Uid::from_raw(dev.uid)),
        Some(nix::unistd::Gid::from_raw(dev.gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| Error::sys(format!("chown {}", dev.path.display()), e))
}

/// The /dev symlinks of a standard Linux system.
pub fn create_symlinks(root: &OwnedFd, with_kcore: bool) -> Result<()> {
    let dev = mount::open_in_root(root, Path::new("/dev"), Create::Dir)?;
    let dirfd = nix::fcntl::openat(
        &dev,
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open /dev in the rootfs", e))?;
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ];
    if with_kcore {
        links.push(("/proc/kcore", "core"));
    }
    for (target, name) in links {
        match nix::unistd::symlinkat(target, &dirfd, name) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::sys(format!("symlink /dev/{name}"), e)),
        }
    }
    Ok(())
}

/// Points /dev/ptmx at the container's own devpts instance.
pub fn link_ptmx(root: &OwnedFd) -> Result<()> {
    let dev = mount::open_in_root(root, Path::new("/dev"), Create::Dir)?;
    let dirfd = nix::fcntl::openat(
        &dev,
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open /dev in the rootfs", e))?;
    match nix::unistd::unlinkat(&dirfd, "ptmx", nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::sys("remove /dev/ptmx", e)),
    }
    nix::unistd::symlinkat("pts/ptmx", &dirfd, "ptmx")
        .map_err(|e| Error::sys("symlink /dev/ptmx", e))
}
