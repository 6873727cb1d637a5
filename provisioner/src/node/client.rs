//! The node's HTTPS client: one connection per request (a node makes few), rustls with
//! the [`PinVerifier`], and the client certificate once enrolment gave one. hyper speaks
//! HTTP/1.1 over it. Given several servers of one fleet (`plinth.server=A,B`), a request
//! whose server cannot be reached goes to the next, which then stays the one used.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crypto::provider;
use crate::error::{Error, Result};
pub use crate::http_client::Url;
use crate::http_client::{exchange, send, Request};
use crate::node::verify::PinVerifier;

/// The largest answer read.
const MAX_ANSWER: usize = 2 << 20;
/// How long a connection to one server may take before the next server is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses `plinth.server=`: one https URL, or several of one fleet separated by commas.
pub fn parse_list(s: &str) -> Result<Vec<Url>> {
    s.split(',')
        .map(|u| Url::parse_for(u, "plinth.server"))
        .collect()
}

/// A client for the servers of one fleet (one CA, so one pin); cheap to clone, and the
/// clones share which server is in use.
#[derive(Clone)]
pub struct Client {
    /// The servers, in the order they are tried, with the name each is checked for.
    servers: Arc<Vec<(Url, ServerName<'static>)>>,
    /// The index of the server in use.
    current: Arc<AtomicUsize>,
    /// How many times a request went on to the next server.
    failovers: Arc<AtomicU64>,
    tls: Arc<rustls::ClientConfig>,
    /// The local address connections are made from, when not the kernel's choice.
    source: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", self.url())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// An anonymous client (for enrolment) of one server.
    pub fn new(url: Url, pin: &str) -> Result<Client> {
        Client::fleet(vec![url], pin)
    }

    /// An anonymous client of the servers of one fleet, tried in this order.
    pub fn fleet(urls: Vec<Url>, pin: &str) -> Result<Client> {
        Client::build(urls, pin, None)
    }

    /// A client presenting `cert` (PEM) and `key` (PKCS#8 DER).
    pub fn with_identity(&self, pin: &str, cert_pem: &str, key_der: Vec<u8>) -> Result<Client> {
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| Error::Tls {
            what: "the certificate the server issued".into(),
            reason: e.to_string(),
        })?;
        let key = PrivateKeyDer::Pkcs8(key_der.into());
        let urls = self.servers.iter().map(|(u, _)| u.clone()).collect();
        let mut c = Client::build(urls, pin, Some((vec![cert], key)))?;
        c.source = self.source;
        c.current
            .store(self.current.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(c)
    }

    /// This client, connecting from `addr` (one of the host's addresses): a machine of
    /// a load generator, which spreads its machines over many source addresses.
    pub fn from_address(mut self, addr: std::net::IpAddr) -> Client {
        self.source = Some(addr);
        self
    }

    fn build(
        urls: Vec<Url>,
        pin: &str,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Client> {
        let tls_err = |what: &str| {
            let what = what.to_string();
            move |e: rustls::Error| Error::Tls {
                what,
                reason: e.to_string(),
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("TLS versions"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier::new(pin, provider())));
        let mut cfg = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(tls_err("the client certificate"))?,
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let servers = urls
            .into_iter()
            .map(|url| {
                let name = ServerName::try_from(url.host.clone()).map_err(|e| Error::Config {
                    what: format!("plinth.server host {}", url.host),
                    reason: e.to_string(),
                })?;
                Ok((url, name))
            })
            .collect::<Result<Vec<_>>>()?;
        if servers.is_empty() {
            return Err(Error::Config {
                what: "plinth.server".into(),
                reason: "no server".into(),
            });
        }
        Ok(Client {
            servers: Arc::new(servers),
            current: Arc::new(AtomicUsize::new(0)),
            failovers: Arc::new(AtomicU64::new(0)),
            tls: Arc::new(cfg),
            source: None,
        })
    }

    /// The URL of the server in use.
    pub fn url(&self) -> &Url {
        let i = self.current.load(Ordering::Relaxed) % self.servers.len();
        &self.servers[i].0
    }

    /// How many times a request went on to the next server (shared by clones).
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// This client with the fleet's servers tried from the one at `index` on.
    pub fn starting_at(self, index: usize) -> Client {
        self.current
            .store(index % self.servers.len(), Ordering::Relaxed);
        self
    }

    /// One request; returns the status and body. `what` names it in errors. A server
    /// that cannot be connected to (nothing was sent to it) is passed over for the next
    /// of the fleet, within the same `timeout`.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>)> {
        let what = format!("{method} {}{path}", self.url());
        match tokio::time::timeout(timeout, self.each_server(method, path, body)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Protocol {
                what,
                reason: format!("no answer within {timeout:?}"),
            }),
        }
    }

    async fn each_server(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Vec<u8>)> {
        let (tcp, i) = self.connect_any(method, path).await?;
        let (url, name) = &self.servers[i];
        let what = format!("{method} {url}{path}");
        self.exchange(tcp, url, name, method, path, body, &what)
            .await
    }

    /// A connection to the server in use, or else to the next of the fleet that can be
    /// connected to (nothing was sent to those passed over), and its index.
    async fn connect_any(
        &self,
        method: &str,
        path: &str,
    ) -> Result<(tokio::net::TcpStream, usize)> {
        let n = self.servers.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let (url, _) = &self.servers[i];
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(url))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {CONNECT_TIMEOUT:?}"),
                    ))
                });
            let tcp = match connected {
                Ok(tcp) => tcp,
                Err(e) => {
                    last = Some(Error::Net {
                        what: format!("{method} {url}{path}: connect"),
                        source: e,
                    });
                    continue;
                }
            };
            if i != first {
                // Clones share this: the next request starts at the server that answered.
                self.current.store(i, Ordering::Relaxed);
                self.failovers.fetch_add(k as u64, Ordering::Relaxed);
            }
            return Ok((tcp, i));
        }
        Err(last.unwrap_or_else(|| Error::Protocol {
            what: format!("{method} {path}"),
            reason: "no server".into(),
        }))
    }

    /// `GET path`, its body handed to `sink` as it arrives rather than held: at most
    /// `max` bytes, and no more than `idle` without a byte. Returns the bytes received.
    /// A status other than 200 is [`Error::Status`] with the server's error text.
    pub async fn download(
        &self,
        path: &str,
        max: u64,
        idle: Duration,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        use http_body_util::BodyExt;
        let what = format!("GET {}{path}", self.url());
        let late = |what: &str| Error::Protocol {
            what: what.to_string(),
            reason: format!("nothing received for {idle:?}"),
        };
        let (tcp, i) = tokio::time::timeout(idle, self.connect_any("GET", path))
            .await
            .map_err(|_| late(&what))??;
        let (url, name) = &self.servers[i];
        let req = Request {
            method: "GET",
            path,
            content_type: "application/json",
            bearer: None,
            body: Vec::new(),
        };
        let resp = tokio::time::timeout(idle, send(self.tls.clone(), tcp, url, name, req, &what))
            .await
            .map_err(|_| late(&what))??;
        let status = resp.status().as_u16();
        let declared = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if status == 200 && declared.is_some_and(|n| n > max) {
            return Err(Error::Protocol {
                what,
                reason: format!("the answer is over {max} bytes ({declared:?} declared)"),
            });
        }
        let mut body = resp.into_body();
        if status != 200 {
            let answer = tokio::time::timeout(
                idle,
                http_body_util::Limited::new(body, 64 * 1024).collect(),
            )
            .await
            .ok()
            .and_then(|r| r.ok())
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default();
            return Err(Error::Status {
                what,
                status,
                body: error_text(&answer),
            });
        }
        let mut got = 0u64;
        loop {
            let frame = tokio::time::timeout(idle, body.frame())
                .await
                .map_err(|_| late(&what))?;
            let Some(frame) = frame else { return Ok(got) };
            let frame = frame.map_err(|e| Error::Protocol {
                what: what.clone(),
                reason: format!("reading the answer after {got} bytes: {e}"),
            })?;
            if let Some(data) = frame.data_ref() {
                got += data.len() as u64;
                if got > max {
                    return Err(Error::Protocol {
                        what,
                        reason: format!("the answer is over {max} bytes"),
                    });
                }
                sink(data)?;
            }
        }
    }

    /// A TCP connection to `url`, from the client's source address when it has one.
    async fn connect(&self, url: &Url) -> std::io::Result<tokio::net::TcpStream> {
        let Some(src) = self.source else {
            return tokio::net::TcpStream::connect((url.host.as_str(), url.port)).await;
        };
        let to = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await?
            .find(|a| a.is_ipv4() == src.is_ipv4())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::AddrNotAvailable,
                    format!("{} has no address of the family of {src}", url.host),
                )
            })?;
        let sock = if src.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        sock.bind((src, 0).into())?;
        sock.connect(to).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        tcp: tokio::net::TcpStream,
        url: &Url,
        name: &ServerName<'static>,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        what: &str,
    ) -> Result<(u16, Vec<u8>)> {
        let req = Request {
            method,
            path,
            content_type: "application/json",
            bearer: None,
            body: body.unwrap_or_default(),
        };
        exchange(self.tls.clone(), tcp, url, name, req, MAX_ANSWER, what).await
    }

    /// A JSON call: `body` out, `T` back; a status other than 200 is [`Error::Status`]
    /// with the server's error text.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<T> {
        let what = format!("{method} {path}");
        let bytes = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|source| Error::Json {
                what: format!("encoding {what}"),
                source,
            })?),
            None => None,
        };
        let (status, answer) = self.request(method, path, bytes, timeout).await?;
        if status != 200 {
            return Err(Error::Status {
                what,
                status,
                body: error_text(&answer),
            });
        }
        serde_json::from_slice(&answer).map_err(|source| Error::Json {
            what: format!("the answer to {what}"),
            source,
        })
    }
}

/// The server's error text: its JSON `error`, else the body as text.
fn error_text(answer: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(answer).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::Url;

    #[test]
    fn urls() {
        let u = Url::parse("https://10.0.2.2:8443/").expect("url");
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("10.0.2.2", 8443, "")
        );
        assert_eq!(u.to_string(), "https://10.0.2.2:8443");
        let u = Url::parse("https://[::1]/p/").expect("v6");
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("::1", 443, "/p")
        );
        assert!(Url::parse("http://x").is_err());
        let fleet =
            super::parse_list("https://10.0.0.1:8443,https://10.0.0.2:8443/p").expect("list");
        assert_eq!(fleet.len(), 2);
        assert_eq!(fleet[1].to_string(), "https://10.0.0.2:8443/p");
        assert!(super::parse_list("https://10.0.0.1:8443,").is_err());
        assert!(super::parse_list("https://a,http://b").is_err());
        assert!(Url::parse("https://:1").is_err());
    }
}
