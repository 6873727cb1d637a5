//! The container lifecycle, on the runtime's side: create, start, state, kill, delete,
//! run. Each is one short synchronous command over the state directory.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill as send_signal, Signal};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

mod cgroup;
mod create;

pub(crate) use create::send_listener;
pub use create::{create, CreateOptions};

use crate::error::{Error, Result};
use crate::hooks;
use crate::logging;
use crate::mount;
use crate::signals;
use crate::state::{self, Report, Root, State, Status};

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

/// Checks that the container is created, then releases its init ([`open_fifo`]).
fn release(root: &Root, st: &State) -> Result<()> {
    let s = status(root, st);
    if s != Status::Created {
        return Err(Error::State {
            id: st.id.clone(),
            status: s.to_string(),
            msg: "only a created container can be started".into(),
        });
    }
    open_fifo(root, st)
}

/// Opens the exec fifo, which lets the waiting init exec the container's process, then
/// runs the poststart hooks. `run` comes here straight from create, which returned
/// with the init waiting: if it died since, the fifo says so (ENXIO, no reader).
fn open_fifo(root: &Root, st: &State) -> Result<()> {
    let id = st.id.as_str();
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
        let json = st.hook_json("running").to_string();
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
        mount::detach_host_mounts(&st.rootfs, before);
    }
    if let Some(cg) = &st.cgroup {
        cg.destroy()?;
    }
    root.remove(&st.id)?;
    if let Some(list) = st.hooks.as_ref().and_then(|h| h.poststop().clone()) {
        let json = st.hook_json("stopped").to_string();
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

/// `list` as runc prints it: ids only (`quiet`), a JSON array, or a table.
pub fn list_text(root: &Root, format: &str, quiet: bool) -> Result<String> {
    if !quiet && format != "json" && format != "table" {
        return Err(Error::Invalid(format!(
            "--format: {format:?} is not table or json"
        )));
    }
    let all = list(root)?;
    let shown_pid = |st: &State, s: Status| if s == Status::Stopped { 0 } else { st.pid };
    let mut out = String::new();
    if quiet {
        for (st, _) in &all {
            out.push_str(&st.id);
            out.push('\n');
        }
    } else if format == "json" {
        let v: Vec<_> = all
            .iter()
            .map(|(st, s)| {
                serde_json::json!({
                    "ociVersion": st.oci_version, "id": st.id, "pid": shown_pid(st, *s),
                    "status": s.to_string(), "bundle": st.bundle, "rootfs": st.rootfs,
                    "created": st.created, "owner": st.owner,
                })
            })
            .collect();
        out = serde_json::to_string(&v).map_err(|e| Error::Invalid(e.to_string()))? + "\n";
    } else {
        out.push_str(&format!(
            "{:<12} {:<8} {:<10} {:<40} {:<30} OWNER\n",
            "ID", "PID", "STATUS", "BUNDLE", "CREATED"
        ));
        for (st, s) in &all {
            out.push_str(&format!(
                "{:<12} {:<8} {:<10} {:<40} {:<30} {}\n",
                st.id,
                shown_pid(st, *s),
                s,
                st.bundle.display(),
                st.created,
                st.owner
            ));
        }
    }
    Ok(out)
}

/// The flags of `run` beyond create's.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--detach`: return once the container runs.
    pub detach: bool,
    /// `--keep`: leave the stopped container for `delete` to remove.
    pub keep: bool,
    /// `--no-subreaper`: do not become the init's subreaper (as runc: an init that
    /// is not our child, after a fork into a joined pid namespace, is then not waited
    /// for).
    pub no_subreaper: bool,
}

/// `run`: create, start, and unless detached wait for the process and delete the
/// container (unless kept); returns the exit code (128+signal when killed).
pub fn run(root: &Root, opts: &CreateOptions, run: &RunOptions) -> Result<i32> {
    let detach = run.detach;
    if !detach && !run.no_subreaper {
        // The init may be a grandchild (after a fork into a joined pid namespace):
        // become its subreaper so its exit status comes back here.
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| Error::sys("prctl(PR_SET_CHILD_SUBREAPER)", e))?;
    }
    let forward = signals::forwarded();
    if !detach {
        forward
            .thread_block()
            .map_err(|e| Error::sys("block signals", e))?;
    }
    // The state just written is used as it is: no reload between the steps.
    let st = create(root, opts)?;
    if let Err(e) = open_fifo(root, &st) {
        let _ = delete(root, &opts.id, true);
        return Err(e);
    }
    if detach {
        return Ok(0);
    }
    let code = signals::wait_forwarding(Pid::from_raw(st.pid), &forward);
    if st.init_alive() {
        kill_and_wait(&st)?;
    }
    if !run.keep {
        destroy(root, &st)?;
    }
    code
}
