//! `create`, on the runtime's side: check the bundle, claim the state directory, make
//! the cgroup, fork the init, place it (cgroup, oom_score_adj, id maps), then answer
//! what the init asks for while it sets itself up (id maps, hooks, the seccomp agent)
//! until it waits for `start`. Every step undone if a later one fails.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill as send_signal, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{Hooks, Process};

use super::cgroup;
use crate::capabilities::Sets;
use crate::cgroups::Cgroup;
use crate::config::{self, Bundle};
use crate::error::{Error, Result};
use crate::hooks;
use crate::init::{self, Init};
use crate::logging;
use crate::mount;
use crate::namespaces::{self, Forked};
use crate::procfs;
use crate::seccomp;
use crate::state::{self, Root, State};
use crate::sync::{self, Channel, Msg};

/// The flags of `create` (and `run`).
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Container id.
    pub id: String,
    /// Bundle directory.
    pub bundle: PathBuf,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// `--preserve-fds`.
    pub preserve_fds: i32,
    /// `--no-pivot`.
    pub no_pivot: bool,
    /// `--no-new-keyring`.
    pub no_new_keyring: bool,
}

/// Creates a container and returns once its init waits for `start`.
pub fn create(root: &Root, opts: &CreateOptions) -> Result<State> {
    state::validate_id(&opts.id)?;
    let bundle = config::load(&opts.bundle)?;
    let checked = Checked::new(&bundle, opts, root)?;
    let dir = root.claim(&opts.id)?;
    let mut cleanup = Cleanup::new(root, &opts.id, &bundle);
    let fifo = exec_fifo(&dir)?;
    // How the init gets into its cgroup depends on where the host mounts cgroup2: on a
    // pure v2 host it is born there (clone3 CLONE_INTO_CGROUP); on a hybrid host it is
    // born in the unified hierarchy and joins the v1 ones itself; on a v1-only host it
    // joins them all itself, and the cgroup may be made, even found, after the fork.
    // There a root runtime always makes a cgroup; elsewhere whether there is one at all
    // is known only once it is resolved.
    let pure_v2 = Cgroup::host_is_pure_v2();
    let v1_only = !pure_v2 && !Cgroup::host_is_hybrid();
    let root_on_v1_only = nix::unistd::geteuid().is_root() && v1_only;
    let mut cgroup = if root_on_v1_only {
        None
    } else {
        cgroup::resolve(&bundle, &opts.id)?
    };
    let how = How::decide(
        &bundle,
        checked.process,
        root_on_v1_only || cgroup.is_some(),
        v1_only,
    );
    if root_on_v1_only && how.resolve_late {
        Cgroup::check_path(cgroups_path(&bundle), &opts.id)?;
    } else if root_on_v1_only {
        cgroup = cgroup::resolve(&bundle, &opts.id)?;
    }
    if let Some(cg) = cgroup.as_mut().filter(|_| !how.defer_cgroup) {
        if how.defer_limits {
            cgroup::make_dirs(cg, &bundle)?;
            cleanup.cgroup = Some(cg.clone());
        } else {
            make_cgroup(cg, &bundle, &mut cleanup)?;
        }
    }
    let (child, born_inside, ours) =
        fork_init(&bundle, opts, checked, &how, cgroup.as_ref(), fifo)?;
    cleanup.pids.push(child);
    // From here a step that fails because the init has ended says less than the init's
    // own error, when it sent one.
    let init_said = |e: Error| match ours.take_error() {
        Some(said) => Error::Invalid(said),
        None => e,
    };
    place_init(&bundle, &how, child, cgroup.as_ref(), born_inside, &ours).map_err(init_said)?;
    if how.resolve_late {
        cgroup = cgroup::resolve(&bundle, &opts.id).map_err(init_said)?;
    }
    if let Some(cg) = cgroup
        .as_mut()
        .filter(|_| how.defer_cgroup || how.defer_limits)
    {
        // The whole cgroup, which the init then joins; or, where it was born inside,
        // what the cgroup was still missing.
        let tasks = if how.defer_cgroup {
            make_cgroup(cg, &bundle, &mut cleanup).map_err(init_said)?;
            cg.admit(child.as_raw(), None, born_inside)
                .map_err(init_said)?
        } else {
            cgroup::apply(cg, &bundle).map_err(init_said)?;
            vec![]
        };
        // If the init ended meanwhile, its own error is read next.
        ours.send_unless_gone(&Msg::JoinCgroup, &tasks)
            .map_err(init_said)?;
    }
    let mut st = new_state(&bundle, &opts.id, child, cgroup, &cleanup);
    // The init sets itself up now, and the runtime would only wait: the state is
    // written meanwhile (renamed into place once the init is ready), and the view the
    // runtime runs from is let go.
    let staged = root.stage(&st)?;
    crate::sealed::release_view();
    serve_init(&ours, &bundle, &mut st, &mut cleanup, child)?;
    let staged = if st.pid == child.as_raw() {
        staged
    } else {
        // The init forked into its pid namespace: the state is the real init's.
        st.pid_start = state::proc_start(st.pid).map(|(s, _)| s).unwrap_or(0);
        root.stage(&st)?
    };
    staged.commit()?;
    if let Some(p) = &opts.pid_file {
        state::write_pid_file(p, st.pid)?;
    }
    cleanup.armed = false;
    Ok(st)
}

/// What the init needs from the config, checked before anything is made.
struct Checked<'a> {
    process: &'a Process,
    caps: Sets,
    seccomp: Option<seccomp::Program>,
    console_socket: Option<OwnedFd>,
}

impl<'a> Checked<'a> {
    fn new(bundle: &'a Bundle, opts: &CreateOptions, root: &Root) -> Result<Checked<'a>> {
        let spec = &bundle.spec;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| Error::config("process", "missing"))?;
        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| Error::config("linux", "missing"))?;
        let terminal = process.terminal() == Some(true);
        if terminal && opts.console_socket.is_none() {
            return Err(Error::config(
                "process.terminal",
                "is true, so --console-socket must be given",
            ));
        }
        if !terminal && opts.console_socket.is_some() {
            return Err(Error::Invalid(
                "--console-socket: the config does not ask for a terminal (process.terminal)"
                    .into(),
            ));
        }
        let caps = Sets::from_config(process.capabilities().as_ref())?;
        if !caps.unavailable.is_empty() {
            let names: Vec<String> = caps.unavailable.iter().map(|c| c.to_string()).collect();
            logging::warn(&format!(
                "process.capabilities: {} not in the runtime's own bounding set; not granted",
                names.join(", ")
            ));
        }
        let cache = root.seccomp_cache();
        let seccomp = linux
            .seccomp()
            .as_ref()
            .map(|p| seccomp::cache::compile(p, bundle.seccomp_json.as_deref(), &cache))
            .transpose()?;
        let console_socket = opts
            .console_socket
            .as_deref()
            .map(crate::terminal::connect_console_socket)
            .transpose()?;
        Ok(Checked {
            process,
            caps,
            seccomp,
            console_socket,
        })
    }
}

/// The fifo the init waits on until `start` opens it, opened for reading before any
/// writer exists (non-blocking, so the open returns).
fn exec_fifo(dir: &Path) -> Result<OwnedFd> {
    let path = dir.join(state::FIFO);
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o622))
        .map_err(|e| Error::sys(format!("mkfifo {}", path.display()), e))?;
    nix::fcntl::open(
        &path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {}", path.display()), e))
}

/// How the init is started, decided from the config before the fork.
struct How {
    /// The clone itself makes every namespace (none is joined, no time namespace):
    /// the child is the container's pid 1 at once.
    fast: bool,
    /// createRuntime, createContainer or prestart hooks are asked for.
    create_hooks: bool,
    /// The runtime runs unprivileged. Decided here: in the child, once the parent has
    /// mapped a new user namespace's ids, geteuid() says 0.
    rootless: bool,
    /// An unprivileged runtime writes the child's /proc files before `Go`.
    dumpable_until_go: bool,
    /// On a v1-only host, where the child cannot be born in any of its cgroup: the
    /// cgroup is made after the fork, while the init makes its mounts (about 0.35 ms for
    /// this host's nine v1 hierarchies, docs/performance.md), and the init joins it then
    /// (see [`How::decide`]). The init waits for it before its first cgroup mount and
    /// before its own code.
    defer_cgroup: bool,
    /// The same where the init is born in its cgroup (pure v2, and the unified
    /// hierarchy of a hybrid host): the directories are made before the fork, the
    /// limits and the device rules after it, while the init makes its mounts (on pure
    /// v2 the device rules are an eBPF program: 0.26 ms to load and 0.10 ms to attach
    /// here, traced). The init waits for `JoinCgroup` before its first cgroup mount
    /// and before its own code, as with `defer_cgroup`.
    defer_limits: bool,
    /// With `defer_cgroup`, when the init mounts no cgroup hierarchy: where the cgroup
    /// goes is found after the fork as well (mountinfo, /proc/self/cgroup and
    /// /proc/cgroups read: about 0.2 ms here). Only `linux.cgroupsPath` is checked
    /// before.
    resolve_late: bool,
}

impl How {
    fn decide(bundle: &Bundle, process: &Process, has_cgroup: bool, v1_only: bool) -> How {
        let plan = &bundle.namespaces;
        let fast = plan.join.is_empty()
            && !plan.creates(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME));
        let create_hooks = bundle.spec.hooks().as_ref().is_some_and(has_create_hooks);
        let rootless = !nix::unistd::geteuid().is_root();
        // Making a cgroup takes a directory and the limits per hierarchy (and on v2 a
        // device program). The init makes its mounts meanwhile, as long as nothing it
        // does depends on its cgroup yet: no cgroup namespace to make (its root is the
        // cgroup the process is in), no create hooks (they may look at the cgroup), no
        // namespace to join (that forks). On a v1-only host the whole cgroup is made
        // after the fork (the init cannot be born in any of it); elsewhere the
        // directories before, for the init to be born in, and the limits after.
        let overlap =
            fast && has_cgroup && !create_hooks && !plan.creates(CloneFlags::CLONE_NEWCGROUP);
        let defer_cgroup = overlap && v1_only;
        let defer_limits = overlap && !v1_only;
        let dumpable_until_go = rootless
            && (process.oom_score_adj().is_some()
                || fast && plan.creates(CloneFlags::CLONE_NEWUSER));
        let resolve_late = defer_cgroup && !cgroup::mounted_in_container(bundle);
        How {
            fast,
            create_hooks,
            rootless,
            dumpable_until_go,
            defer_cgroup,
            defer_limits,
            resolve_late,
        }
    }
}

#[allow(deprecated)]
fn has_create_hooks(h: &Hooks) -> bool {
    [h.prestart(), h.create_runtime(), h.create_container()]
        .into_iter()
        .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()))
}

/// The config's `linux.cgroupsPath`.
fn cgroups_path(bundle: &Bundle) -> Option<&Path> {
    bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_deref())
}

/// Makes the container's cgroup; `cleanup` removes it again if create fails later
/// (it removes exactly what was made, so it needs the made cgroup).
fn make_cgroup(cg: &mut Cgroup, bundle: &Bundle, cleanup: &mut Cleanup) -> Result<()> {
    cgroup::make(cg, bundle)?;
    cleanup.cgroup = Some(cg.clone());
    Ok(())
}

/// The namespaces the init makes itself, with unshare(2) first thing, rather than the
/// clone: the clone runs in the runtime, which places the init (its ids, its cgroup)
/// only after it, and a network namespace alone takes about 0.4 ms to make here
/// (docs/performance.md); in the init that overlaps the placing. The user namespace
/// stays with the clone (the runtime maps its ids right after, and the others are then
/// owned by it, as when the clone makes them all), and so does the pid namespace (only
/// a clone makes a process its pid 1).
const UNSHARED_BY_INIT: CloneFlags = CloneFlags::CLONE_NEWNET
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWUTS)
    .union(CloneFlags::CLONE_NEWNS);

/// Forks the init (born in its cgroup where the host allows it); the child runs
/// [`init::run`] and never comes back. Returns the child's pid, whether it was born
/// inside the cgroup, and the runtime's end of the channel to it.
fn fork_init(
    bundle: &Bundle,
    opts: &CreateOptions,
    checked: Checked,
    how: &How,
    cgroup: Option<&Cgroup>,
    fifo: OwnedFd,
) -> Result<(Pid, bool, Channel)> {
    let plan = &bundle.namespaces;
    let (clone_flags, unshare_first) = if how.fast {
        let new = plan.new & !CloneFlags::CLONE_NEWCGROUP;
        (new & !UNSHARED_BY_INIT, new & UNSHARED_BY_INIT)
    } else {
        (CloneFlags::empty(), CloneFlags::empty())
    };
    let cgroup_mounts = cgroup::mounts(bundle, cgroup);
    let (ours, theirs) = sync::pair()?;
    // A cgroup made only after the fork cannot be born in (on a v1-only host as far as
    // statfs says, there may still be a cgroup2 mount elsewhere).
    let born_in = cgroup.filter(|_| !how.defer_cgroup);
    let (forked, born_inside) = namespaces::fork_in_cgroup(clone_flags, born_in)?;
    match forked {
        Forked::Child => init::run({
            // The runtime's copy closes later, while this init sets itself up.
            crate::sealed::release_view();
            Init {
                id: &opts.id,
                bundle,
                // The runtime's end closes here, so that the init sees the runtime go.
                channel: {
                    drop(ours);
                    theirs
                },
                fifo,
                console_socket: checked.console_socket,
                preserve_fds: opts.preserve_fds,
                no_pivot: opts.no_pivot,
                no_new_keyring: opts.no_new_keyring,
                caps: checked.caps,
                seccomp: checked.seccomp,
                cgroup_mounts,
                has_create_hooks: how.create_hooks,
                cloned_with_namespaces: how.fast,
                unshare_first,
                rootless: how.rootless,
                cgroup_joined_later: how.defer_cgroup || how.defer_limits,
                dumpable_until_go: how.dumpable_until_go,
            }
        }),
        // The init's end of the channel, the fifo and the console socket close here.
        Forked::Parent(pid) => Ok((pid, born_inside, ours)),
    }
}

/// What the runtime does to the child before letting it go: the cgroup (unless the
/// cgroup is made later, while the init makes its mounts; `Go` brings the files the
/// init joins its v1 hierarchies through, and nothing on a pure v2 host, where it was
/// born inside), oom_score_adj, and the id maps of a user namespace the clone made;
/// then `Go`.
fn place_init(
    bundle: &Bundle,
    how: &How,
    child: Pid,
    cgroup: Option<&Cgroup>,
    born_inside: bool,
    ours: &Channel,
) -> Result<()> {
    let tasks = match cgroup.filter(|_| !how.defer_cgroup) {
        Some(cg) => cg.admit(child.as_raw(), None, born_inside)?,
        None => vec![],
    };
    let process = bundle.spec.process().as_ref();
    if let Some(adj) = process.and_then(|p| p.oom_score_adj()) {
        procfs::write_oom_score_adj(child, adj)?;
    }
    if how.fast && bundle.namespaces.creates(CloneFlags::CLONE_NEWUSER) {
        map_ids(child, bundle)?;
    }
    // Id-mapped mounts go through the container's user namespace, which exists now
    // when the clone made it or the config joins it (else once the init made it).
    // Opened before `Go`: a rootless init stops being dumpable then, and its
    // /proc/<pid>/ns files become root's.
    let plan = &bundle.namespaces;
    let any_idmap = bundle
        .spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| mount::idmapped(m).is_some());
    let userns = if !any_idmap {
        None
    } else if how.fast && plan.creates(CloneFlags::CLONE_NEWUSER) {
        Some(procfs_userns(child)?)
    } else if let Some(path) = plan.joined(CloneFlags::CLONE_NEWUSER) {
        Some(crate::namespaces::open_ns(path, CloneFlags::CLONE_NEWUSER)?)
    } else {
        None
    };
    // If the init ended meanwhile, its own error is read next.
    if ours.send_unless_gone(&Msg::Go, &tasks)? {
        if let Some(userns) = userns {
            send_idmapped_mounts(bundle, &userns, ours)?;
        }
    }
    Ok(())
}

/// The user namespace of `pid`, opened.
fn procfs_userns(pid: Pid) -> Result<OwnedFd> {
    let path = PathBuf::from(format!("/proc/{}/ns/user", pid.as_raw()));
    crate::namespaces::open_ns(&path, CloneFlags::CLONE_NEWUSER)
}

/// Makes each id-mapped mount of the config (in order) as a detached mount mapped
/// through `userns`, with the runtime's privileges over the source's file system, and
/// passes it to the init, which attaches it where it belongs.
fn send_idmapped_mounts(bundle: &Bundle, userns: &OwnedFd, ours: &Channel) -> Result<()> {
    for (i, m) in bundle.spec.mounts().iter().flatten().enumerate() {
        let Some(recursive) = mount::idmapped(m) else {
            continue;
        };
        let src = m.source().as_ref().ok_or_else(|| {
            Error::config(format!("mounts[{i}].source"), "a bind mount needs a source")
        })?;
        let src = if src.is_absolute() {
            src.clone()
        } else {
            bundle.dir.join(src)
        };
        let tree = mount::idmapped_clone(&src, userns, recursive)
            .map_err(|e| Error::config(format!("mounts[{i}]"), e.to_string()))?;
        crate::fdpass::send_fd(
            ours.0.as_raw_fd(),
            tree.as_raw_fd(),
            b"idmapped-mount",
            "an id-mapped mount to the init",
        )?;
    }
    Ok(())
}

/// The state as it is written once the init waits for `start`.
fn new_state(
    bundle: &Bundle,
    id: &str,
    child: Pid,
    cgroup: Option<Cgroup>,
    cleanup: &Cleanup,
) -> State {
    let spec = &bundle.spec;
    State {
        oci_version: spec.version().clone(),
        id: id.to_string(),
        pid: child.as_raw(),
        pid_start: state::proc_start(child.as_raw())
            .map(|(s, _)| s)
            .unwrap_or(0),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: state::now_rfc3339(),
        owner: String::new(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        hooks: spec.hooks().clone(),
        cgroup,
        own_pid_ns: bundle.namespaces.creates(CloneFlags::CLONE_NEWPID),
        host_mounts: cleanup
            .host_mounts
            .as_ref()
            .map(|(_, before)| before.clone()),
    }
}

/// Answers the init until it is ready: id maps of a user namespace it made after
/// joining others, the pid of the real init after a fork into a pid namespace, the
/// create hooks, the seccomp listener for the agent.
fn serve_init(
    ours: &Channel,
    bundle: &Bundle,
    st: &mut State,
    cleanup: &mut Cleanup,
    child: Pid,
) -> Result<()> {
    loop {
        match ours.recv()? {
            Some(Msg::MapIds(p)) => {
                map_ids(Pid::from_raw(p), bundle)?;
                ours.send(&Msg::Go)?;
                let userns = procfs_userns(Pid::from_raw(p))?;
                send_idmapped_mounts(bundle, &userns, ours)?;
            }
            Some(Msg::Pid(p)) => {
                // The intermediate process forked the real init and exits.
                let _ = waitpid(child, None);
                cleanup.pids.retain(|x| *x != child);
                cleanup.pids.push(Pid::from_raw(p));
                st.pid = p;
            }
            Some(Msg::Hooks) => {
                if let Err(e) = run_create_hooks(bundle, st) {
                    let _ = ours.send(&Msg::Error(e.to_string()));
                    return Err(e);
                }
                ours.send(&Msg::HooksDone(st.pid))?;
            }
            Some(Msg::SeccompFd) => {
                let fd = crate::fdpass::recv_fd(ours.0.as_raw_fd(), "the seccomp listener")?;
                send_listener(bundle, st, fd)?;
                ours.send(&Msg::Go)?;
            }
            Some(Msg::Ready) => return Ok(()),
            Some(Msg::Error(e)) => return Err(Error::Invalid(e)),
            Some(m) => {
                return Err(Error::Invalid(format!(
                    "unexpected message from init: {m:?}"
                )))
            }
            None => {
                return Err(Error::Invalid(format!(
                    "container init exited during setup{}",
                    describe_exit(child)
                )))
            }
        }
    }
}

/// The hooks the runtime runs while the container is being created, in runtime-spec's
/// order, in the runtime's namespaces: prestart (legacy; they see "created", as
/// runtime-tools checks), then createRuntime ("creating"). The createContainer hooks
/// follow, run by the init in the container's namespaces.
fn run_create_hooks(bundle: &Bundle, st: &State) -> Result<()> {
    let Some(h) = bundle.spec.hooks() else {
        return Ok(());
    };
    #[allow(deprecated)]
    let lists = [
        ("prestart", h.prestart(), "created"),
        ("createRuntime", h.create_runtime(), "creating"),
    ];
    for (kind, list, status) in lists {
        if let Some(list) = list {
            hooks::run_all(kind, list, &st.hook_json(status).to_string())?;
        }
    }
    Ok(())
}

/// Undoes a half-made create when dropped while armed.
struct Cleanup<'a> {
    root: &'a Root,
    id: String,
    cgroup: Option<Cgroup>,
    pids: Vec<Pid>,
    /// The rootfs and the mounts it had before, for a container without a mount
    /// namespace, whose mounts are made on the host.
    host_mounts: Option<(PathBuf, Vec<u32>)>,
    armed: bool,
}

impl<'a> Cleanup<'a> {
    fn new(root: &'a Root, id: &str, bundle: &Bundle) -> Cleanup<'a> {
        let host_mounts = (!bundle.namespaces.has(CloneFlags::CLONE_NEWNS))
            .then(|| (bundle.rootfs.clone(), mount::mounts_at(&bundle.rootfs)));
        Cleanup {
            root,
            id: id.to_string(),
            cgroup: None,
            pids: vec![],
            host_mounts,
            armed: true,
        }
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for p in &self.pids {
            let _ = send_signal(*p, Signal::SIGKILL);
            let _ = waitpid(*p, None);
        }
        if let Some((rootfs, before)) = &self.host_mounts {
            mount::detach_host_mounts(rootfs, before);
        }
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.destroy() {
                logging::warn(&format!("cleanup: {e}"));
            }
        }
        let _ = self.root.remove(&self.id);
    }
}

fn describe_exit(pid: Pid) -> String {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, c)) => format!(" (exit status {c})"),
        Ok(WaitStatus::Signaled(_, s, _)) => format!(" (killed by {s})"),
        _ => String::new(),
    }
}

fn map_ids(pid: Pid, bundle: &Bundle) -> Result<()> {
    let linux = bundle
        .spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::config("linux", "missing"))?;
    crate::idmap::write(
        pid.as_raw(),
        linux.uid_mappings().as_deref().unwrap_or(&[]),
        linux.gid_mappings().as_deref().unwrap_or(&[]),
    )
}

/// Passes the init's (or an exec'd process's) seccomp listener on to the profile's
/// agent, with the container's state as it stands while it is being created.
pub(crate) fn send_listener(bundle: &Bundle, st: &State, fd: OwnedFd) -> Result<()> {
    let profile = bundle
        .seccomp()
        .ok_or_else(|| Error::config("linux.seccomp", "missing"))?;
    seccomp::agent::send_listener(
        profile,
        &st.oci_version,
        st.pid,
        st.hook_json("creating"),
        fd,
    )
}
