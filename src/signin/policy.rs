//! Who may pass an `auth=oidc` forward: its `oidc-allow` patterns against a signed-in
//! identity. Pure; the patterns were checked when the forward was asked for
//! (`protocol::check_oidc_pattern`) and arrive from Caddy as one header.

use super::seal::Identity;
use crate::protocol::{check_oidc_pattern, MAX_OIDC_ALLOW};

/// The patterns of one forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow(Vec<String>);

impl Allow {
    /// Parses the space-separated list Caddy sends; `None` if it is missing, empty,
    /// too long or holds a pattern that could not have passed the forward's check.
    pub fn parse(header: &str) -> Option<Allow> {
        let list: Vec<String> = header.split(' ').map(str::to_string).collect();
        let ok = !header.is_empty()
            && list.len() <= MAX_OIDC_ALLOW
            && list.iter().all(|p| check_oidc_pattern(p).is_ok());
        ok.then_some(Allow(list))
    }

    /// Does any pattern admit `id`? Emails count only when the issuer verified them
    /// (an unverified one never reaches an [`Identity`]).
    ///
    /// ```
    /// use pipe::signin::{Allow, Identity};
    /// let allow = Allow::parse("*@example.com bob@partner.io group:ops").unwrap();
    /// let who = |email: &str, groups: &[&str]| Identity {
    ///     email: (!email.is_empty()).then(|| email.to_string()),
    ///     user: "sub".into(),
    ///     groups: groups.iter().map(|g| g.to_string()).collect(),
    /// };
    /// assert!(allow.admits(&who("alice@example.com", &[])));
    /// assert!(allow.admits(&who("bob@partner.io", &[])));
    /// assert!(allow.admits(&who("", &["ops"])));
    /// assert!(!allow.admits(&who("eve@partner.io", &[])));
    /// assert!(!allow.admits(&who("alice@example.com.evil.io", &[])));
    /// assert!(!allow.admits(&who("alice@sub.example.com", &[])));
    /// assert!(!allow.admits(&who("", &["Ops", "op"])));
    /// assert!(!allow.admits(&who("", &[])));
    /// ```
    pub fn admits(&self, id: &Identity) -> bool {
        let email = id.email.as_deref().map(str::to_ascii_lowercase);
        self.0.iter().any(|p| {
            if let Some(group) = p.strip_prefix("group:") {
                return id.groups.iter().any(|g| g == group);
            }
            let Some(email) = email.as_deref() else {
                return false;
            };
            match p.strip_prefix("*@") {
                Some(domain) => email.rsplit_once('@').is_some_and(|(_, d)| d == domain),
                None => email == p,
            }
        })
    }
}
