//! The fleet an operator keeps in git: `--config-dir` with `machines/*.yaml` (selectors
//! -> profiles + parameters), `profiles/*.yaml` and an optional `defaults.yaml`, read
//! whole at start and at every reload. A set with any bad file is refused as a whole,
//! naming the file, the line and the field; at start that stops the server, on reload
//! the last good set stays. Secrets are referenced (`secretRef: NAME`), never held here.
//!
//! | module | what |
//! | --- | --- |
//! | [`yaml`] | strict YAML with file, line and field in every error |
//! | [`render`] | machine -> profiles -> defaults, parameters, secrets |

pub mod render;
pub mod yaml;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::schema::config::MachineConfig;
use crate::schema::{normalize_mac, valid_uuid, API_VERSION};
use crate::server::ident::{placeholder_serial, placeholder_uuid};
use crate::server::secrets::Secrets;
use render::{fill, merge, secret_refs, Reveal};
use yaml::{locate, parse_path};

/// What a machine file selects by; every selector given must hold.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// The boot NIC's MAC.
    #[serde(default)]
    pub mac: Option<String>,
    /// The SMBIOS UUID (never a placeholder).
    #[serde(default)]
    pub uuid: Option<String>,
    /// The SMBIOS serial (never a placeholder).
    #[serde(default)]
    pub serial: Option<String>,
    /// Labels the machine carries (given at its acceptance).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `machines/NAME.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineFile {
    /// Must be `plinth/v1`.
    pub api_version: String,
    /// Which machines this file is.
    pub selector: Selector,
    /// Profiles, most specific first.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Parameters, over the profiles' and the defaults'.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Config fields over the profiles' and the defaults'.
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// `profiles/NAME.yaml` and `defaults.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Layer {
    /// Must be `plinth/v1`.
    pub api_version: String,
    /// Parameters.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Config fields.
    #[serde(default)]
    pub config: Map<String, Value>,
}

/// A file as read: its path, its text (to find lines in) and what it says.
#[derive(Debug, Clone)]
pub struct Read<T> {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Its content.
    pub doc: T,
}

impl<T> Read<T> {
    /// An error about `field` of this file, at that field's line.
    pub fn error(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::File {
            file: self.path.clone(),
            line: locate(&self.text, &parse_path(field)),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// The file's name without `.yaml`.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A machine as the fleet sees it, for matching.
#[derive(Debug, Clone, Default)]
pub struct Ident {
    /// The MAC.
    pub mac: String,
    /// The UUID, when it identifies (not a placeholder, not seen on another MAC).
    pub uuid: Option<String>,
    /// The serial, when it identifies.
    pub serial: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// What a machine's identity matched.
#[derive(Debug, Clone)]
pub enum Match<'a> {
    /// One machine file.
    One(&'a Read<MachineFile>),
    /// None.
    None,
    /// Several, equally specific: none is used (the names, for the machine's flags).
    Ambiguous(Vec<String>),
}

/// The whole set, as loaded.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// The directory.
    pub dir: Option<PathBuf>,
    /// `machines/*.yaml`, by file name.
    pub machines: Vec<Read<MachineFile>>,
    /// `profiles/*.yaml`, by name.
    pub profiles: BTreeMap<String, Read<Layer>>,
    /// `defaults.yaml`.
    pub defaults: Option<Read<Layer>>,
    /// When it was loaded.
    pub loaded_at: u64,
    /// Lookups that do not read every file (a fleet has thousands).
    index: Index,
}

/// Where to find a machine file without reading every one, built as files are added.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Files selecting by MAC, by the normalized MAC (positions in `machines`).
    by_mac: HashMap<String, Vec<usize>>,
    /// Files selecting by something else only.
    no_mac: Vec<usize>,
    /// Files by name (the file stem).
    by_name: HashMap<String, usize>,
    /// Each file's selector, normalized: two files may not select alike.
    selectors: HashMap<SelectorKey, usize>,
}

/// The `*.yaml` files of `dir`, sorted; none when it does not exist.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::error::io("listing", dir)(e)),
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn check_version<T>(r: &Read<T>, v: &str) -> Result<()> {
    if v != API_VERSION {
        return Err(r.error("apiVersion", format!("{v:?} is not {API_VERSION:?}")));
    }
    Ok(())
}

impl Fleet {
    /// Loads `dir`; any bad file is an error naming it. Every machine file is rendered
    /// once (with its secrets, which must exist and be private) so that what a node
    /// would be refused later is refused now.
    pub fn load(dir: &Path, secrets: &Secrets) -> Result<Fleet> {
        if !dir.is_dir() {
            return Err(Error::Config {
                what: format!("--config-dir {}", dir.display()),
                reason: "is not a directory".into(),
            });
        }
        // Secrets never live beside the files an operator keeps in git.
        if let (Ok(c), Ok(s)) = (dir.canonicalize(), secrets.dir().canonicalize()) {
            if s.starts_with(&c) {
                return Err(Error::Config {
                    what: format!("--config-dir {}", dir.display()),
                    reason: format!(
                        "holds the secrets directory {}: secrets stay in --data, out of git",
                        s.display()
                    ),
                });
            }
        }
        let mut fleet = Fleet {
            dir: Some(dir.to_path_buf()),
            loaded_at: crate::schema::unix_time(),
            ..Fleet::default()
        };
        let defaults = dir.join("defaults.yaml");
        if defaults.exists() {
            let (doc, text): (Layer, String) = yaml::read(&defaults)?;
            let r = Read {
                path: defaults,
                text,
                doc,
            };
            check_version(&r, &r.doc.api_version)?;
            check_secret_names(&r, &r.doc.params, &r.doc.config)?;
            fleet.defaults = Some(r);
        }
        for path in yaml_files(&dir.join("profiles"))? {
            let (doc, text): (Layer, String) = yaml::read(&path)?;
            let r = Read { path, text, doc };
            check_version(&r, &r.doc.api_version)?;
            check_secret_names(&r, &r.doc.params, &r.doc.config)?;
            fleet.profiles.insert(r.name(), r);
        }
        for path in yaml_files(&dir.join("machines"))? {
            let (doc, text): (MachineFile, String) = yaml::read(&path)?;
            let r = Read { path, text, doc };
            check_version(&r, &r.doc.api_version)?;
            fleet.check_machine(&r)?;
            fleet.add_machine(r);
        }
        for r in &fleet.machines {
            fleet.render(r, &Map::new(), secrets, Reveal::Secrets)?;
        }
        Ok(fleet)
    }

    /// The checks on one machine file, and that no earlier file selects the same way.
    fn check_machine(&self, r: &Read<MachineFile>) -> Result<()> {
        let s = &r.doc.selector;
        if s.mac.is_none() && s.uuid.is_none() && s.serial.is_none() && s.labels.is_empty() {
            return Err(r.error(
                "selector",
                "selects nothing: give mac, uuid, serial or labels",
            ));
        }
        if let Some(m) = &s.mac {
            if normalize_mac(m).is_none() {
                return Err(r.error("selector.mac", format!("{m:?} is not a MAC address")));
            }
        }
        if let Some(u) = &s.uuid {
            if !valid_uuid(u) {
                return Err(r.error("selector.uuid", format!("{u:?} is not a UUID")));
            }
            if placeholder_uuid(u) {
                return Err(r.error(
                    "selector.uuid",
                    format!("{u} is a placeholder firmware ships, which identifies nothing"),
                ));
            }
        }
        if let Some(n) = &s.serial {
            if placeholder_serial(n) {
                return Err(r.error(
                    "selector.serial",
                    format!("{n:?} is a placeholder firmware ships, which identifies nothing"),
                ));
            }
        }
        for (i, p) in r.doc.profiles.iter().enumerate() {
            if !self.profiles.contains_key(p) {
                return Err(r.error(
                    &format!("profiles[{i}]"),
                    format!("no profile {p:?} (profiles/{p}.yaml)"),
                ));
            }
        }
        check_secret_names(r, &r.doc.params, &r.doc.config)?;
        if let Some(other) = self
            .index
            .selectors
            .get(&normalized(s))
            .map(|&i| &self.machines[i])
        {
            return Err(r.error(
                "selector",
                format!(
                    "selects exactly what {} selects already",
                    other.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// Adds a checked machine file to the set and its index.
    fn add_machine(&mut self, r: Read<MachineFile>) {
        let i = self.machines.len();
        let s = &r.doc.selector;
        match s.mac.as_deref().and_then(normalize_mac) {
            Some(mac) => self.index.by_mac.entry(mac).or_default().push(i),
            None => self.index.no_mac.push(i),
        }
        self.index.by_name.insert(r.name(), i);
        self.index.selectors.insert(normalized(s), i);
        self.machines.push(r);
    }

    /// The machine file of this name (its file stem).
    pub fn machine_named(&self, name: &str) -> Option<&Read<MachineFile>> {
        self.index.by_name.get(name).map(|&i| &self.machines[i])
    }

    /// The first machine file whose selector names `mac` (normalized).
    pub fn naming_mac(&self, mac: &str) -> Option<&Read<MachineFile>> {
        let i = *self.index.by_mac.get(mac)?.first()?;
        Some(&self.machines[i])
    }

    /// The machine file matching `id`: the most specific (MAC over UUID over serial over
    /// labels); two equally specific ones match nothing.
    pub fn find(&self, id: &Ident) -> Match<'_> {
        // Only files naming this MAC, or naming none, can select it; in file order.
        let mut candidates: Vec<usize> = self
            .index
            .by_mac
            .get(&id.mac)
            .into_iter()
            .flatten()
            .chain(&self.index.no_mac)
            .copied()
            .collect();
        candidates.sort_unstable();
        let mut best: Vec<(u32, &Read<MachineFile>)> = Vec::new();
        for r in candidates.into_iter().map(|i| &self.machines[i]) {
            let s = &r.doc.selector;
            let mut score = 0;
            if s.mac.is_some() {
                score += 1000;
            }
            if let Some(u) = &s.uuid {
                if id.uuid.as_deref() != Some(u.to_ascii_lowercase().as_str()) {
                    continue;
                }
                score += 100;
            }
            if let Some(n) = &s.serial {
                if id.serial.as_deref() != Some(n.as_str()) {
                    continue;
                }
                score += 10;
            }
            if !s.labels.iter().all(|(k, v)| id.labels.get(k) == Some(v)) {
                continue;
            }
            score += s.labels.len() as u32;
            best.push((score, r));
        }
        let Some(top) = best.iter().map(|(s, _)| *s).max() else {
            return Match::None;
        };
        let tops: Vec<&Read<MachineFile>> = best
            .into_iter()
            .filter(|(s, _)| *s == top)
            .map(|(_, r)| r)
            .collect();
        match tops.as_slice() {
            [one] => Match::One(one),
            many => Match::Ambiguous(many.iter().map(|r| r.path.display().to_string()).collect()),
        }
    }

    /// The config of machine file `r` (with `extra` parameters over all others).
    pub fn render(
        &self,
        r: &Read<MachineFile>,
        extra: &Map<String, Value>,
        secrets: &Secrets,
        reveal: Reveal,
    ) -> Result<MachineConfig> {
        let mut sources: Vec<Layered<'_>> =
            vec![Layered::of(&r.path, &r.text, &r.doc.params, &r.doc.config)];
        for p in &r.doc.profiles {
            let Some(l) = self.profiles.get(p) else {
                return Err(r.error("profiles", format!("no profile {p:?}")));
            };
            sources.push(Layered::of(&l.path, &l.text, &l.doc.params, &l.doc.config));
        }
        self.render_layers(sources, extra, secrets, reveal)
    }

    /// The config of an accepted machine: profile `profile` with `params` over its own.
    pub fn render_profile(
        &self,
        profile: &str,
        params: &Map<String, Value>,
        secrets: &Secrets,
        reveal: Reveal,
    ) -> Result<MachineConfig> {
        let Some(l) = self.profiles.get(profile) else {
            return Err(Error::Config {
                what: format!("profile {profile:?}"),
                reason: match &self.dir {
                    Some(d) => format!("no {}/profiles/{profile}.yaml", d.display()),
                    None => "no --config-dir, so no profiles".into(),
                },
            });
        };
        self.render_layers(
            vec![Layered::of(&l.path, &l.text, &l.doc.params, &l.doc.config)],
            params,
            secrets,
            reveal,
        )
    }

    /// [`Fleet::render_layers`] with, when secrets are filled in, every secret's text
    /// taken out of the error (a field's check may quote the value it refused).
    fn render_layers<'a>(
        &'a self,
        sources: Vec<Layered<'a>>,
        extra: &Map<String, Value>,
        secrets: &Secrets,
        reveal: Reveal,
    ) -> Result<MachineConfig> {
        match self.render_raw(sources, extra, secrets, reveal) {
            Err(Error::File {
                file,
                line,
                field,
                reason,
            }) if reveal == Reveal::Secrets => Err(Error::File {
                file,
                line,
                field,
                reason: crate::server::secrets::redact(&reason, &secrets.all()),
            }),
            other => other,
        }
    }

    fn render_raw<'a>(
        &'a self,
        mut sources: Vec<Layered<'a>>,
        extra: &Map<String, Value>,
        secrets: &Secrets,
        reveal: Reveal,
    ) -> Result<MachineConfig> {
        if let Some(d) = &self.defaults {
            sources.push(Layered::of(&d.path, &d.text, &d.doc.params, &d.doc.config));
        }
        let mut params: Vec<&Map<String, Value>> = vec![extra];
        params.extend(sources.iter().map(|s| s.params));
        let params = merge_flat(&params);
        let mut base = Map::new();
        base.insert("apiVersion".into(), Value::String(API_VERSION.into()));
        let mut configs: Vec<&Map<String, Value>> = sources.iter().map(|s| s.config).collect();
        configs.push(&base);
        let merged = merge(&configs);
        // Where a field's error is told: the first file (most specific) that has it.
        let blame = |field: &str, reason: String| {
            let path = parse_path(field);
            let at = sources
                .iter()
                .find(|s| locate_config(s.text, &path).is_some())
                .unwrap_or(&sources[0]);
            Error::File {
                file: at.path.to_path_buf(),
                line: locate_config(at.text, &path),
                field: format!("config.{field}"),
                reason,
            }
        };
        let filled = fill(&Value::Object(merged), "", &params, secrets, reveal)
            .map_err(|e| blame(&e.field, e.reason))?;
        let cfg: MachineConfig = serde_path_to_error::deserialize(&filled).map_err(|e| {
            let field = e.path().to_string();
            blame(&field, e.into_inner().to_string())
        })?;
        if reveal == Reveal::Secrets {
            cfg.validate().map_err(|msg| {
                let (field, reason) = msg.split_once(": ").unwrap_or(("-", msg.as_str()));
                blame(field, reason.to_string())
            })?;
        }
        Ok(cfg)
    }
}

/// One layer of a rendering: the file it comes from (to tell errors at), its parameters
/// and its config.
#[derive(Debug, Clone, Copy)]
struct Layered<'a> {
    path: &'a Path,
    text: &'a str,
    params: &'a Map<String, Value>,
    config: &'a Map<String, Value>,
}

impl<'a> Layered<'a> {
    fn of(
        path: &'a Path,
        text: &'a str,
        params: &'a Map<String, Value>,
        config: &'a Map<String, Value>,
    ) -> Layered<'a> {
        Layered {
            path,
            text,
            params,
            config,
        }
    }
}

/// A selector in a comparable form: MAC, UUID, serial, labels.
type SelectorKey = (
    Option<String>,
    Option<String>,
    Option<String>,
    Vec<(String, String)>,
);

/// The line of config field `path` in a file's text (the field is under `config`).
fn locate_config(text: &str, path: &[yaml::Seg]) -> Option<usize> {
    let mut full = vec![yaml::Seg::Key("config".into())];
    full.extend_from_slice(path);
    // Only a line of the field itself counts, not of `config` alone.
    let depth = full.len();
    let line = locate(text, &full)?;
    let at_config = locate(text, &full[..1]);
    (depth == 1 || Some(line) != at_config).then_some(line)
}

/// Flat parameter lookup: the first layer that has a name wins.
fn merge_flat(layers: &[&Map<String, Value>]) -> Map<String, Value> {
    let mut out = Map::new();
    for l in layers {
        for (k, v) in l.iter() {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    out
}

/// Every `secretRef` of a file names a possible secret.
fn check_secret_names<T>(
    r: &Read<T>,
    params: &Map<String, Value>,
    config: &Map<String, Value>,
) -> Result<()> {
    let mut refs = Vec::new();
    secret_refs(&Value::Object(params.clone()), "params", &mut refs);
    secret_refs(&Value::Object(config.clone()), "config", &mut refs);
    for (field, name) in refs {
        if !crate::server::secrets::valid_name(&name) {
            return Err(r.error(
                &field,
                format!("secretRef {name:?}: a secret's name is letters, digits, '_', '-' and '.'"),
            ));
        }
    }
    Ok(())
}

/// A selector in a comparable form.
fn normalized(s: &Selector) -> SelectorKey {
    (
        s.mac.as_deref().and_then(normalize_mac),
        s.uuid.as_ref().map(|u| u.to_ascii_lowercase()),
        s.serial.clone(),
        s.labels.clone().into_iter().collect(),
    )
}
