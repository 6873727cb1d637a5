//! plinth-bootimg: builds the Plinth node image (kernel, newc initramfs with plinth-init
//! as PID 1, iPXE script) reproducibly and without root, and boots it in qemu over PXE.

pub mod cpio;
pub mod elf;
pub mod error;
pub mod image;
pub mod ipxe;
pub mod kernel;
pub mod libs;
pub mod modules;
pub mod progress;
pub mod qemu;

pub use error::{Error, Result};
