//! Mounts inside the container's mount namespace: option parsing, mount targets
//! resolved without leaving the rootfs, the rootfs itself, pivot_root, masked and
//! read-only paths.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// Parsed mount options: flags to set, flags to clear, propagation changes, and the
/// filesystem-specific data string.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Flags the options explicitly turn off (`rw`, `suid`, `dev`, ...).
    pub cleared: MsFlags,
    /// Propagation changes, applied after the mount, in order.
    pub propagation: Vec<MsFlags>,
    /// Recursive attributes (`rro`, `rnosuid`, ...) set with mount_setattr(2).
    pub attr_set: u64,
    /// Recursive attributes cleared (`rrw`, `rsuid`, ...).
    pub attr_clr: u64,
    /// What is left: the data string for the filesystem.
    pub data: Vec<String>,
    /// `bind` or `rbind` was given.
    pub bind: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: vec![],
            attr_set: 0,
            attr_clr: 0,
            data: vec![],
            bind: false,
        }
    }
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const MOUNT_ATTR_NOATIME: u64 = 0x10;
const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

impl Options {
    /// Parses the OCI `options` of one mount; `field` names it in errors.
    pub fn parse(options: &[String], field: &str) -> Result<Options> {
        let mut o = Options::default();
        for (i, opt) in options.iter().enumerate() {
            let (set, clr): (MsFlags, MsFlags) = match opt.as_str() {
                "defaults" => (MsFlags::empty(), MsFlags::empty()),
                "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
                "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
                "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
                "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
                "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
                "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
                "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
                "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
                "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
                "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
                "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
                "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
                "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
                "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
                "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
                "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
                "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
                "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
                "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
                "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
                "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
                "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
                "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
                "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
                "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
                "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
                "iversion" => (MsFlags::MS_I_VERSION, MsFlags::empty()),
                "noiversion" => (MsFlags::empty(), MsFlags::MS_I_VERSION),
                "bind" => {
                    o.bind = true;
                    (MsFlags::MS_BIND, MsFlags::empty())
                }
                "rbind" => {
                    o.bind = true;
                    (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
                }
                "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                | "unbindable" | "runbindable" => {
                    o.propagation
                        .push(propagation_flag(opt).unwrap_or(MsFlags::empty()));
                    continue;
                }
                "rro" => {
                    o.attr_set |= MOUNT_ATTR_RDONLY;
                    continue;
                }
                "rrw" => {
                    o.attr_clr |= MOUNT_ATTR_RDONLY;
                    continue;
                }
                "rnosuid" => {
                    o.attr_set |= MOUNT_ATTR_NOSUID;
                    continue;
                }
                "rsuid" => {
                    o.attr_clr |= MOUNT_ATTR_NOSUID;
                    continue;
                }
                "rnodev" => {
                    o.attr_set |= MOUNT_ATTR_NODEV;
                    continue;
                }
                "rdev" => {
                    o.attr_clr |= MOUNT_ATTR_NODEV;
                    continue;
                }
                "rnoexec" => {
                    o.attr_set |= MOUNT_ATTR_NOEXEC;
                    continue;
                }
                "rexec" => {
                    o.attr_clr |= MOUNT_ATTR_NOEXEC;
                    continue;
                }
                "rnoatime" => {
                    o.attr_set |= MOUNT_ATTR_NOATIME;
                    continue;
                }
                "rstrictatime" => {
                    o.attr_set |= MOUNT_ATTR_STRICTATIME;
                    continue;
                }
                "rnodiratime" => {
                    o.attr_set |= MOUNT_ATTR_NODIRATIME;
                    continue;
                }
                "rnosymfollow" => {
                    o.attr_set |= MOUNT_ATTR_NOSYMFOLLOW;
                    continue;
                }
                "rsymfollow" => {
                    o.attr_clr |= MOUNT_ATTR_NOSYMFOLLOW;
                    continue;
                }
                // Whether and how a mount is id-mapped is `idmapped`'s to say.
                "idmap" | "ridmap" => continue,
                // runc's extension: copy the image's content up into a new tmpfs.
                "tmpcopyup" => {
                    return Err(Error::config(
                        format!("{field}.options[{i}]"),
                        "\"tmpcopyup\" is not supported by this runtime",
                    ))
                }
                other => {
                    if other.is_empty() {
                        return Err(Error::config(
                            format!("{field}.options[{i}]"),
                            "empty mount option",
                        ));
                    }
                    o.data.push(other.to_string());
                    continue;
                }
            };
            o.flags |= set;
            o.flags &= !clr;
            o.cleared |= clr;
            o.cleared &= !set;
        }
        Ok(o)
    }
}

/// Sets the propagation type (`MS_SHARED`, `MS_SLAVE`, `MS_PRIVATE`, `MS_UNBINDABLE`)
/// of the mount at `path` and of every mount below it; `what` names the step in an error.
pub fn set_propagation<P: ?Sized + nix::NixPath>(
    path: &P,
    flag: MsFlags,
    what: &str,
) -> Result<()> {
    mount(
        None::<&str>,
        path,
        None::<&str>,
        flag | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::sys(what, e))
}

/// The mount(2) flag for a propagation name, or None if it is not one.
pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// What to create at a mount target when it does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Nothing: the target must exist.
    Nothing,
    /// A directory (and its parents).
    Dir,
    /// An empty file (and the parent directories), for binding a file.
    File,
}

fn how(flags: OFlag, resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(resolve)
}

/// Opens `path` (absolute, as seen inside the container) below the directory `root`
/// as an O_PATH fd, resolving every symlink as if `root` were `/` so that nothing
/// outside it is ever reached; creates what is missing when asked.
pub fn open_in_root(root: &OwnedFd, path: &Path, create: Create) -> Result<OwnedFd> {
    open_in_root_at(root, path, create, 0)
}

/// How many dangling symlinks [`open_in_root`] follows to create their targets (the
/// kernel's own limit on symlinks in one lookup).
const MAX_LINKS: usize = 40;

fn open_in_root_at(root: &OwnedFd, path: &Path, create: Create, links: usize) -> Result<OwnedFd> {
    let rel = relative(path);
    let resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    match openat2(root, &rel, how(OFlag::O_PATH, resolve)) {
        Ok(fd) => return Ok(fd),
        Err(Errno::ENOENT) if create != Create::Nothing => {}
        Err(e) => {
            return Err(Error::sys(
                format!("open {} in the rootfs", path.display()),
                e,
            ))
        }
    }
    // Walk down from the root, creating each missing component below the parent we
    // hold, so a symlink swapped in meanwhile still resolves inside the root.
    let comps: Vec<_> = rel.components().collect();
    let mut cur = PathBuf::new();
    let mut parent = openat2(root, ".", how(OFlag::O_PATH | OFlag::O_DIRECTORY, resolve))
        .map_err(|e| Error::sys("open the rootfs", e))?;
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == comps.len();
        match openat2(root, &cur, how(OFlag::O_PATH, resolve)) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(Error::sys(
                    format!("open {} in the rootfs", cur.display()),
                    e,
                ))
            }
        }
        let name = c.as_os_str();
        if last && create == Create::File {
            let dirfd = reopen_dir(&parent, &cur)?;
            let f = nix::fcntl::openat(
                &dirfd,
                name,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o644),
            );
            match f {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(Error::sys(
                        format!("create {} in the rootfs", cur.display()),
                        e,
                    ))
                }
            }
        } else {
            let dirfd = reopen_dir(&parent, &cur)?;
            match nix::sys::stat::mkdirat(&dirfd, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => {
                    return Err(Error::sys(
                        format!("mkdir {} in the rootfs", cur.display()),
                        e,
                    ))
                }
            }
        }
        match openat2(root, &cur, how(OFlag::O_PATH, resolve)) {
            Ok(fd) => parent = fd,
            // What is there is a symlink whose target does not exist: make the target,
            // inside the root, as runc does (a relative one from the link's directory).
            Err(Errno::ENOENT) => {
                let dirfd = reopen_dir(&parent, &cur)?;
                let target = nix::fcntl::readlinkat(&dirfd, name)
                    .map_err(|e| Error::sys(format!("open {} in the rootfs", cur.display()), e))?;
                if links >= MAX_LINKS {
                    return Err(Error::sys(
                        format!("open {} in the rootfs", path.display()),
                        Errno::ELOOP,
                    ));
                }
                let mut next = match cur.parent() {
                    Some(dir) if !Path::new(&target).is_absolute() => dir.join(&target),
                    _ => PathBuf::from(&target),
                };
                for rest in &comps[i + 1..] {
                    next.push(rest);
                }
                return open_in_root_at(root, &next, create, links + 1);
            }
            Err(e) => {
                return Err(Error::sys(
                    format!("open {} in the rootfs", cur.display()),
                    e,
                ))
            }
        }
    }
    Ok(parent)
}

/// Turns an O_PATH directory fd into one usable as a dirfd for mkdirat/openat.
fn reopen_dir(fd: &OwnedFd, what: &Path) -> Result<OwnedFd> {
    nix::fcntl::openat(
        fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        Error::sys(
            format!("{}: a parent is not a directory", what.display()),
            e,
        )
    })
}

/// `/a/b` -> `a/b`, dropping `.` and leading `/` (`..` is kept: RESOLVE_IN_ROOT
/// clamps it at the root).
pub fn relative(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The magic-link path through which the kernel reaches what an fd points to.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// mount(2) with an error that names the target.
pub fn do_mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    shown: &Path,
) -> Result<()> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        Error::sys(
            format!(
                "mount {} on {} (type {}, flags {:?}{})",
                source.map(|s| s.display().to_string()).unwrap_or_default(),
                shown.display(),
                fstype.unwrap_or("none"),
                flags,
                data.map(|d| format!(", data {d}")).unwrap_or_default()
            ),
            e,
        )
    })
}

/// Remounts a bind mount with `flags` added, keeping the flags the kernel locks in a
/// user namespace (nosuid, nodev, noexec, atime) so that the remount is permitted.
pub fn remount_bind(target: &Path, flags: MsFlags, shown: &Path) -> Result<()> {
    let locked = statvfs_flags(target);
    do_mount(
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked,
        None,
        shown,
    )
}

/// The mount flags of the mount holding `path`, as statvfs reports them. Relatime is
/// left out on purpose: the kernel makes relatime the default whenever an atime flag is
/// given, and keeps the mount's own atime setting when none is (fs/namespace.c,
/// path_mount), so passing it changes nothing; and nix cannot report it on musl.
fn statvfs_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (a, b) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if f.contains(a) {
            out |= b;
        }
    }
    out
}

/// The read-only, nosuid, nodev and noexec flags among `flags`, set on the whole tree
/// at `target` (mount_setattr, AT_RECURSIVE); other flags are left as they are.
pub fn set_recursive_flags(target: &OwnedFd, flags: MsFlags, shown: &Path) -> Result<()> {
    let mut attrs = 0;
    for (f, a) in [
        (MsFlags::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
    ] {
        if flags.contains(f) {
            attrs |= a;
        }
    }
    if attrs == 0 {
        return Ok(());
    }
    set_recursive_attrs(target, attrs, 0, shown)
}

/// mount_setattr(2) on the tree at `target` (AT_RECURSIVE).
pub fn set_recursive_attrs(target: &OwnedFd, set: u64, clr: u64, shown: &Path) -> Result<()> {
    mount_setattr(target, true, set, clr, None)
        .map_err(|e| Error::sys(format!("mount_setattr on {}", shown.display()), e))
}

/// mount_setattr(2) on the mount `fd` is (and the mounts below it when `recursive`):
/// sets `set`, clears `clr`, and with `userns` maps its ids through that namespace.
fn mount_setattr(
    fd: &OwnedFd,
    recursive: bool,
    set: u64,
    clr: u64,
    userns: Option<&OwnedFd>,
) -> std::result::Result<(), Errno> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
    };
    let mut at = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        at |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: mount_setattr reads `size` bytes of a properly laid out struct we own;
    // the fds are valid for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            at,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// Moves the process into `rootfs` with pivot_root(2) and detaches the old root.
pub fn pivot_root(rootfs: &Path) -> Result<()> {
    let new_root = nix::fcntl::open(
        rootfs,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open rootfs {}", rootfs.display()), e))?;
    let old_root = nix::fcntl::open(
        "/",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open /", e))?;
    nix::unistd::fchdir(&new_root).map_err(|e| Error::sys("chdir to the rootfs", e))?;
    // pivot_root(".", ".") stacks the old root on top of the new one, so no directory
    // for it is needed inside the image.
    nix::unistd::pivot_root(".", ".").map_err(|e| Error::sys("pivot_root", e))?;
    nix::unistd::fchdir(&old_root).map_err(|e| Error::sys("chdir to the old root", e))?;
    // Keep the unmount of the old root from propagating back to the host.
    set_propagation(".", MsFlags::MS_SLAVE, "make the old root a slave")?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| Error::sys("detach the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e))?;
    Ok(())
}

/// The `--no-pivot` way in: move the rootfs over / and chroot into it.
pub fn move_root(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).map_err(|e| Error::sys(format!("chdir {}", rootfs.display()), e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| Error::sys("move the rootfs to /", e))?;
    nix::unistd::chroot(".").map_err(|e| Error::sys("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e))?;
    Ok(())
}

/// Enters the rootfs with chroot(2): for a container that shares the host's mount
/// namespace, where pivot_root would move the host's own root.
pub fn chroot(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).map_err(|e| Error::sys(format!("chdir {}", rootfs.display()), e))?;
    nix::unistd::chroot(".").map_err(|e| Error::sys("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e))?;
    Ok(())
}

/// `path` below `root` as an O_PATH fd, or None when it does not exist (masked and
/// read-only paths that the image lacks are skipped, as runc skips them).
fn open_existing(root: &OwnedFd, path: &Path) -> Result<Option<OwnedFd>> {
    match open_in_root(root, path, Create::Nothing) {
        Ok(fd) => Ok(Some(fd)),
        Err(Error::Sys {
            errno: Errno::ENOENT,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Hides `paths` (inside the container, after the pivot): a directory gets a read-only
/// empty tmpfs, anything else the container's /dev/null bound over it. The root and
/// /dev/null are opened once for all of them; every mount is made fd to fd.
pub fn mask_paths(paths: &[String]) -> Result<()> {
    let root = root_fd()?;
    let mut null = None;
    for path in paths.iter().map(Path::new) {
        let Some(target) = open_existing(&root, path)? else {
            continue;
        };
        let st = nix::sys::stat::fstat(&target)
            .map_err(|e| Error::sys(format!("stat masked path {}", path.display()), e))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            attach(&empty_read_only_tmpfs(path)?, &target, path)?;
        } else {
            let null = match &null {
                Some(fd) => fd,
                None => null.insert(open_dev_null()?),
            };
            bind_fd(null, &target, path)?;
        }
    }
    Ok(())
}

/// Opens the container's /dev/null and checks that it is the real null device (1:3),
/// so that a symlink or a fake node planted in the image cannot redirect the mask.
pub fn open_dev_null() -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        "/dev/null",
        OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open /dev/null", e))?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| Error::sys("stat /dev/null", e))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR
        || libc::major(st.st_rdev) != 1
        || libc::minor(st.st_rdev) != 3
    {
        return Err(Error::Invalid(
            "/dev/null in the container is not the null device (1:3)".into(),
        ));
    }
    Ok(fd)
}

/// Makes each of `paths` (inside the container, after the pivot) read-only: a
/// recursive bind of itself, read-only, nosuid, nodev and noexec all the way down,
/// made fd to fd.
pub fn readonly_paths(paths: &[String]) -> Result<()> {
    let root = root_fd()?;
    for path in paths.iter().map(Path::new) {
        let Some(target) = open_existing(&root, path)? else {
            continue;
        };
        let tree = clone_tree(&target, true, path)?;
        set_recursive_attrs(
            &tree,
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            0,
            path,
        )?;
        attach(&tree, &target, path)?;
    }
    Ok(())
}

/// An O_PATH fd on `/`.
pub fn root_fd() -> Result<OwnedFd> {
    nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys("open /", e))
}

/// The ids of the mounts whose mount point is `path`.
pub fn mounts_at(path: &Path) -> Vec<u32> {
    crate::mountinfo::read()
        .unwrap_or_default()
        .iter()
        .filter(|e| e.mount_point == path)
        .map(|e| e.id)
        .collect()
}

/// Detaches the mounts a container without a mount namespace stacked on its rootfs
/// (the private bind and everything under it), leaving those that were there before
/// (an engine's overlay, say) alone.
pub fn detach_host_mounts(rootfs: &Path, before: &[u32]) {
    for _ in 0..16 {
        if mounts_at(rootfs).iter().all(|id| before.contains(id)) {
            return;
        }
        if let Err(e) = nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH) {
            crate::logging::warn(&format!("detach the mounts on {}: {e}", rootfs.display()));
            return;
        }
    }
}

// ---------------------------------------------------------------------------------
// The fd-based mount API (Linux 5.2): nix has no wrappers. After the pivot the runtime
// mounts only through these, fd to fd, so that no path is resolved through the
// container's own /proc (which the image may fake, or the config may leave out).

/// fsopen(2).
pub(crate) fn fsopen(fs: &CStr) -> std::result::Result<OwnedFd, Errno> {
    // SAFETY: fs is a NUL-terminated string that outlives the call; the flags are valid.
    let fd = unsafe { libc::syscall(libc::SYS_fsopen, fs.as_ptr(), libc::FSOPEN_CLOEXEC) };
    // SAFETY: on success the kernel returned a new fd that nothing else owns.
    Errno::result(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// fsconfig(2) with a string value, or a bare command when `value` is None.
pub(crate) fn fsconfig(
    ctx: &OwnedFd,
    cmd: libc::c_uint,
    key: Option<&CStr>,
    value: Option<&CStr>,
) -> std::result::Result<(), Errno> {
    let key = key.map_or(std::ptr::null(), CStr::as_ptr);
    let value = value.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: ctx is an open fs context; key and value are NUL-terminated strings (or
    // null where the command takes none) that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_fsconfig, ctx.as_raw_fd(), cmd, key, value, 0) };
    Errno::result(r).map(drop)
}

/// fsmount(2): a detached mount of a created fs context.
pub(crate) fn fsmount(ctx: &OwnedFd, attrs: u64) -> std::result::Result<OwnedFd, Errno> {
    // SAFETY: ctx is an fs context after FSCONFIG_CMD_CREATE; flags and attributes
    // are valid constants.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            ctx.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            attrs,
        )
    };
    // SAFETY: on success the kernel returned a new fd that nothing else owns.
    Errno::result(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// open_tree(2) with OPEN_TREE_CLONE: a detached bind mount of what `fd` is (a file
/// or a directory), with every mount below it when `recursive`.
fn clone_tree(fd: &OwnedFd, recursive: bool, shown: &Path) -> Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: an empty NUL-terminated path with AT_EMPTY_PATH on an fd we own.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) };
    let r =
        Errno::result(r).map_err(|e| Error::sys(format!("open_tree {}", shown.display()), e))?;
    // SAFETY: on success the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// move_mount(2): attaches the detached mount `mnt` on `target`, both by fd.
pub fn attach(mnt: &OwnedFd, target: &OwnedFd, shown: &Path) -> Result<()> {
    // SAFETY: both fds are ours; the empty paths are NUL-terminated and, with the
    // EMPTY_PATH flags, name the fds themselves.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(r)
        .map(drop)
        .map_err(|e| Error::sys(format!("move_mount onto {}", shown.display()), e))
}

/// Whether a config mount is id-mapped, and over its whole tree: `ridmap` (true) or
/// `idmap` (false) among its options, or, as runc 1.2 takes it, mappings of its own with
/// neither (false). containerd 2 sends the latter for a `hostUsers: false` pod.
pub fn idmapped(m: &oci_spec::runtime::Mount) -> Option<bool> {
    let opts = m.options().as_deref().unwrap_or(&[]);
    let given = opts
        .iter()
        .rev()
        .find(|o| *o == "idmap" || *o == "ridmap")
        .map(|o| o == "ridmap");
    let has_maps = m.uid_mappings().is_some() || m.gid_mappings().is_some();
    given.or(has_maps.then_some(false))
}

/// A detached bind mount of `source` (and every mount below it, `recursive`), id-mapped
/// through the user namespace `userns` (mount_setattr MOUNT_ATTR_IDMAP): files of host
/// uid N show as the uid N maps to in that namespace. Made by the runtime, which holds
/// CAP_SYS_ADMIN over the source's file system; the container's init attaches it.
pub fn idmapped_clone(source: &Path, userns: &OwnedFd, recursive: bool) -> Result<OwnedFd> {
    const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
    let shown = source;
    let path = std::ffi::CString::new(source.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("{}: a NUL byte in the path", source.display())))?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: open_tree reads a NUL-terminated path that outlives the call.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    let r =
        Errno::result(r).map_err(|e| Error::sys(format!("open_tree {}", shown.display()), e))?;
    // SAFETY: on success the kernel returned a new fd that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
    mount_setattr(&tree, recursive, MOUNT_ATTR_IDMAP, 0, Some(userns))
        .map_err(|e| Error::sys(format!("id-map the mount of {}", shown.display()), e))?;
    Ok(tree)
}

/// Bind-mounts what `source` is onto what `target` is, both open fds (any kind, O_PATH
/// included), resolving no path.
pub fn bind_fd(source: &OwnedFd, target: &OwnedFd, shown: &Path) -> Result<()> {
    attach(&clone_tree(source, false, shown)?, target, shown)
}

/// A new empty read-only tmpfs, detached, for masking directories.
fn empty_read_only_tmpfs(shown: &Path) -> Result<OwnedFd> {
    let fail = |what: &str, e: Errno| Error::sys(format!("{what} to mask {}", shown.display()), e);
    let ctx = fsopen(c"tmpfs").map_err(|e| fail("fsopen tmpfs", e))?;
    fsconfig(&ctx, libc::FSCONFIG_CMD_CREATE, None, None).map_err(|e| fail("create tmpfs", e))?;
    fsmount(&ctx, libc::MOUNT_ATTR_RDONLY).map_err(|e| fail("fsmount tmpfs", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> Options {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        Options::parse(&v, "mounts[0]").expect("parse")
    }

    #[test]
    fn flags_and_data_are_split() {
        let o = opts(&["nosuid", "noexec", "mode=755", "size=65536k", "ro"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.data, vec!["mode=755", "size=65536k"]);
        assert!(!o.bind);
    }

    #[test]
    fn later_options_override_earlier_ones() {
        let o = opts(&["ro", "rw", "nosuid", "suid"]);
        assert_eq!(o.flags, MsFlags::empty());
        assert!(o.cleared.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn bind_propagation_and_recursive_attrs() {
        let o = opts(&["rbind", "rprivate", "rro"]);
        assert!(o.bind);
        assert!(o.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(o.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        assert_eq!(o.attr_set, MOUNT_ATTR_RDONLY);
    }

    #[test]
    fn unsupported_options_name_the_field() {
        let v = vec!["tmpcopyup".to_string()];
        let e = Options::parse(&v, "mounts[3]").expect_err("idmap");
        assert!(e.to_string().contains("mounts[3].options[0]"), "{e}");
    }

    #[test]
    fn relative_paths() {
        assert_eq!(relative(Path::new("/a/./b")), PathBuf::from("a/b"));
        assert_eq!(relative(Path::new("/")), PathBuf::from("."));
    }
}
