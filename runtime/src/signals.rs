//! Waiting for a container's process while passing the caller's signals on to it, as
//! `run` and `exec` do in the foreground (runc forwards the same set).

use nix::errno::Errno;
use nix::sys::signal::{kill as send_signal, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// The signals a foreground `run` or `exec` passes on to the process (blocked in the
/// caller, read from a signalfd), with SIGCHLD to learn of its exit.
pub fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
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

/// Waits for `pid` to exit, forwarding every signal of `set` (blocked by the caller)
/// that arrives meanwhile; returns its exit code, 128+signal when killed.
pub fn wait_forwarding(pid: Pid, set: &SigSet) -> Result<i32> {
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
