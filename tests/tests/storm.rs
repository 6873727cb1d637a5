//! The boot storm's load generator, small: every simulated machine goes through the
//! real protocol (script and token, enrolment, config, a dozen events, logs) against
//! real servers, and the servers' records show each step of each machine. `make bench`
//! runs it at 10,000 machines.
#![allow(clippy::unwrap_used)]

use plinth_tests::storm::{self, Fleet, Options};

/// Runs a storm of `machines` on `servers` (the first SIGKILLed before it when
/// `first_gone`) and checks every machine's record on the last server: its token spent,
/// one certificate, the node's events of this boot and its log lines. Returns the
/// requests that went on to another server.
fn storm_and_check(test: &str, machines: usize, servers: usize, first_gone: bool) -> usize {
    let o = Options {
        machines,
        in_flight: 25,
        servers,
        log_lines: 40,
    };
    let Some((mut fleet, _)) = Fleet::start(&o, test) else {
        return 0;
    };
    if first_gone {
        fleet.servers[0].sigkill_and_reap();
    }
    let report = storm::run(&o, &fleet);
    let text = report.text(&o);
    println!("{text}");
    assert_eq!(report.error_count(), 0, "{text}");
    assert_eq!(report.completed, machines, "{text}");
    assert_eq!(report.latencies["event"].len(), machines * 12, "{text}");
    assert_eq!(report.latencies["logs"].len(), machines * 2, "{text}");
    let server = fleet.servers.last().unwrap();
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
    report.failovers
}

#[test]
fn a_small_storm_on_one_server_provisions_every_machine() {
    let test = "a_small_storm_on_one_server_provisions_every_machine";
    assert_eq!(storm_and_check(test, 100, 1, false), 0, "failovers");
}

/// Each machine takes its script (and token) from one server and enrols, fetches its
/// config and reports to the other: the other server's records show all of it.
#[test]
fn a_small_storm_on_two_servers_on_etcd_provisions_every_machine() {
    let test = "a_small_storm_on_two_servers_on_etcd_provisions_every_machine";
    assert_eq!(storm_and_check(test, 100, 2, false), 0, "failovers");
}

/// The first server of two is gone (SIGKILL) before the machines come: the node's
/// client, given both (`plinth.server=A,B`), finds A refusing connections and goes on
/// to B, where every machine completes.
#[test]
fn machines_fail_over_to_the_server_that_is_left() {
    let test = "machines_fail_over_to_the_server_that_is_left";
    let failovers = storm_and_check(test, 50, 2, true);
    // Half the machines start their HTTPS requests at A (the other half's scripts came
    // from A, and they start at B): at least one failover each.
    assert!(failovers >= 25, "{failovers} failovers");
}
