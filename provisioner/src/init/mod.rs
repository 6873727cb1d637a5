//! The PID-1 layer of plinth-init: early mounts, kernel modules, signals, reaping,
//! shutdown and the console. The agent that provisions the machine ([`crate::node`])
//! runs on top of it.
//!
//! PID 1 must never panic (a panic in PID 1 is a kernel panic): errors are logged to the
//! console and retried with backoff, and a panic hook that reboots after a pause is the
//! last resort for bugs.

pub mod console;
pub mod kmod;
pub mod mounts;
pub mod pid1;
pub mod reroot;

use std::path::Path;

/// Where plinth-boot writes the module load list in the image.
pub const MODULES_LIST: &str = "/etc/plinth/modules";

/// Milliseconds since the kernel started (CLOCK_BOOTTIME), 0 if the clock is unreadable.
pub fn uptime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// Reads the SMBIOS UUID; all zeros (qemu's default) or unreadable gives the nil UUID,
/// which identifies nothing.
pub fn smbios_uuid(sys: &Path) -> String {
    let p = sys.join("class/dmi/id/product_uuid");
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|s| crate::schema::valid_uuid(s))
        .unwrap_or_else(|| "00000000-0000-0000-0000-000000000000".into())
}

/// Reads the SMBIOS serial, if the firmware set one.
pub fn smbios_serial(sys: &Path) -> Option<String> {
    std::fs::read_to_string(sys.join("class/dmi/id/product_serial"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 128)
}

/// Installs the last-resort panic hook: say so on the console, pause, reboot.
pub fn panic_reboots() {
    std::panic::set_hook(Box::new(|info| {
        console::log(&format!("BUG: {info}; rebooting in 10s"));
        std::thread::sleep(std::time::Duration::from_secs(10));
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(60));
        }
    }));
}
