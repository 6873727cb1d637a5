//! The HTTPS listener: a TLS handshake per connection (rustls; a client certificate is
//! asked for, not required), then HTTP/1.1 (hyper) into the axum router, each request
//! tagged with a [`Peer`]: the address and the serial of the certificate presented.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::error::Result;
use crate::server::{api, enroll, log, node, tls, State};

/// Who is on the other end of a request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The serial of the client certificate it presented (chained to the CA: rustls
    /// checked), if any.
    pub serial: Option<String>,
}

/// The largest request body on this listener (the config a PUT carries is the largest).
const MAX_BODY: usize = crate::schema::config::MAX_CONFIG_BYTES + 64 * 1024;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Every HTTPS route; every refusal is audited ([`crate::server::audit_refusals`]).
pub fn router(st: Arc<State>) -> Router {
    Router::new()
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/renew", post(enroll::renew))
        .route("/v1/config", get(node::config))
        .route("/v1/events", post(node::events))
        .route("/v1/logs", post(node::logs))
        .route("/v1/action", post(node::action))
        .route("/v1/machines", get(api::list))
        .route("/v1/machines/{mac}", get(api::show).put(api::declare))
        .route("/v1/machines/{mac}/logs/{boot}", get(api::boot_log))
        .route("/v1/machines/{mac}/{verb}", post(api::act))
        .fallback(api::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            crate::server::audit_refusals,
        ))
        .with_state(st)
}

/// Accepts connections forever.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) -> Result<()> {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of fds, most likely: wait rather than spin.
                log(&format!("https accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    log(&format!("{addr}: TLS handshake refused: {e}"));
                    return;
                }
                Err(_) => {
                    log(&format!("{addr}: TLS handshake timed out"));
                    return;
                }
            };
            let serial = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(tls::serial_of)
                .transpose();
            let serial = match serial {
                Ok(s) => s,
                Err(e) => {
                    log(&format!("{addr}: {e}"));
                    return;
                }
            };
            let peer = Peer { addr, serial };
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    let mut app = app.clone();
                    async move { app.call(req).await }
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                log(&format!("{addr}: {e}"));
            }
        });
    }
}
