//! The inspector's memory: the last `capacity` exchanges (request and response) with
//! their heads, timings and bodies up to `body_cap` bytes each, and the recorder that
//! turns the two directions of one connection into exchanges (pipelined requests are
//! answered in order; `100 Continue` is skipped; a `101` ends inspection).
//!
//! Memory is bounded: at most `capacity` exchanges, each with two heads of at most
//! `parse::MAX_HEAD` and two bodies of at most `body_cap`.

use super::parse::{Ev, Framing, Head, Side};
use serde::Serialize;
use std::collections::VecDeque;
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
    fn push(&mut self, data: &[u8], cap: usize) {
        self.len += data.len() as u64;
        let room = cap.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated = self.len > self.bytes.len() as u64;
    }
}

/// One request and its response.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub id: u64,
    /// Which forward (its index in the client's list) carried it.
    pub forward: u32,
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
    /// Milliseconds from the request head to the response head, and to its end.
    pub response_ms: Option<u64>,
    pub done_ms: Option<u64>,
    /// Answered with `101 Switching Protocols`: the rest was passed through unread.
    pub upgraded: bool,
    /// The exchange this one replayed.
    pub replay_of: Option<u64>,
    #[serde(skip)]
    began: Option<Instant>,
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
}

impl Store {
    pub fn new(capacity: usize, body_cap: usize) -> Arc<Store> {
        Arc::new(Store {
            inner: Mutex::new(Inner {
                next_id: 1,
                list: VecDeque::new(),
            }),
            capacity: capacity.max(1),
            body_cap,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exchanges, oldest first.
    pub fn all(&self) -> Vec<Exchange> {
        self.lock().list.iter().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Exchange> {
        let inner = self.lock();
        index(&inner, id).map(|i| inner.list[i].clone())
    }

    fn begin(&self, forward: u32, head: Head, replay_of: Option<u64>) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        if inner.list.len() >= self.capacity {
            inner.list.pop_front();
        }
        let started_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        inner.list.push_back(Exchange {
            id,
            forward,
            started_ms,
            method: head.method,
            url: head.target,
            request_headers: head.headers,
            request_body: Body::default(),
            status: None,
            reason: String::new(),
            response_headers: Vec::new(),
            response_body: Body::default(),
            response_ms: None,
            done_ms: None,
            upgraded: false,
            replay_of,
            began: Some(Instant::now()),
        });
        id
    }

    /// Runs `f` on exchange `id` if it is still kept.
    fn with(&self, id: u64, f: impl FnOnce(&mut Exchange, usize)) {
        let mut inner = self.lock();
        if let Some(i) = index(&inner, id) {
            f(&mut inner.list[i], self.body_cap);
        }
    }
}

/// Ids grow by one and leave from the front: the position is the distance.
fn index(inner: &Inner, id: u64) -> Option<usize> {
    let first = inner.list.front()?.id;
    let i = usize::try_from(id.checked_sub(first)?).ok()?;
    (i < inner.list.len()).then_some(i)
}

fn elapsed_ms(e: &Exchange) -> Option<u64> {
    e.began.map(|b| b.elapsed().as_millis() as u64)
}

/// Both directions of one inspected connection.
pub struct Recorder {
    store: Arc<Store>,
    forward: u32,
    replay_of: Option<u64>,
    requests: Side,
    responses: Side,
    /// Requests sent and not yet answered (pipelining), with "was it HEAD".
    pending: VecDeque<(u64, bool)>,
    current_request: Option<u64>,
    current_response: Option<u64>,
    /// Responses seen to their end.
    answered: u64,
}

impl Recorder {
    pub fn new(store: Arc<Store>, forward: u32, replay_of: Option<u64>) -> Recorder {
        Recorder {
            store,
            forward,
            replay_of,
            requests: Side::new(true),
            responses: Side::new(false),
            pending: VecDeque::new(),
            current_request: None,
            current_response: None,
            answered: 0,
        }
    }

    /// Responses seen to their end (or to a `101`).
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Bytes the visitor sent toward the local service.
    pub fn to_service(&mut self, data: &[u8]) {
        if self.requests.is_passthrough() {
            return;
        }
        let Recorder {
            store,
            forward,
            replay_of,
            requests,
            pending,
            current_request,
            ..
        } = self;
        requests.feed(data, &mut |ev| match ev {
            Ev::Head(head) => {
                let upgrade = head.is_upgrade_request();
                let framing = head.framing(true);
                let is_head = head.method.eq_ignore_ascii_case("HEAD");
                let id = store.begin(*forward, head, *replay_of);
                pending.push_back((id, is_head));
                *current_request = Some(id);
                // After an upgrade request the bytes are the new protocol's.
                if upgrade {
                    Framing::Passthrough
                } else {
                    framing
                }
            }
            Ev::Body(b) => {
                if let Some(id) = *current_request {
                    store.with(id, |e, cap| e.request_body.push(b, cap));
                }
                Framing::Passthrough
            }
            Ev::End => {
                *current_request = None;
                Framing::Passthrough
            }
        });
    }

    /// Bytes the local service sent back.
    pub fn from_service(&mut self, data: &[u8]) {
        if self.responses.is_passthrough() {
            return;
        }
        let Recorder {
            store,
            responses,
            pending,
            current_response,
            answered,
            ..
        } = self;
        responses.feed(data, &mut |ev| match ev {
            Ev::Head(head) => {
                let informational = (100..200).contains(&head.status) && head.status != 101;
                if informational {
                    // 100 Continue and friends: the real answer follows.
                    return Framing::Length(0);
                }
                let Some((id, was_head)) = pending.pop_front() else {
                    return Framing::Passthrough;
                };
                let framing = match head.status {
                    101 => Framing::Passthrough,
                    204 | 304 => Framing::Length(0),
                    _ if was_head => Framing::Length(0),
                    _ => head.framing(false),
                };
                let upgraded = head.status == 101;
                if upgraded {
                    *answered += 1;
                }
                store.with(id, |e, _| {
                    e.status = Some(head.status);
                    e.reason = head.reason;
                    e.response_headers = head.headers;
                    e.response_ms = elapsed_ms(e);
                    e.upgraded = upgraded;
                    if upgraded {
                        e.done_ms = e.response_ms;
                    }
                });
                *current_response = Some(id);
                framing
            }
            Ev::Body(b) => {
                if let Some(id) = *current_response {
                    store.with(id, |e, cap| e.response_body.push(b, cap));
                }
                Framing::Passthrough
            }
            Ev::End => {
                if let Some(id) = current_response.take() {
                    *answered += 1;
                    store.with(id, |e, _| e.done_ms = elapsed_ms(e));
                }
                Framing::Passthrough
            }
        });
    }

    /// The connection ended: a body read until close is complete now.
    pub fn closed(&mut self) {
        if let Some(id) = self.current_response.take() {
            self.store.with(id, |e, _| {
                if e.done_ms.is_none() {
                    e.done_ms = elapsed_ms(e);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_exchanges_pair_up_and_memory_stays_capped() {
        let store = Store::new(3, 4);
        let mut r = Recorder::new(store.clone(), 0, None);
        r.to_service(b"GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\n");
        r.to_service(b"POST /3 HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 6\r\n\r\n");
        r.from_service(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
        r.from_service(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n");
        r.from_service(b"HTTP/1.1 100 Continue\r\n\r\n");
        r.to_service(b"abcdef");
        r.from_service(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        );
        let all = store.all();
        let summary: Vec<_> = all
            .iter()
            .map(|e| (e.url.as_str(), e.status, e.done_ms.is_some()))
            .collect();
        assert_eq!(
            summary,
            [
                ("/1", Some(200), true),
                ("/2", Some(200), true),
                ("/3", Some(201), true)
            ]
        );
        assert_eq!(all[0].response_body.bytes, b"0123");
        assert!(all[0].response_body.truncated && all[0].response_body.len == 10);
        assert_eq!(all[2].request_body.bytes, b"abcd");
        assert_eq!(all[2].response_body.bytes, b"ok");
        r.to_service(b"GET /4 HTTP/1.1\r\n\r\n");
        let ids: Vec<u64> = store.all().iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 3, 4], "the oldest goes");
        assert!(store.get(1).is_none() && store.get(4).is_some());
    }

    #[test]
    fn an_upgrade_is_shown_and_then_passed_through() {
        let store = Store::new(10, 1024);
        let mut r = Recorder::new(store.clone(), 0, None);
        r.to_service(
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello",
        );
        r.from_service(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
        );
        r.to_service(b"GET /not-http HTTP/1.1\r\n\r\n");
        let all = store.all();
        assert_eq!(all.len(), 1);
        assert!(all[0].upgraded && all[0].status == Some(101));
        assert!(all[0].response_body.bytes.is_empty());
    }
}
