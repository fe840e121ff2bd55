//! The admin JSON API: read-only views of sessions and tunnels, the operator's close,
//! and Caddy's on-demand TLS check.
//!
//! Owns the JSON shapes (they are part of the product: scripts read them); the numbers
//! come from `State` as they are at the time of the request.

use super::Shared;
use crate::protocol::Proto;
use crate::server::state::{State, TunnelInfo, LOCAL_DOWN, LOCAL_UP};
use crate::VERSION_LINE;
use axum::extract::{Path, Query, State as Ext};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::info;

/// The reason the client is given (and logs) when the operator closes its tunnel.
pub const CLOSED_BY_OPERATOR: &str = "closed by the operator";

#[derive(Serialize)]
pub struct ErrorBody {
    pub error: &'static str,
}

/// `GET /api/server`: uptime and totals since start.
#[derive(Serialize)]
pub struct ServerView {
    pub version: &'static str,
    /// The server's clock (unix seconds), so a page can show ages without trusting
    /// the viewer's clock.
    pub now: u64,
    /// Unix seconds.
    pub started: u64,
    pub uptime_secs: u64,
    pub clients: usize,
    pub tunnels: usize,
    /// Live TCP (and http) visitor connections.
    pub connections_active: u64,
    /// UDP senders with a live mapping (not connections: each lingers until idle).
    pub udp_peers_active: u64,
    pub connections_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub auth_failures: u64,
    /// `sha256:HEX` of the certificate made with `--tls-self-signed`, for clients'
    /// `--tls-fingerprint`.
    pub tls_fingerprint: Option<String>,
}

/// `GET /api/clients`: one per live session.
#[derive(Serialize)]
pub struct ClientView {
    pub id: u64,
    /// The user logged in, on a server with a users file.
    pub user: Option<String>,
    pub addr: String,
    /// What the client calls itself (`pipec --name`, else its host name).
    pub name: String,
    /// Unix seconds.
    pub since: u64,
    /// What the client said it runs (its `--version` line).
    pub version: String,
    pub tunnels: usize,
    /// The client's connections to this server, joined as one session
    /// (`pipec --connections`).
    pub connections: usize,
    /// Visitor streams open on each of them now, in the order they joined.
    pub streams: Vec<usize>,
}

/// `GET /api/tunnels`: one per live tunnel.
#[derive(Serialize)]
pub struct TunnelView {
    pub id: u64,
    /// What the client named the forward (`name=web`), else [`TunnelView::key`].
    pub name: String,
    /// The tunnel's unique, stable key: the subdomain, or `PROTO:PORT` (clients get
    /// their ports back after a reconnect). The dashboard's history is kept by it.
    pub key: String,
    /// The session (`ClientView::id`) that owns the tunnel.
    pub client: u64,
    /// The user whose session owns the tunnel, on a server with a users file.
    pub user: Option<String>,
    pub client_addr: Option<String>,
    /// The owning client's name (`ClientView::name`).
    pub client_name: Option<String>,
    pub proto: &'static str,
    /// The public port (for `http`, the internal port Caddy proxies to).
    pub port: u16,
    /// The public URL of an `http` tunnel.
    pub url: Option<String>,
    /// Where visitors reach it, whole: `https://sub.example.com`, or
    /// `tcp://HOST:PORT` / `udp://HOST:PORT` with the host the client dialled (as its
    /// `forwarding` line says); `None` when that host is not known.
    pub public: Option<String>,
    /// `up` or `down`: whether the local service answered the latest visitor, as the
    /// client said; `None` before the client said anything.
    pub local_service: Option<&'static str>,
    /// Unix seconds of that report.
    pub local_service_since: Option<u64>,
    /// Unix seconds of the latest visitor.
    pub last_visitor: Option<u64>,
    /// The target on the client's side, as the client named it.
    pub local: String,
    /// Unix seconds.
    pub since: u64,
    pub connections: u64,
    pub connections_total: u64,
    /// Bytes received from public visitors.
    pub bytes_in: u64,
    /// Bytes sent to public visitors.
    pub bytes_out: u64,
    /// Bytes per second, when the tunnel is shaped.
    pub speed_limit: Option<u64>,
    /// The cluster node holding the tunnel (this one), when clustered.
    pub node: Option<String>,
}

/// `GET /api/cluster`.
#[derive(Serialize)]
pub struct ClusterView {
    /// This node's name; `None` for a single `piped`.
    pub node: Option<String>,
    pub nodes: Vec<NodeView>,
    /// Every claim of the cluster and the node holding it.
    pub claims: Vec<ClaimView>,
    /// Why the directory could not be read, when it could not.
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct NodeView {
    pub name: String,
    pub peer: String,
    /// Unix seconds of its last registration.
    pub last_seen: u64,
    /// `up`, or `down` once it has missed two renewals (its registration still lasts
    /// the lease, so a node that comes back keeps its place).
    pub state: &'static str,
    pub up: bool,
    /// Claims (ports, subdomains) it holds.
    pub tunnels: usize,
}

#[derive(Serialize)]
pub struct ClaimView {
    /// `tcp:9000`, `udp:5353`, `sub:myapp`.
    pub key: String,
    pub node: String,
}

pub async fn cluster(Ext(admin): Ext<Shared>) -> Json<ClusterView> {
    let Some(c) = admin.state.cluster() else {
        return Json(ClusterView {
            node: None,
            nodes: Vec::new(),
            claims: Vec::new(),
            error: None,
        });
    };
    let mut view = ClusterView {
        node: Some(c.node.clone()),
        nodes: Vec::new(),
        claims: Vec::new(),
        error: None,
    };
    match c.overview().await {
        Ok((nodes, claims)) => {
            let mut held: HashMap<&str, usize> = HashMap::new();
            for (_, node) in &claims {
                *held.entry(node.as_str()).or_default() += 1;
            }
            view.nodes = nodes
                .into_iter()
                .map(|n| NodeView {
                    tunnels: held.get(n.name.as_str()).copied().unwrap_or(0),
                    state: if n.is_up() { "up" } else { "down" },
                    up: n.is_up(),
                    name: n.name,
                    peer: n.peer,
                    last_seen: n.seen,
                })
                .collect();
            view.claims = claims
                .into_iter()
                .map(|(key, node)| ClaimView { key, node })
                .collect();
        }
        Err(e) => view.error = Some(e),
    }
    if view.error.is_none() {
        view.error = c
            .last_error()
            .map(|e| format!("the last renewal failed: {e}"));
    }
    Json(view)
}

/// A tunnel's name: the one its client gave it, else its key. Both survive restarts.
pub fn tunnel_name(t: &TunnelInfo) -> String {
    t.name.clone().unwrap_or_else(|| tunnel_key(t))
}

/// A tunnel's key, unique on the server and stable across reconnects: the subdomain
/// of an http tunnel, else `PROTO:PORT`.
pub fn tunnel_key(t: &TunnelInfo) -> String {
    let sub = t
        .url
        .as_deref()
        .and_then(|u| u.strip_prefix("https://"))
        .and_then(|h| h.split('.').next());
    match sub {
        Some(sub) => sub.to_string(),
        None => format!("{}:{}", t.proto.as_str(), t.port),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub async fn server(Ext(admin): Ext<Shared>) -> Json<ServerView> {
    let st = &admin.state;
    let s = &st.stats;
    let (bytes_in, bytes_out) = st.byte_totals();
    Json(ServerView {
        version: VERSION_LINE,
        now: unix(SystemTime::now()),
        started: unix(st.started),
        uptime_secs: st.started_at.elapsed().as_secs(),
        clients: st.sessions().len(),
        tunnels: st.tunnels().len(),
        connections_active: s.connections_active.load(Ordering::Relaxed),
        udp_peers_active: s.udp_peers_active.load(Ordering::Relaxed),
        connections_total: s.connections_tcp.load(Ordering::Relaxed)
            + s.connections_udp.load(Ordering::Relaxed),
        bytes_in,
        bytes_out,
        auth_failures: s.auth_failures.total(),
        tls_fingerprint: st.tls_fingerprint.clone(),
    })
}

pub async fn clients(Ext(admin): Ext<Shared>) -> Json<Vec<ClientView>> {
    let mut per_session: HashMap<u64, usize> = HashMap::new();
    for t in admin.state.tunnels() {
        *per_session.entry(t.session_id).or_default() += 1;
    }
    let views = admin
        .state
        .sessions()
        .iter()
        .map(|s| ClientView {
            id: s.id,
            user: s.owner.user.as_deref().map(str::to_string),
            addr: s.addr.to_string(),
            name: s.about.name.clone(),
            since: unix(s.since),
            version: s.software.clone(),
            tunnels: per_session.get(&s.id).copied().unwrap_or(0),
            connections: s.links.len(),
            streams: s.links.loads(),
        })
        .collect();
    Json(views)
}

/// What a tunnel's row says of the session that owns it.
#[derive(Default)]
struct Owner {
    addr: Option<String>,
    name: Option<String>,
    /// The host the client dialled; empty when it did not say.
    host: String,
}

pub async fn tunnels(Ext(admin): Ext<Shared>) -> Json<Vec<TunnelView>> {
    let owners: HashMap<u64, Owner> = admin
        .state
        .sessions()
        .iter()
        .map(|s| {
            let o = Owner {
                addr: Some(s.addr.to_string()),
                name: Some(s.about.name.clone()).filter(|n| !n.is_empty()),
                host: s.about.server_host.clone(),
            };
            (s.id, o)
        })
        .collect();
    let cluster = admin.state.cluster();
    let node = cluster.as_ref().map(|c| c.node.as_str());
    let none = Owner::default();
    let views = admin
        .state
        .tunnels()
        .iter()
        .map(|t| tunnel_view(t, owners.get(&t.session_id).unwrap_or(&none), node))
        .collect();
    Json(views)
}

/// The address a visitor uses, whole, as the client's `forwarding` line gives it.
fn public_address(t: &TunnelInfo, host: &str) -> Option<String> {
    match (&t.url, t.proto) {
        (Some(url), _) => Some(url.clone()),
        (None, _) if host.is_empty() => None,
        (None, Proto::Udp) => Some(format!("udp://{host}:{}", t.port)),
        (None, _) => Some(format!("tcp://{host}:{}", t.port)),
    }
}

fn tunnel_view(t: &TunnelInfo, owner: &Owner, node: Option<&str>) -> TunnelView {
    let st = &t.stats;
    let local_service = match st.local.load(Ordering::Relaxed) {
        LOCAL_UP => Some("up"),
        LOCAL_DOWN => Some("down"),
        _ => None,
    };
    let when =
        |a: &std::sync::atomic::AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&s| s > 0);
    TunnelView {
        id: t.id,
        name: tunnel_name(t),
        key: tunnel_key(t),
        client: t.session_id,
        user: t.user.as_deref().map(str::to_string),
        client_addr: owner.addr.clone(),
        client_name: owner.name.clone(),
        proto: t.proto.as_str(),
        port: t.port,
        url: t.url.clone(),
        public: public_address(t, &owner.host),
        local_service,
        local_service_since: local_service.and(when(&st.local_since)),
        last_visitor: when(&st.last_visitor),
        local: t.local.clone(),
        since: unix(t.since),
        connections: st.active.load(Ordering::Relaxed),
        connections_total: st.total.load(Ordering::Relaxed),
        bytes_in: st.bytes_in.load(Ordering::Relaxed),
        bytes_out: st.bytes_out.load(Ordering::Relaxed),
        speed_limit: t.speed_limit,
        node: node.map(str::to_string),
    }
}

/// `DELETE /api/tunnels/{id}`: frees the public port at once and tells the client,
/// which drops that forward for good and keeps its others.
pub async fn close_tunnel(Ext(admin): Ext<Shared>, Path(id): Path<u64>) -> Response {
    let tunnel = admin.state.tunnel(id);
    if !admin.state.close_tunnel(id, CLOSED_BY_OPERATOR) {
        let body = ErrorBody {
            error: "no such tunnel",
        };
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    if let Some(t) = tunnel {
        info!(tunnel = id, proto = %t.proto, port = t.port, "tunnel closed by the operator");
    }
    Json(serde_json::json!({ "closed": id })).into_response()
}

/// `DELETE /api/users/{name}/sessions`: ends every session of a user (each client
/// reconnects, and gets in again only if its token is still good).
pub async fn end_user_sessions(Ext(admin): Ext<Shared>, Path(name): Path<String>) -> Response {
    let known = admin
        .state
        .accounts
        .as_ref()
        .is_some_and(|a| a.current().get(&name).is_some());
    let sessions = admin.state.sessions_of_user(Some(&name));
    if !known && sessions.is_empty() {
        let body = ErrorBody {
            error: "no such user",
        };
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    for s in &sessions {
        s.stop.cancel();
    }
    info!(user = %name, sessions = sessions.len(), "user's sessions ended by the operator");
    Json(serde_json::json!({ "user": name, "ended": sessions.len() })).into_response()
}

#[derive(Deserialize)]
pub struct AskQuery {
    domain: String,
}

/// `GET /caddy/ask?domain=HOST`: may Caddy get a certificate for HOST?
pub async fn caddy_ask(Ext(admin): Ext<Shared>, Query(q): Query<AskQuery>) -> StatusCode {
    if is_live_host(&admin.state, &q.domain) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

/// Host names are case-insensitive and may end in a root dot.
fn is_live_host(state: &State, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    state.has_subdomain_host(&host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;
    use crate::server::state::TunnelStats;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn caddy_ask_knows_live_subdomains_only() {
        let mut cfg = ServerConfig::for_tests();
        cfg.domain = Some("tunnels.example.com".into());
        let state = State::new(cfg);
        assert!(state.reserve_subdomain("myapp"));
        // Reserved but not yet live: Caddy must not get a certificate for it yet.
        assert!(!is_live_host(&state, "myapp.tunnels.example.com"));
        let tunnel = TunnelInfo {
            id: state.next_id(),
            session_id: 1,
            user: None,
            forward_id: 0,
            proto: Proto::Http,
            port: 40000,
            url: Some("https://myapp.tunnels.example.com".into()),
            name: None,
            local: "localhost:3000".into(),
            since: SystemTime::now(),
            speed_limit: None,
            access: Default::default(),
            visitor_from_caddy: false,
            sign_in: false,
            stats: TunnelStats::default(),
            stop: CancellationToken::new(),
        };
        state.add_tunnel(Arc::new(tunnel), Some("myapp"));
        assert!(is_live_host(&state, "myapp.tunnels.example.com"));
        assert!(is_live_host(&state, "MyApp.Tunnels.Example.com."));
        assert!(!is_live_host(&state, "other.tunnels.example.com"));
        assert!(!is_live_host(&state, "myapp.example.com"));
        assert!(!is_live_host(&state, "tunnels.example.com"));
    }
}
