//! The node image end to end: `plinth-boot build` (reproducible, complete DT_NEEDED
//! closure, clean failures) and real PXE boots in qemu (TCG, iPXE ROM) in the lab
//! (`tests/src/lab.rs`: the site's dnsmasq, plinth-server's proxyDHCP and TFTP on the
//! provisioning host): a declared machine sets its clock, enrols, fetches
//! and applies its config, renews its certificate, streams its logs with the token
//! redacted, and powers off or reboots when asked; a node outlives a server down at its
//! boot, an expired token and a server outside its pin; an unknown machine is discovered
//! and configured once an operator accepts it, in the same boot.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use plinth_tests::lab::{Lab, Machine, Spec};
use plinth_tests::server::Server;
use plinth_tests::{cache, plinth_bin, workspace, TempDir};
use serde_json::{json, Value};

const MAC: &str = "52:54:00:12:34:56";

fn bin(name: &str) -> PathBuf {
    let p = workspace().join("target/release").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `make build` (make test does) first",
        p.display()
    );
    p
}

/// The cached kernel, or None (with a SKIP line) when `make kernel` has not run.
fn kernel(test: &str) -> Option<PathBuf> {
    let boot = cache().join("kernel/root/boot");
    let k = std::fs::read_dir(&boot)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("vmlinuz-")
        });
    if k.is_none() {
        plinth_tests::skip(
            test,
            &format!("no kernel in {} (run `make kernel`)", boot.display()),
        );
    }
    k
}

/// True when a machine can be booted here: root (the lab's namespaces), the lab's
/// parts, a cached kernel and qemu (else a SKIP line).
fn can_boot(test: &str) -> bool {
    if !plinth_tests::need_root(test) || kernel(test).is_none() {
        return false;
    }
    if !Path::new("/usr/sbin/dnsmasq").exists() || !Path::new("/usr/lib/ipxe/ipxe.efi").exists() {
        plinth_tests::skip(test, "the lab needs dnsmasq and ipxe (make lab-deps)");
        return false;
    }
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        plinth_tests::skip(test, "qemu-system-x86_64 is not installed (make boot-deps)");
        return false;
    }
    true
}

/// A fresh random UUID for a test machine.
fn random_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .unwrap()
        .trim()
        .to_string()
}

fn build(out: &Path, args: &[&str]) -> Output {
    Command::new(bin("plinth-boot"))
        .arg("build")
        .arg("-o")
        .arg(out)
        .args(args)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap()
}

fn build_ok(out: &Path, args: &[&str]) {
    let o = build(out, args);
    assert!(
        o.status.success(),
        "plinth-boot build failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Builds an image of `kernel` alone: no modules, no plinth binaries.
fn build_bare(out: &Path, kernel: &Path) {
    build_ok(
        out,
        &[
            "--kernel",
            &kernel.to_string_lossy(),
            "--no-modules",
            "--no-plinth",
        ],
    );
}

/// Reads a gzip-compressed newc archive with the system's gzip (an independent reader):
/// path -> (mode, body).
fn read_initrd(path: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    let out = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}", path.display());
    let d = out.stdout;
    let mut map = BTreeMap::new();
    let mut off = 0;
    let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).unwrap(), 16).unwrap();
    let pad = |n: usize| (4 - n % 4) % 4;
    loop {
        let h = &d[off..off + 110];
        assert_eq!(&h[..6], b"070701", "newc magic at {off}");
        assert_eq!(hex(&h[22..30]), 0, "uid 0");
        assert_eq!(hex(&h[30..38]), 0, "gid 0");
        let mode = hex(&h[14..22]);
        let size = hex(&h[54..62]) as usize;
        let namesize = hex(&h[94..102]) as usize;
        let name = String::from_utf8(d[off + 110..off + 110 + namesize - 1].to_vec()).unwrap();
        let body_start = off + 110 + namesize + pad(110 + namesize);
        let body = d[body_start..body_start + size].to_vec();
        off = body_start + size + pad(size);
        if name == "TRAILER!!!" {
            return map;
        }
        if name != "." {
            assert_eq!(
                hex(&h[46..54]),
                1_700_000_000,
                "mtime of {name} is SOURCE_DATE_EPOCH"
            );
        }
        map.insert(name, (mode, body));
    }
}

/// Resolves `path` inside the archive, following symlinks there.
fn resolve(ar: &BTreeMap<String, (u32, Vec<u8>)>, path: &str) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut todo: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            parts.pop();
            continue;
        }
        parts.push(c);
        let cur = parts.join("/");
        let (mode, body) = ar.get(&cur)?;
        if mode & 0o170000 == 0o120000 {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = String::from_utf8(body.clone()).unwrap();
            parts.pop();
            if target.starts_with('/') {
                parts.clear();
            }
            for t in target.split('/').filter(|c| !c.is_empty()).rev() {
                todo.push(t.to_string());
            }
        }
    }
    Some(parts.join("/"))
}

#[test]
fn build_is_reproducible() {
    let Some(k) = kernel("build_is_reproducible") else {
        return;
    };
    let t = TempDir::new("plinth-boot-repro");
    let (a, b) = (t.0.join("a"), t.0.join("b"));
    let k = k.to_string_lossy().into_owned();
    build_ok(&a, &["--kernel", &k, "--extra", "/bin/ls:/usr/bin/ls"]);
    build_ok(&b, &["--kernel", &k, "--extra", "/bin/ls:/usr/bin/ls"]);
    for f in ["vmlinuz", "initrd", "boot.ipxe"] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(!x.is_empty(), "{f} is empty");
        assert!(x == y, "{f} differs between two builds of the same inputs");
    }
    // Entries sorted, owners 0:0, mtimes from SOURCE_DATE_EPOCH (checked while reading).
    let ar = read_initrd(&a.join("initrd"));
    let names: Vec<&String> = ar.keys().collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(
        ar.get("dev/console").map(|e| e.0),
        Some(0o020600),
        "/dev/console char device"
    );
    assert_eq!(
        resolve(&ar, "init").as_deref(),
        Some("usr/bin/plinth-init"),
        "/init is plinth-init"
    );
}

#[test]
fn initrd_holds_every_dt_needed_library() {
    let Some(k) = kernel("initrd_holds_every_dt_needed_library") else {
        return;
    };
    let t = TempDir::new("plinth-boot-closure");
    let out = t.0.join("img");
    // /bin/ls brings libselinux and libpcre2 beyond libc; the plinth binaries come by default.
    build_ok(
        &out,
        &[
            "--kernel",
            &k.to_string_lossy(),
            "--extra",
            "/bin/ls:/usr/bin/ls",
        ],
    );
    let ar = read_initrd(&out.join("initrd"));
    let libdirs = [
        "lib/x86_64-linux-gnu",
        "usr/lib/x86_64-linux-gnu",
        "lib64",
        "usr/lib64",
        "lib",
        "usr/lib",
    ];
    let scratch = t.0.join("elf");
    let mut checked = 0;
    let mut libs_seen = BTreeSet::new();
    for (name, (mode, body)) in &ar {
        if mode & 0o170000 != 0o100000 || !body.starts_with(b"\x7fELF") || name.ends_with(".ko") {
            continue;
        }
        std::fs::write(&scratch, body).unwrap();
        let text = readelf(&scratch);
        for line in text.lines() {
            if let Some(i) = line.find("[Requesting program interpreter: ") {
                let interp = line[i + 33..].trim_end_matches(']');
                assert!(
                    resolve(&ar, interp).is_some(),
                    "{name}: interpreter {interp} not in the initrd"
                );
            }
            if line.contains("(NEEDED)") {
                let lib = line.rsplit('[').next().unwrap().trim_end_matches(']');
                let found = libdirs
                    .iter()
                    .any(|d| resolve(&ar, &format!("{d}/{lib}")).is_some());
                assert!(found, "{name} needs {lib}, which is not in the initrd");
                libs_seen.insert(lib.to_string());
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 3,
        "expected plinth-init, ls and libraries, checked {checked}"
    );
    for lib in ["libc.so.6", "libselinux.so.1"] {
        assert!(
            libs_seen.contains(lib),
            "{lib} not among DT_NEEDED seen: {libs_seen:?}"
        );
    }
}

/// `--runtime` puts that very file at /usr/bin/plinth; the shipped one (target/dist/plinth
/// under `make`) needs nothing from the image: no interpreter, no shared library.
#[test]
fn the_named_runtime_is_the_images_plinth() {
    let Some(k) = kernel("the_named_runtime_is_the_images_plinth") else {
        return;
    };
    let shipped = plinth_bin();
    let t = TempDir::new("plinth-boot-runtime");
    // A copy one byte longer than the shipped binary (which the default plinth
    // directory also holds), so only --runtime can have put it in the image.
    let runtime = t.0.join("plinth-marked");
    let mut bytes = std::fs::read(&shipped).unwrap();
    bytes.push(0);
    std::fs::write(&runtime, &bytes).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = t.0.join("img");
    build_ok(
        &out,
        &[
            "--kernel",
            &k.to_string_lossy(),
            "--no-modules",
            "--runtime",
            &runtime.to_string_lossy(),
        ],
    );
    let ar = read_initrd(&out.join("initrd"));
    let (mode, body) = ar
        .get("usr/bin/plinth")
        .expect("no usr/bin/plinth in the initrd");
    assert_eq!(
        mode & 0o111,
        0o111,
        "usr/bin/plinth is not executable: {mode:o}"
    );
    assert!(
        *body == bytes,
        "usr/bin/plinth is not {}",
        runtime.display()
    );
    let text = readelf(&shipped);
    assert!(
        !text.contains("program interpreter") && !text.contains("(NEEDED)"),
        "{} is not static:\n{text}",
        shipped.display()
    );
}

/// With no --plinth-dir, the image carries the binaries `make build` ships
/// (target/dist: static musl where the target could be had), not cargo's own builds.
#[test]
fn the_default_image_carries_the_shipped_binaries() {
    let Some(k) = kernel("the_default_image_carries_the_shipped_binaries") else {
        return;
    };
    let dist = workspace().join("target/dist");
    if !dist.join("plinth-init").is_file() {
        plinth_tests::skip(
            "the_default_image_carries_the_shipped_binaries",
            &format!(
                "{} has no plinth-init (make build writes it)",
                dist.display()
            ),
        );
        return;
    }
    let t = TempDir::new("plinth-boot-default");
    let out = t.0.join("img");
    build_ok(&out, &["--kernel", &k.to_string_lossy(), "--no-modules"]);
    let ar = read_initrd(&out.join("initrd"));
    for (entry, file) in [
        ("usr/bin/plinth-init", "plinth-init"),
        ("usr/bin/plinth", "plinth"),
    ] {
        let (_, body) = ar
            .get(entry)
            .unwrap_or_else(|| panic!("no {entry} in the initrd"));
        assert!(
            *body == std::fs::read(dist.join(file)).unwrap(),
            "{entry} is not target/dist/{file}"
        );
    }
}

/// binutils' readelf (dynamic section and program headers) as the independent judge of
/// what an ELF file needs.
fn readelf(path: &Path) -> String {
    let out = Command::new("readelf")
        .args(["-d", "-l", "-W"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "readelf failed on {}", path.display());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_build_fails(test: &str, args: &[&str], needle: &str) {
    let t = TempDir::new("plinth-boot-bad");
    let out = t.0.join("img");
    let o = build(&out, args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{test}: build succeeded");
    assert!(
        err.contains(needle),
        "{test}: expected {needle:?} in: {err}"
    );
    assert!(!out.exists(), "{test}: output directory left behind");
    let leftovers: Vec<_> = std::fs::read_dir(&t.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "{test}: temporary files left behind: {leftovers:?}"
    );
}

#[test]
fn bad_input_fails_cleanly() {
    assert_build_fails(
        "missing kernel",
        &["--kernel", "/nonexistent/vmlinuz-0"],
        "/nonexistent/vmlinuz-0",
    );
    let Some(k) = kernel("bad_input_fails_cleanly") else {
        return;
    };
    let k = k.to_string_lossy().into_owned();
    assert_build_fails(
        "unreadable extra",
        &["--kernel", &k, "--extra", "/nonexistent/tool:/usr/bin/tool"],
        "/nonexistent/tool",
    );
    assert_build_fails(
        "malformed extra",
        &["--kernel", &k, "--extra", "relative-dest:usr/bin/x"],
        "--extra",
    );
    assert_build_fails(
        "missing runtime",
        &["--kernel", &k, "--runtime", "/nonexistent/plinth"],
        "/nonexistent/plinth",
    );
    assert_build_fails(
        "missing module",
        &["--kernel", &k, "--module", "no_such_module"],
        "no_such_module",
    );
    // A malformed SOURCE_DATE_EPOCH is named, not silently replaced.
    let t0 = TempDir::new("plinth-boot-epoch");
    let o = Command::new(bin("plinth-boot"))
        .args(["build", "-o"])
        .arg(t0.0.join("img"))
        .args(["--kernel", &k])
        .env("SOURCE_DATE_EPOCH", "yesterday")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SOURCE_DATE_EPOCH"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!t0.0.join("img").exists());
    // A failed rebuild leaves the previous good image alone.
    let t = TempDir::new("plinth-boot-keep");
    let out = t.0.join("img");
    build_ok(&out, &["--kernel", &k, "--no-modules"]);
    let before = std::fs::read(out.join("initrd")).unwrap();
    let o = build(&out, &["--kernel", &k, "--module", "no_such_module"]);
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read(out.join("initrd")).unwrap(),
        before,
        "a failed build touched the existing image"
    );
}

/// plinth-server over `img` on the lab's provisioning host (10.33.0.2: HTTP on 8080,
/// HTTPS on 8443, SNTP, proxyDHCP and TFTP).
fn start_server(lab: &Lab, img: &Path, extra: &[&str]) -> Server {
    lab.server(TempDir::new("plinth-boot-server"), img, extra)
}

/// The node's own events (not the server's), in order.
fn node_events(server: &Server) -> Vec<Value> {
    events(server)
        .into_iter()
        .filter(|e| e["source"] == "node")
        .collect()
}

#[test]
fn a_known_machine_boots_enrols_applies_its_config_and_renews() {
    let test = "a_known_machine_boots_enrols_applies_its_config_and_renews";
    if !can_boot(test) {
        return;
    }
    let t = TempDir::new("plinth-boot-pxe");
    let img = t.0.join("img");
    build_ok(&img, &[]);
    // Certificates of 40 s: the node renews at 20 s, while the test watches.
    let lab = Lab::up("boot");
    let server = start_server(&lab, &img, &["--cert-lifetime", "40s"]);
    let uuid = random_uuid();
    server.declare_with(
        MAC,
        &uuid,
        json!({
            "apiVersion": "plinth/v1",
            "hostname": "plinth-node-1",
            "network": "dhcp",
            "users": [{"name": "app", "uid": 1500,
                       "subuid": {"start": 100000, "count": 65536},
                       "subgid": {"start": 100000, "count": 65536}}],
            "files": [{"path": "/etc/plinth-test/motd", "contents": "provisioned by plinth\n",
                       "mode": "0640", "uid": 1500, "gid": 1500}],
            "sysctls": {"net.ipv4.ip_forward": "1"}
        }),
    );
    let serial = t.0.join("serial.log");
    let start = Instant::now();
    // The RTC starts in 2001, as after a dead CMOS battery: TLS works only if SNTP
    // set the clock first.
    let mut qemu = boot(&lab, &uuid, &serial, None, &["--rtc-base", "2001-01-01"]);
    wait_events(&server, &mut qemu, "applied", 1, &serial);
    let applied_at = start.elapsed();
    let evs = node_events(&server);
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..5],
        ["booted", "network", "enrolled", "config", "applied"],
        "timeline: {evs:?}"
    );
    for e in &evs[..5] {
        assert!(
            e["receivedAt"].as_u64().unwrap() > 1_700_000_000,
            "receipt time: {e}"
        );
        assert!(e["uptimeMs"].as_u64().unwrap() > 0, "node time: {e}");
    }
    let booted = &evs[0];
    assert_eq!(
        booted["details"]["modulesFailed"],
        json!([]),
        "every listed module loaded: {booted}"
    );
    let cgroup2 = booted["details"]["cgroup2Options"]
        .as_str()
        .unwrap_or_default();
    assert!(
        cgroup2.split(',').any(|o| o == "nsdelegate")
            && cgroup2.split(',').any(|o| o == "memory_recursiveprot"),
        "cgroup2 super options {cgroup2:?}: {booted}"
    );
    let clock = &evs[1]["details"]["clock"];
    assert_eq!(clock["stepped"], true, "the clock was set by SNTP: {clock}");
    assert!(
        clock["offsetSec"].as_f64().unwrap() > 20.0 * 365.0 * 86400.0,
        "{clock}"
    );
    assert_eq!(
        evs[2]["details"]["serial"].as_str().unwrap().len(),
        32,
        "{}",
        evs[2]
    );
    let state = &evs[4]["details"]["state"];
    assert_eq!(state["hostname"], "plinth-node-1", "{state}");
    let motd = &state["files"]["/etc/plinth-test/motd"];
    assert_eq!(
        (&motd["mode"], &motd["uid"], &motd["gid"]),
        (&json!("0640"), &json!(1500), &json!(1500)),
        "{state}"
    );
    assert_eq!(
        motd["sha256"],
        sha256_hex(b"provisioned by plinth\n"),
        "{state}"
    );
    assert_eq!(
        state["users"]["app"]["passwd"], "app:x:1500:1500::/home/app:/bin/sh",
        "{state}"
    );
    assert_eq!(
        state["users"]["app"]["subuid"], "app:100000:65536",
        "{state}"
    );
    assert_eq!(
        state["users"]["app"]["subgid"], "app:100000:65536",
        "{state}"
    );
    assert_eq!(state["sysctls"]["net.ipv4.ip_forward"], "1", "{state}");

    // Renewal at half-life: a second certificate, the first revoked as renewed; the
    // node goes on with the new one: its log lines after the renewal reach the server,
    // which no longer takes the old certificate.
    let renew_start = Instant::now();
    let renewed_serial = loop {
        let (_, m) = server.op("GET", &format!("/v1/machines/{MAC}"), None);
        let certs = m["certificates"].as_array().unwrap().clone();
        if certs.len() >= 2 {
            assert!(
                certs[0]["revoked"]
                    .as_str()
                    .unwrap()
                    .starts_with("renewed as"),
                "{m}"
            );
            assert!(certs[1]["revoked"].is_null(), "{m}");
            break certs[1]["serial"].as_str().unwrap().to_string();
        }
        if renew_start.elapsed() > Duration::from_secs(90)
            || qemu.child.try_wait().unwrap().is_some()
        {
            console_panic(&format!("no renewal: {m}"), &serial);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let renewed_at = start.elapsed();
    let boot_id = evs[0]["bootId"].as_str().unwrap().to_string();
    let log_url = format!("{}/v1/machines/{MAC}/logs/{boot_id}", server.https);
    let bearer = format!("Authorization: Bearer {}", server.operator);
    let renewed_line = format!("plinth-init: renewed: certificate {renewed_serial}");
    let seen = Instant::now();
    while !server
        .curl(&["-H", &bearer, &log_url])
        .1
        .contains(&renewed_line)
    {
        if seen.elapsed() > Duration::from_secs(30) {
            console_panic(
                "the node's log after renewal never reached the server",
                &serial,
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (code, body) = server.op("POST", &format!("/v1/machines/{MAC}/poweroff"), None);
    assert_eq!(code, 200, "{body}");
    wait_exit(&mut qemu, Duration::from_secs(60), &serial);
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(
        log.contains("reboot: Power down"),
        "clean power down:\n{log}"
    );
    let evs = node_events(&server);
    assert!(
        evs.iter()
            .any(|e| e["type"] == "shutdown" && e["details"]["reason"] == "poweroff"),
        "shutdown event: {evs:?}"
    );

    // The token: on the kernel command line (the serial console shows it), and
    // nowhere else: not in the streamed kmsg, the store, the server's log or an answer.
    let token = log
        .split("plinth.token=")
        .nth(1)
        .map(|t| {
            t.chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect::<String>()
        })
        .unwrap_or_default();
    assert_eq!(
        token.len(),
        64,
        "the kernel command line on the console carries the token"
    );
    let (code, streamed) = server.curl(&["-H", &bearer, &log_url]);
    assert_eq!(code, 200, "{streamed}");
    assert!(
        streamed.contains("kmsg "),
        "kernel lines streamed: {streamed}"
    );
    assert!(
        streamed.contains("console ") && streamed.contains("plinth-init: enrolled"),
        "{streamed}"
    );
    assert!(
        streamed.contains("plinth.token=[redacted]"),
        "the command line, redacted: {streamed}"
    );
    assert!(
        !streamed.contains(&token),
        "the streamed log holds the token"
    );
    let mut answers = server.op("GET", "/v1/machines", None).1.to_string();
    answers.push_str(
        &server
            .op("GET", &format!("/v1/machines/{MAC}"), None)
            .1
            .to_string(),
    );
    assert!(!answers.contains(&token), "an API answer holds the token");
    assert_no_token(&server.dir.0, &token);
    println!(
        "qemu start to applied: {:.1} s; to the renewal seen: {:.1} s; to power off: {:.1} s",
        applied_at.as_secs_f64(),
        renewed_at.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

fn sha256_hex(b: &[u8]) -> String {
    let o = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Fails if any file under `dir` (the server's data, its log) holds `token`.
fn assert_no_token(dir: &Path, token: &str) {
    let mut todo = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                files += 1;
                let body = std::fs::read(&p).unwrap();
                assert!(
                    !String::from_utf8_lossy(&body).contains(token),
                    "{} holds the token",
                    p.display()
                );
            }
        }
    }
    assert!(
        files >= 4,
        "expected the store, the logs and the server's log under {}",
        dir.display()
    );
}

#[test]
fn operator_poweroff_and_ctrl_alt_del_stop_a_running_machine() {
    if !can_boot("operator_poweroff_and_ctrl_alt_del_stop_a_running_machine") {
        return;
    }
    let t = TempDir::new("plinth-boot-stop");
    let img = t.0.join("img");
    build_ok(&img, &[]);
    let lab = Lab::up("boot");
    let server = start_server(&lab, &img, &[]);
    let uuid = random_uuid();
    server.declare(MAC, &uuid);

    // 1. The operator asks the server; the running node gets it by its long poll.
    let serial = t.0.join("serial1.log");
    let mut qemu = boot(&lab, &uuid, &serial, None, &[]);
    wait_events(&server, &mut qemu, "applied", 1, &serial);
    let (code, body) = server.op("POST", &format!("/v1/machines/{MAC}/poweroff"), None);
    assert_eq!(code, 200, "{body}");
    wait_exit(&mut qemu, Duration::from_secs(60), &serial);
    assert!(std::fs::read_to_string(&serial)
        .unwrap()
        .contains("reboot: Power down"));

    // 2. Ctrl-alt-del: the kernel turns it into SIGINT for PID 1, which reboots cleanly
    //    (qemu runs with -no-reboot, so the reboot ends it). A new boot, a new token.
    let serial = t.0.join("serial2.log");
    let monitor = t.0.join("monitor.sock");
    let mut qemu = boot(&lab, &uuid, &serial, Some(&monitor), &[]);
    wait_events(&server, &mut qemu, "applied", 2, &serial);
    let mut mon = std::os::unix::net::UnixStream::connect(&monitor).unwrap();
    mon.write_all(b"sendkey ctrl-alt-delete\n").unwrap();
    wait_exit(&mut qemu, Duration::from_secs(60), &serial);
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(log.contains("signal 2"), "PID 1 saw SIGINT:\n{log}");
    assert!(
        log.contains("reboot: Restarting system"),
        "clean reboot:\n{log}"
    );
    let reasons: Vec<String> = node_events(&server)
        .iter()
        .filter(|e| e["type"] == "shutdown")
        .map(|e| {
            e["details"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(reasons, ["poweroff", "signal: reboot"]);
    // Two boots, two certificates: the second enrolment revoked the first boot's.
    let (_, m) = server.op("GET", &format!("/v1/machines/{MAC}"), None);
    let certs = m["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{m}");
    assert!(
        certs[0]["revoked"].as_str().unwrap().contains("superseded"),
        "{m}"
    );
    assert!(m["quarantine"].is_null(), "{m}");
}

#[test]
fn tftp_serves_the_boot_chain_read_only() {
    let test = "tftp_serves_the_boot_chain_read_only";
    let Some(k) = kernel(test) else { return };
    if Command::new("curl").arg("--version").output().is_err() {
        plinth_tests::skip(test, "curl (the TFTP client used here) is not installed");
        return;
    }
    let t = TempDir::new("plinth-boot-tftp");
    let img = t.0.join("img");
    build_bare(&img, &k);
    let server = Server::start_in(
        TempDir::new("plinth-boot-tftp-server"),
        &img,
        &[
            "--tftp",
            "127.0.0.1:0",
            "--advertise-http",
            "http://10.33.0.2:8080",
        ],
    );
    let tftp = server.tftp.clone().unwrap();
    // --path-as-is: curl would otherwise squash `..` before the request is sent.
    let fetch = |name: &str, blksize: &str| -> Output {
        Command::new("curl")
            .args(["-sS", "--max-time", "60", "--path-as-is"])
            .args(["--tftp-blksize", blksize])
            .arg(format!("tftp://{tftp}/{name}"))
            .output()
            .unwrap()
    };
    // The kernel, in 1468-byte blocks (the blksize option) and in plain 512-byte blocks.
    let kernel = std::fs::read(img.join("vmlinuz")).unwrap();
    for blksize in ["1468", "512"] {
        let o = fetch("vmlinuz", blksize);
        assert!(
            o.status.success(),
            "curl tftp: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.stdout == kernel,
            "vmlinuz over TFTP (blksize {blksize}) differs"
        );
    }
    // boot.ipxe over TFTP chains to the per-machine script over HTTP, where a token can
    // be minted (TFTP carries no MAC to mint one for).
    let o = fetch("boot.ipxe", "512");
    let script = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        script,
        "#!ipxe\nchain http://10.33.0.2:8080/boot.ipxe?mac=${net0/mac}&uuid=${uuid}&serial=${serial}\n"
    );
    // Nothing outside the boot directory, such as the server's data beside it.
    let o = fetch("../ca.crt", "512");
    assert!(
        !o.status.success(),
        "a path outside the boot dir was served"
    );
    let o = fetch("no-such-file", "512");
    assert!(!o.status.success(), "a missing file was served");
}

#[test]
fn the_plain_http_listener_serves_the_boot_chain_and_refuses_bad_setup() {
    let Some(k) = kernel("the_plain_http_listener_serves_the_boot_chain_and_refuses_bad_setup")
    else {
        return;
    };
    let t = TempDir::new("plinth-boot-api");
    let img = t.0.join("img");
    build_bare(&img, &k);

    // A boot dir without an image, or a URL that is not one, is refused up front,
    // naming what is wrong, and leaves no data directory behind.
    for (args, needle) in [
        (
            vec!["--boot-dir", "/nonexistent/nothing-here"],
            "nothing-here/boot.ipxe",
        ),
        (
            vec![
                "--boot-dir",
                img.to_str().unwrap(),
                "--advertise-tls",
                "http://x",
            ],
            "--advertise-tls",
        ),
        (
            vec![
                "--boot-dir",
                img.to_str().unwrap(),
                "--cert-lifetime",
                "soon",
            ],
            "--cert-lifetime",
        ),
    ] {
        let data = t.0.join("d0");
        let o = Command::new(bin("plinth-server"))
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!data.exists(), "{args:?} left {}", data.display());
    }

    let server = Server::start_in(TempDir::new("plinth-boot-api-server"), &img, &[]);
    let uuid = random_uuid();
    server.declare(MAC, &uuid);
    // The per-machine script: HTTPS URL, pin, a token; kernel and initrd beside it.
    let (code, script) = server.curl(&[&format!(
        "{}/boot.ipxe?mac=52%3A54%3A00%3A12%3A34%3A56&uuid={uuid}",
        server.http
    )]);
    assert_eq!(code, 200);
    assert!(
        script.starts_with(&format!(
            "#!ipxe\nset plinth-server {}\nset plinth-ca {}\nset plinth-token ",
            server.https, server.pin
        )),
        "{script}"
    );
    assert!(
        script.contains("kernel vmlinuz ")
            && script.contains("plinth.token=${plinth-token}")
            && script.contains("console=ttyS0")
            && script.contains("initrd initrd"),
        "{script}"
    );
    assert_eq!(
        server
            .curl(&[&format!("{}/boot.ipxe?mac=zz", server.http)])
            .0,
        400
    );
    // Range requests on the kernel (iPXE and PXE ROMs may resume).
    let kernel = std::fs::read(img.join("vmlinuz")).unwrap();
    let o = Command::new("curl")
        .args(["-sS", "-r", "2-5", "-D", "-"])
        .arg(format!("{}/vmlinuz", server.http))
        .output()
        .unwrap();
    let out = o.stdout;
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(
        head.contains(&format!("content-range: bytes 2-5/{}", kernel.len())),
        "{head}"
    );
    assert_eq!(&out[split + 4..], &kernel[2..6]);
    // Nothing else on plain HTTP: the API, enrolment and node calls are all 404 there.
    for path in [
        "/v1/machines",
        "/v1/enroll",
        "/v1/events",
        "/v1/config",
        "/ca.crt",
    ] {
        assert_eq!(
            server.curl(&[&format!("{}{path}", server.http)]).0,
            404,
            "{path}"
        );
        assert_eq!(
            server
                .curl(&["-X", "POST", &format!("{}{path}", server.http)])
                .0,
            404,
            "{path}"
        );
    }
    // The store survives a restart: same CA pin, the machine still declared.
    let pin = server.pin.clone();
    let again = server.restart(&img, &[]);
    assert_eq!(again.pin, pin, "the CA changed across a restart");
    assert_eq!(again.machine(MAC)["uuid"], uuid);
}

/// Powers machine MAC/uuid on in the lab (BIOS); `extra` goes to `plinth-boot run`.
fn boot(lab: &Lab, uuid: &str, serial: &Path, monitor: Option<&Path>, extra: &[&str]) -> Machine {
    let mut spec = Spec::new("bios", MAC, uuid, serial.parent().unwrap());
    spec.console = serial.to_path_buf();
    spec.monitor = monitor.map(Path::to_path_buf);
    spec.timeout = Duration::from_secs(180);
    spec.extra = extra.iter().map(|s| s.to_string()).collect();
    lab.power_on(&spec)
}

/// Fails the test with `msg` and the machine's serial console.
fn console_panic(msg: &str, serial: &Path) -> ! {
    let log = std::fs::read_to_string(serial).unwrap_or_default();
    panic!("{msg}\n--- serial console ---\n{log}\n--- end ---")
}

/// The node's and the server's events about MAC, every boot, oldest first, each with
/// its `bootId`.
fn events(server: &Server) -> Vec<Value> {
    let (code, m) = server.op("GET", &format!("/v1/machines/{MAC}"), None);
    if code != 200 {
        return Vec::new();
    }
    m["boots"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| {
            b["events"].as_array().unwrap().iter().map(move |e| {
                let mut e = e.clone();
                e["bootId"] = b["bootId"].clone();
                e
            })
        })
        .collect()
}

/// Waits until the server holds `n` events of `kind` from MAC, or qemu exits, or 240 s.
fn wait_events(server: &Server, qemu: &mut Machine, kind: &str, n: usize, serial: &Path) {
    let start = Instant::now();
    loop {
        if events(server).iter().filter(|e| e["type"] == kind).count() >= n {
            return;
        }
        let exited = qemu.child.try_wait().unwrap();
        if exited.is_some() || start.elapsed() > Duration::from_secs(240) {
            qemu.stop();
            console_panic(
                &format!(
                    "no {kind} event #{n} (qemu: {exited:?}); events: {:?}",
                    events(server)
                ),
                serial,
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn wait_exit(qemu: &mut Machine, within: Duration, serial: &Path) {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(s) = qemu.child.try_wait().unwrap() {
            assert!(s.success(), "plinth-boot run: {s}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    qemu.stop();
    console_panic(
        &format!("the machine did not stop within {within:?}"),
        serial,
    );
}

#[test]
fn a_config_that_fails_to_apply_is_reported_and_the_node_stays_reachable() {
    let test = "a_config_that_fails_to_apply_is_reported_and_the_node_stays_reachable";
    if !can_boot(test) {
        return;
    }
    let t = TempDir::new("plinth-boot-fault");
    let img = t.0.join("img");
    build_ok(&img, &[]);
    let lab = Lab::up("boot");
    let server = start_server(&lab, &img, &[]);
    let uuid = random_uuid();
    // Valid by the schema, impossible on the node: this kernel has no such parameter.
    server.declare_with(
        MAC,
        &uuid,
        json!({"apiVersion": "plinth/v1", "sysctls": {"kernel.plinth_no_such_knob": "1"}}),
    );
    let serial = t.0.join("serial.log");
    let mut qemu = boot(&lab, &uuid, &serial, None, &[]);
    wait_events(&server, &mut qemu, "error", 1, &serial);
    let evs = node_events(&server);
    let err = evs.iter().find(|e| e["type"] == "error").unwrap();
    assert_eq!(err["details"]["step"], "apply", "{err}");
    assert!(
        err["details"]["error"]
            .as_str()
            .unwrap()
            .contains("kernel/plinth_no_such_knob"),
        "the error names the sysctl: {err}"
    );
    assert!(!evs.iter().any(|e| e["type"] == "applied"), "{evs:?}");
    // Still failing, still retrying, still reachable: the operator powers it off.
    let (code, body) = server.op("POST", &format!("/v1/machines/{MAC}/poweroff"), None);
    assert_eq!(code, 200, "{body}");
    wait_exit(&mut qemu, Duration::from_secs(60), &serial);
    assert!(std::fs::read_to_string(&serial)
        .unwrap()
        .contains("reboot: Power down"));
}

/// Waits until the serial console holds `needle` `n` times; fails (with the console) when
/// qemu exits first or `within` passes.
fn wait_console(qemu: &mut Machine, serial: &Path, needle: &str, n: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(serial).unwrap_or_default();
        if log.matches(needle).count() >= n {
            return;
        }
        let exited = qemu.child.try_wait().unwrap();
        if exited.is_some() || start.elapsed() > within {
            qemu.stop();
            console_panic(
                &format!("{needle:?} not seen {n} times on the console (qemu: {exited:?})"),
                serial,
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The server's HTTPS listener is down when the node comes up: a real fault, the server
/// process killed once the machine has its kernel and initrd, and a second server process
/// started later on the same data directory and ports. The node keeps trying with
/// back-off, enrols with the token the first one minted, and the `error` it queued
/// reaches the timeline ahead of `enrolled`.
#[test]
fn a_node_outlives_a_server_down_at_boot_and_reports_it() {
    let test = "a_node_outlives_a_server_down_at_boot_and_reports_it";
    if !can_boot(test) {
        return;
    }
    let t = TempDir::new("plinth-boot-down");
    let img = t.0.join("img");
    build_ok(&img, &[]);
    let lab = Lab::up("down");
    let server = start_server(&lab, &img, &[]);
    let uuid = random_uuid();
    server.declare(MAC, &uuid);
    let serial = t.0.join("serial.log");
    let mut qemu = boot(&lab, &uuid, &serial, None, &[]);
    wait_console(
        &mut qemu,
        &serial,
        "plinth-init: starting",
        1,
        Duration::from_secs(180),
    );
    let dir = server.kill();
    let failed = "enrolment with https://10.33.0.2:8443 failed";
    wait_console(&mut qemu, &serial, failed, 3, Duration::from_secs(120));
    let server = lab.server(dir, &img, &[]);
    wait_events(&server, &mut qemu, "applied", 1, &serial);
    let log = std::fs::read_to_string(&serial).unwrap();
    // Back-off: the waits between attempts grow.
    for n in [1, 2, 4] {
        assert!(
            log.contains(&format!("retrying in {n}s")),
            "no retry after {n}s:\n{log}"
        );
    }
    let evs = node_events(&server);
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let enrolled = kinds.iter().position(|k| *k == "enrolled").unwrap();
    let errors: Vec<&Value> = evs[..enrolled]
        .iter()
        .filter(|e| e["type"] == "error")
        .collect();
    assert!(!errors.is_empty(), "no error before enrolled: {kinds:?}");
    let e = errors[0];
    assert_eq!(e["details"]["step"], "enroll", "{e}");
    assert!(
        e["details"]["error"]
            .as_str()
            .unwrap()
            .contains("onnection refused"),
        "the error names what failed: {e}"
    );
    assert_eq!(e["details"]["server"], "https://10.33.0.2:8443", "{e}");
    assert_eq!(
        kinds[enrolled..enrolled + 3],
        ["enrolled", "config", "applied"],
        "{kinds:?}"
    );
    // One enrolment, with the token the first server process minted.
    let m = server.machine(MAC);
    assert_eq!(m["certificates"].as_array().unwrap().len(), 1, "{m}");
    assert!(m["token"]["spentAt"].is_u64(), "{m}");
    assert!(m["quarantine"].is_null(), "{m}");
}

/// A token that expired before the node could enrol (a token life of 1 s, shorter than
/// the boot): the server refuses it and records an `error` naming the expiry on that
/// boot's timeline, the node says so on its console and reboots after its back-off; by
/// then the operator has restarted the server with a sane token life, and the second boot
/// (a real reboot: qemu PXE-boots again) gets a new token and enrols.
#[test]
fn an_expired_token_is_reported_and_the_next_boot_enrols() {
    let test = "an_expired_token_is_reported_and_the_next_boot_enrols";
    if !can_boot(test) {
        return;
    }
    let t = TempDir::new("plinth-boot-expired");
    let img = t.0.join("img");
    build_ok(&img, &[]);
    let lab = Lab::up("expired");
    let server = start_server(&lab, &img, &["--token-ttl", "1s"]);
    let uuid = random_uuid();
    server.declare(MAC, &uuid);
    let serial = t.0.join("serial.log");
    let mut qemu = boot(&lab, &uuid, &serial, None, &["--reboot"]);
    wait_events(&server, &mut qemu, "error", 1, &serial);
    let expired = events(&server)
        .into_iter()
        .find(|e| e["type"] == "error")
        .unwrap();
    assert_eq!(expired["source"], "server", "{expired}");
    assert_eq!(expired["details"]["step"], "enroll", "{expired}");
    assert!(
        expired["details"]["error"]
            .as_str()
            .unwrap()
            .contains("token expired"),
        "{expired}"
    );
    let first_boot = expired["bootId"].as_str().unwrap().to_string();
    let dir = server.kill();
    let server = lab.server(dir, &img, &[]);
    wait_events(&server, &mut qemu, "applied", 1, &serial);
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(
        log.contains("enrolment refused (401)") && log.contains("token expired"),
        "the node says why:\n{log}"
    );
    assert!(
        log.contains("reboot: Restarting system"),
        "a real reboot:\n{log}"
    );
    assert_eq!(log.matches("plinth-init: starting").count(), 2, "{log}");
    let evs = node_events(&server);
    let enrolled = evs.iter().find(|e| e["type"] == "enrolled").unwrap();
    assert_ne!(
        enrolled["bootId"], first_boot,
        "the second boot enrolled: {evs:?}"
    );
    let m = server.machine(MAC);
    assert_eq!(m["certificates"].as_array().unwrap().len(), 1, "{m}");
    assert!(m["quarantine"].is_null(), "{m}");
}

/// The boot chain points the node at an HTTPS server whose certificate does not chain to
/// the pinned CA (another plinth-server, with a CA of its own and a certificate naming
/// the address the node uses): the node refuses the handshake, so its token never leaves
/// it, and says why on its console.
#[test]
fn a_node_sends_no_token_to_a_server_outside_its_pin_and_says_why() {
    let test = "a_node_sends_no_token_to_a_server_outside_its_pin_and_says_why";
    if !can_boot(test) {
        return;
    }
    let t = TempDir::new("plinth-boot-pin");
    let img = t.0.join("img");
    build_ok(&img, &[]);
    // The impostor: another plinth-server on the provisioning host, with a CA of its own
    // and a certificate naming the address the node is sent to.
    let lab = Lab::up("pin");
    let impostor = Server::launch(
        TempDir::new("plinth-boot-pin-impostor"),
        &img,
        &[
            "--listen",
            "10.33.0.2:9080",
            "--listen-tls",
            "10.33.0.2:9443",
        ],
        Some(&lab.server_host()),
    );
    let advertise = "https://10.33.0.2:9443".to_string();
    let server = start_server(&lab, &img, &["--advertise-tls", &advertise]);
    assert_ne!(impostor.pin, server.pin);
    let uuid = random_uuid();
    server.declare(MAC, &uuid);
    let serial = t.0.join("serial.log");
    let mut qemu = boot(&lab, &uuid, &serial, None, &[]);
    let refusal = format!("does not chain to the pinned CA {}", server.pin);
    wait_console(&mut qemu, &serial, &refusal, 2, Duration::from_secs(240));
    drop(qemu);
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(
        log.contains(&format!("enrolment with {advertise} failed")),
        "{log}"
    );
    // The token the real server minted (the kernel printed its command line).
    let token = log
        .split("plinth.token=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(token.len() >= 20, "{token}");
    // The impostor saw handshakes refused by the client and nothing else: no request,
    // no token in its log, audit trail or store.
    assert!(
        impostor.log().contains("TLS handshake refused"),
        "{}",
        impostor.log()
    );
    assert!(
        !impostor.audit().contains("/v1/enroll"),
        "{}",
        impostor.audit()
    );
    for entry in walk(&impostor.dir.0) {
        let body = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&body).contains(&token),
            "{} holds the token",
            entry.display()
        );
    }
    // And the real server's token was never spent.
    let m = server.machine(MAC);
    assert!(m["token"]["spentAt"].is_null(), "{m}");
    assert!(m["certificates"].as_array().unwrap().is_empty(), "{m}");
}

/// Every file under `dir`.
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

/// A machine nobody declared PXE-boots: it gets a discovery token, enrols with a
/// discovery-only certificate and reports its events, but gets no config; an operator
/// accepts it with a profile of `--config-dir`, and the running node fetches and applies
/// that config at once, in the same boot.
#[test]
fn an_unknown_machine_is_discovered_and_configured_once_accepted() {
    let test = "an_unknown_machine_is_discovered_and_configured_once_accepted";
    if !can_boot(test) {
        return;
    }
    let t = TempDir::new("plinth-boot-discovery");
    let img = t.0.join("img");
    build_ok(&img, &[]);
    let cfg = t.0.join("config");
    std::fs::create_dir_all(cfg.join("profiles")).unwrap();
    std::fs::write(
        cfg.join("profiles/worker.yaml"),
        "apiVersion: plinth/v1\nconfig:\n  hostname: \"{{hostname}}\"\n  files:\n    - path: /etc/plinth-test/role\n      contents: \"worker {{hostname}}\\n\"\n",
    )
    .unwrap();
    let lab = Lab::up("boot");
    let server = start_server(&lab, &img, &["--config-dir", cfg.to_str().unwrap()]);
    let uuid = random_uuid();
    let serial = t.0.join("serial.log");
    let mut qemu = boot(&lab, &uuid, &serial, None, &[]);
    wait_events(&server, &mut qemu, "enrolled", 1, &serial);
    let evs = node_events(&server);
    let enrolled = evs.iter().find(|e| e["type"] == "enrolled").unwrap();
    assert_eq!(enrolled["details"]["discovery"], true, "{enrolled}");
    assert_eq!(server.machine(MAC)["origin"], "discovered");
    wait_console(
        &mut qemu,
        &serial,
        "waiting for an operator to accept it",
        1,
        Duration::from_secs(60),
    );
    // Nothing is applied while it waits.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        !node_events(&server).iter().any(|e| e["type"] == "config"),
        "a config before acceptance"
    );
    let (code, body) = server.op(
        "POST",
        &format!("/v1/machines/{MAC}/accept"),
        Some(&json!({"profile": "worker", "params": {"hostname": "found-node"}})),
    );
    assert_eq!(code, 200, "{body}");
    wait_events(&server, &mut qemu, "applied", 1, &serial);
    let evs = node_events(&server);
    let applied = evs.iter().find(|e| e["type"] == "applied").unwrap();
    assert_eq!(
        applied["details"]["state"]["hostname"], "found-node",
        "{applied}"
    );
    assert_eq!(
        applied["bootId"], enrolled["bootId"],
        "configured in the same boot, without a reboot"
    );
    assert_eq!(evs.iter().filter(|e| e["type"] == "booted").count(), 1);
    let (code, body) = server.op("POST", &format!("/v1/machines/{MAC}/poweroff"), None);
    assert_eq!(code, 200, "{body}");
    wait_exit(&mut qemu, Duration::from_secs(60), &serial);
}
