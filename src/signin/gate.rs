//! The sign-in gate: the loopback HTTP server Caddy asks about every request of an
//! `auth=oidc` forward (`/.pipe/check`), and that answers the issuer's callback and
//! sign-out itself.
//!
//! A check answers 200 with `X-Forwarded-Email`/`-User` (Caddy copies them onto the
//! request and lets it through), or what the visitor should get instead: a redirect
//! to the issuer for a browser without a session, 401 for any other caller without
//! credentials, a 403 page for someone signed in but not on the list.

use super::names::*;
use super::pages;
use super::pending::Started;
use super::policy::Allow;
use super::seal::Refused;
use super::{SignIn, TokenError};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::sync::Arc;
use tracing::{debug, info};

/// Longest `Cookie` header read; past it the visitor has no session (and is sent to
/// sign in again), which costs nothing more than parsing this much.
pub const MAX_COOKIE_HEADER: usize = 16 * 1024;
/// Longest path and query a visitor is sent back to after signing in.
const MAX_RETURN_TO: usize = 2048;
/// How long the state cookie lives: the sign-in it binds expires then anyway.
const STATE_COOKIE_AGE: u64 = super::pending::PENDING_TTL.as_secs();

/// The gate's routes.
pub fn router(s: Arc<SignIn>) -> Router {
    Router::new()
        .route(CHECK_PATH, get(check))
        .route(CALLBACK_PATH, get(callback))
        .route(SIGN_OUT_PATH, get(sign_out).post(sign_out))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(s)
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The value of cookie `name` in the request, if the header is of a sane size.
fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter(|v| v.len() <= MAX_COOKIE_HEADER)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// `HOST[:PORT]` from Caddy, if it names one of our subdomains: (host, hostport).
fn visitor_host(s: &SignIn, h: &HeaderMap) -> Option<(String, String)> {
    let hostport = header_str(h, HOST_HEADER)?.to_ascii_lowercase();
    let host = match hostport.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => hostport.as_str(),
    };
    let sub = host.strip_suffix(&format!(".{}", s.domain))?;
    crate::config::valid_subdomain(sub).then(|| (host.to_string(), hostport.clone()))
}

fn accepts_html(h: &HeaderMap) -> bool {
    header_str(h, header::ACCEPT.as_str()).is_some_and(|a| a.contains("text/html"))
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = header_str(h, header::AUTHORIZATION.as_str())?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A path and query to return to: ours only (no `//host` or `/\host`), else `/`.
fn return_to(h: &HeaderMap) -> String {
    match header_str(h, URI_HEADER) {
        Some(u)
            if u.starts_with('/')
                && !u.starts_with("//")
                && !u.starts_with("/\\")
                && u.len() <= MAX_RETURN_TO
                && !u.starts_with(PATH_PREFIX) =>
        {
            u.to_string()
        }
        _ => "/".to_string(),
    }
}

fn pass(id: &super::Identity) -> Response {
    let mut r = StatusCode::OK.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id.email.as_deref().unwrap_or("")) {
        h.insert(EMAIL_HEADER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&id.user) {
        h.insert(USER_HEADER, v);
    }
    r
}

fn unauthorized(why: &str) -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// `Set-Cookie` for one of our cookies (`None` clears it).
fn set_cookie(name: &str, value: Option<&str>, max_age: u64) -> HeaderValue {
    let (value, max_age) = match value {
        Some(v) => (v, max_age),
        None => ("", 0),
    };
    let c = format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax");
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("x=; Max-Age=0"))
}

/// Caddy's question about one request.
async fn check(State(s): State<Arc<SignIn>>, h: HeaderMap) -> Response {
    let (Some((host, hostport)), Some(allow)) = (
        visitor_host(&s, &h),
        header_str(&h, ALLOW_HEADER).and_then(Allow::parse),
    ) else {
        // Only Caddy sends these headers (a visitor's own are deleted on the way).
        return (StatusCode::BAD_REQUEST, "not a check from Caddy\n").into_response();
    };
    if let Some(token) = bearer(&h) {
        return match s.issuer.verify(token, None).await {
            // A token without a person in it is a client's own (client credentials):
            // the issuer gave it for this audience, which is the point of asking.
            Ok(id) if (id.email.is_none() && id.groups.is_empty()) || allow.admits(&id) => {
                pass(&id)
            }
            Ok(id) => {
                debug!(
                    host,
                    who = id.shown(),
                    "bearer token of someone not allowed"
                );
                (StatusCode::FORBIDDEN, "forbidden\n").into_response()
            }
            Err(e @ TokenError::Issuer(_)) => {
                info!(host, error = %e, "cannot check a bearer token: the issuer is unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the sign-in provider cannot be reached\n",
                )
                    .into_response()
            }
            Err(e) => {
                debug!(host, error = %e, "bearer token refused");
                unauthorized("invalid bearer token")
            }
        };
    }
    match cookie(&h, SESSION_COOKIE).map(|c| s.sealer.open(&host, c)) {
        Some(Ok(id)) if allow.admits(&id) => return pass(&id),
        Some(Ok(id)) => return pages::forbidden(&id),
        Some(Err(why)) if why != Refused::Expired => {
            debug!(host, ?why, "session cookie refused");
        }
        Some(Err(_)) | None => {}
    }
    if !accepts_html(&h) {
        return unauthorized("sign-in required");
    }
    start(&s, host, hostport, return_to(&h)).await
}

/// Sends a browser to the issuer, remembering the sign-in.
async fn start(s: &SignIn, host: String, hostport: String, return_to: String) -> Response {
    let redirect = format!("https://{hostport}{CALLBACK_PATH}");
    let a = match s.issuer.authorize(&redirect).await {
        Ok(a) => a,
        Err(e) => {
            info!(error = %e, "cannot start a sign-in: the issuer is unavailable");
            return pages::error(
                StatusCode::BAD_GATEWAY,
                "The sign-in provider cannot be reached; try again in a moment.",
            );
        }
    };
    let started = Started {
        verifier: a.verifier,
        nonce: a.nonce,
        host,
        hostport,
        return_to,
    };
    if s.pending.insert(a.state.clone(), started).is_err() {
        return pages::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sign-ins are in progress; try again in a minute.",
        );
    }
    let mut r = StatusCode::FOUND.into_response();
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&a.url) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        header::SET_COOKIE,
        set_cookie(STATE_COOKIE, Some(&a.state), STATE_COOKIE_AGE),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

/// The browser back from the issuer.
async fn callback(
    State(s): State<Arc<SignIn>>,
    h: HeaderMap,
    Query(q): Query<Callback>,
) -> Response {
    let bad = |why: &str| pages::error(StatusCode::BAD_REQUEST, why);
    let Some((host, _)) = visitor_host(&s, &h) else {
        return bad("Not a sign-in of this server.");
    };
    let Some(state) = q.state.as_deref() else {
        return bad("The sign-in answer has no state.");
    };
    // The state must come back to the browser that started the sign-in (its cookie),
    // and only once (taken from the table).
    if cookie(&h, STATE_COOKIE) != Some(state) {
        return bad("This sign-in was not started in this browser; open the page again.");
    }
    let Some(started) = s.pending.take(state) else {
        return bad("This sign-in has expired or was already used; open the page again.");
    };
    if started.host != host {
        return bad("This sign-in was started for another site.");
    }
    if q.iss
        .as_deref()
        .is_some_and(|i| i.trim_end_matches('/') != s.issuer.issuer())
    {
        return bad("The sign-in answer comes from another issuer.");
    }
    if let Some(e) = &q.error {
        let shown: String = e.chars().take(64).collect();
        return pages::error(
            StatusCode::FORBIDDEN,
            &format!("The sign-in provider said no ({shown})."),
        );
    }
    let Some(code) = q.code.as_deref() else {
        return bad("The sign-in answer has no code.");
    };
    let redirect = format!("https://{}{CALLBACK_PATH}", started.hostport);
    let id = match s
        .issuer
        .exchange(code, &started.verifier, &redirect, &started.nonce)
        .await
    {
        Ok(id) => id,
        Err(e @ TokenError::Issuer(_)) => {
            info!(host, error = %e, "sign-in failed: the issuer is unavailable");
            return pages::error(
                StatusCode::BAD_GATEWAY,
                "The sign-in provider cannot be reached; open the page again in a moment.",
            );
        }
        Err(e) => {
            info!(host, error = %e, "sign-in failed");
            return pages::error(
                StatusCode::FORBIDDEN,
                "The sign-in could not be completed; open the page again.",
            );
        }
    };
    let Some(sealed) = s.sealer.seal(&host, &id, s.lifetime) else {
        return pages::error(
            StatusCode::FORBIDDEN,
            "Your account's details do not fit in a session.",
        );
    };
    info!(host, who = id.shown(), "signed in");
    let mut r = StatusCode::FOUND.into_response();
    let hm = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&started.return_to) {
        hm.insert(header::LOCATION, v);
    }
    hm.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, Some(&sealed), s.lifetime.as_secs()),
    );
    hm.append(header::SET_COOKIE, set_cookie(STATE_COOKIE, None, 0));
    hm.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn sign_out() -> Response {
    let mut r = pages::signed_out();
    r.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, None, 0));
    r
}

#[cfg(test)]
mod tests;
