//! A cache of compiled filters, so that the same profile is compiled once per build of
//! the runtime rather than at every create and exec (containerd's default profile takes
//! about 1.2 ms to compile here; reading its entry, a few tens of microseconds).
//!
//! The cache is a directory the caller owns with mode 0700 (inside the state root,
//! which is checked to be exactly that). An entry is keyed by a hash of the profile's
//! JSON (its bytes in the config file; serialising the parsed profile again took about
//! 0.2 ms of a create here) and of the runtime binary's ELF build id, and holds both in
//! full: a hit needs the same build id and the very same profile bytes, so neither a
//! hash collision nor a build of the runtime with another compiler or other tables can
//! return a wrong program. An entry that is not a regular file of the caller's, that others may write,
//! or that does not parse is ignored (and replaced).

use std::hash::{Hash, Hasher};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxSeccomp;

use super::Program;
use crate::error::Result;

/// At most this many entries: beyond it the cache starts afresh. One host runs a
/// handful of profiles; the bound only keeps odd workloads from filling the state root.
const MAX_ENTRIES: usize = 64;

const MAGIC: &[u8; 8] = b"PLSECC1\n";

/// [`super::compile`], through the cache in `dir` (made when missing). `raw` is the
/// profile's JSON as the config has it, which keys the entry; without it, the profile
/// serialised again. Any failure of the cache itself only costs the compile.
pub fn compile(profile: &LinuxSeccomp, raw: Option<&[u8]>, dir: &Path) -> Result<Program> {
    let json = match raw {
        Some(r) => Ok(std::borrow::Cow::Borrowed(r)),
        None => serde_json::to_vec(profile).map(std::borrow::Cow::Owned),
    };
    let (Some(build), Ok(json)) = (build_id(), json) else {
        return super::compile(profile);
    };
    let path = entry_path(dir, &build, &json);
    if let Some(p) = read(&path, &build, &json, profile) {
        return Ok(p);
    }
    let program = super::compile(profile)?;
    store(dir, &path, &build, &json, &program);
    Ok(program)
}

fn entry_path(dir: &Path, build: &[u8], json: &[u8]) -> PathBuf {
    // DefaultHasher::new() uses fixed keys: the same input names the same entry in
    // every process of this build.
    let mut h = std::hash::DefaultHasher::new();
    build.hash(&mut h);
    json.hash(&mut h);
    dir.join(format!("{:016x}", h.finish()))
}

/// The entry at `path` when it is sound and made for exactly this build and profile.
fn read(path: &Path, build: &[u8], json: &[u8], profile: &LinuxSeccomp) -> Option<Program> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let md = f.metadata().ok()?;
    let me = nix::unistd::geteuid().as_raw();
    if !md.is_file() || md.uid() != me || md.mode() & 0o022 != 0 {
        crate::logging::debug(&format!(
            "seccomp cache: ignoring {}: not a file of uid {me} that only it may write",
            path.display()
        ));
        return None;
    }
    let mut data = Vec::with_capacity(md.len() as usize);
    f.read_to_end(&mut data).ok()?;
    let program = decode(&data, build, json, profile);
    if program.is_none() {
        crate::logging::debug(&format!(
            "seccomp cache: ignoring {}: not an entry for this build and profile",
            path.display()
        ));
    }
    program
}

/// Layout: MAGIC, then three length-prefixed (u32, little-endian) fields: the build
/// id, the profile's JSON, the program (8 bytes per instruction); then the flags (u64).
fn encode(build: &[u8], json: &[u8], p: &Program) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + json.len() + 8 * p.filter.len());
    out.extend_from_slice(MAGIC);
    for field in [build, json] {
        out.extend_from_slice(&(field.len() as u32).to_le_bytes());
        out.extend_from_slice(field);
    }
    out.extend_from_slice(&(8 * p.filter.len() as u32).to_le_bytes());
    for i in &p.filter {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    // c_ulong is u32 on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    out.extend_from_slice(&(p.flags as u64).to_le_bytes());
    out
}

fn decode(data: &[u8], build: &[u8], json: &[u8], profile: &LinuxSeccomp) -> Option<Program> {
    let rest = data.strip_prefix(MAGIC.as_slice())?;
    let (b, rest) = field(rest)?;
    let (j, rest) = field(rest)?;
    let (code, rest) = field(rest)?;
    if b != build || j != json || code.len() % 8 != 0 {
        return None;
    }
    let n = code.len() / 8;
    if n == 0 || n > super::MAX_INSTRUCTIONS || rest.len() != 8 {
        return None;
    }
    let filter = code
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let flags = u64::from_le_bytes(rest.try_into().ok()?);
    Some(Program {
        filter,
        flags: libc::c_ulong::try_from(flags).ok()?,
        listener_path: profile.listener_path().clone(),
    })
}

/// One length-prefixed field and what follows it.
fn field(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// Writes the entry (mode 0600), starting the cache afresh when it is full. Failures
/// are only logged: the program is already compiled.
fn store(dir: &Path, path: &Path, build: &[u8], json: &[u8], p: &Program) {
    use std::os::unix::fs::DirBuilderExt;
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(dir) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            crate::logging::debug(&format!("seccomp cache: mkdir {}: {e}", dir.display()));
            return;
        }
    }
    let full = std::fs::read_dir(dir)
        .map(|rd| rd.count() >= MAX_ENTRIES)
        .unwrap_or(false);
    if full {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Err(e) = crate::atomic::write(path, &encode(build, json, p), 0o600) {
        crate::logging::debug(&format!("seccomp cache: {e}"));
    }
}

/// The runtime binary's ELF build id (NT_GNU_BUILD_ID), read from /proc/self/exe; None
/// when it has none (then nothing is cached).
fn build_id() -> Option<Vec<u8>> {
    let mut f = std::fs::File::open("/proc/self/exe").ok()?;
    let mut ehdr = [0u8; 64];
    f.read_exact(&mut ehdr).ok()?;
    // ELF64, little-endian: e_phoff at 32, e_phentsize at 54, e_phnum at 56.
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None;
    }
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().ok()?);
    let phentsize = usize::from(u16::from_le_bytes([ehdr[54], ehdr[55]]));
    let phnum = usize::from(u16::from_le_bytes([ehdr[56], ehdr[57]]));
    if phentsize < 56 || phnum > 64 {
        return None;
    }
    let mut phdrs = vec![0u8; phentsize * phnum];
    read_at(&f, phoff, &mut phdrs)?;
    for ph in phdrs.chunks_exact(phentsize) {
        const PT_NOTE: u32 = 4;
        if u32::from_le_bytes(ph[0..4].try_into().ok()?) != PT_NOTE {
            continue;
        }
        let off = u64::from_le_bytes(ph[8..16].try_into().ok()?);
        let size = u64::from_le_bytes(ph[32..40].try_into().ok()?);
        if size > 4096 {
            continue;
        }
        let mut notes = vec![0u8; size as usize];
        read_at(&f, off, &mut notes)?;
        if let Some(id) = gnu_build_id(&notes) {
            return Some(id.to_vec());
        }
    }
    None
}

fn read_at(f: &std::fs::File, off: u64, buf: &mut [u8]) -> Option<()> {
    use std::os::unix::fs::FileExt;
    f.read_exact_at(buf, off).ok()
}

/// The descriptor of the NT_GNU_BUILD_ID note ("GNU", type 3) among `notes`.
fn gnu_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let word =
            |i: usize| u32::from_le_bytes([notes[i], notes[i + 1], notes[i + 2], notes[i + 3]]);
        let (namesz, descsz, typ) = (word(0) as usize, word(4) as usize, word(8));
        let desc_at = 12 + align(namesz);
        let end = desc_at.checked_add(align(descsz))?;
        if notes.len() < desc_at + descsz {
            return None;
        }
        if typ == NT_GNU_BUILD_ID && &notes[12..12 + namesz] == b"GNU\0" {
            return Some(&notes[desc_at..desc_at + descsz]);
        }
        notes = notes.get(end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> LinuxSeccomp {
        serde_json::from_value(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]
        }))
        .expect("profile")
    }

    #[test]
    fn the_test_binary_has_a_build_id() {
        let id = build_id().expect("a build id");
        assert!(id.len() >= 8, "{id:?}");
    }

    #[test]
    fn an_entry_round_trips_and_is_bound_to_build_and_profile() {
        let p = profile();
        let json = serde_json::to_vec(&p).expect("json");
        let prog = super::super::compile(&p).expect("compile");
        let data = encode(b"build-1", &json, &prog);
        let back = decode(&data, b"build-1", &json, &p).expect("decode");
        assert_eq!(
            back.code().collect::<Vec<_>>(),
            prog.code().collect::<Vec<_>>()
        );
        assert_eq!(back.flags, prog.flags);
        assert!(
            decode(&data, b"build-2", &json, &p).is_none(),
            "another build"
        );
        let mut other = json.clone();
        other.push(b' ');
        assert!(
            decode(&data, b"build-1", &other, &p).is_none(),
            "another profile"
        );
        for cut in [0, 5, 20, data.len() - 1] {
            assert!(
                decode(&data[..cut], b"build-1", &json, &p).is_none(),
                "cut at {cut}"
            );
        }
        let mut longer = data.clone();
        longer.push(0);
        assert!(
            decode(&longer, b"build-1", &json, &p).is_none(),
            "trailing byte"
        );
    }
}
