//! Extensions, end to end on the host: `plinth-boot extension` packs real binaries with
//! their libraries, a real `plinth-server --extensions-dir` serves them over mutual TLS,
//! and the node's own code (`node::extension::install`, as plinth-init calls it) fetches,
//! checks and adds them onto a root, where the binaries then run (chroot).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use plinth_provisioner::node::extension;
use plinth_provisioner::schema::extensions::Extension;
use plinth_tests::server::{rt, Server};
use plinth_tests::{pack_extension, TempDir};
use serde_json::json;

const A: &str = "52:54:00:00:e0:0a";
const B: &str = "52:54:00:00:e0:0b";
const UUID_A: &str = "6e4a2b1c-0000-4000-8000-0000000e000a";
const UUID_B: &str = "6e4a2b1c-0000-4000-8000-0000000e000b";

fn sha256sum(p: &Path) -> String {
    let o = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_node_fetches_checks_and_adds_the_extensions_its_config_lists() {
    let test = "a_node_fetches_checks_and_adds_the_extensions_its_config_lists";
    if !plinth_tests::need_root(test) {
        return;
    }
    let iptables = Path::new("/usr/sbin/iptables");
    if !iptables.exists() {
        plinth_tests::skip(test, "iptables (a dynamic binary to pack) is not installed");
        return;
    }
    let dir = TempDir::new("plinth-ext");
    let exts = dir.0.join("extensions");
    std::fs::create_dir_all(&exts).unwrap();
    // A real dynamic binary with its libraries, and a file large enough that a client
    // holding answers in memory (at most 2 MiB) could not take it.
    let big = dir.0.join("big");
    std::fs::write(
        &big,
        (0..6u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let good = exts.join("net-tools.tar.zst");
    let blob = format!("{}:/opt/blob", big.display());
    let files = ["/usr/sbin/iptables:/usr/sbin/iptables", blob.as_str()];
    let sha = pack_extension(&good, &files);
    assert_eq!(sha, sha256sum(&good), "the printed digest is the file's");
    // The same inputs, the same bytes: a digest in a config stays true after a rebuild.
    assert_eq!(pack_extension(&dir.0.join("again.tar.zst"), &files), sha);
    // One whose file is not what the config says, and one that would replace a file the
    // node has.
    let tampered = exts.join("tampered.tar.zst");
    std::fs::copy(&good, &tampered).unwrap();
    let clash_src = dir.0.join("hostname");
    std::fs::write(&clash_src, "not-the-node\n").unwrap();
    let clash = exts.join("clash.tar.zst");
    let clash_sha = pack_extension(&clash, &[&format!("{}:/etc/hostname", clash_src.display())]);
    let missing_sha = "0".repeat(64);
    let wrong_sha = "1".repeat(64);

    let boot = plinth_tests::server::placeholder_boot(&dir.0);
    let srv = Server::start_in(
        TempDir::new("plinth-ext-srv"),
        &boot,
        &["--extensions-dir", exts.to_str().unwrap()],
    );
    let listed = |name: &str, sha256: &str| json!({"name": name, "sha256": sha256});
    srv.declare_with(
        A,
        UUID_A,
        json!({"apiVersion": "plinth/v1", "hostname": "ext-a", "extensions": [
            listed("net-tools.tar.zst", &sha),
            listed("tampered.tar.zst", &wrong_sha),
            listed("clash.tar.zst", &clash_sha),
            listed("missing.tar.zst", &missing_sha),
        ]}),
    );
    srv.declare_with(
        B,
        UUID_B,
        json!({"apiVersion": "plinth/v1", "hostname": "ext-b"}),
    );
    let a = srv.enrol(A, UUID_A, &srv.mint(A, UUID_A).unwrap()).unwrap();
    let b = srv.enrol(B, UUID_B, &srv.mint(B, UUID_B).unwrap()).unwrap();

    // The node's root: an /etc/hostname of its own, and the work directory beside it.
    let root = dir.0.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "ext-a\n").unwrap();
    let work = dir.0.join("work");
    let ext = |name: &str, sha256: &str| Extension {
        name: name.into(),
        sha256: sha256.into(),
    };

    let done = rt()
        .block_on(extension::install(
            &a,
            &ext("net-tools.tar.zst", &sha),
            &root,
            &work,
        ))
        .expect("the listed extension installs");
    assert_eq!(done.bytes, std::fs::metadata(&good).unwrap().len());
    assert!(
        done.bytes > 2 << 20,
        "{} bytes: not over the old 2 MiB",
        done.bytes
    );
    assert!(done.written > 5 && done.skipped.is_empty(), "{done:?}");
    assert_eq!(
        std::fs::read(root.join("opt/blob")).unwrap(),
        std::fs::read(&big).unwrap()
    );
    // The packed binary runs on the root alone: its loader and libraries came along.
    let out = Command::new("chroot")
        .arg(&root)
        .args(["/usr/sbin/iptables", "--version"])
        .output()
        .unwrap();
    let host = Command::new(iptables).arg("--version").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, host.stdout);
    assert!(
        files_under(&work).is_empty(),
        "the download was not removed"
    );
    // Installed again (a second attempt), everything is found there already.
    let twice = rt()
        .block_on(extension::install(
            &a,
            &ext("net-tools.tar.zst", &sha),
            &root,
            &work,
        ))
        .expect("again");
    assert_eq!(
        (twice.written, twice.present),
        (0, done.written + done.present)
    );

    let before = files_under(&root);
    let refused = |e: plinth_provisioner::error::Error| e.to_string();
    let e = refused(
        rt().block_on(extension::install(
            &a,
            &ext("tampered.tar.zst", &wrong_sha),
            &root,
            &work,
        ))
        .expect_err("a digest other than the config's"),
    );
    assert!(
        e.contains("extension tampered.tar.zst") && e.contains(&sha) && e.contains(&wrong_sha),
        "{e}"
    );
    let e = refused(
        rt().block_on(extension::install(
            &a,
            &ext("clash.tar.zst", &clash_sha),
            &root,
            &work,
        ))
        .expect_err("a file the node has"),
    );
    assert!(
        e.contains("extension clash.tar.zst") && e.contains("etc/hostname"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/hostname")).unwrap(),
        "ext-a\n"
    );
    let e = refused(
        rt().block_on(extension::install(
            &a,
            &ext("missing.tar.zst", &missing_sha),
            &root,
            &work,
        ))
        .expect_err("no such file"),
    );
    assert!(
        e.contains("404") && e.contains("no such file in --extensions-dir"),
        "{e}"
    );
    // B's config lists none: it gets none, whatever it asks.
    let e = refused(
        rt().block_on(extension::install(
            &b,
            &ext("net-tools.tar.zst", &sha),
            &root,
            &work,
        ))
        .expect_err("not in B's config"),
    );
    assert!(
        e.contains("404") && e.contains(&format!("not in the config of {B}")),
        "{e}"
    );
    let e = refused(
        rt().block_on(extension::install(&b, &ext("..", &sha), &root, &work))
            .expect_err("not a name"),
    );
    assert!(e.contains("404"), "{e}");
    assert_eq!(
        files_under(&root),
        before,
        "a refused extension changed the root"
    );
    assert!(files_under(&work).is_empty(), "a refused download was kept");
    // Anonymous: refused at the door.
    let (status, _) = srv.curl(&[&format!("{}/v1/extensions/net-tools.tar.zst", srv.https)]);
    assert!(status == 401 || status == 403, "anonymous: {status}");
}
