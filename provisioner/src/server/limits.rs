//! What the server allows any one client, each a flag with a default: connections at
//! once per address, time per request, bytes per body, and how fast machines nobody
//! declared may make records. A provisioning network is shared: a broken or hostile
//! machine must not starve the others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits, from the server's flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at once from one address, per listener.
    pub conns_per_addr: usize,
    /// The time a request may take, from its first byte to the end of its answer's
    /// making (headers and body read, handler done), whatever the pace of each read.
    pub request_timeout: Duration,
    /// The largest request body.
    pub max_body: usize,
    /// New discovery records per minute.
    pub discoveries_per_minute: u32,
    /// Discovered machines (not yet accepted) kept at most.
    pub max_discovered: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            conns_per_addr: 32,
            request_timeout: Duration::from_secs(60),
            max_body: 2 << 20,
            discoveries_per_minute: 10,
            max_discovered: 256,
        }
    }
}

/// Counts connections per address.
#[derive(Debug, Default)]
pub struct Conns {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it uncounts it.
#[derive(Debug)]
pub struct ConnGuard {
    conns: Arc<Conns>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.conns.open.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

impl Conns {
    /// Counts a connection from `ip`, or `None` when it already has `max` open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ConnGuard> {
        let mut m = self.open.lock().ok()?;
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            conns: self.clone(),
            ip,
        })
    }
}

/// A token bucket: `per_minute` a minute, at most `per_minute` at once.
#[derive(Debug)]
pub struct Rate {
    per_minute: u32,
    state: Mutex<(f64, Instant)>,
}

impl Rate {
    /// A full bucket.
    pub fn new(per_minute: u32) -> Rate {
        Rate {
            per_minute,
            state: Mutex::new((f64::from(per_minute), Instant::now())),
        }
    }

    /// Takes one, if there is one.
    pub fn take(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        let cap = f64::from(self.per_minute);
        let refill = now.duration_since(s.1).as_secs_f64() * cap / 60.0;
        s.0 = (s.0 + refill).min(cap);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Parses a size: `4096`, `64K`, `2M`, `1G` (powers of 1024; `KiB`, `MiB` too).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4096, 64K or 10M"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        _ => return Err(format!("{s:?} is not a size like 4096, 64K or 10M")),
    };
    if n == 0 {
        return Err(format!("{s:?} must be more than zero"));
    }
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_buckets_and_counts() {
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
        let r = Rate::new(3);
        assert!(r.take() && r.take() && r.take());
        assert!(!r.take(), "a burst is bounded by the rate");
        let c = Arc::new(Conns::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = c.admit(ip, 2).expect("1");
        let _b = c.admit(ip, 2).expect("2");
        assert!(c.admit(ip, 2).is_none());
        drop(a);
        assert!(c.admit(ip, 2).is_some());
    }
}
