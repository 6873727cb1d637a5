//! The config's extensions on the node: each fetched from the node's server
//! (`GET /v1/extensions/NAME`, mutual TLS) into a private file on the `/run` tmpfs, its
//! SHA-256 checked against the config's before a byte of it is used, then added onto the
//! node's root (itself a tmpfs) by [`layer::add`], which never replaces what the image
//! has; the downloaded file is removed either way.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::error::{io, Error, Result};
use crate::node::client::Client;
use crate::node::layer::{self, Compression};
use crate::schema::extensions::Extension;

/// Where downloads wait for their digest check, on the node.
pub const WORK_DIR: &str = "/run/plinth/extensions";

/// The largest extension taken: the node's root is memory.
pub const MAX_BYTES: u64 = 2 << 30;

/// How long a download may go without a byte.
const IDLE: Duration = Duration::from_secs(60);

/// What installing one extension did, for its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The archive's size.
    pub bytes: u64,
    /// Entries written onto the root.
    pub written: u64,
    /// Entries the root had already, the same (shared libraries, directories).
    pub present: u64,
    /// Entries not written, with why.
    pub skipped: Vec<String>,
    /// The download's time.
    pub fetch: Duration,
    /// The unpacking's time.
    pub unpack: Duration,
}

/// Fetches `ext` with `client`, checks it and adds it onto `root`, using `work` for
/// the download. An error names the extension and what failed; nothing of the
/// download is kept. An archive refused half-way leaves what it had added (the node
/// is diskless: the next boot starts clean).
pub async fn install(
    client: &Client,
    ext: &Extension,
    root: &Path,
    work: &Path,
) -> Result<Installed> {
    let named = |e: Error| Error::Config {
        what: format!("extension {}", ext.name),
        reason: e.to_string(),
    };
    private_dir(work).map_err(named)?;
    let file = work.join(format!("{}.download", ext.name));
    let result = fetch_and_add(client, ext, root, &file).await;
    let _ = std::fs::remove_file(&file);
    result.map_err(named)
}

async fn fetch_and_add(
    client: &Client,
    ext: &Extension,
    root: &Path,
    file: &Path,
) -> Result<Installed> {
    let started = Instant::now();
    let mut out = new_private_file(file)?;
    let mut hash = Sha256::new();
    let bytes = client
        .download(
            &format!("/v1/extensions/{}", ext.name),
            MAX_BYTES,
            IDLE,
            |chunk| {
                hash.update(chunk);
                out.write_all(chunk).map_err(io("writing", file))
            },
        )
        .await?;
    out.sync_all().map_err(io("writing", file))?;
    let got = crate::crypto::hex(&hash.finalize());
    if got != ext.sha256 {
        return Err(Error::Protocol {
            what: "its digest".into(),
            reason: format!(
                "the server's file has sha256 {got}, the config says {} (nothing of it was used)",
                ext.sha256
            ),
        });
    }
    let fetch = started.elapsed();
    let started = Instant::now();
    // Unpacked from the descriptor that was written and hashed, not the path again.
    let (root, file) = (root.to_path_buf(), file.to_path_buf());
    let applied = tokio::task::spawn_blocking(move || add(&root, out, &file))
        .await
        .map_err(|e| Error::Protocol {
            what: "unpacking".into(),
            reason: e.to_string(),
        })??;
    Ok(Installed {
        bytes,
        written: applied.written,
        present: applied.present,
        skipped: applied.skipped,
        fetch,
        unpack: started.elapsed(),
    })
}

/// Adds the archive `f` (the file `file`) onto `root`, its compression read from its
/// first bytes.
fn add(root: &Path, mut f: std::fs::File, file: &Path) -> Result<layer::Applied> {
    use std::io::{Read, Seek};
    f.rewind().map_err(io("reading", file))?;
    let mut head = [0u8; 4];
    let n = f.read(&mut head).map_err(io("reading", file))?;
    f.rewind().map_err(io("reading", file))?;
    let root_fd = layer::open_root(root)?;
    use std::os::fd::AsFd;
    layer::add(
        root_fd.as_fd(),
        std::io::BufReader::with_capacity(256 * 1024, f),
        Compression::sniff(&head[..n]),
    )
}

/// `dir`, made 0700 where missing; an existing one must be a directory (not a symlink)
/// of this user's that no one else can write to or read.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("creating", dir))?;
    let m = std::fs::symlink_metadata(dir).map_err(io("reading", dir))?;
    if !m.is_dir() || m.uid() != nix::unistd::geteuid().as_raw() || m.mode() & 0o077 != 0 {
        return Err(Error::Protocol {
            what: format!("the work directory {}", dir.display()),
            reason: "not a private directory of this user's (mode 0700, not a symlink)".into(),
        });
    }
    Ok(())
}

/// A new file only this process's user reads; an old one of that name (an earlier
/// attempt) is removed first, never written through.
fn new_private_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", path)(e)),
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("creating", path))
}
