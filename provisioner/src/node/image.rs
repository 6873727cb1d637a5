//! Images on the node: a content store of blobs by digest, laid out as an OCI image
//! layout (`blobs/sha256/<hex>`, `oci-layout`) so that a registry client and skopeo fill
//! it alike, and each image unpacked once into `images/<manifest hex>/rootfs`, which
//! every container of that image starts from (never one unpacking per container).
//!
//! A blob enters the store only through [`ContentStore::put`] or
//! [`ContentStore::adopt`], which check its size and SHA-256 before it takes its name,
//! and keep nothing of a blob that is not what its descriptor says. An image is unpacked into a `.partial` directory renamed into place
//! when complete, so a crash or a bad layer never leaves a half image that looks whole.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, Descriptor, Digest, DigestAlgorithm, ImageIndex, ImageManifest, Os};
use sha2::{Digest as _, Sha256};

use crate::error::{io, Error, Result};
use crate::node::layer::{self, Compression, Owners};

/// The store.
#[derive(Debug, Clone)]
pub struct ContentStore {
    dir: PathBuf,
}

/// An image unpacked.
#[derive(Debug)]
pub struct Unpacked {
    /// Its root filesystem.
    pub rootfs: PathBuf,
    /// Its config blob (the image's entrypoint, env, user, working dir).
    pub config: Descriptor,
    /// False when it was unpacked already and this call only found it.
    pub fresh: bool,
    /// Entries of its layers that were skipped, with why.
    pub skipped: Vec<String>,
}

/// A name no other download or unpacking of this process or another uses.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

fn bad(what: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Protocol {
        what: what.into(),
        reason: reason.into(),
    }
}

/// The hex of a SHA-256 digest; any other algorithm is refused, naming the digest.
fn sha256_hex(d: &Digest) -> Result<&str> {
    match d.algorithm() {
        DigestAlgorithm::Sha256 => Ok(d.digest()),
        other => Err(bad(
            format!("digest {d}"),
            format!("{other} is not supported (sha256 only)"),
        )),
    }
}

impl ContentStore {
    /// Opens (making) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ContentStore> {
        use std::os::unix::fs::PermissionsExt;
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io("making", &blobs))?;
        // Images keep their owners and set-id bits: no one but root walks in.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("making private", dir))?;
        let images = dir.join("images");
        std::fs::create_dir_all(&images).map_err(io("making", &images))?;
        let layout = dir.join("oci-layout");
        if !layout.exists() {
            std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(io("writing", &layout))?;
        }
        Ok(ContentStore {
            dir: dir.to_path_buf(),
        })
    }

    /// Where blob `d` is (or would be).
    pub fn blob_path(&self, d: &Digest) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(sha256_hex(d)?))
    }

    /// Whether blob `d` is in the store.
    pub fn has(&self, d: &Digest) -> bool {
        self.blob_path(d).is_ok_and(|p| p.is_file())
    }

    /// Stores the blob read from `from`, which must be `size` bytes with digest `d`; a
    /// blob that is not leaves nothing behind and is an error naming its digest.
    pub fn put(&self, d: &Digest, size: u64, mut from: impl Read) -> Result<PathBuf> {
        let path = self.blob_path(d)?;
        if path.is_file() {
            return Ok(path);
        }
        let tmp = self.download_path(d)?;
        let written = (|| {
            let mut out = File::create(&tmp).map_err(io("creating", &tmp))?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut got: u64 = 0;
            loop {
                let n = from
                    .read(&mut buf)
                    .map_err(|e| bad(format!("reading blob {d}"), e.to_string()))?;
                if n == 0 {
                    return Ok(());
                }
                got += n as u64;
                if got > size {
                    return Err(bad(
                        format!("blob {d}"),
                        format!("longer than its descriptor's {size} bytes"),
                    ));
                }
                out.write_all(&buf[..n]).map_err(io("writing", &tmp))?;
            }
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.adopt(d, size, &tmp)
    }

    /// A name of its own for a blob being downloaded, before [`ContentStore::adopt`]
    /// takes it: two pulls of one blob never write one file.
    pub fn download_path(&self, d: &Digest) -> Result<PathBuf> {
        Ok(self
            .blob_path(d)?
            .with_extension(format!("partial-{}", unique())))
    }

    /// Takes the file `tmp` as blob `d` when it is `size` bytes with that digest; removes
    /// it either way. A wrong one is an error naming the digest.
    pub fn adopt(&self, d: &Digest, size: u64, tmp: &Path) -> Result<PathBuf> {
        let path = self.blob_path(d)?;
        let checked = (|| {
            let mut f = File::open(tmp).map_err(io("opening", tmp))?;
            let mut hash = Sha256::new();
            let got = std::io::copy(&mut f, &mut hash).map_err(io("reading", tmp))?;
            if got != size {
                return Err(bad(
                    format!("blob {d}"),
                    format!("{got} bytes, its descriptor says {size}"),
                ));
            }
            let actual = crate::crypto::hex(&hash.finalize());
            if actual != d.digest() {
                return Err(bad(
                    format!("blob {d}"),
                    format!("its content is sha256:{actual}"),
                ));
            }
            f.sync_all().map_err(io("syncing", tmp))?;
            Ok(())
        })();
        match checked {
            Ok(()) => {
                std::fs::rename(tmp, &path).map_err(io("storing", &path))?;
                Ok(path)
            }
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                Err(e)
            }
        }
    }

    fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d)?;
        File::open(&p).map_err(io("opening the blob", &p))
    }

    /// The image index `d` in the store.
    pub fn index(&self, d: &Digest) -> Result<ImageIndex> {
        ImageIndex::from_reader(self.open_blob(d)?)
            .map_err(|e| bad(format!("index {d}"), e.to_string()))
    }

    /// The manifest to run from `top` (an image index or a manifest in the store): an
    /// index's linux/amd64 entry, a manifest as it is.
    pub fn manifest(&self, top: &Descriptor) -> Result<(Digest, ImageManifest)> {
        if !is_index(top) {
            let m = ImageManifest::from_reader(self.open_blob(top.digest())?)
                .map_err(|e| bad(format!("manifest {}", top.digest()), e.to_string()))?;
            return Ok((top.digest().clone(), m));
        }
        let index = self.index(top.digest())?;
        let chosen = platform_manifest(&index)
            .ok_or_else(|| bad(format!("index {}", top.digest()), "no linux/amd64 manifest"))?;
        let m = ImageManifest::from_reader(self.open_blob(chosen.digest())?)
            .map_err(|e| bad(format!("manifest {}", chosen.digest()), e.to_string()))?;
        Ok((chosen.digest().clone(), m))
    }

    /// Unpacks the image of manifest `digest` (its layers in the store), once: a second
    /// call finds it. Owners stay the image's; a container maps them (id-mapped mounts).
    pub fn unpack(&self, digest: &Digest, manifest: &ImageManifest) -> Result<Unpacked> {
        let hex = sha256_hex(digest)?;
        let done = self.dir.join("images").join(hex);
        let rootfs = done.join("rootfs");
        if rootfs.is_dir() {
            return Ok(Unpacked {
                rootfs,
                config: manifest.config().clone(),
                fresh: false,
                skipped: Vec::new(),
            });
        }
        let partial = self
            .dir
            .join("images")
            .join(format!("{hex}.partial-{}", unique()));
        let unpacked = (|| {
            let root_dir = partial.join("rootfs");
            std::fs::create_dir_all(&root_dir).map_err(io("making", &root_dir))?;
            let root = layer::open_root(&root_dir)?;
            let mut skipped = Vec::new();
            for l in manifest.layers() {
                let c = Compression::of_media_type(l.media_type().as_ref())?;
                let blob = self.open_blob(l.digest())?;
                let applied = layer::apply(
                    std::os::fd::AsFd::as_fd(&root),
                    std::io::BufReader::new(blob),
                    c,
                    None::<Owners>,
                )
                .map_err(|e| bad(format!("layer {}", l.digest()), e.to_string()))?;
                skipped.extend(applied.skipped);
            }
            // On disk before its name says it is whole.
            let dir = File::open(&root_dir).map_err(io("opening", &root_dir))?;
            nix::unistd::syncfs(&dir)
                .map_err(crate::error::sys(format!("syncing the image {digest}")))?;
            Ok(skipped)
        })();
        match unpacked {
            Ok(skipped) => {
                if let Err(e) = std::fs::rename(&partial, &done) {
                    let _ = std::fs::remove_dir_all(&partial);
                    // Another unpacking of the same image finished first: the same image.
                    if !rootfs.is_dir() {
                        return Err(io("completing", &done)(e));
                    }
                }
                Ok(Unpacked {
                    rootfs,
                    config: manifest.config().clone(),
                    fresh: true,
                    skipped,
                })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&partial);
                Err(e)
            }
        }
    }
}

/// Whether `d` is an image index (OCI's, or Docker's manifest list) rather than a
/// manifest.
pub fn is_index(d: &Descriptor) -> bool {
    let mt = d.media_type().to_string();
    mt == "application/vnd.oci.image.index.v1+json"
        || mt == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// An index's manifest for this node: linux/amd64.
pub fn platform_manifest(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|m| {
        m.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{
        DescriptorBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, PlatformBuilder,
    };

    fn digest_of(b: &[u8]) -> Digest {
        let hex = crate::crypto::hex(&Sha256::digest(b));
        format!("sha256:{hex}").parse().expect("digest")
    }

    fn put(s: &ContentStore, b: &[u8], mt: MediaType) -> Descriptor {
        let d = digest_of(b);
        s.put(&d, b.len() as u64, b).expect("put");
        DescriptorBuilder::default()
            .media_type(mt)
            .digest(d)
            .size(b.len() as u64)
            .build()
            .expect("descriptor")
    }

    /// A gzip layer of `files` (path, content; empty content and a `.wh.` name make a
    /// whiteout).
    fn layer(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, content) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, path, content.as_bytes())
                .expect("entry");
        }
        b.into_inner().expect("tar").finish().expect("gzip")
    }

    /// A manifest of `config` and `layers`, stored; it and its descriptor.
    fn manifest_of(
        s: &ContentStore,
        config: Descriptor,
        layers: Vec<Descriptor>,
    ) -> (ImageManifest, Descriptor) {
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config)
            .layers(layers)
            .build()
            .expect("manifest");
        let json = manifest.to_string().expect("json");
        let d = put(s, json.as_bytes(), MediaType::ImageManifest);
        (manifest, d)
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("plinth-image-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_blob_that_is_not_its_digest_leaves_nothing() {
        let dir = scratch("digest");
        let s = ContentStore::open(&dir).expect("open");
        let d = digest_of(b"the real content");
        let err = s
            .put(&d, 16, &b"something else!!"[..])
            .expect_err("wrong content");
        assert!(err.to_string().contains(&d.to_string()), "{err}");
        let err = s
            .put(&d, 99, &b"the real content"[..])
            .expect_err("wrong size");
        assert!(err.to_string().contains("99"), "{err}");
        let sha512: Digest = format!("sha512:{}", "0".repeat(128))
            .parse()
            .expect("digest");
        let err = s.put(&sha512, 1, &b"x"[..]).expect_err("sha512");
        assert!(err.to_string().contains("sha256 only"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.join("blobs/sha256"))
            .expect("ls")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        s.put(&d, 16, &b"the real content"[..])
            .expect("the real one");
        assert!(s.has(&d));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_index_gives_its_amd64_image_unpacked_once() {
        let dir = scratch("unpack");
        let s = ContentStore::open(&dir).expect("open");
        let lower = put(
            &s,
            &layer(&[("etc/motd", "lower"), ("etc/gone", "x")]),
            MediaType::ImageLayerGzip,
        );
        let upper = put(
            &s,
            &layer(&[("etc/.wh.gone", ""), ("srv/index.html", "hello")]),
            MediaType::ImageLayerGzip,
        );
        let config = put(
            &s,
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#,
            MediaType::ImageConfig,
        );
        let (_, m) = manifest_of(&s, config.clone(), vec![lower, upper]);
        // Another architecture's manifest first in the index: never chosen.
        let other = put(&s, b"{}", MediaType::ImageManifest);
        let with = |d: &Descriptor, arch: Arch| {
            let mut d = d.clone();
            d.set_platform(Some(
                PlatformBuilder::default()
                    .os(Os::Linux)
                    .architecture(arch)
                    .build()
                    .expect("platform"),
            ));
            d
        };
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![with(&other, Arch::ARM64), with(&m, Arch::Amd64)])
            .build()
            .expect("index");
        let top = put(
            &s,
            index.to_string().expect("json").as_bytes(),
            MediaType::ImageIndex,
        );
        let (digest, manifest) = s.manifest(&top).expect("manifest");
        assert_eq!(&digest, m.digest());
        let u = s.unpack(&digest, &manifest).expect("unpack");
        assert!(u.fresh);
        assert_eq!(
            std::fs::read_to_string(u.rootfs.join("etc/motd")).expect("motd"),
            "lower"
        );
        assert_eq!(
            std::fs::read_to_string(u.rootfs.join("srv/index.html")).expect("index"),
            "hello"
        );
        assert!(!u.rootfs.join("etc/gone").exists());
        assert_eq!(u.config.digest(), config.digest());
        let again = s.unpack(&digest, &manifest).expect("again");
        assert!(!again.fresh, "unpacked twice");
        assert_eq!(again.rootfs, u.rootfs);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_layer_leaves_no_image() {
        let dir = scratch("bad-layer");
        let s = ContentStore::open(&dir).expect("open");
        // A layer whose bytes are not gzip, though its descriptor says so.
        let junk = put(&s, b"not a gzip stream", MediaType::ImageLayerGzip);
        let config = put(&s, b"{}", MediaType::ImageConfig);
        let (manifest, m) = manifest_of(&s, config, vec![junk.clone()]);
        let err = s.unpack(m.digest(), &manifest).expect_err("a junk layer");
        assert!(
            err.to_string().contains(&junk.digest().to_string()),
            "{err}"
        );
        let images: Vec<_> = std::fs::read_dir(dir.join("images")).expect("ls").collect();
        assert!(images.is_empty(), "{images:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
