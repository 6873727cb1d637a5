//! plinth-provisioner: the node<->server protocol ([`schema`]), the node agent that runs
//! as PID 1 in the node image ([`node`], on the PID-1 duties in [`init`]), and the boot
//! and provisioning server ([`server`]). The protocol is in `docs/api.md`, the threat
//! model in `docs/security.md`, the machine config in `docs/config.md`.

pub mod cmdline;
pub mod crypto;
pub mod dhcp;
pub mod error;
pub mod http_client;
pub mod init;
pub mod kubernetes;
pub mod netif;
pub mod node;
pub mod schema;
pub mod server;
pub mod sntp;

pub use error::{Error, Result};
