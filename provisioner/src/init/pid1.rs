//! The duties of PID 1: signals (tokio streams, handled in the agent's loop), reaping
//! orphans, and an orderly shutdown.

use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::Result;
use crate::init::console::log;

/// How the machine should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// reboot(RB_AUTOBOOT).
    Reboot,
    /// reboot(RB_POWER_OFF).
    Poweroff,
}

/// The signals PID 1 acts on, as tokio streams: the node agent's one loop waits on
/// them beside its timers and the server connection.
pub struct Signals {
    term: Signal_,
    int: Signal_,
    usr2: Signal_,
    pwr: Signal_,
    chld: Signal_,
}

type Signal_ = tokio::signal::unix::Signal;

impl Signals {
    /// Installs the handlers (inside a tokio runtime). Ctrl-alt-del is turned into
    /// SIGINT for us rather than an immediate reboot by the kernel.
    pub fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let on = |k: SignalKind, name: &str| {
            signal(k).map_err(|e| crate::error::Error::Net {
                what: format!("handling {name}"),
                source: e,
            })
        };
        let s = Signals {
            term: on(SignalKind::terminate(), "SIGTERM")?,
            int: on(SignalKind::interrupt(), "SIGINT")?,
            usr2: on(SignalKind::user_defined2(), "SIGUSR2")?,
            pwr: on(SignalKind::from_raw(libc::SIGPWR), "SIGPWR")?,
            chld: on(SignalKind::child(), "SIGCHLD")?,
        };
        if let Err(e) = set_cad_enabled(false) {
            log(&format!("cannot route ctrl-alt-del to SIGINT: {e}"));
        }
        Ok(s)
    }

    /// Waits for a stop request, reaping children on the way: SIGTERM and SIGINT
    /// (ctrl-alt-del) reboot, SIGUSR2 and SIGPWR power off.
    pub async fn stop(&mut self) -> Stop {
        loop {
            tokio::select! {
                _ = self.chld.recv() => reap(),
                _ = self.term.recv() => { log("signal 15 (SIGTERM): rebooting"); return Stop::Reboot }
                _ = self.int.recv() => { log("signal 2 (SIGINT): rebooting"); return Stop::Reboot }
                _ = self.usr2.recv() => { log("signal 12 (SIGUSR2): powering off"); return Stop::Poweroff }
                _ = self.pwr.recv() => { log("signal 30 (SIGPWR): powering off"); return Stop::Poweroff }
            }
        }
    }
}

/// How many exit statuses are kept for an [`exited`] that has not asked yet (orphans
/// reparented to PID 1 fill it too; the oldest go first).
const KEPT_EXITS: usize = 1024;

/// Exit statuses reaped, oldest first, each with its place in the order of reaping.
static EXITS: std::sync::Mutex<std::collections::VecDeque<(u64, i32, WaitStatus)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());
/// How many statuses have been reaped so far.
static REAPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn reaped() -> &'static tokio::sync::Notify {
    static N: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    N.get_or_init(tokio::sync::Notify::new)
}

/// A point in the order of reaping: take it before starting a process, and give it
/// to [`exited`], so that the status of an earlier process of the same pid (pids are
/// reused) is never taken for this one's.
pub fn mark() -> u64 {
    REAPED.load(std::sync::atomic::Ordering::SeqCst)
}

fn take_exit(pid: i32, since: u64) -> Option<WaitStatus> {
    let mut q = EXITS.lock().unwrap_or_else(|p| p.into_inner());
    let i = q.iter().position(|(n, p, _)| *p == pid && *n >= since)?;
    q.remove(i).map(|(_, _, s)| s)
}

/// The status of `pid` (started after the [`mark`] `since`) if it has ended, reaping
/// what has. `None`: it runs, and until the next reap its pid is its own, safe to signal
/// (PID 1's loop is one thread: nothing reaps between this and a `kill` with no await
/// between them).
pub fn try_exited(pid: i32, since: u64) -> Option<WaitStatus> {
    reap();
    take_exit(pid, since)
}

/// Reaps every exited child without blocking, keeping each status for [`exited`].
pub fn reap() {
    let mut any = false;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(s) => {
                if let Some(pid) = s.pid() {
                    let mut q = EXITS.lock().unwrap_or_else(|p| p.into_inner());
                    if q.len() == KEPT_EXITS {
                        q.pop_front();
                    }
                    let n = REAPED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    q.push_back((n, pid.as_raw(), s));
                    any = true;
                }
            }
        }
    }
    if any {
        reaped().notify_waiters();
    }
}

/// Waits until the reaper has collected `pid` (a child of PID 1, or an orphan it
/// inherited), reaped at or after `since` (a [`mark`] taken before the process was
/// started), and gives its status. Every wait for a process in PID 1 goes through
/// here: a waitpid of its own would race the reaper.
pub async fn exited(pid: i32, since: u64) -> WaitStatus {
    loop {
        let n = reaped().notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if let Some(s) = take_exit(pid, since) {
            return s;
        }
        // A status the reaper has not been woken for yet (no SIGCHLD handled): look.
        reap();
        if let Some(s) = take_exit(pid, since) {
            return s;
        }
        // Woken by the reaper; the timeout covers a SIGCHLD handler that could not be
        // installed.
        let _ = tokio::time::timeout(Duration::from_secs(1), n).await;
    }
}

/// Stops everything and reboots or powers off. Never returns: if reboot(2) fails there is
/// nothing better to do than say so and retry.
pub fn shutdown(stop: Stop) -> ! {
    log(&format!("shutting down ({stop:?}): stopping services"));
    // No supervised services yet: every other process is a service or its child.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        reap();
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Err(nix::Error::ECHILD) => break,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    reap();
    nix::unistd::sync();
    log("synced; calling reboot(2)");
    let mode = match stop {
        Stop::Reboot => RebootMode::RB_AUTOBOOT,
        Stop::Poweroff => RebootMode::RB_POWER_OFF,
    };
    loop {
        let Err(e) = reboot(mode);
        log(&format!("reboot(2) failed: {e}; retrying in 5s"));
        std::thread::sleep(Duration::from_secs(5));
    }
}
