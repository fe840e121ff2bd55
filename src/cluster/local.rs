//! The directory of a single `piped`: a map in memory with the same rules as the
//! Redis one (one owner per key, takeover by the same owner, compare-and-delete), and
//! leases that expire only when a node could die apart from the directory — here they
//! cannot, so a claim lasts until it is released.

use super::directory::*;
use futures::future::{BoxFuture, FutureExt};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;

pub struct LocalDirectory {
    inner: Mutex<Inner>,
    events: broadcast::Sender<DirEvent>,
}

#[derive(Default)]
struct Inner {
    claims: BTreeMap<ClaimKey, Holder>,
    nodes: HashMap<String, NodeInfo>,
    proofs: HashMap<String, String>,
}

impl Default for LocalDirectory {
    fn default() -> Self {
        LocalDirectory {
            inner: Mutex::default(),
            events: broadcast::channel(EVENT_BACKLOG).0,
        }
    }
}

impl LocalDirectory {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, ev: DirEvent) {
        // No subscriber is fine: nobody listens on other nodes' ports here.
        let _ = self.events.send(ev);
    }
}

impl Directory for LocalDirectory {
    fn claim<'a>(
        &'a self,
        key: &'a ClaimKey,
        holder: &'a Holder,
        _lease: Duration,
    ) -> BoxFuture<'a, Result<Claimed, DirError>> {
        let mut inner = self.lock();
        let answer = match inner.claims.get(key) {
            Some(h) if h.owner != holder.owner => Claimed::Taken(h.clone()),
            _ => {
                inner.claims.insert(key.clone(), holder.clone());
                self.publish(DirEvent::Claimed(key.clone(), Box::new(holder.clone())));
                Claimed::Granted
            }
        };
        futures::future::ready(Ok(answer)).boxed()
    }

    fn renew_all<'a>(
        &'a self,
        node: &'a NodeInfo,
        held: &'a [(ClaimKey, Holder)],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Renewed>, DirError>> {
        drop(self.register_node(node, lease));
        let mut inner = self.lock();
        let answers = held
            .iter()
            .map(|(key, holder)| match inner.claims.get(key) {
                Some(h) if h == holder => Renewed::Kept,
                Some(h) => Renewed::Lost(h.clone()),
                None => {
                    inner.claims.insert(key.clone(), holder.clone());
                    Renewed::Reasserted
                }
            })
            .collect();
        futures::future::ready(Ok(answers)).boxed()
    }

    fn release<'a>(
        &'a self,
        key: &'a ClaimKey,
        holder: &'a Holder,
    ) -> BoxFuture<'a, Result<bool, DirError>> {
        let mut inner = self.lock();
        let held = inner.claims.get(key) == Some(holder);
        if held {
            inner.claims.remove(key);
            self.publish(DirEvent::Released(key.clone()));
        }
        futures::future::ready(Ok(held)).boxed()
    }

    fn lookup<'a>(&'a self, key: &'a ClaimKey) -> BoxFuture<'a, Result<Option<Holder>, DirError>> {
        let found = self.lock().claims.get(key).cloned();
        futures::future::ready(Ok(found)).boxed()
    }

    fn claims(&self) -> BoxFuture<'_, Result<Vec<(ClaimKey, Holder)>, DirError>> {
        let all = self.lock().claims.clone().into_iter().collect();
        futures::future::ready(Ok(all)).boxed()
    }

    fn register_node<'a>(
        &'a self,
        node: &'a NodeInfo,
        _lease: Duration,
    ) -> BoxFuture<'a, Result<(), DirError>> {
        let mut node = node.clone();
        node.seen = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.lock().nodes.insert(node.name.clone(), node);
        futures::future::ready(Ok(())).boxed()
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>, DirError>> {
        let mut all: Vec<_> = self.lock().nodes.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        futures::future::ready(Ok(all)).boxed()
    }

    fn last_proof<'a>(
        &'a self,
        client: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, DirError>> {
        let found = self.lock().proofs.get(client).cloned();
        futures::future::ready(Ok(found)).boxed()
    }

    fn advance_proof<'a>(
        &'a self,
        client: &'a str,
        expected: Option<&'a str>,
        new: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, DirError>> {
        let mut inner = self.lock();
        let moved = inner.proofs.get(client).map(String::as_str) == expected;
        if moved {
            inner.proofs.insert(client.to_string(), new.to_string());
        }
        futures::future::ready(Ok(moved)).boxed()
    }

    fn subscribe(&self) -> broadcast::Receiver<DirEvent> {
        self.events.subscribe()
    }
}
