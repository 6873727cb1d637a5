//! TEMPORARY placeholder with the agreed interface, replaced by the real cgroup layer
//! (branch `cgroups`) before anything relies on it. Not a stand-in for tests.
use std::path::{Path, PathBuf};

use crate::error::Result;

/// Placeholder.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cgroup {}
impl Cgroup {
    /// Placeholder.
    pub fn resolve(_p: Option<&Path>, _id: &str) -> Result<Cgroup> { Ok(Cgroup {}) }
    /// Placeholder.
    pub fn create(&mut self, _r: Option<&oci_spec::runtime::LinuxResources>) -> Result<()> { Ok(()) }
    /// Placeholder.
    pub fn add_pid(&self, _pid: i32) -> Result<()> { Ok(()) }
    /// Placeholder.
    pub fn pids(&self) -> Result<Vec<i32>> { Ok(vec![]) }
    /// Placeholder.
    pub fn destroy(&self) -> Result<()> { Ok(()) }
    /// Placeholder.
    pub fn thaw(&self) -> Result<()> { Ok(()) }
    /// Placeholder.
    pub fn is_frozen(&self) -> Result<bool> { Ok(false) }
    /// Placeholder.
    pub fn path_for(&self, _c: &str) -> Option<PathBuf> { None }
}
