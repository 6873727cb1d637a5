//! The iPXE script shipped with the image. It uses URLs relative to the script's own,
//! so whoever serves the directory (plinth-server, or any HTTP server) serves the kernel
//! and initrd beside it; `plinth-server` prepends, per machine, `set` lines for its HTTPS
//! URL, its CA pin, the machine's enrolment token and its SNTP address. An unset iPXE
//! setting expands to nothing, which plinth-init reads as absent.

/// Kernel arguments every node boots with: serial console first (the tests read it),
/// `initrd=` for EFI stubs, and what the node needs to enrol.
pub const BASE_CMDLINE: &str = "console=tty0 console=ttyS0,115200 initrd=initrd \
     plinth.server=${plinth-server} plinth.ca=${plinth-ca} plinth.token=${plinth-token} \
     plinth.ntp=${plinth-ntp}";

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
         # plinth-server, plinth-ca and plinth-token set per machine; elsewhere, set\n\
         # them before chaining this script.\n\
         isset ${{plinth-server}} || set plinth-server https://${{next-server}}:8081\n\
         kernel vmlinuz {BASE_CMDLINE}{extra}\n\
         initrd initrd\n\
         boot\n"
    )
}
