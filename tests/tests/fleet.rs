//! The fleet an operator keeps in git, at a real `plinth-server` on loopback: machines,
//! profiles and defaults as YAML files (rendered machine -> profiles -> defaults, with
//! parameters and secrets by reference), a bad file refused at start and on reload,
//! identifiers that identify nothing, and discovery with an operator's acceptance. Nodes
//! are played by the node agent's own HTTPS client, operators by curl.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use plinth_tests::server::{call, event, placeholder_boot, Server};
use plinth_tests::{workspace, TempDir};
use serde_json::{json, Value};

const MAC: &str = "52:54:00:00:01:01";
const UUID: &str = "6e4a2b1c-0000-4000-8000-000000000101";
const SECRET: &str = "registry-password-1b9f7c";

fn has_curl(test: &str) -> bool {
    if Command::new("curl").arg("--version").output().is_ok() {
        return true;
    }
    plinth_tests::skip(test, "curl (the operators' client here) is not installed");
    false
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A scratch directory with a config dir (`config/`) and a data dir (`data/`, 0700)
/// holding the `registry` secret (0600).
fn site() -> (TempDir, PathBuf) {
    let dir = TempDir::new("plinth-fleet");
    let data = dir.0.join("data");
    let secrets = data.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for d in [&data, &secrets] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let s = secrets.join("registry");
    std::fs::write(&s, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = dir.0.join("config");
    write(
        &cfg.join("defaults.yaml"),
        "apiVersion: plinth/v1
params:
  ntpServer: 10.0.0.1
  role: none
config:
  ntp:
    - \"{{ntpServer}}\"
  sysctls:
    net.ipv4.ip_forward: \"0\"
    vm.swappiness: \"10\"
",
    );
    write(
        &cfg.join("profiles/base.yaml"),
        "apiVersion: plinth/v1
params:
  role: base
config:
  hostname: \"{{hostname}}\"
  sysctls:
    net.ipv4.ip_forward: \"1\"
  files:
    - path: /etc/registry-auth
      contents:
        secretRef: registry
      mode: \"0600\"
",
    );
    write(
        &cfg.join("profiles/worker.yaml"),
        "apiVersion: plinth/v1
params:
  role: worker
config:
  sysctls:
    kernel.pid_max: \"65536\"
  files:
    - path: /etc/role
      contents: \"{{role}} in {{rack}}\"
",
    );
    write(
        &cfg.join("machines/node1.yaml"),
        &format!(
            "apiVersion: plinth/v1
selector:
  mac: \"{MAC}\"
profiles: [worker, base]
params:
  hostname: node-1
  rack: r7
"
        ),
    );
    (dir, cfg)
}

fn start(dir: TempDir, cfg: &Path, extra: &[&str]) -> Server {
    let boot = placeholder_boot(&dir.0);
    let mut args = vec!["--config-dir", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start_in(dir, &boot, &args)
}

/// The rendered config: the machine's parameters over the profiles' (worker before base,
/// as listed) over the defaults'; mappings merged, lists taken whole from the first layer
/// that has them; the secret filled in for the node only.
#[test]
fn files_render_machine_over_profiles_over_defaults_and_secrets_reach_only_the_node() {
    if !has_curl("files_render_machine_over_profiles_over_defaults_and_secrets_reach_only_the_node")
    {
        return;
    }
    let (dir, cfg) = site();
    let s = start(dir, &cfg, &[]);
    let token = s
        .mint(MAC, UUID)
        .expect("a machine a file selects gets a token");
    let (node, issued) = s
        .enrol_boot(MAC, UUID, &token, "0f0f0f0f-0000-4000-8000-000000000001")
        .unwrap();
    assert!(!issued.discovery);
    let (code, c) = call(&node, "GET", "/v1/config", None);
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["hostname"], "node-1");
    assert_eq!(c["ntp"], json!(["10.0.0.1"]), "from the defaults: {c}");
    assert_eq!(
        c["sysctls"],
        json!({"net.ipv4.ip_forward": "1", "vm.swappiness": "10", "kernel.pid_max": "65536"}),
        "mappings merge, the more specific layer winning: {c}"
    );
    // `files` is a list: the first layer that has one (worker) gives it whole.
    assert_eq!(
        c["files"],
        json!([{"path": "/etc/role", "contents": "worker in r7", "uid": 0, "gid": 0}]),
        "{c}"
    );
    // Through a profile that lists the secret first: base alone.
    std::fs::write(
        cfg.join("machines/node1.yaml"),
        format!("apiVersion: plinth/v1\nselector:\n  mac: \"{MAC}\"\nprofiles: [base]\nparams:\n  hostname: node-1\n"),
    )
    .unwrap();
    let boot = s_boot(&s);
    let s = s.restart(&boot, &["--config-dir", cfg.to_str().unwrap()]);
    let token = s.mint(MAC, UUID).expect("a second boot's token");
    let node = s.enrol(MAC, UUID, &token).unwrap();
    let (code, c) = call(&node, "GET", "/v1/config", None);
    assert_eq!(code, 200, "{c}");
    assert_eq!(
        c["files"][0]["contents"], SECRET,
        "the node gets the secret: {c}"
    );
    // The operator sees where the config comes from, and the secret redacted.
    let m = s.machine(MAC);
    assert_eq!(m["origin"], json!({"file": "machines/node1.yaml"}), "{m}");
    assert_eq!(
        m["config"]["files"][0]["contents"], "[secret registry]",
        "{m}"
    );
    // A node echoing the secret in its log: kept redacted.
    let (code, _) = call(
        &node,
        "POST",
        "/v1/logs",
        Some(json!({"bootId": "0f0f0f0f-0000-4000-8000-000000000001",
                    "lines": [{"source": "console", "text": format!("cat: {SECRET}")}]})),
    );
    assert_eq!(code, 200);
    let auth = format!("Authorization: Bearer {}", s.operator);
    let (_, log) = s.curl(&[
        "-H",
        &auth,
        &format!(
            "{}/v1/machines/{MAC}/logs/0f0f0f0f-0000-4000-8000-000000000001",
            s.https
        ),
    ]);
    assert!(log.contains("cat: [secret registry]"), "{log}");
    // The secret is nowhere but in the secrets directory: not the store, the log, the
    // audit trail, nor any answer an operator gets.
    let (_, list) = s.op("GET", "/v1/machines", None);
    for (what, text) in [
        ("the machine", m.to_string()),
        ("the list", list.to_string()),
        ("the server's log", s.log()),
        ("the audit trail", s.audit()),
        ("the boot log", log),
    ] {
        assert!(!text.contains(SECRET), "{what} holds the secret");
    }
    // The operators' metrics (of this server process, since its restart) saw it all: the
    // boot script, the enrolment, the node's config request's latency, the store's size.
    let metrics = s.metrics();
    for needle in [
        "plinth_boot_scripts_total{outcome=\"token\"} 1",
        "plinth_enrolments_total{outcome=\"machine\"} 1",
        "plinth_request_duration_seconds_count{listener=\"https\",route=\"/v1/config\",status=\"2xx\"} 1",
    ] {
        assert!(metrics.contains(needle), "{needle} not in:\n{metrics}");
    }
    assert!(s.metric("plinth_store_bytes") > 0.0, "{metrics}");
    for f in walk(&s.data()) {
        if f.starts_with(s.data().join("secrets")) {
            continue;
        }
        let body = std::fs::read(&f).unwrap();
        assert!(
            !body.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret",
            f.display()
        );
    }
}

fn s_boot(s: &Server) -> PathBuf {
    s.dir.0.join("boot")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Runs plinth-server on `cfg` and expects it to refuse to start, saying `needles`.
fn refused_start(case: &str, cfg: &Path, data: &Path, needles: &[&str]) {
    let boot_dir = TempDir::new("plinth-fleet-boot");
    let boot = placeholder_boot(&boot_dir.0);
    let o = Command::new(workspace().join("target/release/plinth-server"))
        .args(["--listen", "127.0.0.1:0", "--boot-dir"])
        .arg(&boot)
        .arg("--data")
        .arg(data)
        .arg("--config-dir")
        .arg(cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{case}: started");
    for n in needles {
        assert!(err.contains(n), "{case}: {n:?} not in: {err}");
    }
    assert!(
        !err.contains(SECRET),
        "{case}: the error shows the secret: {err}"
    );
}

/// Each bad file stops the start with an error naming the file, the line and the field,
/// and leaves no data directory behind.
#[test]
fn a_bad_file_stops_the_start_naming_file_line_and_field() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "unknown field",
            "machines/node1.yaml",
            "apiVersion: plinth/v1\nselector:\n  mac: \"52:54:00:00:01:01\"\nprofile: [base]\n",
            &["machines/node1.yaml:4", "unknown field `profile`"],
        ),
        (
            "unknown config field in a profile",
            "profiles/base.yaml",
            "apiVersion: plinth/v1\nconfig:\n  hostname: x\n  users:\n    - name: app\n      uid: 1000\n      shel: /bin/sh\n",
            &["profiles/base.yaml:7", "config.users[0]", "unknown field `shel`"],
        ),
        (
            "a bad host name, told at its line in the profile",
            "profiles/base.yaml",
            "apiVersion: plinth/v1\nparams:\n  role: x\nconfig:\n  sysctls:\n    a.b: \"1\"\n  hostname: \"not a host!\"\n",
            &["profiles/base.yaml:7", "config.hostname", "is not a host name"],
        ),
        (
            "a wrong type",
            "machines/node1.yaml",
            "apiVersion: plinth/v1\nselector:\n  mac: \"52:54:00:00:01:01\"\nprofiles: [base]\nparams:\n  hostname: n\nconfig:\n  users:\n    - name: app\n      uid: lots\n",
            &["machines/node1.yaml:10", "config.users[0].uid"],
        ),
        (
            "a placeholder UUID selector",
            "machines/node1.yaml",
            "apiVersion: plinth/v1\nselector:\n  uuid: 03000200-0400-0500-0006-000700080009\n",
            &["machines/node1.yaml:3", "selector.uuid", "placeholder"],
        ),
        (
            "a placeholder serial selector",
            "machines/node1.yaml",
            "apiVersion: plinth/v1\nselector:\n  serial: To Be Filled By O.E.M.\n",
            &["machines/node1.yaml:3", "selector.serial", "placeholder"],
        ),
        (
            "a profile that does not exist",
            "machines/node1.yaml",
            "apiVersion: plinth/v1\nselector:\n  mac: \"52:54:00:00:01:01\"\nprofiles:\n  - base\n  - gpu\n",
            &["machines/node1.yaml:6", "profiles[1]", "no profile \"gpu\""],
        ),
        (
            "a secret that does not exist",
            "machines/node1.yaml",
            "apiVersion: plinth/v1\nselector:\n  mac: \"52:54:00:00:01:01\"\nprofiles: [base]\nparams:\n  hostname: n\nconfig:\n  files:\n    - path: /etc/x\n      contents:\n        secretRef: nope\n",
            &["machines/node1.yaml:10", "config.files[0].contents", "no such secret"],
        ),
        (
            "an unknown parameter",
            "machines/node1.yaml",
            "apiVersion: plinth/v1\nselector:\n  mac: \"52:54:00:00:01:01\"\nprofiles: [base]\n",
            &["profiles/base.yaml:5", "config.hostname", "no parameter \"hostname\""],
        ),
        (
            "a secret that does not fit its field does not show",
            "machines/node1.yaml",
            "apiVersion: plinth/v1\nselector:\n  mac: \"52:54:00:00:01:01\"\nprofiles: [base]\nparams:\n  hostname: n\nconfig:\n  users:\n    - name: app\n      uid:\n        secretRef: registry\n",
            &["machines/node1.yaml:10", "config.users[0].uid", "[secret registry]"],
        ),
        (
            "YAML that does not parse",
            "profiles/worker.yaml",
            "apiVersion: plinth/v1\nconfig:\n  hostname: [unclosed\n",
            &["profiles/worker.yaml:"],
        ),
    ];
    for (case, file, text, needles) in cases {
        let (dir, cfg) = site();
        write(&cfg.join(file), text);
        // Every case on a data directory that does not exist yet: nothing may be left.
        // (Only where the fault is found before any rendering, which would first miss
        // the secrets a fresh data directory lacks.)
        let fresh = dir.0.join("fresh-data");
        let before_rendering = [
            "unknown field",
            "a placeholder UUID selector",
            "a placeholder serial selector",
            "a profile that does not exist",
            "YAML that does not parse",
        ];
        if before_rendering.contains(case) {
            refused_start(case, &cfg, &fresh, needles);
            assert!(!fresh.exists(), "{case}: left {}", fresh.display());
        }
        // And on the data directory that holds the secrets.
        refused_start(case, &cfg, &dir.0.join("data"), needles);
        assert!(
            !dir.0.join("data/ca.key").exists(),
            "{case}: the server went as far as making its CA"
        );
    }
}

/// Waits for the server's events to hold one more `config` event than `before`.
fn wait_reload(s: &Server, before: usize) -> Value {
    let start = Instant::now();
    loop {
        let (_, srv) = s.op("GET", "/v1/server", None);
        let evs = srv["events"].as_array().cloned().unwrap_or_default();
        if evs.len() > before {
            return evs[evs.len() - 1].clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no reload event: {srv}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A file changed into a bad one is seen (file watch) and refused: the last good set
/// keeps serving, and why is in the log and the server's events; a fixed file and a
/// SIGHUP bring the new set in.
#[test]
fn a_bad_file_on_reload_keeps_the_last_good_set_and_says_why() {
    if !has_curl("a_bad_file_on_reload_keeps_the_last_good_set_and_says_why") {
        return;
    }
    let (dir, cfg) = site();
    let s = start(dir, &cfg, &[]);
    let token = s.mint(MAC, UUID).unwrap();
    let node = s.enrol(MAC, UUID, &token).unwrap();
    let hostname = |n: &plinth_provisioner::node::client::Client| {
        let (code, c) = call(n, "GET", "/v1/config", None);
        assert_eq!(code, 200, "{c}");
        c["hostname"].as_str().unwrap().to_string()
    };
    assert_eq!(hostname(&node), "node-1");
    let machine = cfg.join("machines/node1.yaml");
    let good = std::fs::read_to_string(&machine).unwrap();
    // A typo, written as an editor would (a new file renamed over the old).
    let tmp = cfg.join("machines/.node1.yaml.swp");
    std::fs::write(&tmp, good.replace("params:", "parms:")).unwrap();
    std::fs::rename(&tmp, &machine).unwrap();
    let ev = wait_reload(&s, 0);
    assert_eq!(ev["ok"], false, "{ev}");
    let msg = ev["message"].as_str().unwrap();
    assert!(
        msg.contains("machines/node1.yaml:5")
            && msg.contains("parms")
            && msg.contains("last good set"),
        "{msg}"
    );
    assert!(s.log().contains("unknown field `parms`"), "{}", s.log());
    assert_eq!(hostname(&node), "node-1", "the last good set still serves");
    assert_eq!(
        s.metric("plinth_config_reloads_total{outcome=\"error\"}"),
        1.0
    );
    // Fixed, with a new host name, and the server told by SIGHUP as well.
    std::fs::write(&machine, good.replace("node-1", "node-one")).unwrap();
    let ev = wait_reload(&s, 1);
    let pid = server_pid(&s);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert_eq!(ev["ok"], true, "{ev}");
    let ev = wait_reload(&s, 2);
    assert_eq!(ev["ok"], true, "{ev}");
    assert!(
        ev["message"].as_str().unwrap().starts_with("SIGHUP"),
        "{ev}"
    );
    assert_eq!(hostname(&node), "node-one");
}

fn server_pid(s: &Server) -> nix::unistd::Pid {
    // The server is the only process with its data directory on its command line.
    let needle = s.data().to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("plinth-server") && cmd.contains(&needle) {
            return nix::unistd::Pid::from_raw(pid);
        }
    }
    panic!("no plinth-server process for {needle}")
}

/// A UUID that identifies nothing is never used to match, and the machine is flagged:
/// a placeholder UUID or serial, and a UUID two MACs present.
#[test]
fn identifiers_that_identify_nothing_never_match_and_are_flagged() {
    if !has_curl("identifiers_that_identify_nothing_never_match_and_are_flagged") {
        return;
    }
    let (dir, cfg) = site();
    let shared = "6e4a2b1c-0000-4000-8000-0000000005aa";
    std::fs::remove_file(cfg.join("machines/node1.yaml")).unwrap();
    write(
        &cfg.join("machines/by-uuid.yaml"),
        &format!(
            "apiVersion: plinth/v1\nselector:\n  uuid: {shared}\nprofiles: [base]\nparams:\n  hostname: by-uuid\n"
        ),
    );
    let s = start(dir, &cfg, &[]);
    let (a, b, c) = (
        "52:54:00:00:05:0a",
        "52:54:00:00:05:0b",
        "52:54:00:00:05:0c",
    );
    // A presents the UUID first: the file selects it.
    assert!(s.mint(a, shared).is_some());
    assert_eq!(
        s.machine(a)["origin"],
        json!({"file": "machines/by-uuid.yaml"})
    );
    // B presents the same UUID: it identifies neither any more.
    assert!(s.mint(b, shared).is_some(), "B is discovered instead");
    for mac in [a, b] {
        let m = s.machine(mac);
        assert_eq!(m["origin"], "discovered", "{mac}: {m}");
        let flags = m["flags"].to_string();
        assert!(
            flags.contains(&format!("uuid {shared} is also presented by")),
            "{mac}: {m}"
        );
    }
    // C: a placeholder UUID and serial.
    let (code, _) = s.curl(&[&format!(
        "{}/boot.ipxe?mac={c}&uuid=00000000-0000-0000-0000-000000000000&serial=To%20Be%20Filled%20By%20O.E.M.",
        s.http
    )]);
    assert_eq!(code, 200);
    let flags = s.machine(c)["flags"].to_string();
    assert!(
        flags.contains("uuid 00000000-0000-0000-0000-000000000000 is a placeholder")
            && flags.contains("serial \\\"To Be Filled By O.E.M.\\\" is a placeholder"),
        "{flags}"
    );
}

/// An unknown machine gets a discovery token and a discovery-only certificate: it may
/// post events and long-poll actions, gets no config; an operator accepts it with a
/// profile and the waiting poll says `configure` at once; the config is there, without a
/// new enrolment.
#[test]
fn discovery_then_acceptance_gives_the_config_at_once() {
    if !has_curl("discovery_then_acceptance_gives_the_config_at_once") {
        return;
    }
    let (dir, cfg) = site();
    let s = start(dir, &cfg, &[]);
    let mac = "52:54:00:00:0d:01";
    let uuid = "6e4a2b1c-0000-4000-8000-000000000d01";
    let token = s.mint(mac, uuid).expect("a discovery token");
    let (node, issued) = s
        .enrol_boot(mac, uuid, &token, "0f0f0f0f-0000-4000-8000-000000000001")
        .unwrap();
    assert!(issued.discovery, "a discovery-only certificate");
    let (code, body) = call(&node, "GET", "/v1/config", None);
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not accepted"),
        "{body}"
    );
    let (code, _) = call(
        &node,
        "POST",
        "/v1/events",
        Some(event(mac, uuid, "booted")),
    );
    assert_eq!(code, 200, "events are allowed");
    let (code, _) = call(
        &node,
        "POST",
        "/v1/logs",
        Some(json!({"bootId": "0f0f0f0f-0000-4000-8000-000000000001", "lines": []})),
    );
    assert_eq!(code, 403, "logs wait for acceptance");
    assert_eq!(s.machine(mac)["origin"], "discovered");
    // Accepting with a profile that does not render (no `hostname` parameter) is refused,
    // naming the field.
    let (code, body) = s.op(
        "POST",
        &format!("/v1/machines/{mac}/accept"),
        Some(&json!({"profile": "base"})),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("hostname"), "{body}");
    // The node's long poll, waiting while the operator accepts.
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let r = call(&node, "POST", "/v1/action", None);
        (r, started.elapsed(), node)
    });
    std::thread::sleep(Duration::from_secs(1));
    let (code, body) = s.op(
        "POST",
        &format!("/v1/machines/{mac}/accept"),
        Some(&json!({"profile": "base", "params": {"hostname": "found-1"}})),
    );
    assert_eq!(code, 200, "{body}");
    let ((code, reply), waited, node) = poll.join().unwrap();
    assert_eq!((code, &reply), (200, &json!({"action": "configure"})));
    assert!(
        waited < Duration::from_secs(10),
        "the poll was answered at once: {waited:?}"
    );
    let (code, c) = call(&node, "GET", "/v1/config", None);
    assert_eq!(code, 200, "{c}");
    assert_eq!(c["hostname"], "found-1");
    let m = s.machine(mac);
    assert_eq!(m["origin"], json!({"profile": "base"}), "{m}");
    assert_eq!(m["accepted"]["by"], "admin", "{m}");
    assert_eq!(
        s.metric("plinth_enrolments_total{outcome=\"discovery\"}"),
        1.0
    );
}
