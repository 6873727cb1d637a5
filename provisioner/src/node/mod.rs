//! The node agent, plinth-init's main: on one current-thread tokio loop (signals,
//! timers, the server connection) it brings the network up, sets the clock (SNTP),
//! enrols with the token from the kernel command line over HTTPS checked against the CA
//! pin, fetches its config over mutual TLS, applies it, and then keeps its certificate
//! renewed, its logs streaming and an ear open for the operator's poweroff or reboot.
//! Every step is an event; events made before enrolment wait and go right after it.

pub mod apply;
pub mod client;
pub mod config;
pub mod containerd;
pub mod cri;
pub mod enroll;
pub mod extension;
pub mod image;
pub mod join;
pub mod layer;
pub mod logs;
pub mod network;
pub mod pull;
pub mod service;
pub mod verify;
pub mod workload;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::cmdline::{self, Params};
use crate::error::Error;
use crate::init::console::log;
use crate::init::pid1::{self, Signals, Stop};
use crate::init::{self, kmod, mounts, uptime_ms};
use crate::schema::config::Network;
use crate::schema::{unix_time, Action, Event, EventKind, LogBatch, Reply, API_VERSION};
use client::Client;
use enroll::Identity;

/// How often logs go to the server.
const LOG_EVERY: Duration = Duration::from_secs(2);
/// The most log lines sent in one batch.
const LOG_BATCH: usize = 200;
/// Lines kept while the server cannot take them.
const LOG_BACKLOG: usize = 5000;
/// Container output lines held for the log stream; more are dropped.
const CONTAINER_LOG_LINES: usize = 5000;
/// How many distinct enrolment failures one boot reports as `error` events.
const MAX_ENROL_ERRORS: usize = 5;
/// How long containerd or kubelet is given to stop at shutdown before it is killed.
const SERVICE_PATIENCE: Duration = Duration::from_secs(15);
/// How long a refused enrolment waits before the reboot that fetches a new token.
const REBOOT_AFTER_REFUSAL: Duration = Duration::from_secs(30);

/// PID 1's main. Never returns.
pub fn run() -> ! {
    init::panic_reboots();
    let mut timings = Map::new();
    timings.insert("initMs".into(), json!(uptime_ms()));
    log("starting");
    if init::reroot::on_initramfs() {
        match init::reroot::reroot() {
            Ok(n) => log(&format!("moved the image's {n} entries off the initramfs")),
            Err(e) => {
                // Half moved, the root is neither the image nor a copy of it.
                log(&format!("leaving the initramfs: {e}; rebooting in 30s"));
                std::thread::sleep(Duration::from_secs(30));
                pid1::shutdown(Stop::Reboot)
            }
        }
        timings.insert("rerootMs".into(), json!(uptime_ms()));
    }
    // Published ports hold two descriptors per connection: the hard limit, not 1024.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    match mounts::mount_all(Path::new("/")) {
        Ok(busy) if !busy.is_empty() => log(&format!("already mounted: {}", busy.join(" "))),
        Ok(_) => {}
        Err(e) => log(&format!("mounts: {e}")),
    }
    timings.insert("mountedMs".into(), json!(uptime_ms()));
    let mut details = Map::new();
    match kmod::load_listed(Path::new(init::MODULES_LIST)) {
        Ok((loaded, present, failed)) => {
            log(&format!(
                "modules: {loaded} loaded, {present} already present, {} failed",
                failed.len()
            ));
            for f in &failed {
                log(f);
            }
            details.insert("modulesLoaded".into(), json!(loaded));
            details.insert("modulesFailed".into(), json!(failed));
        }
        Err(e) => log(&format!("modules: {e}")),
    }
    timings.insert("modulesMs".into(), json!(uptime_ms()));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            log(&format!(
                "cannot start the event loop: {e}; rebooting in 30s"
            ));
            std::thread::sleep(Duration::from_secs(30));
            pid1::shutdown(Stop::Reboot)
        }
    };
    let stop = rt.block_on(agent(details, timings));
    pid1::shutdown(stop)
}

/// Waits for a stop signal, or forever when signals could not be installed.
async fn signalled(signals: &mut Option<Signals>) -> Stop {
    match signals {
        Some(s) => s.stop().await,
        None => std::future::pending().await,
    }
}

async fn agent(mut details: Map<String, Value>, mut timings: Map<String, Value>) -> Stop {
    let mut signals = match Signals::install() {
        Ok(s) => Some(s),
        Err(e) => {
            log(&format!("signals: {e}; shutdown requests will not be seen"));
            None
        }
    };
    let params = cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let link = tokio::select! {
        s = signalled(&mut signals) => return s,
        l = retry("network", network::up) => l,
    };
    timings.insert("linkUpMs".into(), json!(link.link_up_ms));
    timings.insert("dhcpMs".into(), json!(link.dhcp_ms));
    let (boot_id, boot_id_problem) = boot_id(Path::new("/proc/sys/kernel/random/boot_id"));
    if let Some(p) = &boot_id_problem {
        log(p);
    }
    let id = Identity {
        mac: crate::netif::format_mac(&link.mac),
        uuid: init::smbios_uuid(Path::new("/sys")),
        serial: init::smbios_serial(Path::new("/sys")),
        boot_id,
    };
    log(&format!("machine {} uuid {}", id.mac, id.uuid));
    if let Some(opts) = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| mounts::super_options(&m, "/sys/fs/cgroup"))
    {
        details.insert("cgroup2Options".into(), json!(opts));
    }
    details.insert(
        "kernel".into(),
        json!(std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()),
    );
    let agent = Agent::new(id, &params);
    let stop = tokio::select! {
        s = signalled(&mut signals) => (s, match s { Stop::Poweroff => "signal: poweroff", Stop::Reboot => "signal: reboot" }),
        s = agent.provision(&params, link, details, timings, boot_id_problem) => s,
    };
    let mut d = Map::new();
    d.insert("reason".into(), json!(stop.1));
    let mut stop = stop.0;
    // The pods' grace can be long: a stop signal meanwhile (a second ctrl-alt-del) cuts
    // it short, as it would a systemd shutdown.
    tokio::select! {
        k = agent.stop_kubernetes() => {
            if let Some(k) = k {
                d.insert("kubernetes".into(), k);
            }
        }
        s = signalled(&mut signals) => {
            log(&format!("{s:?} asked while the pods were stopping: not waiting for them"));
            d.insert("kubernetes".into(), json!({"cutShortBy": format!("{s:?}")}));
            stop = s;
        }
    }
    let _ =
        tokio::time::timeout(Duration::from_secs(5), agent.report(EventKind::Shutdown, d)).await;
    stop
}

/// Whether `b` has the shape of a boot id the server takes (hex and dashes, 1-64).
fn valid_boot_id(b: &str) -> bool {
    !b.is_empty() && b.len() <= 64 && b.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The kernel's boot id from `path`; when it cannot be read (or is not one), a random
/// one and why, for an `error` event: certificates and timelines are per boot, and an
/// empty id would only have the server refuse the enrolment.
fn boot_id(path: &Path) -> (String, Option<String>) {
    let why = match std::fs::read_to_string(path) {
        Ok(s) if valid_boot_id(s.trim()) => return (s.trim().to_ascii_lowercase(), None),
        Ok(s) => format!(
            "{} holds {:?}, not a boot id",
            path.display(),
            s.trim().chars().take(80).collect::<String>()
        ),
        Err(e) => format!("reading {}: {e}", path.display()),
    };
    let id = match crate::crypto::random_bytes(16) {
        Ok(b) => {
            let h = crate::crypto::hex(&b);
            format!(
                "{}-{}-{}-{}-{}",
                &h[..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..]
            )
        }
        Err(_) => format!("{:016x}-{:016x}", unix_time(), uptime_ms()),
    };
    let msg = format!("{why}; this boot is {id} instead");
    (id, Some(msg))
}

/// Runs `f` until it succeeds, with exponential back-off (1 s .. 30 s).
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::Result<T>>,
{
    let mut delay = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => log(&format!(
                "{what} failed (attempt {attempt}): {e}; retrying in {}s",
                delay.as_secs()
            )),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
        attempt += 1;
    }
}

/// This boot's agent: identity, event sequence, the session once enrolled.
struct Agent {
    id: Identity,
    seq: Cell<u64>,
    /// Events not yet delivered (all of them, before enrolment).
    queue: RefCell<Vec<Event>>,
    session: RefCell<Option<Client>>,
    /// An action that came with an event's reply.
    action: Cell<Option<Action>>,
    woken: tokio::sync::Notify,
    /// One delivery of the queue at a time: the log loop and the steps both flush.
    flushing: tokio::sync::Mutex<()>,
    token: Option<String>,
    pin: Option<String>,
    /// Enrolled with a discovery-only certificate, not yet accepted: no config, no logs.
    discovery: Cell<bool>,
    /// Told when the server says the config is there to fetch.
    config_ready: tokio::sync::Notify,
    /// The containers' output, for the log stream.
    container_logs: RefCell<tokio::sync::mpsc::Receiver<crate::schema::LogLine>>,
    /// Where the containers write their output.
    container_logs_tx: tokio::sync::mpsc::Sender<crate::schema::LogLine>,
    /// Told when an operator asks what the containers look like.
    inspect: std::sync::Arc<tokio::sync::Notify>,
    /// The host services running (containerd and kubelet on a joining node).
    services: service::Running,
    /// Where the node's CRI listens and the longest a pod is given to stop, once it has
    /// started containerd: its pods are stopped before it shuts down.
    pods: RefCell<Option<(std::path::PathBuf, Duration)>>,
}

impl Agent {
    fn new(id: Identity, params: &Params) -> Agent {
        let (container_logs_tx, rx) = tokio::sync::mpsc::channel(CONTAINER_LOG_LINES);
        Agent {
            container_logs: RefCell::new(rx),
            container_logs_tx,
            inspect: std::sync::Arc::new(tokio::sync::Notify::new()),
            id,
            seq: Cell::new(0),
            queue: RefCell::new(Vec::new()),
            session: RefCell::new(None),
            action: Cell::new(None),
            woken: tokio::sync::Notify::new(),
            flushing: tokio::sync::Mutex::new(()),
            token: params.token.clone(),
            pin: params.ca.clone(),
            discovery: Cell::new(false),
            config_ready: tokio::sync::Notify::new(),
            services: service::Running::default(),
            pods: RefCell::new(None),
        }
    }

    /// Stops a joined node's Kubernetes in the order its pods need (its supervisors are
    /// gone by now): kubelet first, which would start stopped containers again; then
    /// every pod through the CRI with its own grace period; then containerd. What was
    /// done, for the `shutdown` event; `None` when the node started no Kubernetes.
    async fn stop_kubernetes(&self) -> Option<Value> {
        let (socket, grace) = self.pods.borrow_mut().take()?;
        let started = std::time::Instant::now();
        let mut d = Map::new();
        let mut services = Vec::new();
        let service = |s: service::StoppedService| {
            log(&format!(
                "shutdown: {} stopped in {} ms ({}{})",
                s.name,
                s.took.as_millis(),
                s.ended,
                if s.killed { ", killed" } else { "" }
            ));
            json!({"name": s.name, "ms": s.took.as_millis() as u64, "ended": s.ended, "killed": s.killed})
        };
        if let Some(s) = self.services.stop("kubelet", SERVICE_PATIENCE).await {
            services.push(service(s));
        }
        match cri::stop_pods(&socket, grace).await {
            Ok(stopped) => {
                let containers: Vec<Value> = stopped
                    .containers
                    .iter()
                    .map(|c| {
                        log(&format!(
                            "shutdown: {} {} stopped in {} ms (grace {} s, exit {})",
                            c.pod,
                            c.container,
                            c.took.as_millis(),
                            c.grace_secs,
                            c.exit_code.map_or("unknown".into(), |e| e.to_string())
                        ));
                        let mut v = json!({
                            "pod": c.pod,
                            "container": c.container,
                            "graceSecs": c.grace_secs,
                            "beganMs": c.began.as_millis() as u64,
                            "ms": c.took.as_millis() as u64,
                        });
                        if let Some(e) = c.exit_code {
                            v["exitCode"] = json!(e);
                        }
                        if let Some(e) = &c.error {
                            v["error"] = json!(e);
                        }
                        v
                    })
                    .collect();
                d.insert("containers".into(), json!(containers));
                d.insert("sandboxes".into(), json!(stopped.sandboxes));
                if !stopped.errors.is_empty() {
                    d.insert("errors".into(), json!(stopped.errors));
                }
            }
            Err(e) => {
                log(&format!("shutdown: stopping the pods: {e}"));
                d.insert("error".into(), json!(e.to_string()));
            }
        }
        if let Some(s) = self.services.stop("containerd", SERVICE_PATIENCE).await {
            services.push(service(s));
        }
        d.insert("services".into(), json!(services));
        d.insert("ms".into(), json!(started.elapsed().as_millis() as u64));
        Some(Value::Object(d))
    }

    fn session(&self) -> Option<Client> {
        self.session.borrow().clone()
    }

    /// Queues an event and delivers the queue if enrolled.
    async fn report(&self, kind: EventKind, details: Map<String, Value>) {
        self.seq.set(self.seq.get() + 1);
        self.queue.borrow_mut().push(Event {
            api_version: API_VERSION.into(),
            kind,
            mac: self.id.mac.clone(),
            uuid: self.id.uuid.clone(),
            boot_id: self.id.boot_id.clone(),
            seq: self.seq.get(),
            uptime_ms: uptime_ms(),
            wall_time: unix_time(),
            details,
        });
        self.flush().await;
    }

    /// Delivers queued events in order; stops at the first failure (kept for later).
    async fn flush(&self) {
        let Some(c) = self.session() else { return };
        let _one = self.flushing.lock().await;
        loop {
            let Some(ev) = self.queue.borrow().first().cloned() else {
                return;
            };
            match c
                .call::<Reply>("POST", "/v1/events", Some(&ev), Duration::from_secs(15))
                .await
            {
                Ok(reply) => {
                    drop_first(&self.queue);
                    if let Some(a) = reply.action {
                        self.action.set(Some(a));
                        self.woken.notify_one();
                    }
                }
                Err(Error::Status {
                    status: 400, body, ..
                }) => {
                    // The server will never take it: drop it rather than block the rest.
                    log(&format!("event {:?} refused: {body}", ev.kind));
                    drop_first(&self.queue);
                }
                Err(e) => {
                    log(&format!("reporting {:?}: {e}; kept for later", ev.kind));
                    return;
                }
            }
        }
    }

    async fn error(&self, step: &str, e: &Error) {
        let mut d = Map::new();
        d.insert("step".into(), json!(step));
        d.insert("error".into(), json!(e.to_string()));
        self.report(EventKind::Error, d).await;
    }

    async fn provision(
        &self,
        params: &Params,
        link: network::Link,
        mut details: Map<String, Value>,
        timings: Map<String, Value>,
        boot_id_problem: Option<String>,
    ) -> (Stop, &'static str) {
        details.insert("timings".into(), Value::Object(timings));
        self.report(EventKind::Booted, details).await;
        if let Some(p) = boot_id_problem {
            let mut d = Map::new();
            d.insert("step".into(), json!("identity"));
            d.insert("error".into(), json!(p));
            self.report(EventKind::Error, d).await;
        }
        let mut net = Map::new();
        net.insert("interface".into(), json!(link.name));
        net.insert("address".into(), json!(link.lease.address.to_string()));
        net.insert("leaseSecs".into(), json!(link.lease.lease_secs));
        net.insert("dns".into(), json!(link.lease.dns));
        if let Some(d) = &link.lease.domain {
            net.insert("domain".into(), json!(d));
        }
        if let Some(ntp) = &params.ntp {
            net.insert("clock".into(), set_clock(ntp).await);
        }
        self.report(EventKind::Network, net).await;

        let (Some(server), Some(pin)) = (params.server.as_deref(), self.pin.as_deref()) else {
            log("no plinth.server= or plinth.ca= on the kernel command line: nowhere to enrol; rebooting in 5 minutes");
            tokio::time::sleep(Duration::from_secs(300)).await;
            return (Stop::Reboot, "no server on the kernel command line");
        };
        let urls = match client::parse_list(server) {
            Ok(u) => u,
            Err(e) => {
                log(&format!("{e}; rebooting in 5 minutes"));
                tokio::time::sleep(Duration::from_secs(300)).await;
                return (Stop::Reboot, "bad plinth.server");
            }
        };
        let Some(token) = self.token.as_deref() else {
            log(&format!(
                "no plinth.token= on the kernel command line: {server} minted none (machine not declared, or in quarantine); rebooting in {}s to ask again",
                REBOOT_AFTER_REFUSAL.as_secs()
            ));
            tokio::time::sleep(REBOOT_AFTER_REFUSAL).await;
            return (Stop::Reboot, "no enrolment token");
        };
        let anon = match Client::fleet(urls, pin) {
            Ok(c) => c,
            Err(e) => {
                log(&format!("{e}; rebooting in 5 minutes"));
                tokio::time::sleep(Duration::from_secs(300)).await;
                return (Stop::Reboot, "bad plinth.server");
            }
        };
        let (issued, key) = match self.enrol(&anon, token).await {
            Ok(x) => x,
            Err(stop) => return stop,
        };
        let session = match anon.with_identity(pin, &issued.certificate, key) {
            Ok(c) => c,
            Err(e) => {
                log(&format!("using the certificate: {e}; rebooting in 30s"));
                tokio::time::sleep(REBOOT_AFTER_REFUSAL).await;
                return (Stop::Reboot, "unusable certificate");
            }
        };
        *self.session.borrow_mut() = Some(session);
        log(&format!(
            "enrolled: certificate {} until {}",
            issued.serial, issued.not_after
        ));
        if issued.discovery {
            self.discovery.set(true);
            log("this machine is not declared: a discovery-only certificate; waiting for an operator to accept it");
        }
        let mut d = Map::new();
        d.insert("serial".into(), json!(issued.serial));
        d.insert("notAfter".into(), json!(issued.not_after));
        d.insert("renewAt".into(), json!(issued.renew_at));
        d.insert("discovery".into(), json!(issued.discovery));
        self.report(EventKind::Enrolled, d).await;

        tokio::select! {
            s = self.actions() => s,
            s = self.renewals(pin, issued.renew_at, issued.not_after) => s,
            _ = self.configure(link) => (Stop::Reboot, "configuration ended"),
            _ = self.stream_logs() => (Stop::Reboot, "log streaming ended"),
        }
    }

    /// Enrols; a refusal (expired, spent or foreign token, quarantine) ends in a reboot
    /// for a new token, after a pause; a server out of reach is retried.
    async fn enrol(
        &self,
        anon: &Client,
        token: &str,
    ) -> Result<(crate::schema::Issued, Vec<u8>), (Stop, &'static str)> {
        let mut delay = Duration::from_secs(1);
        let started = tokio::time::Instant::now();
        let mut attempt: u64 = 0;
        // What went wrong is queued as an `error` event, delivered the moment enrolment
        // succeeds; each distinct failure once (a server down for an hour is one event,
        // not 120), and a few at most.
        let mut said: Vec<String> = Vec::new();
        // One key for every attempt: when an answer is lost (a reset, a server killed
        // before it answered), the token may be spent already, and the server gives a
        // certificate again only to the key that spent it.
        let mut key: Option<enroll::Fresh> = None;
        loop {
            attempt += 1;
            let fresh = match key
                .take()
                .map_or_else(|| enroll::fresh_key(&self.id.mac), Ok)
            {
                Ok(f) => key.insert(f),
                Err(e) => {
                    log(&format!("{e}"));
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            match enroll::enroll(anon, &self.id, token, fresh).await {
                Ok(issued) => return Ok((issued, fresh.key_der.clone())),
                Err(Error::Status { status, body, .. }) if (400..500).contains(&status) => {
                    log(&format!(
                        "enrolment refused ({status}): {body}; rebooting in {}s for a new token",
                        REBOOT_AFTER_REFUSAL.as_secs()
                    ));
                    tokio::time::sleep(REBOOT_AFTER_REFUSAL).await;
                    return Err((Stop::Reboot, "enrolment refused"));
                }
                Err(e) => {
                    let msg = e.to_string();
                    log(&format!(
                        "enrolment with {} failed (attempt {attempt}): {msg}; retrying in {}s",
                        anon.url(),
                        delay.as_secs()
                    ));
                    if said.len() < MAX_ENROL_ERRORS && !said.contains(&msg) {
                        let mut d = Map::new();
                        d.insert("step".into(), json!("enroll"));
                        d.insert("error".into(), json!(msg));
                        d.insert("server".into(), json!(anon.url().to_string()));
                        d.insert("attempt".into(), json!(attempt));
                        d.insert("retryInSecs".into(), json!(delay.as_secs()));
                        self.report(EventKind::Error, d).await;
                        said.push(msg);
                    }
                }
            }
            if started.elapsed() > Duration::from_secs(3600) {
                return Err((Stop::Reboot, "server out of reach for an hour"));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// Fetches and applies the config until it applies, reporting each failure; then
    /// keeps the DHCP lease.
    async fn configure(&self, link: network::Link) {
        // A discovered machine has no config until an operator accepts it; the server
        // says so through the action poll (`configure`).
        while self.discovery.get() {
            self.config_ready.notified().await;
        }
        let mut delay = Duration::from_secs(2);
        let cfg = loop {
            let Some(c) = self.session() else { return };
            match config::fetch(&c).await {
                Ok(cfg) => {
                    let mut d = Map::new();
                    d.insert("hostname".into(), json!(cfg.hostname));
                    d.insert("files".into(), json!(cfg.files.len()));
                    d.insert("users".into(), json!(cfg.users.len()));
                    d.insert("sysctls".into(), json!(cfg.sysctls.len()));
                    d.insert("containers".into(), json!(cfg.containers.len()));
                    self.report(EventKind::Config, d).await;
                    match apply::apply(&cfg, Path::new("/")) {
                        Ok(r) => {
                            log(&format!("applied: {} changes", r.changed.len()));
                            let mut d = Map::new();
                            d.insert("changed".into(), json!(r.changed));
                            d.insert("state".into(), Value::Object(r.state));
                            self.report(EventKind::Applied, d).await;
                            break cfg;
                        }
                        Err(e) => {
                            log(&format!("applying the config: {e}"));
                            self.error("apply", &e).await;
                        }
                    }
                }
                Err(e) => {
                    log(&format!("fetching the config: {e}"));
                    self.error("config", &e).await;
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        };
        let address = match &cfg.network {
            Some(Network::Static(s)) => {
                crate::schema::config::parse_cidr(&s.address).map_or(link.lease.address, |(a, _)| a)
            }
            _ => link.lease.address,
        };
        // Rootless containers need no extension; kubelet does.
        // One queue of events for the containers and the node's own services, reported in
        // order by one loop.
        let (events, mut happened) = tokio::sync::mpsc::unbounded_channel();
        let services = events.clone();
        let kubernetes = async {
            if cfg.kubernetes.is_some() {
                self.join(&cfg, address.into(), services).await;
            } else {
                self.install_extensions(&cfg).await;
            }
        };
        let net = async {
            match &cfg.network {
                Some(Network::Static(s)) => {
                    if let Err(e) = network::set_static(&link, s) {
                        log(&format!("static network: {e}"));
                        self.error("network", &e).await;
                    }
                    std::future::pending::<()>().await
                }
                Some(Network::Dhcp) | None => network::renew_forever(link).await,
            }
        };
        let notes = workload::Notes {
            events,
            logs: self.container_logs_tx.clone(),
            inspect: self.inspect.clone(),
        };
        let report = async {
            while let Some((kind, d)) = happened.recv().await {
                self.report(kind, d).await;
            }
        };
        let containers = async {
            workload::run(&cfg.containers, &cfg.registries, &notes).await;
            drop(notes);
        };
        tokio::join!(net, containers, report, kubernetes);
    }

    /// Installs the config's extensions in order, each tried three times; whether all
    /// were. Each is an `extension` event, or an `error` naming it.
    async fn install_extensions(&self, cfg: &crate::schema::config::MachineConfig) -> bool {
        for ext in &cfg.extensions {
            let mut attempt = 1;
            loop {
                let Some(c) = self.session() else {
                    return false;
                };
                match extension::install(&c, ext, Path::new("/"), Path::new(extension::WORK_DIR))
                    .await
                {
                    Ok(done) => {
                        log(&format!(
                            "extension {}: {} bytes, {} entries added",
                            ext.name, done.bytes, done.written
                        ));
                        let mut d = Map::new();
                        d.insert("name".into(), json!(ext.name));
                        d.insert("sha256".into(), json!(ext.sha256));
                        d.insert("bytes".into(), json!(done.bytes));
                        d.insert("written".into(), json!(done.written));
                        d.insert("present".into(), json!(done.present));
                        if !done.skipped.is_empty() {
                            d.insert("skipped".into(), json!(done.skipped));
                        }
                        d.insert("fetchMs".into(), json!(done.fetch.as_millis() as u64));
                        d.insert("unpackMs".into(), json!(done.unpack.as_millis() as u64));
                        self.report(EventKind::Extension, d).await;
                        break;
                    }
                    Err(e) => {
                        log(&format!("{e}"));
                        self.error("extension", &e).await;
                        if attempt == 3 {
                            return false;
                        }
                        attempt += 1;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        }
        true
    }

    /// Joins the config's Kubernetes cluster: discovery and kubelet's bootstrap files,
    /// the config's extensions, then containerd and kubelet (from them) started and kept
    /// running, and `joined` once the Node is Ready.
    async fn join(
        &self,
        cfg: &crate::schema::config::MachineConfig,
        address: std::net::IpAddr,
        events: tokio::sync::mpsc::UnboundedSender<(EventKind, Map<String, Value>)>,
    ) {
        let Some(k) = &cfg.kubernetes else { return };
        let started = std::time::Instant::now();
        let node = cfg.hostname.clone().unwrap_or_default();
        let layout = join::Layout::node();
        let ctr = containerd::Layout::node();
        let prepared =
            match join::prepare(k, &node, address, &layout, join::DISCOVERY_PATIENCE).await {
                Ok(p) => p,
                Err(e) => {
                    log(&format!("kubernetes: {e}"));
                    self.error("kubernetes", &e).await;
                    return;
                }
            };
        log(&format!(
            "kubernetes: the cluster at {} (CA {}); kubelet's bootstrap written",
            prepared.cluster.server, prepared.cluster.ca_pin
        ));
        // After discovery, as kubeadm: a wrong pin or a dead token is said before tens of
        // megabytes are fetched for nothing.
        if !self.install_extensions(cfg).await {
            return;
        }
        for bin in [KUBELET, CONTAINERD] {
            if !Path::new(bin).exists() {
                let e = Error::Config {
                    what: "kubernetes".into(),
                    reason: format!(
                        "{bin} is not on the node: list the extension that carries it (make k8s-extension builds one)"
                    ),
                };
                self.error("kubernetes", &e).await;
                return;
            }
        }
        if let Err(e) = containerd::write(k, &cfg.registries, &ctr) {
            self.error("kubernetes", &e).await;
            return;
        }
        let logs = self.container_logs_tx.clone();
        *self.pods.borrow_mut() = Some((ctr.socket.clone(), k.shutdown_grace()));
        let containerd = service::supervise(
            service::Spec {
                name: "containerd",
                program: CONTAINERD.into(),
                args: vec!["--config".into(), ctr.config.display().to_string()],
            },
            events.clone(),
            logs.clone(),
            self.services.clone(),
        );
        let kubelet = async {
            // kubelet gives up on a CRI socket that is not there yet; supervise would
            // start it again, but later than needed.
            let t = std::time::Instant::now();
            while !ctr.socket.exists() && t.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            service::supervise(
                service::Spec {
                    name: "kubelet",
                    program: KUBELET.into(),
                    args: prepared.kubelet_args.clone(),
                },
                events,
                logs,
                self.services.clone(),
            )
            .await
        };
        let joined = async {
            let mut said = String::new();
            loop {
                match join::node_ready(&layout, &node).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => {
                        let e = e.to_string();
                        if e != said {
                            log(&format!("kubernetes: asking for node {node}: {e}"));
                            said = e;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            log(&format!("kubernetes: node {node} is Ready"));
            let mut d = Map::new();
            d.insert("node".into(), json!(node));
            d.insert("server".into(), json!(prepared.cluster.server));
            d.insert("caPin".into(), json!(prepared.cluster.ca_pin));
            d.insert(
                "readyMs".into(),
                json!(started.elapsed().as_millis() as u64),
            );
            self.report(EventKind::Joined, d).await;
        };
        tokio::join!(containerd, kubelet, joined);
    }

    /// The operator's actions: from event replies, or the long poll.
    async fn actions(&self) -> (Stop, &'static str) {
        let mut delay = Duration::from_secs(1);
        loop {
            if let Some(a) = self.action.take() {
                match stop_for(a) {
                    Some(stop) => return stop,
                    None => self.other_action(a),
                }
                continue;
            }
            let Some(c) = self.session() else {
                self.woken.notified().await;
                continue;
            };
            tokio::select! {
                r = c.call::<Reply>("POST", "/v1/action", None::<&()>, Duration::from_secs(40)) => match r {
                    Ok(reply) => {
                        delay = Duration::from_secs(1);
                        if let Some(a) = reply.action {
                            match stop_for(a) {
                                Some(stop) => return stop,
                                None => self.other_action(a),
                            }
                        }
                    }
                    Err(e) => {
                        log(&format!("polling for actions: {e}; again in {}s", delay.as_secs()));
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                },
                _ = self.woken.notified() => {}
            }
        }
    }

    /// An action that stops nothing: fetch the config (accepted), or report the
    /// containers as they are (inspect).
    fn other_action(&self, a: Action) {
        match a {
            Action::Inspect => {
                log("server asked for the containers' state");
                self.inspect.notify_waiters();
            }
            _ => self.accepted(),
        }
    }

    /// The server says the config is there: an operator accepted this machine.
    fn accepted(&self) {
        if self.discovery.replace(false) {
            log("accepted by an operator: fetching the config");
        }
        self.config_ready.notify_one();
    }

    /// Renews the certificate at half its life with a new key; a certificate that ran
    /// out means enrolling again, which takes a reboot.
    async fn renewals(
        &self,
        pin: &str,
        mut renew_at: u64,
        mut not_after: u64,
    ) -> (Stop, &'static str) {
        loop {
            let wait = renew_at.saturating_sub(unix_time()).max(1);
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let Some(c) = self.session() else { continue };
            let result = match enroll::fresh_key(&self.id.mac) {
                Ok(fresh) => enroll::renew(&c, &fresh).await.and_then(|i| {
                    c.with_identity(pin, &i.certificate, fresh.key_der)
                        .map(|s| (i, s))
                }),
                Err(e) => Err(e),
            };
            match result {
                Ok((issued, session)) => {
                    *self.session.borrow_mut() = Some(session);
                    log(&format!(
                        "renewed: certificate {} until {}",
                        issued.serial, issued.not_after
                    ));
                    renew_at = issued.renew_at;
                    not_after = issued.not_after;
                }
                Err(e) => {
                    log(&format!("renewing the certificate: {e}"));
                    if unix_time() >= not_after {
                        log("the certificate expired: rebooting to enrol again");
                        return (Stop::Reboot, "certificate expired");
                    }
                    renew_at = unix_time() + 10.min(not_after.saturating_sub(unix_time()));
                }
            }
        }
    }

    /// Streams console and kernel lines (token redacted) and retries queued events.
    async fn stream_logs(&self) {
        let mut kmsg = logs::Kmsg::open();
        let mut backlog: Vec<crate::schema::LogLine> = Vec::new();
        loop {
            backlog.extend(logs::collect(&mut kmsg, self.token.as_deref()));
            {
                let mut rx = self.container_logs.borrow_mut();
                while let Ok(l) = rx.try_recv() {
                    backlog.push(l);
                }
            }
            if backlog.len() > LOG_BACKLOG {
                let drop = backlog.len() - LOG_BACKLOG;
                backlog.drain(..drop);
            }
            if let Some(c) = self.session().filter(|_| !self.discovery.get()) {
                while !backlog.is_empty() {
                    // At most LOG_BATCH lines and half the server's limit in text: a
                    // batch the server must refuse would block every later line.
                    let mut n = 0;
                    let mut bytes = 0;
                    for l in backlog.iter().take(LOG_BATCH) {
                        bytes += l.text.len() + l.source.len() + 32;
                        if n > 0 && bytes > crate::schema::MAX_LOG_BYTES / 2 {
                            break;
                        }
                        n += 1;
                    }
                    let batch = LogBatch {
                        boot_id: self.id.boot_id.clone(),
                        lines: backlog[..n].to_vec(),
                    };
                    match c
                        .call::<Value>("POST", "/v1/logs", Some(&batch), Duration::from_secs(15))
                        .await
                    {
                        Ok(_) => {
                            backlog.drain(..n);
                        }
                        // Refused for its size or its content: it never will be taken.
                        Err(Error::Status {
                            status: 400 | 413, ..
                        }) => {
                            backlog.drain(..n);
                        }
                        Err(e) => {
                            // Not logged through the console: that would feed itself.
                            let _ = e;
                            break;
                        }
                    }
                }
                if !self.queue.borrow().is_empty() {
                    self.flush().await;
                }
            }
            tokio::time::sleep(LOG_EVERY).await;
        }
    }
}

/// Drops the first queued event (delivered, or refused for good).
/// Where the Kubernetes extension puts kubelet and containerd.
const KUBELET: &str = "/usr/bin/kubelet";
const CONTAINERD: &str = "/usr/bin/containerd";

fn drop_first(q: &RefCell<Vec<Event>>) {
    let mut q = q.borrow_mut();
    if !q.is_empty() {
        q.remove(0);
    }
}

/// The stop an action asks for (`configure` asks for none).
fn stop_for(a: Action) -> Option<(Stop, &'static str)> {
    match a {
        Action::Poweroff => {
            log("server asked to power off");
            Some((Stop::Poweroff, "poweroff"))
        }
        Action::Reboot => {
            log("server asked to reboot");
            Some((Stop::Reboot, "reboot"))
        }
        Action::Configure | Action::Inspect => None,
    }
}

/// Sets the clock from `host:port` (SNTP) before any TLS; what happened goes into the
/// `network` event.
async fn set_clock(ntp: &str) -> Value {
    let Ok(addr) = ntp.parse::<SocketAddr>() else {
        log(&format!(
            "plinth.ntp={ntp}: not ADDRESS:PORT; clock left as it is"
        ));
        return json!({ "server": ntp, "error": "not ADDRESS:PORT" });
    };
    let mut last = String::new();
    for _ in 0..3 {
        let r =
            tokio::task::spawn_blocking(move || crate::sntp::query(addr, Duration::from_secs(2)))
                .await;
        match r {
            Ok(Ok(offset)) => {
                let stepped = offset.abs() > 0.5;
                if stepped {
                    if let Err(e) = crate::sntp::step_clock(offset) {
                        log(&format!("{e}"));
                        return json!({ "server": ntp, "offsetSec": offset, "error": e.to_string() });
                    }
                    log(&format!("clock stepped by {offset:+.3}s from {ntp}"));
                }
                return json!({ "server": ntp, "offsetSec": offset, "stepped": stepped });
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(e) => last = e.to_string(),
        }
    }
    log(&format!("SNTP {ntp}: {last}; clock left as it is"));
    json!({ "server": ntp, "error": last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_boot_id_is_replaced_and_said() {
        let dir = std::env::temp_dir().join(format!("plinth-bootid-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let good = dir.join("good");
        std::fs::write(&good, "6E4A2B1C-0000-4000-8000-000000000001\n").expect("write");
        assert_eq!(
            boot_id(&good),
            ("6e4a2b1c-0000-4000-8000-000000000001".to_string(), None)
        );
        for (path, why) in [
            (dir.join("missing"), "reading"),
            (dir.join("empty"), "not a boot id"),
        ] {
            if path.ends_with("empty") {
                std::fs::write(&path, "").expect("write");
            }
            let (id, problem) = boot_id(&path);
            assert!(valid_boot_id(&id), "{id}");
            let problem = problem.expect("a problem said");
            assert!(problem.contains(why) && problem.contains(&id), "{problem}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
