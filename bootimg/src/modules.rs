//! Kernel modules: resolving names to files and their dependencies through modules.dep,
//! in load order (dependencies first), and decompressing them when the kernel cannot.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::error::{io, Error, Result};

/// The module index of one kernel (`modules.dep` and `modules.builtin`).
#[derive(Debug)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// Module name (with '_' for '-') to its path relative to `dir`.
    by_name: HashMap<String, String>,
    /// Relative path to the relative paths of its dependencies.
    deps: HashMap<String, Vec<String>>,
    builtin: HashSet<String>,
    /// `softdep NAME pre: ...` from modules.softdep: loaded before NAME (the kernel asks
    /// for them with request_module, which a node without modprobe cannot answer).
    softdeps: HashMap<String, Vec<String>>,
    /// Exact (wildcard-free) aliases from modules.alias, to module names.
    aliases: HashMap<String, Vec<String>>,
}

/// A module's canonical name: the file name without `.ko[.xz|.zst|.gz]`, '-' as '_'.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleIndex {
    /// Reads `modules.dep` (and `modules.builtin`, when present) in `dir`.
    pub fn open(dir: &Path) -> Result<ModuleIndex> {
        let dep_path = dir.join("modules.dep");
        let text = std::fs::read_to_string(&dep_path).map_err(io("reading", &dep_path))?;
        let mut by_name = HashMap::new();
        let mut deps = HashMap::new();
        for line in text.lines() {
            let Some((m, rest)) = line.split_once(':') else {
                continue;
            };
            let m = m.trim().to_string();
            by_name.insert(module_name(&m), m.clone());
            deps.insert(m, rest.split_whitespace().map(String::from).collect());
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .map(|t| t.lines().map(module_name).collect())
            .unwrap_or_default();
        let mut softdeps: HashMap<String, Vec<String>> = HashMap::new();
        for line in std::fs::read_to_string(dir.join("modules.softdep"))
            .unwrap_or_default()
            .lines()
        {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(name) = words.next() else { continue };
            let mut pre = false;
            for w in words {
                match w {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    w if pre => softdeps
                        .entry(module_name(name))
                        .or_default()
                        .push(w.to_string()),
                    _ => {}
                }
            }
        }
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        for line in std::fs::read_to_string(dir.join("modules.alias"))
            .unwrap_or_default()
            .lines()
        {
            let mut words = line.split_whitespace();
            if let (Some("alias"), Some(alias), Some(module)) =
                (words.next(), words.next(), words.next())
            {
                if !alias.contains(['*', '?', '[']) {
                    aliases
                        .entry(alias.to_string())
                        .or_default()
                        .push(module_name(module));
                }
            }
        }
        Ok(ModuleIndex {
            dir: dir.to_path_buf(),
            by_name,
            deps,
            builtin,
            softdeps,
            aliases,
        })
    }

    /// The module directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resolves `names` to module files (relative paths) in load order: each module after
    /// everything it depends on, each file once. Built-in modules need nothing and are
    /// returned in the second list.
    pub fn resolve(&self, names: &[String]) -> Result<(Vec<String>, Vec<String>)> {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut builtin = Vec::new();
        for name in names {
            let canon = module_name(name);
            match self.by_name.get(&canon) {
                Some(path) => self.visit(path, &mut seen, &mut order),
                None if self.builtin.contains(&canon) => builtin.push(canon),
                None => {
                    return Err(Error::NoModule {
                        name: name.clone(),
                        dir: self.dir.clone(),
                    })
                }
            }
        }
        Ok((order, builtin))
    }

    fn visit(&self, path: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        // Soft dependencies first (by name or alias; one that resolves to nothing is
        // skipped, as modprobe does), then modules.dep: it lists the whole closure, and
        // visiting each one's own dependencies first gives a valid load order.
        for soft in self.softdeps.get(&module_name(path)).into_iter().flatten() {
            let paths: Vec<&String> = match self.by_name.get(&module_name(soft)) {
                Some(p) => vec![p],
                None => self
                    .aliases
                    .get(soft)
                    .into_iter()
                    .flatten()
                    .filter_map(|n| self.by_name.get(n))
                    .collect(),
            };
            for p in paths {
                self.visit(p, seen, order);
            }
        }
        if let Some(ds) = self.deps.get(path) {
            for d in ds.iter().rev() {
                self.visit(d, seen, order);
            }
        }
        order.push(path.to_string());
    }
}

/// Reads a module file, decompressing `.ko.xz` when `decompress` is set. Returns the
/// bytes and the file name to use in the image.
pub fn read_module(dir: &Path, rel: &str, decompress: bool) -> Result<(Vec<u8>, String)> {
    let path = dir.join(rel);
    let data = std::fs::read(&path).map_err(io("reading module", &path))?;
    if decompress {
        if let Some(plain) = rel.strip_suffix(".xz") {
            let mut out = Vec::new();
            lzma_rs::xz_decompress(&mut std::io::Cursor::new(&data), &mut out).map_err(|e| {
                Error::Decompress {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
            return Ok((out, plain.to_string()));
        }
    }
    Ok((data, rel.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/net/bridge/br_netfilter.ko"),
            "br_netfilter"
        );
        assert_eq!(module_name("a/nf-x.ko.xz"), "nf_x");
    }

    #[test]
    fn load_order_deps_first() {
        let dir = std::env::temp_dir().join(format!("plinth-mods-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        std::fs::write(dir.join("modules.dep"), "a/br.ko: a/bridge.ko a/stp.ko a/llc.ko\na/bridge.ko: a/stp.ko a/llc.ko\na/stp.ko: a/llc.ko\na/llc.ko:\n").ok();
        std::fs::write(dir.join("modules.builtin"), "kernel/x/virtio.ko\n").ok();
        let idx = ModuleIndex::open(&dir).expect("index");
        let (order, builtin) = idx
            .resolve(&["br".into(), "virtio".into()])
            .expect("resolve");
        assert_eq!(order, ["a/llc.ko", "a/stp.ko", "a/bridge.ko", "a/br.ko"]);
        assert_eq!(builtin, ["virtio"]);
        assert!(matches!(
            idx.resolve(&["nope".into()]),
            Err(Error::NoModule { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
