//! The server's shared state: sessions, tunnels, the ports they hold, and counters.
//!
//! Owns who holds which port and the rules for claiming one, and who owns each session
//! and tunnel (an `Owner`: the user and the client process); it does not bind sockets
//! (the session does, then records the result here) or talk to peers.

use crate::config::{PortSet, ServerConfig};
use crate::protocol::{Proto, CLIENT_ID_LEN, PROOF_LEN};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Refused logins by reason (Prometheus `pipe_auth_failures_total{reason}`).
#[derive(Debug, Default)]
pub struct AuthFailures {
    /// A wrong token, or an unknown user (the two are not told apart).
    pub bad_token: AtomicU64,
    /// Refused without a check: the source address was cooling off.
    pub cooling_off: AtomicU64,
    /// A takeover (or a first login) whose proof did not match the client id.
    pub bad_proof: AtomicU64,
}

impl AuthFailures {
    pub fn by_reason(&self) -> [(&'static str, u64); 3] {
        [
            ("bad_token", self.bad_token.load(Ordering::Relaxed)),
            ("cooling_off", self.cooling_off.load(Ordering::Relaxed)),
            ("bad_proof", self.bad_proof.load(Ordering::Relaxed)),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

/// Process-wide counters (Prometheus `pipe_*`).
#[derive(Debug, Default)]
pub struct GlobalStats {
    pub auth_failures: AuthFailures,
    /// Live TCP (and http) visitor connections.
    pub connections_active: AtomicU64,
    /// UDP senders with a live mapping.
    pub udp_peers_active: AtomicU64,
    pub connections_tcp: AtomicU64,
    pub connections_udp: AtomicU64,
    /// Bytes of tunnels that have closed; live tunnels keep their own.
    pub retired_in: AtomicU64,
    pub retired_out: AtomicU64,
    /// Datagrams dropped because a UDP stream was congested.
    pub udp_dropped: Arc<AtomicU64>,
}

/// Per-tunnel counters, updated by the data path as bytes move.
#[derive(Debug, Default)]
pub struct TunnelStats {
    /// Bytes received from public visitors.
    pub bytes_in: Arc<AtomicU64>,
    /// Bytes sent to public visitors.
    pub bytes_out: Arc<AtomicU64>,
    pub active: AtomicU64,
    pub total: AtomicU64,
    /// Unix seconds of the latest visitor, 0 before the first.
    pub last_visitor: AtomicU64,
    /// Whether the local service answered the latest visitor, as the client last said
    /// (`ClientMsg::LocalService`): `LOCAL_UNKNOWN`, `LOCAL_UP` or `LOCAL_DOWN`.
    pub local: AtomicU8,
    /// Unix seconds of that report.
    pub local_since: AtomicU64,
}

/// `TunnelStats::local` before the client said anything.
pub const LOCAL_UNKNOWN: u8 = 0;
/// `TunnelStats::local`: the local service answered.
pub const LOCAL_UP: u8 = 1;
/// `TunnelStats::local`: the local service did not answer.
pub const LOCAL_DOWN: u8 = 2;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Something the rest of the server asks a session's control loop to do.
#[derive(Debug)]
pub enum SessionEvent {
    /// The operator closed a tunnel: tell the client.
    TunnelClosed { forward_id: u32, reason: String },
}

/// Who holds a session and its claims: the user (none for the implicit user of a
/// single-token or open server) and the client process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub user: Option<Arc<str>>,
    pub client_id: [u8; CLIENT_ID_LEN],
}

impl Owner {
    /// The user's name for logs and the admin API (`-` for the implicit user).
    pub fn user_name(&self) -> &str {
        self.user.as_deref().unwrap_or("-")
    }
}

#[derive(Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub owner: Owner,
    /// The last link of the client's proof chain this server accepted: a takeover must
    /// present one that hashes forward to it.
    pub proof: [u8; PROOF_LEN],
    /// The client id was checked against the binding of the token the login proved.
    /// False only on an open server, for a client that holds a token the server does
    /// not know: any login that can prove its id then takes this session over.
    pub bound: bool,
    pub addr: SocketAddr,
    pub since: SystemTime,
    pub software: String,
    /// What the client said about itself at login (its name, the host it dialled).
    pub about: crate::auth::Introduction,
    /// Cancelled to end the session (takeover, shutdown).
    pub stop: CancellationToken,
    /// Cancelled once the session has released all its ports.
    pub closed: CancellationToken,
    pub events: mpsc::UnboundedSender<SessionEvent>,
    /// Cluster: logged in while the directory could not check the proof; checked
    /// before the session's first claim.
    pub unproven_in_cluster: std::sync::atomic::AtomicBool,
    /// Why the server ends the session, told to the client before it goes
    /// (`ServerMsg::Ending`); set by [`SessionInfo::end`].
    pub ending: std::sync::Mutex<Option<Ending>>,
    /// The secret that joins more of the client's connections to this session.
    pub join_key: [u8; crate::protocol::JOIN_KEY_LEN],
    /// The client's connections: this session's and those joined to it.
    pub links: super::links::Links,
}

/// Why the server ends a session, as the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub reason: String,
    /// Another server can serve the client now (this one cannot).
    pub retry: bool,
}

impl SessionInfo {
    /// Ends the session and tells the client why first. The first reason given wins.
    pub fn end(&self, reason: impl Into<String>, retry: bool) {
        {
            let mut ending = self.ending.lock().unwrap_or_else(|e| e.into_inner());
            if ending.is_none() {
                *ending = Some(Ending {
                    reason: reason.into(),
                    retry,
                });
            }
        }
        self.stop.cancel();
    }

    /// The reason given to [`SessionInfo::end`], if any.
    pub fn ending(&self) -> Option<Ending> {
        self.ending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Debug)]
pub struct TunnelInfo {
    pub id: u64,
    pub session_id: u64,
    /// The session's user, when the server has a users file.
    pub user: Option<Arc<str>>,
    pub forward_id: u32,
    pub proto: Proto,
    /// Public port (the internal one for `Http`).
    pub port: u16,
    pub url: Option<String>,
    /// The name the client gave the forward, if any (`name=web`).
    pub name: Option<String>,
    pub local: String,
    pub since: SystemTime,
    pub speed_limit: Option<u64>,
    /// Visitor rules enforced by piped (open for `Http`: Caddy enforces those).
    pub access: super::access::Access,
    /// `Http` only: Caddy names each connection's visitor (`real_addr`).
    pub visitor_from_caddy: bool,
    /// `Http` only: visitors sign in (`auth=oidc`).
    pub sign_in: bool,
    pub stats: TunnelStats,
    /// Cancelled to close the tunnel and its connections.
    pub stop: CancellationToken,
}

impl TunnelInfo {
    /// The kind of port space the tunnel's port lives in.
    pub fn port_key(&self) -> Option<PortKey> {
        match self.proto {
            Proto::Tcp => Some(PortKey::Tcp(self.port)),
            Proto::Udp => Some(PortKey::Udp(self.port)),
            Proto::Http => None,
        }
    }
}

/// A public port; TCP and UDP are separate spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortKey {
    Tcp(u16),
    Udp(u16),
}

impl PortKey {
    pub fn port(self) -> u16 {
        match self {
            PortKey::Tcp(p) | PortKey::Udp(p) => p,
        }
    }
}

#[derive(Default)]
struct Registry {
    sessions: HashMap<u64, Arc<SessionInfo>>,
    tunnels: HashMap<u64, Arc<TunnelInfo>>,
    /// Ports held by a tunnel, or reserved while one is being bound.
    ports: HashMap<PortKey, u64>,
    subdomains: HashMap<String, u64>,
    /// Tunnels held or being opened per user, across all of the user's sessions.
    user_tunnels: HashMap<Arc<str>, usize>,
}

/// Why a port cannot be had; the text goes to the client verbatim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRefusal {
    #[error("port {port} is not in the server's allowed ports ({allowed})")]
    NotAllowed { port: u16, allowed: String },
    #[error("port {0} is one of the server's own listening ports")]
    OwnPort(u16),
    #[error("port {0} is taken by another client")]
    Taken(u16),
    #[error("no free port left in the server's allowed ports")]
    Exhausted,
}

pub struct State {
    pub config: ServerConfig,
    pub stats: GlobalStats,
    pub started: SystemTime,
    pub started_at: Instant,
    next_id: AtomicU64,
    reserved: Mutex<HashSet<u16>>,
    inner: Mutex<Registry>,
    /// Caddy's admin API, when http forwards are enabled (`domain` + `caddy-admin`).
    pub caddy: Option<Arc<crate::caddy::Caddy>>,
    /// The users file in force, when the server has one (`--users`).
    pub accounts: Option<Arc<crate::accounts::Accounts>>,
    /// Failed logins per source address.
    pub logins: crate::accounts::throttle::LoginThrottle,
    /// `sha256:HEX` of the server's own certificate (`--tls-self-signed`).
    pub tls_fingerprint: Option<String>,
    /// The cluster, once this node has joined it (`--cluster`).
    pub(crate) cluster: std::sync::OnceLock<Arc<super::cluster::Cluster>>,
    /// The loopback port of the sign-in gate, once it is bound (`--oidc-issuer`).
    pub(crate) sign_in_gate: std::sync::OnceLock<u16>,
}

/// Marker in the port map for a port being bound but not yet owned by a tunnel.
const RESERVING: u64 = 0;
/// Marker for a port (or subdomain) another node of the cluster holds, which this
/// node listens on for it (`server::mirror`).
const MIRRORED: u64 = u64::MAX;

impl State {
    pub fn new(config: ServerConfig) -> Self {
        let caddy = crate::caddy::Caddy::from_config(&config).map(Arc::new);
        State {
            caddy,
            config,
            stats: GlobalStats::default(),
            started: SystemTime::now(),
            started_at: Instant::now(),
            next_id: AtomicU64::new(1),
            reserved: Mutex::default(),
            inner: Mutex::default(),
            accounts: None,
            logins: Default::default(),
            tls_fingerprint: None,
            cluster: Default::default(),
            sign_in_gate: Default::default(),
        }
    }

    /// Where Caddy reaches the sign-in gate, when this server signs visitors in.
    pub fn sign_in_gate(&self) -> Option<u16> {
        self.sign_in_gate.get().copied()
    }

    /// The same state with a users file in force.
    pub fn with_accounts(mut self, accounts: crate::accounts::Accounts) -> Self {
        self.accounts = Some(Arc::new(accounts));
        self
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks one of the server's own listening ports: never handed out.
    pub fn reserve_own_port(&self, port: u16) {
        self.reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port);
    }

    /// Allowed ports that are not the server's own.
    pub fn usable_ports(&self) -> usize {
        let reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let own = reserved
            .iter()
            .filter(|p| self.config.ports.contains(**p))
            .count();
        self.config.ports.len().saturating_sub(own)
    }

    fn allowed(&self, port: u16) -> bool {
        port != 0
            && self.config.ports.contains(port)
            && !self
                .reserved
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&port)
    }

    /// Reserves a specific port for a bind attempt.
    pub fn reserve_port(&self, key: PortKey) -> Result<(), PortRefusal> {
        if !self.allowed(key.port()) {
            let port = key.port();
            if port != 0 && self.config.ports.contains(port) {
                return Err(PortRefusal::OwnPort(port));
            }
            return Err(PortRefusal::NotAllowed {
                port,
                allowed: self.config.ports.to_string(),
            });
        }
        let mut reg = self.lock();
        if reg.ports.contains_key(&key) {
            return Err(PortRefusal::Taken(key.port()));
        }
        reg.ports.insert(key, RESERVING);
        Ok(())
    }

    /// Candidate ports for "any port": every allowed port not held, from a random start;
    /// drawn from `scope` (a user's ports) when given.
    pub fn free_port_candidates(
        &self,
        udp: bool,
        limit: usize,
        scope: Option<&PortSet>,
    ) -> Vec<u16> {
        let set = scope.unwrap_or(&self.config.ports);
        let n = set.len();
        if n == 0 {
            return Vec::new();
        }
        let start = rand::random_range(0..n);
        let reg = self.lock();
        (0..n)
            .filter_map(|i| set.nth((start + i) % n))
            .filter(|&p| {
                let key = if udp {
                    PortKey::Udp(p)
                } else {
                    PortKey::Tcp(p)
                };
                !reg.ports.contains_key(&key)
            })
            .filter(|&p| self.allowed(p))
            .take(limit)
            .collect()
    }

    /// Gives back a reservation whose bind failed.
    pub fn release_port(&self, key: PortKey) {
        let mut reg = self.lock();
        if reg.ports.get(&key) == Some(&RESERVING) {
            reg.ports.remove(&key);
        }
    }

    /// Marks a port as mirrored for another node; `false` when it is held here.
    pub fn mirror_port(&self, key: PortKey) -> bool {
        let mut reg = self.lock();
        if reg.ports.contains_key(&key) {
            return false;
        }
        reg.ports.insert(key, MIRRORED);
        true
    }

    pub fn unmirror_port(&self, key: PortKey) {
        let mut reg = self.lock();
        if reg.ports.get(&key) == Some(&MIRRORED) {
            reg.ports.remove(&key);
        }
    }

    /// Is this port mirrored for another node?
    pub fn is_mirrored(&self, key: PortKey) -> bool {
        self.lock().ports.get(&key) == Some(&MIRRORED)
    }

    pub fn mirror_subdomain(&self, sub: &str) -> bool {
        let mut reg = self.lock();
        if reg.subdomains.contains_key(sub) {
            return false;
        }
        reg.subdomains.insert(sub.to_string(), MIRRORED);
        true
    }

    pub fn unmirror_subdomain(&self, sub: &str) {
        let mut reg = self.lock();
        if reg.subdomains.get(sub) == Some(&MIRRORED) {
            reg.subdomains.remove(sub);
        }
    }

    pub fn is_mirrored_subdomain(&self, sub: &str) -> bool {
        self.lock().subdomains.get(sub) == Some(&MIRRORED)
    }

    /// Claims a subdomain for a tunnel being created.
    pub fn reserve_subdomain(&self, sub: &str) -> bool {
        let mut reg = self.lock();
        if reg.subdomains.contains_key(sub) {
            return false;
        }
        reg.subdomains.insert(sub.to_string(), RESERVING);
        true
    }

    pub fn release_subdomain(&self, sub: &str) {
        let mut reg = self.lock();
        if reg.subdomains.get(sub) == Some(&RESERVING) {
            reg.subdomains.remove(sub);
        }
    }

    pub fn add_session(&self, s: Arc<SessionInfo>) {
        self.lock().sessions.insert(s.id, s);
    }

    /// Registers a session if `valid()`, asked under the registry lock; `false` if not.
    /// A reload that ends the sessions proved with an old token looks them up under
    /// this lock after putting the new token in force, so a login checked against the
    /// old token is either registered before that lookup (and ended by it) or judged
    /// after the new token is in force (and refused here): none slips between.
    pub fn add_session_if(&self, s: Arc<SessionInfo>, valid: impl FnOnce() -> bool) -> bool {
        let mut reg = self.lock();
        if !valid() {
            return false;
        }
        reg.sessions.insert(s.id, s);
        true
    }

    pub fn remove_session(&self, id: u64) {
        self.lock().sessions.remove(&id);
    }

    /// Live sessions of a user, or of the implicit user with `None`.
    pub fn sessions_of_user(&self, user: Option<&str>) -> Vec<Arc<SessionInfo>> {
        self.lock()
            .sessions
            .values()
            .filter(|s| s.owner.user.as_deref() == user)
            .cloned()
            .collect()
    }

    /// Live tunnels of a user.
    pub fn tunnels_of_user(&self, user: &str) -> Vec<Arc<TunnelInfo>> {
        let mut v: Vec<_> = self
            .lock()
            .tunnels
            .values()
            .filter(|t| t.user.as_deref() == Some(user))
            .cloned()
            .collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// Takes one of a user's `max` tunnel places (held until the tunnel is removed or
    /// the place is given back), or says how many the user holds.
    pub fn take_user_tunnel(&self, user: &Arc<str>, max: usize) -> Result<(), usize> {
        let mut reg = self.lock();
        let n = reg.user_tunnels.entry(user.clone()).or_insert(0);
        if *n >= max {
            return Err(*n);
        }
        *n += 1;
        Ok(())
    }

    /// Gives back a place taken for a tunnel that did not open.
    pub fn give_back_user_tunnel(&self, user: &str) {
        Self::release_user_tunnel(&mut self.lock(), user);
    }

    fn release_user_tunnel(reg: &mut Registry, user: &str) {
        if let Some(n) = reg.user_tunnels.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                reg.user_tunnels.remove(user);
            }
        }
    }

    /// Live sessions of the same owner: the same user's client with this id (a
    /// reconnect after a network failure). Another user's session with the same id
    /// is none of this owner's business, so it can never shut the owner out.
    pub fn sessions_of_owner(&self, owner: &Owner) -> Vec<Arc<SessionInfo>> {
        self.lock()
            .sessions
            .values()
            .filter(|s| &s.owner == owner)
            .cloned()
            .collect()
    }

    /// Records a tunnel whose port (or subdomain) was reserved and is now bound.
    pub fn add_tunnel(&self, t: Arc<TunnelInfo>, subdomain: Option<&str>) {
        let mut reg = self.lock();
        if let Some(key) = t.port_key() {
            reg.ports.insert(key, t.id);
        }
        if let Some(sub) = subdomain {
            reg.subdomains.insert(sub.to_string(), t.id);
        }
        reg.tunnels.insert(t.id, t);
    }

    /// Forgets a tunnel and frees its port; its byte counts move to the retired totals.
    pub fn remove_tunnel(&self, id: u64) -> Option<Arc<TunnelInfo>> {
        let mut reg = self.lock();
        let t = reg.tunnels.remove(&id)?;
        if let Some(key) = t.port_key() {
            if reg.ports.get(&key) == Some(&id) {
                reg.ports.remove(&key);
            }
        }
        let sub = reg
            .subdomains
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(s, _)| s.clone());
        if let Some(s) = &sub {
            reg.subdomains.remove(s);
        }
        if let Some(c) = self.cluster.get() {
            if let Some(key) = super::cluster::key_of(&t, sub.as_deref()) {
                c.release(key, id);
            }
        }
        if let Some(user) = &t.user {
            Self::release_user_tunnel(&mut reg, user);
        }
        self.stats
            .retired_in
            .fetch_add(t.stats.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
        self.stats
            .retired_out
            .fetch_add(t.stats.bytes_out.load(Ordering::Relaxed), Ordering::Relaxed);
        Some(t)
    }

    pub fn tunnel(&self, id: u64) -> Option<Arc<TunnelInfo>> {
        self.lock().tunnels.get(&id).cloned()
    }

    pub fn session(&self, id: u64) -> Option<Arc<SessionInfo>> {
        self.lock().sessions.get(&id).cloned()
    }

    pub fn sessions(&self) -> Vec<Arc<SessionInfo>> {
        let mut v: Vec<_> = self.lock().sessions.values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    pub fn tunnels(&self) -> Vec<Arc<TunnelInfo>> {
        let mut v: Vec<_> = self.lock().tunnels.values().cloned().collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// Is `host` (a full `sub.domain` name) a live http tunnel? (Caddy's on-demand TLS ask.)
    pub fn has_subdomain_host(&self, host: &str) -> bool {
        let Some(domain) = &self.config.domain else {
            return false;
        };
        let Some(sub) = host
            .strip_suffix(domain.as_str())
            .and_then(|s| s.strip_suffix('.'))
        else {
            return false;
        };
        // A subdomain mirrored for another node is live here too.
        matches!(self.lock().subdomains.get(sub), Some(&id) if id != RESERVING)
    }

    /// Total bytes received from visitors, closed tunnels included.
    pub fn bytes_in(&self) -> u64 {
        let live: u64 = self
            .lock()
            .tunnels
            .values()
            .map(|t| t.stats.bytes_in.load(Ordering::Relaxed))
            .sum();
        live + self.stats.retired_in.load(Ordering::Relaxed)
    }

    /// Total bytes sent to visitors, closed tunnels included.
    pub fn bytes_out(&self) -> u64 {
        let live: u64 = self
            .lock()
            .tunnels
            .values()
            .map(|t| t.stats.bytes_out.load(Ordering::Relaxed))
            .sum();
        live + self.stats.retired_out.load(Ordering::Relaxed)
    }

    /// Closes a tunnel on the operator's request, telling its client why.
    pub fn close_tunnel(&self, id: u64, reason: &str) -> bool {
        let Some(t) = self.tunnel(id) else {
            return false;
        };
        if let Some(s) = self.session(t.session_id) {
            let _ = s.events.send(SessionEvent::TunnelClosed {
                forward_id: t.forward_id,
                reason: reason.to_string(),
            });
        }
        t.stop.cancel();
        true
    }
}

/// Counts one live public connection for as long as it lives.
pub struct ConnGuard {
    state: Arc<State>,
    tunnel: Arc<TunnelInfo>,
}

impl ConnGuard {
    pub fn new(state: Arc<State>, tunnel: Arc<TunnelInfo>) -> Self {
        tunnel.stats.active.fetch_add(1, Ordering::Relaxed);
        tunnel.stats.total.fetch_add(1, Ordering::Relaxed);
        tunnel
            .stats
            .last_visitor
            .store(unix_now(), Ordering::Relaxed);
        ConnGuard::active(&state, tunnel.proto).fetch_add(1, Ordering::Relaxed);
        let total = match tunnel.proto {
            Proto::Udp => &state.stats.connections_udp,
            Proto::Tcp | Proto::Http => &state.stats.connections_tcp,
        };
        total.fetch_add(1, Ordering::Relaxed);
        ConnGuard { state, tunnel }
    }

    /// Live TCP connections, or live UDP senders: counted apart, since a UDP sender
    /// is no connection and lingers until its idle timeout.
    fn active(state: &State, proto: Proto) -> &AtomicU64 {
        match proto {
            Proto::Udp => &state.stats.udp_peers_active,
            Proto::Tcp | Proto::Http => &state.stats.connections_active,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.tunnel.stats.active.fetch_sub(1, Ordering::Relaxed);
        ConnGuard::active(&self.state, self.tunnel.proto).fetch_sub(1, Ordering::Relaxed);
    }
}

impl State {
    /// Total bytes (in, out) through all tunnels, closed ones included, as one snapshot:
    /// the retired totals are read under the same lock `remove_tunnel` holds while it
    /// moves a tunnel's bytes there, so a closing tunnel is never counted twice (which
    /// would make the Prometheus counters step back on the next scrape).
    pub fn byte_totals(&self) -> (u64, u64) {
        let reg = self.lock();
        let (mut bytes_in, mut bytes_out) = (0u64, 0u64);
        for t in reg.tunnels.values() {
            bytes_in += t.stats.bytes_in.load(Ordering::Relaxed);
            bytes_out += t.stats.bytes_out.load(Ordering::Relaxed);
        }
        bytes_in += self.stats.retired_in.load(Ordering::Relaxed);
        bytes_out += self.stats.retired_out.load(Ordering::Relaxed);
        (bytes_in, bytes_out)
    }
}
