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
    send_fds(sock, &[fd], payload, what)
}

/// Sends `fds` (at most [`MAX_FDS`]) with `payload` as the message's data, in one
/// message; `what` names the transfer in errors.
pub fn send_fds(sock: RawFd, fds: &[RawFd], payload: &[u8], what: &str) -> Result<()> {
    let iov = [IoSlice::new(payload)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsg: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock, &iov, cmsg, MsgFlags::empty(), None)
        .map_err(|e| Error::sys(format!("send {what}"), e))?;
    Ok(())
}

/// The most fds [`recv_fds`] takes in one message: more than a host's cgroup
/// hierarchies.
pub const MAX_FDS: usize = 32;

/// Receives one message of [`send_fds`] into `buf`: the payload's length (0 when the
/// other end closed) and the fds that came with it (close-on-exec on arrival). `flags`
/// adds to recvmsg's (MSG_DONTWAIT, say).
pub fn recv_fds(
    sock: RawFd,
    buf: &mut [u8],
    flags: MsgFlags,
    what: &str,
) -> Result<(usize, Vec<OwnedFd>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut reset = false;
    let msg = loop {
        match recvmsg::<()>(
            sock,
            &mut iov,
            Some(&mut space),
            flags | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            // The peer closed with data of ours unread: said once, then what it sent
            // before it went can still be read.
            Err(nix::errno::Errno::ECONNRESET) if !reset => reset = true,
            r => break r.map_err(|e| Error::sys(format!("receive {what}"), e))?,
        }
    };
    let mut fds = Vec::new();
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| Error::sys(format!("receive {what}: control message"), e))?;
    for c in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these fds in our table for us; nothing
            // else owns them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(Error::Invalid(format!(
            "receive {what}: more than {MAX_FDS} file descriptors"
        )));
    }
    Ok((msg.bytes, fds))
}

/// Receives one fd sent with [`send_fd`] (made close-on-exec on arrival).
pub fn recv_fd(sock: RawFd, what: &str) -> Result<OwnedFd> {
    let mut buf = [0u8; 64];
    let (_, fds) = recv_fds(sock, &mut buf, MsgFlags::empty(), what)?;
    fds.into_iter()
        .next()
        .ok_or_else(|| Error::Invalid(format!("receive {what}: no file descriptor in the message")))
}
