//! Shared helpers for the end-to-end tests: locating the built binaries, making
//! busybox bundles, running `plinth` and reading what it did.
#![allow(clippy::unwrap_used)]

pub mod browser;
pub mod demo;
pub mod engines;
pub mod etcd;
pub mod k8s;
pub mod lab;
pub mod registry;
pub mod server;
pub mod storm;
pub mod tap;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// `program` in the network namespace `netns` (through nsenter: `ip netns exec` would
/// remount /sys), or here.
pub fn in_netns(netns: Option<&Path>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The release `plinth` binary (`make test` builds it first), or $PLINTH.
pub fn plinth_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PLINTH") {
        return PathBuf::from(p);
    }
    let p = workspace().join("target/release/plinth");
    assert!(
        p.exists(),
        "{} is missing: run `make build` (make test does) first",
        p.display()
    );
    p
}

/// The path of a program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The cache directory the Makefile fills.
pub fn cache() -> PathBuf {
    std::env::var_os("PLINTH_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache"))
}

/// Whether this run is CI's (`CI` set and not empty; `.ci/run` sets it).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Drops every `ETCD_*` variable from `cmd`'s environment: etcd takes each as a flag,
/// so one the caller happens to have (a build's `ETCD_VERSION`) stops it starting.
pub fn without_etcd_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Skips `test` because something it needs is missing: prints a SKIP line saying
/// `why`, or, in CI, fails the test instead. `make` installs everything the tests use,
/// so a skip in CI means a missing install step, and must not pass unseen.
pub fn skip(test: &str, why: &str) {
    assert!(
        !in_ci(),
        "{test}: {why} (CI is set: a missing part fails instead of skipping)"
    );
    println!("SKIP {test}: {why}");
}

/// True when running as root; otherwise skips the test (see [`skip`]).
pub fn need_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(test, "needs root (real namespaces, mounts and cgroups)");
    false
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique name for this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Makes a new directory under /tmp.
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Output as (exit code, stdout, stderr).
pub fn text(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Gives the child `cmd` starts an extra, inheritable fd `target` duplicated from `f`
/// (as a caller's `exec 5<file` would).
pub fn pass_fd(cmd: &mut Command, f: &std::fs::File, target: i32) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let src = f.as_raw_fd();
    // SAFETY: dup2 and fcntl on fds that exist, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps FD_CLOEXEC: clear it explicitly.
            if libc::dup2(src, target) < 0 || libc::fcntl(target, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A busybox bundle with plinth's default config, and a private state root.
pub struct Bundle {
    /// The scratch directory holding bundle/ and state/.
    pub tmp: TempDir,
    /// The bundle directory.
    pub dir: PathBuf,
    /// The `--root` for plinth.
    pub root: PathBuf,
    /// The config, edited by the test before `write()`.
    pub config: Value,
}

/// Copies busybox-static into `rootfs/bin` with its applet links and a minimal /etc.
pub fn busybox_rootfs(rootfs: &Path) {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: `make deps` installs busybox-static");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(bb, rootfs.join("bin/busybox")).unwrap();
    let list = Command::new(bb).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

impl Bundle {
    /// Makes this a user-namespaced container whose root is host uid 100000 (65536 ids
    /// mapped), with an image owned by that root as an engine's would be, and no cgroup
    /// mount (a user namespace's root may not mount the host's cgroups).
    pub fn user_namespaced(&mut self) {
        std::fs::set_permissions(
            &self.tmp.0,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let out = Command::new("chown")
            .args(["-hR", "100000:100000"])
            .arg(self.dir.join("rootfs"))
            .output()
            .unwrap();
        assert!(out.status.success(), "chown: {out:?}");
        self.config["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "user"}));
        let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        self.config["linux"]["uidMappings"] = map.clone();
        self.config["linux"]["gidMappings"] = map;
        self.config["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["type"] != "cgroup");
    }

    /// A bundle running `sh -c script`, with plinth's default config.
    pub fn busybox(script: &str) -> Bundle {
        let tmp = TempDir::new("plinth-test");
        let dir = tmp.0.join("bundle");
        let root = tmp.0.join("state");
        busybox_rootfs(&dir.join("rootfs"));
        let out = Command::new(plinth_bin())
            .args(["spec", "--bundle"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "plinth spec: {out:?}");
        let text = std::fs::read(dir.join("config.json")).unwrap();
        let mut config: Value = serde_json::from_slice(&text).unwrap();
        config["process"]["args"] = serde_json::json!(["sh", "-c", script]);
        // `plinth spec` asks for a terminal, as `runc spec` does; these tests need none.
        config["process"]["terminal"] = serde_json::json!(false);
        let b = Bundle {
            tmp,
            dir,
            root,
            config,
        };
        b.write();
        b
    }

    /// Writes `config` to config.json.
    pub fn write(&self) {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// A `plinth` command with this bundle's `--root`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(plinth_bin());
        c.arg("--root").arg(&self.root);
        c
    }

    /// Runs `plinth ARGS` (with --root) and returns its output.
    pub fn plinth(&self, args: &[&str]) -> Output {
        self.cmd().args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// `plinth run --bundle DIR ID`: (exit code, stdout, stderr).
    pub fn run(&self, id: &str) -> (i32, String, String) {
        self.write();
        let out = self
            .cmd()
            .args(["run", "--bundle"])
            .arg(&self.dir)
            .arg(id)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        text(&out)
    }

    /// Spawns `plinth run --bundle DIR ID` (stdio inherited) and waits until the
    /// container is running; panics if it is not within 5 s.
    pub fn spawn_run(&self, id: &str) -> Child {
        self.write();
        let child = self
            .cmd()
            .args(["run", "--bundle"])
            .arg(&self.dir)
            .arg(id)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // `state` fails until run has made the container.
        while !self.plinth(&["state", id]).status.success() || self.state(id)["status"] != "running"
        {
            assert!(std::time::Instant::now() < deadline, "container never ran");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        child
    }

    /// `RUNTIME run --bundle DIR ID` with a runtime binary of the caller's choice (runc,
    /// for side-by-side tests) and a state root of its own: (exit code, stdout, stderr).
    pub fn run_with(&self, runtime: &Path, id: &str) -> (i32, String, String) {
        self.write();
        text(
            &self
                .cmd_with(runtime)
                .args(["run", "--bundle"])
                .arg(&self.dir)
                .arg(id)
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        )
    }

    /// A command of `runtime` with a state root of its own below this bundle's
    /// scratch directory.
    pub fn cmd_with(&self, runtime: &Path) -> Command {
        if runtime == plinth_bin() {
            return self.cmd();
        }
        let name = runtime.file_name().unwrap().to_string_lossy().into_owned();
        let mut c = Command::new(runtime);
        c.arg("--root")
            .arg(self.tmp.0.join(format!("state-{name}")));
        c
    }

    /// `plinth create`; panics with its stderr on failure. The container's init keeps
    /// the stdio it was given (that is how engines pass it), so stderr goes to a file
    /// rather than a pipe the test would wait on forever.
    pub fn create(&self, id: &str) {
        self.write();
        let err_path = self.tmp.0.join(format!("{id}.create.err"));
        let err = std::fs::File::create(&err_path).unwrap();
        let status = self
            .cmd()
            .args(["create", "--bundle"])
            .arg(&self.dir)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "create {id}: {}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        );
    }

    /// `plinth create` expected to fail: writes the config, runs create with stdio on
    /// files and returns (exit code, stderr). Should the create succeed after all, its
    /// init (which holds that stdio) is deleted at once, so the caller's assertion fails
    /// instead of hanging and nothing is left behind.
    pub fn create_failing(&self, id: &str) -> (i32, String) {
        self.write();
        let dir = self.dir.to_string_lossy().into_owned();
        let (code, _, err) = self.plinth_detached(&["create", "--bundle", &dir, id]);
        if code == 0 {
            let _ = self.plinth_detached(&["delete", "--force", id]);
        }
        (code, err)
    }

    /// `plinth start ID`; panics with its output on failure.
    pub fn start(&self, id: &str) {
        let out = self.plinth(&["start", id]);
        assert!(out.status.success(), "start {id}: {out:?}");
    }

    /// Runs `plinth ARGS` with stdio on files (for commands that leave a container
    /// holding them): (exit code, stdout, stderr).
    pub fn plinth_detached(&self, args: &[&str]) -> (i32, String, String) {
        let n = unique("out");
        let (o, e) = (
            self.tmp.0.join(format!("{n}.out")),
            self.tmp.0.join(format!("{n}.err")),
        );
        let status = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&o).unwrap())
            .stderr(std::fs::File::create(&e).unwrap())
            .status()
            .unwrap();
        (
            status.code().unwrap_or(-1),
            std::fs::read_to_string(&o).unwrap_or_default(),
            std::fs::read_to_string(&e).unwrap_or_default(),
        )
    }

    /// `plinth state ID` parsed.
    pub fn state(&self, id: &str) -> Value {
        let out = self.plinth(&["state", id]);
        assert!(out.status.success(), "state {id}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until `state ID` reports `status` (up to 5 s).
    pub fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let st = self.state(id);
            if st["status"] == status || std::time::Instant::now() > deadline {
                return st;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // Containers another runtime left (side-by-side tests).
        if let Some(runc) = which("runc") {
            let root = self.tmp.0.join("state-runc");
            if let Ok(rd) = std::fs::read_dir(&root) {
                for e in rd.flatten() {
                    let id = e.file_name().to_string_lossy().into_owned();
                    let _ = Command::new(&runc)
                        .arg("--root")
                        .arg(&root)
                        .args(["delete", "--force", &id])
                        .output();
                }
            }
        }
        // Leave nothing running behind a failed test.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.plinth(&["delete", "--force", &id]);
            }
        }
    }
}

/// Whether any mount point is below `path` (the test's bundle), i.e. a mount leaked.
pub fn mounts_under(path: &Path) -> Vec<String> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(path))
        .map(|s| s.to_string())
        .collect()
}

/// Where a container with no `cgroupsPath` gets its cgroup (`<id>` below the caller's
/// own cgroup, as runc's cgroupfs driver does), in every hierarchy of this host.
pub fn default_cgroup_dirs(id: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let pure_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let mut out = vec![];
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrl, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or("/"));
        let mount = match ctrl {
            "" if pure_v2 => PathBuf::from("/sys/fs/cgroup"),
            "" => PathBuf::from("/sys/fs/cgroup/unified"),
            c => PathBuf::from("/sys/fs/cgroup").join(c.strip_prefix("name=").unwrap_or(c)),
        };
        if mount.exists() {
            out.push(mount.join(path.trim_start_matches('/')).join(id));
        }
    }
    out
}

/// Receives the pty master a runtime sends to a console socket (SCM_RIGHTS).
pub fn recv_pty_master(conn: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let mut buf = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(conn),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel installed this fd in our table for us.
            return unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd in the console socket message");
}

/// Reads a pty master until the other side is gone (EIO) or EOF.
pub fn read_pty(master: std::os::fd::OwnedFd) -> String {
    use std::io::Read;
    let mut f = std::fs::File::from(master);
    let mut text = String::new();
    let mut chunk = [0u8; 256];
    while let Ok(n) = f.read(&mut chunk) {
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    text
}

/// Compiles a small C program statically into `out` (the busybox rootfs has no libc).
/// Returns false, after printing why `test` is skipped, only when there is no C
/// compiler at all; a compiler that fails on the program is a broken test and panics
/// (`make deps` installs gcc and libc6-dev).
pub fn compile_static(source: &str, out: &Path, test: &str) -> bool {
    let src = out.with_extension("c");
    std::fs::write(&src, source).unwrap();
    match Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(out)
        .arg(&src)
        .output()
    {
        Ok(o) if o.status.success() => true,
        Ok(o) => panic!(
            "cc -static {}: {}",
            src.display(),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            skip(
                test,
                &format!("no C compiler (cc: {e}); make deps installs gcc and libc6-dev"),
            );
            false
        }
    }
}

/// Packs `files` (`SRC:DEST`) into the extension `out` with the release plinth-boot
/// (`make build` builds it); the sha256 it prints for the machine config.
pub fn pack_extension(out: &Path, files: &[&str]) -> String {
    let mut cmd = Command::new(workspace().join("target/release/plinth-boot"));
    cmd.arg("extension").arg("-o").arg(out);
    for f in files {
        cmd.args(["--add", f]);
    }
    let o = cmd.output().expect("plinth-boot runs");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "plinth-boot extension: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("sha256: "))
        .expect("the config entry's sha256")
        .to_string()
}
