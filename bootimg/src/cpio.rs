//! A newc ("070701") cpio writer, the format the kernel unpacks into its initramfs.
//!
//! The archive is written by this program rather than by `cpio(1)` so that no root is
//! needed (device nodes and owners are just header fields) and so that the bytes depend
//! only on the inputs: entries sorted by path, owners 0:0, one fixed mtime, inode
//! numbers assigned in order.

use std::collections::BTreeMap;
use std::io::Write;

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with its permission bits.
    Dir {
        /// Permission bits (e.g. 0o755).
        perm: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        perm: u32,
        /// The contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where it points, as written.
        target: String,
    },
    /// A character device node (e.g. /dev/console, which the kernel opens for init).
    CharDev {
        /// Permission bits.
        perm: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

impl Node {
    fn mode(&self) -> u32 {
        match self {
            Node::Dir { perm } => 0o040000 | perm,
            Node::File { perm, .. } => 0o100000 | perm,
            Node::Symlink { .. } => 0o120777,
            Node::CharDev { perm, .. } => 0o020000 | perm,
        }
    }

    fn body(&self) -> &[u8] {
        match self {
            Node::File { data, .. } => data,
            Node::Symlink { target } => target.as_bytes(),
            _ => &[],
        }
    }
}

/// An in-memory archive: image path (relative, no leading '/') to node, kept sorted.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

/// Normalises an image path: no leading or trailing '/', no empty or '.' components.
pub fn normalize(path: &str) -> String {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Archive {
        Archive::default()
    }

    /// Adds (or replaces) `node` at `path`, creating missing parent directories (0755).
    pub fn insert(&mut self, path: &str, node: Node) {
        let path = normalize(path);
        if path.is_empty() {
            return;
        }
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            self.entries
                .entry(parent.clone())
                .or_insert(Node::Dir { perm: 0o755 });
        }
        self.entries.insert(path, node);
    }

    /// The node at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries.get(&normalize(path))
    }

    /// Iterates over entries in archive order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the archive in newc format with every mtime set to `mtime`.
    pub fn write_to<W: Write>(&self, out: &mut W, mtime: u32) -> std::io::Result<()> {
        // Inode numbers in archive order: the same inputs always give the same numbers.
        for (ino, (path, node)) in (1u32..).zip(self.entries.iter()) {
            let nlink = if matches!(node, Node::Dir { .. }) {
                2
            } else {
                1
            };
            let (rmaj, rmin) = match node {
                Node::CharDev { major, minor, .. } => (*major, *minor),
                _ => (0, 0),
            };
            write_entry(
                out,
                ino,
                node.mode(),
                nlink,
                mtime,
                rmaj,
                rmin,
                path,
                node.body(),
            )?;
        }
        write_entry(out, 0, 0, 1, 0, 0, 0, "TRAILER!!!", &[])
    }
}

#[allow(clippy::too_many_arguments)]
fn write_entry<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    rdevmajor: u32,
    rdevminor: u32,
    name: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rdevmajor:08x}{rdevminor:08x}{namesize:08x}{check:08x}",
        uid = 0,
        gid = 0,
        size = body.len(),
        dmaj = 0,
        dmin = 0,
        check = 0,
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    // The header (110 bytes) plus the name are padded to a multiple of 4, and so is the body.
    out.write_all(&[0u8; 3][..pad4(110 + namesize)])?;
    out.write_all(body)?;
    out.write_all(&[0u8; 3][..pad4(body.len())])?;
    Ok(())
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a newc archive back: (path, mode, body).
    fn read(mut data: &[u8]) -> Option<Vec<(String, u32, Vec<u8>)>> {
        let mut out = Vec::new();
        loop {
            let hdr = data.get(..110)?;
            if &hdr[..6] != b"070701" {
                return None;
            }
            let field = |i: usize| -> Option<usize> {
                let s = std::str::from_utf8(hdr.get(6 + i * 8..14 + i * 8)?).ok()?;
                usize::from_str_radix(s, 16).ok()
            };
            let mode = field(1)? as u32;
            let size = field(6)?;
            let namesize = field(11)?;
            let name_end = 110 + namesize;
            let name = std::str::from_utf8(data.get(110..name_end - 1)?)
                .ok()?
                .to_string();
            let body_start = name_end + pad4(name_end);
            let body = data.get(body_start..body_start + size)?.to_vec();
            let next = body_start + size + pad4(size);
            if name == "TRAILER!!!" {
                return Some(out);
            }
            out.push((name, mode, body));
            data = data.get(next.min(data.len())..)?;
            if data.is_empty() {
                return None;
            }
        }
    }

    #[test]
    fn round_trip_sorted_with_parents() {
        let mut a = Archive::new();
        a.insert(
            "/usr/bin/x",
            Node::File {
                perm: 0o755,
                data: b"hello".to_vec(),
            },
        );
        a.insert(
            "init",
            Node::Symlink {
                target: "usr/bin/x".into(),
            },
        );
        a.insert(
            "dev/console",
            Node::CharDev {
                perm: 0o600,
                major: 5,
                minor: 1,
            },
        );
        let mut buf = Vec::new();
        a.write_to(&mut buf, 7).ok();
        let r = read(&buf).unwrap_or_default();
        let names: Vec<&str> = r.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "usr", "usr/bin", "usr/bin/x"]
        );
        assert_eq!(r[5].2, b"hello");
        assert_eq!(r[1].1, 0o020600);
        assert_eq!(buf.len() % 4, 0);
    }
}
