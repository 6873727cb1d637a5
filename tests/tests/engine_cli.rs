//! The rest of runc's command line as engines call it, through the real binary:
//! exec (args, --process, --detach, --tty, --pid-file, --user, --cap, --env, --cwd),
//! ps, pause/resume, update, events, features, and the errors engines look for.
#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixListener;
use std::path::Path;

use serde_json::{json, Value};

use plinth_tests::{
    default_cgroup_dirs, need_root, read_pty, recv_pty_master, text, unique, Bundle,
};

/// A running `sleep` container.
fn running() -> (Bundle, String) {
    let b = Bundle::busybox("sleep 1000");
    let id = unique("eng");
    b.create(&id);
    b.start(&id);
    assert_eq!(b.wait_status(&id, "running")["status"], "running");
    (b, id)
}

#[test]
fn exec_runs_in_the_containers_namespaces_with_its_exit_code() {
    if !need_root("exec_runs_in_the_containers_namespaces_with_its_exit_code") {
        return;
    }
    let (b, id) = running();
    let init = b.state(&id)["pid"].as_i64().unwrap();
    let (code, out, err) = text(&b.plinth(&[
        "exec", "--env", "FOO=bar", "--cwd", "/tmp", &id, "sh", "-c",
        "echo $(hostname) $FOO $(pwd); readlink /proc/self/ns/pid; readlink /proc/self/ns/net; exit 7",
    ]));
    assert_eq!(code, 7, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "plinth bar /tmp");
    for (i, ns) in ["pid", "net"].iter().enumerate() {
        let theirs = std::fs::read_link(format!("/proc/{init}/ns/{ns}")).unwrap();
        assert_eq!(lines[1 + i], theirs.to_str().unwrap(), "{ns} namespace");
    }
}

#[test]
fn exec_user_cap_and_no_inheritable_capabilities() {
    if !need_root("exec_user_cap_and_no_inheritable_capabilities") {
        return;
    }
    let (b, id) = running();
    let (code, out, err) = text(&b.plinth(&["exec", "--user", "1", &id, "id", "-u"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1", "exec --user 1 runs as uid 1");
    let (code, out, err) = text(&b.plinth(&[
        "exec",
        "--cap",
        "CAP_SYS_ADMIN",
        &id,
        "grep",
        "-E",
        "^Cap(Inh|Bnd|Amb)",
        "/proc/self/status",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
    assert!(out.contains("CapAmb:\t0000000000000000"), "{out}");
    let bnd = out
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:\t"))
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .unwrap();
    assert!(
        bnd & (1 << 21) != 0,
        "CAP_SYS_ADMIN (21) added to the bounding set: {out}"
    );
}

#[test]
fn exec_process_file_detach_and_pid_file() {
    if !need_root("exec_process_file_detach_and_pid_file") {
        return;
    }
    let (b, id) = running();
    let process = b.tmp.0.join("process.json");
    std::fs::write(
        &process,
        json!({"args": ["sh", "-c", "echo from-process-file > /dev/shm/marker; sleep 100"],
               "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}})
        .to_string(),
    )
    .unwrap();
    let pid_file = b.tmp.0.join("exec.pid");
    let (code, _, err) = b.plinth_detached(&[
        "exec",
        "--detach",
        "--process",
        process.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(code, 0, "{err}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the detached process runs"
    );
    // It is one of the container's processes.
    let (_, ps, _) = text(&b.plinth(&["ps", "--format", "json", &id]));
    let pids: Vec<i64> = serde_json::from_str(&ps).unwrap();
    assert!(pids.contains(&(pid as i64)), "{pid} not in {pids:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (_, out, _) = text(&b.plinth(&["exec", &id, "cat", "/dev/shm/marker"]));
        if out.trim() == "from-process-file" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "marker never written: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn exec_tty_sends_the_pty_to_the_console_socket() {
    if !need_root("exec_tty_sends_the_pty_to_the_console_socket") {
        return;
    }
    let (b, id) = running();
    let sock = b.tmp.0.join("exec-console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let mut child = b
        .cmd()
        .args([
            "exec",
            "--tty",
            "--console-socket",
            sock.to_str().unwrap(),
            &id,
            "sh",
            "-c",
            "tty; exit 4",
        ])
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let out = read_pty(recv_pty_master(&conn));
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert_eq!(child.wait().unwrap().code(), Some(4));
}

#[test]
fn ps_lists_the_container_processes() {
    if !need_root("ps_lists_the_container_processes") {
        return;
    }
    let (b, id) = running();
    let init = b.state(&id)["pid"].as_i64().unwrap();
    let (code, out, err) = text(&b.plinth(&["ps", &id]));
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert!(lines.next().unwrap().contains("PID"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(
        rows[0].contains("sleep 1000") && rows[0].contains(&init.to_string()),
        "{out}"
    );
}

#[test]
fn pause_freezes_and_resume_thaws() {
    if !need_root("pause_freezes_and_resume_thaws") {
        return;
    }
    let b = Bundle::busybox(
        "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; sleep 0.05; done",
    );
    let id = unique("pause");
    b.create(&id);
    b.start(&id);
    let count = |b: &Bundle| -> u64 {
        let (_, out, _) =
            text(&b.plinth(&["exec", "--ignore-paused", &id, "cat", "/dev/shm/count"]));
        out.trim().parse().unwrap_or(0)
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (code, _, err) = text(&b.plinth(&["pause", &id]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(b.state(&id)["status"], "paused");
    // Pausing again or exec without --ignore-paused is refused; the state stays.
    let (code, _, err) = text(&b.plinth(&["pause", &id]));
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");
    let (code, _, err) = text(&b.plinth(&["exec", &id, "true"]));
    assert_eq!(code, 1);
    assert!(err.contains("paused"), "{err}");
    assert_eq!(b.state(&id)["status"], "paused");
    // The init is frozen: its state in /proc is not R or S.
    let init = b.state(&id)["pid"].as_i64().unwrap();
    let st = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let state = st
        .lines()
        .find(|l| l.starts_with("State:"))
        .unwrap()
        .to_string();
    assert!(!state.contains("(running)"), "{state}");

    let (code, _, err) = text(&b.plinth(&["resume", &id]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(b.state(&id)["status"], "running");
    let a = count(&b);
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert!(count(&b) > a, "the loop runs again after resume");
    let (code, _, err) = text(&b.plinth(&["resume", &id]));
    assert_eq!(code, 1);
    assert!(err.contains("not paused"), "{err}");
}

#[test]
fn update_changes_limits_and_refuses_bad_json() {
    if !need_root("update_changes_limits_and_refuses_bad_json") {
        return;
    }
    let (b, id) = running();
    let dirs = default_cgroup_dirs(&id);
    let pids_max = dirs
        .iter()
        .map(|d| d.join("pids.max"))
        .find(|p| p.exists())
        .expect("a pids.max for the container");
    let (code, _, err) = text(&b.plinth(&["update", "--pids-limit", "42", &id]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&pids_max).unwrap().trim(), "42");

    let res = b.tmp.0.join("res.json");
    std::fs::write(&res, r#"{"pids": {"limit": 17}}"#).unwrap();
    let (code, _, err) = text(&b.plinth(&["update", "--resources", res.to_str().unwrap(), &id]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&pids_max).unwrap().trim(), "17");

    std::fs::write(&res, r#"{"pids": {"limit": "many"}}"#).unwrap();
    let (code, _, err) = text(&b.plinth(&["update", "--resources", res.to_str().unwrap(), &id]));
    assert_eq!(code, 1);
    assert!(
        err.contains("--resources") && err.contains("pids.limit"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&pids_max).unwrap().trim(),
        "17",
        "left as it was"
    );
    assert_eq!(b.state(&id)["status"], "running");
}

#[test]
fn events_stats_and_features() {
    if !need_root("events_stats_and_features") {
        return;
    }
    let (b, id) = running();
    let (code, out, err) = text(&b.plinth(&["events", "--stats", &id]));
    assert_eq!(code, 0, "{err}");
    let ev: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ev["type"], "stats");
    assert_eq!(ev["id"], id.as_str());
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");

    let (code, out, err) = text(&b.plinth(&["features"]));
    assert_eq!(code, 0, "{err}");
    let f: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(f["ociVersionMax"], "1.3.0");
    assert_eq!(f["linux"]["cgroup"]["systemd"], false);
    assert!(f["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .contains(&json!("time")));
}

#[test]
fn the_errors_engines_look_for() {
    if !need_root("the_errors_engines_look_for") {
        return;
    }
    let b = Bundle::busybox("true");
    let id = unique("stopped");
    b.create(&id);
    b.start(&id);
    assert_eq!(b.wait_status(&id, "stopped")["status"], "stopped");
    // containerd matches "container not running" and "no such process".
    let (code, _, err) = text(&b.plinth(&["exec", &id, "true"]));
    assert_eq!(code, 1);
    assert!(err.contains("container not running"), "{err}");
    let (code, _, err) = text(&b.plinth(&["kill", &id, "KILL"]));
    assert_eq!(code, 1);
    assert!(err.contains("container not running"), "{err}");
    let (code, _, err) = text(&b.plinth(&["pause", &id]));
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");
    let (code, _, err) = text(&b.plinth(&["exec", "no-such-container", "true"]));
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");

    let (b, id) = running();
    let (code, _, err) = text(&b.plinth(&["kill", &id, "SIGNOPE"]));
    assert_eq!(code, 1);
    assert!(err.contains("unknown signal"), "{err}");
    assert_eq!(b.state(&id)["status"], "running");
    let (code, _, err) = text(
        &b.cmd()
            .arg("--systemd-cgroup")
            .args(["state", &id])
            .output()
            .unwrap(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("--systemd-cgroup"), "{err}");
}

#[test]
fn kill_all_reaches_every_process_without_a_pid_namespace() {
    if !need_root("kill_all_reaches_every_process_without_a_pid_namespace") {
        return;
    }
    // Without its own pid namespace, killing the init leaves its children running:
    // --all signals every process of the container's cgroup.
    let mut b = Bundle::busybox("sleep 1000 & sleep 1000 & wait");
    let ns: Vec<Value> = b.config["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] != "pid")
        .cloned()
        .collect();
    b.config["linux"]["namespaces"] = json!(ns);
    let id = unique("killall");
    b.create(&id);
    b.start(&id);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut pids: Vec<i64>;
    loop {
        let (_, out, _) = text(&b.plinth(&["ps", "--format", "json", &id]));
        pids = serde_json::from_str(&out).unwrap_or_default();
        if pids.len() == 3 || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(pids.len(), 3, "sh and two sleeps: {pids:?}");
    let (code, _, err) = text(&b.plinth(&["kill", "--all", &id, "KILL"]));
    assert_eq!(code, 0, "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pids.iter().any(|p| {
        std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "a process survived kill --all: {pids:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(b.wait_status(&id, "stopped")["status"], "stopped");
}
