//! The runtime runs from a sealed copy of itself whenever a process of its own will
//! enter a container (create, run, exec). Until that process execs the container's
//! program, its /proc/PID/exe is the runtime's binary; a container process holding
//! CAP_SYS_PTRACE could open it and, once the runtime is done, write into the host's
//! binary (CVE-2019-5736). From a memfd sealed against writes, /proc/PID/exe leads to
//! that memfd, which no one can change.

use std::ffi::CString;
use std::io::Seek;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};

use crate::error::{Error, Result};

/// The seals that make the copy immutable.
fn seals() -> SealFlag {
    SealFlag::F_SEAL_SEAL | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE
}

/// Whether `fd` is a memfd carrying at least our seals.
fn is_sealed(fd: &impl AsFd) -> bool {
    fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS)
        .map(|s| SealFlag::from_bits_truncate(s).contains(seals()))
        .unwrap_or(false)
}

/// Re-executes the runtime from a sealed memfd copy of its binary, with the same
/// arguments and environment, unless it already runs from one. Returns only when it
/// already does; otherwise execution goes on in the new image (or fails with an error).
pub fn ensure_sealed() -> Result<()> {
    let exe = std::fs::File::open("/proc/self/exe")
        .map_err(|e| Error::io("open", "/proc/self/exe", e))?;
    if is_sealed(&exe) {
        return Ok(());
    }
    let name = c"plinth-sealed";
    let memfd: OwnedFd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
        .map_err(|e| Error::sys("memfd_create for the sealed runtime copy", e))?;
    let mut dst = std::fs::File::from(memfd);
    let mut src = exe;
    // A plain read/write copy. std::io::copy would use copy_file_range (EXDEV from
    // another file system to the memfd) and then sendfile, whose spliced pages can
    // still be pinned when the seal comes: F_SEAL_WRITE then fails with EBUSY
    // (seen on this kernel about once in a few hundred creates).
    let mut buf = vec![0u8; 1 << 18];
    loop {
        let n = std::io::Read::read(&mut src, &mut buf)
            .map_err(|e| Error::io("read", "/proc/self/exe", e))?;
        if n == 0 {
            break;
        }
        std::io::Write::write_all(&mut dst, &buf[..n])
            .map_err(|e| Error::io("copy the runtime binary to", "memfd", e))?;
    }
    dst.rewind().map_err(|e| Error::io("rewind", "memfd", e))?;
    fcntl(&dst, FcntlArg::F_ADD_SEALS(seals()))
        .map_err(|e| Error::sys("seal the runtime's memfd copy", e))?;
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid("an argument contains a NUL byte".into()))?;
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv)
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Invalid("an environment variable contains a NUL byte".into()))?;
    // The memfd is close-on-exec: execveat(AT_EMPTY_PATH) runs it all the same for an
    // ELF binary (only a script would need the fd to survive).
    let e = nix::unistd::fexecve(&dst, &args, &env);
    match e {
        Err(e) => Err(Error::sys("re-execute the runtime from its sealed copy", e)),
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_file_is_not_sealed_and_a_sealed_memfd_is() {
        let f = std::fs::File::open("/proc/self/exe").expect("exe");
        assert!(!is_sealed(&f));
        let m =
            memfd_create(c"t", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).expect("memfd");
        assert!(!is_sealed(&m));
        fcntl(&m, FcntlArg::F_ADD_SEALS(seals())).expect("seal");
        assert!(is_sealed(&m));
        // Sealed against writes: the kernel refuses them.
        let mut file = std::fs::File::from(m);
        assert!(std::io::Write::write(&mut file, b"x").is_err());
    }
}
