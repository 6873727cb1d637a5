//! The runtime library's one error type. A leaf module: it imports no other module of
//! the crate, so every layer can return it without tying the layers into a circle.

use std::path::PathBuf;

/// Everything that can go wrong in the runtime library, with the context an operator
/// needs: what was being done, to which path or field.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation on a named path failed.
    #[error("{what} {}: {}", path.display(), os_text(source))]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A system call failed; `what` says which and on what.
    // Not a `source`: the errno is in the message already, and the binary's error
    // chain (anyhow's `{:#}`) would say it twice.
    #[error("{what}: {errno}")]
    Sys {
        what: String,
        errno: nix::errno::Errno,
    },
    /// The bundle's config.json is malformed or asks for something invalid. `field` is
    /// the JSON path of the offending value (e.g. `linux.namespaces[2].type`).
    #[error("config.json: {field}: {msg}")]
    Config { field: String, msg: String },
    /// A seccomp profile that cannot be compiled or installed as written.
    #[error("seccomp: {0}")]
    Seccomp(String),
    /// A cgroup could not be created, configured, joined or removed.
    #[error("cgroup {path}: {msg}")]
    Cgroup { path: PathBuf, msg: String },
    /// A named container does not exist under the state root.
    #[error("container {0} does not exist")]
    NotFound(String),
    /// A container with that id already exists.
    #[error("container {0} already exists")]
    Exists(String),
    /// The container is in the wrong state for the operation.
    #[error("container {id} is {status}: {msg}")]
    State {
        id: String,
        status: String,
        msg: String,
    },
    /// A hook failed or timed out.
    #[error("{kind} hook {path}: {msg}")]
    Hook {
        kind: &'static str,
        path: String,
        msg: String,
    },
    /// Any other invalid argument, named.
    #[error("{0}")]
    Invalid(String),
}

/// An I/O error's text, worded the same whatever libc the binary carries. std takes it
/// from strerror, and musl words some errnos differently from glibc ("Resource busy"
/// against "Device or resource busy"); nix has one table for every libc, in the kernel
/// headers' wording (mostly glibc's; "I/O error" where glibc says "Input/output error").
pub(crate) fn os_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{} (os error {n})", nix::errno::Errno::from_raw(n).desc()),
        None => e.to_string(),
    }
}

/// Shorthand used throughout the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `what` on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Sys`] for a failed system call described by `what`.
    pub fn sys(what: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::Sys {
            what: what.into(),
            errno,
        }
    }

    /// An [`Error::Config`] naming the offending field.
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }

    /// An [`Error::Cgroup`] on `path`.
    pub fn cgroup(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Cgroup {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// nix's wording on either libc (musl's own strerror says "Resource busy").
    #[test]
    fn io_errors_read_the_same_on_every_libc() {
        let e = Error::Io {
            what: "remove",
            path: PathBuf::from("/sys/fs/cgroup/x"),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert_eq!(
            e.to_string(),
            "remove /sys/fs/cgroup/x: Device or resource busy (os error 16)"
        );
        let plain = Error::Io {
            what: "read",
            path: PathBuf::from("/x"),
            source: std::io::Error::other("short read"),
        };
        assert_eq!(plain.to_string(), "read /x: short read");
    }
}
