//! The container's cgroup, from its config: where it goes (for a rootless runtime, a
//! delegated cgroup v2 subtree or none at all), the limits, the device rules runc
//! allows implicitly, and what a `cgroup` mount in the container shows.

use std::path::{Path, PathBuf};

use crate::cgroups::{Cgroup, DeviceRule};
use crate::config::Bundle;
use crate::error::{Error, Result};
use crate::logging;
use crate::rootfs::CgroupMount;

/// Where the container's cgroup goes, without making anything yet: None for a rootless
/// runtime without a delegated cgroup v2 subtree (then no limit may be asked for).
pub(super) fn resolve(bundle: &Bundle, id: &str) -> Result<Option<Cgroup>> {
    let linux = bundle.spec.linux().as_ref();
    let resources = linux.and_then(|l| l.resources().as_ref());
    let path = linux.and_then(|l| l.cgroups_path().as_deref());
    if nix::unistd::geteuid().is_root() {
        return Cgroup::resolve(path, id).map(Some);
    }
    if let Some(cg) = delegated(path, id)? {
        return Ok(Some(cg));
    }
    if let Some(field) = resources.and_then(limit_field) {
        return Err(Error::config(
            field,
            "a rootless container gets limits only from a delegated cgroup v2 \
             subtree, and this user has none here",
        ));
    }
    // No cgroup at all, said once.
    logging::warn("running rootless without cgroups: no delegated cgroup v2 subtree");
    Ok(None)
}

/// Whether a config mounts the cgroup hierarchies in the container (a `cgroup` or
/// `cgroup2` mount): the init then needs them resolved before the fork ([`mounts`]).
pub(super) fn mounted_in_container(bundle: &Bundle) -> bool {
    bundle
        .spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| matches!(m.typ().as_deref(), Some("cgroup") | Some("cgroup2")))
}

/// Makes the cgroup [`resolve`] found, with the config's limits and device rules and
/// the devices runc allows implicitly.
pub(super) fn make(cg: &mut Cgroup, bundle: &Bundle) -> Result<()> {
    cg.create(resources(bundle), &implicit_devices(bundle)?)?;
    warn_about(cg);
    Ok(())
}

/// [`make`] in two halves, for a process born in the cgroup in between: the
/// directories (checking the config's values first) ...
pub(super) fn make_dirs(cg: &mut Cgroup, bundle: &Bundle) -> Result<()> {
    cg.create_dirs(resources(bundle), &implicit_devices(bundle)?)
}

/// ... then the limits and the device rules.
pub(super) fn apply(cg: &mut Cgroup, bundle: &Bundle) -> Result<()> {
    cg.apply_created(resources(bundle))?;
    warn_about(cg);
    Ok(())
}

fn resources(bundle: &Bundle) -> Option<&oci_spec::runtime::LinuxResources> {
    bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
}

fn warn_about(cg: &Cgroup) {
    for w in cg.warnings() {
        logging::warn(w);
    }
}

/// For a rootless run: the container's cgroup when the user's own cgroup v2 subtree is
/// delegated (writable, as systemd's user@.service delegates it), else None.
fn delegated(path: Option<&Path>, id: &str) -> Result<Option<Cgroup>> {
    if !Cgroup::host_is_pure_v2() {
        return Ok(None);
    }
    let cg = Cgroup::resolve(path, id)?;
    let writable = cg
        .path_for("unified")
        .and_then(|d| d.parent().map(Path::to_path_buf))
        .is_some_and(|parent| nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK).is_ok());
    Ok(writable.then_some(cg))
}

/// The first resource limit a config sets (device rules are not limits: a user
/// namespace cannot create devices anyway).
fn limit_field(r: &oci_spec::runtime::LinuxResources) -> Option<&'static str> {
    if r.memory().is_some() {
        Some("linux.resources.memory")
    } else if r.cpu().is_some() {
        Some("linux.resources.cpu")
    } else if r.pids().is_some() {
        Some("linux.resources.pids")
    } else if r.block_io().is_some() {
        Some("linux.resources.blockIO")
    } else if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        Some("linux.resources.hugepageLimits")
    } else if r.network().is_some() {
        Some("linux.resources.network")
    } else if r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        Some("linux.resources.unified")
    } else {
        None
    }
}

/// The device rules allowed after the config's own, as runc allows them: mknod of
/// anything (a node is useless without read/write access), the standard devices the
/// runtime creates, pty slaves, /dev/net/tun, and every device of `linux.devices`.
fn implicit_devices(bundle: &Bundle) -> Result<Vec<DeviceRule>> {
    let rule = |typ: char, major: Option<i64>, minor: Option<i64>, access: &str| DeviceRule {
        allow: true,
        typ,
        major,
        minor,
        access: access.into(),
    };
    let mut out = vec![rule('c', None, None, "m"), rule('b', None, None, "m")];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
        (10, 200),
    ] {
        out.push(rule('c', Some(major), Some(minor), "rwm"));
    }
    out.push(rule('c', Some(136), None, "rwm"));
    let devices = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().as_ref());
    for (i, d) in devices.into_iter().flatten().enumerate() {
        let d = crate::devices::from_config(d, i)?;
        let typ = if d.kind == nix::sys::stat::SFlag::S_IFBLK {
            'b'
        } else if d.kind == nix::sys::stat::SFlag::S_IFCHR {
            'c'
        } else {
            // A fifo has no device cgroup rule.
            continue;
        };
        out.push(rule(typ, Some(d.major as i64), Some(d.minor as i64), "rwm"));
    }
    Ok(out)
}

/// What a `cgroup` mount in the container shows: each hierarchy under /sys/fs/cgroup,
/// with the container's own directory in it. With a cgroup, its resolved hierarchies;
/// without one (rootless), the host's mounts as they are.
pub(super) fn mounts(bundle: &Bundle, cg: Option<&Cgroup>) -> Vec<CgroupMount> {
    if !mounted_in_container(bundle) {
        return vec![];
    }
    let base = Path::new("/sys/fs/cgroup");
    let mount = |mount_point: &Path, v2: bool, data: String, host_dir: PathBuf| {
        let name = mount_point.strip_prefix(base).ok()?;
        Some(CgroupMount {
            name: name.to_string_lossy().into_owned(),
            fstype: if v2 { "cgroup2" } else { "cgroup" }.to_string(),
            data,
            host_dir,
        })
    };
    if let Some(cg) = cg {
        return cg
            .hierarchies()
            .filter_map(|h| mount(h.mount, h.v2, h.subsystems.to_string(), h.dir.to_path_buf()))
            .collect();
    }
    let Ok(mi) = crate::mountinfo::read() else {
        return vec![];
    };
    mi.iter()
        .filter(|e| e.fstype == "cgroup" || e.fstype == "cgroup2")
        .filter_map(|e| {
            let v2 = e.fstype == "cgroup2";
            let data = if v2 {
                String::new()
            } else {
                let opts: Vec<&str> = e
                    .super_options
                    .split(',')
                    .filter(|o| *o != "rw" && *o != "ro")
                    .collect();
                opts.join(",")
            };
            mount(&e.mount_point, v2, data, e.mount_point.clone())
        })
        .collect()
}
