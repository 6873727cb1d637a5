//! The node endpoints, mutual TLS only: a certificate reaches its own machine's data and
//! nothing else. Asking for another machine's config, or reporting as another machine
//! or boot, is refused and recorded as a `security` event, on both machines' timelines
//! when another declared machine is named.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State as AxState};
use axum::http::{Method, StatusCode, Uri};
use axum::{Extension, Json};

use crate::schema::config::MachineConfig;
use crate::schema::{normalize_mac, Event, EventKind, LogBatch, Reply, MAX_LOG_BYTES};
use crate::server::assign;
use crate::server::auth::{self, request_line, security, Node};
use crate::server::fleet::render::Reveal;
use crate::server::listener::Peer;
use crate::server::{ApiError, State};

/// How long a node's action poll is held open.
pub const POLL: Duration = Duration::from_secs(25);

/// The longest log line kept; longer ones are cut.
const MAX_LINE: usize = 4096;

/// A refusal of `node`'s request: a `security` event on its machine's timeline and, when
/// the request named another declared machine (`victim`), on that one's too.
fn forbidden(
    st: &State,
    node: &Node,
    peer: &Peer,
    request: &str,
    msg: String,
    victim: Option<&str>,
) -> ApiError {
    let reason = format!("{request}: {msg}");
    security(st, &node.mac, &node.boot_id, &reason, peer);
    if let Some(v) = victim.filter(|v| *v != node.mac) {
        security(st, v, "", &reason, peer);
    }
    ApiError::new(StatusCode::FORBIDDEN, msg).who(format!("node:{}", node.mac))
}

/// `GET /v1/extensions/{name}`: an extension the machine's config lists, from
/// `--extensions-dir`, streamed as it is read. The node checks its digest; the server
/// only serves the file of that name.
pub async fn extension(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    method: Method,
    uri: Uri,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let request = request_line(&method, &uri);
    let node = auth::node(&st, &peer, &request)?;
    let who = format!("node:{}", node.mac);
    let not_found = |msg: String| {
        ApiError::new(StatusCode::NOT_FOUND, msg)
            .reason("extension")
            .who(who.clone())
    };
    let Some(dir) = st.cfg.extensions_dir.clone() else {
        return Err(not_found(format!(
            "extension {name}: this server has no --extensions-dir"
        )));
    };
    let fleet = st.fleet();
    let listed = st.with_machine(&node.mac, |s| {
        let Some(m) = s.machine(&node.mac)? else {
            return Ok(false);
        };
        if m.quarantine.is_some() {
            return Ok(false);
        }
        Ok(
            match assign::config(&fleet, &st.secrets, s, &m, Reveal::Redacted) {
                Ok((_, Some(c))) => c.extensions.iter().any(|e| e.name == name),
                _ => false,
            },
        )
    })?;
    // The config's names are checked as file names; this one is only ever one of them.
    if !listed || !crate::schema::extensions::valid_name(&name) {
        return Err(not_found(format!(
            "extension {name} is not in the config of {}",
            node.mac
        )));
    }
    let path = dir.join(&name);
    // O_NONBLOCK: opening a FIFO must not wait for a writer; a regular file ignores it.
    let file = match tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .await
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_found(format!(
                "extension {name}: no such file in --extensions-dir"
            )))
        }
        Err(e) => {
            crate::server::log(&format!(
                "extension {name}: opening {}: {e}",
                path.display()
            ));
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("extension {name}: the server cannot read it"),
            )
            .who(who));
        }
    };
    // A directory or a FIFO put there by mistake is no extension (and a FIFO's read would
    // hold a thread for ever).
    let meta = file.metadata().await.ok().filter(|m| m.is_file());
    let Some(len) = meta.map(|m| m.len()) else {
        return Err(not_found(format!(
            "extension {name}: not a regular file in --extensions-dir"
        )));
    };
    let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    ));
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .header(axum::http::header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).who(who))
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
    let who = format!("node:{}", node.mac);
    if let Some(asked) = q.get("mac") {
        let asked_mac = normalize_mac(asked).unwrap_or_else(|| asked.clone());
        if asked_mac != node.mac {
            let msg = format!(
                "the certificate of {} asked for the config of {asked_mac}",
                node.mac
            );
            return Err(forbidden(
                &st,
                &node,
                &peer,
                &request,
                msg,
                Some(&asked_mac),
            ));
        }
    }
    let fleet = st.fleet();
    let answer = st.with_machine(&node.mac, |s| {
        let Some(m) = s.machine(&node.mac)? else {
            return Ok(Answer::Missing);
        };
        if let Some(q) = &m.quarantine {
            return Ok(Answer::Quarantine(format!(
                "machine {} is in quarantine: {}",
                m.mac, q.reason
            )));
        }
        // Secrets are filled in here, and only here.
        Ok(
            match assign::config(&fleet, &st.secrets, s, &m, Reveal::Secrets) {
                Ok((_, Some(c))) => Answer::Config(Box::new(c)),
                Ok((_, None)) => Answer::Pending,
                Err(e) => Answer::Failed(format!("the config of {} does not render: {e}", m.mac)),
            },
        )
    })?;
    match answer {
        Answer::Missing => Err(ApiError::new(StatusCode::NOT_FOUND, "machine not found").who(who)),
        Answer::Quarantine(msg) => Err(ApiError::new(StatusCode::FORBIDDEN, msg)
            .reason("quarantine")
            .who(who)),
        Answer::Failed(msg) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
            .reason("config_render")
            .who(who)),
        Answer::Config(mut cfg) => {
            join_token(&st, &node, peer.addr.ip(), &mut cfg)
                .await
                .map_err(|e| e.who(who))?;
            Ok(Json(*cfg))
        }
        Answer::Pending => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "machine {} is discovered, not accepted: no config until an operator accepts it (POST /v1/machines/{}/accept)",
                node.mac, node.mac
            ),
        )
        .reason("not_accepted")
        .who(who)),
    }
}

/// The bootstrap token of a config that joins Kubernetes without one of its own: minted
/// for this machine and boot in the server's cluster, and on the timeline (its id, never
/// its secret). A config that joins names its node, which the server then knows as this
/// machine; the event also holds the address the server approves the node's serving
/// certificate for: the one this request came from, or the config's static one, never
/// one the node merely claims.
async fn join_token(
    st: &State,
    node: &Node,
    from: std::net::IpAddr,
    cfg: &mut MachineConfig,
) -> Result<(), ApiError> {
    let Some(k) = cfg.kubernetes.as_mut() else {
        return Ok(());
    };
    let name = cfg.hostname.clone().unwrap_or_default();
    let Some(cluster) = &st.cluster else {
        if k.token.is_none() {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "the config of {} joins Kubernetes with no kubernetes.token, and this server has no --kubeconfig to mint one",
                    node.mac
                ),
            )
            .reason("config_render"));
        }
        return Ok(());
    };
    if cluster.remember(&name, &node.mac).is_some() {
        // The name is another machine's, or was: look at the whole fleet again.
        let shared = cluster.learn(crate::server::blocking(|| crate::server::joining_nodes(st)));
        if let Some((_, macs)) = shared.iter().find(|(n, _)| *n == name) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "node name {name} is the host name of machines {}: one Kubernetes node cannot be two machines",
                    macs.join(", ")
                ),
            )
            .reason("kubernetes"));
        }
        cluster.remember(&name, &node.mac);
    }
    // The address the server sees the request come from (the static one when the config
    // sets one: the boot's DHCP address is given up, and may go to another machine).
    let address = match &cfg.network {
        Some(crate::schema::config::Network::Static(n)) => {
            crate::schema::config::parse_cidr(&n.address).map(|(a, _)| std::net::IpAddr::V4(a))
        }
        _ => Some(from.to_canonical()),
    };
    let mut d = serde_json::Map::new();
    d.insert("node".into(), name.clone().into());
    d.insert(
        "addresses".into(),
        address
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    let mut record = cluster.first_for_boot(&node.mac, &node.boot_id);
    if k.token.is_none() {
        let (minted, fresh) = cluster
            .token_for(&node.mac, &node.boot_id, &name, crate::schema::unix_time())
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "minting a bootstrap token for node {name} in {}: {e}",
                        cluster.server()
                    ),
                )
                .reason("kubernetes")
            })?;
        if let Some(w) = &minted.stale {
            crate::server::log(&format!("kubernetes: {w}"));
        }
        d.insert("step".into(), "token".into());
        d.insert("token".into(), minted.id.clone().into());
        d.insert("expires".into(), minted.expires.clone().into());
        k.token = Some(minted.token);
        record = fresh;
    } else {
        d.insert("step".into(), "config".into());
        // The token's id, never its secret.
        if let Some((id, _)) = k.token.as_deref().and_then(|t| t.split_once('.')) {
            d.insert("token".into(), id.into());
        }
    }
    // Once per boot (or per new token): a config fetched again changes nothing, and
    // the addresses approved stay those of the boot's first fetch.
    if record {
        let mac = node.mac.clone();
        let boot = node.boot_id.clone();
        st.with_machine(&mac, |s| {
            s.server_event(&mac, &boot, EventKind::Kubernetes, d)
        })?;
    }
    Ok(())
}

/// What `GET /v1/config` comes to, decided under the store's lock.
enum Answer {
    Missing,
    Quarantine(String),
    Failed(String),
    Config(Box<MachineConfig>),
    Pending,
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
    let who = format!("node:{}", node.mac);
    let ev = Event::parse(&body).map_err(|msg| {
        if msg.contains("bytes, more than") {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, msg).who(&who)
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, msg).who(&who)
        }
    })?;
    if ev.mac != node.mac || ev.boot_id != node.boot_id {
        let msg = format!(
            "the certificate of {} (boot {}) reported an event as {} (boot {})",
            node.mac,
            node.boot_id,
            ev.mac,
            crate::server::audit::cut(&ev.boot_id, 64)
        );
        return Err(forbidden(&st, &node, &peer, &request, msg, Some(&ev.mac)));
    }
    if ev.kind.server_only() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "type: {} events are the server's own",
                serde_json::to_value(ev.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
        )
        .who(who));
    }
    if ev.kind == EventKind::Booted {
        st.traffic.booted(&node.mac);
    }
    let action = st.with_machine(&node.mac, |s| s.record(&node.mac, ev))?;
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
    let who = format!("node:{}", node.mac);
    if node.discovery {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a discovery-only certificate posts events and polls for actions; logs wait for the machine's acceptance",
        )
        .reason("discovery_only")
        .who(who));
    }
    if body.len() > MAX_LOG_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "log batch is {} bytes, more than {MAX_LOG_BYTES}",
                body.len()
            ),
        )
        .who(who));
    }
    let batch: LogBatch = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("logs: {e}")).who(&who))?;
    if batch.boot_id != node.boot_id {
        let msg = format!(
            "the certificate of boot {} sent logs of boot {}",
            node.boot_id,
            crate::server::audit::cut(&batch.boot_id, 64)
        );
        return Err(forbidden(&st, &node, &peer, &request, msg, None));
    }
    // A secret a node echoes (a file it printed) is not kept in the clear.
    let secrets = st.secrets.all();
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
                "{} {}",
                log_source(&l.source),
                crate::server::secrets::redact(&t, &secrets)
            )
        })
        .collect();
    let kept = st.with_machine(&node.mac, |s| {
        s.append_log(&node.mac, &node.boot_id, &lines)
    })?;
    Ok(Json(serde_json::json!({ "kept": kept })))
}

/// The source a stored line is tagged with: `kmsg`, `container/NAME/stdout|stderr`, or
/// `console` for anything else (a node names no other).
fn log_source(s: &str) -> &str {
    let container = s
        .strip_prefix("container/")
        .or_else(|| s.strip_prefix("service/"))
        .and_then(|r| r.split_once('/'));
    match container {
        _ if s == "kmsg" => s,
        Some((name, "stdout" | "stderr"))
            if !name.is_empty()
                && name.len() <= 12
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
        {
            s
        }
        _ => "console",
    }
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
    // Answered well within the request deadline, so that a poll is never cut.
    let poll = POLL.min(st.cfg.limits.request_timeout / 2);
    let deadline = tokio::time::Instant::now() + poll;
    loop {
        // Registered before the check, so a wake-up between the two is not lost.
        let notified = st.actions.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let action = st.with_machine(&node.mac, |s| s.take_action(&node.mac))?;
        if action.is_some() {
            return Ok(Json(Reply { action }));
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Ok(Json(Reply { action: None }));
        }
    }
}
