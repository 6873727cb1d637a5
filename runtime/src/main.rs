//! `plinth`: the runc command line, read by `cli` and handed to the library, one
//! call per command.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use cli::{Cli, Cmd, Parsed};
use plinth_runtime::container;
use plinth_runtime::control;
use plinth_runtime::logging;
use plinth_runtime::state::Root;

fn main() -> ExitCode {
    let cli = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(cli)) => cli,
        Ok(Parsed::Help(text)) => {
            // A closed stdout (`plinth --help | head -1`) is not an error worth a panic.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("plinth: {e}");
            // 2 for a usage error, as clap exited; 1 stays "the command failed".
            return ExitCode::from(2);
        }
    };
    if cli.version {
        println!("plinth version {}", env!("CARGO_PKG_VERSION"));
        println!(
            "commit: {}",
            option_env!("PLINTH_COMMIT").unwrap_or("unknown")
        );
        println!("spec: {}", plinth_runtime::features::SPEC_VERSION);
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
    if let Cmd::Exec {
        process_label,
        apparmor,
        ..
    } = &cmd
    {
        // Refused before the re-exec below, which would be wasted on them.
        if process_label.is_some() {
            anyhow::bail!("--process-label: SELinux labels are not supported by plinth");
        }
        if apparmor.is_some() {
            anyhow::bail!("--apparmor: AppArmor profiles are not supported by plinth");
        }
    }
    if matches!(cmd, Cmd::Create(_) | Cmd::Run { .. } | Cmd::Exec { .. }) {
        // These put a process of ours into the container (CVE-2019-5736). The state
        // root is the read-only view's spare layer: made first, if the view is tried.
        plinth_runtime::sealed::ensure_sealed(&root.0, || root.ensure())?;
    }
    match cmd {
        Cmd::Create(c) => {
            container::create(&root, &c)?;
        }
        Cmd::Start { id } => container::start(&root, &id)?,
        Cmd::State { id } => println!("{}", container::state_json(&root, &id)?),
        Cmd::Kill { all, id, signal } => {
            let sig = container::parse_signal(&signal)?;
            container::kill(&root, &id, sig, all)?
        }
        Cmd::Delete { force, id } => container::delete(&root, &id, force)?,
        Cmd::Run { run, create } => {
            let code = container::run(&root, &create, &run)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Cmd::Spec { rootless, bundle } => plinth_runtime::spec::write(&bundle, rootless)?,
        Cmd::Exec { opts, .. } => {
            let code = plinth_runtime::exec::exec(&root, &opts)?;
            return Ok(code.clamp(0, 255) as u8);
        }
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => {
            let text = control::ps(&root, &id, &format, &ps_args)?;
            std::io::stdout().lock().write_all(text.as_bytes())?;
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
            let text = container::list_text(&root, &format, quiet)?;
            std::io::stdout().lock().write_all(text.as_bytes())?;
        }
    }
    Ok(0)
}
