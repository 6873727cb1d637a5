//! TEMPORARY placeholder with the agreed interface, replaced by the real compiler
//! (branch `seccomp`) before anything relies on it.
use crate::error::{Error, Result};

/// Placeholder.
#[derive(Debug, Clone)]
pub struct Program;
/// Placeholder: refuses every profile.
pub fn compile(_p: &oci_spec::runtime::LinuxSeccomp) -> Result<Program> {
    Err(Error::Seccomp("not built yet".into()))
}
impl Program {
    /// Placeholder.
    pub fn install(&self) -> Result<()> { Ok(()) }
}
