//! Several servers over one state: two real `plinth-server`s on one real etcd (Debian's
//! etcd-server, started here on loopback ports of its own, its data in a temporary
//! directory). What one server decides, the other sees; a token spent on one is spent
//! for both, even when the two race for it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use plinth_tests::etcd::{free_ports, Etcd};
use plinth_tests::server::{call, Server};
use plinth_tests::TempDir;

const A: &str = "52:54:00:00:00:2a";
const B: &str = "52:54:00:00:00:2b";
const UUID_A: &str = "6e4a2b1c-0000-4000-8000-00000000002a";
const UUID_B: &str = "6e4a2b1c-0000-4000-8000-00000000002b";

/// A server of the fleet on `store`, with the CA and operators' tokens in `ca_dir`,
/// shared by every server of the fleet (the CA key never goes into etcd).
fn server(store: &str, ca_dir: &Path) -> Server {
    let dir = TempDir::new("plinth-shared");
    let boot = plinth_tests::server::placeholder_boot(&dir.0);
    let ca = ca_dir.to_str().unwrap();
    let mut s = Server::start_in(
        dir,
        &boot,
        &["--store", store, "--ca-dir", ca, "--max-discovered", "0"],
    );
    s.operator = std::fs::read_to_string(ca_dir.join("operator-token"))
        .unwrap()
        .trim()
        .to_string();
    s
}

#[test]
fn two_servers_on_one_etcd_share_machines_and_tokens() {
    let Some(etcd) = Etcd::start("two_servers_on_one_etcd_share_machines_and_tokens") else {
        return;
    };
    let store = etcd.url();
    let shared = TempDir::new("plinth-ca");
    let ca_dir = shared.0.join("ca");
    let a = server(&store, &ca_dir);
    let b = server(&store, &ca_dir);
    assert_eq!(a.pin, b.pin, "one CA for both");
    assert!(
        !a.data().join("ca.key").exists(),
        "the CA is in --ca-dir only"
    );

    // Declared on A, seen on B.
    a.declare(A, UUID_A);
    let m = b.machine(A);
    assert_eq!(m["mac"].as_str(), Some(A), "{m}");

    // The iPXE script (and its token) from A; enrolment and config from B.
    let token = a.mint(A, UUID_A).expect("a token from A");
    let node = b.enrol(A, UUID_A, &token).expect("enrolment on B");
    let (code, cfg) = call(&node, "GET", "/v1/config", None);
    assert_eq!(code, 200, "{cfg}");
    assert!(
        a.machine(A)["token"]["spentAt"].is_u64(),
        "A sees the token spent"
    );

    // The same token replayed to A: refused as spent, and the machine quarantined on both.
    let err = a
        .enrol(A, UUID_A, &token)
        .expect_err("a replay to A accepted");
    assert!(err.contains("403") && err.contains("spent"), "{err}");
    assert!(b.quarantined(A), "B sees the quarantine A decided");

    // Two servers racing for one fresh token: exactly one wins.
    a.declare(B, UUID_B);
    let token = b.mint(B, UUID_B).expect("a token from B");
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| a.enrol(B, UUID_B, &token).map(|_| ()));
        let tb = s.spawn(|| b.enrol(B, UUID_B, &token).map(|_| ()));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!(
        ra.is_ok() as u8 + rb.is_ok() as u8,
        1,
        "one enrolment per token: A {ra:?}, B {rb:?}"
    );
    let lost = ra.err().or(rb.err()).unwrap();
    assert!(lost.contains("403") && lost.contains("spent"), "{lost}");
    assert!(
        a.quarantined(B),
        "a token used twice puts its machine in quarantine"
    );
}

#[test]
fn a_bad_or_unreachable_store_stops_the_start_and_makes_nothing() {
    let dir = TempDir::new("plinth-store-bad");
    let boot = plinth_tests::server::placeholder_boot(&dir.0);
    let bin = plinth_tests::workspace().join("target/release/plinth-server");
    let [port] = free_ports();
    for (store, says) in [
        ("redis://127.0.0.1:6379".to_string(), "--store"),
        ("etcd://127.0.0.1".to_string(), "--store"),
        (format!("etcd://127.0.0.1:{port}"), "etcd"),
    ] {
        let data = dir.0.join("data");
        let out = Command::new(&bin)
            .args(["--listen", "127.0.0.1:0", "--boot-dir"])
            .arg(&boot)
            .arg("--data")
            .arg(&data)
            .args(["--store", &store])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{store}: started");
        assert!(err.contains(says), "{store}: {err}");
        assert!(!data.exists(), "{store}: --data was made");
    }
}
