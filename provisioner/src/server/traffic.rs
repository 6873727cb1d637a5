//! The server's DHCP, TFTP and HTTP traffic on machines' timelines: a `dhcp` event for
//! the first packet of each firmware stage the server saw from a MAC (a PXE ROM, then
//! the iPXE it chain-loaded), and a `file` event for each file served (over TFTP or
//! HTTP), each with the server's time in milliseconds (`atMs`). These belong to no boot
//! of the node's yet (the node has not started), so they go under the events of no boot.
//!
//! TFTP and HTTP know the client's address, not its MAC: the kernel's neighbour table
//! says which MAC has that address on the boot network (it has just talked to it). A MAC
//! without a record yet (a machine nobody declared, before its boot script makes it a
//! discovery record) has its events held in memory, a few per MAC for a bounded number of
//! MACs, and written once it has a record: a flood of made-up MACs costs no store writes.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::schema::EventKind;

/// MACs whose events wait for a record, at most.
const MAX_PENDING_MACS: usize = 256;
/// Events waiting per MAC, at most (the oldest are dropped).
const MAX_PENDING_PER_MAC: usize = 16;
/// A repeat of the same firmware stage's DHCP within this is the same attempt (retries,
/// the request after the discover).
const DHCP_REPEAT: Duration = Duration::from_secs(60);
/// How many MACs' last DHCP stage is remembered.
const MAX_SEEN: usize = 4096;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One event waiting for its machine's record.
#[derive(Debug, Clone)]
struct Pending {
    kind: EventKind,
    details: Map<String, Value>,
}

/// Events waiting for their MAC's record, and the MACs in the order they came (the
/// oldest is dropped first).
#[derive(Debug, Default)]
struct Waiting {
    by_mac: HashMap<String, Vec<Pending>>,
    order: VecDeque<String>,
}

/// The traffic recorder.
#[derive(Debug, Default)]
pub struct Traffic {
    pending: Mutex<Waiting>,
    seen: Mutex<HashMap<(String, String), Instant>>,
}

/// Writes an event of no boot for a MAC with a record; false when it has none.
pub type Writer<'a> = &'a dyn Fn(&str, EventKind, Map<String, Value>) -> bool;

impl Traffic {
    /// A DHCP packet from `mac` at firmware `stage`, answered with `offered`: an event
    /// when it is the stage's first packet in a while.
    pub fn dhcp(&self, write: Writer, mac: &str, stage: &str, offered: &str, arch: Option<u16>) {
        {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            let key = (mac.to_string(), stage.to_string());
            if seen.get(&key).is_some_and(|t| t.elapsed() < DHCP_REPEAT) {
                return;
            }
            if seen.len() >= MAX_SEEN {
                seen.retain(|_, t| t.elapsed() < DHCP_REPEAT);
                if seen.len() >= MAX_SEEN {
                    seen.clear();
                }
            }
            seen.insert(key, Instant::now());
        }
        let mut d = Map::new();
        d.insert("atMs".into(), json!(now_ms()));
        d.insert("firmware".into(), json!(stage));
        if let Some(a) = arch {
            d.insert("arch".into(), json!(a));
        }
        d.insert("offered".into(), json!(offered));
        self.event(write, mac, EventKind::Dhcp, d);
    }

    /// `mac`'s node is up (it reported `booted`): the firmware's next DHCP request is a new
    /// boot's, however soon it comes (a reboot under a minute), not a retry of the last.
    pub fn booted(&self, mac: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|(m, _), _| m != mac);
        }
    }

    /// A file served to `mac` over `protocol`: `bytes` in `took`.
    pub fn file(
        &self,
        write: Writer,
        mac: &str,
        protocol: &str,
        file: &str,
        bytes: u64,
        took: Duration,
    ) {
        let mut d = Map::new();
        d.insert("atMs".into(), json!(now_ms()));
        d.insert("protocol".into(), json!(protocol));
        d.insert("file".into(), json!(file));
        d.insert("bytes".into(), json!(bytes));
        d.insert("ms".into(), json!(took.as_millis() as u64));
        self.event(write, mac, EventKind::File, d);
    }

    fn event(&self, write: Writer, mac: &str, kind: EventKind, details: Map<String, Value>) {
        self.flush(write, mac);
        if write(mac, kind, details.clone()) {
            return;
        }
        let Ok(mut guard) = self.pending.lock() else {
            return;
        };
        let Waiting { by_mac: map, order } = &mut *guard;
        if !map.contains_key(mac) {
            if order.len() >= MAX_PENDING_MACS {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
            order.push_back(mac.to_string());
        }
        let list = map.entry(mac.to_string()).or_default();
        if list.len() >= MAX_PENDING_PER_MAC {
            list.remove(0);
        }
        list.push(Pending { kind, details });
    }

    /// Writes what waits for `mac`, now that it may have a record.
    pub fn flush(&self, write: Writer, mac: &str) {
        let waiting = {
            let Ok(mut guard) = self.pending.lock() else {
                return;
            };
            let Waiting { by_mac: map, order } = &mut *guard;
            let Some(list) = map.remove(mac) else {
                return;
            };
            order.retain(|m| m != mac);
            list
        };
        let mut rest = waiting.into_iter();
        while let Some(p) = rest.next() {
            if !write(mac, p.kind, p.details.clone()) {
                // Still no record: keep them all for later.
                let mut back = vec![p];
                back.extend(rest);
                if let Ok(mut guard) = self.pending.lock() {
                    let Waiting { by_mac: map, order } = &mut *guard;
                    order.push_back(mac.to_string());
                    map.insert(mac.to_string(), back);
                }
                return;
            }
        }
    }
}

/// The MAC the kernel's neighbour table has for `ip` (IPv4, or IPv4 mapped into IPv6),
/// lower-case, for a peer that is talking to us. Its entry can be between states for a
/// moment (seen once in a lab run: a UEFI iPXE's kernel request had none, its initrd
/// request half a second later had), so an entry not complete yet is looked up again a
/// few times before the file goes on no timeline. A peer with no entry at all (behind a
/// relay or a router) is not waited for.
pub fn mac_of(ip: IpAddr) -> Option<String> {
    let IpAddr::V4(v4) = ip.to_canonical() else {
        return None;
    };
    let ip = v4.to_string();
    for attempt in 0..=PEER_LOOKUPS {
        if attempt > 0 {
            std::thread::sleep(PEER_LOOKUP_PAUSE);
        }
        let table = std::fs::read_to_string("/proc/net/arp").ok()?;
        if let Some(m) = parse_arp(&table, &ip) {
            return Some(m);
        }
        if !listed(&table, &ip) {
            return None;
        }
    }
    None
}

/// Whether /proc/net/arp's text has an entry for `ip`, complete or not.
fn listed(table: &str, ip: &str) -> bool {
    table
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().next() == Some(ip))
}

/// How many more times a peer's MAC is looked for, and the pause before each.
const PEER_LOOKUPS: usize = 5;
const PEER_LOOKUP_PAUSE: Duration = Duration::from_millis(40);

/// The MAC of `ip` in /proc/net/arp's text (complete entries only).
fn parse_arp(table: &str, ip: &str) -> Option<String> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // IP address, HW type, Flags (0x2: complete), HW address, Mask, Device.
        let complete = f
            .get(2)
            .and_then(|x| u32::from_str_radix(x.trim_start_matches("0x"), 16).ok())
            .is_some_and(|flags| flags & 0x2 != 0);
        (f.first() == Some(&ip) && complete)
            .then(|| f.get(3).map(|m| m.to_ascii_lowercase()))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn arp_lines() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.33.0.101      0x1         0x2         52:54:00:AA:00:01     *        eth0\n\
                 10.33.0.102      0x1         0x0         00:00:00:00:00:00     *        eth0\n";
        assert_eq!(
            parse_arp(t, "10.33.0.101").as_deref(),
            Some("52:54:00:aa:00:01")
        );
        assert_eq!(parse_arp(t, "10.33.0.102"), None, "incomplete");
        assert_eq!(parse_arp(t, "10.33.0.1"), None);
        // An incomplete entry is worth another look; no entry is not.
        assert!(listed(t, "10.33.0.102") && !listed(t, "10.33.0.1"));
        assert!(!listed(t, "10.33.0.10"), "a prefix is not the address");
    }

    #[test]
    fn events_wait_for_a_record_and_repeats_are_one() {
        let t = Traffic::default();
        let known = RefCell::new(false);
        let written = RefCell::new(Vec::new());
        let write = |mac: &str, kind: EventKind, d: Map<String, Value>| {
            if !*known.borrow() {
                return false;
            }
            written.borrow_mut().push((mac.to_string(), kind, d));
            true
        };
        let mac = "52:54:00:00:00:01";
        t.dhcp(&write, mac, "pxe-uefi", "ipxe.efi", Some(7));
        t.dhcp(&write, mac, "pxe-uefi", "ipxe.efi", Some(7));
        t.file(
            &write,
            mac,
            "tftp",
            "ipxe.efi",
            1000,
            Duration::from_millis(5),
        );
        t.dhcp(&write, mac, "ipxe", "script", Some(7));
        assert!(written.borrow().is_empty());
        *known.borrow_mut() = true;
        t.flush(&write, mac);
        let kinds: Vec<EventKind> = written.borrow().iter().map(|w| w.1).collect();
        assert_eq!(
            kinds,
            [EventKind::Dhcp, EventKind::File, EventKind::Dhcp],
            "in order, the repeat counted once"
        );
        assert_eq!(written.borrow()[1].2["file"], "ipxe.efi");
    }
}
