//! The container process's own attributes: rlimits, user and groups, the executable's
//! lookup in $PATH, and execve.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

use crate::error::{Error, Result};

/// The kernel's resource for an OCI rlimit type.
pub fn rlimit_resource(t: PosixRlimitType) -> Resource {
    match t {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Applies `process.rlimits`.
pub fn set_rlimits(rlimits: &[PosixRlimit]) -> Result<()> {
    for (i, r) in rlimits.iter().enumerate() {
        setrlimit(rlimit_resource(r.typ()), r.soft(), r.hard()).map_err(|e| {
            Error::sys(
                format!(
                    "process.rlimits[{i}]: setrlimit {} soft {} hard {}",
                    r.typ(),
                    r.soft(),
                    r.hard()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// Switches to the configured user: supplementary groups, then gid, then uid.
/// `setgroups_allowed` is false in a user namespace whose setgroups is "deny".
///
/// The calling process must be single-threaded (the container's init or exec child):
/// the calls are the bare system calls, not libc's, which in musl wrap each in signal
/// mask changes to reach other threads. A seccomp filter installed before this (no
/// no_new_privs) then sees the same calls whatever libc the binary carries.
pub fn switch_user(uid: u32, gid: u32, groups: &[u32], setgroups_allowed: bool) -> Result<()> {
    if setgroups_allowed {
        // SAFETY: setgroups reads `groups.len()` gid_t values (u32) from a live slice.
        let r = unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                groups.len() as libc::c_long,
                groups.as_ptr(),
            )
        };
        if r < 0 {
            return Err(Error::sys("setgroups", Errno::last()));
        }
    } else if !groups.is_empty() {
        return Err(Error::config(
            "process.user.additionalGids",
            "cannot set supplementary groups: setgroups is denied in this user namespace",
        ));
    }
    let (g, u) = (libc::c_long::from(gid), libc::c_long::from(uid));
    // SAFETY: setresgid and setresuid take ids by value.
    if unsafe { libc::syscall(libc::SYS_setresgid, g, g, g) } < 0 {
        return Err(Error::sys(format!("setresgid {gid}"), Errno::last()));
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_setresuid, u, u, u) } < 0 {
        return Err(Error::sys(format!("setresuid {uid}"), Errno::last()));
    }
    Ok(())
}

/// The home directory of `uid` in the container's /etc/passwd (after the pivot), or
/// `/` when it has none, as runc picks HOME.
pub fn home_dir(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[5].to_string())
        })
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

/// The value of `name` in an environment list of `KEY=value` strings.
pub fn env_value<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter().rev().find_map(|kv| {
        kv.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// Finds the executable for `arg0` as runc does (Go's exec.LookPath), using the
/// container's PATH, from the working directory: after the pivot and the chdir. A name
/// found only through a relative PATH entry ("", ".") is refused, as Go refuses it.
pub fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf> {
    if arg0.is_empty() {
        return Err(Error::config("process.args[0]", "empty executable name"));
    }
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return check_executable(&p).map(|_| p);
    }
    let path = env_value(env, "PATH")
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let mut last = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let cand = Path::new(dir).join(arg0);
        match check_executable(&cand) {
            Ok(()) if cand.is_relative() => {
                return Err(Error::Invalid(format!(
                    "exec: {arg0:?}: cannot run executable found relative to current directory"
                )))
            }
            Ok(()) => return Ok(cand),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(Error::Sys {
            errno: Errno::EACCES,
            what,
        }) => Error::Sys {
            errno: Errno::EACCES,
            what,
        },
        _ => Error::Invalid(format!(
            "exec: {arg0:?}: executable file not found in $PATH"
        )),
    })
}

fn check_executable(p: &Path) -> Result<()> {
    use nix::unistd::{access, AccessFlags};
    let md = std::fs::metadata(p).map_err(|e| Error::io("exec: stat", p, e))?;
    if md.is_dir() {
        return Err(Error::Invalid(format!(
            "exec: {}: is a directory",
            p.display()
        )));
    }
    access(p, AccessFlags::X_OK).map_err(|e| Error::sys(format!("exec: {}", p.display()), e))
}

fn cstring(s: &OsStr, what: &str) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| Error::Invalid(format!("{what} contains a NUL byte")))
}

/// Prepared argv/envp, built before the last steps so that execve itself allocates
/// nothing.
pub struct Exec {
    path: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

impl Exec {
    /// Prepares an execve of `path` with `args` and `env`.
    pub fn new(path: &Path, args: &[String], env: &[String]) -> Result<Exec> {
        Ok(Exec {
            path: cstring(path.as_os_str(), "process.args[0]")?,
            args: args
                .iter()
                .map(|a| cstring(OsStr::new(a), "process.args"))
                .collect::<Result<_>>()?,
            env: env
                .iter()
                .map(|a| cstring(OsStr::new(a), "process.env"))
                .collect::<Result<_>>()?,
        })
    }

    /// execve(2); returns only on failure.
    pub fn exec(&self) -> Error {
        let e = nix::unistd::execve(&self.path, &self.args, &self.env);
        match e {
            Err(e) => Error::sys(format!("exec {}", self.path.to_string_lossy()), e),
            Ok(never) => match never {},
        }
    }
}

/// A fresh session keyring, so the container does not see the caller's keys. Kernels
/// without keyrings, or that refuse it in a user namespace, simply go without.
pub fn join_session_keyring() {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a NULL name creates an anonymous session keyring.
    unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        );
    }
}

/// Marks every fd from `first` up close-on-exec: only stdio and the preserved fds
/// reach the container's program.
pub fn close_range_cloexec(first: u32) -> Result<()> {
    // SAFETY: close_range only changes flags of fds in the range; CLOSE_RANGE_CLOEXEC
    // closes nothing now, so no fd this process still uses goes away.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        return Err(Error::sys("close_range", nix::errno::Errno::last()));
    }
    Ok(())
}

/// Ends a child of the runtime at once (no atexit handlers, no buffers: they belong to
/// the runtime). When a seccomp filter already installed denies exit itself, libc's
/// _exit would retry forever at full speed; this falls back to abort(), whose last
/// resort is a faulting instruction the kernel ends the process for.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: exit_group and exit take an int and, when allowed, do not return.
    unsafe {
        libc::syscall(libc::SYS_exit_group, libc::c_long::from(code));
        libc::syscall(libc::SYS_exit, libc::c_long::from(code));
    }
    std::process::abort()
}
