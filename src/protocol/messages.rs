//! Control-stream and data-stream message types.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Length of the login nonce and of the HMAC-SHA256 tag.
pub const NONCE_LEN: usize = 32;
/// Length of a proof-chain link (a SHA-256 digest).
pub const PROOF_LEN: usize = 32;
/// Longest user name a login may carry.
pub const MAX_USER_NAME: usize = 64;
/// Characters of a client's name (`ClientMsg::Login::name`) the server keeps.
pub const MAX_CLIENT_NAME: usize = 64;
/// Longest server host (`ClientMsg::Login::server_host`) the server takes: a DNS name.
pub const MAX_HOST_NAME: usize = 253;
/// Length of the random id a `pipec` process keeps across reconnects.
pub const CLIENT_ID_LEN: usize = 16;
/// Length of the secret a session hands its client for joining more connections to it.
pub const JOIN_KEY_LEN: usize = 32;

/// The first frame a client sends on the control stream.
///
/// Its first two fields are frozen across protocol versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u16,
    /// The client's software version, for the operator's eyes only.
    pub software: String,
}

/// The server's answer to `Hello`: its version and a fresh login challenge.
///
/// Its first field is frozen across protocol versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    pub version: u16,
    pub nonce: [u8; NONCE_LEN],
    /// Set when the server refuses the connection before login (version mismatch).
    pub refusal: Option<String>,
}

/// Transport protocol of a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Proto {
    Tcp,
    Udp,
    /// HTTPS through the server's Caddy: a TCP forward published as a subdomain.
    Http,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Http => "http",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A forward the client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// Client-chosen id, unique within the client; echoed in every answer and in the
    /// header of each data stream.
    pub id: u32,
    pub proto: Proto,
    /// Public port; 0 lets the server choose. Ignored for `Http`.
    pub remote_port: u16,
    /// For `Http`: the wanted subdomain, or `None` for a random one.
    pub subdomain: Option<String>,
    /// Bytes per second per direction the client wants this tunnel limited to.
    pub speed_limit: Option<u64>,
    /// Human-readable local target (`localhost:3000`), shown on the admin page.
    pub local: String,
    /// Visitor rules and the PROXY protocol choice (protocol v2).
    pub options: super::ForwardOptions,
}

/// Messages the client sends on the control stream after `Hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    Login {
        /// The account logging in (`pipec --user`); `None` on a single-token server.
        user: Option<String>,
        /// Names the `pipec` process across reconnects: the hash that ends the client's
        /// proof chain (see `accounts::proof`). Not a credential by itself.
        client_id: [u8; CLIENT_ID_LEN],
        /// HMAC-SHA256(token, nonce || client_id || user); all zeros on an open server.
        mac: [u8; NONCE_LEN],
        /// The next unused link of the client's proof chain: lets a reconnecting client
        /// take over its own live claims, and nobody else. All zeros in a join.
        proof: [u8; PROOF_LEN],
        /// Join this connection to the live session whose `LoginOk` carried this key,
        /// as one more link of the same client (protocol v5): no claims of its own,
        /// the server opens visitor streams on it too. `None`: a session of its own.
        join: Option<[u8; JOIN_KEY_LEN]>,
        /// What the client calls itself (`pipec --name`, else its host name), for the
        /// operator's eyes; the server keeps at most `MAX_CLIENT_NAME` characters.
        name: String,
        /// The server's host as the client dialled it: where visitors reach the
        /// tunnels' ports, as the client prints them. Empty in a join.
        server_host: String,
    },
    Forward(ForwardRequest),
    /// Stop a forward; the server frees its port.
    Cancel {
        id: u32,
    },
    Heartbeat,
    /// Whether the local service of forward `id` answered the latest visitor (sent
    /// when that changes): the operator's page shows it.
    LocalService {
        id: u32,
        up: bool,
    },
}

/// Messages the server sends on the control stream after `ServerHello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    LoginOk {
        session_id: u64,
        /// The secret that joins more connections to this session (`Login::join`);
        /// all zeros in the answer to a join.
        join_key: [u8; JOIN_KEY_LEN],
        /// How many connections this server lets one session have in all (protocol v5).
        max_links: u16,
    },
    LoginRefused {
        reason: String,
        /// `true`: this server cannot serve the client now (no cluster directory, at a
        /// capacity cap) but another one, or this one later, may: try elsewhere. `false`:
        /// the credentials are wrong, and no server will take them (exit 3).
        retry: bool,
    },
    ForwardOk {
        id: u32,
        /// The public port, or 0 for `Http`.
        remote_port: u16,
        /// For `Http`: the public URL (`https://sub.example.com`).
        url: Option<String>,
    },
    ForwardRefused {
        id: u32,
        reason: String,
        /// `true`: refused for a reason of this server's (its cluster directory is
        /// unavailable or recovering): another server, or this one later, may grant
        /// it. `false`: the forward itself is refused (port taken, not allowed).
        retry: bool,
    },
    /// The server closed a forward (operator action); the client must not re-register it.
    Closed {
        id: u32,
        reason: String,
    },
    Heartbeat,
    /// The server is ending this session, and says why before it goes (protocol v4):
    /// `retry` when another server of the cluster can serve the client now (this node
    /// lost its directory, or is stopping), else the reason is the client's (its token
    /// was changed) and reconnecting here will say so again.
    Ending {
        reason: String,
        retry: bool,
    },
}

/// First frame of every data stream the server opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub forward_id: u32,
    /// The public visitor (TCP) or `None` for the UDP stream of a forward.
    pub visitor: Option<SocketAddr>,
    /// The public address the visitor reached (the destination of a PROXY header), when
    /// known (protocol v2).
    pub public: Option<SocketAddr>,
}

/// The one byte a client writes on a new TCP data stream once the local dial
/// succeeded. A stream closed without it means the dial failed.
pub const STREAM_CONNECTED: u8 = 1;
