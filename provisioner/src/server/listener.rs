//! The accept loop both listeners share: a connection from an address that already has
//! its share open (`--max-conns-per-addr`) is closed at once; TLS (HTTPS only, rustls,
//! a client certificate asked for, not required) within a deadline; then HTTP/1.1
//! (hyper) into the axum router, each request tagged with a [`Peer`] (its address and
//! the serial of the certificate presented) and held to one deadline from its first
//! byte to its answer (`--request-timeout`), however slowly it trickles in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::error::Result;
use crate::server::{log, tls, ApiError, State};

/// Who is on the other end of a request.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// The serial of the client certificate it presented (chained to the CA: rustls
    /// checked), if any.
    pub serial: Option<String>,
}

/// Which listener a request came in on (`http` or `https`), for metrics.
#[derive(Debug, Clone, Copy)]
pub struct Listener(pub &'static str);

/// The longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Accepts connections forever; `tls` makes it the HTTPS listener.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    st: Arc<State>,
) -> Result<()> {
    let name = if tls.is_some() { "https" } else { "http" };
    let acceptor = tls.map(TlsAcceptor::from);
    let mut refused: u64 = 0;
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of fds, most likely: wait rather than spin.
                log(&format!("{name} accept: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(guard) = st.conns.admit(addr.ip(), st.cfg.limits.conns_per_addr) else {
            st.metrics.refused(name, "too_many_connections");
            // Said once, then every thousandth: a flood must not flood the log too.
            if refused.is_multiple_of(1000) {
                log(&format!(
                    "{name}: {addr} has {} connections open already: closed (refusal {})",
                    st.cfg.limits.conns_per_addr,
                    refused + 1
                ));
            }
            refused += 1;
            drop(tcp);
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let st = st.clone();
        tokio::spawn(async move {
            let _counted = guard;
            let _ = tcp.set_nodelay(true);
            match acceptor {
                None => {
                    let peer = Peer { addr, serial: None };
                    connection(tcp, peer, name, app, st).await;
                }
                Some(acceptor) => {
                    let limit = HANDSHAKE_TIMEOUT.min(st.cfg.limits.request_timeout);
                    let tls = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            st.metrics.refused(name, "tls_handshake");
                            log(&format!("{addr}: TLS handshake refused: {e}"));
                            return;
                        }
                        Err(_) => {
                            st.metrics.refused(name, "tls_handshake_timeout");
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
                    connection(tls, Peer { addr, serial }, name, app, st).await;
                }
            }
        });
    }
}

/// Serves HTTP/1.1 requests on one connection.
async fn connection<S>(io: S, peer: Peer, name: &'static str, app: Router, st: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = st.cfg.limits.request_timeout;
    let addr = peer.addr;
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(peer.clone());
        req.extensions_mut().insert(ConnectInfo(peer.addr));
        req.extensions_mut().insert(Listener(name));
        let request = format!(
            "{} {}",
            req.method(),
            crate::server::audit::cut(req.uri().path(), 128)
        );
        let mut app = app.clone();
        let st = st.clone();
        let peer = peer.clone();
        async move {
            match tokio::time::timeout(deadline, app.call(req)).await {
                Ok(r) => r,
                Err(_) => {
                    st.metrics.refused(name, "request_timeout");
                    let msg = format!(
                        "the request was not complete within {}s (--request-timeout)",
                        deadline.as_secs_f64()
                    );
                    st.audit(
                        "anonymous",
                        peer.addr,
                        &request,
                        &format!("refused: 408 {msg}"),
                    );
                    let mut r = ApiError::new(StatusCode::REQUEST_TIMEOUT, msg).into_response();
                    r.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    Ok(r)
                }
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        // A request's headers are held to the same deadline as the rest of it.
        .header_read_timeout(deadline)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        log(&format!("{addr}: {e}"));
    }
}
