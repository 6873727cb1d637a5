//! plinth-runtime: a small, narrow, runc-compatible OCI runtime.
//!
//! Layers, lowest first (a module imports only from layers below it):
//! - `error`, `jsonpath` (the path of a bad JSON value), `logging`, `atomic` (files
//!   replaced atomically);
//! - the Linux mechanisms, which know nothing of containers: `cgroups`, `seccomp`,
//!   `mount`, `mountinfo`, `namespaces`, `idmap`, `devices`, `capabilities`,
//!   `process`, `procfs`, `sched`, `signals`, `terminal`, `hooks`, `sync`, `fdpass`, `sealed`;
//! - the bundle and the state directory: `config`, `state`, `spec`, `features`;
//! - the container's side of create: `rootfs` (its file system, before the pivot) and
//!   `init` (from the clone to the execve);
//! - the commands: `container` (create, start, state, kill, delete, run, list),
//!   `exec`, `control` (ps, pause, resume, update, events).
//!
//! The binary's `main.rs` maps the runc command line onto the commands.

pub mod atomic;
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
pub mod procfs;
pub mod rootfs;
pub mod sched;
pub mod sealed;
pub mod seccomp;
pub mod signals;
pub mod spec;
pub mod state;
pub mod sync;
pub mod terminal;

pub use error::{Error, Result};
