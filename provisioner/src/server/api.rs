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
use crate::schema::{normalize_mac, unix_time, valid_uuid, Action};
use crate::server::auth::{self, request_line};
use crate::server::https::Peer;
use crate::server::store::{Cert, Declared, Machine, Pxe, Quarantine};
use crate::server::{ApiError, State};

/// A machine in the list.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    mac: String,
    uuid: Option<String>,
    declared: bool,
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
    events: Vec<Value>,
}

/// One machine in full.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    mac: String,
    uuid: Option<String>,
    config: Option<MachineConfig>,
    declared_by: Option<String>,
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
        "wallTime": r.event.wall_time,
        "uptimeMs": r.event.uptime_ms,
        "details": r.event.details,
    })
}

fn detail(m: &Machine) -> Detail {
    let mut boots: Vec<Boot> = Vec::new();
    for r in &m.events {
        match boots.iter_mut().find(|b| b.boot_id == r.event.boot_id) {
            Some(b) => b.events.push(event_view(r)),
            None => boots.push(Boot {
                boot_id: r.event.boot_id.clone(),
                events: vec![event_view(r)],
            }),
        }
    }
    Detail {
        mac: m.mac.clone(),
        uuid: m.declared.as_ref().map(|d| d.uuid.clone()),
        config: m.declared.as_ref().map(|d| d.config.clone()),
        declared_by: m.declared.as_ref().map(|d| d.by.clone()),
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
    let list = st.with_store(|s| {
        Ok(s.machines()
            .into_iter()
            .map(|m| Summary {
                mac: m.mac.clone(),
                uuid: m.declared.as_ref().map(|d| d.uuid.clone()),
                declared: m.declared.is_some(),
                quarantine: m.quarantine.clone(),
                pending_action: m.pending_action,
                last_event: m.events.last().map(event_view),
            })
            .collect())
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
    st.with_store(|s| Ok(s.machine(&mac).map(detail)))?
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
    let declared = Declared {
        uuid: d.uuid.to_ascii_lowercase(),
        config: d.config,
        by: who.clone(),
        at: unix_time(),
    };
    let m = st.with_store(|s| {
        s.declare(&mac, declared)?;
        Ok(s.machine(&mac).map(detail))
    })?;
    st.audit(&format!("operator:{who}"), peer.addr, &request, "ok");
    m.map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "declared machine vanished",
        )
    })
}

/// `POST /v1/machines/{mac}/{poweroff|reboot|release}`.
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
    let known = st.with_store(|s| Ok(s.machine(&mac).is_some()))?;
    if !known {
        return Err(not_known(&mac, &who));
    }
    let answer = match verb.as_str() {
        "poweroff" | "reboot" => {
            let action = if verb == "poweroff" {
                Action::Poweroff
            } else {
                Action::Reboot
            };
            st.with_store(|s| s.set_action(&mac, action))?;
            st.actions.notify_waiters();
            json!({ "mac": mac, "pendingAction": action })
        }
        "release" => {
            let was = st.with_store(|s| s.release(&mac))?;
            json!({ "mac": mac, "released": was })
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "{}: no such action (poweroff, reboot, release)",
                    crate::server::store::cut(other, 64)
                ),
            )
            .who(format!("operator:{who}")))
        }
    };
    st.audit(&format!("operator:{who}"), peer.addr, &request, "ok");
    Ok(Json(answer))
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
                crate::server::store::cut(&boot, 64)
            ),
        )
        .who(format!("operator:{who}")));
    }
    let path = st.with_store(|s| Ok(s.log_dir(&mac).join(format!("{boot}.log"))))?;
    match tokio::fs::read(&path).await {
        Ok(b) => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            b,
        )
            .into_response()),
        Err(_) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no log for {mac} boot {boot}"),
        )
        .who(format!("operator:{who}"))),
    }
}

/// Anything else on the HTTPS listener (audited, as every refusal).
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("{}: not found", crate::server::store::cut(uri.path(), 128)),
    )
}
