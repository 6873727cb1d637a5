//! The container's root file system, made before the pivot: the rootfs bound onto
//! itself with the propagation asked for, the config's mounts in order (each checked:
//! nothing but procfs inside /proc, no symlinked proc or sysfs destination, cgroup
//! mounts per hierarchy), the default and configured device nodes, the working
//! directory; then the way in (pivot_root, or chroot without a mount namespace).
//! Every target is resolved inside the rootfs ([`mount::open_in_root`]).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::{Linux, Mount};

use crate::config::Bundle;
use crate::devices;
use crate::error::{Error, Result};
use crate::mount::{self, Create, Options};

/// How one `cgroup` mount of the config is made, per hierarchy (computed by the
/// runtime, which knows the cgroup layout; the container's `cgroup` module does).
#[derive(Debug, Clone)]
pub struct CgroupMount {
    /// Sub-directory under the mount's destination ("" for a pure v2 host, where the
    /// unified hierarchy is mounted at the destination itself).
    pub name: String,
    /// "cgroup" or "cgroup2".
    pub fstype: String,
    /// v1: the subsystem options (e.g. "cpu", "name=systemd").
    pub data: String,
    /// The container's own cgroup directory in this hierarchy, on the host.
    pub host_dir: PathBuf,
}

/// The rootfs while it is being built: the bundle, what the runtime decided for it, and
/// an O_PATH fd of the rootfs (targets are resolved below it).
pub struct Rootfs<'a> {
    bundle: &'a Bundle,
    cgroup_mounts: &'a [CgroupMount],
    /// In a user namespace: no mknod (devices are bound from the host), and a sysfs or
    /// mqueue the kernel refuses is bound from the host.
    userns: bool,
    /// An unprivileged runtime: every cgroup mount is read-only (CVE-2023-25809).
    rootless: bool,
    /// No mount namespace of its own: mounts are made on the host, below a private
    /// bind of the rootfs that `delete` detaches, and the way in is chroot.
    host_mounts: bool,
    propagation: Option<MsFlags>,
    root: OwnedFd,
    /// The bind mounts' sources, made ready by index in `mounts`.
    sources: Sources,
}

/// What the init has of the bind mounts' sources before it builds the rootfs, each by
/// index in `mounts`.
pub struct Sources {
    /// Opened (O_PATH) before the init became root of its user namespace (see
    /// [`open_bind_sources`]).
    pub opened: Vec<Option<OwnedFd>>,
    /// Id-mapped mounts the runtime made, detached, to attach as they are.
    pub idmapped: Vec<Option<OwnedFd>>,
}

/// Opens every bind mount's source (O_PATH), by index in `mounts`, with the
/// credentials the process has now. Called before the init becomes root of a user
/// namespace: until then it still has the runtime's uid, so a source only root may
/// read is still reachable, as runc reaches it. A source that cannot be opened is
/// None; the mount itself then reports why, by field.
pub fn open_bind_sources(bundle: &Bundle) -> Vec<Option<OwnedFd>> {
    bundle
        .spec
        .mounts()
        .iter()
        .flatten()
        .map(|m| {
            let bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind");
            let src = m.source().as_ref().filter(|_| bind)?;
            let src = if src.is_absolute() {
                src.clone()
            } else {
                bundle.dir.join(src)
            };
            nix::fcntl::open(
                &src,
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok()
        })
        .collect()
}

/// What the config's mounts already provide, which decides the default devices.
pub struct Mounted {
    /// /dev is a bind mount: its nodes are the host directory's, none are made.
    dev_bound: bool,
    /// /dev/pts is mounted: /dev/ptmx links to its ptmx.
    devpts: bool,
}

impl<'a> Rootfs<'a> {
    /// Makes the host's mounts invisible to the host's propagation and binds the rootfs
    /// onto itself, so that it is a mount point pivot_root accepts.
    pub fn prepare(
        bundle: &'a Bundle,
        cgroup_mounts: &'a [CgroupMount],
        rootless: bool,
        sources: Sources,
    ) -> Result<Rootfs<'a>> {
        let plan = &bundle.namespaces;
        let linux = bundle.spec.linux().as_ref();
        let propagation = linux
            .and_then(|l| l.rootfs_propagation().as_deref())
            .and_then(mount::propagation_flag);
        let host_mounts = !plan.has(CloneFlags::CLONE_NEWNS);
        prepare_rootfs(&bundle.rootfs, propagation, host_mounts)?;
        let root = nix::fcntl::open(
            &bundle.rootfs,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::sys(format!("open rootfs {}", bundle.rootfs.display()), e))?;
        Ok(Rootfs {
            bundle,
            cgroup_mounts,
            userns: plan.has(CloneFlags::CLONE_NEWUSER),
            rootless,
            host_mounts,
            propagation,
            root,
            sources,
        })
    }

    /// Makes the config's mounts, in order. `before_cgroup` runs before the first
    /// cgroup mount: the container's cgroup may still be in the making.
    pub fn mount_all(&self, mut before_cgroup: impl FnMut() -> Result<()>) -> Result<Mounted> {
        let mut made = Mounted {
            dev_bound: false,
            devpts: false,
        };
        let mut cgroup_seen = false;
        for (i, m) in self.bundle.spec.mounts().iter().flatten().enumerate() {
            if !cgroup_seen && matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")) {
                cgroup_seen = true;
                before_cgroup()?;
            }
            self.mount_one(m, i)?;
            let dest = m.destination();
            let bind = m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind");
            if dest == Path::new("/dev") && bind {
                made.dev_bound = true;
            }
            if dest == Path::new("/dev/pts") {
                made.devpts = true;
            }
        }
        Ok(made)
    }

    /// Creates the default devices and `linux.devices` (a config entry replaces the
    /// default of the same path), and /dev's standard symlinks; nothing when /dev is a
    /// bind mount.
    pub fn create_devices(&self, linux: &Linux, made: &Mounted) -> Result<()> {
        if made.dev_bound {
            return Ok(());
        }
        let mut all = devices::defaults();
        for (i, d) in linux.devices().iter().flatten().enumerate() {
            let d = devices::from_config(d, i)?;
            all.retain(|x| x.path != d.path);
            all.push(d);
        }
        for d in &all {
            devices::create(&self.root, d, self.userns)?;
        }
        devices::create_symlinks(&self.root, Path::new("/proc/kcore").exists())?;
        if made.devpts {
            devices::link_ptmx(&self.root)?;
        }
        Ok(())
    }

    /// Makes the process's working directory before the user switch, as runc does.
    pub fn make_cwd(&self, cwd: &Path) -> Result<()> {
        mount::open_in_root(&self.root, cwd, Create::Dir)
            .map(drop)
            .map_err(|e| Error::config("process.cwd", e.to_string()))
    }

    /// Enters the rootfs: pivot_root (or, with `no_pivot`, a move over / and chroot;
    /// without a mount namespace, chroot), then the rootfs propagation asked for.
    pub fn enter(self, no_pivot: bool) -> Result<()> {
        let rootfs = &self.bundle.rootfs;
        drop(self.root);
        if self.host_mounts {
            return mount::chroot(rootfs);
        }
        if no_pivot {
            mount::move_root(rootfs)?;
        } else {
            mount::pivot_root(rootfs)?;
        }
        if let Some(p) = self.propagation {
            mount::set_propagation("/", p, "set the rootfs propagation")?;
        }
        Ok(())
    }

    fn mount_one(&self, m: &Mount, i: usize) -> Result<()> {
        let field = format!("mounts[{i}]");
        let o = Options::parse(m.options().as_deref().unwrap_or(&[]), &field)?;
        let dest = m.destination();
        let fstype = m.typ().as_deref().unwrap_or("");
        let bind = o.bind || fstype == "bind";
        if fstype == "cgroup" || fstype == "cgroup2" {
            return self.mount_cgroup(dest, &o);
        }
        self.check_proc_destination(m, &field, bind)?;
        let target;
        if bind {
            // A bind mount takes no filesystem data. A KEY=VALUE option (a tmpfs's
            // mode=755, which runtime-tools' mounts.t puts on bind mounts too) is
            // ignored, as runc ignores it; a bare word that is none of the flags is a
            // mistake (["rbind", "readonly"] would be a writable mount).
            if let Some(d) = o.data.iter().find(|d| !d.contains('=')) {
                let j = m
                    .options()
                    .iter()
                    .flatten()
                    .position(|x| x == d)
                    .unwrap_or(0);
                return Err(Error::config(
                    format!("{field}.options[{j}]"),
                    format!("{d:?} is not a mount option a bind mount takes"),
                ));
            }
            let src = m.source().as_ref().ok_or_else(|| {
                Error::config(format!("{field}.source"), "a bind mount needs a source")
            })?;
            let src = if src.is_absolute() {
                src.clone()
            } else {
                self.bundle.dir.join(src)
            };
            // The source opened beforehand, with the runtime's uid, where there is one.
            if let Some(tree) = self.sources.idmapped.get(i).and_then(Option::as_ref) {
                return self.attach_idmapped(tree, m, &o, i);
            }
            let opened = self.sources.opened.get(i).and_then(Option::as_ref);
            let src = opened.map_or(src, mount::fd_path);
            let md = std::fs::metadata(&src).map_err(|e| {
                Error::config(
                    format!("{field}.source"),
                    format!("{}: {}", src.display(), crate::error::os_text(&e)),
                )
            })?;
            let kind = if md.is_dir() {
                Create::Dir
            } else {
                Create::File
            };
            target = mount::open_in_root(&self.root, dest, kind)?;
            check_target_not_in_proc(&target, dest, &field)?;
            mount::do_mount(
                Some(&src),
                &mount::fd_path(&target),
                None,
                MsFlags::MS_BIND | (o.flags & MsFlags::MS_REC),
                None,
                dest,
            )?;
            let extra = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            if !extra.is_empty() {
                let t = mount::open_in_root(&self.root, dest, Create::Nothing)?;
                mount::remount_bind(&mount::fd_path(&t), extra, dest)?;
            }
        } else {
            if fstype == "proc" || fstype == "sysfs" {
                check_not_symlink(&self.root, dest, &field)?;
            }
            // A tmpfs without mode= over a directory the image has takes that
            // directory's mode, as runc does (tmpfs would make it 1777).
            let keep_mode = (fstype == "tmpfs" && !o.data.iter().any(|d| d.starts_with("mode=")))
                .then(|| existing_dir_mode(&self.root, dest))
                .flatten();
            target = mount::open_in_root(&self.root, dest, Create::Dir)?;
            check_target_not_in_proc(&target, dest, &field)?;
            let mut data = o.data.join(",");
            if let Some(mode) = keep_mode {
                if !data.is_empty() {
                    data.push(',');
                }
                data.push_str(&format!("mode={mode:o}"));
            }
            let src = m.source().clone().unwrap_or_else(|| PathBuf::from(fstype));
            let r = mount::do_mount(
                Some(&src),
                &mount::fd_path(&target),
                Some(fstype),
                o.flags,
                (!data.is_empty()).then_some(data.as_str()),
                dest,
            );
            match r {
                // In a user namespace that does not own the network or IPC namespace the
                // kernel refuses a new sysfs or mqueue; bind the host's, as runc does.
                Err(Error::Sys {
                    errno: nix::errno::Errno::EPERM,
                    ..
                }) if self.userns && (fstype == "sysfs" || fstype == "mqueue") => {
                    let host = if fstype == "sysfs" {
                        "/sys"
                    } else {
                        "/dev/mqueue"
                    };
                    mount::do_mount(
                        Some(Path::new(host)),
                        &mount::fd_path(&target),
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                        dest,
                    )?;
                    // The host's mounts below it (its /sys/fs/cgroup hierarchies among
                    // them) come along, under whatever the config mounts over them; the
                    // container may unmount those covers. So the config's ro, nosuid,
                    // nodev and noexec apply to the whole tree, not only its top
                    // (CVE-2023-25809 for a rootless container's cgroups).
                    let t = mount::open_in_root(&self.root, dest, Create::Nothing)?;
                    mount::set_recursive_flags(&t, o.flags, dest)?;
                }
                other => other?,
            }
        }
        if !o.propagation.is_empty() || o.attr_set != 0 || o.attr_clr != 0 {
            let t = mount::open_in_root(&self.root, dest, Create::Nothing)?;
            for p in &o.propagation {
                nix::mount::mount(
                    None::<&str>,
                    &mount::fd_path(&t),
                    None::<&str>,
                    *p,
                    None::<&str>,
                )
                .map_err(|e| Error::sys(format!("set propagation of {}", dest.display()), e))?;
            }
            if o.attr_set != 0 || o.attr_clr != 0 {
                mount::set_recursive_attrs(&t, o.attr_set, o.attr_clr, dest)?;
            }
        }
        drop(target);
        Ok(())
    }

    /// Refuses a mount at or below /proc that is not procfs (CVE-2019-16884): a fake
    /// tree over /proc would take every later write the runtime makes through /proc
    /// (masks, sysctls, LSM attributes) somewhere else.
    /// Attaches an id-mapped mount the runtime made at the mount's destination, then
    /// the flags the options ask for (over the whole tree for `ridmap`).
    fn attach_idmapped(&self, tree: &OwnedFd, m: &Mount, o: &Options, i: usize) -> Result<()> {
        let field = format!("mounts[{i}]");
        let dest = m.destination();
        let st = nix::sys::stat::fstat(tree)
            .map_err(|e| Error::sys(format!("{field}: stat the id-mapped mount"), e))?;
        let kind = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            Create::Dir
        } else {
            Create::File
        };
        let target = mount::open_in_root(&self.root, dest, kind)?;
        check_target_not_in_proc(&target, dest, &field)?;
        mount::attach(tree, &target, dest)?;
        let extra = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        let t = mount::open_in_root(&self.root, dest, Create::Nothing)?;
        if mount::idmapped(m) == Some(true) {
            mount::set_recursive_flags(&t, extra, dest)
        } else if !extra.is_empty() {
            mount::remount_bind(&mount::fd_path(&t), extra, dest)
        } else {
            Ok(())
        }
    }

    fn check_proc_destination(&self, m: &Mount, field: &str, bind: bool) -> Result<()> {
        let dest = lexical(m.destination());
        if !dest.starts_with("/proc") {
            return Ok(());
        }
        let fstype = m.typ().as_deref().unwrap_or("");
        if dest == Path::new("/proc") && fstype == "proc" && !bind {
            return Ok(());
        }
        if bind {
            if PROC_OVERLAYS.iter().any(|p| dest == Path::new(p)) {
                return Ok(());
            }
            // A bind of (part of) a real procfs is still procfs.
            if let Some(src) = m.source() {
                let src = if src.is_absolute() {
                    src.clone()
                } else {
                    self.bundle.dir.join(src)
                };
                let on_proc = nix::sys::statfs::statfs(&src)
                    .map(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
                    .unwrap_or(false);
                if on_proc {
                    return Ok(());
                }
            }
        }
        Err(Error::config(
            format!("{field}.destination"),
            format!(
                "{} is inside /proc: only procfs may be mounted there (or lxcfs's files over \
                 /proc/cpuinfo, /proc/meminfo and the like)",
                dest.display()
            ),
        ))
    }

    fn mount_cgroup(&self, dest: &Path, o: &Options) -> Result<()> {
        let cgns = self.bundle.namespaces.has(CloneFlags::CLONE_NEWCGROUP);
        let mut flags = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
        if self.rootless {
            flags |= MsFlags::MS_RDONLY;
        }
        let single = self.cgroup_mounts.len() == 1 && self.cgroup_mounts[0].name.is_empty();
        if !single {
            // v1 or hybrid: a tmpfs holding one directory per hierarchy.
            let t = mount::open_in_root(&self.root, dest, Create::Dir)?;
            mount::do_mount(
                Some(Path::new("tmpfs")),
                &mount::fd_path(&t),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=755"),
                dest,
            )?;
        }
        for cm in self.cgroup_mounts {
            let sub = dest.join(&cm.name);
            let t = mount::open_in_root(&self.root, &sub, Create::Dir)?;
            if cgns {
                mount::do_mount(
                    Some(Path::new("cgroup")),
                    &mount::fd_path(&t),
                    Some(&cm.fstype),
                    flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    (!cm.data.is_empty()).then_some(cm.data.as_str()),
                    &sub,
                )?;
            } else {
                mount::do_mount(
                    Some(&cm.host_dir),
                    &mount::fd_path(&t),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                    &sub,
                )?;
                let t = mount::open_in_root(&self.root, &sub, Create::Nothing)?;
                mount::remount_bind(
                    &mount::fd_path(&t),
                    flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    &sub,
                )?;
            }
        }
        if !single && flags.contains(MsFlags::MS_RDONLY) {
            let t = mount::open_in_root(&self.root, dest, Create::Nothing)?;
            mount::remount_bind(
                &mount::fd_path(&t),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                dest,
            )?;
        }
        Ok(())
    }
}

/// Makes the host's mounts invisible to the host's propagation, and binds the rootfs
/// onto itself so it is a mount point pivot_root accepts.
fn prepare_rootfs(rootfs: &Path, propagation: Option<MsFlags>, host_mounts: bool) -> Result<()> {
    if host_mounts {
        // The host's propagation is not ours to change: bind the rootfs and make only
        // that bind private, so nothing mounted below it spreads to other namespaces.
        mount::do_mount(
            Some(rootfs),
            rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            rootfs,
        )?;
        return mount::set_propagation(
            rootfs,
            MsFlags::MS_PRIVATE,
            &format!("make {} private", rootfs.display()),
        );
    }
    let mut flag = propagation.unwrap_or(MsFlags::MS_SLAVE);
    if flag.contains(MsFlags::MS_UNBINDABLE) {
        // An unbindable rootfs could not be bound onto itself below: keep it private
        // until after the pivot, where the requested propagation is applied.
        flag = MsFlags::MS_PRIVATE;
    }
    mount::set_propagation("/", flag, "set the propagation of /")?;
    if flag.contains(MsFlags::MS_SHARED) {
        // pivot_root refuses a new root whose parent mount is shared. The rootfs is
        // bound onto itself below, so that parent is the mount holding the rootfs: the
        // rootfs's own when it is a mount point (an engine's overlay), as runc finds it.
        // That one mount only (not MS_REC): the rest stays shared as asked.
        let mi =
            crate::mountinfo::read().map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
        if let Some(holder) = crate::mountinfo::containing(&mi, rootfs) {
            nix::mount::mount(
                None::<&str>,
                &holder.mount_point,
                None::<&str>,
                MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(|e| {
                Error::sys(
                    format!(
                        "make {} (holding the rootfs) private",
                        holder.mount_point.display()
                    ),
                    e,
                )
            })?;
        }
    }
    mount::do_mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
        rootfs,
    )
}

/// Files below /proc that may be bind-mounted from elsewhere: what lxcfs provides to
/// make /proc reflect the container's limits (runc allows the same list).
const PROC_OVERLAYS: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

/// `path` with `.` and `..` resolved lexically, `..` stopping at `/`, as
/// RESOLVE_IN_ROOT resolves them.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Refuses a mount target that lies on procfs when its path does not say /proc: a
/// symlink in the image led it there, past [`check_proc_destination`].
fn check_target_not_in_proc(target: &OwnedFd, dest: &Path, field: &str) -> Result<()> {
    let on_proc = nix::sys::statfs::fstatfs(target)
        .map(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
        .unwrap_or(false);
    if on_proc && !lexical(dest).starts_with("/proc") {
        return Err(Error::config(
            format!("{field}.destination"),
            format!(
                "{} leads into /proc through a symlink in the image",
                dest.display()
            ),
        ));
    }
    Ok(())
}

/// proc and sysfs must land where they claim: a symlink at their destination is
/// refused (CVE-2019-16884, CVE-2019-19921).
fn check_not_symlink(root: &OwnedFd, dest: &Path, field: &str) -> Result<()> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(root, &mount::relative(dest), how) {
        Ok(_) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::ELOOP) => Err(Error::config(
            format!("{field}.destination"),
            format!("{} is a symlink in the rootfs", dest.display()),
        )),
        Err(e) => Err(Error::sys(format!("open {}", dest.display()), e)),
    }
}

/// The permission bits of `dest` when it is a directory the rootfs already has.
fn existing_dir_mode(root: &OwnedFd, dest: &Path) -> Option<u32> {
    let fd = mount::open_in_root(root, dest, Create::Nothing).ok()?;
    let st = nix::sys::stat::fstat(&fd).ok()?;
    (st.st_mode & libc::S_IFMT == libc::S_IFDIR).then_some(st.st_mode & 0o7777)
}
