//! Crafted layers, each built here byte by byte where a tar writer would refuse the
//! entry (a `..` path): whiteouts, opaque directories, hard links, symlinks leading out
//! of the root, device nodes. Next to every root there is an `outside` directory that no
//! layer may touch.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;

/// A scratch directory holding `root/` (the image) and `outside/` (the host).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("plinth-layer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root")).expect("root");
        std::fs::create_dir_all(dir.join("outside")).expect("outside");
        std::fs::write(dir.join("outside/keep"), "host").expect("host file");
        Scratch(dir)
    }

    fn root(&self) -> PathBuf {
        self.0.join("root")
    }

    fn outside(&self) -> PathBuf {
        self.0.join("outside")
    }

    /// Applies `layer` (a plain tar) to the root.
    fn apply(&self, layer: &[u8]) -> Result<Applied> {
        self.apply_as(layer, Compression::None, None)
    }

    fn apply_as(&self, blob: &[u8], c: Compression, owners: Option<Owners>) -> Result<Applied> {
        let root = open_root(&self.root()).expect("open root");
        apply(root.as_fd(), blob, c, owners)
    }

    /// The host's directory is as the test made it.
    fn outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(self.outside())
            .expect("ls outside")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["keep"], "a layer wrote outside the root");
        assert_eq!(
            std::fs::read_to_string(self.outside().join("keep")).expect("read"),
            "host"
        );
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One entry of a crafted layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDevice(&'a str),
    Fifo(&'a str),
    /// A set-uid executable owned by this uid in the image.
    Setuid(&'a str, u64),
}

/// A tar of `entries`, names written as they are (no checks: these are attacks too).
fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        let (name, kind, link, data) = match e {
            E::Dir(n) => (*n, tar::EntryType::Directory, "", ""),
            E::File(n, d) => (*n, tar::EntryType::Regular, "", *d),
            E::Symlink(n, t) => (*n, tar::EntryType::Symlink, *t, ""),
            E::Hardlink(n, t) => (*n, tar::EntryType::Link, *t, ""),
            E::CharDevice(n) => (*n, tar::EntryType::Char, "", ""),
            E::Fifo(n) => (*n, tar::EntryType::Fifo, "", ""),
            E::Setuid(n, _) => (*n, tar::EntryType::Regular, "", "#!/bin/sh\n"),
        };
        {
            let raw = h.as_old_mut();
            raw.name = [0; 100];
            raw.name[..name.len()].copy_from_slice(name.as_bytes());
            raw.linkname = [0; 100];
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(match e {
            E::Setuid(..) => 0o4755,
            _ if kind == tar::EntryType::Directory => 0o755,
            _ => 0o644,
        });
        h.set_uid(if let E::Setuid(_, uid) = e { *uid } else { 0 });
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data.as_bytes());
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"))
}

#[test]
fn whiteouts_remove_what_the_layers_below_put_there() {
    let s = Scratch::new("whiteout");
    s.apply(&layer(&[
        E::Dir("a/"),
        E::File("a/x", "1"),
        E::File("a/y", "2"),
        E::Dir("a/sub/"),
        E::File("a/sub/z", "3"),
    ]))
    .expect("lower");
    let done = s
        .apply(&layer(&[E::File("a/.wh.x", ""), E::File("a/.wh.sub", "")]))
        .expect("upper");
    assert_eq!(done.removed, 2);
    assert!(!s.root().join("a/x").exists());
    assert!(!s.root().join("a/sub").exists());
    assert_eq!(read(&s.root().join("a/y")), "2");
    // The markers themselves are never files of the image.
    assert!(!s.root().join("a/.wh.x").exists());
    s.outside_untouched();
}

#[test]
fn an_opaque_directory_keeps_only_this_layers_entries() {
    let s = Scratch::new("opaque");
    s.apply(&layer(&[
        E::Dir("etc/"),
        E::File("etc/old", "lower"),
        E::File("top", "t"),
    ]))
    .expect("lower");
    // The marker after this layer's own entry in the directory: that one stays.
    s.apply(&layer(&[
        E::Dir("etc/"),
        E::File("etc/new", "upper"),
        E::File("etc/.wh..wh..opq", ""),
    ]))
    .expect("upper");
    let mut names: Vec<_> = std::fs::read_dir(s.root().join("etc"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    assert_eq!(names, ["new"]);
    assert_eq!(
        read(&s.root().join("top")),
        "t",
        "outside the opaque directory"
    );
    s.outside_untouched();
}

#[test]
fn hard_links_share_the_file_and_stay_in_the_image() {
    let s = Scratch::new("hardlink");
    s.apply(&layer(&[
        E::File("bin/busybox", "applet"),
        E::Hardlink("bin/sh", "bin/busybox"),
        E::Hardlink("bin/ls", "/bin/busybox"),
    ]))
    .expect("layer");
    let a = std::fs::metadata(s.root().join("bin/busybox")).expect("stat");
    let b = std::fs::metadata(s.root().join("bin/sh")).expect("stat");
    let c = std::fs::metadata(s.root().join("bin/ls")).expect("stat");
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 3));
    assert_eq!(a.ino(), c.ino());
    // A link to a host file: an absolute target is the image's, which has no such file.
    let host = s.outside().join("keep");
    let err = s
        .apply(&layer(&[E::Hardlink(
            "steal",
            host.to_str().expect("utf-8"),
        )]))
        .expect_err("linked to a host file");
    assert!(err.to_string().contains("\"steal\""), "{err}");
    assert_eq!(std::fs::metadata(&host).expect("stat").nlink(), 1);
    // Nor through `..`.
    let err = s
        .apply(&layer(&[E::Hardlink("steal", "../outside/keep")]))
        .expect_err("linked through ..");
    assert!(err.to_string().contains("`..`"), "{err}");
    assert_eq!(std::fs::metadata(&host).expect("stat").nlink(), 1);
    s.outside_untouched();
}

#[test]
fn symlinks_leading_out_resolve_inside_the_root() {
    let s = Scratch::new("symlink");
    let outside = s.outside();
    let out = outside.to_str().expect("utf-8");
    // An absolute symlink to the host's directory, then a file through it: the link is
    // read as the image's /…/outside, made inside the root, never the host's.
    s.apply(&layer(&[
        E::Dir(&format!("{}/", out.trim_start_matches('/'))),
        E::Symlink("abs", out),
        E::File("abs/pwned", "x"),
    ]))
    .expect("through an absolute link");
    assert_eq!(
        read(&s.root().join(out.trim_start_matches('/')).join("pwned")),
        "x"
    );
    // A relative one climbing out: it stops at the root.
    s.apply(&layer(&[
        E::Symlink("up", "../../../../../../.."),
        E::File("up/escaped", "y"),
    ]))
    .expect("through a climbing link");
    assert_eq!(read(&s.root().join("escaped")), "y");
    // A link to a directory the image does not have: refused, nothing made anywhere.
    let err = s
        .apply(&layer(&[
            E::Symlink("dangling", "/no/such/dir"),
            E::File("dangling/f", "z"),
        ]))
        .expect_err("wrote through a dangling link");
    assert!(err.to_string().contains("\"dangling/f\""), "{err}");
    assert!(!Path::new("/no/such/dir").exists());
    // A later file replaces a symlink; it never writes through it.
    s.apply(&layer(&[E::Symlink("keep", &format!("{out}/keep"))]))
        .expect("link");
    s.apply(&layer(&[E::File("keep", "image")]))
        .expect("file over the link");
    assert!(!std::fs::symlink_metadata(s.root().join("keep"))
        .expect("stat")
        .file_type()
        .is_symlink());
    assert_eq!(read(&s.root().join("keep")), "image");
    // A whiteout removes the link, not what it points to.
    s.apply(&layer(&[E::Symlink("hostdir", out)]))
        .expect("link");
    s.apply(&layer(&[E::File(".wh.hostdir", "")]))
        .expect("whiteout");
    assert!(std::fs::symlink_metadata(s.root().join("hostdir")).is_err());
    s.outside_untouched();
}

#[test]
fn a_dotdot_path_fails_the_layer_and_writes_nothing_outside() {
    let s = Scratch::new("dotdot");
    for bad in [
        "../outside/evil",
        "a/../../outside/evil",
        "/../outside/evil",
    ] {
        let err = s.apply(&layer(&[E::File(bad, "evil")])).expect_err(bad);
        assert!(err.to_string().contains("`..`"), "{bad}: {err}");
    }
    let err = s
        .apply(&layer(&[E::File("../.wh.outside", "")]))
        .expect_err("a whiteout through ..");
    assert!(err.to_string().contains("`..`"), "{err}");
    s.outside_untouched();
}

#[test]
fn device_nodes_are_skipped_and_listed() {
    let s = Scratch::new("device");
    let done = s
        .apply(&layer(&[
            E::CharDevice("dev/mem"),
            E::Fifo("run/fifo"),
            E::File("ok", "1"),
        ]))
        .expect("layer");
    assert_eq!(done.skipped, ["dev/mem: a device node"]);
    assert!(std::fs::symlink_metadata(s.root().join("dev/mem")).is_err());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(s.root().join("run/fifo"))
        .expect("fifo")
        .file_type()
        .is_fifo());
    assert_eq!(done.written, 2);
    s.outside_untouched();
}

#[test]
fn gzip_and_zstd_layers_and_owners_moved_into_the_range() {
    let plain = layer(&[E::Dir("d/"), E::File("d/f", "compressed")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &plain).expect("gzip");
    let gz = gz.finish().expect("gzip");
    let zst = ruzstd::encoding::compress_to_vec(
        plain.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    for (name, blob, c) in [
        ("gzip", gz, Compression::Gzip),
        ("zstd", zst, Compression::Zstd),
    ] {
        let s = Scratch::new(name);
        let owners = nix::unistd::geteuid().is_root().then_some(Owners {
            uid_base: 100_000,
            gid_base: 200_000,
            size: 65_536,
        });
        let done = s.apply_as(&blob, c, owners).expect(name);
        assert_eq!((done.written, done.bytes), (2, 10), "{name}");
        let f = s.root().join("d/f");
        assert_eq!(read(&f), "compressed", "{name}");
        let meta = std::fs::metadata(&f).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "{name}");
        assert_eq!(meta.mtime(), 1_700_000_000, "{name}");
        if owners.is_some() {
            assert_eq!((meta.uid(), meta.gid()), (100_000, 200_000), "{name}");
        } else {
            println!("skipped: owners need root to chown, and this test runs as a user");
        }
    }
    // An owner past the range fails the layer, naming the entry.
    let s = Scratch::new("range");
    let err = s
        .apply_as(
            &plain,
            Compression::None,
            Some(Owners {
                uid_base: 100_000,
                gid_base: 100_000,
                size: 0,
            }),
        )
        .expect_err("an owner outside the range");
    assert!(
        err.to_string().contains("\"d/\"") && err.to_string().contains("outside"),
        "{err}"
    );
    assert_eq!(
        Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+zstd").expect("zstd"),
        Compression::Zstd
    );
    let err = Compression::of_media_type("application/vnd.oci.image.config.v1+json")
        .expect_err("a config is no layer");
    assert!(err.to_string().contains("mediaType"), "{err}");
}

#[test]
fn an_opaque_marker_reaches_into_this_layers_own_subdirectories() {
    let s = Scratch::new("opaque-deep");
    s.apply(&layer(&[
        E::File("etc/ssl/old.pem", "lower"),
        E::File("etc/ssl/deeper/older.pem", "lower"),
    ]))
    .expect("lower");
    s.apply(&layer(&[
        E::Dir("etc/"),
        E::Dir("etc/ssl/"),
        E::File("etc/ssl/new.pem", "upper"),
        E::File("etc/.wh..wh..opq", ""),
    ]))
    .expect("upper");
    assert!(!s.root().join("etc/ssl/old.pem").exists());
    assert!(!s.root().join("etc/ssl/deeper").exists());
    assert_eq!(read(&s.root().join("etc/ssl/new.pem")), "upper");
    // A whiteout in a directory the image does not have makes no directory.
    s.apply(&layer(&[E::File("nowhere/.wh.x", "")]))
        .expect("whiteout");
    assert!(!s.root().join("nowhere").exists());
    s.outside_untouched();
}

#[test]
fn a_symlinked_directory_on_the_way_resolves_from_the_root() {
    let s = Scratch::new("symlinked-dir");
    // As Debian's java alternatives: a link to an absolute directory of the image, and a
    // new entry below it whose directories do not exist yet.
    s.apply(&layer(&[
        E::Dir("usr/lib/jvm/java-17/"),
        E::Symlink("usr/lib/jvm/default-java", "/usr/lib/jvm/java-17"),
        E::File("usr/lib/jvm/default-java/conf/x", "through the link"),
    ]))
    .expect("layer");
    assert_eq!(
        read(&s.root().join("usr/lib/jvm/java-17/conf/x")),
        "through the link"
    );
    s.outside_untouched();
}

#[test]
fn owners_are_the_images_and_set_id_bits_never_go_to_the_unpacker() {
    let s = Scratch::new("setuid");
    s.apply(&layer(&[E::Setuid("bin/su", 1000)]))
        .expect("layer");
    let meta = std::fs::metadata(s.root().join("bin/su")).expect("stat");
    if nix::unistd::geteuid().is_root() {
        // Root gives the file the image's owner, and its set-uid bit with it.
        assert_eq!(meta.uid(), 1000);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
    } else {
        // Anyone else owns what they unpack: no set-id bit, or it would be theirs.
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    }
}

#[test]
fn every_member_of_a_gzip_layer_is_read() {
    let s = Scratch::new("members");
    // Two gzip members, as eStargz layers are many: the tar is cut between them.
    let plain = layer(&[E::File("one", "1"), E::File("two", "2")]);
    let mut blob = Vec::new();
    for part in [&plain[..1024], &plain[1024..]] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, part).expect("gzip");
        blob.extend(gz.finish().expect("gzip"));
    }
    let done = s
        .apply_as(&blob, Compression::Gzip, None)
        .expect("two members");
    assert_eq!(done.written, 2);
    assert_eq!(read(&s.root().join("two")), "2");
    // And zstd: two frames with a skippable frame between them.
    let s = Scratch::new("frames");
    let mut blob = ruzstd::encoding::compress_to_vec(
        &plain[..1024],
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    blob.extend([0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]);
    blob.extend(ruzstd::encoding::compress_to_vec(
        &plain[1024..],
        ruzstd::encoding::CompressionLevel::Fastest,
    ));
    let done = s
        .apply_as(&blob, Compression::Zstd, None)
        .expect("two frames");
    assert_eq!(done.written, 2);
    assert_eq!(read(&s.root().join("two")), "2");
}

fn add_to(s: &Scratch, blob: &[u8]) -> Result<Applied> {
    let root = open_root(&s.root()).expect("open root");
    add(root.as_fd(), blob, Compression::None)
}

#[test]
fn an_extension_adds_what_is_new_and_takes_what_is_the_same() {
    let s = Scratch::new("add");
    std::fs::create_dir_all(s.root().join("usr/lib")).expect("lib");
    std::fs::write(s.root().join("usr/lib/libc.so"), "libc").expect("libc");
    std::fs::set_permissions(
        s.root().join("usr"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("usr/lib", s.root().join("lib")).expect("lib link");
    let done = add_to(
        &s,
        &layer(&[
            E::Dir("usr/"),
            E::Dir("usr/lib/"),
            E::File("usr/lib/libc.so", "libc"),
            E::Symlink("lib", "usr/lib"),
            E::Dir("usr/bin/"),
            E::File("usr/bin/kubelet", "kubelet"),
            E::File("lib/libmount.so", "mount"),
        ]),
    )
    .expect("add");
    assert_eq!((done.written, done.present), (3, 4), "{done:?}");
    assert_eq!(
        std::fs::read_to_string(s.root().join("usr/bin/kubelet")).expect("read"),
        "kubelet"
    );
    // Through the root's own symlink, inside the root.
    assert_eq!(
        std::fs::read_to_string(s.root().join("usr/lib/libmount.so")).expect("read"),
        "mount"
    );
    // An existing directory keeps its mode.
    let mode = std::fs::metadata(s.root().join("usr"))
        .expect("usr")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o1777);
    s.outside_untouched();
}

#[test]
fn an_extension_never_replaces_nor_removes() {
    let s = Scratch::new("add-refused");
    std::fs::create_dir_all(s.root().join("usr/lib")).expect("lib");
    std::fs::write(s.root().join("usr/lib/libc.so"), "libc").expect("libc");
    std::os::unix::fs::symlink("usr/lib", s.root().join("lib")).expect("lib link");
    for (entries, path) in [
        (vec![E::File("usr/lib/libc.so", "evil")], "usr/lib/libc.so"),
        (vec![E::File("usr/lib/libc.so", "lib")], "usr/lib/libc.so"),
        (vec![E::Symlink("lib", "/etc")], "lib"),
        (vec![E::Dir("lib/")], "lib"),
        (vec![E::File("usr/lib", "x")], "usr/lib"),
        (
            vec![E::Symlink("usr/lib/libc.so", "libc.so.6")],
            "usr/lib/libc.so",
        ),
        (vec![E::File("usr/.wh.lib", "")], "usr/.wh.lib"),
        (vec![E::Hardlink("opt-libc", "usr/lib/libc.so")], "opt-libc"),
        (
            vec![E::Dir("usr/"), E::File("usr/.wh..wh..opq", "")],
            "usr/.wh..wh..opq",
        ),
    ] {
        let e = add_to(&s, &layer(&entries)).expect_err(path);
        assert!(e.to_string().contains(path), "{path}: {e}");
        assert_eq!(
            std::fs::read_to_string(s.root().join("usr/lib/libc.so")).expect("libc"),
            "libc"
        );
        assert_eq!(
            std::fs::read_link(s.root().join("lib")).expect("link"),
            Path::new("usr/lib")
        );
    }
    s.outside_untouched();
}
