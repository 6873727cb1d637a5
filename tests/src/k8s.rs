//! A whole Kubernetes cluster driving `plinth`: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and one node (containerd 2 with `plinth` as the
//! runc v2 shim's runtime, kubelet, the CNI bridge), all built by `make k8s`, in a
//! network namespace of its own, every state directory under one temporary root.
//! Dropping the [`Cluster`] tears all of it down, also when a test fails: processes,
//! cgroups, mounts, the namespace and the host paths kubelet and containerd use whatever
//! their flags say.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{plinth_bin, text, unique, workspace};

/// The busybox image `make k8s-images` builds (Debian's busybox-static).
pub const BUSYBOX: &str = "plinth.test/busybox:1";
/// The pod sandbox image `make k8s-images` builds (tests/images/pause.c).
pub const PAUSE: &str = "plinth.test/pause:1";
/// The node's address, on an empty bridge in the cluster's namespace (this kernel has no
/// dummy netdev).
pub const NODE_IP: &str = "10.99.0.1";
/// The pods' subnet, on the CNI bridge.
pub const POD_SUBNET: &str = "10.244.0.0/24";
/// The runtime handler (containerd runtime name) that is runc, for side-by-side runs.
pub const RUNC_HANDLER: &str = "runc";

/// Where `make k8s` put the binaries and images (`PLINTH_K8S_DIR`, `PLINTH_K8S_IMAGES`).
pub fn k8s_dir() -> PathBuf {
    std::env::var_os("PLINTH_K8S_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/plinth/k8s")
        })
}

/// The directory holding the OCI archives of the images.
pub fn images_dir() -> PathBuf {
    std::env::var_os("PLINTH_K8S_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/k8s-images"))
}

/// The image archives `make k8s-images` builds.
pub const IMAGES: &[&str] = &["pause.oci.tar", "busybox.oci.tar", "web.oci.tar"];

/// The binaries a cluster needs.
pub const BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kubectl",
    "containerd",
    "containerd-shim-runc-v2",
    "ctr",
    "bridge",
    "host-local",
    "loopback",
    "portmap",
    "critest",
    "registry",
];

/// Why a cluster cannot start here, if it cannot (`make e2e` builds everything first).
pub fn missing() -> Option<String> {
    let bin = k8s_dir().join("bin");
    for b in BINARIES {
        if !bin.join(b).is_file() {
            return Some(format!(
                "{} is not built (`make k8s` builds it)",
                bin.join(b).display()
            ));
        }
    }
    for i in IMAGES {
        if !images_dir().join(i).is_file() {
            return Some(format!(
                "{} is not built (`make k8s` builds it)",
                images_dir().join(i).display()
            ));
        }
    }
    for t in ["nsenter", "unshare", "ip", "iptables", "openssl", "curl"] {
        if crate::which(t).is_none() {
            return Some(format!("{t} is not installed (mk/k8s.mk installs it)"));
        }
    }
    None
}

/// Paths kubelet, containerd and CNI use on the host whatever their flags; what was
/// there before the cluster started is left alone, what it added is removed.
const HOST_PATHS: &[&str] = &[
    "/var/lib/kubelet/device-plugins",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni/results",
    "/run/containerd/s",
];

struct HostPath {
    path: PathBuf,
    /// The topmost ancestor (or the path itself) that did not exist before.
    created: Option<PathBuf>,
    before: HashSet<OsString>,
}

/// One long-running component.
struct Proc {
    name: &'static str,
    argv: Vec<OsString>,
    child: Option<Child>,
}

/// A running cluster.
pub struct Cluster {
    /// The temporary root: every state directory, config and log is below it.
    pub root: PathBuf,
    /// The node's name.
    pub node: String,
    /// kubelet's `cgroupRoot`: pods' cgroups are below it in every hierarchy.
    pub cgroup_root: String,
    netns: PathBuf,
    procs: Vec<Proc>,
    host: Vec<HostPath>,
    /// A cluster a node joins by itself: a CA, Node and RBAC authorization, bootstrap
    /// tokens, kubelet's webhook authentication (see [`Cluster::start_for_join`]).
    secure: bool,
    /// The API server's address (its certificate's, `cluster-info`'s).
    ip: String,
    /// Whether the network namespace is the cluster's own (every process in it is
    /// stopped at the end) or another's it runs in.
    own_netns: bool,
}

fn bin(name: &str) -> PathBuf {
    k8s_dir().join("bin").join(name)
}

/// The cgroup mount points of this host (v1 hierarchies and the v2 one).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = mi
        .lines()
        .filter(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|r| r.starts_with("cgroup ") || r.starts_with("cgroup2 "))
        })
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Cluster {
    /// Starts the whole cluster and waits for the node to be Ready and the default
    /// service account to exist (pods are refused before).
    pub fn start() -> Cluster {
        let mut c = Cluster::empty();
        c.network();
        c.pki();
        c.write_configs();
        c.start_control_plane();
        c.spawn_node();
        c.wait_node_ready();
        c.wait(
            "the default service account",
            Duration::from_secs(120),
            |c| {
                c.kubectl(&["get", "serviceaccount", "default"])
                    .status
                    .success()
            },
        );
        c
    }

    /// containerd alone (its CRI plugin with plinth, and runc as the `runc` handler, and
    /// the CNI bridge), no kubelet, which would stop pods it does not know: what
    /// critest drives.
    pub fn containerd_only() -> Cluster {
        let mut c = Cluster::empty();
        c.network();
        c.write_configs();
        c.spawn_containerd();
        c
    }

    fn empty() -> Cluster {
        let name = unique("plinth-k8s");
        let root = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(root.join("logs")).unwrap();
        let host = HOST_PATHS
            .iter()
            .map(|p| {
                let path = PathBuf::from(p);
                let created = path
                    .ancestors()
                    .filter(|a| !a.exists())
                    .last()
                    .map(Path::to_path_buf);
                let before = std::fs::read_dir(&path)
                    .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default();
                HostPath {
                    path,
                    created,
                    before,
                }
            })
            .collect();
        Cluster {
            netns: root.join("netns"),
            node: "plinth-node".into(),
            cgroup_root: format!("/{name}"),
            root,
            procs: vec![],
            host,
            secure: false,
            ip: NODE_IP.into(),
            own_netns: true,
        }
    }

    /// A control plane that nodes join as kubeadm's do, and no node yet: its own CA
    /// (the API server's serving certificate, the kubelets' client and serving
    /// certificates signed by the controller-manager), `Node,RBAC` authorization and
    /// NodeRestriction, bootstrap tokens with `bootstrapsigner` and `tokencleaner`, what
    /// `kubeadm init` adds (`cluster-info` readable anonymously, the bootstrappers allowed
    /// to ask for certificates, none approved for them), and plinth-server's rights from
    /// `docs/kubernetes-rbac.yaml` for the user `plinth-server`
    /// (`pki/plinth-server.kubeconfig`).
    pub fn start_for_join() -> Cluster {
        let c = Cluster::empty();
        c.network();
        c.for_join()
    }

    /// [`Cluster::start_for_join`] in the network namespace `netns`, which another owns
    /// (the lab's provisioning host), the API server at `ip`:6443.
    pub fn start_for_join_in(netns: &Path, ip: &str) -> Cluster {
        let mut c = Cluster::empty();
        c.netns = netns.to_path_buf();
        c.own_netns = false;
        c.ip = ip.into();
        c.for_join()
    }

    fn for_join(mut self) -> Cluster {
        let c = &mut self;
        c.secure = true;
        c.pki();
        c.join_pki();
        c.write_configs();
        c.start_control_plane();
        c.kubeadm_init();
        self
    }

    /// The API server's URL.
    pub fn server_url(&self) -> String {
        format!("https://{}:6443", self.ip)
    }

    /// The cluster's CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.p("pki/ca.crt")).unwrap()
    }

    fn join_pki(&self) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            SanType,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "plinth-test-cluster-ca");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(p, ca_key);
        let write = |name: &str, text: String| {
            std::fs::write(self.p(&format!("pki/{name}")), text).unwrap()
        };
        write("ca.crt", ca_cert.pem());
        write("ca.key", issuer.key().serialize_pem());
        let leaf = |name: &str, cn: &str, org: Option<&str>, sans: Vec<SanType>, eku| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            if let Some(o) = org {
                p.distinguished_name.push(DnType::OrganizationName, o);
            }
            p.subject_alt_names = sans;
            p.extended_key_usages = vec![eku];
            let cert = p.signed_by(&key, &issuer).unwrap();
            write(&format!("{name}.crt"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        };
        let ip = |s: &str| SanType::IpAddress(s.parse().unwrap());
        leaf(
            "apiserver",
            "kube-apiserver",
            None,
            vec![
                ip("127.0.0.1"),
                ip(&self.ip),
                ip("10.96.0.1"),
                SanType::DnsName("kubernetes".try_into().unwrap()),
                SanType::DnsName("kubernetes.default.svc".try_into().unwrap()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        leaf(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        std::fs::write(
            self.p("pki/plinth-server.kubeconfig"),
            kubeconfig(
                "https://127.0.0.1:6443",
                &self.ca_pem(),
                "plinth-server-token",
            ),
        )
        .unwrap();
    }

    /// What `kubeadm init` leaves for joining nodes, and plinth-server's rights.
    fn kubeadm_init(&self) {
        use base64::Engine;
        let ca_data = base64::engine::general_purpose::STANDARD.encode(self.ca_pem());
        let info = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    \
             certificate-authority-data: {ca_data}\n    server: https://{ip}:6443\n\
             contexts: []\nusers: []\ncurrent-context: \"\"\n",
            ip = self.ip
        );
        self.apply(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cluster-info", "namespace": "kube-public"},
            "data": {"kubeconfig": info},
        }));
        self.apply(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                       "resourceNames": ["cluster-info"], "verbs": ["get"]}],
        }));
        self.apply(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "kubeadm:bootstrap-signer-clusterinfo"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}],
        }));
        self.apply(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "kubeadm:kubelet-bootstrap"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:node-bootstrapper"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:bootstrappers"}],
        }));
        let rbac = crate::workspace().join("docs/kubernetes-rbac.yaml");
        self.kubectl_ok(&["apply", "-f", &rbac.to_string_lossy()]);
    }

    /// What a joining node's kubelet must be told of this host (its cgroups, paths and
    /// limits): this cluster's kubelet settings without those the node sets itself.
    pub fn kubelet_host_settings(&self) -> serde_json::Map<String, Value> {
        let text = std::fs::read_to_string(self.p("kubelet/config.yaml")).unwrap();
        let mut m: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
        for own in [
            "apiVersion",
            "kind",
            "authentication",
            "authorization",
            "serverTLSBootstrap",
            "rotateCertificates",
            "containerRuntimeEndpoint",
        ] {
            m.remove(own);
        }
        m
    }

    /// Starts containerd and a kubelet with `args` (a joining node's: its bootstrap
    /// kubeconfig, config, name and address).
    pub fn join_node(&mut self, args: &[String]) {
        for m in cgroup_mounts() {
            std::fs::create_dir_all(m.join(self.cgroup_root.trim_start_matches('/'))).unwrap();
        }
        self.spawn_containerd();
        let mut argv: Vec<OsString> = vec![bin("kubelet").into()];
        argv.extend(args.iter().map(OsString::from));
        self.spawn("kubelet", argv);
    }

    /// `kubectl` with `token` (a bootstrap token, say) instead of the admin's.
    pub fn kubectl_as(&self, token: &str, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with(&format!("--token={token}"), "", args, stdin)
    }

    /// `kubectl` with a client certificate and key in `pem` (kubelet's, say).
    pub fn kubectl_as_cert(&self, pem: &Path, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with(
            &format!("--client-certificate={}", pem.display()),
            &format!("--client-key={}", pem.display()),
            args,
            stdin,
        )
    }

    fn kubectl_with(&self, auth: &str, auth2: &str, args: &[&str], stdin: &str) -> Output {
        let mut cmd = self.in_netns(bin("kubectl"));
        cmd.args([
            "--server=https://127.0.0.1:6443",
            &format!("--certificate-authority={}", self.p("pki/ca.crt").display()),
            auth,
        ])
        .args(Some(auth2).filter(|a| !a.is_empty()))
        .args(args);
        with_stdin(&mut cmd, stdin)
    }

    /// Runs `f` on a thread inside the cluster's network namespace (sockets it opens are
    /// there: the API server, a server started in it).
    pub fn in_namespace<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = std::fs::File::open(&self.netns).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// The network namespace's file (for a server started in it).
    pub fn netns(&self) -> &Path {
        &self.netns
    }

    fn start_control_plane(&mut self) {
        let c = self;
        c.spawn(
            "etcd",
            vec![
                bin("etcd").into(),
                "--data-dir".into(),
                c.root.join("etcd").into(),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--log-level=warn".into(),
            ],
        );
        c.spawn_apiserver();
        c.wait("kube-apiserver /readyz", Duration::from_secs(120), |c| {
            c.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        c.spawn_controllers();
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// A command run inside the cluster's network namespace.
    pub fn in_netns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program);
        cmd
    }

    fn network(&self) {
        std::fs::write(&self.netns, "").unwrap();
        // A namespace kept by a bind mount on a file: `ip netns exec` would remount
        // /sys and hide the cgroup mounts from kubelet, nsenter leaves them be.
        must(
            Command::new("unshare")
                .arg(format!("--net={}", self.netns.display()))
                .arg("true"),
        );
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "plinth0", "type", "bridge"],
            vec!["addr", "add", &format!("{NODE_IP}/24"), "dev", "plinth0"],
            vec!["link", "set", "plinth0", "up"],
        ] {
            must(self.in_netns("ip").args(args));
        }
    }

    /// The service account signing key; every client authenticates with a static token
    /// (there is one node and no bootstrap to test here).
    fn pki(&self) {
        std::fs::create_dir_all(self.p("pki")).unwrap();
        must(
            Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                ])
                .arg(self.p("pki/sa.key")),
        );
        must(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(self.p("pki/sa.key"))
                .arg("-out")
                .arg(self.p("pki/sa.pub")),
        );
        let node = &self.node;
        std::fs::write(
            self.p("pki/tokens.csv"),
            format!(
                "admin-token,admin,1,\"system:masters\"\n\
                 cm-token,system:kube-controller-manager,2\n\
                 sched-token,system:kube-scheduler,3\n\
                 node-token,system:node:{node},4,\"system:nodes\"\n\
                 plinth-server-token,plinth-server,5\n"
            ),
        )
        .unwrap();
        for (who, token) in [
            ("admin", "admin-token"),
            ("controller-manager", "cm-token"),
            ("scheduler", "sched-token"),
            ("kubelet", "node-token"),
        ] {
            std::fs::write(
                self.p(&format!("pki/{who}.kubeconfig")),
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    \
                     server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
                     users:\n- name: u\n  user:\n    token: {token}\n\
                     contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
                     current-context: c\n"
                ),
            )
            .unwrap();
        }
    }

    fn write_configs(&self) {
        let r = &self.root;
        for d in [
            "cni/net.d",
            "cni/ipam",
            "cni/cache",
            "containerd",
            "kubelet",
            "pods-logs",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let cni = json!({
            "cniVersion": "1.0.0",
            "name": self.cni_network(),
            "plugins": [
                {
                    "type": "bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true, "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                        "dataDir": r.join("cni/ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(r.join("cni/net.d/10-plinth.conflist"), cni.to_string()).unwrap();
        // restrict_oom_score_adj: kubelet asks -998 for sandboxes and lowering it needs
        // CAP_SYS_RESOURCE, which this machine lacks. netns_mounts_under_state_dir keeps
        // the pods' network namespaces below our root instead of /var/run/netns.
        let config = format!(
            r#"version = 3
root = "{r}/containerd/root"
state = "{r}/containerd/state"
[grpc]
  address = "{r}/containerd/containerd.sock"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE}"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "plinth"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.plinth]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.plinth.options]
        BinaryName = "{plinth}"
        Root = "{r}/plinth"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.{RUNC_HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.{RUNC_HANDLER}.options]
        BinaryName = "{runc}"
        Root = "{r}/runc"
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{bin}"]
    conf_dir = "{r}/cni/net.d"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
"#,
            r = r.display(),
            plinth = plinth_bin().display(),
            runc = crate::which("runc")
                .unwrap_or_else(|| "/usr/sbin/runc".into())
                .display(),
            bin = k8s_dir().join("bin").display(),
        );
        std::fs::write(r.join("containerd/config.toml"), config).unwrap();
        let kubelet = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // This host's cgroups are hybrid (controllers on v1), which kubelet refuses
            // by default; and it cannot lower its own oom_score_adj here.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup_root,
            "oomScoreAdj": 0,
            "failSwapOn": false,
            "address": NODE_IP,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "authentication": if self.secure {
                json!({"anonymous": {"enabled": false}, "webhook": {"enabled": true},
                       "x509": {"clientCAFile": r.join("pki/ca.crt")}})
            } else {
                json!({"anonymous": {"enabled": true}, "webhook": {"enabled": false}})
            },
            "authorization": {"mode": if self.secure { "Webhook" } else { "AlwaysAllow" }},
            "serverTLSBootstrap": self.secure,
            "rotateCertificates": self.secure,
            "containerRuntimeEndpoint": format!("unix://{}", self.containerd_socket().display()),
            "podLogsDir": r.join("pods-logs"),
            "resolvConf": "",
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "syncFrequency": "5s",
            "fileCheckFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
        });
        std::fs::write(r.join("kubelet/config.yaml"), kubelet.to_string()).unwrap();
    }

    /// The CNI network's name, unique to this cluster (CNI's result cache is on the host).
    pub fn cni_network(&self) -> String {
        self.root
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.p("containerd/containerd.sock")
    }

    fn spawn(&mut self, name: &'static str, argv: Vec<OsString>) {
        let mut p = Proc {
            name,
            argv,
            child: None,
        };
        self.launch(&mut p);
        self.procs.push(p);
    }

    fn launch(&self, p: &mut Proc) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.p(&format!("logs/{}.log", p.name)))
            .unwrap();
        let mut cmd = self.in_netns(&p.argv[0]);
        crate::without_etcd_env(&mut cmd);
        // containerd looks for containerd-shim-runc-v2 on PATH: ours comes first.
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.args(&p.argv[1..])
            .env(
                "PATH",
                format!("{}:{path}", k8s_dir().join("bin").display()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        p.child = Some(cmd.spawn().unwrap());
    }

    fn spawn_apiserver(&mut self) {
        let r = self.root.clone();
        let pki = |f: &str| -> OsString { r.join("pki").join(f).into() };
        let mut argv: Vec<OsString> = vec![bin("kube-apiserver").into()];
        for (k, v) in [
            ("--etcd-servers", "http://127.0.0.1:2379".into()),
            ("--secure-port", "6443".into()),
            ("--advertise-address", self.ip.clone().into()),
            ("--cert-dir", r.join("apiserver").into()),
            ("--service-cluster-ip-range", "10.96.0.0/16".into()),
            (
                "--service-account-issuer",
                "https://kubernetes.default.svc".into(),
            ),
            ("--service-account-key-file", pki("sa.pub")),
            ("--service-account-signing-key-file", pki("sa.key")),
            ("--token-auth-file", pki("tokens.csv")),
            ("--allow-privileged", "true".into()),
            // The node's name resolves nowhere: the apiserver reaches kubelet (logs,
            // exec) at the node's address.
            ("--kubelet-preferred-address-types", "InternalIP".into()),
        ] {
            let mut a = OsString::from(format!("{k}="));
            a.push(v);
            argv.push(a);
        }
        if self.secure {
            for (k, v) in [
                ("--authorization-mode", OsString::from("Node,RBAC")),
                ("--client-ca-file", pki("ca.crt")),
                ("--tls-cert-file", pki("apiserver.crt")),
                ("--tls-private-key-file", pki("apiserver.key")),
                ("--enable-bootstrap-token-auth", "true".into()),
                ("--enable-admission-plugins", "NodeRestriction".into()),
                (
                    "--kubelet-client-certificate",
                    pki("apiserver-kubelet-client.crt"),
                ),
                ("--kubelet-client-key", pki("apiserver-kubelet-client.key")),
                // kubelet's serving certificate is checked: the one plinth-server
                // approved, signed by the controller-manager.
                ("--kubelet-certificate-authority", pki("ca.crt")),
            ] {
                argv.push(flag(k, v));
            }
        } else {
            argv.push("--authorization-mode=AlwaysAllow".into());
        }
        self.spawn("kube-apiserver", argv);
    }

    fn spawn_controllers(&mut self) {
        let r = self.root.clone();
        let mut cm: Vec<OsString> = vec![bin("kube-controller-manager").into()];
        cm.push(flag(
            "--kubeconfig",
            r.join("pki/controller-manager.kubeconfig"),
        ));
        cm.push(flag(
            "--service-account-private-key-file",
            r.join("pki/sa.key"),
        ));
        cm.push("--leader-elect=false".into());
        cm.push("--bind-address=127.0.0.1".into());
        if self.secure {
            cm.push("--controllers=*,bootstrapsigner,tokencleaner".into());
            cm.push("--use-service-account-credentials=true".into());
            cm.push(flag("--cluster-signing-cert-file", r.join("pki/ca.crt")));
            cm.push(flag("--cluster-signing-key-file", r.join("pki/ca.key")));
            cm.push(flag("--root-ca-file", r.join("pki/ca.crt")));
        }
        self.spawn("kube-controller-manager", cm);
        let sched: Vec<OsString> = vec![
            bin("kube-scheduler").into(),
            flag("--kubeconfig", r.join("pki/scheduler.kubeconfig")),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
        ];
        self.spawn("kube-scheduler", sched);
    }

    fn spawn_containerd(&mut self) {
        let r = self.root.clone();
        self.spawn(
            "containerd",
            vec![
                bin("containerd").into(),
                flag("--config", r.join("containerd/config.toml")),
            ],
        );
        self.wait("containerd", Duration::from_secs(60), |c| {
            c.ctr(&["version"]).status.success()
        });
        for img in IMAGES {
            let o = self.ctr(&[
                OsString::from("images"),
                "import".into(),
                images_dir().join(img).into(),
            ]);
            assert!(o.status.success(), "ctr images import {img}: {o:?}");
        }
    }

    fn spawn_node(&mut self) {
        let r = self.root.clone();
        // kubelet wants its cgroupRoot to exist in every hierarchy; teardown removes it.
        for m in cgroup_mounts() {
            std::fs::create_dir_all(m.join(self.cgroup_root.trim_start_matches('/'))).unwrap();
        }
        self.spawn_containerd();
        self.spawn(
            "kubelet",
            vec![
                bin("kubelet").into(),
                flag("--config", r.join("kubelet/config.yaml")),
                flag("--kubeconfig", r.join("pki/kubelet.kubeconfig")),
                flag("--root-dir", r.join("kubelet")),
                flag("--cert-dir", r.join("kubelet/pki")),
                OsString::from(format!("--hostname-override={}", self.node)),
                OsString::from(format!("--node-ip={NODE_IP}")),
            ],
        );
    }

    /// `ctr` in containerd's `k8s.io` namespace (CRI's).
    pub fn ctr<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        self.in_netns(bin("ctr"))
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `plinth` with the state root containerd's shim gives it (namespace `k8s.io`).
    pub fn plinth(&self, args: &[&str]) -> Output {
        Command::new(plinth_bin())
            .arg("--root")
            .arg(self.p("plinth/k8s.io"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts a registry (CNCF distribution) on 127.0.0.1:5000 in the namespace and
    /// pushes the project's images there as `localhost:5000/plinth/<name>:1`: critest
    /// pulls every image it runs, and no other registry is reachable.
    pub fn start_registry(&mut self) {
        let r = self.root.clone();
        std::fs::write(
            r.join("registry.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
                r.join("registry").display()
            ),
        )
        .unwrap();
        self.spawn(
            "registry",
            vec![
                bin("registry").into(),
                "serve".into(),
                r.join("registry.yml").into(),
            ],
        );
        self.wait("the registry", Duration::from_secs(60), |c| {
            c.in_netns("curl")
                .args(["-sf", "http://127.0.0.1:5000/v2/"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        for name in ["busybox", "web"] {
            let (from, to) = (format!("plinth.test/{name}:1"), registry_image(name));
            for args in [
                vec!["images", "tag", &from, &to],
                vec!["images", "push", "--plain-http", &to],
            ] {
                let o = self.ctr(&args);
                assert!(o.status.success(), "ctr {args:?}: {o:?}");
            }
        }
    }

    /// Waits until the node reports Ready.
    pub fn wait_node_ready(&self) {
        let node = self.node.clone();
        self.wait("the node to be Ready", Duration::from_secs(180), |c| {
            let o = c.kubectl(&[
                "get",
                "node",
                &node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "True"
        });
    }

    /// Polls `ok` every half second until it holds; panics after `limit`, naming `what`.
    pub fn wait(&self, what: &str, limit: Duration, mut ok: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if ok(self) {
                return;
            }
            for p in &self.procs {
                assert!(
                    p.child.is_none() || self.alive(p),
                    "{} exited while waiting for {what}",
                    p.name
                );
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn alive(&self, p: &Proc) -> bool {
        p.child
            .as_ref()
            .is_some_and(|c| Path::new(&format!("/proc/{}/stat", c.id())).exists())
            && !std::fs::read_to_string(format!("/proc/{}/stat", p.child.as_ref().unwrap().id()))
                .unwrap_or_default()
                .contains(") Z ")
    }

    /// `kubectl` as the cluster's admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A `kubectl` command as the cluster's admin, to add arguments and stdin to.
    pub fn kubectl_cmd(&self) -> Command {
        let mut c = self.in_netns(bin("kubectl"));
        c.arg("--kubeconfig").arg(self.p("pki/admin.kubeconfig"));
        c
    }

    /// `kubectl` that must succeed; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        let (code, out, err) = text(&o);
        assert_eq!(code, 0, "kubectl {args:?}: {out}{err}");
        out
    }

    /// `kubectl apply` of one object.
    pub fn apply(&self, object: &Value) {
        let mut cmd = self.kubectl_cmd();
        cmd.args(["apply", "-f", "-"]);
        let o = with_stdin(&mut cmd, &object.to_string());
        let (code, out, err) = text(&o);
        assert_eq!(code, 0, "kubectl apply {object}: {out}{err}");
    }

    /// A pod as JSON.
    pub fn pod(&self, name: &str) -> Value {
        serde_json::from_str(&self.kubectl_ok(&["get", "pod", name, "-o", "json"])).unwrap()
    }

    /// Waits for a pod's phase (Running, Succeeded, ...).
    pub fn wait_phase(&self, name: &str, phase: &str) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let o = self.kubectl(&["get", "pod", name, "-o", "json"]);
            if o.status.success() {
                last = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
                if last["status"]["phase"] == phase {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let events = self.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name}"),
        ]);
        panic!(
            "pod {name} is not {phase}: {}\nevents: {}",
            last["status"],
            String::from_utf8_lossy(&events.stdout)
        );
    }

    /// Deletes a pod and waits until it is gone from the API.
    pub fn delete_pod(&self, name: &str) {
        self.kubectl_ok(&["delete", "pod", name, "--wait=true", "--timeout=120s"]);
    }

    /// The runtime's container id of a pod's container (`containerd://<id>` stripped).
    pub fn container_id(pod: &Value, container: usize) -> String {
        pod["status"]["containerStatuses"][container]["containerID"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("containerd://")
            .to_string()
    }

    /// The cgroup directories below kubelet's `cgroupRoot` whose path contains `part`.
    pub fn cgroups_matching(&self, part: &str) -> Vec<PathBuf> {
        let mut out = vec![];
        for m in cgroup_mounts() {
            walk_dirs(
                &m.join(self.cgroup_root.trim_start_matches('/')),
                &mut |d| {
                    if d.to_string_lossy().contains(part) {
                        out.push(d.to_path_buf());
                    }
                },
            );
        }
        out
    }

    /// Host mount points whose path contains `part`.
    pub fn mounts_matching(part: &str) -> Vec<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.contains(part))
            .map(str::to_string)
            .collect()
    }

    /// Stops a component (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self, name: &str) {
        let i = self.procs.iter().position(|p| p.name == name).unwrap();
        if let Some(mut child) = self.procs[i].child.take() {
            stop_child(&mut child);
        }
    }

    /// Starts a stopped component again, with the arguments it had.
    pub fn restart(&mut self, name: &str) {
        let i = self.procs.iter().position(|p| p.name == name).unwrap();
        let mut p = std::mem::replace(
            &mut self.procs[i],
            Proc {
                name: "",
                argv: vec![],
                child: None,
            },
        );
        self.launch(&mut p);
        self.procs[i] = p;
    }

    /// The tail of every component's log, for a failing test's output.
    fn dump_logs(&self) {
        for p in &self.procs {
            let log = std::fs::read_to_string(self.p(&format!("logs/{}.log", p.name)))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("==== {} (last 40 lines) ====", p.name);
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }

    fn teardown(&mut self) {
        // kubelet first, so nothing restarts what goes next.
        for name in [
            "kubelet",
            "containerd",
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
            "registry",
        ] {
            if let Some(p) = self.procs.iter_mut().find(|p| p.name == name) {
                if let Some(mut child) = p.child.take() {
                    stop_child(&mut child);
                }
            }
        }
        // The pods' processes, wherever their runtime put them: every cgroup below our
        // root, then whatever is left in our namespace, then the shims (which name our
        // containerd socket on their command line).
        for _ in 0..20 {
            let mut pids = vec![];
            for m in cgroup_mounts() {
                walk_dirs(
                    &m.join(self.cgroup_root.trim_start_matches('/')),
                    &mut |d| {
                        let procs =
                            std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                    },
                );
            }
            if self.own_netns {
                pids.extend(pids_in_netns(&self.netns));
            }
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        crate::engines::kill_matching(&self.root.to_string_lossy());
        std::thread::sleep(Duration::from_millis(200));
        for m in cgroup_mounts() {
            let top = m.join(self.cgroup_root.trim_start_matches('/'));
            let mut dirs = vec![];
            walk_dirs(&top, &mut |d| dirs.push(d.to_path_buf()));
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                for _ in 0..10 {
                    if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let mut points: Vec<String> = Self::mounts_matching(&self.root.to_string_lossy());
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        for h in &self.host {
            if let Some(top) = &h.created {
                let _ = std::fs::remove_dir_all(top);
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&h.path) else {
                continue;
            };
            for e in rd.flatten() {
                if h.before.contains(&e.file_name()) {
                    continue;
                }
                if self.ours(&e.path()) {
                    let _ = std::fs::remove_file(e.path())
                        .or_else(|_| std::fs::remove_dir_all(e.path()));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }

    /// Whether a host path entry that appeared during the run is this cluster's: a link
    /// into our root, a name carrying our CNI network or pod logs of ours, or a socket
    /// nobody listens on any more.
    fn ours(&self, p: &Path) -> bool {
        if let Ok(t) = std::fs::read_link(p) {
            return t.starts_with(&self.root);
        }
        if p.to_string_lossy().contains(&self.cni_network()) {
            return true;
        }
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_socket() => {
                std::os::unix::net::UnixStream::connect(p).is_err()
            }
            _ => false,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        self.teardown();
    }
}

/// A kubeconfig for `server`, trusting `ca_pem`, with a bearer `token`.
pub fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    \
         server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: u\n  user:\n    token: {token}\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
         current-context: c\n"
    )
}

/// Runs `cmd` with `stdin` as its input; its output.
fn with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn flag(name: &str, value: impl Into<OsString>) -> OsString {
    let mut a = OsString::from(format!("{name}="));
    a.push(value.into());
    a
}

fn must(cmd: &mut Command) {
    let o = cmd.stdin(Stdio::null()).output().unwrap();
    let (code, out, err) = text(&o);
    assert_eq!(code, 0, "{cmd:?}: {out}{err}");
}

fn stop_child(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Every directory at and below `top`, parents first.
fn walk_dirs(top: &Path, f: &mut dyn FnMut(&Path)) {
    if !top.is_dir() {
        return;
    }
    f(top);
    if let Ok(rd) = std::fs::read_dir(top) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk_dirs(&e.path(), f);
            }
        }
    }
}

/// The processes whose network namespace is the one bound on `netns`.
fn pids_in_netns(netns: &Path) -> Vec<i32> {
    let Ok(ns) = std::fs::metadata(netns) else {
        return vec![];
    };
    // A plain file (the bind mount gone) has another device than nsfs.
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
        })
        .collect()
}

/// The name an image of the project has in the test registry.
pub fn registry_image(name: &str) -> String {
    format!("localhost:5000/plinth/{name}:1")
}

/// A cgroup file of process `pid` in `controller`'s hierarchy (v1), or in the unified
/// one when the host is pure v2 (`v2_file` there).
pub fn cgroup_file(pid: i64, controller: &str, v1_file: &str, v2_file: &str) -> PathBuf {
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let pure_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or("/"));
        let path = path.trim_start_matches('/');
        if pure_v2 && ctrls.is_empty() {
            return Path::new("/sys/fs/cgroup").join(path).join(v2_file);
        }
        if ctrls.split(',').any(|c| c == controller) {
            return Path::new("/sys/fs/cgroup")
                .join(ctrls)
                .join(path)
                .join(v1_file);
        }
    }
    panic!("process {pid} has no {controller} cgroup: {own}");
}
