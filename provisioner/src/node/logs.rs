//! Streaming the node's logs: plinth-init's own console lines and the kernel's (from
//! /dev/kmsg), with the enrolment token redacted before a line leaves this module:
//! the kernel logs its command line, and the token is on it.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use crate::schema::LogLine;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Redacts `secret` wherever it appears in `line`, and any `plinth.token=` value
/// (a token from an earlier boot, say).
pub fn redact(line: &str, secret: Option<&str>) -> String {
    let mut out = match secret.filter(|s| !s.is_empty()) {
        Some(s) => line.replace(s, REDACTED),
        None => line.to_string(),
    };
    let key = "plinth.token=";
    let mut from = 0;
    while let Some(i) = out[from..].find(key) {
        let start = from + i + key.len();
        let end = out[start..]
            .find(char::is_whitespace)
            .map_or(out.len(), |e| start + e);
        if &out[start..end] != REDACTED {
            out.replace_range(start..end, REDACTED);
        }
        from = start + REDACTED.len().min(out.len() - start);
    }
    out
}

/// The kernel's log, read record by record without blocking.
pub struct Kmsg {
    file: Option<std::fs::File>,
}

impl Kmsg {
    /// Opens /dev/kmsg from the start of the kernel's ring buffer; without it, no
    /// kernel lines are streamed (and the console says so).
    pub fn open() -> Kmsg {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg");
        if let Err(e) = &file {
            crate::init::console::log(&format!("/dev/kmsg: {e}; kernel lines are not streamed"));
        }
        Kmsg { file: file.ok() }
    }

    /// Every record written since the last call, as text.
    pub fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(f) = &mut self.file else {
            return out;
        };
        let mut buf = vec![0u8; 8192];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // "prio,seq,usec,flags;text\n continuation..."
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let first = rec.lines().next().unwrap_or("");
                    let (head, text) = first.split_once(';').unwrap_or(("", first));
                    let usec: u64 = head
                        .split(',')
                        .nth(2)
                        .and_then(|u| u.parse().ok())
                        .unwrap_or(0);
                    out.push(format!(
                        "[{:>5}.{:06}] {text}",
                        usec / 1_000_000,
                        usec % 1_000_000
                    ));
                }
                // EPIPE: records were overwritten before we read them; go on from here.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// Collects console and kernel lines, redacted, ready to send.
pub fn collect(kmsg: &mut Kmsg, secret: Option<&str>) -> Vec<LogLine> {
    let console = crate::init::console::drain()
        .into_iter()
        .map(|t| ("console", t));
    let kernel = kmsg.drain().into_iter().map(|t| ("kmsg", t));
    console
        .chain(kernel)
        .map(|(source, text)| LogLine {
            source: source.into(),
            text: redact(&text, secret),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted() {
        let line = "Kernel command line: console=ttyS0 plinth.token=abc123 quiet";
        assert_eq!(
            redact(line, Some("abc123")),
            "Kernel command line: console=ttyS0 plinth.token=[redacted] quiet"
        );
        assert_eq!(redact("plinth.token=zzz", None), "plinth.token=[redacted]");
        assert_eq!(redact("x abc123 y", Some("abc123")), "x [redacted] y");
        assert_eq!(redact("plinth.token=", None), "plinth.token=[redacted]");
        assert_eq!(redact("nothing here", Some("abc")), "nothing here");
    }
}
