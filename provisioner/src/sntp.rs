//! SNTP (RFC 4330), both ends: plinth-server answers from its own clock so that a node
//! with a dead CMOS battery gets a clock good enough for TLS before its first handshake;
//! plinth-init asks it (or a configured NTP server) and steps the clock.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{net, sys, Error, Result};

/// Seconds from 1900 (NTP's era 0) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

const MODE_CLIENT: u8 = 3;
const MODE_SERVER: u8 = 4;

/// An NTP timestamp (seconds since 1900, 32.32 fixed point) for a system time.
pub fn to_ntp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Seconds since 1970 (fractional, may be negative) of an NTP timestamp.
pub fn from_ntp(ts: u64) -> f64 {
    let secs = (ts >> 32) as f64 - NTP_UNIX_OFFSET as f64;
    secs + (ts & 0xffff_ffff) as f64 / 4_294_967_296.0
}

fn ts_at(p: &[u8], at: usize) -> u64 {
    p.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// The server's answer to a client packet, or `None` for anything that is not a
/// client request.
pub fn answer(req: &[u8], now: SystemTime) -> Option<[u8; 48]> {
    if req.len() < 48 || req[0] & 0x07 != MODE_CLIENT {
        return None;
    }
    let version = (req[0] >> 3) & 0x07;
    let mut p = [0u8; 48];
    p[0] = (version.max(3) << 3) | MODE_SERVER;
    p[1] = 2; // stratum: a secondary server (its own clock, set by whatever the host uses)
    p[2] = req[2]; // poll
    p[3] = 0xEC; // precision: about a microsecond (2^-20)
    p[12..16].copy_from_slice(b"LOCL");
    let t = to_ntp(now).to_be_bytes();
    p[16..24].copy_from_slice(&t); // reference
    p[24..32].copy_from_slice(&req[40..48]); // originate = the client's transmit
    p[32..40].copy_from_slice(&t); // receive
    p[40..48].copy_from_slice(&t); // transmit
    Some(p)
}

/// Answers SNTP requests on `sock` forever (a thread of its own).
pub fn serve(sock: UdpSocket) {
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if let Some(reply) = answer(&buf[..n], SystemTime::now()) {
            let _ = sock.send_to(&reply, from);
        }
    }
}

/// The clock offset (server minus local, seconds) from one exchange: T1 sent, T2
/// received by the server, T3 sent by it, T4 received here.
pub fn offset(t1: f64, t2: f64, t3: f64, t4: f64) -> f64 {
    ((t2 - t1) + (t3 - t4)) / 2.0
}

/// Asks `server` for the time; returns the offset of its clock from ours, in seconds.
pub fn query(server: SocketAddr, timeout: Duration) -> Result<f64> {
    let what = format!("SNTP to {server}");
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|_| Error::Config {
            what: what.clone(),
            reason: "address".into(),
        })?
    } else {
        "[::]:0".parse().map_err(|_| Error::Config {
            what: what.clone(),
            reason: "address".into(),
        })?
    };
    let sock = UdpSocket::bind(bind).map_err(net(format!("{what}: binding")))?;
    sock.set_read_timeout(Some(timeout))
        .map_err(net(what.clone()))?;
    let mut req = [0u8; 48];
    req[0] = (4 << 3) | MODE_CLIENT;
    let t1 = SystemTime::now();
    let t1_ntp = to_ntp(t1);
    req[40..48].copy_from_slice(&t1_ntp.to_be_bytes());
    sock.send_to(&req, server)
        .map_err(net(format!("{what}: sending")))?;
    let mut buf = [0u8; 512];
    loop {
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(net(format!("{what}: no answer")))?;
        let t4 = SystemTime::now();
        let p = &buf[..n];
        if from != server || n < 48 || p[0] & 0x07 != MODE_SERVER || ts_at(p, 24) != t1_ntp {
            continue; // not the answer to our request
        }
        if p[1] == 0 || p[1] > 15 {
            return Err(Error::Protocol {
                what,
                reason: format!("stratum {} (kiss-o'-death or unsynchronised)", p[1]),
            });
        }
        let secs = |t: SystemTime| from_ntp(to_ntp(t));
        return Ok(offset(
            secs(t1),
            from_ntp(ts_at(p, 32)),
            from_ntp(ts_at(p, 40)),
            secs(t4),
        ));
    }
}

/// Steps the wall clock by `offset` seconds (clock_settime(CLOCK_REALTIME)).
pub fn step_clock(offset: f64) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let target = now.as_secs_f64() + offset;
    if target <= 0.0 {
        return Err(Error::Config {
            what: "stepping the clock".into(),
            reason: format!("offset {offset}s would put it before 1970"),
        });
    }
    let ts = nix::sys::time::TimeSpec::new(target.trunc() as i64, (target.fract() * 1e9) as i64);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .map_err(sys(format!("setting the clock ({offset:+.3}s)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_over_loopback() {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("addr");
        std::thread::spawn(move || serve(sock));
        let off = query(addr, Duration::from_secs(2)).expect("query");
        // Same clock at both ends: the offset is the jitter of one loopback exchange.
        assert!(off.abs() < 0.5, "offset {off}");
        assert!(answer(&[0u8; 10], SystemTime::now()).is_none());
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        assert!((from_ntp(to_ntp(t)) - 1_700_000_000.25).abs() < 1e-6);
        assert_eq!(offset(10.0, 20.0, 20.0, 10.0), 10.0);
    }
}
