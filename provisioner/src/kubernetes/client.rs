//! JSON requests to a Kubernetes API server: one connection per request over the shared
//! HTTPS plumbing, the server checked against the cluster's CA, the client a bearer
//! token or a client certificate. A status other than 2xx is an [`Error::Status`]
//! carrying the API's own `Status.message`.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;

use crate::crypto::provider;
use crate::error::{Error, Result};
use crate::http_client::{exchange, Request, Url};
use crate::kubernetes::kubeconfig::{Access, Auth};

/// The largest answer read (a list of certificate requests, a ConfigMap).
const MAX_ANSWER: usize = 8 << 20;
/// How long one request may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one API server.
#[derive(Clone)]
pub struct ApiClient {
    url: Url,
    name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    bearer: Option<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("url", &self.url.to_string())
            .finish_non_exhaustive()
    }
}

fn tls_err(what: &str) -> impl Fn(rustls::Error) -> Error + '_ {
    move |e| Error::Tls {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

impl ApiClient {
    /// A client as `access` says: its server, trusting only its CA, as its user.
    pub fn new(access: &Access) -> Result<ApiClient> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(access.ca_pem.as_bytes()) {
            let c = c.map_err(|e| Error::Tls {
                what: format!("the CA of {}", access.server),
                reason: e.to_string(),
            })?;
            roots.add(c).map_err(|e| Error::Tls {
                what: format!("the CA of {}", access.server),
                reason: e.to_string(),
            })?;
        }
        if roots.is_empty() {
            return Err(Error::Tls {
                what: format!("the CA of {}", access.server),
                reason: "no certificate in it".into(),
            });
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("TLS versions"))?
            .with_root_certificates(roots);
        let (cfg, bearer) = match &access.auth {
            Auth::Anonymous => (builder.with_no_client_auth(), None),
            Auth::Token(t) => (builder.with_no_client_auth(), Some(t.clone())),
            Auth::Certificate { cert_pem, key_pem } => {
                let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::Tls {
                        what: "the kubeconfig's client certificate".into(),
                        reason: e.to_string(),
                    })?;
                let key =
                    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Tls {
                        what: "the kubeconfig's client key".into(),
                        reason: e.to_string(),
                    })?;
                let cfg = builder
                    .with_client_auth_cert(chain, key)
                    .map_err(tls_err("the kubeconfig's client certificate"))?;
                (cfg, None)
            }
        };
        ApiClient::build(&access.server, cfg, bearer)
    }

    /// An anonymous client that does not check the server's certificate: only for
    /// reading `cluster-info`, whose content is then checked by its signature and its
    /// CA's pin (kubeadm's token discovery does the same).
    pub(crate) fn unverified(server: &str) -> Result<ApiClient> {
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err("TLS versions"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider())))
            .with_no_client_auth();
        ApiClient::build(server, cfg, None)
    }

    fn build(
        server: &str,
        mut cfg: rustls::ClientConfig,
        bearer: Option<String>,
    ) -> Result<ApiClient> {
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let url = Url::parse_for(server, "the API server")?;
        let name = ServerName::try_from(url.host.clone()).map_err(|e| Error::Config {
            what: format!("the API server's host {}", url.host),
            reason: e.to_string(),
        })?;
        Ok(ApiClient {
            url,
            name,
            tls: Arc::new(cfg),
            bearer,
        })
    }

    /// The server's URL.
    pub fn server(&self) -> String {
        self.url.to_string()
    }

    /// One request: its status and its body as JSON (`null` for an empty or non-JSON
    /// body).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
    ) -> Result<(u16, Value)> {
        let what = format!("{method} {}{path}", self.url);
        let req = Request {
            method,
            path,
            content_type,
            bearer: self.bearer.as_deref(),
            body: body.map(Value::to_string).unwrap_or_default().into_bytes(),
        };
        let call = async {
            let tcp = tokio::net::TcpStream::connect((self.url.host.as_str(), self.url.port))
                .await
                .map_err(|source| Error::Net {
                    what: format!("{what}: connect"),
                    source,
                })?;
            exchange(
                self.tls.clone(),
                tcp,
                &self.url,
                &self.name,
                req,
                MAX_ANSWER,
                &what,
            )
            .await
        };
        let (status, bytes) =
            tokio::time::timeout(TIMEOUT, call)
                .await
                .map_err(|_| Error::Protocol {
                    what: what.clone(),
                    reason: format!("no answer within {TIMEOUT:?}"),
                })??;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// A request whose answer must be 2xx: its body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        content_type: &str,
    ) -> Result<Value> {
        let (status, answer) = self.send(method, path, body, content_type).await?;
        if (200..300).contains(&status) {
            return Ok(answer);
        }
        Err(Error::Status {
            what: format!("{method} {}{path}", self.url),
            status,
            body: answer["message"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| answer.to_string()),
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, None, "application/json").await
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("POST", path, Some(body), "application/json")
            .await
    }

    /// `PUT path` with `body`.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("PUT", path, Some(body), "application/json").await
    }

    /// `DELETE path`; a 404 (already gone) is success.
    pub async fn delete(&self, path: &str) -> Result<()> {
        match self.call("DELETE", path, None, "application/json").await {
            Ok(_) => Ok(()),
            Err(Error::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Accepts any server certificate (the handshake's signatures still checked): see
/// [`ApiClient::unverified`].
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
