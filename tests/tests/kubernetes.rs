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
