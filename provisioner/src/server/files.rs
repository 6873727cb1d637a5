//! Private files under `--data`: directories 0700, files replaced atomically and durably.

use std::io::Write;
use std::path::Path;

use crate::error::{io, Result};

/// Creates `dir` (and its parents) as 0700 where missing.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating directory", dir))
}

/// Writes `body` to `path` atomically and durably (temp file, fsync, rename, fsync dir),
/// private (0600).
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<()> {
    write_atomic_mode(path, body, 0o600)
}

/// [`write_atomic`] with the file's permission bits. The temp file beside `path` has a
/// name of its own (`.NAME.RANDOM.tmp`), is created exclusively (never through a
/// symlink or into an existing file) and given `mode` exactly, whatever the umask.
pub fn write_atomic_mode(path: &Path, body: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.tmp",
        crate::crypto::hex(&crate::crypto::random_bytes(8)?)
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    let written = f
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &tmp))
        .and_then(|()| f.write_all(body).map_err(io("writing", &tmp)))
        .and_then(|()| f.sync_all().map_err(io("syncing", &tmp)))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io("renaming into place", path)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
