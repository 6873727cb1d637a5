//! A real OCI registry for the tests and the demo: Debian's docker-registry (the CNCF
//! distribution registry) on a loopback port of its own, plain HTTP, its storage in a
//! temporary directory; images pushed into it with skopeo from an OCI layout.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::etcd::free_ports;
use crate::TempDir;

/// A registry on `127.0.0.1:PORT` (or an address in a network namespace), killed (and
/// its storage removed) when dropped.
pub struct Registry {
    child: Child,
    /// `ADDRESS:PORT`.
    pub addr: String,
    dir: TempDir,
    /// The network namespace it listens in, if not this one.
    netns: Option<std::path::PathBuf>,
}

impl Registry {
    /// Starts one, or skips `test` (None) when docker-registry or skopeo is missing.
    pub fn start(test: &str) -> Option<Registry> {
        let [port] = free_ports();
        Registry::start_at(test, None, &format!("127.0.0.1:{port}"))
    }

    /// Starts one listening on `addr` in the network namespace `netns` (a lab's
    /// provisioning host), or skips `test`.
    pub fn start_at(test: &str, netns: Option<&Path>, addr: &str) -> Option<Registry> {
        for (tool, package) in [("docker-registry", "docker-registry"), ("skopeo", "skopeo")] {
            if crate::which(tool).is_none() {
                crate::skip(
                    test,
                    &format!("{tool} is not installed (make deps installs {package})"),
                );
                return None;
            }
        }
        let dir = TempDir::new("plinth-registry");
        let addr = addr.to_string();
        let config = dir.0.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.0.join("data").display()
            ),
        )
        .unwrap();
        let child = crate::in_netns(netns, "docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let mut r = Registry {
            child,
            addr,
            dir,
            netns: netns.map(Path::to_path_buf),
        };
        let start = Instant::now();
        while !r.listening() {
            let log = std::fs::read_to_string(r.dir.0.join("registry.log")).unwrap_or_default();
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("docker-registry ended ({status}): {log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen on {}: {log}",
                r.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(r)
    }

    /// Whether it takes connections (tried from its namespace).
    fn listening(&self) -> bool {
        match &self.netns {
            None => std::net::TcpStream::connect(&self.addr).is_ok(),
            Some(ns) => {
                let (host, port) = self.addr.rsplit_once(':').unwrap();
                crate::in_netns(Some(ns), "bash")
                    .arg("-c")
                    .arg(format!("exec 3<>/dev/tcp/{host}/{port}"))
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            }
        }
    }

    /// Pushes the OCI layout `layout`'s image tagged `tag` as `name` (`repo:tag`) with
    /// skopeo; the reference to pull it by.
    pub fn push(&self, layout: &Path, tag: &str, name: &str) -> String {
        self.copy(format!("oci:{}:{tag}", layout.display()), name)
    }

    /// Pushes the image of the OCI archive `archive` (`make k8s-images` builds them) as
    /// `name` (`repo:tag`) with skopeo; the reference to pull it by.
    pub fn push_archive(&self, archive: &Path, name: &str) -> String {
        self.copy(format!("oci-archive:{}", archive.display()), name)
    }

    /// skopeo copy of `source` (a skopeo transport:reference) to `name` here.
    fn copy(&self, source: String, name: &str) -> String {
        let reference = format!("{}/{name}", self.addr);
        let out = crate::in_netns(self.netns.as_deref(), "skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(&source)
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy {source} to {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        reference
    }
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Writes `bytes` as a blob of the layout; its descriptor.
fn blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let hex = sha256(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// Writes an OCI image layout at `layout` holding one image tagged `tag`: Debian's
/// static busybox, serving `page` as `/www/index.html` with `busybox httpd` on port
/// 8080 (its entrypoint). One gzip layer, made here.
pub fn demo_layout(layout: &Path, tag: &str, page: &str) {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: `make deps` installs busybox-static");
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8], dir: bool| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        tar.append_data(&mut h, path, data).unwrap();
    };
    for d in ["bin", "www", "etc", "proc", "sys", "dev", "tmp"] {
        add(&format!("{d}/"), 0o755, b"", true);
    }
    add("bin/busybox", 0o755, &std::fs::read(bb).unwrap(), false);
    add("www/index.html", 0o644, page.as_bytes(), false);
    add(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/:/bin/sh\nwww:x:1000:1000:www:/www:/bin/sh\n",
        false,
    );
    add("etc/group", 0o644, b"root:x:0:\nwww:x:1000:\n", false);
    let plain = tar.into_inner().unwrap();
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let layer = blob(
        layout,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &gz.finish().unwrap(),
    );
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
            "WorkingDir": "/www",
            "ExposedPorts": {"8080/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256(&plain))]}
    });
    let config = blob(
        layout,
        "application/vnd.oci.image.config.v1+json",
        config.to_string().as_bytes(),
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": [layer]
    });
    let mut manifest = blob(
        layout,
        "application/vnd.oci.image.manifest.v1+json",
        manifest.to_string().as_bytes(),
    );
    manifest["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
    manifest["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
}
