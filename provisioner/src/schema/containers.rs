//! The workloads of a machine config: `containers` the node runs rootless through
//! `plinth`, and `registries`, how it reaches the registries their images come from.
//! Validated here, applied by `node::workload`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One container to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    /// Its name: the node's user, cgroup and runtime id are made from it.
    pub name: String,
    /// `registry/repository:tag` or `registry/repository@sha256:...`.
    pub image: String,
    /// The command; the image's entrypoint and cmd when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment, added to (and overriding) the image's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The working directory; the image's, or `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `UID` or `UID:GID` inside the container; the image's user (numeric), or 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Ports published on the node's address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Limits, set on the container's cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// The root file system read-only (writes only to tmpfs mounts).
    #[serde(default)]
    pub read_only: bool,
    /// What happens when it exits.
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// A published port: connections to the node's `hostPort` go to the container's
/// `containerPort`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Port {
    /// The port inside the container.
    pub container_port: u16,
    /// The port on the node; the container's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Only `tcp`.
    #[serde(default)]
    pub protocol: Protocol,
}

impl Port {
    /// The node's port.
    pub fn host(&self) -> u16 {
        self.host_port.unwrap_or(self.container_port)
    }
}

/// A port's protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, proxied per connection.
    #[default]
    Tcp,
}

/// A container's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// Memory in bytes (`memory.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU time in thousandths of a CPU (`cpu.max` over 100 ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milli_cpus: Option<u64>,
    /// Processes and threads (`pids.max`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// When an exited container is started again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Always, with back-off.
    #[default]
    Always,
    /// After a non-zero exit or a signal, with back-off.
    OnFailure,
    /// Never.
    Never,
}

/// How to reach one registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registry {
    /// `host` or `host:port`, as image references name it.
    pub host: String,
    /// Plain HTTP (a registry on the provisioning network without TLS).
    #[serde(default)]
    pub insecure: bool,
    /// A CA certificate (PEM) the registry's certificate must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// `USER:PASSWORD` (written `{secretRef: NAME}` in the fleet's files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        })
    }
}

/// The most containers one machine runs (each has a subordinate id range of 65,536).
pub const MAX_CONTAINERS: usize = 64;
/// The first uid (and gid) of the containers' users: `ctr-NAME` is this plus the
/// container's place in the config.
pub const UID_BASE: u32 = 900_000;
/// The first subordinate id of the containers' ranges.
pub const SUBID_BASE: u32 = 1_000_000;
/// Ids per container (0..65535 inside).
pub const SUBID_COUNT: u32 = 65_536;

/// Whether a config's own user (`uid`, `name`, subordinate `ranges`) would clash with
/// the ids and names the node gives its containers.
pub fn clashes_with_containers(uid: u32, name: &str, ranges: &[(u32, u32)]) -> Option<String> {
    let uids = UID_BASE..UID_BASE + MAX_CONTAINERS as u32;
    let subids = SUBID_BASE as u64..SUBID_BASE as u64 + MAX_CONTAINERS as u64 * SUBID_COUNT as u64;
    if uids.contains(&uid) {
        return Some(format!(
            "uid {uid} is one of the containers' ({}-{})",
            uids.start,
            uids.end - 1
        ));
    }
    if subids.contains(&(uid as u64)) {
        return Some(format!(
            "uid {uid} is in the containers' subordinate ids ({}-{})",
            subids.start,
            subids.end - 1
        ));
    }
    if name.starts_with("ctr-") {
        return Some(format!("{name:?}: names ctr-* are the containers'"));
    }
    for (start, count) in ranges {
        let (s, e) = (*start as u64, *start as u64 + *count as u64);
        if s < subids.end && subids.start < e {
            return Some(format!(
                "subordinate ids {start}+{count} overlap the containers' ({}-{})",
                subids.start,
                subids.end - 1
            ));
        }
        if s < uids.end as u64 && (uids.start as u64) < e {
            return Some(format!(
                "subordinate ids {start}+{count} cover the containers' users ({}-{})",
                uids.start,
                uids.end - 1
            ));
        }
    }
    None
}

/// A container name: 1-12 of a-z, 0-9 and '-' (the node's user `ctr-NAME` and the veth
/// `vNAME` must fit their limits).
fn valid_container_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 12
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-')
}

/// `registry/repository[:tag][@sha256:hex]`, with a registry host part.
pub(crate) fn valid_reference(r: &str) -> bool {
    let Some((host, rest)) = r.split_once('/') else {
        return false;
    };
    let host_ok = !host.is_empty()
        && (host.contains('.') || host.contains(':') || host == "localhost")
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    let (path, digest) = match rest.split_once('@') {
        Some((p, d)) => (p, Some(d)),
        None => (rest, None),
    };
    let digest_ok = digest.is_none_or(|d| {
        d.strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
    });
    let name = match path.rsplit_once(':') {
        Some((n, tag)) if !tag.contains('/') => {
            if tag.is_empty()
                || tag.len() > 128
                || !tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return false;
            }
            n
        }
        _ => path,
    };
    let name_ok = !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        });
    host_ok && digest_ok && name_ok
}

/// The registry host of a reference `valid_reference` took.
pub fn reference_host(r: &str) -> &str {
    r.split_once('/').map_or(r, |(h, _)| h)
}

/// `UID` or `UID:GID`.
pub fn parse_user(u: &str) -> Option<(u32, Option<u32>)> {
    match u.split_once(':') {
        Some((a, b)) => Some((a.parse().ok()?, Some(b.parse().ok()?))),
        None => Some((u.parse().ok()?, None)),
    }
}

/// Checks `containers` and `registries`; the error names the field.
pub fn validate(containers: &[Container], registries: &[Registry]) -> Result<(), String> {
    if containers.len() > MAX_CONTAINERS {
        return Err(format!(
            "containers: {} of them, more than the {MAX_CONTAINERS} a machine runs",
            containers.len()
        ));
    }
    let mut host_ports = BTreeMap::new();
    for (i, c) in containers.iter().enumerate() {
        let at = format!("containers[{i}]");
        if !valid_container_name(&c.name) {
            return Err(format!(
                "{at}.name: {:?} is not a container name (1-12 of a-z, 0-9, '-')",
                c.name
            ));
        }
        if containers[..i].iter().any(|o| o.name == c.name) {
            return Err(format!("{at}.name: {:?} is used twice", c.name));
        }
        if !valid_reference(&c.image) {
            return Err(format!(
                "{at}.image: {:?} is not registry/repository:tag or registry/repository@sha256:DIGEST",
                c.image
            ));
        }
        if c.args.as_ref().is_some_and(|a| a.is_empty()) {
            return Err(format!(
                "{at}.args: empty (leave it out for the image's command)"
            ));
        }
        for k in c.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!("{at}.env: {k:?} is not a variable name"));
            }
        }
        if let Some(w) = &c.working_dir {
            if !w.starts_with('/') || w.split('/').any(|p| p == "..") {
                return Err(format!("{at}.workingDir: {w:?} is not an absolute path"));
            }
        }
        if let Some(u) = &c.user {
            if parse_user(u).is_none() {
                return Err(format!("{at}.user: {u:?} is not UID or UID:GID"));
            }
        }
        for (j, p) in c.ports.iter().enumerate() {
            if p.container_port == 0 || p.host() == 0 {
                return Err(format!("{at}.ports[{j}]: port 0"));
            }
            if let Some(other) = host_ports.insert(p.host(), at.clone()) {
                return Err(format!(
                    "{at}.ports[{j}].hostPort: {} is published by {other} too",
                    p.host()
                ));
            }
        }
        if let Some(r) = &c.resources {
            if r.memory_bytes.is_some_and(|m| m < 1 << 20) {
                return Err(format!("{at}.resources.memoryBytes: less than 1 MiB"));
            }
            if r.milli_cpus.is_some_and(|m| !(10..=1_000_000).contains(&m)) {
                return Err(format!(
                    "{at}.resources.milliCpus: not between 10 and 1000000 (the kernel's least quota is 1 ms per 100 ms)"
                ));
            }
            if r.pids == Some(0) {
                return Err(format!("{at}.resources.pids: 0"));
            }
        }
    }
    for (i, r) in registries.iter().enumerate() {
        // It names a directory of containerd's hosts.toml files on a joining node, and is
        // written into them: a host, an IPv6 address in brackets, a port; no more.
        let host_chars = r
            .host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        // `.` and `..` start with a dot too.
        if r.host.is_empty() || !host_chars || r.host.starts_with('.') {
            return Err(format!(
                "registries[{i}].host: {:?} is not host or host:port",
                r.host
            ));
        }
        if r.insecure && r.ca.is_some() {
            return Err(format!(
                "registries[{i}]: insecure (plain HTTP) and a ca together"
            ));
        }
        if let Some(c) = &r.credentials {
            if !c.contains(':') {
                return Err(format!("registries[{i}].credentials: not USER:PASSWORD"));
            }
        }
        if registries[..i].iter().any(|o| o.host == r.host) {
            return Err(format!("registries[{i}].host: {:?} twice", r.host));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        for good in [
            "10.0.0.1:5000/demo/httpd:1",
            "registry.example.com/a/b",
            "localhost/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "r.io/x:v1.2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(valid_reference(good), "{good}");
        }
        for bad in [
            "busybox",
            "library/busybox:1",
            "r.io/",
            "r.io/A:1",
            "r.io/x:",
            "r.io/x@sha256:12",
            "r.io/x y",
        ] {
            assert!(!valid_reference(bad), "{bad}");
        }
        assert_eq!(reference_host("10.0.0.1:5000/demo:1"), "10.0.0.1:5000");
        assert_eq!(parse_user("1000:2000"), Some((1000, Some(2000))));
        assert_eq!(parse_user("x"), None);
    }
}
