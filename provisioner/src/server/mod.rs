//! plinth-server: the boot chain over plain HTTP (nothing else there), and over HTTPS
//! (rustls, its own CA) enrolment, the node endpoints (mutual TLS) and the operators'
//! JSON API (bearer tokens). tokio and axum/hyper; the state lives in [`store`].
//!
//! | module | what |
//! | --- | --- |
//! | [`boot`] | the plain-HTTP listener: iPXE script (mints the token), kernel, initrd |
//! | [`enroll`] | `POST /v1/enroll`, `POST /v1/renew` |
//! | [`node`] | mTLS: `GET /v1/config`, `POST /v1/events`, `POST /v1/logs`, `POST /v1/action` |
//! | [`api`] | operators: machines, timelines, logs, actions, release |
//! | [`auth`] | who a request comes from: a node's certificate, an operator's token |
//! | [`tls`] | the CA, the serving certificate, signing CSRs |
//! | [`https`] | the TLS accept loop that tags each request with its client certificate |

pub mod api;
pub mod auth;
pub mod boot;
pub mod enroll;
pub mod https;
pub mod node;
pub mod operators;
pub mod store;
pub mod tftp;
pub mod tls;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{io, net, Error, Result};
use crate::schema::unix_time;
use store::{Audit, Store};
use tls::Ca;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Plain-HTTP listen address (the boot chain only).
    pub listen: SocketAddr,
    /// HTTPS listen address; default: the same host, the next port.
    pub listen_tls: Option<SocketAddr>,
    /// SNTP listen address (UDP); `None`: none.
    pub listen_sntp: Option<SocketAddr>,
    /// The directory `plinth-boot build` wrote.
    pub boot_dir: PathBuf,
    /// The store's directory (CA, operators, machines, logs, audit).
    pub data: PathBuf,
    /// The plain-HTTP URL nodes' firmware uses; default: the Host of each request.
    pub advertise_http: Option<String>,
    /// The HTTPS URL nodes use; default: the host of each boot-script request, TLS port.
    pub advertise_tls: Option<String>,
    /// Extra names (DNS or IP) for the serving certificate.
    pub tls_names: Vec<String>,
    /// TFTP listen address, when wanted.
    pub tftp: Option<SocketAddr>,
    /// How long a minted enrolment token is accepted.
    pub token_ttl: Duration,
    /// How long a node's client certificate lives.
    pub cert_lifetime: Duration,
}

/// What the server bound, for the caller to print.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The plain-HTTP address.
    pub http: SocketAddr,
    /// The HTTPS address.
    pub https: SocketAddr,
    /// The SNTP address, if any.
    pub sntp: Option<SocketAddr>,
    /// The TFTP address, if any.
    pub tftp: Option<SocketAddr>,
    /// The CA pin.
    pub pin: String,
    /// Where the first operator's token was written, on a first start.
    pub operator_token: Option<PathBuf>,
}

/// Shared by every request.
pub struct State {
    cfg: Config,
    ca: Ca,
    store: Mutex<Store>,
    /// Woken when an operator queues an action, for the nodes' long polls.
    actions: tokio::sync::Notify,
    https_port: u16,
    sntp: Option<SocketAddr>,
}

impl State {
    /// Runs `f` on the store under its lock (never held across an await).
    fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> Result<T>) -> Result<T, ApiError> {
        let mut s = self
            .store
            .lock()
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store lock poisoned"))?;
        f(&mut s).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    }

    /// Appends to the audit trail; a failure is logged, not fatal to the request.
    fn audit(&self, who: &str, from: SocketAddr, request: &str, outcome: &str) {
        let a = Audit {
            at: unix_time(),
            who: who.to_string(),
            from: from.to_string(),
            request: request.to_string(),
            outcome: outcome.to_string(),
        };
        log(&format!("audit: {who} from {from}: {request}: {outcome}"));
        if let Ok(s) = self.store.lock() {
            if let Err(e) = s.audit(&a) {
                log(&format!("audit trail: {e}"));
            }
        }
    }
}

/// An error answer: a status and a message (JSON `{"error": ...}`). Messages never carry
/// a token.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            msg: msg.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.msg }))).into_response()
    }
}

/// One line on stderr, the server's log.
pub fn log(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Checks the boot directory and the data directory before anything binds.
pub fn check(cfg: &Config) -> Result<()> {
    for f in ["boot.ipxe", "vmlinuz", "initrd"] {
        let p = cfg.boot_dir.join(f);
        if !p.is_file() {
            return Err(Error::Config {
                what: format!("--boot-dir {}", cfg.boot_dir.display()),
                reason: format!(
                    "{} is missing (run `plinth-boot build -o {}`)",
                    p.display(),
                    cfg.boot_dir.display()
                ),
            });
        }
    }
    for (flag, url, scheme) in [
        ("--advertise-http", &cfg.advertise_http, "http://"),
        ("--advertise-tls", &cfg.advertise_tls, "https://"),
    ] {
        if let Some(u) = url {
            if !u.starts_with(scheme) || u.len() == scheme.len() || u.contains(char::is_whitespace)
            {
                return Err(Error::Config {
                    what: format!("{flag} {u}"),
                    reason: format!("must be a {scheme} URL"),
                });
            }
        }
    }
    // Last: a refused start leaves nothing behind.
    std::fs::create_dir_all(&cfg.data).map_err(io("creating --data directory", &cfg.data))?;
    Ok(())
}

/// The host part of a URL (`https://host:port/path` -> `host`).
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or(rest);
    host_of(hostport)
}

/// The host of `host:port` (or of `[v6]:port`).
pub fn host_of(hostport: &str) -> &str {
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    hostport.rsplit_once(':').map_or(hostport, |(h, _)| h)
}

/// The names the serving certificate covers: the advertised host, the listen address
/// (every local address when it is unspecified), localhost, and `--tls-name`s.
fn serving_names(cfg: &Config, https: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Some(u) = &cfg.advertise_tls {
        names.push(url_host(u).to_string());
    }
    if let Some(u) = &cfg.advertise_http {
        names.push(url_host(u).to_string());
    }
    names.extend(cfg.tls_names.iter().cloned());
    if https.ip().is_unspecified() {
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                    names.push(IpAddr::V4(sin.ip()).to_string());
                }
            }
        }
    } else {
        names.push(https.ip().to_string());
    }
    names.sort();
    names.dedup();
    names
}

/// Binds everything and serves until the process is killed. `on_ready` is called once
/// the listeners are bound.
pub fn serve(cfg: Config, on_ready: impl FnOnce(&Ready)) -> Result<()> {
    check(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(net("starting the tokio runtime"))?;
    rt.block_on(serve_async(cfg, on_ready))
}

async fn serve_async(cfg: Config, on_ready: impl FnOnce(&Ready)) -> Result<()> {
    let (ca, _made) = Ca::load_or_create(&cfg.data)?;
    let operator_token = operators::ensure_first(&cfg.data)?;
    let store = Store::open(&cfg.data)?;
    let http = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(net(format!("binding --listen {}", cfg.listen)))?;
    let http_addr = http.local_addr().map_err(net("local address"))?;
    let tls_addr = cfg.listen_tls.unwrap_or_else(|| {
        let port = if http_addr.port() == 0 || cfg.listen.port() == 0 {
            0
        } else {
            http_addr.port().wrapping_add(1)
        };
        SocketAddr::new(http_addr.ip(), port)
    });
    let tls_listener = tokio::net::TcpListener::bind(tls_addr)
        .await
        .map_err(net(format!("binding --listen-tls {tls_addr}")))?;
    let https_addr = tls_listener.local_addr().map_err(net("local address"))?;
    let server_config = ca.server_config(&serving_names(&cfg, https_addr))?;
    let sntp_sock = match cfg.listen_sntp {
        Some(a) => Some(UdpSocket::bind(a).map_err(net(format!("binding --listen-sntp {a}")))?),
        None => None,
    };
    let sntp_addr = match &sntp_sock {
        Some(s) => Some(s.local_addr().map_err(net("SNTP local address"))?),
        None => None,
    };
    let pin = ca.pin.clone();
    let state = Arc::new(State {
        cfg: cfg.clone(),
        ca,
        store: Mutex::new(store),
        actions: tokio::sync::Notify::new(),
        https_port: https_addr.port(),
        sntp: sntp_addr,
    });
    let mut tftp_addr = None;
    if let Some(t) = cfg.tftp {
        let sock = UdpSocket::bind(t).map_err(net(format!("binding --tftp {t}")))?;
        tftp_addr = Some(sock.local_addr().map_err(net("TFTP local address"))?);
        let resolver = boot::tftp_resolver(state.clone());
        std::thread::spawn(move || tftp::serve(sock, resolver));
    }
    if let Some(sock) = sntp_sock {
        std::thread::spawn(move || crate::sntp::serve(sock));
    }
    on_ready(&Ready {
        http: http_addr,
        https: https_addr,
        sntp: sntp_addr,
        tftp: tftp_addr,
        pin,
        operator_token,
    });
    let boot_app = boot::router(state.clone());
    let https_app = https::router(state.clone());
    let plain = async move {
        axum::serve(
            http,
            boot_app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .map_err(net("serving plain HTTP"))
    };
    let tls = https::serve(tls_listener, server_config, https_app);
    tokio::try_join!(plain, tls)?;
    Ok(())
}

/// Parses `90s`, `10m`, `24h`, `7d` or plain seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 10m, 24h or 7d"))?;
    if n == 0 {
        return Err(format!("{s:?} must be more than zero"));
    }
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_hosts() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(url_host("https://10.0.2.2:8443/x"), "10.0.2.2");
        assert_eq!(url_host("https://[::1]:8443"), "::1");
        assert_eq!(host_of("example:80"), "example");
    }
}
