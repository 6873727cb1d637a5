//! The container lifecycle, on the runtime's side: create, start, state, kill, delete,
//! run. Each is one short synchronous command over the state directory.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill as send_signal, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::capabilities::Sets;
use crate::cgroups::{Cgroup, DeviceRule};
use crate::config::{self, Bundle};
use crate::error::{Error, Result};
use crate::hooks;
use crate::init::{self, CgroupMount, Init};
use crate::logging;
use crate::namespaces::{self, Forked};
use crate::state::{self, Report, Root, State, Status};
use crate::sync::{self, Msg};

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
            detach_host_mounts(rootfs, before);
        }
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.destroy() {
                logging::warn(&format!("cleanup: {e}"));
            }
        }
        let _ = self.root.remove(&self.id);
    }
}

/// Forks with `flags`, the child born in `cgroup` where the host is pure cgroup v2
/// (clone3 with CLONE_INTO_CGROUP, as crun does): no migration, so no wait for its RCU
/// grace period. The bool says whether that happened; if not, the caller moves the child
/// in. The directory's fd is closed in both processes before this returns: a host
/// directory's fd must not reach the container (CVE-2024-21626).
pub(crate) fn fork_in_cgroup(flags: CloneFlags, cgroup: Option<&Cgroup>) -> Result<(Forked, bool)> {
    let dir = cgroup.map_or(Ok(None), Cgroup::open_unified_only)?;
    namespaces::fork_into(flags, dir.as_ref().map(|d| d.as_fd()))
}

/// Creates a container and returns once its init waits for `start`.
pub fn create(root: &Root, opts: &CreateOptions) -> Result<State> {
    state::validate_id(&opts.id)?;
    let bundle = config::load(&opts.bundle)?;
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
            "--console-socket: the config does not ask for a terminal (process.terminal)".into(),
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
    let seccomp = match linux.seccomp() {
        Some(s) => Some(crate::seccomp::compile(s)?),
        None => None,
    };
    let console_socket = match &opts.console_socket {
        Some(p) => Some(crate::terminal::connect_console_socket(p)?),
        None => None,
    };

    let dir = root.claim(&opts.id)?;
    let mut cleanup = Cleanup {
        root,
        id: opts.id.clone(),
        cgroup: None,
        pids: vec![],
        host_mounts: None,
        armed: true,
    };
    if !bundle.namespaces.has(CloneFlags::CLONE_NEWNS) {
        cleanup.host_mounts = Some((bundle.rootfs.clone(), mounts_at(&bundle.rootfs)));
    }
    let fifo_path = dir.join(state::FIFO);
    nix::unistd::mkfifo(&fifo_path, Mode::from_bits_truncate(0o622))
        .map_err(|e| Error::sys(format!("mkfifo {}", fifo_path.display()), e))?;
    let fifo = nix::fcntl::open(
        &fifo_path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {}", fifo_path.display()), e))?;

    let cgroup = setup_cgroup(&bundle, &opts.id)?;
    cleanup.cgroup = cgroup.clone();
    let cgroup_mounts = cgroup_mounts(&bundle, cgroup.as_ref());

    let (ours, theirs) = sync::pair()?;
    let plan = &bundle.namespaces;
    let fast =
        plan.join.is_empty() && !plan.creates(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME));
    let clone_flags = if fast {
        plan.new & !CloneFlags::CLONE_NEWCGROUP
    } else {
        CloneFlags::empty()
    };
    let hooks = spec.hooks().clone().unwrap_or_default();
    #[allow(deprecated)]
    let has_create_hooks = hooks.prestart().as_ref().is_some_and(|h| !h.is_empty())
        || hooks
            .create_runtime()
            .as_ref()
            .is_some_and(|h| !h.is_empty())
        || hooks
            .create_container()
            .as_ref()
            .is_some_and(|h| !h.is_empty());

    // Decided before the clone: in the child, once the parent has mapped the ids of
    // a new user namespace, geteuid() says 0.
    let rootless = !nix::unistd::geteuid().is_root();
    // The first cgroup.procs write of a migration can wait for an RCU grace period
    // (cgroup_threadgroup_rwsem taken for writing): about 6 ms here when no other
    // migration happened in the last few ms (docs/performance.md). The init makes its
    // mounts meanwhile, as long as nothing it does depends on being in the cgroup yet:
    // no cgroup namespace to make (its root is the cgroup the process is in), no
    // create hooks (they may look at the cgroup), no namespace to join (that forks).
    let overlap =
        fast && cgroup.is_some() && !has_create_hooks && !plan.creates(CloneFlags::CLONE_NEWCGROUP);
    let dumpable_until_go = rootless
        && (process.oom_score_adj().is_some() || fast && plan.creates(CloneFlags::CLONE_NEWUSER));
    let (forked, born_inside) = fork_in_cgroup(clone_flags, cgroup.as_ref())?;
    let cgroup_joined_later = overlap && !born_inside;
    let child = match forked {
        Forked::Child => {
            drop(ours);
            init::run(Init {
                bundle: &bundle,
                channel: theirs,
                fifo,
                console_socket,
                preserve_fds: opts.preserve_fds,
                no_pivot: opts.no_pivot,
                no_new_keyring: opts.no_new_keyring,
                caps,
                seccomp,
                cgroup_mounts,
                has_create_hooks,
                cloned_with_namespaces: fast,
                rootless,
                cgroup_joined_later,
                dumpable_until_go,
            })
        }
        Forked::Parent(pid) => pid,
    };
    drop(theirs);
    drop(fifo);
    drop(console_socket);
    cleanup.pids.push(child);

    if let Some(cg) = cgroup
        .as_ref()
        .filter(|_| !born_inside && !cgroup_joined_later)
    {
        cg.add_pid(child.as_raw())?;
    }
    if let Some(adj) = process.oom_score_adj() {
        write_oom_score_adj(child, adj)?;
    }
    if fast && plan.creates(CloneFlags::CLONE_NEWUSER) {
        map_ids(child, &bundle)?;
    }
    ours.send(&Msg::Go)?;
    if let Some(cg) = cgroup.as_ref().filter(|_| cgroup_joined_later) {
        cg.add_pid(child.as_raw())?;
        // If the init failed meanwhile, this send fails (EPIPE) and the loop below
        // reads the init's own error.
        let _ = ours.send(&Msg::CgroupJoined);
    }

    let mut st = State {
        oci_version: spec.version().clone(),
        id: opts.id.clone(),
        pid: child.as_raw(),
        pid_start: 0,
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: state::now_rfc3339(),
        owner: String::new(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        hooks: spec.hooks().clone(),
        cgroup,
        own_pid_ns: plan.creates(CloneFlags::CLONE_NEWPID),
        host_mounts: cleanup
            .host_mounts
            .as_ref()
            .map(|(_, before)| before.clone()),
    };
    loop {
        match ours.recv()? {
            Some(Msg::MapIds(p)) => {
                map_ids(Pid::from_raw(p), &bundle)?;
                ours.send(&Msg::Go)?;
            }
            Some(Msg::Pid(p)) => {
                // The intermediate process forked the real init and exits.
                let _ = waitpid(child, None);
                cleanup.pids.retain(|x| *x != child);
                cleanup.pids.push(Pid::from_raw(p));
                st.pid = p;
            }
            Some(Msg::Hooks) => {
                // The legacy prestart hooks run once the environment is made and see
                // "created" (runtime-tools checks it); the newer ones see "creating".
                #[allow(deprecated)]
                let lists = [
                    ("prestart", hooks.prestart(), "created"),
                    ("createRuntime", hooks.create_runtime(), "creating"),
                    ("createContainer", hooks.create_container(), "creating"),
                ];
                for (kind, list, status) in lists {
                    if let Some(list) = list {
                        if let Err(e) = hooks::run_all(kind, list, &hook_state(&st, status)) {
                            let _ = ours.send(&Msg::Error(e.to_string()));
                            return Err(e);
                        }
                    }
                }
                ours.send(&Msg::HooksDone)?;
            }
            Some(Msg::SeccompFd) => {
                let fd = crate::fdpass::recv_fd(ours.0.as_raw_fd(), "the seccomp listener")?;
                send_to_seccomp_agent(&bundle, &st, fd)?;
                ours.send(&Msg::Go)?;
            }
            Some(Msg::Ready) => break,
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
    st.pid_start = state::proc_start(st.pid).map(|(s, _)| s).unwrap_or(0);
    root.save(&st)?;
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, st.pid)?;
    }
    cleanup.armed = false;
    Ok(st)
}

fn describe_exit(pid: Pid) -> String {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::Exited(_, c)) => format!(" (exit status {c})"),
        Ok(WaitStatus::Signaled(_, s, _)) => format!(" (killed by {s})"),
        _ => String::new(),
    }
}

fn setup_cgroup(bundle: &Bundle, id: &str) -> Result<Option<Cgroup>> {
    let linux = bundle.spec.linux().as_ref();
    let resources = linux.and_then(|l| l.resources().as_ref());
    let path = linux.and_then(|l| l.cgroups_path().as_deref());
    if !nix::unistd::geteuid().is_root() {
        match delegated(path, id)? {
            Some(cg) => return create_cgroup(cg, bundle, resources).map(Some),
            None => {
                if let Some(field) = resources.and_then(limit_field) {
                    return Err(Error::config(
                        field,
                        "a rootless container gets limits only from a delegated cgroup v2 \
                         subtree, and this user has none here",
                    ));
                }
                // No cgroup at all, said once.
                logging::warn("running rootless without cgroups: no delegated cgroup v2 subtree");
                return Ok(None);
            }
        }
    }
    create_cgroup(Cgroup::resolve(path, id)?, bundle, resources).map(Some)
}

/// For a rootless run: the container's cgroup when the user's own cgroup v2 subtree is
/// delegated (writable, as systemd's user@.service delegates it), else None.
fn delegated(path: Option<&Path>, id: &str) -> Result<Option<Cgroup>> {
    let pure_v2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    if !pure_v2 {
        return Ok(None);
    }
    let cg = Cgroup::resolve(path, id)?;
    let writable = cg
        .path_for("unified")
        .and_then(|d| d.parent().map(Path::to_path_buf))
        .is_some_and(|parent| nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK).is_ok());
    Ok(writable.then_some(cg))
}

/// The first resource limit a config sets (device rules are not limits: a user
/// namespace cannot create devices anyway).
fn limit_field(r: &oci_spec::runtime::LinuxResources) -> Option<&'static str> {
    if r.memory().is_some() {
        Some("linux.resources.memory")
    } else if r.cpu().is_some() {
        Some("linux.resources.cpu")
    } else if r.pids().is_some() {
        Some("linux.resources.pids")
    } else if r.block_io().is_some() {
        Some("linux.resources.blockIO")
    } else if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        Some("linux.resources.hugepageLimits")
    } else if r.network().is_some() {
        Some("linux.resources.network")
    } else if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        Some("linux.resources.unified")
    } else {
        None
    }
}

fn create_cgroup(
    mut cg: Cgroup,
    bundle: &Bundle,
    resources: Option<&oci_spec::runtime::LinuxResources>,
) -> Result<Cgroup> {
    cg.create(resources, &implicit_devices(bundle)?)?;
    for w in cg.warnings() {
        logging::warn(w);
    }
    Ok(cg)
}

/// The device rules allowed after the config's own, as runc allows them: mknod of
/// anything (a node is useless without read/write access), the standard devices the
/// runtime creates, pty slaves, /dev/net/tun, and every device of `linux.devices`.
fn implicit_devices(bundle: &Bundle) -> Result<Vec<DeviceRule>> {
    let rule = |typ: char, major: Option<i64>, minor: Option<i64>, access: &str| DeviceRule {
        allow: true,
        typ,
        major,
        minor,
        access: access.into(),
    };
    let mut out = vec![rule('c', None, None, "m"), rule('b', None, None, "m")];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
        (10, 200),
    ] {
        out.push(rule('c', Some(major), Some(minor), "rwm"));
    }
    out.push(rule('c', Some(136), None, "rwm"));
    let devices = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref());
    for (i, d) in devices.into_iter().flatten().enumerate() {
        let d = crate::devices::from_config(d, i)?;
        let typ = if d.kind == nix::sys::stat::SFlag::S_IFBLK {
            'b'
        } else if d.kind == nix::sys::stat::SFlag::S_IFCHR {
            'c'
        } else {
            // A fifo has no device cgroup rule.
            continue;
        };
        out.push(rule(typ, Some(d.major as i64), Some(d.minor as i64), "rwm"));
    }
    Ok(out)
}

/// What a `cgroup` mount in the container shows: each hierarchy under /sys/fs/cgroup,
/// with the container's own directory in it. With a cgroup, its resolved hierarchies;
/// without one (rootless), the host's mounts as they are.
fn cgroup_mounts(bundle: &Bundle, cg: Option<&Cgroup>) -> Vec<CgroupMount> {
    let wants = bundle
        .spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| matches!(m.typ().as_deref(), Some("cgroup") | Some("cgroup2")));
    if !wants {
        return vec![];
    }
    let base = Path::new("/sys/fs/cgroup");
    let mount = |mount_point: &Path, v2: bool, data: String, host_dir: PathBuf| {
        let name = mount_point.strip_prefix(base).ok()?;
        Some(CgroupMount {
            name: name.to_string_lossy().into_owned(),
            fstype: if v2 { "cgroup2" } else { "cgroup" }.to_string(),
            data,
            host_dir,
        })
    };
    if let Some(cg) = cg {
        return cg
            .hierarchies()
            .filter_map(|h| mount(h.mount, h.v2, h.subsystems.to_string(), h.dir.to_path_buf()))
            .collect();
    }
    let Ok(mi) = crate::mountinfo::read() else {
        return vec![];
    };
    mi.iter()
        .filter(|e| e.fstype == "cgroup" || e.fstype == "cgroup2")
        .filter_map(|e| {
            let v2 = e.fstype == "cgroup2";
            let data = if v2 {
                String::new()
            } else {
                let opts: Vec<&str> = e
                    .super_options
                    .split(',')
                    .filter(|o| *o != "rw" && *o != "ro")
                    .collect();
                opts.join(",")
            };
            mount(&e.mount_point, v2, data, e.mount_point.clone())
        })
        .collect()
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

/// Writes oom_score_adj through an fd checked to be on the host's procfs.
fn write_oom_score_adj(pid: Pid, adj: i32) -> Result<()> {
    let path = PathBuf::from(format!("/proc/{}/oom_score_adj", pid.as_raw()));
    let fd = nix::fcntl::open(&path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| Error::sys(format!("process.oomScoreAdj: open {}", path.display()), e))?;
    init::check_procfs(&fd, &path)?;
    nix::unistd::write(&fd, adj.to_string().as_bytes())
        .map_err(|e| Error::sys(format!("process.oomScoreAdj: write {adj}"), e))?;
    Ok(())
}

pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("getcwd", ".", e))?
            .join(path)
    };
    state::write_atomic(&path, pid.to_string().as_bytes())
}

/// Sends the seccomp listener fd to `linux.seccomp.listenerPath` with the container
/// process state, as runtime-spec's config-linux.md describes.
pub(crate) fn send_to_seccomp_agent(
    bundle: &Bundle,
    st: &State,
    fd: std::os::fd::OwnedFd,
) -> Result<()> {
    let seccomp = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref());
    let path = seccomp
        .and_then(|s| s.listener_path().clone())
        .ok_or_else(|| Error::config("linux.seccomp.listenerPath", "missing"))?;
    let metadata = seccomp
        .and_then(|s| s.listener_metadata().clone())
        .unwrap_or_default();
    let msg = serde_json::json!({
        "ociVersion": st.oci_version,
        "fds": ["seccompFd"],
        "pid": st.pid,
        "metadata": metadata,
        "state": serde_json::from_str::<serde_json::Value>(&hook_state(st, "creating"))
            .unwrap_or_default(),
    })
    .to_string();
    let sock = crate::fdpass::connect(&path, "linux.seccomp.listenerPath")?;
    crate::fdpass::send_fd(
        sock.as_raw_fd(),
        fd.as_raw_fd(),
        msg.as_bytes(),
        "the seccomp listener to listenerPath",
    )
}

/// The ids of the mounts whose mount point is `path`.
fn mounts_at(path: &Path) -> Vec<u32> {
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
fn detach_host_mounts(rootfs: &Path, before: &[u32]) {
    for _ in 0..16 {
        if mounts_at(rootfs).iter().all(|id| before.contains(id)) {
            return;
        }
        if let Err(e) = nix::mount::umount2(rootfs, nix::mount::MntFlags::MNT_DETACH) {
            logging::warn(&format!("detach the mounts on {}: {e}", rootfs.display()));
            return;
        }
    }
}

/// The state JSON hooks read on stdin.
pub(crate) fn hook_state(st: &State, status: &str) -> String {
    let mut v = serde_json::json!({
        "ociVersion": st.oci_version,
        "id": st.id,
        "status": status,
        "pid": st.pid,
        "bundle": st.bundle,
    });
    if !st.annotations.is_empty() {
        v["annotations"] = serde_json::json!(st.annotations);
    }
    v.to_string()
}

/// The container's status now.
pub fn status(root: &Root, st: &State) -> Status {
    if !st.init_alive() {
        return Status::Stopped;
    }
    if root.dir(&st.id).join(state::FIFO).exists() {
        return Status::Created;
    }
    if st
        .cgroup
        .as_ref()
        .is_some_and(|c| c.is_frozen().unwrap_or(false))
    {
        return Status::Paused;
    }
    Status::Running
}

/// `state ID`: runc's JSON.
pub fn state_json(root: &Root, id: &str) -> Result<String> {
    let st = root.load(id)?;
    let status = status(root, &st);
    let report = Report {
        oci_version: &st.oci_version,
        id: &st.id,
        pid: if status == Status::Stopped { 0 } else { st.pid },
        status,
        bundle: &st.bundle,
        rootfs: &st.rootfs,
        created: &st.created,
        owner: &st.owner,
        annotations: &st.annotations,
    };
    serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))
}

/// `start ID`: releases the init blocked on the exec fifo.
pub fn start(root: &Root, id: &str) -> Result<()> {
    release(root, &root.load(id)?)
}

/// Opens the exec fifo of a created container, then runs the poststart hooks.
fn release(root: &Root, st: &State) -> Result<()> {
    let id = st.id.as_str();
    let s = status(root, st);
    if s != Status::Created {
        return Err(Error::State {
            id: id.into(),
            status: s.to_string(),
            msg: "only a created container can be started".into(),
        });
    }
    let fifo_path = root.dir(id).join(state::FIFO);
    let fifo = nix::fcntl::open(
        &fifo_path,
        OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ENXIO => Error::State {
            id: id.into(),
            status: "stopped".into(),
            msg: "its init is no longer waiting".into(),
        },
        e => Error::sys(format!("open {}", fifo_path.display()), e),
    })?;
    nix::unistd::write(&fifo, b"0").map_err(|e| Error::sys("write the exec fifo", e))?;
    let _ = std::fs::remove_file(&fifo_path);
    drop(fifo);
    if let Some(list) = st.hooks.as_ref().and_then(|h| h.poststart().clone()) {
        let json = hook_state(st, "running");
        if let Err(e) = hooks::run_all("poststart", &list, &json) {
            logging::warn(&e.to_string());
        }
    }
    Ok(())
}

/// Parses a signal as runc accepts it: `9`, `KILL` or `SIGKILL`.
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| Error::Invalid(format!("unknown signal {s:?}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map_err(|_| Error::Invalid(format!("unknown signal {s:?}")))
}

/// `kill ID SIGNAL [--all]`.
pub fn kill(root: &Root, id: &str, sig: Signal, all: bool) -> Result<()> {
    let st = root.load(id)?;
    let s = status(root, &st);
    if s == Status::Stopped {
        return Err(Error::State {
            id: id.into(),
            status: s.to_string(),
            msg: "container not running".into(),
        });
    }
    if all {
        if let Some(cg) = &st.cgroup {
            for p in cg.pids()? {
                let _ = send_signal(Pid::from_raw(p), sig);
            }
            if s == Status::Paused && sig == Signal::SIGKILL {
                let _ = cg.thaw();
            }
            return Ok(());
        }
    }
    send_signal(Pid::from_raw(st.pid), sig).map_err(|e| match e {
        Errno::ESRCH => Error::State {
            id: id.into(),
            status: "stopped".into(),
            msg: "no such process".into(),
        },
        e => Error::sys(format!("kill {} {sig}", st.pid), e),
    })
}

/// `delete ID [--force]`.
pub fn delete(root: &Root, id: &str, force: bool) -> Result<()> {
    let st = match root.load(id) {
        Ok(st) => st,
        Err(Error::NotFound(_)) if force => {
            // A create that died before writing its state may leave the directory.
            return root.remove(id);
        }
        Err(e) => return Err(e),
    };
    let s = status(root, &st);
    if s != Status::Stopped {
        if !force {
            return Err(Error::State {
                id: id.into(),
                status: s.to_string(),
                msg: "only a stopped container can be deleted; use --force to kill it first".into(),
            });
        }
        kill_and_wait(&st)?;
    }
    destroy(root, &st)
}

fn kill_and_wait(st: &State) -> Result<()> {
    let cg = st.cgroup.as_ref();
    let mut targets = vec![st.pid];
    if !st.own_pid_ns {
        if let Some(cg) = &cg {
            targets.extend(cg.pids().unwrap_or_default());
        }
    }
    for p in &targets {
        let _ = send_signal(Pid::from_raw(*p), Signal::SIGKILL);
    }
    if let Some(cg) = &cg {
        let _ = cg.thaw();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut delay = Duration::from_micros(200);
    while st.init_alive() {
        if Instant::now() > deadline {
            return Err(Error::Invalid(format!(
                "container {}: pid {} did not die after SIGKILL",
                st.id, st.pid
            )));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(20));
    }
    Ok(())
}

/// Removes what create made: runs poststop hooks, the cgroup, the state directory.
fn destroy(root: &Root, st: &State) -> Result<()> {
    if let Some(before) = &st.host_mounts {
        detach_host_mounts(&st.rootfs, before);
    }
    if let Some(cg) = &st.cgroup {
        cg.destroy()?;
    }
    root.remove(&st.id)?;
    if let Some(list) = st.hooks.as_ref().and_then(|h| h.poststop().clone()) {
        let json = hook_state(st, "stopped");
        if let Err(e) = hooks::run_all("poststop", &list, &json) {
            logging::warn(&e.to_string());
        }
    }
    Ok(())
}

/// `list`: (id, pid, status, bundle, created, owner) of each container.
pub fn list(root: &Root) -> Result<Vec<(State, Status)>> {
    let mut out = vec![];
    for id in root.list()? {
        if let Ok(st) = root.load(&id) {
            let s = status(root, &st);
            out.push((st, s));
        }
    }
    Ok(out)
}

/// `run`: create, start, and unless detached wait for the process and delete the
/// container; returns the exit code (128+signal when killed).
pub fn run(root: &Root, opts: &CreateOptions, detach: bool) -> Result<i32> {
    if !detach {
        // The init may be a grandchild (after a fork into a joined pid namespace):
        // become its subreaper so its exit status comes back here.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
    }
    let forward = forwarded_signals();
    if !detach {
        forward
            .thread_block()
            .map_err(|e| Error::sys("block signals", e))?;
    }
    // The state just written is used as it is: no reload between the steps.
    let st = create(root, opts)?;
    if let Err(e) = release(root, &st) {
        let _ = delete(root, &opts.id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let code = wait_forwarding(Pid::from_raw(st.pid), &forward);
    if st.init_alive() {
        kill_and_wait(&st)?;
    }
    destroy(root, &st)?;
    code
}

pub(crate) fn forwarded_signals() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCONT,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

pub(crate) fn wait_forwarding(pid: Pid, set: &nix::sys::signal::SigSet) -> Result<i32> {
    let sfd =
        nix::sys::signalfd::SignalFd::with_flags(set, nix::sys::signalfd::SfdFlags::SFD_CLOEXEC)
            .map_err(|e| Error::sys("signalfd", e))?;
    loop {
        // Reap whatever is ready first: the init may have exited before we got here.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, c)) if p == pid => return Ok(c),
                Ok(WaitStatus::Signaled(p, s, _)) if p == pid => return Ok(128 + s as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(Error::sys("waitpid", e)),
            }
        }
        match sfd.read_signal() {
            Ok(Some(info)) => {
                let signo = info.ssi_signo as i32;
                if signo != libc::SIGCHLD {
                    if let Ok(sig) = Signal::try_from(signo) {
                        let _ = send_signal(pid, sig);
                    }
                }
            }
            Ok(None) => {}
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("read signalfd", e)),
        }
    }
}
