//! `POST /v1/enroll`: a token from the boot script, the machine's identity and a CSR in;
//! a client certificate out. The token must be known, unexpired, unspent and bound to
//! this MAC and UUID; it is spent, every earlier certificate of the machine is revoked,
//! and the certificate is made from the CSR's public key alone. A spent token presented
//! again is a replay: a `security` event and quarantine. `POST /v1/renew`: the same
//! for a node holding a valid certificate, with a new key.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{Method, StatusCode, Uri};
use axum::{Extension, Json};
use serde_json::{json, Map};

use crate::crypto::token_hash;
use crate::schema::{
    normalize_mac, unix_time, valid_uuid, EnrollRequest, EventKind, Issued, RenewRequest,
    API_VERSION, MAX_ENROLL_BYTES,
};
use crate::server::auth::{self, request_line, security};
use crate::server::https::Peer;
use crate::server::tls::Signed;
use crate::server::{ApiError, State};

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

fn valid_boot_id(b: &str) -> bool {
    !b.is_empty() && b.len() <= 64 && b.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn issued(s: &Signed) -> Issued {
    let life = s.record.not_after.saturating_sub(s.record.issued_at);
    Issued {
        certificate: s.pem.clone(),
        serial: s.record.serial.clone(),
        not_after: s.record.not_after,
        renew_at: s.record.issued_at + life / 2,
    }
}

/// What an enrolment attempt comes to, decided under the store's lock.
enum Verdict {
    Issue(Box<Signed>),
    Refuse(ApiError),
}

/// `POST /v1/enroll`.
pub async fn enroll(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Issued>, ApiError> {
    let request = request_line(&method, &uri);
    if body.len() > MAX_ENROLL_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "enrolment is {} bytes, more than {MAX_ENROLL_BYTES}",
                body.len()
            ),
        ));
    }
    // serde's messages name fields and types, never a string's value: the token
    // cannot leak through them.
    let req: EnrollRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("enrolment: {e}")))?;
    if req.api_version != API_VERSION {
        return Err(bad(format!(
            "apiVersion: {:?} is not {API_VERSION:?}",
            req.api_version
        )));
    }
    let mac = normalize_mac(&req.mac)
        .ok_or_else(|| bad(format!("mac: {:?} is not a MAC address", req.mac)))?;
    if !valid_uuid(&req.uuid) {
        return Err(bad(format!("uuid: {:?} is not a UUID", req.uuid)));
    }
    let uuid = req.uuid.to_ascii_lowercase();
    if !valid_boot_id(&req.boot_id) {
        return Err(bad(format!("bootId: {:?} is not a boot id", req.boot_id)));
    }
    let hash = token_hash(&req.token);
    let now = unix_time();
    let lifetime = st.cfg.cert_lifetime;
    let verdict = st.with_store(|s| {
        let mine = s.machine(&mac).and_then(|m| {
            m.token
                .as_ref()
                .filter(|t| crate::crypto::same(&t.hash, &hash))
                .cloned()
                .map(|t| (t, m.quarantine.clone()))
        });
        let Some((token, quarantine)) = mine else {
            // Someone else's token, or one this server never minted (or replaced).
            let owner = s.machine_of_token(&hash).map(|m| m.mac.clone());
            let (msg, owner_mac) = match owner {
                Some(o) => (
                    format!("enrolment as {mac} with the token minted for {o}"),
                    Some(o),
                ),
                None => (
                    format!("enrolment as {mac} with a token this server does not hold"),
                    None,
                ),
            };
            return Ok((
                Verdict::Refuse(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "token refused: not minted for this machine",
                )),
                Some(msg),
                owner_mac,
                false,
            ));
        };
        if token.spent_at.is_some() {
            let msg = format!("replay: the token of {mac}, spent already, presented again");
            s.quarantine(&mac, &msg)?;
            return Ok((
                Verdict::Refuse(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "token refused: already spent (the machine is now in quarantine)",
                )),
                Some(msg),
                None,
                true,
            ));
        }
        if now >= token.expires_at {
            let mut d = Map::new();
            d.insert("step".into(), json!("enroll"));
            d.insert(
                "error".into(),
                json!(format!(
                    "token expired {}s ago; the node reboots for a new one",
                    now - token.expires_at
                )),
            );
            s.server_event(&mac, &req.boot_id, EventKind::Error, d)?;
            return Ok((
                Verdict::Refuse(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token expired: reboot for a new one",
                )),
                None,
                None,
                false,
            ));
        }
        if token.uuid != uuid {
            let msg = format!(
                "enrolment with {mac}'s token but uuid {uuid} (bound to {})",
                token.uuid
            );
            return Ok((
                Verdict::Refuse(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "token refused: bound to another uuid",
                )),
                Some(msg),
                None,
                false,
            ));
        }
        if let Some(q) = quarantine {
            s.spend_token(&mac)?;
            return Ok((
                Verdict::Refuse(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("machine {mac} is in quarantine: {}", q.reason),
                )),
                None,
                None,
                false,
            ));
        }
        // The CSR is checked before the token is spent: a node with a bug keeps its try.
        let signed = match st.ca.sign_client(&req.csr, &mac, &req.boot_id, lifetime) {
            Ok(sig) => sig,
            Err(e) => return Ok((Verdict::Refuse(bad(e.to_string())), None, None, false)),
        };
        s.spend_token(&mac)?;
        s.add_cert(
            &mac,
            signed.record.clone(),
            &format!("superseded by the enrolment of boot {}", req.boot_id),
        )?;
        Ok((Verdict::Issue(Box::new(signed)), None, None, false))
    });
    let (verdict, attack, owner, _quarantined) = verdict?;
    if let Some(msg) = &attack {
        security(&st, &mac, &req.boot_id, msg, &peer);
        if let Some(o) = owner.filter(|o| *o != mac) {
            security(&st, &o, "", msg, &peer);
        }
    }
    match verdict {
        Verdict::Issue(signed) => {
            st.audit(
                &format!("node:{mac}"),
                peer.addr,
                &request,
                &format!(
                    "ok: certificate {} for boot {}",
                    signed.record.serial, req.boot_id
                ),
            );
            Ok(Json(issued(&signed)))
        }
        Verdict::Refuse(e) => {
            st.audit(
                &format!("enrolling:{mac}"),
                peer.addr,
                &request,
                &format!("refused: {}", e.msg),
            );
            Err(e)
        }
    }
}

/// `POST /v1/renew` (mutual TLS).
pub async fn renew(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Issued>, ApiError> {
    let request = request_line(&method, &uri);
    let node = auth::node(&st, &peer, &request)?;
    if body.len() > MAX_ENROLL_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "renewal too large",
        ));
    }
    let req: RenewRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("renewal: {e}")))?;
    let signed = st
        .ca
        .sign_client(&req.csr, &node.mac, &node.boot_id, st.cfg.cert_lifetime)
        .map_err(|e| bad(e.to_string()))?;
    st.with_store(|s| {
        s.add_cert(
            &node.mac,
            signed.record.clone(),
            &format!("renewed as {}", signed.record.serial),
        )
    })?;
    st.audit(
        &format!("node:{}", node.mac),
        peer.addr,
        &request,
        &format!("ok: {} renewed as {}", node.serial, signed.record.serial),
    );
    Ok(Json(issued(&signed)))
}
