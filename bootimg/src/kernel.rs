//! Finding a kernel, its config and its module tree, and what the config allows:
//! which initramfs compressions it can unpack and whether it can load compressed modules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};

/// A kernel image with the files that came with it in its package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage.
    pub image: PathBuf,
    /// The release string (`6.1.0-56-amd64`), from the file name.
    pub release: String,
    /// `/lib/modules/<release>` in the unpacked package, when present.
    pub modules_dir: Option<PathBuf>,
    /// `CONFIG_*` options from `boot/config-<release>`, when present.
    pub config: HashMap<String, String>,
}

/// Compressions the initramfs may use, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (CONFIG_RD_GZIP).
    Gzip,
    /// No compression (a kernel without RD_GZIP).
    None,
}

impl Kernel {
    /// Loads the kernel at `image`; the config and modules are looked up beside it, as
    /// Debian's package lays them out (`boot/vmlinuz-R`, `boot/config-R`, `lib/modules/R`).
    pub fn open(image: &Path) -> Result<Kernel> {
        let meta = std::fs::metadata(image).map_err(io("reading kernel", image))?;
        if !meta.is_file() {
            return Err(Error::BadArgument {
                arg: format!("--kernel {}", image.display()),
                reason: "not a regular file".into(),
            });
        }
        let name = image
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let release = name
            .strip_prefix("vmlinuz-")
            .unwrap_or_default()
            .to_string();
        let boot = image.parent().unwrap_or(Path::new("."));
        let mut config = HashMap::new();
        if !release.is_empty() {
            let cfg = boot.join(format!("config-{release}"));
            if let Ok(text) = std::fs::read_to_string(&cfg) {
                config = parse_config(&text);
            }
        }
        let modules_dir = boot
            .parent()
            .map(|root| root.join("lib/modules").join(&release))
            .filter(|d| !release.is_empty() && d.join("modules.dep").is_file());
        Ok(Kernel {
            image: image.to_path_buf(),
            release,
            modules_dir,
            config,
        })
    }

    /// Finds the kernel in the cache the Makefile fills (`$PLINTH_CACHE/kernel/root/boot`).
    pub fn find_default(cache_dirs: &[PathBuf]) -> Result<Kernel> {
        let mut looked = Vec::new();
        for cache in cache_dirs {
            let boot = cache.join("kernel/root/boot");
            looked.push(format!("{}/vmlinuz-*", boot.display()));
            let Ok(rd) = std::fs::read_dir(&boot) else {
                continue;
            };
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .collect();
            found.sort();
            if let Some(k) = found.pop() {
                return Kernel::open(&k);
            }
        }
        Err(Error::NoKernel {
            looked: looked.join(", "),
        })
    }

    /// True when `CONFIG_<name>` is `y`.
    pub fn enabled(&self, name: &str) -> bool {
        self.config.get(name).is_some_and(|v| v == "y")
    }

    /// The initramfs compression to use: gzip when the kernel can unpack it (or when its
    /// config is unknown, since every distribution kernel can), else none.
    pub fn compression(&self) -> Compression {
        if self.config.is_empty() || self.enabled("CONFIG_RD_GZIP") {
            Compression::Gzip
        } else {
            Compression::None
        }
    }

    /// True when the kernel can load `.ko.xz` modules itself (CONFIG_MODULE_DECOMPRESS with xz).
    pub fn loads_xz_modules(&self) -> bool {
        self.enabled("CONFIG_MODULE_DECOMPRESS") && self.enabled("CONFIG_MODULE_COMPRESS_XZ")
    }
}

fn parse_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lines() {
        let c =
            parse_config("# comment\nCONFIG_RD_GZIP=y\n# CONFIG_X is not set\nCONFIG_S=\"a b\"\n");
        assert_eq!(c.get("CONFIG_RD_GZIP").map(String::as_str), Some("y"));
        assert_eq!(c.get("CONFIG_S").map(String::as_str), Some("a b"));
        assert!(!c.contains_key("CONFIG_X"));
    }
}
