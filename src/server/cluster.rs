//! This node's part in a cluster: the claims it holds (taken, renewed, released in the
//! directory), the tunnels peers may reach, and the loops that keep both true.
//!
//! The order of a claim: the session binds the port locally (as a single `piped`
//! does), then claims it in the directory; a refusal there gives the port back. A
//! claim is renewed every [`RENEW_EVERY`] under a lease of [`LEASE`]; one that is gone
//! from the directory (Redis restarted empty) is taken again, one that another node
//! now holds ends the session, and one that cannot be renewed for longer than the
//! lease ends it too, so a node cut off from the directory never serves a claim the
//! others may have handed out again. Established tunnels ride out shorter outages.

use super::mirror::Mirrors;
use super::peer::Links;
use super::state::{Owner, State, TunnelInfo};
use super::tcp::TunnelCtx;
use crate::auth::Token;
use crate::cluster::{ClaimKey, Claimed, DirError, Directory, Holder, NodeInfo, Rules};
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

/// How long a claim (and a node's registration) outlives its last renewal: long
/// enough to ride out a Redis restart, short enough that a dead node's ports are free
/// again soon. A client that fails over takes its claims back at once regardless.
pub const LEASE: Duration = Duration::from_secs(20);
/// How often claims and the node's registration are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);
/// The refusal of a claim while the directory cannot be reached (SPEC).
pub const UNAVAILABLE: &str = "cluster directory unavailable";

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Streams peers carried to this node's tunnels.
    pub streams_in: AtomicU64,
    /// Streams this node carried to the holders of other tunnels.
    pub streams_out: AtomicU64,
    /// Directory calls that failed.
    pub dir_errors: AtomicU64,
    /// Nodes registered at the last renewal.
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
    last_renewed: Instant,
    /// The holding session: ended when the claim is lost.
    session: CancellationToken,
}

pub struct Cluster {
    pub dir: Arc<dyn Directory>,
    pub node: String,
    /// What other nodes dial to reach this one.
    pub advertise: String,
    /// The cluster token: peer links prove it.
    pub token: Token,
    pub links: Links,
    pub mirrors: Mirrors,
    pub stats: ClusterStats,
    held: Mutex<HashMap<ClaimKey, Held>>,
    entries: Mutex<HashMap<ClaimKey, (u64, Entry)>>,
    /// Peer addresses by node name, as last read from the directory.
    peers: Mutex<HashMap<String, String>>,
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
        token: Token,
        links: Links,
    ) -> Self {
        Cluster {
            dir,
            node,
            advertise,
            token,
            links,
            mirrors: Mirrors::default(),
            stats: ClusterStats::default(),
            held: Mutex::default(),
            entries: Mutex::default(),
            peers: Mutex::default(),
        }
    }

    fn failed(&self, e: &DirError) -> String {
        self.stats.dir_errors.fetch_add(1, Ordering::Relaxed);
        debug!(error = ?e, "cluster directory call failed");
        UNAVAILABLE.to_string()
    }

    /// Claims `key` for a tunnel of `owner`'s session, or says why not (the text goes
    /// to the client).
    pub async fn claim(
        &self,
        key: &ClaimKey,
        owner: &Owner,
        tunnel: u64,
        rules: Option<Rules>,
        session: CancellationToken,
    ) -> Result<(), String> {
        let holder = Holder {
            node: self.node.clone(),
            owner: owner_key(owner),
            tunnel,
            rules,
        };
        match self.dir.claim(key, &holder, LEASE).await {
            Ok(Claimed::Granted) => {
                let held = Held {
                    holder,
                    last_renewed: Instant::now(),
                    session,
                };
                lock(&self.held).insert(key.clone(), held);
                Ok(())
            }
            Ok(Claimed::Taken(h)) => Err(format!(
                "{key} is taken by another client (on node {})",
                h.node
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
        }
    }

    /// At start, before any client: frees what an earlier run under this name left
    /// behind (its sessions died with it), and registers the node.
    pub async fn join(&self) -> Result<(), DirError> {
        self.dir.register_node(&self.info(), LEASE).await?;
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
        let mut tick = crate::transport::ticker::interval(RENEW_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self.dir.register_node(&self.info(), LEASE).await {
                Ok(()) => {
                    if let Ok(n) = self.dir.nodes().await {
                        self.learn_peers(&n);
                    }
                }
                Err(e) => {
                    self.failed(&e);
                }
            }
            self.renew_claims().await;
        }
    }

    async fn renew_claims(&self) {
        let held: Vec<(ClaimKey, Holder)> = lock(&self.held)
            .iter()
            .map(|(k, h)| (k.clone(), h.holder.clone()))
            .collect();
        for (key, holder) in held {
            let outcome = match self.dir.renew(&key, &holder, LEASE).await {
                Ok(true) => Ok(true),
                // Gone (Redis restarted empty, or the lease ran out): take it again,
                // unless someone else has it now.
                Ok(false) => match self.dir.lookup(&key).await {
                    Ok(None) => self
                        .dir
                        .claim(&key, &holder, LEASE)
                        .await
                        .map(|c| c == Claimed::Granted),
                    Ok(Some(h)) => Ok(h == holder),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let mut all = lock(&self.held);
            let Some(h) = all.get_mut(&key) else { continue };
            if h.holder != holder {
                continue;
            }
            match outcome {
                Ok(true) => h.last_renewed = Instant::now(),
                Ok(false) => {
                    warn!(%key, "another node holds this claim now; ending the session");
                    h.session.cancel();
                    all.remove(&key);
                }
                Err(e) => {
                    drop(all);
                    self.failed(&e);
                    let mut all = lock(&self.held);
                    if let Some(h) = all.get(&key) {
                        if h.last_renewed.elapsed() > LEASE {
                            warn!(%key, "the claim could not be renewed within its lease; ending the session");
                            h.session.cancel();
                            all.remove(&key);
                        }
                    }
                }
            }
        }
    }

    fn learn_peers(&self, nodes: &[NodeInfo]) {
        self.stats
            .nodes
            .store(nodes.len() as u64, Ordering::Relaxed);
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

    /// The cluster's nodes and every claim with its node, sorted (`/api/cluster`).
    pub async fn overview(&self) -> Result<(Vec<NodeInfo>, Vec<(String, String)>), String> {
        let nodes = self.dir.nodes().await.map_err(|e| self.failed(&e))?;
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
