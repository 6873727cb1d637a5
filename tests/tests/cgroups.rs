//! Cgroups through the real binary: limits land in the host's hierarchies (v1 on a
//! hybrid host like the development machines, v2 on a pure-v2 one), the process is in
//! the container's cgroup, the device rules hold, and delete removes the directories.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::json;

use plinth_tests::{need_root, unique, Bundle};

/// True when /sys/fs/cgroup is the unified hierarchy itself.
fn pure_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The directory of absolute cgroup path `path` for `controller` on this host.
fn dir(controller: &str, path: &str) -> PathBuf {
    let rel = path.trim_start_matches('/');
    if pure_v2() {
        Path::new("/sys/fs/cgroup").join(rel)
    } else {
        Path::new("/sys/fs/cgroup").join(controller).join(rel)
    }
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

#[test]
fn limits_are_applied_and_removed_on_delete() {
    if !need_root("limits_are_applied_and_removed_on_delete") {
        return;
    }
    let mut b = Bundle::busybox("sleep 100");
    let path = format!("/plinth-test/{}", unique("cg"));
    b.config["linux"]["cgroupsPath"] = json!(path);
    b.config["linux"]["resources"] = json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "memory": {"limit": 67108864},
        "pids": {"limit": 32},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
    });
    let id = unique("cg");
    b.create(&id);
    let pid = b.state(&id)["pid"].as_i64().unwrap();

    // The init is in the container's cgroup in every hierarchy that has a controller
    // we set.
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    if pure_v2() {
        assert!(own.contains(&format!("0::{path}\n")), "{own}");
        assert_eq!(read(dir("", &path).join("memory.max")), "67108864");
        assert_eq!(read(dir("", &path).join("pids.max")), "32");
        assert_eq!(read(dir("", &path).join("cpu.max")), "50000 100000");
    } else {
        for c in ["memory", "pids", "cpu", "devices"] {
            assert!(
                own.lines().any(|l| l.ends_with(&format!(":{c}:{path}"))),
                "{c} not at {path}: {own}"
            );
        }
        assert_eq!(
            read(dir("memory", &path).join("memory.limit_in_bytes")),
            "67108864"
        );
        assert_eq!(read(dir("pids", &path).join("pids.max")), "32");
        assert_eq!(read(dir("cpu", &path).join("cpu.shares")), "512");
        assert_eq!(read(dir("cpu", &path).join("cpu.cfs_quota_us")), "50000");
    }

    assert!(b.plinth(&["delete", "--force", &id]).status.success());
    for c in ["memory", "pids", "cpu", "devices"] {
        let d = dir(c, &path);
        assert!(!d.exists(), "{} left behind", d.display());
    }
    // The parent create made for the path goes too.
    let parent = dir("memory", "/plinth-test");
    if parent.exists() {
        let left: Vec<_> = std::fs::read_dir(&parent)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.file_name())
            .collect();
        assert!(
            left.iter().all(|n| !n
                .to_string_lossy()
                .starts_with(&format!("cg-{}", std::process::id()))),
            "children of this test left in {}: {left:?}",
            parent.display()
        );
    }
}

#[test]
fn device_rules_deny_all_but_the_standard_devices() {
    if !need_root("device_rules_deny_all_but_the_standard_devices") {
        return;
    }
    // /dev/mem (1:1) made by the process itself: mknod is allowed (as runc allows it),
    // reading it is not; /dev/null and /dev/zero stay usable.
    let mut b = Bundle::busybox(
        "echo x > /dev/null && echo null-ok; head -c 1 /dev/zero | wc -c; \
         mknod /dev/mem2 c 1 1 && echo mknod-ok; head -c 1 /dev/mem2 2>&1; echo rc=$?",
    );
    b.config["linux"]["resources"] = json!({"devices": [{"allow": false, "access": "rwm"}]});
    let caps = json!(["CAP_MKNOD", "CAP_DAC_OVERRIDE", "CAP_SYS_RAWIO"]);
    b.config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    let (code, out, err) = b.run(&unique("dev"));
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "null-ok", "{out}");
    assert_eq!(lines[1], "1", "{out}");
    assert_eq!(lines[2], "mknod-ok", "{out}");
    assert!(lines[3].contains("Operation not permitted"), "{out}");
    assert_eq!(lines[4], "rc=1", "{out}");
}

#[test]
fn pids_limit_is_enforced_inside() {
    if !need_root("pids_limit_is_enforced_inside") {
        return;
    }
    // pids.max=8: the shell and a few sleeps fit, 20 background sleeps do not, and
    // the shell's fork fails with EAGAIN.
    let mut b = Bundle::busybox("for i in $(seq 20); do sleep 5 & done; echo all-started");
    b.config["linux"]["resources"] = json!({"pids": {"limit": 8}});
    let (code, out, err) = b.run(&unique("pids"));
    assert_ne!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        !out.contains("all-started"),
        "20 forks succeeded under pids.max=8: {out}"
    );
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "the failure is the fork: {err}"
    );
}

#[test]
fn an_impossible_limit_fails_create_and_leaves_no_cgroup() {
    if !need_root("an_impossible_limit_fails_create_and_leaves_no_cgroup") {
        return;
    }
    let mut b = Bundle::busybox("true");
    let path = format!("/{}", unique("cgbad"));
    b.config["linux"]["cgroupsPath"] = json!(path);
    b.config["linux"]["resources"] = json!({"cpu": {"cpus": "9999"}});
    let id = unique("cgbad");
    let (code, err) = b.create_failing(&id);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cpuset"), "the error names the file: {err}");
    assert!(!b.root.join(&id).exists());
    for c in ["cpuset", "memory", "pids", "cpu"] {
        assert!(
            !dir(c, &path).exists(),
            "{} left behind",
            dir(c, &path).display()
        );
    }
}

#[test]
fn without_a_path_the_cgroup_is_the_id_below_the_callers_own() {
    if !need_root("without_a_path_the_cgroup_is_the_id_below_the_callers_own") {
        return;
    }
    let mut b = Bundle::busybox("sleep 100");
    b.config["linux"]["resources"] = json!({"pids": {"limit": 16}});
    let id = unique("cgdef");
    b.create(&id);
    let dirs = plinth_tests::default_cgroup_dirs(&id);
    assert!(!dirs.is_empty());
    for d in &dirs {
        assert!(
            d.is_dir(),
            "{} missing while the container exists",
            d.display()
        );
    }
    assert!(b.plinth(&["delete", "--force", &id]).status.success());
    for d in &dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}

/// On a pure cgroup v2 host the init is born in its cgroup (clone3 with
/// CLONE_INTO_CGROUP): no migration, so no wait for the migration's RCU grace period.
/// This host is hybrid, so the test makes a pure-v2 one in a private mount namespace:
/// /sys/fs/cgroup unmounted, cgroup2 (the same kernel hierarchy as the hybrid host's
/// unified one) mounted in its place. strace shows the clone3 call.
#[test]
fn on_pure_v2_the_init_is_born_in_its_cgroup() {
    let Some(strace) = root_and_strace("on_pure_v2_the_init_is_born_in_its_cgroup") else {
        return;
    };
    // Without a cgroup namespace /proc/self/cgroup shows the full path; with one, the
    // container's cgroup must be its root ("/"), which holds only if the namespace is
    // made once the init is in the cgroup (clone3 would take the runtime's).
    for cgroupns in [false, true] {
        let mut b = Bundle::busybox("cat /proc/self/cgroup");
        let id = unique("v2");
        let path = format!("/plinth-v2-{id}");
        b.config["linux"]["cgroupsPath"] = json!(path);
        let namespaces = b.config["linux"]["namespaces"].as_array_mut().unwrap();
        namespaces.retain(|n| n["type"] != "cgroup");
        if cgroupns {
            namespaces.push(json!({"type": "cgroup"}));
        }
        b.write();
        let trace = b.tmp.0.join("clone.strace");
        let (code, stdout, stderr) = on_pure_v2_view(&format!(
            "exec {} -f -qq -e trace=clone,clone3 -o {} {} --root {} run --bundle {} {id}",
            strace.display(),
            trace.display(),
            plinth_tests::plinth_bin().display(),
            b.root.display(),
            b.dir.display()
        ));
        assert_eq!(code, 0, "run on pure v2 failed: {stderr}");
        let want = if cgroupns {
            "0::/".to_string()
        } else {
            format!("0::{path}")
        };
        assert!(
            stdout.lines().any(|l| l == want),
            "cgroup namespace {cgroupns}: expected {want:?} in /proc/self/cgroup: {stdout}"
        );
        assert_cloned_into_cgroup(&trace);
        // The same hierarchy is mounted at /sys/fs/cgroup/unified here: run removed it.
        let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(Path::new)
            .find(|m| m.join("cgroup.controllers").exists())
            .expect("no cgroup2 mount on the host to look for leftovers in");
        let left = unified.join(path.trim_start_matches('/'));
        assert!(!left.exists(), "{} left behind", left.display());
    }
}

/// `exec` on pure v2: the new process is born in the container's cgroup as well
/// (clone3 with CLONE_INTO_CGROUP), in the same pure-v2 view as the test above.
#[test]
fn on_pure_v2_an_exec_is_born_in_the_containers_cgroup() {
    let Some(strace) = root_and_strace("on_pure_v2_an_exec_is_born_in_the_containers_cgroup")
    else {
        return;
    };
    let mut b = Bundle::busybox("sleep 30");
    let id = unique("v2x");
    let path = format!("/plinth-v2-{id}");
    b.config["linux"]["cgroupsPath"] = json!(path);
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "cgroup");
    b.write();
    let trace = b.tmp.0.join("exec.strace");
    let p = format!(
        "{} --root {}",
        plinth_tests::plinth_bin().display(),
        b.root.display()
    );
    let (code, stdout, stderr) = on_pure_v2_view(&format!(
        "{p} run -d --bundle {} {id} </dev/null >/dev/null 2>&1 && \
         {} -f -qq -e trace=clone,clone3 -o {} {p} exec {id} cat /proc/self/cgroup; \
         rc=$?; {p} delete -f {id}; exit $rc",
        b.dir.display(),
        strace.display(),
        trace.display(),
    ));
    assert_eq!(code, 0, "exec on pure v2 failed: {stderr}");
    let want = format!("0::{path}");
    assert!(
        stdout.lines().any(|l| l == want),
        "the exec'd process is not in {path}: {stdout}"
    );
    assert_cloned_into_cgroup(&trace);
}

/// On a hybrid host (v1 controllers, cgroup2 on /sys/fs/cgroup/unified) the init is born
/// in the unified hierarchy (clone3 with CLONE_INTO_CGROUP) and joins the v1 ones
/// itself: it ends up in the container's cgroup in each.
#[test]
fn on_a_hybrid_host_the_init_is_born_in_the_unified_hierarchy() {
    let test = "on_a_hybrid_host_the_init_is_born_in_the_unified_hierarchy";
    let Some(strace) = root_and_strace(test) else {
        return;
    };
    if !hybrid(test) {
        return;
    }
    let mut b = Bundle::busybox("cat /proc/self/cgroup");
    let id = unique("hy");
    let path = format!("/plinth-hybrid-{id}");
    b.config["linux"]["cgroupsPath"] = json!(path);
    b.write();
    let trace = b.tmp.0.join("clone.strace");
    let out = std::process::Command::new(strace)
        .args(["-f", "-qq", "-e", "trace=clone,clone3", "-o"])
        .arg(&trace)
        .arg(plinth_tests::plinth_bin())
        .arg("--root")
        .arg(&b.root)
        .args(["run", "--bundle"])
        .arg(&b.dir)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (code, stdout, stderr) = plinth_tests::text(&out);
    assert_eq!(code, 0, "run on the hybrid host failed: {stderr}");
    for want in [
        format!("0::{path}"),
        format!(":pids:{path}"),
        format!(":memory:{path}"),
    ] {
        assert!(
            stdout.lines().any(|l| l.ends_with(&want)),
            "expected a line ending in {want:?} in /proc/self/cgroup: {stdout}"
        );
    }
    assert_cloned_into_cgroup(&trace);
}

/// A host whose cgroup2 is mounted somewhere else than /sys/fs/cgroup/unified, beside
/// its v1 hierarchies, with a config that mounts the cgroups in the container: the
/// runtime takes it for a v1-only host until it resolves the cgroup after the fork, and
/// must not try to clone into a cgroup not yet made. (A private mount namespace gives
/// this host that layout.)
#[test]
fn a_cgroup2_mounted_elsewhere_does_not_break_create() {
    let test = "a_cgroup2_mounted_elsewhere_does_not_break_create";
    if !need_root(test) {
        return;
    }
    if !hybrid(test) {
        return;
    }
    let mut b = Bundle::busybox("cat /proc/self/cgroup");
    b.config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]
    }));
    b.write();
    let elsewhere = b.tmp.0.join("cg2");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let script = format!(
        "umount /sys/fs/cgroup/unified && mount -t cgroup2 none {} && exec {} --root {} run --bundle {} {}",
        elsewhere.display(),
        plinth_tests::plinth_bin().display(),
        b.root.display(),
        b.dir.display(),
        unique("cg2e"),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (code, stdout, stderr) = plinth_tests::text(&out);
    assert_eq!(code, 0, "run failed: {stderr}");
    assert!(
        stdout.contains(":pids:"),
        "no v1 cgroup in the container: {stdout}"
    );
}

/// Whether this host is hybrid (v1 controllers, cgroup2 on /sys/fs/cgroup/unified);
/// if not, `test` says it skips.
fn hybrid(test: &str) -> bool {
    let yes = !pure_v2() && Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists();
    if !yes {
        plinth_tests::skip(
            test,
            "this host is not hybrid (no cgroup2 on /sys/fs/cgroup/unified)",
        );
    }
    yes
}

/// strace's path, for a test that needs it and root; None (with the SKIP line) otherwise.
fn root_and_strace(test: &str) -> Option<PathBuf> {
    if !need_root(test) {
        return None;
    }
    let strace = plinth_tests::which("strace");
    if strace.is_none() {
        plinth_tests::skip(test, "strace is not installed (make deps installs it)");
    }
    strace
}

/// Runs `sh -c SCRIPT` in a private mount namespace where /sys/fs/cgroup is cgroup2:
/// a pure-v2 view of a hybrid host. Returns (exit code, stdout, stderr).
fn on_pure_v2_view(script: &str) -> (i32, String, String) {
    let script =
        format!("umount -R /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && {script}");
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    plinth_tests::text(&out)
}

/// strace's log at `trace` shows a clone3 call with CLONE_INTO_CGROUP.
fn assert_cloned_into_cgroup(trace: &Path) {
    let calls = std::fs::read_to_string(trace).unwrap();
    assert!(
        calls
            .lines()
            .any(|l| l.contains("clone3(") && l.contains("CLONE_INTO_CGROUP")),
        "no clone3 with CLONE_INTO_CGROUP: {calls}"
    );
}
