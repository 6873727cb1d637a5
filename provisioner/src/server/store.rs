//! The server's state, over the store interface ([`Kv`]): each machine's record, its
//! timeline per boot, its logs per boot, and the indexes from a certificate serial or a
//! token hash to the machine. Every change is one transaction that compares the
//! machine's record version, so a change made by someone else in between (another
//! server, once an etcd backend exists) is retried rather than overwritten.
//!
//! | key | value |
//! | --- | --- |
//! | `m/<mac>` | [`Machine`]: what is known and decided about it, and its boots |
//! | `e/<mac>/<boot>/<n>` | one [`Recorded`] event; `<boot>` is `-` for events of no boot |
//! | `l/<mac>/<boot>/<n>` | a batch of log lines |
//! | `s/<serial>` | the MAC a certificate was issued to |
//! | `t/<token hash>` | the MAC the token was minted for |
//! | `u/<uuid>` | the MACs a UUID was seen on (two make it a duplicate) |
//! | `srv/events` | the server's own events (config reloads) |
//!
//! Retention per machine: the last [`Limits::keep_boots`] boots (their events and logs),
//! at most [`Limits::max_log_bytes_per_boot`] of log per boot, and per boot (and for the
//! events of no boot) the last [`MAX_EVENTS`] events and, counted apart, the last
//! [`MAX_SECURITY_EVENTS`] `security` ones.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::schema::config::MachineConfig;
use crate::schema::{unix_time, Action, Event, EventKind, API_VERSION};
use crate::server::kv::{Kv, Retention, Txn};

/// How many events other than `security` ones are kept per boot (oldest dropped first).
pub const MAX_EVENTS: u32 = 500;

/// How many `security` events are kept per boot, counted apart from the others: no
/// number of ordinary events trims one (oldest dropped first).
pub const MAX_SECURITY_EVENTS: u32 = 200;

/// A server event repeating one of the last this many server events of its type, machine
/// and boot (same reason, within [`REPEAT_WINDOW_SECS`]) is counted on it (`count`,
/// `lastAt`, `lastFrom`) instead of added.
const REPEAT_LOOKBACK: usize = 32;

/// How long a server event gathers its repeats.
const REPEAT_WINDOW_SECS: u64 = 3600;

/// How many certificate records are kept per machine (oldest dropped first).
pub const MAX_CERTS: usize = 50;

/// How many of the server's own events are kept.
pub const MAX_SERVER_EVENTS: usize = 100;

/// The boot key of events that belong to no boot (refusals before enrolment).
/// The boot id under which the events of no boot are kept.
pub const NO_BOOT: &str = "-";

/// Retention, from the server's flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Boots kept per machine (events and logs); older ones are dropped whole.
    pub keep_boots: usize,
    /// Log bytes kept per boot; later lines are dropped and counted.
    pub max_log_bytes_per_boot: u64,
    /// How long events and logs are kept after they were written (the store drops
    /// them: on etcd by leases).
    pub keep_history: std::time::Duration,
}

impl Limits {
    fn retention(&self) -> Retention {
        Retention {
            keep: self.keep_history,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            keep_boots: 10,
            max_log_bytes_per_boot: 10 << 20,
            keep_history: std::time::Duration::from_secs(30 * 86400),
        }
    }
}

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
    /// The same in milliseconds (records of earlier versions have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at_ms: Option<u64>,
    /// Who made it.
    pub source: Source,
    /// The event.
    pub event: Event,
}

/// What an operator declared about a machine through the API.
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

/// A machine nobody declared, seen at PXE and given a discovery token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Discovered {
    /// When it was first seen.
    pub at: u64,
    /// From where.
    pub from: String,
}

/// An operator's acceptance of a discovered machine: the profile (and parameters) its
/// config is rendered from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Accepted {
    /// The profile of `--config-dir/profiles/` its config comes from.
    pub profile: String,
    /// Parameters for the profile, over the profile's and the defaults'.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Labels, which machine files may select it by.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Which operator accepted it.
    pub by: String,
    /// When.
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
    /// A discovery token: it buys a discovery-only certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovery: bool,
    /// The server that minted it ([`Store::server_id`]): when that server has stopped,
    /// the boot script that carried the token may never have been answered, so asking
    /// again is no second mint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minted_by: Option<String>,
    /// The address the boot script carrying it was sent to: only a retry from there
    /// may replace it when its server stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minted_to: Option<String>,
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
    /// Issued for a discovery token: no config until the machine is accepted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub discovery: bool,
    /// The SHA-256 of the public key it was issued for (hex): an enrolment repeated
    /// with the same key is a node whose answer was lost, not a replay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
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

/// One boot the store keeps events or logs of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootInfo {
    /// The boot id (`-` for events of no boot).
    pub boot_id: String,
    /// When the store first heard of it.
    pub first_at: u64,
    /// Events kept, other than `security` ones.
    #[serde(default)]
    pub events: u32,
    /// `security` events kept.
    #[serde(default)]
    pub security: u32,
    /// Log bytes kept.
    #[serde(default)]
    pub log_bytes: u64,
    /// Log batches kept (the next batch's number).
    #[serde(default)]
    pub log_batches: u64,
    /// Log lines dropped over the limit.
    #[serde(default)]
    pub log_dropped: u64,
    /// The highest `seq` of the node's events recorded: the node delivers its events in
    /// order, so one at or below it is a repeat of one whose answer was lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_seq: u64,
    /// Repeats acknowledged and not recorded again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the server knows about one machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    /// The boot NIC's MAC (the key).
    pub mac: String,
    /// What an operator declared through the API.
    #[serde(default)]
    pub declared: Option<Declared>,
    /// Set when the machine was first seen undeclared and given a discovery token.
    #[serde(default)]
    pub discovered: Option<Discovered>,
    /// An operator's acceptance (of a discovered machine): its profile.
    #[serde(default)]
    pub accepted: Option<Accepted>,
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
    /// The last time its firmware fetched the boot script.
    #[serde(default)]
    pub last_pxe: Option<Pxe>,
    /// What is wrong with its identity (placeholder or duplicate identifiers), each said
    /// once: such identifiers are never used to match it.
    #[serde(default)]
    pub flags: Vec<String>,
    /// The boots kept, oldest first.
    #[serde(default)]
    pub boots: Vec<BootInfo>,
    /// The next event's number (orders a machine's events across boots).
    #[serde(default)]
    pub next_event: u64,
}

impl Machine {
    fn new(mac: &str) -> Machine {
        Machine {
            mac: mac.to_string(),
            declared: None,
            discovered: None,
            accepted: None,
            quarantine: None,
            token: None,
            certs: Vec::new(),
            pending_action: None,
            last_pxe: None,
            flags: Vec::new(),
            boots: Vec::new(),
            next_event: 0,
        }
    }

    /// Whether an operator declared it through the API.
    pub fn is_declared(&self) -> bool {
        self.declared.is_some()
    }

    /// Whether it is only discovered: nobody declared or accepted it.
    pub fn discovery_only(&self) -> bool {
        self.declared.is_none() && self.accepted.is_none()
    }

    /// The certificate with `serial`, when it is neither revoked nor expired at `now`.
    pub fn valid_cert(&self, serial: &str, now: u64) -> Option<&Cert> {
        self.certs
            .iter()
            .find(|c| c.serial == serial && c.revoked.is_none() && now < c.not_after)
    }

    /// Adds `flag` unless it is there.
    pub fn flag(&mut self, flag: String) -> bool {
        if self.flags.contains(&flag) {
            return false;
        }
        self.flags.push(flag);
        true
    }

    fn boot(&mut self, boot_id: &str, now: u64) -> (&mut BootInfo, bool) {
        let key = boot_key(boot_id).to_string();
        let fresh = !self.boots.iter().any(|b| b.boot_id == key);
        if fresh {
            self.boots.push(BootInfo {
                boot_id: key.clone(),
                first_at: now,
                events: 0,
                security: 0,
                log_bytes: 0,
                log_batches: 0,
                log_dropped: 0,
                last_seq: 0,
                repeats: 0,
            });
        }
        let b = self
            .boots
            .iter_mut()
            .rfind(|b| b.boot_id == key)
            .unwrap_or_else(|| unreachable!("pushed above"));
        (b, fresh)
    }
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

/// One of the server's own events (a config reload), shown to operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerEvent {
    /// Seconds since the epoch.
    pub at: u64,
    /// `config` (a reload of `--config-dir`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it went well.
    pub ok: bool,
    /// What happened.
    pub message: String,
}

fn boot_key(boot_id: &str) -> &str {
    if boot_id.is_empty() {
        NO_BOOT
    } else {
        boot_id
    }
}

fn machine_key(mac: &str) -> String {
    format!("m/{mac}")
}

fn events_prefix(mac: &str, boot: &str) -> String {
    format!("e/{mac}/{}/", boot_key(boot))
}

fn logs_prefix(mac: &str, boot: &str) -> String {
    format!("l/{mac}/{}/", boot_key(boot))
}

fn json_bytes<T: Serialize>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|source| Error::Json {
        what: format!("encoding {what}"),
        source,
    })
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|source| Error::Json {
        what: format!("reading {what} from the store"),
        source,
    })
}

/// The store.
pub struct Store {
    kv: Box<dyn Kv>,
    limits: Limits,
    /// This server's name on the store for as long as it runs (random, new at each
    /// start): what it minted says so, and the others can tell whether it still runs.
    server_id: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// How many times a change is tried again when the machine's record changed under it.
const RETRIES: usize = 16;

impl Store {
    /// The store over `kv`, with this server announced on it as alive.
    pub fn new(kv: Box<dyn Kv>, limits: Limits) -> Result<Store> {
        let server_id = crate::crypto::hex(&crate::crypto::random_bytes(8)?);
        kv.announce(&server_id)?;
        Ok(Store {
            kv,
            limits,
            server_id,
        })
    }

    /// This server's name on the store (see [`Token::minted_by`]).
    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Whether the server `id` still runs: this one, or one alive on the shared store.
    pub fn server_alive(&self, id: &str) -> Result<bool> {
        Ok(id == self.server_id || self.kv.alive(id)?)
    }

    /// The embedded store in `<data>/store/`.
    pub fn open(data: &Path, limits: Limits) -> Result<Store> {
        let kv = crate::server::kv_redb::RedbKv::open(&data.join("store"), limits.retention())?;
        Store::new(Box::new(kv), limits)
    }

    /// The store `--store` names: the embedded one in `<data>/store/` without it, etcd
    /// for `etcd://HOST:PORT,...` (checked to answer before the server starts).
    pub fn open_url(url: Option<&str>, data: &Path, limits: Limits) -> Result<Store> {
        match url {
            None => Store::open(data, limits),
            Some(url) => {
                let endpoints = crate::server::kv_etcd::parse_url(url)?;
                let kv = crate::server::kv_etcd::EtcdKv::connect(endpoints, limits.retention())?;
                Store::new(Box::new(kv), limits)
            }
        }
    }

    /// Bytes the store takes on disk.
    pub fn size(&self) -> Result<u64> {
        self.kv.size()
    }

    /// Runs `f` on the machine's record (a new one when `create` and there is none) and
    /// commits the record with whatever `f` added to the transaction, compared against the
    /// version read. `None` when there is no record and `create` is false (nothing done).
    fn update<T>(
        &self,
        mac: &str,
        create: bool,
        mut f: impl FnMut(&mut Machine, &mut Txn) -> Result<T>,
    ) -> Result<Option<T>> {
        let key = machine_key(mac);
        for attempt in 0..RETRIES {
            // The transaction compares the version read: a first read a moment old costs
            // at most a second one.
            let mut entry = if attempt == 0 {
                self.kv.get_relaxed(&key)?
            } else {
                self.kv.get(&key)?
            };
            if entry.is_none() && attempt == 0 {
                // A relaxed "none" may be a member behind a record just made: ask again,
                // since "none" changes nothing and no compare would catch it.
                entry = self.kv.get(&key)?;
            }
            let (mut m, version) = match &entry {
                Some(e) => (from_json::<Machine>(&key, &e.value)?, Some(e.version)),
                None if create => (Machine::new(mac), None),
                None => return Ok(None),
            };
            let mut txn = Txn::default();
            let out = f(&mut m, &mut txn)?;
            txn.compare.push((key.clone(), version));
            txn.put.push((key.clone(), json_bytes(&key, &m)?));
            if self.kv.commit(txn)? {
                return Ok(Some(out));
            }
        }
        Err(Error::Store {
            what: format!("changing {key}"),
            reason: format!("it kept changing under {RETRIES} tries"),
        })
    }

    /// Every machine, by MAC.
    pub fn machines(&self) -> Result<Vec<Machine>> {
        self.kv
            .range("m/")?
            .into_iter()
            .map(|(k, e)| from_json(&k, &e.value))
            .collect()
    }

    /// One machine.
    pub fn machine(&self, mac: &str) -> Result<Option<Machine>> {
        let key = machine_key(mac);
        self.kv
            .get(&key)?
            .map(|e| from_json(&key, &e.value))
            .transpose()
    }

    fn indexed(&self, key: &str) -> Result<Option<Machine>> {
        match self.kv.get(key)? {
            Some(e) => self.machine(&String::from_utf8_lossy(&e.value)),
            None => Ok(None),
        }
    }

    /// The machine a certificate serial was issued to.
    pub fn machine_of_serial(&self, serial: &str) -> Result<Option<Machine>> {
        self.indexed(&format!("s/{serial}"))
    }

    /// The machine whose last token has this hash.
    pub fn machine_of_token(&self, hash: &str) -> Result<Option<Machine>> {
        Ok(self.indexed(&format!("t/{hash}"))?.filter(|m| {
            m.token
                .as_ref()
                .is_some_and(|t| crate::crypto::same(&t.hash, hash))
        }))
    }

    /// Declares (or re-declares) a machine with its UUID and config.
    pub fn declare(&self, mac: &str, declared: Declared) -> Result<()> {
        self.update(mac, true, |m, _| {
            m.declared = Some(declared.clone());
            Ok(())
        })?;
        Ok(())
    }

    /// Makes the record of a machine seen undeclared at PXE (the caller rate-limits
    /// this); returns whether it made one.
    pub fn discover(&self, mac: &str, from: &str) -> Result<bool> {
        let made = self.update(mac, true, |m, _| {
            let fresh = m.discovered.is_none() && m.declared.is_none();
            if fresh {
                m.discovered = Some(Discovered {
                    at: unix_time(),
                    from: from.to_string(),
                });
            }
            Ok(fresh)
        })?;
        Ok(made.unwrap_or(false))
    }

    /// Makes an empty record for `mac` if it has none (a machine a file selects).
    pub fn ensure(&self, mac: &str) -> Result<()> {
        if self.machine(mac)?.is_none() {
            self.update(mac, true, |_, _| Ok(()))?;
        }
        Ok(())
    }

    /// How many machines are only discovered (nobody declared or accepted them).
    pub fn discovered_count(&self) -> Result<usize> {
        Ok(self
            .machines()?
            .iter()
            .filter(|m| m.discovered.is_some() && m.discovery_only())
            .count())
    }

    /// Records an operator's acceptance; `None` when there is no such machine.
    pub fn accept(&self, mac: &str, accepted: Accepted) -> Result<Option<()>> {
        self.update(mac, false, |m, _| {
            m.accepted = Some(accepted.clone());
            Ok(())
        })
    }

    /// Flags the machine's identity (placeholder or duplicate identifiers); returns
    /// whether a flag was new.
    pub fn flag(&self, mac: &str, flags: &[String]) -> Result<bool> {
        Ok(self
            .update(mac, false, |m, _| {
                let mut new = false;
                for f in flags {
                    new |= m.flag(f.clone());
                }
                Ok(new)
            })?
            .unwrap_or(false))
    }

    /// Notes that `uuid` was presented by `mac`; returns the other MACs it was seen on
    /// (none: it identifies this machine alone).
    pub fn note_uuid(&self, uuid: &str, mac: &str) -> Result<Vec<String>> {
        let key = format!("u/{uuid}");
        for _ in 0..RETRIES {
            let entry = self.kv.get(&key)?;
            let mut macs: Vec<String> = match &entry {
                Some(e) => from_json(&key, &e.value)?,
                None => Vec::new(),
            };
            let others: Vec<String> = macs.iter().filter(|m| *m != mac).cloned().collect();
            // Three MACs are enough to know a UUID is shared; a flood adds no more.
            if macs.iter().any(|m| m == mac) || macs.len() >= 3 {
                return Ok(others);
            }
            macs.push(mac.to_string());
            let txn = Txn {
                compare: vec![(key.clone(), entry.as_ref().map(|e| e.version))],
                put: vec![(key.clone(), json_bytes(&key, &macs)?)],
                ..Txn::default()
            };
            if self.kv.commit(txn)? {
                return Ok(others);
            }
        }
        Err(Error::Store {
            what: format!("changing {key}"),
            reason: format!("it kept changing under {RETRIES} tries"),
        })
    }

    /// The MACs `uuid` was seen on.
    pub fn uuid_macs(&self, uuid: &str) -> Result<Vec<String>> {
        let key = format!("u/{uuid}");
        match self.kv.get(&key)? {
            Some(e) => from_json(&key, &e.value),
            None => Ok(Vec::new()),
        }
    }

    /// Adds an event to the machine's record and transaction: its key, the boot's
    /// counters, the boot retention and the per-boot caps.
    fn push_event(&self, m: &mut Machine, txn: &mut Txn, rec: &Recorded) -> Result<()> {
        let now = rec.received_at;
        let boot = rec.event.boot_id.clone();
        let security = rec.event.kind == EventKind::Security;
        let n = m.next_event;
        m.next_event += 1;
        let key = format!("{}{n:016x}", events_prefix(&m.mac, &boot));
        txn.history.push((key, json_bytes("an event", rec)?));
        let mac = m.mac.clone();
        let (info, fresh) = m.boot(&boot, now);
        if security {
            info.security += 1;
        } else {
            info.events += 1;
        }
        let (over_security, over_other) = (
            info.security.saturating_sub(MAX_SECURITY_EVENTS),
            info.events.saturating_sub(MAX_EVENTS),
        );
        if over_security > 0 || over_other > 0 {
            // Oldest first, each kind against its own cap.
            let (mut drop_s, mut drop_o) = (over_security, over_other);
            let (mut seen_s, mut seen_o) = (0, 0);
            let mut whole = true;
            for (k, e) in self.kv.range(&events_prefix(&mac, &boot))? {
                if drop_s == 0 && drop_o == 0 {
                    whole = false;
                    break;
                }
                let r: Recorded = from_json(&k, &e.value)?;
                let (budget, seen) = if r.event.kind == EventKind::Security {
                    (&mut drop_s, &mut seen_s)
                } else {
                    (&mut drop_o, &mut seen_o)
                };
                *seen += 1;
                if *budget > 0 {
                    *budget -= 1;
                    txn.delete.push(k);
                }
            }
            if whole {
                // Every event of the boot was seen (the one added now is in the
                // transaction, not the store): the counts are what is there, history
                // the store let go of included.
                info.security = seen_s - (over_security - drop_s);
                info.events = seen_o - (over_other - drop_o);
                if security {
                    info.security += 1;
                } else {
                    info.events += 1;
                }
            } else {
                info.security -= over_security - drop_s;
                info.events -= over_other - drop_o;
            }
        }
        if fresh && boot_key(&boot) != NO_BOOT {
            self.retire_boots(m, txn)?;
        }
        Ok(())
    }

    /// Drops the oldest boots beyond [`Limits::keep_boots`] (the events of no boot stay).
    fn retire_boots(&self, m: &mut Machine, txn: &mut Txn) -> Result<()> {
        loop {
            let real = m.boots.iter().filter(|b| b.boot_id != NO_BOOT).count();
            if real <= self.limits.keep_boots {
                return Ok(());
            }
            let Some(i) = m.boots.iter().position(|b| b.boot_id != NO_BOOT) else {
                return Ok(());
            };
            let old = m.boots.remove(i);
            // One range delete each, however many keys: etcd refuses a transaction of
            // more than 128 operations.
            txn.delete_prefix.push(events_prefix(&m.mac, &old.boot_id));
            txn.delete_prefix.push(logs_prefix(&m.mac, &old.boot_id));
        }
    }

    /// Records a node's event and returns the machine's pending action, clearing it (the
    /// reply delivers it). Nothing is recorded for a machine without a record, nor for a
    /// repeat (a `seq` of this boot recorded already: the node sent it again because the
    /// answer was lost), which is counted and answered with the action pending now (an
    /// action the lost answer carried is not given again).
    pub fn record(&self, mac: &str, ev: Event) -> Result<Option<Action>> {
        let ms = crate::server::traffic::now_ms();
        let rec = Recorded {
            received_at: ms / 1000,
            received_at_ms: Some(ms),
            source: Source::Node,
            event: ev,
        };
        let seq = rec.event.seq;
        Ok(self
            .update(mac, false, |m, txn| {
                let boot = &rec.event.boot_id;
                let seen = m
                    .boots
                    .iter_mut()
                    .rfind(|b| b.boot_id == boot_key(boot))
                    .filter(|b| seq > 0 && seq <= b.last_seq);
                if let Some(b) = seen {
                    // Answered again, recorded once.
                    b.repeats += 1;
                } else {
                    self.push_event(m, txn, &rec)?;
                    let (info, _) = m.boot(boot, rec.received_at);
                    info.last_seq = info.last_seq.max(seq);
                }
                Ok(m.pending_action.take())
            })?
            .flatten())
    }

    /// A machine's events, every boot, oldest first.
    pub fn events(&self, mac: &str) -> Result<Vec<Recorded>> {
        self.events_under(&[format!("e/{mac}/")])
    }

    /// A machine's events of boot `boot_id` and of no boot (the server's traffic and
    /// actions), oldest first: what its last boot's state needs, without its older boots.
    pub fn recent_events(&self, mac: &str, boot_id: &str) -> Result<Vec<Recorded>> {
        let mut prefixes = vec![events_prefix(mac, "")];
        if boot_key(boot_id) != NO_BOOT {
            prefixes.push(events_prefix(mac, boot_id));
        }
        self.events_under(&prefixes)
    }

    fn events_under(&self, prefixes: &[String]) -> Result<Vec<Recorded>> {
        let mut all: Vec<(u64, Recorded)> = Vec::new();
        for (k, e) in prefixes
            .iter()
            .map(|p| self.kv.range(p))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
        {
            let n = k
                .rsplit('/')
                .next()
                .and_then(|n| u64::from_str_radix(n, 16).ok())
                .unwrap_or(0);
            all.push((n, from_json(&k, &e.value)?));
        }
        all.sort_by_key(|(n, _)| *n);
        Ok(all.into_iter().map(|(_, r)| r).collect())
    }

    /// Records an event the server itself makes about a machine with a record (nothing
    /// for any other MAC: the caller's audit line is all there is of it); returns whether
    /// it did. A repeat of a recent server event (same type, boot and `reason` or `error`)
    /// is counted on it instead.
    pub fn server_event(
        &self,
        mac: &str,
        boot_id: &str,
        kind: EventKind,
        details: Map<String, Value>,
    ) -> Result<bool> {
        let now = unix_time();
        let prefix = events_prefix(mac, boot_id);
        let done = self.update(mac, false, |m, txn| {
            let key = ["reason", "error"]
                .iter()
                .find_map(|k| details.get(*k).map(|v| (*k, v.clone())));
            if let Some((field, value)) = &key {
                let recent = self.kv.range(&prefix)?;
                // The last few of the server's events of this kind: other events (the
                // server's own file traffic, a node's) between repeats do not hide them.
                let mut seen = 0;
                for (k, e) in recent.into_iter().rev() {
                    let mut r: Recorded = from_json(&k, &e.value)?;
                    if r.source != Source::Server || r.event.kind != kind {
                        continue;
                    }
                    seen += 1;
                    if seen > REPEAT_LOOKBACK {
                        break;
                    }
                    let repeat = now.saturating_sub(r.received_at) < REPEAT_WINDOW_SECS
                        && r.event.details.get(*field) == Some(value);
                    if !repeat {
                        continue;
                    }
                    let d = &mut r.event.details;
                    let count = d.get("count").and_then(Value::as_u64).unwrap_or(1);
                    d.insert("count".into(), json!(count.saturating_add(1)));
                    d.insert("lastAt".into(), json!(now));
                    if let Some(from) = details.get("from") {
                        d.insert("lastFrom".into(), from.clone());
                    }
                    // Still history: a plain put would take the key off its lease.
                    txn.history.push((k, json_bytes("an event", &r)?));
                    return Ok(());
                }
            }
            let uuid = m
                .declared
                .as_ref()
                .map(|d| d.uuid.clone())
                .or_else(|| m.last_pxe.as_ref().and_then(|p| p.uuid.clone()))
                .unwrap_or_default();
            let rec = Recorded {
                received_at: now,
                received_at_ms: Some(crate::server::traffic::now_ms()),
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
                    details: details.clone(),
                },
            };
            self.push_event(m, txn, &rec)
        })?;
        Ok(done.is_some())
    }

    /// A `security` event (`reason`, and the peer's address when there is one) on a
    /// machine with a record; see [`Store::server_event`].
    pub fn security_event(
        &self,
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
    pub fn quarantine(&self, mac: &str, reason: &str) -> Result<()> {
        let now = unix_time();
        self.update(mac, false, |m, txn| {
            if m.quarantine.is_none() {
                m.quarantine = Some(Quarantine {
                    since: now,
                    reason: reason.to_string(),
                });
            }
            for c in m.certs.iter_mut().filter(|c| c.revoked.is_none()) {
                c.revoked = Some(format!("quarantine: {reason}"));
            }
            // An outstanding token is void too: after a release, the next boot gets a
            // new one.
            if let Some(t) = m.token.take() {
                txn.delete.push(format!("t/{}", t.hash));
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Lifts a machine's quarantine; returns whether it was in one.
    pub fn release(&self, mac: &str) -> Result<bool> {
        Ok(self
            .update(mac, false, |m, _| Ok(m.quarantine.take().is_some()))?
            .unwrap_or(false))
    }

    /// Notes a machine's boot-script fetch and stores a freshly minted token's hash, if
    /// any; nothing for a MAC without a record.
    pub fn note_pxe(&self, mac: &str, pxe: Pxe, token: Option<Token>) -> Result<()> {
        self.update(mac, false, |m, txn| {
            m.last_pxe = Some(pxe.clone());
            if let Some(t) = &token {
                if let Some(old) = m.token.replace(t.clone()) {
                    txn.delete.push(format!("t/{}", old.hash));
                }
                txn.put
                    .push((format!("t/{}", t.hash), mac.as_bytes().to_vec()));
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Marks the machine's token spent.
    pub fn spend_token(&self, mac: &str) -> Result<()> {
        let now = unix_time();
        self.update(mac, false, |m, _| {
            if let Some(t) = m.token.as_mut() {
                t.spent_at.get_or_insert(now);
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Voids the machine's token when it is the one with `hash` and unspent: an
    /// enrolment presenting it was refused, so the next boot-script fetch mints a new
    /// one instead of counting as a second mint. Returns whether it did.
    pub fn void_token(&self, mac: &str, hash: &str, why: &str) -> Result<bool> {
        let now = unix_time();
        Ok(self
            .update(mac, false, |m, _| {
                let Some(t) = m
                    .token
                    .as_mut()
                    .filter(|t| t.spent_at.is_none() && crate::crypto::same(&t.hash, hash))
                else {
                    return Ok(false);
                };
                t.spent_at = Some(now);
                t.voided = Some(why.to_string());
                Ok(true)
            })?
            .unwrap_or(false))
    }

    /// Adds a certificate, first revoking the machine's other valid ones with `why`.
    pub fn add_cert(&self, mac: &str, cert: Cert, why: &str) -> Result<()> {
        let done = self.update(mac, false, |m, txn| {
            add_cert_to(m, txn, &cert, why);
            Ok(())
        })?;
        done.ok_or_else(|| Error::Protocol {
            what: format!("storing a certificate for {mac}"),
            reason: "no such machine".into(),
        })
    }

    /// Spends the machine's token (the one hashed `token`) and adds the certificate
    /// enrolment bought, in one transaction: an acknowledged enrolment is never half
    /// stored. The token is checked again inside that transaction, which commits only
    /// over the version it read: of two enrolments racing with one token (on one server
    /// or on two over a shared store) exactly one spends it. `false` when the token was
    /// no longer there unspent (nothing stored), or the machine is in quarantine.
    pub fn enrol(&self, mac: &str, token: &str, cert: Cert, why: &str) -> Result<bool> {
        let now = unix_time();
        let done = self.update(mac, false, |m, txn| {
            let quarantined = m.quarantine.is_some();
            let Some(t) = m.token.as_mut().filter(|t| {
                t.spent_at.is_none() && t.voided.is_none() && crate::crypto::same(&t.hash, token)
            }) else {
                return Ok(false);
            };
            if quarantined {
                return Ok(false);
            }
            t.spent_at = Some(now);
            add_cert_to(m, txn, &cert, why);
            Ok(true)
        })?;
        done.ok_or_else(|| Error::Protocol {
            what: format!("storing a certificate for {mac}"),
            reason: "no such machine".into(),
        })
    }

    /// Stores a renewal's certificate, if the one it was presented with (`presented`) is
    /// still valid now and the machine is not in quarantine: checked in the transaction
    /// that adds it, so that nothing revoking the presented certificate (a newer
    /// enrolment, a quarantine, another renewal) can slip between the check and the add.
    pub fn renew_cert(&self, mac: &str, presented: &str, cert: Cert) -> Result<Renewal> {
        let now = unix_time();
        let r = self.update(mac, false, |m, txn| {
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
            add_cert_to(m, txn, &cert, &format!("renewed as {}", cert.serial));
            Ok(Renewal::Issued)
        })?;
        Ok(r.unwrap_or_else(|| Renewal::Refused(format!("machine {mac} is not known"))))
    }

    /// Queues an action for a machine (none for a MAC without a record).
    pub fn set_action(&self, mac: &str, action: Action) -> Result<()> {
        self.update(mac, false, |m, _| {
            m.pending_action = Some(action);
            Ok(())
        })?;
        Ok(())
    }

    /// Takes a machine's pending action, if any.
    pub fn take_action(&self, mac: &str) -> Result<Option<Action>> {
        // Read first: a poll that finds nothing writes nothing.
        if self
            .machine(mac)?
            .is_none_or(|m| m.pending_action.is_none())
        {
            return Ok(None);
        }
        Ok(self
            .update(mac, false, |m, _| Ok(m.pending_action.take()))?
            .flatten())
    }

    /// Appends lines to a boot's log, up to [`Limits::max_log_bytes_per_boot`]; returns
    /// how many lines were kept (the rest are counted as dropped).
    pub fn append_log(&self, mac: &str, boot_id: &str, lines: &[String]) -> Result<usize> {
        let max = self.limits.max_log_bytes_per_boot;
        let now = unix_time();
        Ok(self
            .update(mac, false, |m, txn| {
                let mac = m.mac.clone();
                let (info, fresh) = m.boot(boot_id, now);
                let mut kept = 0;
                let mut buf = String::new();
                for l in lines {
                    if info.log_bytes + buf.len() as u64 + l.len() as u64 + 1 > max {
                        break;
                    }
                    buf.push_str(l);
                    buf.push('\n');
                    kept += 1;
                }
                info.log_dropped += (lines.len() - kept) as u64;
                if !buf.is_empty() {
                    info.log_bytes += buf.len() as u64;
                    let key = format!("{}{:08x}", logs_prefix(&mac, boot_id), info.log_batches);
                    info.log_batches += 1;
                    txn.history.push((key, buf.into_bytes()));
                }
                if fresh {
                    self.retire_boots(m, txn)?;
                }
                Ok(kept)
            })?
            .unwrap_or(0))
    }

    /// A boot's log, when the store has one.
    pub fn log(&self, mac: &str, boot_id: &str) -> Result<Option<Vec<u8>>> {
        let chunks = self.kv.range(&logs_prefix(mac, boot_id))?;
        if chunks.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (_, e) in chunks {
            out.extend_from_slice(&e.value);
        }
        Ok(Some(out))
    }

    /// Adds one of the server's own events (the last [`MAX_SERVER_EVENTS`] are kept).
    pub fn server_log(&self, ev: ServerEvent) -> Result<()> {
        let key = "srv/events";
        for _ in 0..RETRIES {
            let entry = self.kv.get(key)?;
            let mut evs: Vec<ServerEvent> = match &entry {
                Some(e) => from_json(key, &e.value)?,
                None => Vec::new(),
            };
            evs.push(ev.clone());
            if evs.len() > MAX_SERVER_EVENTS {
                let drop = evs.len() - MAX_SERVER_EVENTS;
                evs.drain(..drop);
            }
            let txn = Txn {
                compare: vec![(key.to_string(), entry.as_ref().map(|e| e.version))],
                put: vec![(key.to_string(), json_bytes(key, &evs)?)],
                ..Txn::default()
            };
            if self.kv.commit(txn)? {
                return Ok(());
            }
        }
        Err(Error::Store {
            what: format!("changing {key}"),
            reason: format!("it kept changing under {RETRIES} tries"),
        })
    }

    /// The server's own events, oldest first.
    pub fn server_events(&self) -> Result<Vec<ServerEvent>> {
        match self.kv.get("srv/events")? {
            Some(e) => from_json("srv/events", &e.value),
            None => Ok(Vec::new()),
        }
    }
}

/// Adds `cert` to `m`, revoking its other valid certificates with `why`, keeping at most
/// [`MAX_CERTS`] (with their serial index).
fn add_cert_to(m: &mut Machine, txn: &mut Txn, cert: &Cert, why: &str) {
    for c in m.certs.iter_mut().filter(|c| c.revoked.is_none()) {
        c.revoked = Some(why.to_string());
    }
    m.certs.push(cert.clone());
    if m.certs.len() > MAX_CERTS {
        let drop = m.certs.len() - MAX_CERTS;
        for old in m.certs.drain(..drop) {
            txn.delete.push(format!("s/{}", old.serial));
        }
    }
    txn.put
        .push((format!("s/{}", cert.serial), m.mac.as_bytes().to_vec()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(boot: &str, seq: u64) -> Event {
        Event {
            api_version: API_VERSION.into(),
            kind: EventKind::Booted,
            mac: MAC.into(),
            uuid: "6e4a2b1c-0000-4000-8000-000000000001".into(),
            boot_id: boot.into(),
            seq,
            uptime_ms: 1,
            wall_time: 2,
            details: Default::default(),
        }
    }

    const MAC: &str = "52:54:00:12:34:56";

    fn scratch(name: &str) -> std::path::PathBuf {
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
            discovery: false,
            key: None,
        }
    }

    fn valid(s: &Store) -> Vec<String> {
        s.machine(MAC)
            .expect("read")
            .expect("machine")
            .certs
            .iter()
            .filter(|c| c.revoked.is_none())
            .map(|c| c.serial.clone())
            .collect()
    }

    #[test]
    fn an_event_sent_again_is_answered_and_recorded_once() {
        let dir = scratch("repeat");
        let s = Store::open(&dir, Limits::default()).expect("open");
        s.declare(MAC, declared()).expect("declare");
        for seq in [1, 2, 2, 1, 3] {
            s.record(MAC, event("b", seq)).expect("record");
        }
        s.set_action(MAC, Action::Reboot).expect("set");
        // A repeat's answer carries the pending action as the first's would have.
        assert_eq!(
            s.record(MAC, event("b", 3)).expect("record"),
            Some(Action::Reboot)
        );
        let seqs: Vec<u64> = s
            .events(MAC)
            .expect("events")
            .iter()
            .map(|r| r.event.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        let m = s.machine(MAC).expect("read").expect("machine");
        let b = m.boots.iter().find(|b| b.boot_id == "b").expect("boot");
        assert_eq!((b.last_seq, b.repeats, b.events), (3, 3, 3));
        // Another boot counts from its own start.
        s.record(MAC, event("c", 1)).expect("record");
        assert_eq!(s.events(MAC).expect("events").len(), 4);
        // The last boot's and the server's own, without the boots before.
        s.security_event(MAC, "", "x", None).expect("security");
        let recent: Vec<_> = s
            .recent_events(MAC, "c")
            .expect("recent")
            .iter()
            .map(|r| (r.event.boot_id.clone(), r.event.seq))
            .collect();
        assert_eq!(recent.len(), 2, "{recent:?}");
        assert_eq!(recent[0], ("c".to_string(), 1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn survives_reopen_and_hands_out_actions_once() {
        let dir = scratch("reopen");
        {
            let s = Store::open(&dir, Limits::default()).expect("open");
            s.declare(MAC, declared()).expect("declare");
            assert_eq!(s.record(MAC, event("b", 1)).expect("record"), None);
            s.set_action(MAC, Action::Poweroff).expect("set");
            s.add_cert(MAC, cert("0a"), "x").expect("cert");
        }
        let s = Store::open(&dir, Limits::default()).expect("reopen");
        assert_eq!(s.events(MAC).expect("events").len(), 1);
        let m = s.machine(MAC).expect("read").expect("machine kept");
        assert_eq!(m.pending_action, Some(Action::Poweroff));
        assert_eq!(
            s.machine_of_serial("0a").expect("read").map(|m| m.mac),
            Some(MAC.to_string())
        );
        assert_eq!(
            s.record(MAC, event("b", 2)).expect("record"),
            Some(Action::Poweroff)
        );
        assert_eq!(s.take_action(MAC).expect("take"), None);
        s.quarantine(MAC, "test").expect("quarantine");
        assert!(s
            .machine(MAC)
            .expect("read")
            .and_then(|m| m.valid_cert("0a", 0).cloned())
            .is_none());
        // One directory, one private file.
        let names: Vec<_> = std::fs::read_dir(dir.join("store"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("store.redb")]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_renewal_is_checked_in_the_transaction_that_adds_it() {
        let dir = scratch("renew");
        let s = Store::open(&dir, Limits::default()).expect("open");
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
        assert!(s.machine_of_serial("c3").expect("read").is_none());
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
        s.update(MAC, false, |m, _| {
            m.quarantine = Some(Quarantine {
                since: 1,
                reason: "replay".into(),
            });
            Ok(())
        })
        .expect("quarantine");
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
        let s = Store::open(&dir, Limits::default()).expect("open");
        // Nothing for a MAC without a record.
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
        assert!(s.machines().expect("list").is_empty());
        s.declare(MAC, declared()).expect("declare");
        assert!(s
            .security_event(MAC, "b", "the real one", None)
            .expect("event"));
        // Ordinary events never trim a security event.
        for i in 0..(u64::from(MAX_EVENTS) + 100) {
            s.record(MAC, event("b", i)).expect("record");
        }
        let evs = s.events(MAC).expect("events");
        assert_eq!(evs.len(), MAX_EVENTS as usize + 1);
        assert_eq!(evs[0].event.kind, EventKind::Security);
        // A repeated security event is counted on one.
        for _ in 0..300 {
            s.security_event(MAC, "b", "junk", Some("10.0.0.9:1"))
                .expect("event");
        }
        let junk: Vec<_> = s
            .events(MAC)
            .expect("events")
            .into_iter()
            .filter(|r| r.event.details.get("reason") == Some(&json!("junk")))
            .collect();
        assert_eq!(junk.len(), 1);
        assert_eq!(junk[0].event.details.get("count"), Some(&json!(300)));
        assert_eq!(
            junk[0].event.details.get("lastFrom"),
            Some(&json!("10.0.0.9:1"))
        );
        // Distinct ones beyond the cap drop the oldest security events only.
        for i in 0..MAX_SECURITY_EVENTS {
            s.security_event(MAC, "b", &format!("junk {i}"), None)
                .expect("event");
        }
        let evs = s.events(MAC).expect("events");
        let security = evs
            .iter()
            .filter(|r| r.event.kind == EventKind::Security)
            .count();
        assert_eq!(security, MAX_SECURITY_EVENTS as usize);
        assert_eq!(evs.len() - security, MAX_EVENTS as usize);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_keeps_the_last_boots_and_bounds_each_boots_log() {
        let dir = scratch("retention");
        let limits = Limits {
            keep_boots: 3,
            max_log_bytes_per_boot: 100,
            ..Limits::default()
        };
        let s = Store::open(&dir, limits).expect("open");
        s.declare(MAC, declared()).expect("declare");
        // A security event of no boot stays whatever boots come and go.
        s.security_event(MAC, "", "before any boot", None)
            .expect("event");
        for b in 0..5 {
            let boot = format!("b{b}");
            s.record(MAC, event(&boot, 1)).expect("record");
            let line = "x".repeat(30);
            let kept = s
                .append_log(
                    MAC,
                    &boot,
                    &[line.clone(), line.clone(), line.clone(), line],
                )
                .expect("log");
            assert_eq!(kept, 3, "31 bytes a line, 100 bytes a boot");
        }
        let boots: Vec<String> = s
            .events(MAC)
            .expect("events")
            .iter()
            .map(|r| r.event.boot_id.clone())
            .collect();
        assert_eq!(boots, ["", "b2", "b3", "b4"]);
        assert!(s.log(MAC, "b1").expect("log").is_none());
        assert_eq!(s.log(MAC, "b4").expect("log").expect("there").len(), 93);
        let m = s.machine(MAC).expect("read").expect("m");
        let b4 = m.boots.iter().find(|b| b.boot_id == "b4").expect("b4");
        assert_eq!(b4.log_dropped, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_uuid_on_two_macs_is_told() {
        let dir = scratch("uuid");
        let s = Store::open(&dir, Limits::default()).expect("open");
        let u = "6e4a2b1c-0000-4000-8000-000000000001";
        assert!(s.note_uuid(u, MAC).expect("note").is_empty());
        assert!(s.note_uuid(u, MAC).expect("again").is_empty());
        assert_eq!(
            s.note_uuid(u, "52:54:00:00:00:02").expect("other"),
            [MAC.to_string()]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_value_is_an_error_naming_the_key() {
        let dir = scratch("bad");
        let kv =
            crate::server::kv_redb::RedbKv::open(&dir.join("store"), Limits::default().retention())
                .expect("open");
        kv.commit(Txn {
            put: vec![(format!("m/{MAC}"), b"{not json".to_vec())],
            ..Txn::default()
        })
        .expect("commit");
        let s = Store::new(Box::new(kv), Limits::default()).expect("store");
        let err = s.machine(MAC).expect_err("corrupt");
        assert!(err.to_string().contains(&format!("m/{MAC}")), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
