//! The sign-in settings of `piped` (`--oidc-issuer`, `--oidc-client-id`,
//! `--oidc-client-secret-file` or `PIPE_OIDC_CLIENT_SECRET`), checked at start so
//! that a typo is a usage error (exit 2) rather than a visitor's failed sign-in.
//!
//! Owns the rule that an issuer is an https URL, or http on a loopback address only
//! (a test provider, or one on the same host): ID tokens and the client secret must
//! never cross a network in clear. It does not talk to the issuer (`signin` does).

use super::ConfigError;
use crate::auth::Token;
use std::net::IpAddr;
use std::path::PathBuf;

/// The environment variable that may hold the client secret instead of a file.
pub const CLIENT_SECRET_ENV: &str = "PIPE_OIDC_CLIENT_SECRET";

/// Where visitors of `auth=oidc` forwards sign in, and who piped is to that issuer.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer URL as the provider names itself (no trailing `/`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: ClientSecret,
}

/// Where the client secret comes from. A file is read when the server starts (like
/// its TLS key), not when the configuration is parsed.
#[derive(Debug, Clone)]
pub enum ClientSecret {
    File(PathBuf),
    Value(Token),
}

impl ClientSecret {
    /// The secret itself (the file's first line, trimmed).
    pub fn load(&self) -> Result<Token, String> {
        let secret = match self {
            ClientSecret::Value(t) => return Ok(t.clone()),
            ClientSecret::File(path) => std::fs::read_to_string(path)
                .map_err(|e| {
                    format!(
                        "cannot read oidc-client-secret-file {}: {e}",
                        path.display()
                    )
                })?
                .trim()
                .to_string(),
        };
        if secret.is_empty() {
            return Err("the oidc client secret is empty".into());
        }
        Ok(Token::new(secret))
    }
}

/// The settings as given, before they are checked.
pub(super) struct Parts {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub secret_env: Option<String>,
}

/// Checks an issuer URL: `https://HOST[:PORT][/PATH]`, or `http://` with a loopback
/// host. Returns it without a trailing `/` (the form the discovery document's
/// `issuer` is compared with).
///
/// ```
/// use pipe::config::check_issuer;
/// assert_eq!(check_issuer("https://idp.example.com/").unwrap(), "https://idp.example.com");
/// assert_eq!(check_issuer("https://idp.example.com/realms/a").unwrap(), "https://idp.example.com/realms/a");
/// assert!(check_issuer("http://127.0.0.1:4444").is_ok());
/// assert!(check_issuer("http://[::1]:4444").is_ok());
/// assert!(check_issuer("http://localhost:4444").is_ok());
/// assert_eq!(
///     check_issuer("http://idp.example.com").unwrap_err(),
///     "invalid oidc-issuer \"http://idp.example.com\": http is allowed only on a loopback \
///      address (127.0.0.1, [::1], localhost); use https"
/// );
/// assert!(check_issuer("idp.example.com").is_err());
/// assert!(check_issuer("https://idp.example.com?x=1").is_err());
/// assert!(check_issuer("https://user@idp.example.com").is_err());
/// ```
pub fn check_issuer(url: &str) -> Result<String, String> {
    let bad = |why: &str| format!("invalid oidc-issuer {url:?}: {why}");
    let uri: http::Uri = url
        .parse()
        .map_err(|_| bad("expected an https:// URL, e.g. https://idp.example.com"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(bad(
            "expected an https:// URL, e.g. https://idp.example.com",
        ));
    };
    if uri.query().is_some() || url.contains('#') || authority.as_str().contains('@') {
        return Err(bad("no user, query or fragment"));
    }
    match scheme {
        "https" => {}
        "http" if is_loopback(authority.host()) => {}
        "http" => return Err(bad(
            "http is allowed only on a loopback address (127.0.0.1, [::1], localhost); use https",
        )),
        _ => {
            return Err(bad(
                "expected an https:// URL, e.g. https://idp.example.com",
            ))
        }
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The checked settings, or `None` when no issuer is set.
pub(super) fn from_parts(p: Parts, has_domain: bool) -> Result<Option<OidcConfig>, ConfigError> {
    let Some(issuer) = p.issuer.filter(|i| !i.is_empty()) else {
        if p.client_id.is_some() || p.secret_file.is_some() {
            return Err(
                "oidc-client-id and oidc-client-secret-file need oidc-issuer"
                    .to_string()
                    .into(),
            );
        }
        return Ok(None);
    };
    let issuer = check_issuer(&issuer)?;
    if !has_domain {
        return Err(
            "oidc-issuer needs domain and caddy-admin: sign-in is for http forwards"
                .to_string()
                .into(),
        );
    }
    let client_id = p.client_id.filter(|c| !c.is_empty()).ok_or_else(|| {
        ConfigError("oidc-issuer needs oidc-client-id (piped's client id at the issuer)".into())
    })?;
    let client_secret = match (p.secret_file, p.secret_env) {
        (Some(path), _) => ClientSecret::File(path),
        (None, Some(s)) if !s.is_empty() => ClientSecret::Value(Token::new(s)),
        _ => {
            return Err(format!(
                "oidc-issuer needs the client secret: oidc-client-secret-file FILE or {CLIENT_SECRET_ENV}"
            )
            .into())
        }
    };
    Ok(Some(OidcConfig {
        issuer,
        client_id,
        client_secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(issuer: &str, id: Option<&str>, file: Option<PathBuf>) -> Parts {
        Parts {
            issuer: Some(issuer.into()),
            client_id: id.map(str::to_string),
            secret_file: file,
            secret_env: None,
        }
    }

    #[test]
    fn each_missing_piece_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        let ok = from_parts(
            parts("https://idp.test", Some("pipe"), Some(file.clone())),
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            ok.client_secret.load().unwrap(),
            Token::new("s3cret"),
            "trimmed"
        );
        let e = |p, d| from_parts(p, d).unwrap_err().to_string();
        assert_eq!(
            e(parts("https://idp.test", None, Some(file.clone())), true),
            "oidc-issuer needs oidc-client-id (piped's client id at the issuer)"
        );
        assert_eq!(
            e(parts("https://idp.test", Some("pipe"), None), true),
            "oidc-issuer needs the client secret: oidc-client-secret-file FILE or PIPE_OIDC_CLIENT_SECRET"
        );
        assert_eq!(
            e(
                parts("https://idp.test", Some("pipe"), Some(file.clone())),
                false
            ),
            "oidc-issuer needs domain and caddy-admin: sign-in is for http forwards"
        );
        let missing = dir.path().join("nope");
        let late = from_parts(parts("https://idp.test", Some("pipe"), Some(missing)), true);
        let err = late.unwrap().unwrap().client_secret.load().unwrap_err();
        assert!(
            err.starts_with("cannot read oidc-client-secret-file "),
            "read at start, not when parsing: {err}"
        );
        let no_issuer = Parts {
            issuer: None,
            client_id: Some("pipe".into()),
            secret_file: None,
            secret_env: None,
        };
        assert_eq!(
            e(no_issuer, true),
            "oidc-client-id and oidc-client-secret-file need oidc-issuer"
        );
    }
}
