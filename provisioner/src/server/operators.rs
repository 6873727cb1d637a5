//! Operators' bearer tokens: `NAME.SECRET`, one file per operator under
//! `--data/operators/NAME` holding the SHA-256 of the whole token. Deleting the file
//! revokes the operator at once (every request reads it). The first start makes
//! `admin` and writes its token once to `--data/operator-token` (0600) for the installer.

use std::path::{Path, PathBuf};

use crate::crypto::{random_token, same, token_hash};
use crate::error::{io, Error, Result};
use crate::server::files::{private_dir, write_atomic_mode};

/// The directory of operator hashes under `--data`.
pub const DIR: &str = "operators";
/// Where the first operator's token is written once.
pub const FIRST_TOKEN: &str = "operator-token";
/// The first operator's name.
pub const FIRST_NAME: &str = "admin";

/// Whether `name` can be an operator's name (and so a file name).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Makes operator `name` and returns its token (shown once, never stored).
pub fn create(data: &Path, name: &str) -> Result<String> {
    if !valid_name(name) {
        return Err(Error::Config {
            what: format!("operator name {name:?}"),
            reason: "use a-z, 0-9, '_' and '-' (at most 64)".into(),
        });
    }
    let dir = data.join(DIR);
    private_dir(&dir)?;
    let token = format!("{name}.{}", random_token()?);
    write_atomic_mode(
        &dir.join(name),
        format!("{}\n", token_hash(&token)).as_bytes(),
        0o600,
    )?;
    Ok(token)
}

/// On a first start (no operators at all), makes `admin` and writes its token to
/// `--data/operator-token`; returns that path when it did.
pub fn ensure_first(data: &Path) -> Result<Option<PathBuf>> {
    let dir = data.join(DIR);
    let any = match std::fs::read_dir(&dir) {
        Ok(mut rd) => rd.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io("listing", &dir)(e)),
    };
    if any {
        return Ok(None);
    }
    let token = create(data, FIRST_NAME)?;
    let path = data.join(FIRST_TOKEN);
    write_atomic_mode(&path, format!("{token}\n").as_bytes(), 0o600)?;
    Ok(Some(path))
}

/// The operator a bearer token belongs to, if it is one.
pub fn check(data: &Path, bearer: &str) -> Option<String> {
    let (name, secret) = bearer.split_once('.')?;
    if !valid_name(name) || secret.is_empty() {
        return None;
    }
    let stored = std::fs::read_to_string(data.join(DIR).join(name)).ok()?;
    same(stored.trim(), &token_hash(bearer)).then(|| name.to_string())
}

/// Whether operator `name` still holds the token whose hash is `hash` (a browser session
/// ends as soon as its operator's token is revoked or replaced).
pub fn holds(data: &Path, name: &str, hash: &str) -> bool {
    if !valid_name(name) {
        return false;
    }
    std::fs::read_to_string(data.join(DIR).join(name)).is_ok_and(|stored| same(stored.trim(), hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_operator_and_revocation() {
        let dir = std::env::temp_dir().join(format!("plinth-ops-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = ensure_first(&dir).expect("first").expect("made");
        let token = std::fs::read_to_string(&path).expect("read");
        let token = token.trim();
        assert_eq!(check(&dir, token).as_deref(), Some("admin"));
        assert!(holds(&dir, "admin", &token_hash(token)));
        assert!(!holds(&dir, "admin", &token_hash("admin.other")));
        assert_eq!(ensure_first(&dir).expect("again"), None);
        // Only the hash is kept.
        let stored = std::fs::read_to_string(dir.join(DIR).join("admin")).expect("hash");
        assert!(!stored.contains(token.split_once('.').expect("dot").1));
        assert_eq!(check(&dir, &format!("{token}x")), None);
        assert_eq!(check(&dir, "../admin.x"), None);
        std::fs::remove_file(dir.join(DIR).join("admin")).expect("revoke");
        assert_eq!(check(&dir, token), None);
        assert!(!holds(&dir, "admin", &token_hash(token)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
