//! One run of a container through the `plinth` runtime, as the container's user: the
//! bundle (`plinth spec --rootless`, its default seccomp profile and capabilities,
//! with the image's and the config's process), `create` started in the delegated
//! cgroup, the veth moved in, `start`, the wait for the exit, `delete`. Output of the
//! container goes line by line to the server; an error of the runtime is read from its
//! log (the last `"level":"error"` line, as engines do).

use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::wait::WaitStatus;
use oci_spec::image::ImageConfiguration;
use serde_json::{json, Map, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use super::cgroup::Delegated;
use super::link;
use super::notes::Notes;
use super::rootfs::Rootfs;
use super::slot::{Slot, BRIDGE, CGROUP_ROOT, GATEWAY, NETMASK};
use crate::error::{io, sys, Error, Result};
use crate::init::pid1;
use crate::node::image::{ContentStore, Unpacked};
use crate::schema::containers::{parse_user, Container, SUBID_COUNT};
use crate::schema::{EventKind, LogLine};

/// The runtime in the image.
const PLINTH: &str = "/usr/bin/plinth";

/// The longest output line kept whole; a longer one is cut into lines of this size.
const MAX_LINE: usize = 16 * 1024;

/// How a run ended.
#[derive(Debug)]
pub struct Exit {
    /// The container's init's status.
    pub status: WaitStatus,
    /// Whether the kernel's OOM killer struck during the run.
    pub oom_killed: bool,
}

/// Where a run failed, and why.
pub type Failure = (&'static str, Error);

/// The image's config (entrypoint, cmd, env, working dir, user).
pub fn image_config(store: &ContentStore, image: &Unpacked) -> Result<ImageConfiguration> {
    let p = store.blob_path(image.config.digest())?;
    let body = std::fs::read(&p).map_err(io("reading image config", &p))?;
    serde_json::from_slice(&body).map_err(|e| Error::Json {
        what: format!("image config {}", p.display()),
        source: e,
    })
}

/// Runs `plinth ARGS` as the container's user in its runtime cgroup, with `stdout` and
/// `stderr`; gives its pid.
fn spawn(
    slot: &Slot,
    cg: &Delegated,
    args: &[&str],
    out: Option<(OwnedFd, OwnedFd)>,
) -> Result<i32> {
    let procs_path = cg.runtime_procs();
    // Opened here, as root: the kernel checks a migration against the opener's
    // credentials, and only root may move a process out of the node's own cgroup.
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(io("opening", &procs_path))?;
    let procs_fd = procs.as_raw_fd();
    let log = slot.run_dir.join("plinth.log");
    let mut cmd = Command::new(PLINTH);
    cmd.arg("--root")
        .arg(slot.run_dir.join("plinth"))
        .arg("--log")
        .arg(&log)
        .arg("--log-format")
        .arg("json")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/usr/sbin:/bin:/sbin")
        .env("HOME", &slot.run_dir)
        .env("XDG_RUNTIME_DIR", &slot.run_dir)
        .current_dir(&slot.run_dir)
        .uid(slot.uid)
        .gid(slot.gid)
        .stdin(Stdio::null());
    match out {
        Some((o, e)) => {
            cmd.stdout(Stdio::from(o)).stderr(Stdio::from(e));
        }
        None => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
    // SAFETY: the closure runs in the child between fork and exec and makes one
    // write(2) on a descriptor opened before the fork: async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::write(procs_fd, b"0".as_ptr().cast(), 1);
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(io("starting", Path::new(PLINTH)))?;
    drop(procs);
    Ok(child.id() as i32)
}

/// A file the container's user writes, read by root: never through a symlink, at
/// most 1 MiB.
fn read_no_follow(p: &Path) -> Option<String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
        .ok()?;
    let mut s = String::new();
    f.take(1 << 20).read_to_string(&mut s).ok()?;
    Some(s)
}

/// The last error the runtime logged.
fn runtime_error(slot: &Slot) -> String {
    let log = read_no_follow(&slot.run_dir.join("plinth.log")).unwrap_or_default();
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(String::from))
        .unwrap_or_else(|| "no error logged".into())
}

/// Runs `plinth ARGS` to its end, its output to `out` (else nowhere); an error unless
/// it exits 0.
async fn plinth(
    slot: &Slot,
    cg: &Delegated,
    args: &[&str],
    out: Option<(OwnedFd, OwnedFd)>,
) -> Result<()> {
    let _ = std::fs::remove_file(slot.run_dir.join("plinth.log"));
    let since = pid1::mark();
    let pid = spawn(slot, cg, args, out)?;
    match pid1::exited(pid, since).await {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => Err(Error::Protocol {
            what: format!("plinth {}", args.join(" ")),
            reason: format!("{} ({other:?})", runtime_error(slot)),
        }),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))
}

/// Streams the lines read from `r` as `source` until every writer is gone.
fn stream(r: OwnedFd, source: String, logs: mpsc::Sender<LogLine>) -> Result<()> {
    let rx = tokio::net::unix::pipe::Receiver::from_owned_fd(r).map_err(|e| Error::Net {
        what: format!("reading {source}"),
        source: e,
    })?;
    tokio::spawn(async move {
        // Bytes, not text: a container writing invalid UTF-8 or a line without end must
        // neither stop the reading (its next write would die of SIGPIPE) nor grow it.
        let mut r = tokio::io::BufReader::new(rx);
        let mut line: Vec<u8> = Vec::new();
        let send = |line: &[u8]| {
            let text = String::from_utf8_lossy(line.strip_suffix(b"\n").unwrap_or(line));
            // A full channel drops the line: the node keeps running.
            let _ = logs.try_send(LogLine {
                source: source.clone(),
                text: text.into_owned(),
            });
        };
        loop {
            let buf = match r.fill_buf().await {
                Ok(b) if !b.is_empty() => b,
                _ => break,
            };
            let (take, end) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_LINE.saturating_sub(line.len()).max(1);
            let take = take.min(room);
            line.extend_from_slice(&buf[..take]);
            r.consume(take);
            if end || line.len() >= MAX_LINE {
                send(&line);
                line.clear();
            }
        }
        if !line.is_empty() {
            send(&line);
        }
    });
    Ok(())
}

/// The config.json of one run: `plinth spec --rootless`'s, with the container's
/// process, root, ids, namespaces and cgroup.
fn bundle_config(
    spec: &mut Value,
    c: &Container,
    slot: &Slot,
    root: &Path,
    image: &ImageConfiguration,
    cgroups_path: &str,
) -> Result<()> {
    let bad = |reason: String| Error::Config {
        what: format!("container {}", c.name),
        reason,
    };
    let ic = image.config().as_ref();
    let args: Vec<String> = match &c.args {
        Some(a) => a.clone(),
        None => {
            let mut a: Vec<String> = ic.and_then(|i| i.entrypoint().clone()).unwrap_or_default();
            a.extend(ic.and_then(|i| i.cmd().clone()).unwrap_or_default());
            a
        }
    };
    if args.is_empty() {
        return Err(bad("no args, and the image has no entrypoint or cmd".into()));
    }
    let mut env: Vec<String> = ic.and_then(|i| i.env().clone()).unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    for (k, v) in &c.env {
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(n, _)| n) != k);
        env.push(format!("{k}={v}"));
    }
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| {
            ic.and_then(|i| i.working_dir().clone())
                .filter(|w| !w.is_empty())
        })
        .unwrap_or_else(|| "/".into());
    let user = c
        .user
        .clone()
        .or_else(|| ic.and_then(|i| i.user().clone()).filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "0".into());
    let (uid, gid) = parse_user(&user).ok_or_else(|| {
        bad(format!(
            "user {user:?}: only numeric UID or UID:GID is supported"
        ))
    })?;
    let gid = gid.unwrap_or(uid);
    if uid >= SUBID_COUNT || gid >= SUBID_COUNT {
        return Err(bad(format!(
            "user {user:?}: outside the container's {SUBID_COUNT} ids"
        )));
    }
    let process = &mut spec["process"];
    process["args"] = json!(args);
    process["env"] = json!(env);
    process["cwd"] = json!(cwd);
    process["user"] = json!({ "uid": uid, "gid": gid });
    process["terminal"] = json!(false);
    spec["hostname"] = json!(c.name);
    spec["root"] = json!({ "path": root, "readonly": c.read_only });
    let linux = &mut spec["linux"];
    let map = |start: u32| json!([{ "containerID": 0, "hostID": start, "size": SUBID_COUNT }]);
    linux["uidMappings"] = map(slot.subid);
    linux["gidMappings"] = map(slot.subid);
    linux["cgroupsPath"] = json!(cgroups_path);
    // The kernel command line holds the node's enrolment token (spent, but not the
    // containers' business).
    if let Some(masked) = linux["maskedPaths"].as_array_mut() {
        if !masked.iter().any(|m| m == "/proc/cmdline") {
            masked.push(json!("/proc/cmdline"));
        }
    }
    if let Some(ns) = linux["namespaces"].as_array_mut() {
        for t in ["network", "cgroup"] {
            if !ns.iter().any(|n| n["type"] == t) {
                ns.push(json!({ "type": t }));
            }
        }
    }
    if c.read_only {
        if let Some(m) = spec["mounts"].as_array_mut() {
            m.push(
                json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                           "options": ["nosuid", "nodev", "mode=1777", "size=65536k"] }),
            );
        }
    }
    Ok(())
}

/// Sets the container's `eth0` up with its address and route, from inside its network
/// namespace (a thread of its own enters it).
fn address_inside(netns: OwnedFd, ip: std::net::Ipv4Addr) -> Result<()> {
    std::thread::spawn(move || -> Result<()> {
        nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(sys("entering the container's network namespace"))?;
        crate::netif::link_up("lo")?;
        crate::netif::set_address("eth0", ip, NETMASK)?;
        crate::netif::link_up("eth0")?;
        crate::netif::add_default_route("eth0", GATEWAY)
    })
    .join()
    .unwrap_or_else(|_| {
        Err(Error::Protocol {
            what: "configuring the container's network".into(),
            reason: "the thread panicked".into(),
        })
    })
}

/// What the node sees of a running container: its ids, its maps, its limits, and
/// who ran the runtime (the owner of the state it wrote).
fn observe(pid: i32, slot: &Slot, name: &str) -> Value {
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let status = read(PathBuf::from(format!("/proc/{pid}/status")));
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
    };
    let cgroup = read(PathBuf::from(format!("/proc/{pid}/cgroup")));
    let cg_dir = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| Path::new(CGROUP_ROOT).join(p.trim_start_matches('/')));
    let limits: Map<String, Value> = cg_dir
        .iter()
        .flat_map(|d| {
            // The limits are on the delegated directory, above the container's own.
            let parent = d.parent().map(Path::to_path_buf).unwrap_or_default();
            ["memory.max", "cpu.max", "pids.max"].map(move |f| {
                (
                    f.to_string(),
                    json!(read(parent.join(f)).trim().to_string()),
                )
            })
        })
        .collect();
    let state = slot.run_dir.join("plinth").join(name).join("state.json");
    let runtime_uid = std::fs::symlink_metadata(&state)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok();
    json!({
        "pid": pid,
        "uid": field("Uid:"),
        "gid": field("Gid:"),
        "capEff": field("CapEff:"),
        "noNewPrivs": field("NoNewPrivs:"),
        "seccomp": field("Seccomp:"),
        "uidMap": read(PathBuf::from(format!("/proc/{pid}/uid_map"))).trim(),
        "gidMap": read(PathBuf::from(format!("/proc/{pid}/gid_map"))).trim(),
        "cgroup": cg_dir,
        "limits": limits,
        "runtimeUid": runtime_uid,
    })
}

/// One run: made, started, waited for, cleaned up.
pub async fn run_once(
    c: &Container,
    slot: &Slot,
    image_root: &Path,
    image: &ImageConfiguration,
    notes: &Notes,
) -> std::result::Result<Exit, Failure> {
    let limits = c.resources.unwrap_or_default();
    let cg = Delegated::make(
        Path::new(CGROUP_ROOT),
        &c.name,
        &limits,
        (slot.uid, slot.gid),
    )
    .map_err(|e| ("cgroup", e))?;
    let root = match Rootfs::mount(
        image_root,
        &slot.dir.join("root"),
        (slot.subid, slot.subid, SUBID_COUNT),
        c.read_only,
    ) {
        Ok(r) => r,
        Err(e) => {
            let _ = cg.remove();
            return Err(("rootfs", e));
        }
    };
    let result = run_made(c, slot, &cg, &root, image, notes).await;
    // Whatever happened, nothing of this run stays: state, cgroups, mounts, veth.
    let _ = plinth(slot, &cg, &["delete", "--force", &c.name], None).await;
    let _ = link::delete(&slot.veth);
    let _ = root.remove();
    let _ = std::fs::remove_dir_all(slot.dir.join("bundle"));
    if let Err(e) = cg.remove() {
        crate::init::console::log(&format!("container {}: {e}", c.name));
    }
    result
}

async fn run_made(
    c: &Container,
    slot: &Slot,
    cg: &Delegated,
    root: &Rootfs,
    image: &ImageConfiguration,
    notes: &Notes,
) -> std::result::Result<Exit, Failure> {
    let logs = &notes.logs;
    let bundle = slot.dir.join("bundle");
    let made = (|| -> Result<()> {
        std::fs::create_dir_all(&bundle).map_err(io("creating", &bundle))?;
        std::fs::create_dir_all(&slot.run_dir).map_err(io("creating", &slot.run_dir))?;
        Ok(())
    })();
    made.map_err(|e| ("bundle", e))?;
    // The runtime's own defaults, not a copy of them here.
    let since = pid1::mark();
    let spec_pid = {
        let mut cmd = Command::new(PLINTH);
        cmd.args(["spec", "--rootless", "--bundle"])
            .arg(&bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn()
            .map_err(|e| ("bundle", io("starting", Path::new(PLINTH))(e)))?
            .id() as i32
    };
    if !matches!(
        pid1::exited(spec_pid, since).await,
        WaitStatus::Exited(_, 0)
    ) {
        return Err((
            "bundle",
            Error::Protocol {
                what: "plinth spec --rootless".into(),
                reason: "failed".into(),
            },
        ));
    }
    let config_path = bundle.join("config.json");
    let written = (|| -> Result<()> {
        let body = std::fs::read(&config_path).map_err(io("reading", &config_path))?;
        let mut spec: Value = serde_json::from_slice(&body).map_err(|e| Error::Json {
            what: config_path.display().to_string(),
            source: e,
        })?;
        bundle_config(
            &mut spec,
            c,
            slot,
            &root.path,
            image,
            &cg.container_path(Path::new(CGROUP_ROOT)),
        )?;
        let mut f = std::fs::File::create(&config_path).map_err(io("writing", &config_path))?;
        f.write_all(spec.to_string().as_bytes())
            .map_err(io("writing", &config_path))
    })();
    written.map_err(|e| ("bundle", e))?;

    let (out_r, out_w) = pipe().map_err(|e| ("create", e))?;
    let (err_r, err_w) = pipe().map_err(|e| ("create", e))?;
    stream(out_r, format!("container/{}/stdout", c.name), logs.clone())
        .map_err(|e| ("create", e))?;
    stream(err_r, format!("container/{}/stderr", c.name), logs.clone())
        .map_err(|e| ("create", e))?;
    let pid_file = slot.run_dir.join(format!("{}.pid", c.name));
    let bundle_s = bundle.display().to_string();
    let pid_file_s = pid_file.display().to_string();
    // The container's init is reaped after create starts, whenever it ends.
    let since = pid1::mark();
    plinth(
        slot,
        cg,
        &[
            "create",
            "--bundle",
            &bundle_s,
            "--pid-file",
            &pid_file_s,
            &c.name,
        ],
        Some((out_w, err_w)),
    )
    .await
    .map_err(|e| ("create", e))?;
    let pid: i32 = read_no_follow(&pid_file)
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| {
            (
                "create",
                Error::Protocol {
                    what: pid_file_s.clone(),
                    reason: "no pid in it".into(),
                },
            )
        })?;
    // The pid file is the container user's: the pid must be a process in this
    // container's cgroup before root touches its namespace.
    let expected = format!("0::{}\n", cg.container_path(Path::new(CGROUP_ROOT)));
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if cgroup != expected {
        return Err((
            "create",
            Error::Protocol {
                what: pid_file_s.clone(),
                reason: format!("pid {pid} is not in the container's cgroup ({cgroup:?})"),
            },
        ));
    }
    let ns_path = PathBuf::from(format!("/proc/{pid}/ns/net"));
    let wired = (|| -> Result<()> {
        let ns: OwnedFd = std::fs::File::open(&ns_path)
            .map_err(io("opening", &ns_path))?
            .into();
        link::delete(&slot.veth)?;
        link::veth_into(&slot.veth, BRIDGE, ns.as_fd())?;
        address_inside(ns, slot.ip)
    })();
    wired.map_err(|e| ("network", e))?;
    let ooms = cg.oom_kills();
    plinth(slot, cg, &["start", &c.name], None)
        .await
        .map_err(|e| ("start", e))?;
    let running = |inspected: bool| {
        let mut d = Map::new();
        d.insert("container".into(), json!(c.name));
        d.insert("state".into(), json!("running"));
        d.insert("address".into(), json!(slot.ip.to_string()));
        d.insert("inspected".into(), json!(inspected));
        d.insert("observed".into(), observe(pid, slot, &c.name));
        let _ = notes.events.send((EventKind::Service, d));
    };
    running(false);
    let exited = pid1::exited(pid, since);
    tokio::pin!(exited);
    let status = loop {
        tokio::select! {
            s = &mut exited => break s,
            _ = notes.inspect.notified() => running(true),
        }
    };
    Ok(Exit {
        status,
        oom_killed: cg.oom_kills() > ooms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(extra: Value) -> Container {
        let mut c = json!({"name": "web", "image": "r.io/x:1"});
        if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
            c.extend(e);
        }
        serde_json::from_value(c).expect("container")
    }

    fn image(config: Value) -> ImageConfiguration {
        serde_json::from_value(json!({
            "architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .expect("image config")
    }

    fn spec() -> Value {
        json!({
            "process": {"args": ["sh"], "terminal": true, "noNewPrivileges": true},
            "root": {"path": "rootfs"},
            "mounts": [],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "user"}, {"type": "mount"}],
                      "maskedPaths": ["/proc/kcore"]}
        })
    }

    fn root() -> &'static Path {
        Path::new("/run/plinth/containers/web/root/merged")
    }

    #[test]
    fn the_bundle_takes_the_image_then_the_config() {
        let slot = Slot::new(2, "web");
        let img = image(json!({
            "Entrypoint": ["/bin/httpd"], "Cmd": ["-f"], "Env": ["PATH=/bin", "MODE=dev"],
            "WorkingDir": "/www", "User": "1000"
        }));
        let mut s = spec();
        bundle_config(
            &mut s,
            &container(json!({"env": {"MODE": "prod"}})),
            &slot,
            root(),
            &img,
            "/plinth/web/container",
        )
        .expect("bundle");
        assert_eq!(s["process"]["args"], json!(["/bin/httpd", "-f"]));
        assert_eq!(s["process"]["env"], json!(["PATH=/bin", "MODE=prod"]));
        assert_eq!(s["process"]["cwd"], "/www");
        assert_eq!(s["process"]["user"], json!({"uid": 1000, "gid": 1000}));
        assert_eq!(s["process"]["terminal"], false);
        assert_eq!(s["process"]["noNewPrivileges"], true);
        assert_eq!(s["hostname"], "web");
        let map = json!([{"containerID": 0, "hostID": 1_000_000 + 2 * 65_536, "size": 65_536}]);
        assert_eq!(s["linux"]["uidMappings"], map);
        assert_eq!(s["linux"]["gidMappings"], map);
        assert_eq!(s["linux"]["cgroupsPath"], "/plinth/web/container");
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert_eq!(ns, ["pid", "user", "mount", "network", "cgroup"]);
        assert!(s["linux"]["maskedPaths"]
            .as_array()
            .expect("masked")
            .contains(&json!("/proc/cmdline")));
        assert_eq!(s["root"]["readonly"], false);

        // The config's own command, user and directory win; a read-only root gets /tmp.
        let mut s = spec();
        let c = container(
            json!({"args": ["/bin/true"], "user": "7:8", "workingDir": "/", "readOnly": true}),
        );
        bundle_config(&mut s, &c, &slot, root(), &img, "/p").expect("bundle");
        assert_eq!(s["process"]["args"], json!(["/bin/true"]));
        assert_eq!(s["process"]["user"], json!({"uid": 7, "gid": 8}));
        assert_eq!(s["process"]["cwd"], "/");
        assert_eq!(s["root"]["readonly"], true);
        assert_eq!(s["mounts"][0]["destination"], "/tmp");
    }

    #[test]
    fn output_lines_survive_bad_bytes_long_lines_and_no_last_newline() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let lines = rt.block_on(async {
            let (r, w) = pipe().expect("pipe");
            let (tx, mut rx) = mpsc::channel(100);
            stream(r, "container/t/stdout".into(), tx).expect("stream");
            let mut f = std::fs::File::from(w);
            let mut body = b"ok\n\xff\xfe bad\n".to_vec();
            body.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
            body.extend_from_slice(b"\nlast");
            std::io::Write::write_all(&mut f, &body).expect("write");
            drop(f);
            let mut got = Vec::new();
            while let Some(l) = rx.recv().await {
                got.push(l.text);
            }
            got
        });
        assert_eq!(
            lines.len(),
            5,
            "{:?}",
            lines.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        assert_eq!(lines[0], "ok");
        assert_eq!(lines[1], "\u{fffd}\u{fffd} bad");
        assert_eq!(lines[2].len(), MAX_LINE);
        assert_eq!(lines[3], "x".repeat(10));
        assert_eq!(lines[4], "last");
    }

    #[test]
    fn a_bundle_without_a_command_or_with_a_named_user_is_refused() {
        let slot = Slot::new(0, "web");
        let mut s = spec();
        let err = bundle_config(
            &mut s,
            &container(json!({})),
            &slot,
            root(),
            &image(json!({})),
            "/p",
        )
        .expect_err("no command");
        assert!(err.to_string().contains("no args"), "{err}");
        let img = image(json!({"Entrypoint": ["/x"], "User": "www"}));
        let err = bundle_config(&mut s, &container(json!({})), &slot, root(), &img, "/p")
            .expect_err("named user");
        assert!(err.to_string().contains("\"www\""), "{err}");
        let img = image(json!({"Entrypoint": ["/x"], "User": "70000"}));
        let err = bundle_config(&mut s, &container(json!({})), &slot, root(), &img, "/p")
            .expect_err("user out of range");
        assert!(err.to_string().contains("outside"), "{err}");
    }
}
