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
pub mod notes;
pub mod proxy;
pub mod rootfs;
pub mod runtime;
pub mod slot;

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use nix::sys::wait::WaitStatus;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::node::image::ContentStore;
use crate::node::pull;
use crate::schema::config::{IdRange, User};
use crate::schema::containers::{reference_host, Container, Registry, RestartPolicy, SUBID_COUNT};
pub use notes::Notes;
pub use slot::Slot;
use slot::{BRIDGE, GATEWAY, IMAGES, NETMASK};

/// The shortest and longest pause before a container is started again.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run this long resets the back-off.
const RAN_WELL: Duration = Duration::from_secs(60);

use crate::schema::EventKind;

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
    event(
        notes,
        EventKind::Image,
        json!({ "container": c.name, "image": c.image, "state": "pulling" }),
    );
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
        let outcome = runtime::run_once(c, &slot, &image.rootfs, &config, notes).await;
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
