//! cgroup v2 device control: the rules compiled into a BPF_PROG_TYPE_CGROUP_DEVICE
//! program (like runc's devicefilter: the last matching rule wins, no match denies),
//! loaded with bpf(2) and attached to the container's cgroup. nix has no bpf(2), so
//! the calls go through libc.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::DeviceRule;
use crate::error::{Error, Result};

/// The name our programs carry, so an update finds and replaces only its own.
const PROG_NAME: &[u8] = b"plinth_devices";

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// bpf_cgroup_dev_ctx.access_type: low 16 bits the type, high 16 the access.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One eBPF instruction, as the kernel lays it out.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Insn {
    pub code: u8,
    /// dst in the low nibble, src in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes: class | op | source.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const ALU64_MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const ALU64_AND_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JMP_JNE_X: u8 = 0x5d; // BPF_JMP | BPF_JNE | BPF_X
const JMP_EXIT: u8 = 0x95;

/// Compiles `rules` (in config order) into a program. Registers after the prologue:
/// r2 type, r3 access, r4 major, r5 minor.
pub(super) fn compile(rules: &[DeviceRule]) -> std::result::Result<Vec<Insn>, String> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    // Checked newest rule first, so the first match in the program is the last
    // matching rule of the list.
    for rule in rules.iter().rev() {
        rule.validate()?;
        // Each test jumps past the block when it fails; the offsets are known only
        // once the block is complete.
        let mut tests: Vec<(u8, u8, u8, i32)> = Vec::new();
        match rule.typ {
            'c' => tests.push((JMP_JNE_K, 2, 0, DEV_CHAR)),
            'b' => tests.push((JMP_JNE_K, 2, 0, DEV_BLOCK)),
            _ => {}
        }
        let mut access = 0;
        for c in rule.access.chars() {
            access |= match c {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                _ => ACC_MKNOD,
            };
        }
        let full = ACC_READ | ACC_WRITE | ACC_MKNOD;
        let mut prefix = Vec::new();
        if access != full {
            // Matches when the requested access is within the rule's: (r3 & A) == r3.
            prefix.push(insn(ALU64_MOV_X, 1, 3, 0, 0));
            prefix.push(insn(ALU64_AND_K, 1, 0, 0, access));
        }
        let major = DeviceRule::num(rule.major);
        let minor = DeviceRule::num(rule.minor);
        let n_tests = tests.len()
            + usize::from(access != full)
            + usize::from(major.is_some())
            + usize::from(minor.is_some());
        let block_len = n_tests + prefix.len() + 2;
        let mut block = Vec::with_capacity(block_len);
        let push_jump = |block: &mut Vec<Insn>, code: u8, dst: u8, src: u8, imm: i32| {
            let after = block_len - block.len() - 1;
            block.push(insn(code, dst, src, after as i16, imm));
        };
        for (code, dst, src, imm) in tests {
            push_jump(&mut block, code, dst, src, imm);
        }
        if access != full {
            block.extend(prefix);
            push_jump(&mut block, JMP_JNE_X, 1, 3, 0);
        }
        if let Some(m) = major {
            push_jump(&mut block, JMP_JNE_K, 4, 0, m as i32);
        }
        if let Some(m) = minor {
            push_jump(&mut block, JMP_JNE_K, 5, 0, m as i32);
        }
        block.push(insn(ALU64_MOV_K, 0, 0, 0, i32::from(rule.allow)));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        debug_assert_eq!(block.len(), block_len);
        let unconditional = n_tests == 0;
        p.extend(block);
        if unconditional {
            // Nothing after an unconditional verdict runs, and the verifier rejects
            // unreachable instructions.
            return Ok(p);
        }
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    Ok(p)
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdByIdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// bpf(2) on an attribute struct; the return value or errno.
fn bpf<T>(cmd: libc::c_int, attr: &mut T) -> std::result::Result<libc::c_long, nix::errno::Errno> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] bpf_attr variant of exactly the
    // size passed; any pointers inside it point to buffers the caller keeps alive
    // for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a descriptor bpf(2) just returned.
fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: `fd` is a new descriptor the kernel just returned to us and that
    // nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn load(prog: &[Insn]) -> std::result::Result<OwnedFd, (nix::errno::Errno, String)> {
    let license = b"Apache\0";
    let mut name = [0u8; 16];
    name[..PROG_NAME.len()].copy_from_slice(PROG_NAME);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            // Again with the verifier's log, which says why.
            let mut log = vec![0u8; 1 << 16];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            match bpf(BPF_PROG_LOAD, &mut attr) {
                Ok(fd) => Ok(owned(fd)),
                Err(_) => {
                    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
                    Err((e, String::from_utf8_lossy(&log[..end]).into_owned()))
                }
            }
        }
    }
}

/// The programs attached to the cgroup that carry our name.
fn ours_attached(cg: RawFd) -> std::result::Result<Vec<OwnedFd>, nix::errno::Errno> {
    let mut ids = vec![0u32; 64];
    let mut q = QueryAttr {
        target_fd: cg as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut q)?;
    let mut out = Vec::new();
    for id in ids.iter().take(q.prog_cnt as usize) {
        let mut a = GetFdByIdAttr {
            prog_id: *id,
            ..Default::default()
        };
        let fd = match bpf(BPF_PROG_GET_FD_BY_ID, &mut a) {
            Ok(fd) => owned(fd),
            // Detached meanwhile.
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(e) => return Err(e),
        };
        // struct bpf_prog_info: name[16] sits at offset 64.
        let mut info = [0u64; 32];
        let mut ia = InfoAttr {
            bpf_fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of_val(&info) as u32,
            info: info.as_mut_ptr() as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut ia)?;
        let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let name = &bytes[64..80];
        let len = name.iter().position(|b| *b == 0).unwrap_or(16);
        if &name[..len] == PROG_NAME {
            out.push(fd);
        }
    }
    Ok(out)
}

/// Compiles, loads and attaches the rules to the cgroup at `dir`, then detaches the
/// program an earlier create/update attached there, so exactly one of ours remains.
/// (With BPF_F_ALLOW_MULTI every attached program must allow an access, so leaving
/// the old one would keep its denials.)
pub(super) fn apply(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    let prog = compile(rules).map_err(|m| Error::config("linux.resources.devices", m))?;
    let cg = File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    let cgfd = cg.as_raw_fd();
    let old = ours_attached(cgfd)
        .map_err(|e| Error::cgroup(dir, format!("bpf(BPF_PROG_QUERY) for device programs: {e}")))?;
    let fd = load(&prog).map_err(|(e, log)| {
        Error::cgroup(
            dir,
            format!(
                "bpf(BPF_PROG_LOAD) of the device program ({} instructions): {e}{}",
                prog.len(),
                if log.is_empty() {
                    String::new()
                } else {
                    format!("; verifier: {}", log.trim())
                }
            ),
        )
    })?;
    let mut a = AttachAttr {
        target_fd: cgfd as u32,
        attach_bpf_fd: fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    bpf(BPF_PROG_ATTACH, &mut a).map_err(|e| {
        Error::cgroup(
            dir,
            format!("bpf(BPF_PROG_ATTACH) of the device program: {e}"),
        )
    })?;
    for o in old {
        let mut d = AttachAttr {
            target_fd: cgfd as u32,
            attach_bpf_fd: o.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            ..Default::default()
        };
        bpf(BPF_PROG_DETACH, &mut d).map_err(|e| {
            Error::cgroup(
                dir,
                format!("bpf(BPF_PROG_DETACH) of the previous device program: {e}"),
            )
        })?;
    }
    Ok(())
}

/// How many of our device programs are attached to the cgroup at `dir` (for tests and
/// diagnostics).
#[cfg(test)]
pub(super) fn attached_count(dir: &Path) -> Result<usize> {
    let cg = File::open(dir).map_err(|e| Error::io("open", dir, e))?;
    ours_attached(cg.as_raw_fd())
        .map(|v| v.len())
        .map_err(|e| Error::cgroup(dir, format!("bpf(BPF_PROG_QUERY): {e}")))
}
