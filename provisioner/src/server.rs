//! plinth-server, the boot half: the per-machine iPXE script, kernel and initrd (with
//! Range), TFTP for plain PXE ROMs, and the event API backed by the embedded store.
//! A thread per connection over blocking sockets: boot traffic is a few requests per
//! machine, and it keeps the server free of an async runtime.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::error::{io, net, Error, Result};
use crate::http::{self, Request};
use crate::schema::{normalize_mac, valid_uuid, Action, Event, EventKind, Reply, MAX_EVENT_BYTES};
use crate::store::Store;
use crate::tftp;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// The directory `plinth-boot build` wrote.
    pub boot_dir: PathBuf,
    /// The store's directory.
    pub data: PathBuf,
    /// The URL nodes reach this server at; default: from each request's Host header.
    pub advertise: Option<String>,
    /// Reply `poweroff` to every `booted` event (tests, burn-in).
    pub poweroff_after_boot: bool,
    /// TFTP listen address, when wanted.
    pub tftp: Option<SocketAddr>,
}

/// Concurrent connections served at most.
pub const MAX_CONNECTIONS: usize = 256;

struct State {
    cfg: Config,
    store: Mutex<Store>,
}

/// Binds and serves forever. `on_ready` gets the bound HTTP and TFTP addresses.
pub fn serve(cfg: Config, on_ready: impl FnOnce(SocketAddr, Option<SocketAddr>)) -> Result<()> {
    for f in ["boot.ipxe", "vmlinuz", "initrd"] {
        let p = cfg.boot_dir.join(f);
        if !p.is_file() {
            return Err(Error::Config {
                what: format!("--boot-dir {}", cfg.boot_dir.display()),
                reason: format!(
                    "{} is missing (run `plinth-boot build -o {}`)",
                    p.display(),
                    cfg.boot_dir.display()
                ),
            });
        }
    }
    let store = Store::open(&cfg.data)?;
    let listener = TcpListener::bind(cfg.listen).map_err(net(format!("binding {}", cfg.listen)))?;
    let addr = listener.local_addr().map_err(net("local address"))?;
    let mut tftp_addr = None;
    if let Some(t) = cfg.tftp {
        let sock = UdpSocket::bind(t).map_err(net(format!("binding TFTP {t}")))?;
        tftp_addr = Some(sock.local_addr().map_err(net("TFTP local address"))?);
        let files = tftp::dir_resolver(cfg.boot_dir.clone());
        let boot_dir = cfg.boot_dir.clone();
        let advertise = cfg.advertise.clone();
        // A PXE ROM fetching boot.ipxe over TFTP sends no Host header: the script gets
        // the --advertise URL; without one, the image's own fallback applies.
        let resolver: tftp::Resolver =
            Arc::new(
                move |name: &str| match (&advertise, name.trim_start_matches('/')) {
                    (Some(base), "boot.ipxe") => {
                        render_script(&boot_dir, base).ok().map(String::into_bytes)
                    }
                    _ => files(name),
                },
            );
        std::thread::spawn(move || tftp::serve(sock, resolver));
    }
    let state = Arc::new(State {
        cfg,
        store: Mutex::new(store),
    });
    on_ready(addr, tftp_addr);
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        // A thread per connection, bounded: past the cap a client gets 503 at once
        // rather than the server running out of threads.
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = json_error(&mut stream, 503, "too many connections; retry");
            continue;
        }
        let st = state.clone();
        let mine = active.clone();
        let spawned = std::thread::Builder::new().spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(60)));
            let _ = handle(&st, stream);
            mine.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            // The closure (and its decrement) was dropped with the failed spawn.
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
    Ok(())
}

impl State {
    /// Runs `f` on the store under its lock, which is released before any reply is
    /// written (a slow client must not hold it); None if a panic poisoned the lock.
    fn with_store<T>(&self, f: impl FnOnce(&mut Store) -> T) -> Option<T> {
        self.store.lock().ok().map(|mut s| f(&mut s))
    }
}

fn handle(st: &State, stream: TcpStream) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let req = match http::read_request(&mut r) {
        Ok(req) => req,
        Err(e) => return json_error(&mut w, 400, &e.to_string()),
    };
    // An access log on stderr: the operator's view of the boot chain as it happens.
    let peer = w.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let query = if req.query.is_empty() {
        String::new()
    } else {
        format!("?{}", req.query)
    };
    let _ = writeln!(
        std::io::stderr(),
        "{peer} {} {}{query}",
        req.method,
        req.path
    );
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("GET" | "HEAD", ["boot.ipxe"]) => boot_script(st, &req, &mut w),
        ("GET" | "HEAD", [name @ ("vmlinuz" | "initrd")]) => {
            send_file(&st.cfg.boot_dir.join(name), &req, &mut w)
        }
        ("POST", ["v1", "events"]) => {
            let body = match http::read_body(&mut r, &req, MAX_EVENT_BYTES) {
                Ok(b) => b,
                Err((code, msg)) => return json_error(&mut w, code, &msg),
            };
            post_event(st, &body, &mut w)
        }
        ("GET", ["v1", "machines"]) => {
            let Some(body) =
                st.with_store(|s| serde_json::to_vec_pretty(&s.machines()).unwrap_or_default())
            else {
                return json_error(&mut w, 500, "store lock poisoned");
            };
            http::respond(&mut w, 200, "application/json", &body, &[])
        }
        ("GET", ["v1", "machines", mac]) => with_mac(&mut w, mac, |mac, w| {
            // Every handler answers after the store's lock is released: a client that
            // reads slowly must not stall the store for the write timeout.
            let Some(body) = st.with_store(|s| {
                s.machine(&mac)
                    .map(|m| serde_json::to_vec_pretty(m).unwrap_or_default())
            }) else {
                return json_error(w, 500, "store lock poisoned");
            };
            match body {
                Some(body) => http::respond(w, 200, "application/json", &body, &[]),
                None => json_error(w, 404, &format!("machine {mac}: never seen")),
            }
        }),
        ("GET", ["v1", "machines", mac, "action"]) => with_mac(&mut w, mac, |mac, w| {
            let Some(taken) = st.with_store(|s| s.take_action(&mac)) else {
                return json_error(w, 500, "store lock poisoned");
            };
            match taken {
                Ok(action) => reply(w, Reply { action }),
                Err(e) => json_error(w, 500, &e.to_string()),
            }
        }),
        ("POST", ["v1", "machines", mac, verb @ ("poweroff" | "reboot")]) => {
            with_mac(&mut w, mac, |mac, w| {
                let action = if *verb == "poweroff" {
                    Action::Poweroff
                } else {
                    Action::Reboot
                };
                let Some(set) = st.with_store(|s| s.set_action(&mac, action)) else {
                    return json_error(w, 500, "store lock poisoned");
                };
                match set {
                    Ok(()) => http::respond(
                        w,
                        200,
                        "application/json",
                        json!({"mac": mac, "pendingAction": action})
                            .to_string()
                            .as_bytes(),
                        &[],
                    ),
                    Err(e) => json_error(w, 500, &e.to_string()),
                }
            })
        }
        (_, ["boot.ipxe" | "vmlinuz" | "initrd"]) | (_, ["v1", ..]) => json_error(
            &mut w,
            405,
            &format!("{} {}: method not allowed", req.method, req.path),
        ),
        _ => json_error(&mut w, 404, &format!("{}: not found", req.path)),
    }
}

fn with_mac(
    w: &mut TcpStream,
    raw: &str,
    f: impl FnOnce(String, &mut TcpStream) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match normalize_mac(&http::percent_decode(raw)) {
        Some(mac) => f(mac, w),
        None => json_error(w, 400, &format!("mac: {raw:?} is not a MAC address")),
    }
}

fn json_error<W: Write>(w: &mut W, code: u16, msg: &str) -> std::io::Result<()> {
    http::respond(
        w,
        code,
        "application/json",
        json!({ "error": msg }).to_string().as_bytes(),
        &[],
    )
}

fn reply<W: Write>(w: &mut W, r: Reply) -> std::io::Result<()> {
    http::respond(
        w,
        200,
        "application/json",
        serde_json::to_string(&r)
            .unwrap_or_else(|_| "{}".into())
            .as_bytes(),
        &[],
    )
}

fn post_event<W: Write>(st: &State, body: &[u8], w: &mut W) -> std::io::Result<()> {
    let ev = match Event::parse(body) {
        Ok(ev) => ev,
        Err(msg) => return json_error(w, 400, &msg),
    };
    let booted = ev.kind == EventKind::Booted;
    let Some(recorded) = st.with_store(|s| s.record(ev)) else {
        return json_error(w, 500, "store lock poisoned");
    };
    match recorded {
        Ok(mut action) => {
            if action.is_none() && booted && st.cfg.poweroff_after_boot {
                action = Some(Action::Poweroff);
            }
            reply(w, Reply { action })
        }
        Err(e) => json_error(w, 500, &e.to_string()),
    }
}

fn boot_script<W: Write>(st: &State, req: &Request, w: &mut W) -> std::io::Result<()> {
    if let Some(raw) = req.query_param("mac") {
        let Some(mac) = normalize_mac(&raw) else {
            return json_error(w, 400, &format!("mac: {raw:?} is not a MAC address"));
        };
        // Where each machine is: at the PXE stage now, with what its firmware says it is.
        let uuid = req
            .query_param("uuid")
            .filter(|u| valid_uuid(u))
            .map(|u| u.to_ascii_lowercase());
        let serial = req
            .query_param("serial")
            .filter(|s| s.len() <= 128 && !s.is_empty());
        // A poisoned store does not stop a machine from booting.
        let noted = st
            .with_store(|s| s.note_pxe(&mac, uuid, serial))
            .unwrap_or(Ok(()));
        if let Err(e) = noted {
            return json_error(w, 500, &e.to_string());
        }
    }
    let base = match (&st.cfg.advertise, req.header("host")) {
        (Some(a), _) => a.trim_end_matches('/').to_string(),
        (None, Some(h)) if !h.is_empty() && !h.contains(char::is_whitespace) => {
            format!("http://{h}")
        }
        _ => return json_error(w, 400, "Host header missing and no --advertise URL"),
    };
    let script = match render_script(&st.cfg.boot_dir, &base) {
        Ok(s) => s,
        Err(e) => return json_error(w, 500, &e),
    };
    let body = if req.method == "HEAD" {
        Vec::new()
    } else {
        script.into_bytes()
    };
    http::respond(w, 200, "text/plain", &body, &[])
}

/// The image's iPXE script with `set plinth-server <base>` right after the `#!ipxe` line.
pub fn render_script(boot_dir: &Path, base: &str) -> std::result::Result<String, String> {
    let path = boot_dir.join("boot.ipxe");
    let template =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let (first, rest) = template.split_once('\n').unwrap_or((template.as_str(), ""));
    Ok(format!(
        "{first}\nset plinth-server {}\n{rest}",
        base.trim_end_matches('/')
    ))
}

/// What a `Range` header asks of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// No (usable) range: the whole file.
    Whole,
    /// Bytes `start..=end`.
    Part(u64, u64),
    /// A range outside the file (416).
    Unsatisfiable,
}

/// Parses a single `bytes=` range against a file of `len` bytes.
pub fn parse_range(h: Option<&str>, len: u64) -> RangeSpec {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeSpec::Whole;
    };
    if spec.contains(',') {
        return RangeSpec::Whole; // multipart ranges: send the whole file, as the RFC allows
    }
    let parsed = (|| -> Option<(u64, u64)> {
        let (a, b) = spec.split_once('-')?;
        let last = len.checked_sub(1)?;
        match (a.trim(), b.trim()) {
            ("", n) => {
                let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
                Some((len.saturating_sub(n), last))
            }
            (s, "") => Some((s.parse().ok()?, last)),
            (s, e) => Some((s.parse().ok()?, e.parse::<u64>().ok()?.min(last))),
        }
    })();
    match parsed {
        Some((start, end)) if start < len && start <= end => RangeSpec::Part(start, end),
        _ => RangeSpec::Unsatisfiable,
    }
}

fn send_file<W: Write>(path: &Path, req: &Request, w: &mut W) -> std::io::Result<()> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return json_error(w, 404, &format!("{}: {e}", path.display())),
    };
    let len = f.metadata()?.len();
    let (status, start, count, extra) = match parse_range(req.header("range"), len) {
        RangeSpec::Whole => (200, 0, len, vec![("Accept-Ranges", "bytes".to_string())]),
        RangeSpec::Part(s, e) => (
            206,
            s,
            e - s + 1,
            vec![
                ("Accept-Ranges", "bytes".to_string()),
                ("Content-Range", format!("bytes {s}-{e}/{len}")),
            ],
        ),
        RangeSpec::Unsatisfiable => {
            return http::respond(
                w,
                416,
                "text/plain",
                b"",
                &[("Content-Range", format!("bytes */{len}"))],
            );
        }
    };
    http::write_head(w, status, "application/octet-stream", count, &extra)?;
    if req.method == "HEAD" {
        return w.flush();
    }
    f.seek(SeekFrom::Start(start))?;
    std::io::copy(&mut f.take(count), w)?;
    w.flush()
}

/// Checks that the data directory can be used (for a clear error before binding).
pub fn check_data_dir(data: &Path) -> Result<()> {
    std::fs::create_dir_all(data).map_err(io("creating --data directory", data))
}

#[cfg(test)]
mod tests {
    use super::{parse_range, RangeSpec};

    #[test]
    fn ranges() {
        assert_eq!(parse_range(Some("bytes=0-9"), 100), RangeSpec::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=90-"), 100), RangeSpec::Part(90, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), RangeSpec::Part(90, 99));
        assert_eq!(
            parse_range(Some("bytes=0-1000"), 100),
            RangeSpec::Part(0, 99)
        );
        assert_eq!(
            parse_range(Some("bytes=100-"), 100),
            RangeSpec::Unsatisfiable
        );
        assert_eq!(parse_range(Some("bytes=x-"), 100), RangeSpec::Unsatisfiable);
        assert_eq!(parse_range(None, 100), RangeSpec::Whole);
    }
}
