//! The embedded store: one JSON file per machine under `<data>/machines/`, each written
//! atomically (temp file, fsync, rename, fsync of the directory) so that a crash leaves
//! either the old or the new record, and everything is read back at start.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};
use crate::schema::{unix_time, Action, Event};

/// How many events are kept per machine (oldest dropped first).
pub const MAX_EVENTS: usize = 200;

/// An event as the server received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Recorded {
    /// Server wall time at receipt, seconds since the epoch.
    pub received_at: u64,
    /// The event.
    pub event: Event,
}

/// What the server knows about one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    /// The boot NIC's MAC (the key).
    pub mac: String,
    /// The last SMBIOS UUID seen.
    #[serde(default)]
    pub uuid: Option<String>,
    /// An action waiting for the machine to pick it up.
    #[serde(default)]
    pub pending_action: Option<Action>,
    /// Its events, oldest first.
    #[serde(default)]
    pub events: Vec<Recorded>,
    /// The last time its firmware fetched the boot script, and what iPXE said it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pxe: Option<Pxe>,
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
}

impl Machine {
    fn new(mac: &str) -> Machine {
        Machine {
            mac: mac.to_string(),
            uuid: None,
            pending_action: None,
            events: Vec::new(),
            last_pxe: None,
        }
    }
}

/// The store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    machines: BTreeMap<String, Machine>,
}

impl Store {
    /// Opens (creating) the store under `data`, loading every machine record.
    pub fn open(data: &Path) -> Result<Store> {
        let dir = data.join("machines");
        std::fs::create_dir_all(&dir).map_err(io("creating store directory", &dir))?;
        let mut machines = BTreeMap::new();
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
            machines.insert(m.mac.clone(), m);
        }
        Ok(Store { dir, machines })
    }

    /// The machine's record, a new one if it was never seen.
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
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(m).map_err(|source| Error::Json {
            what: format!("encoding {}", path.display()),
            source,
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
        f.write_all(&body).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("renaming into place", &path))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Records an event (already validated) and returns the machine's pending action,
    /// clearing it: the reply delivers it.
    pub fn record(&mut self, ev: Event) -> Result<Option<Action>> {
        let mac = ev.mac.clone();
        let m = self.entry(&mac);
        m.uuid = Some(ev.uuid.clone());
        m.events.push(Recorded {
            received_at: unix_time(),
            event: ev,
        });
        if m.events.len() > MAX_EVENTS {
            let drop = m.events.len() - MAX_EVENTS;
            m.events.drain(..drop);
        }
        let action = m.pending_action.take();
        self.save(&mac)?;
        Ok(action)
    }

    /// Notes that a machine's firmware fetched its boot script.
    pub fn note_pxe(
        &mut self,
        mac: &str,
        uuid: Option<String>,
        serial: Option<String>,
    ) -> Result<()> {
        let m = self.entry(mac);
        m.last_pxe = Some(Pxe {
            at: unix_time(),
            uuid,
            serial,
        });
        self.save(mac)
    }

    /// Queues an action for a machine (known or not yet seen).
    pub fn set_action(&mut self, mac: &str, action: Action) -> Result<()> {
        let m = self.entry(mac);
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

    /// Every machine, by MAC.
    pub fn machines(&self) -> Vec<&Machine> {
        self.machines.values().collect()
    }

    /// One machine.
    pub fn machine(&self, mac: &str) -> Option<&Machine> {
        self.machines.get(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{EventKind, API_VERSION};

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

    #[test]
    fn survives_reopen_and_hands_out_actions_once() {
        let dir = std::env::temp_dir().join(format!("plinth-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let mut s = Store::open(&dir).expect("open");
            assert_eq!(s.record(event(1)).expect("record"), None);
            s.set_action("52:54:00:12:34:56", Action::Poweroff)
                .expect("set");
        }
        let mut s = Store::open(&dir).expect("reopen");
        let m = s.machine("52:54:00:12:34:56").expect("machine kept");
        assert_eq!(m.events.len(), 1);
        assert_eq!(m.pending_action, Some(Action::Poweroff));
        assert_eq!(s.record(event(2)).expect("record"), Some(Action::Poweroff));
        assert_eq!(s.take_action("52:54:00:12:34:56").expect("take"), None);
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
