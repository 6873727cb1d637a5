//! plinth run by an ordinary user: the test makes one (with /etc/subuid and
//! /etc/subgid ranges), runs the real binary as that user, and checks what the user
//! can and cannot do. As root it sets things up; the containers run unprivileged.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use plinth_tests::{busybox_rootfs, need_root, plinth_bin, text, unique, TempDir};

/// An unprivileged user for the tests, made once: (name, uid, gid).
fn user(name: &str) -> (String, u32, u32) {
    let exists = Command::new("id").arg("-u").arg(name).output().unwrap();
    if !exists.status.success() {
        // useradd gives the new user a subordinate id range in /etc/subuid and
        // /etc/subgid (SUB_UID_MIN.. in login.defs).
        let out = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd {name}: {out:?}");
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").arg(flag).arg(name).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let (uid, gid) = (id("-u"), id("-g"));
    for f in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if !text.lines().any(|l| l.starts_with(&format!("{name}:"))) {
            // A fixed range well above the ones useradd hands out.
            let start = 500_000 + (uid % 1000) * 65_536;
            std::fs::write(f, format!("{text}{name}:{start}:65536\n")).unwrap();
        }
    }
    (name.to_string(), uid, gid)
}

/// The user's first subordinate uid and gid.
fn subids(name: &str) -> (u32, u32) {
    let first = |f: &str| -> u32 {
        std::fs::read_to_string(f)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|r| r.split(':').next())
            .unwrap()
            .parse()
            .unwrap()
    };
    (first("/etc/subuid"), first("/etc/subgid"))
}

/// A bundle owned by the user, with the config `plinth spec --rootless` writes (run as
/// that user), its args replaced by `sh -c script`.
struct RootlessBundle {
    tmp: TempDir,
    dir: PathBuf,
    runtime_dir: PathBuf,
    uid: u32,
    gid: u32,
}

impl RootlessBundle {
    fn new(name: &str, script: &str) -> RootlessBundle {
        let (_, uid, gid) = user(name);
        let tmp = TempDir::new("plinth-rootless");
        let dir = tmp.0.join("bundle");
        busybox_rootfs(&dir.join("rootfs"));
        let runtime_dir = tmp.0.join("xdg");
        std::fs::create_dir_all(&runtime_dir).unwrap();
        // An unprivileged user unpacks its own images: the rootfs is the user's.
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(&tmp.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "chown: {out:?}");
        std::fs::set_permissions(
            &runtime_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let b = RootlessBundle {
            tmp,
            dir,
            runtime_dir,
            uid,
            gid,
        };
        let out = b.plinth(&["spec", "--rootless", "--bundle", b.dir.to_str().unwrap()]);
        assert!(out.status.success(), "plinth spec --rootless: {out:?}");
        let mut c = b.config();
        c["process"]["args"] = json!(["sh", "-c", script]);
        c["process"]["terminal"] = json!(false);
        b.write(&c);
        b
    }

    fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("config.json")).unwrap()).unwrap()
    }

    fn write(&self, c: &Value) {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(c).unwrap(),
        )
        .unwrap();
    }

    /// `plinth ARGS` as the user, with its own XDG_RUNTIME_DIR (so the default --root).
    fn plinth(&self, args: &[&str]) -> Output {
        self.plinth_as(self.uid, self.gid, &self.runtime_dir, args)
    }

    fn plinth_as(&self, uid: u32, gid: u32, xdg: &Path, args: &[&str]) -> Output {
        Command::new(plinth_bin())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("XDG_RUNTIME_DIR", xdg)
            .env("HOME", &self.tmp.0)
            .current_dir(&self.tmp.0)
            .stdin(Stdio::null())
            .uid(uid)
            .gid(gid)
            .output()
            .unwrap()
    }

    fn run(&self, id: &str) -> (i32, String, String) {
        text(&self.plinth(&["run", "--bundle", self.dir.to_str().unwrap(), id]))
    }
}

impl Drop for RootlessBundle {
    fn drop(&mut self) {
        let root = self.runtime_dir.join("plinth");
        if let Ok(rd) = std::fs::read_dir(&root) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.plinth(&["delete", "--force", &id]);
            }
        }
    }
}

#[test]
fn spec_rootless_runs_as_is_and_the_user_is_root_inside() {
    if !need_root("spec_rootless_runs_as_is_and_the_user_is_root_inside") {
        return;
    }
    let b = RootlessBundle::new("plinth-rl-a", "id -u; cat /proc/self/uid_map");
    let (code, out, err) = b.run(&unique("rl"));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "{out}");
    let map: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        map,
        ["0", &b.uid.to_string(), "1"],
        "a single-id mapping of the user"
    );
    // The state lived under $XDG_RUNTIME_DIR/plinth, owned by the user.
    let st = std::fs::metadata(b.runtime_dir.join("plinth")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&st), b.uid);
    assert!(err.contains("without cgroups"), "said once: {err}");
    assert_eq!(err.matches("without cgroups").count(), 1, "{err}");
}

#[test]
fn files_get_the_mapped_owner_and_host_files_stay_out_of_reach() {
    if !need_root("files_get_the_mapped_owner_and_host_files_stay_out_of_reach") {
        return;
    }
    let b = RootlessBundle::new(
        "plinth-rl-a",
        "touch /shared/made-inside && echo made; touch /rootonly/x 2>&1; echo rc=$?",
    );
    let shared = b.tmp.0.join("shared");
    std::fs::create_dir(&shared).unwrap();
    nix::unistd::chown(&shared, Some(b.uid.into()), Some(b.gid.into())).unwrap();
    let rootonly = b.tmp.0.join("rootonly");
    std::fs::create_dir(&rootonly).unwrap();
    let mut c = b.config();
    let mounts = c["mounts"].as_array_mut().unwrap();
    for (dest, src) in [("/shared", &shared), ("/rootonly", &rootonly)] {
        mounts.push(
            json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rw"]}),
        );
    }
    b.write(&c);
    let (code, out, err) = b.run(&unique("rl"));
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("made\n"), "{out}");
    let md = std::fs::metadata(shared.join("made-inside")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&md),
        b.uid,
        "owned by the user on the host"
    );
    assert!(
        out.contains("Permission denied"),
        "a root-owned host dir stays read-only: {out}"
    );
    assert!(!rootonly.join("x").exists());
}

#[test]
fn full_ranges_go_through_newuidmap() {
    if !need_root("full_ranges_go_through_newuidmap") {
        return;
    }
    let b = RootlessBundle::new(
        "plinth-rl-a",
        "cat /proc/self/uid_map /proc/self/gid_map; chown 1000:1000 /shared/f && echo chowned",
    );
    let (su, sg) = subids("plinth-rl-a");
    let shared = b.tmp.0.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("f"), "x").unwrap();
    nix::unistd::chown(&shared, Some(b.uid.into()), Some(b.gid.into())).unwrap();
    nix::unistd::chown(&shared.join("f"), Some(b.uid.into()), Some(b.gid.into())).unwrap();
    let mut c = b.config();
    c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": b.uid, "size": 1},
                                       {"containerID": 1, "hostID": su, "size": 65536}]);
    c["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": b.gid, "size": 1},
                                       {"containerID": 1, "hostID": sg, "size": 65536}]);
    c["mounts"].as_array_mut().unwrap().push(
        json!({"destination": "/shared", "type": "bind", "source": shared, "options": ["rbind", "rw"]}),
    );
    b.write(&c);
    let (code, out, err) = b.run(&unique("rl"));
    assert_eq!(code, 0, "{err}");
    let maps: Vec<String> = out
        .lines()
        .take(4)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        maps,
        [
            format!("0 {} 1", b.uid),
            format!("1 {su} 65536"),
            format!("0 {} 1", b.gid),
            format!("1 {sg} 65536"),
        ],
        "uid_map then gid_map: {out}"
    );
    assert!(out.contains("chowned"), "{out}");
    let md = std::fs::metadata(shared.join("f")).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&md),
        su + 999,
        "container uid 1000 is subuid+999"
    );
}

#[test]
fn exec_kill_delete_work_and_other_users_see_nothing() {
    if !need_root("exec_kill_delete_work_and_other_users_see_nothing") {
        return;
    }
    let b = RootlessBundle::new("plinth-rl-a", "sleep 1000");
    let id = unique("rl");
    let out = Command::new(plinth_bin())
        .args(["create", "--bundle", b.dir.to_str().unwrap(), &id])
        .env_clear()
        .env("XDG_RUNTIME_DIR", &b.runtime_dir)
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(b.tmp.0.join("create.err")).unwrap())
        .uid(b.uid)
        .gid(b.gid)
        .status()
        .unwrap();
    assert!(
        out.success(),
        "{}",
        std::fs::read_to_string(b.tmp.0.join("create.err")).unwrap()
    );
    let out = b.plinth(&["start", &id]);
    assert!(out.status.success(), "start {id}: {out:?}");
    let e = b.plinth(&["exec", &id, "sh", "-c", "id -u; echo in-exec"]);
    assert_eq!(String::from_utf8_lossy(&e.stdout), "0\nin-exec\n", "{e:?}");

    // Another user: its own list is empty, and the first user's state is out of reach.
    let (_, ouid, ogid) = user("plinth-rl-b");
    let other_xdg = b.tmp.0.join("xdg-b");
    std::fs::create_dir_all(&other_xdg).unwrap();
    nix::unistd::chown(&other_xdg, Some(ouid.into()), Some(ogid.into())).unwrap();
    let l = b.plinth_as(ouid, ogid, &other_xdg, &["list", "-q"]);
    assert!(l.status.success(), "{l:?}");
    assert_eq!(String::from_utf8_lossy(&l.stdout), "");
    let theirs = b.runtime_dir.join("plinth");
    for args in [
        vec!["state", id.as_str()],
        vec!["kill", id.as_str(), "KILL"],
        vec!["delete", "-f", id.as_str()],
    ] {
        let mut a = vec!["--root", theirs.to_str().unwrap()];
        a.extend(args.iter().copied());
        let o = b.plinth_as(ouid, ogid, &other_xdg, &a);
        assert_eq!(o.status.code(), Some(1), "{a:?} as another user: {o:?}");
    }
    let st: Value = serde_json::from_slice(&b.plinth(&["state", &id]).stdout).unwrap();
    assert_eq!(st["status"], "running", "untouched by the other user");

    assert!(b.plinth(&["kill", &id, "KILL"]).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let st: Value = serde_json::from_slice(&b.plinth(&["state", &id]).stdout).unwrap();
        if st["status"] == "stopped" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not stopped after KILL: {st}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(b.plinth(&["delete", &id]).status.success());
    assert!(!theirs.join(&id).exists());
}

#[test]
fn limits_without_a_delegated_cgroup_are_refused() {
    if !need_root("limits_without_a_delegated_cgroup_are_refused") {
        return;
    }
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        println!("SKIP limits_without_a_delegated_cgroup_are_refused: pure cgroup v2 host, the user may have a delegated subtree");
        return;
    }
    let b = RootlessBundle::new("plinth-rl-a", "true");
    let mut c = b.config();
    c["linux"]["resources"] = json!({"memory": {"limit": 67108864}});
    b.write(&c);
    let id = unique("rl");
    let (code, _, err) = b.run(&id);
    assert_eq!(code, 1);
    assert!(
        err.contains("linux.resources.memory") && err.contains("delegated"),
        "{err}"
    );
    assert!(!b.runtime_dir.join("plinth").join(&id).exists());
}

#[test]
fn cgroup_mounts_are_read_only_when_rootless() {
    if !need_root("cgroup_mounts_are_read_only_when_rootless") {
        return;
    }
    // CVE-2023-25809: whatever the config says, with and without a cgroup namespace,
    // and with and without a network namespace of the container's (without one, the
    // kernel refuses a new sysfs and the host's /sys is bound, its cgroup mounts with
    // it, under the config's cgroup mount: those must be read-only too).
    for (cgroupns, netns) in [(true, true), (false, true), (true, false), (false, false)] {
        let b = RootlessBundle::new(
            "plinth-rl-a",
            "for d in /sys/fs/cgroup /sys/fs/cgroup/*; do [ -d $d ] && (mkdir $d/plinth-x 2>/dev/null && echo WRITABLE $d); done; \
             grep ' /sys/fs/cgroup' /proc/self/mountinfo | grep -v ' ro,' | grep -v ' ro ' ; echo done",
        );
        let mut c = b.config();
        for m in c["mounts"].as_array_mut().unwrap() {
            if m["type"] == "cgroup" || m["type"] == "cgroup2" {
                m["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
            }
        }
        let mut ns: Vec<Value> = c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] != "cgroup" && n["type"] != "network")
            .cloned()
            .collect();
        for (wanted, typ) in [(cgroupns, "cgroup"), (netns, "network")] {
            if wanted {
                ns.push(json!({"type": typ}));
            }
        }
        c["linux"]["namespaces"] = json!(ns);
        let cgroupns = format!("{cgroupns}, netns={netns}");
        b.write(&c);
        let (code, out, err) = b.run(&unique("rlcg"));
        assert_eq!(code, 0, "cgroupns={cgroupns}: {err}");
        assert_eq!(
            out.trim(),
            "done",
            "cgroupns={cgroupns}: a writable cgroup mount: {out}"
        );
    }
}

/// `plinth ARGS` as `uid`, with no XDG_RUNTIME_DIR (so the fallback state root).
fn plinth_without_xdg(b: &RootlessBundle, args: &[&str]) -> (i32, String, String) {
    text(
        &Command::new(plinth_bin())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &b.tmp.0)
            .current_dir(&b.tmp.0)
            .stdin(Stdio::null())
            .uid(b.uid)
            .gid(b.gid)
            .output()
            .unwrap(),
    )
}

/// Plants `dir/evil/state.json`, a stopped container whose poststop hook writes the
/// uid it runs as into `marker`.
fn plant_state(dir: &Path, marker: &Path) {
    std::fs::create_dir_all(dir.join("evil")).unwrap();
    let st = json!({
        "oci_version": "1.2.0", "id": "evil", "pid": 0, "pid_start": 0,
        "bundle": "/", "rootfs": "/", "created": "", "owner": "",
        "hooks": {"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", format!("id -u > {}", marker.display())]}]},
    });
    std::fs::write(
        dir.join("evil/state.json"),
        serde_json::to_vec(&st).unwrap(),
    )
    .unwrap();
}

/// Without XDG_RUNTIME_DIR the state root is /tmp/plinth-UID. Another user who makes
/// that directory first (or any directory the victim is pointed at) must not get the
/// victim to run their hooks: the root is refused, naming it and its owner, and so is
/// one of the victim's own with group or other access.
#[test]
fn a_state_root_the_caller_does_not_own_alone_is_refused() {
    if !need_root("a_state_root_the_caller_does_not_own_alone_is_refused") {
        return;
    }
    let b = RootlessBundle::new("plinth-rl-a", "true");
    let (other, other_uid, other_gid) = user("plinth-rl-b");
    let marker = b.tmp.0.join("hook-ran");
    let fallback = PathBuf::from(format!("/tmp/plinth-{}", b.uid));
    let _ = std::fs::remove_dir_all(&fallback);
    let cases: [(&str, u32, u32, u32); 3] = [
        ("own, 0777", b.uid, b.gid, 0o777),
        ("foreign, 0777", other_uid, other_gid, 0o777),
        ("foreign, 0700", other_uid, other_gid, 0o700),
    ];
    for (what, uid, gid, mode) in cases {
        plant_state(&fallback, &marker);
        let out = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(&fallback)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::set_permissions(&fallback, std::fs::Permissions::from_mode(mode)).unwrap();
        for args in [&["delete", "evil"][..], &["list"], &["state", "evil"]] {
            let (code, out, err) = plinth_without_xdg(&b, args);
            assert!(
                !marker.exists(),
                "{what}: {args:?}: the planted hook ran as the victim, uid {:?}",
                std::fs::read_to_string(&marker)
            );
            assert_eq!(
                code, 1,
                "{what}: {args:?} used the planted root: {out}{err}"
            );
            assert!(
                err.contains(&fallback.display().to_string()),
                "{what}: the error names the directory: {err}"
            );
            if uid == other_uid {
                assert!(
                    err.contains(&other) && err.contains(&other_uid.to_string()),
                    "{what}: the error names the owner: {err}"
                );
            } else {
                assert!(
                    err.contains("0777"),
                    "{what}: the error names the mode: {err}"
                );
            }
        }
        // The same through --root.
        let root = fallback.display().to_string();
        let (code, _, err) = plinth_without_xdg(&b, &["--root", &root, "delete", "evil"]);
        assert_eq!(code, 1, "{what}: --root: {err}");
        assert!(!marker.exists(), "{what}: --root: the planted hook ran");
        std::fs::remove_dir_all(&fallback).unwrap();
    }
    // Unplanted, the fallback is made by the caller, 0700, and works.
    let (code, _, err) =
        plinth_without_xdg(&b, &["run", "--bundle", b.dir.to_str().unwrap(), "ok"]);
    assert_eq!(code, 0, "{err}");
    let md = std::fs::metadata(&fallback).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), b.uid);
    assert_eq!(md.permissions().mode() & 0o777, 0o700);
    std::fs::remove_dir_all(&fallback).unwrap();
}
