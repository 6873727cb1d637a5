//! The container's init: what runs in the cloned child, from the new namespaces to
//! the execve of the user's process. Every failure is sent to the runtime over the
//! sync channel and ends the child; nothing here returns to the caller.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::Mount;

use crate::capabilities::{self, Sets};
use crate::config::Bundle;
use crate::devices;
use crate::error::{Error, Result};
use crate::mount::{self, Create, Options};
use crate::namespaces::{self, Forked};
use crate::process::{self, Exec};
use crate::seccomp;
use crate::sync::{Channel, Msg};
use crate::terminal;

/// How one `cgroup` mount of the config is made, per hierarchy (computed by the
/// runtime, which knows the cgroup layout).
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

/// Everything the init needs, prepared by the runtime before the clone.
pub struct Init<'a> {
    /// The bundle.
    pub bundle: &'a Bundle,
    /// The init's end of the sync channel.
    pub channel: Channel,
    /// The exec fifo, opened for reading (non-blocking).
    pub fifo: OwnedFd,
    /// The caller's console socket, when process.terminal is set.
    pub console_socket: Option<OwnedFd>,
    /// How many fds after stdio are passed through.
    pub preserve_fds: i32,
    /// `--no-pivot`.
    pub no_pivot: bool,
    /// `--no-new-keyring`.
    pub no_new_keyring: bool,
    /// Capability sets.
    pub caps: Sets,
    /// The compiled seccomp filter.
    pub seccomp: Option<seccomp::Program>,
    /// The cgroup hierarchies a `cgroup` mount shows.
    pub cgroup_mounts: Vec<CgroupMount>,
    /// Whether createRuntime/createContainer/prestart hooks must run before the pivot.
    pub has_create_hooks: bool,
    /// Whether the namespaces are made by the clone itself (no namespace is joined):
    /// then this process is already the container's pid 1.
    pub cloned_with_namespaces: bool,
    /// Whether the runtime runs unprivileged: then every cgroup mount is read-only,
    /// whatever the config says (CVE-2023-25809).
    pub rootless: bool,
    /// Whether the runtime moves this process into the container's cgroup only after
    /// `Go`, while the mounts are made: then the process's own settings wait for
    /// `CgroupJoined`.
    pub cgroup_joined_later: bool,
    /// Whether an unprivileged runtime writes this process's /proc files before `Go`
    /// (the id maps of the user namespace the clone made, oom_score_adj): it can open
    /// them only while the process is dumpable.
    pub dumpable_until_go: bool,
}

/// Runs the init; never returns. On failure the error goes to the runtime.
pub fn run(init: Init) -> ! {
    let ch = Channel(match init.channel.0.try_clone() {
        Ok(fd) => fd,
        Err(_) => std::process::exit(1),
    });
    if let Err(e) = setup(init) {
        let _ = ch.send(&Msg::Error(e.to_string()));
    }
    // SAFETY: _exit skips the atexit handlers and buffers inherited from the runtime,
    // which must not run twice.
    unsafe { libc::_exit(1) }
}

fn setup(init: Init) -> Result<()> {
    // Not dumpable from the first instruction to the execve: nothing in a container may
    // ptrace this process or open its /proc files (root, cwd, fds) while it holds the
    // host's root and the runtime's fds (CVE-2016-9962). The one exception waits for
    // `Go`; until then this process has joined nothing, so no container can see it.
    if !init.dumpable_until_go {
        not_dumpable()?;
    }
    // `run` blocks the signals it forwards; a blocked mask survives execve, and the
    // container's process must start with none blocked.
    nix::sys::signal::SigSet::empty()
        .thread_set_mask()
        .map_err(|e| Error::sys("sigprocmask(SIG_SETMASK, {})", e))?;
    let b = init.bundle;
    let spec = &b.spec;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::config("linux", "missing"))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::config("process", "missing"))?;
    let plan = &b.namespaces;

    init.channel.expect(&Msg::Go)?;
    if init.dumpable_until_go {
        not_dumpable()?;
    }
    if !init.cloned_with_namespaces {
        join_and_unshare(&init)?;
    }
    let userns = plan.has(CloneFlags::CLONE_NEWUSER);
    if userns {
        // Become the namespace's root: the host id we run as may be unmapped.
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(|e| Error::sys("setresgid 0 in the user namespace", e))?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(|e| Error::sys("setresuid 0 in the user namespace", e))?;
    }
    if plan.creates(CloneFlags::CLONE_NEWCGROUP) {
        // Now that the runtime has put us in the container's cgroup, that cgroup
        // becomes the root of the new cgroup namespace.
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| Error::sys("unshare the cgroup namespace", e))?;
    }
    if let Some(h) = spec.hostname().as_ref().filter(|h| !h.is_empty()) {
        nix::unistd::sethostname(h).map_err(|e| Error::sys(format!("sethostname {h:?}"), e))?;
    }
    if let Some(d) = spec.domainname().as_ref().filter(|d| !d.is_empty()) {
        // SAFETY: setdomainname reads len bytes of a buffer we own.
        if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
            return Err(Error::sys(
                format!("setdomainname {d:?}"),
                nix::errno::Errno::last(),
            ));
        }
    }
    if !init.no_new_keyring {
        join_session_keyring();
    }
    // Device nodes and masks are made with exact modes.
    nix::sys::stat::umask(Mode::empty());

    // Without a mount namespace of its own (none new, none joined) the container
    // shares the host's mount table, as runc allows: its mounts are made on the host,
    // under a private bind of the rootfs that `delete` detaches, and it is entered
    // with chroot, since pivot_root would move the host's root.
    let host_mounts = !plan.has(CloneFlags::CLONE_NEWNS);
    let propagation = linux
        .rootfs_propagation()
        .as_deref()
        .and_then(mount::propagation_flag);
    prepare_rootfs(&b.rootfs, propagation, host_mounts)?;
    let root = nix::fcntl::open(
        &b.rootfs,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open rootfs {}", b.rootfs.display()), e))?;
    let mut dev_bound = false;
    let mut has_devpts = false;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        mount_one(&init, &root, m, i, userns)?;
        let dest = m.destination();
        if dest == Path::new("/dev") && m.typ().as_deref() == Some("bind")
            || dest == Path::new("/dev")
                && m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind")
        {
            dev_bound = true;
        }
        if dest == Path::new("/dev/pts") {
            has_devpts = true;
        }
    }
    if !dev_bound {
        let mut all = devices::defaults();
        for (i, d) in linux.devices().iter().flatten().enumerate() {
            let d = devices::from_config(d, i)?;
            all.retain(|x| x.path != d.path);
            all.push(d);
        }
        for d in &all {
            devices::create(&root, d, userns)?;
        }
        devices::create_symlinks(&root, Path::new("/proc/kcore").exists())?;
        if has_devpts {
            devices::link_ptmx(&root)?;
        }
    }
    // The working directory exists before the user switch, as runc makes it.
    mount::open_in_root(&root, process.cwd(), Create::Dir)
        .map_err(|e| Error::config("process.cwd", e.to_string()))?;
    drop(root);

    if init.has_create_hooks {
        init.channel.send(&Msg::Hooks)?;
        init.channel.expect(&Msg::HooksDone)?;
    }

    if host_mounts {
        mount::chroot(&b.rootfs)?;
    } else if init.no_pivot {
        mount::move_root(&b.rootfs)?;
    } else {
        mount::pivot_root(&b.rootfs)?;
    }
    if let Some(p) = propagation.filter(|_| !host_mounts) {
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            p | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| Error::sys("set the rootfs propagation", e))?;
    }
    // Sysctls first: /proc/sys is usually among the read-only paths.
    if let Some(sysctl) = linux.sysctl() {
        for (k, v) in sysctl {
            write_sysctl(k, v)?;
        }
    }
    mount::mask_paths(linux.masked_paths().as_deref().unwrap_or(&[]))?;
    mount::readonly_paths(linux.readonly_paths().as_deref().unwrap_or(&[]))?;

    if process.terminal() == Some(true) {
        let sock = init.console_socket.as_ref().ok_or_else(|| {
            Error::config("process.terminal", "a terminal needs --console-socket")
        })?;
        let size = process
            .console_size()
            .map(|s| (s.width() as u16, s.height() as u16));
        terminal::hand_over(sock, size, true)?;
    }
    drop(init.console_socket);

    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mount::remount_bind(Path::new("/"), MsFlags::MS_RDONLY, Path::new("/"))?;
    }

    if init.cgroup_joined_later {
        // Nothing of the container's own runs before its limits apply.
        init.channel.expect(&Msg::CgroupJoined)?;
    }
    let exec = enter_process(
        process,
        &init.caps,
        init.seccomp.as_ref(),
        &init.channel,
        init.preserve_fds,
    )?;

    init.channel.send(&Msg::Ready)?;
    wait_for_start(&init.fifo)?;
    drop(init.fifo);
    if let Some(hooks) = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().clone())
    {
        let state = serde_json::json!({
            "ociVersion": spec.version(), "id": "", "status": "created",
            "pid": std::process::id(), "bundle": b.dir,
        })
        .to_string();
        if let Err(e) = crate::hooks::run_all("startContainer", &hooks, &state) {
            // `start` has returned and nothing reads the channel any more: the
            // container's stderr is the one place left to say why it stopped.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "plinth: {e}");
            return Err(e);
        }
    }
    Err(exec.exec())
}

/// The last steps before execve, shared by the container's init and `exec`: fds,
/// rlimits, umask, the working directory (checked to be inside the root), then
/// seccomp, capabilities and the user switch in the order the kernel requires.
/// Returns the prepared execve, which allocates nothing.
pub fn enter_process(
    process: &oci_spec::runtime::Process,
    caps: &Sets,
    seccomp: Option<&seccomp::Program>,
    channel: &Channel,
    preserve_fds: i32,
) -> Result<Exec> {
    // Only stdio and the preserved fds reach the container; every other fd, ours
    // included, closes at execve.
    close_range_cloexec(3 + preserve_fds.max(0) as u32)?;

    if let Some(r) = process.rlimits() {
        process::set_rlimits(r)?;
    }
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let exe = process::find_executable(&args[0], &env)?;
    let exec = Exec::new(&exe, &args, &env)?;

    let user = process.user();
    nix::sys::stat::umask(Mode::from_bits_truncate(user.umask().unwrap_or(0o022)));
    nix::unistd::chdir(process.cwd()).map_err(|e| {
        Error::sys(
            format!("chdir to process.cwd {}", process.cwd().display()),
            e,
        )
    })?;
    // A cwd reached through a leaked fd would lie outside the root (CVE-2024-21626).
    // Checked before seccomp, which may deny getcwd itself.
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => {}
        _ => {
            return Err(Error::config(
                "process.cwd",
                "the working directory is outside the container's root",
            ))
        }
    }

    // Read before any filter: without no_new_privs the filter comes first, and what runs
    // after it must be only the calls below, not a file open.
    let setgroups_allowed = crate::idmap::setgroups_allowed();
    let nnp = process.no_new_privileges() == Some(true);
    if !nnp {
        // Without no_new_privs the filter needs CAP_SYS_ADMIN, which the user switch
        // below may drop: install it now, while it is held.
        if let Some(p) = seccomp {
            hand_over_listener(channel, p.install()?)?;
        }
    }
    capabilities::drop_bounding(caps)?;
    nix::sys::prctl::set_keepcaps(true).map_err(|e| Error::sys("prctl(PR_SET_KEEPCAPS)", e))?;
    process::switch_user(
        user.uid(),
        user.gid(),
        user.additional_gids().as_deref().unwrap_or(&[]),
        setgroups_allowed,
    )?;
    nix::sys::prctl::set_keepcaps(false).map_err(|e| Error::sys("prctl(PR_SET_KEEPCAPS)", e))?;
    capabilities::apply(caps)?;
    if nnp {
        nix::sys::prctl::set_no_new_privs()
            .map_err(|e| Error::sys("prctl(PR_SET_NO_NEW_PRIVS)", e))?;
        if let Some(p) = seccomp {
            hand_over_listener(channel, p.install()?)?;
        }
    }

    Ok(exec)
}

/// Sends the seccomp user-notification fd to the runtime, which passes it on to the
/// agent at `listenerPath` (a host path the init can no longer reach), and waits until
/// it has, so no notified syscall runs before someone listens.
fn hand_over_listener(ch: &Channel, listener: Option<OwnedFd>) -> Result<()> {
    let Some(fd) = listener else {
        return Ok(());
    };
    ch.send(&Msg::SeccompFd)?;
    crate::fdpass::send_fd(
        ch.0.as_raw_fd(),
        fd.as_raw_fd(),
        b"seccomp",
        "the seccomp listener to the runtime",
    )?;
    ch.expect(&Msg::Go)
}

/// The slow path: join namespaces by path, then create the rest with unshare(2); a
/// new pid or time namespace only applies to children, so fork into it.
fn join_and_unshare(init: &Init) -> Result<()> {
    let plan = &init.bundle.namespaces;
    for (f, path) in &plan.join {
        namespaces::join(path, *f)?;
    }
    if plan.creates(CloneFlags::CLONE_NEWUSER) {
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| Error::sys("unshare the user namespace", e))?;
        // An unprivileged runtime (or its newuidmap) may open this process's uid_map
        // only while it is dumpable: a non-dumpable process's /proc files belong to
        // root. Dumpable for just that, as runc does; no joined pid namespace holds this
        // process yet (it forks into one below), so no container can see it meanwhile.
        if init.rootless {
            nix::sys::prctl::set_dumpable(true)
                .map_err(|e| Error::sys("prctl(PR_SET_DUMPABLE, 1)", e))?;
        }
        init.channel
            .send(&Msg::MapIds(nix::unistd::getpid().as_raw()))?;
        init.channel.expect(&Msg::Go)?;
        if init.rootless {
            not_dumpable()?;
        }
    }
    let rest = plan.new & !(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWCGROUP);
    if !rest.is_empty() {
        nix::sched::unshare(rest).map_err(|e| Error::sys(format!("unshare {rest:?}"), e))?;
    }
    let time = CloneFlags::from_bits_retain(libc::CLONE_NEWTIME);
    if plan.creates(time) {
        write_time_offsets(init)?;
    }
    if plan.has(CloneFlags::CLONE_NEWPID) || plan.has(time) {
        match namespaces::fork_with(CloneFlags::empty())? {
            Forked::Parent(child) => {
                init.channel.send(&Msg::Pid(child.as_raw()))?;
                // SAFETY: the child carries on; this intermediate process ends here
                // without running destructors that belong to the child now.
                unsafe { libc::_exit(0) }
            }
            Forked::Child => {}
        }
    }
    hold_for_test();
    Ok(())
}

fn not_dumpable() -> Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(|e| Error::sys("prctl(PR_SET_DUMPABLE, 0)", e))
}

/// A pause point for tests only: with `PLINTH_TEST_HOLD_AFTER_JOIN=FIFO` in the
/// runtime's environment, the init stops here, inside every namespace it joined (and,
/// for a joined pid namespace, already forked into it), until the test has opened FIFO
/// for writing and closed it again. This is the one place a process already in a joined
/// namespace can first see the init; tests/tests/escapes.rs holds it here to show what
/// such a process can reach (CVE-2016-9962). Engines never set the variable.
fn hold_for_test() {
    if let Some(fifo) = std::env::var_os("PLINTH_TEST_HOLD_AFTER_JOIN") {
        let _ = std::fs::read(fifo);
    }
}

fn write_time_offsets(init: &Init) -> Result<()> {
    let linux = init.bundle.spec.linux().as_ref();
    let Some(offsets) = linux.and_then(|l| l.time_offsets().as_ref()) else {
        return Ok(());
    };
    let mut text = String::new();
    for (clock, o) in offsets {
        text.push_str(&format!(
            "{clock} {} {}\n",
            o.secs().unwrap_or(0),
            o.nanosecs().unwrap_or(0)
        ));
    }
    std::fs::write("/proc/self/timens_offsets", text)
        .map_err(|e| Error::io("write", "/proc/self/timens_offsets", e))
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
        return nix::mount::mount(
            None::<&str>,
            rootfs,
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("make {} private", rootfs.display()), e));
    }
    let mut flag = propagation.unwrap_or(MsFlags::MS_SLAVE);
    if flag.contains(MsFlags::MS_UNBINDABLE) {
        // An unbindable rootfs could not be bound onto itself below: keep it private
        // until after the pivot, where the requested propagation is applied.
        flag = MsFlags::MS_PRIVATE;
    }
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        flag | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::sys("set the propagation of /", e))?;
    if flag.contains(MsFlags::MS_SHARED) {
        // pivot_root refuses a shared parent: make the mount holding the rootfs private.
        if let Ok(mi) = crate::mountinfo::read() {
            if let Some(parent) = rootfs
                .parent()
                .and_then(|p| crate::mountinfo::containing(&mi, p))
            {
                nix::mount::mount(
                    None::<&str>,
                    &parent.mount_point,
                    None::<&str>,
                    MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(|e| Error::sys("make the rootfs's parent mount private", e))?;
            }
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

fn mount_one(init: &Init, root: &OwnedFd, m: &Mount, i: usize, userns: bool) -> Result<()> {
    let field = format!("mounts[{i}]");
    let o = Options::parse(m.options().as_deref().unwrap_or(&[]), &field)?;
    let dest = m.destination();
    let fstype = m.typ().as_deref().unwrap_or("");
    let bind = o.bind || fstype == "bind";
    if fstype == "cgroup" || fstype == "cgroup2" {
        return mount_cgroup(init, root, dest, &o);
    }
    check_proc_destination(init, m, &field, bind)?;
    let target;
    if bind {
        let src = m.source().as_ref().ok_or_else(|| {
            Error::config(format!("{field}.source"), "a bind mount needs a source")
        })?;
        let src = if src.is_absolute() {
            src.clone()
        } else {
            init.bundle.dir.join(src)
        };
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
        target = mount::open_in_root(root, dest, kind)?;
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
            let t = mount::open_in_root(root, dest, Create::Nothing)?;
            mount::remount_bind(&mount::fd_path(&t), extra, dest)?;
        }
    } else {
        if fstype == "proc" || fstype == "sysfs" {
            check_not_symlink(root, dest, &field)?;
        }
        target = mount::open_in_root(root, dest, Create::Dir)?;
        check_target_not_in_proc(&target, dest, &field)?;
        let data = o.data.join(",");
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
                source: nix::errno::Errno::EPERM,
                ..
            }) if userns && (fstype == "sysfs" || fstype == "mqueue") => {
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
                let t = mount::open_in_root(root, dest, Create::Nothing)?;
                let extra = o.flags & !(MsFlags::MS_REMOUNT);
                if !extra.is_empty() {
                    mount::remount_bind(&mount::fd_path(&t), extra, dest)?;
                }
            }
            other => other?,
        }
    }
    if !o.propagation.is_empty() || o.attr_set != 0 || o.attr_clr != 0 {
        let t = mount::open_in_root(root, dest, Create::Nothing)?;
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

/// proc and sysfs must land where they claim: a symlink at their destination is
/// refused (CVE-2019-16884, CVE-2019-19921).
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

/// Refuses a mount at or below /proc that is not procfs (CVE-2019-16884): a fake
/// tree over /proc would take every later write the runtime makes through /proc
/// (masks, sysctls, LSM attributes) somewhere else.
fn check_proc_destination(init: &Init, m: &Mount, field: &str, bind: bool) -> Result<()> {
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
                init.bundle.dir.join(src)
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

fn mount_cgroup(init: &Init, root: &OwnedFd, dest: &Path, o: &Options) -> Result<()> {
    let cgns = init.bundle.namespaces.has(CloneFlags::CLONE_NEWCGROUP);
    let mut flags = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
    if init.rootless {
        flags |= MsFlags::MS_RDONLY;
    }
    let single = init.cgroup_mounts.len() == 1 && init.cgroup_mounts[0].name.is_empty();
    if !single {
        // v1 or hybrid: a tmpfs holding one directory per hierarchy.
        let t = mount::open_in_root(root, dest, Create::Dir)?;
        mount::do_mount(
            Some(Path::new("tmpfs")),
            &mount::fd_path(&t),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=755"),
            dest,
        )?;
    }
    for cm in &init.cgroup_mounts {
        let sub = dest.join(&cm.name);
        let t = mount::open_in_root(root, &sub, Create::Dir)?;
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
            let t = mount::open_in_root(root, &sub, Create::Nothing)?;
            mount::remount_bind(
                &mount::fd_path(&t),
                flags | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                &sub,
            )?;
        }
    }
    if !single && flags.contains(MsFlags::MS_RDONLY) {
        let t = mount::open_in_root(root, dest, Create::Nothing)?;
        mount::remount_bind(
            &mount::fd_path(&t),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            dest,
        )?;
    }
    Ok(())
}

/// Writes a sysctl through the container's /proc/sys, checking that the file opened
/// is on a real procfs.
fn write_sysctl(key: &str, value: &str) -> Result<()> {
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

/// A fresh session keyring, so the container does not see the caller's keys. Kernels
/// without keyrings, or that refuse it in a user namespace, simply go without.
fn join_session_keyring() {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a NULL name creates an anonymous session keyring.
    unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        );
    }
}

pub fn close_range_cloexec(first: u32) -> Result<()> {
    // SAFETY: close_range only changes flags of fds in the range; CLOSE_RANGE_CLOEXEC
    // closes nothing now, so no fd this process still uses goes away.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        return Err(Error::sys("close_range", nix::errno::Errno::last()));
    }
    Ok(())
}

/// Blocks until `start` writes to the exec fifo. The fifo was opened non-blocking for
/// reading before any writer existed, so poll reports nothing until one writes.
fn wait_for_start(fifo: &OwnedFd) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(fifo),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("wait on the exec fifo", e)),
            Ok(_) => {}
        }
        let mut b = [0u8; 1];
        match nix::unistd::read(fifo, &mut b) {
            Ok(1) => return Ok(()),
            Err(nix::errno::Errno::EAGAIN) => continue,
            Ok(_) => {
                return Err(Error::Invalid(
                    "the exec fifo was closed without a start".into(),
                ))
            }
            Err(e) => return Err(Error::sys("read the exec fifo", e)),
        }
    }
}
