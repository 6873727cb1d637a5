//! The container's control groups: where they are in each hierarchy, making them,
//! applying `linux.resources` to them, freezing, listing and removing them.
//!
//! Modelled on runc's `fs` (v1) and `fs2` (v2) drivers. Each controller is driven in
//! exactly one place: a controller mounted as a v1 hierarchy is driven there, one only
//! present in the unified hierarchy is driven there. On a pure v2 host everything is
//! v2; on a hybrid host (v1 controllers plus a cgroup2 mount at
//! /sys/fs/cgroup/unified) the container also joins the unified hierarchy, so what is
//! only there (hugetlb, say) still applies.
//!
//! A low module: it knows nothing of containers and imports only `crate::error` and
//! `crate::mountinfo`.

mod devices_bpf;
mod hierarchy;
mod v1;
mod v2;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources};

use crate::error::{os_text, Error, Result};
use hierarchy::{Inner, Mode, Mount};

/// A device cgroup rule (allow or deny), as the runtime passes the implicitly allowed
/// devices.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceRule {
    /// Allow (true) or deny (false) what the rule matches.
    pub allow: bool,
    /// 'a' (all), 'c' (character) or 'b' (block).
    pub typ: char,
    /// The major number; `None` (or a negative number) matches any.
    pub major: Option<i64>,
    /// The minor number; `None` (or a negative number) matches any.
    pub minor: Option<i64>,
    /// A non-empty subset of "rwm".
    pub access: String,
}

impl DeviceRule {
    /// Converts the config's rule at `linux.resources.devices[i]`. `None` for a type the
    /// device cgroup cannot express (`p`, fifos), which runc skips too; `u`
    /// (unbuffered character) is a character device to the kernel.
    pub fn from_oci(d: &LinuxDeviceCgroup, i: usize) -> Result<Option<DeviceRule>> {
        let typ = match d.typ().unwrap_or(LinuxDeviceType::A) {
            LinuxDeviceType::A => 'a',
            LinuxDeviceType::B => 'b',
            LinuxDeviceType::C | LinuxDeviceType::U => 'c',
            LinuxDeviceType::P => return Ok(None),
        };
        // An absent access means everything, as runc reads the spec's examples.
        let access = match d.access().as_deref() {
            None | Some("") => "rwm".to_string(),
            Some(a) => a.to_string(),
        };
        let rule = DeviceRule {
            allow: d.allow(),
            typ,
            major: d.major(),
            minor: d.minor(),
            access,
        };
        rule.validate()
            .map_err(|m| Error::config(format!("linux.resources.devices[{i}]"), m))?;
        Ok(Some(rule))
    }

    /// Checks the parts the kernel would otherwise reject with a bare EINVAL.
    fn validate(&self) -> std::result::Result<(), String> {
        if !matches!(self.typ, 'a' | 'b' | 'c') {
            return Err(format!("type {:?} is not one of a, b, c", self.typ));
        }
        if self.access.is_empty() || !self.access.chars().all(|c| "rwm".contains(c)) {
            return Err(format!(
                "access {:?} is not a subset of \"rwm\"",
                self.access
            ));
        }
        for (name, v) in [("major", self.major), ("minor", self.minor)] {
            if let Some(n) = v {
                if n > i64::from(i32::MAX) {
                    return Err(format!("{name} {n} is out of range"));
                }
            }
        }
        Ok(())
    }

    /// A wildcard-aware number: `None` for "any".
    fn num(v: Option<i64>) -> Option<u32> {
        v.and_then(|n| u32::try_from(n).ok())
    }

    /// The v1 `devices.allow`/`devices.deny` line: `c 1:3 rwm`, `*` for any.
    fn v1_line(&self) -> String {
        let n = |v: Option<i64>| Self::num(v).map_or("*".to_string(), |n| n.to_string());
        if self.typ == 'a' {
            // The kernel reads "a" alone as every device with every access.
            return format!("a *:* {}", self.access);
        }
        format!(
            "{} {}:{} {}",
            self.typ,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// One hierarchy the container is in.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Dir {
    /// "unified", or the v1 mount's subsystem options ("cpu", "cpu,cpuacct",
    /// "name=systemd").
    key: String,
    /// cgroup2 or not.
    v2: bool,
    /// v1: the subsystems of this hierarchy. v2: the controllers driven here, i.e.
    /// those the unified hierarchy offers that are not mounted as v1.
    controllers: Vec<String>,
    /// Where the hierarchy is mounted.
    mount: PathBuf,
    /// The container's directory.
    path: PathBuf,
    /// The directories create made, shallowest first; only these are removed.
    created: Vec<PathBuf>,
}

impl Dir {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The container's cgroups: one directory per hierarchy, with what `destroy`, `pids`,
/// `freeze` and `update` need later from a fresh process (it is stored in the
/// container's state.json).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Cgroup {
    /// Pure v2, hybrid or legacy v1, as found at resolve time.
    mode: Mode,
    /// One entry per hierarchy.
    dirs: Vec<Dir>,
    /// The implicit device rules create applied, kept so `update` can re-apply them
    /// after the config's own rules.
    #[serde(default)]
    implicit_devices: Vec<DeviceRule>,
    /// Things asked for that were skipped on purpose (runc warns about the same ones).
    #[serde(skip)]
    warnings: Vec<String>,
}

/// One hierarchy of a container's cgroup (see [`Cgroup::hierarchies`]).
#[derive(Debug, Clone, Copy)]
pub struct Hierarchy<'a> {
    /// Where the hierarchy is mounted on the host.
    pub mount: &'a Path,
    /// cgroup2 or not.
    pub v2: bool,
    /// v1: the subsystems, as a cgroup mount's data ("cpu", "name=systemd"); v2: "".
    pub subsystems: &'a str,
    /// The container's directory in it.
    pub dir: &'a Path,
}

/// How long freezing may take before it is reported as failed.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

impl Cgroup {
    /// Where the container's cgroup is in each hierarchy of this host; creates
    /// nothing. `cgroups_path` absolute: from each hierarchy's root; relative: below the
    /// runtime's own cgroup (v1) or next to it (v2, as runc, since a v2 cgroup holding
    /// processes cannot delegate controllers to children); none: `<id>`, relative, as
    /// runc's cgroupfs driver does.
    pub fn resolve(cgroups_path: Option<&Path>, id: &str) -> Result<Cgroup> {
        let mi =
            crate::mountinfo::read().map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
        let mode = hierarchy::detect_mode(&mi);
        // Only v1 mounts need the subsystem names, and a pure v2 host uses none.
        let known = if mode == Mode::Unified {
            Vec::new()
        } else {
            hierarchy::known_subsystems()
        };
        let mounts = hierarchy::mounts(&mi, &known, mode);
        if mounts.is_empty() {
            return Err(Error::cgroup(
                "/sys/fs/cgroup",
                "no cgroup hierarchy is mounted (see /proc/self/mountinfo)",
            ));
        }
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| Error::io("read", "/proc/self/cgroup", e))?;
        Self::resolve_in(mode, &mounts, &own, cgroups_path, id)
    }

    /// Checks `linux.cgroupsPath` as [`Cgroup::resolve`] would, without reading where
    /// the hierarchies are: for a caller that resolves only later.
    pub fn check_path(cgroups_path: Option<&Path>, id: &str) -> Result<()> {
        Inner::from_config(cgroups_path, id)
            .map(|_| ())
            .map_err(|m| Error::config("linux.cgroupsPath", m))
    }

    /// [`Cgroup::resolve`] over given mounts and /proc/self/cgroup text.
    fn resolve_in(
        mode: Mode,
        mounts: &[Mount],
        own: &str,
        cgroups_path: Option<&Path>,
        id: &str,
    ) -> Result<Cgroup> {
        let inner = Inner::from_config(cgroups_path, id)
            .map_err(|m| Error::config("linux.cgroupsPath", m))?;
        let own = hierarchy::parse_proc_cgroup(own);
        let v1_subsystems: Vec<&str> = mounts
            .iter()
            .filter(|m| !m.v2)
            .flat_map(|m| m.subsystems.iter().map(String::as_str))
            .collect();
        let mut dirs = Vec::new();
        for m in mounts {
            let path = hierarchy::target_dir(m, &own, &inner).map_err(|msg| {
                Error::cgroup(&m.mount_point, format!("cgroupsPath {inner}: {msg}"))
            })?;
            let controllers = if m.v2 {
                hierarchy::v2_controllers(&m.mount_point)
                    .into_iter()
                    .filter(|c| !v1_subsystems.contains(&c.as_str()))
                    .collect()
            } else {
                m.subsystems.clone()
            };
            dirs.push(Dir {
                key: m.key.clone(),
                v2: m.v2,
                controllers,
                mount: m.mount_point.clone(),
                path,
                created: Vec::new(),
            });
        }
        Ok(Cgroup {
            mode,
            dirs,
            implicit_devices: Vec::new(),
            warnings: Vec::new(),
        })
    }

    /// Makes the directories in every hierarchy (copying cpuset.cpus/mems down a v1
    /// cpuset chain, enabling the controllers down a v2 chain) and applies `r`, then
    /// the device rules: the config's, then `implicit_devices`. Atomic: on any error
    /// the directories it made are removed again.
    pub fn create(
        &mut self,
        r: Option<&LinuxResources>,
        implicit_devices: &[DeviceRule],
    ) -> Result<()> {
        self.create_dirs(r, implicit_devices)?;
        let res = self.apply_created(r);
        if res.is_err() {
            self.undo_create();
        }
        res
    }

    /// [`Cgroup::create`]'s first half: checks `r` and makes the directories (atomic as
    /// create is), so that a process can be born in them before
    /// [`Cgroup::apply_created`] applies `r` and the device rules.
    pub fn create_dirs(
        &mut self,
        r: Option<&LinuxResources>,
        implicit_devices: &[DeviceRule],
    ) -> Result<()> {
        self.implicit_devices = implicit_devices.to_vec();
        let empty = LinuxResources::default();
        let res = self
            .validate(r.unwrap_or(&empty))
            .and_then(|()| self.make_dirs());
        if res.is_err() {
            self.undo_create();
        }
        res
    }

    /// [`Cgroup::create`]'s second half, after [`Cgroup::create_dirs`]: applies `r`,
    /// then the device rules. On an error the directories stay: the caller removes them
    /// ([`Cgroup::destroy`]).
    pub fn apply_created(&mut self, r: Option<&LinuxResources>) -> Result<()> {
        let empty = LinuxResources::default();
        let warnings = self.apply(r.unwrap_or(&empty), false)?;
        self.warnings.extend(warnings);
        Ok(())
    }

    fn undo_create(&mut self) {
        // The error being returned is the one that matters; a failure to undo is only
        // worth a note next to it.
        if let Err(e) = self.remove_created() {
            self.warnings.push(format!("undoing a failed create: {e}"));
        }
        for d in &mut self.dirs {
            d.created.clear();
        }
    }

    fn make_dirs(&mut self) -> Result<()> {
        for d in &mut self.dirs {
            d.created = if d.v2 {
                v2::make_path(&d.mount, &d.path, &d.controllers)?
            } else {
                v1::make_path(&d.mount, &d.path, d.has("cpuset"))?
            };
        }
        Ok(())
    }

    /// Checks what can be checked before anything is made: the values themselves, and
    /// that the controllers they need exist on this host.
    fn validate(&self, r: &LinuxResources) -> Result<()> {
        validate_values(r)?;
        if let Some(n) = r.network() {
            let wants_cls = n.class_id().is_some();
            let wants_prio = n.priorities().as_ref().is_some_and(|p| !p.is_empty());
            if wants_cls && self.v1("net_cls").is_none() {
                return Err(Error::config(
                    "linux.resources.network.classID",
                    "the net_cls cgroup controller is not mounted on this host (cgroup v2 has none)",
                ));
            }
            if wants_prio && self.v1("net_prio").is_none() {
                return Err(Error::config(
                    "linux.resources.network.priorities",
                    "the net_prio cgroup controller is not mounted on this host (cgroup v2 has none)",
                ));
            }
        }
        if let Some(u) = r.unified() {
            let Some(d) = self.unified() else {
                if u.is_empty() {
                    return Ok(());
                }
                return Err(Error::config(
                    "linux.resources.unified",
                    "no cgroup v2 hierarchy is mounted on this host",
                ));
            };
            for k in u.keys() {
                v2::check_unified_key(k, &d.controllers)
                    .map_err(|m| Error::config(format!("linux.resources.unified.{k}"), m))?;
            }
        }
        if let Some(limits) = r.hugepage_limits() {
            let sizes = hierarchy::hugepage_sizes();
            for (i, h) in limits.iter().enumerate() {
                if !sizes.iter().any(|s| s == h.page_size()) {
                    return Err(Error::config(
                        format!("linux.resources.hugepageLimits[{i}].pageSize"),
                        format!(
                            "{:?} is not a huge page size of this host (it has: {})",
                            h.page_size(),
                            sizes.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes `r` into the hierarchies that drive each controller; returns what it
    /// skipped on purpose.
    fn apply(&self, r: &LinuxResources, updating: bool) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        if let Some(m) = r.memory() {
            #[allow(deprecated)]
            if m.kernel().is_some() {
                // Deprecated since 5.4: 6.x kernels accept the write to
                // memory.kmem.limit_in_bytes and ignore it, v2 has no such knob.
                warnings.push(
                    "linux.resources.memory.kernel is ignored: kernel memory limits are gone from current kernels (runc ignores it too)"
                        .to_string(),
                );
            }
            if m.kernel_tcp().is_some() && self.v1("memory").is_none() {
                warnings.push(
                    "linux.resources.memory.kernelTCP is ignored: cgroup v2 has no TCP buffer limit".to_string(),
                );
            }
            if let Some(d) = self.v1("memory") {
                v1::set_memory(&d.path, m, updating)?;
            } else if let Some(d) = self.v2_with("memory") {
                warnings.extend(v2::set_memory(&d.path, m, updating)?);
            } else if memory_is_set(m) {
                return Err(self.missing("memory", "linux.resources.memory"));
            }
        }
        if let Some(c) = r.cpu() {
            let wants_cpu = c.shares().is_some()
                || c.quota().is_some()
                || c.period().is_some()
                || c.burst().is_some()
                || c.idle().is_some()
                || c.realtime_period().is_some()
                || c.realtime_runtime().is_some();
            if wants_cpu {
                if let Some(d) = self.v1("cpu") {
                    v1::set_cpu(&d.path, c)?;
                } else if let Some(d) = self.v2_with("cpu") {
                    v2::set_cpu(&d.path, c)?;
                } else {
                    return Err(self.missing("cpu", "linux.resources.cpu"));
                }
            }
            if c.cpus().is_some() || c.mems().is_some() {
                // The same files in v1 and v2.
                if let Some(d) = self.v1_or_v2("cpuset") {
                    set_cpuset(&d.path, c)?;
                } else {
                    return Err(self.missing("cpuset", "linux.resources.cpu.cpus"));
                }
            }
        }
        if let Some(p) = r.pids() {
            if let Some(d) = self.v1_or_v2("pids") {
                set_pids(&d.path, p.limit())?;
            } else {
                return Err(self.missing("pids", "linux.resources.pids"));
            }
        }
        if let Some(b) = r.block_io() {
            if let Some(d) = self.v1("blkio") {
                v1::set_blkio(&d.path, b)?;
            } else if let Some(d) = self.v2_with("io") {
                warnings.extend(v2::set_io(&d.path, b)?);
            } else if blkio_is_set(b) {
                return Err(self.missing("blkio/io", "linux.resources.blockIO"));
            }
        }
        if let Some(h) = r.hugepage_limits() {
            if !h.is_empty() {
                if let Some(d) = self.v1("hugetlb") {
                    v1::set_hugetlb(&d.path, h)?;
                } else if let Some(d) = self.v2_with("hugetlb") {
                    v2::set_hugetlb(&d.path, h)?;
                } else {
                    return Err(self.missing("hugetlb", "linux.resources.hugepageLimits"));
                }
            }
        }
        if let Some(n) = r.network() {
            if let Some(id) = n.class_id() {
                if let Some(d) = self.v1("net_cls") {
                    write(&d.path, "net_cls.classid", &id.to_string())?;
                }
            }
            if let (Some(prios), Some(d)) = (n.priorities(), self.v1("net_prio")) {
                for p in prios {
                    write(
                        &d.path,
                        "net_prio.ifpriomap",
                        &format!("{} {}", p.name(), p.priority()),
                    )?;
                }
            }
        }
        if let Some(u) = r.unified() {
            if let Some(d) = self.unified() {
                // Sorted, so the order of writes does not depend on a hash map.
                let mut keys: Vec<&String> = u.keys().collect();
                keys.sort();
                for k in keys {
                    v2::check_unified_key(k, &d.controllers)
                        .map_err(|m| Error::config(format!("linux.resources.unified.{k}"), m))?;
                    write(&d.path, k, &u[k])?;
                }
            }
        }
        // Devices: always on create (default deny); on update only when asked.
        let config_rules = r.devices().as_deref().unwrap_or(&[]);
        if !updating || !config_rules.is_empty() {
            let mut rules = Vec::new();
            for (i, d) in config_rules.iter().enumerate() {
                rules.extend(DeviceRule::from_oci(d, i)?);
            }
            rules.extend(self.implicit_devices.iter().cloned());
            if let Some(d) = self.v1("devices") {
                v1::set_devices(&d.path, &rules)?;
            } else if let Some(d) = self.unified() {
                // Attaching a device program takes CAP_SYS_ADMIN; a rootless runtime in
                // a delegated subtree has none, and needs none: in its user namespace
                // no device node can be made, only the host's bound in (as runc's
                // rootless cgroup manager, which skips device rules too).
                if nix::unistd::geteuid().is_root() {
                    devices_bpf::apply(&d.path, &rules)?;
                }
            } else if !config_rules.is_empty() {
                return Err(self.missing("devices", "linux.resources.devices"));
            }
        }
        Ok(warnings)
    }

    fn missing(&self, controller: &str, field: &str) -> Error {
        Error::config(
            field,
            format!(
                "the {controller} cgroup controller is not available on this host ({})",
                self.describe()
            ),
        )
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .dirs
            .iter()
            .map(|d| format!("{}: {}", d.key, d.controllers.join(",")))
            .collect();
        format!("hierarchies {}", parts.join("; "))
    }

    /// The v1 hierarchy with `subsystem`.
    fn v1(&self, subsystem: &str) -> Option<&Dir> {
        self.dirs.iter().find(|d| !d.v2 && d.has(subsystem))
    }

    /// The unified hierarchy.
    fn unified(&self) -> Option<&Dir> {
        self.dirs.iter().find(|d| d.v2)
    }

    /// The unified hierarchy, if it drives `controller`.
    fn v2_with(&self, controller: &str) -> Option<&Dir> {
        self.unified().filter(|d| d.has(controller))
    }

    /// The hierarchy that drives `controller`: its v1 one, else the unified one if it
    /// drives it there.
    fn v1_or_v2(&self, controller: &str) -> Option<&Dir> {
        self.v1(controller).or_else(|| self.v2_with(controller))
    }

    /// Where processes are listed and frozen: the freezer (v1) or the unified
    /// hierarchy, else any.
    fn primary(&self) -> Option<&Dir> {
        if self.mode == Mode::Unified {
            return self.unified();
        }
        self.v1("freezer")
            .or_else(|| self.v1("pids"))
            .or_else(|| self.dirs.iter().find(|d| !d.v2))
            .or_else(|| self.unified())
    }

    /// Whether this host is pure cgroup v2 (/sys/fs/cgroup is cgroup2), asked without
    /// resolving a cgroup.
    pub fn host_is_pure_v2() -> bool {
        hierarchy::is_cgroup2("/sys/fs/cgroup")
    }

    /// Whether this host mounts cgroup2 beside its v1 hierarchies where systemd does
    /// (/sys/fs/cgroup/unified), asked without resolving a cgroup. A cgroup2 mounted
    /// elsewhere is found only when the cgroup is resolved.
    pub fn host_is_hybrid() -> bool {
        hierarchy::is_cgroup2("/sys/fs/cgroup/unified")
    }

    /// Whether the host is pure cgroup v2: then a process can be born in the whole
    /// cgroup ([`Cgroup::open_unified`]) once it exists.
    pub fn is_pure_v2(&self) -> bool {
        self.mode == Mode::Unified
    }

    /// An fd of the container's directory in the unified hierarchy, where a process can
    /// be born (`clone3(CLONE_INTO_CGROUP)`) instead of being moved in: on a pure v2 host
    /// that is the whole cgroup; on a hybrid one the v1 hierarchies are still to be
    /// joined ([`Cgroup::admit`]). None on a v1-only host.
    pub fn open_unified(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        let Some(dir) = self.unified() else {
            return Ok(None);
        };
        nix::fcntl::open(
            &dir.path,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(Some)
        .map_err(|e| Error::cgroup(&dir.path, format!("open for clone3: {e}")))
    }

    /// Moves `pid` into the container's cgroup in every hierarchy.
    pub fn add_pid(&self, pid: i32) -> Result<()> {
        let pid = pid.to_string();
        for d in &self.dirs {
            write(&d.path, "cgroup.procs", &pid)?;
        }
        Ok(())
    }

    /// Puts `pid`, a single-threaded process of the runtime's that waits for the files
    /// returned, into the container's cgroup: the unified hierarchy's directory takes
    /// its pid here, unless it was born there (`born_in_unified`); for each v1
    /// hierarchy the `tasks` file is opened and returned, and the process moves itself
    /// by writing 0 to each ([`join_self`]). A pid written to cgroup.procs takes the
    /// kernel's global threadgroup lock, whose first taking in a while waits for an RCU
    /// grace period (about 11 ms on this 2-core VM); a thread moving itself through
    /// `tasks` does not take it, and a process born in its cgroup is not moved at all
    /// (docs/performance.md).
    ///
    /// `sub` is runc's `exec --cgroup` value: `PATH` (every hierarchy) or
    /// `CONTROLLER:PATH` (the v1 hierarchy of that controller, or the unified one for
    /// `unified`), an existing sub-cgroup of the container's; where a hierarchy is not
    /// named, the process goes to the container's own cgroup.
    pub fn admit(
        &self,
        pid: i32,
        sub: Option<&str>,
        born_in_unified: bool,
    ) -> Result<Vec<OwnedFd>> {
        let pid = pid.to_string();
        let mut tasks = Vec::new();
        for (d, dir) in self.targets(sub)? {
            if d.v2 {
                if !born_in_unified {
                    write(&dir, "cgroup.procs", &pid)?;
                }
                continue;
            }
            let p = dir.join("tasks");
            let fd = nix::fcntl::open(
                &p,
                nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| Error::cgroup(&p, format!("open for the process to join: {e}")))?;
            tasks.push(fd);
        }
        Ok(tasks)
    }

    /// Each hierarchy with the directory a process goes to (see [`Cgroup::admit`]).
    fn targets(&self, sub: Option<&str>) -> Result<Vec<(&Dir, PathBuf)>> {
        let Some(spec) = sub else {
            return Ok(self.dirs.iter().map(|d| (d, d.path.clone())).collect());
        };
        let (controller, sub) = match spec.split_once(':') {
            Some((c, p)) => (Some(c), p),
            None => (None, spec),
        };
        let sub = Path::new(sub.trim_start_matches('/'));
        if sub.as_os_str().is_empty()
            || sub
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(Error::Invalid(format!(
                "--cgroup {spec:?}: a path below the container's cgroup, without . or .."
            )));
        }
        let named = |d: &Dir| match controller {
            None => true,
            Some("unified") => d.v2,
            Some(c) => !d.v2 && d.has(c),
        };
        if !self.dirs.iter().any(named) {
            return Err(Error::Invalid(format!(
                "--cgroup {spec:?}: no such controller in the container's cgroups"
            )));
        }
        let mut out = Vec::with_capacity(self.dirs.len());
        for d in &self.dirs {
            let dir = if named(d) {
                d.path.join(sub)
            } else {
                d.path.clone()
            };
            if !dir.is_dir() {
                return Err(Error::Invalid(format!(
                    "--cgroup {spec:?}: {} does not exist",
                    dir.display()
                )));
            }
            out.push((d, dir));
        }
        Ok(out)
    }

    /// Every process in the container's cgroup, its sub-cgroups included, sorted.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let Some(d) = self.primary() else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        collect_pids(&d.path, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Removes exactly the directories create made, deepest first, with whatever
    /// sub-cgroups the container made inside its own; a parent still holding another
    /// container's cgroup is left alone. Retries EBUSY briefly (the kernel frees a
    /// cgroup a moment after its last process exits). Missing directories are fine,
    /// so destroy can be repeated.
    pub fn destroy(&self) -> Result<()> {
        self.remove_created()
    }

    fn remove_created(&self) -> Result<()> {
        let mut first_err = None;
        for d in &self.dirs {
            // The container's own directory (deepest created) goes with its children.
            for (i, p) in d.created.iter().enumerate().rev() {
                let own = i + 1 == d.created.len() && *p == d.path;
                let r = if own {
                    remove_tree(p)
                } else {
                    remove_parent(p)
                };
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                    break;
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Freezes every process of the container and waits until the kernel says so.
    pub fn freeze(&self) -> Result<()> {
        self.set_frozen(true)
    }

    /// Thaws a frozen container.
    pub fn thaw(&self) -> Result<()> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<()> {
        if let Some(d) = self.v1("freezer") {
            v1::freeze(&d.path, frozen, FREEZE_TIMEOUT)
        } else if let Some(d) = self.unified() {
            v2::freeze(&d.path, frozen, FREEZE_TIMEOUT)
        } else {
            Err(Error::cgroup(
                self.dirs
                    .first()
                    .map_or(Path::new("/sys/fs/cgroup"), |d| &d.path),
                "no freezer: neither a v1 freezer hierarchy nor cgroup v2 is mounted",
            ))
        }
    }

    /// Whether the container is frozen (FREEZING is not frozen yet).
    pub fn is_frozen(&self) -> Result<bool> {
        if let Some(d) = self.v1("freezer") {
            Ok(read(&d.path, "freezer.state")? == "FROZEN")
        } else if let Some(d) = self.unified() {
            v2::is_frozen(&d.path)
        } else {
            Ok(false)
        }
    }

    /// `runc update`: applies `r` to the existing cgroup. Device rules in `r`, if any,
    /// replace the config's (the implicit ones stay after them).
    pub fn update(&self, r: &LinuxResources) -> Result<()> {
        self.validate(r)?;
        // What it skips is not reported here (update has no caller that logs it).
        self.apply(r, true).map(drop)
    }

    /// `runc events --stats` "data": cpu, memory, pids, blkio, hugetlb, each from the
    /// hierarchy that drives it.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let mut out = serde_json::Map::new();
        let cpuacct = self.v1("cpuacct").map(|d| d.path.as_path());
        let cpu_v1 = self.v1("cpu").map(|d| d.path.as_path());
        if cpuacct.is_some() || cpu_v1.is_some() {
            out.insert("cpu".into(), v1::cpu_stats(cpuacct, cpu_v1)?);
        } else if let Some(d) = self.unified() {
            out.insert("cpu".into(), v2::cpu_stats(&d.path)?);
        }
        if let Some(d) = self.v1("memory") {
            out.insert("memory".into(), v1::memory_stats(&d.path)?);
        } else if let Some(d) = self.v2_with("memory") {
            out.insert("memory".into(), v2::memory_stats(&d.path)?);
        }
        if let Some(d) = self.v1_or_v2("pids") {
            out.insert("pids".into(), pids_stats(&d.path)?);
        }
        if let Some(d) = self.v1("blkio") {
            out.insert("blkio".into(), v1::blkio_stats(&d.path)?);
        } else if let Some(d) = self.v2_with("io") {
            out.insert("blkio".into(), v2::io_stats(&d.path)?);
        }
        let sizes = hierarchy::hugepage_sizes();
        if let Some(d) = self.v1("hugetlb") {
            out.insert("hugetlb".into(), v1::hugetlb_stats(&d.path, &sizes)?);
        } else if let Some(d) = self.v2_with("hugetlb") {
            out.insert("hugetlb".into(), v2::hugetlb_stats(&d.path, &sizes)?);
        }
        Ok(serde_json::Value::Object(out))
    }

    /// The container's directory on the host in one hierarchy. `key` is a v1 mount's
    /// subsystem option string as in mountinfo's super options minus rw/ro ("cpu",
    /// "cpu,cpuacct", "name=systemd"; any one subsystem of a co-mounted hierarchy
    /// also matches), or "unified" for cgroup2.
    pub fn path_for(&self, key: &str) -> Option<PathBuf> {
        self.dirs
            .iter()
            .find(|d| d.key == key || (!d.v2 && d.has(key)))
            .map(|d| d.path.clone())
    }

    /// How many times the OOM killer struck in the container's memory cgroup
    /// (v1 memory.oom_control, v2 memory.events: `oom_kill N`), 0 where unknown.
    pub fn oom_kills(&self) -> u64 {
        let Some(d) = self.v1_or_v2("memory") else {
            return 0;
        };
        let file = if d.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(d.path.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The hierarchies the container's cgroup lives in, as found at resolve time: what
    /// a `cgroup` mount in the container shows, without reading mountinfo again.
    pub fn hierarchies(&self) -> impl Iterator<Item = Hierarchy<'_>> {
        self.dirs.iter().map(|d| Hierarchy {
            mount: &d.mount,
            v2: d.v2,
            subsystems: if d.v2 { "" } else { &d.key },
            dir: &d.path,
        })
    }

    /// What was asked for but skipped on purpose (kernel memory limits, knobs cgroup v2
    /// lacks), for the caller to log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// Value checks that need no host: each names its JSON field.
fn validate_values(r: &LinuxResources) -> Result<()> {
    if let Some(m) = r.memory() {
        let f = "linux.resources.memory";
        for (name, v) in [
            ("limit", m.limit()),
            ("reservation", m.reservation()),
            ("swap", m.swap()),
        ] {
            if let Some(v) = v {
                if v < -1 {
                    return Err(Error::config(
                        format!("{f}.{name}"),
                        format!("{v} is negative (only -1, unlimited, is allowed)"),
                    ));
                }
            }
        }
        if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
            if l > 0 && s > 0 && s < l {
                return Err(Error::config(
                    format!("{f}.swap"),
                    format!("memory+swap limit {s} is below the memory limit {l}"),
                ));
            }
        }
        if let Some(s) = m.swappiness() {
            if s > 100 {
                return Err(Error::config(
                    format!("{f}.swappiness"),
                    format!("{s} is out of range (0 to 100)"),
                ));
            }
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(i) = c.idle() {
            if i != 0 && i != 1 {
                return Err(Error::config(
                    "linux.resources.cpu.idle",
                    format!("{i} is not 0 or 1"),
                ));
            }
        }
    }
    if let Some(b) = r.block_io() {
        let f = "linux.resources.blockIO";
        for (name, v) in [("weight", b.weight()), ("leafWeight", b.leaf_weight())] {
            if let Some(w) = v {
                if w != 0 && !(10..=1000).contains(&w) {
                    return Err(Error::config(
                        format!("{f}.{name}"),
                        format!("{w} is out of range (10 to 1000)"),
                    ));
                }
            }
        }
    }
    if let Some(devs) = r.devices() {
        for (i, d) in devs.iter().enumerate() {
            DeviceRule::from_oci(d, i)?;
        }
    }
    Ok(())
}

fn memory_is_set(m: &oci_spec::runtime::LinuxMemory) -> bool {
    m.limit().is_some()
        || m.reservation().is_some()
        || m.swap().is_some()
        || m.swappiness().is_some()
        || m.disable_oom_killer() == Some(true)
}

fn blkio_is_set(b: &oci_spec::runtime::LinuxBlockIo) -> bool {
    b.weight().is_some()
        || b.leaf_weight().is_some()
        || [
            b.weight_device().as_ref().map(Vec::len),
            b.throttle_read_bps_device().as_ref().map(Vec::len),
            b.throttle_write_bps_device().as_ref().map(Vec::len),
            b.throttle_read_iops_device().as_ref().map(Vec::len),
            b.throttle_write_iops_device().as_ref().map(Vec::len),
        ]
        .iter()
        .any(|n| n.unwrap_or(0) > 0)
}

/// Writes `value` to the existing control file `dir/file` (never creating it: a
/// missing file means a missing controller, and should say so).
fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let p = dir.join(file);
    // O_TRUNC as runc: cgroupfs ignores it, and it keeps plain files (tests) exact.
    let res = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    res.map_err(|e| Error::cgroup(&p, format!("write {value:?} to {file}: {}", os_text(&e))))
}

/// Moves the calling thread into the cgroup of each `tasks` file [`Cgroup::admit`]
/// opened, by writing 0 (the caller itself). The caller must be single-threaded: only
/// the thread moves.
pub fn join_self(tasks: &[OwnedFd]) -> Result<()> {
    for (i, fd) in tasks.iter().enumerate() {
        nix::unistd::write(fd, b"0").map_err(|e| {
            // After the pivot /proc may not say: then the hierarchy's place in the list.
            let name = fd_path(fd).unwrap_or_else(|| format!("the tasks file of v1 hierarchy {i}"));
            Error::sys(format!("join the container's cgroup ({name})"), e)
        })?;
    }
    Ok(())
}

/// The path an fd was opened at, for errors.
fn fd_path(fd: &OwnedFd) -> Option<String> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|p| p.display().to_string())
}

/// Reads `dir/file`, trimmed.
fn read(dir: &Path, file: &str) -> Result<String> {
    let p = dir.join(file);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|e| Error::cgroup(&p, format!("read {file}: {}", os_text(&e))))
}

/// Reads a number, "max" being `u64::MAX`.
fn read_u64(dir: &Path, file: &str) -> Result<u64> {
    let s = read(dir, file)?;
    if s == "max" {
        return Ok(u64::MAX);
    }
    s.parse().map_err(|_| {
        Error::cgroup(
            dir.join(file),
            format!("read {file}: {s:?} is not a number"),
        )
    })
}

/// `key value` lines (memory.stat, cpu.stat) as a map; unparsable lines are skipped.
fn read_flat_keyed(dir: &Path, file: &str) -> Result<Vec<(String, u64)>> {
    Ok(read(dir, file)?
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

fn lookup(kv: &[(String, u64)], key: &str) -> u64 {
    kv.iter().find(|(k, _)| k == key).map_or(0, |(_, v)| *v)
}

/// cpuset.cpus and cpuset.mems (the same files in v1 and v2).
fn set_cpuset(dir: &Path, c: &oci_spec::runtime::LinuxCpu) -> Result<()> {
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        write(dir, "cpuset.cpus", cpus)?;
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        write(dir, "cpuset.mems", mems)?;
    }
    Ok(())
}

/// The pids.max value (v1 and v2): 0 and negative mean no limit, as runc.
fn pids_max(limit: i64) -> String {
    if limit > 0 {
        limit.to_string()
    } else {
        "max".to_string()
    }
}

fn set_pids(dir: &Path, limit: i64) -> Result<()> {
    write(dir, "pids.max", &pids_max(limit))
}

fn pids_stats(dir: &Path) -> Result<serde_json::Value> {
    let current = read_u64(dir, "pids.current")?;
    // runc reports an unlimited pids.max as 0.
    let limit = match read_u64(dir, "pids.max")? {
        u64::MAX => 0,
        n => n,
    };
    Ok(serde_json::json!({ "current": current, "limit": limit }))
}

/// Makes `path` and its missing parents below `mount`; returns those it made,
/// shallowest first. `on_dir(dir, new)` runs top-down on `mount` and on every
/// directory of the chain once it exists (`new`: made here), before its child is
/// made. On error, removes what it made.
fn make_dirs(
    mount: &Path,
    path: &Path,
    mut on_dir: impl FnMut(&Path, bool) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let rel = path.strip_prefix(mount).map_err(|_| {
        Error::cgroup(
            path,
            format!("is not below its hierarchy's mount {}", mount.display()),
        )
    })?;
    let mut created = Vec::new();
    let mut cur = mount.to_path_buf();
    on_dir(&cur, false)?;
    for c in rel.components() {
        cur.push(c);
        let new = match std::fs::create_dir(&cur) {
            Ok(()) => {
                created.push(cur.clone());
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => {
                undo_dirs(&created);
                return Err(Error::cgroup(&cur, format!("mkdir: {}", os_text(&e))));
            }
        };
        if let Err(e) = on_dir(&cur, new) {
            undo_dirs(&created);
            return Err(e);
        }
    }
    Ok(created)
}

fn undo_dirs(created: &[PathBuf]) {
    for p in created.iter().rev() {
        // Best effort: these were empty a moment ago, and the caller reports the
        // error that made us undo.
        let _ = std::fs::remove_dir(p);
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) -> Result<()> {
    let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(s) => s,
        // A sub-cgroup removed while we walk is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::cgroup(
                dir.join("cgroup.procs"),
                format!("read: {}", os_text(&e)),
            ))
        }
    };
    out.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    for sub in subdirs(dir)? {
        collect_pids(&sub, out)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::cgroup(dir, format!("list: {}", os_text(&e)))),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::cgroup(dir, format!("list: {}", os_text(&e))))?;
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(e.path());
        }
    }
    Ok(out)
}

/// rmdir with the brief EBUSY retries runc does (10ms doubling, about a second).
fn rmdir_retry(p: &Path) -> std::io::Result<()> {
    let mut delay = Duration::from_millis(10);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match std::fs::remove_dir(p) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Removes the container's directory and every sub-cgroup below it, deepest first.
/// Mostly there is none: the directory (a few dozen control files) is listed only when
/// a plain rmdir fails.
fn remove_tree(p: &Path) -> Result<()> {
    match std::fs::remove_dir(p) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    for sub in subdirs(p)? {
        remove_tree(&sub)?;
    }
    rmdir_retry(p).map_err(|e| Error::cgroup(p, format!("rmdir: {}", os_text(&e))))
}

/// Removes a parent create made, unless another cgroup now lives in it.
fn remove_parent(p: &Path) -> Result<()> {
    if !subdirs(p)?.is_empty() {
        return Ok(());
    }
    rmdir_retry(p).map_err(|e| Error::cgroup(p, format!("rmdir: {}", os_text(&e))))
}

/// Polls `done` until it holds or `timeout` passes, sleeping a little longer each time.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests;
