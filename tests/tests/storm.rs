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
        kill_first_after: None,
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

/// `kill -9` of one of two servers on etcd in the middle of a storm: requests in flight
/// on it lose their answers (some after their write was committed), and the machines
/// make them again, on the server left, as nodes do. Every machine completes, none is
/// quarantined (a boot script lost with its server is not a second mint), and every
/// write a server acknowledged (each event, each log line) is in the store, once.
#[test]
fn a_server_killed_mid_storm_loses_no_machine_and_no_acknowledged_write() {
    let test = "a_server_killed_mid_storm_loses_no_machine_and_no_acknowledged_write";
    let machines = 300;
    let o = Options {
        machines,
        in_flight: 60,
        servers: 2,
        log_lines: 40,
        kill_first_after: Some(machines / 3),
    };
    let Some((mut fleet, _)) = Fleet::start(&o, test) else {
        return;
    };
    let report = storm::run(&o, &fleet);
    fleet.servers[0].sigkill_and_reap();
    let text = report.text(&o);
    println!("{text}");
    assert_eq!(report.killed_at, Some(machines / 3), "{text}");
    assert_eq!(report.error_count(), 0, "{text}");
    assert_eq!(report.completed, machines, "{text}");
    assert!(
        report.failovers > 0,
        "nothing went to the other server: {text}"
    );
    let b = &fleet.servers[1];
    let (mut replaced, mut repeats) = (0, 0);
    for i in 0..machines {
        let (mac, _, _) = storm::machine(i);
        let m = b.machine(&mac);
        assert!(m["quarantine"].is_null(), "{mac}: {m}");
        assert!(m["token"]["spentAt"].is_u64(), "{mac}: {m}");
        let valid = m["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["revoked"].is_null())
            .count();
        assert_eq!(valid, 1, "{mac}: {m}");
        let acked = &report.acked[&mac];
        assert_eq!(acked.events.len(), 12, "{mac}");
        let boot = m["boots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| {
                b["bootId"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("5707"))
            })
            .unwrap_or_else(|| panic!("{mac}: no boot: {m}"));
        // Each acknowledged event once: a repeat after a lost answer is not recorded twice.
        let mut seqs: Vec<u64> = boot["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["source"] == "node")
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, acked.events, "{mac}: {boot}");
        repeats += boot["kept"]["repeats"].as_u64().unwrap_or(0);
        replaced += b
            .events(&mac)
            .iter()
            .filter(|e| {
                e["details"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("has stopped since: replaced"))
            })
            .count();
        let boot_id = boot["bootId"].as_str().unwrap();
        let (code, log) = b.boot_log(&mac, boot_id);
        assert_eq!(code, 200, "{mac}: {log}");
        for k in 0..acked.log_lines {
            let line = storm::log_line(i, k);
            assert!(
                log.contains(&line),
                "{mac}: {line:?} acknowledged, not kept"
            );
        }
    }
    println!(
        "{replaced} boot scripts asked again after their server was killed; {repeats} events sent again and recorded once"
    );
}
