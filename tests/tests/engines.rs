//! Real engines drive `plinth` as their runc: containerd through ctr and through its
//! CRI plugin with crictl (as kubelet would), and podman with conmon. Each step checks
//! what came out (output, exit codes, states), not only that a command ran.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use plinth_tests::engines::{in_terminal, missing_tools, ok, Containerd, Podman, BUSYBOX};
use plinth_tests::{need_root, plinth_bin, text, unique};

fn ready(test: &str) -> bool {
    if !need_root(test) {
        return false;
    }
    if let Some(why) = missing_tools() {
        plinth_tests::skip(test, &why);
        return false;
    }
    true
}

#[test]
fn containerd_ctr_runs_containers_with_plinth() {
    if !ready("containerd_ctr_runs_containers_with_plinth") {
        return;
    }
    let c = Containerd::start();
    let ctr = || c.ctr("plinth-test");
    let runc = plinth_bin();
    let run = |id: &str, args: &[&str]| {
        let mut cmd = ctr();
        cmd.args(["run", "--runc-binary"])
            .arg(&runc)
            .arg("--rm")
            .arg(BUSYBOX)
            .arg(id)
            .args(args);
        text(&cmd.stdin(std::process::Stdio::null()).output().unwrap())
    };

    // Output and a non-zero exit code.
    let (code, out, err) = run(
        &unique("out"),
        &["sh", "-c", "echo hello from $(hostname); exit 3"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(out.starts_with("hello from "), "{out}");

    // A detached task: exec, ps, pause/resume, kill.
    let id = unique("task");
    ok(ctr()
        .args(["run", "-d", "--runc-binary"])
        .arg(&runc)
        .arg(BUSYBOX)
        .arg(&id)
        .args(["sleep", "1000"]));
    let (code, out, err) = text(
        &ctr()
            .args([
                "task",
                "exec",
                "--exec-id",
                "e1",
                &id,
                "sh",
                "-c",
                "echo exec-ok; exit 6",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(code, 6, "{err}");
    assert_eq!(out.trim(), "exec-ok");
    let ps = ok(ctr().args(["task", "ps", &id]));
    let pids: Vec<&str> = ps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(pids.len(), 1, "one process (sleep): {ps}");
    let status = |c: &Containerd| -> String {
        let ls = ok(c.ctr("plinth-test").args(["task", "ls"]));
        ls.lines()
            .find(|l| l.starts_with(&id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(status(&c), "RUNNING");
    ok(ctr().args(["task", "pause", &id]));
    assert_eq!(status(&c), "PAUSED");
    ok(ctr().args(["task", "resume", &id]));
    assert_eq!(status(&c), "RUNNING");
    ok(ctr().args(["task", "kill", "-s", "KILL", &id]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&c) != "STOPPED" {
        assert!(Instant::now() < deadline, "task not stopped after KILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(ctr().args(["task", "rm", &id]));
    ok(ctr().args(["containers", "rm", &id]));

    // A tty session.
    let cmd = format!(
        "ctr --address {} --namespace plinth-test run --runc-binary {} --rm -t {BUSYBOX} {} sh -c 'tty; exit 2'",
        c.socket().display(),
        runc.display(),
        unique("tty")
    );
    let (code, screen) = in_terminal(&cmd);
    assert_eq!(code, 2, "{screen}");
    assert!(screen.contains("/dev/pts/0"), "{screen}");
}

#[test]
fn containerd_cri_plugin_runs_pods_with_plinth() {
    if !ready("containerd_cri_plugin_runs_pods_with_plinth") {
        return;
    }
    let c = Containerd::start();
    let d = &c.tmp.0;
    let pod = d.join("pod.json");
    let uid = unique("pod");
    std::fs::write(
        &pod,
        serde_json::json!({
            "metadata": {"name": "p", "namespace": "plinth", "uid": uid, "attempt": 0},
            "log_directory": d.join("logs"),
            // Host network: no CNI plugin is installed for the test.
            "linux": {"security_context": {"namespace_options": {"network": 2}}}
        })
        .to_string(),
    )
    .unwrap();
    let ctr_cfg = d.join("ctr.json");
    std::fs::write(
        &ctr_cfg,
        serde_json::json!({
            "metadata": {"name": "c"}, "image": {"image": BUSYBOX},
            "command": ["sh", "-c", "echo hello from cri; sleep 1000"],
            "log_path": "c.log", "linux": {}
        })
        .to_string(),
    )
    .unwrap();
    let k = || c.crictl();
    let pod_id = ok(k().arg("runp").arg(&pod)).trim().to_string();
    assert_eq!(pod_id.len(), 64, "a pod id: {pod_id}");
    let cid = ok(k().arg("create").arg(&pod_id).arg(&ctr_cfg).arg(&pod))
        .trim()
        .to_string();
    ok(k().args(["start", &cid]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = text(&k().args(["logs", &cid]).output().unwrap()).1;
        if logs.contains("hello from cri") {
            break;
        }
        assert!(Instant::now() < deadline, "no log line: {logs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = text(
        &k().args(["exec", &cid, "sh", "-c", "echo exec from cri; exit 5"])
            .output()
            .unwrap(),
    );
    // crictl exits 1 and reports the process's own code.
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("exit code 5"), "{err}");
    assert_eq!(out.trim(), "exec from cri");
    let ps = ok(k().args(["ps", "-q"]));
    assert!(ps.contains(&cid), "{ps}");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(k().args(["inspect", &cid]))).unwrap();
    assert_eq!(inspect["status"]["state"], "CONTAINER_RUNNING");
    ok(k().args(["stop", "--timeout", "1", &cid]));
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(k().args(["inspect", &cid]))).unwrap();
    assert_eq!(inspect["status"]["state"], "CONTAINER_EXITED");
    ok(k().args(["rm", &cid]));
    ok(k().args(["stopp", &pod_id]));
    ok(k().args(["rmp", &pod_id]));
    let pods = ok(k().args(["pods", "-q"]));
    assert!(!pods.contains(&pod_id), "{pods}");
}

#[test]
fn podman_runs_containers_with_plinth() {
    if !ready("podman_runs_containers_with_plinth") {
        return;
    }
    let p = Podman::new();
    let (bb, _) = plinth_tests::engines::image_archives();
    ok(p.cmd().arg("load").arg("-i").arg(bb));
    // No runtime can raise nofile to podman's default 1048576 here (no
    // CAP_SYS_RESOURCE in the bounding set).
    let common = [
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ];

    let (code, out, err) = text(
        &p.cmd()
            .args(["run", "--rm"])
            .args(common)
            .args([BUSYBOX, "sh", "-c", "echo hello from podman; id -u; exit 3"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(out, "hello from podman\n0\n");

    // Limits, exec, top, pause/unpause, stop.
    let name = unique("pm");
    ok(p.cmd()
        .args([
            "run",
            "-d",
            "--name",
            &name,
            "--memory",
            "64m",
            "--pids-limit",
            "20",
        ])
        .args(common)
        .args([BUSYBOX, "sleep", "1000"]));
    let limits = ok(p.cmd().args([
        "exec",
        &name,
        "sh",
        "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null \
         || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max",
    ]));
    assert_eq!(
        limits.split_whitespace().collect::<Vec<_>>(),
        ["67108864", "20"],
        "{limits}"
    );
    let top = ok(p.cmd().args(["top", &name]));
    assert!(top.contains("sleep 1000"), "{top}");
    let state = |p: &Podman| {
        ok(p.cmd().args(["inspect", "-f", "{{.State.Status}}", &name]))
            .trim()
            .to_string()
    };
    ok(p.cmd().args(["pause", &name]));
    assert_eq!(state(&p), "paused");
    ok(p.cmd().args(["unpause", &name]));
    assert_eq!(state(&p), "running");
    ok(p.cmd().args(["stop", "-t", "1", &name]));
    assert_eq!(state(&p), "exited");
    ok(p.cmd().args(["rm", &name]));

    // -it: a terminal.
    let args: Vec<String> = p
        .cmd()
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cmd = format!(
        "podman {} run --rm -it {} {BUSYBOX} sh -c 'tty; exit 5'",
        args.join(" "),
        common.join(" ")
    );
    let (code, screen) = in_terminal(&cmd);
    assert_eq!(code, 5, "{screen}");
    assert!(screen.contains("/dev/pts/0"), "{screen}");
}
