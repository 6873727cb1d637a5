//! cri-tools' critest against containerd 2 with plinth and with runc, in the same run,
//! on the same containerd (runc is its `runc` runtime handler): plinth fails nothing
//! that runc passes. The images critest runs are the project's, from a registry in the
//! namespace. `PLINTH_UPDATE_BASELINES=1` writes what was measured to tests/baselines/.
//! Slow: `make e2e` runs it (`--ignored`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use plinth_tests::k8s::{registry_image, Cluster, RUNC_HANDLER};
use serde_json::Value;

/// One spec's outcome: its state (passed, failed, skipped, ...) and, unless passed,
/// the first line of why.
type Outcomes = BTreeMap<String, (String, String)>;

fn run_critest(c: &Cluster, handler: Option<&str>, label: &str) -> Outcomes {
    let report = c.root.join(format!("critest-{label}.json"));
    let ep = format!("unix://{}", c.containerd_socket().display());
    let mut cmd = c.in_netns(plinth_tests::k8s::k8s_dir().join("bin/critest"));
    cmd.arg(format!("--runtime-endpoint={ep}"))
        .arg(format!("--image-endpoint={ep}"))
        .arg(format!(
            "--test-images-file={}",
            c.root.join("critest-images.yaml").display()
        ))
        .arg(format!("--ginkgo.json-report={}", report.display()))
        .arg("--ginkgo.no-color")
        .stdin(std::process::Stdio::null());
    if let Some(h) = handler {
        cmd.arg(format!("--runtime-handler={h}"));
    }
    // critest exits non-zero when a spec fails; the report says which.
    let out = cmd.output().unwrap();
    let text = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "critest ({label}) wrote no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let suites: Value = serde_json::from_str(&text).unwrap();
    let mut outcomes = Outcomes::new();
    for suite in suites.as_array().into_iter().flatten() {
        for spec in suite["SpecReports"].as_array().into_iter().flatten() {
            if spec["LeafNodeType"] != "It" {
                continue;
            }
            let mut name: Vec<String> = spec["ContainerHierarchyTexts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            name.push(
                spec["LeafNodeText"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            let state = spec["State"].as_str().unwrap_or("unknown").to_string();
            // The message spans lines (gomega's dump); the rpc error's text is the why.
            let msg = spec["Failure"]["Message"].as_str().unwrap_or_default();
            // Pointers in gomega's dumps differ every run; the baselines should not.
            let mut why = msg
                .split_whitespace()
                .filter(|w| !w.starts_with("<*") && !w.starts_with("0x"))
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(i) = why.find("desc = ") {
                why = format!(
                    "{}: {}",
                    msg.lines().next().unwrap_or_default(),
                    &why[i + 7..]
                );
            }
            // Container and sandbox ids differ every run, wherever they are quoted.
            let why: String = without_ids(&why).chars().take(240).collect();
            outcomes.insert(name.join(" / "), (state, why));
        }
    }
    assert!(!outcomes.is_empty(), "critest ({label}) ran no spec");
    outcomes
}

/// `text` with every run of 64 hex digits (a container's or a sandbox's id) as `<id>`.
fn without_ids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        out.push_str(if run.len() == 64 { "<id>" } else { &run });
        run.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// The first line of `program --version`.
fn version(program: &Path) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_default()
}

fn summary(label: &str, runtime: &Path, o: &Outcomes) -> String {
    let count = |s: &str| o.values().filter(|(st, _)| st == s).count();
    let mut text = format!(
        "# critest {} against containerd {} + {label} ({}), the project's images from a local registry;\n\
         # run as root on a development machine of this project (hybrid cgroups, no CAP_SYS_RESOURCE).\n\
         # passed={} failed={} skipped={} other={}\n",
        std::env::var("CRI_TOOLS_VERSION").unwrap_or_default(),
        std::env::var("CONTAINERD_VERSION").unwrap_or_default(),
        version(runtime),
        count("passed"),
        count("failed"),
        count("skipped"),
        o.len() - count("passed") - count("failed") - count("skipped"),
    );
    for (name, (state, why)) in o {
        text.push_str(&format!("{state:<8} {name}"));
        if !why.is_empty() {
            text.push_str(&format!("  -- {why}"));
        }
        text.push('\n');
    }
    text
}

#[test]
#[ignore = "slow (critest twice, about ten minutes): `make e2e` runs it"]
fn critest_plinth_passes_what_runc_passes() {
    let test = "critest_plinth_passes_what_runc_passes";
    if !plinth_tests::need_root(test) {
        return;
    }
    if let Some(why) = plinth_tests::k8s::missing() {
        plinth_tests::skip(test, &why);
        return;
    }
    let mut c = Cluster::containerd_only();
    c.start_registry();
    std::fs::write(
        c.root.join("critest-images.yaml"),
        format!(
            "defaultTestContainerImage: {}\nwebServerTestImage: {}\n",
            registry_image("busybox"),
            registry_image("web")
        ),
    )
    .unwrap();
    let plinth = run_critest(&c, None, "plinth");
    let runc = run_critest(&c, Some(RUNC_HANDLER), "runc");
    let out = plinth_tests::workspace().join("target/critest");
    std::fs::create_dir_all(&out).unwrap();
    let runc_bin = plinth_tests::which("runc").unwrap_or_else(|| "/usr/sbin/runc".into());
    for (label, bin, o) in [
        ("plinth", plinth_tests::plinth_bin(), &plinth),
        ("runc", runc_bin, &runc),
    ] {
        let text = summary(label, &bin, o);
        print!("{text}");
        std::fs::write(out.join(format!("critest-{label}.txt")), &text).unwrap();
        if std::env::var_os("PLINTH_UPDATE_BASELINES").is_some() {
            let base = plinth_tests::workspace().join("tests/baselines");
            std::fs::write(base.join(format!("critest-{label}.txt")), &text).unwrap();
        }
    }
    let runc_passed = runc.values().filter(|(s, _)| s == "passed").count();
    assert!(
        runc_passed > 0,
        "runc passed no critest spec: the setup is broken"
    );
    let regressions: Vec<String> = runc
        .iter()
        .filter(|(_, (s, _))| s == "passed")
        .filter(|(name, _)| plinth.get(*name).is_none_or(|(s, _)| s != "passed"))
        .map(|(name, _)| format!("{name}: {:?}", plinth.get(name)))
        .collect();
    assert!(
        regressions.is_empty(),
        "{} critest specs runc passes fail under plinth:\n{}",
        regressions.len(),
        regressions.join("\n")
    );
}
