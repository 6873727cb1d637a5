//! `POST /v1/enroll`: a token from the boot script, the machine's identity and a CSR in;
//! a client certificate out. The token must be known, unexpired, unspent and bound to
//! this MAC and UUID; it is spent, every earlier certificate of the machine is revoked,
//! and the certificate is made from the CSR's public key alone. A spent token presented
//! again is a replay: a `security` event and quarantine. Any other refusal of an
//! enrolment presenting a token the server holds unspent (another MAC or UUID, a CSR it
//! cannot sign, a body it cannot read) voids that token, recorded on its machine's
//! timeline: the node reboots for a new one, and that next boot script is not a second
//! mint. `POST /v1/renew`: the same for a node holding a valid certificate, with a new
//! key, checked again under the lock that stores the new certificate.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{Method, StatusCode, Uri};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use crate::crypto::token_hash;
use crate::schema::{
    normalize_mac, unix_time, valid_uuid, EnrollRequest, EventKind, Issued, RenewRequest,
    API_VERSION, MAX_ENROLL_BYTES,
};
use crate::server::auth::{self, request_line, security};
use crate::server::listener::Peer;
use crate::server::metrics::Metrics;
use crate::server::store::{Renewal, Store, Token};
use crate::server::tls::Signed;
use crate::server::{ApiError, State};

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, msg)
}

fn valid_boot_id(b: &str) -> bool {
    !b.is_empty() && b.len() <= 64 && b.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

fn issued(s: &Signed, discovery: bool) -> Issued {
    let life = s.record.not_after.saturating_sub(s.record.issued_at);
    Issued {
        certificate: s.pem.clone(),
        serial: s.record.serial.clone(),
        not_after: s.record.not_after,
        renew_at: s.record.issued_at + life / 2,
        discovery,
    }
}

/// What an enrolment attempt comes to, decided under the store's lock.
enum Verdict {
    Issue(Box<Signed>, bool),
    Refuse(ApiError),
}

/// What an enrolment body presents before it is checked: the token's hash and the MAC
/// claimed, when they can be read at all.
fn presented(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (None, None);
    };
    (
        v.get("token").and_then(Value::as_str).map(token_hash),
        v.get("mac").and_then(Value::as_str).and_then(normalize_mac),
    )
}

/// The enrolment body checked: the request, its MAC and UUID normalised; or why not.
/// serde's messages name fields and types, never a string's value: the token cannot
/// leak through them.
fn check(body: &[u8]) -> Result<(EnrollRequest, String, String), String> {
    let req: EnrollRequest = serde_json::from_slice(body).map_err(|e| format!("enrolment: {e}"))?;
    if req.api_version != API_VERSION {
        return Err(format!(
            "apiVersion: {:?} is not {API_VERSION:?}",
            crate::server::audit::cut(&req.api_version, 64)
        ));
    }
    let mac = normalize_mac(&req.mac).ok_or_else(|| {
        format!(
            "mac: {:?} is not a MAC address",
            crate::server::audit::cut(&req.mac, 64)
        )
    })?;
    if !valid_uuid(&req.uuid) {
        return Err(format!(
            "uuid: {:?} is not a UUID",
            crate::server::audit::cut(&req.uuid, 64)
        ));
    }
    if !valid_boot_id(&req.boot_id) {
        return Err(format!(
            "bootId: {:?} is not a boot id",
            crate::server::audit::cut(&req.boot_id, 64)
        ));
    }
    let uuid = req.uuid.to_ascii_lowercase();
    Ok((req, mac, uuid))
}

/// A spent token presented again: the machine goes into quarantine (every certificate
/// revoked) and the attempt is a security event.
fn replay(s: &Store, mac: &str, boot: &str, from: &str) -> crate::Result<Verdict> {
    let msg = format!("replay: the token of {mac}, spent already, presented again");
    s.quarantine(mac, &msg)?;
    s.security_event(mac, boot, &msg, Some(from))?;
    Ok(Verdict::Refuse(
        ApiError::new(
            StatusCode::FORBIDDEN,
            "token refused: already spent (the machine is now in quarantine)",
        )
        .reason("token_spent"),
    ))
}

/// A spent token presented again by the node that spent it, whose answer was lost (a
/// reset connection, a server killed before it answered): the same boot, the same key
/// as the certificate the token bought, which is still valid, and the token's life not
/// over. The node gets a new certificate for that key (the earlier one is revoked), in
/// the transaction that checks the earlier one is still valid; None when it is anything
/// else, which is a replay. Safe to answer: a certificate is worthless without the
/// private key, which never left the node.
fn answer_lost(
    st: &State,
    s: &Store,
    req: &EnrollRequest,
    mac: &str,
    token: &Token,
    now: u64,
) -> crate::Result<Option<Verdict>> {
    if now >= token.expires_at {
        return Ok(None);
    }
    let Ok(key) = crate::server::tls::csr_key(&req.csr) else {
        return Ok(None);
    };
    let Some(m) = s.machine(mac)? else {
        return Ok(None);
    };
    let Some(earlier) = m.certs.iter().find(|c| {
        c.boot_id == req.boot_id
            && c.key.as_deref() == Some(key.as_str())
            && m.valid_cert(&c.serial, now).is_some()
            && token.spent_at.is_some_and(|at| c.issued_at + 1 >= at)
    }) else {
        return Ok(None);
    };
    let Ok(mut signed) = st
        .ca
        .sign_client(&req.csr, mac, &req.boot_id, st.cfg.cert_lifetime)
    else {
        return Ok(None);
    };
    signed.record.discovery = earlier.discovery;
    match s.renew_cert(mac, &earlier.serial, signed.record.clone())? {
        Renewal::Issued => Ok(Some(Verdict::Issue(Box::new(signed), earlier.discovery))),
        Renewal::Refused(_) => Ok(None),
    }
}

/// Voids the token with `hash` if a machine holds it unspent, with an `error` event on
/// that machine's timeline saying why (`why`).
fn void_with_error(
    s: &Store,
    hash: &str,
    boot_id: &str,
    why: &str,
    from: &str,
) -> crate::Result<()> {
    let Some(owner) = s.machine_of_token(hash)?.map(|m| m.mac) else {
        return Ok(());
    };
    if s.void_token(&owner, hash, why)? {
        let mut d = Map::new();
        d.insert("step".into(), json!("enroll"));
        d.insert(
            "error".into(),
            json!(format!(
                "{why}: its token is void; the next boot gets a new one"
            )),
        );
        d.insert("from".into(), json!(from));
        s.server_event(&owner, boot_id, EventKind::Error, d)?;
    }
    Ok(())
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
    let from = peer.addr.to_string();
    if body.len() > MAX_ENROLL_BYTES {
        // Not read at all: no token to void.
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "enrolment is {} bytes, more than {MAX_ENROLL_BYTES}",
                body.len()
            ),
        ));
    }
    let (presented_hash, claimed) = presented(&body);
    let who = claimed
        .as_ref()
        .map_or_else(|| "anonymous".to_string(), |m| format!("enrolling:{m}"));
    let (req, mac, uuid) = match check(&body) {
        Ok(c) => c,
        Err(msg) => {
            if let Some(h) = &presented_hash {
                st.with_store(|s| {
                    void_with_error(s, h, "", &format!("enrolment refused: {msg}"), &from)
                })?;
            }
            return Err(bad(msg).who(who));
        }
    };
    let hash = token_hash(&req.token);
    let boot = req.boot_id.clone();
    let lifetime = st.cfg.cert_lifetime;
    let verdict = st.with_machine(&mac, |s| {
        let now = unix_time();
        let held = s.machine(&mac)?.and_then(|m| {
            m.token
                .as_ref()
                .filter(|t| crate::crypto::same(&t.hash, &hash))
                .cloned()
                .map(|t| (t, m.quarantine.is_some()))
        });
        let Some((token, quarantined)) = held else {
            let refuse = Verdict::Refuse(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "token refused: not minted for this machine",
                )
                .reason("token_unknown"),
            );
            // A token nobody holds (made up, or replaced by a newer mint) says nothing
            // about the MAC it claims, which anyone can name: the audit line is all.
            let Some(owner) = s.machine_of_token(&hash)?.map(|m| m.mac) else {
                return Ok(refuse);
            };
            let msg = format!("enrolment as {mac} with the token minted for {owner}");
            let reason = if s.void_token(&owner, &hash, &msg)? {
                format!("{msg}: refused, its token is void")
            } else {
                msg.clone()
            };
            s.security_event(&owner, "", &reason, Some(&from))?;
            s.security_event(&mac, &boot, &msg, Some(&from))?;
            return Ok(refuse);
        };
        if let Some(why) = &token.voided {
            s.security_event(
                &mac,
                &boot,
                &format!("a void token of {mac} presented again (voided: {why})"),
                Some(&from),
            )?;
            return Ok(Verdict::Refuse(ApiError::new(
                StatusCode::FORBIDDEN,
                "token refused: void (an enrolment presenting it was refused); reboot for a new one",
            ).reason("token_void")));
        }
        if token.spent_at.is_some() {
            if let Some(v) = answer_lost(&st, s, &req, &mac, &token, now)? {
                return Ok(v);
            }
            return replay(s, &mac, &boot, &from);
        }
        if now >= token.expires_at {
            let mut d = Map::new();
            d.insert("step".into(), json!("enroll"));
            d.insert(
                "error".into(),
                json!("token expired; the node reboots for a new one"),
            );
            d.insert("expiredSecsAgo".into(), json!(now - token.expires_at));
            d.insert("from".into(), json!(from));
            s.server_event(&mac, &boot, EventKind::Error, d)?;
            return Ok(Verdict::Refuse(
                ApiError::new(StatusCode::UNAUTHORIZED, "token expired: reboot for a new one")
                    .reason("token_expired"),
            ));
        }
        if token.uuid != uuid {
            let msg = format!(
                "enrolment with {mac}'s token but uuid {uuid} (bound to {})",
                token.uuid
            );
            s.void_token(&mac, &hash, &msg)?;
            s.security_event(
                &mac,
                &boot,
                &format!("{msg}: refused, its token is void"),
                Some(&from),
            )?;
            return Ok(Verdict::Refuse(ApiError::new(
                StatusCode::FORBIDDEN,
                "token refused: bound to another uuid",
            ).reason("uuid_mismatch")));
        }
        if quarantined {
            s.void_token(&mac, &hash, "the machine is in quarantine")?;
            let reason = s
                .machine(&mac)?
                .and_then(|m| m.quarantine)
                .map(|q| q.reason)
                .unwrap_or_default();
            return Ok(Verdict::Refuse(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("machine {mac} is in quarantine: {reason}"),
                )
                .reason("quarantine"),
            ));
        }
        let mut signed = match st.ca.sign_client(&req.csr, &mac, &boot, lifetime) {
            Ok(sig) => sig,
            Err(e) => {
                void_with_error(s, &hash, &boot, &format!("enrolment refused: {e}"), &from)?;
                return Ok(Verdict::Refuse(bad(e.to_string())));
            }
        };
        signed.record.discovery = token.discovery;
        let spent = s.enrol(
            &mac,
            &hash,
            signed.record.clone(),
            &format!("superseded by the enrolment of boot {boot}"),
        )?;
        if !spent {
            // Another enrolment (on this server or another over the same store) spent
            // the token between the checks above and this one: a second use of one token.
            return replay(s, &mac, &boot, &from);
        }
        Ok(Verdict::Issue(Box::new(signed), token.discovery))
    })?;
    match verdict {
        Verdict::Issue(signed, discovery) => {
            Metrics::count(
                &st.metrics.enrolments,
                if discovery { "discovery" } else { "machine" },
            );
            st.audit(
                &format!("node:{mac}"),
                peer.addr,
                &request,
                &format!(
                    "ok: {}certificate {} for boot {boot}",
                    if discovery { "discovery-only " } else { "" },
                    signed.record.serial
                ),
            );
            Ok(Json(issued(&signed, discovery)))
        }
        // Audited by the middleware, with `who`.
        Verdict::Refuse(e) => Err(e.who(who)),
    }
}

/// `POST /v1/renew` (mutual TLS). The presented certificate is checked at the door and
/// again under the lock that stores the new one (it may have been revoked, or the
/// machine quarantined, in between): a renewal never outlives what it was presented with.
pub async fn renew(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Result<Json<Issued>, ApiError> {
    let request = request_line(&method, &uri);
    let node = auth::node(&st, &peer, &request)?;
    let who = format!("node:{}", node.mac);
    if body.len() > MAX_ENROLL_BYTES {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "renewal too large").who(who));
    }
    let req: RenewRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("renewal: {e}")).who(&who))?;
    let mut signed = st
        .ca
        .sign_client(&req.csr, &node.mac, &node.boot_id, st.cfg.cert_lifetime)
        .map_err(|e| bad(e.to_string()).who(&who))?;
    signed.record.discovery = node.discovery;
    let outcome = st.with_machine(&node.mac, |s| {
        s.renew_cert(&node.mac, &node.serial, signed.record.clone())
    })?;
    match outcome {
        Renewal::Issued => {
            st.audit(
                &who,
                peer.addr,
                &request,
                &format!("ok: {} renewed as {}", node.serial, signed.record.serial),
            );
            Ok(Json(issued(&signed, node.discovery)))
        }
        Renewal::Refused(why) => {
            security(
                &st,
                &node.mac,
                &node.boot_id,
                &format!("{request}: {why}"),
                &peer,
            );
            Err(ApiError::new(StatusCode::UNAUTHORIZED, why).who(who))
        }
    }
}
