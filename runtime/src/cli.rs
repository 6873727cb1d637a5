//! The runc command line, read by hand on top of `lexopt`.
//!
//! clap built its whole command tree on every call, 0.22-0.26 ms of each of the
//! three `plinth` calls a container costs, and was about 190 KB of the binary; a
//! runtime's command line is fixed, so a table for `--help` and one match per
//! command do the same work.
//!
//! Rules, as clap had them unless runc says otherwise: the global flags are taken
//! before or after the command; `--flag value` and `--flag=value`; short flags may
//! be combined (`-dt`); a repeated flag keeps its last value (Go's flag package,
//! which runc uses, does the same); `--` ends the flags. `exec` and `ps` take
//! everything after the id verbatim as the command (runc's SkipArgReorder), so a
//! command's own `-x` flags are never ours; one `--` right after the id is dropped.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use plinth_runtime::container::{CreateOptions, RunOptions};
use plinth_runtime::control::UpdateFlags;
use plinth_runtime::exec::ExecOptions;

/// What the command line asks for.
// One value per process, moved once: its size costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// Run with these settings.
    Run(Cli),
    /// Print this help text on stdout and exit 0.
    Help(String),
}

/// A usage error: one line that names the argument at fault; `main` prints it and
/// exits with 2, as clap did.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The global flags and the command.
#[derive(Debug)]
pub struct Cli {
    /// `--root`: root directory for container state.
    pub root: Option<PathBuf>,
    /// `--log`: log file.
    pub log: Option<PathBuf>,
    /// `--log-format`: text or json.
    pub log_format: String,
    /// `--debug`.
    pub debug: bool,
    /// `--systemd-cgroup`: refused by `main`, but accepted here so the error says why.
    pub systemd_cgroup: bool,
    /// `--rootless true|false|auto`: runc's switch for ignoring cgroup permission
    /// errors. Accepted (engines pass it); plinth decides from its own uid.
    pub rootless: Option<String>,
    /// `-v`/`--version`.
    pub version: bool,
    /// None when only global flags were given.
    pub cmd: Option<Cmd>,
}

/// One command with its arguments; the help text is in [`COMMANDS`].
#[derive(Debug)]
pub enum Cmd {
    /// `create`.
    Create(CreateOptions),
    /// `start ID`.
    Start { id: String },
    /// `state ID`.
    State { id: String },
    /// `kill [-a] ID [SIGNAL]`.
    Kill {
        all: bool,
        id: String,
        signal: String,
    },
    /// `delete [-f] ID`.
    Delete { force: bool, id: String },
    /// `run [-d] [--keep] [--no-subreaper] ...create's flags`.
    Run {
        run: RunOptions,
        create: CreateOptions,
    },
    /// `spec [--rootless] [-b DIR]`.
    Spec { rootless: bool, bundle: PathBuf },
    /// `exec [flags] ID [COMMAND...]`.
    Exec {
        opts: ExecOptions,
        /// `--process-label`: refused by `main` when given (no SELinux support).
        process_label: Option<String>,
        /// `--apparmor`: refused by `main` when given (no AppArmor support).
        apparmor: Option<String>,
    },
    /// `ps [-f FORMAT] ID [PS_ARGS...]`.
    Ps {
        format: String,
        id: String,
        ps_args: Vec<String>,
    },
    /// `pause ID`.
    Pause { id: String },
    /// `resume ID`.
    Resume { id: String },
    /// `update [-r FILE] [flags] ID`.
    Update {
        resources: Option<PathBuf>,
        flags: UpdateFlags,
        id: String,
    },
    /// `events [--stats] [--interval D] ID`.
    Events {
        stats: bool,
        interval: String,
        id: String,
    },
    /// `features`.
    Features,
    /// `list [-f FORMAT] [-q]`.
    List { format: String, quiet: bool },
}

/// Help for one command. `args` and `opts` are rows of `NAME<TAB>description`; a
/// flag that takes a value shows it as `<VALUE>` (a unit test reads the rows to
/// check that the parser takes every flag listed).
struct Help {
    name: &'static str,
    about: &'static str,
    args: &'static str,
    opts: &'static str,
}

const GLOBAL: &str = "\
--root <DIR>\tRoot directory for container state
--log <FILE>\tLog file (default: none; errors always go to stderr)
--log-format <FORMAT>\tLog format: text or json [default: text]
--debug\tDebug logging
--systemd-cgroup\tUse systemd to manage cgroups (not supported: an error)
--rootless <true|false|auto>\tAccepted for runc's callers; plinth runs rootless when its uid is not 0 [default: auto]";

const ID: &str = "<ID>\tContainer id";

/// `create`'s flags, which `run` has too (a macro, so that concat! takes it).
macro_rules! create_opts {
    () => {
        "\
-b, --bundle <DIR>\tPath to the bundle (default: the current directory)
--pid-file <FILE>\tWrite the init's pid here
--console-socket <SOCKET>\tUnix socket that receives the pty master when process.terminal is true
--preserve-fds <N>\tPass N extra fds (3, 4, ...) to the container [default: 0]
--no-pivot\tUse MS_MOVE + chroot instead of pivot_root
--no-new-keyring\tDo not create a new session keyring"
    };
}

const COMMANDS: &[Help] = &[
    Help {
        name: "create",
        about: "Create a container",
        args: ID,
        opts: create_opts!(),
    },
    Help {
        name: "start",
        about: "Start a created container",
        args: ID,
        opts: "",
    },
    Help {
        name: "state",
        about: "Print a container's state as JSON",
        args: ID,
        opts: "",
    },
    Help {
        name: "kill",
        about: "Send a signal to a container's init (or all its processes)",
        args: "<ID>\tContainer id\n[SIGNAL]\tSignal name or number [default: SIGTERM]",
        opts: "-a, --all\tSend to all processes of the container",
    },
    Help {
        name: "delete",
        about: "Delete a stopped container (or, with --force, any)",
        args: ID,
        opts: "-f, --force\tKill the container first if it still runs",
    },
    Help {
        name: "run",
        about: "Create, start, wait and delete",
        args: ID,
        opts: concat!(
            "-d, --detach\tDo not wait for the container\n",
            "--keep\tKeep the stopped container (delete removes it)\n",
            "--no-subreaper\tDo not become the init's subreaper\n",
            create_opts!()
        ),
    },
    Help {
        name: "spec",
        about: "Write a default config.json",
        args: "",
        opts: "\
--rootless\tA config for an unprivileged user
-b, --bundle <DIR>\tWhere to write config.json [default: .]",
    },
    Help {
        name: "exec",
        about: "Run a new process in a running container",
        args: "<ID>\tContainer id\n[COMMAND]...\tThe command and its arguments: all words after the id",
        opts: "\
-p, --process <FILE>\tA runtime-spec process JSON file instead of the command and flags
-d, --detach\tDo not wait for the process
-t, --tty\tAllocate a pseudo-TTY (needs --console-socket)
--console-socket <SOCKET>\tUnix socket that receives the pty master
--pid-file <FILE>\tWrite the process's pid here
--cwd <DIR>\tWorking directory in the container
-e, --env <KEY=VALUE>\tSet an environment variable (repeatable)
-u, --user <UID[:GID]>\tUID[:GID] to run as
-g, --additional-gids <GID>\tAn additional gid (repeatable)
-c, --cap <CAP>\tAdd a capability (bounding, effective and permitted sets; repeatable)
--no-new-privs\tSet no_new_privs
--preserve-fds <N>\tPass N extra fds (3, 4, ...) [default: 0]
--ignore-paused\tExec even into a paused container
--cgroup <PATH>\tRun in this sub-cgroup of the container's (CONTROLLER:PATH for one v1 hierarchy)
--process-label <LABEL>\tSELinux label (not supported: refused when given)
--apparmor <PROFILE>\tAppArmor profile (not supported: refused when given)",
    },
    Help {
        name: "ps",
        about: "Print the processes of a container",
        args: "<ID>\tContainer id\n[PS_ARGS]...\tOptions passed to ps(1) for the table [default: -ef]",
        opts: "-f, --format <FORMAT>\ttable or json [default: table]",
    },
    Help {
        name: "pause",
        about: "Freeze every process of a container",
        args: ID,
        opts: "",
    },
    Help {
        name: "resume",
        about: "Thaw a paused container",
        args: ID,
        opts: "",
    },
    Help {
        name: "update",
        about: "Change a container's resource limits",
        args: ID,
        opts: "\
-r, --resources <FILE>\tA linux.resources JSON file, or - for stdin
--blkio-weight <N>\tBlock IO weight (10-1000)
--cpu-period <N>\tCPU CFS period in microseconds
--cpu-quota <N>\tCPU CFS quota in microseconds
--cpu-share <N>\tCPU shares (relative weight)
--cpu-rt-period <N>\tCPU realtime period in microseconds
--cpu-rt-runtime <N>\tCPU realtime runtime in microseconds
--cpuset-cpus <CPUS>\tCPUs the container may use (e.g. 0-3,5)
--cpuset-mems <MEMS>\tMemory nodes the container may use
--memory <BYTES>\tMemory limit (bytes, or with a k/m/g suffix)
--memory-reservation <BYTES>\tMemory reservation (soft limit)
--memory-swap <BYTES>\tMemory plus swap limit
--pids-limit <N>\tMaximum number of processes
--kernel-memory <BYTES>\tIgnored, as runc 1.1 ignores it (the kernel dropped kernel memory limits)
--kernel-memory-tcp <BYTES>\tIgnored, as runc 1.1 ignores it
--l3-cache-schema <SCHEMA>\tIntel RDT L3 cache schema (not supported: an error)
--mem-bw-schema <SCHEMA>\tIntel RDT memory bandwidth schema (not supported: an error)",
    },
    Help {
        name: "events",
        about: "Print a container's events (stats, oom) as JSON lines",
        args: ID,
        opts: "\
--stats\tPrint one stats event and exit
--interval <DURATION>\tTime between stats events [default: 5s]",
    },
    Help {
        name: "features",
        about: "Print the runtime-spec features JSON",
        args: "",
        opts: "",
    },
    Help {
        name: "list",
        about: "List containers",
        args: "",
        opts: "-f, --format <FORMAT>\ttable or json [default: table]\n-q, --quiet\tIds only",
    },
    Help {
        name: "help",
        about: "Print this message or the help of the given command",
        args: "[COMMAND]\tThe command to describe",
        opts: "",
    },
];

/// Reads the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, Usage> {
    let mut p = P {
        lex: lexopt::Parser::from_args(args),
        help: None,
        cli: Cli {
            root: None,
            log: None,
            log_format: "text".into(),
            debug: false,
            systemd_cgroup: false,
            version: false,
            cmd: None,
            rootless: None,
        },
    };
    match p.top() {
        Ok(()) => Ok(Parsed::Run(p.cli)),
        Err(Stop::Help(h)) => Ok(Parsed::Help(help_text(h))),
        Err(Stop::Usage(m)) => Err(Usage(m)),
    }
}

/// Why parsing ended early; `?` carries `--help` out of any depth like an error.
enum Stop {
    Help(Option<&'static Help>),
    Usage(String),
}

/// A flag (as typed, `-d` or `--detach`, so errors name what the user wrote) or a
/// positional word.
enum Tok {
    Flag(String),
    Word(OsString),
}

struct P {
    lex: lexopt::Parser,
    /// The command being read; None at the top level.
    help: Option<&'static Help>,
    cli: Cli,
}

impl P {
    /// A usage error, prefixed with the command it is about.
    fn usage(&self, msg: impl fmt::Display) -> Stop {
        match self.help {
            Some(h) => Stop::Usage(format!("{}: {msg}", h.name)),
            None => Stop::Usage(msg.to_string()),
        }
    }

    fn unknown(&self, flag: &str) -> Stop {
        match self.help {
            Some(h) => self.usage(format_args!(
                "unknown flag {flag} (see plinth {} --help)",
                h.name
            )),
            None => self.usage(format_args!("unknown flag {flag} (see plinth --help)")),
        }
    }

    fn next(&mut self) -> Result<Option<Tok>, Stop> {
        match self.lex.next() {
            Ok(Some(lexopt::Arg::Short(c))) => Ok(Some(Tok::Flag(format!("-{c}")))),
            Ok(Some(lexopt::Arg::Long(l))) => Ok(Some(Tok::Flag(format!("--{l}")))),
            Ok(Some(lexopt::Arg::Value(v))) => Ok(Some(Tok::Word(v))),
            Ok(None) => Ok(None),
            // The one error next() gives: `--debug=x` on a flag that takes no value.
            Err(lexopt::Error::UnexpectedValue { option, .. }) => {
                Err(self.usage(format_args!("{option} takes no value")))
            }
            Err(e) => Err(self.usage(e)),
        }
    }

    fn os(&mut self, flag: &str) -> Result<OsString, Stop> {
        self.lex
            .value()
            .map_err(|_| self.usage(format_args!("{flag}: missing value")))
    }

    fn path(&mut self, flag: &str) -> Result<PathBuf, Stop> {
        self.os(flag).map(PathBuf::from)
    }

    fn string(&mut self, flag: &str) -> Result<String, Stop> {
        let v = self.os(flag)?;
        self.text(v, flag)
    }

    fn num<T: FromStr>(&mut self, flag: &str) -> Result<T, Stop> {
        let s = self.string(flag)?;
        s.parse()
            .map_err(|_| self.usage(format_args!("{flag}: invalid number {s:?}")))
    }

    fn text(&self, v: OsString, what: &str) -> Result<String, Stop> {
        v.into_string()
            .map_err(|v| self.usage(format_args!("{what}: not valid UTF-8: {v:?}")))
    }

    /// The global flags, taken at any level, and the current level's `--help`.
    fn global(&mut self, f: &str) -> Result<bool, Stop> {
        match f {
            "--root" => self.cli.root = Some(self.path(f)?),
            "--log" => self.cli.log = Some(self.path(f)?),
            "--log-format" => self.cli.log_format = self.string(f)?,
            "--debug" => self.cli.debug = true,
            "--systemd-cgroup" => self.cli.systemd_cgroup = true,
            "--rootless" => {
                let v = self.string(f)?;
                if !matches!(v.as_str(), "true" | "false" | "auto") {
                    return Err(
                        self.usage(format_args!("--rootless: {v:?} is not true, false or auto"))
                    );
                }
                self.cli.rootless = Some(v);
            }
            "-h" | "--help" => return Err(Stop::Help(self.help)),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn top(&mut self) -> Result<(), Stop> {
        while let Some(t) = self.next()? {
            match t {
                Tok::Flag(f) if f == "-v" || f == "--version" => self.cli.version = true,
                Tok::Flag(f) => {
                    if !self.global(&f)? {
                        return Err(self.unknown(&f));
                    }
                }
                Tok::Word(w) => {
                    let name = self.text(w, "command")?;
                    self.cli.cmd = Some(self.command(&name)?);
                    // The command read the rest of the line.
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Reads a command's flags and positionals: globals and `--help` anywhere, the
    /// command's own flags through `flag` (false: not one of them), at most `max`
    /// positionals. With `trailing`, everything after the first positional (the id)
    /// is returned verbatim (exec and ps).
    fn args(
        &mut self,
        max: usize,
        trailing: bool,
        mut flag: impl FnMut(&mut Self, &str) -> Result<bool, Stop>,
    ) -> Result<std::vec::IntoIter<OsString>, Stop> {
        let mut pos = vec![];
        while let Some(t) = self.next()? {
            match t {
                Tok::Flag(f) => {
                    // The command's own flags first: `spec --rootless` is spec's
                    // switch, while the global `--rootless` takes a value.
                    if !flag(self, &f)? && !self.global(&f)? {
                        return Err(self.unknown(&f));
                    }
                }
                Tok::Word(w) if trailing => {
                    pos.push(w);
                    // raw_args() fails only when a flag's `=value` is pending, never
                    // after a word.
                    match self.lex.raw_args() {
                        Ok(rest) => {
                            let mut rest = rest.peekable();
                            rest.next_if(|a| a == "--");
                            pos.extend(rest);
                        }
                        Err(e) => return Err(self.usage(e)),
                    }
                    break;
                }
                Tok::Word(w) => {
                    if pos.len() == max {
                        return Err(self.usage(format_args!("unexpected argument {w:?}")));
                    }
                    pos.push(w);
                }
            }
        }
        Ok(pos.into_iter())
    }

    fn id(&self, pos: &mut impl Iterator<Item = OsString>) -> Result<String, Stop> {
        match pos.next() {
            Some(v) => self.text(v, "container id"),
            None => Err(self.usage("missing container id")),
        }
    }

    fn rest(&self, pos: impl Iterator<Item = OsString>) -> Result<Vec<String>, Stop> {
        pos.map(|v| self.text(v, "argument")).collect()
    }

    /// A command that takes only the id.
    fn just_id(&mut self) -> Result<String, Stop> {
        let mut pos = self.args(1, false, |_, _| Ok(false))?;
        self.id(&mut pos)
    }

    fn find_command(&self, name: &str) -> Result<&'static Help, Stop> {
        COMMANDS
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| self.usage(format_args!("unknown command {name:?} (see plinth --help)")))
    }

    /// A command's flag that takes no value (`names`: its short and long form), and
    /// up to `max` words.
    fn switch(
        &mut self,
        names: [&str; 2],
        max: usize,
    ) -> Result<(bool, std::vec::IntoIter<OsString>), Stop> {
        let mut on = false;
        let pos = self.args(max, false, |_, f| {
            let ours = names.contains(&f);
            on |= ours;
            Ok(ours)
        })?;
        Ok((on, pos))
    }

    fn command(&mut self, name: &str) -> Result<Cmd, Stop> {
        let h = self.find_command(name)?;
        self.help = Some(h);
        Ok(match h.name {
            "create" => Cmd::Create(self.create(None)?),
            "run" => {
                let mut run = RunOptions::default();
                let create = self.create(Some(&mut run))?;
                Cmd::Run { run, create }
            }
            "start" => Cmd::Start {
                id: self.just_id()?,
            },
            "state" => Cmd::State {
                id: self.just_id()?,
            },
            "pause" => Cmd::Pause {
                id: self.just_id()?,
            },
            "resume" => Cmd::Resume {
                id: self.just_id()?,
            },
            "kill" => {
                let (all, mut pos) = self.switch(["-a", "--all"], 2)?;
                let id = self.id(&mut pos)?;
                let signal = match pos.next() {
                    Some(s) => self.text(s, "signal")?,
                    None => "SIGTERM".into(),
                };
                Cmd::Kill { all, id, signal }
            }
            "delete" => {
                let (force, mut pos) = self.switch(["-f", "--force"], 1)?;
                Cmd::Delete {
                    force,
                    id: self.id(&mut pos)?,
                }
            }
            "spec" => {
                let (mut rootless, mut bundle) = (false, PathBuf::from("."));
                self.args(0, false, |p, f| {
                    match f {
                        "--rootless" => rootless = true,
                        "-b" | "--bundle" => bundle = p.path(f)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Cmd::Spec { rootless, bundle }
            }
            "exec" => self.exec()?,
            "ps" => {
                let mut format = "table".to_string();
                let mut pos = self.args(1, true, |p, f| {
                    if !matches!(f, "-f" | "--format") {
                        return Ok(false);
                    }
                    format = p.string(f)?;
                    Ok(true)
                })?;
                let id = self.id(&mut pos)?;
                Cmd::Ps {
                    format,
                    id,
                    ps_args: self.rest(pos)?,
                }
            }
            "update" => {
                let (mut resources, mut flags) = (None, UpdateFlags::default());
                let mut pos = self.args(1, false, |p, f| {
                    if matches!(f, "-r" | "--resources") {
                        resources = Some(p.path(f)?);
                        return Ok(true);
                    }
                    p.update_flag(&mut flags, f)
                })?;
                Cmd::Update {
                    resources,
                    flags,
                    id: self.id(&mut pos)?,
                }
            }
            "events" => {
                let (mut stats, mut interval) = (false, "5s".to_string());
                let mut pos = self.args(1, false, |p, f| {
                    match f {
                        "--stats" => stats = true,
                        "--interval" => interval = p.string(f)?,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Cmd::Events {
                    stats,
                    interval,
                    id: self.id(&mut pos)?,
                }
            }
            "features" => {
                self.args(0, false, |_, _| Ok(false))?;
                Cmd::Features
            }
            "list" => {
                let (mut format, mut quiet) = ("table".to_string(), false);
                self.args(0, false, |p, f| {
                    match f {
                        "-f" | "--format" => format = p.string(f)?,
                        "-q" | "--quiet" => quiet = true,
                        _ => return Ok(false),
                    }
                    Ok(true)
                })?;
                Cmd::List { format, quiet }
            }
            // "help": `help [COMMAND]`, as clap offered.
            _ => {
                let mut pos = self.args(1, false, |_, _| Ok(false))?;
                let Some(w) = pos.next() else {
                    return Err(Stop::Help(None));
                };
                let name = self.text(w, "command")?;
                return Err(Stop::Help(Some(self.find_command(&name)?)));
            }
        })
    }

    /// `create`'s flags; `run` passes where its `-d` goes.
    fn create(&mut self, mut run: Option<&mut RunOptions>) -> Result<CreateOptions, Stop> {
        let mut c = CreateOptions {
            bundle: ".".into(),
            ..CreateOptions::default()
        };
        let mut pos = self.args(1, false, |p, f| {
            match f {
                "-b" | "--bundle" => c.bundle = p.path(f)?,
                "--pid-file" => c.pid_file = Some(p.path(f)?),
                "--console-socket" => c.console_socket = Some(p.path(f)?),
                "--preserve-fds" => c.preserve_fds = p.num(f)?,
                "--no-pivot" => c.no_pivot = true,
                "--no-new-keyring" => c.no_new_keyring = true,
                "-d" | "--detach" | "--keep" | "--no-subreaper" => match run.as_deref_mut() {
                    Some(r) if f == "--keep" => r.keep = true,
                    Some(r) if f == "--no-subreaper" => r.no_subreaper = true,
                    Some(r) => r.detach = true,
                    None => return Ok(false),
                },
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        c.id = self.id(&mut pos)?;
        Ok(c)
    }

    fn exec(&mut self) -> Result<Cmd, Stop> {
        let mut o = ExecOptions::default();
        let (mut process_label, mut apparmor) = (None, None);
        let mut pos = self.args(1, true, |p, f| {
            match f {
                "-p" | "--process" => o.process = Some(p.path(f)?),
                "-d" | "--detach" => o.detach = true,
                "-t" | "--tty" => o.tty = true,
                "--console-socket" => o.console_socket = Some(p.path(f)?),
                "--pid-file" => o.pid_file = Some(p.path(f)?),
                "--cwd" => o.cwd = Some(p.path(f)?),
                "-e" | "--env" => o.env.push(p.string(f)?),
                "-u" | "--user" => o.user = Some(p.string(f)?),
                "-g" | "--additional-gids" => o.additional_gids.push(p.num(f)?),
                "-c" | "--cap" => o.caps.push(p.string(f)?),
                "--no-new-privs" => o.no_new_privs = true,
                "--preserve-fds" => o.preserve_fds = p.num(f)?,
                "--ignore-paused" => o.ignore_paused = true,
                "--cgroup" => o.cgroup = Some(p.string(f)?),
                "--process-label" => process_label = Some(p.string(f)?),
                "--apparmor" => apparmor = Some(p.string(f)?),
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        o.id = self.id(&mut pos)?;
        o.args = self.rest(pos)?;
        Ok(Cmd::Exec {
            opts: o,
            process_label,
            apparmor,
        })
    }

    /// The flags of [`UpdateFlags`].
    fn update_flag(&mut self, u: &mut UpdateFlags, f: &str) -> Result<bool, Stop> {
        match f {
            "--blkio-weight" => u.blkio_weight = Some(self.num(f)?),
            "--cpu-period" => u.cpu_period = Some(self.num(f)?),
            "--cpu-quota" => u.cpu_quota = Some(self.num(f)?),
            "--cpu-share" => u.cpu_share = Some(self.num(f)?),
            "--cpu-rt-period" => u.cpu_rt_period = Some(self.num(f)?),
            "--cpu-rt-runtime" => u.cpu_rt_runtime = Some(self.num(f)?),
            "--cpuset-cpus" => u.cpuset_cpus = Some(self.string(f)?),
            "--cpuset-mems" => u.cpuset_mems = Some(self.string(f)?),
            "--memory" => u.memory = Some(self.string(f)?),
            "--memory-reservation" => u.memory_reservation = Some(self.string(f)?),
            "--memory-swap" => u.memory_swap = Some(self.string(f)?),
            "--pids-limit" => u.pids_limit = Some(self.num(f)?),
            "--kernel-memory" => u.kernel_memory = Some(self.string(f)?),
            "--kernel-memory-tcp" => u.kernel_memory_tcp = Some(self.string(f)?),
            "--l3-cache-schema" => u.l3_cache_schema = Some(self.string(f)?),
            "--mem-bw-schema" => u.mem_bw_schema = Some(self.string(f)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The help of one command, or of plinth with None.
fn help_text(h: Option<&Help>) -> String {
    let mut s = String::new();
    let Some(h) = h else {
        s += "A small, narrow, runc-compatible OCI runtime\n\n";
        s += "Usage: plinth [OPTIONS] [COMMAND]\n\nCommands:\n";
        let rows: Vec<_> = COMMANDS.iter().map(|c| (c.name, c.about)).collect();
        table(&mut s, &rows, false);
        s += "\nOptions:\n";
        let more = "-v, --version\tPrint the version\n-h, --help\tPrint help";
        table(
            &mut s,
            &rows_of(GLOBAL).chain(rows_of(more)).collect::<Vec<_>>(),
            true,
        );
        return s;
    };
    let args: Vec<&str> = rows_of(h.args).map(|a| a.0).collect();
    s += &format!("{}\n\nUsage: plinth {} [OPTIONS]", h.about, h.name);
    for a in &args {
        s += " ";
        s += a;
    }
    s += "\n";
    if !args.is_empty() {
        s += "\nArguments:\n";
        table(&mut s, &rows_of(h.args).collect::<Vec<_>>(), false);
    }
    s += "\nOptions:\n";
    let rows = rows_of(h.opts).chain(rows_of("-h, --help\tPrint help"));
    table(&mut s, &rows.collect::<Vec<_>>(), true);
    s += "\nGlobal options (before or after the command):\n";
    table(&mut s, &rows_of(GLOBAL).collect::<Vec<_>>(), true);
    s
}

/// The `NAME<TAB>description` rows of a help table.
fn rows_of(text: &'static str) -> impl Iterator<Item = (&'static str, &'static str)> {
    text.lines().filter_map(|l| l.split_once('\t'))
}

/// Two aligned columns; with `flags`, a long-only flag is indented past the `-x, `
/// of the short ones, as clap lays them out.
fn table(s: &mut String, rows: &[(&str, &str)], flags: bool) {
    let col = |k: &str| {
        if flags && k.starts_with("--") {
            format!("    {k}")
        } else {
            k.to_string()
        }
    };
    let w = rows.iter().map(|r| col(r.0).len()).max().unwrap_or(0);
    for (k, v) in rows {
        *s += &format!("  {:<w$}  {v}\n", col(k));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Parses a command line given as one string, split at spaces.
    fn run(line: &str) -> Result<Parsed, Usage> {
        parse(line.split_whitespace().map(OsString::from))
    }

    fn cli(line: &str) -> Cli {
        match run(line) {
            Ok(Parsed::Run(c)) => c,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn cmd(line: &str) -> Cmd {
        cli(line).cmd.expect("a command")
    }

    fn err(line: &str) -> String {
        match run(line) {
            Err(Usage(m)) => m,
            other => panic!("{line} should fail: {other:?}"),
        }
    }

    fn help(line: &str) -> String {
        match run(line) {
            Ok(Parsed::Help(h)) => h,
            other => panic!("{line} should give help: {other:?}"),
        }
    }

    fn path(p: &str) -> Option<PathBuf> {
        Some(PathBuf::from(p))
    }

    #[test]
    fn globals_before_and_after_the_command() {
        for line in [
            "--root /r --log /l --log-format json --debug state x",
            "state --root /r x --log=/l --log-format=json --debug",
        ] {
            let c = cli(line);
            assert_eq!((c.root, c.log), (path("/r"), path("/l")), "{line}");
            assert_eq!(c.log_format, "json", "{line}");
            assert!(c.debug && !c.systemd_cgroup && !c.version, "{line}");
            assert!(matches!(c.cmd, Some(Cmd::State { ref id }) if id == "x"));
        }
        let c = cli("kill --systemd-cgroup x");
        assert!(c.systemd_cgroup && c.root.is_none());
        assert_eq!(c.log_format, "text", "the default");
        // A repeated flag keeps its last value, as Go's flag package does for runc.
        assert_eq!(cli("--root /a state --root /b x").root, path("/b"));
    }

    #[test]
    fn version_and_no_command() {
        let c = cli("-v");
        assert!(c.version && c.cmd.is_none());
        assert!(cli("--version").version);
        assert!(cli("").cmd.is_none(), "main says: no command given");
        assert!(cli("--root /r").cmd.is_none());
        assert!(
            err("state -v x").contains("unknown flag -v"),
            "top level only"
        );
    }

    #[test]
    fn create_and_run_flags_and_defaults() {
        let Cmd::Create(c) = cmd("create x") else {
            panic!()
        };
        assert_eq!(
            (c.bundle, c.preserve_fds, c.id.as_str()),
            (".".into(), 0, "x")
        );
        assert!(c.pid_file.is_none() && c.console_socket.is_none());
        assert!(!c.no_pivot && !c.no_new_keyring);
        let Cmd::Create(c) = cmd("create --bundle=/b --pid-file /p --console-socket /s \
                                  --preserve-fds=2 --no-pivot --no-new-keyring x")
        else {
            panic!()
        };
        assert_eq!(
            (c.bundle, c.pid_file, c.console_socket),
            ("/b".into(), path("/p"), path("/s"))
        );
        assert_eq!(c.preserve_fds, 2);
        assert!(c.no_pivot && c.no_new_keyring);
        let Cmd::Run {
            run: RunOptions { detach, .. },
            create,
        } = cmd("run -d -b /b x")
        else {
            panic!()
        };
        assert!(detach);
        assert_eq!((create.bundle, create.id.as_str()), ("/b".into(), "x"));
        assert!(matches!(
            cmd("run x"),
            Cmd::Run {
                run: RunOptions {
                    detach: false,
                    keep: false,
                    no_subreaper: false
                },
                ..
            }
        ));
        assert!(matches!(
            cmd("run --keep --no-subreaper x"),
            Cmd::Run {
                run: RunOptions {
                    detach: false,
                    keep: true,
                    no_subreaper: true
                },
                ..
            }
        ));
        assert!(
            err("create -d x").contains("unknown flag -d"),
            "-d is run's"
        );
    }

    #[test]
    fn exec_takes_everything_after_the_id_as_the_command() {
        let Cmd::Exec { opts: o, .. } = cmd(
            "exec -dt -e A=1 --env=B=2 -u 1:2 -g 5 -g 6 -c CAP_KILL --cwd /tmp \
                 x sh -c --root -d --",
        ) else {
            panic!()
        };
        assert_eq!(o.id, "x");
        assert_eq!(o.args, ["sh", "-c", "--root", "-d", "--"]);
        assert!(o.detach && o.tty);
        assert_eq!(o.env, ["A=1", "B=2"]);
        assert_eq!(o.additional_gids, [5, 6]);
        assert_eq!(o.caps, ["CAP_KILL"]);
        assert_eq!((o.user.as_deref(), o.cwd), (Some("1:2"), path("/tmp")));
        // A `--` right after the id, or before it, ends our flags; it is not the command.
        for line in ["exec x -- ls -l", "exec -- x ls -l"] {
            let Cmd::Exec { opts: o, .. } = cmd(line) else {
                panic!()
            };
            assert_eq!(
                (o.id.as_str(), o.args.join(" ")),
                ("x", "ls -l".into()),
                "{line}"
            );
        }
        let Cmd::Exec {
            opts: o,
            process_label,
            apparmor,
        } = cmd(
            "exec -p /p.json --preserve-fds 3 --no-new-privs --ignore-paused \
             --console-socket /s --pid-file /pid --process-label L --apparmor A x",
        )
        else {
            panic!()
        };
        assert_eq!(
            (o.process, o.args.len(), o.preserve_fds),
            (path("/p.json"), 0, 3)
        );
        assert_eq!((o.console_socket, o.pid_file), (path("/s"), path("/pid")));
        assert_eq!(
            (process_label.as_deref(), apparmor.as_deref()),
            (Some("L"), Some("A"))
        );
        assert!(o.no_new_privs && o.ignore_paused);
        // After the id, -h is the command's.
        assert!(matches!(cmd("exec x -h"), Cmd::Exec { opts, .. } if opts.args == ["-h"]));
    }

    #[test]
    fn ps_takes_its_ps_args_verbatim() {
        let Cmd::Ps {
            format,
            id,
            ps_args,
        } = cmd("ps x -ef --format")
        else {
            panic!()
        };
        assert_eq!((format.as_str(), id.as_str()), ("table", "x"));
        assert_eq!(ps_args, ["-ef", "--format"]);
        assert!(matches!(cmd("ps -f json x"), Cmd::Ps { format, .. } if format == "json"));
    }

    #[test]
    fn kill_signal_defaults_to_sigterm() {
        let Cmd::Kill { all, id, signal } = cmd("kill x") else {
            panic!()
        };
        assert_eq!((all, id.as_str(), signal.as_str()), (false, "x", "SIGTERM"));
        let Cmd::Kill { all, signal, .. } = cmd("kill --all x 9") else {
            panic!()
        };
        assert_eq!((all, signal.as_str()), (true, "9"));
        assert_eq!(err("kill a b c"), r#"kill: unexpected argument "c""#);
    }

    #[test]
    fn the_other_commands() {
        assert!(matches!(cmd("delete -f x"), Cmd::Delete { force: true, id } if id == "x"));
        assert!(matches!(cmd("delete x"), Cmd::Delete { force: false, .. }));
        assert!(matches!(cmd("start x"), Cmd::Start { id } if id == "x"));
        assert!(matches!(cmd("pause x"), Cmd::Pause { id } if id == "x"));
        assert!(matches!(cmd("resume x"), Cmd::Resume { id } if id == "x"));
        assert!(matches!(cmd("features"), Cmd::Features));
        let Cmd::Spec { rootless, bundle } = cmd("spec") else {
            panic!()
        };
        assert_eq!((rootless, bundle), (false, ".".into()));
        let Cmd::Spec { rootless, bundle } = cmd("spec --rootless -b /b") else {
            panic!()
        };
        assert_eq!((rootless, bundle), (true, "/b".into()));
        let Cmd::Events {
            stats,
            interval,
            id,
        } = cmd("events x")
        else {
            panic!()
        };
        assert_eq!((stats, interval.as_str(), id.as_str()), (false, "5s", "x"));
        let Cmd::Events {
            stats, interval, ..
        } = cmd("events --stats --interval 1s x")
        else {
            panic!()
        };
        assert_eq!((stats, interval.as_str()), (true, "1s"));
        let Cmd::List { format, quiet } = cmd("list") else {
            panic!()
        };
        assert_eq!((format.as_str(), quiet), ("table", false));
        let Cmd::List { format, quiet } = cmd("list -qf json") else {
            panic!()
        };
        assert_eq!((format.as_str(), quiet), ("json", true));
    }

    #[test]
    fn update_fills_every_flag() {
        let Cmd::Update {
            resources,
            flags: u,
            id,
        } = cmd(
            "update -r - --blkio-weight 500 --cpu-period=100000 --cpu-quota -1 \
                 --cpu-share 2 --cpu-rt-period 3 --cpu-rt-runtime -4 --cpuset-cpus 0-3,5 \
                 --cpuset-mems 0 --memory 1g --memory-reservation 512m --memory-swap -1 \
                 --pids-limit 42 x",
        )
        else {
            panic!()
        };
        assert_eq!((resources, id.as_str()), (path("-"), "x"));
        assert_eq!(u.blkio_weight, Some(500));
        assert_eq!(
            (u.cpu_period, u.cpu_quota, u.cpu_share),
            (Some(100000), Some(-1), Some(2))
        );
        assert_eq!((u.cpu_rt_period, u.cpu_rt_runtime), (Some(3), Some(-4)));
        assert_eq!(u.cpuset_cpus.as_deref(), Some("0-3,5"));
        assert_eq!(u.cpuset_mems.as_deref(), Some("0"));
        assert_eq!(u.memory.as_deref(), Some("1g"));
        assert_eq!(u.memory_reservation.as_deref(), Some("512m"));
        assert_eq!(u.memory_swap.as_deref(), Some("-1"));
        assert_eq!(u.pids_limit, Some(42));
        let Cmd::Update {
            resources, flags, ..
        } = cmd("update --resources=/r.json x")
        else {
            panic!()
        };
        assert_eq!(resources, path("/r.json"));
        assert!(flags.pids_limit.is_none() && flags.memory.is_none());
    }

    #[test]
    fn errors_name_the_argument() {
        for (line, msg) in [
            (
                "exec --preserve-fds x id",
                r#"exec: --preserve-fds: invalid number "x""#,
            ),
            ("exec -g -5 id", r#"exec: -g: invalid number "-5""#),
            (
                "update --blkio-weight=70000 id",
                r#"update: --blkio-weight: invalid number "70000""#,
            ),
            (
                "exec --bogus id",
                "exec: unknown flag --bogus (see plinth exec --help)",
            ),
            (
                "exec -dx id",
                "exec: unknown flag -x (see plinth exec --help)",
            ),
            (
                "--bogus state x",
                "unknown flag --bogus (see plinth --help)",
            ),
            (
                "state -x id",
                "state: unknown flag -x (see plinth state --help)",
            ),
            ("create --pid-file", "create: --pid-file: missing value"),
            ("--root", "--root: missing value"),
            ("state", "state: missing container id"),
            ("exec", "exec: missing container id"),
            ("state a b", r#"state: unexpected argument "b""#),
            ("features a", r#"features: unexpected argument "a""#),
            ("delete --force=yes x", "delete: --force takes no value"),
            ("bogus", r#"unknown command "bogus" (see plinth --help)"#),
            (
                "help bogus",
                r#"help: unknown command "bogus" (see plinth --help)"#,
            ),
        ] {
            assert_eq!(err(line), msg, "{line}");
        }
    }

    #[test]
    fn help_at_every_level() {
        let top = help("--help");
        assert_eq!(top, help("-h"));
        assert_eq!(top, help("help"));
        assert_eq!(
            top,
            help("--root /r -h state"),
            "help wins over what follows"
        );
        assert!(top.starts_with("A small, narrow, runc-compatible OCI runtime\n"));
        for c in COMMANDS.iter().filter(|c| c.name != "help") {
            assert!(
                top.contains(&format!("  {:<8}  {}\n", c.name, c.about)),
                "{top}"
            );
            let h = help(&format!("{} --help", c.name));
            assert!(h.starts_with(c.about), "{h}");
            assert_eq!(h, help(&format!("{} -h", c.name)));
            assert_eq!(h, help(&format!("help {}", c.name)));
            assert_eq!(h, help(&format!("--debug {} --root /r -h", c.name)));
            assert!(
                h.contains("\n      --log-format <FORMAT>  "),
                "globals listed: {h}"
            );
        }
        let h = help("exec -h");
        assert!(
            h.contains("\nUsage: plinth exec [OPTIONS] <ID> [COMMAND]...\n"),
            "{h}"
        );
        assert!(h.contains("\n  -u, --user <UID[:GID]>  "), "{h}");
        assert!(h.contains("\n      --cwd <DIR>  "), "{h}");
    }

    /// Every flag the help lists is one the parser takes, in its long and short form.
    #[test]
    fn every_documented_flag_parses() {
        for c in COMMANDS.iter().filter(|c| c.name != "help") {
            let ids = rows_of(c.args).filter(|a| a.0.starts_with('<')).count();
            let rows: Vec<_> = rows_of(c.opts).chain(rows_of(GLOBAL)).collect();
            assert_eq!(
                rows.len(),
                c.opts.lines().count() + GLOBAL.lines().count(),
                "a row without its tab"
            );
            // A command's own flag hides a global one of the same name (spec's
            // --rootless switch, the global --rootless VALUE).
            let own: Vec<&str> = rows_of(c.opts).map(|r| r.0).collect();
            let shadowed = |flags: &str| {
                flags
                    .split([',', ' '])
                    .filter(|f| f.starts_with("--"))
                    .any(|f| own.iter().any(|o| o.split([',', ' ']).any(|x| x == f)))
            };
            let globals: Vec<&str> = rows_of(GLOBAL).map(|r| r.0).collect();
            for (flags, _) in rows
                .into_iter()
                .filter(|(f, _)| !(globals.contains(f) && !own.contains(f) && shadowed(f)))
            {
                // A placeholder listing its choices (`<true|false|auto>`) takes the
                // first; any other takes a number.
                let value = match flags.split_once('<').and_then(|(_, v)| v.split_once('>')) {
                    Some((v, _)) if v.contains('|') => {
                        format!(" {}", v.split('|').next().unwrap_or(""))
                    }
                    Some(_) => " 1".to_string(),
                    None => String::new(),
                };
                for f in flags.split([',', ' ']).filter(|f| f.starts_with('-')) {
                    let line = format!("{} {f}{value}{}", c.name, " id".repeat(ids));
                    assert!(
                        matches!(run(&line), Ok(Parsed::Run(_))),
                        "{line}: {:?}",
                        run(&line)
                    );
                }
            }
        }
    }
}
