//! `plinth-boot run`: boots a machine in qemu over PXE. The NIC's iPXE ROM gets its
//! address from qemu's user-mode (slirp) DHCP, fetches a one-line chain script from
//! slirp's TFTP, and from there everything comes from plinth-server over HTTP
//! (10.0.2.2 is the host's loopback as the guest sees it).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{io, Error, Result};

/// Which accelerator qemu uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation: slower, works everywhere (KVM guests hang on some hosts).
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The built image (vmlinuz, initrd, boot.ipxe).
    pub boot_dir: PathBuf,
    /// plinth-server's URL as the host sees it; `None` boots from slirp's TFTP alone.
    pub server: Option<String>,
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

/// The server URL as the guest reaches it: loopback addresses become slirp's 10.0.2.2.
pub fn guest_url(server: &str) -> Result<String> {
    let rest = server
        .strip_prefix("http://")
        .ok_or_else(|| Error::BadArgument {
            arg: format!("--server {server}"),
            reason: "must be an http:// URL (iPXE has no TLS)".into(),
        })?;
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, String::new()));
    let (host, port) = hostport
        .rsplit_once(':')
        .map(|(h, p)| (h, format!(":{p}")))
        .unwrap_or((hostport, String::new()));
    let host = match host {
        "127.0.0.1" | "localhost" | "0.0.0.0" | "[::1]" => "10.0.2.2",
        h => h,
    };
    Ok(format!("http://{host}{port}{}", path.trim_end_matches('/')))
}

/// Boots the machine and waits for qemu to exit (the guest powering off) or the timeout.
pub fn run(opts: &RunOptions) -> Result<RunOutcome> {
    for f in ["vmlinuz", "initrd", "boot.ipxe"] {
        let p = opts.boot_dir.join(f);
        if !p.is_file() {
            return Err(Error::Missing {
                what: "image file",
                path: p,
                hint: " (run `plinth-boot build -o DIR` first)",
            });
        }
    }
    let mac = parse_mac(&opts.mac)?;
    let rtc = opts.rtc_base.as_deref().map(parse_date).transpose()?;
    let uuid = match &opts.uuid {
        Some(u) => u.clone(),
        None => random_uuid()?,
    };
    // slirp's TFTP root: the chain script to the server, or the image itself.
    let tftp_tmp = std::env::temp_dir().join(format!("plinth-boot-tftp-{}", std::process::id()));
    let (tftp_root, bootfile) = match &opts.server {
        Some(server) => {
            let url = guest_url(server)?;
            std::fs::create_dir_all(&tftp_tmp).map_err(io("creating", &tftp_tmp))?;
            let script = format!("#!ipxe\nchain {url}/boot.ipxe?mac=${{net0/mac}}&uuid=${{uuid}}&serial=${{serial}}\n");
            let p = tftp_tmp.join("chain.ipxe");
            std::fs::write(&p, script).map_err(io("writing", &p))?;
            (tftp_tmp.clone(), "chain.ipxe")
        }
        None => (opts.boot_dir.clone(), "boot.ipxe"),
    };
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
    .args(["-uuid", &uuid, "-boot", "n"])
    .args((!opts.reboot).then_some("-no-reboot"))
    .args(
        rtc.map(|d| ["-rtc".to_string(), format!("base={d}")])
            .into_iter()
            .flatten(),
    )
    .arg("-netdev")
    .arg(format!(
        "user,id=n0,tftp={},bootfile={bootfile}",
        tftp_root.display()
    ))
    .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")])
    .stdin(Stdio::null());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Qemu(format!("starting {}: {e}", opts.qemu.display())))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(e) => return Err(Error::Qemu(format!("waiting for qemu: {e}"))),
        }
        if opts.timeout.is_some_and(|t| start.elapsed() > t) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = std::fs::remove_dir_all(&tftp_tmp);
    Ok(RunOutcome {
        status,
        uuid,
        elapsed: start.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_macs() {
        assert_eq!(
            guest_url("http://127.0.0.1:8080/").ok().as_deref(),
            Some("http://10.0.2.2:8080")
        );
        assert_eq!(
            guest_url("http://boot.example:80").ok().as_deref(),
            Some("http://boot.example:80")
        );
        assert!(guest_url("https://x").is_err());
        assert!(parse_mac("52:54:00:12:34:56").is_ok());
        assert!(parse_mac("52:54:00:12:34").is_err());
        assert!(parse_date("2000-01-01").is_ok());
        assert!(parse_date("2000-1-1").is_err());
    }
}
