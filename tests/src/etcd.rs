//! A real etcd for the tests and the boot storm: Debian's etcd-server, a single member
//! on loopback ports of its own, its data in a temporary directory.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::TempDir;

/// A single-member etcd on two free loopback ports, killed (and its data removed) when
/// dropped.
pub struct Etcd {
    child: Child,
    client: String,
    _dir: TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` distinct free loopback ports: each listener is held until all are chosen, so the
/// kernel cannot hand the same port out twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

impl Etcd {
    /// Starts one, or skips `test` (None) when etcd is not installed.
    pub fn start(test: &str) -> Option<Etcd> {
        if Command::new("etcd").arg("--version").output().is_err() {
            crate::skip(
                test,
                "etcd is not installed (make deps installs etcd-server)",
            );
            return None;
        }
        let dir = TempDir::new("plinth-etcd");
        let [client, peer] = free_ports();
        let client = format!("http://127.0.0.1:{client}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = crate::without_etcd_env(&mut Command::new("etcd"))
            .args(["--name", "plinth-test", "--data-dir"])
            .arg(dir.0.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("plinth-test={peer}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("etcd.log")).unwrap())
            .spawn()
            .unwrap();
        let mut etcd = Etcd {
            child,
            client,
            _dir: dir,
        };
        let addr = etcd.client.trim_start_matches("http://").to_string();
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            let log = || std::fs::read_to_string(etcd._dir.0.join("etcd.log")).unwrap_or_default();
            if let Ok(Some(status)) = etcd.child.try_wait() {
                panic!(
                    "etcd ended ({status}) before listening on {addr}: {}",
                    log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd did not listen on {addr}: {}",
                log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(etcd)
    }

    /// etcd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `--store` URL of plinth-server for it.
    pub fn url(&self) -> String {
        self.client.replace("http://", "etcd://")
    }
}
