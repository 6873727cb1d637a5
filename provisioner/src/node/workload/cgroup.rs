//! A container's delegated cgroup v2 subtree, `/sys/fs/cgroup/plinth/NAME`: made by
//! plinth-init (root), its limits set there, then handed to the container's user the
//! way systemd delegates (the directory and its `cgroup.procs`, `cgroup.threads` and
//! `cgroup.subtree_control` chowned). The limit files stay root's: the user makes
//! cgroups below, never raises its own limits. The runtime starts in the leaf
//! `runtime/` and puts the container in `container/`; both below the delegated
//! directory, so moving a process between them needs only the user's rights.

use std::path::{Path, PathBuf};

use crate::error::{io, sys, Error, Result};
use crate::schema::containers::Resources;

/// The controllers a container's limits need.
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// The period `cpu.max` quotas are over, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// One container's subtree.
#[derive(Debug, Clone)]
pub struct Delegated {
    /// `/sys/fs/cgroup/plinth/NAME`.
    pub dir: PathBuf,
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    std::fs::write(&p, value).map_err(|e| Error::Io {
        what: "writing a limit to",
        path: p.clone(),
        source: std::io::Error::new(e.kind(), format!("{value:?}: {e}")),
    })
}

/// Enables in `dir`'s children each controller `dir` has (not all hosts have all).
fn enable_controllers(dir: &Path) -> Result<()> {
    let p = dir.join("cgroup.controllers");
    let have = std::fs::read_to_string(&p).map_err(io("reading", &p))?;
    for c in CONTROLLERS {
        if have.split_whitespace().any(|h| h == *c) {
            write(dir, "cgroup.subtree_control", &format!("+{c}"))?;
        }
    }
    Ok(())
}

fn mkdir(p: &Path) -> Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("creating cgroup", p)(e)),
    }
}

fn chown(p: &Path, uid: u32, gid: u32) -> Result<()> {
    nix::unistd::chown(
        p,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(sys(format!("chown {}", p.display())))
}

impl Delegated {
    /// Makes (or takes again) `plinth/NAME` under the cgroup2 mount `root`, with
    /// `limits`, delegated to `uid`/`gid`.
    pub fn make(
        root: &Path,
        name: &str,
        limits: &Resources,
        (uid, gid): (u32, u32),
    ) -> Result<Delegated> {
        enable_controllers(root)?;
        let plinth = root.join("plinth");
        mkdir(&plinth)?;
        enable_controllers(&plinth)?;
        let dir = plinth.join(name);
        // What an earlier run left, if its cleanup failed, goes first.
        let old = Delegated { dir: dir.clone() };
        old.remove()?;
        mkdir(&dir)?;
        let cpu = limits
            .milli_cpus
            .map(|m| format!("{} {CPU_PERIOD_US}", m * CPU_PERIOD_US / 1000));
        for (file, value) in [
            ("memory.max", limits.memory_bytes.map(|m| m.to_string())),
            ("cpu.max", cpu),
            ("pids.max", limits.pids.map(|p| p.to_string())),
        ] {
            let there = dir.join(file).exists();
            match value {
                Some(v) if there => write(&dir, file, &v)?,
                Some(_) => {
                    return Err(Error::Io {
                        what: "setting a limit: its controller is not enabled for",
                        path: dir.join(file),
                        source: std::io::ErrorKind::NotFound.into(),
                    })
                }
                // No limit asked: the new cgroup's own "max".
                None => {}
            }
        }
        // Swap would let a container past its memory limit.
        if dir.join("memory.swap.max").exists() {
            write(&dir, "memory.swap.max", "0")?;
        }
        enable_controllers(&dir)?;
        for p in [
            dir.clone(),
            dir.join("cgroup.procs"),
            dir.join("cgroup.threads"),
            dir.join("cgroup.subtree_control"),
        ] {
            chown(&p, uid, gid)?;
        }
        let runtime = dir.join("runtime");
        mkdir(&runtime)?;
        for p in [
            runtime.clone(),
            runtime.join("cgroup.procs"),
            runtime.join("cgroup.threads"),
        ] {
            chown(&p, uid, gid)?;
        }
        Ok(Delegated { dir })
    }

    /// The `cgroup.procs` the runtime is started in.
    pub fn runtime_procs(&self) -> PathBuf {
        self.dir.join("runtime/cgroup.procs")
    }

    /// `cgroupsPath` for the container's config, from the hierarchy's root.
    pub fn container_path(&self, root: &Path) -> String {
        format!(
            "/{}",
            self.dir
                .join("container")
                .strip_prefix(root)
                .unwrap_or(Path::new("container"))
                .display()
        )
    }

    /// How many times the kernel's OOM killer struck in the subtree (`memory.events`).
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Kills every process left in the subtree (`cgroup.kill`, which no process can
    /// escape by forking) and waits, briefly, until it is empty.
    pub fn kill_all(&self) {
        if !self.dir.exists() {
            return;
        }
        let _ = write(&self.dir, "cgroup.kill", "1");
        for _ in 0..100 {
            let events =
                std::fs::read_to_string(self.dir.join("cgroup.events")).unwrap_or_default();
            if !events.lines().any(|l| l == "populated 1") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Removes the subtree after killing what is left in it (a `delete` that failed
    /// must not leave a container running beside the next one).
    pub fn remove(&self) -> Result<()> {
        self.kill_all();
        for sub in ["container", "runtime", ""] {
            let p = self.dir.join(sub);
            match std::fs::remove_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("removing cgroup", p)(e)),
            }
        }
        Ok(())
    }
}
