//! `plinth`: the runc command line, parsed here and handed to the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use plinth_runtime::container::{self, CreateOptions};
use plinth_runtime::control;
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
    /// Run a new process in a running container.
    Exec {
        /// A runtime-spec process JSON file instead of the command and flags.
        #[arg(long, short = 'p')]
        process: Option<PathBuf>,
        /// Do not wait for the process.
        #[arg(long, short = 'd')]
        detach: bool,
        /// Allocate a pseudo-TTY (needs --console-socket).
        #[arg(long, short = 't')]
        tty: bool,
        /// Unix socket that receives the pty master.
        #[arg(long = "console-socket")]
        console_socket: Option<PathBuf>,
        /// Write the process's pid here.
        #[arg(long = "pid-file")]
        pid_file: Option<PathBuf>,
        /// Working directory in the container.
        #[arg(long)]
        cwd: Option<PathBuf>,
        /// Set an environment variable (KEY=VALUE).
        #[arg(long, short = 'e')]
        env: Vec<String>,
        /// UID[:GID] to run as.
        #[arg(long, short = 'u')]
        user: Option<String>,
        /// Additional gids.
        #[arg(long = "additional-gids", short = 'g')]
        additional_gids: Vec<u32>,
        /// Add a capability (bounding, effective and permitted sets).
        #[arg(long, short = 'c')]
        cap: Vec<String>,
        /// Set no_new_privs.
        #[arg(long = "no-new-privs")]
        no_new_privs: bool,
        /// Pass N extra fds (3, 4, ...).
        #[arg(long = "preserve-fds", default_value_t = 0)]
        preserve_fds: i32,
        /// Exec even into a paused container.
        #[arg(long = "ignore-paused")]
        ignore_paused: bool,
        /// SELinux label (not supported: refused when given).
        #[arg(long = "process-label")]
        process_label: Option<String>,
        /// AppArmor profile (not supported: refused when given).
        #[arg(long)]
        apparmor: Option<String>,
        id: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Print the processes of a container.
    Ps {
        /// table or json.
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
        id: String,
        /// Options passed to ps(1) for the table (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's resource limits.
    Update {
        /// A linux.resources JSON file, or - for stdin.
        #[arg(long, short = 'r')]
        resources: Option<PathBuf>,
        #[command(flatten)]
        flags: control::UpdateFlags,
        id: String,
    },
    /// Print a container's events (stats, oom) as JSON lines.
    Events {
        /// Print one stats event and exit.
        #[arg(long)]
        stats: bool,
        /// Time between stats events.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Print the runtime-spec features JSON.
    Features,
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
    if matches!(cmd, Cmd::Create(_) | Cmd::Run { .. } | Cmd::Exec { .. }) {
        // These put a process of ours into the container (CVE-2019-5736). The state
        // root is the read-only view's spare layer, so it must exist first.
        root.ensure()?;
        plinth_runtime::sealed::ensure_sealed(&root.0)?;
    }
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
        Cmd::Exec {
            process,
            detach,
            tty,
            console_socket,
            pid_file,
            cwd,
            env,
            user,
            additional_gids,
            cap,
            no_new_privs,
            preserve_fds,
            ignore_paused,
            process_label,
            apparmor,
            id,
            command,
        } => {
            if process_label.is_some() {
                anyhow::bail!("--process-label: SELinux labels are not supported by plinth");
            }
            if apparmor.is_some() {
                anyhow::bail!("--apparmor: AppArmor profiles are not supported by plinth");
            }
            let o = plinth_runtime::exec::ExecOptions {
                id,
                process,
                args: command,
                detach,
                tty,
                console_socket,
                pid_file,
                cwd,
                env,
                user,
                additional_gids,
                caps: cap,
                no_new_privs,
                preserve_fds,
                ignore_paused,
            };
            let code = plinth_runtime::exec::exec(&root, &o)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = control::pids(&root, &id)?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string(&pids)?),
                "table" => print_ps_table(&pids, &ps_args)?,
                f => anyhow::bail!("--format: {f:?} is not table or json"),
            }
        }
        Cmd::Pause { id } => control::pause(&root, &id)?,
        Cmd::Resume { id } => control::resume(&root, &id)?,
        Cmd::Update {
            resources,
            flags,
            id,
        } => {
            let json = match &resources {
                Some(p) if p.as_os_str() == "-" => {
                    let mut buf = vec![];
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
                    Some(buf)
                }
                Some(p) => Some(
                    std::fs::read(p)
                        .map_err(|e| anyhow::anyhow!("--resources {}: {e}", p.display()))?,
                ),
                None => None,
            };
            control::update(&root, &id, json.as_deref(), &flags)?;
        }
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            let every = control::parse_interval(&interval)?;
            control::events(&root, &id, every, stats, &mut std::io::stdout().lock())?;
        }
        Cmd::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&plinth_runtime::features::features())?
            );
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

/// `ps` in table form: ps(1) with the given options (default `-ef`), keeping the
/// header and the lines whose PID column is one of the container's, as runc does.
fn print_ps_table(pids: &[i32], args: &[String]) -> anyhow::Result<()> {
    let args: Vec<String> = if args.is_empty() {
        vec!["-ef".into()]
    } else {
        args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .map_err(|e| anyhow::anyhow!("run ps: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| anyhow::anyhow!("ps {}: no PID column in its output", args.join(" ")))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{header}")?;
    for l in lines {
        let pid = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            writeln!(stdout, "{l}")?;
        }
    }
    Ok(())
}
