//! The iPXE script shipped with the image. It uses URLs relative to the script's own,
//! so whoever serves the directory (plinth-server, or any HTTP server) serves the kernel
//! and initrd beside it; `plinth-server` prepends `set plinth-server <its URL>` per machine.

/// Kernel arguments every node boots with: serial console first (the tests read it),
/// `initrd=` for EFI stubs, and where the provisioning server is.
pub const BASE_CMDLINE: &str =
    "console=tty0 console=ttyS0,115200 initrd=initrd plinth.server=${plinth-server}";

/// Renders the script; `extra` is appended to the kernel command line.
pub fn script(extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(" {extra}")
    };
    format!(
        "#!ipxe\n\
         # Plinth node image (plinth-boot build). plinth-server serves this with\n\
         # `set plinth-server URL` added; elsewhere, set it before chaining this script.\n\
         isset ${{plinth-server}} || set plinth-server http://${{next-server}}:8080\n\
         kernel vmlinuz {BASE_CMDLINE}{extra}\n\
         initrd initrd\n\
         boot\n"
    )
}
