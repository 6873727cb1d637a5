//! The runtime runs from an image no container can write whenever a process of its own
//! will enter a container (create, run, exec). Until that process execs the container's
//! program, its /proc/PID/exe is the runtime's binary; a container process holding
//! CAP_SYS_PTRACE could open it and, once the runtime is done, write into the host's
//! binary (CVE-2019-5736).
//!
//! Two ways, cheapest first (runc 1.2 does the same):
//! - a read-only view: a detached overlayfs mount whose only layers are the binary's
//!   directory and a spare directory, mounted read-only. Re-executing through it costs
//!   a mount and an exec; the pages are the binary's own page cache. Needs
//!   CAP_SYS_ADMIN, so root only.
//! - a sealed memfd copy: the whole binary copied into a memfd sealed against writes.
//!   Works for anyone, but copies the binary (about 4 ms for 3.8 MB here) and the
//!   copy's pages are faulted in afresh.
//!
//! Either way /proc/PID/exe then leads to a file no one can write: the view's mount is
//! read-only (EROFS), the memfd is sealed (EPERM).
//!
//! Closing the view's mount fd detaches the mount, and the kernel then waits for an
//! RCU grace period (0.3 to 1.4 ms here). Closed before the exec, that wait would delay
//! every container; so the fd survives the exec (its number in [`VIEW_FD_ENV`]) and
//! the re-executed runtime closes it when it would wait anyway ([`release_view`]),
//! once the container's init has dropped its own copy.

use std::ffi::CString;
use std::fs::File;
use std::io::Seek;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::statfs::{fstatfs, OVERLAYFS_SUPER_MAGIC};
use nix::sys::statvfs::{fstatvfs, FsFlags};

use crate::error::{Error, Result};
use crate::mount::{fsconfig, fsmount, fsopen};

/// The environment variable that tells the re-executed runtime the number of the
/// view's mount fd, kept open across the exec.
pub const VIEW_FD_ENV: &str = "_PLINTH_VIEW_FD";

/// The view's mount, after the re-exec, until [`release_view`].
static VIEW: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Closes the read-only view's mount fd the runtime was re-executed with, if any. The
/// process that closes the last copy waits for the mount's detaching: the container's
/// init drops its copy first thing, and the runtime closes its own while the init sets
/// itself up.
pub fn release_view() {
    if let Ok(mut v) = VIEW.lock() {
        v.take();
    }
}

/// Takes over the view's mount fd named by [`VIEW_FD_ENV`], if it is the one this
/// process's image was executed from: the root directory of the very mount `exe` (the
/// running binary) lies on, which is a read-only overlayfs. Anything else is left alone
/// (a caller's fd, perhaps one of its `--preserve-fds`, is not ours to close).
fn adopt_view(exe: &File) {
    let Some(n) = std::env::var_os(VIEW_FD_ENV) else {
        return;
    };
    // Not for the processes this one starts (hooks, the container).
    std::env::remove_var(VIEW_FD_ENV);
    let Some(fd) = n.to_str().and_then(|s| s.parse::<i32>().ok()) else {
        return;
    };
    let on_view = fstatfs(exe).is_ok_and(|s| s.filesystem_type() == OVERLAYFS_SUPER_MAGIC);
    // Which mount an fd is on, whether it is that mount's root, and that the number is
    // open at all, without touching the fd itself.
    let view = mount_of(fd);
    let same_mount = matches!(
        (view, mount_of(exe.as_raw_fd())),
        (Some(v), Some(e)) if v.id == e.id && v.root_dir
    );
    if fd < 3 || !on_view || !same_mount {
        return;
    }
    // SAFETY: `fd` is open (it was just looked at) and is the root of the mount this
    // process's own image was executed from: the detached view, whose number the
    // re-exec put in the environment. A caller that sets the variable itself names its
    // own fd on that mount, at its own cost. Nothing else in this single-threaded
    // process owns it.
    let owned: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    if fcntl(&owned, FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC)).is_err() {
        return;
    }
    if let Ok(mut v) = VIEW.lock() {
        *v = Some(owned);
    }
}

/// The mount an fd lies on, and whether it is that mount's root directory.
#[derive(Debug, Clone, Copy)]
struct MountOf {
    id: u64,
    root_dir: bool,
}

/// Where `fd` lies ([`MountOf`]); None when it is not open (statx says EBADF) or the
/// kernel cannot tell (statx without STATX_MNT_ID, before Linux 5.8).
fn mount_of(fd: i32) -> Option<MountOf> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: statx with AT_EMPTY_PATH only looks at `fd` (failing with EBADF if it is
    // not open) and writes into the buffer, which is a statx of the right size.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID | libc::STATX_TYPE,
            stx.as_mut_ptr(),
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: statx succeeded and filled the buffer, which was zeroed before.
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return None;
    }
    let attr = libc::STATX_ATTR_MOUNT_ROOT as u64;
    let is_dir = u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR;
    Some(MountOf {
        id: stx.stx_mnt_id,
        root_dir: is_dir && stx.stx_attributes_mask & attr != 0 && stx.stx_attributes & attr != 0,
    })
}

/// The seals that make the copy immutable.
fn seals() -> SealFlag {
    SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE
}

/// Whether `fd` is a memfd carrying at least our seals.
fn is_sealed(fd: &impl AsFd) -> bool {
    fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS)
        .map(|s| SealFlag::from_bits_truncate(s).contains(seals()))
        .unwrap_or(false)
}

/// Whether `fd` lies on a read-only mount: opening it for writing through
/// /proc/PID/exe (or by reopening an O_PATH fd) then fails with EROFS, whatever the
/// file's mode, because the kernel checks the mount the path leads through.
fn on_read_only_mount(fd: &impl AsFd) -> bool {
    fstatvfs(fd.as_fd())
        .map(|s| s.flags().contains(FsFlags::ST_RDONLY))
        .unwrap_or(false)
}

/// Re-executes the runtime, with the same arguments and environment, from an image no
/// container can write, unless it already runs from one. Returns only when it already
/// does; otherwise execution goes on in the new image (or fails with an error).
/// `spare_dir` is the directory the read-only view may use as its second, hidden
/// layer (the state root), made by `make_spare` only when the view is tried (not in
/// the re-executed process, which returns at once); it must not contain or lie within
/// the binary's directory, or the view is not made and the memfd copy is used.
pub fn ensure_sealed(spare_dir: &Path, make_spare: impl FnOnce() -> Result<()>) -> Result<()> {
    let exe = File::open("/proc/self/exe").map_err(|e| Error::io("open", "/proc/self/exe", e))?;
    if is_sealed(&exe) || on_read_only_mount(&exe) {
        adopt_view(&exe);
        return Ok(());
    }
    // Any failure of the view (no privilege, no overlayfs, overlapping directories, a
    // deleted binary) leaves the copy, which always works.
    match make_spare().and_then(|()| read_only_view(&exe, spare_dir)) {
        Ok((view, mount)) => reexec(&view, Some(mount)),
        Err(_) => reexec(&sealed_copy(exe)?, None),
    }
}

/// Escapes a path for overlayfs's `lowerdir`, where `:` separates layers and `\`
/// escapes (`,` only matters to the legacy mount(2) option string, escaped anyway).
fn escape_lowerdir(p: &Path) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.as_os_str().len());
    for &b in p.as_os_str().as_bytes() {
        if matches!(b, b':' | b',' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// The runtime's binary, opened through a detached, read-only overlayfs of its own
/// directory, and the view's mount. overlayfs without an upper layer needs two lower
/// ones; `spare_dir` is the second, below the binary's directory so nothing in it can
/// hide the binary.
fn read_only_view(exe: &File, spare_dir: &Path) -> Result<(File, OwnedFd)> {
    let fail =
        |what: &str, e: Errno| Error::sys(format!("{what} for the runtime's read-only view"), e);
    let path = std::fs::read_link("/proc/self/exe")
        .map_err(|e| Error::io("read link", "/proc/self/exe", e))?;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::Invalid(format!(
            "runtime binary path {}",
            path.display()
        )));
    };
    let ctx = fsopen(c"overlay").map_err(|e| fail("fsopen overlay", e))?;
    let mut lower = escape_lowerdir(dir);
    lower.push(b':');
    lower.extend(escape_lowerdir(spare_dir));
    let lower =
        CString::new(lower).map_err(|_| Error::Invalid("a path contains a NUL byte".into()))?;
    fsconfig(
        &ctx,
        libc::FSCONFIG_SET_STRING,
        Some(c"lowerdir"),
        Some(&lower),
    )
    .map_err(|e| fail("set lowerdir", e))?;
    // Only to keep overlayfs from logging about inode numbers across file systems.
    let _ = fsconfig(&ctx, libc::FSCONFIG_SET_STRING, Some(c"xino"), Some(c"off"));
    fsconfig(&ctx, libc::FSCONFIG_CMD_CREATE, None, None)
        .map_err(|e| fail("create overlayfs", e))?;
    let mnt = fsmount(
        &ctx,
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOSUID,
    )
    .map_err(|e| fail("fsmount", e))?;
    let fd = nix::fcntl::openat(
        mnt.as_fd(),
        name,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail("open the binary", e))?;
    let view = File::from(fd);
    // The view must be what runs now and must be read-only: a different file (the
    // binary replaced since exec) or a writable mount would defeat the purpose.
    let same_size = match (view.metadata(), exe.metadata()) {
        (Ok(a), Ok(b)) => a.len() == b.len(),
        _ => false,
    };
    if !same_size || !on_read_only_mount(&view) {
        return Err(Error::Invalid(
            "the runtime's read-only view is not its binary".into(),
        ));
    }
    Ok((view, mnt))
}

/// A copy of the binary in a memfd sealed against every change.
fn sealed_copy(mut src: File) -> Result<File> {
    let name = c"plinth-sealed";
    let memfd: OwnedFd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(|e| Error::sys("memfd_create for the sealed runtime copy", e))?;
    let mut dst = File::from(memfd);
    // A plain read/write copy. std::io::copy would use copy_file_range (EXDEV from
    // another file system to the memfd) and then sendfile, whose spliced pages can
    // still be pinned when the seal comes: F_SEAL_WRITE then fails with EBUSY
    // (seen on this kernel about once in a few hundred creates).
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = std::io::Read::read(&mut src, &mut buf)
            .map_err(|e| Error::io("read", "/proc/self/exe", e))?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut dst, &buf[..n])
            .map_err(|e| Error::io("copy the runtime binary to", "memfd", e))?;
    }
    dst.rewind().map_err(|e| Error::io("rewind", "memfd", e))?;
    fcntl(&dst, FcntlArg::F_ADD_SEALS(seals()))
        .map_err(|e| Error::sys("seal the runtime's memfd copy", e))?;
    Ok(dst)
}

/// Executes `image` with the runtime's own arguments and environment; `mount`, the
/// view's, stays open across the exec (see [`release_view`]).
fn reexec(image: &File, mount: Option<OwnedFd>) -> Result<()> {
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid("an argument contains a NUL byte".into()))?;
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != VIEW_FD_ENV)
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv)
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid("an environment variable contains a NUL byte".into()))?;
    // Kept only where the new image can recognise it again (statx tells a mount's id
    // and root since Linux 5.8); else closed here, before the exec, as it always was.
    let mount = mount.filter(|m| mount_of(m.as_raw_fd()).is_some_and(|v| v.root_dir));
    if let Some(m) = &mount {
        fcntl(m, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
            .map_err(|e| Error::sys("keep the runtime's read-only view open", e))?;
        // Digits only: no NUL byte to refuse.
        let var = format!("{VIEW_FD_ENV}={}", m.as_raw_fd());
        env.extend(CString::new(var).ok());
    }
    // The image is close-on-exec: execveat(AT_EMPTY_PATH) runs it all the same for an
    // ELF binary (only a script would need the fd to survive).
    let e = nix::unistd::fexecve(image, &args, &env);
    match e {
        Err(e) => Err(Error::sys("re-execute the runtime from its sealed copy", e)),
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_not_sealed_and_a_sealed_memfd_is() {
        let f = std::fs::File::open("/proc/self/exe").expect("exe");
        assert!(!is_sealed(&f));
        let m =
            memfd_create(c"t", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).expect("memfd");
        assert!(!is_sealed(&m));
        fcntl(&m, FcntlArg::F_ADD_SEALS(seals())).expect("seal");
        assert!(is_sealed(&m));
        // Sealed against writes: the kernel refuses them.
        let mut file = std::fs::File::from(m);
        assert!(std::io::Write::write(&mut file, b"x").is_err());
    }
}
