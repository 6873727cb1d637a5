//! The library's one error type: each variant says what was being done to what.

use std::path::PathBuf;

/// Everything that can fail in the node agent or the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call on a path failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// To which path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done (names the object, e.g. "bringing eth0 up").
        what: String,
        /// errno.
        source: nix::Error,
    },
    /// A network exchange failed.
    #[error("{what}: {source}")]
    Net {
        /// What was being done, with the peer.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A peer sent something malformed or unexpected.
    #[error("{what}: {reason}")]
    Protocol {
        /// What was being read.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// JSON that does not match the schema.
    #[error("{what}: {source}")]
    Json {
        /// What was being parsed or written.
        what: String,
        /// serde's complaint (names the field).
        source: serde_json::Error,
    },
    /// Certificates, keys or a TLS handshake.
    #[error("{what}: {reason}")]
    Tls {
        /// What was being done (names the peer or file).
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// A peer answered an HTTP request with an error status.
    #[error("{what}: status {status}: {body}")]
    Status {
        /// The request.
        what: String,
        /// Its status code.
        status: u16,
        /// The error the peer gave.
        body: String,
    },
    /// The store failed (its backend's error, said with what was being done).
    #[error("store: {what}: {reason}")]
    Store {
        /// What was being done.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// A file of `--config-dir` (or a secret it names) is wrong: the file, the line when
    /// known, the field and why.
    #[error("{file}{}: {field}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    File {
        /// The file.
        file: PathBuf,
        /// Its line (from 1), when known.
        line: Option<usize>,
        /// The field, as a path (`config.files[0].path`), or `-` for the whole file.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value (kernel command line, flag) is wrong.
    #[error("{what}: {reason}")]
    Config {
        /// Which value.
        what: String,
        /// What is wrong.
        reason: String,
    },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps an `io::Error` to [`Error::Io`] for `path`.
pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}

/// Maps a `nix::Error` to [`Error::Sys`].
pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

/// Maps an `io::Error` from a network call to [`Error::Net`].
pub(crate) fn net(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Net { what, source }
}
