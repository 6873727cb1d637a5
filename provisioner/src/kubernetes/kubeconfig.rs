//! A kubeconfig file: which API server, trusting which CA, as whom. Only what a
//! kubeconfig says directly (a bearer token, a client certificate and key, inline or as
//! files beside it); an `exec` or `auth-provider` plugin is refused by name, since
//! plinth-server runs no other program to log in.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};

/// How to reach an API server and as whom.
#[derive(Clone, PartialEq, Eq)]
pub struct Access {
    /// `https://host:port`.
    pub server: String,
    /// The CA certificates (PEM) its serving certificate must chain to.
    pub ca_pem: String,
    /// Who the client is.
    pub auth: Auth,
}

/// A client's credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// None: anonymous.
    Anonymous,
    /// A bearer token.
    Token(String),
    /// A client certificate and its key, PEM.
    Certificate {
        /// The certificate (chain).
        cert_pem: String,
        /// Its private key.
        key_pem: String,
    },
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        let auth = match self.auth {
            Auth::Anonymous => "anonymous",
            Auth::Token(_) => "token",
            Auth::Certificate { .. } => "certificate",
        };
        f.debug_struct("Access")
            .field("server", &self.server)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

fn bad(file: &Path, field: &str, reason: impl Into<String>) -> Error {
    Error::Config {
        what: format!("kubeconfig {}: {field}", file.display()),
        reason: reason.into(),
    }
}

/// Reads the kubeconfig at `path`: its current context's cluster and user.
pub fn load(path: &Path) -> Result<Access> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: "reading kubeconfig",
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Parses a kubeconfig's `text`; `path` names it in errors and is where relative file
/// names are taken from.
pub fn parse(text: &str, path: &Path) -> Result<Access> {
    let doc: Value = serde_norway::from_str(text).map_err(|e| bad(path, "YAML", e.to_string()))?;
    let context_name = doc["current-context"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad(path, "current-context", "missing"))?;
    let named = |list: &str, name: &str, inner: &str| -> Result<Value> {
        doc[list]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"].as_str() == Some(name)))
            .map(|e| e[inner].clone())
            .ok_or_else(|| bad(path, list, format!("no entry named {name:?}")))
    };
    let context = named("contexts", context_name, "context")?;
    let cluster_name = context["cluster"]
        .as_str()
        .ok_or_else(|| bad(path, "contexts[].context.cluster", "missing"))?;
    let cluster = named("clusters", cluster_name, "cluster")?;
    let server = cluster["server"]
        .as_str()
        .filter(|s| s.starts_with("https://"))
        .ok_or_else(|| bad(path, "clusters[].cluster.server", "missing or not https://"))?
        .trim_end_matches('/')
        .to_string();
    if cluster["insecure-skip-tls-verify"].as_bool() == Some(true) {
        return Err(bad(
            path,
            "clusters[].cluster.insecure-skip-tls-verify",
            "the server must be checked against its CA",
        ));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let ca_pem = inline_or_file(
        path,
        dir,
        &cluster,
        "certificate-authority",
        "clusters[].cluster",
    )?
    .ok_or_else(|| {
        bad(
            path,
            "clusters[].cluster.certificate-authority-data",
            "missing: the API server's CA is needed",
        )
    })?;
    let auth = match context["user"].as_str() {
        None => Auth::Anonymous,
        Some(user_name) => user(path, dir, &named("users", user_name, "user")?)?,
    };
    Ok(Access {
        server,
        ca_pem,
        auth,
    })
}

fn user(path: &Path, dir: &Path, user: &Value) -> Result<Auth> {
    for plugin in ["exec", "auth-provider", "username", "password"] {
        if !user[plugin].is_null() {
            return Err(bad(
                path,
                &format!("users[].user.{plugin}"),
                "not supported: give a token or a client certificate",
            ));
        }
    }
    let token = match (user["token"].as_str(), user["tokenFile"].as_str()) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => {
            let file = dir.join(f);
            let t = std::fs::read_to_string(&file).map_err(|source| Error::Io {
                what: "reading the kubeconfig's tokenFile",
                path: file.clone(),
                source,
            })?;
            Some(t.trim().to_string())
        }
        (None, None) => None,
    };
    let cert = inline_or_file(path, dir, user, "client-certificate", "users[].user")?;
    let key = inline_or_file(path, dir, user, "client-key", "users[].user")?;
    Ok(match (token, cert, key) {
        (Some(t), None, None) if !t.is_empty() => Auth::Token(t),
        (Some(_), None, None) => return Err(bad(path, "users[].user.token", "empty")),
        (Some(_), _, _) => {
            // Which one the server would take is not the reader's guess to make.
            return Err(bad(
                path,
                "users[].user.token",
                "given with a client certificate: give one of them",
            ));
        }
        (None, Some(cert_pem), Some(key_pem)) => Auth::Certificate { cert_pem, key_pem },
        (None, None, None) => Auth::Anonymous,
        (None, _, _) => {
            return Err(bad(
                path,
                "users[].user.client-certificate, client-key",
                "one without the other",
            ))
        }
    })
}

/// `FIELD-data` (base64 PEM) or `FIELD` (a file, relative to the kubeconfig's folder).
fn inline_or_file(
    path: &Path,
    dir: &Path,
    obj: &Value,
    field: &str,
    at: &str,
) -> Result<Option<String>> {
    use base64::Engine;
    if let Some(b) = obj[format!("{field}-data")].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map_err(|e| bad(path, &format!("{at}.{field}-data"), e.to_string()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| bad(path, &format!("{at}.{field}-data"), "not PEM text"))?;
        return Ok(Some(text));
    }
    match obj[field].as_str() {
        Some(f) => {
            let file: PathBuf = dir.join(f);
            std::fs::read_to_string(&file)
                .map(Some)
                .map_err(|source| Error::Io {
                    what: "reading a file the kubeconfig names",
                    path: file,
                    source,
                })
        }
        None => Ok(None),
    }
}

/// A kubeconfig (YAML) for `access`, as kubelet reads it, its data inline.
pub fn render(access: &Access, name: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match &access.auth {
        Auth::Anonymous => json!({}),
        Auth::Token(t) => json!({"token": t}),
        Auth::Certificate { cert_pem, key_pem } => json!({
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }),
    };
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": access.server,
            "certificate-authority-data": b64(&access.ca_pem),
        }}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    });
    serde_norway::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn reads_what_it_renders_and_refuses_what_it_cannot_do() {
        let p = Path::new("/nowhere/admin.conf");
        let a = Access {
            server: "https://10.0.0.1:6443".into(),
            ca_pem: CA.into(),
            auth: Auth::Token("abcdef.0123456789abcdef".into()),
        };
        let text = render(&a, "plinth");
        assert_eq!(parse(&text, p).expect("parse"), a);
        let c = Access {
            auth: Auth::Certificate {
                cert_pem: "C".into(),
                key_pem: "K".into(),
            },
            ..a.clone()
        };
        assert_eq!(parse(&render(&c, "x"), p).expect("parse"), c);
        assert!(!format!("{c:?}").contains('K'), "{c:?}");

        let exec = text.replace("token:", "exec: {command: aws}\n    token:");
        let e = parse(&exec, p).expect_err("exec").to_string();
        assert!(e.contains("users[].user.exec"), "{e}");
        let both = text.replace("token:", "client-certificate-data: QQ==\n    token:");
        let e = parse(&both, p).expect_err("both").to_string();
        assert!(
            e.contains("users[].user.token") && e.contains("one of them"),
            "{e}"
        );
        let e = parse(&text.replace("https://", "http://"), p)
            .expect_err("http")
            .to_string();
        assert!(e.contains("clusters[].cluster.server"), "{e}");
        let e = parse(
            &text.replace("current-context: plinth", "current-context: other"),
            p,
        )
        .expect_err("context")
        .to_string();
        assert!(e.contains("contexts") && e.contains("\"other\""), "{e}");
        let insecure = "current-context: c\ncontexts: [{name: c, context: {cluster: c}}]\n\
                        clusters: [{name: c, cluster: {server: 'https://a', insecure-skip-tls-verify: true}}]\n";
        let e = parse(insecure, p).expect_err("insecure").to_string();
        assert!(e.contains("insecure-skip-tls-verify"), "{e}");
    }
}
