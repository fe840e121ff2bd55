//! `http` forwards: an internal TCP listener on 127.0.0.1 published by Caddy as
//! `https://SUB.DOMAIN`.
//!
//! Owns the subdomain rules (the client's valid DNS label, or a random one) and the
//! order of the steps, so that a refusal at any step leaves nothing behind: reserve the
//! name, bind the listener, add the Caddy route, and only then start the tunnel, whose
//! close removes the route. The Caddy calls themselves live in `crate::caddy`.

use super::session::Session;
use super::state::State;
use crate::caddy::{hash_credentials, random_label, Caddy, RouteRules, SignInRoute};
use crate::cluster::{ClaimKey, Rules};
use crate::config::valid_subdomain;
use crate::protocol::{ForwardRequest, ServerMsg};
use futures::FutureExt;
use std::net::Ipv4Addr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Length of a random subdomain (36^8 ≈ 2.8e12 names: collisions are for the retry
/// loop, not for users).
const RANDOM_SUBDOMAIN_LEN: usize = 8;
/// Random names tried before giving up.
const RANDOM_ATTEMPTS: usize = 16;
/// Characters of a refused name echoed back in the refusal.
const MAX_ECHOED_NAME: usize = 64;

const NOT_ENABLED: &str =
    "http forwards are not enabled on this server (it needs --domain and --caddy-admin)";
const NO_SIGN_IN: &str =
    "auth=oidc needs sign-in on the server (piped --oidc-issuer); this server has none";

/// Opens an http forward, or says why not.
pub(super) async fn open(
    s: &mut Session,
    req: ForwardRequest,
    speed_limit: Option<u64>,
) -> Result<ServerMsg, String> {
    let state = s.ctx.state.clone();
    let Some(caddy) = state.caddy.clone() else {
        return Err(NOT_ENABLED.into());
    };
    let asked = req
        .subdomain
        .as_deref()
        .filter(|s| valid_subdomain(s))
        .map(|s| ClaimKey::Subdomain(s.to_string()));
    s.take_from_mirror(asked.as_ref()).await?;
    let sub = s.unless_refused(
        claim_subdomain(&state, req.subdomain.as_deref()),
        asked.as_ref(),
    )?;
    // From here on every refusal gives the name back.
    let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
        Ok(l) => l,
        Err(e) => {
            state.release_subdomain(&sub);
            warn!(error = %e, "cannot bind an internal listener for an http forward");
            return Err(format!("the server cannot open a listener: {e}"));
        }
    };
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => {
            state.release_subdomain(&sub);
            return Err(format!("the server cannot open a listener: {e}"));
        }
    };
    let url = format!("https://{}", caddy.host(&sub));
    let rules = match route_rules(&state, &req).await {
        Ok(r) => r,
        Err(e) => {
            state.release_subdomain(&sub);
            return Err(e);
        }
    };
    let tunnel = s.new_tunnel(&req, port, Some(url.clone()), speed_limit);
    let shared = Rules {
        allow: rules.allow.clone(),
        deny: rules.deny.clone(),
        basic_auth: rules.basic_auth.clone(),
        visitor_header: rules.visitor_header,
        sign_in: rules.sign_in.as_ref().map(|s| s.allow.clone()),
    };
    let key = ClaimKey::Subdomain(sub.clone());
    if let Err(e) = s.cluster_claim(&key, &tunnel, Some(shared)).await {
        state.release_subdomain(&sub);
        return Err(e);
    }
    let published = match caddy.publish(&sub, tunnel.id, port, &rules).await {
        Ok(p) => p,
        Err(e) => {
            state.release_subdomain(&sub);
            if let Some(c) = state.cluster() {
                c.release(key, tunnel.id);
            }
            warn!(forward = req.id, subdomain = %sub, error = %e, detail = ?e, "Caddy did not take the route");
            return Err(format!("cannot publish {url}: {e}"));
        }
    };
    info!(forward = req.id, subdomain = %sub, port, id = %published.route_id, "route added to Caddy");
    s.start_tcp_tunnel(
        listener,
        tunnel,
        Some(&sub),
        Some(unpublish(caddy, published)),
    );
    Ok(ServerMsg::ForwardOk {
        id: req.id,
        remote_port: 0,
        url: Some(url),
    })
}

/// What Caddy enforces for this forward: its access rules (within the operator's
/// ceiling), the bcrypt hash of its basic-auth password, and the visitor header.
async fn route_rules(state: &State, req: &ForwardRequest) -> Result<RouteRules, String> {
    let access = super::access::for_forward(&state.config.allow, req.proto, &req.options)?;
    let basic_auth = match req.options.basic_auth.clone() {
        // bcrypt is slow by design: keep it off the runtime's threads.
        Some(a) => Some(
            tokio::task::spawn_blocking(move || hash_credentials(&a))
                .await
                .map_err(|e| format!("cannot hash the basic-auth password: {e}"))??,
        ),
        None => None,
    };
    let sign_in = match req.options.auth {
        Some(crate::protocol::Auth::Oidc) => {
            req.options.check_sign_in()?;
            Some(SignInRoute {
                gate: state.sign_in_gate().ok_or(NO_SIGN_IN)?,
                allow: req.options.oidc_allow.clone(),
            })
        }
        None => None,
    };
    Ok(RouteRules {
        allow: access.allow,
        deny: access.deny,
        basic_auth,
        visitor_header: req.options.proxy_protocol.is_some(),
        sign_in,
    })
}

/// The tunnel's close hook: takes its route (and policy) out of Caddy.
fn unpublish(
    caddy: Arc<Caddy>,
    published: crate::caddy::Published,
) -> futures::future::BoxFuture<'static, ()> {
    async move {
        match caddy.unpublish(&published).await {
            Ok(()) => info!(id = %published.route_id, "route removed from Caddy"),
            Err(e) => warn!(
                id = %published.route_id, error = %e, detail = ?e,
                "cannot remove the route from Caddy; retried before the next http forward"
            ),
        }
    }
    .boxed()
}

/// Validates and reserves the wanted subdomain, or reserves a random one.
fn claim_subdomain(state: &State, wanted: Option<&str>) -> Result<String, String> {
    match wanted {
        Some(sub) if !valid_subdomain(sub) => {
            let shown: String = sub.chars().take(MAX_ECHOED_NAME).collect();
            Err(format!(
                "invalid subdomain {shown:?}: a DNS label of a-z, 0-9 and '-', \
                 1 to 63 characters, not starting or ending with '-'"
            ))
        }
        Some(sub) if state.reserve_subdomain(sub) => Ok(sub.to_string()),
        Some(sub) => Err(format!("subdomain {sub} is taken")),
        None => (0..RANDOM_ATTEMPTS)
            .map(|_| random_label(RANDOM_SUBDOMAIN_LEN))
            .find(|sub| state.reserve_subdomain(sub))
            .ok_or_else(|| "no free random subdomain found; try again".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;

    fn state() -> State {
        let mut cfg = ServerConfig::for_tests();
        cfg.domain = Some("example.test".into());
        State::new(cfg)
    }

    #[test]
    fn invalid_names_are_refused_before_anything_is_reserved() {
        let st = state();
        for bad in [r#"x"]}],"handle":[{"#, "Bad_Name", "a.b", "", "-a", "a-"] {
            let err = claim_subdomain(&st, Some(bad)).unwrap_err();
            assert!(err.starts_with("invalid subdomain"), "{err}");
        }
        let long = "a".repeat(10_000);
        let err = claim_subdomain(&st, Some(&long)).unwrap_err();
        assert!(err.len() < 300, "the refusal stays short: {}", err.len());
    }

    #[test]
    fn taken_names_are_refused_and_released_names_reusable() {
        let st = state();
        assert_eq!(claim_subdomain(&st, Some("myapp")).unwrap(), "myapp");
        assert_eq!(
            claim_subdomain(&st, Some("myapp")).unwrap_err(),
            "subdomain myapp is taken"
        );
        st.release_subdomain("myapp");
        assert_eq!(claim_subdomain(&st, Some("myapp")).unwrap(), "myapp");
    }

    #[test]
    fn random_names_are_8_lowercase_alphanumerics_and_distinct() {
        let st = state();
        let a = claim_subdomain(&st, None).unwrap();
        let b = claim_subdomain(&st, None).unwrap();
        for n in [&a, &b] {
            assert_eq!(n.len(), 8);
            assert!(n
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        }
        assert_ne!(a, b);
    }
}
