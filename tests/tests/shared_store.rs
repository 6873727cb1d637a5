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
const C: &str = "52:54:00:00:00:2c";
const UUID_C: &str = "6e4a2b1c-0000-4000-8000-00000000002c";

/// A server of the fleet on `store`, with the CA and operators' tokens in `ca_dir`,
/// shared by every server of the fleet (the CA key never goes into etcd).
fn server(store: &str, ca_dir: &Path) -> Server {
    server_with(store, ca_dir, &[])
}

/// [`server`], with `extra` arguments.
fn server_with(store: &str, ca_dir: &Path, extra: &[&str]) -> Server {
    let dir = TempDir::new("plinth-shared");
    let boot = plinth_tests::server::placeholder_boot(&dir.0);
    let ca = ca_dir.to_str().unwrap();
    let mut args = vec!["--store", store, "--ca-dir", ca, "--max-discovered", "0"];
    args.extend(extra);
    let mut s = Server::start_in(dir, &boot, &args);
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

/// `--advertise-tls A,B` names the fleet's servers: each boot script carries the list
/// (the node's `plinth.server=`), each server's certificate covers every name of it,
/// and a node given the list with A gone enrols and fetches its config from B. A list
/// with a URL that is not https is refused at start, naming the flag.
#[test]
fn the_fleet_is_advertised_as_a_list_and_nodes_fail_over() {
    let Some(etcd) = Etcd::start("the_fleet_is_advertised_as_a_list_and_nodes_fail_over") else {
        return;
    };
    let store = etcd.url();
    let shared = TempDir::new("plinth-ca");
    let ca_dir = shared.0.join("ca");
    // A's HTTPS port is held by nobody once chosen: A is a server that is down.
    let [gone, b_tls] = free_ports();
    let list = format!("https://127.0.0.1:{gone},https://localhost:{b_tls}");
    let b_listen_tls = format!("127.0.0.1:{b_tls}");
    let b = server_with(
        &store,
        &ca_dir,
        &["--listen-tls", &b_listen_tls, "--advertise-tls", &list],
    );
    b.declare(A, UUID_A);
    let (code, script) = b.curl(&[&format!("{}/boot.ipxe?mac={A}&uuid={UUID_A}", b.http)]);
    assert_eq!(code, 200, "{script}");
    assert!(
        script.contains(&format!("set plinth-server {list}\n")),
        "{script}"
    );
    let token = script
        .lines()
        .find_map(|l| l.strip_prefix("set plinth-token "))
        .expect("a token")
        .to_string();

    // The node's own client, given plinth.server= as the script set it.
    let urls = plinth_provisioner::node::client::parse_list(&list).unwrap();
    let anon = plinth_provisioner::node::client::Client::fleet(urls, &b.pin).unwrap();
    let rt = plinth_tests::server::rt();
    let fresh = plinth_provisioner::node::enroll::fresh_key(A).unwrap();
    let id = plinth_provisioner::node::enroll::Identity {
        mac: A.into(),
        uuid: UUID_A.into(),
        serial: None,
        boot_id: "5707aaaa-0000-4000-8000-000000000001".into(),
    };
    let issued = rt
        .block_on(plinth_provisioner::node::enroll::enroll(
            &anon, &id, &token, &fresh,
        ))
        .expect("enrolment through B");
    assert_eq!(anon.failovers(), 1, "one failover, from A to B");
    assert_eq!(anon.url().port, b_tls, "B is the server in use");
    let node = anon
        .with_identity(&b.pin, &issued.certificate, fresh.key_der)
        .unwrap();
    let (code, cfg) = call(&node, "GET", "/v1/config", None);
    assert_eq!(code, 200, "{cfg}");
    assert_eq!(node.failovers(), 0, "the session starts at B");

    // A list with a URL that is not https stops the start, naming the flag.
    let bin = plinth_tests::workspace().join("target/release/plinth-server");
    let boot = plinth_tests::server::placeholder_boot(&shared.0);
    let data = shared.0.join("bad-data");
    let out = Command::new(&bin)
        .args(["--listen", "127.0.0.1:0", "--boot-dir"])
        .arg(&boot)
        .arg("--data")
        .arg(&data)
        .args(["--advertise-tls", "https://a:1,http://b:2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--advertise-tls"), "{err}");
    assert!(!data.exists(), "a refused start leaves no data directory");
}

/// A boot script whose server was killed between minting and answering: the machine asks
/// another server, from the address the script went to, which finds the outstanding
/// token minted by a server that stopped and replaces it (a `security` event, no
/// quarantine). The same ask while the minting server runs, or from another address,
/// is a second mint: quarantine (while the minter runs, decided once its liveness mark
/// would have expired).
#[test]
fn a_token_of_a_stopped_server_is_replaced_and_one_of_a_live_server_is_a_second_mint() {
    let test = "a_token_of_a_stopped_server_is_replaced_and_one_of_a_live_server_is_a_second_mint";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let store = etcd.url();
    let shared = TempDir::new("plinth-ca");
    let ca_dir = shared.0.join("ca");
    let mut a = server(&store, &ca_dir);
    let b = server(&store, &ca_dir);
    a.declare(A, UUID_A);
    a.declare(B, UUID_B);

    // A runs: a second ask on B is a second mint.
    let _first = a.mint(A, UUID_A).expect("a token from A");
    let t0 = std::time::Instant::now();
    assert_eq!(b.mint(A, UUID_A), None, "a second token while A runs");
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(2),
        "B decided before A's mark could have expired: {:?}",
        t0.elapsed()
    );
    assert!(
        b.quarantined(A),
        "a second mint while A runs: {}",
        b.machine(A)
    );

    // A is killed after minting (its answer lost, as far as anyone knows).
    a.declare(C, UUID_C);
    let lost = a.mint(B, UUID_B).expect("a token from A");
    a.mint(C, UUID_C).expect("a token from A");
    a.sigkill_and_reap();
    // Asked again from another address than the script went to: not the machine's own
    // retry, so a second mint, A stopped or not.
    assert_eq!(b.mint_from(C, UUID_C, "127.0.0.2"), None);
    assert!(b.quarantined(C), "{}", b.machine(C));
    let again = b
        .mint(B, UUID_B)
        .expect("a new token from B once A has stopped");
    assert_ne!(lost, again);
    assert!(!b.quarantined(B), "{}", b.machine(B));
    let security = b.security(B);
    assert!(
        security
            .iter()
            .any(|r| r.contains("has stopped since: replaced")),
        "{security:?}"
    );
    let err = b
        .enrol(B, UUID_B, &lost)
        .expect_err("the replaced token still enrols");
    assert!(err.contains("403"), "{err}");
    b.enrol(B, UUID_B, &again).expect("the new token enrols");
}

/// Events and logs are kept `--keep-history` after they arrive, then the store drops
/// them by itself: etcd through leases (one per slot of a sixteenth of the time kept),
/// the embedded store at its first write after their time. The machine's record (its
/// certificates, its token) is not history and stays.
#[test]
fn history_goes_after_keep_history_on_etcd_and_on_the_embedded_store() {
    let test = "history_goes_after_keep_history_on_etcd_and_on_the_embedded_store";
    let embedded = Server::start(&["--keep-history", "2s"]);
    history_goes(&embedded, "embedded");
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let shared = TempDir::new("plinth-ca");
    let on_etcd = server_with(&etcd.url(), &shared.0.join("ca"), &["--keep-history", "2s"]);
    history_goes(&on_etcd, "etcd");
}

fn history_goes(s: &Server, store: &str) {
    let boot = "0f0f0f0f-0000-4000-8000-000000000001";
    s.declare(A, UUID_A);
    let token = s.mint(A, UUID_A).expect("a token");
    let node = s.enrol(A, UUID_A, &token).expect("enrolment");
    let line = "the first line of the boot";
    let batch = serde_json::json!({"bootId": boot, "lines": [{"source": "console", "text": line}]});
    assert_eq!(call(&node, "POST", "/v1/logs", Some(batch)).0, 200);
    let log = |s: &Server| s.boot_log(A, boot);
    assert!(log(s).1.contains(line), "{store}: {:?}", log(s));
    let node_seqs = |s: &Server| -> Vec<u64> {
        s.events(A)
            .iter()
            .filter(|e| e["source"] == "node")
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    // The node goes on reporting, one event a second: the first ones go, the last stay.
    let t0 = std::time::Instant::now();
    let mut seq = 0;
    loop {
        seq += 1;
        let mut ev = plinth_tests::server::event(A, UUID_A, "service");
        ev["seq"] = seq.into();
        assert_eq!(call(&node, "POST", "/v1/events", Some(ev)).0, 200);
        let seqs = node_seqs(s);
        assert!(
            seqs.contains(&seq),
            "{store}: the newest event went: {seqs:?}"
        );
        if !seqs.contains(&1) {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{store}: events kept past --keep-history 2s: {seqs:?}"
        );
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    // Kept at least the time asked (2 s), at most one slot (1 s) and a write later.
    assert!(seq >= 3, "{store}: gone after {seq} s");
    assert!(
        !log(s).1.contains(line),
        "{store}: the log outlived its time"
    );
    let m = s.machine(A);
    assert_eq!(
        m["certificates"].as_array().unwrap().len(),
        1,
        "{store}: {m}"
    );
    assert!(m["token"]["spentAt"].is_u64(), "{store}: {m}");
}

/// A boot retired (`--keep-boots`) with more events than etcd takes operations in one
/// transaction (128 by default): its keys go with one range delete each, and the next
/// boot's events are recorded.
#[test]
fn a_boot_of_many_events_is_retired_on_etcd() {
    let test = "a_boot_of_many_events_is_retired_on_etcd";
    let Some(etcd) = Etcd::start(test) else {
        return;
    };
    let shared = TempDir::new("plinth-ca");
    let s = server_with(&etcd.url(), &shared.0.join("ca"), &["--keep-boots", "1"]);
    s.declare(A, UUID_A);
    let boots = [
        "0f0f0f0f-0000-4000-8000-0000000000b1",
        "0f0f0f0f-0000-4000-8000-0000000000b2",
    ];
    for (n, boot) in boots.iter().enumerate() {
        let token = s.mint(A, UUID_A).expect("a token");
        let (node, _) = s.enrol_boot(A, UUID_A, &token, boot).expect("enrolment");
        let events = if n == 0 { 200 } else { 1 };
        for seq in 1..=events {
            let mut ev = plinth_tests::server::event(A, UUID_A, "service");
            ev["bootId"] = (*boot).into();
            ev["seq"] = seq.into();
            let (code, answer) = call(&node, "POST", "/v1/events", Some(ev));
            assert_eq!(code, 200, "boot {n}, event {seq}: {answer}");
        }
    }
    let kept: Vec<String> = s.machine(A)["boots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| !b["events"].as_array().unwrap().is_empty())
        .map(|b| b["bootId"].as_str().unwrap().to_string())
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(kept, [boots[1]], "the first boot's 200 events are not gone");
}
