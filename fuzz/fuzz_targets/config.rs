//! config.json as the runtime reads it: parse, validate against a real bundle
//! directory, and the parts compiled before any process exists (mount options,
//! capabilities, the seccomp filter). Any input must give Ok or an error, never a
//! panic.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use plinth_runtime::{capabilities, config, mount, seccomp};

fn bundle() -> &'static Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("plinth-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(d.join("rootfs"));
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = config::parse(data) else {
        return;
    };
    if let Some(s) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        let _ = seccomp::compile(s);
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let _ = mount::Options::parse(m.options().as_deref().unwrap_or(&[]), &format!("mounts[{i}]"));
    }
    if let Some(p) = spec.process() {
        let _ = capabilities::Sets::from_config(p.capabilities().as_ref());
    }
    let _ = config::validate(bundle(), spec);
});
