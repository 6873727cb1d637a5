//! Passing file descriptors over unix sockets with SCM_RIGHTS: the pty master to the
//! caller's console socket, and the seccomp listener from the init to the runtime and
//! on to the agent at `listenerPath`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    connect as connect_socket, recvmsg, sendmsg, socket, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};

use crate::error::{Error, Result};

/// Connects to the unix stream socket at `path`, to which fds are then sent; `what`
/// names it in errors (the flag or config field that gave the path).
pub fn connect(path: &std::path::Path, what: &str) -> Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys(format!("{what}: socket"), e))?;
    let addr =
        UnixAddr::new(path).map_err(|e| Error::sys(format!("{what} {}", path.display()), e))?;
    connect_socket(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)
        .map_err(|e| Error::sys(format!("{what}: connect {}", path.display()), e))?;
    Ok(fd)
}

/// Sends `fd` with `payload` as the message's data; `what` names the transfer in errors.
pub fn send_fd(sock: RawFd, fd: RawFd, payload: &[u8], what: &str) -> Result<()> {
    let fds = [fd];
    let iov = [IoSlice::new(payload)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| Error::sys(format!("send {what}"), e))?;
    Ok(())
}

/// Receives one fd sent with [`send_fd`] (made close-on-exec on arrival).
pub fn recv_fd(sock: RawFd, what: &str) -> Result<OwnedFd> {
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| Error::sys(format!("receive {what}"), e))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| Error::sys(format!("receive {what}: control message"), e))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd in our table for us; nothing
                // else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(Error::Invalid(format!(
        "receive {what}: no file descriptor in the message"
    )))
}
