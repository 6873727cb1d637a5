//! Published ports: a userspace proxy in plinth-init, as rootless podman's rootlessport
//! is. Each connection to the node's port gets one to the container's address on the
//! node-local bridge; bytes are copied both ways until either side closes. The
//! listener outlives the container's restarts: while it is down, a connection is
//! refused by the bridge and closed here.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Listens on every node address at `host_port`.
pub async fn listen(host_port: u16) -> Result<TcpListener> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, host_port));
    TcpListener::bind(addr).await.map_err(|e| Error::Net {
        what: format!("listening on port {host_port}"),
        source: e,
    })
}

/// Connections one published port carries at once: each holds two of PID 1's
/// descriptors, and a client opening thousands must not starve the node's agent.
const CONNECTIONS: usize = 256;
/// How long the container has to take a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards every connection `listener` accepts to `to`. Never returns.
pub async fn forward(listener: TcpListener, to: SocketAddrV4) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS));
    loop {
        // A connection past the limit waits in the listen queue until one closes.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((mut client, _)) = listener.accept().await else {
            // Out of descriptors, most likely: let some close.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(mut upstream)) =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await
            else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}
