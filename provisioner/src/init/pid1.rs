//! The duties of PID 1: signals (through a signalfd, so they are handled in the main loop
//! rather than in async handlers), reaping orphans, and an orderly shutdown.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{sys, Result};
use crate::init::console::log;

/// How the machine should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// reboot(RB_AUTOBOOT).
    Reboot,
    /// reboot(RB_POWER_OFF).
    Poweroff,
}

/// The signals PID 1 acts on, delivered through a signalfd.
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    /// Blocks the signals PID 1 handles and opens a signalfd for them. Ctrl-alt-del is
    /// turned into SIGINT for us rather than an immediate reboot by the kernel.
    pub fn install() -> Result<Signals> {
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR2,
            Signal::SIGPWR,
            Signal::SIGCHLD,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(sys("blocking signals"))?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(sys("signalfd"))?;
        if let Err(e) = set_cad_enabled(false) {
            log(&format!("cannot route ctrl-alt-del to SIGINT: {e}"));
        }
        Ok(Signals { fd })
    }

    /// Waits up to `timeout` for a signal, reaping children on SIGCHLD. Returns the stop
    /// requested, if any: SIGTERM and SIGINT (ctrl-alt-del) reboot, SIGUSR2 and SIGPWR power off.
    pub fn wait(&mut self, timeout: Duration) -> Option<Stop> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(Some(info)) = self.fd.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => reap(),
                    Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                        log(&format!(
                            "signal {} from pid {}: rebooting",
                            info.ssi_signo, info.ssi_pid
                        ));
                        return Some(Stop::Reboot);
                    }
                    Ok(Signal::SIGUSR2) | Ok(Signal::SIGPWR) => {
                        log(&format!(
                            "signal {} from pid {}: powering off",
                            info.ssi_signo, info.ssi_pid
                        ));
                        return Some(Stop::Poweroff);
                    }
                    _ => {}
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(ms));
        }
    }
}

/// Reaps every exited child without blocking.
pub fn reap() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => {}
        }
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
