//! One OCI image layer applied onto an image's root directory, as the image spec's
//! changeset rules say: entries in order, a `.wh.NAME` whiteout removes NAME from the
//! layers below, a `.wh..wh..opq` marker empties its directory of what the layers below
//! put there, hard links within the image. Layers come from a registry: the unpacker
//! never writes outside the root, whatever a layer holds.
//!
//! How: the root is a directory fd; every entry's parent is opened with `openat2`
//! `RESOLVE_IN_ROOT` (the image's own symlinks resolve as if the root were `/`, an
//! absolute or `../..` one included, and never leave it), and the entry itself is made
//! with the `*at` calls on its last component, which never follow a symlink there. A
//! path with a `..` component is refused outright (its layer fails), as is a hard link
//! whose target is not a file of the image. Device nodes are skipped and listed: the
//! workloads are rootless, and a device in an image is a host device in a container.
//!
//! [`add`] unpacks an extension onto the node's root with the same care, but only adds:
//! a whiteout is refused, an existing directory is entered and left as it is, and an
//! entry where the root already has something is refused unless it is the same (a file
//! of the same contents, a symlink to the same target): an extension built on the
//! image's host shares its libc, and one that would replace a file of the image, or of
//! an extension before it, fails naming the path.

use std::collections::HashSet;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, mknodat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::error::{Error, Result};

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`+gzip`, and Docker's `rootfs.diff.tar.gzip`).
    Gzip,
    /// zstd (`+zstd`).
    Zstd,
}

impl Compression {
    /// The compression of a layer of `media_type`; an error names a type that is not a
    /// layer this unpacker reads.
    pub fn of_media_type(media_type: &str) -> Result<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd" => Ok(Compression::Zstd),
            other => Err(Error::Protocol {
                what: "a layer's mediaType".into(),
                reason: format!("{other:?} is not a tar layer (plain, gzip or zstd)"),
            }),
        }
    }

    /// The compression of an archive that starts with `head`, by its magic number
    /// (extensions have no media type).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Where a layer's owners go: uid and gid N of the image become `base + N` on disk, for
/// N below `size` (the workload's subordinate range). An owner outside it fails the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owners {
    /// The first host uid of the range.
    pub uid_base: u32,
    /// The first host gid of the range.
    pub gid_base: u32,
    /// How many ids the range holds.
    pub size: u32,
}

/// What applying a layer did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Entries written (files, directories, links, FIFOs).
    pub written: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Paths removed by whiteouts and opaque markers.
    pub removed: u64,
    /// Entries not written, each with why (device nodes, unknown types).
    pub skipped: Vec<String>,
    /// Entries [`add`] found the root had already, the same.
    pub present: u64,
}

/// The name of a whiteout's prefix, and of the opaque marker.
const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn refused(entry: &str, reason: impl Into<String>) -> Error {
    Error::Protocol {
        what: format!("layer entry {entry:?}"),
        reason: reason.into(),
    }
}

fn sys(what: String) -> impl FnOnce(Errno) -> Error {
    move |source| Error::Sys { what, source }
}

/// Opens `root`, the directory a layer is applied to.
pub fn open_root(root: &Path) -> Result<OwnedFd> {
    openat(
        nix::fcntl::AT_FDCWD,
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("opening the image root {}", root.display())))
}

/// What an entry does to what the root has at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// An image layer: replaces, and whiteouts remove.
    Changeset,
    /// An extension: adds only.
    AddOnly,
}

/// Applies the layer read from `blob` (compressed as `compression`) onto the directory
/// `root`, with owners moved into `owners` (kept as the image has them when `None`).
pub fn apply(
    root: BorrowedFd<'_>,
    blob: impl Read,
    compression: Compression,
    owners: Option<Owners>,
) -> Result<Applied> {
    unpack(root, blob, compression, owners, Policy::Changeset)
}

/// Adds the archive read from `blob` onto `root`, owners as the archive has them, never
/// replacing or removing anything `root` has (the module's doc says how).
pub fn add(root: BorrowedFd<'_>, blob: impl Read, compression: Compression) -> Result<Applied> {
    unpack(root, blob, compression, None, Policy::AddOnly)
}

fn unpack(
    root: BorrowedFd<'_>,
    blob: impl Read,
    compression: Compression,
    owners: Option<Owners>,
    policy: Policy,
) -> Result<Applied> {
    // Every gzip member and every zstd frame: eStargz and zstd:chunked layers are many,
    // and a reader that stopped after the first would unpack part of the layer, silently.
    let tar: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(ZstdFrames {
            src: Some(std::io::BufReader::new(blob)),
            frame: None,
        }),
    };
    let mut archive = tar::Archive::new(tar);
    let mut done = Applied::default();
    // What this layer wrote: an opaque marker empties its directory of everything else.
    let mut ours: HashSet<String> = HashSet::new();
    let read_err = |e: std::io::Error| Error::Protocol {
        what: "reading a layer".into(),
        reason: e.to_string(),
    };
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(path) = clean(&raw)? else {
            continue; // the root itself: its metadata is the image's business, not ours
        };
        let (parent_path, name) = match path.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", path.as_str()),
        };
        if name == OPAQUE || name.starts_with(WHITEOUT) {
            if policy == Policy::AddOnly {
                return Err(refused(
                    &raw,
                    "a whiteout: an extension adds, never removes",
                ));
            }
            // Nothing to remove in a directory the image does not have: none is made.
            let Some(parent) = open_dir(root, parent_path, &raw, false)? else {
                continue;
            };
            if name == OPAQUE {
                done.removed += empty_but(&parent, parent_path, &ours, &raw)?;
                continue;
            }
            let gone = &name[WHITEOUT.len()..];
            if gone.is_empty() || gone == "." || gone == ".." {
                return Err(refused(&raw, "a whiteout of nothing"));
            }
            if remove_all(parent.as_fd(), gone, &raw)? {
                done.removed += 1;
            }
            continue;
        }
        let header = entry.header();
        if matches!(
            header.entry_type(),
            tar::EntryType::Char | tar::EntryType::Block
        ) {
            done.skipped.push(format!("{raw}: a device node"));
            continue;
        }
        let Some(parent) = open_dir(root, parent_path, &raw, true)? else {
            return Err(refused(&raw, "its directory could not be made"));
        };
        let kind = header.entry_type();
        let mut mode = Mode::from_bits_truncate(header.mode().map_err(read_err)? & 0o7777);
        let (uid, gid) = (
            header.uid().map_err(read_err)?,
            header.gid().map_err(read_err)?,
        );
        let mtime = header.mtime().map_err(read_err)?;
        let owner = owner_of(owners, uid, gid, &raw)?;
        if owner.is_none() {
            // Not made the image's owner's (an unprivileged unpacker): a set-id bit would
            // make the file set-id to whoever unpacked it.
            mode.remove(Mode::S_ISUID | Mode::S_ISGID);
        }
        let existing = fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
        let is_dir = |st: &nix::sys::stat::FileStat| {
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
        };
        if policy == Policy::AddOnly {
            if let Some(st) = &existing {
                if kind == tar::EntryType::Directory && is_dir(st) {
                    // Entered, and left as the root has it (/tmp stays 1777).
                    done.present += 1;
                    continue;
                }
                if same_as_present(&parent, name, st, &mut entry, &raw)? {
                    done.present += 1;
                    continue;
                }
                return Err(refused(
                    &raw,
                    "the node has something else there: an extension adds, never replaces",
                ));
            }
        }
        match kind {
            tar::EntryType::Directory => {
                if !existing.as_ref().is_some_and(is_dir) {
                    replace(policy, parent.as_fd(), name, &raw)?;
                    mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                        .map_err(sys(format!("making {raw}")))?;
                }
                let dir = open_child(&parent, name, OFlag::O_DIRECTORY, &raw)?;
                set_owner_mode(&dir, owner, mode, &raw)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                replace(policy, parent.as_fd(), name, &raw)?;
                let file = openat(
                    &parent,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(sys(format!("creating {raw}")))?;
                let mut file = std::fs::File::from(file);
                done.bytes +=
                    std::io::copy(&mut entry, &mut file).map_err(|e| Error::Protocol {
                        what: format!("writing the data of {raw}"),
                        reason: e.to_string(),
                    })?;
                let fd = OwnedFd::from(file);
                set_owner_mode(&fd, owner, mode, &raw)?;
                let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
                nix::sys::stat::futimens(&fd, &t, &t)
                    .map_err(sys(format!("setting the time of {raw}")))?;
            }
            tar::EntryType::Symlink => {
                let target = link_target(&entry, &raw)?;
                replace(policy, parent.as_fd(), name, &raw)?;
                symlinkat(target.as_str(), &parent, name)
                    .map_err(sys(format!("making the symlink {raw}")))?;
                chown_at(&parent, name, owner, &raw)?;
                let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
                utimensat(&parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(sys(format!("setting the time of {raw}")))?;
            }
            tar::EntryType::Link => {
                let target = link_target(&entry, &raw)?;
                let Some(target_path) = clean(&target)? else {
                    return Err(refused(&raw, "a hard link to the image's root"));
                };
                // An extension links only to what it wrote itself: a second name for a
                // file of the node (its /etc/shadow) is not adding.
                if policy == Policy::AddOnly && !ours.contains(&target_path) {
                    return Err(refused(
                        &raw,
                        format!("a hard link to {target:?}, which this archive did not write"),
                    ));
                }
                let (tp, tn) = match target_path.rsplit_once('/') {
                    Some((p, n)) => (p, n),
                    None => ("", target_path.as_str()),
                };
                let Some(tparent) = open_dir(root, tp, &raw, false)? else {
                    return Err(refused(
                        &raw,
                        format!("its target {target:?} is not in the image"),
                    ));
                };
                let st = fstatat(&tparent, tn, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| refused(&raw, format!("its target {target:?}: {e}")))?;
                if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
                    return Err(refused(
                        &raw,
                        format!("its target {target:?} is not a regular file of the image"),
                    ));
                }
                if tp == parent_path && tn == name {
                    continue; // a link to itself: the file is there already
                }
                replace(policy, parent.as_fd(), name, &raw)?;
                linkat(&tparent, tn, &parent, name, AtFlags::empty())
                    .map_err(sys(format!("linking {raw} to {target}")))?;
            }
            tar::EntryType::Fifo => {
                replace(policy, parent.as_fd(), name, &raw)?;
                mknodat(
                    &parent,
                    name,
                    SFlag::S_IFIFO,
                    Mode::from_bits_truncate(0o600),
                    0,
                )
                .map_err(sys(format!("making the FIFO {raw}")))?;
                chown_at(&parent, name, owner, &raw)?;
                // fchmodat cannot refuse a symlink on Linux: this is the FIFO just made,
                // in a directory nothing else writes to while its image is unpacked.
                nix::sys::stat::fchmodat(
                    &parent,
                    name,
                    mode,
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(sys(format!("setting the mode of {raw}")))?;
            }
            // Headers the tar reader has applied to the entries they describe.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                done.skipped.push(format!("{raw}: entry type {other:?}"));
                continue;
            }
        }
        ours.insert(path.clone());
        done.written += 1;
    }
    Ok(done)
}

/// Whether the archive's `entry` is what `parent` has as `name` already (`st`): a
/// regular file of the same contents, or a symlink to the same target.
fn same_as_present<R: Read>(
    parent: &OwnedFd,
    name: &str,
    st: &nix::sys::stat::FileStat,
    entry: &mut tar::Entry<'_, R>,
    raw: &str,
) -> Result<bool> {
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    match entry.header().entry_type() {
        tar::EntryType::Symlink if kind == SFlag::S_IFLNK => {
            let want = link_target(entry, raw)?;
            let have = nix::fcntl::readlinkat(parent, name)
                .map_err(sys(format!("reading the symlink the node has at {raw}")))?;
            Ok(have.as_encoded_bytes() == want.as_bytes())
        }
        tar::EntryType::Regular | tar::EntryType::Continuous if kind == SFlag::S_IFREG => {
            if u64::try_from(st.st_size).ok() != Some(entry.size()) {
                return Ok(false);
            }
            let file = openat(
                parent,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(sys(format!("opening the file the node has at {raw}")))?;
            let mut have = std::fs::File::from(file);
            let (mut a, mut b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
            let read_err = |e: std::io::Error| Error::Protocol {
                what: format!("comparing {raw} with the node's"),
                reason: e.to_string(),
            };
            loop {
                let n = entry.read(&mut a).map_err(read_err)?;
                if n == 0 {
                    return Ok(true);
                }
                have.read_exact(&mut b[..n]).map_err(read_err)?;
                if a[..n] != b[..n] {
                    return Ok(false);
                }
            }
        }
        _ => Ok(false),
    }
}

/// A symlink's or hard link's target.
fn link_target<R: Read>(entry: &tar::Entry<'_, R>, raw: &str) -> Result<String> {
    entry
        .link_name_bytes()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .ok_or_else(|| refused(raw, "a link without a target"))
}

/// A zstd stream of one or more frames, skippable frames (zstd:chunked's metadata)
/// passed over.
struct ZstdFrames<R: Read> {
    src: Option<std::io::BufReader<R>>,
    frame: Option<
        ruzstd::decoding::StreamingDecoder<std::io::BufReader<R>, ruzstd::decoding::FrameDecoder>,
    >,
}

impl<R: Read> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::BufRead;
        loop {
            if let Some(f) = self.frame.as_mut() {
                let n = f.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.src = self.frame.take().map(|f| f.into_inner());
            }
            let Some(mut src) = self.src.take() else {
                return Ok(0);
            };
            let head = src.fill_buf()?;
            if head.is_empty() {
                return Ok(0);
            }
            // A skippable frame: magic 0x184D2A50 to 0x184D2A5F, then its length.
            if head.len() >= 8 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18] {
                let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                src.consume(8);
                std::io::copy(&mut (&mut src).take(u64::from(len)), &mut std::io::sink())?;
                self.src = Some(src);
                continue;
            }
            self.frame = Some(
                ruzstd::decoding::StreamingDecoder::new(src)
                    .map_err(|e| std::io::Error::other(format!("zstd: {e}")))?,
            );
        }
    }
}

/// An entry's path relative to the root: `./` and `/` in front dropped, empty and `.`
/// components dropped; `None` for the root itself. A `..` component is refused.
fn clean(raw: &str) -> Result<Option<String>> {
    let mut parts = Vec::new();
    for part in raw.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(refused(raw, "a path with a `..` component")),
            p => parts.push(p),
        }
    }
    if raw.contains('\0') {
        return Err(refused(raw, "a path with a NUL byte"));
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// The directory `path` (relative, clean) of the image, resolved as if the root were
/// `/`; missing directories are made (0755, as image tools do for a layer without
/// directory entries).
fn open_dir(root: BorrowedFd<'_>, path: &str, entry: &str, make: bool) -> Result<Option<OwnedFd>> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let at = if path.is_empty() { "." } else { path };
    match openat2(root, at, how) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::ENOENT) if !make => return Ok(None),
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(refused(entry, format!("its directory {path:?}: {e}"))),
    }
    // One component at a time, each prefix resolved from the root (a symlink on the way
    // is the image's, read as if the root were /), made in its parent when missing.
    let mut cur = openat2(root, ".", how).map_err(sys(format!("opening the root for {entry}")))?;
    let mut prefix = String::new();
    for part in path.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        match openat2(root, prefix.as_str(), how) {
            Ok(next) => cur = next,
            Err(Errno::ENOENT) => {
                match mkdirat(&cur, part, Mode::from_bits_truncate(0o755)) {
                    Ok(()) => {}
                    // A dangling symlink: it names a directory the image does not have.
                    Err(Errno::EEXIST) => {
                        return Err(refused(
                            entry,
                            format!(
                                "{part:?} in its directory is a symlink to nothing in the image"
                            ),
                        ))
                    }
                    Err(e) => return Err(refused(entry, format!("making {part:?}: {e}"))),
                }
                cur = openat2(root, prefix.as_str(), how)
                    .map_err(|e| refused(entry, format!("opening {part:?}: {e}")))?;
            }
            Err(e) => return Err(refused(entry, format!("its directory {path:?}: {e}"))),
        }
    }
    Ok(Some(cur))
}

/// The child `name` of `parent`, never through a symlink.
fn open_child(parent: &OwnedFd, name: &str, flags: OFlag, entry: &str) -> Result<OwnedFd> {
    openat(
        parent,
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("opening {entry}")))
}

/// The host owner of an image's `uid`/`gid`, or `None` to keep the image's.
fn owner_of(owners: Option<Owners>, uid: u64, gid: u64, entry: &str) -> Result<Option<(Uid, Gid)>> {
    let Some(o) = owners else {
        // The image's own ids, when this process may give them (root); else none.
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        return match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) => Ok(Some((Uid::from_raw(u), Gid::from_raw(g)))),
            _ => Err(refused(
                entry,
                format!("owner {uid}:{gid} is not a 32-bit id"),
            )),
        };
    };
    let within = |id: u64, base: u32| {
        u32::try_from(id)
            .ok()
            .filter(|id| *id < o.size)
            .and_then(|id| base.checked_add(id))
    };
    match (within(uid, o.uid_base), within(gid, o.gid_base)) {
        (Some(u), Some(g)) => Ok(Some((Uid::from_raw(u), Gid::from_raw(g)))),
        _ => Err(refused(
            entry,
            format!("owner {uid}:{gid} is outside the workload's {} ids", o.size),
        )),
    }
}

/// Gives `name` in `parent` its owner, never through a symlink (a symlink's own).
fn chown_at(parent: &OwnedFd, name: &str, owner: Option<(Uid, Gid)>, entry: &str) -> Result<()> {
    let Some((u, g)) = owner else {
        return Ok(());
    };
    fchownat(parent, name, Some(u), Some(g), AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(sys(format!("setting the owner of {entry}")))
}

/// Owner first, then mode: a chown clears the set-id bits.
fn set_owner_mode(fd: &OwnedFd, owner: Option<(Uid, Gid)>, mode: Mode, entry: &str) -> Result<()> {
    if let Some((u, g)) = owner {
        nix::unistd::fchown(fd, Some(u), Some(g))
            .map_err(sys(format!("setting the owner of {entry}")))?;
    }
    fchmod(fd, mode).map_err(sys(format!("setting the mode of {entry}")))
}

/// Makes room for an entry: a layer replaces what is there; an extension never removes
/// anything (what appeared since it looked makes the entry's `O_EXCL` or `mkdirat` fail).
fn replace(policy: Policy, parent: BorrowedFd<'_>, name: &str, entry: &str) -> Result<()> {
    if policy == Policy::Changeset {
        remove_all(parent, name, entry)?;
    }
    Ok(())
}

/// Removes `name` in `parent`, a directory with everything in it, never following a
/// symlink; whether there was anything.
fn remove_all(parent: BorrowedFd<'_>, name: &str, entry: &str) -> Result<bool> {
    let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(refused(entry, format!("looking at {name:?}: {e}"))),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        let dir = openat(
            parent,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(sys(format!("opening {name:?} to remove it, for {entry}")))?;
        for child in children(&dir, entry)? {
            remove_all(dir.as_fd(), &child, entry)?;
        }
        unlinkat(parent, name, UnlinkatFlags::RemoveDir)
            .map_err(sys(format!("removing {name:?} for {entry}")))?;
    } else {
        unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
            .map_err(sys(format!("removing {name:?} for {entry}")))?;
    }
    Ok(true)
}

/// The names in a directory, `.` and `..` left out.
fn children(dir: &OwnedFd, entry: &str) -> Result<Vec<String>> {
    let fd = nix::unistd::dup(dir).map_err(sys(format!("listing for {entry}")))?;
    let mut d = Dir::from_fd(fd).map_err(sys(format!("listing for {entry}")))?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e.map_err(sys(format!("listing for {entry}")))?;
        let n = e.file_name().to_string_lossy();
        if n != "." && n != ".." {
            out.push(n.into_owned());
        }
    }
    Ok(out)
}

/// An opaque marker: removes what the layers below left in `dir` (`dir_path` in the
/// image), keeping what this layer wrote there; how many were removed.
fn empty_but(dir: &OwnedFd, dir_path: &str, ours: &HashSet<String>, entry: &str) -> Result<u64> {
    let listing = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys(format!("opening the directory of {entry}")))?;
    let mut removed = 0;
    for child in children(&listing, entry)? {
        let path = if dir_path.is_empty() {
            child.clone()
        } else {
            format!("{dir_path}/{child}")
        };
        if !ours.contains(&path) {
            if remove_all(listing.as_fd(), &child, entry)? {
                removed += 1;
            }
            continue;
        }
        // A directory of this layer's keeps only what this layer put in it, down to
        // the bottom: the layers below are hidden there too.
        let st = fstatat(&listing, child.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(sys(format!("looking at {path:?} for {entry}")))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            let sub = open_child(&listing, &child, OFlag::O_PATH | OFlag::O_DIRECTORY, entry)?;
            removed += empty_but(&sub, &path, ours, entry)?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests;
