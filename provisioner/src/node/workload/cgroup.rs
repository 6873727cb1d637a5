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
        mkdir(&dir)?;
        write(
            &dir,
            "memory.max",
            &limits
                .memory_bytes
                .map_or("max".to_string(), |m| m.to_string()),
        )?;
        write(
            &dir,
            "cpu.max",
            &match limits.milli_cpus {
                Some(m) => format!("{} {CPU_PERIOD_US}", m * CPU_PERIOD_US / 1000),
                None => format!("max {CPU_PERIOD_US}"),
            },
        )?;
        write(
            &dir,
            "pids.max",
            &limits.pids.map_or("max".to_string(), |p| p.to_string()),
        )?;
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

    /// Removes what is left of the subtree (empty cgroups only; the runtime's `delete`
    /// removes the container's own).
    pub fn remove(&self) {
        for sub in ["container", "runtime", ""] {
            let _ = std::fs::remove_dir(self.dir.join(sub));
        }
    }
}
