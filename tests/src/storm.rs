//! The boot storm (`make bench`): thousands of machines, simulated over the real protocol
//! against real `plinth-server`s: each asks for its iPXE script (and token) over HTTP,
//! enrols with a fresh P-256 key and CSR, fetches its config over mutual TLS, reports a
//! dozen events and streams some log lines, as plinth-init does. Each machine connects
//! from an address of its own in 127.0.0.0/8, so the server's per-address limits stay on,
//! and is declared in a generated `--config-dir`. With several servers (on one etcd) a
//! machine takes its script from one and the rest from the next, and a request that
//! finds its server gone is made again to the next one.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plinth_provisioner::node::client::{Client, Url};
use plinth_provisioner::node::enroll::{self, Identity};
use plinth_provisioner::schema::{Event, EventKind, LogBatch, LogLine, Reply, API_VERSION};
use plinth_provisioner::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::etcd::Etcd;
use crate::server::{placeholder_boot, Server};
use crate::TempDir;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Machines provisioned.
    pub machines: usize,
    /// Machines in flight at once.
    pub in_flight: usize,
    /// Servers; more than one share an etcd.
    pub servers: usize,
    /// Log lines each machine streams (in batches of 20).
    pub log_lines: usize,
    /// SIGKILL the first server once this many machines have completed (the rest of the
    /// storm goes on against the others).
    pub kill_first_after: Option<usize>,
}

/// The request types timed, in protocol order.
pub const STEPS: [&str; 5] = ["boot.ipxe", "enroll", "config", "event", "logs"];

/// The node events each machine reports (a dozen, as a node's first boot makes).
const EVENTS: [EventKind; 12] = [
    EventKind::Booted,
    EventKind::Network,
    EventKind::Enrolled,
    EventKind::Config,
    EventKind::Applied,
    EventKind::Service,
    EventKind::Service,
    EventKind::Service,
    EventKind::Service,
    EventKind::Service,
    EventKind::Service,
    EventKind::Joined,
];

/// What a storm measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Machines that went through every step.
    pub completed: usize,
    /// Wall time from the first request to the last answer.
    pub wall: Duration,
    /// Per request type: every answer's latency, sorted.
    pub latencies: BTreeMap<&'static str, Vec<Duration>>,
    /// Per request type: failures, and the first few messages.
    pub errors: BTreeMap<&'static str, (usize, Vec<String>)>,
    /// Requests made again on another server after theirs went away.
    pub failovers: usize,
    /// Requests made again after their answer was lost (a reset, a 5xx).
    pub retries: usize,
    /// Per machine (by MAC): the writes the servers acknowledged.
    pub acked: BTreeMap<String, Acked>,
    /// How many machines had completed when the first server was killed, if it was.
    pub killed_at: Option<usize>,
    /// Per server: peak RSS (VmHWM, KiB) and CPU seconds (user + system).
    pub servers: Vec<(u64, f64)>,
    /// etcd's peak RSS (KiB) and CPU seconds, when the servers share one.
    pub etcd: Option<(u64, f64)>,
    /// The load generator's own CPU seconds.
    pub generator_cpu: f64,
    /// How long the servers took to start (the config directory's load included).
    pub startup: Duration,
}

impl Report {
    /// Failures of every type.
    pub fn error_count(&self) -> usize {
        self.errors.values().map(|(n, _)| n).sum()
    }

    /// The `q` quantile (0..=1) of one request type's latencies.
    pub fn quantile(&self, step: &str, q: f64) -> Option<Duration> {
        let v = self.latencies.get(step)?;
        if v.is_empty() {
            return None;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        Some(v[i])
    }

    /// The report as people read it.
    pub fn text(&self, o: &Options) -> String {
        let mut s = format!(
            "{} machines, {} in flight, {} server(s){}: {} completed in {:.1} s, {:.1} machines/s, {} errors, {} failovers, {} retries\n",
            o.machines,
            o.in_flight,
            o.servers,
            if o.servers > 1 { " on one etcd" } else { " on the embedded store" },
            self.completed,
            self.wall.as_secs_f64(),
            self.completed as f64 / self.wall.as_secs_f64().max(1e-9),
            self.error_count(),
            self.failovers,
            self.retries,
        );
        s.push_str(&format!(
            "{:<10} {:>8} {:>9} {:>9} {:>9}\n",
            "request", "count", "p50 ms", "p99 ms", "max ms"
        ));
        for step in STEPS {
            let n = self.latencies.get(step).map_or(0, Vec::len);
            let ms = |q| {
                self.quantile(step, q)
                    .map_or(0.0, |d| d.as_secs_f64() * 1e3)
            };
            s.push_str(&format!(
                "{step:<10} {n:>8} {:>9.1} {:>9.1} {:>9.1}\n",
                ms(0.5),
                ms(0.99),
                ms(1.0)
            ));
        }
        for (i, (rss, cpu)) in self.servers.iter().enumerate() {
            s.push_str(&format!(
                "server {i}: peak RSS {:.1} MiB, CPU {cpu:.1} s\n",
                *rss as f64 / 1024.0
            ));
        }
        if let Some((rss, cpu)) = self.etcd {
            s.push_str(&format!(
                "etcd: peak RSS {:.1} MiB, CPU {cpu:.1} s\n",
                rss as f64 / 1024.0
            ));
        }
        s.push_str(&format!(
            "load generator: CPU {:.1} s; servers started (config directory loaded) in {:.1} s\n",
            self.generator_cpu,
            self.startup.as_secs_f64()
        ));
        for (step, (n, msgs)) in &self.errors {
            s.push_str(&format!("errors in {step}: {n}, e.g.\n"));
            for m in msgs {
                s.push_str(&format!("  {m}\n"));
            }
        }
        s
    }
}

/// The writes of one machine a server acknowledged.
#[derive(Debug, Default, Clone)]
pub struct Acked {
    /// The `seq` of each event answered.
    pub events: Vec<u64>,
    /// Log lines answered (the first this many of [`log_line`]).
    pub log_lines: usize,
}

/// Machine `i`'s MAC, UUID and source address.
pub fn machine(i: usize) -> (String, String, Ipv4Addr) {
    let b = (i as u32).to_be_bytes();
    let mac = format!("02:5a:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]);
    let uuid = format!("6e4a2b1c-5707-4000-8000-{i:012x}");
    let src = Ipv4Addr::new(127, 1 + b[1], b[2], b[3]);
    (mac, uuid, src)
}

/// Writes a `--config-dir` declaring machines `0..n` (one file each, a profile for all).
pub fn write_config_dir(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("machines")).unwrap();
    std::fs::create_dir_all(dir.join("profiles")).unwrap();
    std::fs::write(
        dir.join("profiles/worker.yaml"),
        "apiVersion: plinth/v1\nconfig:\n  hostname: \"{{hostname}}\"\n  files:\n    - path: /etc/motd\n      contents: \"storm machine {{hostname}}\\n\"\n",
    )
    .unwrap();
    for i in 0..n {
        let (mac, _, _) = machine(i);
        std::fs::write(
            dir.join(format!("machines/m{i:06}.yaml")),
            format!(
                "apiVersion: plinth/v1\nselector:\n  mac: \"{mac}\"\nprofiles: [worker]\nparams:\n  hostname: m{i:06}\n"
            ),
        )
        .unwrap();
    }
}

/// The servers of a storm, and what they stand on.
pub struct Fleet {
    /// The servers, in the order machines use them.
    pub servers: Vec<Server>,
    etcd: Option<Etcd>,
    _dir: TempDir,
}

impl Fleet {
    /// Starts `o.servers` servers over a generated config directory: one on the
    /// embedded store, or several on one etcd sharing a CA. None when etcd is needed
    /// and missing (said as a skip of `what`).
    pub fn start(o: &Options, what: &str) -> Option<(Fleet, Duration)> {
        let dir = TempDir::new("plinth-storm");
        let config = dir.0.join("config");
        write_config_dir(&config, o.machines);
        let etcd = if o.servers > 1 {
            Some(Etcd::start(what)?)
        } else {
            None
        };
        let t = Instant::now();
        let servers = (0..o.servers)
            .map(|_| {
                let sdir = TempDir::new("plinth-storm-server");
                let boot = placeholder_boot(&sdir.0);
                let mut args = vec![
                    "--config-dir".to_string(),
                    config.display().to_string(),
                    "--max-discovered".into(),
                    "0".into(),
                ];
                if let Some(e) = &etcd {
                    args.extend([
                        "--store".into(),
                        e.url(),
                        "--ca-dir".into(),
                        dir.0.join("ca").display().to_string(),
                    ]);
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut s = Server::start_in(sdir, &boot, &args);
                if etcd.is_some() {
                    // The operators' tokens are the fleet's, beside its CA.
                    s.operator = std::fs::read_to_string(dir.0.join("ca/operator-token"))
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                }
                s
            })
            .collect();
        let startup = t.elapsed();
        Some((
            Fleet {
                servers,
                etcd,
                _dir: dir,
            },
            startup,
        ))
    }
}

/// The URLs and pin machines are given: per server, (boot chain, HTTPS).
#[derive(Clone)]
struct Target {
    http: Vec<String>,
    https: Vec<Url>,
    pin: String,
}

#[derive(Default)]
struct Tally {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    errors: BTreeMap<&'static str, (usize, Vec<String>)>,
    completed: usize,
    failovers: usize,
    retries: usize,
    acked: BTreeMap<String, Acked>,
    killed_at: Option<usize>,
}

impl Tally {
    fn took(&mut self, step: &'static str, d: Duration) {
        self.latencies.entry(step).or_default().push(d);
    }

    fn failed(&mut self, step: &'static str, msg: String) {
        let e = self.errors.entry(step).or_default();
        e.0 += 1;
        if e.1.len() < 5 {
            e.1.push(msg);
        }
    }
}

/// Runs the storm against a started fleet.
pub fn run(o: &Options, fleet: &Fleet) -> Report {
    let target = Target {
        http: fleet.servers.iter().map(|s| s.http.clone()).collect(),
        https: fleet
            .servers
            .iter()
            .map(|s| Url::parse(&s.https).unwrap())
            .collect(),
        pin: fleet.servers[0].pin.clone(),
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (kill_after, first_pid) = (o.kill_first_after, fleet.servers[0].pid());
    let cpu0 = own_cpu();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let gate = Arc::new(tokio::sync::Semaphore::new(o.in_flight));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..o.machines {
            let permit = gate.clone().acquire_owned().await.unwrap();
            let (target, tally, lines) = (target.clone(), tally.clone(), o.log_lines);
            tasks.spawn(async move {
                let done = one_machine(i, &target, &tally, lines).await;
                if done {
                    let mut t = tally.lock().unwrap();
                    t.completed += 1;
                    if Some(t.completed) == kill_after {
                        // In the middle of everything: other machines' requests are in
                        // flight on it, some of them committed and not yet answered.
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(first_pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        t.killed_at = Some(t.completed);
                    }
                }
                drop(permit);
            });
            // Reap as we go, so 10,000 finished tasks are not kept.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    });
    let wall = started.elapsed();
    let mut t = std::mem::take(&mut *tally.lock().unwrap());
    for v in t.latencies.values_mut() {
        v.sort_unstable();
    }
    Report {
        completed: t.completed,
        wall,
        latencies: t.latencies,
        errors: t.errors,
        failovers: t.failovers,
        retries: t.retries,
        acked: t.acked,
        killed_at: t.killed_at,
        servers: fleet.servers.iter().map(|s| usage(s.pid())).collect(),
        etcd: fleet.etcd.as_ref().map(|e| usage(e.pid())),
        generator_cpu: own_cpu() - cpu0,
        startup: Duration::ZERO,
    }
}

/// How many times a machine makes a request whose answer never came (a reset, a server
/// killed, a 5xx), a pause apart; a 4xx is final. The node's client goes on to the next
/// server when its own cannot be connected to.
const ATTEMPTS: usize = 10;
const PAUSE: Duration = Duration::from_millis(500);

/// One machine's boot, start to end; false when a step failed (counted in the tally).
async fn one_machine(i: usize, t: &Target, tally: &Mutex<Tally>, log_lines: usize) -> bool {
    let (mac, uuid, src) = machine(i);
    let n = t.http.len();
    let first = i % n;
    // The script from one server, everything after it from the next (with one server,
    // the same): what several servers behind one address do to a machine. A script
    // whose answer is lost is asked of the next server, as firmware retrying its boot
    // would reach whichever server answers.
    let path = format!("/boot.ipxe?mac={mac}&uuid={uuid}");
    let mut at = first;
    let Some(script) = timed(tally, "boot.ipxe", &mac, || {
        let base = t.http[at % n].clone();
        at += 1;
        let path = path.clone();
        async move { http_get(&base, &path, src).await }
    })
    .await
    else {
        return false;
    };
    let Some(token) = script
        .lines()
        .find_map(|l| l.strip_prefix("set plinth-token "))
        .map(str::to_string)
    else {
        tally
            .lock()
            .unwrap()
            .failed("boot.ipxe", format!("{mac}: no token in the script"));
        return false;
    };
    let boot_id = format!(
        "5707{:04x}-0000-4000-8000-{i:012x}",
        std::process::id() & 0xffff
    );
    let id = Identity {
        mac: mac.clone(),
        uuid,
        serial: None,
        boot_id: boot_id.clone(),
    };
    // Every HTTPS request goes through the node's own client, given the whole fleet and
    // starting at the next server: it fails over as a node does.
    let anon = Client::fleet(t.https.clone(), &t.pin)
        .unwrap()
        .from_address(IpAddr::V4(src))
        .starting_at(first + 1);
    let fresh = match enroll::fresh_key(&mac) {
        Ok(f) => f,
        Err(e) => {
            tally
                .lock()
                .unwrap()
                .failed("enroll", format!("{mac}: {e}"));
            return false;
        }
    };
    // One key for every attempt, as the node keeps: a lost answer is answered again
    // only for the key that spent the token.
    let Some(issued) = timed(tally, "enroll", &mac, || {
        enroll::enroll(&anon, &id, &token, &fresh)
    })
    .await
    else {
        return false;
    };
    let c = anon
        .with_identity(&t.pin, &issued.certificate, fresh.key_der.clone())
        .unwrap();
    let done = provisioned(i, &c, &id, tally, log_lines).await;
    tally.lock().unwrap().failovers += (anon.failovers() + c.failovers()) as usize;
    done
}

/// A machine's steps over its session: config, events, logs.
async fn provisioned(
    i: usize,
    c: &Client,
    id: &Identity,
    tally: &Mutex<Tally>,
    log_lines: usize,
) -> bool {
    let (mac, boot_id) = (&id.mac, &id.boot_id);
    let long = Duration::from_secs(60);
    if timed(tally, "config", mac, || {
        c.call::<serde_json::Value>("GET", "/v1/config", None::<&()>, long)
    })
    .await
    .is_none()
    {
        return false;
    }
    let start = Instant::now();
    for (seq, kind) in EVENTS.iter().enumerate() {
        let ev = Event {
            api_version: API_VERSION.into(),
            kind: *kind,
            mac: mac.clone(),
            uuid: id.uuid.clone(),
            boot_id: boot_id.clone(),
            seq: seq as u64 + 1,
            uptime_ms: start.elapsed().as_millis() as u64 + 1000,
            wall_time: plinth_provisioner::schema::unix_time(),
            details: serde_json::Map::new(),
        };
        if timed(tally, "event", mac, || {
            c.call::<Reply>("POST", "/v1/events", Some(&ev), long)
        })
        .await
        .is_none()
        {
            return false;
        }
        acked(tally, mac, |a| a.events.push(ev.seq));
    }
    let lines: Vec<LogLine> = (0..log_lines)
        .map(|k| LogLine {
            source: "console".into(),
            text: log_line(i, k),
        })
        .collect();
    for chunk in lines.chunks(LOG_BATCH) {
        let batch = LogBatch {
            boot_id: boot_id.clone(),
            lines: chunk.to_vec(),
        };
        if timed(tally, "logs", mac, || {
            c.call::<serde_json::Value>("POST", "/v1/logs", Some(&batch), long)
        })
        .await
        .is_none()
        {
            return false;
        }
        acked(tally, mac, |a| a.log_lines += chunk.len());
    }
    true
}

/// Notes a write of `mac`'s that a server acknowledged.
fn acked(tally: &Mutex<Tally>, mac: &str, f: impl FnOnce(&mut Acked)) {
    f(tally
        .lock()
        .unwrap()
        .acked
        .entry(mac.to_string())
        .or_default());
}

/// Log lines per request.
const LOG_BATCH: usize = 20;

/// Machine `i`'s `k`th log line.
pub fn log_line(i: usize, k: usize) -> String {
    format!("storm machine {i}: line {k} of the boot log")
}

/// One request, made again while its answer is lost (up to [`ATTEMPTS`]); each answer's
/// latency, each lost answer and the final failure tallied.
async fn timed<T, E, F, Fut>(
    tally: &Mutex<Tally>,
    step: &'static str,
    mac: &str,
    mut request: F,
) -> Option<T>
where
    E: std::fmt::Display + Final,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    for attempt in 1..=ATTEMPTS {
        let t0 = Instant::now();
        match request().await {
            Ok(v) => {
                tally.lock().unwrap().took(step, t0.elapsed());
                return Some(v);
            }
            Err(e) if attempt < ATTEMPTS && !e.is_final() => {
                tally.lock().unwrap().retries += 1;
                tokio::time::sleep(PAUSE).await;
            }
            Err(e) => {
                tally.lock().unwrap().failed(step, format!("{mac}: {e}"));
                return None;
            }
        }
    }
    None
}

/// Whether a failed request is not worth making again: the server answered no.
trait Final {
    fn is_final(&self) -> bool;
}

impl Final for Error {
    fn is_final(&self) -> bool {
        matches!(self, Error::Status { status, .. } if (400..500).contains(status))
    }
}

impl Final for String {
    fn is_final(&self) -> bool {
        self.starts_with("answer HTTP/1.1 4")
    }
}

/// A plain HTTP GET from `src` (the boot chain, as iPXE asks for it); the body of a 200.
async fn http_get(base: &str, path: &str, src: Ipv4Addr) -> Result<String, String> {
    let hostport = base.trim_start_matches("http://");
    let to: std::net::SocketAddr = hostport.parse().map_err(|e| format!("{base}: {e}"))?;
    let sock = tokio::net::TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    sock.bind((IpAddr::V4(src), 0).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    let mut s = tokio::time::timeout(Duration::from_secs(60), sock.connect(to))
        .await
        .map_err(|_| format!("connect {to}: timed out"))?
        .map_err(|e| format!("connect {to}: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer within 60 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "answer {}",
            head.lines().next().unwrap_or("(nothing)")
        ));
    }
    Ok(body.to_string())
}

/// A process's peak RSS (KiB) and CPU seconds so far.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0);
    (hwm, cpu_of(&format!("/proc/{pid}/stat")))
}

fn own_cpu() -> f64 {
    cpu_of("/proc/self/stat")
}

/// utime + stime of a /proc/PID/stat, in seconds (the fields after the command's ')').
fn cpu_of(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64;
    let ticks = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After ')': state is field 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / hz
}

/// The operators' fleet page of `server` after a storm, as a browser gets it once logged
/// in (curl with a cookie jar): the best of three loads, and the page's size in bytes.
pub fn fleet_page(server: &Server) -> Result<(Duration, usize), String> {
    let dir = TempDir::new("plinth-storm-page");
    let jar = dir.0.join("jar");
    let curl = |args: &[&str]| -> Result<(String, f64), String> {
        let o = server
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "300",
                "-w",
                "\n%{http_code} %{time_total}",
            ])
            .arg("--cacert")
            .arg(&server.ca_cert)
            .arg("-b")
            .arg(&jar)
            .arg("-c")
            .arg(&jar)
            .args(args)
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
        let mut t = tail.split_whitespace();
        let code = t.next().unwrap_or("0");
        let secs: f64 = t.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
        if !matches!(code, "200" | "303") {
            return Err(format!("{args:?}: HTTP {code}: {body}"));
        }
        Ok((body.to_string(), secs))
    };
    let (form, _) = curl(&[&format!("{}/login", server.https)])?;
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or("no csrf field in the login form")?;
    curl(&[
        "--data",
        &format!("csrf={csrf}&token={}", server.operator),
        &format!("{}/login", server.https),
    ])?;
    let mut best = f64::MAX;
    let mut size = 0;
    for _ in 0..3 {
        let (page, secs) = curl(&[&format!("{}/", server.https)])?;
        if !page.contains("id=\"fleet\"") {
            return Err(format!(
                "not the fleet page: {}",
                page.chars().take(200).collect::<String>()
            ));
        }
        best = best.min(secs);
        size = page.len();
    }
    Ok((Duration::from_secs_f64(best), size))
}
