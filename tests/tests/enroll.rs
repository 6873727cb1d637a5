//! First contact, at the server: a real `plinth-server` on loopback, driven by curl (an
//! independent TLS client) for operators and anonymous callers, and by the node agent's
//! own HTTPS client (its pin verifier, its fresh keys and client certificates) for
//! nodes. Each attack of docs/security.md is tried and must be refused and recorded.
//! The boot directory here holds placeholder files: nothing boots in these tests (the
//! qemu boot is tests/tests/boot.rs).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use plinth_provisioner::node::client::{Client, Url};
use plinth_provisioner::node::enroll::{self, Identity};
use plinth_tests::server::{call, enroll_body, event, rt, Server};
use plinth_tests::TempDir;
use serde_json::json;

const A: &str = "52:54:00:00:00:0a";
const B: &str = "52:54:00:00:00:0b";
const UUID_A: &str = "6e4a2b1c-0000-4000-8000-00000000000a";
const UUID_B: &str = "6e4a2b1c-0000-4000-8000-00000000000b";

fn has_curl(test: &str) -> bool {
    if Command::new("curl").arg("--version").output().is_ok() {
        return true;
    }
    plinth_tests::skip(
        test,
        "curl (the independent TLS client here) is not installed",
    );
    false
}

#[test]
fn a_known_machine_enrols_once_and_a_replay_quarantines_it() {
    if !has_curl("a_known_machine_enrols_once_and_a_replay_quarantines_it") {
        return;
    }
    // Discovery off (tests/tests/fleet.rs has it on): an unknown machine gets a script,
    // but no token.
    let s = Server::start(&["--max-discovered", "0"]);
    assert_eq!(s.mint(A, UUID_A), None, "token for an undeclared machine");
    s.declare(A, UUID_A);
    // The firmware's UUID must be the declared one.
    assert_eq!(s.mint(A, UUID_B), None, "token for the wrong uuid");
    let token = s.mint(A, UUID_A).expect("a token for the declared machine");
    assert_eq!(token.len(), 64);
    let node = s.enrol(A, UUID_A, &token).expect("enrolment");
    let (code, cfg) = call(&node, "GET", "/v1/config", None);
    assert_eq!(
        (code, cfg["hostname"].as_str()),
        (200, Some("node-0a")),
        "{cfg}"
    );
    let (code, reply) = call(
        &node,
        "POST",
        "/v1/events",
        Some(event(A, UUID_A, "booted")),
    );
    assert_eq!(code, 200, "{reply}");
    let m = s.machine(A);
    assert_eq!(m["certificates"].as_array().unwrap().len(), 1, "{m}");
    assert!(m["token"]["spentAt"].is_u64(), "token spent: {m}");

    // The same token again: refused, recorded, and the machine is in quarantine with
    // every certificate revoked.
    let err = s.enrol(A, UUID_A, &token).expect_err("replay accepted");
    assert!(err.contains("403") && err.contains("spent"), "{err}");
    let m = s.machine(A);
    assert!(
        m["quarantine"]["reason"]
            .as_str()
            .unwrap()
            .contains("replay"),
        "{m}"
    );
    assert!(s.security(A).iter().any(|r| r.contains("replay")), "{m}");
    assert!(m["certificates"][0]["revoked"].is_string(), "{m}");
    let (code, body) = call(&node, "GET", "/v1/config", None);
    assert_eq!(code, 401, "config after quarantine: {body}");
    // No token while in quarantine; an operator's release brings the next one.
    assert_eq!(s.mint(A, UUID_A), None, "token minted in quarantine");
    let (code, body) = s.op("POST", &format!("/v1/machines/{A}/release"), None);
    assert_eq!((code, &body["released"]), (200, &json!(true)), "{body}");
    let again = s.mint(A, UUID_A).expect("token after release");
    let node = s.enrol(A, UUID_A, &again).expect("enrolment after release");
    assert_eq!(call(&node, "GET", "/v1/config", None).0, 200);
    assert!(
        s.audit().contains("\"who\":\"operator:admin\""),
        "release audited with the name"
    );
}

#[test]
fn a_second_mint_within_a_tokens_life_is_quarantine() {
    if !has_curl("a_second_mint_within_a_tokens_life_is_quarantine") {
        return;
    }
    let s = Server::start(&[]);
    s.declare(A, UUID_A);
    let first = s.mint(A, UUID_A).expect("first token");
    assert_eq!(s.mint(A, UUID_A), None, "second token minted");
    let m = s.machine(A);
    assert!(m["quarantine"].is_object(), "{m}");
    assert!(
        s.security(A).iter().any(|r| r.contains("second token")),
        "{m}"
    );
    // The first token died with the quarantine.
    let err = s
        .enrol(A, UUID_A, &first)
        .expect_err("enrolled in quarantine");
    assert!(err.contains("403"), "{err}");

    // A server killed between minting and answering: after its restart, the machine's
    // next ask gets a new token (the one minted by the stopped run is replaced, and that
    // is said), not a quarantine.
    s.declare(B, UUID_B);
    let lost = s.mint(B, UUID_B).expect("a token for B");
    let boot = s.dir.0.join("boot");
    let s = s.restart(&boot, &[]);
    let again = s.mint(B, UUID_B).expect("a new token after the restart");
    assert_ne!(lost, again);
    assert!(!s.quarantined(B), "{}", s.machine(B));
    assert!(
        s.security(B)
            .iter()
            .any(|r| r.contains("has stopped since: replaced")),
        "{}",
        s.machine(B)
    );
    s.enrol(B, UUID_B, &again).expect("the new token enrols");
}

#[test]
fn a_token_only_enrols_the_machine_it_was_minted_for() {
    if !has_curl("a_token_only_enrols_the_machine_it_was_minted_for") {
        return;
    }
    let s = Server::start(&[]);
    s.declare(A, UUID_A);
    s.declare(B, UUID_B);
    let token_a = s.mint(A, UUID_A).unwrap();
    let err = s
        .enrol(B, UUID_B, &token_a)
        .expect_err("B enrolled with A's token");
    assert!(
        err.contains("403") && err.contains("not minted for this machine"),
        "{err}"
    );
    for mac in [A, B] {
        assert!(
            s.security(mac)
                .iter()
                .any(|r| r.contains(&format!("enrolment as {B} with the token minted for {A}"))),
            "{mac}: {}",
            s.machine(mac)
        );
    }
    // That voided A's token (a refused enrolment presented it): A's next boot script
    // gets a new one, not a quarantine. The right MAC with another UUID is refused too.
    assert!(s.token_view(A)["voided"].is_string(), "{}", s.machine(A));
    let token_a = s.mint(A, UUID_A).expect("a new token for A");
    assert!(!s.quarantined(A));
    let err = s
        .enrol(A, UUID_B, &token_a)
        .expect_err("wrong uuid enrolled");
    assert!(err.contains("another uuid"), "{err}");
    // An expired token: refused, and the node is told to reboot for a new one.
    let s = Server::start(&["--token-ttl", "1s"]);
    s.declare(A, UUID_A);
    let t = s.mint(A, UUID_A).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let err = s.enrol(A, UUID_A, &t).expect_err("expired token enrolled");
    assert!(err.contains("401") && err.contains("expired"), "{err}");
    let m = s.machine(A);
    assert!(m.to_string().contains("token expired"), "error event: {m}");
}

#[test]
fn a_certificate_reaches_only_its_own_machine() {
    if !has_curl("a_certificate_reaches_only_its_own_machine") {
        return;
    }
    let s = Server::start(&[]);
    s.declare(A, UUID_A);
    s.declare(B, UUID_B);
    let a = s.enrol(A, UUID_A, &s.mint(A, UUID_A).unwrap()).unwrap();
    let (code, body) = call(&a, "GET", &format!("/v1/config?mac={B}"), None);
    assert_eq!(code, 403, "A's certificate read B's config: {body}");
    assert!(
        body.to_string().contains("asked for the config of"),
        "{body}"
    );
    let (code, body) = call(&a, "POST", "/v1/events", Some(event(B, UUID_B, "applied")));
    assert_eq!(code, 403, "A's certificate reported as B: {body}");
    assert!(s.security(A).len() >= 2, "{}", s.machine(A));
    assert!(
        s.security(B)
            .iter()
            .any(|r| r.contains("asked for the config")),
        "{}",
        s.machine(B)
    );
    // B's timeline holds no event from A, but the attempt, naming A.
    let b = s.machine(B);
    assert!(!b.to_string().contains("\"applied\""), "{b}");
    assert!(
        s.security(B)
            .iter()
            .any(|r| r.contains(&format!("certificate of {A}"))
                && r.contains("reported an event as")),
        "{b}"
    );
}

#[test]
fn operator_endpoints_refuse_anonymous_node_certificates_and_plain_http() {
    if !has_curl("operator_endpoints_refuse_anonymous_node_certificates_and_plain_http") {
        return;
    }
    let s = Server::start(&[]);
    s.declare(A, UUID_A);
    let node = s.enrol(A, UUID_A, &s.mint(A, UUID_A).unwrap()).unwrap();
    let decl = json!({"uuid": UUID_A, "config": {"apiVersion": "plinth/v1"}}).to_string();
    let endpoints: &[(&str, String)] = &[
        ("GET", "/v1/machines".into()),
        ("GET", format!("/v1/machines/{A}")),
        ("PUT", format!("/v1/machines/{A}")),
        ("POST", format!("/v1/machines/{A}/poweroff")),
        ("POST", format!("/v1/machines/{A}/reboot")),
        ("POST", format!("/v1/machines/{A}/release")),
        (
            "GET",
            format!("/v1/machines/{A}/logs/0f0f0f0f-0000-4000-8000-000000000001"),
        ),
    ];
    let before = s.security(A).len();
    for (method, path) in endpoints {
        let url = format!("{}{path}", s.https);
        let (code, body) = s.curl(&["-X", method, "--data-binary", &decl, &url]);
        assert_eq!(code, 401, "anonymous {method} {path}: {body}");
        let (code, body) = s.curl(&["-X", method, "-H", "Authorization: Bearer admin.0000", &url]);
        assert_eq!(code, 401, "forged token {method} {path}: {body}");
        let bytes = (*method != "GET").then(|| decl.clone().into_bytes());
        let (code, _) = rt()
            .block_on(node.request(method, path, bytes, Duration::from_secs(20)))
            .unwrap();
        assert_eq!(code, 401, "node certificate {method} {path}");
        let url = format!("{}{path}", s.http);
        let (code, body) = s.curl(&[
            "-X",
            method,
            "-H",
            &format!("Authorization: Bearer {}", s.operator),
            &url,
        ]);
        assert_eq!(code, 404, "plain HTTP {method} {path}: {body}");
    }
    // Node endpoints need a node's certificate: anonymous calls are refused.
    for (method, path) in [
        ("GET", "/v1/config"),
        ("POST", "/v1/events"),
        ("POST", "/v1/logs"),
        ("POST", "/v1/action"),
        ("POST", "/v1/renew"),
    ] {
        let (code, body) = s.curl(&["-X", method, &format!("{}{path}", s.https)]);
        assert_eq!(code, 401, "anonymous {method} {path}: {body}");
    }
    // Nothing changed: no action queued, the config as declared.
    let m = s.machine(A);
    assert!(m["pendingAction"].is_null(), "{m}");
    assert_eq!(m["config"]["hostname"], "node-0a", "{m}");
    // Recorded: each node-certificate attempt on A's timeline, every refusal audited.
    assert_eq!(s.security(A).len() - before, endpoints.len(), "{m}");
    let audit = s.audit();
    let refused = |who: &str| {
        audit
            .lines()
            .filter(|l| l.contains(who) && l.contains("refused"))
            .count()
    };
    assert!(
        refused("\"who\":\"anonymous\"") >= endpoints.len() * 3 + 5,
        "{audit}"
    );
    assert!(
        refused(&format!("\"who\":\"node:{A}\"")) >= endpoints.len(),
        "{audit}"
    );
    // Revoking an operator is deleting its file.
    std::fs::remove_file(s.data().join("operators/admin")).unwrap();
    assert_eq!(s.op("GET", "/v1/machines", None).0, 401);
}

#[test]
fn a_node_refuses_a_server_outside_its_pin() {
    if !has_curl("a_node_refuses_a_server_outside_its_pin") {
        return;
    }
    let s = Server::start(&[]);
    let other = Server::start(&[]);
    s.declare(A, UUID_A);
    let token = s.mint(A, UUID_A).unwrap();
    // The node holds s's pin; `other` (another CA) answers at the URL it uses.
    let id = Identity {
        mac: A.into(),
        uuid: UUID_A.into(),
        serial: None,
        boot_id: "0f0f0f0f-0000-4000-8000-000000000001".into(),
    };
    let fresh = enroll::fresh_key(A).unwrap();
    let wrong = Client::new(Url::parse(&other.https).unwrap(), &s.pin).unwrap();
    let err = rt()
        .block_on(enroll::enroll(&wrong, &id, &token, &fresh))
        .expect_err("enrolled with a server outside the pin")
        .to_string();
    assert!(err.contains("does not chain to the pinned CA"), "{err}");
    // The impostor never saw the token: no enrolment was even attempted there.
    assert!(!other.audit().contains("/v1/enroll"), "{}", other.audit());
    // (The impostor logs the refused handshake after the node has hung up: wait for it.)
    let mut log = String::new();
    for _ in 0..50 {
        log = other.log();
        if log.contains("TLS handshake refused") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(log.contains("TLS handshake refused"), "{log}");
    // The token is still good for the real server.
    assert!(s.enrol(A, UUID_A, &token).is_ok());
}

#[test]
fn certificates_renew_and_the_old_one_stops_working() {
    if !has_curl("certificates_renew_and_the_old_one_stops_working") {
        return;
    }
    let s = Server::start(&["--cert-lifetime", "60s"]);
    s.declare(A, UUID_A);
    let old = s.enrol(A, UUID_A, &s.mint(A, UUID_A).unwrap()).unwrap();
    let fresh = enroll::fresh_key(A).unwrap();
    let issued = rt().block_on(enroll::renew(&old, &fresh)).unwrap();
    assert_eq!(
        issued.not_after - issued.renew_at,
        30,
        "renew at half-life: {issued:?}"
    );
    let new = old
        .with_identity(&s.pin, &issued.certificate, fresh.key_der)
        .unwrap();
    assert_eq!(call(&new, "GET", "/v1/config", None).0, 200);
    assert_eq!(
        call(&old, "GET", "/v1/config", None).0,
        401,
        "the renewed certificate still works"
    );
    let m = s.machine(A);
    let certs = m["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2, "{m}");
    assert!(
        certs[0]["revoked"]
            .as_str()
            .unwrap()
            .starts_with("renewed as"),
        "{m}"
    );
    // A certificate past its life is refused by the TLS layer's own check.
    let s = Server::start(&["--cert-lifetime", "1s"]);
    s.declare(A, UUID_A);
    let node = s.enrol(A, UUID_A, &s.mint(A, UUID_A).unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let r = rt().block_on(node.request("GET", "/v1/config", None, Duration::from_secs(10)));
    assert!(
        r.is_err() || r.as_ref().unwrap().0 == 401,
        "expired certificate accepted: {r:?}"
    );
}

#[test]
fn the_token_is_never_stored_logged_or_answered() {
    if !has_curl("the_token_is_never_stored_logged_or_answered") {
        return;
    }
    let s = Server::start(&[]);
    s.declare(A, UUID_A);
    s.declare(B, UUID_B);
    let token = s.mint(A, UUID_A).unwrap();
    // Every path a token takes: enrolment, a replay, a foreign MAC, a bad body.
    let node = s.enrol(A, UUID_A, &token).unwrap();
    let _ = s.enrol(A, UUID_A, &token);
    let _ = s.enrol(B, UUID_B, &token);
    let url = format!("{}/v1/enroll", s.https);
    let bad = json!({"apiVersion": "plinth/v1", "token": token, "mac": "nope"}).to_string();
    let (code, body) = s.curl(&["-X", "POST", "--data-binary", &bad, &url]);
    assert_eq!(code, 400);
    assert!(!body.contains(&token), "{body}");
    let mut answers = String::new();
    for path in [
        "/v1/machines".to_string(),
        format!("/v1/machines/{A}"),
        format!("/v1/machines/{B}"),
    ] {
        answers.push_str(&s.op("GET", &path, None).1.to_string());
    }
    answers.push_str(&call(&node, "GET", "/v1/config", None).1.to_string());
    assert!(!answers.contains(&token), "an API answer holds the token");
    assert_no_token(&s.data(), &token);
    let log = std::fs::read_to_string(s.dir.0.join("server.log")).unwrap();
    assert!(
        !log.contains(&token),
        "the server's log holds the token:\n{log}"
    );
    assert!(log.contains("minted an enrolment token"), "{log}");
}

/// Fails if any file under `dir` holds `token`.
pub fn assert_no_token(dir: &Path, token: &str) {
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
    assert!(files >= 3, "expected store files under {}", dir.display());
}

/// The serials of a machine's certificates that are neither revoked nor superseded.
fn valid_serials(s: &Server, mac: &str) -> Vec<String> {
    s.machine(mac)["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["revoked"].is_null())
        .map(|c| c["serial"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_renewal_needs_a_certificate_still_valid_when_the_new_one_is_issued() {
    if !has_curl("a_renewal_needs_a_certificate_still_valid_when_the_new_one_is_issued") {
        return;
    }
    let s = Server::start(&["--cert-lifetime", "60s"]);
    s.declare(A, UUID_A);
    let first = s.enrol(A, UUID_A, &s.mint(A, UUID_A).unwrap()).unwrap();
    // A new boot enrols: the first boot's certificate is superseded, and renewing with
    // it is refused without touching the new one.
    let token = s.mint(A, UUID_A).unwrap();
    let second = s.enrol(A, UUID_A, &token).unwrap();
    let err = rt()
        .block_on(enroll::renew(&first, &enroll::fresh_key(A).unwrap()))
        .expect_err("renewed with a superseded certificate");
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(
        call(&second, "GET", "/v1/config", None).0,
        200,
        "a refused renewal revoked the newer certificate"
    );
    assert_eq!(valid_serials(&s, A).len(), 1, "{}", s.machine(A));
    // Renewals racing with one certificate: one wins; the others present a certificate
    // revoked by then and are refused, and the winner's certificate is the only valid one.
    let start = std::sync::Arc::new(std::sync::Barrier::new(12));
    let racers: Vec<_> = (0..12)
        .map(|_| {
            let c = second.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                let fresh = enroll::fresh_key(A).unwrap();
                let rt = rt();
                start.wait();
                rt.block_on(enroll::renew(&c, &fresh))
                    .map(|i| (i, fresh.key_der))
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "renewals with one certificate: {results:?}");
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(r.contains("401"), "{r}");
    }
    let (issued, key) = won[0];
    assert_eq!(
        valid_serials(&s, A),
        [issued.serial.as_str()],
        "{}",
        s.machine(A)
    );
    let renewed = second
        .with_identity(&s.pin, &issued.certificate, key.clone())
        .unwrap();
    assert_eq!(call(&renewed, "GET", "/v1/config", None).0, 200);
    // In quarantine (a replay of the spent token) no renewal is issued.
    assert!(s.enrol(A, UUID_A, &token).is_err(), "replay accepted");
    assert!(s.quarantined(A));
    let err = rt()
        .block_on(enroll::renew(&renewed, &enroll::fresh_key(A).unwrap()))
        .expect_err("renewed in quarantine");
    assert!(err.to_string().contains("401"), "{err}");
    assert!(valid_serials(&s, A).is_empty(), "{}", s.machine(A));
}

#[test]
fn a_refused_enrolment_voids_its_token_and_the_next_boot_gets_a_new_one() {
    if !has_curl("a_refused_enrolment_voids_its_token_and_the_next_boot_gets_a_new_one") {
        return;
    }
    let s = Server::start(&[]);
    s.declare(A, UUID_A);
    // A's token with another UUID: refused, and the token is void.
    let t1 = s.mint(A, UUID_A).unwrap();
    let err = s.enrol(A, UUID_B, &t1).expect_err("another uuid enrolled");
    assert!(err.contains("403") && err.contains("another uuid"), "{err}");
    assert!(s.token_view(A)["spentAt"].is_u64(), "{}", s.machine(A));
    // Presented again it is refused, without quarantine: it never bought a certificate.
    let err = s.enrol(A, UUID_A, &t1).expect_err("a void token enrolled");
    assert!(err.contains("403") && err.contains("void"), "{err}");
    assert!(!s.quarantined(A), "{}", s.machine(A));
    // The next boot's script gets a new token: no quarantine for the refused node.
    let t2 = s
        .mint(A, UUID_A)
        .expect("a new token after a refused enrolment");
    assert!(!s.quarantined(A), "{}", s.machine(A));
    // A CSR the server cannot sign: the same.
    let mut body = enroll_body(A, UUID_A, &t2);
    body["csr"] =
        json!("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n");
    let (code, answer) = s.enroll_raw(&body.to_string());
    assert_eq!(code, 400, "{answer}");
    let t3 = s.mint(A, UUID_A).expect("a new token after a bad CSR");
    assert!(!s.quarantined(A), "{}", s.machine(A));
    // A body the server cannot read (no bootId) but holding the token: the same.
    let mut body = enroll_body(A, UUID_A, &t3);
    body.as_object_mut().unwrap().remove("bootId");
    let (code, answer) = s.enroll_raw(&body.to_string());
    assert_eq!(code, 400, "{answer}");
    let t4 = s
        .mint(A, UUID_A)
        .expect("a new token after a malformed enrolment");
    assert!(!s.quarantined(A), "{}", s.machine(A));
    // Each voiding is on the timeline, and the fresh token enrols.
    let m = s.machine(A).to_string();
    assert_eq!(m.matches("token is void").count(), 3, "{m}");
    assert!(s.enrol(A, UUID_A, &t4).is_ok());
    assert!(!s.quarantined(A));
}

/// `n` GETs of `path_and_query` on the plain-HTTP listener, each on its own connection;
/// the status lines.
fn raw_gets(s: &Server, paths: &[String]) -> Vec<String> {
    use std::io::{Read, Write};
    let addr = s.http.trim_start_matches("http://").to_string();
    paths
        .iter()
        .map(|p| {
            let mut c = std::net::TcpStream::connect(&addr).unwrap();
            write!(
                c,
                "GET {p} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out).unwrap();
            out.lines().next().unwrap_or("").to_string()
        })
        .collect()
}

#[test]
fn junk_from_anyone_makes_no_records_and_keeps_security_events() {
    if !has_curl("junk_from_anyone_makes_no_records_and_keeps_security_events") {
        return;
    }
    // Discovery off: no MAC nobody declared makes a record (tests/tests/abuse.rs floods
    // it on, where records are bounded instead).
    let s = Server::start(&["--max-discovered", "0"]);
    s.declare(A, UUID_A);
    s.declare(B, UUID_B);
    // A's real security event: a second mint, quarantine.
    s.mint(A, UUID_A).unwrap();
    assert_eq!(s.mint(A, UUID_A), None);
    let real = |s: &Server| {
        s.security(A)
            .iter()
            .any(|r| r.contains("second token asked"))
    };
    assert!(real(&s), "{}", s.machine(A));
    // 600 enrolments naming A with tokens this server never minted.
    let anon = s.anon();
    let r = rt();
    for i in 0..600 {
        let body = json!({"apiVersion": "plinth/v1", "token": format!("{i:064x}"), "mac": A,
            "uuid": UUID_A, "bootId": "0f0f0f0f-0000-4000-8000-000000000001", "csr": "x"});
        let (code, _) = r
            .block_on(anon.request(
                "POST",
                "/v1/enroll",
                Some(body.to_string().into_bytes()),
                Duration::from_secs(20),
            ))
            .unwrap();
        assert_eq!(code, 403);
    }
    assert!(
        real(&s),
        "junk trimmed A's security event: {}",
        s.machine(A)
    );
    // All of them are in the audit trail.
    let audit = s.audit();
    assert!(
        audit
            .lines()
            .filter(|l| l.contains("POST /v1/enroll") && l.contains("refused"))
            .count()
            >= 600
    );
    // 600 boot scripts asked for B with UUIDs that are not its own: one security event,
    // counted, not 600.
    let paths: Vec<String> = (0..600)
        .map(|i| format!("/boot.ipxe?mac={B}&uuid=0badc0de-0000-4000-8000-{i:012x}"))
        .collect();
    assert!(raw_gets(&s, &paths).iter().all(|l| l.contains(" 200 ")));
    let b = s.machine(B);
    let sec: Vec<_> = b["boots"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["events"].as_array().unwrap().clone())
        .filter(|e| e["type"] == "security")
        .collect();
    assert_eq!(sec.len(), 1, "{b}");
    assert_eq!(sec[0]["details"]["count"], 600, "{b}");
    // Enrolments and boot scripts for MACs nobody declared make no machine records.
    for i in 0..20 {
        let mac = format!("02:00:00:00:01:{i:02x}");
        let (code, _) = s.enroll_raw(&enroll_body(&mac, UUID_A, &format!("{i:064x}")).to_string());
        assert_eq!(code, 403);
        assert_eq!(s.mint(&mac, UUID_A), None);
    }
    let (code, list) = s.op("GET", "/v1/machines", None);
    assert_eq!(code, 200);
    let macs: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mac"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(macs, [A, B], "{list}");
}

/// The permission bits of `p`.
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn the_data_directory_is_private_and_the_first_token_is_flagged() {
    if !has_curl("the_data_directory_is_private_and_the_first_token_is_flagged") {
        return;
    }
    let s = Server::start(&[]);
    s.declare(A, UUID_A);
    let node = s.enrol(A, UUID_A, &s.mint(A, UUID_A).unwrap()).unwrap();
    let lines = json!({"bootId": "0f0f0f0f-0000-4000-8000-000000000001",
                       "lines": [{"source": "console", "text": "hello"}]});
    assert_eq!(call(&node, "POST", "/v1/logs", Some(lines)).0, 200);
    assert_eq!(s.curl(&[&format!("{}/nope", s.http)]).0, 404);
    // Every directory 0700, every file 0600 but the CA's certificate, no temp file left.
    let mut todo = vec![s.data()];
    let mut seen = Vec::new();
    while let Some(d) = todo.pop() {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        for e in std::fs::read_dir(&d).unwrap().filter_map(|e| e.ok()) {
            let p = e.path();
            seen.push(p.strip_prefix(s.data()).unwrap().display().to_string());
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().unwrap() == "ca.crt" {
                assert_eq!(mode(&p), 0o644, "{}", p.display());
            } else {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
                assert!(!p.to_string_lossy().contains(".tmp"), "{}", p.display());
            }
        }
    }
    for f in [
        "ca.key",
        "ca.crt",
        "operator-token",
        "operators/admin",
        "audit.jsonl",
        "store/store.redb",
        "secrets",
    ] {
        assert!(seen.iter().any(|p| p == f), "{f} not in {seen:?}");
    }
    // The first operator's token in clear is flagged at every start while it is there.
    let warning = "holds the first operator's token in clear";
    assert_eq!(s.log().matches(warning).count(), 1, "{}", s.log());
    let boot = s.dir.0.join("boot");
    let s = s.restart(&boot, &[]);
    assert_eq!(s.log().matches(warning).count(), 2, "{}", s.log());
    // Once the installer has taken it away, no more warning.
    std::fs::remove_file(s.data().join("operator-token")).unwrap();
    let s = s.restart(&boot, &[]);
    assert_eq!(s.log().matches(warning).count(), 2, "{}", s.log());
    assert_eq!(s.op("GET", "/v1/machines", None).0, 200);
    // A --data open to group or others is refused, naming it and what to do.
    let t = TempDir::new("plinth-data-mode");
    let data = t.0.join("data");
    std::fs::create_dir(&data).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let o = Command::new(plinth_tests::workspace().join("target/release/plinth-server"))
        .args(["--listen", "127.0.0.1:0", "--boot-dir"])
        .arg(&boot)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a group-readable --data was accepted");
    assert!(
        err.contains(&data.display().to_string()) && err.contains("chmod 700"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(&data).unwrap().next().is_none(),
        "a refused start wrote into {}",
        data.display()
    );
}

#[test]
fn the_boot_script_mints_only_on_get_and_brackets_ipv6_hosts() {
    if !has_curl("the_boot_script_mints_only_on_get_and_brackets_ipv6_hosts") {
        return;
    }
    let s = Server::start(&["--listen-sntp", "127.0.0.1:0"]);
    s.declare(A, UUID_A);
    let url = format!("{}/boot.ipxe?mac={A}&uuid={UUID_A}", s.http);
    // HEAD mints nothing (iPXE uses GET): refused, recorded, no token outstanding.
    let (code, _) = s.curl(&["-I", &url]);
    assert_eq!(code, 405);
    assert!(s.token_view(A).is_null(), "{}", s.machine(A));
    assert!(s.audit().contains("\"request\":\"HEAD /boot.ipxe\""));
    let token = s.mint(A, UUID_A).expect("a token after a HEAD");
    assert!(!s.quarantined(A));
    assert!(s.enrol(A, UUID_A, &token).is_ok());
    // Reached as an IPv6 literal, the script names the server and the SNTP address in
    // brackets.
    let https_port = s.https.rsplit(':').next().unwrap();
    let sntp_port = s.sntp.as_deref().unwrap().rsplit(':').next().unwrap();
    let (code, script) = s.curl(&["-H", "Host: [::1]:8080", &format!("{}/boot.ipxe", s.http)]);
    assert_eq!(code, 200, "{script}");
    assert!(
        script.contains(&format!("set plinth-server https://[::1]:{https_port}\n")),
        "{script}"
    );
    assert!(
        script.contains(&format!("set plinth-ntp [::1]:{sntp_port}\n")),
        "{script}"
    );
}

#[test]
fn a_csr_for_a_key_other_than_p256_is_refused() {
    let test = "a_csr_for_a_key_other_than_p256_is_refused";
    if !has_curl(test) {
        return;
    }
    if Command::new("openssl").arg("version").output().is_err() {
        plinth_tests::skip(
            test,
            "openssl (which makes the P-384 CSRs) is not installed",
        );
        return;
    }
    let s = Server::start(&[]);
    s.declare(A, UUID_A);
    // P-384 keys, signed with SHA-256 (the signature algorithm P-256 CSRs use, so the
    // algorithm alone does not tell) and with SHA-384.
    for digest in ["-sha256", "-sha384"] {
        let o = Command::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
            ])
            .args([digest, "-nodes", "-subj", "/CN=x", "-keyout", "/dev/null"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let csr = String::from_utf8(o.stdout).unwrap();
        assert!(csr.contains("BEGIN CERTIFICATE REQUEST"), "{csr}");
        let token = s.mint(A, UUID_A).expect("a token");
        let mut body = enroll_body(A, UUID_A, &token);
        body["csr"] = json!(csr);
        let (code, answer) = s.enroll_raw(&body.to_string());
        assert_eq!(code, 400, "P-384 {digest}: {answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains("P-256"),
            "{answer}"
        );
    }
    assert!(valid_serials(&s, A).is_empty(), "{}", s.machine(A));
}

#[test]
fn every_refusal_is_a_line_of_the_audit_trail() {
    if !has_curl("every_refusal_is_a_line_of_the_audit_trail") {
        return;
    }
    let s = Server::start(&[]);
    s.declare(A, UUID_A);
    let node = s.enrol(A, UUID_A, &s.mint(A, UUID_A).unwrap()).unwrap();
    let raw = |method: &str, path: &str, body: Vec<u8>| {
        rt().block_on(node.request(method, path, Some(body), Duration::from_secs(20)))
            .unwrap()
            .0
    };
    let big = |n: usize| vec![b' '; n];
    let mut expect: Vec<(&str, u16)> = Vec::new();
    // Enrolment: a body that is not JSON, and one too large.
    assert_eq!(s.enroll_raw("{").0, 400);
    expect.push(("POST /v1/enroll", 400));
    let url = format!("{}/v1/enroll", s.https);
    let large = "x".repeat(20 * 1024);
    assert_eq!(
        s.curl(&["-X", "POST", "--data-binary", &large, &url]).0,
        413
    );
    expect.push(("POST /v1/enroll", 413));
    // Renewal, events and logs from a valid node certificate.
    assert_eq!(
        raw("POST", "/v1/renew", b"{\"csr\":\"nope\"}".to_vec()),
        400
    );
    expect.push(("POST /v1/renew", 400));
    assert_eq!(raw("POST", "/v1/renew", big(20 * 1024)), 413);
    expect.push(("POST /v1/renew", 413));
    assert_eq!(raw("POST", "/v1/events", b"{}".to_vec()), 400);
    expect.push(("POST /v1/events", 400));
    assert_eq!(raw("POST", "/v1/events", big(70 * 1024)), 413);
    expect.push(("POST /v1/events", 413));
    let sec = event(A, UUID_A, "security").to_string().into_bytes();
    assert_eq!(raw("POST", "/v1/events", sec), 400);
    expect.push(("POST /v1/events", 400));
    assert_eq!(raw("POST", "/v1/logs", b"{}".to_vec()), 400);
    expect.push(("POST /v1/logs", 400));
    assert_eq!(raw("POST", "/v1/logs", big(300 * 1024)), 413);
    expect.push(("POST /v1/logs", 413));
    // An operator's unknown verb, an unknown path on each listener.
    assert_eq!(
        s.op("POST", &format!("/v1/machines/{A}/explode"), None).0,
        404
    );
    expect.push(("POST /v1/machines/52:54:00:00:00:0a/explode", 404));
    assert_eq!(s.curl(&[&format!("{}/nope", s.https)]).0, 404);
    expect.push(("GET /nope", 404));
    assert_eq!(s.curl(&[&format!("{}/nope", s.http)]).0, 404);
    expect.push(("GET /nope", 404));
    // A path of 20 000 characters is audited, cut short.
    let long = format!("/{}", "a".repeat(20_000));
    assert_eq!(s.curl(&[&format!("{}{long}", s.http)]).0, 404);
    let audit = s.audit();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (request, status) in &expect {
        let want = expect
            .iter()
            .filter(|e| e.0 == *request && e.1 == *status)
            .count();
        let got = lines
            .iter()
            .filter(|l| {
                l["request"] == *request
                    && l["outcome"]
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("refused: {status} "))
            })
            .count();
        assert_eq!(got, want, "{request} {status}:\n{audit}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["request"].as_str().unwrap().starts_with("GET /aaaa")),
        "{audit}"
    );
    for l in audit.lines() {
        assert!(l.len() < 2048, "an audit line of {} bytes", l.len());
    }
}

/// A node whose enrolment answer was lost (a reset connection, a server killed before
/// it answered) presents the spent token again with the same key, for the same boot:
/// it gets a certificate again (the earlier one revoked), and no quarantine. The same
/// token with another key is still a replay.
#[test]
fn an_enrolment_whose_answer_was_lost_is_answered_again_for_its_key() {
    let s = Server::start(&["--max-discovered", "0"]);
    s.declare(A, UUID_A);
    let token = s.mint(A, UUID_A).expect("a token");
    let id = Identity {
        mac: A.into(),
        uuid: UUID_A.into(),
        serial: None,
        boot_id: "0f0f0f0f-0000-4000-8000-0000000000aa".into(),
    };
    let fresh = enroll::fresh_key(A).unwrap();
    let anon = s.anon();
    let first = rt()
        .block_on(enroll::enroll(&anon, &id, &token, &fresh))
        .expect("enrolment");
    // The answer above is the one the node never saw: it asks again, same key.
    let again = rt()
        .block_on(enroll::enroll(&anon, &id, &token, &fresh))
        .expect("the same key again");
    assert_ne!(first.serial, again.serial);
    assert!(!s.quarantined(A), "{}", s.machine(A));
    assert_eq!(valid_serials(&s, A), vec![again.serial.clone()]);
    let node = anon
        .with_identity(&s.pin, &again.certificate, fresh.key_der.clone())
        .unwrap();
    assert_eq!(call(&node, "GET", "/v1/config", None).0, 200);
    let stale = anon
        .with_identity(&s.pin, &first.certificate, fresh.key_der.clone())
        .unwrap();
    assert_eq!(call(&stale, "GET", "/v1/config", None).0, 401);

    // Another boot with that key, or another key: a replay, and quarantine.
    let other_boot = Identity {
        boot_id: "0f0f0f0f-0000-4000-8000-0000000000bb".into(),
        ..id.clone()
    };
    let err = rt()
        .block_on(enroll::enroll(&anon, &other_boot, &token, &fresh))
        .expect_err("another boot accepted");
    assert!(err.to_string().contains("spent"), "{err}");
    assert!(s.quarantined(A));
    let (code, _) = s.op("POST", &format!("/v1/machines/{A}/release"), None);
    assert_eq!(code, 200);
    let token = s.mint(A, UUID_A).expect("a token after release");
    let fresh = enroll::fresh_key(A).unwrap();
    rt().block_on(enroll::enroll(&anon, &id, &token, &fresh))
        .expect("enrolment after release");
    let thief = enroll::fresh_key(A).unwrap();
    let err = rt()
        .block_on(enroll::enroll(&anon, &id, &token, &thief))
        .expect_err("another key accepted");
    assert!(err.to_string().contains("spent"), "{err}");
    assert!(s.quarantined(A));
}
