//! Secrets: one file per secret under `--data/secrets/` (mode 0600, never in
//! `--config-dir`, so never in git), referenced from the YAML as `secretRef: NAME`. They
//! are read when a node's config is rendered (a changed file takes effect at the next
//! `GET /v1/config`), leave the server only inside that answer, and are redacted from
//! everything else: the API's view of a config, and the log lines nodes stream.

use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};

/// The directory under `--data`.
pub const DIR: &str = "secrets";

/// What a secret shows as wherever it is not sent.
pub fn redacted(name: &str) -> String {
    format!("[secret {name}]")
}

/// Whether `name` can name a secret (and so a file).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The secrets of a data directory.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    /// The secrets under `data`.
    pub fn new(data: &Path) -> Secrets {
        Secrets {
            dir: data.join(DIR),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The secret `name`: the file's text without its trailing newlines. A file open to
    /// group or others, a symlink, or one that is not UTF-8 is refused, naming it.
    pub fn get(&self, name: &str) -> Result<String> {
        use std::io::Read;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if !valid_name(name) {
            return Err(Error::Config {
                what: format!("secretRef {name:?}"),
                reason: "a secret's name is letters, digits, '_', '-' and '.'".into(),
            });
        }
        let path = self.dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::Config {
                    what: format!("secretRef {name}"),
                    reason: format!("no such secret: {} does not exist", path.display()),
                },
                _ => io("opening secret", &path)(e),
            })?;
        let md = f.metadata().map_err(io("reading secret", &path))?;
        let mode = md.permissions().mode() & 0o7777;
        if !md.is_file() || mode & 0o077 != 0 {
            return Err(Error::Config {
                what: format!("secret {}", path.display()),
                reason: format!(
                    "is mode {mode:04o}, open to group or others: chmod 600 {}",
                    path.display()
                ),
            });
        }
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(io("reading secret", &path))?;
        Ok(text.trim_end_matches(['\n', '\r']).to_string())
    }

    /// Every secret's name and value, for redacting them from streamed logs; unreadable
    /// ones are left out (they cannot have been sent either).
    pub fn all(&self) -> Vec<(String, String)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|n| self.get(&n).ok().map(|v| (n, v)))
            .collect()
    }
}

/// `line` with every secret value of at least 4 characters replaced by its
/// [`redacted`] name.
pub fn redact(line: &str, secrets: &[(String, String)]) -> String {
    let mut out = line.to_string();
    for (name, value) in secrets {
        if value.len() >= 4 && out.contains(value.as_str()) {
            out = out.replace(value.as_str(), &redacted(name));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_only_and_redaction() {
        let data = std::env::temp_dir().join(format!("plinth-secrets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let s = Secrets::new(&data);
        std::fs::create_dir_all(s.dir()).expect("mkdir");
        let put = |n: &str, v: &str, mode: u32| {
            let p = s.dir().join(n);
            std::fs::write(&p, v).expect("write");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
        };
        put("registry", "hunter2-registry\n", 0o600);
        put("open", "x", 0o644);
        assert_eq!(s.get("registry").expect("get"), "hunter2-registry");
        let e = s.get("open").expect_err("0644").to_string();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        let e = s.get("missing").expect_err("missing").to_string();
        assert!(e.contains("no such secret"), "{e}");
        assert!(s.get("../ca.key").is_err());
        std::os::unix::fs::symlink(s.dir().join("registry"), s.dir().join("link"))
            .expect("symlink");
        assert!(s.get("link").is_err(), "a symlink is refused");
        let all = s.all();
        assert_eq!(
            redact("auth hunter2-registry ok", &all),
            "auth [secret registry] ok"
        );
        let _ = std::fs::remove_dir_all(&data);
    }
}
