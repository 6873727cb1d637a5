//! Images from a real OCI registry: Debian's docker-registry on loopback, the demo image
//! (busybox's httpd and a page, an OCI layout made by `plinth_tests::registry`) pushed
//! into it with skopeo, pulled by the node agent's own code into a content store,
//! unpacked once, and run with the real `plinth`.
#![allow(clippy::unwrap_used)]

use plinth_provisioner::node::image::ContentStore;
use plinth_provisioner::node::pull::{pull, Registry as Settings};
use plinth_tests::registry::{demo_layout, Registry};
use plinth_tests::{Bundle, TempDir};

const PAGE: &str = "plinth demo: served from an image pulled from a registry\n";

#[test]
fn an_image_pulled_from_a_registry_is_unpacked_once_and_runs() {
    let test = "an_image_pulled_from_a_registry_is_unpacked_once_and_runs";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let scratch = TempDir::new("plinth-pull");
    let layout = scratch.0.join("layout");
    demo_layout(&layout, "demo", PAGE);
    let image = registry.push(&layout, "demo", "plinth/demo:1");

    let store = ContentStore::open(&scratch.0.join("store")).unwrap();
    let insecure = Settings {
        insecure: true,
        ..Settings::default()
    };
    let rt = plinth_tests::server::rt();
    let pulled = rt.block_on(pull(&store, &image, &insecure)).unwrap();
    // The manifest, its config and its one layer.
    assert_eq!(pulled.fetched, 3, "{pulled:?}");
    assert!(pulled.image.fresh);
    let rootfs = pulled.image.rootfs.clone();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("www/index.html")).unwrap(),
        PAGE
    );
    // Again: nothing fetched, nothing unpacked, the same root.
    let again = rt.block_on(pull(&store, &image, &insecure)).unwrap();
    assert_eq!((again.fetched, again.image.fresh), (0, false));
    assert_eq!(again.image.rootfs, rootfs);
    // By digest too.
    let by_digest = format!("{}/plinth/demo@{}", registry.addr, pulled.manifest);
    let third = rt.block_on(pull(&store, &by_digest, &insecure)).unwrap();
    assert_eq!((third.fetched, third.image.rootfs), (0, rootfs.clone()));

    // A tag the registry does not have: an error naming the image, nothing stored.
    let missing = format!("{}/plinth/demo:nosuch", registry.addr);
    let err = rt
        .block_on(pull(&store, &missing, &insecure))
        .unwrap_err()
        .to_string();
    assert!(err.contains(&missing), "{err}");
    let images: Vec<_> = std::fs::read_dir(scratch.0.join("store/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    // Not a reference at all.
    let err = rt
        .block_on(pull(&store, "UPPER/Case:??", &insecure))
        .unwrap_err()
        .to_string();
    assert!(err.contains("image \"UPPER/Case:??\""), "{err}");

    // The image's root runs under plinth, read-only (every container of the image
    // shares it).
    if !plinth_tests::need_root(test) {
        return;
    }
    let mut b = Bundle::busybox("unused");
    b.config["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    b.config["process"]["args"] = serde_json::json!(["/bin/busybox", "cat", "/www/index.html"]);
    let (code, out, err) = b.run(&plinth_tests::unique("pulled"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, PAGE);
}
