//! The operators' JSON API (`docs/api.md`): bearer token on the HTTPS listener only.
//! Reads are GETs and change nothing; every change is a PUT or POST, audited with the
//! operator's name.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as AxPath, State as AxState};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::schema::config::MachineConfig;
use crate::schema::{normalize_mac, unix_time, valid_uuid, Action, EventKind};
use crate::server::assign;
use crate::server::auth::{self, request_line};
use crate::server::fleet::render::Reveal;
use crate::server::listener::Peer;
use crate::server::store::{
    Accepted, BootInfo, Cert, Declared, Discovered, Machine, Pxe, Quarantine, Recorded, Store,
};
use crate::server::{ApiError, State};

/// A machine in the list.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    mac: String,
    uuid: Option<String>,
    declared: bool,
    /// Where its config comes from: `"api"`, `{"file": ...}`, `{"profile": ...}` or
    /// `"discovered"`.
    origin: Value,
    flags: Vec<String>,
    quarantine: Option<Quarantine>,
    pending_action: Option<Action>,
    last_event: Option<Value>,
}

/// The token, as much as an operator may see: never the token, never its hash.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    minted_at: u64,
    expires_at: u64,
    spent_at: Option<u64>,
    /// Why it was voided (an enrolment presenting it was refused), if it was.
    voided: Option<String>,
}

/// One boot's timeline.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Boot {
    boot_id: String,
    /// What the store keeps of it (counts, log bytes, dropped log lines).
    kept: Option<BootInfo>,
    events: Vec<Value>,
}

/// One machine in full.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    mac: String,
    uuid: Option<String>,
    origin: Value,
    /// The config as the node gets it, secrets shown as `[secret NAME]`; or why it does
    /// not render.
    config: Value,
    declared_by: Option<String>,
    discovered: Option<Discovered>,
    accepted: Option<Accepted>,
    flags: Vec<String>,
    quarantine: Option<Quarantine>,
    token: Option<TokenView>,
    certificates: Vec<Cert>,
    pending_action: Option<Action>,
    last_pxe: Option<Pxe>,
    boots: Vec<Boot>,
}

fn event_view(r: &crate::server::store::Recorded) -> Value {
    json!({
        "type": r.event.kind,
        "source": r.source,
        "seq": r.event.seq,
        "receivedAt": r.received_at,
        "receivedAtMs": r.received_at_ms,
        "wallTime": r.event.wall_time,
        "uptimeMs": r.event.uptime_ms,
        "details": r.event.details,
    })
}

/// Where the machine's config comes from, and the config (redacted), or why not.
fn origin_and_config(st: &State, s: &Store, m: &Machine) -> (Value, Value) {
    let fleet = st.fleet();
    match assign::config(&fleet, &st.secrets, s, m, Reveal::Redacted) {
        Ok((origin, Some(c))) => (
            origin.view(),
            serde_json::to_value(c).unwrap_or(Value::Null),
        ),
        Ok((origin, None)) => (origin.view(), Value::Null),
        Err(e) => (json!("error"), json!({"error": e.to_string()})),
    }
}

fn detail(st: &State, s: &Store, m: &Machine, events: &[Recorded]) -> Detail {
    let mut boots: Vec<Boot> = Vec::new();
    for r in events {
        match boots.iter_mut().find(|b| b.boot_id == r.event.boot_id) {
            Some(b) => b.events.push(event_view(r)),
            None => boots.push(Boot {
                boot_id: r.event.boot_id.clone(),
                kept: None,
                events: vec![event_view(r)],
            }),
        }
    }
    for b in &mut boots {
        let key = if b.boot_id.is_empty() {
            "-"
        } else {
            &b.boot_id
        };
        b.kept = m.boots.iter().find(|i| i.boot_id == key).cloned();
    }
    let (origin, config) = origin_and_config(st, s, m);
    Detail {
        mac: m.mac.clone(),
        uuid: m
            .declared
            .as_ref()
            .map(|d| d.uuid.clone())
            .or_else(|| m.last_pxe.as_ref().and_then(|p| p.uuid.clone())),
        origin,
        config,
        declared_by: m.declared.as_ref().map(|d| d.by.clone()),
        discovered: m.discovered.clone(),
        accepted: m.accepted.clone(),
        flags: m.flags.clone(),
        quarantine: m.quarantine.clone(),
        token: m.token.as_ref().map(|t| TokenView {
            minted_at: t.minted_at,
            expires_at: t.expires_at,
            spent_at: t.spent_at,
            voided: t.voided.clone(),
        }),
        certificates: m.certs.clone(),
        pending_action: m.pending_action,
        last_pxe: m.last_pxe.clone(),
        boots,
    }
}

fn mac_param(raw: &str, who: &str) -> Result<String, ApiError> {
    normalize_mac(raw).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("mac: {raw:?} is not a MAC address"),
        )
        .who(format!("operator:{who}"))
    })
}

fn not_known(mac: &str, who: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("machine {mac}: not known"))
        .who(format!("operator:{who}"))
}

/// `GET /v1/machines`.
pub async fn list(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Result<Json<Vec<Summary>>, ApiError> {
    auth::operator(&st, &peer, &headers, &request_line(&method, &uri))?;
    let fleet = st.fleet();
    let list = st.with_store(|s| {
        let mut out = Vec::new();
        for m in s.machines()? {
            let origin = assign::origin(&fleet, s, &m)?;
            let last = s.events(&m.mac)?.last().map(event_view);
            out.push(Summary {
                mac: m.mac.clone(),
                uuid: m
                    .declared
                    .as_ref()
                    .map(|d| d.uuid.clone())
                    .or_else(|| m.last_pxe.as_ref().and_then(|p| p.uuid.clone())),
                declared: m.declared.is_some(),
                origin: origin.view(),
                flags: m.flags.clone(),
                quarantine: m.quarantine.clone(),
                pending_action: m.pending_action,
                last_event: last,
            });
        }
        Ok(out)
    })?;
    Ok(Json(list))
}

/// `GET /v1/machines/{mac}`: the machine with its timeline per boot.
pub async fn show(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    AxPath(mac): AxPath<String>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Result<Json<Detail>, ApiError> {
    let who = auth::operator(&st, &peer, &headers, &request_line(&method, &uri))?;
    let mac = mac_param(&mac, &who)?;
    st.with_store(|s| {
        let Some(m) = s.machine(&mac)? else {
            return Ok(None);
        };
        let events = s.events(&mac)?;
        Ok(Some(detail(&st, s, &m, &events)))
    })?
    .map(Json)
    .ok_or_else(|| not_known(&mac, &who))
}

/// The body of `PUT /v1/machines/{mac}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Declaration {
    /// The SMBIOS UUID the machine must present.
    pub uuid: String,
    /// Its config.
    pub config: MachineConfig,
}

/// `PUT /v1/machines/{mac}`: declare (or re-declare) a machine and its config.
pub async fn declare(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    AxPath(mac): AxPath<String>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Detail>, ApiError> {
    let request = request_line(&method, &uri);
    let who = auth::operator(&st, &peer, &headers, &request)?;
    let mac = mac_param(&mac, &who)?;
    let refuse =
        |msg: String| ApiError::new(StatusCode::BAD_REQUEST, msg).who(format!("operator:{who}"));
    let d: Declaration =
        serde_json::from_slice(&body).map_err(|e| refuse(format!("machine: {e}")))?;
    if !valid_uuid(&d.uuid) {
        return Err(refuse(format!("uuid: {:?} is not a UUID", d.uuid)));
    }
    d.config
        .validate()
        .map_err(|e| refuse(format!("config.{e}")))?;
    // One source per machine: a file in --config-dir that names this MAC wins, so a
    // declaration beside it would never be used.
    if let Some(r) = st.fleet().naming_mac(&mac) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{mac} is declared by {}: change that file instead",
                r.path.display()
            ),
        )
        .who(format!("operator:{who}")));
    }
    let declared = Declared {
        uuid: d.uuid.to_ascii_lowercase(),
        config: d.config,
        by: who.clone(),
        at: unix_time(),
    };
    let m = st.with_machine(&mac, |s| {
        s.declare(&mac, declared)?;
        let Some(m) = s.machine(&mac)? else {
            return Ok(None);
        };
        let events = s.events(&mac)?;
        Ok(Some(detail(&st, s, &m, &events)))
    })?;
    st.audit(&format!("operator:{who}"), peer.addr, &request, "ok");
    m.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "declared machine vanished",
        )
    })
}

/// `POST /v1/machines/{mac}/{poweroff|reboot|inspect|release}`.
pub async fn act(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    AxPath((mac, verb)): AxPath<(String, String)>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let request = request_line(&method, &uri);
    let who = auth::operator(&st, &peer, &headers, &request)?;
    let mac = mac_param(&mac, &who)?;
    let answer = request_action(&st, &who, &mac, &verb)?;
    st.audit(&format!("operator:{who}"), peer.addr, &request, "ok");
    Ok(Json(answer))
}

/// Operator `who` asks for `verb` on `mac` (the API's and the web page's one way in):
/// the action is queued for the node (or the quarantine lifted) and put on the
/// machine's timeline with the operator's name.
pub(crate) fn request_action(
    st: &State,
    who: &str,
    mac: &str,
    verb: &str,
) -> Result<Value, ApiError> {
    let known = st.with_store(|s| Ok(s.machine(mac)?.is_some()))?;
    if !known {
        return Err(not_known(mac, who));
    }
    let answer = match verb {
        "poweroff" | "reboot" | "inspect" => {
            let action = match verb {
                "poweroff" => Action::Poweroff,
                "reboot" => Action::Reboot,
                _ => Action::Inspect,
            };
            st.with_machine(mac, |s| {
                s.set_action(mac, action)?;
                s.server_event(mac, "", EventKind::Action, action_details(verb, who))
            })?;
            st.actions.notify_waiters();
            json!({ "mac": mac, "pendingAction": action })
        }
        "release" => {
            let was = st.with_machine(mac, |s| {
                let was = s.release(mac)?;
                if was {
                    s.server_event(mac, "", EventKind::Action, action_details(verb, who))?;
                }
                Ok(was)
            })?;
            json!({ "mac": mac, "released": was })
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "{}: no such action (poweroff, reboot, inspect, release, accept)",
                    crate::server::audit::cut(other, 64)
                ),
            )
            .who(format!("operator:{who}")))
        }
    };
    Ok(answer)
}

/// The details of an `action` event: what, and which operator asked.
fn action_details(verb: &str, who: &str) -> serde_json::Map<String, Value> {
    let mut d = serde_json::Map::new();
    d.insert("action".into(), json!(verb));
    d.insert("by".into(), json!(who));
    d
}

/// `GET /v1/machines/{mac}/logs/{boot}`: a boot's streamed log, as text.
pub async fn boot_log(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    AxPath((mac, boot)): AxPath<(String, String)>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    let who = auth::operator(&st, &peer, &headers, &request_line(&method, &uri))?;
    let mac = mac_param(&mac, &who)?;
    if boot.is_empty()
        || boot.len() > 64
        || !boot.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "boot: {:?} is not a boot id",
                crate::server::audit::cut(&boot, 64)
            ),
        )
        .who(format!("operator:{who}")));
    }
    match st.with_store(|s| s.log(&mac, &boot))? {
        Some(b) => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            b,
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no log for {mac} boot {boot}"),
        )
        .who(format!("operator:{who}"))),
    }
}

/// The body of `POST /v1/machines/{mac}/accept`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Acceptance {
    /// The profile (`--config-dir/profiles/NAME.yaml`) its config is rendered from.
    pub profile: String,
    /// Parameters over the profile's and the defaults'.
    #[serde(default)]
    pub params: serde_json::Map<String, Value>,
    /// Labels machine files may select it by.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/machines/{mac}/accept` `{profile, params?, labels?}`: an operator accepts a
/// machine (a discovered one, typically): its config is rendered from the profile, and
/// a node waiting with a discovery-only certificate is told at once to fetch it.
pub async fn accept(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    AxPath(mac): AxPath<String>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Detail>, ApiError> {
    let request = request_line(&method, &uri);
    let who = auth::operator(&st, &peer, &headers, &request)?;
    let mac = mac_param(&mac, &who)?;
    let refuse =
        |msg: String| ApiError::new(StatusCode::BAD_REQUEST, msg).who(format!("operator:{who}"));
    let a: Acceptance =
        serde_json::from_slice(&body).map_err(|e| refuse(format!("acceptance: {e}")))?;
    let d = accept_machine(&st, &who, &mac, a)?;
    st.audit(&format!("operator:{who}"), peer.addr, &request, "ok");
    Ok(Json(d))
}

/// Operator `who` accepts `mac` with `a` (the API's and the web page's one way in).
pub(crate) fn accept_machine(
    st: &State,
    who: &str,
    mac: &str,
    a: Acceptance,
) -> Result<Detail, ApiError> {
    let refuse =
        |msg: String| ApiError::new(StatusCode::BAD_REQUEST, msg).who(format!("operator:{who}"));
    // The profile must render with these parameters (and its secrets) now, not fail on
    // the node later.
    st.fleet()
        .render_profile(&a.profile, &a.params, &st.secrets, Reveal::Secrets)
        .map_err(|e| refuse(format!("profile {:?}: {e}", a.profile)))?;
    let mut details = action_details("accept", who);
    details.insert("profile".into(), json!(a.profile));
    let accepted = Accepted {
        profile: a.profile,
        params: a.params,
        labels: a.labels,
        by: who.to_string(),
        at: unix_time(),
    };
    let d = st.with_machine(mac, |s| {
        if s.accept(mac, accepted.clone())?.is_none() {
            return Ok(None);
        }
        // A node waiting on its discovery-only certificate fetches its config now.
        s.set_action(mac, Action::Configure)?;
        s.server_event(mac, "", EventKind::Action, details)?;
        let Some(m) = s.machine(mac)? else {
            return Ok(None);
        };
        let events = s.events(mac)?;
        Ok(Some(detail(st, s, &m, &events)))
    })?;
    let Some(d) = d else {
        return Err(not_known(mac, who));
    };
    st.actions.notify_waiters();
    Ok(d)
}

/// `GET /v1/server`: the fleet's files as loaded, and the server's own events (reloads).
pub async fn server(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    auth::operator(&st, &peer, &headers, &request_line(&method, &uri))?;
    let fleet = st.fleet();
    let events = st.with_store(|s| s.server_events())?;
    Ok(Json(json!({
        "configDir": fleet.dir,
        "loadedAt": fleet.loaded_at,
        "machineFiles": fleet.machines.iter().map(|r| r.path.display().to_string()).collect::<Vec<_>>(),
        "profiles": fleet.profiles.keys().collect::<Vec<_>>(),
        "defaults": fleet.defaults.as_ref().map(|d| d.path.display().to_string()),
        "events": events,
    })))
}

/// `GET /metrics`: Prometheus' text format, for operators.
pub async fn metrics(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    auth::operator(&st, &peer, &headers, &request_line(&method, &uri))?;
    let (size, machines) = st.with_store(|s| Ok((s.size()?, s.machines()?.len())))?;
    st.metrics
        .store_bytes
        .set(i64::try_from(size).unwrap_or(i64::MAX));
    st.metrics
        .machines
        .set(i64::try_from(machines).unwrap_or(i64::MAX));
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response())
}

/// Anything else on the HTTPS listener (audited, as every refusal).
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("{}: not found", crate::server::audit::cut(uri.path(), 128)),
    )
}
