//! What the web pages show of a machine, worked out from its record and its events: the
//! state the fleet page filters by, each boot's timeline (the server's DHCP and file
//! traffic put in front of the boot it started), the containers, and a line per event.
//! No I/O: the handlers read the store and hand the pieces here.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::schema::config::MachineConfig;
use crate::schema::EventKind;
use crate::server::store::{Machine, Recorded, Source};

/// A machine's state, as the fleet page shows and filters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    /// Seen at PXE, no config: waits for an operator to accept it.
    Discovered,
    /// Firmware or plinth-init on its way, not enrolled yet.
    Booting,
    /// Holds its certificate; no config yet.
    Enrolled,
    /// Config fetched or applied, containers still starting.
    Configured,
    /// Config applied, every container running.
    Running,
    /// Config applied, some container or image failed or exited with an error, or an
    /// error after it.
    Degraded,
    /// The node's last step was an error.
    Failed,
    /// Refused: the server quarantined it (a security event).
    Quarantined,
    /// Shut down, or never booted.
    Off,
}

impl MachineState {
    /// Every state, in the order the fleet page offers them.
    pub const ALL: [MachineState; 9] = [
        MachineState::Discovered,
        MachineState::Booting,
        MachineState::Enrolled,
        MachineState::Configured,
        MachineState::Running,
        MachineState::Degraded,
        MachineState::Failed,
        MachineState::Quarantined,
        MachineState::Off,
    ];

    /// Its name on the page and in `?state=`.
    pub fn name(self) -> &'static str {
        match self {
            MachineState::Discovered => "discovered",
            MachineState::Booting => "booting",
            MachineState::Enrolled => "enrolled",
            MachineState::Configured => "configured",
            MachineState::Running => "running",
            MachineState::Degraded => "degraded",
            MachineState::Failed => "failed",
            MachineState::Quarantined => "quarantined",
            MachineState::Off => "off",
        }
    }
}

/// When the server saw an event, ms since the epoch: the server's traffic's own time
/// (written later when the MAC had no record yet), else when it was received. A node's
/// `atMs` is its own say and orders nothing.
pub fn event_ms(r: &Recorded) -> u64 {
    r.event
        .details
        .get("atMs")
        .filter(|_| r.source == Source::Server)
        .and_then(Value::as_u64)
        .or(r.received_at_ms)
        .unwrap_or(r.received_at.saturating_mul(1000))
}

/// An event kind's name, as the API spells it.
pub fn kind_name(k: EventKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// One boot: the node's events of one boot id, with the server's traffic and actions
/// around them; `boot_id` is `None` for a boot whose node has not reported yet.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The kernel's boot id, once the node reported.
    pub boot_id: Option<String>,
    /// Its events, in the server's time order.
    pub events: Vec<Recorded>,
}

/// A machine's events grouped by boot, oldest first. Events of no boot (the server's
/// DHCP and file traffic, actions, refusals) go with the boot they come before when a
/// DHCP request opened it or the node had shut down, else with the boot in progress.
pub fn boots(mut events: Vec<Recorded>) -> Vec<Boot> {
    events.sort_by_key(event_ms);
    let mut out: Vec<Boot> = Vec::new();
    // Traffic of a boot whose node has not spoken yet.
    let mut before: Vec<Recorded> = Vec::new();
    for r in events {
        if r.event.boot_id.is_empty() {
            let down = out.last().is_some_and(|b| {
                b.events
                    .iter()
                    .rfind(|e| e.source == Source::Node)
                    .is_some_and(|e| e.event.kind == EventKind::Shutdown)
            });
            let traffic = matches!(r.event.kind, EventKind::Dhcp | EventKind::File);
            if r.event.kind == EventKind::Dhcp
                || (down && traffic)
                || !before.is_empty()
                || out.is_empty()
            {
                before.push(r);
            } else if let Some(b) = out.last_mut() {
                b.events.push(r);
            }
            continue;
        }
        let id = r.event.boot_id.clone();
        match out
            .iter_mut()
            .rfind(|b| b.boot_id.as_deref() == Some(id.as_str()))
        {
            Some(b) => b.events.push(r),
            None => {
                let mut events = std::mem::take(&mut before);
                events.push(r);
                out.push(Boot {
                    boot_id: Some(id),
                    events,
                });
            }
        }
    }
    if !before.is_empty() {
        out.push(Boot {
            boot_id: None,
            events: before,
        });
    }
    out
}

/// A fingerprint of a boot's first events, in their order: a live page's cursor carries
/// the one of the rows it shows, so that a row retired or put before them (a late write)
/// is noticed, whatever their times.
pub fn digest(events: &[Recorded]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for r in events {
        event_ms(r).hash(&mut h);
        kind_name(r.event.kind).hash(&mut h);
        r.event.seq.hash(&mut h);
        r.event.boot_id.hash(&mut h);
        (r.source == Source::Node).hash(&mut h);
        r.received_at_ms.hash(&mut h);
    }
    h.finish()
}

/// One line of a boot's timeline.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Milliseconds since the boot's first event.
    pub t_ms: u64,
    /// Milliseconds since the event before.
    pub delta_ms: u64,
    /// `dhcp`, `file`, `booted`, ...
    pub kind: String,
    /// `server` or `node`.
    pub source: &'static str,
    /// What happened, in a line.
    pub text: String,
    /// A failure: shown in red.
    pub bad: bool,
}

impl Row {
    /// [`Row::t_ms`] in seconds, one decimal.
    pub fn seconds(&self) -> String {
        format!("{:.1}", self.t_ms as f64 / 1000.0)
    }
}

/// A boot's timeline.
pub fn rows(b: &Boot) -> Vec<Row> {
    let first = b.events.first().map_or(0, event_ms);
    let mut last = first;
    b.events
        .iter()
        .map(|r| {
            let at = event_ms(r).max(last);
            let row = Row {
                t_ms: at - first,
                delta_ms: at - last,
                kind: kind_name(r.event.kind),
                source: match r.source {
                    Source::Node => "node",
                    Source::Server => "server",
                },
                text: describe(r.event.kind, &r.event.details),
                bad: is_bad(r.event.kind, &r.event.details),
            };
            last = at;
            row
        })
        .collect()
}

fn text(d: &Map<String, Value>, key: &str) -> String {
    match d.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// Whether an event is a failure.
fn is_bad(kind: EventKind, d: &Map<String, Value>) -> bool {
    match kind {
        EventKind::Error | EventKind::Security => true,
        EventKind::Kubernetes => text(d, "step") == "denied",
        EventKind::Service | EventKind::Image => {
            let state = text(d, "state");
            state == "failed"
                || (state == "exited"
                    && (d.get("exitCode").and_then(Value::as_i64).unwrap_or(0) != 0
                        || d.get("signal").is_some_and(|s| !s.is_null())
                        || d.get("oomKilled") == Some(&Value::Bool(true))))
        }
        _ => false,
    }
}

/// An event in a line: the firmware stage and offer, the file, the container's state, the
/// error; the other details as `key=value`.
pub fn describe(kind: EventKind, d: &Map<String, Value>) -> String {
    let mut s = match kind {
        EventKind::Dhcp => format!(
            "{} asked, offered {}",
            text(d, "firmware"),
            text(d, "offered")
        ),
        EventKind::File => format!(
            "{} {} ({} bytes)",
            text(d, "protocol"),
            text(d, "file"),
            text(d, "bytes")
        ),
        EventKind::Network => format!("{} on {}", text(d, "address"), text(d, "interface")),
        EventKind::Action => {
            let mut s = format!("{} by {}", text(d, "action"), text(d, "by"));
            if d.contains_key("profile") {
                s.push_str(&format!(" (profile {})", text(d, "profile")));
            }
            s
        }
        EventKind::Kubernetes => match text(d, "step").as_str() {
            "token" => format!(
                "bootstrap token {} for node {}, until {}",
                text(d, "token"),
                text(d, "node"),
                text(d, "expires")
            ),
            "config" => format!(
                "the config's own bootstrap token {} for node {}",
                text(d, "token"),
                text(d, "node")
            ),
            "approved" => format!(
                "{} certificate of node {} approved ({})",
                text(d, "certificate"),
                text(d, "node"),
                text(d, "csr")
            ),
            "denied" => format!(
                "{} certificate request {} denied: {}",
                text(d, "certificate"),
                text(d, "csr"),
                text(d, "reason")
            ),
            other => other.to_string(),
        },
        EventKind::Error | EventKind::Security => {
            let why = if d.contains_key("error") {
                text(d, "error")
            } else {
                text(d, "reason")
            };
            match d.get("step") {
                Some(_) => format!("{}: {why}", text(d, "step")),
                None => why,
            }
        }
        EventKind::Extension => format!(
            "extension {}: {} bytes, {} entries added",
            text(d, "name"),
            text(d, "bytes"),
            text(d, "written")
        ),
        EventKind::Joined => format!(
            "node {} Ready in {}, after {} ms",
            text(d, "node"),
            text(d, "server"),
            text(d, "readyMs")
        ),
        EventKind::Service | EventKind::Image => {
            // A host service (containerd, kubelet) names itself as `service`.
            let who = if d.contains_key("service") {
                text(d, "service")
            } else {
                text(d, "container")
            };
            let mut s = format!("{who} {}", text(d, "state"));
            if let Some(c) = d.get("exitCode").filter(|v| !v.is_null()) {
                s.push_str(&format!(", exit {c}"));
            }
            if d.get("signal").is_some_and(|v| !v.is_null()) {
                s.push_str(&format!(", signal {}", text(d, "signal")));
            }
            if d.get("oomKilled") == Some(&Value::Bool(true)) {
                s.push_str(", out of memory");
            }
            if d.get("state").and_then(Value::as_str) == Some("pulled") {
                s.push_str(&format!(
                    ": {} bytes in {} ms",
                    text(d, "bytes"),
                    text(d, "ms")
                ));
            }
            for key in ["address", "step", "reason", "error"] {
                if d.contains_key(key) {
                    s.push_str(&format!(", {key} {}", text(d, key)));
                }
            }
            s
        }
        _ => d
            .iter()
            .filter(|(_, v)| !v.is_object() && !v.is_array() && !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
    };
    if s.chars().count() > 300 {
        s = s.chars().take(300).collect::<String>() + "…";
    }
    s
}

/// A container as the machine page lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerRow {
    /// Its name in the config.
    pub name: String,
    /// Its image.
    pub image: String,
    /// `waiting`, `pulling`, `pulled`, `running`, `exited` or `failed`: the last the node
    /// said of it in this boot.
    pub state: String,
    /// The last event about it, in a line.
    pub detail: String,
    /// Failed or exited with an error.
    pub bad: bool,
}

/// The config's containers, each with the last the node said of it in `boot`.
pub fn containers(config: Option<&MachineConfig>, boot: Option<&Boot>) -> Vec<ContainerRow> {
    let Some(config) = config else {
        return Vec::new();
    };
    config
        .containers
        .iter()
        .map(|c| {
            let last = boot.and_then(|b| {
                b.events.iter().rev().find(|r| {
                    matches!(r.event.kind, EventKind::Service | EventKind::Image)
                        && r.event.details.get("container").and_then(Value::as_str)
                            == Some(c.name.as_str())
                })
            });
            match last {
                Some(r) => ContainerRow {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    state: text(&r.event.details, "state"),
                    detail: describe(r.event.kind, &r.event.details),
                    bad: is_bad(r.event.kind, &r.event.details),
                },
                None => ContainerRow {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    state: "waiting".into(),
                    detail: String::new(),
                    bad: false,
                },
            }
        })
        .collect()
}

/// The machine's state from its record, its last boot and its containers;
/// `unassigned` when no file, declaration or acceptance gives it a config.
pub fn state(
    m: &Machine,
    unassigned: bool,
    last: Option<&Boot>,
    containers: &[ContainerRow],
) -> MachineState {
    if m.quarantine.is_some() {
        return MachineState::Quarantined;
    }
    if unassigned {
        return MachineState::Discovered;
    }
    let Some(last) = last else {
        return MachineState::Off;
    };
    let node = || last.events.iter().filter(|r| r.source == Source::Node);
    if node().next_back().map(|r| r.event.kind) == Some(EventKind::Shutdown) {
        return MachineState::Off;
    }
    // A container's news means the config was applied, even when a long boot's oldest
    // events (its `applied` among them) have been retired.
    let applied = node().any(|r| {
        matches!(
            r.event.kind,
            EventKind::Applied | EventKind::Service | EventKind::Image
        )
    });
    let step = node()
        .rfind(|r| {
            matches!(
                r.event.kind,
                EventKind::Booted
                    | EventKind::Network
                    | EventKind::Enrolled
                    | EventKind::Config
                    | EventKind::Applied
                    | EventKind::Joined
                    | EventKind::Error
            )
        })
        .map(|r| r.event.kind);
    match step {
        Some(EventKind::Error) if applied => MachineState::Degraded,
        Some(EventKind::Error) => MachineState::Failed,
        Some(EventKind::Applied | EventKind::Joined) => after_applied(containers),
        None if applied => after_applied(containers),
        Some(EventKind::Config) => MachineState::Configured,
        Some(EventKind::Enrolled) => MachineState::Enrolled,
        _ => MachineState::Booting,
    }
}

/// A machine whose config is applied: running when every container runs (or finished
/// well), degraded when one failed.
fn after_applied(containers: &[ContainerRow]) -> MachineState {
    if containers.iter().any(|c| c.bad) {
        MachineState::Degraded
    } else if containers
        .iter()
        .all(|c| c.state == "running" || c.state == "exited")
    {
        MachineState::Running
    } else {
        MachineState::Configured
    }
}

/// Whether a log line of `source` is shown under filter `filter`: all for none, else the
/// source itself or what is under it (`container/web` is both of web's streams, not
/// `container/webhook`'s).
pub fn log_shown(source: &str, filter: &str) -> bool {
    filter.is_empty()
        || source == filter
        || source
            .strip_prefix(filter)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// An action's name, as the API spells it.
pub fn action_name(a: crate::schema::Action) -> &'static str {
    match a {
        crate::schema::Action::Poweroff => "poweroff",
        crate::schema::Action::Reboot => "reboot",
        crate::schema::Action::Configure => "configure",
        crate::schema::Action::Inspect => "inspect",
    }
}

/// How long ago, in a few characters: `42 s`, `5 min`, `3 h`, `2 d`.
pub fn age(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    }
}

/// A stored log line: its source (`kmsg`, `console`, `container/NAME/stdout|stderr`) and
/// its text.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// Where it came from.
    pub source: String,
    /// The line.
    pub text: String,
}

/// A boot's stored log, line by line (each stored as `SOURCE TEXT`).
pub fn log_lines(log: &[u8]) -> Vec<LogLine> {
    String::from_utf8_lossy(log)
        .lines()
        .map(|l| {
            let (source, text) = l.split_once(' ').unwrap_or((l, ""));
            LogLine {
                source: source.to_string(),
                text: text.to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Event, API_VERSION};
    use serde_json::json;

    fn ev(kind: EventKind, boot: &str, source: Source, ms: u64, details: Value) -> Recorded {
        Recorded {
            received_at: ms / 1000,
            received_at_ms: Some(ms),
            source,
            event: Event {
                api_version: API_VERSION.into(),
                kind,
                mac: "52:54:00:00:00:01".into(),
                uuid: String::new(),
                boot_id: boot.into(),
                seq: 0,
                uptime_ms: 0,
                wall_time: 0,
                details: details.as_object().cloned().unwrap_or_default(),
            },
        }
    }

    fn config(names: &[&str]) -> MachineConfig {
        serde_json::from_value(json!({
            "apiVersion": "plinth/v1",
            "containers": names.iter().map(|n| json!({"name": n, "image": "r:5000/x:1"})).collect::<Vec<_>>(),
        }))
        .expect("config")
    }

    #[test]
    fn kubernetes_rows_say_what_the_server_did() {
        let d = |v: Value| v.as_object().cloned().unwrap_or_default();
        let token = d(
            json!({"step": "token", "token": "abcdef", "node": "n1", "expires": "2026-12-07T13:00:00Z"}),
        );
        assert_eq!(
            describe(EventKind::Kubernetes, &token),
            "bootstrap token abcdef for node n1, until 2026-12-07T13:00:00Z"
        );
        assert!(!is_bad(EventKind::Kubernetes, &token));
        let denied =
            d(json!({"step": "denied", "certificate": "client", "csr": "c1", "reason": "not n1"}));
        assert_eq!(
            describe(EventKind::Kubernetes, &denied),
            "client certificate request c1 denied: not n1"
        );
        assert!(is_bad(EventKind::Kubernetes, &denied));
    }

    #[test]
    fn traffic_goes_with_the_boot_it_opened() {
        let s = Source::Server;
        let n = Source::Node;
        let events = vec![
            // Written late (the MAC had no record): its own time puts it first.
            ev(
                EventKind::File,
                "",
                s,
                9_000,
                json!({"atMs": 1_100, "file": "k"}),
            ),
            ev(EventKind::Dhcp, "", s, 1_000, json!({"firmware": "pxe"})),
            ev(EventKind::Booted, "b1", n, 2_000, json!({})),
            ev(
                EventKind::Action,
                "",
                s,
                3_000,
                json!({"action": "reboot", "by": "admin"}),
            ),
            ev(EventKind::Shutdown, "b1", n, 3_500, json!({})),
            ev(EventKind::Dhcp, "", s, 4_000, json!({"firmware": "pxe"})),
            ev(EventKind::Booted, "b2", n, 5_000, json!({})),
            ev(EventKind::Dhcp, "", s, 7_000, json!({"firmware": "pxe"})),
        ];
        let b = boots(events);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].boot_id.as_deref(), Some("b1"));
        let kinds: Vec<_> = b[0]
            .events
            .iter()
            .map(|r| kind_name(r.event.kind))
            .collect();
        assert_eq!(kinds, ["dhcp", "file", "booted", "action", "shutdown"]);
        assert_eq!(b[1].events.len(), 2);
        assert_eq!(b[2].boot_id, None);
        // A row put before the ones a page shows changes their digest, even at the
        // same time as the last of them.
        let shown = &b[0].events[..3];
        let mut later = b[0].events[..3].to_vec();
        let mut early = later[1].clone();
        early.event.seq = 99;
        later.insert(1, early);
        assert_ne!(digest(shown), digest(&later[..3]));
        assert_eq!(digest(shown), digest(&b[0].events[..3]));
        let r = rows(&b[0]);
        assert_eq!(r[1].t_ms, 100);
        assert_eq!(r[2].delta_ms, 900);
        assert_eq!(r[3].text, "reboot by admin");
    }

    #[test]
    fn traffic_after_a_shutdown_is_the_next_boot() {
        let (s, n) = (Source::Server, Source::Node);
        // A reboot within the DHCP dedup window: the next boot starts with its files.
        let b = boots(vec![
            ev(EventKind::Booted, "b1", n, 1_000, json!({})),
            ev(EventKind::Security, "", s, 1_500, json!({"reason": "x"})),
            ev(EventKind::Shutdown, "b1", n, 2_000, json!({})),
            ev(EventKind::File, "", s, 3_000, json!({"file": "boot.ipxe"})),
            ev(EventKind::Booted, "b2", n, 4_000, json!({})),
        ]);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].events.len(), 3);
        assert_eq!(b[1].events[0].event.kind, EventKind::File);
    }

    #[test]
    fn states_follow_the_last_boot() {
        let n = Source::Node;
        let m = Machine::default();
        let boot = |kinds: Vec<Recorded>| Boot {
            boot_id: Some("b".into()),
            events: kinds,
        };
        let applied = vec![
            ev(EventKind::Booted, "b", n, 1, json!({})),
            ev(EventKind::Enrolled, "b", n, 2, json!({})),
            ev(EventKind::Applied, "b", n, 3, json!({})),
        ];
        let cfg = config(&["web", "job"]);
        let b = boot(applied.clone());
        let c = containers(Some(&cfg), Some(&b));
        assert_eq!(c[0].state, "waiting");
        assert_eq!(state(&m, false, Some(&b), &c), MachineState::Configured);
        let mut more = applied.clone();
        more.push(ev(
            EventKind::Service,
            "b",
            n,
            4,
            json!({"container": "web", "state": "running"}),
        ));
        more.push(ev(
            EventKind::Service,
            "b",
            n,
            5,
            json!({"container": "job", "state": "running"}),
        ));
        let b = boot(more.clone());
        let c = containers(Some(&cfg), Some(&b));
        assert_eq!(state(&m, false, Some(&b), &c), MachineState::Running);
        more.push(ev(
            EventKind::Service,
            "b",
            n,
            6,
            json!({"container": "job", "state": "exited", "exitCode": 3}),
        ));
        let b = boot(more.clone());
        let c = containers(Some(&cfg), Some(&b));
        assert!(c[1].bad);
        assert_eq!(c[1].detail, "job exited, exit 3");
        assert_eq!(state(&m, false, Some(&b), &c), MachineState::Degraded);
        let failed = boot(vec![
            ev(EventKind::Booted, "b", n, 1, json!({})),
            ev(
                EventKind::Error,
                "b",
                n,
                2,
                json!({"step": "enrol", "error": "refused"}),
            ),
        ]);
        assert_eq!(state(&m, false, Some(&failed), &[]), MachineState::Failed);
        assert!(rows(&failed)[1].bad);
        assert_eq!(rows(&failed)[1].text, "enrol: refused");
        let off = boot(vec![
            ev(EventKind::Applied, "b", n, 1, json!({})),
            ev(EventKind::Shutdown, "b", n, 2, json!({})),
        ]);
        assert_eq!(state(&m, false, Some(&off), &[]), MachineState::Off);
        assert_eq!(state(&m, false, None, &[]), MachineState::Off);
        assert_eq!(state(&m, true, None, &[]), MachineState::Discovered);
        let q = Machine {
            quarantine: Some(crate::server::store::Quarantine {
                since: 0,
                reason: "x".into(),
            }),
            ..Machine::default()
        };
        assert_eq!(state(&q, false, Some(&b), &c), MachineState::Quarantined);
    }

    #[test]
    fn a_clean_exit_is_no_failure_and_filters_keep_to_their_source() {
        let n = Source::Node;
        let cfg = config(&["job"]);
        let b = Boot {
            boot_id: Some("b".into()),
            events: vec![
                ev(EventKind::Applied, "b", n, 1, json!({})),
                ev(
                    EventKind::Service,
                    "b",
                    n,
                    2,
                    json!({"container": "job", "state": "exited", "exitCode": 0}),
                ),
            ],
        };
        let c = containers(Some(&cfg), Some(&b));
        assert!(!c[0].bad);
        assert_eq!(
            state(&Machine::default(), false, Some(&b), &c),
            MachineState::Running
        );
        // Only container news left (the boot's milestones retired): still applied.
        let late = Boot {
            boot_id: Some("b".into()),
            events: b.events[1..].to_vec(),
        };
        assert_eq!(
            state(&Machine::default(), false, Some(&late), &c),
            MachineState::Running
        );
        // A node's own `atMs` orders nothing.
        let forged = ev(EventKind::Booted, "b", n, 5_000, json!({"atMs": 1}));
        assert_eq!(event_ms(&forged), 5_000);
        assert!(log_shown("container/web/stdout", "container/web"));
        assert!(log_shown("container/web/stdout", "container/web/stdout"));
        assert!(!log_shown("container/webhook/stdout", "container/web"));
        assert!(log_shown("kmsg", ""));
    }

    #[test]
    fn log_lines_keep_their_source() {
        let l = log_lines(b"kmsg hello world\ncontainer/web/stdout GET /\n");
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].source, "container/web/stdout");
        assert_eq!(l[1].text, "GET /");
        assert_eq!(age(100_000, 0), "100 s");
        assert_eq!(age(4 * 3600 * 1000, 0), "4 h");
    }
}
