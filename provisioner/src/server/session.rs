//! Operators' browser sessions. A login trades an operator token for a random session id
//! in an `HttpOnly; Secure; SameSite=Strict` cookie; each session has its own CSRF token,
//! which every form posts back. Sessions live in this server's memory (a restart, or
//! another server behind the same name, asks for the token again) and end at logout,
//! after [`LIFETIME`], or at the next request after the operator's token is revoked.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::crypto::{random_token, same, token_hash};
use crate::error::Result;
use crate::server::operators;

/// The session cookie. `__Host-`: the browser keeps it only if it came over HTTPS with
/// `Path=/` and no `Domain`, so neither another host of the domain nor a plain-HTTP
/// answer can plant or shadow it.
pub const COOKIE: &str = "__Host-plinth_session";
/// The login form's own CSRF cookie (there is no session to hold its token yet).
pub const LOGIN_COOKIE: &str = "__Host-plinth_login";
/// How long a session lasts, however busy.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// How long a login form may wait for its token.
pub const LOGIN_FORM_LIFETIME: Duration = Duration::from_secs(600);
/// Sessions held at most; the oldest goes first.
const MAX_SESSIONS: usize = 1024;

/// One operator's session.
#[derive(Debug, Clone)]
pub struct Session {
    /// The operator's name.
    pub operator: String,
    /// What every form of this session posts back as `csrf`.
    pub csrf: String,
    /// The hash of the operator token it was opened with.
    token_hash: String,
    opened: Instant,
}

impl Session {
    /// Whether `posted` is this session's CSRF token.
    pub fn csrf_ok(&self, posted: &str) -> bool {
        same(&self.csrf, posted)
    }
}

/// The sessions this server holds, by the hash of their id (the ids themselves are only
/// in the browsers' cookies).
#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session for `operator`, who presented the token whose hash is `token`;
    /// returns the id for the cookie.
    pub fn open(&self, operator: &str, token: &str) -> Result<String> {
        let id = random_token()?;
        let s = Session {
            operator: operator.to_string(),
            csrf: random_token()?,
            token_hash: token.to_string(),
            opened: Instant::now(),
        };
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.opened.elapsed() < LIFETIME);
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.opened)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(token_hash(&id), s);
        Ok(id)
    }

    /// The live session of cookie value `id`: not expired, and its operator still holds
    /// the token it was opened with (`data` is `--data`). A dead one is forgotten.
    pub fn find(&self, id: &str, data: &Path) -> Option<Session> {
        let key = token_hash(id);
        let s = {
            let map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&key)?.clone()
        };
        // The operator's file is read with the lock released: no request waits on
        // another's disk read.
        if s.opened.elapsed() < LIFETIME && operators::holds(data, &s.operator, &s.token_hash) {
            return Some(s);
        }
        self.close(id);
        None
    }

    /// Ends the session of cookie value `id`.
    pub fn close(&self, id: &str) {
        let mut map = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&token_hash(id));
    }
}

/// The value of cookie `name` in a request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value: only over HTTPS, never to scripts, never on a request another
/// site starts, for the whole host (as `__Host-` requires). `max_age` 0 deletes it.
pub fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        max_age.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_end_with_their_token_and_at_logout() {
        let dir = std::env::temp_dir().join(format!("plinth-sessions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let token = operators::create(&dir, "alice").expect("operator");
        let sessions = Sessions::default();
        let id = sessions.open("alice", &token_hash(&token)).expect("open");
        let s = sessions.find(&id, &dir).expect("live");
        assert_eq!(s.operator, "alice");
        assert!(s.csrf_ok(&s.csrf));
        assert!(!s.csrf_ok("x"));
        assert!(sessions.find("not-an-id", &dir).is_none());
        // A new token for the operator (the old one revoked) ends the session.
        operators::create(&dir, "alice").expect("replaced");
        assert!(sessions.find(&id, &dir).is_none());
        let token = std::fs::read_to_string(dir.join(operators::DIR).join("alice")).expect("hash");
        let id = sessions.open("alice", token.trim()).expect("open");
        assert!(sessions.find(&id, &dir).is_some());
        sessions.close(&id);
        assert!(sessions.find(&id, &dir).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cookies_are_read_by_name_and_set_strict() {
        let mut h = HeaderMap::new();
        h.append(
            axum::http::header::COOKIE,
            "a=1; __Host-plinth_session=abc".parse().expect("header"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "plinth"), None);
        let c = set_cookie(COOKIE, "v", LIFETIME);
        for part in [
            "HttpOnly",
            "Secure",
            "SameSite=Strict",
            "Max-Age=28800",
            "Path=/",
        ] {
            assert!(c.contains(part), "{c}");
        }
    }
}
