//! The OCI lifecycle through the real `plinth` binary: run, create/start/state/kill/delete.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use plinth_tests::{mounts_under, need_root, unique, Bundle};

#[test]
fn run_prints_output_and_returns_the_exit_code() {
    if !need_root("run_prints_output_and_returns_the_exit_code") {
        return;
    }
    let b = Bundle::busybox("echo hello from $(hostname); exit 7");
    let (code, out, err) = b.run(&unique("run"));
    assert_eq!(code, 7, "stderr: {err}");
    assert_eq!(out, "hello from plinth\n");
    // run deletes the container afterwards.
    let list = b.plinth(&["list", "-q"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout), "");
    assert!(mounts_under(&b.tmp.0).is_empty());
}

#[test]
fn run_reports_death_by_signal_as_128_plus_signal() {
    if !need_root("run_reports_death_by_signal_as_128_plus_signal") {
        return;
    }
    let b = Bundle::busybox("sleep 100");
    let id = unique("sig");
    let mut child = b.spawn_run(&id);
    assert!(b.plinth(&["kill", &id, "KILL"]).status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 9));
}

#[test]
fn run_forwards_signals_to_the_container() {
    if !need_root("run_forwards_signals_to_the_container") {
        return;
    }
    // pid 1 of a namespace only gets the signals it handles: trap TERM.
    let b = Bundle::busybox("trap 'exit 42' TERM; echo ready > /dev/shm/ready; sleep 100 & wait");
    let id = unique("fwd");
    let mut child = b.spawn_run(&id);
    // Give the shell time to install its trap.
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
}

#[test]
fn create_start_state_kill_delete() {
    if !need_root("create_start_state_kill_delete") {
        return;
    }
    let b = Bundle::busybox("sleep 100");
    let id = unique("life");
    b.create(&id);
    let st = b.state(&id);
    assert_eq!(st["status"], "created");
    assert_eq!(st["id"], id.as_str());
    assert_eq!(st["ociVersion"], "1.2.0");
    assert_eq!(st["bundle"], b.dir.to_str().unwrap());
    assert_eq!(st["rootfs"], b.dir.join("rootfs").to_str().unwrap());
    assert!(st["created"].as_str().unwrap().ends_with('Z'));
    let pid = st["pid"].as_i64().unwrap();
    assert!(pid > 0);
    // The init waits in the container's namespaces: its pid namespace differs from ours.
    let ours = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert_ne!(ours, theirs);

    // Deleting a created container without --force is refused and changes nothing.
    let out = b.plinth(&["delete", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(b.state(&id)["status"], "created");

    b.start(&id);
    assert_eq!(b.state(&id)["status"], "running");
    // A second start is an error.
    let out = b.plinth(&["start", &id]);
    assert_eq!(out.status.code(), Some(1));

    let out = b.plinth(&["kill", &id, "KILL"]);
    assert!(out.status.success(), "{out:?}");
    let st = b.wait_status(&id, "stopped");
    assert_eq!(st["status"], "stopped");
    assert_eq!(st["pid"], 0);
    let out = b.plinth(&["kill", &id, "KILL"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));

    let out = b.plinth(&["delete", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(!b.root.join(&id).exists());
    assert!(mounts_under(&b.tmp.0).is_empty());
}

#[test]
fn kill_accepts_number_short_and_long_names() {
    if !need_root("kill_accepts_number_short_and_long_names") {
        return;
    }
    // (signal as given, the trap that must have caught it; KILL cannot be caught)
    for (sig, caught) in [
        ("9", None),
        ("KILL", None),
        ("SIGKILL", None),
        ("TERM", Some("TERM")),
        ("sigusr1", Some("USR1")),
    ] {
        // pid 1 of a namespace only gets the signals it handles: trap them, and say
        // in a host directory which one came.
        let mut b = Bundle::busybox(
            "trap 'echo TERM > /out/got; exit 0' TERM; trap 'echo USR1 > /out/got; exit 0' USR1; \
             echo > /out/ready; sleep 100 & wait",
        );
        let out_dir = b.tmp.0.join("out");
        std::fs::create_dir(&out_dir).unwrap();
        std::fs::create_dir(b.dir.join("rootfs/out")).unwrap();
        b.config["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/out", "type": "bind", "source": out_dir, "options": ["rbind", "rw"]}),
        );
        let id = unique("kill");
        b.create(&id);
        b.start(&id);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !out_dir.join("ready").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the traps were never set"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let out = b.plinth(&["kill", &id, sig]);
        assert!(out.status.success(), "kill {sig}: {out:?}");
        let st = b.wait_status(&id, "stopped");
        assert_eq!(
            st["status"], "stopped",
            "signal {sig} did not stop the container"
        );
        let got = std::fs::read_to_string(out_dir.join("got")).ok();
        assert_eq!(
            got.as_deref().map(str::trim),
            caught,
            "kill {sig} delivered another signal"
        );
        assert!(b.plinth(&["delete", &id]).status.success());
    }
    let b = Bundle::busybox("sleep 100");
    let id = unique("kill");
    b.create(&id);
    let out = b.plinth(&["kill", &id, "SIGNOPE"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown signal"));
    assert_eq!(b.state(&id)["status"], "created");
}

#[test]
fn delete_force_kills_a_running_container() {
    if !need_root("delete_force_kills_a_running_container") {
        return;
    }
    let b = Bundle::busybox("sleep 100");
    let id = unique("force");
    b.create(&id);
    b.start(&id);
    let pid = b.state(&id)["pid"].as_i64().unwrap();
    let out = b.plinth(&["delete", "--force", &id]);
    assert!(out.status.success(), "{out:?}");
    assert!(!b.root.join(&id).exists());
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false);
    assert!(!alive, "pid {pid} survived delete --force");
}

#[test]
fn pid_file_is_written_before_create_returns() {
    if !need_root("pid_file_is_written_before_create_returns") {
        return;
    }
    let b = Bundle::busybox("true");
    let id = unique("pidfile");
    let pidfile = b.tmp.0.join("pid");
    b.write();
    let (code, _, err) = b.plinth_detached(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        "--pid-file",
        pidfile.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(code, 0, "{err}");
    let pid: i64 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    assert_eq!(b.state(&id)["pid"].as_i64(), Some(pid));
}

#[test]
fn list_shows_containers_as_json() {
    if !need_root("list_shows_containers_as_json") {
        return;
    }
    let b = Bundle::busybox("sleep 100");
    let id = unique("list");
    b.create(&id);
    let out = b.plinth(&["list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["status"], "created");
}

#[test]
fn json_log_carries_the_error() {
    if !need_root("json_log_carries_the_error") {
        return;
    }
    let b = Bundle::busybox("true");
    let log = b.tmp.0.join("log.json");
    let out = b
        .cmd()
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "start", "no-such-container"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "error");
    assert!(last["msg"].as_str().unwrap().contains("no-such-container"));
    assert!(last["time"].is_string());
}

#[test]
fn version_has_runc_three_line_form() {
    let out = std::process::Command::new(plinth_tests::plinth_bin())
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("plinth version "));
    assert!(lines[1].starts_with("commit: "));
    assert!(lines[2].starts_with("spec: 1."));
}
