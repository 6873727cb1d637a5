//! Real container engines for the tests: a private containerd (with its CRI plugin)
//! and podman with private storage, both told to use the `plinth` binary, and the
//! busybox and pause images they run, built here as OCI archives (no registry is
//! reachable).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{busybox_rootfs, plinth_bin, text, workspace, TempDir};

/// The busybox image's name in every engine.
pub const BUSYBOX: &str = "localhost/plinth-busybox:test";
/// The pod sandbox image (busybox sleeping forever).
pub const PAUSE: &str = "localhost/plinth-pause:test";

/// Why the engine tests cannot run here, if they cannot.
pub fn missing_tools() -> Option<String> {
    for t in [
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "podman",
        "conmon",
    ] {
        if crate::which(t).is_none() {
            return Some(format!(
                "{t} is not installed (`make test` installs it: mk/engines.mk)"
            ));
        }
    }
    if !crictl().exists() {
        return Some(format!(
            "{} is not built (`make test` builds it)",
            crictl().display()
        ));
    }
    None
}

/// The crictl the Makefile builds from the Go module proxy.
pub fn crictl() -> PathBuf {
    crate::cache().join("bin/crictl")
}

/// Runs a command and panics with its output unless it succeeds; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let (code, o, e) = text(&out);
    assert_eq!(code, 0, "{cmd:?} failed\nstdout: {o}\nstderr: {e}");
    o
}

/// Podman with storage of its own, cgroupfs (no systemd here) and `plinth` as the
/// OCI runtime.
pub struct Podman {
    /// Holds root/ and run/.
    pub tmp: TempDir,
}

impl Podman {
    /// A fresh storage.
    pub fn new() -> Podman {
        Podman {
            tmp: TempDir::new("plinth-podman"),
        }
    }

    /// `podman` with the private storage and `--runtime plinth`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.tmp.0.join("root"))
            .arg("--runroot")
            .arg(self.tmp.0.join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .arg("--runtime")
            .arg(plinth_bin());
        c
    }
}

impl Default for Podman {
    fn default() -> Self {
        Podman::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-af", "-t", "0"]).output();
        let _ = self.cmd().args(["system", "reset", "-f"]).output();
        kill_matching(&self.tmp.0.to_string_lossy());
    }
}

/// The OCI archives of the busybox and pause images, built once per test binary.
pub fn image_archives() -> &'static (PathBuf, PathBuf) {
    static ARCHIVES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    ARCHIVES.get_or_init(|| {
        let dir = workspace()
            .join("target/engine-images")
            .join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let rootfs = TempDir::new("plinth-image");
        busybox_rootfs(&rootfs.0);
        let tar = dir.join("rootfs.tar");
        ok(Command::new("tar")
            .arg("-C")
            .arg(&rootfs.0)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let p = Podman::new();
        ok(p.cmd().arg("import").arg(&tar).arg(BUSYBOX));
        ok(p.cmd()
            .args([
                "import",
                "--change",
                r#"ENTRYPOINT ["/bin/sleep","infinity"]"#,
            ])
            .arg(&tar)
            .arg(PAUSE));
        let (bb, pause) = (dir.join("busybox.oci.tar"), dir.join("pause.oci.tar"));
        for (img, out) in [(BUSYBOX, &bb), (PAUSE, &pause)] {
            ok(p.cmd()
                .args(["save", "--format", "oci-archive", "-o"])
                .arg(out)
                .arg(img));
        }
        (bb, pause)
    })
}

/// A containerd of our own: private root, state and socket, its CRI plugin set to run
/// `plinth` through containerd-shim-runc-v2 (BinaryName), no CNI (pods use the host
/// network).
pub struct Containerd {
    /// Holds root/, state/, the socket, the config and the log.
    pub tmp: TempDir,
    child: Child,
}

impl Containerd {
    /// Starts it and waits for its socket; imports the images into `k8s.io` (CRI) and
    /// `plinth-test` (ctr).
    pub fn start() -> Containerd {
        let tmp = TempDir::new("plinth-containerd");
        let d = &tmp.0;
        // restrict_oom_score_adj: CRI gives sandboxes oom_score_adj -998, and lowering
        // it needs CAP_SYS_RESOURCE, which this machine's bounding set lacks (any
        // runtime fails here without it); with it, containerd keeps its own value.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{d}/cni"
    bin_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "plinth"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.plinth]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.plinth.options]
        BinaryName = "{plinth}"
"#,
            d = d.display(),
            plinth = plinth_bin().display()
        );
        std::fs::create_dir_all(d.join("cni")).unwrap();
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd { tmp, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.socket().exists()
            || !c
                .ctr("default")
                .arg("version")
                .output()
                .unwrap()
                .status
                .success()
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(c.tmp.0.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (bb, pause) = image_archives();
        for ns in ["k8s.io", "plinth-test"] {
            for a in [bb, pause] {
                ok(c.ctr(ns).args(["images", "import"]).arg(a));
            }
        }
        c
    }

    /// The gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.tmp.0.join("containerd.sock")
    }

    /// `ctr` against this containerd, in namespace `ns`.
    pub fn ctr(&self, ns: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.socket())
            .args(["--namespace", ns]);
        c
    }

    /// `crictl` against this containerd's CRI plugin.
    pub fn crictl(&self) -> Command {
        let ep = format!("unix://{}", self.socket().display());
        let mut c = Command::new(crictl());
        c.args(["--config", "/dev/null", "--timeout", "30s"]).args([
            "--runtime-endpoint",
            &ep,
            "--image-endpoint",
            &ep,
        ]);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Shims outlive containerd by design; ours name our socket on their command line.
        kill_matching(&self.tmp.0.to_string_lossy());
        // Snapshots of tasks that were running are still mounted under our root.
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<&str> = mi
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(&self.tmp.0))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// SIGKILLs every process whose command line contains `pattern`.
pub fn kill_matching(pattern: &str) {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(pattern)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs `cmd` in a pseudo-terminal (through script(1), as a user at a terminal would)
/// and returns (exit code, what the terminal showed).
pub fn in_terminal(cmd: &str) -> (i32, String) {
    // script needs a stdin that stays open while the command runs.
    let mut child = Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let (code, shown, _) = text(&out);
    (code, shown)
}
