//! Host services plinth-init runs and keeps running (containerd and kubelet on a joining
//! node): each started with a known environment, its output streamed to the server line
//! by line (`service/NAME/stdout`, `service/NAME/stderr`), every start and exit a
//! `service` event, and started again after a back-off that doubles from 1 s to 30 s and
//! starts over once a run has lasted a minute.

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::init::pid1;
use crate::schema::{EventKind, LogLine};

/// The PATH services get: the kernel gives PID 1 none, and kubelet and containerd find
/// `mount`, `iptables` and the shim through it.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);
const STEADY: Duration = Duration::from_secs(60);

/// One service.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its name in events and log sources (lower case, at most 12 characters).
    pub name: &'static str,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// The services running now, by name (pid, and the reaper's mark before it started):
/// what [`Running::stop`] stops, in the order the node needs, once their supervisors
/// are dropped.
#[derive(Debug, Clone, Default)]
pub struct Running(Rc<RefCell<HashMap<&'static str, (i32, u64)>>>);

/// How a service stopped by [`Running::stop`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoppedService {
    /// Its name.
    pub name: &'static str,
    /// How long it took.
    pub took: Duration,
    /// Whether it outlived its time and was killed.
    pub killed: bool,
    /// How it ended (`exit N`, `signal N`), or why that is not known.
    pub ended: String,
}

impl Running {
    /// Stops `name` if it runs: SIGTERM, then SIGKILL after `patience`. Only for a service
    /// whose supervisor is gone (it would start it again).
    pub async fn stop(&self, name: &'static str, patience: Duration) -> Option<StoppedService> {
        let (pid, since) = self.0.borrow_mut().remove(name)?;
        let started = Instant::now();
        let target = nix::unistd::Pid::from_raw(pid);
        // It may have ended (and been reaped) after its supervisor last looked: its pid
        // may be another process's by now. Looked at with no await before the signal.
        if let Some(ended) = ended_already(pid, since) {
            return Some(StoppedService {
                name,
                took: started.elapsed(),
                killed: false,
                ended: describe(ended),
            });
        }
        let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
        let mut killed = false;
        let ended = match tokio::time::timeout(patience, wait_pid(pid, since)).await {
            Ok(e) => e,
            Err(_) => {
                killed = true;
                let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
                match tokio::time::timeout(Duration::from_secs(5), wait_pid(pid, since)).await {
                    Ok(e) => e,
                    Err(_) => Err(std::io::Error::other("still there 5 s after SIGKILL")),
                }
            }
        };
        Some(StoppedService {
            name,
            took: started.elapsed(),
            killed,
            ended: describe(ended),
        })
    }
}

fn describe(ended: std::io::Result<Ended>) -> String {
    match ended {
        Ok(Ended::Code(c)) => format!("exit {c}"),
        Ok(Ended::Signal(s)) => format!("signal {s}"),
        Err(e) => format!("waiting for it: {e}"),
    }
}

/// Runs `spec` for as long as the returned future is polled, starting it again whenever
/// it ends; the process running now is in `running`. The process outlives a dropped
/// future: at shutdown the node stops it ([`Running::stop`]), or PID 1 with every
/// process.
pub async fn supervise(
    spec: Spec,
    events: mpsc::UnboundedSender<(EventKind, Map<String, Value>)>,
    logs: mpsc::Sender<LogLine>,
    running: Running,
) {
    let mut delay = FIRST_DELAY;
    loop {
        let started = Instant::now();
        // std's Command, not tokio's: tokio reaps its children itself, racing PID 1's
        // reaper for their status (and then signalling a pid that may be reused).
        let mut cmd = std::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut d = Map::new();
        d.insert("service".into(), json!(spec.name));
        let since = pid1::mark();
        match cmd.spawn() {
            Ok(mut child) => {
                let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
                running.0.borrow_mut().insert(spec.name, (pid, since));
                d.insert("state".into(), json!("running"));
                d.insert("pid".into(), json!(child.id()));
                let _ = events.send((EventKind::Service, d));
                let out = child
                    .stdout
                    .take()
                    .map(|o| lines(OwnedFd::from(o), spec.name, "stdout", logs.clone()));
                let err = child
                    .stderr
                    .take()
                    .map(|e| lines(OwnedFd::from(e), spec.name, "stderr", logs.clone()));
                // The child's handle is not needed to wait: dropping it neither kills
                // nor reaps.
                drop(child);
                let status = wait_pid(pid, since).await;
                running.0.borrow_mut().remove(spec.name);
                // The output to its end: the last lines say why it stopped.
                for stream in [out, err].into_iter().flatten() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), stream).await;
                }
                if started.elapsed() >= STEADY {
                    delay = FIRST_DELAY;
                }
                let mut d = Map::new();
                d.insert("service".into(), json!(spec.name));
                d.insert("state".into(), json!("exited"));
                match status {
                    Ok(Ended::Code(code)) => {
                        d.insert("exitCode".into(), json!(code));
                    }
                    Ok(Ended::Signal(sig)) => {
                        d.insert("signal".into(), json!(sig));
                    }
                    Err(e) => {
                        d.insert("error".into(), json!(format!("waiting for it: {e}")));
                    }
                }
                d.insert("restartInSecs".into(), json!(delay.as_secs()));
                let _ = events.send((EventKind::Service, d));
            }
            Err(e) => {
                d.insert("state".into(), json!("failed"));
                d.insert(
                    "error".into(),
                    json!(format!("starting {}: {e}", spec.program.display())),
                );
                d.insert("restartInSecs".into(), json!(delay.as_secs()));
                let _ = events.send((EventKind::Error, d));
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

/// How a run ended.
enum Ended {
    Code(i32),
    Signal(i32),
}

/// How the child `pid` ended, if it has, without waiting.
fn ended_already(pid: i32, since: u64) -> Option<std::io::Result<Ended>> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus};
    let status = if std::process::id() == 1 {
        pid1::try_exited(pid, since)?
    } else {
        match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return None,
            Ok(s) => s,
            Err(e) => return Some(Err(e.into())),
        }
    };
    Some(ended_from(status))
}

fn ended_from(status: nix::sys::wait::WaitStatus) -> std::io::Result<Ended> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, c) => Ok(Ended::Code(c)),
        WaitStatus::Signaled(_, s, _) => Ok(Ended::Signal(s as i32)),
        other => Err(std::io::Error::other(format!(
            "an unexpected status {other:?}"
        ))),
    }
}

/// Waits for the child `pid` (started after the reaper's mark `since`): through PID
/// 1's reaper when this is PID 1 (every wait there goes through it), else with waitpid
/// on it alone, polled (tests): a wait that blocks would go on after its future is
/// dropped and take the status from the next waiter ([`Running::stop`]).
async fn wait_pid(pid: i32, since: u64) -> std::io::Result<Ended> {
    if std::process::id() == 1 {
        return ended_from(pid1::exited(pid, since).await);
    }
    loop {
        if let Some(ended) = ended_already(pid, since) {
            return ended;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Streams the pipe `fd`'s lines as `service/NAME/STREAM`; a line the queue has no room
/// for is dropped (the server counts what it drops, not the node).
fn lines(
    fd: OwnedFd,
    name: &'static str,
    stream: &'static str,
    logs: mpsc::Sender<LogLine>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let source = format!("service/{name}/{stream}");
        let mut r = BufReader::new(pipe).lines();
        while let Ok(Some(text)) = r.next_line().await {
            let _ = logs.try_send(LogLine {
                source: source.clone(),
                text,
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_started_again_and_its_lines_and_exits_reported() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (etx, mut erx) = mpsc::unbounded_channel();
        let (ltx, mut lrx) = mpsc::channel(16);
        let spec = Spec {
            name: "probe",
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo \"out $PATH\"; echo err >&2; exit 3".into(),
            ],
        };
        rt.block_on(async {
            let sup = supervise(spec, etx, ltx, Running::default());
            // Two runs: 1 s back-off between them.
            let _ = tokio::time::timeout(Duration::from_millis(1800), sup).await;
        });
        let mut events = Vec::new();
        while let Ok(e) = erx.try_recv() {
            events.push(e);
        }
        let states: Vec<_> = events
            .iter()
            .map(|(_, d)| d["state"].as_str().unwrap_or("").to_string())
            .collect();
        assert_eq!(
            states,
            ["running", "exited", "running", "exited"],
            "{events:?}"
        );
        assert_eq!(events[1].1["exitCode"], 3);
        assert_eq!(events[1].1["restartInSecs"], 1);
        assert_eq!(events[3].1["restartInSecs"], 2);
        let mut lines = Vec::new();
        while let Ok(l) = lrx.try_recv() {
            lines.push((l.source, l.text));
        }
        assert!(lines.contains(&("service/probe/stdout".into(), format!("out {PATH}"))));
        assert!(lines.contains(&("service/probe/stderr".into(), "err".into())));
    }

    /// A service whose supervisor is gone, stopped: `script` runs as the service.
    fn stopped(script: &str, patience: Duration) -> (StoppedService, bool) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (etx, _erx) = mpsc::unbounded_channel();
        let (ltx, mut lrx) = mpsc::channel(16);
        let running = Running::default();
        let spec = Spec {
            name: "probe",
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        };
        rt.block_on(async {
            let sup = supervise(spec, etx, ltx, running.clone());
            // Until the shell says its trap is set.
            let up = async {
                while let Some(l) = lrx.recv().await {
                    if l.text == "up" {
                        break;
                    }
                }
            };
            tokio::select! {
                _ = sup => unreachable!("a supervisor never returns"),
                _ = tokio::time::timeout(Duration::from_secs(10), up) => {}
            }
            let (pid, _) = running.0.borrow()["probe"];
            let s = running.stop("probe", patience).await.expect("it ran");
            let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err();
            let again = running.stop("probe", patience).await;
            assert_eq!(again, None, "stopped twice");
            (s, gone)
        })
    }

    #[test]
    fn a_stopped_service_gets_sigterm_and_its_exit_is_told() {
        let (s, gone) = stopped(
            "trap 'exit 7' TERM; echo up; while :; do sleep 0.05; done",
            Duration::from_secs(5),
        );
        assert_eq!(s.ended, "exit 7", "{s:?}");
        assert!(!s.killed && gone, "{s:?}");
    }

    #[test]
    fn a_service_that_ignores_sigterm_is_killed_after_its_patience() {
        let (s, gone) = stopped(
            "trap '' TERM; echo up; while :; do sleep 0.05; done",
            Duration::from_millis(500),
        );
        assert_eq!(s.ended, "signal 9", "{s:?}");
        assert!(s.killed && gone, "{s:?}");
        assert!(s.took >= Duration::from_millis(500), "{s:?}");
    }
}
