//! The state directory: one folder per container under `--root`, holding `state.json`
//! (written atomically: write, rename) and the `exec.fifo` that `start` opens.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Hooks;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A container's status, as the runtime spec names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Set up, waiting for `start`.
    Created,
    /// The user process runs.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// The process has exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What the runtime keeps about one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// The OCI version of the bundle's config.
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// The pid of the container's init, in the runtime's pid namespace.
    pub pid: i32,
    /// The init's start time (field 22 of /proc/PID/stat), to tell a reused pid apart.
    pub pid_start: u64,
    /// Absolute path of the bundle.
    pub bundle: PathBuf,
    /// Absolute path of the rootfs.
    pub rootfs: PathBuf,
    /// Creation time, RFC 3339 with nanoseconds.
    pub created: String,
    /// The user who created it.
    pub owner: String,
    /// The config's annotations.
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    /// Hooks that run after create: poststart and poststop.
    #[serde(default)]
    pub hooks: Option<Hooks>,
    /// The container's cgroup (None: a rootless container without one).
    #[serde(default)]
    pub cgroup: Option<crate::cgroups::Cgroup>,
    /// Whether the container has its own pid namespace (kill --all and delete need to
    /// know whether killing pid 1 takes everything with it).
    #[serde(default)]
    pub own_pid_ns: bool,
    /// For a container without a mount namespace: the ids of the mounts that were on
    /// its rootfs before create, so that delete detaches only what create stacked there.
    #[serde(default)]
    pub host_mounts: Option<Vec<u32>>,
}

/// The runc-shaped JSON `state` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report<'a> {
    /// OCI version.
    pub oci_version: &'a str,
    /// Container id.
    pub id: &'a str,
    /// Init pid, 0 when stopped.
    pub pid: i32,
    /// Status.
    pub status: Status,
    /// Bundle path.
    pub bundle: &'a Path,
    /// Rootfs path.
    pub rootfs: &'a Path,
    /// Creation time.
    pub created: &'a str,
    /// Owner.
    pub owner: &'a str,
    /// Annotations (omitted when empty, as runc does).
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: &'a HashMap<String, String>,
}

/// The state root (`--root`).
#[derive(Debug, Clone)]
pub struct Root(pub PathBuf);

/// The file name of the state inside a container's directory.
pub const STATE_FILE: &str = "state.json";
/// The fifo `start` opens to release the init.
pub const FIFO: &str = "exec.fifo";

/// Checks a container id the way runc does: letters, digits, `_+-.`, not `.` or `..`.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid container id {id:?}: use letters, digits and _+-. only"
        )))
    }
}

impl Root {
    /// The default root: /run/plinth as root, $XDG_RUNTIME_DIR/plinth otherwise.
    pub fn default_path() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/run/plinth");
        }
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("plinth"),
            _ => PathBuf::from(format!("/tmp/plinth-{}", nix::unistd::geteuid())),
        }
    }

    /// A container's directory.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.0.join(id)
    }

    /// The compiled seccomp filters ([`crate::seccomp::cache`]). `#` is not allowed in a
    /// container id, so no container's directory can take the name.
    pub fn seccomp_cache(&self) -> PathBuf {
        self.0.join("#seccomp-cache")
    }

    /// Creates the root (mode 0700) if needed, and checks it as [`Root::check`] does.
    pub fn ensure(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.0)
            .map_err(|e| Error::io("create state root", &self.0, e))?;
        self.check().map(drop)
    }

    /// Whether the root exists; an error unless it is a directory the caller owns that
    /// no one else may enter (mode 0700). A state file is trusted (its hooks run as the
    /// caller), so a root that another user made, or may write into, is refused: with
    /// no XDG_RUNTIME_DIR the default is a name in /tmp anyone could take first.
    pub fn check(&self) -> Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let md = match fs::symlink_metadata(&self.0) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("stat state root", &self.0, e)),
        };
        let shown = self.0.display();
        if !md.is_dir() {
            return Err(Error::Invalid(format!(
                "state root {shown} is not a directory (a symlink or a file): refusing it"
            )));
        }
        let me = nix::unistd::geteuid().as_raw();
        if md.uid() != me {
            let owner = nix::unistd::User::from_uid(md.uid().into())
                .ok()
                .flatten()
                .map(|u| format!("{} (uid {})", u.name, md.uid()))
                .unwrap_or_else(|| format!("uid {}", md.uid()));
            return Err(Error::Invalid(format!(
                "state root {shown} is owned by {owner}, not by this user (uid {me}): refusing \
                 it, since its owner could plant containers whose hooks would run as you; \
                 remove it or give --root a directory of your own"
            )));
        }
        if md.mode() & 0o077 != 0 {
            return Err(Error::Invalid(format!(
                "state root {shown} has mode {:04o}: refusing it, since others may enter it; \
                 it must be 0700 (chmod 700 {shown})",
                md.mode() & 0o7777
            )));
        }
        Ok(true)
    }

    /// Claims a new container directory; fails if the id exists.
    pub fn claim(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        self.ensure()?;
        let dir = self.dir(id);
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::Exists(id.to_string()))
            }
            Err(e) => Err(Error::io("create state directory", &dir, e)),
        }
    }

    /// Loads a container's state.
    pub fn load(&self, id: &str) -> Result<State> {
        validate_id(id)?;
        if !self.check()? {
            return Err(Error::NotFound(id.to_string()));
        }
        let path = self.dir(id).join(STATE_FILE);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.to_string()))
            }
            Err(e) => return Err(Error::io("read state", &path, e)),
        };
        parse(&data).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// Writes a container's state atomically.
    pub fn save(&self, st: &State) -> Result<()> {
        self.stage(st)?.commit()
    }

    /// [`Root::save`]'s first half: the state written beside its file, renamed into
    /// place by [`crate::atomic::Staged::commit`].
    pub fn stage(&self, st: &State) -> Result<crate::atomic::Staged> {
        let dir = self.dir(&st.id);
        let data =
            serde_json::to_vec(st).map_err(|e| Error::Invalid(format!("serialise state: {e}")))?;
        crate::atomic::stage(&dir.join(STATE_FILE), &data, 0o600)
    }

    /// The ids of all containers, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        if !self.check()? {
            return Ok(vec![]);
        }
        let rd = match fs::read_dir(&self.0) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io("read state root", &self.0, e)),
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(STATE_FILE).exists())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes a container's directory.
    pub fn remove(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove state directory", &dir, e)),
        }
    }
}

impl State {
    /// The state a hook reads on stdin, and a seccomp agent gets beside its fd
    /// (runtime-spec's state, with `status` as the hook's moment sees it).
    pub fn hook_json(&self, status: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": status,
            "pid": self.pid,
            "bundle": self.bundle,
        });
        if !self.annotations.is_empty() {
            v["annotations"] = serde_json::json!(self.annotations);
        }
        v
    }
}

/// Writes `--pid-file` (relative to the caller's directory) atomically, as engines
/// read it as soon as it exists.
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("getcwd", ".", e))?
            .join(path)
    };
    crate::atomic::write(&path, pid.to_string().as_bytes(), 0o644)
}

/// Parses a state file; never panics, whatever the bytes.
pub fn parse(data: &[u8]) -> std::result::Result<State, String> {
    let st: State = serde_json::from_slice(data).map_err(|e| e.to_string())?;
    validate_id(&st.id).map_err(|e| e.to_string())?;
    if st.pid < 0 {
        return Err(format!("negative pid {}", st.pid));
    }
    Ok(st)
}

/// The start time of `pid` (clock ticks since boot, /proc/PID/stat field 22) and
/// whether it is a zombie; None if there is no such process.
pub fn proc_start(pid: i32) -> Option<(u64, bool)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
    let start = fields.get(19)?.parse().ok()?;
    Some((start, zombie))
}

impl State {
    /// Whether the init process recorded here is still alive (same pid, same start).
    pub fn init_alive(&self) -> bool {
        if self.pid <= 0 {
            return false;
        }
        matches!(proc_start(self.pid), Some((start, false)) if start == self.pid_start)
    }
}

/// Now, in RFC 3339 with nanoseconds and a `Z`, as Go's time.RFC3339Nano prints UTC.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_nanos())
}

/// Formats seconds since the epoch (UTC).
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_like_go() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_795_000_000, 120_000_000),
            "2026-11-18T11:06:40.12Z"
        );
        assert_eq!(rfc3339(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_id("abc-1.2_x+y").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "x\0"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn garbage_state_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"{", b"[]", b"{\"id\":\"../x\"}", b"\xff\xfe"] {
            assert!(parse(bad).is_err());
        }
    }

    #[test]
    fn own_process_start_time_is_readable() {
        let (start, zombie) = proc_start(std::process::id() as i32).expect("self");
        assert!(start > 0);
        assert!(!zombie);
    }
}
