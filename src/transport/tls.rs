//! TLS for the control connection (rustls with the ring provider).
//!
//! Owns loading certificates and keys and building acceptors and connectors. The
//! handshakes themselves run in each connection's task, under the login timeout.

pub use super::verify::Trust;
use super::verify::{explain_certificate, ServerVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::Path;
use std::sync::Arc;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A fatal `handshake_failure` alert: what a plaintext server answers a TLS client,
/// so the client fails at once with a clear cause instead of retrying.
pub const PLAINTEXT_SERVER_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

/// A TLS acceptor for the server from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let certs = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", key.display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not work together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// A TLS connector that trusts `ca` (PEM: CA certificates, or the server's own
/// self-signed certificate) or, without it, the system's roots.
pub fn connector(ca: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut pinned = Vec::new();
    match ca {
        Some(path) => {
            for c in load_certs(path)? {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
                pinned.push(c);
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("no system root certificates found; pass --tls-ca".into());
            }
        }
    }
    let by_roots =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("cannot use the trusted certificates: {e}"))?;
    let verifier = ServerVerifier::new(by_roots, &pinned, ca.unwrap_or(Path::new("")))?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// A TLS connector that accepts exactly the certificate with this fingerprint.
pub fn connector_pinned(want: super::selfsigned::Fingerprint) -> Result<TlsConnector, String> {
    let verifier = Arc::new(super::selfsigned::Pinned::new(want, provider()));
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// Parses the name to verify in the server's certificate (a DNS name or an IP).
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(name.to_string()).map_err(|_| format!("invalid TLS server name {name:?}"))
}

/// Explains a failed client handshake in words a user can act on, and says whether
/// it is final (trust or protocol mismatch: `true`) or a network blip worth a retry.
pub fn explain_client_error(e: &std::io::Error, trust: &Trust) -> (String, bool) {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(c)) => (explain_certificate(c, trust), true),
        Some(rustls::Error::AlertReceived(_)) | Some(rustls::Error::InvalidMessage(_)) => (
            format!("TLS handshake failed ({e}): is the server running without TLS?"),
            true,
        ),
        Some(other) => (format!("TLS handshake failed: {other}"), true),
        None => (format!("TLS handshake interrupted: {e}"), false),
    }
}

/// The fingerprint of the first (leaf) certificate in a PEM file: the nodes of a
/// cluster that serve TLS share one certificate and accept exactly it on peer links.
pub fn leaf_fingerprint(cert: &Path) -> Result<super::selfsigned::Fingerprint, String> {
    let certs = load_certs(cert)?;
    Ok(super::selfsigned::Fingerprint::of(&certs[0]))
}
