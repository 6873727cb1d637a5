//! OCI hooks run at their points with the state on stdin, and their failures and
//! timeouts are honoured.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use plinth_tests::{need_root, unique, Bundle};

/// A hook that appends its name and the state it read to `log`.
fn hook(log: &std::path::Path, name: &str) -> serde_json::Value {
    json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo {name} $(cat) >> {}", log.display())]})
}

#[test]
fn hooks_run_in_order_with_state_on_stdin() {
    if !need_root("hooks_run_in_order_with_state_on_stdin") {
        return;
    }
    let mut b = Bundle::busybox("sleep 100");
    let log = b.tmp.0.join("hooks.log");
    b.config["hooks"] = json!({
        "prestart": [hook(&log, "prestart")],
        "createRuntime": [hook(&log, "createRuntime")],
        "createContainer": [hook(&log, "createContainer")],
        "poststart": [hook(&log, "poststart")],
        "poststop": [hook(&log, "poststop")],
    });
    b.config["annotations"] = json!({"org.test": "yes"});
    let id = unique("hooks");
    b.create(&id);
    let after_create = std::fs::read_to_string(&log).unwrap();
    let names: Vec<&str> = after_create
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, ["prestart", "createRuntime", "createContainer"]);
    let pid = b.state(&id)["pid"].as_i64().unwrap();
    for line in after_create.lines() {
        let st: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        assert_eq!(st["id"], id.as_str());
        assert_eq!(st["pid"].as_i64(), Some(pid));
        assert_eq!(st["bundle"], b.dir.to_str().unwrap());
        assert_eq!(st["annotations"]["org.test"], "yes");
    }
    b.start(&id);
    assert!(b.plinth(&["kill", &id, "KILL"]).status.success());
    b.wait_status(&id, "stopped");
    assert!(b.plinth(&["delete", &id]).status.success());
    let all = std::fs::read_to_string(&log).unwrap();
    let names: Vec<&str> = all.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        names,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "poststart",
            "poststop"
        ]
    );
}

#[test]
fn a_failing_prestart_hook_fails_create_and_cleans_up() {
    if !need_root("a_failing_prestart_hook_fails_create_and_cleans_up") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["hooks"] = json!({"prestart": [{"path": "/bin/false"}]});
    let id = unique("hookfail");
    let (code, err) = b.create_failing(&id);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("prestart hook /bin/false"), "{err}");
    assert!(!b.root.join(&id).exists());
}

#[test]
fn a_hook_past_its_timeout_is_killed() {
    if !need_root("a_hook_past_its_timeout_is_killed") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["hooks"] =
        json!({"createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]});
    let id = unique("slow");
    let t = std::time::Instant::now();
    let (code, err) = b.create_failing(&id);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("timed out after 1s"), "{err}");
    assert!(!b.root.join(&id).exists(), "state left behind");
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn start_container_hook_runs_inside_before_the_process() {
    if !need_root("start_container_hook_runs_inside_before_the_process") {
        return;
    }
    let mut b = Bundle::busybox("cat /tmp/hook-was-here");
    b.config["root"]["readonly"] = json!(false);
    b.config["hooks"] = json!({"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo inside $(hostname) > /tmp/hook-was-here"]}]});
    let (code, out, err) = b.run(&unique("sc"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "inside plinth\n");
}

/// A failing startContainer hook stops the container before its process runs, and says
/// why on the container's stderr (`start` has already returned by then, as with runc).
#[test]
fn a_failing_start_container_hook_stops_the_container_and_says_why() {
    if !need_root("a_failing_start_container_hook_stops_the_container_and_says_why") {
        return;
    }
    let mut b = Bundle::busybox("echo the-process-ran");
    b.config["hooks"] = json!({"startContainer": [{"path": "/bin/false"}]});
    let (code, out, err) = b.run(&unique("scf"));
    assert_ne!(code, 0, "{out}{err}");
    assert!(!out.contains("the-process-ran"), "{out}");
    assert!(err.contains("startContainer hook /bin/false"), "{err}");
}
