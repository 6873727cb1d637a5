//! plinth-runtime: a small, narrow, runc-compatible OCI runtime.
//!
//! Layers, lowest first: `error`; the Linux mechanisms (`cgroups`, `seccomp`,
//! `mount`, `namespaces`, `caps`, ...), which know nothing of containers; `container`
//! (create/start/state/kill/delete over the state directory); and `cli`, which maps the
//! runc command line onto it.

pub mod error;

pub use error::{Error, Result};
