//! The node's check of the server: the node knows the CA only by its pin (from the
//! kernel command line), so the server sends the CA in its chain; the certificate there
//! whose SubjectPublicKeyInfo hashes to the pin becomes the one trust anchor, and webpki
//! then checks the serving certificate against it as usual (signature, validity, name,
//! serverAuth). A chain with no certificate matching the pin is refused, saying so.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error as TlsError, SignatureScheme};

use crate::crypto::pin_of_cert;

/// Checks the server against a pinned CA.
#[derive(Debug)]
pub struct PinVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    /// A verifier for `pin` (`sha256:<hex>`).
    pub fn new(pin: &str, provider: Arc<CryptoProvider>) -> PinVerifier {
        PinVerifier {
            pin: pin.to_ascii_lowercase(),
            provider,
        }
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let anchor = intermediates
            .iter()
            .find(|c| pin_of_cert(c).is_ok_and(|p| p == self.pin))
            .ok_or_else(|| {
                TlsError::General(format!(
                    "the server's certificate does not chain to the pinned CA {}: no certificate it sent has that key",
                    self.pin
                ))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| TlsError::General(format!("the pinned CA certificate: {e}")))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::General(format!("verifier: {e}")))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
