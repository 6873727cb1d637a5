//! The container's terminal: a pty opened inside the container, its master sent to the
//! caller's `--console-socket` with SCM_RIGHTS (as runc does), its peer made the
//! process's controlling terminal and /dev/console.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// Connects to the caller's console socket (a unix stream socket path).
pub fn connect_console_socket(path: &Path) -> Result<OwnedFd> {
    crate::fdpass::connect(path, "--console-socket")
}

/// A pty pair opened in the container's devpts.
pub struct Pty {
    /// The master side, sent to the caller.
    pub master: OwnedFd,
    /// The peer (slave) side, the container's stdio.
    pub peer: OwnedFd,
}

const TIOCGPTPEER: libc::c_ulong = 0x5441;

/// Opens /dev/ptmx (after the pivot: the container's own devpts instance) and gets
/// its peer with TIOCGPTPEER, so the peer is the one the master belongs to and no path
/// under /dev/pts is trusted.
pub fn open_pty(width: u16, height: u16) -> Result<Pty> {
    let master = nix::fcntl::open(
        "/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open /dev/ptmx (is devpts mounted at /dev/pts?)", e))?;
    // The master must be a devpts ptmx (5:2), not whatever the image put at /dev/ptmx.
    let fs = nix::sys::statfs::fstatfs(&master).map_err(|e| Error::sys("statfs /dev/ptmx", e))?;
    let st = nix::sys::stat::fstat(&master).map_err(|e| Error::sys("stat /dev/ptmx", e))?;
    const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;
    if fs.filesystem_type().0 as i64 != DEVPTS_SUPER_MAGIC
        || st.st_mode & libc::S_IFMT != libc::S_IFCHR
        || libc::major(st.st_rdev) != 5
        || libc::minor(st.st_rdev) != 2
    {
        return Err(Error::Invalid(
            "/dev/ptmx is not the ptmx of a devpts instance: refusing it".into(),
        ));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(Error::sys("unlock the pty", nix::errno::Errno::last()));
    }
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let peer = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            TIOCGPTPEER as _,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if peer < 0 {
        return Err(Error::sys("ioctl(TIOCGPTPEER)", nix::errno::Errno::last()));
    }
    // SAFETY: the kernel just returned this fd; we are its only owner.
    let peer = unsafe { OwnedFd::from_raw_fd(peer) };
    if width > 0 || height > 0 {
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize struct we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    Ok(Pty { master, peer })
}

/// The container's terminal: a pty opened in its devpts (the process must already be
/// in the container's mount namespace), the master sent to the caller's console
/// socket, the peer made this process's stdio and controlling terminal. The init also
/// shows it as /dev/console; a process `exec` adds does not touch /dev.
pub fn hand_over(sock: &OwnedFd, size: Option<(u16, u16)>, as_console: bool) -> Result<()> {
    let (w, h) = size.unwrap_or((0, 0));
    let pty = open_pty(w, h)?;
    if as_console {
        mount_console(&pty.peer)?;
    }
    crate::fdpass::send_fd(
        sock.as_raw_fd(),
        pty.master.as_raw_fd(),
        b"pty",
        "the pty master to the console socket",
    )?;
    make_controlling(&pty.peer)
}

/// Makes `peer` the calling process's stdio and controlling terminal, in a new session.
pub fn make_controlling(peer: &OwnedFd) -> Result<()> {
    nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
    // SAFETY: TIOCSCTTY with argument 0 on a terminal fd we own.
    if unsafe { libc::ioctl(peer.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(Error::sys("ioctl(TIOCSCTTY)", nix::errno::Errno::last()));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; both fds are valid.
        if unsafe { libc::dup2(peer.as_raw_fd(), target) } < 0 {
            return Err(Error::sys(
                "dup2 the pty onto stdio",
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}

/// Bind-mounts the pty peer on /dev/console (after the pivot), fd to fd, so that no
/// path in the container can redirect it.
pub fn mount_console(peer: &OwnedFd) -> Result<()> {
    use nix::fcntl::{openat2, OpenHow, ResolveFlag};
    let root = crate::mount::root_fd()?;
    let dev = crate::mount::open_in_root(&root, Path::new("/dev"), crate::mount::Create::Dir)?;
    // /dev/console itself must not be a symlink: the pty would be mounted wherever it
    // points, even inside the rootfs (CVE-2025-52565). Created when missing.
    let how = |flags: OFlag| {
        // openat2 wants a mode exactly when it creates.
        let mode = if flags.contains(OFlag::O_CREAT) {
            0o600
        } else {
            0
        };
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            )
    };
    let dev_dir = nix::fcntl::openat(
        &dev,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open /dev in the rootfs", e))?;
    let target =
        match openat2(&dev_dir, "console", how(OFlag::O_PATH)) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => openat2(
                &dev_dir,
                "console",
                how(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDONLY),
            )
            .map_err(|e| Error::sys("create /dev/console", e))?,
            Err(nix::errno::Errno::ELOOP) => return Err(Error::Invalid(
                "/dev/console in the rootfs is a symlink: refusing to mount the console through it"
                    .into(),
            )),
            Err(e) => return Err(Error::sys("open /dev/console", e)),
        };
    let st = nix::sys::stat::fstat(&target).map_err(|e| Error::sys("stat /dev/console", e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG && st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Err(Error::Invalid(
            "/dev/console is neither a file nor a device".into(),
        ));
    }
    // fd to fd: no path through the container's /proc, which the image may fake.
    crate::mount::bind_fd(peer, &target, Path::new("/dev/console"))
}
