//! The issuer as piped sees it: its discovery document, its signing keys (fetched
//! again when a token names a key not seen yet, which is how rotation shows), the
//! authorization URL of a new sign-in and the code exchange (`oauth2`), and the checks
//! on every token (`jsonwebtoken`): signature by the issuer's key, `iss`, `aud`, `exp`,
//! and `nonce` for ID tokens.
//!
//! Owns the caps on what the issuer and visitors may make it do: token size, how
//! often an unknown key may trigger a fetch, how long answers are trusted. It does not
//! decide who may pass (`policy`) or keep sessions (`seal`).

use super::fetch::{self, FetchError};
use super::seal::{Identity, MAX_GROUPS, MAX_GROUP_LEN, MAX_NAME_LEN};
use crate::config::{check_issuer, OidcConfig};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardRevocableToken, TokenUrl,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Longest token read (a bearer header or an ID token): real ones are 1–2 KiB, and
/// every byte of a larger one would be parsed and hashed for nothing.
pub const MAX_TOKEN: usize = 16 * 1024;
/// Keys a key set may hold: issuers publish a handful (current, next, previous).
pub const MAX_KEYS: usize = 32;
/// How long the discovery document and the keys are trusted before being fetched
/// again: issuers rotate keys over days, announcing the next one in advance.
const REFRESH_AFTER: Duration = Duration::from_secs(3600);
/// A token naming a key not in the set fetches the set again at most this often, so
/// forged tokens with made-up key ids cannot make piped hammer the issuer.
pub const MIN_KEY_FETCH_INTERVAL: Duration = Duration::from_secs(10);
/// Clock difference tolerated between piped and the issuer on `exp`.
const LEEWAY_SECS: u64 = 60;
/// Only signatures with a public key: never `none`, never a shared secret (an HMAC
/// "signed" with the public key is the classic forgery).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a token was refused (the visitor's fault, unless `Issuer`).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token longer than {MAX_TOKEN} bytes")]
    TooLong,
    #[error("not a JWT")]
    Malformed,
    #[error("signature algorithm not accepted")]
    Algorithm,
    #[error("signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("token refused: {0}")]
    Invalid(String),
    #[error("nonce does not match this sign-in")]
    Nonce,
    #[error("token claims unusable: {0}")]
    Claims(&'static str),
    /// The issuer could not be asked (its fault or the network's).
    #[error("{0}")]
    Issuer(String),
}

impl From<FetchError> for TokenError {
    fn from(e: FetchError) -> Self {
        TokenError::Issuer(e.to_string())
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Metadata {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    scopes_supported: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IdTokenField {
    id_token: String,
}
impl oauth2::ExtraTokenFields for IdTokenField {}

type TokenResponse = oauth2::StandardTokenResponse<IdTokenField, BasicTokenType>;
type Client = oauth2::Client<
    BasicErrorResponse,
    TokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The claims read from a token; the rest is ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<Value>,
    #[serde(default)]
    groups: Option<Value>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    aud: Option<Value>,
}

struct Keys {
    set: Vec<Jwk>,
    fetched: Option<Instant>,
}

/// A sign-in about to start: where to send the browser, and what to remember.
pub struct Authorization {
    pub url: String,
    pub state: String,
    pub verifier: String,
    pub nonce: String,
}

/// One issuer, shared by every request.
pub struct Issuer {
    cfg: OidcConfig,
    secret: crate::auth::Token,
    meta: tokio::sync::Mutex<Option<(Arc<Metadata>, Instant)>>,
    keys: RwLock<Keys>,
    key_fetch: tokio::sync::Mutex<()>,
}

impl Issuer {
    /// The issuer of `cfg`, whose client secret was loaded already.
    pub fn new(cfg: OidcConfig, secret: crate::auth::Token) -> Issuer {
        Issuer {
            cfg,
            secret,
            meta: tokio::sync::Mutex::new(None),
            keys: RwLock::new(Keys {
                set: Vec::new(),
                fetched: None,
            }),
            key_fetch: tokio::sync::Mutex::new(()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    /// The discovery document, fetched when missing or old; its `issuer` must be
    /// ours exactly (OpenID Connect Discovery §4.3) and its endpoints https (or http
    /// on loopback, like the issuer).
    async fn metadata(&self) -> Result<Arc<Metadata>, TokenError> {
        let mut cached = self.meta.lock().await;
        if let Some((m, at)) = cached.as_ref() {
            if at.elapsed() < REFRESH_AFTER {
                return Ok(m.clone());
            }
        }
        let url = format!("{}/.well-known/openid-configuration", self.cfg.issuer);
        let m: Metadata = get_json(&url).await?;
        if m.issuer.trim_end_matches('/') != self.cfg.issuer {
            return Err(TokenError::Issuer(format!(
                "the discovery document names issuer {:?}, not {:?}",
                m.issuer, self.cfg.issuer
            )));
        }
        for u in [&m.authorization_endpoint, &m.token_endpoint, &m.jwks_uri] {
            check_issuer(u).map_err(|e| TokenError::Issuer(format!("endpoint {e}")))?;
        }
        let m = Arc::new(m);
        *cached = Some((m.clone(), Instant::now()));
        Ok(m)
    }

    fn client(&self, m: &Metadata) -> Result<Client, TokenError> {
        let bad = |e: oauth2::url::ParseError| TokenError::Issuer(format!("endpoint URL: {e}"));
        Ok(
            oauth2::Client::new(ClientId::new(self.cfg.client_id.clone()))
                .set_client_secret(ClientSecret::new(self.secret.expose().to_string()))
                .set_auth_uri(AuthUrl::new(m.authorization_endpoint.clone()).map_err(bad)?)
                .set_token_uri(TokenUrl::new(m.token_endpoint.clone()).map_err(bad)?),
        )
    }

    /// A new sign-in: the issuer's authorization URL with PKCE (S256), a random state
    /// and a random nonce, returning to `redirect`.
    pub async fn authorize(&self, redirect: &str) -> Result<Authorization, TokenError> {
        let m = self.metadata().await?;
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|_| TokenError::Claims("redirect URL"))?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = CsrfToken::new_random();
        let client = self.client(&m)?;
        let mut req = client
            .authorize_url(CsrfToken::new_random)
            .add_scope(Scope::new("openid".into()))
            .add_scope(Scope::new("email".into()))
            .add_extra_param("nonce", nonce.secret())
            .set_pkce_challenge(challenge)
            .set_redirect_uri(Cow::Owned(redirect));
        if m.scopes_supported.iter().any(|s| s == "groups") {
            req = req.add_scope(Scope::new("groups".into()));
        }
        let (url, state) = req.url();
        Ok(Authorization {
            url: url.to_string(),
            state: state.secret().clone(),
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier) for an ID token and
    /// checks it, nonce included.
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        redirect: &str,
        nonce: &str,
    ) -> Result<Identity, TokenError> {
        let m = self.metadata().await?;
        let redirect = RedirectUrl::new(redirect.to_string())
            .map_err(|_| TokenError::Claims("redirect URL"))?;
        let http = |req| fetch::call(req);
        let resp = self
            .client(&m)?
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&http)
            .await
            .map_err(|e| match e {
                oauth2::RequestTokenError::ServerResponse(r) => {
                    TokenError::Invalid(format!("the issuer refused the code: {}", r.error()))
                }
                other => TokenError::Issuer(format!("code exchange failed: {other}")),
            })?;
        let id_token = &resp.extra_fields().id_token;
        self.verify(id_token, Some(nonce)).await
    }

    /// Checks a token (an ID token with its `nonce`, or a bearer JWT without) and
    /// returns who it names.
    pub async fn verify(&self, token: &str, nonce: Option<&str>) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(TokenError::Algorithm);
        }
        let jwk = self.key_for(&header).await?;
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| TokenError::UnknownKey)?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v)
            .map_err(|e| TokenError::Invalid(format!("{:?}", e.kind())))?;
        let c = data.claims;
        if let Some(want) = nonce {
            if c.nonce.as_deref() != Some(want) {
                return Err(TokenError::Nonce);
            }
        }
        // OpenID Connect Core §3.1.3.7: with several audiences, `azp` must be us.
        if matches!(&c.aud, Some(Value::Array(a)) if a.len() > 1)
            && c.azp.as_deref() != Some(self.cfg.client_id.as_str())
        {
            return Err(TokenError::Invalid("azp is not this client".into()));
        }
        identity(c)
    }

    /// The key a token names: from the cached set, else from a fresh fetch (at most
    /// one per [`MIN_KEY_FETCH_INTERVAL`] unless the set is old).
    async fn key_for(&self, header: &Header) -> Result<Jwk, TokenError> {
        let fresh = |k: &Keys| k.fetched.is_some_and(|at| at.elapsed() < REFRESH_AFTER);
        {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            if fresh(&keys) {
                if let Some(k) = find(&keys.set, header) {
                    return Ok(k);
                }
            }
        }
        let _one_at_a_time = self.key_fetch.lock().await;
        {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            if let Some(k) = find(&keys.set, header).filter(|_| fresh(&keys)) {
                return Ok(k);
            }
            let recent = keys
                .fetched
                .is_some_and(|at| at.elapsed() < MIN_KEY_FETCH_INTERVAL);
            if recent {
                return Err(TokenError::UnknownKey);
            }
        }
        let m = self.metadata().await?;
        let doc: Value = get_json(&m.jwks_uri).await?;
        let set: Vec<Jwk> = doc
            .get("keys")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .take(MAX_KEYS)
                    // A key type this library does not know is skipped, not fatal.
                    .filter_map(|k| serde_json::from_value(k.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let found = find(&set, header);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Keys {
            set,
            fetched: Some(Instant::now()),
        };
        found.ok_or(TokenError::UnknownKey)
    }
}

/// The signing key a header names: by `kid`, or the only signing key when the token
/// names none. A key published for another algorithm or for encryption is no match.
fn find(set: &[Jwk], header: &Header) -> Option<Jwk> {
    let alg = serde_json::to_value(header.alg).ok();
    let usable = |k: &&Jwk| {
        k.common.public_key_use != Some(PublicKeyUse::Encryption)
            && k.common
                .key_algorithm
                .is_none_or(|a| serde_json::to_value(a).ok() == alg)
    };
    match &header.kid {
        Some(kid) => set
            .iter()
            .filter(usable)
            .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
            .cloned(),
        None => {
            let mut candidates = set
                .iter()
                .filter(usable)
                .filter(|k| DecodingKey::from_jwk(k).is_ok());
            match (candidates.next(), candidates.next()) {
                (Some(k), None) => Some(k.clone()),
                _ => None,
            }
        }
    }
}

/// Who the claims name: the subject, the email when the issuer verified it, the
/// groups that fit a session. Anything a header could not carry is refused.
fn identity(c: Claims) -> Result<Identity, TokenError> {
    let printable =
        |s: &str| !s.is_empty() && s.len() <= MAX_NAME_LEN && !s.chars().any(char::is_control);
    if !printable(&c.sub) {
        return Err(TokenError::Claims("sub"));
    }
    let verified = matches!(&c.email_verified, Some(Value::Bool(true)))
        || matches!(&c.email_verified, Some(Value::String(s)) if s == "true");
    let email = match c.email {
        Some(e) if verified => {
            if !printable(&e) || !e.contains('@') {
                return Err(TokenError::Claims("email"));
            }
            Some(e.to_ascii_lowercase())
        }
        _ => None,
    };
    let groups = match c.groups {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|g| printable(g) && g.len() <= MAX_GROUP_LEN)
            .take(MAX_GROUPS)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Identity {
        email,
        user: c.sub,
        groups,
    })
}

async fn get_json<T: serde::de::DeserializeOwned>(url: &str) -> Result<T, TokenError> {
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|_| TokenError::Issuer(format!("bad URL {url}")))?;
    let resp = fetch::call(req).await?;
    if !resp.status().is_success() {
        return Err(TokenError::Issuer(format!(
            "GET {url}: HTTP {}",
            resp.status()
        )));
    }
    serde_json::from_slice(resp.body())
        .map_err(|e| TokenError::Issuer(format!("GET {url}: not the expected JSON: {e}")))
}

#[cfg(test)]
mod tests;
