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
    /// What the config asked for that the runtime's own bounding set lacks, left out
    /// of every set above.
    pub unavailable: Vec<Capability>,
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
    /// Converts `process.capabilities`, leaving out what the runtime itself does not
    /// hold in its bounding set and so cannot give (a nested runtime, or a VM like this
    /// project's whose bounding set lacks CAP_SYS_RESOURCE); those are listed in
    /// `unavailable` for the caller to report. A privileged config lists every
    /// capability; podman and docker leave out the ones the host withholds the same way.
    /// The bounding set is read here once, in the runtime, and carried to the init,
    /// which grants nothing outside it (in a new user namespace the init's own
    /// bounding set is full again, so it cannot be read there instead).
    pub fn from_config(c: Option<&LinuxCapabilities>) -> Result<Sets> {
        let held = caps::read(None, CapSet::Bounding)
            .unwrap_or_else(|_| caps::runtime::thread_all_supported());
        let mut sets = Sets::default();
        let Some(c) = c else {
            return Ok(sets);
        };
        sets.bounding = convert(c.bounding(), "process.capabilities.bounding")?;
        sets.effective = convert(c.effective(), "process.capabilities.effective")?;
        sets.inheritable = convert(c.inheritable(), "process.capabilities.inheritable")?;
        sets.permitted = convert(c.permitted(), "process.capabilities.permitted")?;
        sets.ambient = convert(c.ambient(), "process.capabilities.ambient")?;
        let held = &held;
        let mut missing: Vec<Capability> = [
            &sets.bounding,
            &sets.effective,
            &sets.inheritable,
            &sets.permitted,
            &sets.ambient,
        ]
        .into_iter()
        .flatten()
        .filter(|c| !held.contains(c))
        .copied()
        .collect();
        missing.sort_by_key(|c| c.index());
        missing.dedup();
        for set in [
            &mut sets.bounding,
            &mut sets.effective,
            &mut sets.inheritable,
            &mut sets.permitted,
            &mut sets.ambient,
        ] {
            set.retain(|c| held.contains(c));
        }
        sets.unavailable = missing;
        Ok(sets)
    }
}

/// Drops from the bounding set everything `sets.bounding` lacks. Needs CAP_SETPCAP,
/// so it runs before the user switch.
pub fn drop_bounding(sets: &Sets) -> Result<()> {
    // Every capability the kernel knows, not only those the runtime held: a process
    // in a new user namespace starts with a full bounding set there.
    for cap in caps::runtime::thread_all_supported().difference(&sets.bounding) {
        caps::drop(None, CapSet::Bounding, *cap)
            .map_err(|e| Error::Invalid(format!("drop {cap} from the bounding set: {e}")))?;
    }
    Ok(())
}

/// Sets effective, permitted and inheritable, then the ambient set. Runs after the
/// user switch (with PR_SET_KEEPCAPS held across it).
pub fn apply(sets: &Sets) -> Result<()> {
    // The bounding set drop_bounding left (the config's, less what the runtime
    // lacked) is all that can be granted.
    let keep =
        |s: &CapsHashSet| -> CapsHashSet { s.intersection(&sets.bounding).copied().collect() };
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
