//! A connection a client joins to its live session (`Login::join`): one more link for
//! the session's visitor streams ([`super::links`]). It logs in with the same
//! credentials and presents the key the session's `LoginOk` handed out; it holds no
//! claims, carries only heartbeats on its control stream, and ends when its session
//! does.

use super::links::{LinkId, MAX_LINKS};
use super::login::{audit_login, close_refused};
use super::pending::PendingPermit;
use super::state::{Owner, SessionInfo};
use super::Ctx;
use crate::auth::ClientLogin;
use crate::protocol::{ClientMsg, CodecError, MessageStream, ServerMsg, JOIN_KEY_LEN};
use crate::transport::mux::DriverTask;
use crate::transport::{ticker, Mux, MuxStream};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The refusal when no live session of this client handed out the key: it ended (the
/// client will log in anew), or the key is not this client's.
pub const NO_SESSION: &str = "no live session of this client to join";

/// Equal without an early exit: how long a comparison takes says nothing about where
/// a guessed key first differs.
fn same_key(a: &[u8; JOIN_KEY_LEN], b: &[u8; JOIN_KEY_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The live session of `who`'s user and client id that handed out `key`.
fn session_to_join(
    ctx: &Ctx,
    who: &ClientLogin,
    key: &[u8; JOIN_KEY_LEN],
) -> Option<Arc<SessionInfo>> {
    let owner = Owner {
        user: who.user.as_deref().map(Arc::from),
        client_id: who.client_id,
    };
    ctx.state
        .sessions_of_owner(&owner)
        .into_iter()
        .find(|s| same_key(&s.join_key, key) && !s.stop.is_cancelled())
}

/// What a joined connection's own parts are: its control stream, its yamux handle
/// and driver, and what stops it.
pub(super) struct Joining {
    pub ctl: MessageStream<MuxStream>,
    pub mux: Mux,
    pub driver: DriverTask,
    pub stop: CancellationToken,
    pub permit: PendingPermit,
}

/// Serves a logged-in join until the connection or its session ends.
pub(super) async fn serve(
    ctx: Arc<Ctx>,
    who: ClientLogin,
    key: [u8; JOIN_KEY_LEN],
    peer: SocketAddr,
    j: Joining,
) {
    let Joining {
        mut ctl,
        mux,
        mut driver,
        stop,
        permit,
    } = j;
    let cfg = &ctx.state.config;
    let refuse = |reason: String, retry: bool| ServerMsg::LoginRefused { reason, retry };
    let link: LinkId = ctx.state.next_id();
    let joined = match session_to_join(&ctx, &who, &key) {
        None => Err(refuse(NO_SESSION.to_string(), false)),
        Some(s) if !s.links.add(link, mux) => Err(refuse(
            format!(
                "this session already has {MAX_LINKS} connections (the most one session may have)"
            ),
            false,
        )),
        Some(s) => Ok(s),
    };
    let session = match joined {
        Ok(s) => s,
        Err(msg) => {
            if let ServerMsg::LoginRefused { reason, .. } = &msg {
                audit_login(
                    who.user.as_deref(),
                    peer,
                    &format!("join refused: {reason}"),
                );
            }
            let _ = timeout(cfg.heartbeat_timeout, ctl.send(&msg)).await;
            close_refused(ctl, &stop, &mut driver).await;
            return;
        }
    };
    let span = tracing::info_span!("session", id = session.id, user = session.owner.user_name());
    async {
        let ok = ServerMsg::LoginOk {
            session_id: session.id,
            join_key: [0; JOIN_KEY_LEN],
            max_links: MAX_LINKS as u16,
        };
        let reason = if timeout(cfg.heartbeat_timeout, ctl.send(&ok)).await.is_err() {
            "control stream stalled"
        } else {
            drop(permit);
            debug!(link, links = session.links.len(), from = %peer, "connection joined the session");
            carry(&ctx, &session, &mut ctl, &mut driver, &stop).await
        };
        session.links.remove(link);
        let links = session.links.len();
        match reason {
            "its session ended" | "stopped by the server" => {
                debug!(link, links, reason, "joined connection ended")
            }
            // Its visitors were reset: worth the operator's eye.
            _ => info!(link, links, reason, "joined connection ended"),
        }
        stop.cancel();
        let _ = timeout(CLOSE_GRACE, driver.finished()).await;
    }
    .instrument(span)
    .await;
}

/// Heartbeats both ways until something ends the connection; says what.
async fn carry(
    ctx: &Ctx,
    session: &SessionInfo,
    ctl: &mut MessageStream<MuxStream>,
    driver: &mut DriverTask,
    stop: &CancellationToken,
) -> &'static str {
    let cfg = &ctx.state.config;
    let (every, dead_after) = (cfg.heartbeat_interval, cfg.heartbeat_timeout);
    let mut tick = ticker::interval_at(Instant::now() + every, every);
    let mut last_seen = Instant::now();
    loop {
        tokio::select! {
            _ = session.stop.cancelled() => return "its session ended",
            _ = stop.cancelled() => return "stopped by the server",
            _ = driver.finished() => return "connection lost",
            msg = ctl.recv::<ClientMsg>() => {
                last_seen = Instant::now();
                match msg {
                    Ok(ClientMsg::Heartbeat) => {}
                    Ok(_) => return "protocol violation (a joined connection carries only heartbeats)",
                    Err(CodecError::Closed | CodecError::Io(_)) => return "client closed the connection",
                    Err(e) => {
                        debug!(error = %e, "bad control message");
                        return "bad control message";
                    }
                }
            }
            _ = tick.tick() => {
                if last_seen.elapsed() >= dead_after {
                    return "heartbeat timeout";
                }
                if timeout(dead_after, ctl.send(&ServerMsg::Heartbeat)).await.is_err() {
                    return "control stream stalled";
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        let a = [7u8; JOIN_KEY_LEN];
        let mut b = a;
        assert!(same_key(&a, &b));
        b[JOIN_KEY_LEN - 1] ^= 1;
        assert!(!same_key(&a, &b));
        b = a;
        b[0] = 0;
        assert!(!same_key(&a, &b));
    }
}
