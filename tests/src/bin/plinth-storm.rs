//! plinth-storm: the boot storm of `make bench` (see `plinth_tests::storm`).

use anyhow::{bail, Result};
use clap::Parser;

use plinth_tests::storm::{self, Fleet, Options};

/// Thousands of simulated machines provisioned over the real protocol against real
/// plinth-servers (`target/release/plinth-server`), side by side on this machine.
#[derive(Parser)]
#[command(name = "plinth-storm")]
struct Args {
    /// Machines provisioned (each declared in a generated --config-dir).
    #[arg(long, default_value_t = 10_000)]
    machines: usize,
    /// Machines in flight at once.
    #[arg(long, default_value_t = 500)]
    in_flight: usize,
    /// Servers: 1 on the embedded store, more on one etcd (Debian's etcd-server).
    #[arg(long, default_value_t = 1)]
    servers: usize,
    /// Log lines each machine streams.
    #[arg(long, default_value_t = 40)]
    log_lines: usize,
    /// SIGKILL the first server once this many machines have completed; the others go
    /// on against the servers left (needs --servers 2 or more).
    #[arg(long)]
    kill_first_after: Option<usize>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if a.machines == 0 || a.machines > 254 * 65536 {
        bail!("--machines: {} is not in 1..={}", a.machines, 254 * 65536);
    }
    if a.in_flight == 0 {
        bail!("--in-flight: must be at least 1");
    }
    if a.servers == 0 {
        bail!("--servers: must be at least 1");
    }
    if a.kill_first_after.is_some() && a.servers < 2 {
        bail!("--kill-first-after: needs --servers 2 or more, to have a server left");
    }
    let o = Options {
        machines: a.machines,
        in_flight: a.in_flight,
        servers: a.servers,
        log_lines: a.log_lines,
        kill_first_after: a.kill_first_after,
    };
    let Some((fleet, startup)) = Fleet::start(&o, "plinth-storm") else {
        bail!("etcd is not installed (make deps installs etcd-server)");
    };
    let mut report = storm::run(&o, &fleet);
    report.startup = startup;
    print!("{}", report.text(&o));
    // What an operator's browser waits for with the whole fleet on the server.
    match storm::fleet_page(&fleet.servers[0]) {
        Ok((took, bytes)) => println!(
            "the fleet page ({} machines) from server 0: {:.0} ms, {} KiB (best of 3)",
            o.machines,
            took.as_secs_f64() * 1e3,
            bytes / 1024
        ),
        Err(e) => bail!("the fleet page: {e}"),
    }
    if report.error_count() > 0 || report.completed != o.machines {
        bail!(
            "{} of {} machines completed, {} errors",
            report.completed,
            o.machines,
            report.error_count()
        );
    }
    Ok(())
}
