//! `plinth-boot extension`: an extension for the machine config's `extensions`, a tar
//! laid out as the node's root (files at their absolute paths, each dynamic binary with
//! its loader and libraries, as the image has them), compressed with zstd. Entries are
//! sorted, owned 0:0, with one mtime: the same inputs give the same bytes, so the same
//! digest. The file is written beside `out` and renamed into place when complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::cpio::{Archive, Node};
use crate::error::{io, Error, Result};
use crate::image::{self, Claims, Extra, Report};
use crate::libs::SearchPath;

/// Everything `build` needs.
#[derive(Debug, Clone)]
pub struct ExtensionOptions {
    /// The file written.
    pub out: PathBuf,
    /// What goes in: files or directories, each `SRC:DEST`.
    pub files: Vec<Extra>,
    /// Every entry's mtime (SOURCE_DATE_EPOCH).
    pub mtime: u32,
}

/// What was built.
#[derive(Debug)]
pub struct Built {
    /// What went in, as `plinth-boot build` reports it.
    pub report: Report,
    /// The tar's size, uncompressed.
    pub tar_size: u64,
    /// The file's size.
    pub size: u64,
    /// The file's SHA-256, hex: the config's `sha256`.
    pub sha256: String,
}

/// Builds the extension; nothing is left at `opts.out` unless it is complete.
pub fn build(opts: &ExtensionOptions) -> Result<Built> {
    if opts.files.is_empty() {
        return Err(Error::BadArgument {
            arg: "--add".into(),
            reason: "an extension needs at least one file".into(),
        });
    }
    let mut ar = Archive::new();
    let mut report = Report::default();
    let mut claims = Claims::default();
    let search = SearchPath::host();
    for f in &opts.files {
        image::add_extra(&mut ar, &mut report, &mut claims, &search, f)?;
    }
    report.entries = ar.len();
    let tar = tar_of(&ar, opts.mtime).map_err(io("writing the tar of", &opts.out))?;
    let zst = ruzstd::encoding::compress_to_vec(
        tar.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    write_into_place(&opts.out, &zst)?;
    Ok(Built {
        report,
        tar_size: tar.len() as u64,
        size: zst.len() as u64,
        sha256: hex(&Sha256::digest(&zst)),
    })
}

/// The archive as a tar: paths relative (the node adds them under its root), owners
/// 0:0.
fn tar_of(ar: &Archive, mtime: u32) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, node) in ar.iter() {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(u64::from(mtime));
        match node {
            Node::Dir { perm } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*perm);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())?;
            }
            Node::File { perm, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*perm);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())?;
            }
            Node::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)?;
            }
            Node::CharDev { .. } => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{path}: an extension carries no device nodes"),
                ))
            }
        }
    }
    b.into_inner()
}

fn write_into_place(out: &Path, data: &[u8]) -> Result<()> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::BadArgument {
            arg: format!("-o {}", out.display()),
            reason: "needs a file name".into(),
        })?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .map_err(io("writing", &tmp))
        .and_then(|()| std::fs::rename(&tmp, out).map_err(io("renaming into place", out)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_inputs_give_the_same_digest_and_a_tar_of_the_tree() {
        let dir = std::env::temp_dir().join(format!("plinth-ext-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tree/sub")).expect("mkdir");
        std::fs::write(dir.join("tree/sub/a"), b"hello").expect("write");
        std::os::unix::fs::symlink("sub/a", dir.join("tree/link")).expect("symlink");
        let opts = |out: &str| ExtensionOptions {
            out: dir.join(out),
            files: vec![format!("{}:/opt/x", dir.join("tree").display())
                .parse()
                .expect("extra")],
            mtime: 7,
        };
        let one = build(&opts("one.tar.zst")).expect("build");
        let two = build(&opts("two.tar.zst")).expect("build again");
        assert_eq!(one.sha256, two.sha256);
        let bytes = std::fs::read(dir.join("one.tar.zst")).expect("read");
        assert_eq!(hex(&Sha256::digest(&bytes)), one.sha256);
        let tar = ruzstd::decoding::StreamingDecoder::new(bytes.as_slice()).expect("zstd");
        let mut names = Vec::new();
        for e in tar::Archive::new(tar).entries().expect("entries") {
            let e = e.expect("entry");
            let h = e.header();
            assert_eq!(
                (h.uid().ok(), h.gid().ok(), h.mtime().ok()),
                (Some(0), Some(0), Some(7))
            );
            names.push(e.path().expect("path").display().to_string());
        }
        assert_eq!(
            names,
            ["opt/", "opt/x/", "opt/x/link", "opt/x/sub/", "opt/x/sub/a"]
        );
        let none = build(&ExtensionOptions {
            out: dir.join("none"),
            files: Vec::new(),
            mtime: 0,
        })
        .expect_err("empty");
        assert!(none.to_string().contains("--add"), "{none}");
        assert!(!dir.join("none").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
