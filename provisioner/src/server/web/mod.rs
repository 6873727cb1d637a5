//! The operators' web pages, on the HTTPS listener beside the JSON API: a login that
//! trades an operator token for a session cookie ([`crate::server::session`]), the fleet
//! (every machine with its state, last event and age, filtered by state and label) and a
//! machine (its identity, where its config comes from, its containers, each boot's
//! timeline and its log, followed live over server-sent events; accept, release, reboot,
//! power off). Server-rendered from askama templates (`provisioner/templates/`), readable
//! without JavaScript; one small script (`live.js`) follows a machine page live. What a
//! page shows is worked out in [`view`].

pub mod view;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::extract::{Path as AxPath, Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use serde::{Deserialize, Serialize};

use crate::crypto::token_hash;
use crate::schema::config::MachineConfig;
use crate::schema::normalize_mac;
use crate::server::api::{accept_machine, request_action, Acceptance};
use crate::server::assign::{self, Origin};
use crate::server::auth::{self, request_line};
use crate::server::fleet::render::Reveal;
use crate::server::listener::Peer;
use crate::server::operators;
use crate::server::session::{self, Session, COOKIE, LIFETIME, LOGIN_COOKIE, LOGIN_FORM_LIFETIME};
use crate::server::store::{Machine, Store};
use crate::server::traffic::now_ms;
use crate::server::{ApiError, State};
use view::{Boot, ContainerRow, LogLine, MachineState, Row};

/// Log lines a machine page shows at most (the newest; the whole log is
/// `GET /v1/machines/<mac>/logs/<boot>`).
const MAX_PAGE_LOG_LINES: usize = 2000;
/// How often a live page's stream looks for news.
const LIVE_TICK: Duration = Duration::from_secs(1);

/// The pages' routes, for [`crate::server::https::router`].
pub fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/", get(fleet))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/machines/{mac}", get(machine))
        .route("/machines/{mac}/live", get(live))
        .route("/machines/{mac}/{verb}", post(act))
        .route("/static/plinth.css", get(css))
        .route("/static/live.js", get(js))
        .layer(axum::middleware::map_response(headers))
}

/// Every page: scripts and styles only from this server, no framing, no referrer to other
/// sites (`no-referrer` would make a browser post `Origin: null`), never
/// cached (they carry the session's CSRF token).
async fn headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

async fn css() -> Response {
    static_file("text/css; charset=utf-8", include_str!("plinth.css"))
}

async fn js() -> Response {
    static_file("text/javascript; charset=utf-8", include_str!("live.js"))
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn render(t: &impl Template) -> Result<Response, ApiError> {
    let body = t.render().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering a page: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response())
}

/// The operator's session behind a request: `Ok(None)` for none (a page sends the
/// browser to the login), 403 for a request with a client certificate.
fn session(
    st: &State,
    peer: &Peer,
    headers: &HeaderMap,
    request: &str,
) -> Result<Option<Session>, ApiError> {
    auth::browser(st, peer, request)?;
    Ok(session::cookie(headers, COOKIE).and_then(|id| st.sessions.find(&id, st.cfg.shared_dir())))
}

/// A change's session: live, its CSRF token posted back, and any `Origin` this server.
fn change_session(
    st: &State,
    peer: &Peer,
    headers: &HeaderMap,
    request: &str,
    csrf: &str,
) -> Result<Session, ApiError> {
    let Some(s) = session(st, peer, headers, request)? else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no session: log in at /login first",
        ));
    };
    let who = format!("operator:{}", s.operator);
    if !s.csrf_ok(csrf) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf: the form's token is not this session's (reload the page)",
        )
        .who(who));
    }
    if !same_origin(headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin: the form was posted from another site",
        )
        .who(who));
    }
    Ok(s)
}

/// Whether a request's `Origin`, when a browser sent one, is the host it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = origin
        .to_str()
        .ok()
        .and_then(|o| o.strip_prefix("https://"));
    matches!((origin, host), (Some(o), Some(h)) if o == h)
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    operator: String,
    csrf: String,
    error: String,
}

/// The login form, with a fresh CSRF token in its own cookie.
fn login_form(status: StatusCode, error: &str) -> Result<Response, ApiError> {
    let csrf = crate::crypto::random_token()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let page = render(&LoginPage {
        operator: String::new(),
        csrf: csrf.clone(),
        error: error.to_string(),
    })?;
    let cookie = session::set_cookie(LOGIN_COOKIE, &csrf, LOGIN_FORM_LIFETIME);
    Ok((status, [(header::SET_COOKIE, cookie)], page).into_response())
}

/// `GET /login`.
async fn login_page(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    if session(&st, &peer, &headers, &request_line(&method, &uri))?.is_some() {
        return Ok(Redirect::to("/").into_response());
    }
    login_form(StatusCode::OK, "")
}

/// The login form's fields.
#[derive(Deserialize)]
struct LoginForm {
    csrf: String,
    token: String,
}

/// `POST /login`: an operator token for a session cookie.
async fn login(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Form(f): Form<LoginForm>,
) -> Result<Response, ApiError> {
    let request = request_line(&method, &uri);
    auth::browser(&st, &peer, &request)?;
    let form_ok = session::cookie(&headers, LOGIN_COOKIE)
        .is_some_and(|c| crate::crypto::same(&c, &f.csrf))
        && same_origin(&headers);
    if !form_ok {
        return login_form(
            StatusCode::FORBIDDEN,
            "The form expired or came from another site: try again.",
        );
    }
    let token = f.token.trim();
    let Some(name) = operators::check(st.cfg.shared_dir(), token) else {
        st.audit(
            "anonymous",
            peer.addr,
            &request,
            "refused: unknown or revoked operator token",
        );
        return login_form(
            StatusCode::UNAUTHORIZED,
            "Unknown or revoked operator token.",
        );
    };
    let id = st
        .sessions
        .open(&name, &token_hash(token))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    st.audit(
        &format!("operator:{name}"),
        peer.addr,
        &request,
        "ok: session opened",
    );
    let mut r = Redirect::to("/").into_response();
    let h = r.headers_mut();
    for c in [
        session::set_cookie(COOKIE, &id, LIFETIME),
        session::set_cookie(LOGIN_COOKIE, "", Duration::ZERO),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    Ok(r)
}

/// A form that carries only its CSRF token.
#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// `POST /logout`.
async fn logout(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Form(f): Form<CsrfForm>,
) -> Result<Response, ApiError> {
    let request = request_line(&method, &uri);
    let s = change_session(&st, &peer, &headers, &request, &f.csrf)?;
    if let Some(id) = session::cookie(&headers, COOKIE) {
        st.sessions.close(&id);
    }
    st.audit(
        &format!("operator:{}", s.operator),
        peer.addr,
        &request,
        "ok: session closed",
    );
    Ok((
        [(
            header::SET_COOKIE,
            session::set_cookie(COOKIE, "", Duration::ZERO),
        )],
        Redirect::to("/login"),
    )
        .into_response())
}

/// Everything a page says of one machine.
struct Seen {
    m: Machine,
    origin: Origin,
    config: Option<MachineConfig>,
    config_error: Option<String>,
    boots: Vec<Boot>,
    containers: Vec<ContainerRow>,
    state: MachineState,
    last_ms: Option<u64>,
}

/// How much of a machine's history to read.
#[derive(Clone, Copy, PartialEq)]
enum History {
    /// Every boot (a machine's page).
    All,
    /// Its last boot and the events of no boot: its state and last event (the fleet).
    Last,
}

fn seen(st: &State, s: &Store, m: Machine, history: History) -> crate::Result<Seen> {
    let fleet = st.fleet();
    let (origin, config, config_error) =
        match assign::config(&fleet, &st.secrets, s, &m, Reveal::Redacted) {
            Ok((origin, c)) => (origin, c, None),
            Err(e) => (assign::origin(&fleet, s, &m)?, None, Some(e.to_string())),
        };
    let events = match history {
        History::All => s.events(&m.mac)?,
        History::Last => {
            let last = m
                .boots
                .iter()
                .rev()
                .find(|b| b.boot_id != "-")
                .map_or("", |b| b.boot_id.as_str());
            s.recent_events(&m.mac, last)?
        }
    };
    let boots = view::boots(events);
    let containers = view::containers(config.as_ref(), boots.last());
    let state = view::state(
        &m,
        matches!(origin, Origin::Discovered),
        boots.last(),
        &containers,
    );
    let last_ms = boots
        .last()
        .and_then(|b| b.events.last())
        .map(view::event_ms);
    Ok(Seen {
        m,
        origin,
        config,
        config_error,
        boots,
        containers,
        state,
        last_ms,
    })
}

impl Seen {
    fn hostname(&self) -> String {
        self.config
            .as_ref()
            .and_then(|c| c.hostname.clone())
            .unwrap_or_default()
    }

    fn labels(&self) -> String {
        self.m
            .accepted
            .as_ref()
            .map(|a| {
                a.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    }

    fn has_label(&self, want: &str) -> bool {
        let Some(a) = &self.m.accepted else {
            return false;
        };
        match want.split_once('=') {
            Some((k, v)) => a.labels.get(k.trim()).is_some_and(|x| x == v.trim()),
            None => a.labels.contains_key(want.trim()),
        }
    }

    fn origin_text(&self) -> String {
        match &self.origin {
            Origin::File(f) => format!("file machines/{f}.yaml"),
            Origin::Api => format!(
                "declared by {}",
                self.m.declared.as_ref().map_or("?", |d| d.by.as_str())
            ),
            Origin::Accepted(p) => format!("profile {p}"),
            Origin::Discovered => "none: waiting for acceptance".into(),
        }
    }
}

struct StateOption {
    name: &'static str,
    count: usize,
    selected: bool,
}

struct FleetRow {
    mac: String,
    hostname: String,
    state: &'static str,
    labels: String,
    origin: String,
    last: String,
    last_bad: bool,
    age: String,
    pending: String,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    operator: String,
    csrf: String,
    rows: Vec<FleetRow>,
    total: usize,
    states: Vec<StateOption>,
    label: String,
}

/// The fleet page's filters.
#[derive(Deserialize, Default)]
struct FleetQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    label: String,
}

/// `GET /`: the fleet.
async fn fleet(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Query(q): Query<FleetQuery>,
) -> Result<Response, ApiError> {
    let Some(s) = session(&st, &peer, &headers, &request_line(&method, &uri))? else {
        return Ok(Redirect::to("/login").into_response());
    };
    if !q.state.is_empty() && !MachineState::ALL.iter().any(|x| x.name() == q.state) {
        let names: Vec<_> = MachineState::ALL.iter().map(|x| x.name()).collect();
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "state: {:?} is not one of {}",
                crate::server::audit::cut(&q.state, 32),
                names.join(", ")
            ),
        )
        .who(format!("operator:{}", s.operator)));
    }
    let all = st.with_store(|store| {
        store
            .machines()?
            .into_iter()
            .map(|m| seen(&st, store, m, History::Last))
            .collect::<crate::Result<Vec<_>>>()
    })?;
    let now = now_ms();
    let states = MachineState::ALL
        .iter()
        .map(|s| StateOption {
            name: s.name(),
            count: all.iter().filter(|m| m.state == *s).count(),
            selected: q.state == s.name(),
        })
        .collect();
    let rows = all
        .iter()
        .filter(|m| q.state.is_empty() || m.state.name() == q.state)
        .filter(|m| q.label.trim().is_empty() || m.has_label(&q.label))
        .map(|m| {
            let last = m.boots.last().and_then(|b| b.events.last());
            FleetRow {
                mac: m.m.mac.clone(),
                hostname: m.hostname(),
                state: m.state.name(),
                labels: m.labels(),
                origin: m.origin_text(),
                last: last.map_or_else(String::new, |r| {
                    format!(
                        "{} {}",
                        view::kind_name(r.event.kind),
                        view::describe(r.event.kind, &r.event.details)
                    )
                }),
                last_bad: view::rows(&Boot {
                    boot_id: None,
                    events: last.cloned().into_iter().collect(),
                })
                .first()
                .is_some_and(|r| r.bad),
                age: m.last_ms.map_or_else(String::new, |t| view::age(now, t)),
                pending: m
                    .m
                    .pending_action
                    .map(|a| view::action_name(a).to_string())
                    .unwrap_or_default(),
            }
        })
        .collect();
    render(&FleetPage {
        operator: s.operator,
        csrf: s.csrf,
        rows,
        total: all.len(),
        states,
        label: q.label,
    })
}

/// One boot, as the machine page lists it.
struct BootView {
    title: String,
    rows: Vec<Row>,
}

#[derive(Template)]
#[template(path = "machine.html")]
struct MachinePage {
    operator: String,
    csrf: String,
    mac: String,
    title: String,
    state: &'static str,
    identity: Vec<(String, String)>,
    config: Vec<(String, String)>,
    can_accept: bool,
    can_release: bool,
    profiles: Vec<String>,
    containers: Vec<ContainerRow>,
    boots: Vec<BootView>,
    log_title: String,
    log_sources: Vec<(String, bool)>,
    log_filter: String,
    log: Vec<LogLine>,
    live_boot: String,
    live_rows: usize,
    live_last: u64,
    live_log: usize,
}

/// The machine page's log filter.
#[derive(Deserialize, Default)]
struct MachineQuery {
    #[serde(default)]
    log: String,
}

fn mac_of(raw: &str) -> Result<String, ApiError> {
    normalize_mac(raw).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "mac: {:?} is not a MAC address",
                crate::server::audit::cut(raw, 64)
            ),
        )
    })
}

/// The key a live page follows: the last boot's id, or `pxe` before its node spoke.
fn boot_key(b: Option<&Boot>) -> String {
    match b {
        Some(Boot {
            boot_id: Some(id), ..
        }) => id.clone(),
        Some(_) => "pxe".into(),
        None => "-".into(),
    }
}

/// `GET /machines/{mac}`.
async fn machine(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    AxPath(mac): AxPath<String>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Query(q): Query<MachineQuery>,
) -> Result<Response, ApiError> {
    let Some(s) = session(&st, &peer, &headers, &request_line(&method, &uri))? else {
        return Ok(Redirect::to("/login").into_response());
    };
    let who = format!("operator:{}", s.operator);
    let mac = mac_of(&mac).map_err(|e| e.who(&who))?;
    let found = st.with_store(|store| {
        let Some(m) = store.machine(&mac)? else {
            return Ok(None);
        };
        let seen = seen(&st, store, m, History::All)?;
        let log = match seen.boots.last().and_then(|b| b.boot_id.as_deref()) {
            Some(id) => store.log(&mac, id)?.unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Some((seen, log)))
    })?;
    let Some((seen, log)) = found else {
        return Err(
            ApiError::new(StatusCode::NOT_FOUND, format!("machine {mac}: not known")).who(who),
        );
    };
    let now = now_ms();
    let m = &seen.m;
    let mut identity = vec![("MAC".to_string(), m.mac.clone())];
    let uuid = m
        .declared
        .as_ref()
        .map(|d| d.uuid.clone())
        .or_else(|| m.last_pxe.as_ref().and_then(|p| p.uuid.clone()));
    let mut fact = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            identity.push((k.to_string(), v));
        }
    };
    fact("UUID", uuid);
    fact("Serial", m.last_pxe.as_ref().and_then(|p| p.serial.clone()));
    let address = seen.boots.last().and_then(|b| {
        b.events
            .iter()
            .rev()
            .find(|r| r.event.kind == crate::schema::EventKind::Network)
            .and_then(|r| r.event.details.get("address"))
            .and_then(|a| a.as_str().map(String::from))
    });
    fact("Address", address);
    fact("Boot", seen.boots.last().and_then(|b| b.boot_id.clone()));
    let nows = now / 1000;
    fact(
        "Certificate",
        m.certs
            .iter()
            .rev()
            .find(|c| c.revoked.is_none() && c.not_after > nows)
            .map(|c| {
                format!(
                    "{} (expires in {})",
                    c.serial,
                    view::age(c.not_after * 1000, now)
                )
            }),
    );
    fact(
        "Discovered",
        m.discovered
            .as_ref()
            .map(|d| format!("{} ago from {}", view::age(now, d.at * 1000), d.from)),
    );
    fact(
        "Quarantined",
        m.quarantine
            .as_ref()
            .map(|q| format!("{} ago: {}", view::age(now, q.since * 1000), q.reason)),
    );
    fact(
        "Pending action",
        m.pending_action.map(|a| view::action_name(a).to_string()),
    );
    fact("Flags", Some(m.flags.join(", ")));

    let mut config = vec![("Source".to_string(), seen.origin_text())];
    if let Some(a) = &m.accepted {
        config.push((
            "Accepted".into(),
            format!("by {} {} ago", a.by, view::age(now, a.at * 1000)),
        ));
        if !a.params.is_empty() {
            config.push((
                "Params".into(),
                a.params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
    }
    let labels = seen.labels();
    if !labels.is_empty() {
        config.push(("Labels".into(), labels));
    }
    if let Some(c) = &seen.config {
        config.push((
            "Host name".into(),
            c.hostname.clone().unwrap_or_else(|| "(none)".into()),
        ));
        config.push(("Containers".into(), c.containers.len().to_string()));
        config.push((
            "Users, files".into(),
            format!("{}, {}", c.users.len(), c.files.len()),
        ));
    }
    if let Some(e) = &seen.config_error {
        config.push(("Error".into(), e.clone()));
    }

    let count = seen.boots.len();
    let boots = seen
        .boots
        .iter()
        .enumerate()
        .rev()
        .map(|(i, b)| {
            let first = b.events.first().map_or(0, view::event_ms);
            let id = match &b.boot_id {
                Some(id) => format!("boot {id}"),
                None => "firmware (the node has not reported yet)".into(),
            };
            BootView {
                title: format!(
                    "{id} · {} ago · {} events{}",
                    view::age(now, first),
                    b.events.len(),
                    if i + 1 == count { " · the last" } else { "" }
                ),
                rows: view::rows(b),
            }
        })
        .collect::<Vec<_>>();

    let lines = view::log_lines(&log);
    let mut sources = BTreeSet::new();
    for l in &lines {
        // Both streams of a container under one choice as well as each.
        if let Some(c) = l.source.rsplit_once('/').map(|(c, _)| c) {
            sources.insert(c.to_string());
        }
        sources.insert(l.source.clone());
    }
    let filter = q.log.trim().to_string();
    let mut shown: Vec<LogLine> = lines
        .into_iter()
        .filter(|l| view::log_shown(&l.source, &filter))
        .collect();
    let total = shown.len();
    if shown.len() > MAX_PAGE_LOG_LINES {
        shown.drain(..shown.len() - MAX_PAGE_LOG_LINES);
    }
    let log_title = if total > shown.len() {
        format!("the last boot, the newest {} of {total} lines", shown.len())
    } else {
        format!("the last boot, {total} lines")
    };
    let fleet = st.fleet();
    render(&MachinePage {
        operator: s.operator,
        csrf: s.csrf,
        title: match seen.hostname() {
            h if h.is_empty() => mac.clone(),
            h => format!("{h} · {mac}"),
        },
        mac,
        state: seen.state.name(),
        identity,
        config,
        // A machine file or a declaration wins over an acceptance: offered only when
        // nothing gives the machine a config.
        can_accept: matches!(seen.origin, Origin::Discovered),
        can_release: m.quarantine.is_some(),
        profiles: fleet.profiles.keys().cloned().collect(),
        containers: seen.containers.clone(),
        live_boot: boot_key(seen.boots.last()),
        live_rows: boots.first().map_or(0, |b| b.rows.len()),
        live_last: seen
            .boots
            .last()
            .map_or(view::digest(&[]), |b| view::digest(&b.events)),
        live_log: log.len(),
        boots,
        log_title,
        log_sources: sources
            .into_iter()
            .map(|s| {
                let on = s == filter;
                (s, on)
            })
            .collect(),
        log_filter: filter,
        log: shown,
    })
}

/// An action form: its CSRF token; for `accept`, the profile and labels.
#[derive(Deserialize)]
struct ActForm {
    csrf: String,
    #[serde(default)]
    profile: String,
    #[serde(default)]
    labels: String,
}

/// `POST /machines/{mac}/{accept|release|reboot|poweroff}`: as the API's, then back to
/// the machine's page, where the action is on the timeline.
async fn act(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    AxPath((mac, verb)): AxPath<(String, String)>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Form(f): Form<ActForm>,
) -> Result<Response, ApiError> {
    let request = request_line(&method, &uri);
    let s = change_session(&st, &peer, &headers, &request, &f.csrf)?;
    let who = s.operator;
    let mac = mac_of(&mac).map_err(|e| e.who(format!("operator:{who}")))?;
    match verb.as_str() {
        "accept" => {
            let mut labels = std::collections::BTreeMap::new();
            for kv in f.labels.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let Some((k, v)) = kv.split_once('=') else {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "labels: {:?} is not KEY=VALUE",
                            crate::server::audit::cut(kv, 64)
                        ),
                    )
                    .who(format!("operator:{who}")));
                };
                if k.trim().is_empty() {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("labels: {:?} has no key", crate::server::audit::cut(kv, 64)),
                    )
                    .who(format!("operator:{who}")));
                }
                labels.insert(k.trim().to_string(), v.trim().to_string());
            }
            let a = Acceptance {
                profile: f.profile,
                params: serde_json::Map::new(),
                labels,
            };
            accept_machine(&st, &who, &mac, a)?;
        }
        "release" | "reboot" | "poweroff" => {
            request_action(&st, &who, &mac, &verb)?;
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "{}: no such action (accept, release, reboot, poweroff)",
                    crate::server::audit::cut(other, 64)
                ),
            )
            .who(format!("operator:{who}")))
        }
    }
    st.audit(&format!("operator:{who}"), peer.addr, &request, "ok");
    Ok(Redirect::to(&format!("/machines/{mac}")).into_response())
}

/// Where a live page is: the boot it shows, how many of its rows and their
/// [`view::digest`] (so that a retired or reordered row is noticed), how many log bytes.
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    boot: String,
    rows: usize,
    last: u64,
    log: usize,
}

impl Cursor {
    /// As the stream's event id, for the browser's `Last-Event-ID` when it reconnects.
    fn id(&self) -> String {
        format!("{}|{}|{}|{}", self.boot, self.rows, self.last, self.log)
    }

    fn parse(id: &str) -> Option<Cursor> {
        let mut p = id.split('|');
        let c = Cursor {
            boot: p.next()?.to_string(),
            rows: p.next()?.parse().ok()?,
            last: p.next()?.parse().ok()?,
            log: p.next()?.parse().ok()?,
        };
        p.next().is_none().then_some(c)
    }
}

/// What a live page is sent.
#[derive(Serialize, Default)]
struct Update {
    /// The page is out of date (another boot, retired events, the session gone): load it
    /// again.
    reload: bool,
    state: &'static str,
    rows: Vec<Row>,
    containers: Vec<ContainerRow>,
    log: Vec<LogLine>,
}

impl Update {
    fn reload() -> Update {
        Update {
            reload: true,
            ..Update::default()
        }
    }
}

/// One live page's stream.
struct Follow {
    st: Arc<State>,
    mac: String,
    at: Cursor,
    /// The state last sent.
    state: &'static str,
    /// The machine record and fleet as last looked at: unchanged, nothing is read further.
    seen: u64,
    cookie: String,
    /// The last update (a reload) is sent.
    done: bool,
}

/// A hash of what a page's news can come from: the machine's record (its event counter,
/// its boots' log sizes, quarantine, pending action, certificates) and the fleet's files
/// as loaded.
fn fingerprint(m: &Machine, fleet: &Arc<crate::server::fleet::Fleet>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(m).unwrap_or_default().hash(&mut h);
    // Each load of the fleet's files is a new one (two reloads within a second too).
    (Arc::as_ptr(fleet) as usize).hash(&mut h);
    fleet.loaded_at.hash(&mut h);
    h.finish()
}

/// News for the page `f` follows, and where it is then; `None` when there is none.
fn news(f: &mut Follow) -> Result<Option<(Update, Cursor)>, ApiError> {
    let (st, mac, at) = (&f.st, f.mac.as_str(), &f.at);
    let fleet = st.fleet();
    let mut unchanged = false;
    let found = st.with_store(|store| {
        let Some(m) = store.machine(mac)? else {
            return Ok(None);
        };
        let print = fingerprint(&m, &fleet);
        if print == f.seen {
            unchanged = true;
            return Ok(None);
        }
        f.seen = print;
        let seen = seen(st, store, m, History::All)?;
        let log = match seen.boots.last().and_then(|b| b.boot_id.as_deref()) {
            Some(id) => store.log(mac, id)?.unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Some((seen, log)))
    })?;
    if unchanged {
        return Ok(None);
    }
    let Some((seen, log)) = found else {
        return Ok(Some((Update::reload(), at.clone())));
    };
    let last = seen.boots.last();
    let events = last.map_or(&[][..], |b| b.events.as_slice());
    let rows = last.map(view::rows).unwrap_or_default();
    let shifted = events.len() < at.rows || view::digest(&events[..at.rows]) != at.last;
    if boot_key(last) != at.boot || rows.len() < at.rows || shifted || log.len() < at.log {
        return Ok(Some((Update::reload(), at.clone())));
    }
    // Whole lines only: a batch is stored whole, but read no further than the last newline.
    let end = log[at.log..]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(at.log, |i| at.log + i + 1);
    let new_rows = rows[at.rows..].to_vec();
    let state = seen.state.name();
    if new_rows.is_empty() && end == at.log && state == f.state {
        return Ok(None);
    }
    f.state = state;
    let next = Cursor {
        boot: at.boot.clone(),
        rows: rows.len(),
        last: view::digest(events),
        log: end,
    };
    Ok(Some((
        Update {
            reload: false,
            state,
            rows: new_rows,
            containers: seen.containers,
            log: view::log_lines(&log[at.log..end]),
        },
        next,
    )))
}

/// The next event of a live page's stream: waits for news, a tick at a time; a reload
/// when the session ends (the page then asks for the login), and then the end.
async fn next_update(mut f: Follow) -> Option<(Result<SseEvent, Infallible>, Follow)> {
    if f.done {
        return None;
    }
    loop {
        // The operator's token file is read: off the async workers, as the store is.
        let live = crate::server::blocking(|| {
            f.st.sessions
                .find(&f.cookie, f.st.cfg.shared_dir())
                .is_some()
        });
        let update = if !live {
            Some((Update::reload(), f.at.clone()))
        } else {
            match news(&mut f) {
                Ok(u) => u,
                Err(_) => Some((Update::reload(), f.at.clone())),
            }
        };
        let Some((u, next)) = update else {
            tokio::time::sleep(LIVE_TICK).await;
            continue;
        };
        f.done = u.reload;
        let ev = SseEvent::default()
            .event("update")
            .id(next.id())
            .json_data(&u)
            .unwrap_or_else(|_| SseEvent::default().comment("unencodable"));
        f.at = next;
        return Some((Ok(ev), f));
    }
}

/// `GET /machines/{mac}/live?boot=&rows=&last=&log=`: server-sent `update` events with
/// what came after the page (or after the browser's `Last-Event-ID` when it reconnects),
/// until the session ends. Each tick reads the machine's record only; its events and log
/// only when the record changed.
async fn live(
    AxState(st): AxState<Arc<State>>,
    Extension(peer): Extension<Peer>,
    AxPath(mac): AxPath<String>,
    headers: HeaderMap,
    method: Method,
    uri: Uri,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let request = request_line(&method, &uri);
    let Some(s) = session(&st, &peer, &headers, &request)? else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no session: log in at /login first",
        ));
    };
    let who = format!("operator:{}", s.operator);
    let mac = mac_of(&mac).map_err(|e| e.who(&who))?;
    let from_query = || -> Result<Cursor, ApiError> {
        let field = |name: &str| {
            q.get(name).cloned().ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("{name}: missing")).who(&who)
            })
        };
        let number = |name: &str| {
            field(name)?.parse::<u64>().map_err(|_| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("{name}: not a number")).who(&who)
            })
        };
        Ok(Cursor {
            boot: field("boot")?,
            rows: number("rows")? as usize,
            last: number("last")?,
            log: number("log")? as usize,
        })
    };
    let at = match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Cursor::parse)
    {
        Some(c) => c,
        None => from_query()?,
    };
    let follow = Follow {
        st,
        mac,
        at,
        state: "",
        seen: 0,
        cookie: session::cookie(&headers, COOKIE).unwrap_or_default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(follow, next_update);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        let c = Cursor {
            boot: "0f-aa".into(),
            rows: 12,
            last: 1_700_000_000_123,
            log: 4096,
        };
        assert_eq!(Cursor::parse(&c.id()), Some(c));
        assert_eq!(Cursor::parse("a|1|2"), None);
        assert_eq!(Cursor::parse("a|1|x|2"), None);
        assert_eq!(Cursor::parse("a|1|2|3|4"), None);
    }

    #[test]
    fn origin_must_be_this_host() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h));
        h.insert(header::HOST, HeaderValue::from_static("10.0.0.2:8443"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://10.0.0.2:8443"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://10.0.0.2:8443"),
        );
        assert!(!same_origin(&h));
    }
}
