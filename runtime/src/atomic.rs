//! Files replaced atomically: a new file with a random name beside the target, then a
//! rename over it, so a reader sees the old content or the new, never half of it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `data` to `path` (a new file of `mode`) atomically: a new temporary file in the same directory, then
/// a rename over `path`. The temporary file gets a random name and is created with
/// O_EXCL and O_NOFOLLOW: the directory may be shared (a `--pid-file` anywhere), and a
/// symlink or file planted at a name known in advance must never be written through.
pub fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    stage(path, data, mode)?.commit()
}

/// A file written beside `path` by [`stage`], not yet renamed over it: [`Staged::commit`]
/// does; dropped uncommitted, it is removed.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Renames the staged file over its target.
    pub fn commit(mut self) -> Result<()> {
        self.committed = true;
        fs::rename(&self.tmp, &self.path).map_err(|e| {
            let _ = fs::remove_file(&self.tmp);
            Error::io("rename into place", &self.path, e)
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The first half of [`write`]: `data` in a new temporary file beside `path`, to be
/// renamed over it by [`Staged::commit`] when the caller is ready.
pub fn stage(path: &Path, data: &[u8], mode: u32) -> Result<Staged> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let mut attempt = 0;
    let (tmp, mut f) = loop {
        // RandomState's keys come from the kernel's random source.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let tmp = dir.join(format!(".{name}.{r:016x}.tmp"));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(Error::io("create", &tmp, e)),
        }
    };
    if let Err(e) = f.write_all(data) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io("write", &tmp, e));
    }
    drop(f);
    // No fsync: the rename alone makes the update atomic for every reader, and state
    // only describes processes, which a crash or power loss takes with it (the state
    // root is /run, a tmpfs on a normal host). On a disk-backed /run the fsync cost ~5 ms
    // per write, a third of a container's start (docs/performance.md); runc and crun
    // do not sync either.
    Ok(Staged {
        tmp,
        path: path.to_path_buf(),
        committed: false,
    })
}
