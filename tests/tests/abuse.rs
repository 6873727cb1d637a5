//! A provisioning server on a shared network, abused as a broken or hostile machine would:
//! each limit (a flag with a default) is hit for real against a `plinth-server` on
//! loopback, and must hold: a request trickling in is cut at its deadline, a body over
//! the cap is refused, an address holding too many connections gets no more, a flood of
//! made-up MACs makes a bounded number of records, and TFTP answers a spoofed request
//! with a few packets and runs a bounded number of transfers.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use plinth_tests::server::Server;

fn has_curl(test: &str) -> bool {
    if Command::new("curl").arg("--version").output().is_ok() {
        return true;
    }
    plinth_tests::skip(test, "curl (the HTTP client here) is not installed");
    false
}

fn addr(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap()
        .trim_end_matches('/')
        .to_string()
}

/// Reads until the server closes the connection (or `limit` passes); returns what came
/// and how long it took.
fn read_to_close(c: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    c.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    (out, start.elapsed())
}

/// `--request-timeout` bounds a whole request, not each read: headers sent a byte at a
/// time (slowloris) are cut, and so is a body trickling in under TLS.
#[test]
fn a_request_trickling_in_is_cut_at_its_deadline() {
    if !has_curl("a_request_trickling_in_is_cut_at_its_deadline") {
        return;
    }
    let s = Server::start(&["--request-timeout", "2s"]);
    // Headers, a byte every 300 ms: each read is quick, the request never ends.
    let mut c = TcpStream::connect(addr(&s.http)).unwrap();
    c.write_all(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let start = Instant::now();
    let mut closed_at = None;
    for _ in 0..40 {
        if c.write_all(b"X").is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        c.set_nonblocking(true).unwrap();
        let mut b = [0u8; 64];
        let gone = matches!(c.read(&mut b), Ok(0));
        c.set_nonblocking(false).unwrap();
        if gone {
            closed_at = Some(start.elapsed());
            break;
        }
    }
    let closed_at = closed_at.expect("the slow headers were never cut");
    assert!(
        closed_at < Duration::from_secs(5),
        "cut after {closed_at:?}, not at the 2 s deadline"
    );
    // A body at 20 bytes a second over TLS (curl's own pacing): 408 at the deadline,
    // where it would need 100 s to finish.
    let body = "x".repeat(2000);
    let start = Instant::now();
    let (code, answer) = s.curl(&[
        "-X",
        "POST",
        "--limit-rate",
        "20",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &body,
        &format!("{}/v1/enroll", s.https),
    ]);
    let took = start.elapsed();
    assert_eq!(code, 408, "{answer}");
    assert!(answer.contains("--request-timeout"), "{answer}");
    assert!(took < Duration::from_secs(8), "answered after {took:?}");
    assert!(
        s.audit().contains("refused: 408"),
        "the cut request is in the audit trail"
    );
    assert!(
        s.metric("plinth_refusals_total{listener=\"https\",reason=\"request_timeout\"}") >= 1.0
    );
}

const BODY_TOO_LARGE: &str = "plinth_refusals_total{listener=\"https\",reason=\"body_too_large\"}";

/// `--max-body`: a body over it is refused (413) whether it says its length or not.
#[test]
fn a_body_over_the_cap_is_refused() {
    if !has_curl("a_body_over_the_cap_is_refused") {
        return;
    }
    let s = Server::start(&["--max-body", "64K"]);
    let file = std::env::temp_dir().join(plinth_tests::unique("plinth-body"));
    std::fs::write(&file, vec![b'{'; 200 * 1024]).unwrap();
    let at = format!("@{}", file.display());
    let auth = format!("Authorization: Bearer {}", s.operator);
    for (what, extra) in [
        // Asking before sending, as curl does for large bodies: the answer comes
        // before the body, so nothing is cut mid-upload and the 413 always arrives.
        ("with Content-Length", vec!["-H", "Expect: 100-continue"]),
        ("chunked", vec!["-H", "Transfer-Encoding: chunked"]),
    ] {
        let mut args = vec!["-X", "PUT", "-H", &auth, "--data-binary", &at];
        args.extend(extra);
        let url = format!("{}/v1/machines/52:54:00:00:00:01", s.https);
        args.push(&url);
        let before = s.metric(BODY_TOO_LARGE);
        let (code, answer) = s.curl(&args);
        // A chunked upload is cut while curl is still sending: the server answers 413
        // and closes, and curl may see the reset before it reads the answer (code 0).
        // Either way the server refused it, and counts the refusal.
        let refused = code == 413 || (what == "chunked" && code == 0);
        assert!(refused, "{what}: {code} {answer}");
        assert_eq!(
            s.metric(BODY_TOO_LARGE),
            before + 1.0,
            "{what}: not counted as refused"
        );
    }
    let _ = std::fs::remove_file(&file);
    // Under the cap, the same endpoint reads the body (and refuses it for what it says).
    let (code, answer) = s.op(
        "PUT",
        "/v1/machines/52:54:00:00:00:01",
        Some(&serde_json::json!({})),
    );
    assert_eq!(code, 400, "{answer}");
    assert!(s.metric("plinth_refusals_total{listener=\"https\",reason=\"body_too_large\"}") >= 2.0);
}

/// `--max-conns-per-addr`: the connections past it are closed at once; the ones within
/// it are served; one closed makes room for another.
#[test]
fn connections_per_address_are_capped() {
    let s = Server::start(&["--max-conns-per-addr", "4"]);
    let http = addr(&s.http);
    let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&http).unwrap()).collect();
    // Give the server the moment to count them.
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        let mut extra = TcpStream::connect(&http).unwrap();
        let (_, took) = read_to_close(&mut extra, Duration::from_secs(5));
        assert!(
            took < Duration::from_secs(2),
            "extra connection {i} was kept open {took:?}"
        );
    }
    // The held ones still work.
    held[0]
        .write_all(b"GET /vmlinuz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (answer, _) = read_to_close(&mut held[0], Duration::from_secs(5));
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // held[0] is closed by now: room for one more.
    held.remove(0);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = TcpStream::connect(&http).unwrap();
    again
        .write_all(b"GET /initrd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (answer, _) = read_to_close(&mut again, Duration::from_secs(5));
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert!(
        s.metric("plinth_refusals_total{listener=\"http\",reason=\"too_many_connections\"}") >= 3.0
    );
}

/// A flood of made-up MACs asking for boot scripts: at most the discovery rate's burst
/// get a record (and a discovery token); the rest get a script without a token, an
/// audit line, and nothing stored.
#[test]
fn a_flood_of_made_up_macs_makes_a_bounded_number_of_records() {
    if !has_curl("a_flood_of_made_up_macs_makes_a_bounded_number_of_records") {
        return;
    }
    let s = Server::start(&["--discoveries-per-minute", "5", "--max-discovered", "50"]);
    let mut tokens = 0;
    for i in 0..150u32 {
        let mac = format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff);
        let uuid = format!("6e4a2b1c-0000-4000-8000-{i:012x}");
        if s.mint(&mac, &uuid).is_some() {
            tokens += 1;
        }
    }
    let (code, list) = s.op("GET", "/v1/machines", None);
    assert_eq!(code, 200);
    let records = list.as_array().unwrap().len();
    // A token bucket of 5 a minute: 5 at once, and at most one more while the flood ran.
    assert!((5..=6).contains(&records), "{records} records");
    assert_eq!(tokens, records, "a token for each record, none without");
    assert!(s.audit().matches("discoveries are over their rate").count() >= 140);
    // --max-discovered bounds them whatever the rate.
    let s = Server::start(&["--discoveries-per-minute", "1000", "--max-discovered", "7"]);
    for i in 0..40u32 {
        let mac = format!("02:00:00:01:00:{i:02x}");
        let uuid = format!("6e4a2b1c-0000-4000-8001-{i:012x}");
        s.mint(&mac, &uuid);
    }
    let (_, list) = s.op("GET", "/v1/machines", None);
    assert_eq!(list.as_array().unwrap().len(), 7);
    assert!(
        s.metric("plinth_refusals_total{listener=\"http\",reason=\"discovery_limit\"}") >= 33.0
    );
}

/// Packets `sock` receives within `within`, and from how many server ports.
fn received(sock: &UdpSocket, within: Duration) -> (usize, std::collections::BTreeSet<u16>) {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let start = Instant::now();
    let mut n = 0;
    let mut ports = std::collections::BTreeSet::new();
    let mut buf = [0u8; 2048];
    while start.elapsed() < within {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            n += 1;
            ports.insert(from.port());
        }
    }
    (n, ports)
}

fn rrq(file: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(file.as_bytes());
    p.extend_from_slice(b"\0octet\0blksize\0");
    p.extend_from_slice(b"1468\0");
    p
}

/// TFTP: a request whose sender never answers (a spoofed source) gets `--tftp-sends`
/// packets, no more; `--tftp-workers` transfers run at once and a request beyond them is
/// dropped; a real client still gets the whole file, streamed.
#[test]
fn tftp_answers_a_spoofed_request_with_a_few_packets_and_runs_a_bounded_pool() {
    let s = Server::start(&[
        "--tftp",
        "127.0.0.1:0",
        "--tftp-workers",
        "2",
        "--tftp-sends",
        "3",
    ]);
    let tftp = s.tftp.clone().unwrap();
    // One silent requester: the first packet and two retransmits, then nothing.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    silent.send_to(&rrq("vmlinuz"), &tftp).unwrap();
    let (n, ports) = received(&silent, Duration::from_secs(6));
    assert_eq!(n, 3, "packets sent to a requester that never acknowledges");
    assert_eq!(ports.len(), 1);
    // Six silent requesters at once: two workers, so two are answered (the next two wait
    // in the queue, as long as the pool, for the first two's three seconds; the last two
    // are dropped).
    let socks: Vec<UdpSocket> = (0..6)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for sock in &socks {
        sock.send_to(&rrq("vmlinuz"), &tftp).unwrap();
    }
    let answered = std::thread::scope(|sc| {
        let hs: Vec<_> = socks
            .iter()
            .map(|sock| sc.spawn(move || received(sock, Duration::from_millis(2500)).0))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|n| *n > 0)
            .count()
    });
    assert_eq!(answered, 2, "transfers answered at once");
    assert!(s.metric("plinth_refusals_total{listener=\"tftp\",reason=\"busy\"}") >= 2.0);
    // After they (and the queued two) gave up, a real client gets the whole file.
    std::thread::sleep(Duration::from_secs(7));
    if Command::new("curl").arg("--version").output().is_err() {
        plinth_tests::skip(
            "tftp (download)",
            "curl (the TFTP client here) is not installed",
        );
        return;
    }
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--tftp-blksize", "512"])
        .arg(format!("tftp://{tftp}/vmlinuz"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        o.stdout,
        std::fs::read(s.dir.0.join("boot/vmlinuz")).unwrap()
    );
}

/// What the store keeps of one machine is bounded: the last `--keep-boots` boots (events
/// and logs) and `--max-log-per-boot` bytes of log per boot, the rest dropped and counted.
#[test]
fn retention_keeps_the_last_boots_and_caps_each_boots_log() {
    if !has_curl("retention_keeps_the_last_boots_and_caps_each_boots_log") {
        return;
    }
    let s = Server::start(&["--keep-boots", "2", "--max-log-per-boot", "1K"]);
    let (mac, uuid) = ("52:54:00:00:0e:01", "6e4a2b1c-0000-4000-8000-000000000e01");
    s.declare(mac, uuid);
    let boots: Vec<String> = (1..=3)
        .map(|b| format!("0f0f0f0f-0000-4000-8000-00000000000{b}"))
        .collect();
    for boot in &boots {
        let token = s.mint(mac, uuid).unwrap();
        let (node, _) = s.enrol_boot(mac, uuid, &token, boot).unwrap();
        let ev = serde_json::json!({"apiVersion": "plinth/v1", "type": "booted", "mac": mac,
            "uuid": uuid, "bootId": boot, "seq": 1, "uptimeMs": 1, "wallTime": 2});
        assert_eq!(
            plinth_tests::server::call(&node, "POST", "/v1/events", Some(ev)).0,
            200
        );
        // 3 batches of 10 lines of 40 bytes: 1230 bytes, over the 1 KiB cap.
        for _ in 0..3 {
            let lines: Vec<_> = (0..10)
                .map(|i| serde_json::json!({"source": "console", "text": format!("{i:0>32}")}))
                .collect();
            let batch = serde_json::json!({"bootId": boot, "lines": lines});
            assert_eq!(
                plinth_tests::server::call(&node, "POST", "/v1/logs", Some(batch)).0,
                200
            );
        }
    }
    let m = s.machine(mac);
    // The server's own traffic before a node has a boot id (here the three boot-script
    // fetches) is in the bucket of no boot, which per-boot caps bound and boot retention
    // leaves alone.
    let all = m["boots"].as_array().unwrap();
    let (no_boot, real): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) =
        all.iter().partition(|b| b["bootId"] == "");
    let kept: Vec<&str> = real.iter().map(|b| b["bootId"].as_str().unwrap()).collect();
    assert_eq!(kept, [boots[1].as_str(), boots[2].as_str()], "{m}");
    assert_eq!(no_boot.len(), 1, "{m}");
    assert_eq!(
        no_boot[0]["kept"]["events"], 3,
        "the three boot-script fetches: {m}"
    );
    let last = &real[1]["kept"];
    assert!(last["logBytes"].as_u64().unwrap() <= 1024, "{last}");
    assert!(last["logDropped"].as_u64().unwrap() > 0, "{last}");
    let auth = format!("Authorization: Bearer {}", s.operator);
    let log_of = |boot: &str| {
        s.curl(&[
            "-H",
            &auth,
            &format!("{}/v1/machines/{mac}/logs/{boot}", s.https),
        ])
    };
    assert_eq!(log_of(&boots[0]).0, 404, "the oldest boot's log is gone");
    let (code, text) = log_of(&boots[2]);
    assert_eq!(code, 200);
    assert!(text.len() <= 1024 && text.len() > 900, "{}", text.len());
}
