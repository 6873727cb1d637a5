//! The channel between the runtime and the container's init while it is being set up:
//! a SOCK_SEQPACKET pair, one short message per packet, so neither side ever polls.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{socketpair, AddressFamily, MsgFlags, SockFlag, SockType};

use crate::error::{Error, Result};

/// A message on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// runtime -> init: ids are mapped; go on. The files to join the cgroup through
    /// come with it (unless the init was told to wait for `JoinCgroup`, or was born in
    /// its cgroup).
    Go,
    /// runtime -> init: the cgroup is made; the files to join it through come with this
    /// message. Sent after `Go` when the runtime makes the cgroup while the init sets up
    /// its mounts.
    JoinCgroup,
    /// init -> runtime: map the ids of this pid now (when init made its user namespace
    /// itself, after joining others).
    MapIds(i32),
    /// init -> runtime: the container's pid 1 is this pid (when init had to fork into
    /// its new pid namespace).
    Pid(i32),
    /// init -> runtime: mounts are done; run the createRuntime/createContainer hooks.
    Hooks,
    /// runtime -> init: the runtime's hooks ran; the number is the init's pid as the
    /// runtime sees it, for the state the createContainer hooks (run by the init, in
    /// the container's namespaces) read.
    HooksDone(i32),
    /// init -> runtime: the seccomp listener fd follows (SCM_RIGHTS); pass it to the
    /// agent, then answer Go.
    SeccompFd,
    /// init -> runtime: set up, waiting for `start`.
    Ready,
    /// either way: something failed; the text says what.
    Error(String),
}

impl Msg {
    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Go => b"go".to_vec(),
            Msg::JoinCgroup => b"join-cgroup".to_vec(),
            Msg::MapIds(p) => format!("mapids {p}").into_bytes(),
            Msg::Pid(p) => format!("pid {p}").into_bytes(),
            Msg::Hooks => b"hooks".to_vec(),
            Msg::HooksDone(p) => format!("hooks-done {p}").into_bytes(),
            Msg::SeccompFd => b"seccomp-fd".to_vec(),
            Msg::Ready => b"ready".to_vec(),
            Msg::Error(s) => format!("error {s}").into_bytes(),
        }
    }

    fn decode(b: &[u8]) -> Result<Msg> {
        let s = String::from_utf8_lossy(b);
        let (word, rest) = s.split_once(' ').unwrap_or((&s, ""));
        let num = || {
            rest.parse::<i32>()
                .map_err(|_| Error::Invalid(format!("bad message from init: {s:?}")))
        };
        Ok(match word {
            "go" => Msg::Go,
            "join-cgroup" => Msg::JoinCgroup,
            "mapids" => Msg::MapIds(num()?),
            "pid" => Msg::Pid(num()?),
            "hooks" => Msg::Hooks,
            "hooks-done" => Msg::HooksDone(num()?),
            "seccomp-fd" => Msg::SeccompFd,
            "ready" => Msg::Ready,
            "error" => Msg::Error(rest.to_string()),
            _ => return Err(Error::Invalid(format!("bad message from init: {s:?}"))),
        })
    }
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel(pub OwnedFd);

/// A connected pair: (runtime's end, init's end).
pub fn pair() -> Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::sys("socketpair", e))?;
    Ok((Channel(a), Channel(b)))
}

impl Channel {
    /// Sends one message.
    pub fn send(&self, m: &Msg) -> Result<()> {
        nix::unistd::write(&self.0, &m.encode()).map_err(|e| Error::sys("sync: write", e))?;
        Ok(())
    }

    /// Receives one message; `None` when the other end closed without a word (it
    /// died, or exec'd with the end marked close-on-exec).
    pub fn recv(&self) -> Result<Option<Msg>> {
        self.next(MsgFlags::empty()).map(|(m, _)| m)
    }

    /// The next message and the fds that came with it. A peer that closed with a
    /// message of ours unread is said once (ECONNRESET), and what it sent before it
    /// went (its error, mostly) is read still: `fdpass::recv_fds` reads again.
    fn next(&self, flags: MsgFlags) -> Result<(Option<Msg>, Vec<OwnedFd>)> {
        let mut buf = [0u8; 4096];
        let (n, fds) =
            crate::fdpass::recv_fds(self.0.as_raw_fd(), &mut buf, flags, "sync message")?;
        let msg = if n == 0 {
            None
        } else {
            Some(Msg::decode(&buf[..n])?)
        };
        Ok((msg, fds))
    }

    /// Sends one message with `fds`, as [`Channel::send_with_fds`]; false when the other
    /// side is gone (it ended, perhaps after sending its error, which the caller reads
    /// next with [`Channel::recv`]).
    pub fn send_unless_gone(&self, m: &Msg, fds: &[OwnedFd]) -> Result<bool> {
        match self.send_with_fds(m, fds) {
            Ok(()) => Ok(true),
            Err(Error::Sys {
                errno: Errno::EPIPE | Errno::ECONNRESET,
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The error the other side sent before it ended, if it did, without waiting: when
    /// a step of the runtime's fails because the init is gone, the init's own words say
    /// more. Messages before the error are skipped.
    pub fn take_error(&self) -> Option<String> {
        loop {
            match self.next(MsgFlags::MSG_DONTWAIT) {
                Ok((Some(Msg::Error(e)), _)) => return Some(e),
                Ok((Some(_), _)) => continue,
                _ => return None,
            }
        }
    }

    /// Sends one message with `fds` (SCM_RIGHTS) in the same packet.
    pub fn send_with_fds(&self, m: &Msg, fds: &[OwnedFd]) -> Result<()> {
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        crate::fdpass::send_fds(self.0.as_raw_fd(), &raw, &m.encode(), "sync message")
    }

    /// Receives a message that must be `want`; an error message from the other side
    /// becomes the error.
    pub fn expect(&self, want: &Msg) -> Result<()> {
        expected(want, self.recv()?)
    }

    /// Receives a message that must be `want`, with the fds sent with it
    /// ([`Channel::send_with_fds`]; none if it was sent with [`Channel::send`]).
    pub fn expect_with_fds(&self, want: &Msg) -> Result<Vec<OwnedFd>> {
        let (got, fds) = self.next(MsgFlags::empty())?;
        expected(want, got)?;
        Ok(fds)
    }
}

fn expected(want: &Msg, got: Option<Msg>) -> Result<()> {
    match got {
        Some(m) if &m == want => Ok(()),
        Some(Msg::Error(e)) => Err(Error::Invalid(e)),
        Some(m) => Err(Error::Invalid(format!(
            "sync: expected {want:?}, got {m:?}"
        ))),
        None => Err(Error::Invalid(format!(
            "sync: the other side exited while waiting for {want:?}"
        ))),
    }
}
