//! TLS towards other servers: one root store (the system's plus
//! `federation.ca_roots`), and a verifier that records whether the peer's
//! certificate verified for its domain (RFC 6125 DNS-ID checks by webpki)
//! instead of failing, so dialback can decide under
//! `federation.require_valid_certificates`.

use crate::{certs::ALPN_XMPP_SERVER, config::Config};
use anyhow::Context;
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use tokio_rustls::TlsConnector;

pub struct Client {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// Refuse the handshake itself when the certificate does not verify.
    required: bool,
}

impl Client {
    pub fn new(config: &Config) -> anyhow::Result<Client> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        if let Some(p) = &config.federation.ca_roots {
            for c in CertificateDer::pem_file_iter(p).with_context(|| format!("reading {}", p.display()))? {
                roots
                    .add(c.with_context(|| format!("parsing {}", p.display()))?)
                    .with_context(|| format!("adding a root from {}", p.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = if roots.is_empty() {
            tracing::warn!("no trusted roots for federation: no peer certificate will verify");
            None
        } else {
            Some(WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?)
        };
        Ok(Client {
            webpki,
            required: config.require_valid_certificates(),
        })
    }

    /// Whether a certificate chain a peer presented verifies for `domain`
    /// (chain to a trusted root, RFC 6125 DNS-ID): what SASL EXTERNAL needs.
    /// The chain is checked as a server certificate, since that is the one
    /// servers present in both directions.
    pub fn verifies_for(&self, chain: &[CertificateDer<'_>], domain: &str) -> bool {
        let (Some(webpki), Some((end, intermediates))) = (&self.webpki, chain.split_first()) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(domain.to_string()) else {
            return false;
        };
        webpki
            .verify_server_cert(end, intermediates, &name, &[], UnixTime::now())
            .is_ok()
    }

    /// A connector for one connection, and the flag that becomes true if the
    /// peer's certificate verifies for the name given at connect time.
    /// `own` is presented when the peer asks for a client certificate.
    pub fn connector(
        &self,
        direct_tls: bool,
        own: Option<Arc<rustls::sign::CertifiedKey>>,
    ) -> (TlsConnector, Arc<AtomicBool>) {
        let verified = Arc::new(AtomicBool::new(false));
        let verifier = Recording {
            inner: self.webpki.clone(),
            verified: verified.clone(),
            required: self.required,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        };
        let cfg = ClientConfig::builder_with_provider(verifier.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut cfg = match own {
            Some(key) => cfg.with_client_cert_resolver(Arc::new(OwnCert(key))),
            None => cfg.with_no_client_auth(),
        };
        if direct_tls {
            cfg.alpn_protocols = vec![ALPN_XMPP_SERVER.to_vec()];
        }
        (TlsConnector::from(Arc::new(cfg)), verified)
    }
}

/// Our certificate for the local name of an outgoing stream.
#[derive(Debug)]
struct OwnCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Incoming streams ask for a client certificate but never require one,
/// and accept any chain during the handshake: whether it is good for the
/// peer's domain is decided once the stream header names that domain
/// ([`Client::verifies_for`]). Signatures are checked here: the peer must
/// hold the key of the certificate it shows.
#[derive(Debug)]
pub struct AnyClientCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl AnyClientCert {
    pub fn new() -> Arc<AnyClientCert> {
        Arc::new(AnyClientCert {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        })
    }
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct Recording {
    inner: Option<Arc<WebPkiServerVerifier>>,
    verified: Arc<AtomicBool>,
    required: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = match &self.inner {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        };
        match r {
            Ok(ok) => {
                self.verified.store(true, Ordering::Release);
                Ok(ok)
            }
            Err(e) if self.required => Err(e),
            Err(e) => {
                tracing::debug!(error = %e, server = ?server_name, "peer certificate does not verify; dialback may still authenticate it");
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    // Signatures are checked whatever the certificate's standing: the peer
    // must hold the key of the certificate it shows.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
