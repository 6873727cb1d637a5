//! Which config a machine gets, and from where: a file of `--config-dir/machines/` that
//! selects it (the most specific one), else what an operator declared through the API,
//! else the profile an operator accepted it with; a machine that is none of these is
//! only discovered, and gets no config.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::schema::config::MachineConfig;
use crate::server::fleet::render::Reveal;
use crate::server::fleet::{Fleet, Ident, Match};
use crate::server::ident::{placeholder_serial, placeholder_uuid};
use crate::server::secrets::Secrets;
use crate::server::store::{Machine, Store};

/// What the identifiers a machine presents are worth: the ones that identify nothing are
/// flagged and left out of matching.
pub struct Identifiers {
    /// What matching may use.
    pub ident: Ident,
    /// Why anything was left out.
    pub flags: Vec<String>,
}

/// Sorts the identifiers `mac` presents (`uuid`, `serial`) into usable and flagged: a
/// placeholder, or a UUID the store has seen on another MAC, is left out.
pub fn identifiers(
    s: &Store,
    mac: &str,
    uuid: Option<&str>,
    serial: Option<&str>,
    labels: BTreeMap<String, String>,
) -> crate::Result<Identifiers> {
    let mut flags = Vec::new();
    let uuid = match uuid {
        Some(u) if placeholder_uuid(u) => {
            flags.push(format!(
                "uuid {u} is a placeholder firmware ships: not used to match"
            ));
            None
        }
        Some(u) => {
            let others: Vec<String> = s.uuid_macs(u)?.into_iter().filter(|m| m != mac).collect();
            if others.is_empty() {
                Some(u.to_string())
            } else {
                flags.push(format!(
                    "uuid {u} is also presented by {}: not used to match",
                    others.join(", ")
                ));
                None
            }
        }
        None => None,
    };
    let serial = match serial {
        Some(n) if placeholder_serial(n) => {
            flags.push(format!(
                "serial {n:?} is a placeholder firmware ships: not used to match"
            ));
            None
        }
        other => other.map(str::to_string),
    };
    Ok(Identifiers {
        ident: Ident {
            mac: mac.to_string(),
            uuid,
            serial,
            labels,
        },
        flags,
    })
}

/// Where a machine's config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `machines/NAME.yaml`.
    File(String),
    /// `PUT /v1/machines/<mac>`.
    Api,
    /// Accepted with this profile.
    Accepted(String),
    /// Nothing: only discovered.
    Discovered,
}

impl Origin {
    /// How the API shows it.
    pub fn view(&self) -> Value {
        match self {
            Origin::File(f) => serde_json::json!({"file": format!("machines/{f}.yaml")}),
            Origin::Api => serde_json::json!("api"),
            Origin::Accepted(p) => serde_json::json!({"profile": p}),
            Origin::Discovered => serde_json::json!("discovered"),
        }
    }
}

/// The machine file selecting `m` (by what it presented at its last boot script).
pub fn matched(fleet: &Fleet, s: &Store, m: &Machine) -> crate::Result<Option<String>> {
    let pxe = m.last_pxe.as_ref();
    let labels = m
        .accepted
        .as_ref()
        .map(|a| a.labels.clone())
        .unwrap_or_default();
    let ids = identifiers(
        s,
        &m.mac,
        pxe.and_then(|p| p.uuid.as_deref()),
        pxe.and_then(|p| p.serial.as_deref()),
        labels,
    )?;
    Ok(match fleet.find(&ids.ident) {
        Match::One(r) => Some(r.name()),
        _ => None,
    })
}

/// Where the machine's config comes from (without rendering it).
pub fn origin(fleet: &Fleet, s: &Store, m: &Machine) -> crate::Result<Origin> {
    Ok(match matched(fleet, s, m)? {
        Some(f) => Origin::File(f),
        None if m.declared.is_some() => Origin::Api,
        None => match &m.accepted {
            Some(a) => Origin::Accepted(a.profile.clone()),
            None => Origin::Discovered,
        },
    })
}

/// The machine's config and where it comes from (`None` for a machine only
/// discovered). With `Reveal::Secrets` the error never quotes a secret (see
/// [`Fleet::render`]).
pub fn config(
    fleet: &Fleet,
    secrets: &Secrets,
    s: &Store,
    m: &Machine,
    reveal: Reveal,
) -> crate::Result<(Origin, Option<MachineConfig>)> {
    if let Some(name) = matched(fleet, s, m)? {
        let Some(r) = fleet.machine_named(&name) else {
            return Ok((Origin::File(name), None));
        };
        let extra = serde_json::Map::new();
        let cfg = fleet.render(r, &extra, secrets, reveal)?;
        return Ok((Origin::File(name), Some(cfg)));
    }
    if let Some(d) = &m.declared {
        return Ok((Origin::Api, Some(d.config.clone())));
    }
    if let Some(a) = &m.accepted {
        let cfg = fleet.render_profile(&a.profile, &a.params, secrets, reveal)?;
        return Ok((Origin::Accepted(a.profile.clone()), Some(cfg)));
    }
    Ok((Origin::Discovered, None))
}
