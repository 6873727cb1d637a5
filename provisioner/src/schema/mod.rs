//! The protocol between node and server: enrolment, events a node reports, log lines,
//! the server's reply, and (in [`config`]) the machine configuration a node applies.
//! Versioned (`apiVersion: plinth/v1`) and strict: unknown fields are rejected so that a
//! typo is an error, not silently dropped data.

pub mod config;
pub mod containers;
pub mod extensions;
pub mod kubernetes;

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
    /// plinth-init is up with identity.
    Booted,
    /// Network configured.
    Network,
    /// Enrolled: the node holds a client certificate.
    Enrolled,
    /// Config fetched.
    Config,
    /// Config applied.
    Applied,
    /// An extension fetched, its digest checked and unpacked.
    Extension,
    /// A service or container changed state.
    Service,
    /// An image pulled, or failing to be.
    Image,
    /// Joined Kubernetes.
    Joined,
    /// Something failed.
    Error,
    /// Something that looks like an attack (recorded by the server).
    Security,
    /// The node is shutting down.
    Shutdown,
    /// A PXE client's DHCP packet the server answered (recorded by the server).
    Dhcp,
    /// A file of the boot chain the server served, over TFTP or HTTP (recorded by the
    /// server).
    File,
    /// An operator's action on the machine: accept, release, poweroff, reboot, inspect
    /// (recorded by the server, with the operator's name).
    Action,
    /// What the server did for the machine in its Kubernetes cluster: a bootstrap token
    /// minted, a kubelet's certificate request approved or denied (recorded by the server).
    Kubernetes,
}

impl EventKind {
    /// Whether only the server makes events of this kind (a node's is refused).
    pub fn server_only(self) -> bool {
        matches!(
            self,
            EventKind::Security
                | EventKind::Dhcp
                | EventKind::File
                | EventKind::Action
                | EventKind::Kubernetes
        )
    }
}

/// What the server asks the node to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stop services, sync, power off.
    Poweroff,
    /// Stop services, sync, reboot.
    Reboot,
    /// Fetch the config now: an operator accepted the (discovered) machine.
    Configure,
    /// Report what the node reads of each running container (ids, maps, limits).
    Inspect,
}

/// The server's reply to an event or an action poll.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    /// An action for the node, if the operator asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
}

/// The largest log batch the server accepts.
pub const MAX_LOG_BYTES: usize = 256 * 1024;

/// The largest enrolment or renewal request the server accepts.
pub const MAX_ENROLL_BYTES: usize = 16 * 1024;

/// `POST /v1/enroll`: a booting node's first call, over HTTPS checked against the pin.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EnrollRequest {
    /// Must be [`API_VERSION`].
    pub api_version: String,
    /// `plinth.token=` from the kernel command line.
    pub token: String,
    /// The boot NIC's MAC.
    pub mac: String,
    /// The SMBIOS UUID.
    pub uuid: String,
    /// The SMBIOS serial, when the firmware has one.
    #[serde(default)]
    pub serial: Option<String>,
    /// The kernel's boot id: certificates are issued per boot.
    pub boot_id: String,
    /// A PKCS#10 request (PEM) for the node's fresh key; only its public key is used.
    pub csr: String,
}

/// The token is a secret: it never reaches a log through `{:?}`.
impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("mac", &self.mac)
            .field("uuid", &self.uuid)
            .field("bootId", &self.boot_id)
            .field("token", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// `POST /v1/renew` (mutual TLS): a new key's CSR, signed while the current certificate
/// is still valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RenewRequest {
    /// A PKCS#10 request (PEM) for the node's new key.
    pub csr: String,
}

/// The server's answer to an enrolment or a renewal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Issued {
    /// The client certificate (PEM).
    pub certificate: String,
    /// Its serial number, lower-case hex.
    pub serial: String,
    /// When it stops being valid, seconds since the epoch.
    pub not_after: u64,
    /// When the node should renew it (half its life), seconds since the epoch.
    pub renew_at: u64,
    /// A discovery-only certificate: events and the action poll, no config until an
    /// operator accepts the machine (the poll then says `configure`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovery: bool,
}

/// `POST /v1/logs` (mutual TLS): console and kernel lines, the token already redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogBatch {
    /// The boot the lines belong to (the certificate's).
    pub boot_id: String,
    /// The lines, oldest first.
    pub lines: Vec<LogLine>,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogLine {
    /// Where it came from: `console` (plinth-init), `kmsg` (the kernel), or
    /// `container/NAME/stdout` and `container/NAME/stderr`.
    pub source: String,
    /// The text, without the newline.
    pub text: String,
}

/// This machine's wall clock in seconds since the epoch (0 if it is set before 1970):
/// [`Event::wall_time`] on the node, receipt times on the server.
pub fn unix_time() -> u64 {
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
