//! A DHCPv4 client (RFC 2131): DISCOVER, OFFER, REQUEST, ACK over a UDP socket bound to
//! the interface (SO_BINDTODEVICE) with broadcast allowed, so it works before the
//! interface has an address. The broadcast flag is set, so servers answer by broadcast.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use crate::error::{net, sys, Error, Result};

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

/// What the server gave us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// The subnet mask (option 1; /24 when absent).
    pub netmask: Ipv4Addr,
    /// The default gateway (option 3).
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// The domain name (option 15), when it is one (letters, digits, `-`, `.`).
    pub domain: Option<String>,
    /// The server's identifier (option 54).
    pub server_id: Option<Ipv4Addr>,
    /// Lease time in seconds (option 51).
    pub lease_secs: Option<u32>,
}

/// Builds a BOOTREQUEST with the given message type.
pub fn build(
    xid: u32,
    mac: [u8; 6],
    msg: u8,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag: we cannot receive unicast before we have the address
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[53, 1, msg]);
    p.extend_from_slice(&[61, 7, 1]);
    p.extend_from_slice(&mac);
    p.extend_from_slice(&[55, 6, 1, 3, 6, 15, 51, 54]);
    if let Some(ip) = requested {
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&ip.octets());
    }
    if let Some(ip) = server {
        p.extend_from_slice(&[54, 4]);
        p.extend_from_slice(&ip.octets());
    }
    p.push(255);
    p.resize(p.len().max(300), 0); // some relays drop packets shorter than BOOTP's 300
    p
}

/// Parses a BOOTREPLY for `xid`: (message type, lease). Anything else gives `None`.
pub fn parse(p: &[u8], xid: u32, mac: [u8; 6]) -> Option<(u8, Lease)> {
    if p.len() < 240 || p[0] != 2 || p.get(4..8)? != xid.to_be_bytes() || p.get(28..34)? != mac {
        return None;
    }
    if p.get(236..240)? != MAGIC {
        return None;
    }
    let yiaddr = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let mut lease = Lease {
        address: yiaddr,
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        router: None,
        dns: Vec::new(),
        domain: None,
        server_id: None,
        lease_secs: None,
    };
    let mut msg = 0;
    for (code, val) in options(p)? {
        let ip = |v: &[u8]| -> Option<Ipv4Addr> {
            Some(Ipv4Addr::new(
                *v.first()?,
                *v.get(1)?,
                *v.get(2)?,
                *v.get(3)?,
            ))
        };
        match code {
            53 => msg = *val.first()?,
            1 => lease.netmask = ip(val)?,
            3 => lease.router = ip(val),
            6 => lease.dns = val.chunks_exact(4).filter_map(ip).collect(),
            15 => lease.domain = domain_name(val),
            51 => lease.lease_secs = val.try_into().ok().map(u32::from_be_bytes),
            54 => lease.server_id = ip(val),
            _ => {}
        }
    }
    (msg != 0).then_some((msg, lease))
}

/// Option 15's value as a domain name, or `None` when it is not one (it goes into
/// resolv.conf as it is).
fn domain_name(v: &[u8]) -> Option<String> {
    // Some servers count a trailing NUL in the length.
    let v = v.strip_suffix(&[0]).unwrap_or(v);
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.');
    ok.then(|| String::from_utf8_lossy(v).into_owned())
}

/// The options of a DHCP packet (after the 236-byte header and the magic cookie), as
/// (code, value) in order, pads skipped, up to the end option; `None` when one runs
/// past the packet.
pub fn options(p: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut i = 240;
    while i < p.len() {
        let code = p[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*p.get(i + 1)?);
        out.push((code, p.get(i + 2..i + 2 + len)?));
        i += 2 + len;
    }
    Some(out)
}

/// Runs one DISCOVER..ACK exchange on `ifname`, waiting at most `timeout` for each answer.
pub fn acquire(ifname: &str, mac: [u8; 6], xid: u32, timeout: Duration) -> Result<Lease> {
    let what = format!("DHCP on {ifname}");
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))
        .map_err(net(format!("{what}: binding port 68")))?;
    sock.set_broadcast(true).map_err(net(what.clone()))?;
    let name = std::ffi::OsString::from(ifname);
    nix::sys::socket::setsockopt(
        &sock.as_fd(),
        nix::sys::socket::sockopt::BindToDevice,
        &name,
    )
    .map_err(sys(format!("{what}: SO_BINDTODEVICE")))?;
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);

    let offer = exchange(
        &sock,
        &build(xid, mac, DISCOVER, None, None),
        bcast,
        xid,
        mac,
        timeout,
        &what,
        OFFER,
    )?;
    let req = build(xid, mac, REQUEST, Some(offer.address), offer.server_id);
    exchange(&sock, &req, bcast, xid, mac, timeout, &what, ACK)
}

#[allow(clippy::too_many_arguments)]
fn exchange(
    sock: &UdpSocket,
    packet: &[u8],
    to: SocketAddrV4,
    xid: u32,
    mac: [u8; 6],
    timeout: Duration,
    what: &str,
    want: u8,
) -> Result<Lease> {
    let deadline = Instant::now() + timeout;
    // Retransmit every second within the window: the first packet may go out before
    // the link has finished coming up.
    let mut next_send = Instant::now();
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::Protocol {
                what: what.to_string(),
                reason: format!("no answer (message type {want}) in {timeout:?}"),
            });
        }
        if now >= next_send {
            sock.send_to(packet, to)
                .map_err(net(format!("{what}: sending")))?;
            next_send = now + Duration::from_secs(1);
        }
        let wait = next_send
            .min(deadline)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        sock.set_read_timeout(Some(wait))
            .map_err(net(what.to_string()))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some((msg, lease)) = parse(buf.get(..n).unwrap_or_default(), xid, mac) {
                    if msg == NAK {
                        return Err(Error::Protocol {
                            what: what.to_string(),
                            reason: "server sent DHCPNAK".into(),
                        });
                    }
                    if msg == want {
                        return Ok(lease);
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                return Err(Error::Net {
                    what: format!("{what}: receiving"),
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_reply() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let mut p = build(7, mac, DISCOVER, None, None);
        p[0] = 2;
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        // Replace options: OFFER, mask, router, server id.
        p.truncate(240);
        p.extend_from_slice(&[
            53, 1, OFFER, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 54, 4, 10, 0, 2, 2, 255,
        ]);
        let (msg, l) = parse(&p, 7, mac).expect("offer");
        assert_eq!(msg, OFFER);
        assert_eq!(l.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert!(l.dns.is_empty() && l.domain.is_none());
        assert!(parse(&p, 8, mac).is_none());
        // Name servers and the domain.
        let mut q = p.clone();
        q.truncate(q.len() - 1);
        q.extend_from_slice(&[6, 8, 10, 0, 2, 3, 10, 0, 2, 4]);
        q.extend_from_slice(&[15, 12]);
        q.extend_from_slice(b"lab.example\0");
        q.push(255);
        let (_, l) = parse(&q, 7, mac).expect("offer");
        assert_eq!(
            l.dns,
            [Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(10, 0, 2, 4)]
        );
        assert_eq!(l.domain.as_deref(), Some("lab.example"));
        assert_eq!(domain_name(b"a b"), None);
        assert_eq!(domain_name(b"x\nnameserver 1.2.3.4"), None);
        // Truncated options must not panic.
        p.truncate(p.len() - 10);
        p.push(3);
        p.push(200);
        let _ = parse(&p, 7, mac);
    }
}
