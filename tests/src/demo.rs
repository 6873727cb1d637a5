//! `make demo`: the whole chain on one machine, from nothing but this repository. The
//! node image is built; the lab comes up (a site network with Debian's dnsmasq, the
//! provisioning host beside it); a registry there gets the demo image (busybox httpd
//! and a page, an OCI layout made here, pushed with skopeo); plinth-server starts with
//! a demo machine whose config runs that image rootless with port 80 published; the
//! machine PXE-boots in qemu; the page is fetched from the site through the node's
//! address; the answer and the machine's timeline are printed; everything started is
//! stopped. A failing step ends it, named, with a non-zero exit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::lab::{self, render, wait_for, Lab, Spec, Step};
use crate::registry::{demo_layout, Registry};
use crate::TempDir;

/// The demo machine: qemu's MAC and a UUID of its own.
pub const MAC: &str = "52:54:00:de:00:01";
const UUID: &str = "d3a70000-0000-4000-8000-000000000001";
/// What the container serves.
pub const PAGE: &str = "Hello from a rootless container on a PXE-booted plinth node\n";

/// The demo machine's config, as an operator would declare it.
pub fn machine_config(image: &str, registry: &str) -> serde_json::Value {
    json!({
        "apiVersion": "plinth/v1",
        "hostname": "demo-node",
        "registries": [{"host": registry, "insecure": true}],
        "containers": [{
            "name": "web",
            "image": image,
            "ports": [{"containerPort": 8080, "hostPort": 80}],
            "resources": {"memoryBytes": 67_108_864u64, "milliCpus": 500, "pids": 64},
            "restart": "always"
        }]
    })
}

/// Runs `f` as step `name`: its panic (the helpers assert) becomes the step's error.
fn step<T>(name: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    let started = Instant::now();
    println!("==> {name}");
    let r = catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "failed".into());
        format!("{name}: {why}")
    });
    if r.is_ok() {
        println!("    done in {:.1} s", started.elapsed().as_secs_f64());
    }
    r
}

/// The whole chain; the image from the binaries in `plinth_dir`.
pub fn run(plinth_dir: &Path) -> Result<(), String> {
    let work = TempDir::new("plinth-demo");
    let img = work.0.join("img");
    step("building the node image (plinth-boot build)", || {
        let boot = crate::workspace().join("target/release/plinth-boot");
        let o = Command::new(&boot)
            .args(["build", "-o"])
            .arg(&img)
            .arg("--plinth-dir")
            .arg(plinth_dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", boot.display()));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    })?;
    let lab = step("starting the lab (site network, dnsmasq)", || {
        Lab::up("demo")
    })?;
    let registry_addr = format!("{}:5000", lab::SERVER_IP);
    let registry = step("starting the registry on the provisioning host", || {
        Registry::start_at("demo", Some(&lab.server_host()), &registry_addr)
            .expect("docker-registry or skopeo missing (make deps)")
    })?;
    let layout = work.0.join("layout");
    let image = step("pushing the demo image (OCI layout, skopeo)", || {
        demo_layout(&layout, "1", PAGE);
        registry.push(&layout, "1", "demo/httpd:1")
    })?;
    let server = step("starting plinth-server with the demo machine", || {
        let s = lab.server(TempDir::new("plinth-demo-server"), &img, &[]);
        s.declare_with(MAC, UUID, machine_config(&image, &registry_addr));
        s
    })?;
    let mut machine = step("powering on the machine (PXE, qemu)", || {
        lab.power_on(&Spec::new("bios", MAC, UUID, &work.0))
    })?;
    let steps = step("waiting for the container to run", || {
        wait_for(
            &server,
            &mut machine,
            "container web running",
            Duration::from_secs(300),
            |s: &[Step]| {
                s.iter().any(|e| {
                    e.kind == "service"
                        && e.event["details"]["container"] == "web"
                        && e.event["details"]["state"] == "running"
                })
            },
        )
    })?;
    let address = steps
        .iter()
        .find(|s| s.kind == "network")
        .and_then(|s| s.event["details"]["address"].as_str())
        .ok_or("the machine reported no address")?
        .to_string();
    let answer = step("fetching the page from outside the node", || {
        let start = Instant::now();
        loop {
            let o = lab
                .in_site("curl")
                .args(["-s", "--max-time", "5", &format!("http://{address}/")])
                .output()
                .expect("curl");
            let body = String::from_utf8_lossy(&o.stdout).into_owned();
            if body == PAGE {
                return body;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "http://{address}/ answered {body:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    })?;
    let steps = lab::timeline(&server, &machine);
    println!("\nGET http://{address}/ (from the site network) answered:\n  {answer}");
    println!("{}", render(&format!("machine {MAC}"), &steps));
    if let Some(b) = steps.iter().find(|s| s.kind == "booted") {
        println!(
            "plinth-init's own clock (ms since the kernel started): {}",
            b.event["details"]["timings"]
        );
    }
    for s in steps
        .iter()
        .filter(|s| s.kind == "image" || s.kind == "service")
    {
        let d = &s.event["details"];
        if d["state"] == "pulled" {
            println!(
                "pull of {}: {} blobs, {} bytes, {} ms",
                d["image"], d["fetched"], d["bytes"], d["ms"]
            );
        }
    }
    step("stopping everything", move || {
        drop(machine);
        drop(server);
        drop(registry);
        lab.down();
    })?;
    Ok(())
}

/// Where `make build` leaves the shipped binaries.
pub fn dist_dir() -> PathBuf {
    crate::workspace().join("target/dist")
}
