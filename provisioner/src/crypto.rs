//! The few cryptographic facts both ends share: the CA pin, token hashes, random tokens.
//! rustls is always given ring explicitly, so no process-wide default provider is needed.

use std::sync::Arc;

use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The prefix of a pin on the kernel command line.
pub const PIN_PREFIX: &str = "sha256:";

/// The rustls crypto provider both ends use (ring: no cmake, static musl builds).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of a certificate's DER SubjectPublicKeyInfo: what `plinth.ca=` carries.
pub fn pin_of_cert(cert_der: &[u8]) -> Result<String> {
    let der = rustls::pki_types::CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| Error::Tls {
        what: "reading a certificate for its pin".into(),
        reason: format!("{e:?}"),
    })?;
    Ok(pin_of_spki(cert.subject_public_key_info().as_ref()))
}

/// `sha256:<hex>` of a DER SubjectPublicKeyInfo.
pub fn pin_of_spki(spki_der: &[u8]) -> String {
    format!("{PIN_PREFIX}{}", sha256_hex(spki_der))
}

/// The hex SHA-256 of a secret token: what the server stores instead of the token.
/// Tokens carry 256 random bits, so a plain hash cannot be reversed by guessing.
pub fn token_hash(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Compares two strings in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `n` random bytes from the system's generator.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::Tls {
            what: "drawing random bytes".into(),
            reason: "the system's random generator failed".into(),
        })?;
    Ok(buf)
}

/// A fresh 256-bit secret, hex.
pub fn random_token() -> Result<String> {
    Ok(hex(&random_bytes(32)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_hashes() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        let t = random_token().expect("random");
        assert_eq!(t.len(), 64);
        assert_ne!(t, random_token().expect("random"));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        assert_eq!(
            pin_of_cert(cert.der()).expect("pin"),
            pin_of_spki(&rcgen::PublicKeyData::subject_public_key_info(&key))
        );
    }
}
