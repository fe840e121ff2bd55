//! This node's part in a cluster: the claims it holds (taken, renewed, released in the
//! directory), the tunnels peers may reach, and the loops that keep both true.
//!
//! The order of a claim: the session binds the port locally (as a single `piped`
//! does), then claims it in the directory; a refusal there gives the port back.
//!
//! **The fence.** Every claim of the node is renewed in one round trip every
//! [`Timing::every`] under a lease of [`Timing::lease`]. A claim's lease counts from
//! the moment its last successful renewal (or the claim) was *sent*: Redis starts the
//! key's expiry later than that, never earlier. The node stops serving a claim — ends
//! its session, which closes the listener and resets the visitors — at that moment
//! plus the lease minus [`Timing::margin`] (clock-rate drift, the time to stop, the
//! fence check's own period), so before the key can have expired in the directory
//! and been handed to anyone else. The fence runs on its own timer, apart from the
//! renewals, which may be stuck waiting on an unreachable directory. A renewal that
//! finds a claim held by another holder ends its session at once; one that finds it
//! gone (the directory forgot it) writes it back (`cluster::redis` explains why that
//! is safe). `docs/PROTOCOL.md` states the invariant and its assumptions.
//!
//! A node whose last renewal failed, or that has fenced, serves no new logins or
//! claims: it refuses them with a reason the client retries on another server.

use super::mirror::Mirrors;
use super::peer::Links;
use super::state::{Owner, SessionInfo, State, TunnelInfo};
use super::tcp::TunnelCtx;
use crate::auth::Token;
use crate::cluster::{ClaimKey, Claimed, DirError, Directory, Holder, NodeInfo, Renewed, Rules};
use crate::transport::MuxStream;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::MIN_CLUSTER_LEASE;
/// The refusal of a claim or login while the directory cannot be reached (SPEC).
pub const UNAVAILABLE: &str = "cluster directory unavailable";
/// The refusal of a new owner's claim while the directory has just started over.
pub const RECOVERING: &str = "cluster directory recovering";

/// Is a refusal one of this node's own state (its directory), which another node may
/// not share? The client then tries elsewhere instead of giving up.
pub fn retryable(reason: &str) -> bool {
    reason.starts_with(UNAVAILABLE) || reason.starts_with(RECOVERING)
}

/// The cluster's clock, all derived from the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lease: Duration,
    /// How often claims and the registration are renewed: a tenth of the lease (at
    /// most 3 s), so a node rides out several failed renewals before its fence.
    pub every: Duration,
    /// How long before its lease can expire a node stops serving a claim: a tenth of
    /// the lease, at least 500 ms (a busy host's timers and scheduling).
    pub margin: Duration,
}

impl Timing {
    /// ```
    /// use pipe::server::ClusterTiming;
    /// use std::time::Duration;
    /// let t = ClusterTiming::new(Duration::from_secs(45));
    /// assert_eq!(t.every, Duration::from_secs(3));
    /// assert_eq!(t.lease - t.margin, Duration::from_millis(40_500));
    /// ```
    pub fn new(lease: Duration) -> Timing {
        let lease = lease.max(MIN_CLUSTER_LEASE);
        Timing {
            lease,
            every: (lease / 10).min(Duration::from_secs(3)),
            margin: (lease / 10).max(Duration::from_millis(500)),
        }
    }

    /// How often the fence looks at the deadlines: a quarter of the margin, so a
    /// claim stops at most that late, still well before its lease can end.
    fn fence_check(&self) -> Duration {
        self.margin / 4
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Streams peers carried to this node's tunnels.
    pub streams_in: AtomicU64,
    /// Streams this node carried to the holders of other tunnels.
    pub streams_out: AtomicU64,
    /// Directory calls that failed.
    pub dir_errors: AtomicU64,
    /// Live nodes (renewed within two intervals) at the last renewal.
    pub nodes: AtomicU64,
}

/// A local tunnel as peers reach it.
#[derive(Clone)]
pub(crate) enum Entry {
    Tcp(Arc<TunnelCtx>),
    /// Peer streams carrying datagrams are handed to the UDP tunnel's loop.
    Udp(mpsc::Sender<MuxStream>),
}

struct Held {
    holder: Holder,
    /// When the last successful renewal (or the claim) was sent: the lease counts
    /// from here.
    lease_from: Instant,
    /// The holding session: ended when the claim is lost or fenced.
    session: Arc<SessionInfo>,
}

/// Whether the directory answered lately, and what failed when it did not.
#[derive(Default)]
struct Health {
    /// The last renewal failed, and why (`None`: it worked, or none has run yet).
    failing: Option<String>,
    /// Fenced: claims were given up for want of renewals; cleared by a renewal that
    /// works again.
    fenced: bool,
}

pub struct Cluster {
    pub dir: Arc<dyn Directory>,
    pub node: String,
    /// What other nodes dial to reach this one.
    pub advertise: String,
    /// The cluster secret: peer links prove it; clients never hold it.
    pub secret: Token,
    pub timing: Timing,
    pub links: Links,
    pub mirrors: Mirrors,
    pub stats: ClusterStats,
    held: Mutex<HashMap<ClaimKey, Held>>,
    entries: Mutex<HashMap<ClaimKey, (u64, Entry)>>,
    /// Peer addresses by node name, as last read from the directory.
    peers: Mutex<HashMap<String, String>>,
    health: Mutex<Health>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The owner as the directory compares it: the user and the client id.
pub fn owner_key(owner: &Owner) -> String {
    let mut s = String::with_capacity(48);
    s.push_str(owner.user_name());
    s.push('/');
    for b in owner.client_id {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A tunnel's claim key (`None` for none: an http tunnel's internal port is local).
pub fn key_of(t: &TunnelInfo, subdomain: Option<&str>) -> Option<ClaimKey> {
    match (t.proto, subdomain) {
        (_, Some(sub)) => Some(ClaimKey::Subdomain(sub.to_string())),
        (crate::protocol::Proto::Tcp, None) => Some(ClaimKey::Tcp(t.port)),
        (crate::protocol::Proto::Udp, None) => Some(ClaimKey::Udp(t.port)),
        (crate::protocol::Proto::Http, None) => None,
    }
}

impl Cluster {
    pub fn new(
        dir: Arc<dyn Directory>,
        node: String,
        advertise: String,
        secret: Token,
        timing: Timing,
        links: Links,
    ) -> Self {
        Cluster {
            dir,
            node,
            advertise,
            secret,
            timing,
            links,
            mirrors: Mirrors::default(),
            stats: ClusterStats::default(),
            held: Mutex::default(),
            entries: Mutex::default(),
            peers: Mutex::default(),
            health: Mutex::default(),
        }
    }

    fn failed(&self, e: &DirError) -> String {
        self.stats.dir_errors.fetch_add(1, Ordering::Relaxed);
        debug!(error = ?e, "cluster directory call failed");
        match e {
            DirError::Unavailable { detail } => format!("{UNAVAILABLE} ({detail})"),
            DirError::Corrupt { .. } => UNAVAILABLE.to_string(),
        }
    }

    /// Why this node cannot take new logins and claims now (its directory failed at
    /// the last renewal, or it has fenced), or `None` when it can.
    pub fn serving_refusal(&self) -> Option<String> {
        let h = lock(&self.health);
        if h.fenced {
            return Some(format!(
                "{UNAVAILABLE}: this node lost its cluster directory; another node serves"
            ));
        }
        h.failing
            .as_ref()
            .map(|why| format!("{UNAVAILABLE} ({why}); another node may serve"))
    }

    /// What failed at the last renewal, for `/api/cluster`.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.health).failing.clone()
    }

    /// Claims `key` for a tunnel of `session`, or says why not (the text goes to the
    /// client; [`retryable`] tells which refusals another node may not repeat).
    pub async fn claim(
        &self,
        key: &ClaimKey,
        session: &Arc<SessionInfo>,
        tunnel: u64,
        rules: Option<Rules>,
    ) -> Result<(), String> {
        if let Some(why) = self.serving_refusal() {
            return Err(why);
        }
        let holder = Holder {
            node: self.node.clone(),
            owner: owner_key(&session.owner),
            tunnel,
            rules,
        };
        let sent = Instant::now();
        match self.dir.claim(key, &holder, self.timing.lease).await {
            Ok(Claimed::Granted) => {
                let held = Held {
                    holder,
                    lease_from: sent,
                    session: session.clone(),
                };
                lock(&self.held).insert(key.clone(), held);
                Ok(())
            }
            Ok(Claimed::Taken(h)) => Err(format!(
                "{key} is taken by another client (on node {})",
                h.node
            )),
            Ok(Claimed::Recovering(left)) => Err(format!(
                "{RECOVERING}: the directory started over and live nodes are writing back their claims; {key} is free to take in {}s",
                left.as_secs() + 1
            )),
            Err(e) => Err(self.failed(&e)),
        }
    }

    /// Frees a claim of this node's (a tunnel closed); a directory that cannot be
    /// reached lets the lease run out instead.
    pub fn release(self: &Arc<Self>, key: ClaimKey, tunnel: u64) {
        let held = {
            let mut held = lock(&self.held);
            match held.get(&key) {
                Some(h) if h.holder.tunnel == tunnel => held.remove(&key),
                _ => None,
            }
        };
        {
            let mut entries = lock(&self.entries);
            if matches!(entries.get(&key), Some((id, _)) if *id == tunnel) {
                entries.remove(&key);
            }
        }
        let Some(held) = held else { return };
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.dir.release(&key, &held.holder).await {
                me.failed(&e);
            }
        });
    }

    /// Makes a local tunnel reachable from peers.
    pub(crate) fn publish(&self, key: ClaimKey, tunnel: u64, entry: Entry) {
        lock(&self.entries).insert(key, (tunnel, entry));
    }

    pub(crate) fn entry(&self, key: &ClaimKey) -> Option<Entry> {
        lock(&self.entries).get(key).map(|(_, e)| e.clone())
    }

    /// Does this node hold `key` itself?
    pub fn holds(&self, key: &ClaimKey) -> bool {
        lock(&self.held).contains_key(key)
    }

    /// How many claims this node holds (for `/api/cluster`).
    pub fn held_count(&self) -> usize {
        lock(&self.held).len()
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            name: self.node.clone(),
            peer: self.advertise.clone(),
            seen: 0,
            every_ms: self.timing.every.as_millis() as u64,
            lease_ms: self.timing.lease.as_millis() as u64,
            since_renewal: None,
        }
    }

    /// At start, before any client: frees what an earlier run under this name left
    /// behind (its sessions died with it), and registers the node.
    pub async fn join(&self) -> Result<(), DirError> {
        self.dir
            .register_node(&self.info(), self.timing.lease)
            .await?;
        for (key, holder) in self.dir.claims().await? {
            if holder.node == self.node {
                info!(%key, "freeing a claim left by this node's previous run");
                self.dir.release(&key, &holder).await?;
            }
        }
        Ok(())
    }

    /// Renews the registration and every claim, until `stop`.
    pub async fn renew_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = crate::transport::ticker::interval(self.timing.every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.renew_claims().await {
                if let Ok(n) = self.dir.nodes().await {
                    self.learn_peers(&n);
                }
            }
        }
    }

    /// One renewal round; `true` when the directory answered.
    async fn renew_claims(&self) -> bool {
        let held: Vec<(ClaimKey, Holder)> = lock(&self.held)
            .iter()
            .map(|(k, h)| (k.clone(), h.holder.clone()))
            .collect();
        let sent = Instant::now();
        let answers = match self
            .dir
            .renew_all(&self.info(), &held, self.timing.lease)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                let why = match &e {
                    DirError::Unavailable { detail } => detail.clone(),
                    DirError::Corrupt { detail } => format!("unreadable answer: {detail}"),
                };
                let mut h = lock(&self.health);
                if h.failing.is_none() {
                    warn!(error = %why, "cannot renew this node's claims in the cluster directory; new logins go to other nodes, and this node stops serving its claims if it cannot renew them within the lease");
                }
                h.failing = Some(why);
                drop(h);
                self.failed(&e);
                return false;
            }
        };
        {
            let mut h = lock(&self.health);
            if h.failing.is_some() || h.fenced {
                info!("the cluster directory answers again");
            }
            h.failing = None;
            h.fenced = false;
        }
        let mut all = lock(&self.held);
        for ((key, holder), answer) in held.into_iter().zip(answers) {
            let Some(h) = all.get_mut(&key) else { continue };
            if h.holder != holder {
                continue;
            }
            match answer {
                Renewed::Kept => h.lease_from = sent,
                Renewed::Reasserted => {
                    info!(%key, "the cluster directory had forgotten this claim; written back");
                    h.lease_from = sent;
                }
                Renewed::Lost(other) => {
                    warn!(%key, node = %other.node, "another holder has this claim now; ending the session");
                    h.session.end(
                        format!("{key} is held through node {} now", other.node),
                        true,
                    );
                    all.remove(&key);
                }
            }
        }
        true
    }

    /// Stops serving every claim whose lease may be about to end in the directory,
    /// until `stop`: the fence (see the module's docs).
    pub async fn fence_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = crate::transport::ticker::interval(self.timing.fence_check());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.fence(Instant::now());
        }
    }

    /// Fences the claims past their deadline at `now`; returns how many.
    fn fence(&self, now: Instant) -> usize {
        let keep = self.timing.lease - self.timing.margin;
        let mut all = lock(&self.held);
        let expired: Vec<ClaimKey> = all
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.lease_from) >= keep)
            .map(|(k, _)| k.clone())
            .collect();
        if expired.is_empty() {
            return 0;
        }
        warn!(
            claims = expired.len(),
            lease = ?self.timing.lease,
            "no renewal reached the cluster directory within the lease; this node stops serving these claims before the directory can give them away, and its clients move to other nodes"
        );
        for key in &expired {
            if let Some(h) = all.remove(key) {
                h.session.end(
                    "this node lost its cluster directory for longer than the lease allows; another node serves your ports now",
                    true,
                );
            }
        }
        drop(all);
        lock(&self.health).fenced = true;
        expired.len()
    }

    fn learn_peers(&self, nodes: &[NodeInfo]) {
        self.stats.nodes.store(
            nodes.iter().filter(|n| n.is_up()).count() as u64,
            Ordering::Relaxed,
        );
        let mut peers = lock(&self.peers);
        peers.clear();
        for n in nodes {
            peers.insert(n.name.clone(), n.peer.clone());
        }
    }

    /// Where to dial `node`: as last read, else from the directory now.
    pub async fn peer_addr(&self, node: &str) -> Result<String, String> {
        if let Some(a) = lock(&self.peers).get(node) {
            return Ok(a.clone());
        }
        self.refresh_peer_addr(node).await
    }

    /// Where to dial `node`, read from the directory now.
    pub async fn refresh_peer_addr(&self, node: &str) -> Result<String, String> {
        let nodes = self.dir.nodes().await.map_err(|e| self.failed(&e))?;
        self.learn_peers(&nodes);
        lock(&self.peers)
            .get(node)
            .cloned()
            .ok_or_else(|| format!("node {node} is not registered in the cluster"))
    }

    /// Frees every claim this node holds (shutdown), each bounded by the directory's
    /// call timeout.
    pub async fn release_all(&self) {
        let held: Vec<(ClaimKey, Holder)> = lock(&self.held)
            .drain()
            .map(|(k, h)| (k, h.holder))
            .collect();
        for (key, holder) in held {
            if let Err(e) = self.dir.release(&key, &holder).await {
                self.failed(&e);
                break;
            }
        }
    }

    /// The cluster's nodes (each `up` or `down`) and every claim with its node, sorted
    /// (`/api/cluster`).
    pub async fn overview(&self) -> Result<(Vec<NodeInfo>, Vec<(String, String)>), String> {
        let nodes = self.dir.nodes().await.map_err(|e| self.failed(&e))?;
        self.learn_peers(&nodes);
        let mut claims: Vec<(String, String)> = self
            .dir
            .claims()
            .await
            .map_err(|e| self.failed(&e))?
            .into_iter()
            .map(|(k, h)| (k.name(), h.node))
            .collect();
        claims.sort();
        Ok((nodes, claims))
    }
}

impl State {
    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.get().cloned()
    }
}
