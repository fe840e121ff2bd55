//! TLS without a certificate authority: the server makes its own key and certificate
//! once and keeps them in its state directory; the client pins the certificate's
//! SHA-256 fingerprint instead of checking a chain.
//!
//! Owns the state directory's TLS files, the fingerprint text (`sha256:HEX`) and the
//! pinning verifier. Loading PEM files and building acceptors stay in `tls`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File names inside the state directory.
const KEY_FILE: &str = "tls-key.pem";
const CERT_FILE: &str = "tls-cert.pem";
/// The name in the certificate; nothing checks it (the client pins the fingerprint).
const CERT_NAME: &str = "pipe";
/// Owner-only: the key is the server's identity.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

/// A certificate's SHA-256 fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert_der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(cert_der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;

    /// `sha256:` and 64 hex digits (colons between bytes allowed, as openssl prints).
    ///
    /// ```
    /// use pipe::transport::selfsigned::Fingerprint;
    /// let hex = "ab".repeat(32);
    /// let f: Fingerprint = format!("sha256:{hex}").parse().unwrap();
    /// assert_eq!(f.to_string(), format!("sha256:{hex}"));
    /// assert!("sha256:abcd".parse::<Fingerprint>().is_err());
    /// assert!(hex.parse::<Fingerprint>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid TLS fingerprint {s:?}: expected sha256: and 64 hex digits");
        let hex: String = s
            .trim()
            .strip_prefix("sha256:")
            .ok_or_else(bad)?
            .chars()
            .filter(|c| *c != ':')
            .collect();
        if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(out))
    }
}

/// The state directory: `dir`, else `$STATE_DIRECTORY` (systemd's `StateDirectory=`),
/// else `$XDG_STATE_HOME/pipe`, else `~/.local/state/pipe`.
pub fn state_dir(dir: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(d) = dir {
        return Ok(d.to_path_buf());
    }
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("STATE_DIRECTORY") {
        // systemd may list several, separated by ':'; the first is ours.
        let first = d
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return Ok(PathBuf::from(first));
    }
    if let Some(d) = var("XDG_STATE_HOME") {
        return Ok(d.join("pipe"));
    }
    var("HOME")
        .map(|h| h.join(".local/state/pipe"))
        .ok_or_else(|| "no state directory: pass --state-dir (HOME is not set)".to_string())
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The key and certificate in `dir`, made on first use. Returns their paths and the
/// certificate's fingerprint.
pub fn ensure(dir: &Path) -> Result<(PathBuf, PathBuf, Fingerprint), String> {
    let (key, cert) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
    if !cert.exists() || !key.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
        // A half-made pair (a crash between the two writes) is made again.
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&cert);
        let pair = rcgen::KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
        let params = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()])
            .map_err(|e| format!("cannot make a certificate: {e}"))?;
        let c = params
            .self_signed(&pair)
            .map_err(|e| format!("cannot make a certificate: {e}"))?;
        write_private(&key, &pair.serialize_pem())?;
        write_private(&cert, &c.pem())?;
    }
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(&cert)
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
    Ok((cert, key, Fingerprint::of(&der)))
}

/// The certificate presented was not the pinned one (`transport::verify` words it for
/// the user).
#[derive(Debug)]
pub(crate) struct Mismatch {
    pub(crate) got: Fingerprint,
    pub(crate) want: Fingerprint,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server's certificate has fingerprint {}, not the expected {} (--tls-fingerprint)",
            self.got, self.want
        )
    }
}

impl std::error::Error for Mismatch {}

/// Accepts exactly the certificate with the pinned fingerprint (its handshake
/// signatures are still checked, so the server must hold the key).
#[derive(Debug)]
pub struct Pinned {
    want: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl Pinned {
    pub fn new(want: Fingerprint, provider: Arc<CryptoProvider>) -> Self {
        Pinned { want, provider }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if got == self.want {
            return Ok(ServerCertVerified::assertion());
        }
        let why = Mismatch {
            got,
            want: self.want,
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(why)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_kept_private_and_the_same_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (cert, key, first) = ensure(&state).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for p in [&cert, &key] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, FILE_MODE, "{}", p.display());
        }
        let (_, _, again) = ensure(&state).unwrap();
        assert_eq!(first, again);
        assert!(crate::transport::tls::acceptor(&cert, &key).is_ok());
        let other = ensure(&dir.path().join("other")).unwrap().2;
        assert_ne!(first, other);
    }

    #[test]
    fn state_dir_prefers_the_flag() {
        let d = Path::new("/x/y");
        assert_eq!(state_dir(Some(d)).unwrap(), d);
    }
}
