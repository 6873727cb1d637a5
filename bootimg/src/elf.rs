//! Just enough of an ELF64 parser to find what a dynamic binary needs at run time:
//! its program interpreter (PT_INTERP) and, from the PT_DYNAMIC segment, DT_NEEDED,
//! DT_RUNPATH and DT_RPATH. It reads the program headers the way the dynamic loader
//! does (string table addresses mapped through the PT_LOAD segments), so stripped
//! binaries without section headers work too. No ldd: nothing is executed.

use std::path::Path;

use crate::error::{Error, Result};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// What the dynamic loader needs to run a binary.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dynamic {
    /// PT_INTERP: the loader's path, for executables.
    pub interp: Option<String>,
    /// DT_NEEDED library names, in order.
    pub needed: Vec<String>,
    /// DT_RUNPATH entries (colon-split), `$ORIGIN` unexpanded.
    pub runpath: Vec<String>,
    /// DT_RPATH entries (colon-split), used only when there is no DT_RUNPATH.
    pub rpath: Vec<String>,
}

/// True when `data` starts with the ELF magic.
pub fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

fn u16_at(d: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(d.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(off..off + 8)?.try_into().ok()?))
}

struct Phdr {
    p_type: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Parses the dynamic-linking information of the ELF file `data` (read from `path`,
/// which is only used in errors). Static binaries give an empty [`Dynamic`].
pub fn parse(path: &Path, data: &[u8]) -> Result<Dynamic> {
    let bad = |reason: &str| Error::Elf {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if !is_elf(data) {
        return Err(bad("no ELF magic"));
    }
    if data.get(4) != Some(&2) {
        return Err(bad("not a 64-bit ELF (only x86_64 node images are built)"));
    }
    if data.get(5) != Some(&1) {
        return Err(bad("not little-endian"));
    }
    let phoff = u64_at(data, 0x20).ok_or_else(|| bad("truncated header"))? as usize;
    let phentsize = u16_at(data, 0x36).ok_or_else(|| bad("truncated header"))? as usize;
    let phnum = u16_at(data, 0x38).ok_or_else(|| bad("truncated header"))? as usize;
    if phentsize < 56 {
        return Err(bad("program header entries are too small"));
    }
    let mut phdrs = Vec::with_capacity(phnum);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let get = || -> Option<Phdr> {
            Some(Phdr {
                p_type: u32_at(data, o)?,
                offset: u64_at(data, o + 8)?,
                vaddr: u64_at(data, o + 16)?,
                filesz: u64_at(data, o + 32)?,
            })
        };
        phdrs.push(get().ok_or_else(|| bad("program header table runs past the end of the file"))?);
    }
    let segment = |p: &Phdr| -> Result<&[u8]> {
        let start = p.offset as usize;
        let end = start
            .checked_add(p.filesz as usize)
            .ok_or_else(|| bad("segment size overflows"))?;
        data.get(start..end)
            .ok_or_else(|| bad("segment runs past the end of the file"))
    };
    let mut out = Dynamic::default();
    if let Some(p) = phdrs.iter().find(|p| p.p_type == PT_INTERP) {
        let s = segment(p)?;
        let s = s.split(|b| *b == 0).next().unwrap_or_default();
        out.interp = Some(String::from_utf8_lossy(s).into_owned());
    }
    let Some(dynp) = phdrs.iter().find(|p| p.p_type == PT_DYNAMIC) else {
        return Ok(out);
    };
    let dyn_seg = segment(dynp)?;
    let mut entries = Vec::new();
    let (mut strtab, mut strsz) = (None, None);
    for chunk in dyn_seg.chunks_exact(16) {
        let tag = u64_at(chunk, 0).unwrap_or(DT_NULL);
        let val = u64_at(chunk, 8).unwrap_or(0);
        match tag {
            DT_NULL => break,
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_NEEDED | DT_RPATH | DT_RUNPATH => entries.push((tag, val)),
            _ => {}
        }
    }
    if entries.is_empty() {
        return Ok(out);
    }
    let strtab = strtab.ok_or_else(|| bad("PT_DYNAMIC has no DT_STRTAB"))?;
    // DT_STRTAB is a virtual address: find the PT_LOAD segment that maps it.
    let load = phdrs
        .iter()
        .find(|p| p.p_type == PT_LOAD && p.vaddr <= strtab && strtab < p.vaddr + p.filesz)
        .ok_or_else(|| bad("DT_STRTAB is not inside any PT_LOAD segment"))?;
    let str_off = (load.offset + (strtab - load.vaddr)) as usize;
    let str_end = match strsz {
        Some(sz) => str_off.saturating_add(sz as usize).min(data.len()),
        None => data.len(),
    };
    let strs = data
        .get(str_off..str_end)
        .ok_or_else(|| bad("string table is outside the file"))?;
    let string = |off: u64| -> Result<String> {
        let s = strs
            .get(off as usize..)
            .ok_or_else(|| bad("dynamic string offset is outside the string table"))?;
        let s = s.split(|b| *b == 0).next().unwrap_or_default();
        Ok(String::from_utf8_lossy(s).into_owned())
    };
    for (tag, val) in entries {
        let s = string(val)?;
        match tag {
            DT_NEEDED => out.needed.push(s),
            DT_RUNPATH => out
                .runpath
                .extend(s.split(':').filter(|x| !x.is_empty()).map(String::from)),
            _ => out
                .rpath
                .extend(s.split(':').filter(|x| !x.is_empty()).map(String::from)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_binary_needs_libc() {
        let p = Path::new("/bin/ls");
        let Ok(data) = std::fs::read(p) else { return };
        let d = parse(p, &data).expect("parse /bin/ls");
        assert!(d.interp.as_deref().unwrap_or("").contains("ld-linux"));
        assert!(d.needed.iter().any(|n| n == "libc.so.6"), "{d:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let p = Path::new("x");
        assert!(parse(p, b"\x7fELF\x02\x01").is_err());
        let mut d = vec![0u8; 64];
        d[..4].copy_from_slice(b"\x7fELF");
        d[4] = 2;
        d[5] = 1;
        d[0x20] = 0xff;
        d[0x36] = 56;
        d[0x38] = 3;
        assert!(parse(p, &d).is_err());
    }
}
