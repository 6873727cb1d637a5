//! The node image end to end: `plinth-boot build` (reproducible, complete DT_NEEDED
//! closure, clean failures) and a real PXE boot in qemu (TCG, iPXE ROM, slirp) against a
//! real `plinth-server` on loopback, which must record a `booted` event from the guest's
//! MAC and UUID and see the machine power off when asked.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use plinth_tests::{cache, plinth_bin, workspace, TempDir};
use serde_json::Value;

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

/// True when a machine can be booted here: a cached kernel and qemu (else a SKIP line).
fn can_boot(test: &str) -> bool {
    if kernel(test).is_none() {
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

/// A running plinth-server, killed on drop.
struct Server {
    child: Child,
    url: String,
    /// The TFTP address, when started with --tftp.
    tftp: Option<String>,
}

impl Server {
    fn start(boot_dir: &Path, data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(bin("plinth-server"))
            .args(["--listen", "127.0.0.1:0", "--boot-dir"])
            .arg(boot_dir)
            .arg("--data")
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            // Its access log goes beside the data dir rather than into the test output.
            .stderr(std::fs::File::create(data.with_extension("log")).unwrap())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let url = line.trim().rsplit(' ').next().unwrap().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "server said {line:?}");
        let mut tftp = None;
        if extra.contains(&"--tftp") {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            tftp = Some(line.trim().rsplit(' ').next().unwrap().to_string());
        }
        Server { child, url, tftp }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(&self.url, "GET", path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request over a fresh connection (`headers`: extra lines, each ending in
/// CRLF) and returns the raw response.
fn send(url: &str, method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    // A server refusing the request may answer and close before reading the body.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    resp
}

/// Splits a raw response into (status, head, body).
fn split_response(resp: &[u8]) -> (u16, String, &[u8]) {
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, resp.get(head_end + 4..).unwrap_or_default())
}

/// A bodiless request; returns (status, body).
fn http(url: &str, method: &str, path: &str) -> (u16, String) {
    let resp = send(url, method, path, "Content-Length: 0\r\n", b"");
    let (status, _, body) = split_response(&resp);
    (status, String::from_utf8_lossy(body).into_owned())
}

/// The machine record of `mac` in a `GET /v1/machines` answer.
fn machine_of<'a>(machines: &'a Value, mac: &str) -> Option<&'a Value> {
    machines
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == mac)
}

fn events_of(machines: &Value, mac: &str) -> Vec<Value> {
    machine_of(machines, mac)
        .map(|m| {
            m["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["event"].clone())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn machine_pxe_boots_reports_and_powers_off() {
    if !can_boot("machine_pxe_boots_reports_and_powers_off") {
        return;
    }
    let t = TempDir::new("plinth-boot-pxe");
    let img = t.0.join("img");
    build_ok(&img, &[]);
    let data = t.0.join("data");
    let server = Server::start(&img, &data, &["--poweroff-after-boot"]);
    let uuid = random_uuid();
    let serial = t.0.join("serial.log");
    let start = Instant::now();
    let mut qemu = boot(&img, &server, &uuid, &serial, None);
    // Watch the server for the booted event while the machine runs.
    let mut booted_at = None;
    let status = loop {
        if booted_at.is_none() {
            let (code, body) = server.get("/v1/machines");
            if code == 200
                && events_of(&serde_json::from_str(&body).unwrap(), MAC)
                    .iter()
                    .any(|e| e["type"] == "booted")
            {
                booted_at = Some(start.elapsed());
            }
        }
        if let Some(s) = qemu.try_wait().unwrap() {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(&serial).unwrap_or_default();
    let fail = |msg: &str| -> ! { console_panic(msg, &serial) };
    if !status.success() {
        fail(&format!(
            "the machine did not power off by itself within 180 s ({status})"
        ));
    }
    let (code, body) = server.get("/v1/machines");
    assert_eq!(code, 200);
    let machines: Value = serde_json::from_str(&body).unwrap();
    let events = events_of(&machines, MAC);
    let Some(booted) = events.iter().find(|e| e["type"] == "booted") else {
        fail(&format!("no booted event from {MAC}: {body}"))
    };
    assert_eq!(
        booted["uuid"],
        uuid.to_ascii_lowercase(),
        "booted event carries the guest's SMBIOS UUID"
    );
    assert_eq!(booted["mac"], MAC);
    // iPXE's own view of the machine, sent with the boot-script request, agrees.
    let machine = machine_of(&machines, MAC).unwrap();
    assert_eq!(
        machine["lastPxe"]["uuid"],
        uuid.to_ascii_lowercase(),
        "iPXE's ${{uuid}}: {body}"
    );
    assert!(
        booted["details"]["timings"]["dhcpMs"].as_u64().is_some(),
        "timings reported: {booted}"
    );
    assert_eq!(
        booted["details"]["modulesFailed"],
        serde_json::json!([]),
        "every listed module loaded: {booted}"
    );
    // cgroup2 as systemd mounts it, read back by the guest from its mountinfo.
    let cgroup2 = booted["details"]["cgroup2Options"]
        .as_str()
        .unwrap_or_default();
    assert!(
        cgroup2.split(',').any(|o| o == "nsdelegate")
            && cgroup2.split(',').any(|o| o == "memory_recursiveprot"),
        "cgroup2 super options {cgroup2:?}: {booted}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "shutdown" && e["details"]["reason"] == "poweroff"),
        "shutdown event: {body}"
    );
    if !log.contains("reboot: Power down") {
        fail("the kernel did not report a clean power down");
    }
    println!(
        "qemu start to booted event: {:.1} s; qemu start to power off: {:.1} s",
        booted_at.unwrap_or_default().as_secs_f64(),
        start.elapsed().as_secs_f64()
    );

    // The store survives a restart of the server.
    drop(server);
    let again = Server::start(&img, &data, &[]);
    let (_, body) = again.get(&format!("/v1/machines/{MAC}"));
    let m: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        m["uuid"],
        uuid.to_ascii_lowercase(),
        "store after restart: {body}"
    );
    // An operator's poweroff request is queued for the machine and handed out once.
    assert_eq!(
        http(&again.url, "POST", &format!("/v1/machines/{MAC}/poweroff")).0,
        200
    );
    assert_eq!(
        again.get(&format!("/v1/machines/{MAC}/action")).1.trim(),
        r#"{"action":"poweroff"}"#
    );
    assert_eq!(
        again.get(&format!("/v1/machines/{MAC}/action")).1.trim(),
        "{}"
    );
    assert_eq!(http(&again.url, "GET", "/v1/machines/not-a-mac").0, 400);
    // Range requests on the kernel (iPXE and PXE ROMs may resume).
    let resp = send(&again.url, "GET", "/vmlinuz", "Range: bytes=2-5\r\n", b"");
    let (_, head, body) = split_response(&resp);
    let kernel = std::fs::read(img.join("vmlinuz")).unwrap();
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.contains(&format!("Content-Range: bytes 2-5/{}", kernel.len())),
        "{head}"
    );
    assert_eq!(body, &kernel[2..6]);
}

/// A `plinth-boot run` in progress; on drop (a failed assertion) its qemu, found by the
/// test's unique serial-log path on its command line, is killed with it.
struct Machine {
    child: Child,
    serial: PathBuf,
}

impl std::ops::Deref for Machine {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Machine {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let needle = self.serial.to_string_lossy().into_owned();
        for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains("qemu-system")
                && String::from_utf8_lossy(&cmd).contains(&needle)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots the image as machine MAC/uuid against `server`.
fn boot(img: &Path, server: &Server, uuid: &str, serial: &Path, monitor: Option<&Path>) -> Machine {
    let mut cmd = Command::new(bin("plinth-boot"));
    cmd.args(["run", "--boot-dir"])
        .arg(img)
        .args([
            "--server",
            &server.url,
            "--mac",
            MAC,
            "--uuid",
            uuid,
            "--timeout",
            "180",
            "--serial-log",
        ])
        .arg(serial);
    if let Some(m) = monitor {
        cmd.arg("--monitor").arg(m);
    }
    Machine {
        child: cmd.spawn().unwrap(),
        serial: serial.to_path_buf(),
    }
}

/// Fails the test with `msg` and the machine's serial console.
fn console_panic(msg: &str, serial: &Path) -> ! {
    let log = std::fs::read_to_string(serial).unwrap_or_default();
    panic!("{msg}\n--- serial console ---\n{log}\n--- end ---")
}

/// Waits until the server holds `n` events of `kind` from MAC, or qemu exits, or 180 s.
fn wait_events(server: &Server, qemu: &mut Machine, kind: &str, n: usize, serial: &Path) {
    let start = Instant::now();
    loop {
        let (code, body) = server.get("/v1/machines");
        if code == 200
            && events_of(&serde_json::from_str(&body).unwrap(), MAC)
                .iter()
                .filter(|e| e["type"] == kind)
                .count()
                >= n
        {
            return;
        }
        let exited = qemu.try_wait().unwrap();
        if exited.is_some() || start.elapsed() > Duration::from_secs(180) {
            let _ = qemu.kill();
            console_panic(&format!("no {kind} event #{n} (qemu: {exited:?})"), serial);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_exit(qemu: &mut Machine, within: Duration, serial: &Path) {
    let start = Instant::now();
    while start.elapsed() < within {
        if let Some(s) = qemu.try_wait().unwrap() {
            assert!(s.success(), "plinth-boot run: {s}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = qemu.kill();
    console_panic(
        &format!("the machine did not stop within {within:?}"),
        serial,
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
    let server = Server::start(&img, &t.0.join("data"), &[]);
    let uuid = random_uuid();

    // 1. The operator asks the server; the running node picks it up by polling.
    let serial = t.0.join("serial1.log");
    let mut qemu = boot(&img, &server, &uuid, &serial, None);
    wait_events(&server, &mut qemu, "booted", 1, &serial);
    assert_eq!(
        http(&server.url, "POST", &format!("/v1/machines/{MAC}/poweroff")).0,
        200
    );
    wait_exit(&mut qemu, Duration::from_secs(60), &serial);
    assert!(std::fs::read_to_string(&serial)
        .unwrap()
        .contains("reboot: Power down"));

    // 2. Ctrl-alt-del: the kernel turns it into SIGINT for PID 1, which reboots cleanly
    //    (qemu runs with -no-reboot, so the reboot ends it).
    let serial = t.0.join("serial2.log");
    let monitor = t.0.join("monitor.sock");
    let mut qemu = boot(&img, &server, &uuid, &serial, Some(&monitor));
    wait_events(&server, &mut qemu, "booted", 2, &serial);
    let mut mon = std::os::unix::net::UnixStream::connect(&monitor).unwrap();
    mon.write_all(b"sendkey ctrl-alt-delete\n").unwrap();
    wait_exit(&mut qemu, Duration::from_secs(60), &serial);
    let log = std::fs::read_to_string(&serial).unwrap();
    assert!(log.contains("signal 2"), "PID 1 saw SIGINT:\n{log}");
    assert!(
        log.contains("reboot: Restarting system"),
        "clean reboot:\n{log}"
    );
    let (_, body) = server.get("/v1/machines");
    let reasons: Vec<String> = events_of(&serde_json::from_str(&body).unwrap(), MAC)
        .iter()
        .filter(|e| e["type"] == "shutdown")
        .map(|e| {
            e["details"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(reasons, ["poweroff", "signal: reboot"], "{body}");
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
    let server = Server::start(
        &img,
        &t.0.join("data"),
        &[
            "--tftp",
            "127.0.0.1:0",
            "--advertise",
            "http://10.0.2.2:8080",
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
    // boot.ipxe carries the advertised URL, since TFTP has no Host header.
    let o = fetch("boot.ipxe", "512");
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(
        script.starts_with("#!ipxe\nset plinth-server http://10.0.2.2:8080\n"),
        "{script}"
    );
    // Nothing outside the boot directory, such as the server's log beside it.
    assert!(t.0.join("data.log").is_file());
    let o = fetch("../data.log", "512");
    assert!(
        !o.status.success(),
        "a path outside the boot dir was served"
    );
    let o = fetch("no-such-file", "512");
    assert!(!o.status.success(), "a missing file was served");
}

/// Sends a POST with a JSON body, announced as `declared_len` bytes when given; returns
/// (status, body).
fn post(url: &str, path: &str, body: &[u8], declared_len: Option<usize>) -> (u16, String) {
    let len = declared_len.unwrap_or(body.len());
    let headers = format!("Content-Type: application/json\r\nContent-Length: {len}\r\n");
    let resp = send(url, "POST", path, &headers, body);
    let (status, _, body) = split_response(&resp);
    (status, String::from_utf8_lossy(body).into_owned())
}

#[test]
fn server_validates_events_and_refuses_bad_setup() {
    let Some(k) = kernel("server_validates_events_and_refuses_bad_setup") else {
        return;
    };
    let t = TempDir::new("plinth-boot-api");
    let img = t.0.join("img");
    build_bare(&img, &k);

    // A boot dir without an image is refused up front, naming the missing file.
    let o = Command::new(bin("plinth-server"))
        .args(["--listen", "127.0.0.1:0", "--boot-dir"])
        .arg(t.0.join("nothing-here"))
        .arg("--data")
        .arg(t.0.join("d0"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing-here/boot.ipxe"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let server = Server::start(&img, &t.0.join("data"), &[]);
    let good = serde_json::json!({
        "apiVersion": "plinth/v1", "type": "booted", "mac": "52:54:00:AB:CD:EF",
        "uuid": "6E4A2B1C-0000-4000-8000-000000000001", "bootId": "b", "seq": 1,
        "uptimeMs": 1, "wallTime": 2, "details": {}
    });
    let (code, body) = post(&server.url, "/v1/events", good.to_string().as_bytes(), None);
    assert_eq!(
        (code, body.trim()),
        (200, "{}"),
        "a valid event is accepted, no action pending"
    );
    // Unknown fields, a bad MAC, a wrong version: 400 naming the field.
    for (field, value) in [
        ("colour", "blue"),
        ("mac", "52:54:00"),
        ("apiVersion", "plinth/v9"),
    ] {
        let mut bad = good.clone();
        bad[field] = value.into();
        let (code, body) = post(&server.url, "/v1/events", bad.to_string().as_bytes(), None);
        assert_eq!(code, 400, "{field}: {value}");
        assert!(body.contains(field), "{body}");
    }
    // Oversized bodies are refused before they are read.
    let (code, _) = post(&server.url, "/v1/events", b"", Some(10 << 20));
    assert_eq!(code, 413);
    // The machine list shows the one valid event, MAC and UUID normalised.
    let (_, body) = server.get("/v1/machines");
    let machines: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(machines.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(machines[0]["mac"], "52:54:00:ab:cd:ef");
    assert_eq!(machines[0]["uuid"], "6e4a2b1c-0000-4000-8000-000000000001");
    assert_eq!(events_of(&machines, "52:54:00:ab:cd:ef").len(), 1);
    // The per-machine script points at the image beside it.
    let (code, script) = server.get("/boot.ipxe?mac=52%3A54%3A00%3Aab%3Acd%3Aef");
    assert_eq!(code, 200);
    let addr = server.url.trim_start_matches("http://");
    assert!(
        script.starts_with(&format!("#!ipxe\nset plinth-server http://{addr}\n")),
        "{script}"
    );
    assert!(
        script.contains("kernel vmlinuz ")
            && script.contains("console=ttyS0")
            && script.contains("initrd initrd"),
        "{script}"
    );
    assert_eq!(server.get("/boot.ipxe?mac=zz").0, 400);
}
