//! Which cgroup hierarchies this host has, and where a container's cgroup goes in
//! each: pure functions over mountinfo and /proc/self/cgroup text, plus the few reads
//! that find them.

use std::path::{Path, PathBuf};

use crate::mountinfo::Entry;

/// How the host mounts cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum Mode {
    /// /sys/fs/cgroup is cgroup2: everything is v2.
    Unified,
    /// v1 controllers plus a cgroup2 mount (usually /sys/fs/cgroup/unified).
    Hybrid,
    /// v1 only.
    Legacy,
}

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    /// "unified", or the v1 subsystem options joined by ','.
    pub key: String,
    /// v1: the subsystems ("cpu", "name=systemd"); v2: empty.
    pub subsystems: Vec<String>,
    pub v2: bool,
    pub mount_point: PathBuf,
    /// The cgroup of the hierarchy that the mount shows at its mount point.
    pub root: PathBuf,
}

/// Pure v2 when /sys/fs/cgroup is cgroup2 (statfs, as runc), else hybrid when any
/// cgroup2 is mounted, else legacy.
pub(super) fn detect_mode(mi: &[Entry]) -> Mode {
    mode_from(is_cgroup2("/sys/fs/cgroup"), mi)
}

/// Whether `path` is a cgroup2 mount (for /sys/fs/cgroup: the host is pure v2, runc's
/// test).
pub(super) fn is_cgroup2(path: &str) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

pub(super) fn mode_from(sys_fs_cgroup_is_v2: bool, mi: &[Entry]) -> Mode {
    if sys_fs_cgroup_is_v2 {
        Mode::Unified
    } else if mi.iter().any(|e| e.fstype == "cgroup2") {
        Mode::Hybrid
    } else {
        Mode::Legacy
    }
}

/// The subsystem names the kernel knows (/proc/cgroups), to tell them from other
/// super options (clone_children, xattr, release_agent=...).
pub(super) fn known_subsystems() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/cgroups").unwrap_or_default();
    parse_proc_cgroups(&text)
}

pub(super) fn parse_proc_cgroups(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The hierarchies to put a container in: in unified mode only the cgroup2 mount at
/// /sys/fs/cgroup; otherwise every v1 hierarchy with a subsystem (named ones
/// included, as runc joins name=systemd) plus the cgroup2 mount if any. A hierarchy
/// mounted twice counts once (the first mount, /sys/fs/cgroup ones preferred).
pub(super) fn mounts(mi: &[Entry], known: &[String], mode: Mode) -> Vec<Mount> {
    let base = Path::new("/sys/fs/cgroup");
    let mut out: Vec<Mount> = Vec::new();
    let mut sorted: Vec<&Entry> = mi
        .iter()
        .filter(|e| e.fstype == "cgroup" || e.fstype == "cgroup2")
        .collect();
    // Stable: keeps mountinfo order among equals.
    sorted.sort_by_key(|e| !e.mount_point.starts_with(base));
    for e in sorted {
        let v2 = e.fstype == "cgroup2";
        if mode == Mode::Unified && !(v2 && e.mount_point == base) {
            continue;
        }
        let subsystems: Vec<String> = if v2 {
            Vec::new()
        } else {
            e.super_options
                .split(',')
                .filter(|o| o.starts_with("name=") || known.iter().any(|k| k == o))
                .map(str::to_string)
                .collect()
        };
        if !v2 && subsystems.is_empty() {
            continue;
        }
        let key = if v2 {
            "unified".to_string()
        } else {
            subsystems.join(",")
        };
        if out.iter().any(|m| m.key == key) {
            continue;
        }
        out.push(Mount {
            key,
            subsystems,
            v2,
            mount_point: e.mount_point.clone(),
            root: e.root.clone(),
        });
    }
    out
}

/// One line of /proc/self/cgroup: the controllers ("" for v2) and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OwnCgroup {
    pub controllers: Vec<String>,
    pub v2: bool,
    pub path: String,
}

pub(super) fn parse_proc_cgroup(text: &str) -> Vec<OwnCgroup> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let id = it.next()?;
            let ctl = it.next()?;
            let path = it.next()?;
            Some(OwnCgroup {
                controllers: ctl
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                v2: id == "0" && ctl.is_empty(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The cgroupsPath, cleaned so that ".." can never climb above a hierarchy's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Inner {
    /// From each hierarchy's root.
    Absolute(Vec<String>),
    /// Below the runtime's own cgroup.
    Relative(Vec<String>),
}

impl Inner {
    /// The config's cgroupsPath, or `<id>` relative when there is none (runc's
    /// cgroupfs default).
    pub(super) fn from_config(p: Option<&Path>, id: &str) -> Result<Inner, String> {
        let (abs, s) = match p.and_then(|p| p.to_str()).filter(|s| !s.is_empty()) {
            Some(s) => (s.starts_with('/'), s.to_string()),
            None if p.is_some_and(|p| !p.as_os_str().is_empty()) => {
                return Err("is not valid UTF-8".into())
            }
            None => (false, id.to_string()),
        };
        let parts = clean(&s);
        if parts.is_empty() {
            // "/" or ".." would put the container in a hierarchy's root or our own
            // cgroup, and destroying it would then mean tearing those down.
            return Err(format!("{s:?} names no cgroup below the root"));
        }
        Ok(if abs {
            Inner::Absolute(parts)
        } else {
            Inner::Relative(parts)
        })
    }
}

impl std::fmt::Display for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::Absolute(p) => write!(f, "/{}", p.join("/")),
            Inner::Relative(p) => write!(f, "{}", p.join("/")),
        }
    }
}

/// Lexical cleaning as Go's filepath.Clean on "/"+p: "." dropped, ".." pops but never
/// above the root.
pub(super) fn clean(p: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

/// The container's host directory in hierarchy `m`.
pub(super) fn target_dir(m: &Mount, own: &[OwnCgroup], inner: &Inner) -> Result<PathBuf, String> {
    let mut dir = m.mount_point.clone();
    let parts = match inner {
        Inner::Absolute(p) => p,
        Inner::Relative(p) => {
            let line = own
                .iter()
                .find(|o| {
                    if m.v2 {
                        o.v2
                    } else {
                        !o.v2 && m.subsystems.iter().all(|s| o.controllers.contains(s))
                    }
                })
                .ok_or_else(|| {
                    format!(
                        "this process has no cgroup in the {} hierarchy (/proc/self/cgroup)",
                        m.key
                    )
                })?;
            let mut own_parts = clean(&line.path);
            // The mount shows the hierarchy from `root` down: our path is below that.
            let root_parts = clean(&m.root.to_string_lossy());
            if own_parts.starts_with(&root_parts) {
                own_parts.drain(..root_parts.len());
            } else {
                return Err(format!(
                    "this process's cgroup {} is outside what {} shows ({})",
                    line.path,
                    m.mount_point.display(),
                    m.root.display()
                ));
            }
            if m.v2 {
                // As runc's fs2: a v2 cgroup with processes in it cannot enable
                // controllers for children, so go next to our cgroup, not below it.
                own_parts.pop();
            }
            for c in own_parts {
                dir.push(c);
            }
            p
        }
    };
    for c in parts {
        dir.push(c);
    }
    Ok(dir)
}

/// The controllers a cgroup2 hierarchy offers at its mount point.
pub(super) fn v2_controllers(mount: &Path) -> Vec<String> {
    std::fs::read_to_string(mount.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The host's huge page sizes in the names cgroup files use ("2MB", "1GB").
pub(super) fn hugepage_sizes() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/kernel/mm/hugepages") else {
        return Vec::new();
    };
    let mut v: Vec<(u64, String)> = rd
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some((kb, hugepage_name(kb)))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// 2048 (kB) -> "2MB", as the kernel names hugetlb.<size>.* files.
pub(super) fn hugepage_name(kb: u64) -> String {
    if kb >= 1 << 20 && kb % (1 << 20) == 0 {
        format!("{}GB", kb >> 20)
    } else if kb >= 1 << 10 && kb % (1 << 10) == 0 {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}KB")
    }
}
