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
use plinth_tests::server::{call, event, rt, Server};
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
    let s = Server::start(&[]);
    // An unknown machine gets a script, but no token.
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
    // The right MAC with another UUID is refused too.
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
    // B's timeline holds no event from A.
    let b = s.machine(B);
    assert!(!b.to_string().contains("\"applied\""), "{b}");
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
    let log = std::fs::read_to_string(other.dir.0.join("server.log")).unwrap();
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
