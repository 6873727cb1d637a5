//! `exec`: another process in a running container. The runtime forks a child that
//! joins the container's namespaces and cgroup; it forks once more so that the new
//! process is inside the container's pid namespace, and that grandchild finishes like
//! the container's own init (fds, rlimits, cwd, seccomp, capabilities, user) and
//! execs. Errors come back over the sync channel; its end of the channel closes at
//! execve, which is how the runtime learns the exec happened.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sched::CloneFlags;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxCapabilities, Process};

use crate::capabilities::Sets;
use crate::config::{self, Bundle};
use crate::container;
use crate::error::{Error, Result};
use crate::init;
use crate::jsonpath;
use crate::namespaces::{self, Forked};
use crate::signals;
use crate::state::{self, Root, Status};
use crate::sync::{self, Channel, Msg};
use crate::terminal;

/// The flags of `exec`, as runc has them.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Container id.
    pub id: String,
    /// `--process FILE`: a runtime-spec `process` object (JSON) instead of the flags.
    pub process: Option<PathBuf>,
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `--detach`.
    pub detach: bool,
    /// `--tty`.
    pub tty: bool,
    /// `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// `--cwd`.
    pub cwd: Option<PathBuf>,
    /// `--env KEY=VALUE`, repeated.
    pub env: Vec<String>,
    /// `--user UID[:GID]`.
    pub user: Option<String>,
    /// `--additional-gids`, repeated.
    pub additional_gids: Vec<u32>,
    /// `--cap CAP`, repeated: added to the bounding, effective and permitted sets.
    pub caps: Vec<String>,
    /// `--no-new-privs`.
    pub no_new_privs: bool,
    /// `--preserve-fds N`.
    pub preserve_fds: i32,
    /// `--ignore-paused`.
    pub ignore_paused: bool,
    /// `--cgroup [CONTROLLER:]PATH`: a sub-cgroup of the container's to run in.
    pub cgroup: Option<String>,
}

/// Runs `exec`; returns the process's exit code (128+signal when killed), or 0 with
/// `--detach` once it has started.
pub fn exec(root: &Root, o: &ExecOptions) -> Result<i32> {
    let st = root.load(&o.id)?;
    let status = container::status(root, &st);
    match status {
        Status::Running | Status::Created => {}
        Status::Paused if o.ignore_paused => {}
        s => {
            return Err(Error::State {
                id: o.id.clone(),
                status: s.to_string(),
                msg: if s == Status::Paused {
                    "cannot exec in a paused container (use --ignore-paused)".into()
                } else {
                    "container not running: cannot exec".into()
                },
            })
        }
    }
    let bundle = config::load(&st.bundle)?;
    let process = build_process(&bundle, o)?;
    let terminal = process.terminal() == Some(true);
    if terminal && o.console_socket.is_none() {
        return Err(Error::Invalid(
            "--tty: a terminal needs --console-socket".into(),
        ));
    }
    if !terminal && o.console_socket.is_some() {
        return Err(Error::Invalid(
            "--console-socket: only with --tty (or process.terminal)".into(),
        ));
    }
    let caps = Sets::from_config(process.capabilities().as_ref())?;
    let linux = bundle.spec.linux().as_ref();
    let cache = root.seccomp_cache();
    let seccomp = linux
        .and_then(|l| l.seccomp().as_ref())
        .map(|p| crate::seccomp::cache::compile(p, bundle.seccomp_json.as_deref(), &cache))
        .transpose()?;
    let ns = namespace_files(&bundle, st.pid);
    let console = match &o.console_socket {
        Some(p) => Some(terminal::connect_console_socket(p)?),
        None => None,
    };

    if !o.detach {
        // The process is our grandchild: become its subreaper to collect its status.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
    }
    let forward = signals::forwarded();
    if !o.detach {
        forward
            .thread_block()
            .map_err(|e| Error::sys("block signals", e))?;
    }

    let (ours, theirs) = sync::pair()?;
    // Born in the container's cgroup where the host allows it, unless a sub-cgroup is
    // asked for: then moved there.
    let born_in = st.cgroup.as_ref().filter(|_| o.cgroup.is_none());
    let (forked, born_inside) = namespaces::fork_in_cgroup(CloneFlags::empty(), born_in)?;
    let child = match forked {
        Forked::Child => {
            drop(ours);
            crate::sealed::release_view();
            let ch = theirs;
            let r = child_side(
                &ch,
                &ns,
                &process,
                bundle
                    .spec
                    .linux()
                    .as_ref()
                    .and_then(|l| l.personality().as_ref()),
                &caps,
                seccomp.as_ref(),
                console,
                o.preserve_fds,
            );
            if let Err(e) = r {
                let _ = ch.send(&Msg::Error(e.to_string()));
            }
            crate::process::exit_child(1)
        }
        Forked::Parent(pid) => pid,
    };
    drop(theirs);
    drop(console);
    let mut guard = KillOnError(vec![child]);
    let tasks = match (&st.cgroup, &o.cgroup) {
        (Some(cg), Some(sub)) => cg.admit(child.as_raw(), Some(sub), false)?,
        (Some(cg), None) => cg.admit(child.as_raw(), None, born_inside)?,
        (None, Some(sub)) => {
            return Err(Error::Invalid(format!(
                "--cgroup {sub:?}: the container has no cgroup of its own"
            )))
        }
        _ => vec![],
    };
    // If the process ended meanwhile, its own error is read below.
    ours.send_unless_gone(&Msg::Go, &tasks)?;
    // The process enters the container now: the runtime would only wait.
    crate::sealed::release_view();

    let mut pid = None;
    loop {
        match ours.recv()? {
            Some(Msg::Pid(p)) => {
                let _ = waitpid(child, None);
                guard.0 = vec![Pid::from_raw(p)];
                pid = Some(Pid::from_raw(p));
            }
            Some(Msg::SeccompFd) => {
                let fd = crate::fdpass::recv_fd(ours.0.as_raw_fd(), "the seccomp listener")?;
                let mut s = st.clone();
                if let Some(p) = pid {
                    s.pid = p.as_raw();
                }
                container::send_listener(&bundle, &s, fd)?;
                ours.send(&Msg::Go)?;
            }
            Some(Msg::Error(e)) => return Err(Error::Invalid(e)),
            Some(m) => {
                return Err(Error::Invalid(format!(
                    "unexpected message from the exec process: {m:?}"
                )))
            }
            // The grandchild's end closed at execve.
            None => break,
        }
    }
    let Some(pid) = pid else {
        return Err(Error::Invalid(
            "the exec process ended before it started".into(),
        ));
    };
    if let Some(p) = &o.pid_file {
        state::write_pid_file(p, pid.as_raw())?;
    }
    guard.0.clear();
    if o.detach {
        return Ok(0);
    }
    signals::wait_forwarding(pid, &forward)
}

/// Kills the half-started process when exec fails after the fork.
struct KillOnError(Vec<Pid>);

impl Drop for KillOnError {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = nix::sys::signal::kill(*p, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(*p, None);
        }
    }
}

/// The container's namespaces to join, as /proc/PID/ns files: every type its config
/// names (new or joined); the others it shares with the host, and so do we.
fn namespace_files(bundle: &Bundle, pid: i32) -> Vec<(CloneFlags, PathBuf)> {
    let mut out = vec![];
    let namespaces = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref());
    for n in namespaces.unwrap_or(&[]) {
        let f = namespaces::flag(n.typ());
        out.push((
            f,
            PathBuf::from(format!("/proc/{pid}/ns/{}", namespaces::proc_name(n.typ()))),
        ));
    }
    // The user namespace first (it owns the others and grants the rights to join
    // them), the mount namespace last (joining it moves our root).
    out.sort_by_key(|(f, _)| {
        if *f == CloneFlags::CLONE_NEWUSER {
            0
        } else if *f == CloneFlags::CLONE_NEWNS {
            2
        } else {
            1
        }
    });
    out
}

// The exec'd process's whole setup, passed from exec() in one place.
#[allow(clippy::too_many_arguments)]
fn child_side(
    ch: &Channel,
    ns: &[(CloneFlags, PathBuf)],
    process: &Process,
    personality: Option<&oci_spec::runtime::LinuxPersonality>,
    caps: &Sets,
    seccomp: Option<&crate::seccomp::Program>,
    console: Option<OwnedFd>,
    preserve_fds: i32,
) -> Result<()> {
    init::initial_affinity(Some(process))?;
    // The process's own oom_score_adj (--process's, else the container's), as runc
    // gives it; written while this process is still dumpable (its /proc files are then
    // its owner's, which an unprivileged runtime needs) and has joined nothing yet.
    if let Some(adj) = process.oom_score_adj() {
        crate::procfs::write_oom_score_adj(nix::unistd::getpid(), adj)?;
    }
    // Nothing in the container may ptrace or open /proc files of this process while
    // it holds the runtime's fds (CVE-2016-9962).
    nix::sys::prctl::set_dumpable(false).map_err(|e| Error::sys("prctl(PR_SET_DUMPABLE)", e))?;
    crate::cgroups::join_self(&ch.expect_with_fds(&Msg::Go)?)?;
    // Open every namespace before joining any: joining the mount namespace hides the
    // host's /proc.
    let mut fds = vec![];
    for (f, path) in ns {
        fds.push((*f, path, namespaces::open_ns(path, *f)?));
    }
    let mut userns = false;
    for (f, path, fd) in &fds {
        nix::sched::setns(fd, *f).map_err(|e| {
            Error::sys(
                format!("setns {} ({})", path.display(), namespaces::flag_name(*f)),
                e,
            )
        })?;
        userns |= *f == CloneFlags::CLONE_NEWUSER;
    }
    drop(fds);
    if userns {
        // Become the namespace's root before the user switch, as the init did.
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(|e| Error::sys("setresgid 0 in the user namespace", e))?;
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(|e| Error::sys("setresuid 0 in the user namespace", e))?;
    }
    // A joined pid namespace applies to children only: fork into it.
    match namespaces::fork_with(CloneFlags::empty())? {
        Forked::Parent(grandchild) => {
            ch.send(&Msg::Pid(grandchild.as_raw()))?;
            // SAFETY: this intermediate process ends here; the grandchild carries on.
            unsafe { libc::_exit(0) }
        }
        Forked::Child => {}
    }
    nix::sys::prctl::set_dumpable(false).map_err(|e| Error::sys("prctl(PR_SET_DUMPABLE)", e))?;
    nix::sys::signal::SigSet::empty()
        .thread_set_mask()
        .map_err(|e| Error::sys("sigprocmask(SIG_SETMASK, {})", e))?;
    if let Some(sock) = console {
        let size = process
            .console_size()
            .map(|s| (s.width() as u16, s.height() as u16));
        terminal::hand_over(&sock, size, false)?;
    }
    let exec = init::enter_process(process, personality, caps, seccomp, ch, preserve_fds)?;
    Err(exec.exec())
}

/// The process to run: `--process FILE`, or the container's own process with the
/// flags applied (args, cwd, env, user, capabilities, no_new_privs, terminal).
fn build_process(bundle: &Bundle, o: &ExecOptions) -> Result<Process> {
    if let Some(path) = &o.process {
        let text = std::fs::read(path).map_err(|e| Error::io("--process: read", path, e))?;
        let mut p: Process = serde_json::from_slice(&text).map_err(|e| {
            Error::Invalid(format!(
                "--process {}: {}: {}",
                path.display(),
                jsonpath::error_path(&text, &e),
                e
            ))
        })?;
        if p.oom_score_adj().is_none() {
            // As runc: the container's, unless the process names its own.
            let own = bundle
                .spec
                .process()
                .as_ref()
                .and_then(|c| c.oom_score_adj());
            p.set_oom_score_adj(own);
        }
        if p.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(Error::Invalid(format!(
                "--process {}: args: at least the executable is required",
                path.display()
            )));
        }
        return Ok(p);
    }
    if o.args.is_empty() {
        return Err(Error::Invalid(
            "exec: no command given (ID COMMAND [ARG...], or --process FILE)".into(),
        ));
    }
    let mut p = bundle.spec.process().clone().unwrap_or_default();
    p.set_args(Some(o.args.clone()));
    p.set_terminal(Some(o.tty));
    if !o.tty {
        p.set_console_size(None);
    }
    if let Some(cwd) = &o.cwd {
        if !cwd.is_absolute() {
            return Err(Error::Invalid(format!(
                "--cwd {}: not an absolute path",
                cwd.display()
            )));
        }
        p.set_cwd(cwd.clone());
    }
    let mut env = p.env().clone().unwrap_or_default();
    for kv in &o.env {
        let Some((k, _)) = kv.split_once('=') else {
            return Err(Error::Invalid(format!("--env {kv:?}: not KEY=VALUE")));
        };
        env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k));
        env.push(kv.clone());
    }
    p.set_env(Some(env));
    let mut user = p.user().clone();
    if let Some(u) = &o.user {
        let (uid, gid) = parse_user(u)?;
        user.set_uid(uid);
        // Without a group the config's stays, as runc keeps it.
        user.set_gid(gid.unwrap_or(user.gid()));
    }
    if !o.additional_gids.is_empty() {
        user.set_additional_gids(Some(o.additional_gids.clone()));
    }
    p.set_user(user);
    if !o.caps.is_empty() {
        let mut c: LinuxCapabilities = p.capabilities().clone().unwrap_or_default();
        for name in &o.caps {
            let cap: oci_spec::runtime::Capability =
                serde_json::from_value(serde_json::Value::String(name.to_ascii_uppercase()))
                    .map_err(|_| Error::Invalid(format!("--cap {name}: unknown capability")))?;
            // Bounding, effective and permitted only: never inheritable, so that a
            // file capability cannot pick it up (CVE-2022-29162).
            let add = |set: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = set.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            let (b, e, pm) = (add(c.bounding()), add(c.effective()), add(c.permitted()));
            c.set_bounding(b);
            c.set_effective(e);
            c.set_permitted(pm);
        }
        p.set_capabilities(Some(c));
    }
    if o.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    Ok(p)
}

/// Parses `--user UID[:GID]` (numbers only: names would need the container's
/// /etc/passwd, which the runtime does not read).
fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let bad = || Error::Invalid(format!("--user {s:?}: expected UID[:GID] as numbers"));
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let uid = u.parse().map_err(|_| bad())?;
    let gid = match g {
        Some(g) => Some(g.parse().map_err(|_| bad())?),
        None => None,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_flag_parses_uid_and_gid() {
        assert_eq!(parse_user("1").ok(), Some((1, None)));
        assert_eq!(parse_user("1000:100").ok(), Some((1000, Some(100))));
        assert!(parse_user("root").is_err());
        assert!(parse_user("1:x").is_err());
    }

    #[test]
    fn namespace_files_put_user_first_and_mount_last() {
        let spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.2.0", "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "user"}, {"type": "network"}]}
        }))
        .expect("spec");
        let b = Bundle {
            dir: PathBuf::from("/b"),
            rootfs: PathBuf::from("/b/rootfs"),
            namespaces: crate::namespaces::Plan::from_config(
                spec.linux()
                    .as_ref()
                    .and_then(|l| l.namespaces().as_deref())
                    .unwrap_or(&[]),
            )
            .expect("plan"),
            spec,
            seccomp_json: None,
        };
        let ns = namespace_files(&b, 42);
        let names: Vec<String> = ns.iter().map(|(_, p)| p.display().to_string()).collect();
        assert_eq!(names.first().map(String::as_str), Some("/proc/42/ns/user"));
        assert_eq!(names.last().map(String::as_str), Some("/proc/42/ns/mnt"));
        assert_eq!(names.len(), 4);
    }
}
