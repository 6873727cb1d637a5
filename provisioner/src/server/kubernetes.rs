//! plinth-server's part in a node's join, given the cluster's kubeconfig
//! (`--kubeconfig`): a bootstrap token per machine and boot, short-lived, in the group
//! `system:bootstrappers:plinth:<node>` (the only requester of a client certificate for
//! that node the server approves), and the approval of kubelets' certificate requests by
//! what the server knows of each machine ([`kubelet_csr`]). The RBAC rights this takes
//! are in `docs/kubernetes.md`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::crypto::random_bytes;
use crate::error::{Error, Result};
use crate::kubernetes::client::ApiClient;
use crate::kubernetes::kubeconfig;
use crate::server::kubelet_csr::{self, bootstrap_group, Verdict, CLIENT_SIGNER, SERVING_SIGNER};

/// Where bootstrap tokens live.
const SECRETS: &str = "/api/v1/namespaces/kube-system/secrets";
/// Where certificate requests live.
const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
/// The label naming the machine a token was minted for (its MAC, `-` for `:`): for an
/// operator reading the cluster's Secrets.
const MACHINE_LABEL: &str = "plinth.dev/machine";

/// The cluster a server mints tokens in and approves certificates for.
#[derive(Debug)]
pub struct Cluster {
    api: ApiClient,
    token_ttl: Duration,
    /// Which machine each node name is (learnt as configs with `kubernetes` are served).
    nodes: Mutex<HashMap<String, String>>,
    /// What each machine (by MAC) was given this boot: deleted when the next is minted.
    given: Mutex<HashMap<String, Given>>,
    /// When the fleet was last searched for a node not in `nodes`.
    last_scan: Mutex<Option<Instant>>,
}

/// How often at most the fleet is searched for the machine of a node the server does not
/// know: after a restart the server knows no node until it serves a config, and a
/// request from a node that is not its own must not cost a search every round.
const SCAN_EVERY: Duration = Duration::from_secs(60);

/// What a machine was given for one boot.
#[derive(Debug, Clone)]
struct Given {
    /// The boot a config was last served for.
    boot: String,
    /// The last token minted and the boot it was for.
    token: Option<(Minted, String)>,
}

/// What the server knows of a machine when deciding its kubelet's requests.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The boot its config was last served for.
    pub boot: String,
    /// The addresses the server saw for it that boot.
    pub addresses: Vec<IpAddr>,
    /// Why it is in quarantine, if it is.
    pub quarantine: Option<String>,
}

/// A token minted for a machine.
#[derive(Clone)]
pub struct Minted {
    /// `ID.SECRET`.
    pub token: String,
    /// Its id (public).
    pub id: String,
    /// When it expires, RFC 3339.
    pub expires: String,
    /// The same, seconds since the epoch.
    pub expires_at: u64,
    /// Why the machine's previous token could not be deleted, if it could not (it then
    /// expires on its own; the new one is good).
    pub stale: Option<String>,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Minted")
            .field("id", &self.id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// A decision taken on a kubelet's certificate request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The request's name.
    pub csr: String,
    /// The node it is for.
    pub node: String,
    /// The machine that node is.
    pub mac: String,
    /// The machine's boot the decision belongs to.
    pub boot: String,
    /// `client` or `serving`.
    pub kind: &'static str,
    /// Approved, or denied with why.
    pub verdict: Verdict,
}

fn token_chars(n: usize) -> Result<String> {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in random_bytes(n * 2)? {
            // 252 = 7 * 36: below it every character is equally likely.
            if b < 252 && out.len() < n {
                out.push(CHARS[usize::from(b) % CHARS.len()] as char);
            }
        }
    }
    Ok(out)
}

fn rfc3339(unix: u64) -> Result<String> {
    // An empty expiration would be a token that never expires: an error instead.
    let bad = |reason: String| Error::Config {
        what: "--bootstrap-token-ttl".into(),
        reason,
    };
    let t = i64::try_from(unix).map_err(|e| bad(e.to_string()))?;
    time::OffsetDateTime::from_unix_timestamp(t)
        .map_err(|e| bad(e.to_string()))?
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| bad(e.to_string()))
}

impl Cluster {
    /// The cluster `kubeconfig` names; tokens live `token_ttl`.
    pub fn load(kubeconfig: &Path, token_ttl: Duration) -> Result<Cluster> {
        let access = kubeconfig::load(kubeconfig)?;
        Ok(Cluster {
            api: ApiClient::new(&access)?,
            token_ttl,
            nodes: Mutex::new(HashMap::new()),
            given: Mutex::new(HashMap::new()),
            last_scan: Mutex::new(None),
        })
    }

    /// The API server's URL.
    pub fn server(&self) -> String {
        self.api.server()
    }

    /// Remembers that node `node` is machine `mac`; the other machine's MAC when the
    /// name is already another's (the name is then left as it was).
    pub fn remember(&self, node: &str, mac: &str) -> Option<String> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        match nodes.get(node) {
            Some(other) if other != mac => Some(other.clone()),
            _ => {
                nodes.insert(node.to_string(), mac.to_string());
                None
            }
        }
    }

    /// Replaces what the server knows of its nodes by `all` (every joining machine's node
    /// name and MAC). A name two machines share is known as neither: their kubelets'
    /// requests wait. Returns those names, with the machines sharing each.
    pub fn learn(&self, all: Vec<(String, String)>) -> Vec<(String, Vec<String>)> {
        let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
        for (n, mac) in all {
            by_name.entry(n).or_default().push(mac);
        }
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.clear();
        let mut shared = Vec::new();
        for (n, macs) in by_name {
            match macs.as_slice() {
                [one] => {
                    nodes.insert(n, one.clone());
                }
                _ => shared.push((n, macs)),
            }
        }
        shared
    }

    /// Whether this is the first config served to machine `mac` for boot `boot`.
    pub fn first_for_boot(&self, mac: &str, boot: &str) -> bool {
        let mut given = self.given.lock().unwrap_or_else(|p| p.into_inner());
        let g = given.entry(mac.to_string()).or_insert_with(|| Given {
            boot: String::new(),
            token: None,
        });
        if g.boot == boot {
            return false;
        }
        g.boot = boot.to_string();
        true
    }

    /// The bootstrap token of machine `mac` for boot `boot`, node `node`: the one
    /// minted for this boot while it has a quarter of its life left (a config fetched
    /// again gets the same, and nothing churns), else a new one (`true` beside it),
    /// which ends the machine's previous one.
    pub async fn token_for(
        &self,
        mac: &str,
        boot: &str,
        node: &str,
        now: u64,
    ) -> Result<(Minted, bool)> {
        let previous = {
            let given = self.given.lock().unwrap_or_else(|p| p.into_inner());
            given.get(mac).and_then(|g| g.token.clone())
        };
        let quarter = self.token_ttl.as_secs() / 4;
        if let Some((m, b)) = &previous {
            if b == boot && m.expires_at > now.saturating_add(quarter) {
                return Ok((m.clone(), false));
            }
        }
        let mut minted = self.mint(mac, node, now).await?;
        {
            let mut given = self.given.lock().unwrap_or_else(|p| p.into_inner());
            let g = given.entry(mac.to_string()).or_insert_with(|| Given {
                boot: boot.to_string(),
                token: None,
            });
            g.token = Some((minted.clone(), boot.to_string()));
        }
        if let Some((old, _)) = previous {
            if let Err(e) = self
                .api
                .delete(&format!("{SECRETS}/bootstrap-token-{}", old.id))
                .await
            {
                minted.stale = Some(format!(
                    "the previous token {} of {mac} stays until it expires: {e}",
                    old.id
                ));
            }
        }
        Ok((minted, true))
    }

    /// Mints a bootstrap token for machine `mac`, node `node`, in the group only this
    /// node's client certificate may be asked by. Tokens minted before the server
    /// started expire on their own: the server holds no right to list the cluster's
    /// secrets.
    async fn mint(&self, mac: &str, node: &str, now: u64) -> Result<Minted> {
        let id = token_chars(6)?;
        let secret = token_chars(16)?;
        let expires_at = now.saturating_add(self.token_ttl.as_secs());
        let expires = rfc3339(expires_at)?;
        let label = mac.replace(':', "-");
        let body = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": format!("bootstrap-token-{id}"),
                "namespace": "kube-system",
                "labels": {MACHINE_LABEL: label},
            },
            "type": "bootstrap.kubernetes.io/token",
            "stringData": {
                "description": format!("plinth-server: machine {mac}, node {node}"),
                "token-id": id,
                "token-secret": secret,
                "expiration": expires,
                "usage-bootstrap-authentication": "true",
                "usage-bootstrap-signing": "true",
                "auth-extra-groups": bootstrap_group(node),
            },
        });
        self.api.post(SECRETS, &body).await?;
        Ok(Minted {
            token: format!("{id}.{secret}"),
            id,
            expires,
            expires_at,
            stale: None,
        })
    }

    /// The machine node `node` is, searching the fleet with `scan` (every node name
    /// and its MAC) when it is not known and the last search is old enough.
    fn machine_of(&self, node: &str, scan: &impl Fn() -> Vec<(String, String)>) -> Option<String> {
        let known = |n: &str| {
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            nodes.get(n).cloned()
        };
        if let Some(mac) = known(node) {
            return Some(mac);
        }
        {
            let mut last = self.last_scan.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < SCAN_EVERY) {
                return None;
            }
            *last = Some(Instant::now());
        }
        self.learn(scan());
        known(node)
    }

    /// Decides every kubelet certificate request not yet decided whose node is a
    /// machine of this server: `facts(mac)` gives what the server knows of it (`None`
    /// when that cannot be read now: the request waits), `scan()` every joining
    /// machine's node name (see [`Cluster::machine_of`]). Requests for other nodes, or of other
    /// signers, are left for others. A request that cannot be decided now (changed
    /// meanwhile, deleted) waits for the next round; the others are decided still, and
    /// the errors returned beside the decisions.
    pub async fn decide_pending(
        &self,
        facts: impl Fn(&str) -> Option<Facts>,
        scan: impl Fn() -> Vec<(String, String)>,
    ) -> Result<(Vec<Decision>, Vec<Error>)> {
        // Only the kubelets' signers: the list stays small in a busy cluster.
        let mut items = Vec::new();
        for signer in [CLIENT_SIGNER, SERVING_SIGNER] {
            let list = self
                .api
                .get(&format!(
                    "{CSRS}?fieldSelector=spec.signerName%3D{}",
                    signer.replace('/', "%2F")
                ))
                .await?;
            items.extend(list["items"].as_array().cloned().unwrap_or_default());
        }
        let mut done = Vec::new();
        let mut errors = Vec::new();
        for csr in &items {
            if decided(csr) {
                continue;
            }
            let signer = csr["spec"]["signerName"].as_str().unwrap_or("");
            let kind = match signer {
                CLIENT_SIGNER => "client",
                SERVING_SIGNER => "serving",
                _ => continue,
            };
            let Some(node) = kubelet_csr::node_of(csr) else {
                continue;
            };
            let Some(mac) = self.machine_of(&node, &scan) else {
                continue;
            };
            let Some(f) = facts(&mac) else {
                continue;
            };
            let verdict = match &f.quarantine {
                Some(why) => Verdict::Deny(format!("machine {mac} is in quarantine: {why}")),
                None => kubelet_csr::judge(
                    csr,
                    &kubelet_csr::Machine {
                        node: &node,
                        addresses: &f.addresses,
                    },
                ),
            };
            let Some(name) = csr["metadata"]["name"].as_str() else {
                continue;
            };
            let condition = match &verdict {
                Verdict::Approve => json!({
                    "type": "Approved", "status": "True", "reason": "PlinthApproved",
                    "message": format!("plinth-server: node {node} is machine {mac}"),
                }),
                Verdict::Deny(why) => json!({
                    "type": "Denied", "status": "True", "reason": "PlinthDenied",
                    "message": format!("plinth-server: {why}"),
                }),
                Verdict::NotOurs => continue,
            };
            let mut update = csr.clone();
            let conditions = &mut update["status"]["conditions"];
            if !conditions.is_array() {
                *conditions = json!([]);
            }
            if let Some(a) = conditions.as_array_mut() {
                a.push(condition);
            }
            match self
                .api
                .put(&format!("{CSRS}/{name}/approval"), &update)
                .await
            {
                Ok(_) => {}
                // Changed meanwhile (another approver, a kubelet's retry): next round.
                Err(Error::Status { status: 409, .. }) => continue,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
            done.push(Decision {
                csr: name.to_string(),
                node,
                mac,
                boot: f.boot,
                kind,
                verdict,
            });
        }
        Ok((done, errors))
    }
}

/// Whether a request is approved or denied already.
fn decided(csr: &Value) -> bool {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied" | "Failed")))
}

/// A decision as a `kubernetes` event's details.
pub fn details(d: &Decision) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("csr".into(), json!(d.csr));
    m.insert("node".into(), json!(d.node));
    m.insert("certificate".into(), json!(d.kind));
    match &d.verdict {
        Verdict::Approve => {
            m.insert("step".into(), json!("approved"));
        }
        Verdict::Deny(why) => {
            m.insert("step".into(), json!("denied"));
            m.insert("reason".into(), json!(why));
        }
        Verdict::NotOurs => {}
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bootstrap_tokens() {
        for _ in 0..50 {
            let t = format!(
                "{}.{}",
                token_chars(6).expect("id"),
                token_chars(16).expect("s")
            );
            let parsed: std::result::Result<crate::kubernetes::cluster_info::BootstrapToken, _> =
                t.parse();
            assert!(parsed.is_ok(), "{t}");
        }
        assert_eq!(rfc3339(0).expect("epoch"), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(1_796_601_600).expect("today"),
            "2026-12-07T00:00:00Z"
        );
        assert!(rfc3339(u64::MAX).is_err());
    }
}
