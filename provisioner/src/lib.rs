//! plinth-provisioner: the node<->server protocol (schema), the node agent that runs as
//! PID 1 in the node image (`plinth-init`), and the boot/provisioning server (`plinth-server`).

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
