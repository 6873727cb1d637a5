//! Which kubelet certificate requests plinth-server approves.
//! kubeadm leaves a kubelet's serving certificate unapproved (kubernetes#73356), and its
//! auto-approval of client certificates takes any node name a bootstrap token asks for.
//! The server knows each machine: it approves a client certificate only for the node its
//! own bootstrap token was minted for, and a serving certificate only for that node's
//! name and this boot's addresses. Anything else is denied, saying why.

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::Value;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_X509_COMMON_NAME, OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_ORGANIZATION_NAME,
};
use x509_parser::prelude::FromDer;

/// A kubelet's client certificate (bootstrap and rotation).
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// A kubelet's serving certificate.
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";

/// What the server knows of the machine a request is for.
#[derive(Debug, Clone)]
pub struct Machine<'a> {
    /// Its node name (its host name).
    pub node: &'a str,
    /// Its addresses this boot (the DHCP lease or static address).
    pub addresses: &'a [IpAddr],
}

/// The group a machine's bootstrap token gives it: the only requester of a new client
/// certificate for that node.
pub fn bootstrap_group(node: &str) -> String {
    format!("system:bootstrappers:plinth:{node}")
}

/// The node a request is for, by who asks: the node itself (`system:node:NAME`) or a
/// bootstrap token this server minted (group `system:bootstrappers:plinth:NAME`). `None`
/// for anyone else (another bootstrap token, an operator): not the server's to decide.
pub fn node_of(csr: &Value) -> Option<String> {
    let spec = &csr["spec"];
    if let Some(n) = spec["username"]
        .as_str()
        .and_then(|u| u.strip_prefix("system:node:"))
    {
        return Some(n.to_string());
    }
    let prefix = bootstrap_group("");
    strings(&spec["groups"])
        .into_iter()
        .find_map(|g| g.strip_prefix(prefix.as_str()))
        .filter(|n| !n.is_empty())
        .map(String::from)
}

/// The decision on one `CertificateSigningRequest` (as the API answers it, JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Approve it.
    Approve,
    /// Deny it, for this reason.
    Deny(String),
    /// Not a kubelet's request: another signer's, for someone else to decide.
    NotOurs,
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Decides a kubelet's request for machine `m`.
pub fn judge(csr: &Value, m: &Machine) -> Verdict {
    let spec = &csr["spec"];
    let signer = spec["signerName"].as_str().unwrap_or("");
    if signer != CLIENT_SIGNER && signer != SERVING_SIGNER {
        return Verdict::NotOurs;
    }
    match check(spec, signer, m) {
        Ok(()) => Verdict::Approve,
        Err(why) => Verdict::Deny(why),
    }
}

fn check(spec: &Value, signer: &str, m: &Machine) -> Result<(), String> {
    let node_user = format!("system:node:{}", m.node);
    let username = spec["username"].as_str().unwrap_or("");
    let groups = strings(&spec["groups"]);
    let usages = strings(&spec["usages"]);
    let serving = signer == SERVING_SIGNER;

    // Who asks: a serving certificate only the node itself; a client certificate the
    // node (rotation) or a bootstrap token this server minted for this node.
    let by_node = username == node_user && groups.contains(&"system:nodes");
    let by_token = username.starts_with("system:bootstrap:")
        && groups.contains(&bootstrap_group(m.node).as_str());
    if !(by_node || (!serving && by_token)) {
        return Err(format!(
            "requested by {username:?} in {groups:?}: not node {} {}",
            m.node,
            if serving {
                "itself"
            } else {
                "nor its bootstrap token"
            }
        ));
    }
    let purpose = if serving {
        "server auth"
    } else {
        "client auth"
    };
    let allowed = ["digital signature", "key encipherment", purpose];
    if !usages.contains(&purpose) || usages.iter().any(|u| !allowed.contains(u)) {
        return Err(format!(
            "usages {usages:?}: must be {purpose} (with digital signature, key encipherment)"
        ));
    }

    // What it asks for: the node's name, and for serving, its names and addresses only.
    let pem = spec["request"]
        .as_str()
        .and_then(|b| STANDARD.decode(b).ok())
        .ok_or("spec.request: not base64")?;
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(&pem)
            .map_err(|_| "spec.request: not a PEM CERTIFICATE REQUEST")?
    };
    // The request must be that one block and nothing else, written as Go writes it: PEM
    // readers differ (on what follows an END line, on a second BEGIN), and the block
    // judged here must be the one the signer signs.
    if canonical_pem(der.as_ref()).trim_end().as_bytes() != pem.trim_ascii_end() {
        return Err("spec.request: not exactly one PEM CERTIFICATE REQUEST block".into());
    }
    let (rest, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("spec.request: {e}"))?;
    if !rest.is_empty() {
        return Err("spec.request: bytes after the request".into());
    }
    // Every attribute of the subject, not only those this parser can read as text: Go
    // reads BMPString and T61String too, and takes the last CN, so one it skipped here
    // would name another node in the certificate.
    let mut cns = Vec::new();
    let mut orgs = Vec::new();
    for attr in req.certification_request_info.subject.iter_attributes() {
        let value = attr
            .as_str()
            .map_err(|_| format!("subject attribute {} is not plain text", attr.attr_type()))?;
        if *attr.attr_type() == OID_X509_COMMON_NAME {
            cns.push(value);
        } else if *attr.attr_type() == OID_X509_ORGANIZATION_NAME {
            orgs.push(value);
        } else {
            return Err(format!(
                "subject attribute {}: only CN and O are asked",
                attr.attr_type()
            ));
        }
    }
    if cns != [node_user.as_str()] || orgs != ["system:nodes"] {
        return Err(format!(
            "subject CN {cns:?} O {orgs:?}: must be CN {node_user} O system:nodes"
        ));
    }
    // Every extension request, each extension read or refused: one this parser skips
    // might carry names the signer would copy.
    let mut names = Vec::new();
    let mut requests = 0;
    for attr in req.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(er) = attr.parsed_attribute() else {
            continue;
        };
        requests += 1;
        for e in &er.extensions {
            match e.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    names.extend(san.general_names.iter().cloned())
                }
                ParsedExtension::ParseError { .. }
                | ParsedExtension::UnsupportedExtension { .. }
                    if e.oid == OID_X509_EXT_SUBJECT_ALT_NAME =>
                {
                    return Err(
                        "spec.request: a subject alternative name that does not parse".into(),
                    )
                }
                ParsedExtension::ParseError { error } => {
                    return Err(format!("spec.request: extension {}: {error}", e.oid))
                }
                _ => {}
            }
        }
    }
    if requests > 1 {
        return Err("spec.request: more than one extension request".into());
    }
    if !serving {
        return match names.is_empty() {
            true => Ok(()),
            false => Err("a client certificate with subject alternative names".into()),
        };
    }
    if names.is_empty() {
        return Err("a serving certificate without a name or address".into());
    }
    for n in &names {
        match n {
            GeneralName::DNSName(d) if *d == m.node => {}
            GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                    _ => None,
                };
                match ip {
                    Some(ip) if m.addresses.contains(&ip) => {}
                    _ => {
                        return Err(format!(
                            "address {ip:?} is not one of {:?}, the node's this boot",
                            m.addresses
                        ))
                    }
                }
            }
            other => {
                return Err(format!(
                    "name {other:?}: a serving certificate names only {} and its addresses",
                    m.node
                ))
            }
        }
    }
    Ok(())
}

/// `der` as PEM the way Go's `pem.Encode` writes a certificate request.
fn canonical_pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NODE: &str = "worker-1";

    fn request(cn: &str, orgs: &[&str], sans: Vec<rcgen::SanType>) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for o in orgs {
            p.distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        p.subject_alt_names = sans;
        let csr = p.serialize_request(&key).expect("csr");
        STANDARD.encode(csr.pem().expect("pem"))
    }

    fn csr(signer: &str, user: &str, groups: &[&str], usages: &[&str], req: String) -> Value {
        json!({"spec": {"signerName": signer, "username": user, "groups": groups,
                        "usages": usages, "request": req}})
    }

    #[test]
    fn only_this_machine_s_names_and_requesters_are_approved() {
        let addrs = ["10.33.0.145".parse().expect("ip")];
        let m = Machine {
            node: NODE,
            addresses: &addrs,
        };
        let cn = format!("system:node:{NODE}");
        let group = bootstrap_group(NODE);
        let client = ["digital signature", "client auth"];
        // The bootstrap: the token minted for this node, asking for this node.
        let boot = csr(
            CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &["system:bootstrappers", &group, "system:authenticated"],
            &client,
            request(&cn, &["system:nodes"], vec![]),
        );
        assert_eq!(judge(&boot, &m), Verdict::Approve);
        // Another node's name with this token; this name with another machine's token.
        let other = csr(
            CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &[&group],
            &client,
            request("system:node:worker-2", &["system:nodes"], vec![]),
        );
        assert!(matches!(judge(&other, &m), Verdict::Deny(w) if w.contains("subject CN")));
        let stranger = csr(
            CLIENT_SIGNER,
            "system:bootstrap:zzzzzz",
            &["system:bootstrappers:plinth:worker-2"],
            &client,
            request(&cn, &["system:nodes"], vec![]),
        );
        assert!(matches!(judge(&stranger, &m), Verdict::Deny(w) if w.contains("bootstrap token")));
        // An extra organisation (system:masters) is refused.
        let masters = csr(
            CLIENT_SIGNER,
            "system:bootstrap:abcdef",
            &[&group],
            &client,
            request(&cn, &["system:nodes", "system:masters"], vec![]),
        );
        assert!(matches!(judge(&masters, &m), Verdict::Deny(_)));

        // Serving: the node itself, its name and this boot's address.
        let serving = ["digital signature", "server auth"];
        let ok = csr(
            SERVING_SIGNER,
            &cn,
            &["system:nodes", "system:authenticated"],
            &serving,
            request(
                &cn,
                &["system:nodes"],
                vec![
                    rcgen::SanType::DnsName(NODE.try_into().expect("dns")),
                    rcgen::SanType::IpAddress(addrs[0]),
                ],
            ),
        );
        assert_eq!(judge(&ok, &m), Verdict::Approve);
        let elsewhere = csr(
            SERVING_SIGNER,
            &cn,
            &["system:nodes"],
            &serving,
            request(
                &cn,
                &["system:nodes"],
                vec![rcgen::SanType::IpAddress("10.96.0.1".parse().expect("ip"))],
            ),
        );
        assert!(matches!(judge(&elsewhere, &m), Verdict::Deny(w) if w.contains("10.96.0.1")));
        let named = csr(
            SERVING_SIGNER,
            &cn,
            &["system:nodes"],
            &serving,
            request(
                &cn,
                &["system:nodes"],
                vec![rcgen::SanType::DnsName(
                    "kubernetes.default".try_into().expect("dns"),
                )],
            ),
        );
        assert!(matches!(judge(&named, &m), Verdict::Deny(_)));
        // A bootstrap token may not ask for a serving certificate; nor client usages.
        let by_token = csr(
            SERVING_SIGNER,
            "system:bootstrap:abcdef",
            &[&group],
            &serving,
            request(
                &cn,
                &["system:nodes"],
                vec![rcgen::SanType::IpAddress(addrs[0])],
            ),
        );
        assert!(matches!(judge(&by_token, &m), Verdict::Deny(_)));
        let usages = csr(
            SERVING_SIGNER,
            &cn,
            &["system:nodes"],
            &["digital signature", "server auth", "client auth"],
            request(
                &cn,
                &["system:nodes"],
                vec![rcgen::SanType::IpAddress(addrs[0])],
            ),
        );
        assert!(matches!(judge(&usages, &m), Verdict::Deny(w) if w.contains("usages")));
        // Another signer's request is not ours to decide.
        let other_signer = csr("example.com/x", &cn, &[], &[], String::new());
        assert_eq!(judge(&other_signer, &m), Verdict::NotOurs);
    }

    #[test]
    fn a_subject_not_read_in_full_is_denied() {
        use base64::engine::general_purpose::STANDARD;
        let addrs = [];
        let m = Machine {
            node: NODE,
            addresses: &addrs,
        };
        let cn = format!("system:node:{NODE}");
        let make = |dn: rcgen::DistinguishedName| {
            let key = rcgen::KeyPair::generate().expect("key");
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name = dn;
            STANDARD.encode(p.serialize_request(&key).expect("csr").pem().expect("pem"))
        };
        let ask = |req: String| {
            csr(
                CLIENT_SIGNER,
                &cn,
                &["system:nodes"],
                &["digital signature", "client auth"],
                req,
            )
        };
        // A CN in a string type this parser does not read as text (Go does).
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(
            rcgen::DnType::CommonName,
            rcgen::DnValue::BmpString(cn.as_str().try_into().expect("bmp")),
        );
        dn.push(rcgen::DnType::OrganizationName, "system:nodes");
        match judge(&ask(make(dn)), &m) {
            Verdict::Deny(why) => assert!(why.contains("not plain text"), "{why}"),
            v => panic!("{v:?}"),
        }
        // An attribute other than CN and O.
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn.as_str());
        dn.push(rcgen::DnType::OrganizationName, "system:nodes");
        dn.push(rcgen::DnType::OrganizationalUnitName, "x");
        match judge(&ask(make(dn)), &m) {
            Verdict::Deny(why) => assert!(why.contains("only CN and O"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_request_must_be_one_plain_pem_block() {
        use base64::engine::general_purpose::STANDARD;
        let addrs = [];
        let m = Machine {
            node: NODE,
            addresses: &addrs,
        };
        let cn = format!("system:node:{NODE}");
        let good = String::from_utf8(
            STANDARD
                .decode(request(&cn, &["system:nodes"], vec![]))
                .expect("b64"),
        )
        .expect("utf8");
        let other = String::from_utf8(
            STANDARD
                .decode(request("system:node:victim", &["system:nodes"], vec![]))
                .expect("b64"),
        )
        .expect("utf8");
        let ask = |pem: &str| {
            csr(
                CLIENT_SIGNER,
                &cn,
                &["system:nodes"],
                &["digital signature", "client auth"],
                STANDARD.encode(pem),
            )
        };
        assert_eq!(judge(&ask(&good), &m), Verdict::Approve);
        // Go skips a block whose END line has more after it, and signs the next one.
        let tricked = good.replace(
            "-----END CERTIFICATE REQUEST-----",
            "-----END CERTIFICATE REQUEST-----x",
        ) + &other;
        for pem in [tricked, format!("{good}{other}")] {
            match judge(&ask(&pem), &m) {
                Verdict::Deny(why) => assert!(why.contains("exactly one"), "{why}"),
                v => panic!("{v:?}"),
            }
        }
    }
}
