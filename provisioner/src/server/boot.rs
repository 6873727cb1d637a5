//! The plain-HTTP listener: the boot chain and nothing else (every other path is 404 and
//! recorded). Stock iPXE has no HTTPS, so the per-machine script carries the HTTPS URL,
//! the CA pin and a single-use token: minted only for a declared machine whose firmware
//! reports the declared UUID, at most one outstanding; a second mint while one is
//! outstanding is a `security` event and puts the machine in quarantine, unless the
//! server that minted the outstanding one has stopped since (its answer may be what was
//! lost: the token is replaced, and that is a `security` event too). Only GET mints
//! (HEAD is 405). The files are read once, at start, and served from memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as AxPath, Query, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::crypto::{random_token, token_hash};
use crate::error::{io, Result};
use crate::schema::{normalize_mac, unix_time, valid_uuid};
use crate::server::assign::identifiers;
use crate::server::fleet::Match;
use crate::server::ident::placeholder_uuid;
use crate::server::kv::LIVE_TTL;
use crate::server::metrics::Metrics;
use crate::server::store::{Pxe, Token};
use crate::server::{
    audit_refusals, host_of, join_host_port, log, proxydhcp, tftp, url_host, ApiError, State,
};

/// The plain-HTTP routes. Every refusal is audited ([`audit_refusals`]).
pub fn router(st: Arc<State>) -> Router {
    Router::new()
        // Other methods on these paths are refused like any other path: 404, recorded.
        .route("/boot.ipxe", get(script).fallback(refused))
        .route("/{file}", get(file).fallback(refused))
        .fallback(refused)
        .layer(axum::middleware::from_fn_with_state(
            st.clone(),
            audit_refusals,
        ))
        .with_state(st)
}

/// The boot chain, read once at start: the script's template, the kernel and the
/// initrd, served as slices of one buffer each (no copy per request).
#[derive(Debug, Clone)]
pub struct Files {
    template: String,
    vmlinuz: Bytes,
    initrd: Bytes,
}

impl Files {
    /// Reads `boot.ipxe`, `vmlinuz` and `initrd` from `dir`.
    pub fn load(dir: &Path) -> Result<Files> {
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(io("reading the boot chain", p))
        };
        let template = dir.join("boot.ipxe");
        Ok(Files {
            template: std::fs::read_to_string(&template)
                .map_err(io("reading the boot chain", template))?,
            vmlinuz: Bytes::from(read("vmlinuz")?),
            initrd: Bytes::from(read("initrd")?),
        })
    }
}

/// What a machine's script gets beyond the image's own template.
struct Sets {
    server: String,
    pin: String,
    token: Option<String>,
    ntp: Option<String>,
}

/// The image's iPXE script with `set` lines for the node's kernel command line.
fn render(template: &str, sets: &Sets) -> String {
    let (first, rest) = template.split_once('\n').unwrap_or((template, ""));
    let mut out = format!(
        "{first}\nset plinth-server {}\nset plinth-ca {}\n",
        sets.server, sets.pin
    );
    if let Some(t) = &sets.token {
        out.push_str(&format!("set plinth-token {t}\n"));
    }
    if let Some(n) = &sets.ntp {
        out.push_str(&format!("set plinth-ntp {n}\n"));
    }
    out.push_str(rest);
    out
}

/// The HTTPS URL and SNTP address to put in a script, from `--advertise-tls` or the
/// host the firmware reached us at.
fn advertised(st: &State, host_header: Option<&str>) -> Option<(String, Option<String>)> {
    let host = match (&st.cfg.advertise_tls, host_header) {
        // Of a fleet's list, the first server's host: the SNTP address is taken from it.
        (Some(a), _) => url_host(a.split(',').next().unwrap_or(a)).to_string(),
        (None, Some(h)) if !h.is_empty() && !h.contains(char::is_whitespace) => {
            host_of(h).to_string()
        }
        _ => return None,
    };
    let server = match &st.cfg.advertise_tls {
        Some(a) => a
            .split(',')
            .map(|u| u.trim_end_matches('/'))
            .collect::<Vec<_>>()
            .join(","),
        None => format!("https://{}", join_host_port(&host, st.https_port)),
    };
    let ntp = st.sntp.map(|a| join_host_port(&host, a.port()));
    Some((server, ntp))
}

/// How a machine is known to the server when its firmware asks for its script.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    /// A file of `--config-dir/machines/` selects it.
    File(String),
    /// An operator declared it through the API, with this UUID.
    Api(String),
    /// An operator accepted it after its discovery.
    Accepted,
    /// Nobody declared it: a discovery token, a discovery-only certificate.
    Discovery,
}

/// Decides whether `mac` gets a token now, under the store's lock, and which kind. Why
/// not is a line of the audit trail and, for a machine with a record whose firmware gave
/// another UUID or asked twice, a `security` event on its timeline; a MAC nobody
/// declared gets a discovery record, as fast as `--discoveries-per-minute` and up to
/// `--max-discovered` allow, and otherwise leaves no record.
fn mint(
    st: &State,
    from: SocketAddr,
    mac: &str,
    uuid: Option<String>,
    serial: Option<String>,
    patient: bool,
) -> Result<Minted, ApiError> {
    let now = unix_time();
    let ttl = st.cfg.token_ttl.as_secs();
    let from_s = from.to_string();
    let fleet = st.fleet();
    let (token, refusal, known, wait) = st.with_machine(mac, |s| {
        let record = s.machine(mac)?;
        let labels = record
            .as_ref()
            .and_then(|m| m.accepted.as_ref())
            .map(|a| a.labels.clone())
            .unwrap_or_default();
        let ids = identifiers(s, mac, uuid.as_deref(), serial.as_deref(), labels)?;
        let mut flags = ids.flags;
        let matched = match fleet.find(&ids.ident) {
            Match::One(r) => Some(r.name()),
            Match::None => None,
            Match::Ambiguous(files) => {
                flags.push(format!(
                    "selected equally by {}: none of them is used",
                    files.join(", ")
                ));
                None
            }
        };
        let known = match (&matched, &record) {
            (Some(f), _) => Known::File(f.clone()),
            (None, Some(m)) if m.declared.is_some() => Known::Api(
                m.declared.as_ref().map(|d| d.uuid.clone()).unwrap_or_default(),
            ),
            (None, Some(m)) if m.accepted.is_some() => Known::Accepted,
            (None, Some(m)) if m.discovered.is_some() => Known::Discovery,
            (None, _) => {
                // A new machine: a discovery record, within the limits.
                let limits = &st.cfg.limits;
                // Counted and made under one lock: new MACs racing do not pass the limit.
                let _counting = st
                    .discovery_lock
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let why = if limits.max_discovered == 0 {
                    Some(format!(
                        "no token: {mac} is not declared, and discovery is off (--max-discovered 0)"
                    ))
                } else if s.discovered_count()? >= limits.max_discovered {
                    Some(format!(
                        "no token: {mac} is not declared, and {} discovered machines wait for an operator already (--max-discovered)",
                        limits.max_discovered
                    ))
                } else if !st.discoveries.take() {
                    Some(format!(
                        "no token: {mac} is not declared, and discoveries are over their rate (--discoveries-per-minute {})",
                        limits.discoveries_per_minute
                    ))
                } else {
                    None
                };
                if let Some(why) = why {
                    return Ok((None, Some((why, "discovery_limit")), None, None));
                }
                s.discover(mac, &from_s)?;
                Known::Discovery
            }
        };
        if matched.is_some() && record.is_none() {
            // A machine a file selects has a record from its first boot on.
            s.ensure(mac)?;
        }
        if let Some(u) = &uuid {
            if !placeholder_uuid(u) {
                let others = s.note_uuid(u, mac)?;
                if !others.is_empty() {
                    let flag = format!(
                        "uuid {u} is also presented by {}: not used to match",
                        others.join(", ")
                    );
                    if !flags.contains(&flag) {
                        flags.push(flag);
                    }
                    for o in &others {
                        s.flag(
                            o,
                            &[format!("uuid {u} is also presented by {mac}: not used to match")],
                        )?;
                    }
                }
            }
        }
        if !flags.is_empty() {
            s.flag(mac, &flags)?;
        }
        let m = s.machine(mac)?;
        let quarantined = m.as_ref().is_some_and(|m| m.quarantine.is_some());
        let previous = m
            .as_ref()
            .and_then(|m| m.token.as_ref())
            .filter(|t| t.outstanding(now));
        let outstanding = previous.is_some();
        // A token minted by a server that has stopped since: the script that carried it
        // may never have been answered (killed between the commit and the answer), so
        // this is the machine asking again, not a second mint. Nothing is lost to an
        // intruder who fetched it first: it stops being accepted here.
        let mut orphaned = None;
        let mut wait_for = None;
        // Only the machine's own retry: from the address the token went to, soon after.
        // An intruder asking for a machine's token after a server's restart, from
        // elsewhere or later, is a second mint as before.
        let retry = previous.filter(|t| {
            now.saturating_sub(t.minted_at) <= ORPHAN_WINDOW_SECS
                && t.minted_to.as_deref() == Some(from.ip().to_string().as_str())
        });
        if let Some(t) = retry {
            if let Some(by) = &t.minted_by {
                if !s.server_alive(by)? {
                    orphaned = Some(by.clone());
                } else if by != s.server_id()
                    && !patient
                    && now.saturating_sub(t.minted_at) <= LIVE_TTL.as_secs() + 2
                {
                    // Another server minted it a moment ago and looks alive: its mark on
                    // the store outlives it by LIVE_TTL, so ask again once that passed.
                    wait_for = Some(LIVE_TTL + std::time::Duration::from_secs(1));
                }
            }
        }
        if wait_for.is_some() {
            return Ok((None, None, Some(known), wait_for));
        }
        let pxe = |minted: bool| Pxe {
            at: now,
            uuid: uuid.clone(),
            serial: serial.clone(),
            token_minted: minted,
        };
        let bound = match &known {
            Known::Api(declared) => Some(declared.clone()),
            _ => uuid.clone(),
        };
        let refusal = if quarantined {
            Some((format!("no token: {mac} is in quarantine"), "quarantine"))
        } else if uuid.is_none() {
            Some((
                format!("no token: no uuid was sent for {mac} (the token is bound to one)"),
                "no_uuid",
            ))
        } else if matches!(&known, Known::Api(_)) && uuid != bound {
            // The UUID asked with stays out of the reason, so that repeats count on one
            // event whatever UUIDs a flood makes up; the audit line has it.
            let declared_uuid = bound.clone().unwrap_or_default();
            s.security_event(
                mac,
                "",
                &format!(
                    "boot script asked for {mac} with a uuid other than the declared {declared_uuid}: no token"
                ),
                Some(&from_s),
            )?;
            Some((
                format!(
                    "no token: uuid {:?} is not the declared one",
                    uuid.as_deref().unwrap_or("")
                ),
                "uuid_mismatch",
            ))
        } else if outstanding && orphaned.is_none() {
            let msg = format!("a second token asked for {mac} while one is outstanding: quarantine");
            s.quarantine(mac, &msg)?;
            s.security_event(mac, "", &msg, Some(&from_s))?;
            Some((msg, "second_mint"))
        } else {
            None
        };
        if refusal.is_some() {
            s.note_pxe(mac, pxe(false), None)?;
            return Ok((None, refusal, Some(known), None));
        }
        if let Some(by) = &orphaned {
            s.security_event(
                mac,
                "",
                &format!(
                    "the outstanding token was minted by server {by}, which has stopped since: replaced (its boot script may never have been answered)"
                ),
                Some(&from_s),
            )?;
        }
        let token = random_token()?;
        let record = Token {
            hash: token_hash(&token),
            uuid: bound.unwrap_or_default(),
            minted_at: now,
            expires_at: now + ttl,
            spent_at: None,
            voided: None,
            discovery: known == Known::Discovery,
            minted_by: Some(s.server_id().to_string()),
            minted_to: Some(from.ip().to_string()),
        };
        s.note_pxe(mac, pxe(true), Some(record))?;
        Ok((Some(token), None, Some(known), None))
    })?;
    if let Some(wait) = wait {
        return Ok(Minted::Wait(wait));
    }
    if let Some((why, code)) = refusal {
        Metrics::count(&st.metrics.boots, "no_token");
        st.metrics.refused("http", code);
        st.audit(
            "anonymous",
            from,
            "GET /boot.ipxe",
            &format!("refused: {why}"),
        );
    }
    if token.is_some() {
        let discovery = known == Some(Known::Discovery);
        Metrics::count(
            &st.metrics.boots,
            if discovery { "discovery" } else { "token" },
        );
        log(&format!(
            "minted {} enrolment token for {mac}{}, valid {ttl}s",
            if discovery { "a discovery" } else { "an" },
            match &known {
                Some(Known::File(f)) => format!(" (machines/{f}.yaml)"),
                _ => String::new(),
            }
        ));
    }
    Ok(Minted::Done(token))
}

/// How long after a mint the machine's own retry (from the same address) may replace
/// a token whose server stopped: a firmware retrying its boot, not a later intruder.
const ORPHAN_WINDOW_SECS: u64 = 300;

/// What [`mint`] came to.
enum Minted {
    /// A token, or none (refused, and audited).
    Done(Option<String>),
    /// Undecided: the outstanding token's server may have stopped before answering; ask
    /// again after this long.
    Wait(std::time::Duration),
}

/// `GET /boot.ipxe?mac=&uuid=&serial=`. Any other method (HEAD, which axum would
/// otherwise answer with the GET handler) is 405: only a GET mints.
async fn script(
    AxState(st): AxState<Arc<State>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    method: Method,
) -> Result<Response, ApiError> {
    if method != Method::GET {
        let mut r = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} /boot.ipxe: the boot script (which mints the token) is GET only"),
        )
        .into_response();
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Ok(r);
    }
    log(&format!(
        "{addr} {method} /boot.ipxe mac={:?}",
        q.get("mac")
    ));
    let Some((server, ntp)) =
        advertised(&st, headers.get(header::HOST).and_then(|h| h.to_str().ok()))
    else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Host header missing and no --advertise-tls URL",
        ));
    };
    let mut token = None;
    let mut known_mac = None;
    if let Some(raw) = q.get("mac") {
        let mac = normalize_mac(raw).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("mac: {raw:?} is not a MAC address"),
            )
        })?;
        let uuid = q
            .get("uuid")
            .filter(|u| valid_uuid(u))
            .map(|u| u.to_ascii_lowercase());
        let serial = q
            .get("serial")
            .filter(|s| s.len() <= 128 && !s.is_empty())
            .cloned();
        token = match mint(&st, addr, &mac, uuid.clone(), serial.clone(), false)? {
            Minted::Done(t) => t,
            Minted::Wait(d) => {
                tokio::time::sleep(d).await;
                match mint(&st, addr, &mac, uuid, serial, true)? {
                    Minted::Done(t) => t,
                    Minted::Wait(_) => None,
                }
            }
        };
        known_mac = Some(mac);
    }
    let sets = Sets {
        server,
        pin: st.ca.pin.clone(),
        token,
        ntp,
    };
    let body = render(&st.boot.template, &sets);
    if let Some(mac) = known_mac {
        // The script is the first request that can make a record (a discovery): what the
        // server saw of this MAC before goes on its timeline now, then the script.
        let started = std::time::Instant::now();
        let st2 = st.clone();
        let len = body.len() as u64;
        crate::server::blocking(move || {
            st2.flush_traffic(&mac);
            let write = |m: &str, k, d| st2.traffic_event(m, k, d);
            st2.traffic
                .file(&write, &mac, "http", "boot.ipxe", len, started.elapsed());
        });
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// `GET /vmlinuz`, `GET /initrd`, with `Range`; HEAD too (no side effect).
async fn file(
    AxState(st): AxState<Arc<State>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    AxPath(name): AxPath<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let data = match name.as_str() {
        "vmlinuz" => st.boot.vmlinuz.clone(),
        "initrd" => st.boot.initrd.clone(),
        _ => return refused_at(&method, &uri),
    };
    log(&format!("{addr} {method} /{name}"));
    let len = data.len() as u64;
    if method == Method::GET {
        let st2 = st.clone();
        crate::server::blocking(move || {
            st2.file_served(addr.ip(), "http", &name, len, std::time::Duration::ZERO)
        });
    }
    let range = headers.get(header::RANGE).and_then(|h| h.to_str().ok());
    let (status, start, end) = match parse_range(range, len) {
        RangeSpec::Whole => (StatusCode::OK, 0, len),
        RangeSpec::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e + 1),
        RangeSpec::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response()
        }
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, end - start);
    if status == StatusCode::PARTIAL_CONTENT {
        resp = resp.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        // A view of the one buffer: no copy.
        Body::from(data.slice(start as usize..end as usize))
    };
    resp.body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// 404 for anything but the boot chain (audited by [`audit_refusals`]).
fn refused_at(method: &Method, uri: &Uri) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "{method} {}: not found (plain HTTP serves the boot chain only)",
            crate::server::audit::cut(uri.path(), 128)
        ),
    )
    .into_response()
}

/// Everything else on plain HTTP.
async fn refused(method: Method, uri: Uri) -> Response {
    refused_at(&method, &uri)
}

/// TFTP's view of the boot directory: `boot.ipxe` there chains to the per-machine
/// script over HTTP (TFTP has no query string to mint a token from), when the HTTP URL
/// is known (`--advertise-http`, or the proxyDHCP address); with `--proxy-dhcp`, the
/// iPXE binaries PXE ROMs are offered come from `--ipxe-dir`.
pub fn tftp_resolver(st: Arc<State>) -> tftp::Resolver {
    let files = tftp::dir_resolver(st.cfg.boot_dir.clone());
    let ipxe = tftp::dir_resolver(st.cfg.ipxe_dir.clone());
    Arc::new(
        move |name: &str| match (&st.http_base, name.trim_start_matches('/')) {
            (Some(base), "boot.ipxe") => Some(tftp::Source::Bytes(
                format!(
                "#!ipxe\nchain {}/boot.ipxe?mac=${{net0/mac}}&uuid=${{uuid}}&serial=${{serial}}\n",
                base.trim_end_matches('/')
            )
                .into_bytes(),
            )),
            (_, f @ (proxydhcp::BIOS_FILE | proxydhcp::UEFI_FILE))
                if st.cfg.proxy_dhcp.is_some() =>
            {
                ipxe(f)
            }
            _ => files(name),
        },
    )
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
