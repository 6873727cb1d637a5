//! The store against kill -9: a real `plinth-server` is killed (SIGKILL) at 50 random
//! points while machines are declared, enrol and report events concurrently, and
//! restarted on the same data directory each time. Every write the server acknowledged
//! (a 200) must be there at the end, and the store must open and answer after every
//! kill.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plinth_tests::server::{placeholder_boot, rt, Server};
use plinth_tests::TempDir;
use serde_json::json;

/// A small xorshift: the kill points are random, and the seed is printed to replay them.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// What the server acknowledged.
#[derive(Default)]
struct Acked {
    /// Declared MACs.
    declared: Vec<String>,
    /// (MAC, certificate serial) of enrolments.
    enrolled: Vec<(String, String)>,
    /// (MAC, boot id, seq) of events.
    events: Vec<(String, String, u64)>,
}

const BOOT: &str = "0f0f0f0f-0000-4000-8000-000000000001";

/// One worker: machine after machine, declare, mint, enrol, then events until stopped.
fn worker(s: &Server, id: u32, round: u32, stop: &AtomicBool, acked: &Mutex<Acked>) {
    let mut k = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let n = round * 1000 + id * 100 + k;
        k += 1;
        let mac = format!(
            "52:54:01:{:02x}:{:02x}:{:02x}",
            n >> 16,
            (n >> 8) & 0xff,
            n & 0xff
        );
        let uuid = format!("6e4a2b1c-0000-4000-8000-{n:012x}");
        let body = json!({"uuid": uuid, "config": {"apiVersion": "plinth/v1", "hostname": format!("m{n}")}});
        let (code, _) = s.op("PUT", &format!("/v1/machines/{mac}"), Some(&body));
        if code != 200 {
            return;
        }
        acked.lock().unwrap().declared.push(mac.clone());
        let (code, script) = s.curl(&[&format!("{}/boot.ipxe?mac={mac}&uuid={uuid}", s.http)]);
        let Some(token) = (code == 200)
            .then(|| {
                script
                    .lines()
                    .find_map(|l| l.strip_prefix("set plinth-token "))
                    .map(String::from)
            })
            .flatten()
        else {
            return;
        };
        let Ok((node, issued)) = s.enrol_boot(&mac, &uuid, &token, BOOT) else {
            return;
        };
        acked
            .lock()
            .unwrap()
            .enrolled
            .push((mac.clone(), issued.serial.clone()));
        for seq in 1..=20u64 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let ev = json!({"apiVersion": "plinth/v1", "type": "service", "mac": mac, "uuid": uuid,
                            "bootId": BOOT, "seq": seq, "uptimeMs": seq, "wallTime": 2});
            let r = rt().block_on(node.request(
                "POST",
                "/v1/events",
                Some(ev.to_string().into_bytes()),
                Duration::from_secs(20),
            ));
            match r {
                Ok((200, _)) => acked
                    .lock()
                    .unwrap()
                    .events
                    .push((mac.clone(), BOOT.into(), seq)),
                _ => return,
            }
        }
    }
}

#[test]
fn no_acknowledged_write_is_lost_to_kill_9() {
    if Command::new("curl").arg("--version").output().is_err() {
        plinth_tests::skip(
            "no_acknowledged_write_is_lost_to_kill_9",
            "curl (the operators' client here) is not installed",
        );
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill points from seed {seed}");
    let mut rng = Rng(seed);
    let dir = TempDir::new("plinth-crash");
    let boot = placeholder_boot(&dir.0);
    let mut dir = Some(dir);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut operator = String::new();
    let started = Instant::now();
    for round in 0..50u32 {
        let mut s = Server::start_in(dir.take().unwrap(), &boot, &[]);
        if s.operator.is_empty() {
            s.operator = operator.clone();
        }
        operator = s.operator.clone();
        // The store opened (the server started) and answers.
        let (code, _) = s.op("GET", "/v1/machines", None);
        assert_eq!(code, 200, "round {round}: the store does not answer");
        let stop = AtomicBool::new(false);
        let wait = Duration::from_millis(50 + rng.next() % 700);
        std::thread::scope(|sc| {
            for id in 0..4 {
                let (s, stop, acked) = (&s, &stop, &acked);
                sc.spawn(move || worker(s, id, round, stop, acked));
            }
            std::thread::sleep(wait);
            // kill -9, mid-write as like as not; then the workers stop.
            s.sigkill();
            stop.store(true, Ordering::Relaxed);
        });
        dir = Some(s.kill());
    }
    let mut s = Server::start_in(dir.take().unwrap(), &boot, &[]);
    s.operator = operator;
    let a = acked.lock().unwrap();
    println!(
        "50 kills in {:?}: {} declarations, {} enrolments, {} events acknowledged",
        started.elapsed(),
        a.declared.len(),
        a.enrolled.len(),
        a.events.len()
    );
    assert!(
        a.declared.len() >= 50 && !a.enrolled.is_empty() && a.events.len() >= 50,
        "too little was written to tell anything"
    );
    for mac in &a.declared {
        let (code, m) = s.op("GET", &format!("/v1/machines/{mac}"), None);
        assert_eq!(code, 200, "the declaration of {mac} was lost: {m}");
        assert!(m["config"]["hostname"].is_string(), "{m}");
    }
    for (mac, serial) in &a.enrolled {
        let m = s.machine(mac);
        assert!(
            m["certificates"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["serial"] == serial.as_str()),
            "the enrolment of {mac} ({serial}) was lost: {m}"
        );
        assert!(m["token"]["spentAt"].is_u64(), "{m}");
    }
    let mut by_mac: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for (mac, _, seq) in &a.events {
        by_mac.entry(mac).or_default().push(*seq);
    }
    for (mac, seqs) in by_mac {
        let m = s.machine(mac);
        let have: Vec<u64> = m["boots"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["bootId"] == BOOT)
            .flat_map(|b| b["events"].as_array().unwrap().clone())
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        for seq in seqs {
            assert!(
                have.contains(&seq),
                "event {seq} of {mac} was lost: {have:?}"
            );
        }
    }
}
