//! Handing a seccomp user-notification listener to the agent at
//! `linux.seccomp.listenerPath`, as runtime-spec's config-linux.md describes: one
//! message on a unix socket carrying the fd (SCM_RIGHTS) and the container's state.

use std::os::fd::{AsRawFd, OwnedFd};

use oci_spec::runtime::LinuxSeccomp;

use crate::error::{Error, Result};

/// Sends `fd` (the listener of `pid`'s filter) to the profile's agent with the process
/// state runtime-spec names; `state` is the container's state as hooks see it.
pub fn send_listener(
    profile: &LinuxSeccomp,
    oci_version: &str,
    pid: i32,
    state: serde_json::Value,
    fd: OwnedFd,
) -> Result<()> {
    let path = profile
        .listener_path()
        .clone()
        .ok_or_else(|| Error::config("linux.seccomp.listenerPath", "missing"))?;
    let msg = serde_json::json!({
        "ociVersion": oci_version,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": profile.listener_metadata().clone().unwrap_or_default(),
        "state": state,
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
