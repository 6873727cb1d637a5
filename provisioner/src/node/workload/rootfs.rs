//! A container's root file system. The image is unpacked once, owned by the image's
//! own ids, and shared by every container of it; each container sees it through an
//! idmapped mount that shifts those ids into the container's subordinate range (the
//! image's root becomes the container's root, an unprivileged id on the host), with a
//! tmpfs-backed overlay on top for the container's writes, thrown away when it exits.
//! nix has no open_tree, mount_setattr or move_mount, hence the syscall wrappers here.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{io, sys, Error, Result};

/// A container's root, mounted.
#[derive(Debug)]
pub struct Rootfs {
    /// The directory the runtime takes as `root.path`.
    pub path: PathBuf,
    /// Everything of it: `lower` (the idmapped image), `upper`, `work`, `merged`.
    base: PathBuf,
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Config {
        what: p.display().to_string(),
        reason: "a path with a NUL byte".into(),
    })
}

fn last_os_error(what: String) -> Error {
    Error::Sys {
        what,
        source: nix::Error::last(),
    }
}

/// A user namespace mapping ids 0..count to `uid`.. and `gid`.., held by a descriptor
/// (what mount_setattr takes). Its only process is killed once the descriptor is open;
/// the reaper collects it.
fn userns(uid: u32, gid: u32, count: u32) -> Result<OwnedFd> {
    // SAFETY: clone(2) without CLONE_VM and with no new stack is a fork into a new user
    // namespace; the child runs nothing but pause(2), which is async-signal-safe, until
    // it is killed below.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        loop {
            // SAFETY: pause(2) takes no arguments.
            unsafe { libc::pause() };
        }
    }
    if pid < 0 {
        return Err(last_os_error("clone(CLONE_NEWUSER)".into()));
    }
    let pid = pid as i32;
    let result = (|| {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        for (file, start) in [("uid_map", uid), ("gid_map", gid)] {
            let p = proc.join(file);
            std::fs::write(&p, format!("0 {start} {count}\n")).map_err(io("writing", &p))?;
        }
        let ns = proc.join("ns/user");
        std::fs::File::open(&ns)
            .map(OwnedFd::from)
            .map_err(io("opening", &ns))
    })();
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    result
}

/// Mounts `src` at `dst` through `userns`'s id mapping (and read-only).
fn idmapped_bind(src: &Path, dst: &Path, userns: &OwnedFd) -> Result<()> {
    let what = format!("idmapped mount of {} on {}", src.display(), dst.display());
    let s = cstr(src)?;
    // SAFETY: open_tree(2) reads the NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            s.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(last_os_error(format!("{what}: open_tree")));
    }
    // SAFETY: open_tree just returned this descriptor, owned by nobody else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    // SAFETY: mount_setattr(2) reads `size` bytes of the struct above, which we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(last_os_error(format!("{what}: mount_setattr")));
    }
    let d = cstr(dst)?;
    // SAFETY: move_mount(2) reads the NUL-terminated strings; `tree` is a detached mount.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(last_os_error(format!("{what}: move_mount")));
    }
    Ok(())
}

impl Rootfs {
    /// Mounts the root of a container whose ids start at `uid`/`gid` (`count` of them)
    /// under `base`, from the unpacked image at `image`: read-only, the idmapped image
    /// itself; else an overlay with a fresh upper layer owned by the container's root.
    pub fn mount(
        image: &Path,
        base: &Path,
        (uid, gid, count): (u32, u32, u32),
        read_only: bool,
    ) -> Result<Rootfs> {
        // What an earlier run of this container left (a crash of plinth-init cannot
        // happen without a reboot, but a failed start can).
        let old = Rootfs {
            path: base.join("merged"),
            base: base.to_path_buf(),
        };
        old.remove()?;
        let lower = base.join("lower");
        std::fs::create_dir_all(&lower).map_err(io("creating", &lower))?;
        let r = Rootfs {
            path: lower.clone(),
            base: base.to_path_buf(),
        };
        let ns = userns(uid, gid, count)?;
        if let Err(e) = idmapped_bind(image, &lower, &ns) {
            let _ = r.remove();
            return Err(e);
        }
        if read_only {
            return Ok(r);
        }
        let made = (|| {
            let (upper, work, merged) =
                (base.join("upper"), base.join("work"), base.join("merged"));
            for d in [&upper, &work, &merged] {
                std::fs::create_dir_all(d).map_err(io("creating", d))?;
            }
            nix::unistd::chown(
                &upper,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(sys(format!("chown {}", upper.display())))?;
            std::fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(io("chmod", &upper))?;
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            nix::mount::mount(
                Some("overlay"),
                &merged,
                Some("overlay"),
                MsFlags::MS_NODEV,
                Some(opts.as_str()),
            )
            .map_err(sys(format!("mounting overlay on {}", merged.display())))?;
            Ok(merged)
        })();
        match made {
            Ok(merged) => Ok(Rootfs {
                path: merged,
                base: base.to_path_buf(),
            }),
            Err(e) => {
                let _ = r.remove();
                Err(e)
            }
        }
    }

    /// Unmounts it and removes its directory (the container's writes with it).
    pub fn remove(&self) -> Result<()> {
        for m in ["merged", "lower"] {
            let p = self.base.join(m);
            // Not mounted is fine; lazily, in case a process still holds it.
            match umount2(&p, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
                Err(e) => {
                    return Err(Error::Sys {
                        what: format!("unmounting {}", p.display()),
                        source: e,
                    })
                }
            }
        }
        match std::fs::remove_dir_all(&self.base) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &self.base)(e)),
        }
    }
}
