//! Keeping the server in step with the users file: reload on SIGHUP and whenever the
//! file (or a token file) changes, then end the sessions of users whose token changed
//! or who are gone, and close the tunnels that fall outside narrowed rights.
//!
//! Owns what a reload does to live sessions and the check of a forward against a
//! user's rights; the file format and the comparison of
//! two tables are `crate::accounts`.

use super::state::{State, TunnelInfo};
use crate::accounts::{token_bits, Change, User, MIN_TOKEN_BITS};
use crate::protocol::{ForwardRequest, Proto};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the file is read for changes: an edit takes effect within this (plus the
/// time to end sessions), inside the one second the contract allows.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// Random characters after a user's wildcard prefix (36^8 names: collisions are rare
/// enough for the claim's own "taken" answer to handle).
const RANDOM_SUBDOMAIN_TAIL: usize = 8;

/// Checks a forward against a user's rights; a random subdomain is drawn from the
/// user's wildcard here, so the http module needs no notion of users.
pub(super) fn check_rights(u: &User, req: &mut ForwardRequest) -> Result<(), String> {
    match req.proto {
        Proto::Http => match &req.subdomain {
            _ if u.require_sign_in && req.options.auth.is_none() => u.check_sign_in(false),
            Some(sub) => u.check_subdomain(sub),
            None => {
                let prefix = u.random_subdomain_prefix()?;
                req.subdomain = Some(format!(
                    "{prefix}{}",
                    crate::caddy::random_label(RANDOM_SUBDOMAIN_TAIL)
                ));
                Ok(())
            }
        },
        Proto::Tcp | Proto::Udp if req.remote_port != 0 => u.check_port(req.remote_port),
        Proto::Tcp | Proto::Udp if u.ports.is_none() => Err(format!(
            "{} has no ports (give ports in the users file)",
            u.name
        )),
        Proto::Tcp | Proto::Udp => Ok(()),
    }
}

/// Warns about tokens short enough to guess offline from one captured login.
pub fn warn_weak_tokens(state: &State) {
    if let Some(t) = &state.config.token {
        if token_bits(t.expose()) < MIN_TOKEN_BITS {
            warn!("the token is short enough to guess offline from a captured login (under {MIN_TOKEN_BITS} bits); `piped token new` prints a good one");
        }
    }
    if let Some(a) = &state.accounts {
        for u in a.current().users() {
            if token_bits(u.token.expose()) < MIN_TOKEN_BITS {
                warn!(user = %u.name, "this user's token is short enough to guess offline from a captured login (under {MIN_TOKEN_BITS} bits); `piped token new` prints a good one");
            }
        }
    }
}

/// Reloads the users file until `shutdown`: at every SIGHUP and every `POLL_EVERY`.
pub async fn watch(state: Arc<State>, mut hangup: Option<Signal>, shutdown: CancellationToken) {
    let Some(accounts) = state.accounts.clone() else {
        return;
    };
    let mut tick = crate::transport::ticker::interval(POLL_EVERY);
    loop {
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
        };
        match accounts.reload(forced) {
            Ok(None) => {}
            Ok(Some(change)) => {
                info!(file = %accounts.path().display(), users = change.new.len(), "users file reloaded");
                warn_weak_tokens(&state);
                apply(&state, &change);
            }
            Err(e) => {
                warn!(error = %e, "users file not reloaded; the previous rights stay in force")
            }
        }
    }
}

/// Acts on a reload: other users are untouched.
pub fn apply(state: &State, change: &Change) {
    for name in change.ended() {
        let sessions = state.sessions_of_user(Some(&name));
        if !sessions.is_empty() {
            info!(user = %name, sessions = sessions.len(), "the user's token changed or the user was removed; ending the user's sessions");
        }
        for s in sessions {
            s.end(
                format!("the token of user {name} was changed or the user was removed; log in with the new token"),
                false,
            );
        }
    }
    for user in change.narrowed() {
        close_outside(state, &user);
    }
}

/// Closes the user's tunnels that its rights no longer allow, and the newest ones past
/// a lowered tunnel limit.
fn close_outside(state: &State, user: &User) {
    let tunnels = state.tunnels_of_user(&user.name);
    let max = user.max_tunnels.unwrap_or(state.config.max_tunnels);
    let mut kept = 0;
    for t in &tunnels {
        let why = match outside(user, t) {
            Some(why) => why,
            None if kept >= max => format!(
                "tunnel limit lowered to {max} for {} in the users file",
                user.name
            ),
            None => {
                kept += 1;
                continue;
            }
        };
        info!(user = %user.name, tunnel = t.id, reason = %why, "closing a tunnel outside the user's new rights");
        state.close_tunnel(t.id, &why);
    }
}

fn outside(user: &User, t: &TunnelInfo) -> Option<String> {
    match t.proto {
        Proto::Tcp | Proto::Udp => user.check_port(t.port).err(),
        Proto::Http => {
            let sub = t
                .url
                .as_deref()?
                .strip_prefix("https://")?
                .split('.')
                .next()?;
            user.check_subdomain(sub)
                .and_then(|()| user.check_sign_in(t.sign_in))
                .err()
        }
    }
}
