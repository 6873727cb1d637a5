//! Loading and validating a bundle's config.json. Every rejection names the field.

use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{os_text, Error, Result};
use crate::jsonpath;
use crate::namespaces::Plan;

/// A loaded, validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute path of the bundle directory.
    pub dir: PathBuf,
    /// Absolute path of the rootfs.
    pub rootfs: PathBuf,
    /// The parsed config.
    pub spec: Spec,
    /// The namespace plan.
    pub namespaces: Plan,
    /// `linux.seccomp` as the config file has it, byte for byte: the seccomp cache's
    /// key (serialising the parsed profile again cost about 0.2 ms here). None when the
    /// config came from elsewhere, or its bytes could not be found.
    pub seccomp_json: Option<Vec<u8>>,
}

impl Bundle {
    /// `linux.seccomp`, when the config has one.
    pub fn seccomp(&self) -> Option<&oci_spec::runtime::LinuxSeccomp> {
        self.spec
            .linux()
            .as_ref()
            .and_then(|l| l.seccomp().as_ref())
    }
}

/// Parses config.json text; a type error names the JSON path of the bad value.
pub fn parse(text: &[u8]) -> Result<Spec> {
    // runtime-spec's scheduler flag names differ from the crate's for two flags: a
    // config with a scheduler goes through a JSON value first, its names mapped.
    const KEY: &[u8] = b"\"scheduler\"";
    if text.windows(KEY.len()).any(|w| w == KEY) {
        return parse_with_scheduler(text);
    }
    parse_text(text)
}

fn parse_text(text: &[u8]) -> Result<Spec> {
    serde_json::from_slice(text).map_err(|e| {
        // The path is worked out from the error's position only on failure: a path
        // tracking deserializer would instantiate every oci-spec type's parser twice.
        let path = jsonpath::error_path(text, &e);
        let field = if path == "." {
            "(top level)".to_string()
        } else {
            path
        };
        Error::config(field, e.to_string())
    })
}

/// [`parse`] for a config with `process.scheduler`: its flags' runtime-spec names are
/// mapped to the crate's (an unknown name, the crate's own spellings included, is an
/// error naming the field).
fn parse_with_scheduler(text: &[u8]) -> Result<Spec> {
    let mut v: serde_json::Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(_) => return parse_text(text),
    };
    if let Some(flags) = v
        .pointer_mut("/process/scheduler/flags")
        .and_then(|f| f.as_array_mut())
    {
        for (i, f) in flags.iter_mut().enumerate() {
            let Some(name) = f.as_str() else { continue };
            let Some((_, ours)) = crate::sched::FLAG_NAMES
                .iter()
                .find(|(spec, _)| *spec == name)
            else {
                return Err(Error::config(
                    format!("process.scheduler.flags[{i}]"),
                    format!(
                        "unknown flag {name:?}; runtime-spec's are {}",
                        crate::sched::FLAG_NAMES.map(|(s, _)| s).join(", ")
                    ),
                ));
            };
            *f = serde_json::Value::String(ours.to_string());
        }
    }
    // Back to text, so that a later error's path comes from its position as usual.
    let text = serde_json::to_vec(&v).map_err(|e| Error::config("(top level)", e.to_string()))?;
    parse_text(&text)
}

/// Loads `<bundle>/config.json` and validates it.
pub fn load(bundle: &Path) -> Result<Bundle> {
    let dir = std::fs::canonicalize(bundle).map_err(|e| Error::io("bundle", bundle, e))?;
    let path = dir.join("config.json");
    let text = std::fs::read(&path).map_err(|e| Error::io("read", &path, e))?;
    let spec = parse(&text)?;
    let mut bundle = validate(&dir, spec)?;
    if bundle.seccomp().is_some() {
        bundle.seccomp_json =
            crate::jsonpath::span(&text, &["linux", "seccomp"]).map(|r| text[r].to_vec());
    }
    Ok(bundle)
}

fn supported_version(v: &str) -> bool {
    let mut it = v.split('.');
    matches!((it.next(), it.next()), (Some("1"), Some(m)) if m.parse::<u32>().is_ok())
}

/// Checks what the config asks for before anything is created.
pub fn validate(dir: &Path, spec: Spec) -> Result<Bundle> {
    if !supported_version(spec.version()) {
        return Err(Error::config(
            "ociVersion",
            format!("{:?} is not a supported version (1.x)", spec.version()),
        ));
    }
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| Error::config("root", "missing"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        dir.join(root.path())
    };
    match std::fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::config(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ))
        }
        Err(e) => {
            return Err(Error::config(
                "root.path",
                format!("{}: {}", rootfs.display(), os_text(&e)),
            ))
        }
    }
    let rootfs = std::fs::canonicalize(&rootfs).map_err(|e| Error::io("rootfs", &rootfs, e))?;

    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::config("process", "missing"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(Error::config(
            "process.args",
            "must name the program to run",
        ));
    }
    if !process.cwd().is_absolute() {
        return Err(Error::config(
            "process.cwd",
            format!("{} is not an absolute path", process.cwd().display()),
        ));
    }
    for (i, kv) in process.env().iter().flatten().enumerate() {
        if !kv.contains('=') {
            return Err(Error::config(
                format!("process.env[{i}]"),
                format!("{kv:?} is not KEY=value"),
            ));
        }
    }
    let mut seen = Vec::new();
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        if seen.contains(&r.typ()) {
            return Err(Error::config(
                format!("process.rlimits[{i}].type"),
                format!("{} is set twice", r.typ()),
            ));
        }
        if r.soft() > r.hard() {
            return Err(Error::config(
                format!("process.rlimits[{i}]"),
                format!(
                    "soft limit {} is above the hard limit {}",
                    r.soft(),
                    r.hard()
                ),
            ));
        }
        seen.push(r.typ());
    }

    if let Some(hooks) = spec.hooks() {
        check_hooks(hooks)?;
    }
    check_process_extras(process)?;

    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::config("linux", "missing"))?;
    check_linux_extras(linux)?;
    let plan = Plan::from_config(linux.namespaces().as_deref().unwrap_or(&[]))?;
    let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    // A joined user namespace's own maps, read once (a fork for a bind-mounted one),
    // and only when the config gives mappings to compare with them.
    let mount_maps = spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| m.uid_mappings().is_some() || m.gid_mappings().is_some());
    let joined = match plan.joined(CloneFlags::CLONE_NEWUSER) {
        Some(path) if has_maps || mount_maps => {
            Some((path.as_path(), crate::idmap::of_namespace(path)?))
        }
        _ => None,
    };
    check_idmapped_mounts(&spec, linux, &plan, joined.as_ref())?;
    if plan.creates(CloneFlags::CLONE_NEWUSER) {
        if linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
            return Err(Error::config(
                "linux.uidMappings",
                "a new user namespace needs uid mappings",
            ));
        }
        if linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty()) {
            return Err(Error::config(
                "linux.gidMappings",
                "a new user namespace needs gid mappings",
            ));
        }
    } else if let (Some((path, (uid, gid))), true) = (&joined, has_maps) {
        // As runc: mappings beside a joined namespace are accepted when they are that
        // namespace's own (containerd sends both for a pod with `hostUsers: false`).
        for (field, maps, theirs) in [
            ("linux.uidMappings", linux.uid_mappings(), uid),
            ("linux.gidMappings", linux.gid_mappings(), gid),
        ] {
            if &crate::idmap::extents(maps.as_deref().unwrap_or(&[])) != theirs {
                return Err(Error::config(
                    field,
                    format!(
                        "not the mappings of the user namespace joined from {}; give those, or none",
                        path.display()
                    ),
                ));
            }
        }
    } else if has_maps {
        return Err(Error::config(
            "linux.uidMappings",
            "id mappings need a user namespace in linux.namespaces",
        ));
    }
    for (field, maps) in [
        ("linux.uidMappings", linux.uid_mappings()),
        ("linux.gidMappings", linux.gid_mappings()),
    ] {
        for (i, m) in maps.iter().flatten().enumerate() {
            if m.size() == 0 {
                return Err(Error::config(format!("{field}[{i}].size"), "must not be 0"));
            }
        }
    }
    if spec.hostname().as_ref().is_some_and(|h| !h.is_empty())
        && !plan.has(CloneFlags::CLONE_NEWUTS)
    {
        return Err(Error::config(
            "hostname",
            "setting the hostname needs a UTS namespace",
        ));
    }
    if spec.domainname().as_ref().is_some_and(|h| !h.is_empty())
        && !plan.has(CloneFlags::CLONE_NEWUTS)
    {
        return Err(Error::config(
            "domainname",
            "setting the domain name needs a UTS namespace",
        ));
    }
    if let Some(sysctl) = linux.sysctl() {
        for key in sysctl.keys() {
            check_sysctl(key, &plan)?;
        }
    }
    if let Some(offsets) = linux.time_offsets() {
        if !offsets.is_empty() && !plan.creates(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)) {
            return Err(Error::config(
                "linux.timeOffsets",
                "time offsets need a new time namespace",
            ));
        }
        for k in offsets.keys() {
            if k != "monotonic" && k != "boottime" {
                return Err(Error::config(
                    format!("linux.timeOffsets.{k}"),
                    "only monotonic and boottime clocks can be offset",
                ));
            }
        }
    }
    if let Some(p) = linux.rootfs_propagation() {
        if !p.is_empty() && crate::mount::propagation_flag(p).is_none() {
            return Err(Error::config(
                "linux.rootfsPropagation",
                format!("{p:?} is not a propagation mode"),
            ));
        }
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !m.destination().is_absolute() {
            return Err(Error::config(
                format!("mounts[{i}].destination"),
                format!("{} is not an absolute path", m.destination().display()),
            ));
        }
        crate::mount::Options::parse(
            m.options().as_deref().unwrap_or(&[]),
            &format!("mounts[{i}]"),
        )?;
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        crate::devices::from_config(d, i)?;
    }
    for (field, list) in [
        ("linux.maskedPaths", linux.masked_paths()),
        ("linux.readonlyPaths", linux.readonly_paths()),
    ] {
        for (i, p) in list.iter().flatten().enumerate() {
            if !p.starts_with('/') {
                return Err(Error::config(
                    format!("{field}[{i}]"),
                    format!("{p:?} is not an absolute path"),
                ));
            }
        }
    }
    if let Some(p) = linux.cgroups_path() {
        let s = p.to_string_lossy();
        if s.contains(':') && !p.is_absolute() {
            return Err(Error::config(
                "linux.cgroupsPath",
                format!("{s:?} is a systemd slice:prefix:name path; the systemd cgroup driver is not supported"),
            ));
        }
    }
    let _ = LinuxNamespaceType::Mount;
    Ok(Bundle {
        dir: dir.to_path_buf(),
        rootfs,
        spec,
        namespaces: plan,
        seccomp_json: None,
    })
}

/// runtime-spec: a hook's path "MUST be absolute" (a bare name would be looked up in a
/// PATH the config does not give, by rules that differ between libcs), and a timeout
/// "MUST be greater than zero". Checked here so that no hook has started when either
/// is refused.
fn check_hooks(hooks: &oci_spec::runtime::Hooks) -> Result<()> {
    let lists = [
        ("prestart", hooks.prestart()),
        ("createRuntime", hooks.create_runtime()),
        ("createContainer", hooks.create_container()),
        ("startContainer", hooks.start_container()),
        ("poststart", hooks.poststart()),
        ("poststop", hooks.poststop()),
    ];
    for (kind, list) in lists {
        for (i, h) in list.iter().flatten().enumerate() {
            if !h.path().is_absolute() {
                return Err(Error::config(
                    format!("hooks.{kind}[{i}].path"),
                    format!("{} is not an absolute path", h.path().display()),
                ));
            }
            if let Some(t) = h.timeout().filter(|t| *t <= 0) {
                return Err(Error::config(
                    format!("hooks.{kind}[{i}].timeout"),
                    format!("{t} is not a positive number of seconds"),
                ));
            }
        }
    }
    Ok(())
}

/// Only namespaced sysctls may be set, and only when the container has the namespace
/// they belong to (as runc checks).
fn check_sysctl(key: &str, plan: &Plan) -> Result<()> {
    let field = format!("linux.sysctl.{key}");
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        if plan.has(CloneFlags::CLONE_NEWIPC) {
            return Ok(());
        }
        return Err(Error::config(field, "needs an IPC namespace"));
    }
    if key.starts_with("net.") {
        if plan.has(CloneFlags::CLONE_NEWNET) {
            return Ok(());
        }
        return Err(Error::config(field, "needs a network namespace"));
    }
    if key == "kernel.hostname" || key == "kernel.domainname" {
        if plan.has(CloneFlags::CLONE_NEWUTS) {
            return Ok(());
        }
        return Err(Error::config(field, "needs a UTS namespace"));
    }
    if key.contains("..") || key.contains('/') || key.is_empty() {
        return Err(Error::config(field, "not a sysctl name"));
    }
    Err(Error::config(
        field,
        "not a namespaced sysctl: it would change the host",
    ))
}

/// The process settings plinth applies with checks of their own, and the LSM ones it
/// refuses: neither AppArmor nor SELinux is supported (`features` says so), and a
/// label silently dropped would leave the container less confined than asked.
fn check_process_extras(p: &oci_spec::runtime::Process) -> Result<()> {
    if let Some(s) = p.scheduler() {
        crate::sched::check_scheduler(s)?;
    }
    if let Some(io) = p.io_priority() {
        crate::sched::check_io_priority(io)?;
    }
    if let Some(a) = p.exec_cpu_affinity() {
        for (field, list) in [
            ("process.execCPUAffinity.initial", a.initial()),
            ("process.execCPUAffinity.final", a.cpu_affinity_final()),
        ] {
            if let Some(l) = list {
                crate::sched::parse_cpu_list(l, field)?;
            }
        }
    }
    for (field, given) in [
        ("process.apparmorProfile", p.apparmor_profile()),
        ("process.selinuxLabel", p.selinux_label()),
    ] {
        if given.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(Error::config(
                field,
                "not supported by plinth (no AppArmor or SELinux support; see `plinth features`)",
            ));
        }
    }
    Ok(())
}

/// Id-mapped mounts (`idmap`/`ridmap`, runtime-spec 1.2): bind mounts only, in a
/// container with a user namespace, whose mappings (when the mount gives its own) are
/// that namespace's: the mount is id-mapped through it.
fn check_idmapped_mounts(
    spec: &Spec,
    linux: &oci_spec::runtime::Linux,
    plan: &Plan,
    joined: Option<&(&Path, crate::idmap::Maps)>,
) -> Result<()> {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let field = format!("mounts[{i}]");
        let opts = m.options().as_deref().unwrap_or(&[]);
        if crate::mount::idmapped(m).is_none() {
            continue;
        }
        let has_maps = m.uid_mappings().is_some() || m.gid_mappings().is_some();
        // What made it id-mapped: the option, or (without one) its mappings.
        let at = match opts.iter().position(|o| o == "idmap" || o == "ridmap") {
            Some(j) => format!("{field}.options[{j}]"),
            None => format!("{field}.uidMappings"),
        };
        let bind =
            m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
        if !bind {
            return Err(Error::config(at, "an id-mapped mount must be a bind mount"));
        }
        if !plan.has(CloneFlags::CLONE_NEWUSER) {
            return Err(Error::config(
                at,
                "an id-mapped mount needs a user namespace (linux.namespaces)",
            ));
        }
        if !has_maps {
            continue;
        }
        for (key, own, container) in [
            ("uidMappings", m.uid_mappings(), linux.uid_mappings()),
            ("gidMappings", m.gid_mappings(), linux.gid_mappings()),
        ] {
            let Some(own) = own else {
                return Err(Error::config(
                    format!("{field}.{key}"),
                    "uidMappings and gidMappings go together",
                ));
            };
            // The mount is id-mapped through the container's user namespace: a new
            // one's mappings are the config's, a joined one's are its own.
            if plan.creates(CloneFlags::CLONE_NEWUSER) && Some(own) != container.as_ref() {
                return Err(Error::config(
                    format!("{field}.{key}"),
                    format!("must be the container's user namespace mappings (linux.{key})"),
                ));
            }
            if let Some((path, (uid, gid))) = joined {
                let theirs = if key == "uidMappings" { uid } else { gid };
                if &crate::idmap::extents(own) != theirs {
                    return Err(Error::config(
                        format!("{field}.{key}"),
                        format!(
                            "must be the mappings of the user namespace joined from {}",
                            path.display()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `linux` fields plinth cannot honour, refused by name rather than ignored.
fn check_linux_extras(linux: &oci_spec::runtime::Linux) -> Result<()> {
    if linux.mount_label().as_ref().is_some_and(|v| !v.is_empty()) {
        return Err(Error::config(
            "linux.mountLabel",
            "not supported by plinth (no SELinux support)",
        ));
    }
    if linux.intel_rdt().is_some() {
        return Err(Error::config(
            "linux.intelRdt",
            "not supported by plinth (no Intel RDT / resctrl support)",
        ));
    }
    if linux.memory_policy().is_some() {
        return Err(Error::config(
            "linux.memoryPolicy",
            "not supported by plinth (set_mempolicy is not applied)",
        ));
    }
    if linux.net_devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(Error::config(
            "linux.netDevices",
            "not supported by plinth (no network device is moved into the container)",
        ));
    }
    if let Some(p) = linux.personality() {
        crate::sched::check_personality(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_type_error_names_the_field() {
        let e =
            parse(br#"{"ociVersion":"1.0.2","process":{"cwd":"/","user":{"uid":"zero","gid":0}}}"#)
                .expect_err("bad type");
        let s = e.to_string();
        assert!(s.contains("process.user.uid"), "{s}");
    }

    #[test]
    fn unknown_namespace_is_named() {
        let e = parse(
            br#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid"},{"type":"bogus"}]}}"#,
        )
        .expect_err("bad ns");
        assert!(e.to_string().contains("linux.namespaces[1]"), "{e}");
    }
}
