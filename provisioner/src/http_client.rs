//! HTTP/1.1 over rustls, one connection per request: what the node's client of
//! plinth-server and the Kubernetes API client share. Each caller brings its own TLS
//! trust (a pinned CA, a cluster's CA) and its own failover or retry policy.

use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

/// An `https://host:port[/prefix]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP address (no brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path prefix, without a trailing slash (possibly empty).
    pub prefix: String,
}

impl Url {
    /// Parses an https URL (`plinth.server=`); the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Url> {
        Url::parse_for(s, "plinth.server")
    }

    /// Parses an https URL given as `what` (which the error names).
    pub fn parse_for(s: &str, what: &str) -> Result<Url> {
        let bad = |reason: &str| Error::Config {
            what: format!("{what}={s}"),
            reason: reason.to_string(),
        };
        let rest = s
            .strip_prefix("https://")
            .ok_or_else(|| bad("must be an https:// URL"))?;
        let (hostport, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            (h, p.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None => 443,
        };
        Ok(Url {
            host: host.to_string(),
            port,
            prefix: prefix
                .trim_end_matches('/')
                .split('/')
                .filter(|c| !c.is_empty())
                .map(|c| format!("/{c}"))
                .collect(),
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "https://[{}]:{}{}", self.host, self.port, self.prefix)
        } else {
            write!(f, "https://{}:{}{}", self.host, self.port, self.prefix)
        }
    }
}

/// One request's parts.
pub struct Request<'a> {
    /// `GET`, `POST`, ...
    pub method: &'a str,
    /// The path and query, after the URL's prefix.
    pub path: &'a str,
    /// The body's media type.
    pub content_type: &'a str,
    /// A bearer token for `Authorization`.
    pub bearer: Option<&'a str>,
    /// The body (empty for none).
    pub body: Vec<u8>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bearer token.
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Sends `req` to `url` over `tcp` (TLS by `tls`, the server checked as `name`) and
/// reads the answer, at most `max` bytes: its status and body. `what` names it in errors.
pub async fn exchange(
    tls: Arc<rustls::ClientConfig>,
    tcp: tokio::net::TcpStream,
    url: &Url,
    name: &ServerName<'static>,
    req: Request<'_>,
    max: usize,
    what: &str,
) -> Result<(u16, Vec<u8>)> {
    let resp = send(tls, tcp, url, name, req, what).await?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), max)
        .collect()
        .await
        .map_err(|e| Error::Protocol {
            what: what.to_string(),
            reason: format!("reading the answer: {e}"),
        })?
        .to_bytes()
        .to_vec();
    Ok((status, body))
}

/// Sends `req` as [`exchange`] does and returns the answer with its body unread, for a
/// caller that streams it.
pub async fn send(
    tls: Arc<rustls::ClientConfig>,
    tcp: tokio::net::TcpStream,
    url: &Url,
    name: &ServerName<'static>,
    req: Request<'_>,
    what: &str,
) -> Result<hyper::Response<hyper::body::Incoming>> {
    let tls = TlsConnector::from(tls)
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| Error::Tls {
            what: format!("{what}: TLS"),
            reason: e.to_string(),
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| http_err(what, e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = if url.port == 443 {
        url.host.clone()
    } else if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let mut builder = hyper::Request::builder()
        .method(req.method)
        .uri(format!("{}{}", url.prefix, req.path))
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, req.content_type)
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::CONNECTION, "close");
    if let Some(t) = req.bearer {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let request = builder
        .body(Full::new(Bytes::from(req.body)))
        .map_err(|e| Error::Protocol {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    sender
        .send_request(request)
        .await
        .map_err(|e| http_err(what, e))
}

fn http_err(what: &str, e: hyper::Error) -> Error {
    Error::Protocol {
        what: what.to_string(),
        reason: e.to_string(),
    }
}
