//! The inspector's memory: the last `capacity` exchanges (request and response) with
//! their heads, timings and bodies up to `body_cap` bytes each, filled by the
//! `recorder`.
//!
//! Memory is bounded: at most `capacity` exchanges, each with two parsed heads and the
//! request's raw head (each at most `parse::MAX_HEAD`) and two bodies of at most
//! `body_cap`; heads still arriving share the store's `budget::Budget`.

use super::budget::{Budget, DEFAULT_HEAD_BUDGET};
use super::parse::Head;
use serde::Serialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Exchanges kept by default (the N).
pub const DEFAULT_CAPACITY: usize = 500;
/// Body bytes kept per request and per response: enough for any JSON API call, small
/// enough that 500 exchanges stay under 64 MiB of bodies.
pub const DEFAULT_BODY_CAP: usize = 64 * 1024;

/// A body as far as it was kept.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Body {
    /// Bytes seen in total.
    pub len: u64,
    /// Set when `len` is more than was kept.
    pub truncated: bool,
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

impl Body {
    pub(super) fn push(&mut self, data: &[u8], cap: usize) {
        self.len += data.len() as u64;
        let room = cap.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated = self.len > self.bytes.len() as u64;
    }
}

/// Where the exchanges of one connection come from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// The forward's index in the client's list.
    pub forward: u32,
    /// The forward as the page names it (`ForwardSpec::label`).
    pub tunnel: Arc<str>,
    /// The public visitor as the server saw it (behind PROXY protocol or Caddy: the
    /// real one); `None` for a replay.
    pub visitor: Option<SocketAddr>,
    /// The exchange a replay sends again.
    pub replay_of: Option<u64>,
    /// The forward is behind the server's sign-in (`auth=oidc`): the server deleted the
    /// visitor's own identity headers and set them from the signed-in session, so they
    /// name who the visitor is. Elsewhere they are whatever the visitor wrote.
    pub signed_in: bool,
}

/// One request and its response.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub id: u64,
    /// Which forward (its index in the client's list) carried it.
    pub forward: u32,
    /// That forward's name, or its spec (`http:3000:myapp`).
    pub tunnel: String,
    /// The public visitor's address; `None` for a replay.
    pub visitor: Option<SocketAddr>,
    /// Unix milliseconds when the request head arrived.
    pub started_ms: u64,
    pub method: String,
    pub url: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Body,
    /// `None` until the response head arrives.
    pub status: Option<u16>,
    pub reason: String,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Body,
    /// Bytes seen of the request and of the response: head plus body (as far as it
    /// went, kept or not; a chunked body counted without its chunk framing).
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Milliseconds from the request head to the response head, and to its end.
    pub response_ms: Option<u64>,
    pub done_ms: Option<u64>,
    /// Answered with `101 Switching Protocols`: the rest was passed through unread.
    pub upgraded: bool,
    /// The exchange this one replayed.
    pub replay_of: Option<u64>,
    /// Who the visitor signed in as (the email, else the user name, the server's
    /// sign-in gate vouched for), on a forward behind sign-in; `None` elsewhere.
    pub user: Option<String>,
    /// The request head as sent, byte for byte.
    #[serde(skip)]
    pub request_head: Vec<u8>,
    #[serde(skip)]
    pub(super) began: Option<Instant>,
}

impl Exchange {
    /// A copy without the bodies' and the raw head's bytes (for lists).
    fn summary(&self) -> Exchange {
        let bare = |b: &Body| Body {
            len: b.len,
            truncated: b.truncated,
            bytes: Vec::new(),
        };
        Exchange {
            tunnel: self.tunnel.clone(),
            method: self.method.clone(),
            url: self.url.clone(),
            request_headers: self.request_headers.clone(),
            request_body: bare(&self.request_body),
            reason: self.reason.clone(),
            response_headers: self.response_headers.clone(),
            response_body: bare(&self.response_body),
            user: self.user.clone(),
            request_head: Vec::new(),
            ..*self
        }
    }
}

struct Inner {
    next_id: u64,
    list: VecDeque<Exchange>,
}

/// The exchanges of every inspected connection.
pub struct Store {
    inner: Mutex<Inner>,
    capacity: usize,
    body_cap: usize,
    pub(super) heads: Arc<Budget>,
}

impl Store {
    pub fn new(capacity: usize, body_cap: usize) -> Arc<Store> {
        Store::with_head_budget(capacity, body_cap, DEFAULT_HEAD_BUDGET)
    }

    /// A store whose unfinished heads may hold at most `head_budget` bytes in all.
    pub fn with_head_budget(capacity: usize, body_cap: usize, head_budget: usize) -> Arc<Store> {
        Arc::new(Store {
            inner: Mutex::new(Inner {
                next_id: 1,
                list: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            body_cap,
            heads: Budget::new(head_budget),
        })
    }

    /// The memory of unfinished heads, and how many connections went uninspected.
    pub fn head_budget(&self) -> &Arc<Budget> {
        &self.heads
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exchanges, oldest first.
    pub fn all(&self) -> Vec<Exchange> {
        self.lock().list.iter().cloned().collect()
    }

    /// Exchanges kept.
    pub fn len(&self) -> usize {
        self.lock().list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, id: u64) -> Option<Exchange> {
        let inner = self.lock();
        index(&inner, id).map(|i| inner.list[i].clone())
    }

    /// The kept exchanges `keep` accepts, newest first, as summaries (no body bytes).
    /// The lock is taken for one exchange at a time, so that a long search never
    /// holds up the connections being recorded.
    pub fn select(&self, mut keep: impl FnMut(&Exchange) -> bool) -> Vec<Exchange> {
        let last = {
            let inner = self.lock();
            match inner.list.back() {
                Some(e) => e.id,
                None => return Vec::new(),
            }
        };
        let mut out = Vec::new();
        let mut id = last;
        loop {
            {
                let inner = self.lock();
                // Older ones went while the lock was free: nothing left to see.
                let Some(i) = index(&inner, id) else { break };
                let e = &inner.list[i];
                if keep(e) {
                    out.push(e.summary());
                }
            }
            match id.checked_sub(1) {
                Some(prev) => id = prev,
                None => break,
            }
        }
        out
    }

    /// Forgets every exchange; returns how many there were. Connections still open
    /// record their next exchanges as usual.
    pub fn clear(&self) -> usize {
        let mut inner = self.lock();
        let n = inner.list.len();
        inner.list.clear();
        n
    }

    pub(super) fn begin(&self, source: &Source, head: Head) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        if inner.list.len() >= self.capacity {
            inner.list.pop_front();
        }
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let user = source
            .signed_in
            .then(|| signed_in_user(&head.headers))
            .flatten();
        inner.list.push_back(Exchange {
            id,
            user,
            forward: source.forward,
            tunnel: source.tunnel.to_string(),
            visitor: source.visitor,
            started_ms,
            method: head.method,
            url: head.target,
            request_headers: head.headers,
            request_body: Body::default(),
            request_bytes: head.len as u64,
            response_bytes: 0,
            request_head: head.raw,
            status: None,
            reason: String::new(),
            response_headers: Vec::new(),
            response_body: Body::default(),
            response_ms: None,
            done_ms: None,
            upgraded: false,
            replay_of: source.replay_of,
            began: Some(Instant::now()),
        });
        id
    }

    /// Runs `f` on exchange `id` if it is still kept.
    pub(super) fn with(&self, id: u64, f: impl FnOnce(&mut Exchange, usize)) {
        let mut inner = self.lock();
        if let Some(i) = index(&inner, id) {
            f(&mut inner.list[i], self.body_cap);
        }
    }
}

/// The identity the sign-in gate set on a request: its email, else its user name.
fn signed_in_user(headers: &[(String, String)]) -> Option<String> {
    use crate::signin::names::{EMAIL_HEADER, USER_HEADER};
    [EMAIL_HEADER, USER_HEADER].iter().find_map(|name| {
        headers
            .iter()
            .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
    })
}

/// Ids grow by one and leave from the front: the position is the distance.
fn index(inner: &Inner, id: u64) -> Option<usize> {
    let first = inner.list.front()?.id;
    let i = usize::try_from(id.checked_sub(first)?).ok()?;
    (i < inner.list.len()).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::inspect::Recorder;

    #[test]
    fn lists_are_newest_first_without_bytes_and_clear_forgets_all() {
        let store = Store::new(2, 1024);
        let mut r = Recorder::new(store.clone(), Source::default());
        for path in ["/1", "/2", "/3"] {
            r.to_service(format!("POST {path} HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi").as_bytes());
        }
        let listed = store.select(|_| true);
        let urls: Vec<&str> = listed.iter().map(|e| e.url.as_str()).collect();
        assert_eq!(urls, ["/3", "/2"], "newest first, the oldest evicted");
        assert!(listed.iter().all(|e| e.request_body.bytes.is_empty()
            && e.request_head.is_empty()
            && e.request_body.len == 2));
        assert_eq!(store.clear(), 2);
        assert!(store.is_empty() && store.select(|_| true).is_empty());
        r.to_service(b"GET /4 HTTP/1.1\r\n\r\n");
        let after: Vec<u64> = store.all().iter().map(|e| e.id).collect();
        assert_eq!(after, [4], "ids go on after a clear");
        assert_eq!(store.get(4).map(|e| e.url), Some("/4".to_string()));
    }

    #[test]
    fn the_signed_in_user_is_shown_only_where_the_server_vouches_for_it() {
        let store = Store::new(10, 1024);
        let head = b"GET / HTTP/1.1\r\nx-forwarded-user: alice\r\n\
                     X-Forwarded-Email: alice@example.com\r\n\r\n";
        let behind = Source {
            signed_in: true,
            ..Source::default()
        };
        Recorder::new(store.clone(), behind.clone()).to_service(head);
        Recorder::new(store.clone(), behind)
            .to_service(b"GET / HTTP/1.1\r\nX-Forwarded-User: bob\r\n\r\n");
        // On a forward without sign-in the same header is the visitor's own claim.
        Recorder::new(store.clone(), Source::default()).to_service(head);
        let users: Vec<Option<String>> = store.all().into_iter().map(|e| e.user).collect();
        assert_eq!(
            users,
            [Some("alice@example.com".into()), Some("bob".into()), None],
            "the email first, else the user name; nothing without sign-in"
        );
        let listed = store.select(|_| true);
        assert_eq!(
            listed[2].user.as_deref(),
            Some("alice@example.com"),
            "lists carry it"
        );
    }
}
