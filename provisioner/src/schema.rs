//! The protocol between node and server: events a node reports and the server's reply.
//! Versioned (`apiVersion: plinth/v1`) and strict: unknown fields are rejected so that a
//! typo is an error, not silently dropped data.

use serde::{Deserialize, Serialize};

/// The only API version this build speaks.
pub const API_VERSION: &str = "plinth/v1";

/// The largest event body the server accepts.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// One step a node reports (`POST /v1/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Event {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The boot NIC's MAC address, lower case, colon-separated.
    pub mac: String,
    /// The SMBIOS UUID.
    pub uuid: String,
    /// The kernel's boot id (changes every boot).
    pub boot_id: String,
    /// Sequence number within the boot, from 1.
    pub seq: u64,
    /// Milliseconds since the kernel started (CLOCK_BOOTTIME).
    pub uptime_ms: u64,
    /// The node's wall clock, seconds since the epoch (may be wrong before NTP).
    pub wall_time: u64,
    /// Free-form details (timings, addresses, error text).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The kinds of event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// plinth-init is up with network and identity.
    Booted,
    /// Network configured.
    Network,
    /// Config fetched.
    Config,
    /// Config applied.
    Applied,
    /// A service changed state.
    Service,
    /// Joined Kubernetes.
    Joined,
    /// Something failed.
    Error,
    /// The node is shutting down.
    Shutdown,
}

/// What the server asks the node to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stop services, sync, power off.
    Poweroff,
    /// Stop services, sync, reboot.
    Reboot,
}

/// The server's reply to an event or an action poll.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// An action for the node, if the operator asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

/// This machine's wall clock in seconds since the epoch (0 if it is set before 1970):
/// [`Event::wall_time`] on the node, receipt times on the server.
pub(crate) fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Normalises and checks a MAC address: six hex octets, lower case, colons.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

/// Checks a UUID's shape (8-4-4-4-12 hex).
pub fn valid_uuid(u: &str) -> bool {
    let lens: Vec<usize> = u.split('-').map(str::len).collect();
    lens == [8, 4, 4, 4, 12] && u.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

impl Event {
    /// Parses and validates an event body; the error names the field at fault.
    pub fn parse(body: &[u8]) -> Result<Event, String> {
        if body.len() > MAX_EVENT_BYTES {
            return Err(format!(
                "event is {} bytes, more than the {MAX_EVENT_BYTES} allowed",
                body.len()
            ));
        }
        let mut ev: Event = serde_json::from_slice(body).map_err(|e| format!("event: {e}"))?;
        if ev.api_version != API_VERSION {
            return Err(format!(
                "apiVersion: {:?} is not {API_VERSION:?}",
                ev.api_version
            ));
        }
        ev.mac = normalize_mac(&ev.mac)
            .ok_or_else(|| format!("mac: {:?} is not a MAC address", ev.mac))?;
        if !valid_uuid(&ev.uuid) {
            return Err(format!("uuid: {:?} is not a UUID", ev.uuid));
        }
        ev.uuid = ev.uuid.to_ascii_lowercase();
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing() {
        let good = br#"{"apiVersion":"plinth/v1","type":"booted","mac":"52:54:00:12:34:56","uuid":"6e4a2b1c-0000-4000-8000-000000000001","bootId":"b","seq":1,"uptimeMs":5,"wallTime":6}"#;
        assert!(Event::parse(good).is_ok());
        let bad_field = br#"{"apiVersion":"plinth/v1","type":"booted","mac":"52:54:00:12:34:56","uuid":"6e4a2b1c-0000-4000-8000-000000000001","bootId":"b","seq":1,"uptimeMs":5,"wallTime":6,"extra":1}"#;
        assert!(Event::parse(bad_field)
            .expect_err("unknown field")
            .contains("extra"));
        let bad_mac = br#"{"apiVersion":"plinth/v1","type":"booted","mac":"nope","uuid":"6e4a2b1c-0000-4000-8000-000000000001","bootId":"b","seq":1,"uptimeMs":5,"wallTime":6}"#;
        assert!(Event::parse(bad_mac)
            .expect_err("bad mac")
            .starts_with("mac"));
    }
}
