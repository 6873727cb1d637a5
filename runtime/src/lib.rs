//! plinth-runtime: a small, narrow, runc-compatible OCI runtime.
//!
//! Layers, lowest first: `error` and `jsonpath` (the path of a bad JSON value); the
//! Linux mechanisms (`cgroups`, `seccomp`, `mount`, `mountinfo`, `namespaces`,
//! `idmap`, `devices`, `capabilities`, `process`, `terminal`, `hooks`, `sync`,
//! `fdpass`), which know nothing of containers; `config` and `state` (the bundle and
//! the state directory); `init` (the container's side of create); `container` (the
//! lifecycle commands); `spec` (default configs). The
//! binary's `main.rs` maps the runc command line onto `container`.

pub mod capabilities;
pub mod cgroups;
pub mod config;
pub mod container;
pub mod control;
pub mod devices;
pub mod error;
pub mod exec;
pub mod fdpass;
pub mod features;
pub mod hooks;
pub mod idmap;
pub mod init;
pub mod jsonpath;
pub mod logging;
pub mod mount;
pub mod mountinfo;
pub mod namespaces;
pub mod process;
pub mod sealed;
pub mod seccomp;
pub mod spec;
pub mod state;
pub mod sync;
pub mod terminal;

pub use error::{Error, Result};
