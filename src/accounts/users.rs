//! The users file (`piped --users FILE`): `[[user]]` tables parsed into a `UserTable`,
//! and each user's rights (ports, subdomains, tunnel count, speed limit) as checks
//! that name the rule a refusal broke.
//!
//! Owns the file format and its validation. It does not watch the file (see
//! `accounts::Accounts`) or act on sessions (the server does).

use crate::auth::{Token, TokenLookup};
use crate::config::{valid_subdomain, PortSet, Rate};
use crate::protocol::MAX_USER_NAME;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct UserEntry {
    name: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ports: Option<PortSet>,
    #[serde(default)]
    subdomains: Vec<String>,
    max_tunnels: Option<usize>,
    speed_limit: Option<Rate>,
    #[serde(default)]
    require_sign_in: bool,
}

/// One account and what it may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub token: Token,
    /// Public ports the user may claim (within the server's `--ports`); none if unset.
    pub ports: Option<PortSet>,
    /// DNS labels, or prefixes ending in `*` (a suffix wildcard; `*` alone is any).
    pub subdomains: Vec<String>,
    /// Tunnels across all of the user's sessions; the server's `--max-tunnels` if unset.
    pub max_tunnels: Option<usize>,
    /// Cap per tunnel and direction, bytes per second.
    pub speed_limit: Option<u64>,
    /// Every http forward of the user must have visitors sign in (`auth=oidc`).
    pub require_sign_in: bool,
}

impl User {
    /// May the user claim this public port?
    pub fn check_port(&self, port: u16) -> Result<(), String> {
        match &self.ports {
            Some(set) if set.contains(port) => Ok(()),
            _ => Err(format!("port {port} is not in {}'s ports", self.name)),
        }
    }

    /// May the user publish this subdomain?
    pub fn check_subdomain(&self, sub: &str) -> Result<(), String> {
        let fits = |p: &String| match p.strip_suffix('*') {
            Some(prefix) => sub.starts_with(prefix),
            None => p == sub,
        };
        if self.subdomains.iter().any(fits) {
            Ok(())
        } else {
            Err(format!(
                "subdomain {sub} is not in {}'s subdomains",
                self.name
            ))
        }
    }

    /// May the user publish an http forward with (or without) sign-in?
    pub fn check_sign_in(&self, signs_in: bool) -> Result<(), String> {
        if self.require_sign_in && !signs_in {
            return Err(format!(
                "{}'s http forwards must have visitors sign in: add auth=oidc (require-sign-in)",
                self.name
            ));
        }
        Ok(())
    }

    /// The prefix a random subdomain gets: that of the user's first wildcard.
    pub fn random_subdomain_prefix(&self) -> Result<&str, String> {
        self.subdomains
            .iter()
            .find_map(|p| p.strip_suffix('*'))
            .ok_or_else(|| {
                format!(
                    "{}'s subdomains have no wildcard: name one of {}",
                    self.name,
                    self.subdomains.join(", ")
                )
            })
    }
}

/// The users in force, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UserTable {
    users: HashMap<String, Arc<User>>,
}

impl UserTable {
    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.users.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    pub fn users(&self) -> impl Iterator<Item = &Arc<User>> {
        self.users.values()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl TokenLookup for UserTable {
    fn token_of(&self, user: &str) -> Option<&Token> {
        self.users.get(user).map(|u| &u.token)
    }
}

/// A user name: what a person can type and grep for in the audit log.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'@'))
}

fn valid_pattern(p: &str) -> bool {
    match p.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => {
            // The prefix of a label: label characters, and a random tail makes it whole.
            prefix.len() < 63
                && !prefix.starts_with('-')
                && prefix
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        }
        None => valid_subdomain(p),
    }
}

/// Parses users-file text; token files are read relative to nothing (absolute or
/// relative to the working directory, as written). Returns the table and every byte
/// read (file and token files), so a caller can tell whether anything changed.
pub fn parse(text: &str, origin: &Path) -> Result<(UserTable, Vec<u8>), String> {
    let bad = |e: String| format!("invalid users file {}: {e}", origin.display());
    let file: UsersFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut seen = text.as_bytes().to_vec();
    let mut users = HashMap::new();
    for e in file.user {
        if !valid_name(&e.name) {
            return Err(bad(format!(
                "user name {:?}: 1 to {MAX_USER_NAME} characters of a-z, A-Z, 0-9, '-', '_', '.', '@'",
                e.name.chars().take(MAX_USER_NAME).collect::<String>()
            )));
        }
        let name = e.name.clone();
        let token = match (e.token, e.token_file) {
            (Some(t), None) => t,
            (None, Some(path)) => {
                let t = std::fs::read_to_string(&path).map_err(|err| {
                    bad(format!(
                        "user {name}: cannot read token-file {}: {err}",
                        path.display()
                    ))
                })?;
                seen.extend_from_slice(t.as_bytes());
                t.trim().to_string()
            }
            _ => {
                return Err(bad(format!(
                    "user {name}: give exactly one of token and token-file"
                )))
            }
        };
        if token.is_empty() {
            return Err(bad(format!("user {name}: the token is empty")));
        }
        if let Some(p) = e.subdomains.iter().find(|p| !valid_pattern(p)) {
            return Err(bad(format!(
                "user {name}: subdomain {p:?} is neither a DNS label nor a prefix ending in '*'"
            )));
        }
        if e.max_tunnels == Some(0) {
            return Err(bad(format!("user {name}: max-tunnels must be at least 1")));
        }
        let user = User {
            name: name.clone(),
            token: Token::new(token),
            ports: e.ports,
            subdomains: e.subdomains,
            max_tunnels: e.max_tunnels,
            speed_limit: e.speed_limit.map(|r| r.0),
            require_sign_in: e.require_sign_in,
        };
        if users.insert(name.clone(), Arc::new(user)).is_some() {
            return Err(bad(format!("user {name} is defined twice")));
        }
    }
    Ok((UserTable { users }, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Result<UserTable, String> {
        parse(text, Path::new("users.toml")).map(|(t, _)| t)
    }

    const TWO: &str = r#"
        [[user]]
        name = "alice"
        token = "a-token"
        ports = "21000-21009"
        subdomains = ["alice", "alice-*"]
        max-tunnels = 8
        speed-limit = "10MB"
        require-sign-in = true

        [[user]]
        name = "bob"
        token = "b-token"
    "#;

    #[test]
    fn rights_name_the_rule_they_refuse_by() {
        let t = table(TWO).unwrap();
        let alice = t.get("alice").unwrap();
        assert!(alice.check_port(21000).is_ok());
        assert_eq!(
            alice.check_port(21012).unwrap_err(),
            "port 21012 is not in alice's ports"
        );
        assert!(alice.check_subdomain("alice").is_ok());
        assert!(alice.check_subdomain("alice-dev").is_ok());
        assert_eq!(
            alice.check_subdomain("bob").unwrap_err(),
            "subdomain bob is not in alice's subdomains"
        );
        assert_eq!(alice.random_subdomain_prefix().unwrap(), "alice-");
        assert_eq!(alice.speed_limit, Some(10_000_000));
        assert!(alice.check_sign_in(true).is_ok());
        assert_eq!(
            alice.check_sign_in(false).unwrap_err(),
            "alice's http forwards must have visitors sign in: add auth=oidc (require-sign-in)"
        );
        let bob = t.get("bob").unwrap();
        assert!(bob.check_port(21000).is_err(), "no ports unless given");
        assert!(bob.check_subdomain("bob").is_err());
        assert!(bob.random_subdomain_prefix().is_err());
        assert!(
            bob.check_sign_in(false).is_ok(),
            "sign-in is not required by default"
        );
        assert_eq!(t.token_of("bob"), Some(&Token::new("b-token")));
        assert_eq!(t.token_of("carol"), None);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, why) in [
            ("[[user]]\nname = \"a\"\n", "exactly one of token"),
            (
                "[[user]]\nname = \"a\"\ntoken = \"x\"\ntoken-file = \"/x\"\n",
                "exactly one of token",
            ),
            ("[[user]]\nname = \"a b\"\ntoken = \"x\"\n", "user name"),
            ("[[user]]\nname = \"a\"\ntoken = \"\"\n", "empty"),
            (
                "[[user]]\nname = \"a\"\ntoken = \"x\"\n[[user]]\nname = \"a\"\ntoken = \"y\"\n",
                "defined twice",
            ),
            (
                "[[user]]\nname = \"a\"\ntoken = \"x\"\nsubdomains = [\"A.b\"]\n",
                "neither a DNS label",
            ),
            (
                "[[user]]\nname = \"a\"\ntoken = \"x\"\nmax-tunnels = 0\n",
                "at least 1",
            ),
            (
                "[[user]]\nname = \"a\"\ntoken = \"x\"\nport = \"1\"\n",
                "unknown field",
            ),
            ("[[user]\n", "invalid users file"),
            (
                "[[user]]\nname = \"a\"\ntoken-file = \"/nonexistent/t\"\n",
                "cannot read token-file",
            ),
        ] {
            let err = table(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(err.contains("users.toml"), "{err}");
        }
    }

    #[test]
    fn token_files_are_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("alice");
        std::fs::write(&p, "from-a-file\n").unwrap();
        let text = format!("[[user]]\nname = \"alice\"\ntoken-file = {:?}\n", p);
        let t = table(&text).unwrap();
        assert_eq!(t.token_of("alice"), Some(&Token::new("from-a-file")));
    }
}
