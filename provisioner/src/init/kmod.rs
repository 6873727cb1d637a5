//! Loading the kernel modules the image lists (one absolute path per line, dependencies
//! first, as plinth-boot wrote them) with finit_module(2).

use std::ffi::CString;
use std::path::Path;

use nix::kmod::{finit_module, ModuleInitFlags};

use crate::error::{io, Error, Result};

/// Loads every module listed in `list`. Returns (loaded, already loaded or not for this hardware, failures); a module that
/// fails is reported and the rest are still tried, since one missing driver should not
/// keep the node from reporting.
pub fn load_listed(list: &Path) -> Result<(usize, usize, Vec<String>)> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0, Vec::new())),
        Err(e) => return Err(io("reading", list)(e)),
    };
    let (mut loaded, mut present, mut failed) = (0, 0, Vec::new());
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        match load(Path::new(line)) {
            Ok(true) => loaded += 1,
            Ok(false) => present += 1,
            Err(e) => failed.push(e.to_string()),
        }
    }
    Ok((loaded, present, failed))
}

/// finit_module(2)'s flag for a compressed module file (linux/module.h).
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// Loads one module; `Ok(false)` when it was already loaded.
pub fn load(path: &Path) -> Result<bool> {
    let f = std::fs::File::open(path).map_err(io("opening module", path))?;
    let params = CString::default();
    // A compressed module (the image keeps them so when the kernel can decompress
    // them) is decompressed by the kernel only when told (MODULE_INIT_COMPRESSED_FILE,
    // which nix does not name).
    let compressed = path
        .extension()
        .is_some_and(|e| e == "xz" || e == "gz" || e == "zst");
    let flags = if compressed {
        ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
    } else {
        ModuleInitFlags::empty()
    };
    match finit_module(&f, &params, flags) {
        Ok(()) => Ok(true),
        Err(nix::Error::EEXIST) => Ok(false),
        // Not for this hardware (e.g. crc32c_intel on a CPU without SSE4.2): modprobe
        // would have tried the next alias; the generic module is in the list too.
        Err(nix::Error::ENODEV) => Ok(false),
        Err(e) => Err(Error::Sys {
            what: format!("loading module {}", path.display()),
            source: e,
        }),
    }
}

/// Loads module `name` and what it depends on, found through `modules.dep` under
/// `moddir` (`/lib/modules/$(uname -r)`). Returns whether anything was loaded.
pub fn load_by_name(moddir: &Path, name: &str) -> Result<bool> {
    let dep_path = moddir.join("modules.dep");
    let deps = std::fs::read_to_string(&dep_path).map_err(io("reading", &dep_path))?;
    let want = name.replace('-', "_");
    for line in deps.lines() {
        let Some((module, needs)) = line.split_once(':') else {
            continue;
        };
        let file = module.rsplit('/').next().unwrap_or(module);
        let stem = file.split(".ko").next().unwrap_or(file).replace('-', "_");
        if stem != want {
            continue;
        }
        let mut loaded = false;
        // modules.dep lists dependencies deepest last: load from the end.
        for d in needs.split_whitespace().rev().chain([module]) {
            loaded |= load(&moddir.join(d))?;
        }
        return Ok(loaded);
    }
    Err(Error::Config {
        what: format!("kernel module {name}"),
        reason: format!("not in {}", dep_path.display()),
    })
}
