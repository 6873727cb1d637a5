//! Kubernetes' token discovery, as kubeadm joins a node: the `cluster-info` ConfigMap of
//! `kube-public`, read anonymously, holds a kubeconfig (the API server's address and its
//! CA) and, per bootstrap token, a detached JWS of that kubeconfig (HS256 keyed by the
//! token's secret, made by the controller-manager's `bootstrapsigner`). A node that holds
//! the token knows the kubeconfig came from the cluster; the CA's pin
//! (`sha256:<hex of its SubjectPublicKeyInfo>`, the same form as `plinth.ca=`) says it is
//! the cluster the operator meant.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::hmac;
use serde_json::Value;

use crate::crypto::{pin_of_cert, same};
use crate::error::{Error, Result};
use crate::kubernetes::client::ApiClient;
use crate::kubernetes::kubeconfig::{Access, Auth};

/// A bootstrap token, `ID.SECRET`: six and sixteen of `[a-z0-9]`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// The public part: names the Secret `bootstrap-token-ID` and the JWS key `kid`.
    pub id: String,
    /// The secret part: the HMAC key.
    pub secret: String,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even in a debug print.
        write!(f, "BootstrapToken({}.[secret])", self.id)
    }
}

fn token_part(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl std::str::FromStr for BootstrapToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<BootstrapToken> {
        match s.split_once('.') {
            Some((id, secret)) if token_part(id, 6) && token_part(secret, 16) => {
                Ok(BootstrapToken {
                    id: id.into(),
                    secret: secret.into(),
                })
            }
            _ => Err(Error::Config {
                what: "bootstrap token".into(),
                reason: "not ID.SECRET (6 and 16 of a-z, 0-9)".into(),
            }),
        }
    }
}

/// The detached JWS of `content` by token `id` and `secret`: `HEADER..SIGNATURE`, as the
/// bootstrapsigner writes it (`{"alg":"HS256","kid":ID}`).
pub fn sign(content: &str, id: &str, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#));
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(content));
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&key, input.as_bytes()).as_ref());
    format!("{header}..{sig}")
}

/// Whether `jws` is `content`'s detached JWS by token `id` and `secret`: HS256 only, the
/// header's `kid` the token's, the signature compared in constant time.
pub fn verify(jws: &str, content: &str, id: &str, secret: &str) -> bool {
    let Some((header, sig)) = jws.split_once("..") else {
        return false;
    };
    let Some(h) = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
    else {
        return false;
    };
    if h["alg"] != "HS256" || h["kid"] != id {
        return false;
    }
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(content));
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let want = URL_SAFE_NO_PAD.encode(hmac::sign(&key, input.as_bytes()).as_ref());
    same(&want, sig)
}

/// What discovery found: the cluster as its signed kubeconfig names it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterInfo {
    /// The API server's URL.
    pub server: String,
    /// Its CA, PEM: the only root the node trusts for it from now on.
    pub ca_pem: String,
    /// The CA's pin, `sha256:<hex>`.
    pub ca_pin: String,
}

fn discovery(reason: impl Into<String>) -> Error {
    Error::Protocol {
        what: "cluster-info".into(),
        reason: reason.into(),
    }
}

/// Checks the `cluster-info` ConfigMap (as the API answers it, JSON) for `token` and the
/// operator's CA pins (`caCertHashes`): the kubeconfig must carry the token's signature,
/// and its CA one of the pins. Each refusal says which.
pub fn check(configmap: &Value, token: &BootstrapToken, pins: &[String]) -> Result<ClusterInfo> {
    let data = &configmap["data"];
    let kubeconfig = data["kubeconfig"]
        .as_str()
        .ok_or_else(|| discovery("no data.kubeconfig"))?;
    let key = format!("jws-kubeconfig-{}", token.id);
    let jws = data[&key].as_str().ok_or_else(|| {
        discovery(format!(
            "no {key}: the cluster does not know bootstrap token {} (unknown or expired), \
             or its controller-manager runs without bootstrapsigner",
            token.id
        ))
    })?;
    if !verify(jws, kubeconfig, &token.id, &token.secret) {
        return Err(discovery(format!(
            "{key} is not the kubeconfig's signature by bootstrap token {}: a wrong \
             secret, or a kubeconfig not the cluster's",
            token.id
        )));
    }
    let config: Value = serde_norway::from_str(kubeconfig)
        .map_err(|e| discovery(format!("data.kubeconfig: {e}")))?;
    let cluster = &config["clusters"][0]["cluster"];
    let server = cluster["server"]
        .as_str()
        .ok_or_else(|| discovery("data.kubeconfig: clusters[0].cluster.server missing"))?;
    let ca_pem = cluster["certificate-authority-data"]
        .as_str()
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            discovery("data.kubeconfig: clusters[0].cluster.certificate-authority-data missing or not base64 PEM")
        })?;
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|_| discovery("data.kubeconfig: the CA is not a PEM certificate"))?
    };
    let ca_pin = pin_of_cert(&der)?;
    if !pins.iter().any(|p| p.eq_ignore_ascii_case(&ca_pin)) {
        return Err(Error::Config {
            what: "kubernetes.caCertHashes".into(),
            reason: format!(
                "the cluster's CA is {ca_pin}, not one of {}",
                pins.join(", ")
            ),
        });
    }
    Ok(ClusterInfo {
        server: server.to_string(),
        ca_pem,
        ca_pin,
    })
}

/// Where the API server keeps it.
pub const PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

/// kubeadm's token discovery of the cluster at `server`: reads `cluster-info` without
/// trusting the server, [`check`]s it, then reads it again trusting only the CA it names,
/// which must give the same kubeconfig. One try: the caller retries, since the cluster
/// signs a new token's kubeconfig within seconds of the token's creation.
pub async fn discover(
    server: &str,
    token: &BootstrapToken,
    pins: &[String],
) -> Result<ClusterInfo> {
    let first = ApiClient::unverified(server)?.get(PATH).await?;
    let info = check(&first, token, pins)?;
    let trusted = ApiClient::new(&Access {
        server: server.to_string(),
        ca_pem: info.ca_pem.clone(),
        auth: Auth::Anonymous,
    })?;
    let second = trusted.get(PATH).await?;
    if second["data"]["kubeconfig"] != first["data"]["kubeconfig"] {
        return Err(discovery(
            "read again trusting its CA, data.kubeconfig changed: not one cluster",
        ));
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // The vectors of Kubernetes' own tests (cluster-bootstrap/token/jws).
    const CONTENT: &str = "Hello from the other side. I must have called a thousand times.";
    const SIGNED: &str =
        "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8";

    #[test]
    fn detached_signatures_match_kubernetes() {
        let secret = "my voice is my passcode";
        assert_eq!(sign(CONTENT, "joshua", secret), SIGNED);
        assert_eq!(
            sign("", "joshua", secret),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
        );
        assert_eq!(
            sign(CONTENT, "joshua", ""),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..UfkqvDGiIFxrMnFseDj9LYJOLNrvjW8aHhF71mvvAs8"
        );
        assert!(verify(SIGNED, CONTENT, "joshua", secret));
        assert!(!verify(SIGNED, CONTENT, "joshua", "not it"));
        assert!(!verify(SIGNED, "other content", "joshua", secret));
        assert!(!verify(SIGNED, CONTENT, "other", secret), "kid");
        assert!(!verify("junk", CONTENT, "joshua", secret));
        // Another algorithm in the header is refused, whatever the signature.
        let none = format!(
            "{}..",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"joshua"}"#)
        );
        assert!(!verify(&none, CONTENT, "joshua", secret));
    }

    #[test]
    fn tokens_are_id_dot_secret() {
        let t: BootstrapToken = "abcdef.0123456789abcdef".parse().expect("token");
        assert_eq!(t.id, "abcdef");
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
        for bad in [
            "abcdef",
            "abcde.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde",
        ] {
            assert!(bad.parse::<BootstrapToken>().is_err(), "{bad}");
        }
    }

    fn cluster(ca_pem: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://10.33.0.2:6443\n    certificate-authority-data: {}\ncontexts: []\nusers: []\n",
            STANDARD.encode(ca_pem)
        )
    }

    #[test]
    fn cluster_info_is_checked_by_signature_and_pin() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("ca");
        let pin = pin_of_cert(ca.der()).expect("pin");
        let token: BootstrapToken = "abcdef.0123456789abcdef".parse().expect("token");
        let kubeconfig = cluster(&ca.pem());
        let cm =
            |kc: &str, jws: &str| json!({"data": {"kubeconfig": kc, "jws-kubeconfig-abcdef": jws}});
        let good = sign(&kubeconfig, &token.id, &token.secret);
        let info =
            check(&cm(&kubeconfig, &good), &token, std::slice::from_ref(&pin)).expect("checked");
        assert_eq!(info.server, "https://10.33.0.2:6443");
        assert_eq!(info.ca_pin, pin);
        // Another pin: refused, naming the field and the CA's own pin.
        let other = format!("sha256:{}", "0".repeat(64));
        let e = check(&cm(&kubeconfig, &good), &token, &[other]).expect_err("pin");
        assert!(e.to_string().contains("kubernetes.caCertHashes"), "{e}");
        assert!(e.to_string().contains(&pin), "{e}");
        // A kubeconfig changed on the way (another server), or another secret.
        let forged = kubeconfig.replace("10.33.0.2", "10.66.6.6");
        let e = check(&cm(&forged, &good), &token, std::slice::from_ref(&pin)).expect_err("forged");
        assert!(
            e.to_string().contains("not the kubeconfig's signature"),
            "{e}"
        );
        let wrong = sign(&kubeconfig, &token.id, "ffffffffffffffff");
        assert!(check(&cm(&kubeconfig, &wrong), &token, std::slice::from_ref(&pin)).is_err());
        // No signature for this token: unknown or expired.
        let e = check(&json!({"data": {"kubeconfig": kubeconfig}}), &token, &[pin])
            .expect_err("unsigned");
        assert!(e.to_string().contains("unknown or expired"), "{e}");
    }
}
