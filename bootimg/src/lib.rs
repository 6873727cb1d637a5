//! plinth-bootimg: builds the Plinth node image (kernel, newc initramfs with plinth-init
//! as PID 1, iPXE script) reproducibly and without root, and boots it in qemu over PXE.
//!
//! ```text
//! make kernel                        # Debian's kernel unpacked into .cache/kernel (once)
//! plinth-boot build -o DIR           # vmlinuz, initrd, boot.ipxe; prints what went in
//!     [--kernel FILE] [--extra SRC:DEST]... [--module NAME]... [--no-modules]
//!     [--plinth-dir DIR | --no-plinth] [--init FILE] [--runtime FILE] [--cmdline ARGS]
//! plinth-server --listen 10.33.0.2:8080 --proxy-dhcp 10.33.0.2 --boot-dir DIR --data STATE
//! plinth-boot run --tap TAP [--firmware bios|uefi] [--mac MAC] [--uuid UUID]
//!     [--accel tcg|kvm] [--serial-log FILE] [--timeout SECS] [--monitor SOCKET]
//! ```
//!
//! The image: `/init -> usr/bin/plinth-init`, `/usr/bin/plinth`, the loader and every
//! DT_NEEDED library of both at their host paths (symlinks included), the kernel modules
//! of [`image::DEFAULT_MODULES`] with their modules.dep and softdep closure under
//! `/usr/lib/modules/<release>` and their load order in `/etc/plinth/modules`, and
//! `/dev/console`. Entries are sorted, owned 0:0, dated `SOURCE_DATE_EPOCH` (0 if unset),
//! gzip-compressed with a fixed header: the same inputs give the same bytes.

pub mod cpio;
pub mod elf;
pub mod error;
pub mod extension;
pub mod image;
pub mod ipxe;
pub mod kernel;
pub mod libs;
pub mod modules;
pub mod progress;
pub mod qemu;

pub use error::{Error, Result};
