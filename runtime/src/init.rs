//! The container's init: what runs in the cloned child, from the new namespaces to
//! the execve of the user's process. Every failure is sent to the runtime over the
//! sync channel and ends the child; nothing here returns to the caller.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

use crate::capabilities::{self, Sets};
use crate::cgroups;
use crate::config::Bundle;
use crate::error::{Error, Result};
use crate::mount;
use crate::namespaces::{self, Forked};
use crate::process::{self, Exec};
use crate::procfs;
use crate::rootfs::{self, Rootfs};
use crate::sched;
use crate::seccomp;
use crate::sync::{Channel, Msg};
use crate::terminal;

/// Everything the init needs, prepared by the runtime before the clone.
pub struct Init<'a> {
    /// The container's id.
    pub id: &'a str,
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
    pub cgroup_mounts: Vec<rootfs::CgroupMount>,
    /// Whether createRuntime/createContainer/prestart hooks must run before the pivot.
    pub has_create_hooks: bool,
    /// Whether the namespaces are made by the clone itself (no namespace is joined):
    /// then this process is already the container's pid 1.
    pub cloned_with_namespaces: bool,
    /// With `cloned_with_namespaces`: the new namespaces the clone left to this process,
    /// made with unshare(2) first thing, while the runtime places it (a user namespace
    /// the clone made is this process's already, with every capability in it).
    pub unshare_first: CloneFlags,
    /// Whether the runtime runs unprivileged: then every cgroup mount is read-only,
    /// whatever the config says (CVE-2023-25809).
    pub rootless: bool,
    /// Whether the runtime makes the container's cgroup (or, where this process was born
    /// in it, its limits and device rules) only after `Go`, while the mounts are made:
    /// then the first cgroup mount and the process's own settings wait for
    /// `JoinCgroup`, and this process joins what it is not in yet then.
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
    process::exit_child(1)
}

fn setup(init: Init) -> Result<()> {
    // Not dumpable from the first instruction to the execve: nothing in a container may
    // ptrace this process or open its /proc files (root, cwd, fds) while it holds the
    // host's root and the runtime's fds (CVE-2016-9962). The one exception waits for
    // `Go`; until then this process has joined nothing, so no container can see it.
    if !init.dumpable_until_go {
        not_dumpable()?;
    }
    initial_affinity(init.bundle.spec.process().as_ref())?;
    // `run` blocks the signals it forwards; a blocked mask survives execve, and the
    // container's process must start with none blocked.
    nix::sys::signal::SigSet::empty()
        .thread_set_mask()
        .map_err(|e| Error::sys("sigprocmask(SIG_SETMASK, {})", e))?;
    let spec = &init.bundle.spec;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::config("linux", "missing"))?;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::config("process", "missing"))?;

    let sources = enter_namespaces(&init)?;
    // This process's pid as the runtime sees it, for the state the startContainer hooks
    // read: /proc is still the runtime's here (it is the container's after the pivot).
    let runtime_pid = nix::fcntl::readlink("/proc/self")
        .ok()
        .and_then(|p| p.to_str()?.parse::<i32>().ok())
        .unwrap_or(0);
    set_names(spec)?;
    if !init.no_new_keyring {
        process::join_session_keyring();
    }
    // Device nodes and masks are made with exact modes.
    nix::sys::stat::umask(Mode::empty());
    let fs = Rootfs::prepare(init.bundle, &init.cgroup_mounts, init.rootless, sources)?;
    // Whether this process is in its cgroup yet: the runtime makes it meanwhile and
    // sends the files to join it through; the cgroup mounts and the container's own
    // code wait for it (see `Init::cgroup_joined_later`).
    let in_cgroup = std::cell::Cell::new(!init.cgroup_joined_later);
    let join_cgroup = || -> Result<()> {
        if !in_cgroup.replace(true) {
            cgroups::join_self(&init.channel.expect_with_fds(&Msg::JoinCgroup)?)?;
        }
        Ok(())
    };
    let mounted = fs.mount_all(join_cgroup)?;
    fs.create_devices(linux, &mounted)?;
    fs.make_cwd(process.cwd())?;
    if init.has_create_hooks {
        run_create_container_hooks(&init)?;
    }
    fs.enter(init.no_pivot)?;
    // Sysctls first: /proc/sys is usually among the read-only paths.
    for (k, v) in linux.sysctl().iter().flatten() {
        procfs::write_sysctl(k, v)?;
    }
    mount::mask_paths(linux.masked_paths().as_deref().unwrap_or(&[]))?;
    mount::readonly_paths(linux.readonly_paths().as_deref().unwrap_or(&[]))?;
    if let Some(sock) = &init.console_socket {
        let size = process
            .console_size()
            .map(|s| (s.width() as u16, s.height() as u16));
        terminal::hand_over(sock, size, true)?;
    }
    drop(init.console_socket);
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mount::remount_bind(Path::new("/"), MsFlags::MS_RDONLY, Path::new("/"))?;
    }
    // Nothing of the container's own runs before its limits apply.
    join_cgroup()?;
    let exec = enter_process(
        process,
        linux.personality().as_ref(),
        &init.caps,
        init.seccomp.as_ref(),
        &init.channel,
        init.preserve_fds,
    )?;
    init.channel.send(&Msg::Ready)?;
    let start_hooks = init
        .bundle
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| h.start_container().clone())
        .map(|h| (h, hook_state(init.id, init.bundle, "created", runtime_pid)));
    wait_for_start(&init.fifo)?;
    drop(init.fifo);
    if let Some((hooks, state)) = start_hooks {
        run_start_container_hooks(&hooks, &state)?;
    }
    Err(exec.exec())
}

/// Waits for `Go`, then enters the container's namespaces: joins those given by path
/// and makes the others (the slow path; the clone made them otherwise), becomes root
/// of a user namespace, and makes the cgroup namespace, rooted at the container's
/// cgroup now that the runtime has put this process there. Returns the bind mounts'
/// sources, opened before the switch to the user namespace's root.
fn enter_namespaces(init: &Init) -> Result<rootfs::Sources> {
    let plan = &init.bundle.namespaces;
    if init.cloned_with_namespaces && !init.unshare_first.is_empty() {
        let flags = init.unshare_first;
        nix::sched::unshare(flags).map_err(|e| Error::sys(format!("unshare {flags:?}"), e))?;
    }
    // The cgroup's files come with `Go` unless the init was born in the cgroup or
    // joins it later, while it makes its mounts.
    cgroups::join_self(&init.channel.expect_with_fds(&Msg::Go)?)?;
    if init.dumpable_until_go {
        not_dumpable()?;
    }
    if !init.cloned_with_namespaces {
        join_and_unshare(init)?;
    }
    let idmapped = receive_idmapped_mounts(init)?;
    let sources = rootfs::open_bind_sources(init.bundle);
    if plan.has(CloneFlags::CLONE_NEWUSER) {
        // Become the namespace's root: the host id we run as may be unmapped.
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(|e| Error::sys("setresgid 0 in the user namespace", e))?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(|e| Error::sys("setresuid 0 in the user namespace", e))?;
    }
    if plan.creates(CloneFlags::CLONE_NEWCGROUP) {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| Error::sys("unshare the cgroup namespace", e))?;
    }
    if plan.creates(CloneFlags::CLONE_NEWNET) {
        namespaces::loopback_up()?;
    }
    Ok(rootfs::Sources {
        opened: sources,
        idmapped,
    })
}

/// The UTS namespace's host and domain names.
fn set_names(spec: &oci_spec::runtime::Spec) -> Result<()> {
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
    Ok(())
}

/// The id-mapped mounts the runtime made (one per id-mapped mount, in order,
/// each a detached mount passed over the channel), by index in `mounts`. Read once the
/// user namespace exists: the runtime sends them right after the `Go` that follows it.
fn receive_idmapped_mounts(init: &Init) -> Result<Vec<Option<OwnedFd>>> {
    let mounts = init.bundle.spec.mounts().as_deref().unwrap_or(&[]);
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        out.push(if crate::mount::idmapped(m).is_some() {
            Some(crate::fdpass::recv_fd(
                init.channel.0.as_raw_fd(),
                "an id-mapped mount from the runtime",
            )?)
        } else {
            None
        });
    }
    Ok(out)
}

/// `process.execCPUAffinity.initial`: the CPUs the process runs on until it is in the
/// container's cgroup (the init and `exec`'s child apply it first thing).
pub fn initial_affinity(process: Option<&oci_spec::runtime::Process>) -> Result<()> {
    let initial = process
        .and_then(|p| p.exec_cpu_affinity().as_ref())
        .and_then(|a| a.initial().as_deref());
    if let Some(cpus) = initial {
        let field = "process.execCPUAffinity.initial";
        sched::set_affinity(&sched::parse_cpu_list(cpus, field)?, field)?;
    }
    Ok(())
}

/// The state a hook run by the init reads: runtime-spec's, with the pid as the runtime
/// sees it.
fn hook_state(id: &str, bundle: &Bundle, status: &str, pid: i32) -> String {
    let spec = &bundle.spec;
    let mut v = serde_json::json!({
        "ociVersion": spec.version(), "id": id, "status": status,
        "pid": pid, "bundle": bundle.dir,
    });
    if let Some(a) = spec.annotations().as_ref().filter(|a| !a.is_empty()) {
        v["annotations"] = serde_json::json!(a);
    }
    v.to_string()
}

/// Asks the runtime to run the prestart and createRuntime hooks (in its namespaces),
/// then runs the createContainer hooks here, in the container's namespaces before the
/// pivot (their paths still resolve on the host), as runtime-spec says and runc does.
fn run_create_container_hooks(init: &Init) -> Result<()> {
    init.channel.send(&Msg::Hooks)?;
    let pid = match init.channel.recv()? {
        Some(Msg::HooksDone(pid)) => pid,
        Some(Msg::Error(e)) => return Err(Error::Invalid(e)),
        other => {
            return Err(Error::Invalid(format!(
                "expected the runtime's hooks-done, got {other:?}"
            )))
        }
    };
    let Some(list) = init
        .bundle
        .spec
        .hooks()
        .as_ref()
        .and_then(|h| h.create_container().clone())
    else {
        return Ok(());
    };
    crate::hooks::run_all(
        "createContainer",
        &list,
        &hook_state(init.id, init.bundle, "creating", pid),
    )
}

/// The startContainer hooks, run in the container after `start`, before the execve.
fn run_start_container_hooks(hooks: &[oci_spec::runtime::Hook], state: &str) -> Result<()> {
    crate::hooks::run_all("startContainer", hooks, state).inspect_err(|e| {
        // `start` has returned and nothing reads the channel any more: the
        // container's stderr is the one place left to say why it stopped.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "plinth: {e}");
    })
}

/// The last steps before execve, shared by the container's init and `exec`: fds,
/// rlimits, umask, the working directory (checked to be inside the root), then
/// seccomp, capabilities and the user switch in the order the kernel requires.
/// Returns the prepared execve, which allocates nothing.
pub fn enter_process(
    process: &oci_spec::runtime::Process,
    personality: Option<&oci_spec::runtime::LinuxPersonality>,
    caps: &Sets,
    seccomp: Option<&seccomp::Program>,
    channel: &Channel,
    preserve_fds: i32,
) -> Result<Exec> {
    // Only stdio and the preserved fds reach the container; every other fd, ours
    // included, closes at execve.
    process::close_range_cloexec(3 + preserve_fds.max(0) as u32)?;

    if let Some(r) = process.rlimits() {
        process::set_rlimits(r)?;
    }
    // Scheduling while the capabilities it may need (CAP_SYS_NICE) are still held.
    if let Some(s) = process.scheduler() {
        sched::set_scheduler(s)?;
    }
    if let Some(io) = process.io_priority() {
        sched::set_io_priority(io)?;
    }
    if let Some(cpus) = process
        .exec_cpu_affinity()
        .as_ref()
        .and_then(|a| a.cpu_affinity_final().as_deref())
    {
        let field = "process.execCPUAffinity.final";
        sched::set_affinity(&sched::parse_cpu_list(cpus, field)?, field)?;
    }
    if let Some(p) = personality {
        sched::set_personality(p)?;
    }
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
    // The executable is found from the working directory, as runc finds it (a relative
    // args[0] such as ./busybox is relative to process.cwd).
    let args = process.args().clone().unwrap_or_default();
    let mut env = process.env().clone().unwrap_or_default();
    if process::env_value(&env, "HOME").is_none() {
        // runc sets HOME from the container's /etc/passwd, else to /: programs that
        // read it would otherwise fail.
        env.push(format!("HOME={}", process::home_dir(user.uid())));
    }
    let exe = process::find_executable(&args[0], &env)?;
    let exec = Exec::new(&exe, &args, &env)?;
    // A session and process group of its own inside the container, as runc gives its
    // init and every exec'd process (a terminal's setup made one already).
    if nix::unistd::getsid(None).ok() != Some(nix::unistd::getpid()) {
        nix::unistd::setsid().map_err(|e| Error::sys("setsid", e))?;
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
        let offsets = init
            .bundle
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.time_offsets().as_ref());
        if let Some(offsets) = offsets {
            procfs::write_time_offsets(offsets)?;
        }
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
