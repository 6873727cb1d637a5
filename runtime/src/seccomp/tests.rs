//! Tests: profiles compiled and checked two ways. `eval` runs the generated program
//! in a small cBPF interpreter on made-up seccomp_data (any arch, any number, any
//! argument); `in_child` installs it for real in a forked child and reports what the
//! kernel returned for real system calls.

use super::*;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use oci_spec::runtime::LinuxSeccompArg;
use serde_json::json;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI64, Ordering};

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL_THREAD: u32 = libc::SECCOMP_RET_KILL_THREAD;
fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

fn profile(v: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(v).expect("test profile parses")
}

fn ok(v: serde_json::Value) -> Program {
    compile(&profile(v)).expect("test profile compiles")
}

/// The JSON path of a compile error.
fn err_field(v: serde_json::Value) -> String {
    match compile(&profile(v)) {
        Err(Error::Config { field, msg }) => {
            assert!(!msg.is_empty());
            field
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// Runs `p` on seccomp_data { nr, arch, ip 0, args }.
fn eval(p: &Program, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let code: Vec<_> = p.code().collect();
    let (mut a, mut pc) = (0u32, 0usize);
    loop {
        let (c, jt, jf, k) = code[pc];
        pc += 1;
        let jump = |cond: bool| usize::from(if cond { jt } else { jf });
        match c {
            0x20 => {
                let k = k as usize;
                a = u32::from_le_bytes(data[k..k + 4].try_into().expect("4 bytes"));
            }
            0x54 => a &= k,
            0x06 => return k,
            0x05 => pc += k as usize,
            0x15 => pc += jump(a == k),
            0x25 => pc += jump(a > k),
            0x35 => pc += jump(a >= k),
            _ => panic!("unexpected opcode {c:#x}"),
        }
    }
}

fn x86_64(p: &Program, name: &str, args: [u64; 6]) -> u32 {
    let nr = Abi::X86_64.nr(name).expect("x86_64 name");
    eval(p, AUDIT_ARCH_X86_64, nr, args)
}

/// Forks; the child sets no_new_privs, installs `p`, runs `probe` (raw system calls
/// only: the filter may forbid anything else), sends its 8 results back through a pipe
/// and exits 0. Returns how the child ended and its results (`out[7]` is the listener
/// fd, when there is one).
fn in_child(p: &Program, probe: fn(&mut [i64; 8])) -> (WaitStatus, [i64; 8]) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child only makes raw system calls and _exits; it touches no lock
    // another thread of the test harness could hold (install() allocates nothing).
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let mut out = [i64::MIN; 8];
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(101) };
            }
            match p.install() {
                Ok(Some(fd)) => {
                    out[7] = i64::from(fd.as_raw_fd());
                    std::mem::forget(fd);
                }
                Ok(None) => {}
                // SAFETY: as above.
                Err(_) => unsafe { libc::_exit(100) },
            }
            probe(&mut out);
            // SAFETY: writes the 64-byte array to the pipe; then ends the child.
            unsafe {
                libc::write(w.as_raw_fd(), out.as_ptr().cast(), 64);
                libc::_exit(0)
            }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let mut buf = [0u8; 64];
            let n = nix::unistd::read(&r, &mut buf).expect("read");
            let status = waitpid(child, None).expect("waitpid");
            let mut out = [i64::MIN; 8];
            if n == 64 {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = i64::from_ne_bytes(buf[8 * i..8 * i + 8].try_into().expect("8"));
                }
            }
            (status, out)
        }
    }
}

/// A raw system call: its result, or -errno.
fn sys(nr: libc::c_long, a: [u64; 6]) -> i64 {
    // SAFETY: the tests only pass calls whose pointer arguments are null or valid.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r == -1 {
        // SAFETY: reads this thread's errno.
        -i64::from(unsafe { *libc::__errno_location() })
    } else {
        r
    }
}

fn exited_ok(s: WaitStatus) {
    assert!(
        matches!(s, WaitStatus::Exited(_, 0)),
        "child ended with {s:?}"
    );
}

const E: i64 = libc::EPERM as i64;

/// Names a default-deny profile must allow for `in_child` to report back, plus mseal
/// (462), so the -ENOSYS stub starts above every syscall the tests call.
fn base() -> serde_json::Value {
    json!({"names": ["write", "exit_group", "exit", "mseal"], "action": "SCMP_ACT_ALLOW"})
}

#[test]
fn allow_list_with_default_eperm() {
    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [base(), {"names": ["getpid", "getppid"], "action": "SCMP_ACT_ALLOW"}]
    }));
    let (s, out) = in_child(&p, |o| {
        o[0] = sys(libc::SYS_getpid, [0; 6]);
        o[1] = sys(libc::SYS_unshare, [0; 6]);
        o[2] = sys(libc::SYS_mount, [0; 6]);
        o[3] = sys(libc::SYS_keyctl, [0; 6]);
        o[4] = sys(libc::SYS_clone3, [0; 6]);
        o[5] = sys(libc::SYS_getppid, [0; 6]);
    });
    exited_ok(s);
    assert!(out[0] > 0, "getpid allowed: {out:?}");
    assert_eq!(
        &out[1..5],
        &[-E, -E, -E, -E],
        "unshare, mount, keyctl, clone3"
    );
    assert!(out[5] > 0, "getppid allowed");
}

#[test]
fn enosys_above_the_highest_named_syscall() {
    // The highest name here is getppid (110): unshare (272) and keyctl (250), which the
    // kernel knows, must look unknown (-ENOSYS) so that a libc falls back.
    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["write", "exit_group", "exit", "getppid"], "action": "SCMP_ACT_ALLOW"},
                     {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]
    }));
    let (s, out) = in_child(&p, |o| {
        o[0] = sys(libc::SYS_unshare, [0; 6]);
        o[1] = sys(libc::SYS_keyctl, [0; 6]);
        o[2] = sys(libc::SYS_getpid, [0; 6]);
        o[3] = sys(libc::SYS_getppid, [0; 6]);
    });
    exited_ok(s);
    let nosys = -i64::from(libc::ENOSYS);
    assert_eq!(&out[..3], &[nosys, nosys, -E]);
    assert!(out[3] > 0);
    // Not with a permissive default, nor when the default errno is ENOSYS already.
    for (d, e, want) in [
        ("SCMP_ACT_ALLOW", None, ALLOW),
        ("SCMP_ACT_LOG", None, libc::SECCOMP_RET_LOG),
        ("SCMP_ACT_TRACE", None, libc::SECCOMP_RET_TRACE | 1),
        ("SCMP_ACT_ERRNO", Some(38), errno(libc::ENOSYS)),
    ] {
        let p = ok(json!({"defaultAction": d, "defaultErrnoRet": e,
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL"}]}));
        assert_eq!(
            x86_64(&p, "unshare", [0; 6]),
            want,
            "{d}: the default, no stub"
        );
        assert_eq!(x86_64(&p, "getppid", [0; 6]), KILL_THREAD);
    }
    let p = ok(json!({"defaultAction": "SCMP_ACT_KILL_PROCESS",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ALLOW"}]}));
    assert_eq!(x86_64(&p, "unshare", [0; 6]), errno(libc::ENOSYS));
    assert_eq!(x86_64(&p, "getpid", [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);
    // -1 (a tracer skipping the call) keeps the default action.
    assert_eq!(
        eval(&p, AUDIT_ARCH_X86_64, u32::MAX, [0; 6]),
        libc::SECCOMP_RET_KILL_PROCESS
    );
}

#[test]
fn clone3_enosys_beside_default_eperm() {
    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [base(), {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    }));
    let (s, out) = in_child(&p, |o| {
        o[0] = sys(libc::SYS_clone3, [0; 6]);
        o[1] = sys(libc::SYS_unshare, [0; 6]);
    });
    exited_ok(s);
    assert_eq!(&out[..2], &[-i64::from(libc::ENOSYS), -E]);
}

#[test]
fn custom_errno_and_log() {
    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
        "syscalls": [base(),
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18},
            {"names": ["getpid"], "action": "SCMP_ACT_LOG"}]
    }));
    let (s, out) = in_child(&p, |o| {
        o[0] = sys(libc::SYS_getppid, [0; 6]);
        o[1] = sys(libc::SYS_getpid, [0; 6]);
        o[2] = sys(libc::SYS_unshare, [0; 6]);
    });
    exited_ok(s);
    assert_eq!(out[0], -i64::from(libc::EXDEV));
    assert!(out[1] > 0, "LOG allows");
    assert_eq!(out[2], -i64::from(libc::EACCES), "defaultErrnoRet");
}

#[test]
fn personality_argument_rules() {
    let rule = |v: u64| {
        json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": v, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]})
    };
    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [base(), rule(0), rule(8), rule(0x20000), rule(0xffff_ffff)]
    }));
    let (s, out) = in_child(&p, |o| {
        o[0] = sys(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]);
        o[1] = sys(libc::SYS_personality, [0x20000, 0, 0, 0, 0, 0]);
        o[2] = sys(libc::SYS_personality, [8, 0, 0, 0, 0, 0]);
        o[3] = sys(libc::SYS_personality, [0, 0, 0, 0, 0, 0]);
        o[4] = sys(libc::SYS_personality, [4, 0, 0, 0, 0, 0]);
        // The kernel would read this as 0; the filter compares all 64 bits.
        o[5] = sys(libc::SYS_personality, [1 << 32, 0, 0, 0, 0, 0]);
    });
    exited_ok(s);
    assert!(out[..4].iter().all(|r| *r >= 0), "allowed values: {out:?}");
    // Each call returns the persona set by the one before.
    assert_eq!(&out[1..4], &[0, 0x20000, 8]);
    assert_eq!(&out[4..6], &[-E, -E]);
    // x86 compares the low 32 bits only, as libseccomp does.
    let x86 = |a: u64| eval(&p, AUDIT_ARCH_I386, 136, [a, 0, 0, 0, 0, 0]);
    assert_eq!(
        (x86(8), x86(4), x86((1 << 32) | 8)),
        (ALLOW, errno(1), ALLOW)
    );
}

#[test]
fn socket_masked_eq_and_ne() {
    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [base(), {"names": ["close"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": libc::AF_VSOCK, "op": "SCMP_CMP_NE"}]}]
    }));
    let (s, out) = in_child(&p, |o| {
        let stream = (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u64;
        o[0] = sys(libc::SYS_socket, [libc::AF_UNIX as u64, stream, 0, 0, 0, 0]);
        o[1] = sys(
            libc::SYS_socket,
            [libc::AF_VSOCK as u64, stream, 0, 0, 0, 0],
        );
    });
    exited_ok(s);
    assert!(out[0] >= 0, "AF_UNIX allowed: {out:?}");
    assert_eq!(out[1], -E, "AF_VSOCK refused");

    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES,
             "args": [{"index": 1, "value": 0xf, "valueTwo": libc::SOCK_DGRAM, "op": "SCMP_CMP_MASKED_EQ"}]}]
    }));
    let (s, out) = in_child(&p, |o| {
        let cloexec = libc::SOCK_CLOEXEC as u64;
        let unix = libc::AF_UNIX as u64;
        o[0] = sys(
            libc::SYS_socket,
            [unix, libc::SOCK_DGRAM as u64 | cloexec, 0, 0, 0, 0],
        );
        o[1] = sys(
            libc::SYS_socket,
            [unix, libc::SOCK_STREAM as u64 | cloexec, 0, 0, 0, 0],
        );
    });
    exited_ok(s);
    assert_eq!(out[0], -i64::from(libc::EACCES));
    assert!(out[1] >= 0);
}

#[test]
fn kill_process_kill_and_trap() {
    for action in [
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_THREAD",
    ] {
        let p = ok(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": action}]}));
        let (s, out) = in_child(&p, |o| o[0] = sys(libc::SYS_getppid, [0; 6]));
        assert!(
            matches!(s, WaitStatus::Signaled(_, Signal::SIGSYS, _)),
            "{action}: {s:?} {out:?}"
        );
    }

    static TRAPPED: AtomicI64 = AtomicI64::new(0);
    extern "C" fn on_sigsys(_: libc::c_int) {
        TRAPPED.store(1, Ordering::SeqCst);
    }
    let p = ok(json!({"defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_TRAP"}]}));
    let (s, out) = in_child(&p, |o| {
        // SAFETY: installs a handler that only stores to an atomic.
        unsafe {
            libc::signal(
                libc::SIGSYS,
                on_sigsys as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
        o[0] = sys(libc::SYS_getppid, [0; 6]);
        o[1] = TRAPPED.load(Ordering::SeqCst);
    });
    exited_ok(s);
    assert_eq!(out[1], 1, "SIGSYS delivered and caught: {out:?}");
}

#[test]
fn notify_returns_a_listener() {
    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock",
        "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]
    }));
    assert_eq!(p.listener_path(), Some(Path::new("/run/agent.sock")));
    let want = libc::SECCOMP_FILTER_FLAG_NEW_LISTENER
        | libc::SECCOMP_FILTER_FLAG_TSYNC
        | libc::SECCOMP_FILTER_FLAG_TSYNC_ESRCH
        | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    assert_eq!(p.flags(), want);
    let (s, out) = in_child(&p, |o| {
        // The listener is a real fd: fcntl succeeds and shows FD_CLOEXEC.
        o[0] = sys(
            libc::SYS_fcntl,
            [o[7] as u64, libc::F_GETFD as u64, 0, 0, 0, 0],
        );
    });
    exited_ok(s);
    assert!(out[7] >= 0, "listener fd: {out:?}");
    assert_eq!(out[0], i64::from(libc::FD_CLOEXEC));
    assert_eq!(x86_64(&p, "getppid", [0; 6]), libc::SECCOMP_RET_USER_NOTIF);
}

#[test]
fn flags_without_notify() {
    let p = ok(json!({"defaultAction": "SCMP_ACT_ALLOW",
        "flags": ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}));
    assert_eq!(
        p.flags(),
        libc::SECCOMP_FILTER_FLAG_LOG | libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
    );
    let (s, _) = in_child(&p, |_| {});
    exited_ok(s);
}

#[test]
fn profile_errors_name_the_field() {
    let syscalls = |extra: serde_json::Value| json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [base(), base(), base(), extra]});
    assert_eq!(
        err_field(syscalls(
            json!({"names": ["read", "foo"], "action": "SCMP_ACT_ALLOW"})
        )),
        "linux.seccomp.syscalls[3].names[1]"
    );
    assert_eq!(
        err_field(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_PPC64LE"]})),
        "linux.seccomp.architectures[1]"
    );
    let arg = |a: serde_json::Value| {
        syscalls(json!({"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [a]}))
    };
    assert_eq!(
        err_field(arg(json!({"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}))),
        "linux.seccomp.syscalls[3].args[0].index"
    );
    assert_eq!(
        err_field(arg(
            json!({"index": 0, "value": 1, "valueTwo": 2, "op": "SCMP_CMP_GT"})
        )),
        "linux.seccomp.syscalls[3].args[0].valueTwo"
    );
    assert_eq!(
        err_field(syscalls(
            json!({"names": ["read"], "action": "SCMP_ACT_NOTIFY"})
        )),
        "linux.seccomp.syscalls[3].action"
    );
    assert_eq!(
        err_field(json!({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/x"})),
        "linux.seccomp.defaultAction"
    );
    assert_eq!(
        err_field(
            json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x",
            "syscalls": [{"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]})
        ),
        "linux.seccomp.syscalls[0].names[0]"
    );
    assert_eq!(
        err_field(json!({"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]})),
        "linux.seccomp.flags[0]"
    );
    assert_eq!(
        err_field(syscalls(
            json!({"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000})
        )),
        "linux.seccomp.syscalls[3].errnoRet"
    );
    assert_eq!(
        err_field(json!({"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 1})),
        "linux.seccomp.defaultErrnoRet"
    );
    // Identical conditions with different actions.
    let c = json!([{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]);
    assert_eq!(
        err_field(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["read"], "action": "SCMP_ACT_LOG", "args": c},
            {"names": ["read"], "action": "SCMP_ACT_TRAP", "args": c}]})),
        "linux.seccomp.syscalls[1].names[0]"
    );
    // A name that exists only on x86 is no error without x86, as runc takes it (there
    // is no such system call to filter on the other arches) ...
    assert!(compile(&profile(syscalls(
        json!({"names": ["socketcall"], "action": "SCMP_ACT_ALLOW"})
    )))
    .is_ok());
    // ... and unknown operators, actions and flags never reach compile(): the config
    // parser refuses them with the path (config.rs finds it with jsonpath).
    for (bad, want) in [
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_FOO"}]}]}),
            "syscalls[0].args[0].op",
        ),
        (
            json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_FOO"]}),
            "flags[0]",
        ),
        (json!({"defaultAction": "SCMP_ACT_FOO"}), "defaultAction"),
    ] {
        let text = bad.to_string();
        let e =
            serde_json::from_str::<LinuxSeccomp>(&text).expect_err("unknown enum value refused");
        let path = crate::jsonpath::error_path(text.as_bytes(), &e);
        assert_eq!(path, want, "{e}");
    }
}

#[test]
fn architectures_and_x32() {
    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
        "syscalls": [{"names": ["getpid", "uretprobe", "recv"], "action": "SCMP_ACT_ALLOW"}]
    }));
    assert_eq!(
        eval(&p, AUDIT_ARCH_X86_64, 39, [0; 6]),
        ALLOW,
        "native x86_64 added"
    );
    assert_eq!(eval(&p, AUDIT_ARCH_I386, 20, [0; 6]), ALLOW);
    assert_eq!(
        eval(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39, [0; 6]),
        ALLOW
    );
    assert_eq!(eval(&p, AUDIT_ARCH_AARCH64, 172, [0; 6]), ALLOW);
    assert_eq!(
        eval(&p, 0x4000_0028, 20, [0; 6]),
        KILL_THREAD,
        "ARM: bad arch"
    );
    // uretprobe (x86_64 335) does not leak to x32 number 335.
    assert_eq!(eval(&p, AUDIT_ARCH_X86_64, 335, [0; 6]), ALLOW);
    // (On x32 it is above the highest number named, so -ENOSYS, as runc's stub gives.)
    assert_eq!(
        eval(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 335, [0; 6]),
        errno(libc::ENOSYS)
    );
    assert_eq!(
        eval(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 20, [0; 6]),
        errno(1)
    );
    // getpid on x86_64 (39) is not x86 number 39 (mkdir).
    assert_eq!(eval(&p, AUDIT_ARCH_I386, 39, [0; 6]), errno(1));
    // recv exists on x86 only through socketcall(SYS_RECV = 10, ...).
    assert_eq!(eval(&p, AUDIT_ARCH_I386, 102, [10, 0, 0, 0, 0, 0]), ALLOW);
    assert_eq!(eval(&p, AUDIT_ARCH_I386, 102, [9, 0, 0, 0, 0, 0]), errno(1));

    // Without x32 in the list, an x32 number is a foreign arch (libseccomp), but -1
    // keeps the default.
    let p = ok(json!({"defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}]}));
    assert_eq!(
        eval(&p, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 39, [0; 6]),
        KILL_THREAD
    );
    assert_eq!(eval(&p, AUDIT_ARCH_X86_64, u32::MAX, [0; 6]), errno(1));
    assert_eq!(eval(&p, AUDIT_ARCH_I386, 20, [0; 6]), KILL_THREAD);
}

#[test]
fn overlapping_rules() {
    let c = |i: u32, v: u64| json!({"index": i, "value": v, "op": "SCMP_CMP_EQ"});
    // An argument-less rule decides whatever the order.
    for rules in [
        json!([{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18, "args": [c(0, 5)]},
               {"names": ["personality"], "action": "SCMP_ACT_ALLOW"}]),
        json!([{"names": ["personality"], "action": "SCMP_ACT_ALLOW"},
               {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 18, "args": [c(0, 5)]}]),
    ] {
        let p = ok(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules}));
        assert_eq!(x86_64(&p, "personality", [5, 0, 0, 0, 0, 0]), ALLOW);
    }
    // The less specific rule wins over the more specific one, in either order.
    for rules in [
        json!([{"names": ["kill"], "action": "SCMP_ACT_TRAP", "args": [c(0, 1), c(1, 2)]},
               {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [c(0, 1)]}]),
        json!([{"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [c(0, 1)]},
               {"names": ["kill"], "action": "SCMP_ACT_TRAP", "args": [c(0, 1), c(1, 2)]}]),
    ] {
        let p = ok(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules}));
        assert_eq!(x86_64(&p, "kill", [1, 2, 0, 0, 0, 0]), ALLOW);
        assert_eq!(x86_64(&p, "kill", [1, 3, 0, 0, 0, 0]), ALLOW);
        assert_eq!(x86_64(&p, "kill", [2, 2, 0, 0, 0, 0]), errno(1));
    }
    // Two conditions on one argument: each its own rule (runc), so ORed.
    let p = ok(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [c(1, 9), c(1, 15)]}]}));
    assert_eq!(x86_64(&p, "kill", [0, 9, 0, 0, 0, 0]), ALLOW);
    assert_eq!(x86_64(&p, "kill", [0, 15, 0, 0, 0, 0]), ALLOW);
    assert_eq!(x86_64(&p, "kill", [0, 2, 0, 0, 0, 0]), errno(1));
    // Two argument-less rules with different actions: the first decides, as in
    // libseccomp (podman's default profile allows setns, then denies it again).
    let p = ok(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
        {"names": ["setns", "read"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["setns"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}),
    );
    assert_eq!(x86_64(&p, "setns", [0; 6]), ALLOW);
    // A rule with the default action is a no-op (runc skips it).
    let p = ok(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [c(0, 1)]},
        {"names": ["kill"], "action": "SCMP_ACT_ALLOW", "args": [c(1, 1)]}]}));
    assert_eq!(x86_64(&p, "kill", [1, 1, 0, 0, 0, 0]), ALLOW);
}

#[test]
fn comparisons_are_64_bit() {
    let vals = [
        0u64,
        1,
        5,
        0xffff_ffff,
        1 << 32,
        (1 << 32) | 5,
        (5 << 32) | 1,
        u64::MAX,
    ];
    let ops = [
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
    ];
    for (o, op) in ops.iter().enumerate() {
        for v in vals {
            let p = ok(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 3, "value": v, "op": op}]}]}));
            for a in vals {
                let want = [a != v, a < v, a <= v, a == v, a >= v, a > v][o];
                let got = x86_64(&p, "kill", [0, 0, 0, a, 0, 0]) == ALLOW;
                assert_eq!(got, want, "{a:#x} {op} {v:#x}");
            }
        }
    }
    for (mask, datum) in [
        (0xffu64, 0x28u64),
        (0xff_0000_0000, 0x12_0000_0000),
        (u64::MAX, 7),
    ] {
        let p = ok(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["kill"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 5, "value": mask, "valueTwo": datum, "op": "SCMP_CMP_MASKED_EQ"}]}]}));
        for a in vals.into_iter().chain([0x128, 0x12_0000_0001, 7, datum]) {
            let got = x86_64(&p, "kill", [0, 0, 0, 0, 0, a]) == ALLOW;
            assert_eq!(got, a & mask == datum, "{a:#x} & {mask:#x} == {datum:#x}");
        }
    }
}

/// Names of the x86_64 table minus the ones the large-profile test expects refused.
fn many_rules(n: usize, args: usize) -> Vec<serde_json::Value> {
    let refused = ["unshare", "mount", "keyctl", "clone3"];
    tables::X86_64
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !refused.contains(name))
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, name)| {
            let a: Vec<_> = (0..args)
                .map(|k| json!({"index": k, "value": i + k, "op": "SCMP_CMP_NE"}))
                .collect();
            json!({"names": [name], "action": "SCMP_ACT_ALLOW", "args": a})
        })
        .collect()
}

#[test]
fn large_profile_fits_and_works() {
    let mut rules = many_rules(400, 0);
    // Some argument rules, absorbed where a plain rule exists, kept where not.
    rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    let p = ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules
    }));
    assert!(p.instructions() <= MAX_INSTRUCTIONS, "{p:?}");
    for (name, _) in tables::X86_64 {
        let want = match *name {
            "unshare" | "mount" | "keyctl" => errno(libc::EPERM),
            "clone3" => errno(libc::ENOSYS),
            _ => ALLOW,
        };
        assert_eq!(x86_64(&p, name, [0; 6]), want, "{name}");
    }
    let (s, out) = in_child(&p, |o| {
        o[0] = sys(libc::SYS_getpid, [0; 6]);
        o[1] = sys(libc::SYS_unshare, [0; 6]);
        o[2] = sys(libc::SYS_clone3, [0; 6]);
    });
    exited_ok(s);
    assert!(out[0] > 0);
    assert_eq!(&out[1..3], &[-E, -i64::from(libc::ENOSYS)]);

    // With argument rules the program is long enough to need `ja` trampolines; every
    // syscall must still reach its own rules.
    let p = ok(json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": many_rules(150, 2)}));
    assert!(p.code().any(|(c, ..)| c == 0x05), "trampolines used: {p:?}");
    for (i, (name, _)) in tables::X86_64
        .iter()
        .filter(|(n, _)| !["unshare", "mount", "keyctl", "clone3"].contains(n))
        .take(150)
        .enumerate()
    {
        let i = i as u64;
        assert_eq!(x86_64(&p, name, [i + 7, 0, 0, 0, 0, 0]), ALLOW, "{name}");
        assert_eq!(x86_64(&p, name, [i, 0, 0, 0, 0, 0]), errno(1), "{name}");
        assert_eq!(x86_64(&p, name, [0, i + 1, 0, 0, 0, 0]), errno(1), "{name}");
    }
}

#[test]
fn too_large_is_an_error() {
    assert_eq!(
        err_field(json!({"defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
            "syscalls": many_rules(300, 6)})),
        "linux.seccomp"
    );
}

/// Profiles built with oci-spec's builders (not JSON) compile the same way.
#[test]
fn builder_profiles_compile() {
    let rule = oci_spec::runtime::LinuxSyscallBuilder::default()
        .names(vec!["getpid".to_string()])
        .action(Action::ScmpActAllow)
        .args(vec![LinuxSeccompArg::default()])
        .build()
        .expect("rule");
    let p = compile(
        &oci_spec::runtime::LinuxSeccompBuilder::default()
            .default_action(Action::ScmpActErrno)
            .syscalls(vec![rule])
            .build()
            .expect("profile"),
    )
    .expect("compiles");
    // The default arg is index 0 == 0 (SCMP_CMP_EQ).
    assert_eq!(x86_64(&p, "getpid", [0; 6]), ALLOW);
    assert_eq!(x86_64(&p, "getpid", [1, 0, 0, 0, 0, 0]), errno(1));
}

#[test]
fn names_of_other_architectures_are_not_errors_but_typos_are() {
    // The engines' default profiles list arm/ppc/s390 system calls beside the x86 ones.
    let p = ok(
        json!({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["read", "pciconfig_iobase", "s390_runtime_instr", "arm_fadvise64_64"],
                      "action": "SCMP_ACT_ALLOW"}]}),
    );
    assert!(p.instructions() > 0);
    assert_eq!(
        err_field(json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "pciconfig_iobasee"], "action": "SCMP_ACT_ALLOW"}]})),
        "linux.seccomp.syscalls[0].names[1]"
    );
}

/// Every name libseccomp knows is accepted, as runc accepts it, whatever the
/// profile's architectures: bdflush (i386 only) with x86_64 alone, and names of
/// architectures this compiler has no table for. (The 487 names libseccomp 2.5.4
/// resolves on any of its architectures were compared with ours: these are the ones
/// only other tables or other architectures have.) A typo is still an error.
#[test]
fn names_of_other_architectures_are_accepted_and_typos_refused() {
    for name in ["bdflush", "get_tls", "switch_endian", "riscv_flush_icache"] {
        let p = ok(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": [name, "mkdir"], "action": "SCMP_ACT_ERRNO"}]
        }));
        let mkdir = Abi::X86_64.nr("mkdir").expect("mkdir");
        assert_eq!(
            eval(&p, AUDIT_ARCH_X86_64, mkdir, [0; 6]),
            errno(libc::EPERM),
            "{name}"
        );
    }
    assert_eq!(
        err_field(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["bdflushh"], "action": "SCMP_ACT_ERRNO"}]
        })),
        "linux.seccomp.syscalls[0].names[0]"
    );
}
