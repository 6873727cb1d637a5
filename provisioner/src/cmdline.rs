//! The kernel command line: `plinth.*` parameters for the node agent.

/// The parameters plinth-init reads from /proc/cmdline.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// `plinth.server=`: the provisioning server's base URL.
    pub server: Option<String>,
    /// `plinth.ca=`: the pin of the server's CA, `sha256:<hex of its DER SubjectPublicKeyInfo>`.
    pub ca: Option<String>,
    /// `plinth.token=`: the single-use enrolment token.
    pub token: Option<String>,
    /// `plinth.ntp=`: an SNTP server (`ADDRESS:PORT`) to set the clock from before any TLS.
    pub ntp: Option<String>,
}

/// The token is a secret: never printed through `{:?}`.
impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("server", &self.server)
            .field("ca", &self.ca)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("ntp", &self.ntp)
            .finish()
    }
}

/// Parses a kernel command line (space-separated `key=value`; double quotes group).
pub fn parse(line: &str) -> Params {
    let mut p = Params::default();
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.trim().chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            continue;
        };
        let v = Some(v.to_string()).filter(|v| !v.is_empty());
        match k {
            "plinth.server" => p.server = v.map(|s| s.trim_end_matches('/').to_string()),
            "plinth.ca" => p.ca = v,
            "plinth.token" => p.token = v,
            "plinth.ntp" => p.ntp = v,
            _ => {}
        }
    }
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn params() {
        let p = super::parse(
            "console=ttyS0 plinth.server=http://10.0.2.2:8080/ quiet plinth.token=\"a b\"\n",
        );
        assert_eq!(p.server.as_deref(), Some("http://10.0.2.2:8080"));
        assert_eq!(p.token.as_deref(), Some("a b"));
        assert_eq!(super::parse("plinth.server=").server, None);
    }
}
