//! Bad input: a clear one-line error naming what is wrong, exit 1, nothing left behind.
#![allow(clippy::unwrap_used)]

use plinth_tests::{default_cgroup_dirs, mounts_under, need_root, unique, Bundle};

/// Creates with the bundle as it is and checks the failure mode.
fn assert_create_fails(b: &Bundle, id: &str, needle: &str) {
    let (code, err) = b.create_failing(id);
    assert_eq!(code, 1, "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!b.root.join(id).exists(), "state directory left behind");
    assert!(mounts_under(&b.tmp.0).is_empty(), "mount left behind");
    let dirs = default_cgroup_dirs(id);
    assert!(!dirs.is_empty(), "no cgroup hierarchy found to check");
    for leaked in dirs {
        assert!(!leaked.exists(), "cgroup {} left behind", leaked.display());
    }
}

#[test]
fn wrong_type_names_the_field() {
    if !need_root("wrong_type_names_the_field") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["process"]["user"]["uid"] = serde_json::json!("zero");
    assert_create_fails(&b, &unique("bad"), "process.user.uid");
}

/// oci-spec checks execCPUAffinity with a regex (answered by regex-lite here, see
/// runtime/regex-lite-shim): a malformed list is named, a good one is accepted.
#[test]
fn malformed_exec_cpu_affinity_is_named() {
    if !need_root("malformed_exec_cpu_affinity_is_named") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["process"]["execCPUAffinity"] = serde_json::json!({"initial": "0", "final": "0-1,x"});
    assert_create_fails(&b, &unique("bad"), "process.execCPUAffinity.final");
    b.config["process"]["execCPUAffinity"] = serde_json::json!({"initial": "0", "final": "0-1"});
    let (code, _, err) = b.run(&unique("aff"));
    assert_eq!(code, 0, "a valid execCPUAffinity was refused: {err}");
}

/// runtime-spec requires absolute hook paths and positive timeouts; either is refused by
/// its field.
#[test]
fn relative_hook_path_is_named() {
    if !need_root("relative_hook_path_is_named") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["hooks"] = serde_json::json!({
        "prestart": [{"path": "/bin/true"}],
        "poststart": [{"path": "/bin/true"}, {"path": "true"}]
    });
    assert_create_fails(&b, &unique("bad"), "hooks.poststart[1].path");
    // A timeout that is not positive is refused before any hook has run.
    let marker = b.tmp.0.join("prestart-ran");
    b.config["hooks"] = serde_json::json!({
        "prestart": [{"path": "/bin/touch", "args": ["touch", marker]}],
        "poststop": [{"path": "/bin/true", "timeout": 0}]
    });
    assert_create_fails(&b, &unique("bad"), "hooks.poststop[0].timeout");
    assert!(!marker.exists(), "a hook ran before the config was refused");
}

#[test]
fn missing_rootfs_is_named() {
    if !need_root("missing_rootfs_is_named") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["root"]["path"] = serde_json::json!("nope");
    assert_create_fails(&b, &unique("bad"), "root.path");
}

#[test]
fn unknown_namespace_is_named() {
    if !need_root("unknown_namespace_is_named") {
        return;
    }
    let mut b = Bundle::busybox("true");
    let ns = b.config["linux"]["namespaces"].as_array_mut().unwrap();
    ns.push(serde_json::json!({"type": "bogus"}));
    let at = format!("linux.namespaces[{}]", ns.len() - 1);
    assert_create_fails(&b, &unique("bad"), &at);
}

#[test]
fn failing_init_leaves_nothing_behind() {
    if !need_root("failing_init_leaves_nothing_behind") {
        return;
    }
    // Fails inside the container's init, after the cgroup and mounts were made.
    let mut b = Bundle::busybox("true");
    b.config["process"]["args"] = serde_json::json!(["/no/such/binary"]);
    b.config["linux"]["resources"]["memory"] = serde_json::json!({"limit": 67108864});
    assert_create_fails(&b, &unique("bad"), "/no/such/binary");
}

/// An init that fails at its first step, before the runtime has let it go: the
/// runtime's next send or read finds it gone (EPIPE, ECONNRESET), and the init's own
/// error must still be the one reported, with and without a cgroup namespace (which
/// changes when the runtime talks to it), every time.
#[test]
fn an_init_failing_at_once_is_heard() {
    if !need_root("an_init_failing_at_once_is_heard") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut b = Bundle::busybox("true");
    // Well formed, but no CPU of this machine: sched_setaffinity says EINVAL.
    b.config["process"]["execCPUAffinity"] =
        serde_json::json!({"initial": format!("{}", cpus + 8)});
    for cgroupns in [false, true] {
        if cgroupns {
            let ns = b.config["linux"]["namespaces"].as_array_mut().unwrap();
            ns.push(serde_json::json!({"type": "cgroup"}));
        }
        for _ in 0..10 {
            assert_create_fails(&b, &unique("gone"), "process.execCPUAffinity.initial");
        }
    }
}

#[test]
fn duplicate_id_is_refused_and_the_first_survives() {
    if !need_root("duplicate_id_is_refused_and_the_first_survives") {
        return;
    }
    let b = Bundle::busybox("sleep 100");
    let id = unique("dup");
    b.create(&id);
    let (code, err) = b.create_failing(&id);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(b.state(&id)["status"], "created");
}

#[test]
fn unknown_id_for_start_kill_delete_state() {
    if !need_root("unknown_id_for_start_kill_delete_state") {
        return;
    }
    let b = Bundle::busybox("true");
    for args in [
        &["start", "ghost"][..],
        &["kill", "ghost", "KILL"],
        &["delete", "ghost"],
        &["state", "ghost"],
    ] {
        let out = b.plinth(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("container ghost does not exist"),
            "{args:?}: {err}"
        );
    }
    assert!(!b.root.join("ghost").exists());
}

#[test]
fn invalid_id_is_refused() {
    if !need_root("invalid_id_is_refused") {
        return;
    }
    let b = Bundle::busybox("true");
    assert_create_fails(&b, "../escape", "invalid container id");
}

#[test]
fn non_namespaced_sysctl_is_refused() {
    if !need_root("non_namespaced_sysctl_is_refused") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["linux"]["sysctl"] = serde_json::json!({"vm.swappiness": "10"});
    assert_create_fails(&b, &unique("bad"), "linux.sysctl.vm.swappiness");
}

/// What plinth cannot honour is refused by name, never ignored: the LSM labels (no
/// AppArmor or SELinux support, as `features` says), Intel RDT, memory policies,
/// network devices, a bind mount option that is no flag, and scheduler values outside
/// what runtime-spec and the kernel take.
#[test]
fn fields_plinth_cannot_honour_are_refused_by_name() {
    if !need_root("fields_plinth_cannot_honour_are_refused_by_name") {
        return;
    }
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "/process/apparmorProfile",
            serde_json::json!("docker-default"),
            "process.apparmorProfile",
        ),
        (
            "/process/selinuxLabel",
            serde_json::json!("system_u:system_r:container_t:s0"),
            "process.selinuxLabel",
        ),
        (
            "/linux/mountLabel",
            serde_json::json!("system_u:object_r:container_file_t:s0"),
            "linux.mountLabel",
        ),
        (
            "/linux/intelRdt",
            serde_json::json!({"closID": "x"}),
            "linux.intelRdt",
        ),
        (
            "/linux/memoryPolicy",
            serde_json::json!({"mode": "MPOL_BIND", "nodes": "0"}),
            "linux.memoryPolicy",
        ),
        (
            "/linux/netDevices",
            serde_json::json!({"eth9": {}}),
            "linux.netDevices",
        ),
        (
            "/process/scheduler",
            serde_json::json!({"policy": "SCHED_DEADLINE", "runtime": 100, "deadline": 1000000}),
            "process.scheduler.runtime",
        ),
        (
            "/process/scheduler",
            serde_json::json!({"policy": "SCHED_DEADLINE", "runtime": 2000000, "deadline": 1000000}),
            "process.scheduler.deadline",
        ),
        (
            "/process/scheduler",
            serde_json::json!({"policy": "SCHED_FIFO"}),
            "process.scheduler.priority",
        ),
        (
            "/process/scheduler",
            serde_json::json!({"policy": "SCHED_OTHER", "nice": 30}),
            "process.scheduler.nice",
        ),
        (
            "/process/scheduler",
            serde_json::json!({"policy": "SCHED_OTHER", "flags": ["SCHED_RESET_ON_FORK"]}),
            "process.scheduler.flags[0]",
        ),
        (
            "/process/ioPriority",
            serde_json::json!({"class": "IOPRIO_CLASS_BE", "priority": 9}),
            "process.ioPriority.priority",
        ),
    ];
    for (at, value, field) in cases {
        let mut b = Bundle::busybox("true");
        let (parent, key) = at.rsplit_once('/').unwrap();
        b.config.pointer_mut(parent).unwrap()[key] = value;
        assert_create_fails(&b, &unique("bad"), field);
    }
    // ["rbind", "readonly"]: "readonly" is no flag; runc 1.1.5 drops it and gives a
    // writable mount (docs/compat.md).
    let mut b = Bundle::busybox("true");
    let src = b.tmp.0.join("src");
    std::fs::create_dir(&src).unwrap();
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    mounts.push(serde_json::json!({"destination": "/m", "type": "bind", "source": src, "options": ["rbind", "readonly"]}));
    let i = mounts.len() - 1;
    assert_create_fails(&b, &unique("bad"), &format!("mounts[{i}].options[1]"));
}
