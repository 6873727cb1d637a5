//! Seccomp through the real binary: the profile's actions, errno values and argument
//! conditions reach the container's process; a bad profile is refused by name.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use plinth_tests::{need_root, unique, Bundle};

#[test]
fn profile_actions_reach_the_process() {
    if !need_root("profile_actions_reach_the_process") {
        return;
    }
    let mut b = Bundle::busybox(
        "mkdir /tmp/x 2>&1; echo mkdir=$?; hostname other 2>&1; echo hostname=$?; \
         sync; echo sync=$?; echo still-here",
    );
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["sync"], "action": "SCMP_ACT_KILL_PROCESS"},
            // Only the bad personality is refused: an argument condition.
            {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 4, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    let (code, out, err) = b.run(&unique("sc"));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("Permission denied"),
        "EACCES from errnoRet 13: {out}"
    );
    assert_eq!(lines[1], "mkdir=1", "{out}");
    assert!(
        lines[2].contains("Operation not permitted"),
        "EPERM by default: {out}"
    );
    assert_eq!(lines[3], "hostname=1", "{out}");
    // A child killed by SIGSYS (31): the shell reports 128+31.
    assert_eq!(lines[4], "sync=159", "{out}");
    assert_eq!(lines[5], "still-here");
}

#[test]
fn errno_default_with_an_allow_list_and_enosys_for_clone3() {
    if !need_root("errno_default_with_an_allow_list_and_enosys_for_clone3") {
        return;
    }
    // busybox sh needs only these; everything else is EPERM, clone3 is ENOSYS so
    // that a libc would fall back to clone.
    let allowed = [
        "read",
        "write",
        "open",
        "openat",
        "close",
        "fstat",
        "newfstatat",
        "stat",
        "lstat",
        "mmap",
        "munmap",
        "mprotect",
        "brk",
        "rt_sigaction",
        "rt_sigprocmask",
        "rt_sigreturn",
        "ioctl",
        "access",
        "getpid",
        "getppid",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "fcntl",
        "dup2",
        "dup3",
        "execve",
        "exit",
        "exit_group",
        "wait4",
        "clone",
        "fork",
        "vfork",
        "arch_prctl",
        "set_tid_address",
        "getcwd",
        "chdir",
        "uname",
        "getdents64",
        "prctl",
        "futex",
        "readlink",
        "pipe",
        "pipe2",
        "lseek",
        "getpgrp",
        "setpgid",
        "getpgid",
        "statx",
        "sysinfo",
        "prlimit64",
        "getrlimit",
        "gettid",
        "rseq",
        "set_robust_list",
        "poll",
        "ppoll",
        "nanosleep",
        "clock_nanosleep",
    ];
    let mut b = Bundle::busybox("unshare -n true 2>&1; echo unshare=$?; echo ok");
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "syscalls": [
            {"names": allowed.to_vec(), "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
        ]
    });
    let (code, out, err) = b.run(&unique("sc"));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains("Operation not permitted"),
        "unshare(2) gets EPERM: {out}"
    );
    assert!(out.contains("unshare=1"), "{out}");
    assert!(out.trim_end().ends_with("ok"), "{out}");
}

#[test]
fn a_bad_profile_is_refused_by_name() {
    if !need_root("a_bad_profile_is_refused_by_name") {
        return;
    }
    let mut b = Bundle::busybox("true");
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "no_such_syscall"], "action": "SCMP_ACT_ERRNO"}]
    });
    let id = unique("scbad");
    let (code, err) = b.create_failing(&id);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("linux.seccomp.syscalls[0].names[1]"), "{err}");
    assert!(err.contains("no_such_syscall"), "{err}");
    assert!(!b.root.join(&id).exists(), "state left behind");
}

/// Without noNewPrivileges the filter goes in before the user switch (it needs
/// CAP_SYS_ADMIN), so the runtime's own last calls pass through it, as in runc. Those
/// must be the same few whatever libc the binary carries: no file opened (the init read
/// /proc/self/setgroups there: open and fcntl with musl, openat and statx with glibc),
/// and the set-id calls bare (musl wraps them in rt_sigprocmask calls).
#[test]
fn a_filter_before_the_user_switch_sees_only_the_runtimes_last_calls() {
    if !need_root("a_filter_before_the_user_switch_sees_only_the_runtimes_last_calls") {
        return;
    }
    let test = "a_filter_before_the_user_switch_sees_only_the_runtimes_last_calls";
    let mut b = Bundle::busybox("exit 0");
    // Not busybox: as a non-root user it stats /etc/busybox.conf. A static C program's
    // start-up makes none of the calls the filter kills (checked with strace).
    let exe = b.tmp.0.join("quiet");
    // With an argument it makes one of those calls itself: the filter's own proof.
    let src = "#include <fcntl.h>\nint main(int argc, char **argv) {\n\
               if (argc > 1) fcntl(0, F_GETFD);\n return 7;\n}\n";
    if !plinth_tests::compile_static(src, &exe, test) {
        return;
    }
    std::fs::copy(&exe, b.dir.join("rootfs/bin/quiet")).unwrap();
    b.config["process"]["args"] = json!(["/bin/quiet"]);
    b.config["process"]["noNewPrivileges"] = json!(false);
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [1001]});
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["open", "fstat", "newfstatat", "statx", "fcntl", "rt_sigprocmask"],
             "action": "SCMP_ACT_KILL_PROCESS"}
        ]
    });
    let (code, out, err) = b.run(&unique("scu"));
    // 7 is the program's own status: it ran. 159 would be SIGSYS.
    assert_eq!(code, 7, "stdout: {out}\nstderr: {err}");
    // The same filter is in place: the program's own fcntl is killed (128 + SIGSYS).
    b.config["process"]["args"] = json!(["/bin/quiet", "fcntl"]);
    let (code, out, err) = b.run(&unique("scu"));
    assert_eq!(code, 159, "stdout: {out}\nstderr: {err}");
}

/// The entries of the compiled-filter cache under `root`: (path, bytes).
fn cache_entries(root: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = root.join("#seccomp-cache");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    out.sort();
    out
}

/// The length of an entry's header: magic, build id and profile fields (each a
/// little-endian u32 length and the bytes); the program and flags follow.
fn header_len(entry: &[u8]) -> usize {
    let field = |at: usize| u32::from_le_bytes(entry[at..at + 4].try_into().unwrap()) as usize;
    let build_end = 8 + 4 + field(8);
    build_end + 4 + field(build_end)
}

/// A compiled filter is kept under the state root (0700) and used again; an entry that
/// is foreign-owned, writable by others or corrupt is ignored and replaced. To show that
/// an entry is really used, and really ignored, one is forged: profile B's key and
/// JSON with the program of profile A, which allows what B denies.
#[test]
fn compiled_filters_are_cached_and_doubtful_entries_ignored() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !need_root("compiled_filters_are_cached_and_doubtful_entries_ignored") {
        return;
    }
    let script = "mkdir /dev/shm/x 2>/dev/null && echo MADE || echo DENIED";
    let mut a = Bundle::busybox(script);
    a.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getpriority"], "action": "SCMP_ACT_ERRNO"}]
    });
    let mut b = Bundle::busybox(script);
    b.root = a.root.clone();
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let run_b = |what: &str| -> String {
        let (code, out, err) = b.run(&unique("cache"));
        assert_eq!(code, 0, "{what}: {err}");
        out.trim().to_string()
    };

    assert_eq!(a.run(&unique("cache")).1.trim(), "MADE");
    assert_eq!(run_b("first run of B"), "DENIED");
    let dir = a.root.join("#seccomp-cache");
    let md = std::fs::metadata(&dir).unwrap();
    assert_eq!(md.mode() & 0o777, 0o700, "the cache directory's mode");
    let entries = cache_entries(&a.root);
    assert_eq!(entries.len(), 2, "one entry per profile: {entries:?}");
    let has = |e: &[u8], s: &[u8]| e.windows(s.len()).any(|w| w == s);
    let (b_path, b_entry) = entries
        .iter()
        .find(|(_, e)| has(e, b"mkdirat"))
        .unwrap()
        .clone();
    let (_, a_entry) = entries
        .iter()
        .find(|(_, e)| !has(e, b"mkdirat"))
        .unwrap()
        .clone();
    for (p, _) in &entries {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "{}", p.display());
    }
    let mut forged = b_entry[..header_len(&b_entry)].to_vec();
    forged.extend_from_slice(&a_entry[header_len(&a_entry)..]);

    // A sound entry of the caller's is used as it is: the forged program runs.
    std::fs::write(&b_path, &forged).unwrap();
    std::fs::set_permissions(&b_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        run_b("trusted forged entry"),
        "MADE",
        "the cache was not used"
    );

    // Foreign-owned, or writable by others: ignored, compiled afresh, replaced.
    for (what, uid, mode) in [
        ("foreign-owned", 65534, 0o600),
        ("world-writable", 0, 0o666),
    ] {
        std::fs::write(&b_path, &forged).unwrap();
        std::os::unix::fs::chown(&b_path, Some(uid), None).unwrap();
        std::fs::set_permissions(&b_path, std::fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(run_b(what), "DENIED", "{what}: the entry was used");
        assert_eq!(
            std::fs::read(&b_path).unwrap(),
            b_entry,
            "{what}: not replaced"
        );
        let m = std::fs::metadata(&b_path).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600), "{what}");
    }

    // Corrupt: cut short, or not an entry at all.
    for garbage in [&forged[..forged.len() - 3], b"not an entry".as_slice()] {
        std::fs::write(&b_path, garbage).unwrap();
        assert_eq!(run_b("corrupt entry"), "DENIED");
        assert_eq!(
            std::fs::read(&b_path).unwrap(),
            b_entry,
            "corrupt: not replaced"
        );
    }
}
