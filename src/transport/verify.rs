//! How `pipec` decides whether to trust the server's certificate, and how it says
//! why not.
//!
//! Owns the client's certificate verifier: the usual CA path check (rustls's webpki
//! verifier over the system's roots or `--tls-ca`), plus one case it refuses and we
//! accept — the server presents exactly a certificate the `--tls-ca` file holds.
//! That is what a self-signed certificate from `openssl req -x509` is: OpenSSL marks
//! it as a CA, and webpki refuses a CA certificate as a server's own
//! (`CaUsedAsEndEntity`). Such a pinned certificate is still checked for the name and
//! the validity period; the handshake signature is checked as for any certificate.
//! It also owns turning a refusal into words a user can act on. It does not load
//! files or build connectors (`transport::tls` does).

use super::selfsigned::Mismatch;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A certificate from the `--tls-ca` file, trusted when the server presents it itself.
#[derive(Debug)]
struct Pinned {
    der: CertificateDer<'static>,
    not_before: u64,
    not_after: u64,
}

/// The client's verifier: CA roots first, then an exact pinned certificate.
#[derive(Debug)]
pub struct ServerVerifier {
    roots: Arc<WebPkiServerVerifier>,
    pinned: Vec<Pinned>,
}

impl ServerVerifier {
    /// `roots` checks CA paths; every certificate in `pinned` (the `--tls-ca` file's)
    /// is also accepted as the server's own.
    pub fn new(
        roots: Arc<WebPkiServerVerifier>,
        pinned: &[CertificateDer<'static>],
        file: &Path,
    ) -> Result<ServerVerifier, String> {
        let pinned = pinned
            .iter()
            .map(|der| {
                let (_, cert) = x509_parser::parse_x509_certificate(der)
                    .map_err(|e| format!("bad certificate in {}: {e}", file.display()))?;
                let v = cert.validity();
                // Before 1970 reads as 0; a validity period is never that old.
                let secs = |t: &x509_parser::time::ASN1Time| t.timestamp().max(0) as u64;
                Ok(Pinned {
                    der: der.clone(),
                    not_before: secs(&v.not_before),
                    not_after: secs(&v.not_after),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ServerVerifier { roots, pinned })
    }

    /// The pinned certificate's own checks: the name the client dialled, and the
    /// validity period at `now`.
    fn check_pinned(
        p: &Pinned,
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = webpki::EndEntityCert::try_from(&p.der)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if let Err(e) = cert.verify_is_valid_for_subject_name(server_name) {
            let e = match e {
                webpki::Error::CertNotValidForName(cx) => {
                    CertificateError::NotValidForNameContext {
                        expected: cx.expected,
                        presented: cx.presented,
                    }
                }
                _ => CertificateError::NotValidForName,
            };
            return Err(Error::InvalidCertificate(e));
        }
        let time = now;
        if now.as_secs() < p.not_before {
            let not_before = UnixTime::since_unix_epoch(Duration::from_secs(p.not_before));
            let e = CertificateError::NotValidYetContext { time, not_before };
            return Err(Error::InvalidCertificate(e));
        }
        if now.as_secs() > p.not_after {
            let not_after = UnixTime::since_unix_epoch(Duration::from_secs(p.not_after));
            let e = CertificateError::ExpiredContext { time, not_after };
            return Err(Error::InvalidCertificate(e));
        }
        Ok(ServerCertVerified::assertion())
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let by_roots = self.roots.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match by_roots {
            Ok(v) => Ok(v),
            Err(e) => match self.pinned.iter().find(|p| p.der == *end_entity) {
                Some(p) => Self::check_pinned(p, server_name, now),
                // webpki refuses a CA certificate as a server's own before it looks
                // for the issuer: a self-signed one nobody pinned is, to the user, a
                // certificate from an untrusted issuer.
                None if is_ca_as_end_entity_error(&e) && self_signed(end_entity) => {
                    Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
                }
                None => Err(e),
            },
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.roots.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.roots.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.roots.supported_verify_schemes()
    }
}

/// Where the client's trust comes from, for the words of a refusal.
#[derive(Debug, Clone)]
pub enum Trust {
    SystemRoots,
    CaFile(PathBuf),
}

fn when(t: UnixTime) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_secs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Says in plain words why the server's certificate was refused, and what to do.
pub fn explain_certificate(e: &CertificateError, trust: &Trust) -> String {
    let pass_ca = "pass the CA's certificate, or the server's own self-signed certificate, with --tls-ca FILE";
    match e {
        CertificateError::UnknownIssuer => match trust {
            Trust::SystemRoots => format!(
                "the server's certificate is not signed by a trusted CA (none of this system's roots); {pass_ca}"
            ),
            Trust::CaFile(f) => format!(
                "the server's certificate is not signed by a trusted CA: it is neither signed by a CA in {} nor one of its certificates; {pass_ca}",
                f.display()
            ),
        },
        CertificateError::NotValidForNameContext { expected, presented } => format!(
            "the server's certificate does not match its name: it is for {}, not {}; connect by one of those names or pass --tls-server-name NAME",
            if presented.is_empty() {
                "no name at all".to_string()
            } else {
                presented.iter().map(|n| plain_name(n)).collect::<Vec<_>>().join(", ")
            },
            expected.to_str(),
        ),
        CertificateError::NotValidForName => "the server's certificate does not match its name (see --tls-server-name)".to_string(),
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the server's certificate expired on {} (it is {} here); renew it on the server, or check this machine's clock",
            when(*not_after),
            when(*time)
        ),
        CertificateError::Expired => "the server's certificate has expired; renew it on the server".to_string(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the server's certificate is not valid before {} (it is {} here); check both machines' clocks",
            when(*not_before),
            when(*time)
        ),
        CertificateError::NotValidYet => "the server's certificate is not valid yet; check both machines' clocks".to_string(),
        CertificateError::Other(o) => explain_other(o),
        CertificateError::BadSignature => "the server's certificate has a bad signature".to_string(),
        CertificateError::BadEncoding => "the server's certificate cannot be parsed".to_string(),
        other => format!("the server's certificate was refused ({other})"),
    }
}

/// The refusals rustls carries as `Other`: ours (a pinned fingerprint that does not
/// match) and webpki's, in words; never the debug form of the error.
fn explain_other(o: &rustls::OtherError) -> String {
    if let Some(m) = o.0.downcast_ref::<Mismatch>() {
        return explain_mismatch(m);
    }
    if is_ca_as_end_entity(o) {
        return "the server presents a CA certificate as its own; give the server a certificate for its name signed by that CA, or trust exactly this certificate by passing it itself with --tls-ca FILE".to_string();
    }
    format!("the server's certificate was refused: {o}")
}

/// SPEC: a pinned fingerprint that does not match "exits 1 naming both fingerprints";
/// the user's next step is to compare with the line piped printed at its start.
fn explain_mismatch(m: &Mismatch) -> String {
    format!(
        "the server's certificate is {got}, but --tls-fingerprint pins {want}: pass the \
         fingerprint piped printed at start (its \"tls fingerprint sha256:...\" line); if \
         piped still prints {want}, something else is answering at this address",
        got = m.got,
        want = m.want
    )
}

/// A name as webpki presents it (`DnsName("localhost")`, `IpAddress(127.0.0.1)`),
/// as a user writes it.
fn plain_name(n: &str) -> &str {
    for (open, close) in [
        ("DnsName(\"", "\")"),
        ("IpAddress(", ")"),
        ("UriName(\"", "\")"),
    ] {
        if let Some(inner) = n.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
            return inner;
        }
    }
    n
}

fn is_ca_as_end_entity_error(e: &Error) -> bool {
    matches!(e, Error::InvalidCertificate(CertificateError::Other(o)) if is_ca_as_end_entity(o))
}

/// Issued by itself (the subject names the issuer); unparsable reads as no.
fn self_signed(der: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(der)
        .is_ok_and(|(_, c)| c.issuer().as_raw() == c.subject().as_raw())
}

fn is_ca_as_end_entity(o: &rustls::OtherError) -> bool {
    matches!(
        o.0.downcast_ref::<webpki::Error>(),
        Some(webpki::Error::CaUsedAsEndEntity)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shown_as_users_write_them() {
        assert_eq!(plain_name(r#"DnsName("localhost")"#), "localhost");
        assert_eq!(plain_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(plain_name("IpAddress(::1)"), "::1");
        assert_eq!(plain_name("something else"), "something else");
    }

    #[test]
    fn every_refusal_is_plain_words() {
        let f = Trust::CaFile(PathBuf::from("/etc/pipe/ca.pem"));
        let t = |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        let expired = CertificateError::ExpiredContext {
            time: t(1_800_000_000),
            not_after: t(1_580_515_200),
        };
        assert_eq!(
            explain_certificate(&expired, &f),
            "the server's certificate expired on 2020-02-01T00:00:00Z (it is 2027-01-15T08:00:00Z here); renew it on the server, or check this machine's clock"
        );
        let unknown = explain_certificate(&CertificateError::UnknownIssuer, &f);
        assert!(
            unknown.contains("neither signed by a CA in /etc/pipe/ca.pem"),
            "{unknown}"
        );
        let ca = CertificateError::Other(rustls::OtherError(Arc::new(
            webpki::Error::CaUsedAsEndEntity,
        )));
        let ca = explain_certificate(&ca, &Trust::SystemRoots);
        assert!(
            ca.starts_with("the server presents a CA certificate as its own"),
            "{ca}"
        );
        let got = crate::transport::selfsigned::Fingerprint([0xab; 32]);
        let want = crate::transport::selfsigned::Fingerprint([0x01; 32]);
        let pinned = CertificateError::Other(rustls::OtherError(Arc::new(Mismatch { got, want })));
        let pinned = explain_certificate(&pinned, &Trust::SystemRoots);
        assert_eq!(
            pinned,
            format!(
                "the server's certificate is sha256:{}, but --tls-fingerprint pins sha256:{}: \
                 pass the fingerprint piped printed at start (its \"tls fingerprint \
                 sha256:...\" line); if piped still prints sha256:{}, something else is \
                 answering at this address",
                "ab".repeat(32),
                "01".repeat(32),
                "01".repeat(32)
            )
        );
        for e in [unknown, ca, pinned] {
            assert!(!e.contains("Other") && !e.contains("Error"), "{e}");
        }
    }
}
