//! `plinth`: the runc command line, parsed here and handed to the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use plinth_runtime::container::{self, CreateOptions};
use plinth_runtime::logging;
use plinth_runtime::state::Root;

#[derive(Parser)]
#[command(
    name = "plinth",
    about = "A small, narrow, runc-compatible OCI runtime",
    disable_version_flag = true
)]
struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Log file (default: none; errors always go to stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Use systemd to manage cgroups (not supported: an error).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Print the version.
    #[arg(short = 'v', long = "version")]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(clap::Args, Clone)]
struct CreateArgs {
    /// Path to the bundle (default: the current directory).
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    /// Write the init's pid here.
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the pty master when process.terminal is true.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// Pass N extra fds (3, 4, ...) to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    /// Use MS_MOVE + chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Do not create a new session keyring.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Container id.
    id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal to a container's init (or all its processes).
    Kill {
        /// Send to all processes of the container.
        #[arg(long, short = 'a')]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped container (or, with --force, any).
    Delete {
        #[arg(long, short = 'f')]
        force: bool,
        id: String,
    },
    /// Create, start, wait and delete.
    Run {
        /// Do not wait for the container.
        #[arg(long, short = 'd')]
        detach: bool,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Write a default config.json.
    Spec {
        /// A config for an unprivileged user.
        #[arg(long)]
        rootless: bool,
        /// Where to write config.json.
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
    },
    /// List containers.
    List {
        /// table or json.
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        /// Ids only.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
}

fn opts(c: CreateArgs) -> CreateOptions {
    CreateOptions {
        id: c.id,
        bundle: c.bundle,
        pid_file: c.pid_file,
        console_socket: c.console_socket,
        preserve_fds: c.preserve_fds,
        no_pivot: c.no_pivot,
        no_new_keyring: c.no_new_keyring,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.version {
        println!("plinth version {}", env!("CARGO_PKG_VERSION"));
        println!(
            "commit: {}",
            option_env!("PLINTH_COMMIT").unwrap_or("unknown")
        );
        println!("spec: 1.2.0");
        return ExitCode::SUCCESS;
    }
    if let Err(e) = logging::init(cli.log.as_deref(), &cli.log_format, cli.debug) {
        eprintln!("plinth: {e}");
        return ExitCode::FAILURE;
    }
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            logging::error(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    if cli.systemd_cgroup {
        anyhow::bail!(
            "--systemd-cgroup: the systemd cgroup driver is not supported; use cgroupfs paths"
        );
    }
    let root = Root(cli.root.unwrap_or_else(Root::default_path));
    let Some(cmd) = cli.cmd else {
        anyhow::bail!("no command given; see plinth --help");
    };
    match cmd {
        Cmd::Create(c) => {
            container::create(&root, &opts(c))?;
        }
        Cmd::Start { id } => container::start(&root, &id)?,
        Cmd::State { id } => println!("{}", container::state_json(&root, &id)?),
        Cmd::Kill { all, id, signal } => {
            let sig = container::parse_signal(&signal)?;
            container::kill(&root, &id, sig, all)?
        }
        Cmd::Delete { force, id } => container::delete(&root, &id, force)?,
        Cmd::Run { detach, create } => {
            let code = container::run(&root, &opts(create), detach)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Cmd::Spec { rootless, bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                anyhow::bail!("{} exists already; remove it first", path.display());
            }
            let text = serde_json::to_string_pretty(&plinth_runtime::spec::default_spec(rootless))?;
            std::fs::write(&path, text + "\n")
                .map_err(|e| anyhow::anyhow!("write {}: {e}", path.display()))?;
        }
        Cmd::List { format, quiet } => {
            let all = container::list(&root)?;
            let mut out = std::io::stdout().lock();
            if quiet {
                for (st, _) in &all {
                    writeln!(out, "{}", st.id)?;
                }
            } else if format == "json" {
                let v: Vec<_> = all
                    .iter()
                    .map(|(st, s)| {
                        serde_json::json!({
                            "ociVersion": st.oci_version, "id": st.id,
                            "pid": if *s == plinth_runtime::state::Status::Stopped { 0 } else { st.pid },
                            "status": s.to_string(), "bundle": st.bundle, "rootfs": st.rootfs,
                            "created": st.created, "owner": st.owner,
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string(&v)?)?;
            } else if format == "table" {
                writeln!(
                    out,
                    "{:<12} {:<8} {:<10} {:<40} {:<30} OWNER",
                    "ID", "PID", "STATUS", "BUNDLE", "CREATED"
                )?;
                for (st, s) in &all {
                    let pid = if *s == plinth_runtime::state::Status::Stopped {
                        0
                    } else {
                        st.pid
                    };
                    writeln!(
                        out,
                        "{:<12} {:<8} {:<10} {:<40} {:<30} {}",
                        st.id,
                        pid,
                        s,
                        st.bundle.display(),
                        st.created,
                        st.owner
                    )?;
                }
            } else {
                anyhow::bail!("--format: {format:?} is not table or json");
            }
        }
    }
    Ok(0)
}
