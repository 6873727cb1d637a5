//! The audit trail, `<data>/audit.jsonl`: who did what from where, every refusal and every
//! change, one synced JSON line each; apart from the store (it is a log to read with
//! `grep`, and it must not grow the store).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io, Error, Result};

/// The audit trail is rotated at this size: `audit.jsonl` becomes `audit.jsonl.1`
/// (replacing the one before) and a new one starts.
pub const MAX_AUDIT_BYTES: u64 = 64 << 20;

/// The longest `request` an audit line keeps (longer ones are cut and say so).
pub const MAX_AUDIT_REQUEST: usize = 512;

/// The longest `who` or `outcome` an audit line keeps.
pub const MAX_AUDIT_TEXT: usize = 1024;

/// One line of the audit trail (`<data>/audit.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Audit {
    /// Seconds since the epoch.
    pub at: u64,
    /// `operator:NAME`, `node:MAC`, or `anonymous`.
    pub who: String,
    /// The peer's address.
    pub from: String,
    /// `METHOD /path`.
    pub request: String,
    /// `ok`, or `refused: why`.
    pub outcome: String,
}

/// The audit trail, `<data>/audit.jsonl`: one JSON line per refusal and per change,
/// each synced; lines are cut to a bounded length and the file is rotated at
/// [`MAX_AUDIT_BYTES`]. It has its own lock, apart from the store's.
#[derive(Debug)]
pub struct AuditTrail {
    path: PathBuf,
    file: Option<std::fs::File>,
    len: u64,
    max: u64,
}

impl AuditTrail {
    /// The trail under `data` (opened at the first line).
    pub fn new(data: &Path) -> AuditTrail {
        AuditTrail::with_limit(data, MAX_AUDIT_BYTES)
    }

    /// The trail under `data`, rotated at `max` bytes.
    pub fn with_limit(data: &Path, max: u64) -> AuditTrail {
        AuditTrail {
            path: data.join("audit.jsonl"),
            file: None,
            len: 0,
            max,
        }
    }

    fn open(&mut self) -> Result<&mut std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&self.path)
                .map_err(io("opening audit trail", &self.path))?;
            self.len = f
                .metadata()
                .map_err(io("reading the size of", &self.path))?
                .len();
            self.file = Some(f);
        }
        self.file.as_mut().ok_or_else(|| Error::Protocol {
            what: "the audit trail".into(),
            reason: "not open".into(),
        })
    }

    /// Appends one line, synced: what an operator did, and every refused request,
    /// survive a crash.
    pub fn append(&mut self, a: &Audit) -> Result<()> {
        let a = Audit {
            at: a.at,
            who: cut(&a.who, MAX_AUDIT_TEXT),
            from: cut(&a.from, MAX_AUDIT_TEXT),
            request: cut(&a.request, MAX_AUDIT_REQUEST),
            outcome: cut(&a.outcome, MAX_AUDIT_TEXT),
        };
        let mut line = serde_json::to_vec(&a).map_err(|source| Error::Json {
            what: "encoding an audit line".into(),
            source,
        })?;
        line.push(b'\n');
        self.open()?;
        if self.len > 0 && self.len + line.len() as u64 > self.max {
            self.file = None;
            let old = self.path.with_extension("jsonl.1");
            std::fs::rename(&self.path, &old).map_err(io("rotating", &self.path))?;
            self.open()?;
        }
        let path = self.path.clone();
        let f = self.open()?;
        f.write_all(&line).map_err(io("appending to", &path))?;
        f.sync_data().map_err(io("syncing", &path))?;
        self.len += line.len() as u64;
        Ok(())
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), saying how long it was.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... [{} bytes]", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::files::{private_dir, write_atomic, write_atomic_mode};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plinth-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn private_files_audit_lines_cut_and_rotated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("files");
        private_dir(&dir).expect("mkdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        // A file that was 0644 is replaced by a 0600 one; a 0644 write stays 0644.
        let f = dir.join("f");
        std::fs::write(&f, b"old").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&f, b"new").expect("atomic");
        assert_eq!(mode(&f), 0o600);
        assert_eq!(std::fs::read(&f).expect("read"), b"new");
        write_atomic_mode(&dir.join("g"), b"g", 0o644).expect("atomic");
        assert_eq!(mode(&dir.join("g")), 0o644);
        let mut a = AuditTrail::with_limit(&dir, 4096);
        let line = |request: String| Audit {
            at: 1,
            who: "anonymous".into(),
            from: "127.0.0.1:1".into(),
            request,
            outcome: "refused: 404 not found".into(),
        };
        a.append(&line(format!("GET /{}", "a".repeat(20_000))))
            .expect("append");
        let text = std::fs::read_to_string(dir.join("audit.jsonl")).expect("read");
        assert!(text.len() < 1024, "{}", text.len());
        assert!(text.contains("[20005 bytes]"), "{text}");
        assert_eq!(mode(&dir.join("audit.jsonl")), 0o600);
        for i in 0..100 {
            a.append(&line(format!("GET /{i}"))).expect("append");
        }
        let now = std::fs::metadata(dir.join("audit.jsonl"))
            .expect("stat")
            .len();
        let old = std::fs::metadata(dir.join("audit.jsonl.1"))
            .expect("stat")
            .len();
        assert!(now <= 4096 && old <= 4096, "{now} {old}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
