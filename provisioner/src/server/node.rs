//! The node endpoints, mutual TLS only: a certificate reaches its own machine's data and
//! nothing else. Asking for another machine's config, or reporting as another machine
//! or boot, is refused and recorded as a `security` event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State as AxState};
use axum::http::{Method, StatusCode, Uri};
use axum::{Extension, Json};

use crate::schema::config::MachineConfig;
use crate::schema::{normalize_mac, Event, LogBatch, Reply, MAX_LOG_BYTES};
use crate::server::auth::{self, request_line, security, Node};
use crate::server::https::Peer;
use crate::server::store::Source;
use crate::server::{ApiError, State};

/// How long a node's action poll is held open.
pub const POLL: Duration = Duration::from_secs(25);

/// The longest log line kept; longer ones are cut.
const MAX_LINE: usize = 4096;

fn forbidden(st: &State, node: &Node, peer: &Peer, request: &str, msg: String) -> ApiError {
    security(
        st,
        &node.mac,
        &node.boot_id,
        &format!("{request}: {msg}"),
        peer,
    );
    st.audit(
        &format!("node:{}", node.mac),
        peer.addr,
        request,
        &format!("refused: {msg}"),
    );
    ApiError::new(StatusCode::FORBIDDEN, msg)
}

/// `GET /v1/config[?mac=MAC]`: the machine's `MachineConfig`. `mac`, when given, must be
/// the certificate's own.
pub async fn config(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<MachineConfig>, ApiError> {
    let request = request_line(&method, &uri);
    let node = auth::node(&st, &peer, &request)?;
    if let Some(asked) = q.get("mac") {
        let asked_mac = normalize_mac(asked).unwrap_or_else(|| asked.clone());
        if asked_mac != node.mac {
            let msg = format!(
                "the certificate of {} asked for the config of {asked_mac}",
                node.mac
            );
            if st.with_store(|s| Ok(s.machine(&asked_mac).is_some()))? {
                security(&st, &asked_mac, "", &format!("{request}: {msg}"), &peer);
            }
            return Err(forbidden(&st, &node, &peer, &request, msg));
        }
    }
    let m = st.with_store(|s| Ok(s.machine(&node.mac).cloned()))?;
    let Some(m) = m else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "machine not found"));
    };
    if let Some(q) = &m.quarantine {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("machine {} is in quarantine: {}", m.mac, q.reason),
        ));
    }
    match m.declared {
        Some(d) => Ok(Json(d.config)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("machine {} has no config", m.mac),
        )),
    }
}

/// `POST /v1/events`: one event of the certificate's machine and boot.
pub async fn events(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Reply>, ApiError> {
    let request = request_line(&method, &uri);
    let node = auth::node(&st, &peer, &request)?;
    let ev = Event::parse(&body).map_err(|msg| {
        if msg.contains("bytes, more than") {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, msg)
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, msg)
        }
    })?;
    if ev.mac != node.mac || ev.boot_id != node.boot_id {
        let msg = format!(
            "the certificate of {} (boot {}) reported an event as {} (boot {})",
            node.mac, node.boot_id, ev.mac, ev.boot_id
        );
        return Err(forbidden(&st, &node, &peer, &request, msg));
    }
    if ev.kind == crate::schema::EventKind::Security {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "type: security events are the server's own",
        ));
    }
    let action = st.with_store(|s| s.record(&node.mac, Source::Node, ev))?;
    Ok(Json(Reply { action }))
}

/// `POST /v1/logs`: lines of the certificate's boot.
pub async fn logs(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request = request_line(&method, &uri);
    let node = auth::node(&st, &peer, &request)?;
    if body.len() > MAX_LOG_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "log batch is {} bytes, more than {MAX_LOG_BYTES}",
                body.len()
            ),
        ));
    }
    let batch: LogBatch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("logs: {e}")))?;
    if batch.boot_id != node.boot_id {
        let msg = format!(
            "the certificate of boot {} sent logs of boot {}",
            node.boot_id, batch.boot_id
        );
        return Err(forbidden(&st, &node, &peer, &request, msg));
    }
    let lines: Vec<String> = batch
        .lines
        .iter()
        .map(|l| {
            let mut t: String = l
                .text
                .chars()
                .filter(|c| *c != '\n' && *c != '\r')
                .collect();
            if t.len() > MAX_LINE {
                let mut cut = MAX_LINE;
                while !t.is_char_boundary(cut) {
                    cut -= 1;
                }
                t.truncate(cut);
            }
            format!(
                "{} {t}",
                if l.source == "kmsg" {
                    "kmsg"
                } else {
                    "console"
                }
            )
        })
        .collect();
    let kept = st.with_store(|s| s.append_log(&node.mac, &node.boot_id, &lines))?;
    Ok(Json(serde_json::json!({ "kept": kept })))
}

/// `POST /v1/action`: the node's long poll; answers at once with a pending action, else
/// when an operator queues one, else after [`POLL`] with none.
pub async fn action(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    method: Method,
    uri: Uri,
) -> Result<Json<Reply>, ApiError> {
    let request = request_line(&method, &uri);
    let node = auth::node(&st, &peer, &request)?;
    let deadline = tokio::time::Instant::now() + POLL;
    loop {
        // Registered before the check, so a wake-up between the two is not lost.
        let notified = st.actions.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let action = st.with_store(|s| s.take_action(&node.mac))?;
        if action.is_some() {
            return Ok(Json(Reply { action }));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(Json(Reply { action: None }));
        }
    }
}
