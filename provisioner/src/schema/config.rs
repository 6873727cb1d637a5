//! `MachineConfig`: what a node is told to be. Strict (`deny_unknown_fields`): a field
//! this version cannot honour is an error naming it, never silently dropped.
//! `docs/config.md` documents every field.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::containers::{Container, Registry};
use super::extensions::Extension;
use super::kubernetes::Kubernetes;
use super::API_VERSION;

/// The largest config the server accepts or a node takes.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

/// One machine's configuration (`apiVersion: plinth/v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineConfig {
    /// Must be `plinth/v1`.
    pub api_version: String,
    /// The host name (sethostname(2) and /etc/hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// How the boot NIC is configured; DHCP (with lease renewal) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// NTP servers (`host:port` or `host`), asked after the provisioning server's SNTP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ntp: Vec<String>,
    /// Groups to create (before users).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// Users to create, each with optional subordinate id ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    /// Files to write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    /// Kernel parameters, `net.ipv4.ip_forward: "1"` style.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Kernel modules to load by name (they must be in the image).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_modules: Vec<String>,
    /// Containers the node runs rootless (`docs/config.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    /// How to reach the registries the containers' images come from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<Registry>,
    /// Software the node fetches from its server and unpacks at boot (`docs/config.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<Extension>,
    /// The Kubernetes cluster the node joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,
}

/// The boot NIC's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum Network {
    /// DHCP, renewing the lease at half its time.
    Dhcp,
    /// A fixed address.
    Static(StaticNetwork),
}

/// A fixed IPv4 address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticNetwork {
    /// `ADDRESS/PREFIX`, e.g. `10.0.2.15/24`.
    pub address: String,
    /// The default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Name servers for `/etc/resolv.conf` (the resolver reads the first three); none
    /// keeps what DHCP gave at boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<Ipv4Addr>,
}

/// A group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

/// A user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct User {
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid (a group of the user's name is made when no group has it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Its home directory (made, owned by the user); `/home/NAME` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
    /// Its shell; `/bin/sh` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Its subordinate uid range (/etc/subuid), for rootless containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subuid: Option<IdRange>,
    /// Its subordinate gid range (/etc/subgid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subgid: Option<IdRange>,
}

/// A range of ids.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdRange {
    /// The first id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// A file to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct File {
    /// Absolute path, without `..`.
    pub path: String,
    /// Its contents (UTF-8 text).
    pub contents: String,
    /// Octal permission bits as a string, e.g. `"0644"` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Owner uid (default 0).
    #[serde(default)]
    pub uid: u32,
    /// Owner gid (default 0).
    #[serde(default)]
    pub gid: u32,
}

impl File {
    /// The permission bits (validated by [`MachineConfig::validate`]).
    pub fn mode_bits(&self) -> u32 {
        self.mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .unwrap_or(0o644)
    }
}

impl User {
    /// The home directory.
    pub fn home_dir(&self) -> String {
        self.home
            .clone()
            .unwrap_or_else(|| format!("/home/{}", self.name))
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 32
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !n.starts_with('-')
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn clean_abs_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.contains('\0')
        && p.split('/').all(|c| c != ".." && c != ".")
}

impl MachineConfig {
    /// Parses and validates a config; the error names the field at fault.
    pub fn parse(body: &[u8]) -> Result<MachineConfig, String> {
        if body.len() > MAX_CONFIG_BYTES {
            return Err(format!(
                "config is {} bytes, more than the {MAX_CONFIG_BYTES} allowed",
                body.len()
            ));
        }
        let c: MachineConfig = serde_json::from_slice(body).map_err(|e| format!("config: {e}"))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks what serde cannot: names, paths, modes, ranges. The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.api_version != API_VERSION {
            return Err(format!(
                "apiVersion: {:?} is not {API_VERSION:?}",
                self.api_version
            ));
        }
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return Err(format!("hostname: {h:?} is not a host name"));
            }
        }
        if let Some(Network::Static(s)) = &self.network {
            parse_cidr(&s.address).ok_or_else(|| {
                format!(
                    "network.static.address: {:?} is not ADDRESS/PREFIX",
                    s.address
                )
            })?;
        }
        for (i, n) in self.ntp.iter().enumerate() {
            if n.is_empty() || n.contains(char::is_whitespace) {
                return Err(format!("ntp[{i}]: {n:?} is not host or host:port"));
            }
        }
        for (i, g) in self.groups.iter().enumerate() {
            if !valid_name(&g.name) {
                return Err(format!(
                    "groups[{i}].name: {:?} is not a group name",
                    g.name
                ));
            }
            if let Some(why) = super::containers::clashes_with_containers(g.gid, &g.name, &[]) {
                return Err(format!("groups[{i}]: {}", why.replace("uid", "gid")));
            }
        }
        for (i, u) in self.users.iter().enumerate() {
            if !valid_name(&u.name) {
                return Err(format!("users[{i}].name: {:?} is not a user name", u.name));
            }
            if u.name == "root" || u.uid == 0 {
                return Err(format!("users[{i}]: root is the image's own"));
            }
            if let Some(h) = &u.home {
                if !clean_abs_path(h) {
                    return Err(format!(
                        "users[{i}].home: {h:?} is not a clean absolute path"
                    ));
                }
            }
            if let Some(s) = &u.shell {
                if !clean_abs_path(s) {
                    return Err(format!(
                        "users[{i}].shell: {s:?} is not a clean absolute path"
                    ));
                }
            }
            let ranges: Vec<(u32, u32)> = [u.subuid, u.subgid]
                .iter()
                .flatten()
                .map(|r| (r.start, r.count))
                .collect();
            if let Some(why) = super::containers::clashes_with_containers(u.uid, &u.name, &ranges) {
                return Err(format!("users[{i}]: {why}"));
            }
            for (field, r) in [("subuid", u.subuid), ("subgid", u.subgid)] {
                if let Some(r) = r {
                    if r.count == 0 || r.start.checked_add(r.count).is_none() {
                        return Err(format!(
                            "users[{i}].{field}: start {} count {} is not a range of ids",
                            r.start, r.count
                        ));
                    }
                }
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if !clean_abs_path(&f.path) || f.path.ends_with('/') {
                return Err(format!(
                    "files[{i}].path: {:?} is not a clean absolute file path",
                    f.path
                ));
            }
            if let Some(m) = &f.mode {
                if u32::from_str_radix(m, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .is_none()
                {
                    return Err(format!(
                        "files[{i}].mode: {m:?} is not octal permission bits"
                    ));
                }
            }
        }
        for k in self.sysctls.keys() {
            if k.is_empty()
                || !k.split(['.', '/']).all(|c| {
                    !c.is_empty()
                        && c != ".."
                        && c.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
            {
                return Err(format!("sysctls.{k}: not a kernel parameter name"));
            }
        }
        for (i, m) in self.kernel_modules.iter().enumerate() {
            if m.is_empty()
                || !m
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!("kernelModules[{i}]: {m:?} is not a module name"));
            }
        }
        super::containers::validate(&self.containers, &self.registries)?;
        super::extensions::validate(&self.extensions)?;
        if let Some(k) = &self.kubernetes {
            k.validate(self.hostname.as_deref())?;
        }
        Ok(())
    }
}

/// Parses `a.b.c.d/prefix` into (address, netmask).
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let (a, p) = s.split_once('/')?;
    let addr: Ipv4Addr = a.parse().ok()?;
    let prefix: u32 = p.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Some((addr, Ipv4Addr::from(mask)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "apiVersion": "plinth/v1",
        "hostname": "node-1",
        "network": "dhcp",
        "users": [{"name": "app", "uid": 1000, "subuid": {"start": 100000, "count": 65536}}],
        "files": [{"path": "/etc/motd", "contents": "hi\n", "mode": "0640", "uid": 1000}],
        "sysctls": {"net.ipv4.ip_forward": "1"}
    }"#;

    #[test]
    fn parses_and_refuses_by_field() {
        let c = MachineConfig::parse(GOOD.as_bytes()).expect("good config");
        assert_eq!(c.files[0].mode_bits(), 0o640);
        assert_eq!(c.users[0].home_dir(), "/home/app");
        let cases = [
            (GOOD.replace("\"hostname\"", "\"hostnam\""), "hostnam"),
            (GOOD.replace("plinth/v1", "plinth/v2"), "apiVersion"),
            (GOOD.replace("/etc/motd", "/etc/../motd"), "files[0].path"),
            (GOOD.replace("0640", "0999"), "files[0].mode"),
            (
                GOOD.replace("\"count\": 65536", "\"count\": 0"),
                "users[0].subuid",
            ),
            (GOOD.replace("net.ipv4.ip_forward", "net/../x"), "sysctls"),
            (GOOD.replace("node-1", "node_1!"), "hostname"),
            (
                GOOD.replace(
                    "\"network\": \"dhcp\"",
                    "\"network\": {\"static\": {\"address\": \"10.0.0.1\"}}",
                ),
                "network.static.address",
            ),
            (
                GOOD.replace(
                    "\"network\": \"dhcp\",",
                    "\"network\": \"dhcp\", \"extensions\": [{\"name\": \"../k\", \"sha256\": \"\"}],",
                ),
                "extensions[0].name",
            ),
            (
                GOOD.replace(
                    "\"network\": \"dhcp\",",
                    "\"network\": \"dhcp\", \"containers\": [{\"name\": \"Web\", \"image\": \"r.io/x:1\"}],",
                ),
                "containers[0].name",
            ),
            (
                GOOD.replace(
                    "\"network\": \"dhcp\",",
                    "\"network\": \"dhcp\", \"containers\": [{\"name\": \"web\", \"image\": \"r.io/x:1\", \"restart\": \"sometimes\"}],",
                ),
                "sometimes",
            ),
            (
                GOOD.replace(
                    "\"network\": \"dhcp\",",
                    "\"network\": \"dhcp\", \"containers\": [{\"name\": \"a\", \"image\": \"r.io/x:1\", \"ports\": [{\"containerPort\": 80}]}, {\"name\": \"b\", \"image\": \"r.io/x:1\", \"ports\": [{\"containerPort\": 8080, \"hostPort\": 80}]}],",
                ),
                "containers[1].ports[0].hostPort",
            ),
            (
                GOOD.replace("\"uid\": 1000, \"subuid\"", "\"uid\": 1000001, \"subuid\""),
                "containers' subordinate ids",
            ),
            (
                GOOD.replace("\"start\": 100000, \"count\": 65536", "\"start\": 899999, \"count\": 2"),
                "cover the containers' users",
            ),
        ];
        for (text, field) in cases {
            let err = MachineConfig::parse(text.as_bytes()).expect_err(field);
            assert!(err.contains(field), "{field}: {err}");
        }
        assert_eq!(
            parse_cidr("10.0.2.15/24"),
            Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(255, 255, 255, 0)))
        );
    }
}
