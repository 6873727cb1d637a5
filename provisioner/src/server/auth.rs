//! Who a request comes from. A node is its client certificate: known serial, neither
//! revoked nor expired, issued to one machine and one boot. An operator is a bearer
//! token; a node's certificate is never an operator. Every refusal is recorded: on the
//! machine's timeline as a `security` event when a node's certificate was used, and in
//! the audit trail always (the errors here name who, for [`crate::server::audit_refusals`]).

use crate::schema::unix_time;
use crate::server::listener::Peer;
use crate::server::{operators, ApiError, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};

/// A node, as its certificate says.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its machine's MAC.
    pub mac: String,
    /// The boot the certificate was issued for.
    pub boot_id: String,
    /// The certificate's serial.
    pub serial: String,
    /// A discovery-only certificate of a machine nobody has accepted yet.
    pub discovery: bool,
}

/// The request line, for the audit trail.
pub fn request_line(method: &Method, uri: &Uri) -> String {
    format!("{method} {}", uri.path())
}

/// Records a `security` event on a declared machine's timeline (nothing for any other
/// MAC; errors are logged only: the refusal stands either way, and is audited).
pub fn security(st: &State, mac: &str, boot_id: &str, what: &str, peer: &Peer) {
    let from = peer.addr.to_string();
    if let Err(e) = st.with_machine(mac, |s| s.security_event(mac, boot_id, what, Some(&from))) {
        crate::server::log(&format!("recording a security event for {mac}: {}", e.msg));
    }
}

/// The node behind a request, or 401. A certificate the store no longer honours
/// (revoked, expired, quarantined machine) is itself a security event.
pub fn node(st: &State, peer: &Peer, request: &str) -> Result<Node, ApiError> {
    let Some(serial) = &peer.serial else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a node endpoint: present the client certificate enrolment gave you",
        )
        .who("anonymous"));
    };
    let now = unix_time();
    let found = st.with_store(|s| {
        Ok(s.machine_of_serial(serial)?.map(|m| {
            let cert = m.certs.iter().find(|c| &c.serial == serial).cloned();
            let pending = m.declared.is_none() && m.accepted.is_none();
            (
                m.mac.clone(),
                cert,
                m.valid_cert(serial, now).is_some(),
                pending,
            )
        }))
    })?;
    match found {
        Some((mac, Some(cert), true, pending)) => Ok(Node {
            mac,
            discovery: cert.discovery && pending,
            boot_id: cert.boot_id,
            serial: serial.clone(),
        }),
        Some((mac, cert, _, _)) => {
            let why = cert
                .and_then(|c| c.revoked)
                .unwrap_or_else(|| "expired".into());
            let msg = format!("certificate {serial} is no longer valid ({why})");
            security(st, &mac, "", &format!("{request}: {msg}"), peer);
            Err(ApiError::new(StatusCode::UNAUTHORIZED, msg).who(format!("node:{mac}")))
        }
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("certificate {serial} was not issued by this server"),
        )
        .who("unknown-certificate")),
    }
}

/// The operator behind a request, or 401. Only a bearer token makes an operator; a
/// node's certificate trying an operator endpoint is a security event on its machine.
pub fn operator(
    st: &State,
    peer: &Peer,
    headers: &HeaderMap,
    request: &str,
) -> Result<String, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(name) = bearer.and_then(|b| operators::check(st.cfg.shared_dir(), b)) {
        return Ok(name);
    }
    let why = if bearer.is_some() {
        "unknown or revoked operator token"
    } else {
        "no operator token"
    };
    let mut who = "anonymous".to_string();
    if let Some(serial) = &peer.serial {
        let mac = st
            .with_store(|s| Ok(s.machine_of_serial(serial)?.map(|m| m.mac)))
            .ok()
            .flatten();
        if let Some(mac) = mac {
            security(
                st,
                &mac,
                "",
                &format!("{request}: a node certificate ({serial}) on an operator endpoint"),
                peer,
            );
            who = format!("node:{mac}");
        }
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        format!("an operator endpoint ({why}): send Authorization: Bearer <operator token>"),
    )
    .who(who))
}

/// Web pages are for operators' browsers: a request presenting a client certificate gets
/// none, whatever cookie it carries; a node's is a security event on its machine.
pub fn browser(st: &State, peer: &Peer, request: &str) -> Result<(), ApiError> {
    let Some(serial) = &peer.serial else {
        return Ok(());
    };
    let mac = st
        .with_store(|s| Ok(s.machine_of_serial(serial)?.map(|m| m.mac)))
        .ok()
        .flatten();
    let mut who = "unknown-certificate".to_string();
    if let Some(mac) = mac {
        security(
            st,
            &mac,
            "",
            &format!("{request}: a node certificate ({serial}) on an operator page"),
            peer,
        );
        who = format!("node:{mac}");
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "operator pages: a request with a client certificate gets none",
    )
    .who(who))
}
