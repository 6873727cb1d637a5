//! The node's side of joining Kubernetes, up to starting kubelet: kubeadm's token
//! discovery of the cluster (the `cluster-info` signature by the bootstrap token, the CA
//! by its pin), then the files kubelet's TLS bootstrap starts from (the CA, a bootstrap
//! kubeconfig, a `KubeletConfiguration` asking for a serving certificate and rotating
//! both) and its command line (node name, address, labels, taints). Where those files go
//! is a [`Layout`]: the node's standard paths, or a test's.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::kubernetes::cluster_info::{discover, BootstrapToken, ClusterInfo};
use crate::kubernetes::kubeconfig::{self, Access, Auth};
use crate::schema::kubernetes::Kubernetes;

/// Where a node's Kubernetes files go, and what of the host kubelet must be told.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The CA and kubeconfigs (`/etc/kubernetes`).
    pub etc: PathBuf,
    /// kubelet's root, config and certificates (`/var/lib/kubelet`).
    pub kubelet_dir: PathBuf,
    /// containerd's CRI socket.
    pub containerd_socket: PathBuf,
    /// `KubeletConfiguration` fields this host needs (under the config's own).
    pub host: Map<String, Value>,
}

impl Layout {
    /// The node image's paths.
    pub fn node() -> Layout {
        Layout {
            etc: "/etc/kubernetes".into(),
            kubelet_dir: "/var/lib/kubelet".into(),
            containerd_socket: "/run/containerd/containerd.sock".into(),
            host: Map::new(),
        }
    }
}

/// What [`prepare`] wrote, and how to start kubelet on it.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The cluster found.
    pub cluster: ClusterInfo,
    /// kubelet's arguments.
    pub kubelet_args: Vec<String>,
}

/// How long discovery is tried: the cluster signs a new token's kubeconfig within
/// seconds, and an API server may be starting too.
pub const DISCOVERY_PATIENCE: Duration = Duration::from_secs(120);

/// The config's bootstrap token, parsed (the error names the field, not the secret).
pub fn token(k: &Kubernetes) -> Result<BootstrapToken> {
    let t = k.token.as_deref().ok_or_else(|| Error::Config {
        what: "kubernetes.token".into(),
        reason: "none: the server mints one when it has --kubeconfig".into(),
    })?;
    t.parse().map_err(|_| Error::Config {
        what: "kubernetes.token".into(),
        reason: "not a bootstrap token ID.SECRET (6 and 16 of a-z, 0-9)".into(),
    })
}

/// Discovers the cluster, trying again until `patience` is over while the answer may
/// change (no signature yet, no answer); a CA that is not the pinned one is final.
pub async fn discover_patiently(k: &Kubernetes, patience: Duration) -> Result<ClusterInfo> {
    let token = token(k)?;
    let deadline = Instant::now() + patience;
    let mut delay = Duration::from_millis(500);
    loop {
        match discover(&k.server, &token, &k.ca_cert_hashes).await {
            Ok(info) => return Ok(info),
            Err(e @ Error::Config { .. }) => return Err(e),
            Err(e) if Instant::now() + delay >= deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes `text` to `path` as root's with `mode`, through the node's one file writer.
fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    crate::node::apply::write_file(path, text.as_bytes(), mode, 0, 0).map(|_| ())
}

/// The node's `KubeletConfiguration`: the host's fields, the config's over them, and the
/// node's own over both (webhook authentication with the cluster's CA for client
/// certificates, webhook authorization, a serving certificate asked from the cluster,
/// both certificates rotated).
pub fn kubelet_config(k: &Kubernetes, layout: &Layout) -> Value {
    let mut c = Map::new();
    c.insert("cgroupDriver".into(), json!("cgroupfs"));
    c.extend(layout.host.clone());
    c.extend(k.kubelet.clone());
    let own = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": layout.etc.join("pki/ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "rotateCertificates": true,
        "serverTLSBootstrap": true,
        "containerRuntimeEndpoint": format!("unix://{}", layout.containerd_socket.display()),
    });
    if let Value::Object(o) = own {
        c.extend(o);
    }
    Value::Object(c)
}

/// kubelet's command line for node `node` at `address`.
pub fn kubelet_args(k: &Kubernetes, node: &str, address: IpAddr, layout: &Layout) -> Vec<String> {
    let p = |base: &Path, rel: &str| base.join(rel).display().to_string();
    let mut args = vec![
        format!("--config={}", p(&layout.kubelet_dir, "config.yaml")),
        format!(
            "--bootstrap-kubeconfig={}",
            p(&layout.etc, "bootstrap-kubelet.conf")
        ),
        format!("--kubeconfig={}", p(&layout.etc, "kubelet.conf")),
        format!("--cert-dir={}", p(&layout.kubelet_dir, "pki")),
        format!("--root-dir={}", layout.kubelet_dir.display()),
        format!("--hostname-override={node}"),
        format!("--node-ip={address}"),
    ];
    if !k.labels.is_empty() {
        let l: Vec<String> = k.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        args.push(format!("--node-labels={}", l.join(",")));
    }
    if !k.taints.is_empty() {
        let t: Vec<String> = k
            .taints
            .iter()
            .map(|t| format!("{}={}:{}", t.key, t.value, t.effect))
            .collect();
        args.push(format!("--register-with-taints={}", t.join(",")));
    }
    args
}

/// Discovers the cluster and writes what kubelet starts from.
pub async fn prepare(
    k: &Kubernetes,
    node: &str,
    address: IpAddr,
    layout: &Layout,
    patience: Duration,
) -> Result<Prepared> {
    let cluster = discover_patiently(k, patience).await?;
    let token = k.token.clone().unwrap_or_default();
    write(&layout.etc.join("pki/ca.crt"), &cluster.ca_pem, 0o644)?;
    let bootstrap = kubeconfig::render(
        &Access {
            server: cluster.server.clone(),
            ca_pem: cluster.ca_pem.clone(),
            auth: Auth::Token(token),
        },
        "bootstrap",
    );
    write(
        &layout.etc.join("bootstrap-kubelet.conf"),
        &bootstrap,
        0o600,
    )?;
    let config = kubelet_config(k, layout);
    write(
        &layout.kubelet_dir.join("config.yaml"),
        &config.to_string(),
        0o644,
    )?;
    Ok(Prepared {
        kubelet_args: kubelet_args(k, node, address, layout),
        cluster,
    })
}

/// Whether the Node `node` is Ready, asked with the kubeconfig kubelet wrote after its
/// bootstrap (its own client certificate: a node reads its own Node). `Ok(false)` while
/// that kubeconfig is not there yet or the Node not Ready.
pub async fn node_ready(layout: &Layout, node: &str) -> Result<bool> {
    let path = layout.etc.join("kubelet.conf");
    if !path.exists() {
        return Ok(false);
    }
    let access = kubeconfig::load(&path)?;
    let api = crate::kubernetes::client::ApiClient::new(&access)?;
    let n = api.get(&format!("/api/v1/nodes/{node}")).await?;
    Ok(n["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> Kubernetes {
        serde_json::from_value(json!({
            "server": "https://10.0.0.1:6443",
            "token": "abcdef.0123456789abcdef",
            "caCertHashes": [format!("sha256:{}", "a".repeat(64))],
            "labels": {"rack": "r1", "node.kubernetes.io/pool": "a"},
            "taints": [{"key": "dedicated", "value": "ci", "effect": "NoSchedule"}],
            "kubelet": {"maxPods": 50, "cgroupDriver": "systemd"},
        }))
        .expect("parse")
    }

    #[test]
    fn kubelet_is_told_its_name_address_labels_and_taints() {
        let l = Layout::node();
        let args = kubelet_args(&k(), "n1", "10.0.0.5".parse().expect("ip"), &l);
        for want in [
            "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
            "--kubeconfig=/etc/kubernetes/kubelet.conf",
            "--hostname-override=n1",
            "--node-ip=10.0.0.5",
            "--node-labels=node.kubernetes.io/pool=a,rack=r1",
            "--register-with-taints=dedicated=ci:NoSchedule",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
        }
        let mut l = Layout::node();
        l.host.insert("failSwapOn".into(), json!(false));
        l.host.insert("maxPods".into(), json!(10));
        let c = kubelet_config(&k(), &l);
        assert_eq!(c["maxPods"], 50, "the config's over the host's");
        assert_eq!(c["failSwapOn"], false);
        assert_eq!(c["cgroupDriver"], "systemd");
        assert_eq!(c["serverTLSBootstrap"], true);
        assert_eq!(c["authentication"]["anonymous"]["enabled"], false);
    }

    #[test]
    fn a_bad_token_is_named_not_shown() {
        let mut k = k();
        k.token = Some("short.0123456789abcdefX".into());
        let e = token(&k).expect_err("bad").to_string();
        assert!(
            e.contains("kubernetes.token") && !e.contains("0123456789"),
            "{e}"
        );
        k.token = None;
        assert!(token(&k)
            .expect_err("none")
            .to_string()
            .contains("kubernetes.token"));
    }
}
