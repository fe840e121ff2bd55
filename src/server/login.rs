//! The server's side of a login after the handshake: the audit line, the count of
//! failures per address, and registering the session, where the takeover rule lives:
//! only the same user's client that proves the next link of its chain
//! (`accounts::proof`) may replace a live session and take its claims. Sessions are
//! looked up per owner (user and client id), and a client id must be bound to the
//! token its login proved, so another user's copy of a client's id and proofs gets
//! nothing. Registering also re-checks, under the registry's lock, that the token
//! the login proved is still in force, so no login slips past a token change.

use super::state::{Owner, SessionEvent, SessionInfo};
use super::Ctx;
use crate::accounts::proof::{self, Binding};
use crate::accounts::throttle;
use crate::auth::{ClientLogin, BAD_USER_OR_TOKEN};
use crate::protocol::MessageStream;
use crate::protocol::PROOF_LEN;
use crate::transport::{mux, MuxStream};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a new session waits for the old session of the same client to let go.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);
/// The tracing target of the audit trail: one line per login and per forward.
pub const AUDIT: &str = "pipe::audit";
/// A login whose client id is held by a live session it cannot prove it owns.
const TAKEN_CLIENT_ID: &str =
    "this client id belongs to a live session that this login cannot prove it owns";
/// The start of the refusal of a login past `--max-sessions`: a capacity cap of this
/// server's, not a credential problem, so the client tries another server.
pub(super) const SESSION_CAP: &str = "session limit reached";

/// Is a login refusal one another server (or this one later) may not repeat? Capacity
/// and an unavailable cluster directory are; wrong credentials and proofs are not.
pub(super) fn login_refusal_is_retryable(reason: &str) -> bool {
    reason.starts_with(SESSION_CAP) || super::cluster::retryable(reason)
}

/// A login whose proof does not belong to its client id under the token it proved.
const BAD_PROOF: &str = "the login's proof does not match its client id";

/// Lets a login refusal reach the client, then ends the connection.
pub(super) async fn close_refused(
    mut ctl: MessageStream<MuxStream>,
    stop: &CancellationToken,
    driver: &mut mux::DriverTask,
) {
    let _ = timeout(CLOSE_GRACE, ctl.close()).await;
    stop.cancel();
    let _ = timeout(CLOSE_GRACE, driver.finished()).await;
}

/// One audit line per login: who, from where, and what came of it.
pub(super) fn audit_login(user: Option<&str>, client: SocketAddr, outcome: &str) {
    info!(target: AUDIT, user = user.unwrap_or("-"), %client, outcome, "login");
}

/// Counts a failed login against its address; says so once when it starts cooling off.
pub(super) fn login_failed(ctx: &Ctx, peer: SocketAddr) {
    if ctx.state.logins.failed(peer.ip()) {
        info!(
            target: AUDIT,
            client = %peer.ip(),
            cool_off = ?throttle::COOL_OFF,
            "too many failed logins from this address; refusing its logins for the cool-off"
        );
    }
}

/// How long the cluster remembers a client's last proof after its last login: a
/// client away longer may come back with any link of its chain.
const PROOF_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; PROOF_LEN]> {
    let mut out = [0u8; PROOF_LEN];
    if s.len() != 2 * PROOF_LEN {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Cluster: the proof must also come before the last one any node accepted from this
/// client (so a link seen on the wire cannot log in on another node), and becomes the
/// record. `Err` while the directory cannot be reached: the session is let in, but
/// takes no claim until this check has passed ([`SessionInfo::unproven_in_cluster`]).
pub(super) async fn proven_in_cluster(
    c: &super::cluster::Cluster,
    owner: &Owner,
    proof_link: &[u8; PROOF_LEN],
) -> Result<bool, ()> {
    let client = super::cluster::owner_key(owner);
    let last = c.dir.last_proof(&client).await.map_err(|e| {
        warn!(error = %e, "cannot read the client's last proof from the cluster directory; checked before its first claim");
    })?;
    if let Some(accepted) = last.as_deref().and_then(unhex) {
        if !proof::follows(proof_link, &accepted) {
            return Ok(false);
        }
    }
    c.dir
        .advance_proof(&client, last.as_deref(), &hex(proof_link), PROOF_MEMORY)
        .await
        .map_err(|e| warn!(error = %e, "cannot record the client's proof in the cluster directory"))
}

/// Refused claims of a session whose proof the directory holds a later link than.
pub(super) const CLAIM_UNPROVEN: &str =
    "this client id belongs to a client that has logged in since with a later proof";

/// Is the token this login was checked against still its user's? A reload may have
/// changed or removed it since (the implicit user's token never changes).
fn still_in_force(ctx: &Ctx, who: &ClientLogin) -> bool {
    let (Some(accounts), Some(name)) = (&ctx.state.accounts, &who.user) else {
        return true;
    };
    let now = accounts
        .current()
        .get(name)
        .map(|u| crate::auth::binding(Some(&u.token), Some(name)));
    now.is_some() && now == who.binding
}

/// Registers the session after ending any earlier session of the same owner, whose
/// ports are then free for this one to claim; or says why not. Only the same user's
/// client that proves the next link of its chain may take over (`accounts::proof`),
/// and its id must be bound to the token the login proved.
pub(super) async fn register(
    ctx: &Ctx,
    who: &ClientLogin,
    peer: SocketAddr,
    stop: CancellationToken,
    links: super::links::Links,
) -> Result<(Arc<SessionInfo>, mpsc::UnboundedReceiver<SessionEvent>), String> {
    let owner = Owner {
        user: who.user.as_deref().map(Arc::from),
        client_id: who.client_id,
    };
    // A node that cannot reach its directory (or has fenced) serves no one new: the
    // client goes to another node at once rather than sit here with dead ports.
    if let Some(why) = ctx.state.cluster().and_then(|c| c.serving_refusal()) {
        return Err(why);
    }
    let old = ctx.state.sessions_of_owner(&owner);
    let bound = proof::binds_to_id(
        &who.proof,
        &who.client_id,
        who.binding.as_ref().unwrap_or(&Binding::OPEN),
    );
    // An open server knows no token, so it cannot check the id of a client that holds
    // one: such a client is let in, as anyone is there, but an id-proving login may
    // take its session over.
    let id_ok = bound || who.binding.is_none();
    let mut proven = id_ok
        && old
            .iter()
            .all(|s| proof::follows(&who.proof, &s.proof) || (bound && !s.bound));
    // Cluster: proven against the directory's record of this client too, or, while
    // the directory cannot be reached, later (before the session's first claim).
    let unproven_in_cluster = false;
    if let (true, Some(c)) = (proven, ctx.state.cluster()) {
        match proven_in_cluster(&c, &owner, &who.proof).await {
            Ok(p) => proven = p,
            Err(()) => {
                return Err(format!(
                    "{}: the login's proof cannot be checked now",
                    super::cluster::UNAVAILABLE
                ))
            }
        }
    }
    if !proven {
        ctx.state
            .stats
            .auth_failures
            .bad_proof
            .fetch_add(1, Relaxed);
        login_failed(ctx, peer);
        return Err(if old.is_empty() {
            BAD_PROOF.to_string()
        } else {
            TAKEN_CLIENT_ID.to_string()
        });
    }
    let max = ctx.state.config.max_sessions;
    let held = ctx.state.sessions_of_user(owner.user.as_deref()).len() - old.len();
    if held >= max {
        return Err(format!(
            "{SESSION_CAP}: {} already has {held} sessions on this server (--max-sessions {max}); another server may take it",
            owner.user.as_deref().unwrap_or("this token")
        ));
    }
    for s in &old {
        info!(
            old_session = s.id,
            "client reconnected; ending its previous session"
        );
        s.stop.cancel();
    }
    for s in &old {
        let _ = timeout(TAKEOVER_WAIT, s.closed.cancelled()).await;
    }
    let (events, events_rx) = mpsc::unbounded_channel();
    let info = Arc::new(SessionInfo {
        id: ctx.state.next_id(),
        owner,
        proof: who.proof,
        bound,
        addr: peer,
        since: SystemTime::now(),
        software: who.software.clone(),
        about: who.about.clone(),
        stop,
        closed: CancellationToken::new(),
        events,
        unproven_in_cluster: std::sync::atomic::AtomicBool::new(unproven_in_cluster),
        ending: Default::default(),
        join_key: rand::random(),
        links,
    });
    if !ctx
        .state
        .add_session_if(info.clone(), || still_in_force(ctx, who))
    {
        // Its token changed while it logged in: refused like the next login with it.
        ctx.state
            .stats
            .auth_failures
            .bad_token
            .fetch_add(1, Relaxed);
        login_failed(ctx, peer);
        return Err(BAD_USER_OR_TOKEN.to_string());
    }
    Ok((info, events_rx))
}
