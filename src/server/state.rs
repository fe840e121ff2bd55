//! The server's shared state: sessions, tunnels, the ports they hold, and counters.
//!
//! Owns who holds which port and the rules for claiming one; it does not bind sockets
//! (the session does, then records the result here) or talk to peers.

use crate::config::ServerConfig;
use crate::protocol::{Proto, CLIENT_ID_LEN};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Process-wide counters (Prometheus `pipe_*`).
#[derive(Debug, Default)]
pub struct GlobalStats {
    pub auth_failures: AtomicU64,
    pub connections_active: AtomicU64,
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
}

/// Something the rest of the server asks a session's control loop to do.
#[derive(Debug)]
pub enum SessionEvent {
    /// The operator closed a tunnel: tell the client.
    TunnelClosed { forward_id: u32, reason: String },
}

#[derive(Debug)]
pub struct SessionInfo {
    pub id: u64,
    pub client_id: [u8; CLIENT_ID_LEN],
    pub addr: SocketAddr,
    pub since: SystemTime,
    pub software: String,
    /// Cancelled to end the session (takeover, shutdown).
    pub stop: CancellationToken,
    /// Cancelled once the session has released all its ports.
    pub closed: CancellationToken,
    pub events: mpsc::UnboundedSender<SessionEvent>,
}

#[derive(Debug)]
pub struct TunnelInfo {
    pub id: u64,
    pub session_id: u64,
    pub forward_id: u32,
    pub proto: Proto,
    /// Public port (the internal one for `Http`).
    pub port: u16,
    pub url: Option<String>,
    pub local: String,
    pub since: SystemTime,
    pub speed_limit: Option<u64>,
    /// Visitor rules enforced by piped (open for `Http`: Caddy enforces those).
    pub access: super::access::Access,
    /// `Http` only: Caddy names each connection's visitor (`real_addr`).
    pub visitor_from_caddy: bool,
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
}

/// Marker in the port map for a port being bound but not yet owned by a tunnel.
const RESERVING: u64 = 0;

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
        }
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

    /// Candidate ports for "any port": every allowed port not held, from a random start.
    pub fn free_port_candidates(&self, udp: bool, limit: usize) -> Vec<u16> {
        let set = &self.config.ports;
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

    pub fn remove_session(&self, id: u64) {
        self.lock().sessions.remove(&id);
    }

    /// Other live sessions of the same client (a reconnect after a network failure).
    pub fn sessions_of_client(
        &self,
        client_id: &[u8; CLIENT_ID_LEN],
        except: u64,
    ) -> Vec<Arc<SessionInfo>> {
        self.lock()
            .sessions
            .values()
            .filter(|s| &s.client_id == client_id && s.id != except)
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
        reg.subdomains.retain(|_, v| *v != id);
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
        state
            .stats
            .connections_active
            .fetch_add(1, Ordering::Relaxed);
        let total = match tunnel.proto {
            Proto::Udp => &state.stats.connections_udp,
            Proto::Tcp | Proto::Http => &state.stats.connections_tcp,
        };
        total.fetch_add(1, Ordering::Relaxed);
        ConnGuard { state, tunnel }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.tunnel.stats.active.fetch_sub(1, Ordering::Relaxed);
        self.state
            .stats
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
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
