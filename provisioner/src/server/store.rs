//! The embedded store: one JSON file per machine under `<data>/machines/`, each written
//! atomically (temp file, fsync, rename, fsync of the directory) so that a kill -9 leaves
//! either the old or the new record; everything is read back at start. It holds what an
//! operator declared, the machine's one enrolment token (as a hash), the certificates
//! issued to it, its quarantine, and its timeline. Logs and the audit trail are
//! append-only files beside it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};
use crate::schema::config::MachineConfig;
use crate::schema::{unix_time, Action, Event, EventKind, API_VERSION};

/// How many events are kept per machine (oldest dropped first).
pub const MAX_EVENTS: usize = 500;

/// How many certificate records are kept per machine (oldest dropped first).
pub const MAX_CERTS: usize = 50;

/// The most log bytes kept per boot; later lines are dropped (and counted).
pub const MAX_LOG_BYTES_PER_BOOT: u64 = 8 << 20;

/// Who produced an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The node reported it over mutual TLS.
    Node,
    /// The server recorded it (enrolment refusals, attacks).
    Server,
}

/// An event as the server received or made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Recorded {
    /// Server wall time at receipt, seconds since the epoch.
    pub received_at: u64,
    /// Who made it.
    pub source: Source,
    /// The event.
    pub event: Event,
}

/// What an operator declared about a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Declared {
    /// The SMBIOS UUID the machine must present.
    pub uuid: String,
    /// Its configuration.
    pub config: MachineConfig,
    /// Which operator declared it last.
    pub by: String,
    /// When, seconds since the epoch.
    pub at: u64,
}

/// The machine's enrolment token. Only its hash is ever stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Token {
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// The UUID it is bound to.
    pub uuid: String,
    /// When it was minted.
    pub minted_at: u64,
    /// When it stops being accepted.
    pub expires_at: u64,
    /// When it was spent, if it was.
    #[serde(default)]
    pub spent_at: Option<u64>,
}

impl Token {
    /// Unspent and unexpired at `now`.
    pub fn outstanding(&self, now: u64) -> bool {
        self.spent_at.is_none() && now < self.expires_at
    }
}

/// A client certificate issued to the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cert {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// The boot it was issued for.
    pub boot_id: String,
    /// Issued at, seconds since the epoch.
    pub issued_at: u64,
    /// Valid until.
    pub not_after: u64,
    /// Why it no longer counts, if it does not.
    #[serde(default)]
    pub revoked: Option<String>,
}

/// Why a machine is in quarantine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quarantine {
    /// Since when.
    pub since: u64,
    /// What happened.
    pub reason: String,
}

/// A boot-script fetch: the machine is at the PXE stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pxe {
    /// Server wall time, seconds since the epoch.
    pub at: u64,
    /// `${uuid}` as iPXE sent it.
    #[serde(default)]
    pub uuid: Option<String>,
    /// `${serial}` as iPXE sent it.
    #[serde(default)]
    pub serial: Option<String>,
    /// Whether a token was minted into the script.
    #[serde(default)]
    pub token_minted: bool,
}

/// What the server knows about one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    /// The boot NIC's MAC (the key).
    pub mac: String,
    /// What an operator declared; `None` for a machine only seen at PXE.
    #[serde(default)]
    pub declared: Option<Declared>,
    /// Set while the machine gets no token, no config and no secrets.
    #[serde(default)]
    pub quarantine: Option<Quarantine>,
    /// The last token minted for it.
    #[serde(default)]
    pub token: Option<Token>,
    /// Certificates issued, oldest first.
    #[serde(default)]
    pub certs: Vec<Cert>,
    /// An action waiting for the machine to pick it up.
    #[serde(default)]
    pub pending_action: Option<Action>,
    /// Its events, oldest first.
    #[serde(default)]
    pub events: Vec<Recorded>,
    /// The last time its firmware fetched the boot script.
    #[serde(default)]
    pub last_pxe: Option<Pxe>,
}

impl Machine {
    fn new(mac: &str) -> Machine {
        Machine {
            mac: mac.to_string(),
            declared: None,
            quarantine: None,
            token: None,
            certs: Vec::new(),
            pending_action: None,
            events: Vec::new(),
            last_pxe: None,
        }
    }

    /// The certificate with `serial`, when it is neither revoked nor expired at `now`.
    pub fn valid_cert(&self, serial: &str, now: u64) -> Option<&Cert> {
        self.certs
            .iter()
            .find(|c| c.serial == serial && c.revoked.is_none() && now < c.not_after)
    }
}

/// One line of the audit trail (`<data>/audit.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Audit {
    /// Seconds since the epoch.
    pub at: u64,
    /// `operator:NAME`, `node:MAC`, or `anonymous`.
    pub who: String,
    /// The peer's address.
    pub from: String,
    /// `METHOD /path`.
    pub request: String,
    /// `ok`, or `refused: why`.
    pub outcome: String,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    data: PathBuf,
    dir: PathBuf,
    machines: BTreeMap<String, Machine>,
    /// Certificate serial -> MAC, for every certificate ever issued.
    serials: HashMap<String, String>,
}

impl Store {
    /// Opens (creating) the store under `data`, loading every machine record.
    pub fn open(data: &Path) -> Result<Store> {
        let dir = data.join("machines");
        std::fs::create_dir_all(&dir).map_err(io("creating store directory", &dir))?;
        let mut machines = BTreeMap::new();
        let mut serials = HashMap::new();
        let rd = std::fs::read_dir(&dir).map_err(io("listing", &dir))?;
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let text = std::fs::read(&p).map_err(io("reading", &p))?;
            let m: Machine = serde_json::from_slice(&text).map_err(|source| Error::Json {
                what: format!("loading {}", p.display()),
                source,
            })?;
            for c in &m.certs {
                serials.insert(c.serial.clone(), m.mac.clone());
            }
            machines.insert(m.mac.clone(), m);
        }
        Ok(Store {
            data: data.to_path_buf(),
            dir,
            machines,
            serials,
        })
    }

    fn entry(&mut self, mac: &str) -> &mut Machine {
        self.machines
            .entry(mac.to_string())
            .or_insert_with(|| Machine::new(mac))
    }

    fn path_for(&self, mac: &str) -> PathBuf {
        self.dir.join(format!("{}.json", mac.replace(':', "-")))
    }

    fn save(&self, mac: &str) -> Result<()> {
        let Some(m) = self.machines.get(mac) else {
            return Ok(());
        };
        let path = self.path_for(mac);
        let body = serde_json::to_vec_pretty(m).map_err(|source| Error::Json {
            what: format!("encoding {}", path.display()),
            source,
        })?;
        write_atomic(&path, &body)
    }

    /// Every machine, by MAC.
    pub fn machines(&self) -> Vec<&Machine> {
        self.machines.values().collect()
    }

    /// One machine.
    pub fn machine(&self, mac: &str) -> Option<&Machine> {
        self.machines.get(mac)
    }

    /// The machine a certificate serial was issued to.
    pub fn machine_of_serial(&self, serial: &str) -> Option<&Machine> {
        self.serials.get(serial).and_then(|m| self.machines.get(m))
    }

    /// The machine whose last token has this hash.
    pub fn machine_of_token(&self, hash: &str) -> Option<&Machine> {
        self.machines.values().find(|m| {
            m.token
                .as_ref()
                .is_some_and(|t| crate::crypto::same(&t.hash, hash))
        })
    }

    /// Declares (or re-declares) a machine with its UUID and config.
    pub fn declare(&mut self, mac: &str, declared: Declared) -> Result<()> {
        self.entry(mac).declared = Some(declared);
        self.save(mac)
    }

    /// Records an event and returns the machine's pending action, clearing it when the
    /// event came from the node (the reply delivers it).
    pub fn record(&mut self, mac: &str, source: Source, ev: Event) -> Result<Option<Action>> {
        let m = self.entry(mac);
        m.events.push(Recorded {
            received_at: unix_time(),
            source,
            event: ev,
        });
        if m.events.len() > MAX_EVENTS {
            let drop = m.events.len() - MAX_EVENTS;
            m.events.drain(..drop);
        }
        let action = if source == Source::Node {
            m.pending_action.take()
        } else {
            None
        };
        self.save(mac)?;
        Ok(action)
    }

    /// Records an event the server itself makes about a machine.
    pub fn server_event(
        &mut self,
        mac: &str,
        boot_id: &str,
        kind: EventKind,
        details: serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let uuid = self
            .machines
            .get(mac)
            .and_then(|m| m.declared.as_ref().map(|d| d.uuid.clone()))
            .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into());
        let ev = Event {
            api_version: API_VERSION.into(),
            kind,
            mac: mac.to_string(),
            uuid,
            boot_id: boot_id.to_string(),
            seq: 0,
            uptime_ms: 0,
            wall_time: unix_time(),
            details,
        };
        self.record(mac, Source::Server, ev).map(|_| ())
    }

    /// Puts a machine in quarantine and revokes every certificate it holds.
    pub fn quarantine(&mut self, mac: &str, reason: &str) -> Result<()> {
        let now = unix_time();
        let m = self.entry(mac);
        if m.quarantine.is_none() {
            m.quarantine = Some(Quarantine {
                since: now,
                reason: reason.to_string(),
            });
        }
        for c in m.certs.iter_mut().filter(|c| c.revoked.is_none()) {
            c.revoked = Some(format!("quarantine: {reason}"));
        }
        // An outstanding token is void too: after a release, the next boot gets a new one.
        m.token = None;
        self.save(mac)
    }

    /// Lifts a machine's quarantine; returns whether it was in one.
    pub fn release(&mut self, mac: &str) -> Result<bool> {
        let Some(m) = self.machines.get_mut(mac) else {
            return Ok(false);
        };
        let was = m.quarantine.take().is_some();
        self.save(mac)?;
        Ok(was)
    }

    /// Notes a boot-script fetch and stores a freshly minted token's hash, if any.
    pub fn note_pxe(&mut self, mac: &str, pxe: Pxe, token: Option<Token>) -> Result<()> {
        let m = self.entry(mac);
        m.last_pxe = Some(pxe);
        if token.is_some() {
            m.token = token;
        }
        self.save(mac)
    }

    /// Marks the machine's token spent.
    pub fn spend_token(&mut self, mac: &str) -> Result<()> {
        let now = unix_time();
        if let Some(t) = self.machines.get_mut(mac).and_then(|m| m.token.as_mut()) {
            t.spent_at.get_or_insert(now);
        }
        self.save(mac)
    }

    /// Adds a certificate, first revoking the machine's other valid ones with `why`.
    pub fn add_cert(&mut self, mac: &str, cert: Cert, why: &str) -> Result<()> {
        let m = self.entry(mac);
        for c in m.certs.iter_mut().filter(|c| c.revoked.is_none()) {
            c.revoked = Some(why.to_string());
        }
        m.certs.push(cert.clone());
        if m.certs.len() > MAX_CERTS {
            let drop = m.certs.len() - MAX_CERTS;
            m.certs.drain(..drop);
        }
        self.serials.insert(cert.serial, mac.to_string());
        self.save(mac)
    }

    /// Queues an action for a machine.
    pub fn set_action(&mut self, mac: &str, action: Action) -> Result<()> {
        self.entry(mac).pending_action = Some(action);
        self.save(mac)
    }

    /// Takes a machine's pending action, if any.
    pub fn take_action(&mut self, mac: &str) -> Result<Option<Action>> {
        let Some(m) = self.machines.get_mut(mac) else {
            return Ok(None);
        };
        let a = m.pending_action.take();
        if a.is_some() {
            self.save(mac)?;
        }
        Ok(a)
    }

    /// The directory holding a machine's logs, one file per boot.
    pub fn log_dir(&self, mac: &str) -> PathBuf {
        self.data.join("logs").join(mac.replace(':', "-"))
    }

    /// Appends lines to a boot's log, up to [`MAX_LOG_BYTES_PER_BOOT`]; returns how many
    /// lines were kept.
    pub fn append_log(&self, mac: &str, boot_id: &str, lines: &[String]) -> Result<usize> {
        let dir = self.log_dir(mac);
        std::fs::create_dir_all(&dir).map_err(io("creating log directory", &dir))?;
        let path = dir.join(format!("{boot_id}.log"));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("opening log", &path))?;
        let mut len = f.metadata().map_err(io("reading log size", &path))?.len();
        let mut kept = 0;
        let mut buf = Vec::new();
        for l in lines {
            if len + l.len() as u64 + 1 > MAX_LOG_BYTES_PER_BOOT {
                break;
            }
            buf.extend_from_slice(l.as_bytes());
            buf.push(b'\n');
            len += l.len() as u64 + 1;
            kept += 1;
        }
        f.write_all(&buf).map_err(io("appending to log", &path))?;
        Ok(kept)
    }

    /// Appends one line to the audit trail, synced: what an operator did, and every
    /// refused request, survive a crash.
    pub fn audit(&self, a: &Audit) -> Result<()> {
        let path = self.data.join("audit.jsonl");
        let mut line = serde_json::to_vec(a).map_err(|source| Error::Json {
            what: "encoding an audit line".into(),
            source,
        })?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("opening audit trail", &path))?;
        f.write_all(&line).map_err(io("appending to", &path))?;
        f.sync_data().map_err(io("syncing", &path))
    }
}

/// Writes `body` to `path` atomically and durably (temp file, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<()> {
    write_atomic_mode(path, body, 0o644)
}

/// [`write_atomic`] with the file's permission bits (0600 for keys and tokens).
pub fn write_atomic_mode(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(body).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    if let Some(d) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Event {
        Event {
            api_version: API_VERSION.into(),
            kind: EventKind::Booted,
            mac: "52:54:00:12:34:56".into(),
            uuid: "6e4a2b1c-0000-4000-8000-000000000001".into(),
            boot_id: "b".into(),
            seq,
            uptime_ms: 1,
            wall_time: 2,
            details: Default::default(),
        }
    }

    const MAC: &str = "52:54:00:12:34:56";

    #[test]
    fn survives_reopen_and_hands_out_actions_once() {
        let dir = std::env::temp_dir().join(format!("plinth-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = Store::open(&dir).expect("open");
            assert_eq!(s.record(MAC, Source::Node, event(1)).expect("record"), None);
            s.set_action(MAC, Action::Poweroff).expect("set");
            let cert = Cert {
                serial: "0a".into(),
                boot_id: "b".into(),
                issued_at: 1,
                not_after: u64::MAX,
                revoked: None,
            };
            s.add_cert(MAC, cert, "x").expect("cert");
        }
        let mut s = Store::open(&dir).expect("reopen");
        let m = s.machine(MAC).expect("machine kept");
        assert_eq!(m.events.len(), 1);
        assert_eq!(m.pending_action, Some(Action::Poweroff));
        assert_eq!(s.machine_of_serial("0a").map(|m| m.mac.as_str()), Some(MAC));
        assert_eq!(
            s.record(MAC, Source::Node, event(2)).expect("record"),
            Some(Action::Poweroff)
        );
        assert_eq!(s.take_action(MAC).expect("take"), None);
        s.quarantine(MAC, "test").expect("quarantine");
        assert!(s.machine(MAC).and_then(|m| m.valid_cert("0a", 0)).is_none());
        // No temp files left beside the records.
        let names: Vec<_> = std::fs::read_dir(dir.join("machines"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("52-54-00-12-34-56.json")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_record_is_an_error_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("plinth-store-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("machines")).expect("mkdir");
        std::fs::write(dir.join("machines/x.json"), b"{not json").expect("write");
        let err = Store::open(&dir).expect_err("corrupt");
        assert!(err.to_string().contains("x.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
