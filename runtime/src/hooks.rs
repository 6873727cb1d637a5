//! OCI hooks: each runs as its own process with the container's state JSON on stdin,
//! with the environment and arguments the config gives, killed at its timeout.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

use oci_spec::runtime::Hook;

use crate::error::{os_text, Error, Result};

/// Runs `hooks` in order; the first failure stops the list and is returned.
pub fn run_all(kind: &'static str, hooks: &[Hook], state_json: &str) -> Result<()> {
    for h in hooks {
        run(kind, h, state_json)?;
    }
    Ok(())
}

/// Runs one hook and waits for it, up to its `timeout` seconds.
pub fn run(kind: &'static str, hook: &Hook, state_json: &str) -> Result<()> {
    let path = hook.path().display().to_string();
    let err = |msg: String| Error::Hook {
        kind,
        path: path.clone(),
        msg,
    };
    let mut cmd = Command::new(hook.path());
    let args = hook.args().clone().unwrap_or_default();
    if let Some((argv0, rest)) = args.split_first() {
        cmd.arg0(argv0).args(rest);
    }
    // A hook without `env` inherits the runtime's environment, as runc's do (Go's
    // exec.Cmd with a nil Env); `"env": []` gives it none.
    if let Some(env) = hook.env() {
        cmd.env_clear();
        for kv in env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
    }
    cmd.stdin(Stdio::piped());
    let timeout = hook.timeout();
    if let Some(t) = timeout.filter(|t| *t <= 0) {
        // config.rs refuses this already; checked again before anything is spawned.
        return Err(err(format!("timeout {t} must be positive")));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| err(format!("start: {}", os_text(&e))))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is fine: ignore EPIPE.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let status = match timeout {
        None => child
            .wait()
            .map_err(|e| err(format!("wait: {}", os_text(&e))))?,
        Some(t) => {
            let pidfd = pidfd_open(child.id() as i32)
                .map_err(|e| err(format!("pidfd: {}", os_text(&e))))?;
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&pidfd),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = (t as u64).saturating_mul(1000).min(i32::MAX as u64) as i32;
            let ready = loop {
                match nix::poll::poll(
                    &mut fds,
                    nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
                ) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(err(format!("poll: {e}"))),
                    Ok(n) => break n > 0,
                }
            };
            if !ready {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!("timed out after {t}s")));
            }
            child
                .wait()
                .map_err(|e| err(format!("wait: {}", os_text(&e))))?
        }
    };
    if status.success() {
        return Ok(());
    }
    Err(err(match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "failed".into(),
    }))
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let _ = fd.as_raw_fd();
    Ok(fd)
}
