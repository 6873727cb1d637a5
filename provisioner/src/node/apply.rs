//! Applying a `MachineConfig` under a root directory (`/` on the node; a scratch
//! directory in tests), idempotently: each item is compared with what is there and
//! written only when it differs, so a second run changes nothing. What was changed, and
//! the state read back afterwards, go into the `applied` event.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::crypto::hex;
use crate::error::{io, sys, Error, Result};
use crate::schema::config::{MachineConfig, User};

/// What an apply did.
#[derive(Debug, Default)]
pub struct Report {
    /// Each change made, e.g. `file /etc/motd`.
    pub changed: Vec<String>,
    /// The state read back after applying (hostname, files, users, sysctls).
    pub state: Map<String, Value>,
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Applies `cfg` under `root`. The host name is set with sethostname(2) only when
/// `root` is `/`.
pub fn apply(cfg: &MachineConfig, root: &Path) -> Result<Report> {
    cfg.validate().map_err(|reason| Error::Config {
        what: "config".into(),
        reason,
    })?;
    // The containers' users, beside the config's own.
    let mut with_workloads;
    let cfg = if cfg.containers.is_empty() {
        cfg
    } else {
        with_workloads = cfg.clone();
        with_workloads
            .users
            .extend(crate::node::workload::users(&cfg.containers));
        &with_workloads
    };
    let mut r = Report::default();
    if let Some(h) = &cfg.hostname {
        hostname(root, h, &mut r)?;
    }
    // Unless the config writes its own.
    if !cfg.files.iter().any(|f| f.path == "/etc/hosts") {
        hosts(root, cfg.hostname.as_deref(), &mut r)?;
    }
    accounts(cfg, root, &mut r)?;
    let mut files = Map::new();
    for f in &cfg.files {
        let path = under(root, &f.path);
        let mode = f.mode_bits();
        if write_file(&path, f.contents.as_bytes(), mode, f.uid, f.gid)? {
            r.changed.push(format!("file {}", f.path));
        }
        let meta = std::fs::metadata(&path).map_err(io("reading back", &path))?;
        let body = std::fs::read(&path).map_err(io("reading back", &path))?;
        files.insert(
            f.path.clone(),
            json!({
                "mode": format!("{:04o}", meta.permissions().mode() & 0o7777),
                "uid": meta.uid(),
                "gid": meta.gid(),
                "sha256": hex(&Sha256::digest(&body)),
            }),
        );
    }
    r.state.insert("files".into(), Value::Object(files));
    let mut sysctls = Map::new();
    for (k, v) in &cfg.sysctls {
        let path = root.join("proc/sys").join(k.replace('.', "/"));
        let now = std::fs::read_to_string(&path).map_err(io("reading sysctl", &path))?;
        if now.trim() != v.trim() {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, v.as_bytes()))
                .map_err(io("writing sysctl", &path))?;
            r.changed.push(format!("sysctl {k}"));
        }
        let back = std::fs::read_to_string(&path).map_err(io("reading back sysctl", &path))?;
        sysctls.insert(k.clone(), json!(back.trim()));
    }
    r.state.insert("sysctls".into(), Value::Object(sysctls));
    if !cfg.kernel_modules.is_empty() {
        let release = nix::sys::utsname::uname()
            .map_err(sys("uname"))?
            .release()
            .to_string_lossy()
            .into_owned();
        // The image keeps modules under /usr/lib/modules (merged-/usr layout).
        let moddir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d).join(&release))
            .find(|d| d.join("modules.dep").is_file())
            .unwrap_or_else(|| root.join("usr/lib/modules").join(&release));
        for m in &cfg.kernel_modules {
            if crate::init::kmod::load_by_name(&moddir, m)? {
                r.changed.push(format!("module {m}"));
            }
        }
    }
    Ok(r)
}

/// `/etc/hosts` where the node has none: localhost, and the host name on 127.0.1.1 as
/// Debian has it. Programs copy or read it (containerd copies it into every pod) and
/// fail on a node without one; an image's own is kept.
fn hosts(root: &Path, h: Option<&str>, r: &mut Report) -> Result<()> {
    if under(root, "/etc/hosts").exists() {
        return Ok(());
    }
    let mut text =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(h) = h {
        text.push_str(&format!("127.0.1.1\t{h}\n"));
    }
    if write_file(&under(root, "/etc/hosts"), text.as_bytes(), 0o644, 0, 0)? {
        r.changed.push("file /etc/hosts".into());
    }
    Ok(())
}

fn hostname(root: &Path, h: &str, r: &mut Report) -> Result<()> {
    let etc = under(root, "/etc/hostname");
    if write_file(&etc, format!("{h}\n").as_bytes(), 0o644, 0, 0)? {
        r.changed.push("file /etc/hostname".into());
    }
    let live = root == Path::new("/");
    if live {
        let now = nix::unistd::gethostname()
            .map_err(sys("gethostname"))?
            .to_string_lossy()
            .into_owned();
        if now != h {
            nix::unistd::sethostname(h).map_err(sys(format!("sethostname {h}")))?;
            r.changed.push(format!("hostname {h}"));
        }
        let back = nix::sys::utsname::uname()
            .map_err(sys("uname"))?
            .nodename()
            .to_string_lossy()
            .into_owned();
        r.state.insert("hostname".into(), json!(back));
    } else {
        r.state.insert("hostname".into(), json!(h));
    }
    Ok(())
}

/// Writes `body` to `path` with `mode` and owner unless it is already so; returns
/// whether anything changed. Through a temporary file and rename, so that a reader
/// never sees half a file.
pub fn write_file(path: &Path, body: &[u8], mode: u32, uid: u32, gid: u32) -> Result<bool> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.is_file()
            && meta.permissions().mode() & 0o7777 == mode
            && meta.uid() == uid
            && meta.gid() == gid
            && std::fs::read(path).map_err(io("reading", path))? == body
        {
            return Ok(false);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating directory", dir))?;
    }
    let tmp = path.with_extension("plinth-tmp");
    // Made anew and owner-only until the chmod below: a file of mode 0600 (a token, a
    // password) is never readable by others on its way in, not even through a leftover.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing a leftover", &tmp)(e));
        }
        _ => {}
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("writing", &tmp))?;
        f.write_all(body).map_err(io("writing", &tmp))?;
    }
    nix::unistd::chown(
        &tmp,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .map_err(sys(format!("chown {uid}:{gid} {}", path.display())))?;
    // After chown, which clears set-id bits.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("chmod", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    Ok(true)
}

/// Rewrites a colon-separated account file (passwd, group, shadow, subuid, subgid) so
/// that each of `entries` (keyed by their first field) is present exactly as given;
/// other lines are kept in order. Returns whether it changed.
fn upsert(path: &Path, seed: &[&str], entries: &[String], mode: u32) -> Result<bool> {
    let old = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            seed.iter().map(|l| format!("{l}\n")).collect()
        }
        Err(e) => return Err(io("reading", path)(e)),
    };
    let key = |l: &str| l.split(':').next().unwrap_or("").to_string();
    let mut want: BTreeMap<String, &String> = entries.iter().map(|e| (key(e), e)).collect();
    let mut lines: Vec<String> = Vec::new();
    for l in old.lines() {
        match want.remove(&key(l)) {
            Some(e) => lines.push(e.clone()),
            None => lines.push(l.to_string()),
        }
    }
    // Entries not there yet go last, in the order given.
    for e in entries {
        if want.contains_key(&key(e)) {
            lines.push(e.clone());
            want.remove(&key(e));
        }
    }
    let new: String = lines.iter().map(|l| format!("{l}\n")).collect();
    write_file(path, new.as_bytes(), mode, 0, 0).map(|changed| changed || old != new)
}

fn primary_gid(cfg: &MachineConfig, u: &User) -> u32 {
    u.gid.unwrap_or_else(|| {
        cfg.groups
            .iter()
            .find(|g| g.name == u.name)
            .map_or(u.uid, |g| g.gid)
    })
}

fn accounts(cfg: &MachineConfig, root: &Path, r: &mut Report) -> Result<()> {
    let mut groups: Vec<String> = cfg
        .groups
        .iter()
        .map(|g| format!("{}:x:{}:", g.name, g.gid))
        .collect();
    for u in &cfg.users {
        // A user without a group of its own gets one of its name.
        if u.gid.is_none() && !cfg.groups.iter().any(|g| g.name == u.name) {
            groups.push(format!("{}:x:{}:", u.name, u.uid));
        }
    }
    let passwd: Vec<String> = cfg
        .users
        .iter()
        .map(|u| {
            format!(
                "{}:x:{}:{}::{}:{}",
                u.name,
                u.uid,
                primary_gid(cfg, u),
                u.home_dir(),
                u.shell.as_deref().unwrap_or("/bin/sh")
            )
        })
        .collect();
    // Locked passwords: these users exist to own files and run containers, not to log in.
    let shadow: Vec<String> = cfg
        .users
        .iter()
        .map(|u| format!("{}:!:::::::", u.name))
        .collect();
    let sub = |f: fn(&User) -> Option<crate::schema::config::IdRange>| -> Vec<String> {
        cfg.users
            .iter()
            .filter_map(|u| f(u).map(|r| format!("{}:{}:{}", u.name, r.start, r.count)))
            .collect()
    };
    let (subuid, subgid) = (sub(|u| u.subuid), sub(|u| u.subgid));
    let etc = under(root, "/etc");
    for (file, seed, entries, mode) in [
        ("group", &["root:x:0:"][..], &groups, 0o644),
        (
            "passwd",
            &["root:x:0:0:root:/root:/bin/sh"][..],
            &passwd,
            0o644,
        ),
        ("shadow", &["root:*:::::::"][..], &shadow, 0o600),
        ("subuid", &[][..], &subuid, 0o644),
        ("subgid", &[][..], &subgid, 0o644),
    ] {
        // root's own lines whatever the config says: programs (kubelet, mount) read
        // these files and fail on a node that has none.
        if entries.is_empty() && (seed.is_empty() || etc.join(file).exists()) {
            continue;
        }
        if upsert(&etc.join(file), seed, entries, mode)? {
            r.changed.push(format!("file /etc/{file}"));
        }
    }
    let mut users = Map::new();
    for u in &cfg.users {
        let home = under(root, &u.home_dir());
        let gid = primary_gid(cfg, u);
        let made = !home.exists();
        std::fs::create_dir_all(&home).map_err(io("creating home", &home))?;
        let meta = std::fs::metadata(&home).map_err(io("reading", &home))?;
        if made || meta.uid() != u.uid || meta.gid() != gid {
            nix::unistd::chown(
                &home,
                Some(nix::unistd::Uid::from_raw(u.uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(sys(format!("chown {}", home.display())))?;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o750))
                .map_err(io("chmod", &home))?;
            r.changed.push(format!("home {}", u.home_dir()));
        }
        let find = |file: &str| -> Option<String> {
            std::fs::read_to_string(etc.join(file))
                .ok()?
                .lines()
                .find(|l| l.split(':').next() == Some(u.name.as_str()))
                .map(String::from)
        };
        users.insert(
            u.name.clone(),
            json!({ "passwd": find("passwd"), "subuid": find("subuid"), "subgid": find("subgid") }),
        );
    }
    r.state.insert("users".into(), Value::Object(users));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_once_then_changes_nothing() {
        let root = std::env::temp_dir().join(format!("plinth-apply-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proc/sys/net/ipv4")).expect("mkdir");
        std::fs::write(root.join("proc/sys/net/ipv4/ip_forward"), "0\n").expect("sysctl");
        let cfg = MachineConfig::parse(
            br#"{"apiVersion":"plinth/v1","hostname":"n1",
                "users":[{"name":"app","uid":1500,"subuid":{"start":100000,"count":65536},
                          "subgid":{"start":100000,"count":65536}}],
                "files":[{"path":"/etc/motd","contents":"hello\n","mode":"0640","gid":1500}],
                "sysctls":{"net.ipv4.ip_forward":"1"}}"#,
        )
        .expect("config");
        let first = apply(&cfg, &root).expect("apply");
        for c in [
            "file /etc/motd",
            "file /etc/passwd",
            "file /etc/subuid",
            "sysctl net.ipv4.ip_forward",
            "home /home/app",
        ] {
            assert!(
                first.changed.iter().any(|x| x == c),
                "{c}: {:?}",
                first.changed
            );
        }
        let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/sh\napp:x:1500:1500::/home/app:/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/subuid")).expect("subuid"),
            "app:100000:65536\n"
        );
        let meta = std::fs::metadata(root.join("etc/motd")).expect("motd");
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.gid()),
            (0o640, 1500)
        );
        assert_eq!(first.state["sysctls"]["net.ipv4.ip_forward"], "1");
        assert!(std::fs::read_to_string(root.join("etc/hosts"))
            .expect("hosts")
            .contains("127.0.1.1\tn1\n"));
        let second = apply(&cfg, &root).expect("again");
        assert!(second.changed.is_empty(), "{:?}", second.changed);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_config_without_accounts_still_leaves_roots() {
        let root = std::env::temp_dir().join(format!("plinth-apply-bare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("mkdir");
        let cfg = MachineConfig::parse(br#"{"apiVersion":"plinth/v1"}"#).expect("config");
        let first = apply(&cfg, &root).expect("apply");
        assert_eq!(
            std::fs::read_to_string(root.join("etc/passwd")).expect("passwd"),
            "root:x:0:0:root:/root:/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/group")).expect("group"),
            "root:x:0:\n"
        );
        assert!(first.changed.iter().any(|c| c == "file /etc/hosts"));
        let second = apply(&cfg, &root).expect("again");
        assert!(second.changed.is_empty(), "{:?}", second.changed);
        let _ = std::fs::remove_dir_all(&root);
    }
}
