//! `plinth-boot build`: assembles vmlinuz, initrd and boot.ipxe in a temporary
//! directory beside the output and renames it into place at the end, so that a failed
//! build never leaves something that looks complete.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cpio::{self, Archive, Node};
use crate::error::{io, Error, Result};
use crate::kernel::{Compression, Kernel};
use crate::libs::{self, SearchPath};
use crate::modules::{self, ModuleIndex};
use crate::progress::Progress;
use crate::{elf, ipxe};

/// The modules a node needs (the list); their dependencies come along.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "overlay",
    "br_netfilter",
    "veth",
    "bridge",
    "nf_conntrack",
    // The containers' way out: masquerade through nftables.
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nft_ct",
    // iptables-nft's matches and targets that have no native nftables form (the CNI
    // bridge's `-m comment` and `-j MASQUERADE`), for the Kubernetes extension's
    // iptables: the node has no modprobe for the kernel to load them on demand.
    "nft_compat",
    "xt_comment",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_conntrack",
    "xt_mark",
];

/// The host's CA bundle (Debian's ca-certificates), copied into the image when there.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// newuidmap and newgidmap, taken from the host into the image beside the runtime.
pub const ID_MAP_HELPERS: &[&str] = &["/usr/bin/newuidmap", "/usr/bin/newgidmap"];

/// Where the module load list is written in the image; plinth-init reads it.
pub const MODULES_LIST: &str = "etc/plinth/modules";

/// One `--extra SRC:DEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    /// Host file or directory.
    pub src: PathBuf,
    /// Absolute path in the image.
    pub dest: String,
}

impl std::str::FromStr for Extra {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Extra, String> {
        let (src, dest) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not SRC:DEST"))?;
        if src.is_empty() || !dest.starts_with('/') || dest.len() < 2 {
            return Err(format!(
                "{s:?}: SRC must be a path and DEST an absolute path in the image"
            ));
        }
        Ok(Extra {
            src: PathBuf::from(src),
            dest: dest.to_string(),
        })
    }
}

/// Everything `build` needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The output directory (created or replaced).
    pub out: PathBuf,
    /// The kernel image; default: the newest in the cache.
    pub kernel: Option<PathBuf>,
    /// Extra files or directories.
    pub extras: Vec<Extra>,
    /// Modules to include and load at boot (with their dependencies).
    pub modules: Vec<String>,
    /// Directory with plinth-init and plinth; `None` leaves them out (a bare image).
    pub plinth_dir: Option<PathBuf>,
    /// A plinth-init to use instead of the one in `plinth_dir` (e.g. a static build).
    pub init: Option<PathBuf>,
    /// A plinth runtime to use instead of the one in `plinth_dir` (e.g. the static musl
    /// build in target/dist).
    pub runtime: Option<PathBuf>,
    /// Cache directories searched for the default kernel.
    pub cache_dirs: Vec<PathBuf>,
    /// mtime of every archive entry (SOURCE_DATE_EPOCH).
    pub mtime: u32,
    /// Extra kernel arguments for boot.ipxe.
    pub cmdline: String,
}

/// What went into the image, for the build report.
#[derive(Debug, Default)]
pub struct Report {
    /// (part, detail, bytes) in the order they were added.
    pub parts: Vec<(String, String, u64)>,
    /// Uncompressed cpio size.
    pub cpio_size: u64,
    /// Number of archive entries.
    pub entries: usize,
    /// initrd size on disk.
    pub initrd_size: u64,
    /// vmlinuz size.
    pub kernel_size: u64,
    /// Built-in modules that were asked for (nothing to load).
    pub builtin: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (part, detail, size) in &self.parts {
            writeln!(f, "  {part:<14} {:>10}  {detail}", human(*size))?;
        }
        if !self.builtin.is_empty() {
            writeln!(
                f,
                "  built in (nothing to load): {}",
                self.builtin.join(", ")
            )?;
        }
        writeln!(
            f,
            "  {:<14} {:>10}  {} entries, uncompressed",
            "cpio",
            human(self.cpio_size),
            self.entries
        )?;
        writeln!(
            f,
            "vmlinuz {}  initrd {}",
            human(self.kernel_size),
            human(self.initrd_size)
        )
    }
}

/// Formats a byte count.
pub fn human(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Reads SOURCE_DATE_EPOCH (0 when unset); a malformed value is an error naming it.
pub fn source_date_epoch() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Err(_) => Ok(0),
        Ok(v) => v.trim().parse::<u32>().map_err(|e| Error::BadArgument {
            arg: format!("SOURCE_DATE_EPOCH={v}"),
            reason: format!("not a number of seconds since 1970 that fits 32 bits: {e}"),
        }),
    }
}

/// Tracks which source claimed each image path, to refuse two sources for one path.
#[derive(Debug, Default)]
pub(crate) struct Claims(BTreeMap<String, String>);

impl Claims {
    fn claim(&mut self, dest: &str, src: &str) -> Result<()> {
        let d = cpio::normalize(dest);
        if let Some(first) = self.0.get(&d) {
            return Err(Error::Conflict {
                dest: format!("/{d}"),
                first: first.clone(),
                second: src.to_string(),
            });
        }
        self.0.insert(d, src.to_string());
        Ok(())
    }
}

/// Builds the image. Nothing is left at `opts.out` unless everything succeeded.
pub fn build(opts: &BuildOptions) -> Result<Report> {
    let kernel = match &opts.kernel {
        Some(k) => Kernel::open(k)?,
        None => Kernel::find_default(&opts.cache_dirs)?,
    };
    let (archive, mut report) = assemble(opts, &kernel)?;

    let name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::BadArgument {
            arg: format!("-o {}", opts.out.display()),
            reason: "needs a directory name".into(),
        })?;
    let parent = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
    let result = write_outputs(&tmp, &kernel, &archive, opts, &mut report);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Swap the finished directory into place; an old build is moved aside first and
    // removed only after the new one is there.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = opts.out.exists();
    if had_old {
        std::fs::rename(&opts.out, &old).map_err(io("moving aside", &opts.out))?;
    }
    if let Err(e) = std::fs::rename(&tmp, &opts.out) {
        if had_old {
            let _ = std::fs::rename(&old, &opts.out);
        }
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Io {
            what: "renaming into place",
            path: opts.out.clone(),
            source: e,
        });
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(report)
}

fn write_outputs(
    tmp: &Path,
    kernel: &Kernel,
    archive: &Archive,
    opts: &BuildOptions,
    report: &mut Report,
) -> Result<()> {
    let vmlinuz = tmp.join("vmlinuz");
    std::fs::copy(&kernel.image, &vmlinuz).map_err(io("copying kernel to", &vmlinuz))?;
    std::fs::set_permissions(&vmlinuz, std::fs::Permissions::from_mode(0o644))
        .map_err(io("chmod", &vmlinuz))?;
    report.kernel_size = std::fs::metadata(&vmlinuz)
        .map_err(io("reading", &vmlinuz))?
        .len();

    let mut cpio_bytes = Vec::new();
    archive
        .write_to(&mut cpio_bytes, opts.mtime)
        .map_err(io("writing cpio for", tmp))?;
    report.cpio_size = cpio_bytes.len() as u64;
    report.entries = archive.len();
    let initrd = tmp.join("initrd");
    let data = match kernel.compression() {
        Compression::Gzip => gzip(&cpio_bytes).map_err(io("compressing", &initrd))?,
        Compression::None => cpio_bytes,
    };
    std::fs::write(&initrd, &data).map_err(io("writing", &initrd))?;
    report.initrd_size = data.len() as u64;

    let script = tmp.join("boot.ipxe");
    std::fs::write(&script, ipxe::script(&opts.cmdline)).map_err(io("writing", &script))?;
    Ok(())
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    // A fixed header (mtime 0, no name) keeps the output a function of the input only.
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    let mut prog = Progress::new("compressing", data.len().div_ceil(1 << 20));
    for chunk in data.chunks(1 << 20) {
        enc.write_all(chunk)?;
        prog.inc();
    }
    enc.finish()
}

fn assemble(opts: &BuildOptions, kernel: &Kernel) -> Result<(Archive, Report)> {
    let mut ar = Archive::new();
    let mut report = Report::default();
    let mut claims = Claims(BTreeMap::new());
    let search = SearchPath::host();

    for d in ["proc", "sys", "dev", "run", "tmp", "etc", "root", "var"] {
        ar.insert(d, Node::Dir { perm: 0o755 });
    }
    ar.insert("tmp", Node::Dir { perm: 0o1777 });
    ar.insert("root", Node::Dir { perm: 0o700 });
    // The kernel opens /dev/console for init before anything is mounted.
    ar.insert(
        "dev/console",
        Node::CharDev {
            perm: 0o600,
            major: 5,
            minor: 1,
        },
    );
    ar.insert(
        "dev/null",
        Node::CharDev {
            perm: 0o666,
            major: 1,
            minor: 3,
        },
    );

    // The plinth binaries.
    if let Some(dir) = &opts.plinth_dir {
        let init = opts.init.clone().unwrap_or_else(|| dir.join("plinth-init"));
        if !init.is_file() {
            return Err(Error::Missing {
                what: "plinth-init",
                path: init,
                hint: " (run `make build`, or pass --plinth-dir DIR or --no-plinth)",
            });
        }
        add_binary(
            &mut ar,
            &mut report,
            &mut claims,
            &search,
            &init,
            "/usr/bin/plinth-init",
        )?;
        ar.insert(
            "init",
            Node::Symlink {
                target: "usr/bin/plinth-init".into(),
            },
        );
        // The directory's runtime is optional (an image of plinth-init alone); one named
        // on the command line is not.
        let (runtime, required) = match &opts.runtime {
            Some(r) => (r.clone(), true),
            None => (dir.join("plinth"), false),
        };
        if runtime.is_file() {
            add_binary(
                &mut ar,
                &mut report,
                &mut claims,
                &search,
                &runtime,
                "/usr/bin/plinth",
            )?;
            // A rootless runtime maps a container's ids through these (setuid root,
            // with their library closure); the node runs its containers rootless.
            for helper in ID_MAP_HELPERS {
                let src = Path::new(helper);
                if !src.is_file() {
                    return Err(Error::Missing {
                        what: "id-map helper",
                        path: src.to_path_buf(),
                        hint: " (Debian's uidmap package; `make deps` installs it)",
                    });
                }
                add_binary(&mut ar, &mut report, &mut claims, &search, src, helper)?;
            }
        } else if required {
            return Err(Error::Missing {
                what: "plinth runtime",
                path: runtime,
                hint: " (run `make build`, which writes target/dist/plinth)",
            });
        }
    }

    // The public roots, for a node's HTTPS to registries an operator names without a
    // CA of their own.
    if opts.plinth_dir.is_some() && Path::new(CA_BUNDLE).is_file() {
        let data = std::fs::read(CA_BUNDLE).map_err(io("reading", Path::new(CA_BUNDLE)))?;
        add_file_data(
            &mut ar,
            &mut report,
            &mut claims,
            &search,
            Path::new(CA_BUNDLE),
            CA_BUNDLE,
            data,
            0o644,
        )?;
    }

    // Extras given on the command line.
    for extra in &opts.extras {
        add_extra(&mut ar, &mut report, &mut claims, &search, extra)?;
    }

    // Kernel modules.
    if !opts.modules.is_empty() {
        let dir = kernel.modules_dir.clone().ok_or_else(|| Error::Missing {
            what: "modules.dep for kernel",
            path: kernel.image.clone(),
            hint: " (expected lib/modules/<release>/modules.dep beside the kernel's boot/; run depmod -b)",
        })?;
        let idx = ModuleIndex::open(&dir)?;
        let (order, builtin) = idx.resolve(&opts.modules)?;
        report.builtin = builtin;
        let decompress = !kernel.loads_xz_modules();
        let mut list = String::new();
        let mut total = 0u64;
        let mut prog = Progress::new("modules", order.len());
        let base = format!("usr/lib/modules/{}", kernel.release);
        for rel in &order {
            let (data, name) = modules::read_module(idx.dir(), rel, decompress)?;
            total += data.len() as u64;
            let dest = format!("{base}/{name}");
            list.push_str(&format!("/{dest}\n"));
            ar.insert(&dest, Node::File { perm: 0o644, data });
            prog.inc();
        }
        drop(prog);
        ar.insert(
            MODULES_LIST,
            Node::File {
                perm: 0o644,
                data: list.into_bytes(),
            },
        );
        let names: Vec<String> = order.iter().map(|r| modules::module_name(r)).collect();
        report
            .parts
            .push((format!("modules ({})", order.len()), names.join(" "), total));
        // Merged /usr, as Debian: /lib/modules must resolve for later tools (modprobe).
        if ar.get("lib").is_none() {
            ar.insert(
                "lib",
                Node::Symlink {
                    target: "usr/lib".into(),
                },
            );
        }
    }

    Ok((ar, report))
}

fn add_binary(
    ar: &mut Archive,
    report: &mut Report,
    claims: &mut Claims,
    search: &SearchPath,
    src: &Path,
    dest: &str,
) -> Result<()> {
    let data = std::fs::read(src).map_err(io("reading", src))?;
    let perm = std::fs::metadata(src)
        .map_err(io("reading", src))?
        .permissions()
        .mode()
        & 0o7777;
    add_file_data(ar, report, claims, search, src, dest, data, perm)
}

#[allow(clippy::too_many_arguments)]
fn add_file_data(
    ar: &mut Archive,
    report: &mut Report,
    claims: &mut Claims,
    search: &SearchPath,
    src: &Path,
    dest: &str,
    data: Vec<u8>,
    perm: u32,
) -> Result<()> {
    claims.claim(dest, &src.display().to_string())?;
    let size = data.len() as u64;
    let mut kind = "file";
    if elf::is_elf(&data) {
        let dynamic = elf::parse(src, &data)?;
        kind = if dynamic.interp.is_some() || !dynamic.needed.is_empty() {
            "dynamic ELF"
        } else {
            "static ELF"
        };
        let libs = libs::add_closure(ar, search, src, dynamic)?;
        if !libs.is_empty() {
            let lib_size: u64 = libs
                .iter()
                .filter_map(|l| std::fs::metadata(l).ok())
                .map(|m| m.len())
                .sum();
            let names: Vec<String> = libs.iter().map(|l| l.display().to_string()).collect();
            report.parts.push((
                format!(
                    "  libs of {}",
                    src.file_name().unwrap_or_default().to_string_lossy()
                ),
                names.join(" "),
                lib_size,
            ));
        }
    }
    report.parts.push((
        dest.to_string(),
        format!("{kind} from {}", src.display()),
        size,
    ));
    ar.insert(dest, Node::File { perm, data });
    Ok(())
}

/// Adds `extra` (a file, or a directory's tree) at its destination, with the ELF
/// closure of each binary.
pub(crate) fn add_extra(
    ar: &mut Archive,
    report: &mut Report,
    claims: &mut Claims,
    search: &SearchPath,
    extra: &Extra,
) -> Result<()> {
    let meta = std::fs::metadata(&extra.src).map_err(io("--extra: reading", &extra.src))?;
    if meta.is_dir() {
        let mut stack = vec![(extra.src.clone(), extra.dest.clone())];
        while let Some((dir, dest)) = stack.pop() {
            ar.insert(&dest, Node::Dir { perm: 0o755 });
            let rd = std::fs::read_dir(&dir).map_err(io("--extra: reading", &dir))?;
            let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            entries.sort();
            for p in entries {
                let d = format!(
                    "{dest}/{}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                );
                let m = std::fs::symlink_metadata(&p).map_err(io("--extra: reading", &p))?;
                if m.file_type().is_symlink() {
                    let t = std::fs::read_link(&p).map_err(io("--extra: reading link", &p))?;
                    ar.insert(
                        &d,
                        Node::Symlink {
                            target: t.to_string_lossy().into_owned(),
                        },
                    );
                } else if m.is_dir() {
                    stack.push((p, d));
                } else if m.is_file() {
                    let data = std::fs::read(&p).map_err(io("--extra: reading", &p))?;
                    add_file_data(
                        ar,
                        report,
                        claims,
                        search,
                        &p,
                        &d,
                        data,
                        m.permissions().mode() & 0o7777,
                    )?;
                }
            }
        }
        return Ok(());
    }
    let data = std::fs::read(&extra.src).map_err(io("--extra: reading", &extra.src))?;
    add_file_data(
        ar,
        report,
        claims,
        search,
        &extra.src,
        &extra.dest,
        data,
        meta.permissions().mode() & 0o7777,
    )
}

/// Where the plinth binaries are by default: the shipped builds `make build` writes into
/// target/dist (static musl) when this program runs from target/release; else beside this
/// program (cargo's own builds); else ./target/dist, then ./target/release.
pub fn default_plinth_dir() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        if let Some(target) = dir.parent() {
            candidates.push(target.join("dist"));
        }
        candidates.push(dir);
    }
    candidates.push(PathBuf::from("target/dist"));
    candidates
        .into_iter()
        .find(|d| d.join("plinth-init").is_file())
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

/// Cache directories searched for the default kernel: $PLINTH_CACHE, ./.cache, and the
/// workspace's .cache when this program runs from its target/release.
pub fn default_cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(c) = std::env::var_os("PLINTH_CACHE") {
        dirs.push(PathBuf::from(c));
    }
    dirs.push(PathBuf::from(".cache"));
    if let Some(ws) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent()?.parent().map(Path::to_path_buf))
    {
        dirs.push(ws.join(".cache"));
    }
    dirs
}
