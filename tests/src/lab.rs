//! The lab for boot tests ("The lab" in `../shared/DESIGN.md`): a site network in network
//! namespaces of its own, built and held by `tests/scripts/lab.sh` (the site: a bridge,
//! Debian's dnsmasq as the site's DHCP server with no PXE option, the machines' taps; the
//! provisioning host: plinth-server, which answers proxyDHCP, TFTP, HTTP and HTTPS), and
//! qemu machines powered on there with `plinth-boot run --tap`.
//!
//! The lab outlives nothing that made it: `lab.sh` holds it while its standard input is
//! open, and only this process holds the other end. Dropping the [`Lab`] closes it; so
//! does this process ending any other way (a failed assertion, SIGKILL). `lab.sh` then
//! stops every process in the lab's namespaces, unmounts them and removes the directory.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::server::Server;
use crate::{unique, workspace, TempDir};

/// The site's subnet: dnsmasq at .1 hands out .100-.199; the provisioning host is .2.
pub const SERVER_IP: &str = "10.33.0.2";
/// The name server and domain the site's DHCP server gives (lab.sh; nothing answers
/// names there: a node only has to write them down).
pub const SITE_DNS: &str = "10.33.0.1";
pub const SITE_DOMAIN: &str = "lab.example";
/// Where labs live (tmpfs: the namespace files are mount points).
pub const ROOT: &str = "/run/plinth-lab";

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A running lab.
pub struct Lab {
    keeper: Child,
    hold: Option<ChildStdin>,
    /// The lab's directory: the namespace files, dnsmasq's log and leases, scratch.
    pub dir: PathBuf,
    taps: AtomicU32,
}

impl Lab {
    /// Builds a lab (lab.sh up) and waits until dnsmasq serves.
    pub fn up(name: &str) -> Lab {
        let dir = Path::new(ROOT).join(unique(name));
        let mut keeper = Command::new(workspace().join("tests/scripts/lab.sh"))
            .arg("up")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let hold = keeper.stdin.take();
        let mut out = BufReader::new(keeper.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("lab ready"),
            "lab.sh up {} failed: {line:?} ({:?})",
            dir.display(),
            keeper.try_wait()
        );
        Lab {
            keeper,
            hold,
            dir,
            taps: AtomicU32::new(0),
        }
    }

    /// The site's namespace file (bridge, dnsmasq, taps, qemu).
    pub fn site(&self) -> PathBuf {
        self.dir.join("site.net")
    }

    /// The provisioning host's namespace file (plinth-server).
    pub fn server_host(&self) -> PathBuf {
        self.dir.join("server.net")
    }

    /// `program` in the site's namespace.
    pub fn in_site(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        crate::in_netns(Some(&self.site()), program)
    }

    /// `ip ARGS` in the site's namespace, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let o = self.in_site("ip").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// A new tap device on the site's bridge, for one machine.
    pub fn tap(&self) -> String {
        let name = format!("tap{}", self.taps.fetch_add(1, Ordering::SeqCst));
        self.ip(&["tuntap", "add", &name, "mode", "tap"]);
        self.ip(&["link", "set", &name, "master", "br0", "up"]);
        name
    }

    /// plinth-server on the provisioning host, answering proxyDHCP and TFTP on the site's
    /// network, over the image in `boot`; its data and log in `dir`.
    pub fn server(&self, dir: TempDir, boot: &Path, extra: &[&str]) -> Server {
        let mut args = vec![
            "--listen",
            "10.33.0.2:8080",
            "--listen-tls",
            "10.33.0.2:8443",
            "--listen-sntp",
            "10.33.0.2:123",
            "--proxy-dhcp",
            SERVER_IP,
        ];
        args.extend_from_slice(extra);
        Server::launch(dir, boot, &args, Some(&self.server_host()))
    }

    /// Powers a machine on: `plinth-boot run` on a new tap, in the site's namespace.
    pub fn power_on(&self, m: &Spec) -> Machine {
        let tap = self.tap();
        let bin = workspace().join("target/release/plinth-boot");
        let mut cmd = self.in_site(&bin);
        cmd.args(["run", "--tap", &tap, "--firmware", m.firmware])
            .args(["--mac", &m.mac, "--uuid", &m.uuid])
            .args(["--timeout", &m.timeout.as_secs().to_string()])
            .arg("--serial-log")
            .arg(&m.console)
            .args(&m.extra);
        if let Some(mon) = &m.monitor {
            cmd.arg("--monitor").arg(mon);
        }
        let powered_on_ms = now_ms();
        let started = Instant::now();
        Machine {
            child: cmd.spawn().unwrap(),
            mac: m.mac.clone(),
            console: m.console.clone(),
            powered_on_ms,
            started,
            tap,
        }
    }

    /// dnsmasq's log: the site's DHCP server's view.
    pub fn dnsmasq_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    /// Tears the lab down and waits until it is gone.
    pub fn down(mut self) {
        self.close();
    }

    fn close(&mut self) {
        drop(self.hold.take());
        let _ = self.keeper.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.close();
    }
}

/// A machine to power on.
#[derive(Debug, Clone)]
pub struct Spec {
    /// `bios` or `uefi`.
    pub firmware: &'static str,
    pub mac: String,
    pub uuid: String,
    /// The serial console's file.
    pub console: PathBuf,
    pub monitor: Option<PathBuf>,
    /// qemu is killed after this.
    pub timeout: Duration,
    /// More arguments for `plinth-boot run`.
    pub extra: Vec<String>,
}

impl Spec {
    /// A machine with `firmware`, `mac` and `uuid`, its console in `dir`.
    pub fn new(firmware: &'static str, mac: &str, uuid: &str, dir: &Path) -> Spec {
        Spec {
            firmware,
            mac: mac.into(),
            uuid: uuid.into(),
            console: dir.join(format!("console-{}.log", mac.replace(':', ""))),
            monitor: None,
            timeout: Duration::from_secs(300),
            extra: Vec::new(),
        }
    }
}

/// A powered-on machine (`plinth-boot run` in the site's namespace); on drop it is
/// stopped (SIGTERM to plinth-boot, which stops its qemu).
pub struct Machine {
    pub child: Child,
    pub mac: String,
    pub console: PathBuf,
    /// Wall time of power-on, ms since the epoch.
    pub powered_on_ms: u64,
    pub started: Instant,
    pub tap: String,
}

impl Machine {
    /// The serial console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Stops it as a person would (SIGTERM) and waits.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One step of a machine's timeline, ms after its power-on.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub at_ms: i64,
    /// `dhcp`, `file`, `booted`, ... as the server recorded it.
    pub kind: String,
    /// `server` or `node`.
    pub source: String,
    /// What it was: the firmware stage and offer, the file, or the node's step.
    pub what: String,
    pub event: Value,
}

/// A machine's events (every boot, oldest first), as the operator API shows them.
pub fn events(server: &Server, mac: &str) -> Vec<Value> {
    let (code, m) = server.op("GET", &format!("/v1/machines/{mac}"), None);
    if code != 200 {
        return Vec::new();
    }
    let mut all: Vec<Value> = m["boots"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .flat_map(|b| {
            b["events"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |mut e| {
                    e["bootId"] = b["bootId"].clone();
                    e
                })
        })
        .collect();
    all.sort_by_key(event_ms);
    all
}

/// When the server saw an event, ms since the epoch: the traffic's own time, else receipt.
pub fn event_ms(e: &Value) -> u64 {
    e["details"]["atMs"]
        .as_u64()
        .or_else(|| e["receivedAtMs"].as_u64())
        .unwrap_or_else(|| e["receivedAt"].as_u64().unwrap_or(0) * 1000)
}

/// The machine's timeline from its power-on.
pub fn timeline(server: &Server, m: &Machine) -> Vec<Step> {
    events(server, &m.mac)
        .into_iter()
        .map(|e| {
            let kind = e["type"].as_str().unwrap_or("").to_string();
            let d = &e["details"];
            let what = match kind.as_str() {
                "dhcp" => format!(
                    "{} asked, offered {}",
                    d["firmware"].as_str().unwrap_or("?"),
                    d["offered"].as_str().unwrap_or("?")
                ),
                "file" => format!(
                    "{} {} ({} bytes)",
                    d["protocol"].as_str().unwrap_or("?"),
                    d["file"].as_str().unwrap_or("?"),
                    d["bytes"]
                ),
                "error" | "security" => d["error"]
                    .as_str()
                    .or(d["reason"].as_str())
                    .unwrap_or("")
                    .to_string(),
                "service" | "image" => {
                    let mut w = format!(
                        "{} {}",
                        d["container"]
                            .as_str()
                            .or(d["service"].as_str())
                            .unwrap_or("?"),
                        d["state"].as_str().unwrap_or("?")
                    );
                    if let Some(c) = d["exitCode"].as_i64() {
                        w.push_str(&format!(" (exit {c})"));
                    }
                    if let Some(r) = d["reason"].as_str().or(d["error"].as_str()) {
                        w.push_str(&format!(": {}", r.chars().take(80).collect::<String>()));
                    }
                    w
                }
                "extension" => format!(
                    "{} ({} bytes, {} ms fetched, {} ms unpacked)",
                    d["name"].as_str().unwrap_or("?"),
                    d["bytes"],
                    d["fetchMs"],
                    d["unpackMs"]
                ),
                "kubernetes" => match d["step"].as_str().unwrap_or("") {
                    "token" => format!("bootstrap token {}", d["token"].as_str().unwrap_or("?")),
                    "config" => format!(
                        "the config's bootstrap token {}",
                        d["token"].as_str().unwrap_or("?")
                    ),
                    step => format!(
                        "{step} {} certificate {}",
                        d["certificate"].as_str().unwrap_or(""),
                        d["reason"].as_str().unwrap_or("")
                    )
                    .trim_end()
                    .to_string(),
                },
                "joined" => format!("node {} Ready", d["node"].as_str().unwrap_or("?")),
                _ => String::new(),
            };
            Step {
                at_ms: event_ms(&e) as i64 - m.powered_on_ms as i64,
                kind,
                source: e["source"].as_str().unwrap_or("").to_string(),
                what,
                event: e,
            }
        })
        .collect()
}

/// The timeline as a table: time since power-on, step, source, what.
pub fn render(title: &str, steps: &[Step]) -> String {
    let mut out = format!(
        "{title}\n  {:>8}  {:<9} {:<7} what\n",
        "t (s)", "step", "source"
    );
    out.push_str(&format!(
        "  {:>8}  {:<9} {:<7} qemu started\n",
        "0.0", "power-on", "lab"
    ));
    for s in steps {
        out.push_str(&format!(
            "  {:>8.1}  {:<9} {:<7} {}\n",
            s.at_ms as f64 / 1000.0,
            s.kind,
            s.source,
            s.what
        ));
    }
    out
}

/// Waits until `done` holds of the machine's timeline; fails with the console and the
/// timeline when the machine stops first or `within` passes.
pub fn wait_for(
    server: &Server,
    m: &mut Machine,
    what: &str,
    within: Duration,
    done: impl Fn(&[Step]) -> bool,
) -> Vec<Step> {
    let start = Instant::now();
    loop {
        let steps = timeline(server, m);
        if done(&steps) {
            return steps;
        }
        let exited = m.child.try_wait().unwrap();
        if exited.is_some() || start.elapsed() > within {
            panic!(
                "{}: no {what} (plinth-boot: {exited:?}, after {:?})\n{}\n--- console ---\n{}\n--- end ---",
                m.mac,
                start.elapsed(),
                render("timeline", &steps),
                m.console()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Whether the timeline holds a `kind` event from the node.
pub fn has(steps: &[Step], kind: &str) -> bool {
    steps.iter().any(|s| s.kind == kind && s.source == "node")
}

/// PIDs of the processes in the network namespace whose inode is `ino`.
pub fn pids_in_netns(ino: u64) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let md = std::fs::metadata(e.path().join("ns/net")).ok()?;
            (md.ino() == ino).then_some(pid)
        })
        .collect()
}

/// The inode of the network namespace mounted at `file`.
pub fn netns_inode(file: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(file).unwrap().ino()
}

/// Mount points under `dir`, from this process's mount table.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// The network interfaces of this (the host's) namespace.
pub fn host_interfaces() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
