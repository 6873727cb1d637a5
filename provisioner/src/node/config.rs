//! Fetching the machine's config over mutual TLS, and checking it here too: a node
//! applies nothing the schema does not allow, whatever the server sent.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::node::client::Client;
use crate::schema::config::MachineConfig;

/// `GET /v1/config`, validated.
pub async fn fetch(client: &Client) -> Result<MachineConfig> {
    let cfg: MachineConfig = client
        .call("GET", "/v1/config", None::<&()>, Duration::from_secs(20))
        .await?;
    cfg.validate().map_err(|reason| Error::Config {
        what: "the config the server sent".into(),
        reason,
    })?;
    Ok(cfg)
}
