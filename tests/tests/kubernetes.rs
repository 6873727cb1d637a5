//! kubelet drives plinth: a real control plane and node (kubelet -> containerd 2 ->
//! containerd-shim-runc-v2 -> plinth), built by `make k8s`, in a network namespace of
//! its own. One cluster serves every check (bringing it up is most of the cost), so
//! the checks run in order in one test. Slow: `make e2e` runs it (`--ignored`).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Instant;

use plinth_tests::k8s::{Cluster, BUSYBOX};
use serde_json::{json, Value};

fn ready(test: &str) -> bool {
    if !plinth_tests::need_root(test) {
        return false;
    }
    if let Some(why) = plinth_tests::k8s::missing() {
        plinth_tests::skip(test, &why);
        return false;
    }
    true
}

/// A busybox pod running `script`, no service account token (nothing here needs one).
fn busybox_pod(name: &str, script: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": BUSYBOX,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
            }],
        },
    })
}

fn step(what: &str, t0: Instant) {
    println!("[{:>6.1} s] {what}", t0.elapsed().as_secs_f64());
}

/// A pod runs through plinth: Running, its log, exec with and without a terminal, and
/// its deletion leaves no cgroup, mount or runtime state behind.
fn pod_lifecycle(c: &Cluster, t0: Instant) {
    c.apply(&busybox_pod(
        "hello",
        "echo hello from plinth; exec sleep 3600",
    ));
    let pod = c.wait_phase("hello", "Running");
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let id = Cluster::container_id(&pod, 0);
    assert!(!id.is_empty(), "no container id: {}", pod["status"]);
    step("pod hello Running", t0);

    // The container is plinth's: its state is under the root containerd gave plinth.
    let o = c.plinth(&["state", &id]);
    assert!(o.status.success(), "plinth state {id}: {o:?}");
    let state: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(state["status"], "running", "{state}");
    let pid = state["pid"].as_i64().unwrap();
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&c.cgroup_root) && cgroup.contains(&uid),
        "container {pid} is not in the pod's cgroup below {}: {cgroup}",
        c.cgroup_root
    );

    let logs = c.kubectl_ok(&["logs", "hello"]);
    assert_eq!(logs.trim(), "hello from plinth", "kubectl logs");
    step("kubectl logs", t0);

    let out = c.kubectl_ok(&[
        "exec",
        "hello",
        "--",
        "sh",
        "-c",
        "echo exec:$$; cat /proc/1/cmdline | tr '\\0' ' '",
    ]);
    assert!(out.contains("exec:"), "exec output: {out:?}");
    assert!(
        out.contains("sleep 3600"),
        "exec sees the container's PID 1: {out:?}"
    );
    let o = c.kubectl(&["exec", "hello", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "exec's exit code: {o:?}");
    // With a terminal (kubectl asks for one only when its own stdin is a tty): the
    // process's stdin is a pty inside, and what it prints comes back through it.
    let cmd = c.kubectl_cmd();
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .chain(
            [
                "exec",
                "-i",
                "-t",
                "hello",
                "--",
                "sh",
                "-c",
                "'tty; [ -t 0 ] && echo has-tty'",
            ]
            .map(String::from),
        )
        .collect();
    let (code, shown) = plinth_tests::engines::in_terminal(&line.join(" "));
    assert_eq!(code, 0, "exec -t: {shown}");
    assert!(shown.contains("/dev/pts/"), "exec -t has no pty: {shown:?}");
    assert!(
        shown.contains("has-tty"),
        "exec -t: stdin is no tty: {shown:?}"
    );
    step("kubectl exec with and without a tty", t0);

    c.delete_pod("hello");
    step("pod hello deleted", t0);
    // kubelet removes the pod's cgroup after the API object is gone; give it a moment.
    c.wait(
        "the pod's cgroups to go",
        std::time::Duration::from_secs(60),
        |c| c.cgroups_matching(&uid).is_empty(),
    );
    let mounts = Cluster::mounts_matching(&id);
    assert!(mounts.is_empty(), "mounts left by {id}: {mounts:?}");
    let o = c.plinth(&["state", &id]);
    assert!(!o.status.success(), "plinth still knows {id}: {o:?}");
    let list = c.plinth(&["list", "-q"]);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&id),
        "plinth list still shows {id}"
    );
    step("no cgroup, mount or state left", t0);
}

/// The main container's runtime state (plinth's), by pod name.
fn plinth_state(c: &Cluster, pod: &str) -> Value {
    let id = Cluster::container_id(&c.pod(pod), 0);
    let o = c.plinth(&["state", &id]);
    assert!(o.status.success(), "plinth state {id} ({pod}): {o:?}");
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A `tty: true` container: its stdout is a terminal, and its log still reaches kubectl.
fn tty_container(c: &Cluster, t0: Instant) {
    let mut pod = busybox_pod(
        "tty",
        "[ -t 1 ] && echo stdout-is-a-tty; tty; exec sleep 3600",
    );
    pod["spec"]["containers"][0]["tty"] = json!(true);
    pod["spec"]["containers"][0]["stdin"] = json!(true);
    c.apply(&pod);
    c.wait_phase("tty", "Running");
    let mut logs = String::new();
    c.wait(
        "the tty container's log",
        std::time::Duration::from_secs(30),
        |c| {
            logs = String::from_utf8_lossy(&c.kubectl(&["logs", "tty"]).stdout).into_owned();
            logs.contains("/dev/pts/")
        },
    );
    assert!(logs.contains("stdout-is-a-tty"), "tty: true: {logs:?}");
    assert!(
        plinth_state(c, "tty")["status"] == "running",
        "the tty container is not plinth's"
    );
    c.delete_pod("tty");
    step("tty: true container", t0);
}

/// Guaranteed QoS: the limits kubelet asks for land in the container's cgroup.
fn guaranteed_limits(c: &Cluster, t0: Instant) {
    let mut pod = busybox_pod("guaranteed", "exec sleep 3600");
    let res = json!({"cpu": "250m", "memory": "48Mi"});
    pod["spec"]["containers"][0]["resources"] = json!({"requests": res, "limits": res});
    c.apply(&pod);
    let p = c.wait_phase("guaranteed", "Running");
    assert_eq!(p["status"]["qosClass"], "Guaranteed", "{}", p["status"]);
    let pid = plinth_state(c, "guaranteed")["pid"].as_i64().unwrap();
    let read = |ctrl: &str, v1: &str, v2: &str| {
        let f = plinth_tests::k8s::cgroup_file(pid, ctrl, v1, v2);
        std::fs::read_to_string(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .trim()
            .to_string()
    };
    let mem = read("memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(mem, (48u64 << 20).to_string(), "memory limit");
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(read("cpu", "", "cpu.max"), "25000 100000", "cpu.max");
    } else {
        assert_eq!(read("cpu", "cpu.cfs_quota_us", ""), "25000", "cpu quota");
        assert_eq!(read("cpu", "cpu.cfs_period_us", ""), "100000", "cpu period");
        // 250m of a CPU is 256 shares out of 1024.
        assert_eq!(read("cpu", "cpu.shares", ""), "256", "cpu shares");
    }
    c.delete_pod("guaranteed");
    step("Guaranteed QoS limits in the cgroup", t0);
}

/// A container that exits 3 is restarted, and its last state says 3.
fn restart_with_exit_code(c: &Cluster, t0: Instant) {
    c.apply(&busybox_pod("exits", "echo run; sleep 1; exit 3"));
    let mut last = Value::Null;
    c.wait(
        "a restart after exit 3",
        std::time::Duration::from_secs(120),
        |c| {
            last = c.pod("exits")["status"]["containerStatuses"][0].clone();
            last["restartCount"].as_u64().unwrap_or(0) >= 1
                && last["lastState"]["terminated"]["exitCode"] == 3
        },
    );
    assert_eq!(last["lastState"]["terminated"]["reason"], "Error", "{last}");
    c.delete_pod("exits");
    step("restart with exit code 3", t0);
}

/// An HTTP server in a pod, serving `body` at /index.html on port 80.
fn web_pod(name: &str, body: &str) -> Value {
    busybox_pod(
        name,
        &format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www"),
    )
}

/// `GET /index.html` over plain TCP from pod `from`; returns the body. nc, not wget:
/// Debian's static busybox wget crashes (SIGSEGV) on this host.
fn http_get(c: &Cluster, from: &str, host: &str, port: u16) -> String {
    let o = c.kubectl(&[
        "exec",
        from,
        "--",
        "sh",
        "-c",
        &format!("printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}"),
    ]);
    let (_, out, err) = plinth_tests::text(&o);
    assert!(
        out.starts_with("HTTP/1.") && out.contains(" 200 "),
        "GET http://{host}:{port}/index.html from {from}: {out:?} {err}"
    );
    out.rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// One pod reaches another over the CNI bridge, and a hostPort on the node's address
/// reaches the pod behind it (portmap's DNAT).
fn networking(c: &Cluster, t0: Instant) {
    let mut web = web_pod("web", "served-by-plinth");
    web["spec"]["containers"][0]["ports"] =
        json!([{"containerPort": 80, "hostPort": 8080, "protocol": "TCP"}]);
    c.apply(&web);
    c.apply(&busybox_pod("client", "exec sleep 3600"));
    let p = c.wait_phase("web", "Running");
    let ip = p["status"]["podIP"].as_str().unwrap().to_string();
    let cp = c.wait_phase("client", "Running");
    assert_ne!(
        cp["status"]["podIP"], p["status"]["podIP"],
        "two pods, one IP"
    );
    // httpd may not listen yet when the pod turns Running.
    c.wait(
        "httpd in pod web",
        std::time::Duration::from_secs(30),
        |c| {
            c.kubectl(&[
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                "netstat -ltn | grep -q ':80 '",
            ])
            .status
            .success()
        },
    );
    assert_eq!(
        http_get(c, "client", &ip, 80),
        "served-by-plinth",
        "pod to pod"
    );
    step("pod-to-pod traffic", t0);

    let node = plinth_tests::k8s::NODE_IP;
    assert_eq!(
        http_get(c, "client", node, 8080),
        "served-by-plinth",
        "via the hostPort"
    );
    step("hostPort", t0);
    c.delete_pod("client");
    c.delete_pod("web");
}

/// kubelet and containerd restart; the pod's container runs on untouched (same id,
/// same PID, no restart), and kubelet still reaches it.
fn node_restart(c: &mut Cluster, t0: Instant) {
    c.apply(&busybox_pod("survivor", "echo up; exec sleep 3600"));
    let before = c.wait_phase("survivor", "Running");
    let id = Cluster::container_id(&before, 0);
    let pid = plinth_state(c, "survivor")["pid"].as_i64().unwrap();
    c.stop("kubelet");
    c.stop("containerd");
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with containerd"
    );
    c.restart("containerd");
    c.wait("containerd back", std::time::Duration::from_secs(60), |c| {
        c.ctr(&["version"]).status.success()
    });
    c.restart("kubelet");
    c.wait_node_ready();
    // Ready can be the status from before the restart: wait for kubelet's own view.
    let mut status = Value::Null;
    c.wait(
        "kubelet to see the pod again",
        std::time::Duration::from_secs(90),
        |c| {
            status = c.pod("survivor")["status"]["containerStatuses"][0].clone();
            status["ready"] == true
                && c.kubectl(&["exec", "survivor", "--", "true"])
                    .status
                    .success()
        },
    );
    assert_eq!(Cluster::container_id(&c.pod("survivor"), 0), id, "{status}");
    assert_eq!(status["restartCount"], 0, "{status}");
    assert_eq!(plinth_state(c, "survivor")["pid"].as_i64().unwrap(), pid);
    c.delete_pod("survivor");
    step("kubelet + containerd restart, pod survives", t0);
}

/// `hostUsers: false`: the pod gets a user namespace of its own (root inside is not
/// root outside) and its volumes are idmapped. `handler` is the runtime class, None for
/// the node's default (plinth).
fn user_namespace(c: &Cluster, t0: Instant, name: &str, handler: Option<&str>) {
    let mut pod = busybox_pod(
        name,
        "cat /proc/self/uid_map; touch /data/f && stat -c owner=%u /data/f; exec sleep 3600",
    );
    pod["spec"]["hostUsers"] = json!(false);
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    if let Some(h) = handler {
        pod["spec"]["runtimeClassName"] = json!(h);
    }
    c.apply(&pod);
    c.wait_phase(name, "Running");
    let mut logs = String::new();
    c.wait(
        "the userns pod's log",
        std::time::Duration::from_secs(30),
        |c| {
            logs = String::from_utf8_lossy(&c.kubectl(&["logs", name]).stdout).into_owned();
            logs.contains("owner=")
        },
    );
    let map: Vec<u64> = logs
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    assert_eq!(map.len(), 3, "uid_map: {logs:?}");
    assert_eq!(map[0], 0, "uid_map: {logs:?}");
    assert_ne!(map[1], 0, "root in the pod is root on the host: {logs:?}");
    assert!(
        logs.contains("owner=0"),
        "the emptyDir is not idmapped: {logs:?}"
    );
    c.delete_pod(name);
    step(
        &format!("hostUsers: false under {}", handler.unwrap_or("plinth")),
        t0,
    );
}

/// What a Plinth node does before it powers off or reboots (plinth-init's
/// `node::cri::stop_pods`), against this node's containerd: with kubelet stopped, every
/// running container is stopped with its own pod's grace period, all at once, then
/// every sandbox. One pod takes 2 s to stop on SIGTERM (grace 20 s): it exits by itself;
/// one ignores SIGTERM (grace 1 s): it is killed when its grace is over.
fn node_shutdown(c: &mut Cluster, t0: Instant) {
    let mut polite = busybox_pod(
        "polite",
        "trap 'echo TERM; sleep 2; exit 0' TERM; echo up; while :; do sleep 1; done",
    );
    polite["spec"]["terminationGracePeriodSeconds"] = json!(20);
    c.apply(&polite);
    c.apply(&busybox_pod(
        "stubborn",
        "trap '' TERM; echo up; while :; do sleep 1; done",
    ));
    for pod in ["polite", "stubborn"] {
        c.wait_phase(pod, "Running");
        // "up" comes after the trap is set.
        c.wait("the pod's trap", std::time::Duration::from_secs(30), |c| {
            String::from_utf8_lossy(&c.kubectl(&["logs", pod]).stdout).contains("up")
        });
    }
    c.stop("kubelet");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = c.containerd_socket();
    let stop = |max: u64| {
        rt.block_on(plinth_provisioner::node::cri::stop_pods(
            &socket,
            std::time::Duration::from_secs(max),
        ))
        .unwrap()
    };
    let started = Instant::now();
    let stopped = stop(120);
    let took = started.elapsed();
    println!("{stopped:#?}");
    let find = |pod: &str| {
        stopped
            .containers
            .iter()
            .find(|x| x.pod == format!("default/{pod}") && x.container == "main")
            .unwrap_or_else(|| panic!("{pod} not stopped: {stopped:#?}"))
            .clone()
    };
    let polite = find("polite");
    assert_eq!(polite.grace_secs, 20, "{polite:?}");
    assert_eq!(
        polite.exit_code,
        Some(0),
        "it did not exit by itself: {polite:?}"
    );
    assert!(
        polite.took >= std::time::Duration::from_secs(2)
            && polite.took < std::time::Duration::from_secs(15),
        "{polite:?}"
    );
    let stubborn = find("stubborn");
    assert_eq!(stubborn.grace_secs, 1, "{stubborn:?}");
    assert_eq!(stubborn.exit_code, Some(137), "not killed: {stubborn:?}");
    assert!(
        stubborn.took >= std::time::Duration::from_secs(1),
        "killed before its grace was over: {stubborn:?}"
    );
    // At once, not one after the other: each asked to stop before the other ended.
    assert!(
        stubborn.began < polite.began + polite.took
            && polite.began < stubborn.began + stubborn.took,
        "{took:?} {stopped:#?}"
    );
    assert!(
        stopped.sandboxes >= 2 && stopped.errors.is_empty(),
        "{stopped:#?}"
    );
    // Nothing left running: a second pass finds nothing to stop.
    let again = stop(120);
    assert!(
        again.containers.is_empty() && again.sandboxes == 0,
        "{again:#?}"
    );
    c.restart("kubelet");
    c.wait_node_ready();
    c.delete_pod("polite");
    c.delete_pod("stubborn");
    step(
        &format!(
            "node shutdown: pods stopped through the CRI with their grace periods in {:.1} s",
            took.as_secs_f64()
        ),
        t0,
    );
}

#[test]
#[ignore = "slow (a whole Kubernetes cluster, about a minute): `make e2e` runs it"]
fn kubelet_runs_pods_through_plinth() {
    if !ready("kubelet_runs_pods_through_plinth") {
        return;
    }
    let t0 = Instant::now();
    let mut c = Cluster::start();
    step("cluster up, node Ready", t0);
    pod_lifecycle(&c, t0);
    tty_container(&c, t0);
    guaranteed_limits(&c, t0);
    restart_with_exit_code(&c, t0);
    networking(&c, t0);
    node_restart(&mut c, t0);
    node_shutdown(&mut c, t0);
}

#[test]
#[ignore = "slow (a whole Kubernetes cluster): `make e2e` runs it"]
fn kubelet_runs_user_namespaced_pods_through_plinth() {
    if !ready("kubelet_runs_user_namespaced_pods_through_plinth") {
        return;
    }
    let t0 = Instant::now();
    let c = Cluster::start();
    step("cluster up, node Ready", t0);
    // No runc beside it here: Debian's runc has no idmapped mounts, so kubelet refuses
    // it `hostUsers: false` pods ("does not support user namespaces").
    user_namespace(&c, t0, "userns", None);
}

/// A certificate request (PEM, base64 for `spec.request`) for `cn` in `system:nodes`.
fn node_csr(cn: &str) -> String {
    node_csr_with(cn, vec![])
}

/// [`node_csr`] with subject alternative names.
fn node_csr_with(cn: &str, sans: Vec<rcgen::SanType>) -> String {
    use base64::Engine;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.subject_alt_names = sans;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let pem = p.serialize_request(&key).unwrap().pem().unwrap();
    base64::engine::general_purpose::STANDARD.encode(pem)
}

/// As a node: reports its `address` in boot `boot`, then fetches its config.
fn network_then_config(
    client: &plinth_provisioner::node::client::Client,
    mac: &str,
    uuid: &str,
    boot: &str,
    address: &str,
) -> plinth_provisioner::schema::config::MachineConfig {
    use plinth_tests::server::{call, event, rt};
    let mut net = event(mac, uuid, "network");
    net["bootId"] = json!(boot);
    net["details"] = json!({"address": address, "interface": "eth0"});
    let (code, answer) = call(client, "POST", "/v1/events", Some(net));
    assert_eq!(code, 200, "{answer}");
    rt().block_on(client.call(
        "GET",
        "/v1/config",
        None::<&()>,
        std::time::Duration::from_secs(40),
    ))
    .unwrap()
}

/// The kubelet certificate requests of `signer`, as JSON.
fn csrs(c: &Cluster, signer: &str) -> Vec<Value> {
    let all: Value = serde_json::from_str(&c.kubectl_ok(&["get", "csr", "-o", "json"])).unwrap();
    all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["spec"]["signerName"] == signer)
        .cloned()
        .collect()
}

/// The condition a request was decided with: (type, reason, message).
fn decision(csr: &Value) -> Option<(String, String, String)> {
    let c = csr["status"]["conditions"].as_array()?.first()?;
    let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
    Some((s("type"), s("reason"), s("message")))
}

/// plinth-server's side of a join against a real control plane (Node and RBAC
/// authorization, bootstrap tokens, the controller-manager's bootstrapsigner and signer)
/// and a real kubelet: the config a machine fetches carries a bootstrap token the server
/// minted for it in `system:bootstrappers:plinth:<node>`; kubeadm's token discovery with
/// it (plinth's) finds the cluster and pins its CA, refusing a wrong pin and an unknown
/// token by name; kubelet bootstraps with it, and the server approves its client and
/// serving certificates (nothing else would: kubeadm's auto-approval is not bound), so
/// the node is Ready and the API server reaches it (logs, exec) checking its serving
/// certificate; a request the token makes for another node's name is denied, saying why;
/// each step is on the machine's timeline; a new boot's token replaces the old one; the
/// server cannot read the cluster's secrets. The node-side join (plinth-init starting
/// kubelet from extensions, in qemu) is the lab's (`tests/tests/lab.rs`).
#[test]
#[ignore = "slow (a control plane and a kubelet): `make e2e` runs it"]
fn a_node_joins_with_the_token_the_server_minted_and_the_certificates_it_approved() {
    use plinth_provisioner::kubernetes::cluster_info::{discover, BootstrapToken};
    use plinth_provisioner::node::join::{self, Layout};
    use plinth_tests::server::{placeholder_boot, rt, Server};

    let test = "a_node_joins_with_the_token_the_server_minted_and_the_certificates_it_approved";
    if !ready(test) {
        return;
    }
    let t0 = Instant::now();
    let mut c = Cluster::start_for_join();
    step("control plane up (Node,RBAC, bootstrap tokens)", t0);

    let dir = plinth_tests::TempDir::new("plinth-join");
    let boot = placeholder_boot(&dir.0);
    let kubeconfig_path = c.root.join("pki/plinth-server.kubeconfig");
    // On the node's address: the server approves a serving certificate for the address
    // the node's requests come from.
    let listen = format!("{}:0", plinth_tests::k8s::NODE_IP);
    let srv = Server::launch(
        dir,
        &boot,
        &[
            "--listen",
            &listen,
            "--kubeconfig",
            kubeconfig_path.to_str().unwrap(),
        ],
        Some(c.netns()),
    );
    let pin = {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(c.ca_pem().as_bytes()).unwrap();
        plinth_provisioner::crypto::pin_of_cert(&der).unwrap()
    };
    let (mac, uuid) = ("52:54:00:aa:20:01", "a0a0a0a0-2020-4000-8000-000000000001");
    let api = format!("https://{}:6443", plinth_tests::k8s::NODE_IP);
    srv.declare_with(
        mac,
        uuid,
        json!({"apiVersion": "plinth/v1", "hostname": c.node,
               "kubernetes": {"server": api, "caCertHashes": [pin],
                              "labels": {"plinth.dev/rack": "r1"},
                              "taints": [{"key": "plinth.dev/new", "value": "yes",
                                          "effect": "PreferNoSchedule"}]}}),
    );
    let enrol_token = srv
        .mint_from(mac, uuid, plinth_tests::k8s::NODE_IP)
        .expect("an enrolment token");
    let boot1 = "0f0f0f0f-0000-4000-8000-000000000001";
    let node_ip = plinth_tests::k8s::NODE_IP;

    // As plinth-init: enrol, report the address, fetch the config, discover the cluster
    // and write what kubelet starts from (the node's own code, into this cluster's root).
    let layout = Layout {
        etc: c.root.join("etc-kubernetes"),
        kubelet_dir: c.root.join("kubelet"),
        containerd_socket: c.containerd_socket(),
        host: c.kubelet_host_settings(),
    };
    let node_name = c.node.clone();
    let (token, prepared, refusals) = c.in_namespace(|| {
        let (client, _) = srv.enrol_boot(mac, uuid, &enrol_token, boot1).unwrap();
        let cfg = network_then_config(&client, mac, uuid, boot1, node_ip);
        // Fetched again in the same boot: the same token, nothing minted.
        let again = network_then_config(&client, mac, uuid, boot1, node_ip);
        assert_eq!(
            again.kubernetes.as_ref().and_then(|k| k.token.clone()),
            cfg.kubernetes.as_ref().and_then(|k| k.token.clone())
        );
        let k = cfg.kubernetes.expect("the config's kubernetes");
        let token: BootstrapToken = k.token.as_deref().expect("a minted token").parse().unwrap();
        let prepared = rt()
            .block_on(join::prepare(
                &k,
                &node_name,
                node_ip.parse().unwrap(),
                &layout,
                join::DISCOVERY_PATIENCE,
            ))
            .unwrap();
        let wrong_pin = format!("sha256:{}", "0".repeat(64));
        let e1 = rt()
            .block_on(discover(&k.server, &token, &[wrong_pin]))
            .expect_err("a wrong pin")
            .to_string();
        let unknown: BootstrapToken = "zzzzzz.0123456789abcdef".parse().unwrap();
        let e2 = rt()
            .block_on(discover(&k.server, &unknown, &k.ca_cert_hashes))
            .expect_err("an unknown token")
            .to_string();
        let wrong_secret = BootstrapToken {
            id: token.id.clone(),
            secret: "0123456789abcdef".into(),
        };
        let e3 = rt()
            .block_on(discover(&k.server, &wrong_secret, &k.ca_cert_hashes))
            .expect_err("a wrong secret")
            .to_string();
        (k.token.unwrap(), prepared, [e1, e2, e3])
    });
    step(
        "config with a minted token; cluster discovered, CA pinned",
        t0,
    );
    assert_eq!(prepared.cluster.server, api);
    assert_eq!(prepared.cluster.ca_pin, pin);
    assert!(
        refusals[0].contains("kubernetes.caCertHashes") && refusals[0].contains(&pin),
        "{}",
        refusals[0]
    );
    assert!(
        refusals[1].contains("jws-kubeconfig-zzzzzz") && refusals[1].contains("unknown or expired"),
        "{}",
        refusals[1]
    );
    assert!(refusals[2].contains("wrong secret"), "{}", refusals[2]);

    // The token: in the node's own group, expiring, for authentication and signing.
    let id = token.split('.').next().unwrap().to_string();
    let secret: Value = serde_json::from_str(&c.kubectl_ok(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
        "-o",
        "json",
    ]))
    .unwrap();
    let field = |k: &str| {
        use base64::Engine;
        let b = secret["data"][k].as_str().unwrap_or("");
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
    };
    assert_eq!(
        field("auth-extra-groups"),
        format!("system:bootstrappers:plinth:{}", c.node)
    );
    assert_eq!(field("usage-bootstrap-authentication"), "true");
    assert!(
        field("expiration").starts_with("20"),
        "{}",
        field("expiration")
    );

    // kubelet joins with it.
    c.join_node(&prepared.kubelet_args);
    c.wait_node_ready();
    step("kubelet bootstrapped, node Ready", t0);
    let node: Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "node", &c.node, "-o", "json"])).unwrap();
    assert_eq!(
        node["metadata"]["labels"]["plinth.dev/rack"], "r1",
        "{node}"
    );
    assert_eq!(
        node["spec"]["taints"][0],
        json!({"key": "plinth.dev/new", "value": "yes", "effect": "PreferNoSchedule"})
    );
    let client = csrs(&c, "kubernetes.io/kube-apiserver-client-kubelet");
    assert_eq!(client.len(), 1, "{client:?}");
    assert_eq!(
        client[0]["spec"]["username"],
        format!("system:bootstrap:{id}")
    );
    let (kind, reason, _) = decision(&client[0]).expect("decided");
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Approved", "PlinthApproved")
    );
    c.wait(
        "the serving certificate approved",
        std::time::Duration::from_secs(60),
        |c| {
            csrs(c, "kubernetes.io/kubelet-serving").iter().any(|r| {
                decision(r).is_some_and(|(t, why, _)| t == "Approved" && why == "PlinthApproved")
            })
        },
    );
    c.wait(
        "kubelet's serving certificate",
        std::time::Duration::from_secs(60),
        |c| {
            c.root
                .join("kubelet/pki/kubelet-server-current.pem")
                .exists()
        },
    );
    step(
        "client and serving certificates approved by plinth-server",
        t0,
    );

    // The API server reaches the kubelet, checking its serving certificate by the CA.
    c.apply(&busybox_pod(
        "joined",
        "echo hello from a joined node; exec sleep 3600",
    ));
    c.wait_phase("joined", "Running");
    c.wait(
        "the pod's log through the API server",
        std::time::Duration::from_secs(30),
        |c| {
            let o = c.kubectl(&["logs", "joined"]);
            String::from_utf8_lossy(&o.stdout).contains("hello from a joined node")
        },
    );
    let exec = c.kubectl_ok(&["exec", "joined", "--", "cat", "/proc/1/cmdline"]);
    assert!(exec.contains("sleep"), "{exec}");
    step("pod Running; logs and exec through the API server", t0);

    // The token asks for another node's client certificate: denied, with why.
    let forged = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "forged-other-node"},
        "spec": {"signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                 "usages": ["digital signature", "key encipherment", "client auth"],
                 "request": node_csr("system:node:other-node")},
    });
    let o = c.kubectl_as(&token, &["create", "-f", "-"], &forged.to_string());
    assert!(o.status.success(), "{o:?}");
    c.wait(
        "the forged request denied",
        std::time::Duration::from_secs(30),
        |c| {
            csrs(c, "kubernetes.io/kube-apiserver-client-kubelet")
                .iter()
                .any(|r| r["metadata"]["name"] == "forged-other-node" && decision(r).is_some())
        },
    );
    let forged = csrs(&c, "kubernetes.io/kube-apiserver-client-kubelet")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "forged-other-node")
        .unwrap();
    let (kind, reason, message) = decision(&forged).unwrap();
    assert_eq!((kind.as_str(), reason.as_str()), ("Denied", "PlinthDenied"));
    assert!(message.contains("system:node:other-node"), "{message}");
    step("a request for another node's name denied", t0);

    // The timeline: the token minted, both approvals, the denial.
    let kube: Vec<Value> = srv
        .events(mac)
        .into_iter()
        .filter(|e| e["type"] == "kubernetes")
        .collect();
    let steps: Vec<String> = kube
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["details"]["step"].as_str().unwrap_or(""),
                e["details"]["certificate"].as_str().unwrap_or("")
            )
        })
        .collect();
    for want in [
        "token ",
        "approved client",
        "approved serving",
        "denied client",
    ] {
        assert!(steps.iter().any(|s| s == want), "no {want:?} in {steps:?}");
    }
    let minted = kube
        .iter()
        .find(|e| e["details"]["token"] == id.as_str())
        .unwrap_or_else(|| panic!("no event of token {id}: {kube:?}"));
    // The expiry on the timeline is the cluster's.
    assert_eq!(
        minted["details"]["expires"],
        field("expiration"),
        "{minted}"
    );
    assert!(
        !serde_json::to_string(&kube).unwrap().contains(&token),
        "a token's secret on the timeline"
    );

    // A new boot gets a new token, and the old one is gone from the cluster.
    let enrol_token = srv
        .mint_from(mac, uuid, plinth_tests::k8s::NODE_IP)
        .expect("an enrolment token");
    let token2 = c.in_namespace(|| {
        let boot2 = "0f0f0f0f-0000-4000-8000-000000000002";
        let (client, _) = srv.enrol_boot(mac, uuid, &enrol_token, boot2).unwrap();
        // The node claims another address: not one the server approves.
        let cfg = network_then_config(&client, mac, uuid, boot2, "10.99.0.77");
        cfg.kubernetes.unwrap().token.unwrap()
    });
    assert_ne!(token2, token);
    let old = c.kubectl(&[
        "get",
        "secret",
        "-n",
        "kube-system",
        &format!("bootstrap-token-{id}"),
    ]);
    assert!(!old.status.success(), "the old boot's token is still there");
    step("a new boot's token replaced the old one", t0);

    // A second machine with the same host name gets no config: one node, two machines.
    let (mac2, uuid2) = ("52:54:00:aa:20:02", "a0a0a0a0-2020-4000-8000-000000000002");
    srv.declare_with(
        mac2,
        uuid2,
        json!({"apiVersion": "plinth/v1", "hostname": c.node,
               "kubernetes": {"server": api, "caCertHashes": [pin]}}),
    );
    let enrol2 = srv
        .mint_from(mac2, uuid2, plinth_tests::k8s::NODE_IP)
        .expect("an enrolment token");
    let (code, answer) = c.in_namespace(|| {
        let (client, _) = srv.enrol_boot(mac2, uuid2, &enrol2, boot1).unwrap();
        plinth_tests::server::call(&client, "GET", "/v1/config", None)
    });
    assert_eq!(code, 409, "{answer}");
    let why = answer["error"].as_str().unwrap_or("");
    assert!(why.contains(mac) && why.contains(mac2), "{why}");
    // Named otherwise, it is no longer in the way.
    srv.declare_with(
        mac2,
        uuid2,
        json!({"apiVersion": "plinth/v1", "hostname": "plinth-node-2",
               "kubernetes": {"server": api, "caCertHashes": [pin]}}),
    );
    step("a second machine with the node's name refused", t0);

    // Restarted, the server knows no node until it looks through its fleet: the node's
    // own serving request (with its client certificate) is approved still, and one for
    // the address the node claimed, not the one its requests came from, is denied.
    let _srv = srv.restart(&boot, &["--kubeconfig", kubeconfig_path.to_str().unwrap()]);
    let kubelet_pem = c.root.join("kubelet/pki/kubelet-client-current.pem");
    let ip = |s: &str| rcgen::SanType::IpAddress(s.parse().unwrap());
    let dns = |s: &str| rcgen::SanType::DnsName(s.try_into().unwrap());
    for (name, addr) in [
        ("serving-after-restart", node_ip),
        ("serving-elsewhere", "10.99.0.77"),
    ] {
        let request = json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {"signerName": "kubernetes.io/kubelet-serving",
                     "usages": ["digital signature", "key encipherment", "server auth"],
                     "request": node_csr_with(&format!("system:node:{}", c.node),
                                              vec![dns(&c.node), ip(addr)])},
        });
        let o = c.kubectl_as_cert(&kubelet_pem, &["create", "-f", "-"], &request.to_string());
        assert!(o.status.success(), "{o:?}");
    }
    let mut decided = std::collections::BTreeMap::new();
    c.wait(
        "both serving requests decided after the restart",
        std::time::Duration::from_secs(30),
        |c| {
            decided = csrs(c, "kubernetes.io/kubelet-serving")
                .iter()
                .filter_map(|r| Some((r["metadata"]["name"].as_str()?.to_string(), decision(r)?)))
                .collect();
            decided.contains_key("serving-after-restart")
                && decided.contains_key("serving-elsewhere")
        },
    );
    assert_eq!(
        decided["serving-after-restart"].1, "PlinthApproved",
        "{decided:?}"
    );
    assert_eq!(
        decided["serving-elsewhere"].1, "PlinthDenied",
        "{decided:?}"
    );
    assert!(
        decided["serving-elsewhere"].2.contains("10.99.0.77"),
        "{decided:?}"
    );
    step(
        "after a restart: the node's serving request approved, another address denied",
        t0,
    );

    // plinth-server's rights (docs/kubernetes-rbac.yaml): it reads no secret.
    for (what, want) in [
        ("get secrets -n kube-system", "no"),
        ("list secrets -n kube-system", "no"),
        ("create secrets -n kube-system", "yes"),
        ("create secrets -n default", "no"),
        ("list certificatesigningrequests.certificates.k8s.io", "yes"),
        (
            "update certificatesigningrequests.certificates.k8s.io --subresource approval",
            "yes",
        ),
        ("get nodes", "no"),
    ] {
        let mut args = vec!["auth", "can-i", "--as", "plinth-server"];
        args.extend(what.split(' '));
        let o = c.kubectl(&args);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            want,
            "can plinth-server {what}?"
        );
    }
}
