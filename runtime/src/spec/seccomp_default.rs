//! containerd's default seccomp profile, as `contrib/seccomp/seccomp_default.go`
//! (`DefaultProfile`) generates it on Linux.
//!
//! Followed: containerd v2.3.4 (commit db8809540e1a7a9da5d518876894933ff55692ab,
//! 2026-08-12), the newest 2.x release; the file is unchanged on main up to
//! 301026e58c61. Engines (ctr, the CRI plugin) put this profile in every container's
//! config, so a bundle from `plinth spec` behaves under plinth as a containerd-made one
//! does under runc.
//!
//! The profile is not a fixed document: containerd builds it from the spec's bounding
//! capabilities (a capability unlocks the system calls it guards) and from the Go
//! architecture it was built for. [`profile`] does the same from a bounding set and
//! the architecture plinth was built for.

use serde_json::{json, Value};

/// The system calls containerd allows whatever the capabilities and architecture (its
/// first rule), in containerd's order. Names that do not exist on an architecture
/// (`chown32` on x86_64, ...) are listed anyway, as in containerd: the filter applies
/// each name where it exists.
pub const ALWAYS_ALLOWED: [&str; 363] = [
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "getxattrat",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listmount",
    "listxattr",
    "listxattrat",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lsm_get_self_attr",
    "lsm_list_modules",
    "lsm_set_self_attr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "map_shadow_stack",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "removexattrat",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "setxattrat",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statmount",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "uretprobe",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed on kernels from 4.8 on, where seccomp runs before ptrace (before that a
/// tracer could rewrite a filtered call). containerd checks the running kernel; plinth
/// needs a far newer one anyway (openat2 is 5.6), so the group is always in.
const PTRACE_SAFE: [&str; 3] = ["process_vm_readv", "process_vm_writev", "ptrace"];

/// The syscalls allowed only on the architecture plinth is built for (containerd's
/// `switch runtime.GOARCH`): amd64 needs `arch_prctl` to set up TLS at all.
fn arch_allowed() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["arch_prctl", "modify_ldt"]
    } else if cfg!(target_arch = "x86") {
        &["modify_ldt"]
    } else if cfg!(target_arch = "aarch64") || cfg!(target_arch = "arm") {
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ]
    } else if cfg!(target_arch = "powerpc64") {
        &["sync_file_range2", "swapcontext"]
    } else if cfg!(target_arch = "s390x") {
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ]
    } else if cfg!(target_arch = "riscv64") {
        &["riscv_flush_icache", "riscv_hwprobe"]
    } else {
        &[]
    }
}

/// The profile's `architectures` (containerd's `arches()`): the native ABI and the
/// compat ABIs the same kernel can run, so a 32-bit binary cannot slip past the filter
/// through the other system-call table.
pub fn architectures() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    } else if cfg!(target_arch = "aarch64") {
        // containerd also lists SCMP_ARCH_ARM; plinth's filter compiler has no arm
        // (32-bit) table and refuses a profile naming it, so only the native ABI is
        // listed (other ABIs then get the bad-arch kill, which is stricter).
        &["SCMP_ARCH_AARCH64"]
    } else {
        // containerd's `default:` case (and its "386"): no list, the native ABI only.
        &[]
    }
}

/// The syscalls a bounding capability unlocks (containerd's `switch c`), in the order
/// containerd appends them.
fn capability_allowed(cap: &str) -> &'static [&'static str] {
    match cap {
        "CAP_DAC_READ_SEARCH" => &["open_by_handle_at"],
        "CAP_SYS_ADMIN" => &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
        "CAP_SYS_BOOT" => &["reboot"],
        "CAP_SYS_CHROOT" => &["chroot"],
        "CAP_SYS_MODULE" => &["delete_module", "init_module", "finit_module"],
        "CAP_SYS_PACCT" => &["acct"],
        "CAP_SYS_PTRACE" => &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
        "CAP_SYS_RAWIO" => &["iopl", "ioperm"],
        "CAP_SYS_TIME" => &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        "CAP_SYS_TTY_CONFIG" => &["vhangup"],
        "CAP_SYS_NICE" => &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
        "CAP_SYSLOG" => &["syslog"],
        "CAP_BPF" => &["bpf"],
        "CAP_PERFMON" => &["perf_event_open"],
        _ => &[],
    }
}

/// A rule allowing `names` unconditionally.
fn allow(names: &[&str]) -> Value {
    json!({"names": names, "action": "SCMP_ACT_ALLOW"})
}

/// A rule allowing `name` when argument `index` compares to `value` by `op`.
/// (`args` and `valueTwo` are left out when empty or zero, as Go's encoding of
/// runtime-spec's `omitempty` fields leaves them out.)
fn allow_if(name: &str, index: u32, value: u64, op: &str) -> Value {
    json!({
        "names": [name],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": index, "value": value, "op": op}]
    })
}

/// containerd's default profile for a container whose bounding set is `bounding`:
/// anything not allowed fails with EPERM (SCMP_ACT_ERRNO without errnoRet).
pub fn profile(bounding: &[&str]) -> Value {
    const AF_ALG: u64 = libc::AF_ALG as u64;
    const AF_VSOCK: u64 = libc::AF_VSOCK as u64;
    let mut rules = vec![
        allow(&ALWAYS_ALLOWED),
        // socket(2) for every address family but AF_ALG (38; the kernel crypto API, a
        // recurring source of kernel bugs) and AF_VSOCK (40; the way out to the
        // hypervisor). Three single-condition ranges, not one rule with two `!=`:
        // runc turns two conditions on one argument into two ORed rules, which would
        // allow both families. On x86 (i386) socket() goes through socketcall(2),
        // which the first rule allows unconditionally, as in containerd.
        allow_if("socket", 0, AF_ALG, "SCMP_CMP_LT"),
        allow_if("socket", 0, AF_ALG + 1, "SCMP_CMP_EQ"),
        allow_if("socket", 0, AF_VSOCK, "SCMP_CMP_GT"),
    ];
    // personality(2) only for the personas programs ask for in practice: PER_LINUX,
    // PER_LINUX32, UNAME26 and their mix, and 0xffffffff (query); not e.g.
    // ADDR_NO_RANDOMIZE or READ_IMPLIES_EXEC, which weaken the address space.
    for persona in [0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        rules.push(allow_if("personality", 0, persona, "SCMP_CMP_EQ"));
    }
    rules.push(allow(&PTRACE_SAFE));
    let arch = arch_allowed();
    if !arch.is_empty() {
        rules.push(allow(arch));
    }
    let mut admin = false;
    for cap in bounding {
        admin |= *cap == "CAP_SYS_ADMIN";
        let names = capability_allowed(cap);
        if !names.is_empty() {
            rules.push(allow(names));
        }
    }
    if !admin {
        // Without CAP_SYS_ADMIN, clone(2) only without namespace flags (the mask must
        // match 0): the kernel would refuse them anyway, this refuses them before any
        // kernel code runs. The flags are the first argument except on s390x.
        let ns_flags = libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP;
        let index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        rules.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": index, "value": ns_flags as u64, "op": "SCMP_CMP_MASKED_EQ"}]
        }));
        // clone3(2) passes its flags in memory, where seccomp cannot look, so it is
        // refused; ENOSYS rather than EPERM makes glibc fall back to clone(2), whose
        // flags the rule above does check (moby/moby#42681).
        rules.push(json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS
        }));
    }
    let mut profile = json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": rules});
    // Go leaves an empty `architectures` out (omitempty); so does this.
    if !architectures().is_empty() {
        profile["architectures"] = json!(architectures());
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_of(rule: &Value) -> Vec<&str> {
        rule["names"]
            .as_array()
            .expect("names")
            .iter()
            .map(|n| n.as_str().expect("a name"))
            .collect()
    }

    #[test]
    fn always_allowed_names_are_distinct_and_leave_out_the_dangerous_ones() {
        let mut sorted = ALWAYS_ALLOWED.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 363);
        for denied in [
            "keyctl",
            "add_key",
            "request_key",
            "io_uring_setup",
            "mount",
            "unshare",
            "setns",
            "bpf",
            "clone3",
            "userfaultfd",
            "kexec_load",
        ] {
            assert!(!ALWAYS_ALLOWED.contains(&denied), "{denied}");
        }
    }

    #[test]
    fn default_capabilities_give_containerds_fourteen_rules() {
        let p = profile(&crate::spec::DEFAULT_CAPS);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(p.get("defaultErrnoRet").is_none(), "EPERM is the default");
        let rules = p["syscalls"].as_array().expect("syscalls");
        // allow-list, 3 socket, 5 personality, ptrace group, arch group, chroot
        // (CAP_SYS_CHROOT), clone, clone3.
        assert_eq!(rules.len(), 14, "{rules:#?}");
        assert_eq!(names_of(&rules[0]), ALWAYS_ALLOWED);
        let sockets: Vec<_> = rules.iter().filter(|r| r["names"][0] == "socket").collect();
        let ranges: Vec<_> = sockets
            .iter()
            .map(|r| (r["args"][0]["op"].as_str(), r["args"][0]["value"].as_u64()))
            .collect();
        assert_eq!(
            ranges,
            [
                (Some("SCMP_CMP_LT"), Some(38)),
                (Some("SCMP_CMP_EQ"), Some(39)),
                (Some("SCMP_CMP_GT"), Some(40))
            ]
        );
        assert_eq!(names_of(&rules[9]), PTRACE_SAFE);
        assert_eq!(names_of(&rules[11]), ["chroot"]);
        assert_eq!(rules[12]["args"][0]["value"], 0x7e02_0000_u64);
        assert_eq!(rules[12]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(
            rules[13],
            json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(names_of(&rules[10]), ["arch_prctl", "modify_ldt"]);
            assert_eq!(
                p["architectures"],
                json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
            );
        }
    }

    #[test]
    fn cap_sys_admin_allows_clone_and_clone3_outright() {
        let p = profile(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]);
        let rules = p["syscalls"].as_array().expect("syscalls");
        // No argument-checked clone and no clone3 errno: the admin group allows both.
        assert!(rules
            .iter()
            .all(|r| r.get("args").is_none() || r["names"][0] != "clone"));
        assert!(rules.iter().all(|r| r["action"] == "SCMP_ACT_ALLOW"));
        let admin = rules
            .iter()
            .find(|r| names_of(r).contains(&"mount"))
            .expect("admin group");
        assert!(names_of(admin).contains(&"clone3"));
        assert!(rules.iter().any(|r| names_of(r).contains(&"kcmp")));
    }
}
