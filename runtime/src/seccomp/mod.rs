//! Compiles an OCI seccomp profile (`linux.seccomp`) into one classic-BPF filter and
//! installs it.
//!
//! # Why hand-written BPF, not `seccompiler`
//! `seccompiler` builds one filter per action and per architecture, and knows neither
//! `SCMP_ACT_NOTIFY`, `SCMP_ACT_LOG`-style return data, nor several architectures in
//! one program. An OCI profile needs all of these at once (containerd's default lists
//! x86_64, x86 and x32), and stacking several filters would change the semantics (the
//! kernel takes the most restrictive result of all of them, so an allow in one could
//! not override a default errno in another). So this module generates the single
//! program libseccomp + runc would load, itself.
//!
//! # The program
//! ```text
//!   A = seccomp_data.arch; one `jeq` per audit arch in the profile; else bad-arch action
//!   per audit arch: A = seccomp_data.nr; a binary search over number ranges, each
//!   range ending in a `ret` (or, for a syscall with argument rules, its rule block)
//! ```
//! Every syscall number of an arch falls into one range whose outcome is fixed at
//! compile time: the syscall's action, the default action, the bad-arch action (x32
//! numbers on a filter without x32, and vice versa), or -ENOSYS (runc's stub, below).
//! Runs of consecutive numbers with the same outcome are merged, so the search is
//! short (about 8 comparisons for containerd's profile) and the program small. Jumps
//! too long for cBPF's 8-bit offsets get `ja` trampolines ([`bpf`]).
//!
//! # Semantics (libseccomp's, as runc drives it)
//! - Actions: KILL = KILL_THREAD, KILL_PROCESS, TRAP, ERRNO(errnoRet, default EPERM),
//!   TRACE(errnoRet as data, default EPERM), ALLOW, LOG, NOTIFY. NOTIFY needs
//!   `listenerPath`, cannot be the default action, and cannot apply to `write` (runc).
//! - A rule whose action equals the default action changes nothing and is skipped
//!   (runc does the same before calling libseccomp); its names are still checked and
//!   still count for the -ENOSYS stub.
//! - Architectures: the native one is always added. Other audit arches get the
//!   bad-arch action, libseccomp's default SCMP_ACT_KILL (kill thread), which runc does
//!   not change. An arch without a system-call table here is an error.
//! - x32: it shares AUDIT_ARCH_X86_64 and is told apart by `__X32_SYSCALL_BIT` in the
//!   number; the tables hold x32 numbers with that bit, so an x86_64 rule never matches
//!   an x32 number. As libseccomp does, with only x86_64 listed an x32 number gets the
//!   bad-arch action (and with only x32, an x86_64 number), except nr == -1 (a tracer
//!   skipping the call), which gets the default action.
//! - Names: a name unknown on every listed arch is an error (a typo); a name known on
//!   some of them applies there only. On x86 (i386) the socket and SysV IPC calls
//!   without a direct syscall (`recv`, `send`, `semop`, ...) exist only through the
//!   `socketcall`/`ipc` multiplexers: as libseccomp does, such a rule becomes a rule on
//!   the multiplexer with `arg0 == the sub-call`.
//! - Arguments: each rule's `args` are ANDed. As runc does, when several conditions of
//!   one rule name the same argument, each condition becomes a rule of its own (ORed).
//!   On 64-bit arches values compare as 64 bits (both halves of `seccomp_data.args[i]`);
//!   on 32-bit arches (x86) only the low 32 bits of arg and value, as libseccomp does.
//!   SCMP_CMP_MASKED_EQ takes `value` as the mask and `valueTwo` as the datum
//!   (`arg & value == valueTwo & value`, libseccomp masks the datum too). `valueTwo` on
//!   any other operator is an error unless 0.
//! - Overlapping rules for one syscall: libseccomp builds a decision tree where a less
//!   specific rule absorbs a more specific one (a rule without arguments overrides all
//!   argument rules of that syscall, whatever their order; a rule whose conditions are a
//!   prefix of another's wins over it), and identical conditions with different actions
//!   are refused (-EEXIST). This compiler implements that as: a rule without arguments,
//!   if any, decides; otherwise argument rules are tried from fewest conditions to most
//!   (ties broken by argument index, operator, value), and the first that matches
//!   decides; none matching gives the default action. Identical conditions with
//!   different actions are an error naming both rules; of two argument-less rules with
//!   different actions the first decides, as libseccomp keeps the first (podman's
//!   default profile depends on that).
//! - -ENOSYS (runc's patchbpf): unless the default action is ALLOW, LOG or TRACE, or
//!   the default errno is already ENOSYS, a syscall number above the highest number the
//!   profile names for that arch returns -ENOSYS instead of the default action, so that
//!   a newer libc falls back to older calls (clone3 -> clone). Explicit rules such as
//!   `clone3: SCMP_ACT_ERRNO, errnoRet 38` work as written.
//! - Flags: TSYNC, LOG, SPEC_ALLOW, WAIT_KILLABLE_RECV; NEW_LISTENER is added when a
//!   rule uses NOTIFY (and TSYNC_ESRCH with TSYNC, which the kernel requires for the
//!   two together). WAIT_KILLABLE_RECV without NOTIFY is refused by the kernel, so it
//!   is an error here. Unknown flags, actions, operators and architecture names never
//!   reach this module: deserializing config.json refuses them, naming the field.
//! - At most 4096 instructions (BPF_MAXINSNS); beyond that, an error.

pub mod agent;
mod bpf;
pub mod cache;
mod tables;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction as Action, LinuxSeccompFilterFlag as Flag,
    LinuxSeccompOperator as CmpOp,
};

use crate::error::{Error, Result};
use bpf::{Asm, Jcc, Label};

/// The kernel's limit on a filter's length (BPF_MAXINSNS).
pub const MAX_INSTRUCTIONS: usize = 4096;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel clamps larger errno values to this (MAX_ERRNO).
const MAX_ERRNO: u32 = 4095;
const ENOSYS: u32 = libc::ENOSYS as u32;
const EPERM: u32 = libc::EPERM as u32;
/// System calls that exist only on architectures this compiler has no table for (arm,
/// powerpc, s390, mips, alpha, ia64, m68k, riscv...). The engines' default profiles
/// list them so that one profile serves every host; on the architectures a filter here
/// covers there is no such system call to allow or deny, so naming one is not an
/// error, while a name no architecture knows (a typo) still is.
const OTHER_ARCH_ONLY: &[&str] = &[
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "atomic_barrier",
    "atomic_cmpxchg_32",
    "breakpoint",
    "cachectl",
    "cacheflush",
    "get_tls",
    "multiplexer",
    "or1k_atomic",
    "pciconfig_iobase",
    "pciconfig_read",
    "pciconfig_write",
    "riscv_flush_icache",
    "riscv_hwprobe",
    "rtas",
    "s390_guarded_storage",
    "s390_pci_mmio_read",
    "s390_pci_mmio_write",
    "s390_runtime_instr",
    "s390_sthyi",
    "set_tls",
    "spu_create",
    "spu_run",
    "subpage_prot",
    "swapcontext",
    "switch_endian",
    "sync_file_range2",
    "sys_debug_setcontext",
    "syscall",
    "sysmips",
    "timerfd",
    "usr26",
    "usr32",
];

/// The kill-thread action libseccomp uses for a foreign arch (SCMP_ACT_KILL).
const BAD_ARCH_ACTION: u32 = libc::SECCOMP_RET_KILL_THREAD;

// Offsets in struct seccomp_data: { int nr; u32 arch; u64 ip; u64 args[6]; }.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// Offset of the low 32 bits of args[i] (the arches here are all little-endian).
fn off_lo(i: u8) -> u32 {
    16 + 8 * u32::from(i)
}
fn off_hi(i: u8) -> u32 {
    off_lo(i) + 4
}

/// A system-call ABI the compiler has a table for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Abi {
    X86_64,
    X32,
    X86,
    Aarch64,
}

impl Abi {
    const ALL: [Abi; 4] = [Abi::X86_64, Abi::X32, Abi::X86, Abi::Aarch64];

    fn from_arch(a: Arch) -> Option<Abi> {
        match a {
            Arch::ScmpArchNative => Abi::native(),
            Arch::ScmpArchX86_64 => Some(Abi::X86_64),
            Arch::ScmpArchX32 => Some(Abi::X32),
            Arch::ScmpArchX86 => Some(Abi::X86),
            Arch::ScmpArchAarch64 => Some(Abi::Aarch64),
            _ => None,
        }
    }

    fn native() -> Option<Abi> {
        if cfg!(target_arch = "x86_64") {
            Some(Abi::X86_64)
        } else if cfg!(target_arch = "aarch64") {
            Some(Abi::Aarch64)
        } else if cfg!(target_arch = "x86") {
            Some(Abi::X86)
        } else {
            None
        }
    }

    fn table(self) -> &'static [(&'static str, u32)] {
        match self {
            Abi::X86_64 => tables::X86_64,
            Abi::X32 => tables::X32,
            Abi::X86 => tables::X86,
            Abi::Aarch64 => tables::AARCH64,
        }
    }

    fn audit(self) -> u32 {
        match self {
            Abi::X86_64 | Abi::X32 => AUDIT_ARCH_X86_64,
            Abi::X86 => AUDIT_ARCH_I386,
            Abi::Aarch64 => AUDIT_ARCH_AARCH64,
        }
    }

    /// Whether arguments are 64 bits wide (x32 passes 64-bit registers too).
    fn wide(self) -> bool {
        self != Abi::X86
    }

    fn nr(self, name: &str) -> Option<u32> {
        let t = self.table();
        t.binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| t[i].1)
    }

    /// The range of numbers that belong to this ABI within its audit arch.
    fn range(self) -> (u32, u32) {
        match self {
            Abi::X86_64 => (0, X32_SYSCALL_BIT - 1),
            // -1 is left out: it is the "skip this call" number tracers use.
            Abi::X32 => (X32_SYSCALL_BIT, u32::MAX - 1),
            _ => (0, u32::MAX - 1),
        }
    }
}

/// The i386 multiplexers and their sub-call numbers (linux/net.h, linux/ipc.h), for
/// names that have no direct syscall there.
fn multiplexed(name: &str) -> Option<(&'static str, u32)> {
    const SOCKETCALL: [&str; 20] = [
        "socket",
        "bind",
        "connect",
        "listen",
        "accept",
        "getsockname",
        "getpeername",
        "socketpair",
        "send",
        "recv",
        "sendto",
        "recvfrom",
        "shutdown",
        "setsockopt",
        "getsockopt",
        "sendmsg",
        "recvmsg",
        "accept4",
        "recvmmsg",
        "sendmmsg",
    ];
    const IPC: [(&str, u32); 12] = [
        ("semop", 1),
        ("semget", 2),
        ("semctl", 3),
        ("semtimedop", 4),
        ("msgsnd", 11),
        ("msgrcv", 12),
        ("msgget", 13),
        ("msgctl", 14),
        ("shmat", 21),
        ("shmdt", 22),
        ("shmget", 23),
        ("shmctl", 24),
    ];
    if let Some(i) = SOCKETCALL.iter().position(|n| *n == name) {
        return Some(("socketcall", i as u32 + 1));
    }
    IPC.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, sub)| ("ipc", *sub))
}

/// One comparison of a rule, already validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cond {
    index: u8,
    op: u8,
    value: u64,
    /// The datum of MASKED_EQ (already masked); 0 otherwise.
    two: u64,
}

impl Cond {
    /// The same condition as the kernel sees it on a 32-bit ABI.
    fn narrow(self) -> Cond {
        let lo = |v: u64| v & 0xffff_ffff;
        Cond {
            value: lo(self.value),
            two: lo(self.two),
            ..self
        }
    }
}

/// The rules that apply to one syscall number on one ABI.
#[derive(Default, Debug)]
struct Syscall {
    /// An argument-less rule: (action, index of the rule in the profile).
    plain: Option<(u32, usize)>,
    /// Argument rules: (sorted conditions, action, index of the rule).
    args: Vec<(Vec<Cond>, u32, usize)>,
}

/// What a range of syscall numbers leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ret(u32),
    /// The argument rules of syscall `nr` on `abi`.
    Rules(Abi, u32),
}

/// A compiled seccomp filter, ready to install.
#[derive(Clone)]
pub struct Program {
    filter: Vec<libc::sock_filter>,
    flags: libc::c_ulong,
    listener_path: Option<PathBuf>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("instructions", &self.filter.len())
            .field("flags", &self.flags)
            .field("listener_path", &self.listener_path)
            .finish()
    }
}

/// The JSON path of `linux.seccomp.syscalls[r]`, built only for an error.
fn rule_path(r: usize) -> String {
    format!("linux.seccomp.syscalls[{r}]")
}

/// The SECCOMP_RET_* value of `action` with `errno_ret`; `errno_field` names the
/// errnoRet in errors.
fn action_value(
    action: Action,
    errno_ret: Option<u32>,
    errno_field: impl Fn() -> String,
) -> Result<u32> {
    let data = |max: u32| -> Result<u32> {
        let v = errno_ret.unwrap_or(EPERM);
        if v > max {
            return Err(Error::config(
                errno_field(),
                format!("{v} is out of range (at most {max})"),
            ));
        }
        Ok(v)
    };
    let v = match action {
        Action::ScmpActErrno => libc::SECCOMP_RET_ERRNO | data(MAX_ERRNO)?,
        Action::ScmpActTrace => libc::SECCOMP_RET_TRACE | data(0xffff)?,
        other => {
            if let Some(v) = errno_ret {
                return Err(Error::config(
                    errno_field(),
                    format!("{v} given, but {other} takes no errno"),
                ));
            }
            match other {
                Action::ScmpActKill | Action::ScmpActKillThread => libc::SECCOMP_RET_KILL_THREAD,
                Action::ScmpActKillProcess => libc::SECCOMP_RET_KILL_PROCESS,
                Action::ScmpActTrap => libc::SECCOMP_RET_TRAP,
                Action::ScmpActNotify => libc::SECCOMP_RET_USER_NOTIF,
                Action::ScmpActLog => libc::SECCOMP_RET_LOG,
                Action::ScmpActAllow => libc::SECCOMP_RET_ALLOW,
                Action::ScmpActErrno | Action::ScmpActTrace => unreachable!("handled above"),
            }
        }
    };
    Ok(v)
}

/// Compiles `profile` (the config's `linux.seccomp`) into a filter program.
pub fn compile(profile: &LinuxSeccomp) -> Result<Program> {
    const P: &str = "linux.seccomp";
    if profile.default_action() == Action::ScmpActNotify {
        return Err(Error::config(
            format!("{P}.defaultAction"),
            "SCMP_ACT_NOTIFY cannot be the default action",
        ));
    }
    let default = action_value(
        profile.default_action(),
        profile.default_errno_ret(),
        || format!("{P}.defaultErrnoRet"),
    )?;

    // Architectures, native first.
    let native = Abi::native()
        .ok_or_else(|| Error::config(P, "seccomp is not supported on this host's architecture"))?;
    let mut abis = vec![native];
    for (i, a) in profile.architectures().iter().flatten().enumerate() {
        let abi = Abi::from_arch(*a).ok_or_else(|| {
            Error::config(
                format!("{P}.architectures[{i}]"),
                format!("{a}: no system call table for this architecture"),
            )
        })?;
        if !abis.contains(&abi) {
            abis.push(abi);
        }
    }

    // Rules, per ABI and number.
    let mut notify = false;
    let mut rules: BTreeMap<(Abi, u32), Syscall> = BTreeMap::new();
    let mut highest: BTreeMap<Abi, u32> = BTreeMap::new();
    for (r, rule) in profile.syscalls().iter().flatten().enumerate() {
        let action = action_value(rule.action(), rule.errno_ret(), || {
            format!("{}.errnoRet", rule_path(r))
        })?;
        if rule.action() == Action::ScmpActNotify {
            if profile.listener_path().is_none() {
                return Err(Error::config(
                    format!("{}.action", rule_path(r)),
                    "SCMP_ACT_NOTIFY needs linux.seccomp.listenerPath",
                ));
            }
            notify = true;
        }
        let conds = conditions(rule.args().as_deref().unwrap_or(&[]), r)?;
        for (n, name) in rule.names().iter().enumerate() {
            let np = || format!("{}.names[{n}]", rule_path(r));
            if rule.action() == Action::ScmpActNotify && name == "write" {
                // The runtime itself writes after installing the filter (as runc).
                return Err(Error::config(
                    np(),
                    "SCMP_ACT_NOTIFY cannot be used for write",
                ));
            }
            let mut known = false;
            for &abi in &abis {
                let (nr, extra) = match abi.nr(name) {
                    Some(nr) => (nr, None),
                    None => match multiplexed(name).filter(|_| abi == Abi::X86) {
                        Some((mux, sub)) => match abi.nr(mux) {
                            Some(nr) => (nr, Some(sub)),
                            None => continue,
                        },
                        None => continue,
                    },
                };
                known = true;
                // (For a multiplexed name, the multiplexer is what the profile names.)
                let h = highest.entry(abi).or_insert(nr);
                *h = (*h).max(nr);
                if action == default {
                    continue;
                }
                let mux;
                let sets: &[Vec<Cond>] = match extra {
                    None => &conds,
                    Some(sub) => {
                        if conds.iter().any(|c| !c.is_empty()) {
                            return Err(Error::config(
                                format!("{}.args", rule_path(r)),
                                format!(
                                    "{name} has no system call of its own on SCMP_ARCH_X86 \
                                     (it goes through a multiplexer), so its arguments \
                                     cannot be checked there"
                                ),
                            ));
                        }
                        let c = Cond {
                            index: 0,
                            op: CmpOp::ScmpCmpEq as u8,
                            value: u64::from(sub),
                            two: 0,
                        };
                        mux = [vec![c]];
                        &mux
                    }
                };
                let entry = rules.entry((abi, nr)).or_default();
                for set in sets {
                    add_rule(entry, abi, set.clone(), action, (r, n), profile)?;
                }
            }
            // A name of another architecture's table (bdflush is i386's) is not an
            // error either, as libseccomp knows it: only a name nobody knows is.
            let anywhere = || Abi::ALL.iter().any(|a| a.nr(name).is_some());
            if !known && !OTHER_ARCH_ONLY.contains(&name.as_str()) && !anywhere() {
                return Err(Error::config(np(), format!("unknown system call {name:?}")));
            }
        }
    }

    // Flags.
    let mut flags: libc::c_ulong = 0;
    for (i, f) in profile.flags().iter().flatten().enumerate() {
        flags |= match f {
            Flag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            Flag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            Flag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            Flag::SeccompFilterFlagWaitKillableRecv => {
                if !notify {
                    return Err(Error::config(
                        format!("{P}.flags[{i}]"),
                        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs a rule with SCMP_ACT_NOTIFY",
                    ));
                }
                libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
            }
        };
    }
    if notify {
        flags |= libc::SECCOMP_FILTER_FLAG_NEW_LISTENER;
        if flags & libc::SECCOMP_FILTER_FLAG_TSYNC != 0 {
            // Without it the kernel refuses TSYNC with NEW_LISTENER (the return value
            // could not tell a failing thread's id from the listener fd).
            flags |= libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH;
        }
    }

    // runc's -ENOSYS stub condition (patchbpf generatePatch).
    let permissive = matches!(
        profile.default_action(),
        Action::ScmpActAllow | Action::ScmpActLog | Action::ScmpActTrace
    );
    let enosys = !permissive && default != libc::SECCOMP_RET_ERRNO | ENOSYS;

    let code = generate(&abis, &rules, &highest, default, enosys)?;
    if code.len() > MAX_INSTRUCTIONS {
        return Err(Error::config(
            P,
            format!(
                "the filter needs {} BPF instructions, more than the kernel's limit of {MAX_INSTRUCTIONS}",
                code.len()
            ),
        ));
    }
    Ok(Program {
        filter: code
            .into_iter()
            .map(|(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
            .collect(),
        flags,
        listener_path: profile.listener_path().clone(),
    })
}

/// Validates a rule's `args` and turns them into condition sets: one set (ANDed), or,
/// when two conditions name the same argument, one set per condition (ORed), as runc
/// does. No args gives one empty set.
fn conditions(args: &[oci_spec::runtime::LinuxSeccompArg], r: usize) -> Result<Vec<Vec<Cond>>> {
    let mut conds = Vec::with_capacity(args.len());
    for (k, a) in args.iter().enumerate() {
        let ap = || format!("{}.args[{k}]", rule_path(r));
        let index = u8::try_from(a.index())
            .ok()
            .filter(|i| *i <= 5)
            .ok_or_else(|| {
                Error::config(
                    format!("{}.index", ap()),
                    format!("{} is not an argument index (0 to 5)", a.index()),
                )
            })?;
        let two = a.value_two().unwrap_or(0);
        let masked = a.op() == CmpOp::ScmpCmpMaskedEq;
        if !masked && two != 0 {
            return Err(Error::config(
                format!("{}.valueTwo", ap()),
                format!(
                    "only SCMP_CMP_MASKED_EQ takes a second value, not {}",
                    a.op()
                ),
            ));
        }
        conds.push(Cond {
            index,
            op: a.op() as u8,
            value: a.value(),
            two: if masked { two & a.value() } else { 0 },
        });
    }
    let mut seen = [false; 6];
    let repeated = conds.iter().any(|c| {
        let r = seen[usize::from(c.index)];
        seen[usize::from(c.index)] = true;
        r
    });
    Ok(if repeated {
        conds.into_iter().map(|c| vec![c]).collect()
    } else {
        vec![conds]
    })
}

/// Adds one rule (a condition set and its action) for a syscall, applying the
/// overlap semantics of the module documentation. `(r, n)`: where the rule and the
/// name are in `linux.seccomp.syscalls`, for a conflict's error.
fn add_rule(
    sc: &mut Syscall,
    abi: Abi,
    mut set: Vec<Cond>,
    action: u32,
    (r, n): (usize, usize),
    profile: &LinuxSeccomp,
) -> Result<()> {
    let clash = |other: usize| {
        Error::config(
            format!("{}.names[{n}]", rule_path(r)),
            format!(
                "{} conflicts with linux.seccomp.syscalls[{other}]: the same system call and \
                 arguments with a different action",
                profile
                    .syscalls()
                    .as_ref()
                    .and_then(|s| s.get(r))
                    .map(|s| s.action().to_string())
                    .unwrap_or_default()
            ),
        )
    };
    if !abi.wide() {
        set = set.into_iter().map(Cond::narrow).collect();
    }
    set.sort();
    set.dedup();
    if set.is_empty() {
        // The first argument-less rule for a system call decides, as in libseccomp
        // (db.c: "syscall exists without any chains - existing filter is at least as
        // large as the new entry"), and so in runc and crun. Podman's default profile
        // relies on it: `setns` is in its allow list and again, later, in an errno
        // rule for containers without CAP_SYS_ADMIN.
        if sc.plain.is_none() {
            sc.plain = Some((action, r));
        }
        return Ok(());
    }
    match sc.args.iter().find(|(s, _, _)| *s == set) {
        Some((_, a, other)) if *a != action => Err(clash(*other)),
        Some(_) => Ok(()),
        None => {
            sc.args.push((set, action, r));
            Ok(())
        }
    }
}

/// Generates the program (see the module documentation for its shape).
fn generate(
    abis: &[Abi],
    rules: &BTreeMap<(Abi, u32), Syscall>,
    highest: &BTreeMap<Abi, u32>,
    default: u32,
    enosys: bool,
) -> Result<Vec<(u16, u8, u8, u32)>> {
    let mut asm = Asm::default();
    // Audit arches in the order of first appearance (the native one first).
    let mut audits: Vec<u32> = Vec::new();
    for a in abis {
        if !audits.contains(&a.audit()) {
            audits.push(a.audit());
        }
    }
    let entries: Vec<_> = audits.iter().map(|_| asm.label()).collect();
    asm.ld(OFF_ARCH);
    for (audit, l) in audits.iter().zip(&entries) {
        asm.jmp_if(Jcc::Eq, *audit, *l);
    }
    asm.ret(BAD_ARCH_ACTION);

    for (audit, l) in audits.iter().zip(&entries) {
        asm.bind(*l);
        asm.ld(OFF_NR);
        let members: Vec<Abi> = abis
            .iter()
            .copied()
            .filter(|a| a.audit() == *audit)
            .collect();
        let outcome = |nr: u32| -> Outcome {
            let abi = Abi::ALL
                .into_iter()
                .filter(|a| a.audit() == *audit)
                .find(|a| (a.range().0..=a.range().1).contains(&nr));
            let Some(abi) = abi else {
                return Outcome::Ret(default); // nr == -1
            };
            if !members.contains(&abi) {
                return Outcome::Ret(BAD_ARCH_ACTION);
            }
            if let Some(sc) = rules.get(&(abi, nr)) {
                if let Some((a, _)) = sc.plain {
                    return Outcome::Ret(a);
                }
                if !sc.args.is_empty() {
                    return Outcome::Rules(abi, nr);
                }
            }
            match highest.get(&abi) {
                Some(h) if enosys && nr > *h => Outcome::Ret(libc::SECCOMP_RET_ERRNO | ENOSYS),
                _ => Outcome::Ret(default),
            }
        };
        // Range starts: wherever the outcome may change.
        let mut starts = vec![0u32];
        for a in Abi::ALL.into_iter().filter(|a| a.audit() == *audit) {
            let (lo, hi) = a.range();
            starts.push(lo);
            starts.extend(hi.checked_add(1));
            if let Some(h) = highest.get(&a) {
                starts.extend(h.checked_add(1));
            }
        }
        for &(abi, nr) in rules.keys() {
            if abi.audit() == *audit {
                starts.push(nr);
                starts.extend(nr.checked_add(1));
            }
        }
        starts.sort_unstable();
        starts.dedup();
        let mut segs: Vec<(u32, Outcome)> = Vec::new();
        for s in starts {
            let o = outcome(s);
            if !matches!(segs.last(), Some((_, last)) if *last == o && matches!(o, Outcome::Ret(_)))
            {
                segs.push((s, o));
            }
        }
        search(&mut asm, &segs, rules, default);
    }
    asm.assemble()
        .map_err(|e| Error::Seccomp(format!("generating the filter: {e}")))
}

/// Emits a binary search over `segs` (sorted range starts with their outcomes; the
/// accumulator holds the syscall number).
fn search(
    asm: &mut Asm,
    segs: &[(u32, Outcome)],
    rules: &BTreeMap<(Abi, u32), Syscall>,
    default: u32,
) {
    if let [(_, o)] = segs {
        match *o {
            Outcome::Ret(a) => asm.ret(a),
            // generate() makes this outcome only for a number with argument rules.
            Outcome::Rules(abi, nr) => rule_block(asm, abi, &rules[&(abi, nr)], default),
        }
        return;
    }
    let mid = segs.len() / 2;
    let (left, right) = (asm.label(), asm.label());
    asm.jmp(Jcc::Ge, segs[mid].0, right, left);
    asm.bind(left);
    search(asm, &segs[..mid], rules, default);
    asm.bind(right);
    search(asm, &segs[mid..], rules, default);
}

/// Emits the argument rules of one syscall: fewest conditions first (then by
/// argument, operator, value); the first rule whose conditions all hold decides.
fn rule_block(asm: &mut Asm, abi: Abi, sc: &Syscall, default: u32) {
    let mut order: Vec<&(Vec<Cond>, u32, usize)> = sc.args.iter().collect();
    order.sort_by(|a, b| (a.0.len(), &a.0).cmp(&(b.0.len(), &b.0)));
    for (set, action, _) in order {
        let next = asm.label();
        for c in set {
            condition(asm, abi, *c, next);
        }
        asm.ret(*action);
        asm.bind(next);
    }
    asm.ret(default);
}

/// Emits one comparison: falls through when it holds, jumps to `fail` otherwise.
fn condition(asm: &mut Asm, abi: Abi, c: Cond, fail: Label) {
    let (vh, vl) = ((c.value >> 32) as u32, c.value as u32);
    let (th, tl) = ((c.two >> 32) as u32, c.two as u32);
    let (hi, lo) = (off_hi(c.index), off_lo(c.index));
    let pass = asm.label();
    let op = c.op;
    let is = |o: CmpOp| op == o as u8;
    if !abi.wide() {
        // Low word only (see the module documentation).
        asm.ld(lo);
        if is(CmpOp::ScmpCmpMaskedEq) {
            asm.and(vl);
            asm.jmp_unless(Jcc::Eq, tl, fail);
        } else if is(CmpOp::ScmpCmpNe) {
            asm.jmp_if(Jcc::Eq, vl, fail);
        } else if is(CmpOp::ScmpCmpLt) {
            asm.jmp_if(Jcc::Ge, vl, fail);
        } else if is(CmpOp::ScmpCmpLe) {
            asm.jmp_if(Jcc::Gt, vl, fail);
        } else if is(CmpOp::ScmpCmpGe) {
            asm.jmp_unless(Jcc::Ge, vl, fail);
        } else if is(CmpOp::ScmpCmpGt) {
            asm.jmp_unless(Jcc::Gt, vl, fail);
        } else {
            asm.jmp_unless(Jcc::Eq, vl, fail);
        }
        asm.bind(pass);
        return;
    }
    if is(CmpOp::ScmpCmpMaskedEq) {
        if vh != 0 {
            asm.ld(hi);
            asm.and(vh);
            asm.jmp_unless(Jcc::Eq, th, fail);
        }
        asm.ld(lo);
        asm.and(vl);
        asm.jmp_unless(Jcc::Eq, tl, fail);
    } else if is(CmpOp::ScmpCmpNe) {
        asm.ld(hi);
        asm.jmp_unless(Jcc::Eq, vh, pass);
        asm.ld(lo);
        asm.jmp_if(Jcc::Eq, vl, fail);
    } else if is(CmpOp::ScmpCmpGt) || is(CmpOp::ScmpCmpGe) {
        // hi > vh, or hi == vh and lo > (>=) vl.
        asm.ld(hi);
        asm.jmp_if(Jcc::Gt, vh, pass);
        asm.jmp_unless(Jcc::Eq, vh, fail);
        asm.ld(lo);
        let cc = if is(CmpOp::ScmpCmpGt) {
            Jcc::Gt
        } else {
            Jcc::Ge
        };
        asm.jmp_unless(cc, vl, fail);
    } else if is(CmpOp::ScmpCmpLt) || is(CmpOp::ScmpCmpLe) {
        // hi < vh, or hi == vh and lo < (<=) vl.
        asm.ld(hi);
        asm.jmp_if(Jcc::Gt, vh, fail);
        asm.jmp_unless(Jcc::Eq, vh, pass);
        asm.ld(lo);
        let cc = if is(CmpOp::ScmpCmpLt) {
            Jcc::Ge
        } else {
            Jcc::Gt
        };
        asm.jmp_if(cc, vl, fail);
    } else {
        asm.ld(hi);
        asm.jmp_unless(Jcc::Eq, vh, fail);
        asm.ld(lo);
        asm.jmp_unless(Jcc::Eq, vl, fail);
    }
    asm.bind(pass);
}

impl Program {
    /// Installs the filter on the calling thread (seccomp(2) with the profile's flags);
    /// returns the user-notification listener fd when the profile uses SCMP_ACT_NOTIFY.
    ///
    /// The caller must hold CAP_SYS_ADMIN or have set no_new_privs. Allocates nothing,
    /// so it is safe between fork and exec.
    pub fn install(&self) -> Result<Option<OwnedFd>> {
        let prog = libc::sock_fprog {
            // compile() keeps the length within BPF_MAXINSNS.
            len: self.filter.len() as libc::c_ushort,
            filter: self.filter.as_ptr().cast_mut(),
        };
        // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads `prog` and the instructions it
        // points to, which outlive the call; the kernel copies them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc < 0 {
            return Err(Error::sys(
                format!("seccomp(SECCOMP_SET_MODE_FILTER, flags {:#x})", self.flags),
                nix::errno::Errno::last(),
            ));
        }
        if self.flags & libc::SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
            let fd = i32::try_from(rc)
                .map_err(|_| Error::Seccomp(format!("seccomp returned {rc}, not a fd")))?;
            // SAFETY: with NEW_LISTENER the kernel returns a new fd (O_CLOEXEC) that
            // nothing else owns.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        if rc > 0 {
            // TSYNC: the id of a thread that could not be synchronized.
            return Err(Error::Seccomp(format!(
                "seccomp(SECCOMP_FILTER_FLAG_TSYNC): thread {rc} could not be synchronized"
            )));
        }
        Ok(None)
    }

    /// The profile's `listenerPath`: the seccomp agent's socket, to which the runtime
    /// sends the listener fd that [`Program::install`] returns.
    pub fn listener_path(&self) -> Option<&Path> {
        self.listener_path.as_deref()
    }

    /// The number of BPF instructions in the program.
    pub fn instructions(&self) -> usize {
        self.filter.len()
    }

    /// The seccomp(2) flags the program is installed with.
    pub fn flags(&self) -> libc::c_ulong {
        self.flags
    }

    #[cfg(test)]
    fn code(&self) -> impl Iterator<Item = (u16, u8, u8, u32)> + '_ {
        self.filter.iter().map(|i| (i.code, i.jt, i.jf, i.k))
    }
}
