//! plinth-server: the boot chain over plain HTTP (nothing else there), and over HTTPS
//! (rustls, its own CA) enrolment, the node endpoints (mutual TLS) and the operators'
//! JSON API (bearer tokens). tokio and axum/hyper; the state lives in [`store`].
//!
//! | module | what |
//! | --- | --- |
//! | [`boot`] | the plain-HTTP routes: iPXE script (mints the token), kernel, initrd |
//! | [`enroll`] | `POST /v1/enroll`, `POST /v1/renew` |
//! | [`node`] | mTLS: `GET /v1/config`, `POST /v1/events`, `POST /v1/logs`, `POST /v1/action` |
//! | [`api`] | operators: machines, timelines, logs, actions, acceptance, release |
//! | [`auth`] | who a request comes from: a node's certificate, an operator's token |
//! | [`tls`] | the CA, the serving certificate, signing CSRs |
//! | [`https`] | the HTTPS routes |
//! | [`listener`] | the accept loop: per-address connection caps, TLS, request deadlines |
//! | [`limits`] | the limits each client is held to |
//! | [`fleet`] | `--config-dir`: machines, profiles, defaults, rendering |
//! | [`secrets`] | `--data/secrets/`, and redaction |
//! | [`ident`] | placeholder identifiers |
//! | [`reload`] | SIGHUP and the file watch on `--config-dir` |
//! | [`store`], [`kv`], [`kv_redb`] | the state, its interface, the embedded backend |
//! | [`audit`], [`files`] | the audit trail; private files |
//! | [`metrics`] | Prometheus `/metrics` |
//! | [`tftp`] | TFTP with a bounded pool |
//! | [`proxydhcp`] | proxyDHCP beside the site's DHCP server: which iPXE each firmware gets |
//! | [`traffic`] | DHCP, TFTP and HTTP traffic on machines' timelines |
//! | [`kubelet_csr`] | which kubelet certificate requests a machine may have approved (not wired yet) |
//! | [`web`], [`session`] | operators' web pages (the fleet, a machine live, actions) and their login sessions |

pub mod api;
pub mod assign;
pub mod audit;
pub mod auth;
pub mod boot;
pub mod enroll;
pub mod files;
pub mod fleet;
pub mod https;
pub mod ident;
pub mod kubelet_csr;
pub mod kubernetes;
pub mod kv;
pub mod kv_etcd;
pub mod kv_redb;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod node;
pub mod operators;
pub mod proxydhcp;
pub mod reload;
pub mod secrets;
pub mod session;
pub mod store;
pub mod tftp;
pub mod tls;
pub mod traffic;
pub mod web;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::{io, net, Error, Result};
use crate::schema::unix_time;
use audit::{Audit, AuditTrail};
use fleet::Fleet;
use listener::{Listener, Peer};
use metrics::Metrics;
use secrets::Secrets;
use store::Store;
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
    /// TFTP listen address, when wanted (with `proxy_dhcp`, that address's port 69 by
    /// default).
    pub tftp: Option<SocketAddr>,
    /// Answer PXE clients' DHCP as proxyDHCP, as this address of the boot network.
    pub proxy_dhcp: Option<Ipv4Addr>,
    /// Where the iPXE binaries PXE ROMs are given over TFTP come from (Debian's `ipxe`).
    pub ipxe_dir: PathBuf,
    /// How long a minted enrolment token is accepted.
    pub token_ttl: Duration,
    /// How long a node's client certificate lives.
    pub cert_lifetime: Duration,
    /// The fleet's files (`machines/`, `profiles/`, `defaults.yaml`), when kept in git.
    pub config_dir: Option<PathBuf>,
    /// What each client is allowed.
    pub limits: limits::Limits,
    /// What the store keeps per machine.
    pub retention: store::Limits,
    /// `--store`: `etcd://HOST:PORT,...`, or `None` for the embedded store in `data`.
    pub store: Option<String>,
    /// `--ca-dir`: where the CA and the operators' tokens are, when several servers
    /// share them (`None`: in `data`).
    pub ca_dir: Option<PathBuf>,
    /// TFTP transfers at once.
    pub tftp_workers: usize,
    /// TFTP sends of one packet at most (the first and its retransmits).
    pub tftp_sends: u32,
    /// `--kubeconfig`: the cluster nodes join, when the server takes part in it.
    pub kubeconfig: Option<PathBuf>,
    /// How long a minted bootstrap token lives.
    pub bootstrap_token_ttl: Duration,
    /// `--extensions-dir`: the extensions nodes are served by name.
    pub extensions_dir: Option<PathBuf>,
}

impl Config {
    /// The directory of the CA and the operators' tokens: `--ca-dir`, else `--data`.
    pub fn shared_dir(&self) -> &Path {
        self.ca_dir.as_deref().unwrap_or(&self.data)
    }
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

/// Stripes of [`State::machine_locks`]: well above the requests that run at once.
const MACHINE_LOCKS: usize = 256;

/// Shared by every request.
pub struct State {
    cfg: Config,
    ca: Ca,
    store: Store,
    /// Per-machine locks (a stripe per hash of the MAC): a server's requests about one
    /// machine run one at a time, so a decision read and written in two steps (a
    /// token's mint) sees no other of its own in between; requests about different
    /// machines run side by side, and reach the store together (their commits share a
    /// sync). Between servers, each change's transaction compares what it read.
    machine_locks: Vec<Mutex<()>>,
    /// Held while a discovery record is counted and made.
    discovery_lock: Mutex<()>,
    audit: Mutex<AuditTrail>,
    /// The boot chain, read once at start.
    boot: boot::Files,
    /// Woken when an operator queues an action, for the nodes' long polls.
    actions: tokio::sync::Notify,
    https_port: u16,
    sntp: Option<SocketAddr>,
    /// The fleet's files as last loaded well.
    fleet: RwLock<Arc<Fleet>>,
    secrets: Secrets,
    metrics: Metrics,
    conns: Arc<limits::Conns>,
    /// New discovery records.
    discoveries: limits::Rate,
    /// The plain-HTTP URL firmware reaches the boot chain at, when known
    /// (`--advertise-http`, or the proxyDHCP address and the HTTP port).
    http_base: Option<String>,
    /// DHCP, TFTP and HTTP traffic on the timelines.
    traffic: traffic::Traffic,
    /// Operators' browser sessions (the web pages).
    sessions: session::Sessions,
    /// The Kubernetes cluster of `--kubeconfig`.
    cluster: Option<kubernetes::Cluster>,
}

/// Runs `f`, which blocks on a lock or on file I/O (fsync), without stalling the
/// runtime: on a worker of the multi-thread runtime through `block_in_place` (the
/// worker's other tasks move to another thread meanwhile); anywhere else directly.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl State {
    /// Runs `f` on the store off the runtime's workers (see [`blocking`]): every change
    /// is written and synced there. For reads, and for changes that are one transaction
    /// (each compares what it read, and is tried again when that changed).
    fn with_store<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T, ApiError> {
        blocking(|| {
            f(&self.store)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        })
    }

    /// [`State::with_store`] under the machine's lock (never held across an await):
    /// for what one request decides about `mac` over several reads and writes.
    fn with_machine<T>(
        &self,
        mac: &str,
        f: impl FnOnce(&Store) -> Result<T>,
    ) -> Result<T, ApiError> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        mac.hash(&mut h);
        let stripe = (h.finish() % self.machine_locks.len() as u64) as usize;
        blocking(|| {
            let _one = self.machine_locks[stripe]
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            f(&self.store)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        })
    }

    /// The fleet's files as last loaded well.
    fn fleet(&self) -> Arc<Fleet> {
        match self.fleet.read() {
            Ok(f) => f.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Puts the boot-chain traffic seen from `mac` on its timeline (see [`traffic`]).
    fn traffic_event(
        &self,
        mac: &str,
        kind: crate::schema::EventKind,
        d: serde_json::Map<String, serde_json::Value>,
    ) -> bool {
        self.with_machine(mac, |s| s.server_event(mac, "", kind, d))
            .unwrap_or(false)
    }

    /// Writes what [`traffic`] holds for `mac`, now that it may have a record.
    fn flush_traffic(&self, mac: &str) {
        let write = |m: &str, k, d| self.traffic_event(m, k, d);
        self.traffic.flush(&write, mac);
    }

    /// A file of the boot chain served to `peer` (its MAC from the neighbour table).
    fn file_served(&self, peer: IpAddr, protocol: &str, file: &str, bytes: u64, took: Duration) {
        let Some(mac) = traffic::mac_of(peer) else {
            log(&format!(
                "{protocol} {file} to {peer}: no MAC for it in the neighbour table, not on a timeline"
            ));
            return;
        };
        let write = |m: &str, k, d| self.traffic_event(m, k, d);
        self.traffic.file(&write, &mac, protocol, file, bytes, took);
    }

    /// Appends to the audit trail (its own lock, off the runtime's workers); a failure is
    /// logged, not fatal to the request.
    fn audit(&self, who: &str, from: SocketAddr, request: &str, outcome: &str) {
        let a = Audit {
            at: unix_time(),
            who: audit::cut(who, audit::MAX_AUDIT_TEXT),
            from: from.to_string(),
            request: audit::cut(request, audit::MAX_AUDIT_REQUEST),
            outcome: audit::cut(outcome, audit::MAX_AUDIT_TEXT),
        };
        log(&format!(
            "audit: {} from {from}: {}: {}",
            a.who, a.request, a.outcome
        ));
        blocking(|| match self.audit.lock() {
            Ok(mut t) => {
                if let Err(e) = t.append(&a) {
                    log(&format!("audit trail: {e}"));
                }
            }
            Err(_) => log("audit trail: lock poisoned"),
        });
    }
}

/// An error answer: a status and a message (JSON `{"error": ...}`). Messages never carry
/// a token. Every one is a line of the audit trail ([`audit_refusals`]), with `who` when
/// the handler knows better than the connection does.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
    who: Option<String>,
    reason: Option<&'static str>,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            msg: msg.into(),
            who: None,
            reason: None,
        }
    }

    /// The same error, counted under `reason` (a short code for `/metrics`) instead of
    /// its status.
    pub fn reason(mut self, reason: &'static str) -> ApiError {
        self.reason = Some(reason);
        self
    }

    /// The same error, audited as coming from `who` (`node:MAC`, `operator:NAME`,
    /// `enrolling:MAC`).
    pub fn who(mut self, who: impl Into<String>) -> ApiError {
        self.who.get_or_insert(who.into());
        self
    }
}

/// What a refused request's response carries to [`audit_refusals`].
#[derive(Debug, Clone)]
struct Refusal {
    who: Option<String>,
    msg: String,
    reason: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(json!({ "error": self.msg }))).into_response();
        r.extensions_mut().insert(Refusal {
            who: self.who,
            msg: self.msg,
            reason: self.reason,
        });
        r
    }
}

/// The short code a refusal is counted under when the handler gave none.
fn status_reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "conflict",
        413 => "body_too_large",
        429 => "rate_limited",
        s if s >= 500 => "server_error",
        _ => "other",
    }
}

/// Middleware on both listeners: each request's latency, by route template and status
/// class; and every answer of 400 or more is counted by reason and is a line of the audit
/// trail (who, from where, the request, the status and why), whichever handler or
/// extractor (a body over the limit, a method not routed) gave it.
pub async fn audit_refusals(
    AxState(st): AxState<Arc<State>>,
    req: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let request = format!("{} {}", req.method(), req.uri().path());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "other".to_string(), |m| m.as_str().to_string());
    let listener = req.extensions().get::<Listener>().map_or("http", |l| l.0);
    let peer = req.extensions().get::<Peer>().cloned();
    let from = peer
        .as_ref()
        .map(|p| p.addr)
        .or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0)
        })
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let resp = next.run(req).await;
    let status = resp.status();
    st.metrics
        .latency
        .get_or_create(&metrics::Route {
            listener: listener.to_string(),
            route,
            status: format!("{}xx", status.as_u16() / 100),
        })
        .observe(started.elapsed().as_secs_f64());
    if status.as_u16() < 400 {
        return resp;
    }
    let refusal = resp.extensions().get::<Refusal>().cloned();
    st.metrics.refused(
        listener,
        refusal
            .as_ref()
            .and_then(|r| r.reason)
            .unwrap_or_else(|| status_reason(status)),
    );
    let who = match refusal.as_ref().and_then(|r| r.who.clone()) {
        Some(w) => w,
        None => match peer.and_then(|p| p.serial) {
            Some(serial) => st
                .with_store(|s| Ok(s.machine_of_serial(&serial)?.map(|m| m.mac)))
                .ok()
                .flatten()
                .map_or_else(
                    || "unknown-certificate".to_string(),
                    |m| format!("node:{m}"),
                ),
            None => "anonymous".to_string(),
        },
    };
    let msg = refusal.map_or_else(
        || status.canonical_reason().unwrap_or("").to_string(),
        |r| r.msg,
    );
    let verb = if status.is_server_error() {
        "failed"
    } else {
        "refused"
    };
    st.audit(
        &who,
        from,
        &request,
        &format!("{verb}: {} {msg}", status.as_u16()),
    );
    resp
}

/// One line on stderr, the server's log.
pub fn log(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Checks the boot directory, the fleet's files and the data directory before anything
/// binds; returns the fleet (empty without `--config-dir`).
pub fn check(cfg: &Config) -> Result<Fleet> {
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
    for (flag, url, scheme, list) in [
        ("--advertise-http", &cfg.advertise_http, "http://", false),
        ("--advertise-tls", &cfg.advertise_tls, "https://", true),
    ] {
        let Some(u) = url else { continue };
        // --advertise-tls may name the fleet's servers, A,B: nodes fail over among them.
        let parts: Vec<&str> = if list {
            u.split(',').collect()
        } else {
            vec![u]
        };
        for p in parts {
            if !p.starts_with(scheme) || p.len() == scheme.len() || p.contains(char::is_whitespace)
            {
                return Err(Error::Config {
                    what: format!("{flag} {u}"),
                    reason: if list {
                        format!("must be a {scheme} URL, or several separated by commas")
                    } else {
                        format!("must be a {scheme} URL")
                    },
                });
            }
        }
    }
    if cfg.proxy_dhcp.is_some() {
        for f in [proxydhcp::BIOS_FILE, proxydhcp::UEFI_FILE] {
            let p = cfg.ipxe_dir.join(f);
            if !p.is_file() {
                return Err(Error::Config {
                    what: format!("--ipxe-dir {}", cfg.ipxe_dir.display()),
                    reason: format!(
                        "{} is missing: --proxy-dhcp hands it to PXE ROMs (Debian's `ipxe` package has it)",
                        p.display()
                    ),
                });
            }
        }
        if let Some(t) = cfg.tftp.filter(|t| t.port() != 69) {
            return Err(Error::Config {
                what: format!("--tftp {t}"),
                reason: "with --proxy-dhcp, TFTP must be on port 69: PXE ROMs ask there".into(),
            });
        }
    }
    // A bad file stops the server here, before --data is made: nothing is left behind.
    let fleet = match &cfg.config_dir {
        Some(dir) => Fleet::load(dir, &Secrets::new(&cfg.data))?,
        None => Fleet::default(),
    };
    // Last: a refused start leaves nothing behind.
    if let Some(dir) = &cfg.ca_dir {
        private_data_dir(dir)?;
    }
    private_data_dir(&cfg.data)?;
    Ok(fleet)
}

/// The store `--store` names, opened; etcd is asked once, so that a wrong or unreachable
/// one stops the start before `--data` is made. The embedded store is opened later, in
/// `--data`, by [`Store::open_url`].
fn open_shared_store(cfg: &Config) -> Result<Option<Store>> {
    match &cfg.store {
        None => Ok(None),
        Some(url) => Store::open_url(Some(url), &cfg.data, cfg.retention).map(Some),
    }
}

/// The `--data` directory, private: made 0700 when missing; an existing one open to
/// group or others is refused (it holds the CA key and the operators' tokens), naming it.
fn private_data_dir(data: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(data) {
        Ok(md) if !md.is_dir() => Err(Error::Config {
            what: format!("--data {}", data.display()),
            reason: "is not a directory".into(),
        }),
        Ok(md) => {
            let mode = md.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(Error::Config {
                    what: format!("--data {}", data.display()),
                    reason: format!(
                        "is mode {mode:04o}, open to group or others, and it holds the CA key \
                         and the operators' tokens: chmod 700 {}",
                        data.display()
                    ),
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            if let Some(parent) = data.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(io("creating the parent of --data", parent))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(data)
                .map_err(io("creating --data directory", data))
        }
        Err(e) => Err(io("reading --data directory", data)(e)),
    }
}

/// `host:port`, an IPv6 literal in brackets (`[::1]:8443`).
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
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
    if let Some(list) = &cfg.advertise_tls {
        // Every server of the fleet signs with the one CA: each covers the fleet's names.
        names.extend(list.split(',').map(|u| url_host(u).to_string()));
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
                if let Some(sin6) = a.address.as_ref().and_then(|s| s.as_sockaddr_in6()) {
                    names.push(IpAddr::V6(sin6.ip()).to_string());
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

/// Threads beside the workers, for store calls (which take the one store lock in turn)
/// and file reads. tokio's default, 512, let a storm of 500 machines start a thread
/// per request waiting on that lock.
const BLOCKING_THREADS: usize = 8;

/// Binds everything and serves until the process is killed. `on_ready` is called once
/// the listeners are bound.
pub fn serve(cfg: Config, on_ready: impl FnOnce(&Ready)) -> Result<()> {
    let shared = open_shared_store(&cfg)?;
    let fleet = check(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .map_err(net("starting the tokio runtime"))?;
    rt.block_on(serve_async(cfg, fleet, shared, on_ready))
}

async fn serve_async(
    cfg: Config,
    fleet: Fleet,
    shared: Option<Store>,
    on_ready: impl FnOnce(&Ready),
) -> Result<()> {
    let (ca, _made) = Ca::load_or_create(cfg.shared_dir())?;
    let operator_token = operators::ensure_first(cfg.shared_dir())?;
    let first_token = cfg.shared_dir().join(operators::FIRST_TOKEN);
    if first_token.exists() {
        log(&format!(
            "warning: {} holds the first operator's token in clear: move it somewhere safe and delete it",
            first_token.display()
        ));
    }
    let store = match shared {
        Some(store) => store,
        None => Store::open(&cfg.data, cfg.retention)?,
    };
    if cfg.data.join("machines").is_dir() {
        // The one-file-per-machine store of the first releases is not read any more.
        log(&format!(
            "warning: {} is the store of an earlier version and is not read: declare those machines again (or keep them in --config-dir), then remove it",
            cfg.data.join("machines").display()
        ));
    }
    if let Some(dir) = &fleet.dir {
        log(&format!(
            "config: loaded {}: {} machine files, {} profiles",
            dir.display(),
            fleet.machines.len(),
            fleet.profiles.len()
        ));
    }
    files::private_dir(&cfg.data.join(secrets::DIR))?;
    let cluster = match &cfg.kubeconfig {
        Some(path) => {
            let c = kubernetes::Cluster::load(path, cfg.bootstrap_token_ttl).map_err(|e| {
                Error::Config {
                    what: format!("--kubeconfig {}", path.display()),
                    reason: e.to_string(),
                }
            })?;
            log(&format!("kubernetes: the cluster at {}", c.server()));
            Some(c)
        }
        None => None,
    };
    let boot_files = boot::Files::load(&cfg.boot_dir)?;
    let http = bind_tcp(cfg.listen).map_err(net(format!("binding --listen {}", cfg.listen)))?;
    let http_addr = http.local_addr().map_err(net("local address"))?;
    let tls_addr = cfg.listen_tls.unwrap_or_else(|| {
        let port = if http_addr.port() == 0 || cfg.listen.port() == 0 {
            0
        } else {
            http_addr.port().wrapping_add(1)
        };
        SocketAddr::new(http_addr.ip(), port)
    });
    let tls_listener =
        bind_tcp(tls_addr).map_err(net(format!("binding --listen-tls {tls_addr}")))?;
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
    // The proxyDHCP sockets before anything is served: a port taken or an address no
    // interface has stops the start, naming the flag.
    let dhcp_socks = match cfg.proxy_dhcp {
        Some(ip) => Some(proxydhcp::Sockets::bind(ip, "--proxy-dhcp")?),
        None => None,
    };
    let http_base = cfg.advertise_http.clone().or_else(|| {
        cfg.proxy_dhcp.map(|ip| {
            format!(
                "http://{}",
                SocketAddr::new(IpAddr::V4(ip), http_addr.port())
            )
        })
    });
    let tftp_listen = cfg
        .tftp
        .or_else(|| cfg.proxy_dhcp.map(|ip| SocketAddr::new(IpAddr::V4(ip), 69)));
    let state = Arc::new(State {
        cfg: cfg.clone(),
        ca,
        store,
        machine_locks: (0..MACHINE_LOCKS).map(|_| Mutex::new(())).collect(),
        discovery_lock: Mutex::new(()),
        audit: Mutex::new(AuditTrail::new(&cfg.data)),
        boot: boot_files,
        actions: tokio::sync::Notify::new(),
        https_port: https_addr.port(),
        sntp: sntp_addr,
        fleet: RwLock::new(Arc::new(fleet)),
        secrets: Secrets::new(&cfg.data),
        metrics: Metrics::new(),
        conns: Arc::new(limits::Conns::default()),
        discoveries: limits::Rate::new(cfg.limits.discoveries_per_minute),
        http_base,
        traffic: traffic::Traffic::default(),
        sessions: session::Sessions::default(),
        cluster,
    });
    let mut tftp_addr = None;
    if let Some(t) = tftp_listen {
        let sock = UdpSocket::bind(t).map_err(net(format!("binding --tftp {t}")))?;
        tftp_addr = Some(sock.local_addr().map_err(net("TFTP local address"))?);
        let resolver = boot::tftp_resolver(state.clone());
        let pool = tftp::Pool {
            workers: cfg.tftp_workers,
            sends: cfg.tftp_sends,
        };
        let st = state.clone();
        let refused: tftp::OnRefusal = Arc::new(move |why: &str| st.metrics.refused("tftp", why));
        let st = state.clone();
        let served: tftp::OnServed = Arc::new(move |peer, file: &str, bytes, took| {
            st.file_served(peer.ip(), "tftp", file.trim_start_matches('/'), bytes, took)
        });
        std::thread::spawn(move || tftp::serve(sock, resolver, pool, refused, served));
    }
    if let (Some(socks), Some(server)) = (dhcp_socks, cfg.proxy_dhcp) {
        let st = state.clone();
        log(&format!(
            "proxyDHCP on {} ({server}, ports 67 and {})",
            socks.interface(),
            proxydhcp::PXE_PORT
        ));
        socks.serve(proxydhcp::Handler {
            server,
            http_base: state.http_base.clone().unwrap_or_default(),
            answered: Arc::new(move |req, file| {
                Metrics::count(&st.metrics.pxe_answers, file.label());
                let write = |m: &str, k, d| st.traffic_event(m, k, d);
                st.traffic
                    .dhcp(&write, &req.mac, &req.stage(), file.label(), req.arch);
            }),
        });
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
    if cfg.config_dir.is_some() {
        reload::watch(state.clone())?;
    }
    if state.cluster.is_some() {
        tokio::spawn(approve_kubelets(state.clone()));
    }
    let boot_app = boot::router(state.clone());
    let https_app = https::router(state.clone());
    let plain = listener::serve(http, None, boot_app, state.clone());
    let tls = listener::serve(tls_listener, Some(server_config), https_app, state);
    tokio::try_join!(plain, tls)?;
    Ok(())
}

/// How often the kubelets' certificate requests are looked at: a kubelet waits on its
/// request, so this is what a node's bootstrap pays at most.
const CSR_POLL: Duration = Duration::from_secs(2);

/// Decides the kubelets' certificate requests of the server's machines as they come,
/// each decision on the machine's timeline.
async fn approve_kubelets(st: Arc<State>) {
    let Some(cluster) = &st.cluster else {
        return;
    };
    let mut last_error = String::new();
    loop {
        let facts = |mac: &str| blocking(|| facts_of(&st.store, mac).ok().flatten());
        let scan = || blocking(|| joining_nodes(&st));
        match cluster.decide_pending(facts, scan).await {
            Ok((done, errors)) => {
                last_error.clear();
                for e in errors {
                    log(&format!("kubernetes: deciding a certificate request: {e}"));
                }
                for d in done {
                    log(&format!(
                        "kubernetes: {} certificate request {} of node {} ({}): {:?}",
                        d.kind, d.csr, d.node, d.mac, d.verdict
                    ));
                    let details = kubernetes::details(&d);
                    // On the boot whose config the request follows, beside its token.
                    let _ = st.with_machine(&d.mac, |s| {
                        s.server_event(
                            &d.mac,
                            &d.boot,
                            crate::schema::EventKind::Kubernetes,
                            details,
                        )
                    });
                }
            }
            Err(e) => {
                let e = e.to_string();
                // Said once, not every round, while the cluster stays unreachable.
                if e != last_error {
                    log(&format!("kubernetes: certificate requests: {e}"));
                    last_error = e;
                }
            }
        }
        tokio::time::sleep(CSR_POLL).await;
    }
}

/// Every machine whose config joins Kubernetes, not in quarantine: its node name and MAC.
pub(crate) fn joining_nodes(st: &State) -> Vec<(String, String)> {
    let fleet = st.fleet();
    let Ok(machines) = st.store.machines() else {
        return Vec::new();
    };
    machines
        .iter()
        .filter(|m| m.quarantine.is_none())
        .filter_map(|m| {
            let (_, cfg) = assign::config(
                &fleet,
                &st.secrets,
                &st.store,
                m,
                fleet::render::Reveal::Redacted,
            )
            .ok()?;
            let cfg = cfg?;
            cfg.kubernetes.as_ref()?;
            Some((cfg.hostname?, m.mac.clone()))
        })
        .collect()
}

/// What the server knows of machine `mac` for its kubelet's requests: the last boot it
/// served a joining config for, the addresses it saw then (the config request's source or
/// the static address, recorded in that `kubernetes` event, never the node's own report),
/// and its quarantine. `None` for a machine with no such boot.
fn facts_of(s: &Store, mac: &str) -> Result<Option<kubernetes::Facts>> {
    let Some(m) = s.machine(mac)? else {
        return Ok(None);
    };
    let mut facts = kubernetes::Facts {
        quarantine: m.quarantine.as_ref().map(|q| q.reason.clone()),
        ..Default::default()
    };
    // The newest boot first; events of no boot are not a boot.
    for boot in m.boots.iter().rev().filter(|b| b.boot_id != store::NO_BOOT) {
        let events = s.recent_events(mac, &boot.boot_id)?;
        let Some(served) = events.iter().find(|r| {
            r.source == store::Source::Server
                && r.event.kind == crate::schema::EventKind::Kubernetes
                && r.event.boot_id == boot.boot_id
                && r.event.details.contains_key("addresses")
        }) else {
            continue;
        };
        facts.boot = boot.boot_id.clone();
        facts.addresses = served.event.details["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str()?.parse().ok())
            .collect();
        return Ok(Some(facts));
    }
    Ok(None)
}

/// Connections the kernel queues for a listener before the server accepts them.
/// Rust's and tokio's 128 overflow when a rack powers on: the SYNs past it are dropped
/// and the firmware sends them again a second later (a storm of 500 machines answered
/// its boot scripts in 1.1 s at the median with 128). The kernel caps it at
/// net.core.somaxconn (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`].
fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(LISTEN_BACKLOG)
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
        assert_eq!(host_of("[::1]:8080"), "::1");
    }

    #[test]
    fn ipv6_literals_are_bracketed() {
        assert_eq!(join_host_port("::1", 8443), "[::1]:8443");
        assert_eq!(join_host_port("fe80::1", 123), "[fe80::1]:123");
        assert_eq!(join_host_port("10.0.2.2", 8443), "10.0.2.2:8443");
        assert_eq!(join_host_port("boot.example", 80), "boot.example:80");
        // What the node parses back: the URL's host and an SNTP socket address.
        let url = format!("https://{}", join_host_port("::1", 8443));
        assert_eq!(url_host(&url), "::1");
        let parsed = crate::node::client::Url::parse(&url).expect("url");
        assert_eq!((parsed.host.as_str(), parsed.port), ("::1", 8443));
        assert!(join_host_port("::1", 123).parse::<SocketAddr>().is_ok());
    }
}
