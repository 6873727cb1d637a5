//! The run-time closure of dynamic ELF binaries: the loader (PT_INTERP) and every
//! DT_NEEDED library, found the way ld.so finds them (DT_RPATH/DT_RUNPATH with $ORIGIN,
//! then the ld.so.conf directories, then the default ones), and copied into the image
//! at the same paths, symlinks included (Debian's /lib64 -> /usr/lib... links must exist
//! in the image for PT_INTERP to resolve).

use std::collections::{BTreeSet, HashSet};
use std::path::{Component, Path, PathBuf};

use crate::cpio::{Archive, Node};
use crate::elf;
use crate::error::{io, Error, Result};

/// Where libraries are searched for, in order, after a binary's own run paths.
#[derive(Debug, Clone)]
pub struct SearchPath {
    dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// The host's: /etc/ld.so.conf (with its `include` globs), then the default directories.
    pub fn host() -> SearchPath {
        let mut dirs = Vec::new();
        read_ld_so_conf(Path::new("/etc/ld.so.conf"), &mut dirs, 0);
        for d in [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
        ] {
            dirs.push(PathBuf::from(d));
        }
        let mut seen = HashSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        SearchPath { dirs }
    }

    /// Only the given directories (for tests).
    pub fn from_dirs(dirs: Vec<PathBuf>) -> SearchPath {
        SearchPath { dirs }
    }
}

fn read_ld_so_conf(path: &Path, dirs: &mut Vec<PathBuf>, depth: u32) {
    // Includes may nest; a loop of includes must not recurse forever.
    if depth > 8 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pat) = line.strip_prefix("include") {
            for f in glob_simple(pat.trim()) {
                read_ld_so_conf(&f, dirs, depth + 1);
            }
        } else if line.starts_with('/') {
            dirs.push(PathBuf::from(line));
        }
    }
}

/// Expands a pattern whose last component may contain one '*' (all ld.so.conf uses).
fn glob_simple(pat: &str) -> Vec<PathBuf> {
    let p = Path::new(pat);
    let (Some(dir), Some(name)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Some((pre, post)) = name.split_once('*') else {
        return vec![p.to_path_buf()];
    };
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(pre) && n.ends_with(post))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Adds the host file `src` to the archive at the same path, replicating every symlink
/// met on the way (in directories and in the file itself), so that the path resolves in
/// the image as it does on the host. Returns the real file's host path.
pub fn mirror_host_path(ar: &mut Archive, src: &Path) -> Result<PathBuf> {
    let mut cur = PathBuf::from("/");
    let comps: Vec<_> = src
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let mut hops = 0;
    let mut rest: Vec<PathBuf> = comps
        .iter()
        .rev()
        .map(|c| PathBuf::from(c.as_os_str()))
        .collect();
    while let Some(c) = rest.pop() {
        let next = cur.join(&c);
        let meta = std::fs::symlink_metadata(&next).map_err(io("reading", &next))?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Err(Error::Io {
                    what: "resolving",
                    path: src.to_path_buf(),
                    source: std::io::Error::other("too many levels of symbolic links"),
                });
            }
            let target = std::fs::read_link(&next).map_err(io("reading link", &next))?;
            let tstr = target.to_string_lossy().into_owned();
            ar.insert(&next.to_string_lossy(), Node::Symlink { target: tstr });
            // Continue from the link's target, then the remaining components.
            let resolved = if target.is_absolute() {
                target
            } else {
                cur.join(target)
            };
            let mut t: Vec<PathBuf> = Vec::new();
            cur = PathBuf::from("/");
            for rc in resolved.components() {
                match rc {
                    Component::Normal(x) => t.push(PathBuf::from(x)),
                    Component::ParentDir => t.push(PathBuf::from("..")),
                    _ => {}
                }
            }
            for x in t.into_iter().rev() {
                rest.push(x);
            }
            continue;
        }
        if c.as_os_str() == ".." {
            cur.pop();
            continue;
        }
        cur = next;
        if meta.is_file() {
            if !rest.is_empty() {
                return Err(Error::Io {
                    what: "resolving",
                    path: src.to_path_buf(),
                    source: std::io::Error::other("a file is used as a directory"),
                });
            }
            use std::os::unix::fs::PermissionsExt;
            let data = std::fs::read(&cur).map_err(io("reading", &cur))?;
            let perm = meta.permissions().mode() & 0o7777;
            ar.insert(&cur.to_string_lossy(), Node::File { perm, data });
        }
    }
    Ok(cur)
}

/// Finds one DT_NEEDED library for `needer`.
fn find_library(
    search: &SearchPath,
    needer: &Path,
    dynamic: &elf::Dynamic,
    lib: &str,
) -> Result<PathBuf> {
    if lib.contains('/') {
        return Ok(PathBuf::from(lib));
    }
    let origin = needer
        .parent()
        .unwrap_or(Path::new("/"))
        .to_string_lossy()
        .into_owned();
    // ld.so: DT_RPATH only when there is no DT_RUNPATH; either before the system dirs.
    let own = if dynamic.runpath.is_empty() {
        &dynamic.rpath
    } else {
        &dynamic.runpath
    };
    let mut tried = Vec::new();
    let own_dirs = own
        .iter()
        .map(|d| PathBuf::from(d.replace("$ORIGIN", &origin).replace("${ORIGIN}", &origin)));
    for dir in own_dirs.chain(search.dirs.iter().cloned()) {
        let cand = dir.join(lib);
        if cand.is_file() {
            return Ok(cand);
        }
        tried.push(dir.display().to_string());
    }
    Err(Error::LibraryNotFound {
        needer: needer.to_path_buf(),
        lib: lib.to_string(),
        searched: tried.join(", "),
    })
}

/// Adds the loader and the DT_NEEDED closure of the ELF file `bin` (host path, already
/// parsed into `dynamic`) to the archive. Returns the host paths added, sorted.
pub fn add_closure(
    ar: &mut Archive,
    search: &SearchPath,
    bin: &Path,
    dynamic: elf::Dynamic,
) -> Result<BTreeSet<PathBuf>> {
    let mut added = BTreeSet::new();
    let mut queue = vec![(bin.to_path_buf(), dynamic)];
    let mut done: HashSet<PathBuf> = HashSet::new();
    while let Some((who, dynamic)) = queue.pop() {
        let mut wanted = Vec::new();
        if let Some(interp) = &dynamic.interp {
            wanted.push(PathBuf::from(interp));
        }
        for lib in &dynamic.needed {
            wanted.push(find_library(search, &who, &dynamic, lib)?);
        }
        for w in wanted {
            if !done.insert(w.clone()) {
                continue;
            }
            let real = mirror_host_path(ar, &w)?;
            added.insert(w.clone());
            // mirror_host_path has just read the file into the archive: parse it there.
            let Some(Node::File { data, .. }) = ar.get(&real.to_string_lossy()) else {
                return Err(Error::Io {
                    what: "reading",
                    path: real,
                    source: std::io::Error::other("not a regular file"),
                });
            };
            if elf::is_elf(data) {
                queue.push((w, elf::parse(&real, data)?));
            }
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_symlinks_on_the_way() {
        let root = std::env::temp_dir().join(format!("plinth-libs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        std::fs::write(root.join("usr/lib/real.so"), b"x").expect("write");
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).expect("symlink");
        std::os::unix::fs::symlink("real.so", root.join("usr/lib/link.so")).expect("symlink");
        let mut ar = Archive::new();
        let real = mirror_host_path(&mut ar, &root.join("lib/link.so")).expect("mirror");
        assert_eq!(real, root.join("usr/lib/real.so"));
        let r = root.to_string_lossy().trim_start_matches('/').to_string();
        assert_eq!(
            ar.get(&format!("{r}/lib")),
            Some(&Node::Symlink {
                target: "usr/lib".into()
            })
        );
        assert_eq!(
            ar.get(&format!("{r}/usr/lib/link.so")),
            Some(&Node::Symlink {
                target: "real.so".into()
            })
        );
        assert!(matches!(
            ar.get(&format!("{r}/usr/lib/real.so")),
            Some(Node::File { .. })
        ));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn missing_library_names_needer_and_dirs() {
        let d = elf::Dynamic {
            needed: vec!["libnope.so.9".into()],
            ..Default::default()
        };
        let search = SearchPath::from_dirs(vec![PathBuf::from("/nonexistent")]);
        let err = find_library(&search, Path::new("/usr/bin/tool"), &d, "libnope.so.9")
            .expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("/usr/bin/tool")
                && msg.contains("libnope.so.9")
                && msg.contains("/nonexistent"),
            "{msg}"
        );
    }
}
