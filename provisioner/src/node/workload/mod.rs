//! The node's workloads: each container of the config runs rootless. plinth-init, as
//! root, does only what an unprivileged user cannot: the container's user and
//! subordinate ids (in the accounts `apply` writes), its delegated cgroup with the
//! limits, its root file system (the shared image through an idmapped mount), and its
//! veth on the node-local bridge between `create` and `start`. The runtime runs as the
//! container's user, which maps the container's ids with newuidmap/newgidmap. Ports are
//! published by a proxy here. Each container is supervised on its own: a failed pull,
//! start or crash loop stops neither the others nor the node.

pub mod cgroup;
pub mod link;
pub mod nat;
pub mod proxy;
pub mod rootfs;
pub mod runtime;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use nix::sys::wait::WaitStatus;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::node::image::ContentStore;
use crate::node::pull;
use crate::schema::config::{IdRange, User};
use crate::schema::containers::{reference_host, Container, Registry, RestartPolicy};
pub use crate::schema::containers::{SUBID_BASE, SUBID_COUNT, UID_BASE};
use crate::schema::{EventKind, LogLine};

/// The node-local bridge the containers' veths are on.
pub const BRIDGE: &str = "plinth0";
/// The bridge's address: the containers' gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// Where images are kept (tmpfs).
pub const IMAGES: &str = "/run/plinth/images";
/// Where each container's bundle and root are made.
const CONTAINERS: &str = "/run/plinth/containers";
/// The cgroup2 mount.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The shortest and longest pause before a container is started again.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run this long resets the back-off.
const RAN_WELL: Duration = Duration::from_secs(60);

/// What the workloads tell the agent: events to report, lines to stream.
pub struct Notes {
    /// Events, in order.
    pub events: mpsc::UnboundedSender<(EventKind, Map<String, Value>)>,
    /// Container output; a line that does not fit is dropped (and counted).
    pub logs: mpsc::Sender<LogLine>,
}

/// Where the container at `index` of the config lives on the node.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The user the runtime runs as, `ctr-NAME`.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// The first host id of the container's range (its root).
    pub subid: u32,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Its veth's name on the node.
    pub veth: String,
    /// Bundle and root file system.
    pub dir: PathBuf,
    /// The user's runtime directory (home, `XDG_RUNTIME_DIR`).
    pub run_dir: PathBuf,
}

impl Slot {
    /// The slot of the `index`th container, `name`.
    pub fn new(index: usize, name: &str) -> Slot {
        let i = index as u32;
        let uid = UID_BASE + i;
        Slot {
            uid,
            gid: uid,
            subid: SUBID_BASE + i * SUBID_COUNT,
            ip: Ipv4Addr::new(10, 88, 0, 10 + index as u8),
            veth: format!("v{name}"),
            dir: Path::new(CONTAINERS).join(name),
            run_dir: PathBuf::from(format!("/run/user/{uid}")),
        }
    }
}

/// The accounts the containers need, for `apply` to write with the config's own.
pub fn users(containers: &[Container]) -> Vec<User> {
    containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let s = Slot::new(i, &c.name);
            let range = IdRange {
                start: s.subid,
                count: SUBID_COUNT,
            };
            User {
                name: format!("ctr-{}", c.name),
                uid: s.uid,
                gid: None,
                home: Some(s.run_dir.display().to_string()),
                shell: Some("/usr/sbin/nologin".into()),
                subuid: Some(range),
                subgid: Some(range),
            }
        })
        .collect()
}

fn event(notes: &Notes, kind: EventKind, d: Value) {
    if let Value::Object(m) = d {
        let _ = notes.events.send((kind, m));
    }
}

/// Runs every container of the config until the node stops (the config applied: their
/// users exist).
pub async fn run(containers: &[Container], registries: &[Registry], notes: &Notes) {
    if containers.is_empty() {
        return;
    }
    let store = match ContentStore::open(Path::new(IMAGES)) {
        Ok(s) => s,
        Err(e) => {
            for c in containers {
                failed(notes, c, "images", &e);
            }
            return;
        }
    };
    if let Err(e) = network() {
        for c in containers {
            failed(notes, c, "network", &e);
        }
        return;
    }
    // One pull of an image at a time: the second finds its blobs in the store.
    let mut pulls: HashMap<&str, Arc<tokio::sync::Mutex<()>>> = HashMap::new();
    for c in containers {
        pulls.entry(c.image.as_str()).or_default();
    }
    join_all(containers.iter().enumerate().map(|(i, c)| {
        let slot = Slot::new(i, &c.name);
        let store = store.clone();
        let one_pull = pulls[c.image.as_str()].clone();
        async move { supervise(c, slot, &store, registries, &one_pull, notes).await }
    }))
    .await;
}

/// The bridge and its address; the containers' way out (forwarding, masquerade).
fn network() -> Result<()> {
    link::bridge(BRIDGE)?;
    crate::netif::set_address(BRIDGE, GATEWAY, NETMASK)?;
    let forward = Path::new("/proc/sys/net/ipv4/ip_forward");
    std::fs::write(forward, "1").map_err(crate::error::io("writing", forward))?;
    nat::masquerade(GATEWAY, 24, BRIDGE)
}

fn failed(notes: &Notes, c: &Container, step: &str, e: &Error) {
    crate::init::console::log(&format!("container {}: {step}: {e}", c.name));
    event(
        notes,
        EventKind::Service,
        json!({ "container": c.name, "state": "failed", "step": step, "reason": e.to_string() }),
    );
}

fn registry_for(image: &str, registries: &[Registry]) -> pull::Registry {
    let host = reference_host(image);
    registries
        .iter()
        .find(|r| r.host == host)
        .map(|r| pull::Registry {
            insecure: r.insecure,
            ca_pem: r.ca.clone(),
            credentials: r
                .credentials
                .as_deref()
                .and_then(|c| c.split_once(':'))
                .map(|(u, p)| (u.to_string(), p.to_string())),
        })
        .unwrap_or_default()
}

/// One container, from its pull to the end of its restarts.
async fn supervise(
    c: &Container,
    slot: Slot,
    store: &ContentStore,
    registries: &[Registry],
    one_pull: &tokio::sync::Mutex<()>,
    notes: &Notes,
) {
    let mut delay = BACKOFF_MIN;
    // Published ports listen for the container's whole life, across restarts.
    for p in &c.ports {
        match proxy::listen(p.host()).await {
            Ok(l) => {
                tokio::spawn(proxy::forward(
                    l,
                    SocketAddrV4::new(slot.ip, p.container_port),
                ));
            }
            Err(e) => failed(notes, c, "ports", &e),
        }
    }
    let registry = registry_for(&c.image, registries);
    // A failure said once until it changes (the console has every attempt).
    let mut said = String::new();
    let image = loop {
        let started = Instant::now();
        let pulled = {
            let _one = one_pull.lock().await;
            pull::pull(store, &c.image, &registry).await
        };
        match pulled {
            Ok(p) => {
                event(
                    notes,
                    EventKind::Image,
                    json!({
                        "container": c.name, "image": c.image, "state": "pulled",
                        "manifest": p.manifest.to_string(), "fetched": p.fetched,
                        "bytes": p.bytes, "unpacked": p.image.fresh,
                        "skipped": p.image.skipped, "ms": started.elapsed().as_millis() as u64,
                    }),
                );
                break p.image;
            }
            Err(e) => {
                let msg = e.to_string();
                if msg == said {
                    crate::init::console::log(&format!("container {}: pull: {msg}", c.name));
                } else {
                    event(
                        notes,
                        EventKind::Image,
                        json!({ "container": c.name, "image": c.image, "state": "failed",
                                "error": msg, "retryInSecs": delay.as_secs() }),
                    );
                    failed(notes, c, "pull", &e);
                    said = msg;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
    };
    let config = match runtime::image_config(store, &image) {
        Ok(cfg) => cfg,
        Err(e) => return failed(notes, c, "image config", &e),
    };
    delay = BACKOFF_MIN;
    let mut runs = 0u64;
    loop {
        runs += 1;
        let started = Instant::now();
        let outcome =
            runtime::run_once(c, &slot, &image.rootfs, &config, &notes.events, &notes.logs).await;
        let ran = started.elapsed();
        let exit = match outcome {
            Ok(exit) => exit,
            Err((step, e)) => {
                failed(notes, c, step, &e);
                if c.restart == RestartPolicy::Never {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let (code, signal) = match exit.status {
            WaitStatus::Exited(_, code) => (Some(code), None),
            WaitStatus::Signaled(_, s, _) => (None, Some(s.as_str())),
            _ => (None, None),
        };
        let clean = code == Some(0);
        let again = match c.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !clean,
            RestartPolicy::Never => false,
        };
        if ran >= RAN_WELL {
            delay = BACKOFF_MIN;
        }
        event(
            notes,
            EventKind::Service,
            json!({
                "container": c.name, "state": "exited", "exitCode": code, "signal": signal,
                "oomKilled": exit.oom_killed, "runs": runs, "ranMs": ran.as_millis() as u64,
                "restart": c.restart.to_string(),
                "restartInSecs": if again { Some(delay.as_secs()) } else { None },
            }),
        );
        if !again {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}
