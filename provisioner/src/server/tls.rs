//! The server's PKI: its CA (ECDSA P-256, made by rcgen on first start and kept in
//! `--data`), a serving certificate signed by it at every start for the names nodes use,
//! client certificates signed from a node's CSR, and the rustls configuration that asks
//! for (but does not require) a client certificate chaining to the CA: enrolment and
//! operators come without one; each node endpoint checks for it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::crypto::{hex, pin_of_cert, provider, random_bytes, sha256_hex};
use crate::error::{io, Error, Result};
use crate::server::files::write_atomic_mode;
use crate::server::store::Cert;

/// The CA certificate's file under `--data` (PEM).
pub const CA_CERT: &str = "ca.crt";
/// The CA key's file under `--data` (PEM, mode 0600).
pub const CA_KEY: &str = "ca.key";

/// How long the serving certificate made at each start lives.
const SERVING_LIFETIME: Duration = Duration::from_secs(397 * 24 * 3600);

/// Clock skew allowed for: certificates are valid from a minute before they are made.
const BACKDATE: Duration = Duration::from_secs(60);

fn tls_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Error {
    let what = what.into();
    move |e| Error::Tls {
        what,
        reason: e.to_string(),
    }
}

/// The CA: its certificate as issued and its key.
pub struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
    /// `sha256:<hex of the DER SubjectPublicKeyInfo>`.
    pub pin: String,
}

/// A client certificate just signed.
#[derive(Debug, Clone)]
pub struct Signed {
    /// PEM.
    pub pem: String,
    /// The record the store keeps.
    pub record: Cert,
}

impl Ca {
    /// Loads the CA from `data`, or makes one there on first start. Returns it and
    /// whether it was made now.
    pub fn load_or_create(data: &Path) -> Result<(Ca, bool)> {
        let (cert_path, key_path) = (data.join(CA_CERT), data.join(CA_KEY));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Ca::load(&cert_path, &key_path)?, false)),
            (false, false) => Ok((Ca::create(&cert_path, &key_path)?, true)),
            (c, _) => Err(Error::Config {
                what: format!("--data {}", data.display()),
                reason: format!(
                    "{} is there but {} is not: restore both or remove both",
                    if c { CA_CERT } else { CA_KEY },
                    if c { CA_KEY } else { CA_CERT }
                ),
            }),
        }
    }

    fn create(cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(tls_err("making the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "plinth");
        dn.push(DnType::CommonName, "plinth-server CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::from_secs(20 * 365 * 24 * 3600);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(tls_err("signing the CA certificate"))?;
        // The key first: a cert without its key is refused at the next start, where a
        // key without its cert would be silently replaced.
        write_atomic_mode(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic_mode(cert_path, cert.pem().as_bytes(), 0o644)?;
        Ca::load(cert_path, key_path)
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let cert_pem =
            std::fs::read_to_string(cert_path).map_err(io("reading CA certificate", cert_path))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(io("reading CA key", key_path))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(tls_err(format!("parsing CA key {}", key_path.display())))?;
        let cert_der = cert_from_pem(&cert_pem).ok_or_else(|| Error::Tls {
            what: format!("parsing CA certificate {}", cert_path.display()),
            reason: "no PEM CERTIFICATE block".into(),
        })?;
        let pin = pin_of_cert(&cert_der)?;
        let ca = Ca {
            cert_der,
            cert_pem,
            key,
            pin,
        };
        // The key must be the certificate's: signing with another would make every
        // certificate issued unverifiable.
        let key_pin =
            crate::crypto::pin_of_spki(&rcgen::PublicKeyData::subject_public_key_info(&ca.key));
        if key_pin != ca.pin {
            return Err(Error::Tls {
                what: format!("loading the CA from {}", cert_path.display()),
                reason: format!(
                    "{} does not hold this certificate's key",
                    key_path.display()
                ),
            });
        }
        ca.issuer()?;
        Ok(ca)
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key).map_err(tls_err("reading the CA"))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Signs a serving certificate for `names` (DNS names or IP addresses) with a fresh
    /// key; the chain sent carries the CA too, so a node holding only the pin can check it.
    pub fn serving(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(tls_err("making the serving key"))?;
        let mut params = CertificateParams::new(names.to_vec())
            .map_err(tls_err(format!("serving certificate names {names:?}")))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "plinth");
        dn.push(DnType::CommonName, "plinth-server");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + SERVING_LIFETIME;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(tls_err("signing the serving certificate"))?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone(), self.cert_der.clone()], key_der))
    }

    /// Signs a client certificate for machine `mac`, boot `boot_id`, from the public key
    /// of a PKCS#10 request (whose signature must hold). Everything else in the request
    /// (subject, extensions) is ignored: the certificate says what the server decides.
    pub fn sign_client(
        &self,
        csr_pem: &str,
        mac: &str,
        boot_id: &str,
        lifetime: Duration,
    ) -> Result<Signed> {
        let der = csr_der(csr_pem)?;
        let csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| Error::Tls {
            what: "csr".into(),
            reason: format!("not a valid signed PKCS#10 request: {e}"),
        })?;
        let key = check_p256(der.as_ref())?;
        if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(Error::Tls {
                what: "csr".into(),
                reason: "the key must be ECDSA P-256, signed with SHA-256".into(),
            });
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "plinth-node");
        dn.push(DnType::CommonName, mac);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(
            format!("urn:plinth:machine:{mac}")
                .try_into()
                .map_err(tls_err("machine URI"))?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let serial = random_serial()?;
        let serial_hex = hex(&serial.to_bytes());
        params.serial_number = Some(serial);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(tls_err(format!("signing a certificate for {mac}")))?;
        let issued_at = now.unix_timestamp().max(0) as u64;
        Ok(Signed {
            pem: cert.pem(),
            record: Cert {
                serial: serial_hex,
                boot_id: boot_id.to_string(),
                issued_at,
                not_after: issued_at + lifetime.as_secs(),
                revoked: None,
                discovery: false,
                key: Some(key),
            },
        })
    }

    /// The rustls configuration of the HTTPS listener.
    pub fn server_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>> {
        let (chain, key) = self.serving(names)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).map_err(|e| Error::Tls {
            what: "trusting the CA for client certificates".into(),
            reason: e.to_string(),
        })?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls {
            what: "client certificate verifier".into(),
            reason: e.to_string(),
        })?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls {
                what: "TLS versions".into(),
                reason: e.to_string(),
            })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| Error::Tls {
                what: "serving certificate".into(),
                reason: e.to_string(),
            })?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        // A node makes one connection per request: without resumption each is a full
        // handshake with a client certificate to verify. Stateless tickets (keys in
        // memory, rotated every 6 hours by rustls) resume them whatever the number of
        // nodes, where the default cache of 256 sessions is spent by a rack booting. A
        // resumed session carries the certificate it was made with, and every request
        // still checks that certificate's serial against the store (revocation).
        cfg.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| Error::Tls {
            what: "session tickets".into(),
            reason: e.to_string(),
        })?;
        Ok(Arc::new(cfg))
    }
}

/// Checks that a CSR's key is ECDSA P-256 (an uncompressed point on prime256v1): its
/// signature algorithm alone does not say, since a P-384 key may sign with SHA-256 too.
fn check_p256(csr_der: &[u8]) -> Result<String> {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    use x509_parser::prelude::FromDer;
    let refuse = |what: String| Error::Tls {
        what: "csr".into(),
        reason: format!("the key must be ECDSA P-256; this one is {what}"),
    };
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| Error::Tls {
            what: "csr".into(),
            reason: format!("not a PKCS#10 request: {e}"),
        })?;
    let spki = &csr.certification_request_info.subject_pki;
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(refuse(format!("of algorithm {}", spki.algorithm.algorithm)));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    match curve {
        Some(c) if c == OID_EC_P256 => {}
        Some(c) => {
            let name = if c == x509_parser::oid_registry::OID_NIST_EC_P384 {
                "P-384".to_string()
            } else {
                format!("on curve {c}")
            };
            return Err(refuse(name));
        }
        None => return Err(refuse("an EC key without a named curve".into())),
    }
    let point = &spki.subject_public_key.data;
    if point.len() != 65 || point.first() != Some(&4) {
        return Err(refuse(format!(
            "a P-256 key of {} bytes (an uncompressed point is 65)",
            point.len()
        )));
    }
    // What a certificate's record keeps of the key it was issued for.
    Ok(sha256_hex(point))
}

/// A CSR's DER from its PEM.
fn csr_der(csr_pem: &str) -> Result<rustls::pki_types::CertificateSigningRequestDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(
        |e| Error::Tls {
            what: "csr".into(),
            reason: format!("not a PEM CERTIFICATE REQUEST: {e}"),
        },
    )
}

/// The fingerprint of the P-256 key of a CSR (PEM), as [`Cert::key`] keeps it; the
/// error says why the CSR cannot be used.
pub fn csr_key(csr_pem: &str) -> Result<String> {
    check_p256(csr_der(csr_pem)?.as_ref())
}

/// The serial of a presented certificate as the store keys it (lower-case hex, no
/// leading zero bytes), or why it cannot be read.
pub fn serial_of(der: &CertificateDer<'_>) -> Result<String> {
    let cert = webpki::EndEntityCert::try_from(der).map_err(|e| Error::Tls {
        what: "reading a client certificate".into(),
        reason: format!("{e:?}"),
    })?;
    Ok(hex(strip_zeros(cert.serial())))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|x| **x == 0).count();
    &b[n.min(b.len().saturating_sub(1))..]
}

/// 16 random bytes, positive and without a leading zero byte, so that the DER INTEGER
/// and our hex agree.
fn random_serial() -> Result<SerialNumber> {
    let mut b = random_bytes(16)?;
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

/// The first certificate in a PEM text.
pub fn cert_from_pem(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_survives_restart_and_signs_from_the_csr_key_only() {
        let dir = std::env::temp_dir().join(format!("plinth-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let (ca, made) = Ca::load_or_create(&dir).expect("create");
        assert!(made);
        let (again, made) = Ca::load_or_create(&dir).expect("load");
        assert!(!made);
        assert_eq!(ca.pin, again.pin);
        // A CSR asking for a CA certificate and another name gets neither.
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut p = CertificateParams::new(vec!["evil.example".to_string()]).expect("params");
        p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let csr = p.serialize_request(&key).expect("csr").pem().expect("pem");
        let s = again
            .sign_client(&csr, "52:54:00:12:34:56", "boot", Duration::from_secs(60))
            .expect("sign");
        let der = cert_from_pem(&s.pem).expect("pem");
        assert_eq!(serial_of(&der).expect("serial"), s.record.serial);
        let cert = webpki::EndEntityCert::try_from(&der).expect("parse");
        assert_eq!(
            cert.valid_uri_names().collect::<Vec<_>>(),
            ["urn:plinth:machine:52:54:00:12:34:56"]
        );
        assert!(cert.valid_dns_names().next().is_none());
        assert_eq!(
            crate::crypto::pin_of_spki(cert.subject_public_key_info().as_ref()),
            crate::crypto::pin_of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key))
        );
        // A P-384 key is refused, whatever its CSR's signature algorithm.
        let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key");
        let csr = CertificateParams::default()
            .serialize_request(&p384)
            .expect("csr")
            .pem()
            .expect("pem");
        let err = again
            .sign_client(&csr, "52:54:00:12:34:56", "boot", Duration::from_secs(60))
            .expect_err("a P-384 key signed");
        assert!(
            err.to_string()
                .contains("must be ECDSA P-256; this one is P-384"),
            "{err}"
        );
        // A key without its certificate is refused, naming both files.
        std::fs::remove_file(dir.join(CA_CERT)).expect("rm");
        let err = Ca::load_or_create(&dir).err().expect("half a CA");
        assert!(err.to_string().contains(CA_CERT), "{err}");
        assert!(again.server_config(&["127.0.0.1".into()]).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
