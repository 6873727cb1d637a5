//! /proc/self/mountinfo, parsed: which file systems are mounted where.

use std::path::PathBuf;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Mount id.
    pub id: u32,
    /// Parent mount id.
    pub parent: u32,
    /// The root of the mount inside its file system.
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Per-mount options (rw, nosuid, ...).
    pub options: String,
    /// Optional fields (shared:N, master:N, ...).
    pub optional: String,
    /// File-system type.
    pub fstype: String,
    /// Mount source.
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

/// Undoes the octal escapes (`\040` for a space) the kernel writes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
                .ok_or(())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.splitn(3, ' ').collect();
    if l.len() < 6 || r.len() < 2 {
        return None;
    }
    Some(Entry {
        id: l[0].parse().ok()?,
        parent: l[1].parse().ok()?,
        root: PathBuf::from(unescape(l[3])),
        mount_point: PathBuf::from(unescape(l[4])),
        options: l[5].to_string(),
        optional: l[6..].join(" "),
        fstype: r[0].to_string(),
        source: unescape(r[1]),
        super_options: r.get(2).unwrap_or(&"").to_string(),
    })
}

/// Reads the calling process's mountinfo.
pub fn read() -> std::io::Result<Vec<Entry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mount that holds `path`: the entry with the longest mount point that is a
/// prefix of it (later entries win, as later mounts cover earlier ones).
pub fn containing<'a>(entries: &'a [Entry], path: &std::path::Path) -> Option<&'a Entry> {
    let mut best: Option<&Entry> = None;
    for e in entries {
        if path.starts_with(&e.mount_point)
            && best
                .is_none_or(|b| e.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len())
        {
            best = Some(e);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_cgroup_line() {
        let e =
            parse("32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(e[0].fstype, "cgroup");
        assert_eq!(e[0].super_options, "rw,cpu");
        assert_eq!(e[0].optional, "shared:9");
    }

    #[test]
    fn unescapes_spaces() {
        let e = parse("1 0 0:1 / /a\\040b rw - tmpfs none rw\n");
        assert_eq!(e[0].mount_point, PathBuf::from("/a b"));
    }
}
