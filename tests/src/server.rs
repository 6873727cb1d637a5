//! A running `plinth-server` for the tests, and the clients that talk to it: curl (an
//! independent TLS client) for operators and anonymous callers, the node agent's own
//! HTTPS client for nodes.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use plinth_provisioner::node::client::{Client, Url};
use plinth_provisioner::node::enroll::{self, Identity};
use plinth_provisioner::schema::Issued;
use serde_json::{json, Value};

use crate::{workspace, TempDir};

/// Writes a boot directory of placeholder files under `dir`; returns it.
pub fn placeholder_boot(dir: &Path) -> PathBuf {
    let boot = dir.join("boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(
        boot.join("boot.ipxe"),
        "#!ipxe\nkernel vmlinuz plinth.server=${plinth-server} plinth.ca=${plinth-ca} plinth.token=${plinth-token}\ninitrd initrd\nboot\n",
    )
    .unwrap();
    std::fs::write(boot.join("vmlinuz"), b"placeholder kernel").unwrap();
    std::fs::write(boot.join("initrd"), b"placeholder initrd").unwrap();
    boot
}

/// A current-thread runtime for the node client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A running plinth-server with its own data directory, killed on drop.
pub struct Server {
    child: Child,
    /// Its directory: `data/`, `server.log` (stderr), `boot/` when placeholder files.
    pub dir: TempDir,
    /// `http://127.0.0.1:PORT`, the boot chain.
    pub http: String,
    /// `https://127.0.0.1:PORT`.
    pub https: String,
    /// The CA pin it printed.
    pub pin: String,
    /// The SNTP address, with --listen-sntp.
    pub sntp: Option<String>,
    /// The TFTP address, with --tftp.
    pub tftp: Option<String>,
    /// The first operator's bearer token.
    pub operator: String,
    /// The network namespace it runs in (a lab's provisioning host), if not this one.
    pub netns: Option<PathBuf>,
    /// The CA's certificate (in `--ca-dir` when given, else in `--data`).
    pub ca_cert: PathBuf,
}

impl Server {
    /// A server over a boot directory of placeholder files (for tests that boot nothing).
    pub fn start(extra: &[&str]) -> Server {
        let dir = TempDir::new("plinth-enroll");
        let boot = placeholder_boot(&dir.0);
        Server::start_in(dir, &boot, extra)
    }

    /// A server over `boot` (an image `plinth-boot build` wrote), its data and log in `dir`.
    pub fn start_in(dir: TempDir, boot: &Path, extra: &[&str]) -> Server {
        Server::launch(dir, boot, extra, None)
    }

    /// A server in the network namespace mounted at `netns` (through nsenter, as a person
    /// would start it on the provisioning host), over `boot`, its data and log in `dir`.
    pub fn launch(dir: TempDir, boot: &Path, extra: &[&str], netns: Option<&Path>) -> Server {
        let bin = workspace().join("target/release/plinth-server");
        assert!(
            bin.exists(),
            "{} is missing: run `make build`",
            bin.display()
        );
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        // A fixed --listen among `extra` (a restart on the same ports) replaces the default.
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .arg("--boot-dir")
            .arg(boot)
            .arg("--data")
            .arg(dir.0.join("data"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.0.join("server.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut words = Vec::new();
        let mut lines = Vec::new();
        let expect = 3
            + usize::from(extra.contains(&"--listen-sntp"))
            + usize::from(extra.contains(&"--tftp") || extra.contains(&"--proxy-dhcp"));
        for _ in 0..expect {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            words.push(line.trim().rsplit(' ').next().unwrap().to_string());
            lines.push(line);
        }
        let find = |what: &str| {
            lines
                .iter()
                .find(|l| l.contains(what))
                .map(|l| l.trim().rsplit(' ').next().unwrap().to_string())
        };
        // Empty when the installer has taken the file away (see `restart`).
        let operator = std::fs::read_to_string(dir.0.join("data/operator-token"))
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(words[0].starts_with("http://"), "{words:?}");
        assert!(words[1].starts_with("https://"), "{words:?}");
        assert!(
            words[2].starts_with("sha256:") && words[2].len() == 71,
            "{words:?}"
        );
        let ca_dir = extra
            .iter()
            .position(|a| *a == "--ca-dir")
            .and_then(|i| extra.get(i + 1))
            .map_or_else(|| dir.0.join("data"), PathBuf::from);
        Server {
            ca_cert: ca_dir.join("ca.crt"),
            child,
            http: words[0].clone(),
            https: words[1].clone(),
            pin: words[2].clone(),
            sntp: find(" SNTP on "),
            tftp: find(" TFTP on "),
            operator,
            dir,
            netns: netns.map(Path::to_path_buf),
        }
    }

    /// Stops this server and starts another on the same data directory.
    pub fn restart(mut self, boot: &Path, extra: &[&str]) -> Server {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, TempDir(PathBuf::new()));
        let mut again = Server::launch(dir, boot, extra, self.netns.as_deref());
        if again.operator.is_empty() {
            again.operator = self.operator.clone();
        }
        again
    }

    /// Kills this server (SIGKILL: no clean shutdown) and hands back its directory, for a
    /// later `start_in` on the same data.
    pub fn kill(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, TempDir(PathBuf::new()))
    }

    /// SIGKILLs the server and waits until it is gone (its sockets closed), keeping
    /// this handle and its directory.
    pub fn sigkill_and_reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs the server process, leaving this handle (for `kill` to reap it).
    pub fn sigkill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }

    /// `program`, run where the server is (in its network namespace, if any).
    pub fn command(&self, program: &str) -> Command {
        crate::in_netns(self.netns.as_deref(), program)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    /// curl against this server: `args` after the common ones; returns (status, body).
    pub fn curl(&self, args: &[&str]) -> (u16, String) {
        let o = self
            .command("curl")
            .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(&self.ca_cert)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// An operator's call (bearer token) on the HTTPS listener.
    pub fn op(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let auth = format!("Authorization: Bearer {}", self.operator);
        let url = format!("{}{path}", self.https);
        let mut args = vec!["-X", method, "-H", &auth, url.as_str()];
        let b;
        if let Some(v) = body {
            b = v.to_string();
            args.extend(["-H", "Content-Type: application/json", "--data-binary", &b]);
        }
        let (code, text) = self.curl(&args);
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Declares `mac` with a config holding only a host name, `node-` and the MAC's last octet.
    pub fn declare(&self, mac: &str, uuid: &str) {
        let name = format!("node-{}", mac.rsplit(':').next().unwrap());
        self.declare_with(
            mac,
            uuid,
            json!({"apiVersion": "plinth/v1", "hostname": name}),
        );
    }

    /// Declares `mac` with `config`.
    pub fn declare_with(&self, mac: &str, uuid: &str, config: Value) {
        let body = json!({"uuid": uuid, "config": config});
        let (code, answer) = self.op("PUT", &format!("/v1/machines/{mac}"), Some(&body));
        assert_eq!(code, 200, "declaring {mac}: {answer}");
    }

    /// The firmware's request for its boot script; returns the token in it, if any.
    pub fn mint(&self, mac: &str, uuid: &str) -> Option<String> {
        self.mint_from(mac, uuid, "127.0.0.1")
    }

    /// [`Server::mint`] from the loopback address `src`.
    pub fn mint_from(&self, mac: &str, uuid: &str, src: &str) -> Option<String> {
        let (code, script) = self.curl(&[
            "--interface",
            src,
            &format!("{}/boot.ipxe?mac={mac}&uuid={uuid}", self.http),
        ]);
        assert_eq!(code, 200, "{script}");
        assert!(
            script.contains(&format!("set plinth-ca {}\n", self.pin)),
            "{script}"
        );
        assert!(
            script.contains(&format!("set plinth-server {}\n", self.https)),
            "{script}"
        );
        script
            .lines()
            .find_map(|l| l.strip_prefix("set plinth-token "))
            .map(String::from)
    }

    pub fn anon(&self) -> Client {
        Client::new(Url::parse(&self.https).unwrap(), &self.pin).unwrap()
    }

    /// Enrols as `mac`/`uuid` with `token`, as plinth-init does; the client holding the
    /// certificate, or the error.
    pub fn enrol(&self, mac: &str, uuid: &str, token: &str) -> Result<Client, String> {
        self.enrol_boot(mac, uuid, token, "0f0f0f0f-0000-4000-8000-000000000001")
            .map(|(c, _)| c)
    }

    /// Enrols as `mac`/`uuid` for boot `boot_id`; the client and what the server issued.
    pub fn enrol_boot(
        &self,
        mac: &str,
        uuid: &str,
        token: &str,
        boot_id: &str,
    ) -> Result<(Client, Issued), String> {
        let id = Identity {
            mac: mac.into(),
            uuid: uuid.into(),
            serial: None,
            boot_id: boot_id.into(),
        };
        let fresh = enroll::fresh_key(mac).unwrap();
        let anon = self.anon();
        let issued = rt()
            .block_on(enroll::enroll(&anon, &id, token, &fresh))
            .map_err(|e| e.to_string())?;
        let c = anon
            .with_identity(&self.pin, &issued.certificate, fresh.key_der)
            .unwrap();
        Ok((c, issued))
    }

    /// `/metrics`, as an operator scrapes it.
    pub fn metrics(&self) -> String {
        let auth = format!("Authorization: Bearer {}", self.operator);
        let (code, text) = self.curl(&["-H", &auth, &format!("{}/metrics", self.https)]);
        assert_eq!(code, 200, "{text}");
        text
    }

    /// The value of one sample of `/metrics` (0 when it is not there).
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn machine(&self, mac: &str) -> Value {
        let (code, m) = self.op("GET", &format!("/v1/machines/{mac}"), None);
        assert_eq!(code, 200, "{m}");
        m
    }

    /// Every event on a machine's timeline, every boot.
    pub fn events(&self, mac: &str) -> Vec<Value> {
        self.machine(mac)["boots"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["events"].as_array().unwrap().clone())
            .collect()
    }

    /// The reasons of the `security` events on a machine's timeline.
    pub fn security(&self, mac: &str) -> Vec<String> {
        self.events(mac)
            .iter()
            .filter(|e| e["type"] == "security")
            .map(|e| e["details"]["reason"].as_str().unwrap().to_string())
            .collect()
    }

    /// A boot's log as an operator reads it: (status, text).
    pub fn boot_log(&self, mac: &str, boot_id: &str) -> (u16, String) {
        self.curl(&[
            "-H",
            &format!("Authorization: Bearer {}", self.operator),
            &format!("{}/v1/machines/{mac}/logs/{boot_id}", self.https),
        ])
    }

    /// `POST /v1/enroll` with `body` as it is, through curl: (status, answer).
    pub fn enroll_raw(&self, body: &str) -> (u16, Value) {
        let url = format!("{}/v1/enroll", self.https);
        let (code, text) = self.curl(&["-X", "POST", "--data-binary", body, &url]);
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The machine's token as operators see it (mint, expiry, spend times), or null.
    pub fn token_view(&self, mac: &str) -> Value {
        self.machine(mac)["token"].clone()
    }

    /// Whether the machine is in quarantine.
    pub fn quarantined(&self, mac: &str) -> bool {
        self.machine(mac)["quarantine"].is_object()
    }

    /// The server's log (its stderr) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
    }

    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.data().join("audit.jsonl")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's call with its client: (status, body).
pub fn call(c: &Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let bytes = body.map(|b| b.to_string().into_bytes());
    let (code, text) = rt()
        .block_on(c.request(method, path, bytes, Duration::from_secs(40)))
        .unwrap();
    (code, serde_json::from_slice(&text).unwrap_or(Value::Null))
}

/// An enrolment body as plinth-init sends it, for a fresh P-256 key.
pub fn enroll_body(mac: &str, uuid: &str, token: &str) -> Value {
    let fresh = enroll::fresh_key(mac).unwrap();
    json!({"apiVersion": "plinth/v1", "token": token, "mac": mac, "uuid": uuid,
           "bootId": "0f0f0f0f-0000-4000-8000-000000000001", "csr": fresh.csr_pem})
}

/// An event body as a node sends it.
pub fn event(mac: &str, uuid: &str, kind: &str) -> Value {
    json!({"apiVersion": "plinth/v1", "type": kind, "mac": mac, "uuid": uuid,
           "bootId": "0f0f0f0f-0000-4000-8000-000000000001", "seq": 1, "uptimeMs": 1, "wallTime": 2})
}
