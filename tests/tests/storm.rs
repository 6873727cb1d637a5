//! The boot storm's load generator, small: every simulated machine goes through the
//! real protocol (script and token, enrolment, config, a dozen events, logs) against
//! real servers, and the servers' records show each step of each machine. `make bench`
//! runs it at 10,000 machines.
#![allow(clippy::unwrap_used)]

use plinth_tests::storm::{self, Fleet, Options};

/// Runs a storm of `machines` on `servers` and checks every machine's record on the
/// first server: its token spent, one certificate, the node's events of this boot and
/// its log lines.
fn storm_and_check(test: &str, machines: usize, servers: usize) {
    let o = Options {
        machines,
        in_flight: 25,
        servers,
        log_lines: 40,
    };
    let Some((fleet, _)) = Fleet::start(&o, test) else {
        return;
    };
    let report = storm::run(&o, &fleet);
    let text = report.text(&o);
    println!("{text}");
    assert_eq!(report.error_count(), 0, "{text}");
    assert_eq!(report.completed, machines, "{text}");
    assert_eq!(report.latencies["event"].len(), machines * 12, "{text}");
    assert_eq!(report.latencies["logs"].len(), machines * 2, "{text}");
    let server = &fleet.servers[0];
    for i in 0..machines {
        let (mac, _, _) = storm::machine(i);
        let m = server.machine(&mac);
        assert!(m["token"]["spentAt"].is_u64(), "{mac}: {m}");
        assert_eq!(m["certificates"].as_array().unwrap().len(), 1, "{mac}: {m}");
        assert!(m["quarantine"].is_null(), "{mac}: {m}");
        let boot = m["boots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["bootId"].as_str().is_some_and(|id| !id.is_empty()))
            .unwrap_or_else(|| panic!("{mac}: no boot: {m}"));
        let node_events = boot["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["source"] == "node")
            .count();
        assert_eq!(node_events, 12, "{mac}: {boot}");
        assert!(
            boot["kept"]["logBytes"].as_u64().unwrap() > 0,
            "{mac}: {boot}"
        );
    }
}

#[test]
fn a_small_storm_on_one_server_provisions_every_machine() {
    storm_and_check(
        "a_small_storm_on_one_server_provisions_every_machine",
        100,
        1,
    );
}

/// Each machine takes its script (and token) from one server and enrols, fetches its
/// config and reports to the other: the first server's records show all of it.
#[test]
fn a_small_storm_on_two_servers_on_etcd_provisions_every_machine() {
    storm_and_check(
        "a_small_storm_on_two_servers_on_etcd_provisions_every_machine",
        100,
        2,
    );
}
