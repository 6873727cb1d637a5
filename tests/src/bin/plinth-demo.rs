//! plinth-demo: `make demo`, the whole chain (see `plinth_tests::demo`).

use std::path::PathBuf;

use clap::Parser;

/// Builds the node image, starts the lab with a registry and plinth-server, PXE-boots
/// a machine that runs a container from the registry, and fetches its page from
/// outside the node. Needs root (network namespaces, qemu's tap).
#[derive(Parser)]
#[command(name = "plinth-demo")]
struct Args {
    /// Where plinth-init and plinth are (`make build` leaves them in target/dist).
    #[arg(long)]
    plinth_dir: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let dir = args.plinth_dir.unwrap_or_else(plinth_tests::demo::dist_dir);
    if let Err(e) = plinth_tests::demo::run(&dir) {
        eprintln!("demo failed at {e}");
        std::process::exit(1);
    }
}
