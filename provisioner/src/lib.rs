//! plinth-provisioner: the node<->server protocol (schema), the node agent that runs as
//! PID 1 in the node image (`plinth-init`), and the boot/provisioning server (`plinth-server`).
//!
//! The server's HTTP API (boot half):
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /boot.ipxe?mac=&uuid=&serial=` | the image's iPXE script with `set plinth-server <URL>` |
//! | `GET /vmlinuz`, `GET /initrd` | the files, with `Range` |
//! | `POST /v1/events` | validated [`schema::Event`] (64 KiB max); reply [`schema::Reply`], may carry `{"action":"poweroff"}` |
//! | `GET /v1/machines`, `GET /v1/machines/<mac>` | machines with their events (the store) |
//! | `POST /v1/machines/<mac>/poweroff` or `/reboot` | queue an action; the node gets it in its next event reply or poll |
//! | `GET /v1/machines/<mac>/action` | the node's poll: the pending action, handed out once |
//!
//! TFTP (`--tftp ADDR`) serves the boot directory read-only, with `boot.ipxe` rendered
//! for the `--advertise` URL.

pub mod cmdline;
pub mod dhcp;
pub mod error;
pub mod http;
pub mod init;
pub mod netif;
pub mod schema;
pub mod server;
pub mod store;
pub mod tftp;

pub use error::{Error, Result};
