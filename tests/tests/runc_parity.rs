//! plinth and runc side by side: the same bundle through both (runc 1.1.5 from Debian,
//! which `make deps` installs), expecting the same result wherever engines, scripts and
//! users can tell the difference. docs/compat.md lists the differences that remain.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use plinth_tests::{need_root, plinth_bin, skip, text, unique, which, Bundle};

/// runc's path, or None (the test skips, or fails under CI).
fn runc(test: &str) -> Option<PathBuf> {
    if !need_root(test) {
        return None;
    }
    let r = which("runc");
    if r.is_none() {
        skip(test, "runc is not installed (make deps installs it)");
    }
    r
}

/// Runs the bundle through each runtime: [(name, (code, stdout, stderr))].
fn both(b: &Bundle, runc: &Path) -> Vec<(&'static str, (i32, String, String))> {
    vec![
        ("runc", b.run_with(runc, &unique("par"))),
        ("plinth", b.run_with(&plinth_bin(), &unique("par"))),
    ]
}

/// Asserts both runtimes ran the bundle with status 0 and printed the same stdout;
/// returns it.
fn same_output(b: &Bundle, runc: &Path) -> String {
    let r = both(b, runc);
    for (name, (code, out, err)) in &r {
        assert_eq!(*code, 0, "{name}: {out}{err}");
    }
    assert_eq!(r[0].1 .1, r[1].1 .1, "runc and plinth differ");
    r[0].1 .1.clone()
}

#[test]
fn a_relative_executable_is_found_from_the_working_directory() {
    let Some(runc) = runc("a_relative_executable_is_found_from_the_working_directory") else {
        return;
    };
    let mut b = Bundle::busybox("");
    b.config["process"]["args"] = json!(["./busybox", "echo", "found"]);
    b.config["process"]["cwd"] = json!("/bin");
    assert_eq!(same_output(&b, &runc), "found\n");

    // Found only through an empty PATH entry (the working directory): refused by both,
    // as Go's exec.LookPath refuses it.
    std::fs::create_dir(b.dir.join("rootfs/w")).unwrap();
    std::fs::copy(
        b.dir.join("rootfs/bin/busybox"),
        b.dir.join("rootfs/w/onlyhere"),
    )
    .unwrap();
    for path in ["PATH=:/bin", "PATH=/bin::/usr/bin", "PATH=.:/bin"] {
        b.config["process"]["args"] = json!(["onlyhere", "echo", "found"]);
        b.config["process"]["cwd"] = json!("/w");
        b.config["process"]["env"] = json!([path]);
        for (name, (code, out, err)) in both(&b, &runc) {
            assert_ne!(code, 0, "{name} {path}: {out}");
            assert!(
                err.contains("cannot run executable found relative to current directory"),
                "{name} {path}: {err}"
            );
        }
    }
}

#[test]
fn home_comes_from_the_containers_passwd_or_is_the_root() {
    let Some(runc) = runc("home_comes_from_the_containers_passwd_or_is_the_root") else {
        return;
    };
    let mut b = Bundle::busybox("echo HOME=$HOME");
    b.config["process"]["env"] = json!(["PATH=/bin"]);
    assert_eq!(same_output(&b, &runc), "HOME=/root\n");
    b.config["process"]["user"] = json!({"uid": 4242, "gid": 0});
    assert_eq!(same_output(&b, &runc), "HOME=/\n");
    // Given in the config, it is kept.
    b.config["process"]["env"] = json!(["PATH=/bin", "HOME=/x"]);
    assert_eq!(same_output(&b, &runc), "HOME=/x\n");
}

#[test]
fn a_new_network_namespace_has_its_loopback_up() {
    let Some(runc) = runc("a_new_network_namespace_has_its_loopback_up") else {
        return;
    };
    let b = Bundle::busybox(
        "ip link show lo | grep -q ',UP' && echo lo-up; ping -c1 -W2 127.0.0.1 >/dev/null && echo ping-ok",
    );
    assert_eq!(same_output(&b, &runc), "lo-up\nping-ok\n");
}

#[test]
fn a_tmpfs_without_mode_keeps_the_directory_mode() {
    let Some(runc) = runc("a_tmpfs_without_mode_keeps_the_directory_mode") else {
        return;
    };
    let mut b = Bundle::busybox("stat -c %a /data /fresh");
    let data = b.dir.join("rootfs/data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    for dest in ["/data", "/fresh"] {
        mounts.push(
            json!({"destination": dest, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}),
        );
    }
    // /data keeps 750; /fresh, made by the runtime, is tmpfs's own 1777. (Each
    // runtime leaves /fresh in the image: removed before each run.)
    b.write();
    for runtime in [runc.clone(), plinth_bin()] {
        let _ = std::fs::remove_dir(b.dir.join("rootfs/fresh"));
        let (code, out, err) = b.run_with(&runtime, &unique("part"));
        assert_eq!(
            (code, out.as_str()),
            (0, "750\n1777\n"),
            "{}: {err}",
            runtime.display()
        );
    }
}

#[test]
fn the_init_has_a_session_and_process_group_of_its_own() {
    let Some(runc) = runc("the_init_has_a_session_and_process_group_of_its_own") else {
        return;
    };
    // Fields 5 and 6 of /proc/self/stat: the process group and the session.
    let b = Bundle::busybox("cut -d' ' -f5,6 /proc/self/stat");
    assert_eq!(same_output(&b, &runc), "1 1\n");
}

/// A detached container running `sleep`, made by `runtime`; `exec ARGS` in it,
/// then deleted: (code, stdout, stderr).
fn exec_in(b: &Bundle, runtime: &Path, args: &[&str]) -> (i32, String, String) {
    let id = unique("parx");
    let status = b
        .cmd_with(runtime)
        .args(["run", "-d", "--bundle"])
        .arg(&b.dir)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{}: run -d", runtime.display());
    let mut cmd = b.cmd_with(runtime);
    cmd.arg("exec");
    let split = args.iter().position(|a| *a == "--").unwrap_or(0);
    cmd.args(&args[..split]).arg(&id).args(&args[split + 1..]);
    let r = text(&cmd.stdin(Stdio::null()).output().unwrap());
    let _ = b
        .cmd_with(runtime)
        .args(["delete", "--force", &id])
        .output();
    r
}

/// exec ARGS through both runtimes; asserts success and the same stdout.
fn same_exec(b: &Bundle, runc: &Path, args: &[&str]) -> String {
    b.write();
    let r = exec_in(b, runc, args);
    let p = exec_in(b, &plinth_bin(), args);
    assert_eq!(r.0, 0, "runc exec {args:?}: {}{}", r.1, r.2);
    assert_eq!(p.0, 0, "plinth exec {args:?}: {}{}", p.1, p.2);
    assert_eq!(r.1, p.1, "runc and plinth differ for exec {args:?}");
    r.1
}

#[test]
fn exec_keeps_the_configs_group_takes_its_oom_score_and_a_process_group() {
    let Some(runc) = runc("exec_keeps_the_configs_group_takes_its_oom_score_and_a_process_group")
    else {
        return;
    };
    let mut b = Bundle::busybox("sleep 100");
    b.config["process"]["user"] = json!({"uid": 0, "gid": 55});
    b.config["process"]["oomScoreAdj"] = json!(500);
    let out = same_exec(
        &b,
        &runc,
        &[
            "--user",
            "4242",
            "--",
            "sh",
            "-c",
            "id -u; id -g; cat /proc/self/oom_score_adj; \
             [ $(cut -d' ' -f5 /proc/self/stat) = $$ ] && echo own-group; \
             [ $(cut -d' ' -f6 /proc/self/stat) = $$ ] && echo own-session",
        ],
    );
    assert_eq!(out, "4242\n55\n500\nown-group\nown-session\n");
    // --process without oomScoreAdj: the container's, as runc.
    let proc_file = b.tmp.0.join("process.json");
    let mut p = json!({"args": ["cat", "/proc/self/oom_score_adj"], "cwd": "/",
                       "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"]});
    std::fs::write(&proc_file, p.to_string()).unwrap();
    let out = same_exec(&b, &runc, &["--process", proc_file.to_str().unwrap(), "--"]);
    assert_eq!(out, "500\n");
    // --process with its own: runtime-spec makes oomScoreAdj a property of the process
    // (containerd sends 1000 for `kubectl exec`), and plinth gives it; runc 1.1.5 gives
    // the container's instead (docs/compat.md).
    p["oomScoreAdj"] = json!(600);
    std::fs::write(&proc_file, p.to_string()).unwrap();
    let args = ["--process", proc_file.to_str().unwrap(), "--"];
    let (code, out, err) = exec_in(&b, &plinth_bin(), &args);
    assert_eq!((code, out.as_str()), (0, "600\n"), "plinth: {err}");
    let (code, out, err) = exec_in(&b, &runc, &args);
    assert_eq!(
        (code, out.as_str()),
        (0, "500\n"),
        "runc 1.1.5 changed: {err}"
    );
}

#[test]
fn a_hook_without_env_inherits_the_runtimes_environment() {
    let Some(runc) = runc("a_hook_without_env_inherits_the_runtimes_environment") else {
        return;
    };
    let mut b = Bundle::busybox("true");
    let seen = b.tmp.0.join("hook-env");
    b.config["hooks"] = json!({"poststart": [
        {"path": "/bin/sh", "args": ["sh", "-c", format!("env > {}", seen.display())]},
    ]});
    for runtime in [runc.clone(), plinth_bin()] {
        let _ = std::fs::remove_file(&seen);
        b.write();
        let out = b
            .cmd_with(&runtime)
            .env("PLINTH_PARITY_MARK", "inherited")
            .args(["run", "--bundle"])
            .arg(&b.dir)
            .arg(unique("parh"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {out:?}", runtime.display());
        let env = std::fs::read_to_string(&seen).unwrap_or_default();
        assert!(
            env.contains("PLINTH_PARITY_MARK=inherited"),
            "{}: the hook's environment: {env}",
            runtime.display()
        );
    }
}

#[test]
fn delete_force_of_a_paused_container_kills_it() {
    let Some(runc) = runc("delete_force_of_a_paused_container_kills_it") else {
        return;
    };
    let b = Bundle::busybox("sleep 100");
    b.write();
    for runtime in [runc.clone(), plinth_bin()] {
        let id = unique("parp");
        let run = |args: &[&str]| {
            b.cmd_with(&runtime)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
        };
        assert!(run(&["run", "-d", "--bundle", b.dir.to_str().unwrap(), &id]).success());
        let state = text(&b.cmd_with(&runtime).args(["state", &id]).output().unwrap()).1;
        let pid = serde_json::from_str::<Value>(&state).unwrap()["pid"]
            .as_i64()
            .unwrap();
        assert!(run(&["pause", &id]).success(), "{}", runtime.display());
        let del = b
            .cmd_with(&runtime)
            .args(["delete", "--force", &id])
            .output()
            .unwrap();
        assert!(del.status.success(), "{}: {del:?}", runtime.display());
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "{}: the paused init survived delete --force",
            runtime.display()
        );
        assert!(
            !run(&["state", &id]).success(),
            "{}: still listed",
            runtime.display()
        );
    }
}

#[test]
fn a_syscall_name_of_another_architecture_is_accepted() {
    let Some(runc) = runc("a_syscall_name_of_another_architecture_is_accepted") else {
        return;
    };
    let mut b = Bundle::busybox("mkdir /tmp/q 2>/dev/null || echo denied");
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["bdflush", "mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
    });
    assert_eq!(same_output(&b, &runc), "denied\n");
}

#[test]
fn run_keep_and_no_subreaper_and_exec_cgroup_are_taken() {
    let Some(runc) = runc("run_keep_and_no_subreaper_and_exec_cgroup_are_taken") else {
        return;
    };
    let b = Bundle::busybox("exit 3");
    b.write();
    for runtime in [runc.clone(), plinth_bin()] {
        let id = unique("park");
        let out = b
            .cmd_with(&runtime)
            .args(["run", "--keep", "--no-subreaper", "--bundle"])
            .arg(&b.dir)
            .arg(&id)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}: {out:?}", runtime.display());
        let (code, st, _) = text(&b.cmd_with(&runtime).args(["state", &id]).output().unwrap());
        assert_eq!(code, 0, "{}: --keep kept no state", runtime.display());
        assert_eq!(
            serde_json::from_str::<Value>(&st).unwrap()["status"],
            "stopped",
            "{}",
            runtime.display()
        );
        let del = b.cmd_with(&runtime).args(["delete", &id]).output().unwrap();
        assert!(del.status.success(), "{}: {del:?}", runtime.display());
    }
    // The global --rootless switch is taken (engines pass it), and exec --cgroup puts
    // the process in a sub-cgroup of the container's.
    let b = Bundle::busybox("sleep 100");
    b.write();
    for runtime in [runc.clone(), plinth_bin()] {
        let id = unique("parc");
        let status = b
            .cmd_with(&runtime)
            .args(["--rootless", "auto", "run", "-d", "--bundle"])
            .arg(&b.dir)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "{}: --rootless auto run -d",
            runtime.display()
        );
        let state = text(&b.cmd_with(&runtime).args(["state", &id]).output().unwrap()).1;
        let pid = serde_json::from_str::<Value>(&state).unwrap()["pid"]
            .as_i64()
            .unwrap();
        // The container's pids cgroup, from its init, and a sub-cgroup made there.
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let line = own.lines().find(|l| l.contains(":pids:")).unwrap();
        let dir = Path::new("/sys/fs/cgroup/pids")
            .join(line.rsplit(':').next().unwrap().trim_start_matches('/'));
        std::fs::create_dir(dir.join("sub")).unwrap();
        let out = b
            .cmd_with(&runtime)
            .args([
                "exec",
                "--cgroup",
                "pids:sub",
                &id,
                "cat",
                "/proc/self/cgroup",
            ])
            .output()
            .unwrap();
        let _ = b
            .cmd_with(&runtime)
            .args(["delete", "--force", &id])
            .output();
        let cg = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: exec --cgroup: {out:?}",
            runtime.display()
        );
        let pids_line = cg
            .lines()
            .find(|l| l.contains(":pids:"))
            .unwrap_or_default();
        assert!(pids_line.ends_with("/sub"), "{}: {cg}", runtime.display());
        // delete --force took the sub-cgroup with the container's own.
        assert!(
            !dir.exists(),
            "{}: {} is left after delete",
            runtime.display(),
            dir.display()
        );
    }
}

#[test]
fn update_takes_runcs_flags() {
    let Some(runc) = runc("update_takes_runcs_flags") else {
        return;
    };
    let b = Bundle::busybox("sleep 100");
    b.write();
    for runtime in [runc.clone(), plinth_bin()] {
        let id = unique("paru");
        let status = b
            .cmd_with(&runtime)
            .args(["run", "-d", "--bundle"])
            .arg(&b.dir)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let upd = |args: &[&str]| {
            b.cmd_with(&runtime)
                .arg("update")
                .args(args)
                .arg(&id)
                .output()
                .unwrap()
        };
        // Kernel memory: accepted and ignored (runc 1.1+).
        let out = upd(&["--kernel-memory", "64m", "--kernel-memory-tcp", "64m"]);
        assert!(out.status.success(), "{}: {out:?}", runtime.display());
        // Intel RDT without RDT: refused, but as a command error, not a usage error.
        for flag in ["--l3-cache-schema", "--mem-bw-schema"] {
            let out = upd(&[flag, "L3:0=f"]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{} {flag}: {out:?}",
                runtime.display()
            );
        }
        let _ = b
            .cmd_with(&runtime)
            .args(["delete", "--force", &id])
            .output();
    }
}

/// `RUNTIME spec [--rootless]` in a fresh directory, parsed.
fn spec_of(runtime: &Path, rootless: bool) -> Value {
    let dir = plinth_tests::TempDir::new("plinth-spec");
    let mut c = Command::new(runtime);
    c.arg("spec");
    if rootless {
        c.arg("--rootless");
    }
    let out = c.current_dir(&dir.0).output().unwrap();
    assert!(out.status.success(), "{} spec: {out:?}", runtime.display());
    serde_json::from_slice(&std::fs::read(dir.0.join("config.json")).unwrap()).unwrap()
}

#[test]
fn spec_has_runcs_process_and_namespaces() {
    let Some(runc) = runc("spec_has_runcs_process_and_namespaces") else {
        return;
    };
    for rootless in [false, true] {
        let (r, p) = (spec_of(&runc, rootless), spec_of(&plinth_bin(), rootless));
        for key in ["terminal", "args", "cwd", "env"] {
            assert_eq!(
                r["process"][key], p["process"][key],
                "process.{key}, rootless {rootless}"
            );
        }
        let types = |s: &Value| -> Vec<String> {
            s["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["type"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(types(&r), types(&p), "namespaces, rootless {rootless}");
    }
}

#[test]
fn version_names_the_spec_version_features_gives() {
    let v = text(
        &Command::new(plinth_bin())
            .arg("--version")
            .output()
            .unwrap(),
    )
    .1;
    let f: Value = serde_json::from_str(
        &text(&Command::new(plinth_bin()).arg("features").output().unwrap()).1,
    )
    .unwrap();
    let spec_line = v.lines().find(|l| l.starts_with("spec: ")).unwrap();
    assert_eq!(
        spec_line.trim_start_matches("spec: "),
        f["ociVersionMax"].as_str().unwrap()
    );
}

/// The state JSON each runtime gives a startContainer hook (run in the container,
/// after `start`) and a createContainer hook, and the namespaces the latter runs in,
/// as seen from the container's process.
#[test]
fn hooks_get_the_state_and_namespaces_runtime_spec_names() {
    let Some(runc) = runc("hooks_get_the_state_and_namespaces_runtime_spec_names") else {
        return;
    };
    let mut b = Bundle::busybox(
        "cat /dev/shm/start; echo; cat /dev/shm/create-ns; readlink /proc/self/ns/mnt; readlink /proc/self/ns/uts",
    );
    b.config["annotations"] = json!({"org.example/k": "v"});
    // A tmpfs the createContainer hook writes through from the host's side: mounted
    // before the hooks run, so a hook in the container's mount namespace sees it.
    let scratch = b.tmp.0.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    b.config["hooks"] = json!({
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /dev/shm/start"]}],
        "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", format!(
            "cat > /dev/null; (readlink /proc/self/ns/mnt; readlink /proc/self/ns/uts) > {}/rootfs/dev/shm/create-ns", b.dir.display()
        )]}],
    });
    b.write();
    for runtime in [runc.clone(), plinth_bin()] {
        let id = unique("parhk");
        let (code, out, err) = b.run_with(&runtime, &id);
        let name = runtime.display();
        assert_eq!(code, 0, "{name}: {out}{err}");
        let mut lines = out.lines();
        let start: Value = serde_json::from_str(lines.next().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{name}: the startContainer hook's state: {e}: {out}"));
        assert_eq!(start["id"], id.as_str(), "{name}: {start}");
        assert_eq!(
            start["annotations"]["org.example/k"], "v",
            "{name}: {start}"
        );
        // runtime-spec's pid is the host's view: plinth's; runc 1.1.5 gives the
        // container's own (1) to this hook, which runs inside (docs/compat.md).
        let pid = start["pid"].as_i64().unwrap_or(0);
        if runtime == runc {
            assert_eq!(pid, 1, "runc 1.1.5 changed: {start}");
        } else {
            assert!(pid > 1, "{name}: the pid as the host sees it: {start}");
        }
        let rest: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
        // The createContainer hook's mount and uts namespaces are the container's.
        assert_eq!(rest.len(), 4, "{name}: {out}");
        assert_eq!(
            rest[0], rest[2],
            "{name}: createContainer's mount namespace: {out}"
        );
        assert_eq!(
            rest[1], rest[3],
            "{name}: createContainer's uts namespace: {out}"
        );
    }
}

/// A hook that neither reads its stdin nor exits, given a state larger than a pipe
/// holds: its timeout still ends it, and create fails in about that time.
#[test]
fn a_hook_that_does_not_read_a_large_state_is_bounded_by_its_timeout() {
    if !need_root("a_hook_that_does_not_read_a_large_state_is_bounded_by_its_timeout") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["annotations"] = json!({"big": "x".repeat(256 * 1024)});
    b.config["hooks"] = json!({"createRuntime": [
        {"path": "/bin/sh", "args": ["sh", "-c", "sleep 60"], "timeout": 1}
    ]});
    b.write();
    let start = std::time::Instant::now();
    // stderr to a file: the killed hook's own child (sleep) keeps the runtime's
    // stderr open until it exits, and a pipe read would wait for it.
    let err_path = b.tmp.0.join("bighook.err");
    let mut child = b
        .cmd()
        .args(["create", "--bundle"])
        .arg(&b.dir)
        .arg(unique("bighook"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    // A runtime that blocks in the write would hang: give up at 20 s.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let took = start.elapsed();
    let err = std::fs::read_to_string(&err_path).unwrap();
    let status = status.expect("create still running after 20 s: the state write blocked");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("timed out after 1s"), "{err}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
}

/// A mount whose destination is a dangling symlink in the image is made where the
/// link points, inside the rootfs (absolute and relative links alike); and, in a user
/// namespace, a bind source only root may enter is opened with the runtime's
/// credentials, before the switch to the namespace's root.
#[test]
fn dangling_destinations_and_root_only_sources() {
    let Some(runc) = runc("dangling_destinations_and_root_only_sources") else {
        return;
    };
    let mut b = Bundle::busybox("ls /abs; ls /rel");
    let src = b.tmp.0.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("marker"), "").unwrap();
    let rootfs = b.dir.join("rootfs");
    let mounts = b.config["mounts"].as_array_mut().unwrap();
    for dest in ["/abs", "/rel"] {
        mounts.push(
            json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind"]}),
        );
    }
    b.write();
    for runtime in [runc.clone(), plinth_bin()] {
        for d in ["abs", "rel", "targets"] {
            let _ = std::fs::remove_file(rootfs.join(d));
            let _ = std::fs::remove_dir_all(rootfs.join(d));
        }
        std::os::unix::fs::symlink("/targets/a", rootfs.join("abs")).unwrap();
        std::os::unix::fs::symlink("targets/b", rootfs.join("rel")).unwrap();
        let (code, out, err) = b.run_with(&runtime, &unique("pardl"));
        let name = runtime.display();
        assert_eq!(
            (code, out.as_str()),
            (0, "marker\nmarker\n"),
            "{name}: {err}"
        );
        for made in ["targets/a", "targets/b"] {
            assert!(
                rootfs.join(made).is_dir(),
                "{name}: {made} was not made in the rootfs"
            );
        }
    }

    // A user namespace, and a source directory only (host) root may enter.
    let mut b = Bundle::busybox("true");
    let secret = b.tmp.0.join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    b.user_namespaced();
    b.config["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/secret", "type": "bind", "source": secret, "options": ["rbind"]}),
    );
    for runtime in [runc.clone(), plinth_bin()] {
        let (code, out, err) = b.run_with(&runtime, &unique("parsec"));
        assert_eq!(code, 0, "{}: {out}{err}", runtime.display());
    }
}

/// A process in a user namespace of its own whose maps the test wrote (root of the
/// namespace is host uid and gid 100000, 65536 ids): what containerd makes for a pod
/// with `hostUsers: false`. Killed when dropped.
struct UserNs(std::process::Child);

impl UserNs {
    fn new() -> UserNs {
        let child = Command::new("unshare")
            .args(["--user", "sleep", "1000"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let ns = UserNs(child);
        let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_link(ns.path()).ok().as_ref() == Some(&ours) {
            assert!(
                std::time::Instant::now() < deadline,
                "unshare --user never unshared"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let pid = ns.0.id();
        for f in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{f}"), "0 100000 65536\n").unwrap();
        }
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/user", self.0.id()))
    }
}

impl Drop for UserNs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A bundle joining the user namespace at `path`, with `map` as its mappings.
fn joining(path: &Path, map: Value) -> Bundle {
    let mut b = Bundle::busybox("id -u; cat /proc/self/uid_map");
    b.user_namespaced();
    for ns in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "user" {
            ns["path"] = json!(path);
        }
    }
    b.config["linux"]["uidMappings"] = map.clone();
    b.config["linux"]["gidMappings"] = map;
    b
}

/// containerd joins a pod's user namespace by path and sends its mappings too. runc
/// runs that (1.1.5 ignores the mappings; 1.2 and later check that they are the
/// namespace's and refuse others): plinth runs it and, as runc 1.2, refuses mappings
/// that are not the joined namespace's, naming the field. A namespace bind-mounted
/// elsewhere (not /proc/PID/ns/user) is read through a child that enters it.
#[test]
fn joining_a_user_namespace_with_its_own_mappings() {
    let Some(runc) = runc("joining_a_user_namespace_with_its_own_mappings") else {
        return;
    };
    let ns = UserNs::new();
    let own = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    let out = same_output(&joining(&ns.path(), own.clone()), &runc);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("0"), "{out}");
    assert_eq!(
        lines
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["0", "100000", "65536"]),
        "{out}"
    );

    let other = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    let (code, out, err) = joining(&ns.path(), other).run_with(&plinth_bin(), &unique("par"));
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("linux.uidMappings") && err.contains("user namespace joined from"),
        "{err}"
    );

    // The same namespace bind-mounted on a file of the bundle's scratch directory.
    let b = joining(Path::new("/nonexistent"), own.clone());
    let pinned = b.tmp.0.join("userns");
    std::fs::write(&pinned, "").unwrap();
    let m = Command::new("mount")
        .arg("--bind")
        .arg(ns.path())
        .arg(&pinned)
        .output()
        .unwrap();
    assert!(m.status.success(), "mount --bind: {m:?}");
    let mut b = b;
    for n in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "user" {
            n["path"] = json!(pinned);
        }
    }
    let (code, out, err) = b.run_with(&plinth_bin(), &unique("par"));
    let _ = Command::new("umount").arg(&pinned).status();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("0\n") && out.contains("100000"), "{out}");

    // What containerd 2 sends for a hostUsers: false pod's volumes: a bind mount with
    // the namespace's mappings and neither `idmap` nor `ridmap`. runc 1.2 makes it an
    // id-mapped mount (runc 1.1.5 has none): a host directory owned by root is the
    // container's root's. Mappings that are not the namespace's are refused by field.
    let host = b.tmp.0.join("volume");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("f"), "x").unwrap();
    let volume = |map: &Value| {
        json!({"destination": "/volume", "type": "bind", "source": host,
               "options": ["rbind", "rw"], "uidMappings": map, "gidMappings": map})
    };
    let mut b = joining(&ns.path(), own.clone());
    b.config["process"]["args"] = json!(["sh", "-c", "stat -c '%u:%g' /volume/f"]);
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(volume(&own));
    let (code, out, err) = b.run_with(&plinth_bin(), &unique("par"));
    assert_eq!((code, out.as_str()), (0, "0:0\n"), "{err}");
    let other = json!([{"containerID": 0, "hostID": 300000, "size": 65536}]);
    let mut b = joining(&ns.path(), own);
    let last = b.config["mounts"].as_array().unwrap().len();
    b.config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(volume(&other));
    let (code, _, err) = b.run_with(&plinth_bin(), &unique("par"));
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("mounts[{last}].uidMappings")) && err.contains("joined from"),
        "{err}"
    );
}
