//! What the rest of the server asks of the directory, whichever one is behind it.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;
use tokio::sync::broadcast;

/// Longest a directory call may take before it counts as unavailable: a visitor or
/// a Forward waits on it. Redis on the same network answers in well under a
/// millisecond; one second also covers a managed Redis across a region.
pub const DIR_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Something unique across the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ClaimKey {
    Tcp(u16),
    Udp(u16),
    Subdomain(String),
}

impl ClaimKey {
    /// The key's name in the directory (`tcp:9000`, `udp:5353`, `sub:myapp`).
    pub fn name(&self) -> String {
        match self {
            ClaimKey::Tcp(p) => format!("tcp:{p}"),
            ClaimKey::Udp(p) => format!("udp:{p}"),
            ClaimKey::Subdomain(s) => format!("sub:{s}"),
        }
    }

    /// The inverse of [`ClaimKey::name`]; `None` for anything else.
    pub fn parse(name: &str) -> Option<ClaimKey> {
        let (kind, rest) = name.split_once(':')?;
        match kind {
            "tcp" => rest.parse().ok().map(ClaimKey::Tcp),
            "udp" => rest.parse().ok().map(ClaimKey::Udp),
            "sub" if crate::config::valid_subdomain(rest) => {
                Some(ClaimKey::Subdomain(rest.to_string()))
            }
            _ => None,
        }
    }
}

impl fmt::Display for ClaimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClaimKey::Tcp(p) => write!(f, "port {p}"),
            ClaimKey::Udp(p) => write!(f, "udp port {p}"),
            ClaimKey::Subdomain(s) => write!(f, "subdomain {s}"),
        }
    }
}

/// Who holds a claim: the node serving it, and the owner behind it (a user and the
/// client that proved its secret), so the owner's reconnect to any node takes it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub node: String,
    /// Opaque to the directory; equal owners may take over each other's claims.
    pub owner: String,
    /// The holding node's tunnel id, so the node can tell two claims of one owner apart.
    pub tunnel: u64,
    /// What every node enforces on the tunnel's visitors, so a visitor who reaches a
    /// node that does not hold the tunnel meets the same rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Rules>,
}

/// A tunnel's visitor rules as the directory carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<crate::protocol::Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<crate::protocol::Cidr>,
    /// http forwards: the user name and bcrypt hash Caddy checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<(String, String)>,
    /// http forwards: Caddy names the visitor in a request header.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub visitor_header: bool,
    /// http forwards with `auth=oidc`: the `oidc-allow` patterns (every node's Caddy
    /// asks its own node's sign-in gate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sign_in: Option<Vec<String>>,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The claim is ours, under a fresh lease (taken over, when the same owner held it).
    Granted,
    /// Another owner holds it.
    Taken(Holder),
    /// The directory has just started over (restarted empty, or a replica took over
    /// that may have missed writes): a key it does not hold may still be served by a
    /// live node that has not re-asserted it yet, so it is granted to nobody for the
    /// time left (one lease from the new start).
    Recovering(Duration),
}

/// What a renewal found for one claim of this node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// Still ours; the lease runs again from the renewal.
    Kept,
    /// Gone from the directory (it forgot: restart, failover) and written back as ours.
    Reasserted,
    /// Someone else holds it now: this node must stop serving it.
    Lost(Holder),
}

/// A node of the cluster, as it registers itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    /// Where other nodes dial its peer listener.
    pub peer: String,
    /// Unix seconds of its last registration.
    pub seen: u64,
    /// How often the node renews, in milliseconds: two renewals missed make it `down`.
    #[serde(default)]
    pub every_ms: u64,
    /// The lease its registration is written under, in milliseconds.
    #[serde(default)]
    pub lease_ms: u64,
    /// Filled in by [`Directory::nodes`]: how long ago the node last renewed, by the
    /// directory's own clock (`None` when the directory cannot say).
    #[serde(skip)]
    pub since_renewal: Option<Duration>,
}

impl NodeInfo {
    /// Has the node renewed within two of its intervals (plus one call's time)? A node
    /// that has missed two renewals is `down`, though its registration lasts a lease.
    pub fn is_up(&self) -> bool {
        match self.since_renewal {
            Some(ago) => ago <= Duration::from_millis(self.every_ms) * 2 + DIR_CALL_TIMEOUT,
            None => true,
        }
    }
}

/// What changed in the directory, for nodes that listen on every claimed port.
///
/// The holder is boxed: the event channel keeps `EVENT_BACKLOG` events in place from
/// the start, and an inline `Holder` (its rules included) made each event 216 bytes,
/// 0.9 MiB of every cluster node's memory before its first claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirEvent {
    Claimed(ClaimKey, Box<Holder>),
    Released(ClaimKey),
    /// Events may have been missed (the directory was unreachable): read it whole.
    Resync,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirError {
    /// An outage: the directory cannot be reached or did not answer in time; `detail`
    /// says what failed and where (for `/api/cluster` and the log).
    #[error("cluster directory unavailable")]
    Unavailable { detail: String },
    /// The directory holds something we did not write (our bug, or a foreign writer).
    #[error("cluster directory holds an unreadable entry")]
    Corrupt { detail: String },
}

/// The directory of claims and nodes. Calls are bounded by [`DIR_CALL_TIMEOUT`].
pub trait Directory: Send + Sync {
    /// Takes `key` for `holder` under a lease of `lease`, unless another owner holds it.
    fn claim<'a>(
        &'a self,
        key: &'a ClaimKey,
        holder: &'a Holder,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claimed, DirError>>;

    /// One round trip for a node's whole state: registers `node`, and renews each of
    /// `held` that is still its own, writes back those the directory forgot, and says
    /// which are lost; answers in `held`'s order. Its lease counts from before the call.
    fn renew_all<'a>(
        &'a self,
        node: &'a NodeInfo,
        held: &'a [(ClaimKey, Holder)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Renewed>, DirError>>;

    /// Frees `key` if `holder` holds it (compare-and-delete); `false` when it did not.
    fn release<'a>(
        &'a self,
        key: &'a ClaimKey,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<bool, DirError>>;

    fn lookup<'a>(&'a self, key: &'a ClaimKey) -> BoxFuture<'a, Result<Option<Holder>, DirError>>;

    /// Every live claim (for a reconcile after [`DirEvent::Resync`], and periodically).
    fn claims(&self) -> BoxFuture<'_, Result<Vec<(ClaimKey, Holder)>, DirError>>;

    /// Registers or refreshes a node under a lease.
    fn register_node<'a>(
        &'a self,
        node: &'a NodeInfo,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), DirError>>;

    /// The nodes whose registration has not expired.
    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, DirError>>;

    /// The last login proof any node accepted from `client` (an owner key), hex.
    fn last_proof<'a>(&'a self, client: &'a str)
        -> BoxFuture<'a, Result<Option<String>, DirError>>;

    /// Records `new` as `client`'s last proof if the record is still `expected`
    /// (`None`: no record); `false` when another login moved it first.
    fn advance_proof<'a>(
        &'a self,
        client: &'a str,
        expected: Option<&'a str>,
        new: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, DirError>>;

    /// Changes as they happen. A receiver that lags gets `RecvError::Lagged` and must
    /// read the directory whole, as after [`DirEvent::Resync`].
    fn subscribe(&self) -> broadcast::Receiver<DirEvent>;
}

/// How many events a slow subscriber may fall behind before it must resync. Events come
/// one per claim taken or let go; a burst beyond this (a node re-asserting over a
/// thousand claims at once) costs the subscriber one read of the whole directory,
/// which is what it does every reconcile tick anyway. The channel allocates every slot
/// up front (a few dozen bytes each).
pub(super) const EVENT_BACKLOG: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_small_however_large_a_holder_grows() {
        // The event channel allocates its EVENT_BACKLOG slots when the directory
        // connects; with the holder inline an event took 216 bytes, 0.9 MiB a node.
        let size = std::mem::size_of::<DirEvent>();
        assert!(size <= 40, "{size} bytes");
    }

    #[test]
    fn key_names_round_trip_and_refuse_anything_else() {
        for k in [
            ClaimKey::Tcp(9000),
            ClaimKey::Udp(53),
            ClaimKey::Subdomain("my-app".into()),
        ] {
            assert_eq!(ClaimKey::parse(&k.name()), Some(k));
        }
        for bad in [
            "tcp:",
            "tcp:70000",
            "sub:Bad_Name",
            "sub:a.b",
            "x:1",
            "",
            "tcp",
        ] {
            assert_eq!(ClaimKey::parse(bad), None, "{bad:?}");
        }
    }
}
