//! The process's scheduling, as runtime-spec's `process.scheduler`, `ioPriority` and
//! `execCPUAffinity` and `linux.personality` describe them: sched_setattr(2),
//! ioprio_set(2), sched_setaffinity(2) and personality(2), none of which nix wraps
//! (or not all of them). Values are checked by `check_*` before anything is created,
//! each error naming its field.

use oci_spec::runtime::{
    IOPriorityClass, LinuxIOPriority, LinuxPersonality, LinuxPersonalityDomain,
    LinuxSchedulerFlag as Flag, LinuxSchedulerPolicy as Policy, Scheduler,
};

use crate::error::{Error, Result};

/// runtime-spec's scheduler flag names and oci-spec's spelling of each (the crate's
/// serde names differ for two of them). `config::parse` maps the spec's names to the
/// crate's before parsing, and refuses the crate's own odd spellings.
pub const FLAG_NAMES: [(&str, &str); 7] = [
    ("SCHED_FLAG_RESET_ON_FORK", "SCHED_RESET_ON_FORK"),
    ("SCHED_FLAG_RECLAIM", "SCHED_FLAG_RECLAIM"),
    ("SCHED_FLAG_DL_OVERRUN", "SCHED_FLAG_D_L_OVERRUN"),
    ("SCHED_FLAG_KEEP_POLICY", "SCHED_FLAG_KEEP_POLICY"),
    ("SCHED_FLAG_KEEP_PARAMS", "SCHED_FLAG_KEEP_PARAMS"),
    ("SCHED_FLAG_UTIL_CLAMP_MIN", "SCHED_FLAG_UTIL_CLAMP_MIN"),
    ("SCHED_FLAG_UTIL_CLAMP_MAX", "SCHED_FLAG_UTIL_CLAMP_MAX"),
];

fn policy_number(p: Policy) -> u32 {
    match p {
        Policy::SchedOther => 0,
        Policy::SchedFifo => 1,
        Policy::SchedRr => 2,
        Policy::SchedBatch => 3,
        Policy::SchedIso => 4,
        Policy::SchedIdle => 5,
        Policy::SchedDeadline => 6,
    }
}

fn flag_bit(f: Flag) -> u64 {
    match f {
        Flag::SchedResetOnFork => 0x01,
        Flag::SchedFlagReclaim => 0x02,
        Flag::SchedFlagDLOverrun => 0x04,
        Flag::SchedFlagKeepPolicy => 0x08,
        Flag::SchedFlagKeepParams => 0x10,
        Flag::SchedFlagUtilClampMin => 0x20,
        Flag::SchedFlagUtilClampMax => 0x40,
    }
}

/// Checks `process.scheduler` as runtime-spec and the kernel would: nice only for
/// SCHED_OTHER and SCHED_BATCH (-20..19), a priority of 1..99 only for SCHED_FIFO and
/// SCHED_RR, runtime/deadline/period only for SCHED_DEADLINE, with
/// 1024 ns <= runtime <= deadline <= period (a period of 0 is the deadline).
pub fn check_scheduler(s: &Scheduler) -> Result<()> {
    const F: &str = "process.scheduler";
    let p = *s.policy();
    if p == Policy::SchedIso {
        return Err(Error::config(
            format!("{F}.policy"),
            "SCHED_ISO is not implemented by Linux",
        ));
    }
    let normal = matches!(p, Policy::SchedOther | Policy::SchedBatch);
    let realtime = matches!(p, Policy::SchedFifo | Policy::SchedRr);
    let deadline = p == Policy::SchedDeadline;
    if let Some(n) = s.nice() {
        if !normal && *n != 0 {
            return Err(Error::config(
                format!("{F}.nice"),
                format!("only SCHED_OTHER and SCHED_BATCH take a nice value, not {p}"),
            ));
        }
        if !(-20..=19).contains(n) {
            return Err(Error::config(
                format!("{F}.nice"),
                format!("{n} is not in -20..19"),
            ));
        }
    }
    let prio = s.priority().unwrap_or(0);
    if realtime && !(1..=99).contains(&prio) {
        return Err(Error::config(
            format!("{F}.priority"),
            format!("{p} needs a priority in 1..99, not {prio}"),
        ));
    }
    if !realtime && prio != 0 {
        return Err(Error::config(
            format!("{F}.priority"),
            format!("only SCHED_FIFO and SCHED_RR take a priority, not {p}"),
        ));
    }
    let (runtime, dl, period) = (
        s.runtime().unwrap_or(0),
        s.deadline().unwrap_or(0),
        s.period().unwrap_or(0),
    );
    if !deadline {
        for (name, v) in [("runtime", runtime), ("deadline", dl), ("period", period)] {
            if v != 0 {
                return Err(Error::config(
                    format!("{F}.{name}"),
                    format!("only SCHED_DEADLINE takes a {name}, not {p}"),
                ));
            }
        }
    } else {
        if runtime < 1024 {
            return Err(Error::config(
                format!("{F}.runtime"),
                format!("SCHED_DEADLINE needs a runtime of at least 1024 ns, not {runtime}"),
            ));
        }
        if dl < runtime {
            return Err(Error::config(
                format!("{F}.deadline"),
                format!("{dl} is below the runtime {runtime}"),
            ));
        }
        if period != 0 && period < dl {
            return Err(Error::config(
                format!("{F}.period"),
                format!("{period} is below the deadline {dl}"),
            ));
        }
    }
    Ok(())
}

/// Applies `process.scheduler` to the calling process (sched_setattr).
pub fn set_scheduler(s: &Scheduler) -> Result<()> {
    /// struct sched_attr, SCHED_ATTR_SIZE_VER1 (56 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
        util_min: u32,
        util_max: u32,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: policy_number(*s.policy()),
        flags: s
            .flags()
            .iter()
            .flatten()
            .map(|f| flag_bit(*f))
            .fold(0, |a, b| a | b),
        nice: s.nice().unwrap_or(0),
        priority: s.priority().unwrap_or(0).max(0) as u32,
        runtime: s.runtime().unwrap_or(0),
        deadline: s.deadline().unwrap_or(0),
        period: s.period().unwrap_or(0),
        util_min: 0,
        util_max: 1024,
    };
    // SAFETY: sched_setattr(0, attr, 0) reads `size` bytes of a struct we own, laid out
    // as the kernel's struct sched_attr.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r < 0 {
        return Err(Error::sys(
            format!("process.scheduler: sched_setattr {}", s.policy()),
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

/// Checks `process.ioPriority`: a priority of 0..7.
pub fn check_io_priority(p: &LinuxIOPriority) -> Result<()> {
    if !(0..=7).contains(&p.priority()) {
        return Err(Error::config(
            "process.ioPriority.priority",
            format!("{} is not in 0..7", p.priority()),
        ));
    }
    Ok(())
}

/// Applies `process.ioPriority` to the calling process (ioprio_set).
pub fn set_io_priority(p: &LinuxIOPriority) -> Result<()> {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    let class: libc::c_long = match p.class() {
        IOPriorityClass::IoprioClassRt => 1,
        IOPriorityClass::IoprioClassBe => 2,
        IOPriorityClass::IoprioClassIdle => 3,
    };
    let value = (class << 13) | p.priority() as libc::c_long;
    // SAFETY: ioprio_set takes three integers.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, value) };
    if r < 0 {
        return Err(Error::sys(
            format!(
                "process.ioPriority: ioprio_set {} {}",
                p.class(),
                p.priority()
            ),
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}

/// Parses a CPU list (`0-3,5`), as `execCPUAffinity` gives it.
pub fn parse_cpu_list(s: &str, field: &str) -> Result<Vec<usize>> {
    let bad = || Error::config(field, format!("{s:?} is not a CPU list such as 0-3,5"));
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a > b || b >= 1024 {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Pins the calling process to `cpus` (sched_setaffinity).
pub fn set_affinity(cpus: &[usize], field: &str) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for c in cpus {
        set.set(*c)
            .map_err(|e| Error::sys(format!("{field}: CPU {c}"), e))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| Error::sys(format!("{field}: sched_setaffinity"), e))
}

/// Checks `linux.personality`: its flags (runtime-spec names none that Linux takes
/// here, so any is refused by name).
pub fn check_personality(p: &LinuxPersonality) -> Result<()> {
    if let Some(f) = p.flags().as_ref().and_then(|f| f.first()) {
        return Err(Error::config(
            "linux.personality.flags[0]",
            format!("{f:?}: no personality flag is supported"),
        ));
    }
    Ok(())
}

/// Applies `linux.personality` to the calling process (personality(2)).
pub fn set_personality(p: &LinuxPersonality) -> Result<()> {
    const PER_LINUX: libc::c_ulong = 0x0000;
    const PER_LINUX32: libc::c_ulong = 0x0008;
    let persona = match p.domain() {
        LinuxPersonalityDomain::PerLinux => PER_LINUX,
        LinuxPersonalityDomain::PerLinux32 => PER_LINUX32,
    };
    // SAFETY: personality takes one integer.
    if unsafe { libc::personality(persona) } < 0 {
        return Err(Error::sys(
            format!("linux.personality: personality {}", p.domain()),
            nix::errno::Errno::last(),
        ));
    }
    Ok(())
}
