//! The files containerd starts from on a joining node: its config (CRI with `plinth` as
//! the runc v2 shim's runtime, the pause image, the CNI directories), the CNI network
//! (a bridge over the config's pod subnet, host-local addresses; no host ports, whose
//! iptables matches need modules the image does not load), and a
//! `hosts.toml` for each registry the config reaches over plain HTTP or with its own CA,
//! the way the node's own containers reach them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::Result;
use crate::schema::config::parse_cidr;
use crate::schema::containers::Registry;
use crate::schema::kubernetes::Kubernetes;

/// Where containerd's files are.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `config.toml`.
    pub config: PathBuf,
    /// Its persistent root (images, snapshots): memory on a diskless node.
    pub root: PathBuf,
    /// Its state (sockets, the shims' bundles).
    pub state: PathBuf,
    /// The CRI socket kubelet talks to.
    pub socket: PathBuf,
    /// `hosts.toml` per registry.
    pub certs_dir: PathBuf,
    /// The CNI plugins (from an extension).
    pub cni_bin: PathBuf,
    /// The CNI network configs.
    pub cni_conf: PathBuf,
    /// host-local's address records.
    pub cni_ipam: PathBuf,
    /// The OCI runtime the shim runs.
    pub runtime: PathBuf,
}

impl Layout {
    /// The node image's paths.
    pub fn node() -> Layout {
        Layout {
            config: "/etc/containerd/config.toml".into(),
            root: "/var/lib/containerd".into(),
            state: "/run/containerd".into(),
            socket: "/run/containerd/containerd.sock".into(),
            certs_dir: "/etc/containerd/certs.d".into(),
            cni_bin: "/opt/cni/bin".into(),
            cni_conf: "/etc/cni/net.d".into(),
            cni_ipam: "/var/lib/cni/networks".into(),
            runtime: "/usr/bin/plinth".into(),
        }
    }
}

/// containerd's `config.toml`.
pub fn config(k: &Kubernetes, l: &Layout) -> String {
    // Every value below is a path of ours or the validated sandbox image (no quote, no
    // whitespace): nothing needs TOML escaping.
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{sandbox}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{certs}"
[plugins.'io.containerd.cri.v1.runtime']
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "plinth"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.plinth]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.plinth.options]
        BinaryName = "{runtime}"
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
"#,
        root = l.root.display(),
        state = l.state.display(),
        socket = l.socket.display(),
        sandbox = k.sandbox_image(),
        certs = l.certs_dir.display(),
        runtime = l.runtime.display(),
        cni_bin = l.cni_bin.display(),
        cni_conf = l.cni_conf.display(),
    )
}

/// The CNI network: a bridge with the pod subnet's first address as the pods' gateway,
/// masquerading what leaves it.
pub fn cni(k: &Kubernetes, l: &Layout) -> String {
    let gateway = parse_cidr(k.pod_subnet())
        .map(|(a, _)| Ipv4Addr::from(u32::from(a) + 1).to_string())
        .unwrap_or_default();
    json!({
        "cniVersion": "1.0.0",
        "name": "plinth-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": k.pod_subnet(), "gateway": gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": l.cni_ipam,
                },
            },
        ],
    })
    .to_string()
}

/// `hosts.toml` per registry the config reaches over plain HTTP or with its own CA:
/// (its directory under `certs_dir`, the file, the CA's PEM when it has one).
pub fn registry_hosts(
    registries: &[Registry],
    l: &Layout,
) -> Vec<(PathBuf, String, Option<String>)> {
    registries
        .iter()
        .filter(|r| r.insecure || r.ca.is_some())
        .map(|r| {
            let dir = l.certs_dir.join(&r.host);
            let scheme = if r.insecure { "http" } else { "https" };
            let mut text = format!(
                "server = \"{scheme}://{h}\"\n[host.\"{scheme}://{h}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                h = r.host
            );
            if r.ca.is_some() {
                text.push_str(&format!("  ca = \"{}\"\n", dir.join("ca.crt").display()));
            }
            (dir, text, r.ca.clone())
        })
        .collect()
}

/// Writes containerd's config, the CNI network and the registries' hosts files.
pub fn write(k: &Kubernetes, registries: &[Registry], l: &Layout) -> Result<()> {
    let w = |path: &Path, text: &str, mode: u32| {
        crate::node::apply::write_file(path, text.as_bytes(), mode, 0, 0).map(|_| ())
    };
    w(&l.config, &config(k, l), 0o644)?;
    w(
        &l.cni_conf.join("10-plinth-pods.conflist"),
        &cni(k, l),
        0o644,
    )?;
    for (dir, hosts, ca) in registry_hosts(registries, l) {
        w(&dir.join("hosts.toml"), &hosts, 0o644)?;
        if let Some(ca) = ca {
            w(&dir.join("ca.crt"), &ca, 0o644)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> Kubernetes {
        serde_json::from_value(json!({
            "server": "https://10.0.0.1:6443",
            "caCertHashes": [format!("sha256:{}", "a".repeat(64))],
            "podSubnet": "10.50.3.0/24",
            "sandboxImage": "10.33.0.2:5000/pause:1",
        }))
        .expect("parse")
    }

    #[test]
    fn containerd_runs_plinth_with_the_configs_sandbox_and_pod_subnet() {
        let l = Layout::node();
        let c = config(&k(), &l);
        assert!(c.contains("BinaryName = \"/usr/bin/plinth\""), "{c}");
        assert!(c.contains("sandbox = \"10.33.0.2:5000/pause:1\""), "{c}");
        assert!(c.contains("default_runtime_name = \"plinth\""), "{c}");
        let n: serde_json::Value = serde_json::from_str(&cni(&k(), &l)).expect("json");
        let range = &n["plugins"][0]["ipam"]["ranges"][0][0];
        assert_eq!(range["subnet"], "10.50.3.0/24");
        assert_eq!(range["gateway"], "10.50.3.1");
        let regs: Vec<Registry> = serde_json::from_value(json!([
            {"host": "10.33.0.2:5000", "insecure": true},
            {"host": "r.example", "ca": "PEM"},
            {"host": "public.example"},
        ]))
        .expect("registries");
        let hosts = registry_hosts(&regs, &l);
        assert_eq!(hosts.len(), 2);
        assert_eq!(
            hosts[0].0,
            Path::new("/etc/containerd/certs.d/10.33.0.2:5000")
        );
        assert!(
            hosts[0].1.starts_with("server = \"http://10.33.0.2:5000\""),
            "{}",
            hosts[0].1
        );
        assert!(hosts[1]
            .1
            .contains("ca = \"/etc/containerd/certs.d/r.example/ca.crt\""));
        assert_eq!(hosts[1].2.as_deref(), Some("PEM"));
    }
}
