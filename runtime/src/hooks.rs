//! OCI hooks: each runs as its own process with the container's state JSON on stdin,
//! with the environment and arguments the config gives, killed at its timeout.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    // The state is written while waiting, both bounded by the timeout: a hook that
    // neither reads its stdin nor exits must not hold the runtime past it, whatever
    // the state's size (a pipe takes 64 KiB before a write blocks).
    let deadline = timeout.map(|t| Instant::now() + Duration::from_secs(t as u64));
    let pidfd = match pidfd_open(child.id() as i32) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!("pidfd: {}", os_text(&e))));
        }
    };
    let mut stdin = child.stdin.take().map(std::os::fd::OwnedFd::from);
    if let Some(fd) = &stdin {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
    }
    let mut left = state_json.as_bytes();
    loop {
        let wait = match deadline {
            None => nix::poll::PollTimeout::NONE,
            Some(d) => {
                let ms = d.saturating_duration_since(Instant::now()).as_millis();
                nix::poll::PollTimeout::try_from(ms.min(i32::MAX as u128) as i32)
                    .unwrap_or(nix::poll::PollTimeout::MAX)
            }
        };
        let mut fds = vec![nix::poll::PollFd::new(
            pidfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        if let Some(fd) = &stdin {
            fds.push(nix::poll::PollFd::new(
                fd.as_fd(),
                nix::poll::PollFlags::POLLOUT,
            ));
        }
        let n = match nix::poll::poll(&mut fds, wait) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(err(format!("poll: {e}"))),
            Ok(n) => n,
        };
        if n == 0 {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err(format!(
                "timed out after {}s",
                timeout.unwrap_or_default()
            )));
        }
        let exited = fds[0].any().unwrap_or(false);
        let writable = fds.get(1).and_then(|f| f.any()).unwrap_or(false);
        drop(fds);
        if writable {
            if let Some(fd) = &stdin {
                match nix::unistd::write(fd, left) {
                    Ok(w) => left = &left[w..],
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                    // A hook that does not read its stdin is fine (EPIPE once it closed).
                    Err(_) => left = &[],
                }
            }
            if left.is_empty() {
                stdin = None;
            }
        }
        if exited {
            break;
        }
    }
    drop(stdin);
    let status = child
        .wait()
        .map_err(|e| err(format!("wait: {}", os_text(&e))))?;
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
