//! The `kubernetes` section of a machine config: which cluster the node joins, with
//! which bootstrap token and trusting which CA, and the node's labels, taints and kubelet
//! settings. Validated here; `docs/config.md` documents each field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Joining a Kubernetes cluster, as kubeadm's token discovery and TLS bootstrap do.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kubernetes {
    /// The API server, `https://host:port`.
    pub server: String,
    /// A bootstrap token `ID.SECRET` (written `{secretRef: NAME}`); absent, the server
    /// mints one per boot for this machine when it is given the cluster's kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The cluster CA's pins, `sha256:<hex of its SubjectPublicKeyInfo>` (kubeadm's
    /// `--discovery-token-ca-cert-hash`): at least one.
    pub ca_cert_hashes: Vec<String>,
    /// Labels the node registers with (`--node-labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Taints the node registers with (`--register-with-taints`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
    /// `KubeletConfiguration` fields, over the node's own (`docs/config.md` lists the
    /// ones the node sets itself, which cannot be given).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub kubelet: Map<String, Value>,
    /// The node's pods' addresses, `A.B.C.D/N` (the CNI bridge's range; each node its
    /// own: routing between nodes is not Plinth's). Default [`DEFAULT_POD_SUBNET`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet: Option<String>,
    /// The pod sandbox ("pause") image containerd runs for each pod. Default
    /// [`DEFAULT_SANDBOX_IMAGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_image: Option<String>,
    /// The longest any pod is given to stop when the node powers off or reboots (each
    /// gets its own `terminationGracePeriodSeconds`, at most this). Default
    /// [`DEFAULT_SHUTDOWN_GRACE_SECS`], at most [`MAX_SHUTDOWN_GRACE_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace_period_seconds: Option<u64>,
}

/// The pods' range when the config gives none: clear of the node's own containers'
/// bridge (10.88.0.0/16).
pub const DEFAULT_POD_SUBNET: &str = "10.244.0.0/24";

/// kubeadm's pause image for this Kubernetes version.
pub const DEFAULT_SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10.1";

/// The longest a pod is given to stop at shutdown when the config does not say.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 120;
/// `shutdownGracePeriodSeconds` at most: an hour.
pub const MAX_SHUTDOWN_GRACE_SECS: u64 = 3600;

impl Kubernetes {
    /// The longest a pod is given to stop at shutdown.
    pub fn shutdown_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.shutdown_grace_period_seconds
                .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS),
        )
    }

    /// The pods' range.
    pub fn pod_subnet(&self) -> &str {
        self.pod_subnet.as_deref().unwrap_or(DEFAULT_POD_SUBNET)
    }

    /// The sandbox image.
    pub fn sandbox_image(&self) -> &str {
        self.sandbox_image
            .as_deref()
            .unwrap_or(DEFAULT_SANDBOX_IMAGE)
    }
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "[secret]"))
            .field("ca_cert_hashes", &self.ca_cert_hashes)
            .field("labels", &self.labels)
            .field("taints", &self.taints)
            .field("kubelet", &self.kubelet)
            .field("pod_subnet", &self.pod_subnet)
            .field("sandbox_image", &self.sandbox_image)
            .field(
                "shutdown_grace_period_seconds",
                &self.shutdown_grace_period_seconds,
            )
            .finish()
    }
}

/// A node taint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Taint {
    /// Its key.
    pub key: String,
    /// Its value (may be empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// `KubeletConfiguration` fields the node sets itself: its TLS bootstrap, certificate
/// rotation, authentication and cgroup layout depend on them.
pub const KUBELET_OWN: &[&str] = &[
    "apiVersion",
    "kind",
    "authentication",
    "authorization",
    "rotateCertificates",
    "serverTLSBootstrap",
    "tlsCertFile",
    "tlsPrivateKeyFile",
    "cgroupDriver",
    "cgroupRoot",
    "staticPodPath",
    "containerRuntimeEndpoint",
];

/// `KubeletConfiguration` fields of kubelet's graceful node shutdown, which needs
/// systemd's inhibitor locks: the node stops its pods itself (`shutdownGracePeriodSeconds`).
const KUBELET_SHUTDOWN: &[&str] = &[
    "shutdownGracePeriod",
    "shutdownGracePeriodCriticalPods",
    "shutdownGracePeriodByPodPriority",
];

/// The label namespaces a kubelet may set on its own Node (the NodeRestriction
/// admission plugin refuses the rest of `kubernetes.io` and `k8s.io`).
const KUBELET_LABEL_PREFIXES: &[&str] = &["kubelet.kubernetes.io/", "node.kubernetes.io/"];
const KUBELET_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// Whether `s` is a `sha256:` pin (64 hex digits).
pub fn valid_pin(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn dns_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// Whether `s` is a DNS subdomain (RFC 1123, lower case): a node name.
pub fn valid_node_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// A label key's name part or a label value: alphanumerics, `-`, `_`, `.`, at most 63,
/// starting and ending alphanumeric.
fn label_name(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

fn label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    !name.is_empty() && label_name(name) && prefix.is_none_or(valid_node_name)
}

fn kubelet_may_set(k: &str) -> bool {
    let Some((prefix, _)) = k.rsplit_once('/') else {
        return true;
    };
    let restricted = ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|d| prefix == *d || prefix.ends_with(&format!(".{d}")));
    !restricted
        || KUBELET_LABELS.contains(&k)
        || KUBELET_LABEL_PREFIXES.iter().any(|p| k.starts_with(p))
}

impl Kubernetes {
    /// Checks what serde cannot; the error names the field. `hostname` is the config's:
    /// the node's name.
    pub fn validate(&self, hostname: Option<&str>) -> Result<(), String> {
        match hostname {
            None => return Err("kubernetes: needs a hostname (the node's name)".into()),
            Some(h) if !valid_node_name(h) => {
                return Err(format!(
                    "hostname: {h:?} cannot name a Kubernetes node (lower case letters, digits, '-' and '.')"
                ))
            }
            // The bootstrap token's group carries the node's name, and a group may not
            // hold a dot (system:bootstrappers:[a-z0-9:-]).
            Some(h) if h.contains('.') => {
                return Err(format!(
                    "hostname: {h:?}: a node joining Kubernetes is named by one label here (no dots), which its bootstrap token's group carries"
                ))
            }
            Some(_) => {}
        }
        if self.server.contains(char::is_whitespace)
            || crate::http_client::Url::parse_for(&self.server, "kubernetes.server").is_err()
        {
            return Err(format!(
                "kubernetes.server: {:?} is not an https://HOST[:PORT] URL",
                self.server
            ));
        }
        if self.ca_cert_hashes.is_empty() {
            return Err(
                "kubernetes.caCertHashes: at least one sha256:<hex> pin of the cluster's CA".into(),
            );
        }
        for (i, p) in self.ca_cert_hashes.iter().enumerate() {
            if !valid_pin(p) {
                return Err(format!(
                    "kubernetes.caCertHashes[{i}]: {p:?} is not sha256:<64 hex digits>"
                ));
            }
        }
        if self.token.as_deref() == Some("") {
            return Err("kubernetes.token: empty".into());
        }
        for (k, v) in &self.labels {
            if !label_key(k) || !label_name(v) {
                return Err(format!("kubernetes.labels: {k}={v:?} is not a label"));
            }
            if !kubelet_may_set(k) {
                return Err(format!(
                    "kubernetes.labels: {k} is in a namespace a node may not label itself with (NodeRestriction)"
                ));
            }
        }
        for (i, t) in self.taints.iter().enumerate() {
            if !label_key(&t.key) || !label_name(&t.value) {
                return Err(format!(
                    "kubernetes.taints[{i}]: {}={:?} is not a taint key and value",
                    t.key, t.value
                ));
            }
            if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&t.effect.as_str()) {
                return Err(format!(
                    "kubernetes.taints[{i}].effect: {:?} is not NoSchedule, PreferNoSchedule or NoExecute",
                    t.effect
                ));
            }
        }
        for k in self.kubelet.keys() {
            if KUBELET_OWN.contains(&k.as_str()) {
                return Err(format!(
                    "kubernetes.kubelet.{k}: set by the node itself, cannot be given"
                ));
            }
            if KUBELET_SHUTDOWN.contains(&k.as_str()) {
                return Err(format!(
                    "kubernetes.kubelet.{k}: kubelet's graceful shutdown needs systemd; the node stops its pods itself, for at most kubernetes.shutdownGracePeriodSeconds"
                ));
            }
        }
        if let Some(p) = &self.pod_subnet {
            let ok = p.split_once('/').is_some_and(|(a, n)| {
                match (a.parse::<std::net::Ipv4Addr>(), n.parse::<u32>()) {
                    (Ok(a), Ok(n)) if (1..=28).contains(&n) => u32::from(a) << n == 0,
                    _ => false,
                }
            });
            if !ok {
                return Err(format!(
                    "kubernetes.podSubnet: {p:?} is not a network A.B.C.D/N (N at most 28, no host bits)"
                ));
            }
        }
        if let Some(g) = self.shutdown_grace_period_seconds {
            if g > MAX_SHUTDOWN_GRACE_SECS {
                return Err(format!(
                    "kubernetes.shutdownGracePeriodSeconds: {g} is over {MAX_SHUTDOWN_GRACE_SECS} (an hour)"
                ));
            }
        }
        if let Some(i) = &self.sandbox_image {
            if !super::containers::valid_reference(i) {
                return Err(format!(
                    "kubernetes.sandboxImage: {i:?} is not an image reference"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Kubernetes {
        serde_json::from_value(json!({
            "server": "https://10.0.0.1:6443",
            "caCertHashes": [format!("sha256:{}", "a".repeat(64))],
            "labels": {"rack": "r1", "node.kubernetes.io/pool": "a", "topology.kubernetes.io/zone": "z1"},
            "taints": [{"key": "dedicated", "value": "ci", "effect": "NoSchedule"}],
            "kubelet": {"maxPods": 50},
        }))
        .expect("parse")
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(good().validate(Some("node-1")), Ok(()));
        let e = |k: Kubernetes, h: Option<&str>| k.validate(h).expect_err("refused");
        assert!(e(good(), None).contains("hostname"));
        assert!(e(good(), Some("Node_1")).contains("hostname"));
        assert!(e(good(), Some("node-1.rack2")).contains("no dots"));
        let mut k = good();
        k.server = "https://10.0.0.1:port".into();
        assert!(e(k, Some("n")).contains("kubernetes.server"));
        let mut k = good();
        k.server = "http://x".into();
        assert!(e(k, Some("n")).contains("kubernetes.server"));
        let mut k = good();
        k.ca_cert_hashes = vec!["sha256:abc".into()];
        assert!(e(k, Some("n")).contains("kubernetes.caCertHashes[0]"));
        let mut k = good();
        k.ca_cert_hashes.clear();
        assert!(e(k, Some("n")).contains("kubernetes.caCertHashes"));
        let mut k = good();
        k.labels
            .insert("node-role.kubernetes.io/worker".into(), String::new());
        assert!(e(k, Some("n")).contains("NodeRestriction"));
        let mut k = good();
        k.labels.insert("bad key!".into(), String::new());
        assert!(e(k, Some("n")).contains("kubernetes.labels"));
        let mut k = good();
        k.taints[0].effect = "Never".into();
        assert!(e(k, Some("n")).contains("kubernetes.taints[0].effect"));
        let mut k = good();
        k.kubelet.insert("authentication".into(), json!({}));
        assert!(e(k, Some("n")).contains("kubernetes.kubelet.authentication"));
        for bad in ["10.244.0.1/24", "10.244.0.0", "10.244.0.0/30", "x/8"] {
            let mut k = good();
            k.pod_subnet = Some(bad.into());
            assert!(e(k, Some("n")).contains("kubernetes.podSubnet"), "{bad}");
        }
        let mut k = good();
        k.pod_subnet = Some("10.50.0.0/16".into());
        assert_eq!(k.validate(Some("n")), Ok(()));
        let mut k = good();
        k.sandbox_image = Some("a b".into());
        assert!(e(k, Some("n")).contains("kubernetes.sandboxImage"));
        let mut k = good();
        k.shutdown_grace_period_seconds = Some(3601);
        assert!(e(k, Some("n")).contains("kubernetes.shutdownGracePeriodSeconds"));
        let mut k = good();
        k.shutdown_grace_period_seconds = Some(3600);
        assert_eq!(k.shutdown_grace(), std::time::Duration::from_secs(3600));
        assert_eq!(good().shutdown_grace(), std::time::Duration::from_secs(120));
        let mut k = good();
        k.kubelet.insert("shutdownGracePeriod".into(), json!("30s"));
        assert!(e(k, Some("n")).contains(
            "kubernetes.kubelet.shutdownGracePeriod: kubelet's graceful shutdown needs systemd"
        ));
        let mut k = good();
        k.token = Some("abcdef.0123456789abcdef".into());
        assert!(!format!("{k:?}").contains("0123456789abcdef"));
    }
}
