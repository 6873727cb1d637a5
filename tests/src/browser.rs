//! Debian's chromium, headless, driven over the DevTools protocol on a pipe
//! (`--remote-debugging-pipe`: JSON messages, each ended by a NUL, written to its fd 3 and
//! read from its fd 4). A page is loaded, read and clicked as an operator's browser would:
//! cookies, redirects, the content security policy and the page's own script are the
//! browser's. Used by the web page's tests.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::TempDir;

/// One headless chromium with one tab.
pub struct Browser {
    child: Child,
    to: std::fs::File,
    from: Receiver<Value>,
    next: u64,
    session: String,
    _profile: TempDir,
}

/// How long one protocol call may take.
const CALL: Duration = Duration::from_secs(30);

impl Browser {
    /// Starts chromium where `netns` is (this namespace when `None`), trusting a server
    /// whose certificate chain holds the key of pin `sha256:HEX` (the server's CA pin, as
    /// plinth-server prints it): no other certificate error is ignored.
    pub fn start(netns: Option<&Path>, pin: &str) -> Browser {
        let hex = pin.strip_prefix("sha256:").expect("a sha256: pin");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex pin"))
            .collect();
        let spki = base64::engine::general_purpose::STANDARD.encode(bytes);
        let profile = TempDir::new("plinth-chromium");
        let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
        let (to_read, to_write) = nix::unistd::pipe2(cloexec).expect("pipe");
        let (from_read, from_write) = nix::unistd::pipe2(cloexec).expect("pipe");
        let mut cmd = crate::in_netns(netns, "chromium");
        cmd.args([
            "--headless=new",
            // As root in a VM: chromium's sandbox needs an unprivileged user.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            "--window-size=1360,1000",
        ])
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let (a, b) = (to_read.as_raw_fd(), from_write.as_raw_fd());
        use std::os::unix::process::CommandExt;
        // SAFETY: dup/dup2/fcntl on descriptors this process holds, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first: either source may be 3 or 4 itself.
                let a2 = libc::fcntl(a, libc::F_DUPFD_CLOEXEC, 10);
                let b2 = libc::fcntl(b, libc::F_DUPFD_CLOEXEC, 10);
                if a2 < 0
                    || b2 < 0
                    || libc::dup2(a2, 3) < 0
                    || libc::dup2(b2, 4) < 0
                    || libc::fcntl(3, libc::F_SETFD, 0) < 0
                    || libc::fcntl(4, libc::F_SETFD, 0) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .expect("chromium is missing: `make lab-deps` installs it");
        drop(to_read);
        drop(from_write);
        let (tx, rx) = channel();
        let reader: OwnedFd = from_read;
        std::thread::spawn(move || {
            let mut r = BufReader::new(std::fs::File::from(reader));
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            child,
            to: std::fs::File::from(to_write),
            from: rx,
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call("Target.createTarget", json!({"url": "about:blank"}), false);
        let id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": id, "flatten": true}),
            false,
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b.call("Page.enable", json!({}), true);
        b.call("Runtime.enable", json!({}), true);
        b
    }

    /// One protocol call, on the tab (`tab`) or the browser; its result.
    fn call(&mut self, method: &str, params: Value, tab: bool) -> Value {
        self.try_call(method, params, tab)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// One protocol call; its result, or the protocol's error (a page being replaced
    /// has no context to evaluate in for a moment).
    fn try_call(&mut self, method: &str, params: Value, tab: bool) -> Result<Value, String> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if tab {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).expect("json");
        bytes.push(0);
        self.to.write_all(&bytes).expect("writing to chromium");
        let deadline = Instant::now() + CALL;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method} within {CALL:?}"));
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    return Err(e.to_string());
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Loads `url` and waits for the page (and any redirect) to finish loading.
    pub fn goto(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}), true);
        assert!(
            r.get("errorText").is_none(),
            "loading {url}: {}",
            r["errorText"]
        );
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
        );
    }

    /// The value of JavaScript `expr` in the page.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            true,
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expr}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page (across navigations); fails after `within`
    /// with the page's text.
    pub fn wait_for(&mut self, expr: &str, within: Duration) {
        let start = Instant::now();
        loop {
            // An error while a navigation replaces the page is "not yet".
            let r = self.try_call(
                "Runtime.evaluate",
                json!({"expression": format!("!!({expr})"), "returnByValue": true}),
                true,
            );
            if r.is_ok_and(|r| r["result"]["value"] == json!(true)) {
                return;
            }
            if start.elapsed() > within {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!("waited {within:?} for {expr}; the page says:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The browser's cookies (`name`, `value`, `httpOnly`, `secure`, `sameSite`, ...).
    pub fn cookies(&mut self) -> Vec<Value> {
        self.call("Storage.getCookies", json!({}), false)["cookies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves what the tab shows, the whole page, as a PNG.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
            true,
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("data"))
            .expect("base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("writing the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
