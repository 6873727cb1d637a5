//! Leaving the initramfs. The kernel unpacks the image into its `rootfs`, a root that
//! can never be unmounted, so pivot_root(2) refuses to move away from it (EINVAL): no
//! container runtime could pivot into a container's root. Like switch_root, PID 1
//! moves the image onto a tmpfs of its own, file by file (each copied, then removed from
//! the old root so that memory is not held twice), mounts that tmpfs over `/` and
//! chroots into it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
use nix::unistd::{chown, chroot, Gid, Uid};

use crate::error::{io, sys, Result};

/// ramfs's magic (linux/magic.h), which nix does not name.
const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);

/// Where the new root is built before it goes over `/`.
const NEW_ROOT: &str = "/.root";

/// Directories that stay behind: kernel file systems mounted later, and the new root.
const SKIP: &[&str] = &["/proc", "/sys", "/dev", "/run", NEW_ROOT];

/// Whether `/` is the kernel's rootfs (ramfs or tmpfs) and this is PID 1 on it.
pub fn on_initramfs() -> bool {
    std::process::id() == 1
        && statfs("/")
            .is_ok_and(|s| s.filesystem_type() == RAMFS_MAGIC || s.filesystem_type() == TMPFS_MAGIC)
        && !Path::new("/proc/self").exists()
}

/// Moves the root onto a tmpfs and chroots there; returns how many entries moved.
pub fn reroot() -> Result<u64> {
    let new = Path::new(NEW_ROOT);
    std::fs::create_dir_all(new).map_err(io("creating", new))?;
    mount(
        Some("rootfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys(format!("mounting tmpfs on {NEW_ROOT}")))?;
    let moved = move_tree(Path::new("/"), new)?;
    for d in SKIP.iter().filter(|d| **d != NEW_ROOT) {
        let p = new.join(d.trim_start_matches('/'));
        std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
    }
    std::env::set_current_dir(new).map_err(io("entering", new))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("moving the new root over /"))?;
    chroot(".").map_err(sys("chroot into the new root"))?;
    std::env::set_current_dir("/").map_err(io("entering", Path::new("/")))?;
    Ok(moved)
}

/// Copies everything under `from` to `to` with modes and owners, removing each
/// original once copied.
fn move_tree(from: &Path, to: &Path) -> Result<u64> {
    let mut moved = 0;
    let entries = std::fs::read_dir(from).map_err(io("reading", from))?;
    for e in entries {
        let e = e.map_err(io("reading", from))?;
        let src = e.path();
        if from == Path::new("/") && SKIP.iter().any(|s| Path::new(s) == src) {
            continue;
        }
        let dst = to.join(e.file_name());
        let meta = std::fs::symlink_metadata(&src).map_err(io("reading", &src))?;
        let owner = (
            Some(Uid::from_raw(meta.uid())),
            Some(Gid::from_raw(meta.gid())),
        );
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&dst).map_err(io("creating", &dst))?;
            moved += move_tree(&src, &dst)?;
            chown(&dst, owner.0, owner.1).map_err(sys(format!("chown {}", dst.display())))?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io("chmod", &dst))?;
            let _ = std::fs::remove_dir(&src);
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&src).map_err(io("reading link", &src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(io("linking", &dst))?;
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                &dst,
                owner.0,
                owner.1,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(sys(format!("chown {}", dst.display())))?;
            let _ = std::fs::remove_file(&src);
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).map_err(io("copying to", &dst))?;
            // Owner first: chown clears set-id bits, which the mode then restores.
            chown(&dst, owner.0, owner.1).map_err(sys(format!("chown {}", dst.display())))?;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io("chmod", &dst))?;
            let _ = std::fs::remove_file(&src);
        }
        // Device nodes are /dev's, which devtmpfs gives again.
        moved += 1;
    }
    Ok(moved)
}
