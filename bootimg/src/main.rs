//! plinth-boot: command-line parsing only; the work is in the plinth_bootimg library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use plinth_bootimg::extension::{self, ExtensionOptions};
use plinth_bootimg::image::{self, BuildOptions, Extra};
use plinth_bootimg::qemu::{self, Accel, Firmware, RunOptions};

#[derive(Parser)]
#[command(
    name = "plinth-boot",
    about = "Build the Plinth node image and boot it in qemu over PXE"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write vmlinuz, initrd and boot.ipxe into DIR.
    Build {
        /// The output directory (replaced when the build succeeds).
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
        /// The kernel image (default: the newest vmlinuz-* in $PLINTH_CACHE/kernel/root/boot).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// An extra file or directory: SRC:DEST (DEST absolute in the image). Repeatable.
        #[arg(long = "extra", value_name = "SRC:DEST")]
        extras: Vec<Extra>,
        /// A kernel module to include and load at boot, with its dependencies; replaces
        /// the default list when given. Repeatable.
        #[arg(long = "module", value_name = "NAME")]
        modules: Vec<String>,
        /// Include no kernel modules.
        #[arg(long, conflicts_with = "modules")]
        no_modules: bool,
        /// Directory holding plinth-init and plinth (default: target/dist, the shipped
        /// builds, then beside this binary, then target/release).
        #[arg(long)]
        plinth_dir: Option<PathBuf>,
        /// Use this plinth-init (e.g. the static one `make plinth-init-static` builds).
        #[arg(long, conflicts_with = "no_plinth")]
        init: Option<PathBuf>,
        /// Use this plinth runtime instead of the one in the plinth directory.
        #[arg(long, conflicts_with = "no_plinth")]
        runtime: Option<PathBuf>,
        /// Leave the plinth binaries out (a bare image, e.g. to measure their share).
        #[arg(long, conflicts_with = "plinth_dir")]
        no_plinth: bool,
        /// Extra kernel command-line arguments.
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    /// Write an extension for the machine config's `extensions`: the files given, with
    /// the libraries of each dynamic binary, as a tar.zst laid out as the node's root.
    /// Prints the config entry (name and sha256).
    Extension {
        /// The file written (its name is the config's `name`; put it in the server's
        /// --extensions-dir).
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
        /// A file or directory: SRC:DEST (DEST absolute on the node). Repeatable.
        #[arg(long = "add", value_name = "SRC:DEST", required = true)]
        files: Vec<Extra>,
    },
    /// Power on a machine in qemu that boots over PXE from a tap device (in the lab: the
    /// site's DHCP, plinth-server's proxyDHCP, TFTP and HTTP). Ends qemu when it ends.
    Run {
        /// The tap device the NIC is plugged into (it must exist in this network namespace).
        #[arg(long)]
        tap: String,
        /// The firmware: bios (SeaBIOS and the NIC's iPXE ROM) or uefi (OVMF's own PXE).
        #[arg(long, value_enum, default_value = "bios")]
        firmware: FirmwareArg,
        /// OVMF's code (uefi).
        #[arg(long, default_value = qemu::OVMF_CODE)]
        ovmf_code: PathBuf,
        /// OVMF's variable-store template, copied for each run (uefi).
        #[arg(long, default_value = qemu::OVMF_VARS)]
        ovmf_vars: PathBuf,
        /// The NIC's MAC address.
        #[arg(long, default_value = "52:54:00:12:34:56")]
        mac: String,
        /// The SMBIOS UUID (default: a random one).
        #[arg(long)]
        uuid: Option<String>,
        /// The accelerator: tcg (default) or kvm.
        #[arg(long, value_enum, default_value = "tcg")]
        accel: AccelArg,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Write the serial console here instead of stdout.
        #[arg(long)]
        serial_log: Option<PathBuf>,
        /// Kill the machine after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        /// The qemu binary.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// Expose qemu's monitor on this unix socket.
        #[arg(long)]
        monitor: Option<PathBuf>,
        /// Start the machine's clock (its RTC) at this date, YYYY-MM-DD, e.g. a dead
        /// CMOS battery's 2000-01-01.
        #[arg(long)]
        rtc_base: Option<String>,
        /// Let a reboot of the guest boot it again over PXE, as real firmware does
        /// (default: a reboot ends qemu, like a power-off).
        #[arg(long)]
        reboot: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FirmwareArg {
    Bios,
    Uefi,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Tcg,
    Kvm,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Build {
            out,
            kernel,
            extras,
            modules,
            no_modules,
            plinth_dir,
            init,
            runtime,
            no_plinth,
            cmdline,
        } => {
            let modules = if no_modules {
                Vec::new()
            } else if modules.is_empty() {
                image::DEFAULT_MODULES
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            } else {
                modules
            };
            let plinth_dir = if no_plinth {
                None
            } else {
                Some(plinth_dir.unwrap_or_else(image::default_plinth_dir))
            };
            let opts = BuildOptions {
                out: out.clone(),
                kernel,
                extras,
                modules,
                plinth_dir,
                init,
                runtime,
                cache_dirs: image::default_cache_dirs(),
                mtime: image::source_date_epoch()?,
                cmdline,
            };
            let report = image::build(&opts)
                .with_context(|| format!("building the node image into {}", out.display()))?;
            println!("{}:", out.display());
            print!("{report}");
        }
        Cmd::Extension { out, files } => {
            let built = extension::build(&ExtensionOptions {
                out: out.clone(),
                files,
                mtime: image::source_date_epoch()?,
            })
            .with_context(|| format!("building the extension {}", out.display()))?;
            println!("{}:", out.display());
            for (part, detail, size) in &built.report.parts {
                println!("  {part:<14} {:>10}  {detail}", image::human(*size));
            }
            println!(
                "  {} entries, tar {}, zstd {}",
                built.report.entries,
                image::human(built.tar_size),
                image::human(built.size)
            );
            println!("# the machine config's entry:");
            println!("extensions:");
            println!(
                "  - name: {}",
                out.file_name().unwrap_or_default().to_string_lossy()
            );
            println!("    sha256: {}", built.sha256);
        }
        Cmd::Run {
            tap,
            firmware,
            ovmf_code,
            ovmf_vars,
            mac,
            uuid,
            accel,
            memory,
            serial_log,
            timeout,
            qemu,
            monitor,
            rtc_base,
            reboot,
        } => {
            let opts = RunOptions {
                tap,
                firmware: match firmware {
                    FirmwareArg::Bios => Firmware::Bios,
                    FirmwareArg::Uefi => Firmware::Uefi,
                },
                ovmf_code,
                ovmf_vars,
                mac,
                uuid,
                accel: match accel {
                    AccelArg::Tcg => Accel::Tcg,
                    AccelArg::Kvm => Accel::Kvm,
                },
                memory_mib: memory,
                serial_log,
                timeout: timeout.map(Duration::from_secs),
                qemu,
                monitor,
                rtc_base,
                reboot,
            };
            let out = qemu::run(&opts)?;
            eprintln!(
                "machine uuid {} ran {:.1}s",
                out.uuid,
                out.elapsed.as_secs_f64()
            );
            match out.status {
                Some(s) if s.success() => {}
                Some(s) => anyhow::bail!("qemu exited with {s}"),
                None => anyhow::bail!("the machine did not power off within the timeout; killed"),
            }
        }
    }
    Ok(())
}
