//! `plinth-boot run`: powers on a machine in qemu that boots over PXE from a tap device,
//! as a machine on a real network does: its firmware (SeaBIOS with the NIC's iPXE ROM,
//! or OVMF's own UEFI PXE) asks the network's DHCP servers what to boot (in the lab,
//! the site's dnsmasq for an address and plinth-server's proxyDHCP for the boot file),
//! and everything after comes from plinth-server. Nothing is served from here.
//!
//! qemu ends with this process: a SIGTERM, SIGINT or SIGHUP stops it (then this process
//! exits non-zero), and so does this process's parent dying (PR_SET_PDEATHSIG gives this
//! process a SIGTERM) or this process dying any other way, SIGKILL included (qemu has
//! PR_SET_PDEATHSIG SIGKILL).

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::{io, Error, Result};

/// Which accelerator qemu uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: slower, works everywhere (KVM guests hang on some hosts).
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

/// The machine's firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS; the NIC's option ROM (qemu's iPXE) does PXE. DHCP architecture 0.
    Bios,
    /// OVMF (Debian's `ovmf`), whose own PXE client boots; the NIC has no option ROM,
    /// so the firmware's PXE is the one a UEFI machine's vendor ships, not iPXE.
    /// DHCP architecture 7.
    Uefi,
}

/// Debian's OVMF: the code and the template of the variable store.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// See [`OVMF_CODE`].
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The tap device the NIC is plugged into (it must exist, in this network namespace).
    pub tap: String,
    /// The firmware.
    pub firmware: Firmware,
    /// OVMF's code (UEFI only).
    pub ovmf_code: PathBuf,
    /// OVMF's variable-store template, copied for each run (UEFI only).
    pub ovmf_vars: PathBuf,
    /// The NIC's MAC address.
    pub mac: String,
    /// The SMBIOS UUID; `None` makes a random one.
    pub uuid: Option<String>,
    /// Accelerator.
    pub accel: Accel,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Where the serial console goes; `None` is qemu's stdout.
    pub serial_log: Option<PathBuf>,
    /// Kill qemu after this long.
    pub timeout: Option<Duration>,
    /// The qemu binary.
    pub qemu: PathBuf,
    /// A unix socket for qemu's human monitor (e.g. `sendkey ctrl-alt-delete`).
    pub monitor: Option<PathBuf>,
    /// The RTC's starting date (`YYYY-MM-DD`); `None` is the host's time.
    pub rtc_base: Option<String>,
    /// Whether a guest reboot boots it again (over PXE) instead of ending qemu.
    pub reboot: bool,
}

/// Checks a `--rtc-base` date: YYYY-MM-DD, digits only.
pub fn parse_date(d: &str) -> Result<String> {
    let parts: Vec<&str> = d.split('-').collect();
    let ok = parts.len() == 3
        && [4, 2, 2]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_digit()));
    if !ok {
        return Err(Error::BadArgument {
            arg: format!("--rtc-base {d}"),
            reason: "expected a date like 2000-01-01".into(),
        });
    }
    Ok(d.to_string())
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// qemu's exit status; `None` when it was killed at the timeout.
    pub status: Option<ExitStatus>,
    /// The UUID the machine had.
    pub uuid: String,
    /// Wall time from qemu start to its exit.
    pub elapsed: Duration,
}

/// Validates a MAC address (six colon-separated hex octets).
pub fn parse_mac(mac: &str) -> Result<String> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    if !ok {
        return Err(Error::BadArgument {
            arg: format!("--mac {mac}"),
            reason: "expected six hex octets like 52:54:00:12:34:56".into(),
        });
    }
    Ok(mac.to_ascii_lowercase())
}

/// A random RFC 4122 version 4 UUID, from the kernel's generator.
pub fn random_uuid() -> Result<String> {
    let p = Path::new("/proc/sys/kernel/random/uuid");
    Ok(std::fs::read_to_string(p)
        .map_err(io("reading", p))?
        .trim()
        .to_string())
}

/// Checks a `--tap` name: a tap device of this network namespace.
pub fn check_tap(tap: &str) -> Result<()> {
    let bad = |reason: String| Error::BadArgument {
        arg: format!("--tap {tap}"),
        reason,
    };
    if tap.is_empty() || tap.len() > 15 || tap.contains(['/', '\0']) || tap.starts_with('.') {
        return Err(bad("not a network interface name".into()));
    }
    match driver_of(tap) {
        Ok(None) => Err(bad(
            "no such network interface here (make it first: ip tuntap add NAME mode tap; \
             in a network namespace, run this there)"
                .into(),
        )),
        Ok(Some(info)) if info.driver == "tun" && info.bus == "tap" => Ok(()),
        Ok(Some(_)) => Err(bad("is a network interface, but not a tap device".into())),
        Err(e) => Err(bad(format!("cannot ask its driver: {e}"))),
    }
}

/// What ethtool says of an interface's driver.
#[derive(Debug)]
struct DriverInfo {
    /// `tun` for tun and tap devices.
    driver: String,
    /// `tap` or `tun` for the tun driver.
    bus: String,
}

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (padded to the union's size).
#[repr(C)]
struct IfreqData {
    name: [u8; 16],
    data: *mut EthtoolDrvinfo,
    pad: [u8; 16],
}

const ETHTOOL_GDRVINFO: u32 = 3;

/// The driver of interface `name` in this process's network namespace, `None` when it
/// has no such interface. Asked with ethtool's ioctl, not read from /sys/class/net:
/// sysfs shows the namespace it was mounted in, which after `nsenter --net` is not ours.
fn driver_of(name: &str) -> std::io::Result<Option<DriverInfo>> {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    let mut req = IfreqData {
        name: [0; 16],
        data: &mut info,
        pad: [0; 16],
    };
    // The caller checked the length: at most 15 bytes, so the name stays NUL-terminated.
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name and a pointer) and writes at
    // most size_of::<EthtoolDrvinfo>() bytes through `req.data`, which points at `info`,
    // alive and exclusively borrowed for the call. nix has no wrapper for this ioctl.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODEV) => Ok(None),
            // A device without ethtool's driver info (lo, a bridge on old kernels).
            Some(libc::EOPNOTSUPP) => Ok(Some(DriverInfo {
                driver: String::new(),
                bus: String::new(),
            })),
            _ => Err(e),
        };
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Ok(Some(DriverInfo {
        driver: text(&info.driver),
        bus: text(&info.bus_info),
    }))
}

/// The signals that end a run; blocked here and read from a signalfd, so that qemu is
/// stopped before this process exits.
fn ending_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Boots the machine and waits for qemu to exit (the guest powering off), the timeout,
/// or a signal to this process.
pub fn run(opts: &RunOptions) -> Result<RunOutcome> {
    let mac = parse_mac(&opts.mac)?;
    let rtc = opts.rtc_base.as_deref().map(parse_date).transpose()?;
    check_tap(&opts.tap)?;
    if opts.firmware == Firmware::Uefi {
        for (flag, p) in [
            ("--ovmf-code", &opts.ovmf_code),
            ("--ovmf-vars", &opts.ovmf_vars),
        ] {
            if !p.is_file() {
                return Err(Error::BadArgument {
                    arg: format!("{flag} {}", p.display()),
                    reason: "not found (Debian's `ovmf` package has it)".into(),
                });
            }
        }
    }
    let uuid = match &opts.uuid {
        Some(u) => u.clone(),
        None => random_uuid()?,
    };
    // Blocked before anything can need stopping; the parent's death becomes a SIGTERM.
    let ending = ending_signals();
    ending
        .thread_block()
        .map_err(|e| Error::Qemu(format!("blocking signals: {e}")))?;
    let sigfd = SignalFd::with_flags(&ending, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| Error::Qemu(format!("signalfd: {e}")))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .map_err(|e| Error::Qemu(format!("PR_SET_PDEATHSIG: {e}")))?;

    // The run's copy of OVMF's variable store (UEFI), held open for qemu.
    let mut vars: Option<std::fs::File> = None;
    let serial = match &opts.serial_log {
        Some(p) => format!("file:{}", p.display()),
        None => "stdio".to_string(),
    };
    let accel = match opts.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    };
    let mut cmd = Command::new(&opts.qemu);
    cmd.args([
        "-machine",
        "pc",
        "-accel",
        accel,
        "-m",
        &opts.memory_mib.to_string(),
        "-smp",
        "1",
    ])
    .args(["-display", "none", "-serial", &serial])
    .arg("-monitor")
    .arg(match &opts.monitor {
        Some(p) => format!("unix:{},server=on,wait=off", p.display()),
        None => "none".into(),
    })
    .args(["-uuid", &uuid])
    .args((!opts.reboot).then_some("-no-reboot"))
    .args(
        rtc.map(|d| ["-rtc".to_string(), format!("base={d}")])
            .into_iter()
            .flatten(),
    )
    .arg("-netdev")
    .arg(format!(
        "tap,id=n0,ifname={},script=no,downscript=no",
        opts.tap
    ));
    match opts.firmware {
        Firmware::Bios => {
            cmd.args([
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={mac},bootindex=1"),
            ]);
        }
        Firmware::Uefi => {
            // A copy per run, unlinked as soon as it is open: qemu writes it through the
            // descriptor it inherits, and no file is left however this process ends.
            let copy = std::env::temp_dir().join(format!(
                "plinth-boot-ovmf-vars-{}-{}.fd",
                std::process::id(),
                mac.replace(':', "")
            ));
            std::fs::copy(&opts.ovmf_vars, &copy)
                .map_err(io("copying OVMF's variables to", &copy))?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&copy);
            let _ = std::fs::remove_file(&copy);
            let file = file.map_err(io("opening", &copy))?;
            let fd = file.as_raw_fd();
            vars = Some(file);
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    opts.ovmf_code.display()
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file=/proc/self/fd/{fd}"
                ))
                // No option ROM: OVMF's own PXE client, not iPXE's UEFI driver.
                .args([
                    "-device",
                    &format!("virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"),
                ]);
        }
    }
    cmd.stdin(Stdio::null());
    let vars_fd = vars.as_ref().map(|f| f.as_raw_fd());
    // SAFETY: between fork and exec the child makes only async-signal-safe system calls
    // (prctl, sigprocmask, fcntl) and touches no memory the parent shares.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)?;
            // The variable store's descriptor survives the exec (std opens with CLOEXEC).
            if let Some(fd) = vars_fd {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Qemu(format!("starting {}: {e}", opts.qemu.display())))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(e) => {
                stop(&mut child);
                return Err(Error::Qemu(format!("waiting for qemu: {e}")));
            }
        }
        if let Ok(Some(info)) = sigfd.read_signal() {
            stop(&mut child);
            let name = Signal::try_from(info.ssi_signo as i32).map_or_else(
                |_| format!("signal {}", info.ssi_signo),
                |s| s.as_str().to_string(),
            );
            return Err(Error::Ended { signal: name });
        }
        if opts.timeout.is_some_and(|t| start.elapsed() > t) {
            stop(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(RunOutcome {
        status,
        uuid,
        elapsed: start.elapsed(),
    })
}

/// Stops qemu: SIGTERM (it exits at once, cleanly), SIGKILL after 5 s.
fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_macs_and_dates() {
        assert!(check_tap("lo").is_err(), "not a tap");
        assert!(check_tap("plinth-no-such").is_err());
        assert!(check_tap("../x").is_err());
        assert!(parse_mac("52:54:00:12:34:56").is_ok());
        assert!(parse_mac("52:54:00:12:34").is_err());
        assert!(parse_date("2000-01-01").is_ok());
        assert!(parse_date("2000-1-1").is_err());
    }
}
