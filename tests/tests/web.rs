//! The operators' web pages on a real plinth-server: curl for what a browser must never
//! get (no session, a node's certificate, a foreign form), Debian's headless chromium for
//! what an operator does (log in, the fleet, a machine followed live, an action). The node
//! here is the node agent's own client (enrolled, posting events and log lines as
//! plinth-init does); `lab.rs` shows a machine that PXE-booted in qemu.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use plinth_tests::browser::Browser;
use plinth_tests::server::{call, Server};
use plinth_tests::{skip, which, TempDir};
use serde_json::{json, Value};

const MAC: &str = "52:54:00:00:0e:01";
const UUID: &str = "6e4a2b1c-0000-4000-8000-00000000e001";
const BOOT: &str = "0f0f0f0f-0000-4000-8000-000000000001";

/// A curl with its own cookie jar: a browser that does only what it is told.
struct Curl<'a> {
    s: &'a Server,
    jar: PathBuf,
    _dir: TempDir,
}

/// An answer: status, headers (lower-case names), body.
struct Answer {
    code: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Vec<String> {
        self.headers
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

impl<'a> Curl<'a> {
    fn new(s: &'a Server) -> Curl<'a> {
        let dir = TempDir::new("plinth-web-curl");
        Curl {
            s,
            jar: dir.0.join("jar"),
            _dir: dir,
        }
    }

    fn go(&self, args: &[&str]) -> Answer {
        let headers = self.jar.with_extension("headers");
        let o = self
            .s
            .command("curl")
            .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(&self.s.ca_cert)
            .arg("-b")
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar)
            .arg("-D")
            .arg(&headers)
            .args(args)
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Answer {
            code: code.trim().parse().unwrap_or(0),
            headers: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: body.to_string(),
        }
    }

    fn get(&self, path: &str) -> Answer {
        self.go(&[&format!("{}{path}", self.s.https)])
    }

    fn post(&self, path: &str, form: &str, extra: &[&str]) -> Answer {
        let url = format!("{}{path}", self.s.https);
        let mut args = vec!["-X", "POST", "--data", form];
        args.extend(extra);
        args.push(&url);
        self.go(&args)
    }

    /// Logs in with `token` as the login form does; the session's CSRF token.
    fn login(&self, token: &str) -> Answer {
        let form = self.get("/login");
        assert_eq!(form.code, 200, "{}", form.body);
        let csrf = csrf_of(&form.body);
        self.post("/login", &format!("csrf={csrf}&token={}", enc(token)), &[])
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The CSRF token in a page's forms.
fn csrf_of(html: &str) -> String {
    html.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or_else(|| panic!("no csrf field in:\n{html}"))
        .to_string()
}

fn has_tools(test: &str, browser: bool) -> bool {
    if which("curl").is_none() {
        skip(test, "curl is missing");
        return false;
    }
    if browser && which("chromium").is_none() {
        skip(test, "chromium is missing: `make lab-deps` installs it");
        return false;
    }
    true
}

/// A node's event as plinth-init sends it.
fn node_event(kind: &str, seq: u64, details: Value) -> Value {
    json!({"apiVersion": "plinth/v1", "type": kind, "mac": MAC, "uuid": UUID, "bootId": BOOT,
           "seq": seq, "uptimeMs": seq * 100, "wallTime": 2, "details": details})
}

fn logs(lines: &[(&str, &str)]) -> Value {
    json!({"bootId": BOOT, "lines": lines.iter().map(|(s, t)| json!({"source": s, "text": t})).collect::<Vec<_>>()})
}

#[test]
fn pages_need_a_session_csrf_and_no_node_certificate() {
    let test = "pages_need_a_session_csrf_and_no_node_certificate";
    if !has_tools(test, false) {
        return;
    }
    let s = Server::start(&[]);
    s.declare(MAC, UUID);
    let anon = Curl::new(&s);
    // Anonymous: sent to the login, shown nothing of the fleet.
    for path in ["/", &format!("/machines/{MAC}")] {
        let a = anon.get(path);
        assert_eq!(a.code, 303, "{path}: {}", a.body);
        assert_eq!(a.header("location"), ["/login"], "{path}");
        assert!(!a.body.contains(MAC), "{path}: {}", a.body);
    }
    assert_eq!(
        anon.get(&format!("/machines/{MAC}/live?boot=-&rows=0&last=0&log=0"))
            .code,
        401
    );
    assert_eq!(
        anon.post(&format!("/machines/{MAC}/reboot"), "csrf=x", &[])
            .code,
        401
    );
    assert_eq!(s.machine(MAC)["pendingAction"], Value::Null);

    // The login form's cookie and the session's: HttpOnly, Secure, SameSite=Strict.
    let op = Curl::new(&s);
    let wrong = op.login("admin.not-the-token");
    assert_eq!(wrong.code, 401, "{}", wrong.body);
    assert!(
        wrong.body.contains("Unknown or revoked operator token"),
        "{}",
        wrong.body
    );
    assert!(op.get("/").code == 303);
    let form = op.get("/login");
    let cookie = form.header("set-cookie").join("\n");
    for part in [
        "__Host-plinth_login=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    // A login posted without the form's own token is refused (login CSRF).
    let forged = op.post("/login", &format!("csrf=x&token={}", enc(&s.operator)), &[]);
    assert_eq!(forged.code, 403, "{}", forged.body);
    let ok = op.login(&s.operator);
    assert_eq!(ok.code, 303, "{}", ok.body);
    assert_eq!(ok.header("location"), ["/"]);
    let session = ok.header("set-cookie").join("\n");
    for part in [
        "__Host-plinth_session=",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(session.contains(part), "{session}");
    }
    let fleet = op.get("/");
    assert_eq!(fleet.code, 200, "{}", fleet.body);
    assert!(fleet.body.contains(MAC), "{}", fleet.body);
    let csp = fleet.header("content-security-policy").join("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(fleet.header("cache-control"), ["no-store"]);

    // A change needs the session's CSRF token, from this site.
    let page = op.get(&format!("/machines/{MAC}"));
    assert_eq!(page.code, 200, "{}", page.body);
    let csrf = csrf_of(&page.body);
    let path = format!("/machines/{MAC}/reboot");
    assert_eq!(op.post(&path, "csrf=forged", &[]).code, 403);
    let evil = op.post(
        &path,
        &format!("csrf={csrf}"),
        &["-H", "Origin: https://evil.example"],
    );
    assert_eq!(evil.code, 403, "{}", evil.body);
    assert_eq!(s.machine(MAC)["pendingAction"], Value::Null);
    let done = op.post(&path, &format!("csrf={csrf}"), &[]);
    assert_eq!(done.code, 303, "{}", done.body);
    assert_eq!(s.machine(MAC)["pendingAction"], "reboot");
    let action = s
        .events(MAC)
        .into_iter()
        .find(|e| e["type"] == "action")
        .expect("the action on the timeline");
    assert_eq!(action["details"]["action"], "reboot");
    assert_eq!(action["details"]["by"], "admin");
    assert_eq!(action["source"], "server");

    // A node's certificate gets no page, cookie or not, and it is a security event.
    let node = s.enrol(MAC, UUID, &s.mint(MAC, UUID).unwrap()).unwrap();
    let (code, _) = call(&node, "GET", "/", None);
    assert_eq!(code, 403);
    let (code, _) = call(&node, "GET", &format!("/machines/{MAC}"), None);
    assert_eq!(code, 403);
    assert!(
        s.security(MAC).iter().any(|r| r.contains("operator page")),
        "{:?}",
        s.security(MAC)
    );

    // What a node sends is text on the page, never markup.
    let evil_line = "<script>alert(1)</script><b>bold</b>";
    assert_eq!(
        call(
            &node,
            "POST",
            "/v1/logs",
            Some(logs(&[("console", evil_line)]))
        )
        .0,
        200
    );
    let (code, _) = call(
        &node,
        "POST",
        "/v1/events",
        Some(node_event("booted", 1, json!({}))),
    );
    assert_eq!(code, 200);
    let page = op.get(&format!("/machines/{MAC}"));
    assert!(
        page.body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains(evil_line));

    // Logging out ends the session on the server, not only in the browser.
    let cookie_value = std::fs::read_to_string(&op.jar)
        .unwrap()
        .lines()
        .find(|l| l.contains("plinth_session"))
        .and_then(|l| l.rsplit('\t').next())
        .unwrap()
        .to_string();
    let out = op.post("/logout", &format!("csrf={csrf}"), &[]);
    assert_eq!(out.code, 303, "{}", out.body);
    let replay = anon.go(&[
        "-H",
        &format!("Cookie: __Host-plinth_session={cookie_value}"),
        &format!("{}/", s.https),
    ]);
    assert_eq!(replay.code, 303, "a closed session still opened the fleet");

    // Revoking the operator's token ends its sessions at once.
    assert_eq!(op.login(&s.operator).code, 303);
    assert_eq!(op.get("/").code, 200);
    std::fs::remove_file(s.data().join("operators/admin")).unwrap();
    assert_eq!(op.get("/").code, 303);
    // Every refusal is in the audit trail.
    let audit = s.audit();
    assert!(audit.contains("node:"), "{audit}");
    assert!(audit.contains("POST /login"), "{audit}");
}

/// Where the tests leave their screenshots.
pub fn shots() -> PathBuf {
    plinth_tests::workspace().join("target/web")
}

#[test]
fn a_browser_logs_in_opens_a_machine_follows_it_live_and_acts() {
    let test = "a_browser_logs_in_opens_a_machine_follows_it_live_and_acts";
    if !has_tools(test, true) {
        return;
    }
    let s = Server::start(&[]);
    s.declare_with(
        MAC,
        UUID,
        json!({"apiVersion": "plinth/v1", "hostname": "rack1-node1",
               "containers": [{"name": "web", "image": "10.0.0.2:5000/demo/httpd:1"},
                              {"name": "job", "image": "10.0.0.2:5000/demo/httpd:1"}]}),
    );
    let node = s.enrol(MAC, UUID, &s.mint(MAC, UUID).unwrap()).unwrap();
    let mut seq = 0;
    let mut send = |kind: &str, details: Value| {
        seq += 1;
        let (code, v) = call(
            &node,
            "POST",
            "/v1/events",
            Some(node_event(kind, seq, details)),
        );
        assert_eq!(code, 200, "{v}");
    };
    send("booted", json!({}));
    send(
        "network",
        json!({"address": "10.33.0.150", "interface": "eth0"}),
    );
    send("enrolled", json!({}));
    send("config", json!({}));
    send("applied", json!({}));
    send(
        "service",
        json!({"container": "web", "state": "running", "address": "10.88.0.10"}),
    );
    assert_eq!(
        call(
            &node,
            "POST",
            "/v1/logs",
            Some(logs(&[
                ("kmsg", "Linux version 6.12"),
                ("container/web/stderr", "httpd started")
            ]))
        )
        .0,
        200
    );

    let mut b = Browser::start(s.netns.as_deref(), &s.pin);
    b.goto(&format!("{}/", s.https));
    assert_eq!(
        b.eval("location.pathname"),
        "/login",
        "anonymous is sent to the login"
    );
    b.eval(&format!(
        "document.getElementById('token').value = {}; document.querySelector('form[action=\"/login\"] button').click()",
        json!(s.operator)
    ));
    b.wait_for(
        "location.pathname === '/' && document.getElementById('fleet')",
        Duration::from_secs(10),
    );
    // The session cookie is the browser's alone: scripts never see it.
    assert_eq!(b.eval("document.cookie"), "");
    let cookies = b.cookies();
    let c = cookies
        .iter()
        .find(|c| c["name"] == "__Host-plinth_session")
        .expect("session cookie");
    assert_eq!(c["httpOnly"], true);
    assert_eq!(c["secure"], true);
    assert_eq!(c["sameSite"], "Strict");
    let row = format!("document.querySelector('#fleet tr[data-mac=\"{MAC}\"]')");
    assert_eq!(
        b.eval(&format!("{row}.dataset.state")),
        "configured",
        "one container of two runs"
    );
    // The fleet follows the machines by itself.
    b.eval("window.stillThisPage = true");
    send(
        "service",
        json!({"container": "job", "state": "running", "address": "10.88.0.11"}),
    );
    b.wait_for(
        &format!("{row} && {row}.dataset.state === 'running'"),
        Duration::from_secs(15),
    );
    assert_eq!(
        b.eval("window.stillThisPage"),
        true,
        "the fleet was reloaded"
    );
    b.screenshot(&shots().join("fleet.png"));

    b.eval(&format!("{row}.querySelector('a').click()"));
    b.wait_for("document.getElementById('machine') && document.getElementById('live').textContent === 'Following live.'", Duration::from_secs(10));
    let text = |b: &mut Browser, sel: &str| {
        b.eval(&format!(
            "Array.from(document.querySelectorAll({})).map(e => e.textContent.trim())",
            json!(sel)
        ))
    };
    assert_eq!(
        text(&mut b, "#containers tr[data-name=web] .state"),
        json!(["running"])
    );
    assert_eq!(
        text(&mut b, "#containers tr[data-name=job] .state"),
        json!(["running"])
    );
    // The boot script fetched over HTTP (the server's `file` event) opens the boot.
    let kinds = text(&mut b, "#timeline tr td:nth-child(3)");
    assert_eq!(
        kinds,
        json!(["file", "booted", "network", "enrolled", "config", "applied", "service", "service"])
    );
    assert_eq!(
        text(&mut b, "#log .line[data-source='container/web/stderr']"),
        json!(["container/web/stderr httpd started"])
    );
    // The machine's identity, and no secret: the page shows what the operator set.
    let identity = b.eval("document.getElementById('identity').innerText");
    assert!(
        identity.as_str().unwrap().contains("10.33.0.150"),
        "{identity}"
    );

    // Live: what the node says now appears without a reload.
    b.eval("window.stillThisPage = true");
    send(
        "service",
        json!({"container": "job", "state": "exited", "exitCode": 3}),
    );
    assert_eq!(
        call(
            &node,
            "POST",
            "/v1/logs",
            Some(logs(&[("container/job/stderr", "job: cannot open /data")]))
        )
        .0,
        200
    );
    b.wait_for(
        "document.querySelector('#log .line[data-source=\"container/job/stderr\"]')",
        Duration::from_secs(10),
    );
    b.wait_for(
        "document.querySelector('#timeline tr.bad[data-kind=service]')",
        Duration::from_secs(10),
    );
    assert_eq!(
        b.eval("window.stillThisPage"),
        true,
        "the page was reloaded"
    );
    assert_eq!(
        b.eval("document.getElementById('state').textContent"),
        "degraded"
    );
    assert_eq!(
        text(&mut b, "#containers tr.bad[data-name=job] .state"),
        json!(["exited"])
    );

    // An action: the button, the redirect back, the action on the timeline.
    b.eval("document.getElementById('reboot').click()");
    b.wait_for(
        "!window.stillThisPage && document.querySelector('#timeline tr[data-kind=action]')",
        Duration::from_secs(10),
    );
    assert_eq!(
        text(&mut b, "#timeline tr[data-kind=action] td:nth-child(5)"),
        json!(["reboot by admin"])
    );
    assert_eq!(s.machine(MAC)["pendingAction"], "reboot");
    b.screenshot(&shots().join("machine.png"));
    assert!(
        std::fs::metadata(shots().join("machine.png"))
            .unwrap()
            .len()
            > 10_000
    );

    // Logging out in the browser: the fleet asks for the token again.
    b.eval("document.querySelector('form[action=\"/logout\"] button').click()");
    b.wait_for("location.pathname === '/login'", Duration::from_secs(10));
    b.goto(&format!("{}/", s.https));
    assert_eq!(b.eval("location.pathname"), "/login");
}

#[test]
fn a_discovered_machine_is_accepted_and_a_quarantined_one_released_from_the_page() {
    let test = "a_discovered_machine_is_accepted_and_a_quarantined_one_released_from_the_page";
    if !has_tools(test, false) {
        return;
    }
    let dir = TempDir::new("plinth-web-fleet");
    let cfg = dir.0.join("config");
    std::fs::create_dir_all(cfg.join("profiles")).unwrap();
    std::fs::write(
        cfg.join("profiles/worker.yaml"),
        "apiVersion: plinth/v1\nconfig:\n  sysctls:\n    vm.swappiness: \"10\"\n",
    )
    .unwrap();
    let boot = plinth_tests::server::placeholder_boot(&dir.0);
    let s = Server::start_in(dir, &boot, &["--config-dir", cfg.to_str().unwrap()]);
    let found = "52:54:00:00:0e:02";
    s.mint(found, "6e4a2b1c-0000-4000-8000-00000000e002")
        .expect("a discovery token");
    // A declared machine whose token is replayed: quarantined.
    s.declare(MAC, UUID);
    let token = s.mint(MAC, UUID).unwrap();
    s.enrol(MAC, UUID, &token).unwrap();
    s.enrol(MAC, UUID, &token).expect_err("a replay");
    assert!(s.quarantined(MAC));

    let op = Curl::new(&s);
    assert_eq!(op.login(&s.operator).code, 303);
    let rows = |query: &str| -> Vec<(String, String)> {
        let page = op.get(&format!("/{query}"));
        assert_eq!(page.code, 200, "{}", page.body);
        page.body
            .split("<tr data-mac=\"")
            .skip(1)
            .map(|r| {
                let mac = r.split('"').next().unwrap().to_string();
                let state = r
                    .split("data-state=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                (mac, state.to_string())
            })
            .collect()
    };
    let all = rows("");
    assert!(
        all.contains(&(found.to_string(), "discovered".to_string())),
        "{all:?}"
    );
    assert!(
        all.contains(&(MAC.to_string(), "quarantined".to_string())),
        "{all:?}"
    );
    assert_eq!(
        rows("?state=discovered"),
        [(found.to_string(), "discovered".to_string())]
    );

    let bogus = op.get("/?state=bogus");
    assert_eq!(bogus.code, 400);
    assert!(
        bogus.body.contains("state:") && bogus.body.contains("is not one of discovered"),
        "{}",
        bogus.body
    );
    let live = op.get(&format!("/machines/{MAC}/live?boot=-&rows=x&last=0&log=0"));
    assert_eq!(live.code, 400);
    assert!(live.body.contains("rows: not a number"), "{}", live.body);

    // Accept: a profile and labels from the page's form.
    let page = op.get(&format!("/machines/{found}"));
    assert!(
        page.body.contains("<option>worker</option>"),
        "{}",
        page.body
    );
    let csrf = csrf_of(&page.body);
    let path = format!("/machines/{found}/accept");
    let bad = op.post(
        &path,
        &format!("csrf={csrf}&profile=worker&labels=rack"),
        &[],
    );
    assert_eq!(bad.code, 400);
    assert!(bad.body.contains("labels"), "{}", bad.body);
    let bad = op.post(&path, &format!("csrf={csrf}&profile=nope&labels="), &[]);
    assert_eq!(bad.code, 400);
    assert!(bad.body.contains("nope"), "{}", bad.body);
    let ok = op.post(
        &path,
        &format!(
            "csrf={csrf}&profile=worker&labels={}",
            enc("rack=r1, role=web")
        ),
        &[],
    );
    assert_eq!(ok.code, 303, "{}", ok.body);
    let m = s.machine(found);
    assert_eq!(m["origin"], json!({"profile": "worker"}), "{m}");
    assert_eq!(
        m["accepted"]["labels"],
        json!({"rack": "r1", "role": "web"}),
        "{m}"
    );
    assert_eq!(m["accepted"]["by"], "admin");
    let accept = s
        .events(found)
        .into_iter()
        .find(|e| e["type"] == "action")
        .expect("the acceptance on the timeline");
    assert_eq!(accept["details"]["action"], "accept");
    assert_eq!(accept["details"]["profile"], "worker");
    assert_eq!(rows("?label=rack%3Dr1").len(), 1);
    assert_eq!(rows("?label=rack%3Dr1")[0].0, found);
    assert!(rows("?label=rack%3Dr2").is_empty());
    assert_eq!(rows("?label=role").len(), 1);
    assert!(rows("?state=discovered").is_empty());

    // Release from quarantine.
    let page = op.get(&format!("/machines/{MAC}"));
    assert!(
        page.body.contains("Release from quarantine"),
        "{}",
        page.body
    );
    let ok = op.post(
        &format!("/machines/{MAC}/release"),
        &format!("csrf={csrf}"),
        &[],
    );
    assert_eq!(ok.code, 303, "{}", ok.body);
    assert!(!s.quarantined(MAC));
    assert!(s
        .events(MAC)
        .iter()
        .any(|e| e["type"] == "action" && e["details"]["action"] == "release"));
    let page = op.get(&format!("/machines/{MAC}"));
    assert!(!page.body.contains("Release from quarantine"));
    // An action the page does not offer is refused, naming what it offers.
    let no = op.post(
        &format!("/machines/{MAC}/inspect"),
        &format!("csrf={csrf}"),
        &[],
    );
    assert_eq!(no.code, 404, "{}", no.body);
}
