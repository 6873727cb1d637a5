//! plinth-server: command-line parsing only; the server is plinth_provisioner::server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use plinth_provisioner::server::{self, Config};

#[derive(Parser)]
#[command(
    name = "plinth-server",
    about = "Serve the Plinth boot chain and record what nodes report"
)]
struct Cli {
    /// HTTP listen address (ADDR:PORT; port 0 picks a free one, printed at start).
    #[arg(long)]
    listen: SocketAddr,
    /// The directory `plinth-boot build` wrote (boot.ipxe, vmlinuz, initrd).
    #[arg(long)]
    boot_dir: PathBuf,
    /// Where the embedded store keeps its files.
    #[arg(long)]
    data: PathBuf,
    /// The URL nodes use to reach this server (default: the Host header of each request).
    #[arg(long)]
    advertise: Option<String>,
    /// Answer every `booted` event with a poweroff action.
    #[arg(long)]
    poweroff_after_boot: bool,
    /// Also serve the boot directory read-only over TFTP on this address (e.g. 0.0.0.0:69).
    #[arg(long)]
    tftp: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    server::check_data_dir(&cli.data)?;
    let cfg = Config {
        listen: cli.listen,
        boot_dir: cli.boot_dir,
        data: cli.data,
        advertise: cli.advertise,
        poweroff_after_boot: cli.poweroff_after_boot,
        tftp: cli.tftp,
    };
    server::serve(cfg, |addr, tftp| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "plinth-server listening on http://{addr}");
        if let Some(t) = tftp {
            let _ = writeln!(out, "plinth-server TFTP on {t}");
        }
        let _ = out.flush();
    })
    .context("plinth-server")
}
