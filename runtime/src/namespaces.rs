//! Linux namespaces: which to create, which to join, and the raw clone that makes the
//! container's first process.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{open, OFlag};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use crate::cgroups::Cgroup;
use crate::error::{Error, Result};

/// The namespace plan of one container: what is new, what is joined by path.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Namespaces to create.
    pub new: CloneFlags,
    /// Namespaces to join, in the order they must be joined.
    pub join: Vec<(CloneFlags, PathBuf)>,
}

/// The kernel's clone flag for an OCI namespace type.
pub fn flag(typ: LinuxNamespaceType) -> CloneFlags {
    match typ {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // CLONE_NEWTIME (0x80) has no constant in every nix version.
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// The name of the namespace under /proc/PID/ns.
pub fn proc_name(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

impl Plan {
    /// Builds the plan from `linux.namespaces`, rejecting duplicates.
    pub fn from_config(namespaces: &[LinuxNamespace]) -> Result<Plan> {
        let mut plan = Plan {
            new: CloneFlags::empty(),
            join: vec![],
        };
        let mut seen = CloneFlags::empty();
        for (i, ns) in namespaces.iter().enumerate() {
            let f = flag(ns.typ());
            if seen.contains(f) {
                return Err(Error::config(
                    format!("linux.namespaces[{i}].type"),
                    format!("namespace {:?} is listed twice", proc_name(ns.typ())),
                ));
            }
            seen |= f;
            match ns.path() {
                Some(p) if !p.as_os_str().is_empty() => {
                    if !p.is_absolute() {
                        return Err(Error::config(
                            format!("linux.namespaces[{i}].path"),
                            format!("{} is not an absolute path", p.display()),
                        ));
                    }
                    plan.join.push((f, p.clone()))
                }
                _ => plan.new |= f,
            }
        }
        // A user namespace is joined first: the others are owned by it, and joining it
        // grants the capabilities needed to join them.
        plan.join
            .sort_by_key(|(f, _)| !f.contains(CloneFlags::CLONE_NEWUSER));
        Ok(plan)
    }

    /// Whether the plan creates (or joins) the given namespace.
    pub fn has(&self, f: CloneFlags) -> bool {
        self.new.contains(f) || self.join.iter().any(|(j, _)| *j == f)
    }

    /// Whether the plan creates the given namespace.
    pub fn creates(&self, f: CloneFlags) -> bool {
        self.new.contains(f)
    }

    /// The path a namespace is joined from, if it is joined.
    pub fn joined(&self, f: CloneFlags) -> Option<&PathBuf> {
        self.join.iter().find(|(j, _)| *j == f).map(|(_, p)| p)
    }
}

/// Opens a namespace file, checking that it is a namespace of the expected kind.
pub fn open_ns(path: &std::path::Path, f: CloneFlags) -> Result<OwnedFd> {
    let fd = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| Error::sys(format!("open namespace {}", path.display()), e))?;
    // NS_GET_NSTYPE answers with the CLONE_NEW* flag of the namespace behind the fd.
    // SAFETY: ioctl with a request that takes no argument, on an fd we own.
    let typ = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    if typ >= 0 && typ != f.bits() {
        return Err(Error::Invalid(format!(
            "{} is not a {} namespace",
            path.display(),
            flag_name(f)
        )));
    }
    Ok(fd)
}

/// ioctl(NS_GET_NSTYPE) = _IO(0xb7, 0x3).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// A short name for one CLONE_NEW* flag, for messages.
pub fn flag_name(f: CloneFlags) -> &'static str {
    for t in [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Time,
    ] {
        if flag(t) == f {
            return proc_name(t);
        }
    }
    "unknown"
}

/// Joins the namespace at `path`.
pub fn join(path: &std::path::Path, f: CloneFlags) -> Result<()> {
    let fd = open_ns(path, f)?;
    nix::sched::setns(&fd, f)
        .map_err(|e| Error::sys(format!("setns {} ({})", path.display(), flag_name(f)), e))
}

/// Brings up the loopback interface of the calling process's network namespace, as
/// runc does for a new one: without it the container cannot reach its own 127.0.0.1.
pub fn loopback_up() -> Result<()> {
    /// struct ifreq with the ifr_flags member of its union (40 bytes on 64-bit).
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _rest: [u8; 22],
    }
    const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
    const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Error::sys("socket for bringing lo up", e))?;
    let mut req = IfReq {
        name: *b"lo\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        flags: 0,
        _rest: [0; 22],
    };
    for (request, what) in [
        (SIOCGIFFLAGS, "SIOCGIFFLAGS"),
        (SIOCSIFFLAGS, "SIOCSIFFLAGS"),
    ] {
        if request == SIOCSIFFLAGS {
            req.flags |= libc::IFF_UP as libc::c_short;
        }
        // SAFETY: both requests read (and SIOCGIFFLAGS writes) one struct ifreq, which
        // `req` is, laid out as the kernel's and alive for the call.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, &mut req as *mut IfReq) } < 0 {
            return Err(Error::sys(
                format!("bring lo up: ioctl({what})"),
                nix::errno::Errno::last(),
            ));
        }
    }
    Ok(())
}

/// Result of [`fork_with`] in each process.
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(Pid),
    /// In the child.
    Child,
}

/// clone(2) with `flags` and fork semantics (the child continues on a copy of the
/// caller's stack). One system call creates the process and its new namespaces.
///
/// The caller must be single-threaded: the child runs on in a copy of the address
/// space, and only async-signal-safe work is sound if another thread held a lock.
pub fn fork_with(flags: CloneFlags) -> Result<Forked> {
    fork_into(flags, None).map(|(f, _)| f)
}

/// `struct clone_args` of clone3(2) (Linux 5.7 layout, with `cgroup`); the libc crate
/// has none for glibc targets.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// CLONE_INTO_CGROUP (Linux 5.7); libc's constant is a c_int and overflows.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// [`fork_with`], with the child born in the cgroup v2 directory `cgroup` (an open
/// fd of it) when one is given: no migration afterwards, so no wait for the
/// migration's RCU grace period. The bool says whether that happened; it is false
/// when no cgroup was given or the kernel has no clone3 or no CLONE_INTO_CGROUP
/// (ENOSYS, E2BIG, EINVAL), and the caller then moves the child itself.
pub fn fork_into(flags: CloneFlags, cgroup: Option<BorrowedFd<'_>>) -> Result<(Forked, bool)> {
    if let Some(fd) = cgroup {
        let args = CloneArgs {
            flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: fd.as_raw_fd() as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 with no stack behaves like fork(2), as the clone call below;
        // `args` is a valid clone_args of the size passed and outlives the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match ret {
            0 => {
                child_exits_on_panic();
                return Ok((Forked::Child, true));
            }
            pid if pid > 0 => return Ok((Forked::Parent(Pid::from_raw(pid as i32)), true)),
            _ => {
                let e = nix::errno::Errno::last();
                // A kernel without clone3 or CLONE_INTO_CGROUP, or a seccomp profile of
                // the caller's that refuses clone3 (older Docker ones answer EPERM):
                // a plain clone, and the caller moves the child in, saying its own error
                // if that fails too.
                if !matches!(
                    e,
                    nix::errno::Errno::ENOSYS
                        | nix::errno::Errno::E2BIG
                        | nix::errno::Errno::EINVAL
                        | nix::errno::Errno::EPERM
                ) {
                    return Err(Error::sys(
                        format!("clone3({flags:?}, CLONE_INTO_CGROUP)"),
                        e,
                    ));
                }
            }
        }
    }
    // SAFETY: the raw clone syscall with a NULL stack behaves like fork(2); the runtime
    // is single-threaded, so the child's copy of the heap and locks is consistent.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() as libc::c_ulong) | libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match ret {
        -1 => Err(Error::sys(
            format!("clone({flags:?})"),
            nix::errno::Errno::last(),
        )),
        0 => {
            child_exits_on_panic();
            Ok((Forked::Child, false))
        }
        pid => Ok((Forked::Parent(Pid::from_raw(pid as i32)), false)),
    }
}

/// Forks with `flags`, the child born in `cgroup`'s unified hierarchy where the host has
/// one (clone3 with CLONE_INTO_CGROUP, as crun does): no migration, so no wait for its
/// RCU grace period. The bool says whether that happened; if not, the caller moves the
/// child in (and on a hybrid host the v1 hierarchies are the caller's either way). The directory's fd is closed in both processes before this returns: a host
/// directory's fd must not reach the container (CVE-2024-21626).
pub fn fork_in_cgroup(flags: CloneFlags, cgroup: Option<&Cgroup>) -> Result<(Forked, bool)> {
    let dir = cgroup.map_or(Ok(None), Cgroup::open_unified)?;
    fork_into(flags, dir.as_ref().map(|d| d.as_fd()))
}

/// The exit status of a child of [`fork_into`] that panicked.
pub const PANIC_EXIT: i32 = 255;

/// A raw clone bypasses libc's fork, so musl never learns the child's thread id: its
/// abort() (the last step of every Rust panic here, panic = "abort") would send SIGABRT
/// to the thread id it holds, which is the parent's. Without a new pid namespace that
/// kills the runtime; in another one it hits whatever has that number there. So the
/// child's panics print their message and _exit. (glibc's abort asks the kernel for the
/// thread id; the hook keeps both builds alike.) Allocation failure still ends in
/// abort(): std gives no stable hook for it. (On musl std sets no guard page for the main
/// thread, so a stack overflow is a plain SIGSEGV of the child.)
fn child_exits_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "plinth: {info}");
        // SAFETY: _exit ends this process at once; nothing of it is used after.
        unsafe { libc::_exit(PANIC_EXIT) }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};

    /// A panic in the child of a raw clone ends that child with PANIC_EXIT, through the
    /// hook. (Tests build with panic = "unwind", so without the hook the child would
    /// unwind into the harness and exit otherwise; the abort() the hook prevents is the
    /// release binary's.) The harness has other threads, against fork_into's rule; the
    /// child only panics, and `make test` runs one test at a time.
    #[test]
    fn a_panicking_child_exits_and_spares_its_parent() {
        match fork_into(CloneFlags::empty(), None).expect("clone") {
            (Forked::Child, _) => panic!("on purpose, in the child"),
            (Forked::Parent(pid), _) => {
                let st = waitpid(pid, None).expect("waitpid");
                assert_eq!(st, WaitStatus::Exited(pid, PANIC_EXIT));
            }
        }
    }
}
