//! The embedded store: one JSON file per machine under `<data>/machines/`, each written
//! atomically (temp file, fsync, rename, fsync of the directory) so that a kill -9 leaves
//! either the old or the new record; everything is read back at start. It holds what an
//! operator declared, the machine's one enrolment token (as a hash), the certificates
//! issued to it, its quarantine, and its timeline. Only declared machines have records:
//! what anyone says about another MAC goes to the audit trail alone. Logs and the audit
//! trail are append-only files beside it. Every file is private (0600, directories
//! 0700).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{io, Error, Result};
use crate::schema::config::MachineConfig;
use crate::schema::{unix_time, Action, Event, EventKind, API_VERSION};

/// How many events other than `security` ones are kept per machine (oldest dropped
/// first).
pub const MAX_EVENTS: usize = 500;

/// How many `security` events are kept per machine, counted apart from the others: no
/// number of ordinary events trims one (oldest dropped first).
pub const MAX_SECURITY_EVENTS: usize = 200;

/// A server event repeating one of the last this many events of its machine and boot
/// (same type and reason, within [`REPEAT_WINDOW_SECS`]) is counted on it (`count`,
/// `lastAt`, `lastFrom`) instead of added.
const REPEAT_LOOKBACK: usize = 32;

/// How long a server event gathers its repeats.
const REPEAT_WINDOW_SECS: u64 = 3600;

/// The audit trail is rotated at this size: `audit.jsonl` becomes `audit.jsonl.1`
/// (replacing the one before) and a new one starts.
pub const MAX_AUDIT_BYTES: u64 = 64 << 20;

/// The longest `request` an audit line keeps (longer ones are cut and say so).
pub const MAX_AUDIT_REQUEST: usize = 512;

/// The longest `who` or `outcome` an audit line keeps.
pub const MAX_AUDIT_TEXT: usize = 1024;

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
    /// Why it was voided, when an enrolment presenting it was refused (it is spent then
    /// too, but bought no certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voided: Option<String>,
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

    /// Whether an operator declared it.
    pub fn is_declared(&self) -> bool {
        self.declared.is_some()
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

/// What a renewal came to, decided under the store's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The new certificate is stored; every other one of the machine is revoked.
    Issued,
    /// Refused, and why: the presented certificate stopped being valid after the request
    /// was let in (a newer enrolment or renewal, expiry), or the machine is in quarantine.
    Refused(String),
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
    /// Opens (creating) the store under `data`, loading every machine record; temp files
    /// a crash left behind are removed.
    pub fn open(data: &Path) -> Result<Store> {
        let dir = data.join("machines");
        private_dir(&dir)?;
        let mut machines = BTreeMap::new();
        let mut serials = HashMap::new();
        let rd = std::fs::read_dir(&dir).map_err(io("listing", &dir))?;
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            if is_temp(&p) {
                let _ = std::fs::remove_file(&p);
                continue;
            }
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

    /// A machine an operator declared.
    pub fn declared(&self, mac: &str) -> Option<&Machine> {
        self.machines.get(mac).filter(|m| m.is_declared())
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

    /// Declares (or re-declares) a machine with its UUID and config: the only way a
    /// record is made.
    pub fn declare(&mut self, mac: &str, declared: Declared) -> Result<()> {
        self.machines
            .entry(mac.to_string())
            .or_insert_with(|| Machine::new(mac))
            .declared = Some(declared);
        self.save(mac)
    }

    /// Records a node's event and returns the machine's pending action, clearing it (the
    /// reply delivers it). Nothing is recorded for a machine without a record.
    pub fn record(&mut self, mac: &str, ev: Event) -> Result<Option<Action>> {
        let Some(m) = self.machines.get_mut(mac) else {
            return Ok(None);
        };
        m.events.push(Recorded {
            received_at: unix_time(),
            source: Source::Node,
            event: ev,
        });
        trim_events(&mut m.events);
        let action = m.pending_action.take();
        self.save(mac)?;
        Ok(action)
    }

    /// Records an event the server itself makes about a declared machine (nothing for
    /// any other MAC: the caller's audit line is all there is of it); returns whether it
    /// did. A repeat of a recent server event (same type, boot and `reason` or `error`)
    /// is counted on it instead.
    pub fn server_event(
        &mut self,
        mac: &str,
        boot_id: &str,
        kind: EventKind,
        details: Map<String, Value>,
    ) -> Result<bool> {
        let now = unix_time();
        let Some(m) = self.machines.get_mut(mac).filter(|m| m.is_declared()) else {
            return Ok(false);
        };
        let key = ["reason", "error"]
            .iter()
            .find_map(|k| details.get(*k).map(|v| (*k, v.clone())));
        if let Some((field, value)) = key {
            let repeat = m.events.iter_mut().rev().take(REPEAT_LOOKBACK).find(|r| {
                r.source == Source::Server
                    && r.event.kind == kind
                    && r.event.boot_id == boot_id
                    && now.saturating_sub(r.received_at) < REPEAT_WINDOW_SECS
                    && r.event.details.get(field) == Some(&value)
            });
            if let Some(r) = repeat {
                let d = &mut r.event.details;
                let count = d.get("count").and_then(Value::as_u64).unwrap_or(1);
                d.insert("count".into(), json!(count.saturating_add(1)));
                d.insert("lastAt".into(), json!(now));
                if let Some(from) = details.get("from") {
                    d.insert("lastFrom".into(), from.clone());
                }
                self.save(mac)?;
                return Ok(true);
            }
        }
        let uuid = m
            .declared
            .as_ref()
            .map(|d| d.uuid.clone())
            .unwrap_or_default();
        m.events.push(Recorded {
            received_at: now,
            source: Source::Server,
            event: Event {
                api_version: API_VERSION.into(),
                kind,
                mac: mac.to_string(),
                uuid,
                boot_id: boot_id.to_string(),
                seq: 0,
                uptime_ms: 0,
                wall_time: now,
                details,
            },
        });
        trim_events(&mut m.events);
        self.save(mac)?;
        Ok(true)
    }

    /// A `security` event (`reason`, and the peer's address when there is one) on a
    /// declared machine; see [`Store::server_event`].
    pub fn security_event(
        &mut self,
        mac: &str,
        boot_id: &str,
        reason: &str,
        from: Option<&str>,
    ) -> Result<bool> {
        let mut d = Map::new();
        d.insert("reason".into(), json!(reason));
        if let Some(f) = from {
            d.insert("from".into(), json!(f));
        }
        self.server_event(mac, boot_id, EventKind::Security, d)
    }

    /// Puts a machine in quarantine and revokes every certificate it holds.
    pub fn quarantine(&mut self, mac: &str, reason: &str) -> Result<()> {
        let now = unix_time();
        let Some(m) = self.machines.get_mut(mac) else {
            return Ok(());
        };
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

    /// Notes a declared machine's boot-script fetch and stores a freshly minted token's
    /// hash, if any; nothing for any other MAC.
    pub fn note_pxe(&mut self, mac: &str, pxe: Pxe, token: Option<Token>) -> Result<()> {
        let Some(m) = self.machines.get_mut(mac).filter(|m| m.is_declared()) else {
            return Ok(());
        };
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

    /// Voids the machine's token when it is the one with `hash` and unspent: an
    /// enrolment presenting it was refused, so the next boot-script fetch mints a new
    /// one instead of counting as a second mint. Returns whether it did.
    pub fn void_token(&mut self, mac: &str, hash: &str, why: &str) -> Result<bool> {
        let now = unix_time();
        let Some(t) = self
            .machines
            .get_mut(mac)
            .and_then(|m| m.token.as_mut())
            .filter(|t| t.spent_at.is_none() && crate::crypto::same(&t.hash, hash))
        else {
            return Ok(false);
        };
        t.spent_at = Some(now);
        t.voided = Some(why.to_string());
        self.save(mac)?;
        Ok(true)
    }

    /// Adds a certificate, first revoking the machine's other valid ones with `why`.
    pub fn add_cert(&mut self, mac: &str, cert: Cert, why: &str) -> Result<()> {
        let Some(m) = self.machines.get_mut(mac) else {
            return Err(Error::Protocol {
                what: format!("storing a certificate for {mac}"),
                reason: "no such machine".into(),
            });
        };
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

    /// Stores a renewal's certificate, if the one it was presented with (`presented`) is
    /// still valid now and the machine is not in quarantine: checked here, under the
    /// lock that adds it, so that nothing revoking the presented certificate (a newer
    /// enrolment, a quarantine, another renewal) can slip between the check and the add.
    pub fn renew_cert(&mut self, mac: &str, presented: &str, cert: Cert) -> Result<Renewal> {
        let now = unix_time();
        let Some(m) = self.machines.get(mac) else {
            return Ok(Renewal::Refused(format!("machine {mac} is not known")));
        };
        if let Some(q) = &m.quarantine {
            return Ok(Renewal::Refused(format!(
                "machine {mac} is in quarantine: {}",
                q.reason
            )));
        }
        if m.valid_cert(presented, now).is_none() {
            let why = m
                .certs
                .iter()
                .find(|c| c.serial == presented)
                .and_then(|c| c.revoked.clone())
                .unwrap_or_else(|| "expired".into());
            return Ok(Renewal::Refused(format!(
                "certificate {presented} is no longer valid ({why})"
            )));
        }
        let why = format!("renewed as {}", cert.serial);
        self.add_cert(mac, cert, &why)?;
        Ok(Renewal::Issued)
    }

    /// Queues an action for a machine (none for a MAC without a record).
    pub fn set_action(&mut self, mac: &str, action: Action) -> Result<()> {
        let Some(m) = self.machines.get_mut(mac) else {
            return Ok(());
        };
        m.pending_action = Some(action);
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
        use std::os::unix::fs::OpenOptionsExt;
        let dir = self.log_dir(mac);
        private_dir(&dir)?;
        let path = dir.join(format!("{boot_id}.log"));
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
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
}

/// Drops the oldest events beyond the caps: [`MAX_EVENTS`] for the ordinary ones and,
/// counted apart, [`MAX_SECURITY_EVENTS`] for `security` ones.
fn trim_events(events: &mut Vec<Recorded>) {
    let security = events
        .iter()
        .filter(|r| r.event.kind == EventKind::Security)
        .count();
    let mut drop_security = security.saturating_sub(MAX_SECURITY_EVENTS);
    let mut drop_other = (events.len() - security).saturating_sub(MAX_EVENTS);
    if drop_security == 0 && drop_other == 0 {
        return;
    }
    events.retain(|r| {
        let budget = if r.event.kind == EventKind::Security {
            &mut drop_security
        } else {
            &mut drop_other
        };
        if *budget > 0 {
            *budget -= 1;
            false
        } else {
            true
        }
    });
}

/// The audit trail, `<data>/audit.jsonl`: one JSON line per refusal and per change,
/// each synced; lines are cut to a bounded length and the file is rotated at
/// [`MAX_AUDIT_BYTES`]. It has its own lock, apart from the store's.
#[derive(Debug)]
pub struct AuditTrail {
    path: PathBuf,
    file: Option<std::fs::File>,
    len: u64,
    max: u64,
}

impl AuditTrail {
    /// The trail under `data` (opened at the first line).
    pub fn new(data: &Path) -> AuditTrail {
        AuditTrail::with_limit(data, MAX_AUDIT_BYTES)
    }

    /// The trail under `data`, rotated at `max` bytes.
    pub fn with_limit(data: &Path, max: u64) -> AuditTrail {
        AuditTrail {
            path: data.join("audit.jsonl"),
            file: None,
            len: 0,
            max,
        }
    }

    fn open(&mut self) -> Result<&mut std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.path)
                .map_err(io("opening audit trail", &self.path))?;
            self.len = f
                .metadata()
                .map_err(io("reading the size of", &self.path))?
                .len();
            self.file = Some(f);
        }
        self.file.as_mut().ok_or_else(|| Error::Protocol {
            what: "the audit trail".into(),
            reason: "not open".into(),
        })
    }

    /// Appends one line, synced: what an operator did, and every refused request,
    /// survive a crash.
    pub fn append(&mut self, a: &Audit) -> Result<()> {
        let a = Audit {
            at: a.at,
            who: cut(&a.who, MAX_AUDIT_TEXT),
            from: cut(&a.from, MAX_AUDIT_TEXT),
            request: cut(&a.request, MAX_AUDIT_REQUEST),
            outcome: cut(&a.outcome, MAX_AUDIT_TEXT),
        };
        let mut line = serde_json::to_vec(&a).map_err(|source| Error::Json {
            what: "encoding an audit line".into(),
            source,
        })?;
        line.push(b'\n');
        self.open()?;
        if self.len > 0 && self.len + line.len() as u64 > self.max {
            self.file = None;
            let old = self.path.with_extension("jsonl.1");
            std::fs::rename(&self.path, &old).map_err(io("rotating", &self.path))?;
            self.open()?;
        }
        let path = self.path.clone();
        let f = self.open()?;
        f.write_all(&line).map_err(io("appending to", &path))?;
        f.sync_data().map_err(io("syncing", &path))?;
        self.len += line.len() as u64;
        Ok(())
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), saying how long it was.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} bytes]", &s[..end], s.len())
}

/// Creates `dir` (and its parents) as 0700 where missing.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating directory", dir))
}

/// Writes `body` to `path` atomically and durably (temp file, fsync, rename, fsync dir),
/// private (0600).
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<()> {
    write_atomic_mode(path, body, 0o600)
}

/// Whether `p` is one of [`write_atomic_mode`]'s temp files.
fn is_temp(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
}

/// [`write_atomic`] with the file's permission bits. The temp file beside `path` has a
/// name of its own (`.NAME.RANDOM.tmp`), is created exclusively (never through a
/// symlink or into an existing file) and given `mode` exactly, whatever the umask.
pub fn write_atomic_mode(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.tmp",
        crate::crypto::hex(&crate::crypto::random_bytes(8)?)
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    let written = f
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &tmp))
        .and_then(|()| f.write_all(body).map_err(io("writing", &tmp)))
        .and_then(|()| f.sync_all().map_err(io("syncing", &tmp)))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io("renaming into place", path)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = std::fs::File::open(dir) {
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
            mac: MAC.into(),
            uuid: "6e4a2b1c-0000-4000-8000-000000000001".into(),
            boot_id: "b".into(),
            seq,
            uptime_ms: 1,
            wall_time: 2,
            details: Default::default(),
        }
    }

    const MAC: &str = "52:54:00:12:34:56";

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plinth-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn declared() -> Declared {
        Declared {
            uuid: "6e4a2b1c-0000-4000-8000-000000000001".into(),
            config: serde_json::from_str(r#"{"apiVersion": "plinth/v1"}"#).expect("config"),
            by: "admin".into(),
            at: 1,
        }
    }

    fn cert(serial: &str) -> Cert {
        Cert {
            serial: serial.into(),
            boot_id: "b".into(),
            issued_at: 1,
            not_after: u64::MAX,
            revoked: None,
        }
    }

    fn valid(s: &Store) -> Vec<String> {
        s.machine(MAC)
            .expect("machine")
            .certs
            .iter()
            .filter(|c| c.revoked.is_none())
            .map(|c| c.serial.clone())
            .collect()
    }

    #[test]
    fn survives_reopen_and_hands_out_actions_once() {
        let dir = scratch("reopen");
        {
            let mut s = Store::open(&dir).expect("open");
            s.declare(MAC, declared()).expect("declare");
            assert_eq!(s.record(MAC, event(1)).expect("record"), None);
            s.set_action(MAC, Action::Poweroff).expect("set");
            s.add_cert(MAC, cert("0a"), "x").expect("cert");
        }
        // A temp file a crash left is cleared at the next open.
        std::fs::write(dir.join("machines/.x.json.0011.tmp"), b"{").expect("temp");
        let mut s = Store::open(&dir).expect("reopen");
        let m = s.machine(MAC).expect("machine kept");
        assert_eq!(m.events.len(), 1);
        assert_eq!(m.pending_action, Some(Action::Poweroff));
        assert_eq!(s.machine_of_serial("0a").map(|m| m.mac.as_str()), Some(MAC));
        assert_eq!(
            s.record(MAC, event(2)).expect("record"),
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
    fn a_renewal_is_checked_under_the_lock_that_adds_it() {
        let dir = scratch("renew");
        let mut s = Store::open(&dir).expect("open");
        s.declare(MAC, declared()).expect("declare");
        s.add_cert(MAC, cert("c1"), "x").expect("c1");
        // A newer enrolment superseded c1: a renewal presenting it is refused and leaves
        // the newer certificate alone.
        s.add_cert(MAC, cert("c2"), "superseded").expect("c2");
        let r = s.renew_cert(MAC, "c1", cert("c3")).expect("renew");
        assert!(
            matches!(&r, Renewal::Refused(w) if w.contains("superseded")),
            "{r:?}"
        );
        assert_eq!(valid(&s), ["c2"]);
        assert!(s.machine_of_serial("c3").is_none());
        assert_eq!(
            s.renew_cert(MAC, "c2", cert("c3")).expect("renew"),
            Renewal::Issued
        );
        assert_eq!(valid(&s), ["c3"]);
        // A second renewal with c2 (a race lost) is refused.
        assert!(matches!(
            s.renew_cert(MAC, "c2", cert("c4")).expect("renew"),
            Renewal::Refused(_)
        ));
        // In quarantine, even a certificate still marked valid renews nothing.
        s.machines.get_mut(MAC).expect("m").quarantine = Some(Quarantine {
            since: 1,
            reason: "replay".into(),
        });
        let r = s.renew_cert(MAC, "c3", cert("c5")).expect("renew");
        assert!(
            matches!(&r, Renewal::Refused(w) if w.contains("quarantine")),
            "{r:?}"
        );
        assert_eq!(valid(&s), ["c3"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn floods_neither_make_records_nor_trim_security_events() {
        let dir = scratch("flood");
        let mut s = Store::open(&dir).expect("open");
        // Nothing for a MAC nobody declared.
        assert!(!s
            .security_event("02:00:00:00:00:01", "", "junk", None)
            .expect("event"));
        s.note_pxe(
            "02:00:00:00:00:01",
            Pxe {
                at: 1,
                uuid: None,
                serial: None,
                token_minted: false,
            },
            None,
        )
        .expect("pxe");
        assert!(s.machines().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.join("machines")).expect("ls").count(),
            0
        );
        s.declare(MAC, declared()).expect("declare");
        assert!(s
            .security_event(MAC, "", "the real one", None)
            .expect("event"));
        // Ordinary events never trim a security event.
        for i in 0..(MAX_EVENTS as u64 + 100) {
            s.record(MAC, event(i)).expect("record");
        }
        let m = s.machine(MAC).expect("m");
        assert_eq!(m.events.len(), MAX_EVENTS + 1);
        assert_eq!(m.events[0].event.kind, EventKind::Security);
        // A repeated security event is counted on one.
        for _ in 0..600 {
            s.security_event(MAC, "", "junk", Some("10.0.0.9:1"))
                .expect("event");
        }
        let junk: Vec<_> = s
            .machine(MAC)
            .expect("m")
            .events
            .iter()
            .filter(|r| r.event.details.get("reason") == Some(&json!("junk")))
            .collect();
        assert_eq!(junk.len(), 1);
        assert_eq!(junk[0].event.details.get("count"), Some(&json!(600)));
        assert_eq!(
            junk[0].event.details.get("lastFrom"),
            Some(&json!("10.0.0.9:1"))
        );
        // Distinct ones beyond the cap drop the oldest security events only.
        for i in 0..MAX_SECURITY_EVENTS {
            s.security_event(MAC, "", &format!("junk {i}"), None)
                .expect("event");
        }
        let m = s.machine(MAC).expect("m");
        let security = m
            .events
            .iter()
            .filter(|r| r.event.kind == EventKind::Security)
            .count();
        assert_eq!(security, MAX_SECURITY_EVENTS);
        assert_eq!(m.events.len() - security, MAX_EVENTS);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn private_files_audit_lines_cut_and_rotated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("files");
        private_dir(&dir).expect("mkdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        // A file that was 0644 is replaced by a 0600 one; a 0644 write stays 0644.
        let f = dir.join("f");
        std::fs::write(&f, b"old").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&f, b"new").expect("atomic");
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read(&f).expect("read"), b"new");
        write_atomic_mode(&dir.join("g"), b"g", 0o644).expect("atomic");
        assert_eq!(mode(&dir.join("g")), 0o644);
        let mut a = AuditTrail::with_limit(&dir, 4096);
        let line = |request: String| Audit {
            at: 1,
            who: "anonymous".into(),
            from: "127.0.0.1:1".into(),
            request,
            outcome: "refused: 404 not found".into(),
        };
        a.append(&line(format!("GET /{}", "a".repeat(20_000))))
            .expect("append");
        let text = std::fs::read_to_string(dir.join("audit.jsonl")).expect("read");
        assert!(text.len() < 1024, "{}", text.len());
        assert!(text.contains("[20005 bytes]"), "{text}");
        assert_eq!(mode(&dir.join("audit.jsonl")), 0o600);
        for i in 0..100 {
            a.append(&line(format!("GET /{i}"))).expect("append");
        }
        let now = std::fs::metadata(dir.join("audit.jsonl"))
            .expect("stat")
            .len();
        let old = std::fs::metadata(dir.join("audit.jsonl.1"))
            .expect("stat")
            .len();
        assert!(now <= 4096 && old <= 4096, "{now} {old}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn corrupt_record_is_an_error_naming_the_file() {
        let dir = scratch("bad");
        std::fs::create_dir_all(dir.join("machines")).expect("mkdir");
        std::fs::write(dir.join("machines/x.json"), b"{not json").expect("write");
        let err = Store::open(&dir).expect_err("corrupt");
        assert!(err.to_string().contains("x.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
