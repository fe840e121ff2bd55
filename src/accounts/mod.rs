//! Accounts: who may log in and what each user may claim.
//!
//! Owns the users file in force and its reloads (`users`), the proof that lets a
//! reconnecting client take over its own claims (`proof`), the slow-down of failed
//! logins per source address (`throttle`), and the strength check on tokens. The
//! login handshake itself is `crate::auth`; acting on a reload (ending sessions,
//! closing tunnels) is the server's.

pub mod proof;
pub mod throttle;
pub mod users;

pub use users::{User, UserTable};

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// Bits a token must carry so a captured login cannot be brute-forced offline (the
/// HMAC over a nonce is public): 128 is the usual floor for a symmetric key.
pub const MIN_TOKEN_BITS: f64 = 128.0;
/// Random bytes in a token from `piped token new`: 256 bits, printed as 64 hex digits.
const NEW_TOKEN_BYTES: usize = 32;

/// An estimate of a token's entropy from its length and the classes of characters it
/// uses, as if each character were drawn at random from those classes. Generous to
/// the token (a word is not random), so a warning below the floor is never wrong.
///
/// ```
/// use pipe::accounts::token_bits;
/// assert!(token_bits("hunter2") < 64.0);
/// assert!(token_bits(&"ab12".repeat(16)) > 128.0);
/// ```
pub fn token_bits(token: &str) -> f64 {
    let mut alphabet = 0u32;
    let b = token.as_bytes();
    if b.iter().any(u8::is_ascii_digit) {
        alphabet += 10;
    }
    if b.iter().any(u8::is_ascii_lowercase) {
        alphabet += 26;
    }
    if b.iter().any(u8::is_ascii_uppercase) {
        alphabet += 26;
    }
    if b.iter().any(|c| !c.is_ascii_alphanumeric()) {
        alphabet += 33;
    }
    token.chars().count() as f64 * f64::from(alphabet.max(1)).log2()
}

/// A fresh token with 256 bits of entropy (`piped token new`).
pub fn new_token() -> String {
    let mut b = [0u8; NEW_TOKEN_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a reload changed, for the server to act on.
#[derive(Debug)]
pub struct Change {
    pub old: Arc<UserTable>,
    pub new: Arc<UserTable>,
}

impl Change {
    /// Users whose token changed or who are gone: their sessions must end.
    pub fn ended(&self) -> Vec<String> {
        self.old
            .users()
            .filter(|u| self.new.get(&u.name).is_none_or(|n| n.token != u.token))
            .map(|u| u.name.clone())
            .collect()
    }

    /// Users who stay, with the same token, whose rights changed.
    pub fn narrowed(&self) -> Vec<Arc<User>> {
        self.new
            .users()
            .filter(|n| {
                self.old
                    .get(&n.name)
                    .is_some_and(|o| o.token == n.token && o.as_ref() != n.as_ref())
            })
            .cloned()
            .collect()
    }
}

/// The users file in force, reloaded on request.
pub struct Accounts {
    path: PathBuf,
    table: RwLock<Arc<UserTable>>,
    /// Digest of what the last load read (accepted or refused), so a poll that finds
    /// nothing new does nothing and a broken file is reported once, not every poll.
    last_seen: Mutex<[u8; 32]>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn read(path: &Path) -> Result<(UserTable, Vec<u8>), (String, Vec<u8>)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            format!("cannot read users file {}: {e}", path.display()),
            Vec::new(),
        )
    })?;
    users::parse(&text, path).map_err(|e| (e, text.into_bytes()))
}

impl Accounts {
    /// Loads the file once; any problem is a startup error.
    pub fn load(path: &Path) -> Result<Self, String> {
        let (table, seen) = read(path).map_err(|(e, _)| e)?;
        Ok(Accounts {
            path: path.to_path_buf(),
            table: RwLock::new(Arc::new(table)),
            last_seen: Mutex::new(digest(&seen)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<UserTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the file again. `Ok(None)`: nothing new since the last look.
    /// `Err`: the file is new but broken; the old table stays in force. With `force`
    /// (SIGHUP) a broken file is reported even if it was reported before.
    pub fn reload(&self, force: bool) -> Result<Option<Change>, String> {
        let mut last = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        match read(&self.path) {
            Ok((table, seen)) => {
                let d = digest(&seen);
                if d == *last && !force {
                    return Ok(None);
                }
                *last = d;
                let new = Arc::new(table);
                let mut cur = self.table.write().unwrap_or_else(|e| e.into_inner());
                let old = std::mem::replace(&mut *cur, new.clone());
                Ok(Some(Change { old, new }))
            }
            Err((e, seen)) => {
                let d = digest(&seen);
                if d == *last && !force {
                    return Ok(None);
                }
                *last = d;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_reports_changes_once_and_keeps_the_old_table_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users.toml");
        let alice = |tok: &str, ports: &str| {
            format!("[[user]]\nname = \"alice\"\ntoken = \"{tok}\"\nports = \"{ports}\"\n")
        };
        std::fs::write(&p, alice("t1", "1000-1009")).unwrap();
        let a = Accounts::load(&p).unwrap();
        assert!(a.reload(false).unwrap().is_none(), "nothing changed");
        std::fs::write(&p, alice("t1", "1000-1004")).unwrap();
        let c = a.reload(false).unwrap().unwrap();
        assert!(c.ended().is_empty());
        assert_eq!(c.narrowed().len(), 1);
        std::fs::write(&p, "[[user]\nbroken").unwrap();
        assert!(a.reload(false).unwrap_err().contains("invalid users file"));
        assert!(a.reload(false).unwrap().is_none(), "reported once");
        assert!(a.reload(true).is_err(), "a SIGHUP reports it again");
        assert!(a.current().get("alice").unwrap().check_port(1004).is_ok());
        std::fs::write(&p, alice("t2", "1000-1004")).unwrap();
        let c = a.reload(false).unwrap().unwrap();
        assert_eq!(c.ended(), vec!["alice".to_string()]);
        std::fs::write(&p, "").unwrap();
        assert_eq!(a.reload(false).unwrap().unwrap().ended(), vec!["alice"]);
    }

    #[test]
    fn new_tokens_are_strong() {
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert!(token_bits(&t) >= MIN_TOKEN_BITS);
        assert_ne!(t, new_token());
    }
}
