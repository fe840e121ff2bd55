//! The session cookie: who signed in, for which host, until when, sealed
//! (AES-256-GCM, the `cookie` crate's private jar, the cookie's name bound in) under
//! a key every node of a cluster derives alike.
//!
//! Owns the key's origin (cluster secret, else a key file in the state directory,
//! else random per process), the sealed payload and its caps. It does not decide who
//! may pass (`policy`) or speak HTTP (`gate`).

use super::names::SESSION_COOKIE;
use cookie::{Cookie, CookieJar, Key};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest sealed cookie value read or written: browsers keep 4096 bytes per cookie,
/// name included. A longer value a visitor sends is ignored unread.
pub const MAX_COOKIE_VALUE: usize = 4000;
/// Groups kept in a session: enough for any `group:` rule, few enough to fit the
/// cookie next to the longest email and subject.
pub const MAX_GROUPS: usize = 24;
/// Longest group name kept; longer ones are left out of the session (a rule naming
/// one can never match).
pub const MAX_GROUP_LEN: usize = 64;
/// Longest email and subject accepted from a token (RFC 5321's address limit).
pub const MAX_NAME_LEN: usize = 254;
/// The file in the state directory that holds a single node's key.
pub const KEY_FILE: &str = "signin.key";
/// Bytes of key material in the key file (hex-encoded there).
const KEY_LEN: usize = 64;
/// What the cluster secret is bound to before it becomes key material, so that the
/// cookie key can never equal any other key derived from the same secret.
const CLUSTER_LABEL: &[u8] = b"pipe sign-in cookie key v1";

/// Who a visitor is, as the session remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// A verified email address (lower case), if the issuer gave one.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The issuer's subject.
    #[serde(rename = "u")]
    pub user: String,
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

impl Identity {
    /// How the visitor is named on pages: the email, else the subject.
    pub fn shown(&self) -> &str {
        self.email.as_deref().unwrap_or(&self.user)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Sealed {
    /// The host (no port) the session is for: a cookie carried to another subdomain
    /// opens there but is refused.
    #[serde(rename = "h")]
    host: String,
    #[serde(rename = "i")]
    id: Identity,
    /// Expiry, seconds since the Unix epoch.
    #[serde(rename = "x")]
    exp: u64,
}

/// Seals and opens sessions with one key.
pub struct Sealer {
    key: Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sealer {
    /// Every node with the same cluster secret gets the same key.
    pub fn from_cluster_secret(secret: &str) -> Sealer {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(CLUSTER_LABEL);
        let master = mac.finalize().into_bytes();
        Sealer {
            key: Key::derive_from(&master),
        }
    }

    /// The key kept in `dir` (made on first use, mode 0600).
    pub fn from_state_dir(dir: &Path) -> Result<Sealer, String> {
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create the state directory {}: {e}", dir.display()))?;
            let mut bytes = [0u8; KEY_LEN];
            rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
            crate::transport::selfsigned::write_private(&path, &hex(&bytes))?;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bytes = unhex(text.trim())
            .filter(|b| b.len() == KEY_LEN)
            .ok_or_else(|| {
                format!(
                    "{} is not a sign-in key ({KEY_LEN} bytes in hex)",
                    path.display()
                )
            })?;
        Ok(Sealer {
            key: Key::from(&bytes),
        })
    }

    /// A key of this process only: sessions end when it does.
    pub fn random() -> Sealer {
        Sealer {
            key: Key::generate(),
        }
    }

    /// The session cookie's value for `id` on `host`, valid for `lifetime`; `None`
    /// when it would not fit in a cookie.
    pub fn seal(&self, host: &str, id: &Identity, lifetime: Duration) -> Option<String> {
        self.seal_at(host, id, now() + lifetime.as_secs())
    }

    fn seal_at(&self, host: &str, id: &Identity, exp: u64) -> Option<String> {
        let payload = serde_json::to_string(&Sealed {
            host: host.to_string(),
            id: id.clone(),
            exp,
        })
        .ok()?;
        self.seal_value(SESSION_COOKIE, payload)
            .filter(|v| v.len() <= MAX_COOKIE_VALUE)
    }

    /// Seals any value under a cookie name (the name is bound in: a value sealed for
    /// one cookie does not open as another).
    pub fn seal_value(&self, name: &'static str, value: String) -> Option<String> {
        let mut jar = CookieJar::new();
        jar.private_mut(&self.key).add(Cookie::new(name, value));
        jar.get(name).map(|c| c.value().to_string())
    }

    /// Opens a sealed value of cookie `name`.
    pub fn open_value(&self, name: &'static str, sealed: &str) -> Option<String> {
        if sealed.len() > MAX_COOKIE_VALUE {
            return None;
        }
        let mut jar = CookieJar::new();
        jar.add_original(Cookie::new(name, sealed.to_string()));
        jar.private(&self.key)
            .get(name)
            .map(|c| c.value().to_string())
    }

    /// The identity in a session cookie, if it opens with our key, is for `host` and
    /// has not expired.
    pub fn open(&self, host: &str, sealed: &str) -> Result<Identity, Refused> {
        let payload = self
            .open_value(SESSION_COOKIE, sealed)
            .ok_or(Refused::Unsealed)?;
        let s: Sealed = serde_json::from_str(&payload).map_err(|_| Refused::Unsealed)?;
        if s.host != host {
            return Err(Refused::OtherHost);
        }
        if s.exp <= now() {
            return Err(Refused::Expired);
        }
        Ok(s.id)
    }
}

/// Why a session cookie was not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not sealed with our key (forged, another deployment's, altered, too long).
    Unsealed,
    /// Made for another subdomain.
    OtherHost,
    Expired,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            email: Some("alice@example.com".into()),
            user: "alice".into(),
            groups: vec!["staff".into()],
        }
    }

    #[test]
    fn a_session_opens_only_with_its_key_on_its_host_before_it_expires() {
        let s = Sealer::from_cluster_secret("cluster secret");
        let v = s
            .seal("app.example.test", &alice(), Duration::from_secs(60))
            .unwrap();
        assert_eq!(s.open("app.example.test", &v), Ok(alice()));
        let other_node = Sealer::from_cluster_secret("cluster secret");
        assert_eq!(
            other_node.open("app.example.test", &v),
            Ok(alice()),
            "same secret, same key"
        );
        let other_cluster = Sealer::from_cluster_secret("another secret");
        assert_eq!(
            other_cluster.open("app.example.test", &v),
            Err(Refused::Unsealed)
        );
        assert_eq!(
            Sealer::random().open("app.example.test", &v),
            Err(Refused::Unsealed)
        );
        assert_eq!(s.open("other.example.test", &v), Err(Refused::OtherHost));
        let old = s.seal_at("app.example.test", &alice(), now() - 1).unwrap();
        assert_eq!(s.open("app.example.test", &old), Err(Refused::Expired));
    }

    #[test]
    fn altered_oversized_and_renamed_values_do_not_open() {
        let s = Sealer::random();
        let v = s.seal("h", &alice(), Duration::from_secs(60)).unwrap();
        let mut bytes = v.clone().into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert_eq!(s.open("h", &altered), Err(Refused::Unsealed));
        assert_eq!(
            s.open("h", &"A".repeat(MAX_COOKIE_VALUE + 1)),
            Err(Refused::Unsealed)
        );
        assert_eq!(s.open("h", ""), Err(Refused::Unsealed));
        assert_eq!(s.open("h", "%%%not base64"), Err(Refused::Unsealed));
        let state = s
            .seal_value(super::super::names::STATE_COOKIE, "x".into())
            .unwrap();
        assert_eq!(
            s.open("h", &state),
            Err(Refused::Unsealed),
            "a state cookie is no session"
        );
    }

    #[test]
    fn the_largest_identity_still_fits_a_cookie() {
        let big = Identity {
            email: Some(format!("{}@x.io", "a".repeat(MAX_NAME_LEN - 5))),
            user: "u".repeat(MAX_NAME_LEN),
            groups: vec!["g".repeat(MAX_GROUP_LEN); MAX_GROUPS],
        };
        let s = Sealer::random();
        let v = s
            .seal(
                "a-63-character-subdomain.example.com",
                &big,
                Duration::from_secs(9),
            )
            .expect("fits");
        assert!(v.len() <= MAX_COOKIE_VALUE, "{}", v.len());
        let too_big = Identity {
            groups: vec!["g".repeat(MAX_GROUP_LEN); MAX_GROUPS * 3],
            ..big
        };
        assert_eq!(s.seal("h", &too_big, Duration::from_secs(9)), None);
    }

    #[test]
    fn the_state_dir_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Sealer::from_state_dir(dir.path()).unwrap();
        let v = a.seal("h", &alice(), Duration::from_secs(60)).unwrap();
        let b = Sealer::from_state_dir(dir.path()).unwrap();
        assert_eq!(b.open("h", &v), Ok(alice()), "the same key after a restart");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(KEY_FILE), "zz").unwrap();
        assert!(Sealer::from_state_dir(dir.path())
            .unwrap_err()
            .contains("is not a sign-in key"));
    }
}
