//! plinth-init, PID 1 of the node image: early mounts, kernel modules, DHCP, machine
//! identity, a `booted` event to the server, then supervision until a stop is asked for.
//!
//! It must never panic (a panic in PID 1 is a kernel panic): errors are logged to the
//! console and retried with backoff, and a panic hook that reboots after a pause is the
//! last resort for bugs.

pub mod console;
pub mod kmod;
pub mod mounts;
pub mod pid1;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::cmdline;
use crate::dhcp;
use crate::error::{Error, Result};
use crate::http::{self, Url};
use crate::netif;
use crate::schema::{unix_time, Action, Event, EventKind, Reply, API_VERSION};
use console::log;
use pid1::{Signals, Stop};

/// Where plinth-boot writes the module load list in the image.
pub const MODULES_LIST: &str = "/etc/plinth/modules";

/// Milliseconds since the kernel started (CLOCK_BOOTTIME), 0 if the clock is unreadable.
pub fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// The machine as the server knows it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The boot NIC's MAC.
    pub mac: String,
    /// SMBIOS UUID (lower case).
    pub uuid: String,
    /// The kernel's boot id.
    pub boot_id: String,
}

/// Reads the SMBIOS UUID; all zeros (qemu's default) or unreadable gives the nil UUID,
/// which the server still accepts but which identifies nothing.
pub fn smbios_uuid(sys: &Path) -> String {
    let p = sys.join("class/dmi/id/product_uuid");
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|s| crate::schema::valid_uuid(s))
        .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into())
}

/// The state of this boot's agent.
struct Agent {
    signals: Option<Signals>,
    seq: u64,
    /// Where to report, once network and identity are known.
    reporter: Option<(Url, Identity)>,
}

impl Agent {
    /// Sleeps `d` while handling signals; a requested stop ends the machine here.
    fn pause(&mut self, d: Duration) {
        let stop = match &mut self.signals {
            Some(s) => s.wait(d),
            None => {
                std::thread::sleep(d);
                pid1::reap();
                None
            }
        };
        if let Some(stop) = stop {
            if let Some((server, id)) = self.reporter.clone() {
                let why = match stop {
                    Stop::Poweroff => "signal: poweroff",
                    Stop::Reboot => "signal: reboot",
                };
                report_shutdown(self, &server, &id, why);
            }
            pid1::shutdown(stop);
        }
    }

    /// Runs `f` until it succeeds, with exponential backoff (1 s .. 30 s) between tries.
    fn retry<T>(&mut self, what: &str, mut f: impl FnMut(&mut Agent) -> Result<T>) -> T {
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            match f(self) {
                Ok(v) => return v,
                Err(e) => log(&format!(
                    "{what} failed (attempt {attempt}): {e}; retrying in {}s",
                    delay.as_secs()
                )),
            }
            self.pause(delay);
            delay = (delay * 2).min(Duration::from_secs(30));
            attempt += 1;
        }
    }

    fn event(&mut self, id: &Identity, kind: EventKind, details: Map<String, Value>) -> Event {
        self.seq += 1;
        Event {
            api_version: API_VERSION.into(),
            kind,
            mac: id.mac.clone(),
            uuid: id.uuid.clone(),
            boot_id: id.boot_id.clone(),
            seq: self.seq,
            uptime_ms: uptime_ms(),
            wall_time: unix_time(),
            details,
        }
    }
}

fn post_event(server: &Url, ev: &Event) -> Result<Reply> {
    let body = serde_json::to_vec(ev).map_err(|e| Error::Json {
        what: "encoding event".into(),
        source: e,
    })?;
    let resp = http::call(
        "POST",
        server,
        &format!("{}v1/events", base_path(server)),
        Some(&body),
        Duration::from_secs(10),
    )?;
    parse_reply(resp, "POST /v1/events")
}

fn base_path(server: &Url) -> String {
    let p = server.path.trim_end_matches('/');
    format!("{p}/")
}

fn parse_reply(resp: http::Response, what: &str) -> Result<Reply> {
    if resp.status != 200 {
        return Err(Error::Protocol {
            what: what.into(),
            reason: format!(
                "status {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body).trim()
            ),
        });
    }
    if resp.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Reply::default());
    }
    serde_json::from_slice(&resp.body).map_err(|e| Error::Json {
        what: format!("{what} reply"),
        source: e,
    })
}

fn bring_up_network(timings: &mut Map<String, Value>) -> Result<(String, [u8; 6], dhcp::Lease)> {
    let sys_net = Path::new("/sys/class/net");
    // The NIC appears when its driver binds, which may lag the module load a little.
    let mut nic = None;
    for _ in 0..100 {
        nic = netif::first_ethernet(sys_net)?;
        if nic.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (name, mac) = nic.ok_or_else(|| Error::Config {
        what: "network".into(),
        reason: "no Ethernet interface in /sys/class/net".into(),
    })?;
    if let Err(e) = netif::link_up("lo") {
        log(&format!("loopback: {e}"));
    }
    netif::link_up(&name)?;
    timings.insert("linkUpMs".into(), json!(uptime_ms()));
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ (uptime_ms() as u32);
    let lease = dhcp::acquire(&name, mac, xid, Duration::from_secs(6))?;
    netif::set_address(&name, lease.address, lease.netmask)?;
    if let Some(gw) = lease.router.filter(|g| *g != Ipv4Addr::UNSPECIFIED) {
        netif::add_default_route(&name, gw)?;
    }
    timings.insert("dhcpMs".into(), json!(uptime_ms()));
    log(&format!(
        "{name} ({}) has {}/{} via {:?}, lease {:?}s",
        netif::format_mac(&mac),
        lease.address,
        lease.netmask,
        lease.router,
        lease.lease_secs
    ));
    Ok((name, mac, lease))
}

/// PID 1's main. Never returns.
pub fn run() -> ! {
    std::panic::set_hook(Box::new(|info| {
        // Last resort: a bug must not become a kernel panic with no word on the console.
        log(&format!("BUG: {info}; rebooting in 10s"));
        std::thread::sleep(Duration::from_secs(10));
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }));
    let mut timings = Map::new();
    timings.insert("initMs".into(), json!(uptime_ms()));
    log("starting");
    match mounts::mount_all(Path::new("/")) {
        Ok(busy) if !busy.is_empty() => log(&format!("already mounted: {}", busy.join(" "))),
        Ok(_) => {}
        Err(e) => log(&format!("mounts: {e}")),
    }
    timings.insert("mountedMs".into(), json!(uptime_ms()));
    let signals = match Signals::install() {
        Ok(s) => Some(s),
        Err(e) => {
            log(&format!("signals: {e}; shutdown requests will not be seen"));
            None
        }
    };
    let mut agent = Agent {
        signals,
        seq: 0,
        reporter: None,
    };
    let mut details = Map::new();
    match kmod::load_listed(Path::new(MODULES_LIST)) {
        Ok((loaded, present, failed)) => {
            log(&format!(
                "modules: {loaded} loaded, {present} already present, {} failed",
                failed.len()
            ));
            for f in &failed {
                log(f);
            }
            details.insert("modulesLoaded".into(), json!(loaded));
            details.insert("modulesFailed".into(), json!(failed));
        }
        Err(e) => log(&format!("modules: {e}")),
    }
    timings.insert("modulesMs".into(), json!(uptime_ms()));

    let params = cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    let server = loop {
        match params.server.as_deref().map(Url::parse) {
            Some(Ok(u)) => break u,
            Some(Err(e)) => log(&format!("plinth.server= on the kernel command line: {e}")),
            None => log("no plinth.server= on the kernel command line: nothing to report to"),
        }
        // Nothing can change the command line; keep handling signals so the machine can be stopped.
        agent.pause(Duration::from_secs(60));
    };

    let (ifname, mac, lease) = agent.retry("network", |_| bring_up_network(&mut timings));
    let id = Identity {
        mac: netif::format_mac(&mac),
        uuid: smbios_uuid(Path::new("/sys")),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    };
    log(&format!("machine {} uuid {}", id.mac, id.uuid));
    details.insert("interface".into(), json!(ifname));
    details.insert("address".into(), json!(lease.address.to_string()));
    // The kernel's own word on how the cgroup hierarchy came up, for the operator.
    if let Some(opts) = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| mounts::super_options(&m, "/sys/fs/cgroup"))
    {
        details.insert("cgroup2Options".into(), json!(opts));
    }
    details.insert(
        "kernel".into(),
        json!(std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()),
    );

    let reply = agent.retry("reporting booted", |a| {
        let mut d = details.clone();
        let mut t = timings.clone();
        t.insert("eventMs".into(), json!(uptime_ms()));
        d.insert("timings".into(), Value::Object(t));
        let ev = a.event(&id, EventKind::Booted, d);
        post_event(&server, &ev)
    });
    log(&format!("reported booted to {}", server.authority));
    agent.reporter = Some((server.clone(), id.clone()));
    // Failures so far (modules that did not load) also go to the server as an `error`
    // event: the server is where an operator looks, not the console.
    if let Some(Value::Array(failed)) = details.get("modulesFailed") {
        if !failed.is_empty() {
            let mut d = Map::new();
            d.insert("step".into(), json!("modules"));
            d.insert("errors".into(), Value::Array(failed.clone()));
            let ev = agent.event(&id, EventKind::Error, d);
            if let Err(e) = post_event(&server, &ev) {
                log(&format!("reporting module errors: {e}"));
            }
        }
    }
    let mut action = reply.action;
    let action_path = format!("{}v1/machines/{}/action", base_path(&server), id.mac);
    loop {
        if let Some(action) = action {
            let (stop, verb, reason) = match action {
                Action::Poweroff => (Stop::Poweroff, "power off", "poweroff"),
                Action::Reboot => (Stop::Reboot, "reboot", "reboot"),
            };
            log(&format!("server asked to {verb}"));
            report_shutdown(&mut agent, &server, &id, reason);
            pid1::shutdown(stop);
        }
        agent.pause(Duration::from_secs(5));
        // Poll for an operator's request (e.g. POST /v1/machines/<mac>/poweroff).
        action = match http::call("GET", &server, &action_path, None, Duration::from_secs(5))
            .and_then(|r| parse_reply(r, "GET action"))
        {
            Ok(r) => r.action,
            Err(e) => {
                log(&format!("polling for actions: {e}"));
                None
            }
        };
    }
}

fn report_shutdown(agent: &mut Agent, server: &Url, id: &Identity, why: &str) {
    let mut d = Map::new();
    d.insert("reason".into(), json!(why));
    let ev = agent.event(id, EventKind::Shutdown, d);
    if let Err(e) = post_event(server, &ev) {
        log(&format!("reporting shutdown: {e}"));
    }
}
