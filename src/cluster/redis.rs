//! The directory in Redis (or Valkey): one key per claim, its value the holder as
//! JSON, its expiry the lease; one key per node likewise. Every step that reads and
//! then writes (claim, renew, release) is one Lua script, which Redis runs atomically,
//! and claims and releases are published on a channel for the other nodes.
//!
//! Layout (a cluster is a Redis database; `redis://host:port/DB` picks it):
//! `pipe:claim:tcp:9000` → `{"node":"a","owner":"…","tunnel":7}` with a TTL;
//! `pipe:node:a` → `{"name":"a","peer":"10.0.0.1:8920","seen":…}` with a TTL;
//! channel `pipe:events` ← `{"op":"claimed","key":"tcp:9000","holder":"{…}"}` and
//! `{"op":"released","key":"tcp:9000"}`. A lease that expires publishes nothing: the
//! nodes' periodic reconcile ([`Directory::claims`]) notices it.

use super::directory::*;
use futures::future::{BoxFuture, FutureExt};
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use serde::Deserialize;
use std::future::Future;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info};

const CLAIM_PREFIX: &str = "pipe:claim:";
const NODE_PREFIX: &str = "pipe:node:";
const PROOF_PREFIX: &str = "pipe:proof:";
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

/// Takes the key unless another owner holds it. KEYS[1] the claim key; ARGV: holder
/// JSON, owner, lease ms, channel, key name. Returns nil when granted, else the
/// current holder's JSON.
const CLAIM: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, h = pcall(cjson.decode, cur)
  if (not ok) or type(h) ~= 'table' or h.owner ~= ARGV[2] then return cur end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], cjson.encode({op = 'claimed', key = ARGV[5], holder = ARGV[1]}))
return false
"#;

/// Extends the lease of a key still held by exactly this holder. ARGV: holder JSON,
/// lease ms. Returns 1 when renewed, else 0.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Deletes a key held by exactly this holder. ARGV: holder JSON, channel, key name.
/// Returns 1 when deleted, else 0.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], cjson.encode({op = 'released', key = ARGV[3]}))
  return 1
end
return 0
"#;

/// Moves a client's proof record from ARGV[1] ('' = none) to ARGV[2] with a TTL of
/// ARGV[3] ms. Returns 1 when moved, 0 when the record was something else.
const ADVANCE_PROOF: &str = r#"
local cur = redis.call('GET', KEYS[1])
if (cur == false and ARGV[1] == '') or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#;

pub struct RedisDirectory {
    conn: ConnectionManager,
    claim: Script,
    renew: Script,
    release: Script,
    advance_proof: Script,
    events: broadcast::Sender<DirEvent>,
    _listener: AbortOnDropHandle<()>,
}

fn unavailable(e: impl std::fmt::Display) -> DirError {
    DirError::Unavailable {
        detail: e.to_string(),
    }
}

/// Runs one Redis call under [`DIR_CALL_TIMEOUT`].
async fn bounded<T>(call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, DirError> {
    match tokio::time::timeout(DIR_CALL_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable(format!(
            "no answer within {DIR_CALL_TIMEOUT:?}"
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
    /// Connects to `url` (`redis://HOST:PORT[/DB]`, `rediss://` for TLS). Fails when
    /// the URL is bad or Redis cannot be reached now; later outages are survived
    /// (calls fail with [`DirError::Unavailable`] until Redis is back).
    pub async fn connect(url: &str) -> Result<RedisDirectory, DirError> {
        let client = redis::Client::open(url).map_err(|e| DirError::Unavailable {
            detail: format!("invalid cluster URL: {e}"),
        })?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DIR_CALL_TIMEOUT))
            .set_response_timeout(Some(DIR_CALL_TIMEOUT))
            .set_max_delay(RESUBSCRIBE_MAX);
        let conn = bounded(ConnectionManager::new_with_config(client.clone(), cfg)).await?;
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let listener = tokio::spawn(listen(client, events.clone()));
        Ok(RedisDirectory {
            conn,
            claim: Script::new(CLAIM),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            advance_proof: Script::new(ADVANCE_PROOF),
            events,
            _listener: AbortOnDropHandle::new(listener),
        })
    }

    /// Every key under `prefix` with its value (SCAN then MGET: a key that expires in
    /// between is left out).
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, String)>, DirError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{prefix}*");
        let (mut cursor, mut keys) = (0u64, Vec::<String>::new());
        for _ in 0..SCAN_STEPS {
            let (next, mut batch): (u64, Vec<String>) = bounded(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut conn),
            )
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
            let values: Vec<Option<String>> = bounded(conn.mget(chunk)).await?;
            for (k, v) in chunk.iter().zip(values) {
                if let (Some(name), Some(v)) = (k.strip_prefix(prefix), v) {
                    out.push((name.to_string(), v));
                }
            }
        }
        Ok(out)
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
            let mut conn = self.conn.clone();
            let name = key.name();
            let mut call = self.claim.prepare_invoke();
            call.key(format!("{CLAIM_PREFIX}{name}"))
                .arg(to_json(holder))
                .arg(&holder.owner)
                .arg(millis(lease))
                .arg(CHANNEL)
                .arg(&name);
            let current: Option<String> = bounded(call.invoke_async(&mut conn)).await?;
            match current {
                None => Ok(Claimed::Granted),
                Some(json) => Ok(Claimed::Taken(parse_holder(&json)?)),
            }
        }
        .boxed()
    }

    fn renew<'a>(
        &'a self,
        key: &'a ClaimKey,
        holder: &'a Holder,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, DirError>> {
        async move {
            let mut conn = self.conn.clone();
            let mut call = self.renew.prepare_invoke();
            call.key(format!("{CLAIM_PREFIX}{}", key.name()))
                .arg(to_json(holder))
                .arg(millis(lease));
            let renewed: i64 = bounded(call.invoke_async(&mut conn)).await?;
            Ok(renewed == 1)
        }
        .boxed()
    }

    fn release<'a>(
        &'a self,
        key: &'a ClaimKey,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<bool, DirError>> {
        async move {
            let mut conn = self.conn.clone();
            let name = key.name();
            let mut call = self.release.prepare_invoke();
            call.key(format!("{CLAIM_PREFIX}{name}"))
                .arg(to_json(holder))
                .arg(CHANNEL)
                .arg(&name);
            let released: i64 = bounded(call.invoke_async(&mut conn)).await?;
            Ok(released == 1)
        }
        .boxed()
    }

    fn lookup<'a>(&'a self, key: &'a ClaimKey) -> BoxFuture<'a, Result<Option<Holder>, DirError>> {
        async move {
            let mut conn = self.conn.clone();
            let json: Option<String> =
                bounded(conn.get(format!("{CLAIM_PREFIX}{}", key.name()))).await?;
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
            let mut conn = self.conn.clone();
            let mut node = node.clone();
            node.seen = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let key = format!("{NODE_PREFIX}{}", node.name);
            let opts =
                redis::SetOptions::default().with_expiration(redis::SetExpiry::PX(millis(lease)));
            let () = bounded(conn.set_options(key, to_json(&node), opts)).await?;
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
            let mut conn = self.conn.clone();
            bounded(conn.get(format!("{PROOF_PREFIX}{client}"))).await
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
            let mut conn = self.conn.clone();
            let mut call = self.advance_proof.prepare_invoke();
            call.key(format!("{PROOF_PREFIX}{client}"))
                .arg(expected.unwrap_or(""))
                .arg(new)
                .arg(millis(ttl));
            let moved: i64 = bounded(call.invoke_async(&mut conn)).await?;
            Ok(moved == 1)
        }
        .boxed()
    }

    fn subscribe(&self) -> broadcast::Receiver<DirEvent> {
        self.events.subscribe()
    }
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
        ("claimed", Some(h)) => Some(DirEvent::Claimed(key, parse_holder(&h).ok()?)),
        ("released", _) => Some(DirEvent::Released(key)),
        _ => None,
    }
}

/// Keeps a subscription to [`CHANNEL`] for as long as the directory lives, and turns
/// its messages into events. After every (re)subscription it sends `Resync`, since
/// whatever was published while it was away is lost.
async fn listen(client: redis::Client, events: broadcast::Sender<DirEvent>) {
    let mut wait = RESUBSCRIBE_FIRST;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(DIR_CALL_TIMEOUT, subscribed).await {
            Ok(Ok(pubsub)) => {
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
                info!("lost the cluster directory's event channel; resubscribing");
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
            Some(DirEvent::Claimed(ClaimKey::Tcp(9000), h))
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
