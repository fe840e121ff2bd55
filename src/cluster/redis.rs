//! The directory in Redis (or Valkey): one key per claim, its value the holder as
//! JSON, its expiry the lease; one key per node likewise. Every step that reads and
//! then writes (claim, renew, release) is one Lua script, which Redis runs atomically,
//! and claims and releases are published on a channel for the other nodes.
//!
//! Layout (a cluster is a Redis database; `redis://host:port/DB` picks it):
//! `pipe:claim:tcp:9000` → `{"node":"a","owner":"…","tunnel":7}` with a TTL;
//! `pipe:node:a` → `{"name":"a","peer":"10.0.0.1:8920","seen":…}` with a TTL;
//! `pipe:epoch` → `REPLID GRACE_UNTIL_MS` (see below);
//! channel `pipe:events` ← `{"op":"claimed","key":"tcp:9000","holder":"{…}"}` and
//! `{"op":"released","key":"tcp:9000"}`. A lease that expires publishes nothing: the
//! nodes' periodic reconcile ([`Directory::claims`]) notices it.
//!
//! **A directory that forgets.** Redis restarted without persistence, or a replica
//! promoted by Sentinel that missed the last writes, has lost claims that live nodes
//! still serve. Every call that writes names the server it reached by its replication
//! id (`INFO replication`), which changes on both events; the scripts keep the id they
//! last saw in `pipe:epoch`, and when it differs a new epoch starts: for one lease
//! from the server's start (its uptime) — from now, after a promotion — a key the
//! directory does not hold is granted to nobody ([`Claimed::Recovering`]), while the
//! nodes that hold it write it back at their next renewal. A node stops serving a
//! claim before its lease can have run out (the fence, in `server::cluster`), so once
//! the grace is over every claim still served has been written back.
//!
//! `redis+sentinel://H:P[,H:P…]/MASTER` asks the Sentinels where the primary is at
//! every (re)connection; a call that fails drops the connection, so the next one asks
//! again and follows a failover.

use super::directory::*;
use super::scripts::{epoch_args, ADVANCE_PROOF, CLAIM, PRELUDE, RELEASE, RENEW_ALL};
use futures::future::{BoxFuture, FutureExt};
use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::AsyncConnectionConfig;
use serde::Deserialize;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, Mutex};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

const CLAIM_PREFIX: &str = "pipe:claim:";
const NODE_PREFIX: &str = "pipe:node:";
const PROOF_PREFIX: &str = "pipe:proof:";
const EPOCH_KEY: &str = "pipe:epoch";
const CHANNEL: &str = "pipe:events";
/// Keys asked for per SCAN step: large enough that a directory of 10,000 claims is
/// read in a handful of round trips, small enough not to stall Redis.
const SCAN_COUNT: usize = 1000;
/// SCAN steps at most in one listing (bounded work even on a huge foreign database).
const SCAN_STEPS: usize = 10_000;
/// Waits between tries to re-subscribe after Redis went away: the first is short (a
/// restart takes about a second), then doubling up to the last.
const RESUBSCRIBE_FIRST: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);

/// Where the primary is: one address, or whatever the Sentinels say now.
enum Source {
    Plain(redis::Client),
    Sentinel {
        client: Mutex<SentinelClient>,
        /// `sentinel H:P,… master NAME`, for error details.
        describe: String,
    },
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::Plain(c) => format!("redis {}", c.get_connection_info().addr()),
            Source::Sentinel { describe, .. } => describe.clone(),
        }
    }

    /// A client for the primary as of now.
    async fn primary(&self) -> Result<redis::Client, DirError> {
        match self {
            Source::Plain(c) => Ok(c.clone()),
            Source::Sentinel { client, describe } => {
                let mut s = client.lock().await;
                bounded_at(describe, s.async_get_client()).await
            }
        }
    }
}

pub struct RedisDirectory {
    source: Arc<Source>,
    /// The connection in use; dropped after a failed call so the next one dials
    /// afresh (and, with Sentinel, asks where the primary is now).
    conn: Mutex<Option<MultiplexedConnection>>,
    events: broadcast::Sender<DirEvent>,
    _listener: AbortOnDropHandle<()>,
}

fn unavailable(e: impl std::fmt::Display) -> DirError {
    DirError::Unavailable {
        detail: e.to_string(),
    }
}

/// What went wrong with a Redis call, in words an operator acts on.
fn explain(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    if e.is_connection_refusal() {
        return "connection refused".into();
    }
    match e.kind() {
        redis::ErrorKind::AuthenticationFailed => "authentication failed".into(),
        _ => e.to_string(),
    }
}

/// Runs one Redis call under [`DIR_CALL_TIMEOUT`]; an error names `at`.
async fn bounded_at<T>(
    at: &str,
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, DirError> {
    match tokio::time::timeout(DIR_CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(format!("{at}: {}", explain(&e)))),
        Err(_) => Err(unavailable(format!(
            "{at}: no answer within {DIR_CALL_TIMEOUT:?}"
        ))),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Plain structs of strings and integers always serialise.
    serde_json::to_string(v).unwrap_or_default()
}

fn parse_holder(json: &str) -> Result<Holder, DirError> {
    serde_json::from_str(json).map_err(|e| DirError::Corrupt {
        detail: format!("holder {json:?}: {e}"),
    })
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

impl RedisDirectory {
    /// Connects to `url` (`redis://HOST:PORT[/DB]`, `rediss://` for TLS, or
    /// `redis+sentinel://H:P[,H:P…]/MASTER`). Fails when the URL is bad or the
    /// directory cannot be reached now; later outages are survived (calls fail with
    /// [`DirError::Unavailable`] until it is back).
    pub async fn connect(url: &str) -> Result<RedisDirectory, DirError> {
        let source = if url.starts_with("redis+sentinel://") {
            let (hosts, master) = crate::config::parse_sentinel_url(url).ok_or_else(|| DirError::Unavailable {
                detail: "invalid cluster URL: expected redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER"
                    .into(),
            })?;
            let describe = format!("sentinel {} master {master}", hosts.join(","));
            let params: Vec<String> = hosts.iter().map(|h| format!("redis://{h}/")).collect();
            let client = SentinelClient::build(params, master, None, SentinelServerType::Master)
                .map_err(|e| DirError::Unavailable {
                    detail: format!("invalid cluster URL: {e}"),
                })?;
            Source::Sentinel {
                client: Mutex::new(client),
                describe,
            }
        } else {
            Source::Plain(redis::Client::open(url).map_err(|e| DirError::Unavailable {
                detail: format!("invalid cluster URL: {e}"),
            })?)
        };
        let source = Arc::new(source);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let listener = tokio::spawn(listen(source.clone(), events.clone()));
        let dir = RedisDirectory {
            source,
            conn: Mutex::new(None),
            events,
            _listener: AbortOnDropHandle::new(listener),
        };
        dir.connection().await?;
        Ok(dir)
    }

    /// The connection in use, dialled when there is none.
    async fn connection(&self) -> Result<MultiplexedConnection, DirError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let client = self.source.primary().await?;
        let at = format!("redis {}", client.get_connection_info().addr());
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(DIR_CALL_TIMEOUT))
            .set_response_timeout(Some(DIR_CALL_TIMEOUT));
        let c = bounded_at(
            &at,
            client.get_multiplexed_async_connection_with_config(&cfg),
        )
        .await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on the connection under [`DIR_CALL_TIMEOUT`]; a failure drops the
    /// connection, so that the next call dials again (and follows a failover).
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, DirError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection().await?;
        let r = bounded_at(&self.source.describe(), f(conn)).await;
        if r.is_err() {
            *self.conn.lock().await = None;
        }
        r
    }

    /// The arguments every writing script takes to check the epoch: fetched in the
    /// same pipeline as the script, so both reach the same server.
    fn info_pipe() -> redis::Pipeline {
        let mut p = redis::pipe();
        p.cmd("INFO").arg("replication").cmd("INFO").arg("server");
        p
    }

    /// Runs a writing script after reading the server's epoch, in one round trip.
    async fn write_script(
        &self,
        body: &'static str,
        keys: Vec<String>,
        args: impl Fn(&str, u64) -> Vec<String>,
    ) -> Result<redis::Value, DirError> {
        // INFO first, then the script with the epoch arguments of the same server: a
        // failover between the two would close the connection, failing both.
        let (replication, server): (String, String) = self
            .call(|mut c| async move { Self::info_pipe().query_async(&mut c).await })
            .await?;
        let (replid, ago) = epoch_args(&replication, &server);
        let src = format!("{PRELUDE}{body}");
        let argv = args(&replid, ago);
        self.call(|mut c| async move {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(&src).arg(keys.len()).arg(&keys).arg(&argv);
            cmd.query_async(&mut c).await
        })
        .await
    }

    /// Every key under `prefix` with its value (SCAN then MGET: a key that expires in
    /// between is left out).
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, String)>, DirError> {
        let pattern = format!("{prefix}*");
        let (mut cursor, mut keys) = (0u64, Vec::<String>::new());
        for _ in 0..SCAN_STEPS {
            let (next, mut batch): (u64, Vec<String>) = self
                .call(|mut c| {
                    let mut cmd = redis::cmd("SCAN");
                    cmd.arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT);
                    async move { cmd.query_async(&mut c).await }
                })
                .await?;
            keys.append(&mut batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        keys.sort();
        keys.dedup(); // SCAN may return a key twice
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(SCAN_COUNT) {
            let values: Vec<Option<String>> = self
                .call(|mut c| {
                    let mut cmd = redis::cmd("MGET");
                    cmd.arg(chunk);
                    async move { cmd.query_async(&mut c).await }
                })
                .await?;
            for (k, v) in chunk.iter().zip(values) {
                if let (Some(name), Some(v)) = (k.strip_prefix(prefix), v) {
                    out.push((name.to_string(), v));
                }
            }
        }
        Ok(out)
    }
}

/// Reads a script's `{'granted'}` / `{'taken', json}` / `{'recovering', ms}`.
fn claim_answer(v: redis::Value) -> Result<Claimed, DirError> {
    let parts: Vec<String> = redis::from_redis_value(v).map_err(|e| DirError::Corrupt {
        detail: format!("claim answer: {e}"),
    })?;
    match parts.first().map(String::as_str) {
        Some("granted") => Ok(Claimed::Granted),
        Some("taken") => Ok(Claimed::Taken(parse_holder(
            parts.get(1).map_or("", String::as_str),
        )?)),
        Some("recovering") => {
            let ms: u64 = parts.get(1).and_then(|m| m.parse().ok()).unwrap_or(0);
            Ok(Claimed::Recovering(Duration::from_millis(ms)))
        }
        _ => Err(DirError::Corrupt {
            detail: format!("claim answer {parts:?}"),
        }),
    }
}

impl Directory for RedisDirectory {
    fn claim<'a>(
        &'a self,
        key: &'a ClaimKey,
        holder: &'a Holder,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claimed, DirError>> {
        async move {
            let name = key.name();
            let keys = vec![format!("{CLAIM_PREFIX}{name}"), EPOCH_KEY.to_string()];
            let holder_json = to_json(holder);
            let v = self
                .write_script(CLAIM, keys, |replid, ago| {
                    vec![
                        holder_json.clone(),
                        holder.owner.clone(),
                        millis(lease).to_string(),
                        CHANNEL.to_string(),
                        name.clone(),
                        replid.to_string(),
                        ago.to_string(),
                    ]
                })
                .await?;
            claim_answer(v)
        }
        .boxed()
    }

    fn renew_all<'a>(
        &'a self,
        node: &'a NodeInfo,
        held: &'a [(ClaimKey, Holder)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Renewed>, DirError>> {
        async move {
            let mut keys = vec![EPOCH_KEY.to_string(), format!("{NODE_PREFIX}{}", node.name)];
            keys.extend(
                held.iter()
                    .map(|(k, _)| format!("{CLAIM_PREFIX}{}", k.name())),
            );
            let node_json = to_json(&stamped(node));
            let v = self
                .write_script(RENEW_ALL, keys, |replid, ago| {
                    let mut a = vec![
                        millis(lease).to_string(),
                        node_json.clone(),
                        replid.to_string(),
                        ago.to_string(),
                        CHANNEL.to_string(),
                    ];
                    for (k, h) in held {
                        a.push(to_json(h));
                        a.push(k.name());
                    }
                    a
                })
                .await?;
            let answers: Vec<redis::Value> =
                redis::from_redis_value(v).map_err(|e| DirError::Corrupt {
                    detail: format!("renewal answer: {e}"),
                })?;
            if answers.len() != held.len() {
                return Err(DirError::Corrupt {
                    detail: format!("{} answers for {} claims", answers.len(), held.len()),
                });
            }
            answers
                .into_iter()
                .map(|a| match a {
                    redis::Value::Int(1) => Ok(Renewed::Kept),
                    redis::Value::Int(2) => Ok(Renewed::Reasserted),
                    other => {
                        let json: String =
                            redis::from_redis_value(other).map_err(|e| DirError::Corrupt {
                                detail: format!("renewal answer: {e}"),
                            })?;
                        Ok(Renewed::Lost(parse_holder(&json)?))
                    }
                })
                .collect()
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        key: &'a ClaimKey,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<bool, DirError>> {
        async move {
            let name = key.name();
            let released: i64 = self
                .call(|mut c| {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(RELEASE)
                        .arg(1)
                        .arg(format!("{CLAIM_PREFIX}{name}"))
                        .arg(to_json(holder))
                        .arg(CHANNEL)
                        .arg(&name);
                    async move { cmd.query_async(&mut c).await }
                })
                .await?;
            Ok(released == 1)
        }
        .boxed()
    }

    fn lookup<'a>(&'a self, key: &'a ClaimKey) -> BoxFuture<'a, Result<Option<Holder>, DirError>> {
        async move {
            let k = format!("{CLAIM_PREFIX}{}", key.name());
            let json: Option<String> = self
                .call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
                .await?;
            json.map(|j| parse_holder(&j)).transpose()
        }
        .boxed()
    }

    fn claims(&self) -> BoxFuture<'_, Result<Vec<(ClaimKey, Holder)>, DirError>> {
        async move {
            let mut out = Vec::new();
            for (name, json) in self.scan(CLAIM_PREFIX).await? {
                match ClaimKey::parse(&name) {
                    Some(key) => out.push((key, parse_holder(&json)?)),
                    None => debug!(key = %name, "foreign key in the claim space ignored"),
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn register_node<'a>(
        &'a self,
        node: &'a NodeInfo,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), DirError>> {
        async move {
            let key = format!("{NODE_PREFIX}{}", node.name);
            let json = to_json(&stamped(node));
            let () = self
                .call(|mut c| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&json)
                        .arg("PX")
                        .arg(millis(lease))
                        .query_async(&mut c)
                        .await
                })
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, DirError>> {
        async move {
            let mut out = Vec::new();
            for (name, json) in self.scan(NODE_PREFIX).await? {
                let node: NodeInfo =
                    serde_json::from_str(&json).map_err(|e| DirError::Corrupt {
                        detail: format!("node {name}: {e}"),
                    })?;
                out.push(node);
            }
            // How long since each renewed, by Redis's clock: the registration's TTL
            // starts at the lease at every renewal.
            let keys: Vec<String> = out
                .iter()
                .map(|n| format!("{NODE_PREFIX}{}", n.name))
                .collect();
            if !keys.is_empty() {
                let ttls: Vec<i64> = self
                    .call(|mut c| {
                        let mut p = redis::pipe();
                        for k in &keys {
                            p.cmd("PTTL").arg(k);
                        }
                        async move { p.query_async(&mut c).await }
                    })
                    .await?;
                for (n, ttl) in out.iter_mut().zip(ttls) {
                    n.since_renewal = (ttl >= 0 && n.lease_ms > 0)
                        .then(|| Duration::from_millis(n.lease_ms.saturating_sub(ttl as u64)));
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        }
        .boxed()
    }

    fn last_proof<'a>(
        &'a self,
        client: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, DirError>> {
        async move {
            let k = format!("{PROOF_PREFIX}{client}");
            self.call(|mut c| async move { redis::cmd("GET").arg(&k).query_async(&mut c).await })
                .await
        }
        .boxed()
    }

    fn advance_proof<'a>(
        &'a self,
        client: &'a str,
        expected: Option<&'a str>,
        new: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, DirError>> {
        async move {
            let moved: i64 = self
                .call(|mut c| {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(ADVANCE_PROOF)
                        .arg(1)
                        .arg(format!("{PROOF_PREFIX}{client}"))
                        .arg(expected.unwrap_or(""))
                        .arg(new)
                        .arg(millis(ttl));
                    async move { cmd.query_async(&mut c).await }
                })
                .await?;
            Ok(moved == 1)
        }
        .boxed()
    }

    fn subscribe(&self) -> broadcast::Receiver<DirEvent> {
        self.events.subscribe()
    }
}

/// The node's record as written: `seen` is now.
fn stamped(node: &NodeInfo) -> NodeInfo {
    let mut node = node.clone();
    node.seen = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    node
}

/// A message on [`CHANNEL`].
#[derive(Deserialize)]
struct Published {
    op: String,
    key: String,
    holder: Option<String>,
}

fn event(payload: &str) -> Option<DirEvent> {
    let p: Published = serde_json::from_str(payload).ok()?;
    let key = ClaimKey::parse(&p.key)?;
    match (p.op.as_str(), p.holder) {
        ("claimed", Some(h)) => Some(DirEvent::Claimed(key, Box::new(parse_holder(&h).ok()?))),
        ("released", _) => Some(DirEvent::Released(key)),
        _ => None,
    }
}

/// Keeps a subscription to [`CHANNEL`] for as long as the directory lives, and turns
/// its messages into events. After every (re)subscription it sends `Resync`, since
/// whatever was published while it was away is lost.
async fn listen(source: Arc<Source>, events: broadcast::Sender<DirEvent>) {
    let mut wait = RESUBSCRIBE_FIRST;
    // Said once per outage, not at every try.
    let mut said = false;
    loop {
        let subscribed = async {
            let client = source.primary().await.map_err(|e| format!("{e:?}"))?;
            let mut pubsub = client.get_async_pubsub().await.map_err(|e| explain(&e))?;
            pubsub.subscribe(CHANNEL).await.map_err(|e| explain(&e))?;
            Ok::<_, String>(pubsub)
        };
        match tokio::time::timeout(DIR_CALL_TIMEOUT * 2, subscribed).await {
            Ok(Ok(pubsub)) => {
                if std::mem::take(&mut said) {
                    info!("the cluster directory's event channel is back");
                }
                wait = RESUBSCRIBE_FIRST;
                let _ = events.send(DirEvent::Resync);
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let payload: String = msg.get_payload().unwrap_or_default();
                    match event(&payload) {
                        Some(ev) => {
                            let _ = events.send(ev);
                        }
                        None => debug!(%payload, "unreadable directory event ignored"),
                    }
                }
                warn!(
                    directory = %source.describe(),
                    "lost the cluster directory (its event channel closed); other nodes' changes are read again once it is back"
                );
                said = true;
            }
            Ok(Err(e)) => debug!(error = %e, "cannot subscribe to the cluster directory"),
            Err(_) => debug!("subscribing to the cluster directory timed out"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RESUBSCRIBE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_events_are_read_and_garbage_is_not() {
        let h = Holder {
            node: "a".into(),
            owner: "alice/1f".into(),
            tunnel: 7,
            rules: None,
        };
        let claimed = format!(
            r#"{{"op":"claimed","key":"tcp:9000","holder":{}}}"#,
            serde_json::to_string(&to_json(&h)).unwrap()
        );
        assert_eq!(
            event(&claimed),
            Some(DirEvent::Claimed(ClaimKey::Tcp(9000), Box::new(h)))
        );
        assert_eq!(
            event(r#"{"op":"released","key":"sub:myapp"}"#),
            Some(DirEvent::Released(ClaimKey::Subdomain("myapp".into())))
        );
        for bad in [
            "",
            "{}",
            r#"{"op":"claimed","key":"tcp:9000"}"#,
            r#"{"op":"released","key":"tcp:99999"}"#,
            r#"{"op":"other","key":"tcp:1"}"#,
        ] {
            assert_eq!(event(bad), None, "{bad:?}");
        }
    }
}
