//! Capabilities of the container process: the five sets of the OCI config applied with
//! the `caps` crate, in the order the kernel requires.

use std::collections::HashSet;

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{Capabilities, LinuxCapabilities};

use crate::error::{Error, Result};

/// The five capability sets, in the `caps` crate's types.
#[derive(Debug, Default, Clone)]
pub struct Sets {
    /// Bounding set.
    pub bounding: CapsHashSet,
    /// Effective set.
    pub effective: CapsHashSet,
    /// Inheritable set.
    pub inheritable: CapsHashSet,
    /// Permitted set.
    pub permitted: CapsHashSet,
    /// Ambient set.
    pub ambient: CapsHashSet,
}

fn convert(set: &Option<Capabilities>, field: &str) -> Result<CapsHashSet> {
    let mut out = HashSet::new();
    for c in set.iter().flatten() {
        let name = format!("CAP_{c}");
        let cap: Capability = name
            .parse()
            .map_err(|_| Error::config(field, format!("unknown capability {name}")))?;
        out.insert(cap);
    }
    Ok(out)
}

impl Sets {
    /// Converts `process.capabilities`.
    pub fn from_config(c: Option<&LinuxCapabilities>) -> Result<Sets> {
        let Some(c) = c else {
            return Ok(Sets::default());
        };
        Ok(Sets {
            bounding: convert(c.bounding(), "process.capabilities.bounding")?,
            effective: convert(c.effective(), "process.capabilities.effective")?,
            inheritable: convert(c.inheritable(), "process.capabilities.inheritable")?,
            permitted: convert(c.permitted(), "process.capabilities.permitted")?,
            ambient: convert(c.ambient(), "process.capabilities.ambient")?,
        })
    }
}

/// The capabilities this kernel knows (the bounding set cannot hold others).
fn supported() -> CapsHashSet {
    caps::runtime::thread_all_supported()
}

/// The capabilities the config asks for that the runtime itself does not have in its
/// bounding set, and so cannot give (a nested runtime, or a VM like this project's
/// whose bounding set lacks CAP_SYS_RESOURCE). A privileged config lists every
/// capability; podman and docker leave out the ones the host withholds in the same way.
pub fn unavailable(sets: &Sets) -> Vec<Capability> {
    let have = caps::read(None, CapSet::Bounding).unwrap_or_else(|_| supported());
    let mut out: Vec<Capability> = [
        &sets.bounding,
        &sets.effective,
        &sets.inheritable,
        &sets.permitted,
        &sets.ambient,
    ]
    .into_iter()
    .flatten()
    .filter(|c| !have.contains(c))
    .copied()
    .collect();
    out.sort_by_key(|c| c.index());
    out.dedup();
    out
}

/// Drops from the bounding set everything `sets.bounding` lacks. Needs CAP_SETPCAP,
/// so it runs before the user switch.
pub fn drop_bounding(sets: &Sets) -> Result<()> {
    for cap in supported() {
        if !sets.bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| Error::Invalid(format!("drop {cap} from the bounding set: {e}")))?;
        }
    }
    Ok(())
}

/// Sets effective, permitted and inheritable, then the ambient set. Runs after the
/// user switch (with PR_SET_KEEPCAPS held across it).
pub fn apply(sets: &Sets) -> Result<()> {
    // What the bounding set holds now (the config's, less what the runtime lacked)
    // is all that can be granted.
    let known = caps::read(None, CapSet::Bounding)
        .map_err(|e| Error::Invalid(format!("read the bounding set: {e}")))?;
    let keep = |s: &CapsHashSet| -> CapsHashSet { s.intersection(&known).copied().collect() };
    caps::set(None, CapSet::Inheritable, &keep(&sets.inheritable))
        .map_err(|e| Error::Invalid(format!("set the inheritable capabilities: {e}")))?;
    // Permitted before effective: effective must stay a subset of permitted.
    let permitted = keep(&sets.permitted);
    let effective = keep(&sets.effective);
    caps::set(
        None,
        CapSet::Effective,
        &effective.intersection(&permitted).copied().collect(),
    )
    .map_err(|e| Error::Invalid(format!("set the effective capabilities: {e}")))?;
    caps::set(None, CapSet::Permitted, &permitted)
        .map_err(|e| Error::Invalid(format!("set the permitted capabilities: {e}")))?;
    caps::set(None, CapSet::Effective, &effective)
        .map_err(|e| Error::Invalid(format!("set the effective capabilities: {e}")))?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| Error::Invalid(format!("clear the ambient capabilities: {e}")))?;
    for cap in keep(&sets.ambient) {
        // The kernel refuses an ambient capability that is not both permitted and
        // inheritable; that is the config's choice to make, so skip rather than fail.
        if sets.permitted.contains(&cap) && sets.inheritable.contains(&cap) {
            caps::raise(None, CapSet::Ambient, cap)
                .map_err(|e| Error::Invalid(format!("raise ambient {cap}: {e}")))?;
        }
    }
    Ok(())
}
