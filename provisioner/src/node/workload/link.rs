//! The links a container's network needs, made over rtnetlink (the classic ioctls make
//! no bridge with an address family's settings, no veth, and move nothing between
//! namespaces): the node-local bridge, and a veth pair whose inner end is born in the
//! container's network namespace as `eth0`. Addresses are set with [`crate::netif`].

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::error::{Error, Result};

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Protocol {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Sends one request and waits for its acknowledgement; `Ok(false)` when the kernel
/// answered EEXIST and `exists_ok`.
fn request(what: &str, msg: RouteNetlinkMessage, flags: u16, exists_ok: bool) -> Result<bool> {
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| failed(what, e))?;
    sock.bind_auto().map_err(|e| failed(what, e))?;
    sock.connect(&SocketAddr::new(0, 0))
        .map_err(|e| failed(what, e))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    sock.send(&buf, 0).map_err(|e| failed(what, e))?;
    let mut reply = vec![0u8; 16 * 1024];
    let n = sock
        .recv(&mut &mut reply[..], 0)
        .map_err(|e| failed(what, e))?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
        .map_err(|e| failed(what, e))?;
    match answer.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(true),
            Some(c) if exists_ok && -c.get() == libc::EEXIST => Ok(false),
            Some(c) => Err(failed(what, std::io::Error::from_raw_os_error(-c.get()))),
        },
        other => Err(failed(what, format!("unexpected answer {other:?}"))),
    }
}

fn named(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

fn up(m: &mut LinkMessage) {
    m.header.flags |= LinkFlags::Up;
    m.header.change_mask |= LinkFlags::Up;
}

/// The index of link `name`, if there is one.
pub fn index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Makes the bridge `name` unless it is there, and brings it up; returns whether it
/// was made.
pub fn bridge(name: &str) -> Result<bool> {
    let mut m = named(name);
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    up(&mut m);
    let made = request(
        &format!("making bridge {name}"),
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL,
        true,
    )?;
    crate::netif::link_up(name)?;
    Ok(made)
}

/// Makes the veth pair `host` (up, on `bridge`) and `eth0` in the network namespace
/// `netns`.
pub fn veth_into(host: &str, bridge: &str, netns: BorrowedFd<'_>) -> Result<()> {
    let what = format!("making veth {host} into the container's network namespace");
    let bridge_index = index(bridge).ok_or_else(|| failed(&what, format!("no bridge {bridge}")))?;
    let mut peer = named("eth0");
    peer.attributes
        .push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
    let mut m = named(host);
    m.attributes.push(LinkAttribute::Controller(bridge_index));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    up(&mut m);
    request(
        &what,
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL,
        false,
    )
    .map(|_| ())
}

/// Deletes link `name` if it is there (a veth left by a container that is gone).
pub fn delete(name: &str) -> Result<()> {
    let Some(i) = index(name) else {
        return Ok(());
    };
    let mut m = LinkMessage::default();
    m.header.index = i;
    match request(
        &format!("deleting link {name}"),
        RouteNetlinkMessage::DelLink(m),
        0,
        false,
    ) {
        Ok(_) => Ok(()),
        // Gone meanwhile, with its namespace.
        Err(_) if index(name).is_none() => Ok(()),
        Err(e) => Err(e),
    }
}
