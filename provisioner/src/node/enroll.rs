//! Enrolment and renewal, the node's side: a fresh ECDSA P-256 key made in memory (never
//! written anywhere), a CSR for it, and the certificate the server signs from it.

use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::error::{Error, Result};
use crate::node::client::Client;
use crate::schema::{EnrollRequest, Issued, RenewRequest, API_VERSION};

/// A key and the CSR for it.
pub struct Fresh {
    /// The key, PKCS#8 DER (memory only).
    pub key_der: Vec<u8>,
    /// The CSR, PEM.
    pub csr_pem: String,
}

/// Makes a fresh P-256 key and a CSR naming `mac` (the server decides the subject).
pub fn fresh_key(mac: &str) -> Result<Fresh> {
    let tls = |what: &str| {
        let what = what.to_string();
        move |e: rcgen::Error| Error::Tls {
            what,
            reason: e.to_string(),
        }
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(tls("making a key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, mac);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(tls("making a CSR"))?
        .pem()
        .map_err(tls("encoding the CSR"))?;
    Ok(Fresh {
        key_der: key.serialize_der(),
        csr_pem: csr,
    })
}

/// The node's identity as enrolment sends it.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The boot NIC's MAC.
    pub mac: String,
    /// SMBIOS UUID.
    pub uuid: String,
    /// SMBIOS serial.
    pub serial: Option<String>,
    /// The kernel's boot id.
    pub boot_id: String,
}

/// `POST /v1/enroll` with the token.
pub async fn enroll(client: &Client, id: &Identity, token: &str, fresh: &Fresh) -> Result<Issued> {
    let req = EnrollRequest {
        api_version: API_VERSION.into(),
        token: token.to_string(),
        mac: id.mac.clone(),
        uuid: id.uuid.clone(),
        serial: id.serial.clone(),
        boot_id: id.boot_id.clone(),
        csr: fresh.csr_pem.clone(),
    };
    client
        .call("POST", "/v1/enroll", Some(&req), Duration::from_secs(20))
        .await
}

/// `POST /v1/renew` over the current certificate.
pub async fn renew(client: &Client, fresh: &Fresh) -> Result<Issued> {
    let req = RenewRequest {
        csr: fresh.csr_pem.clone(),
    };
    client
        .call("POST", "/v1/renew", Some(&req), Duration::from_secs(20))
        .await
}
