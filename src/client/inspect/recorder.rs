//! The recorder: turns the two directions of one inspected connection into
//! exchanges in the store (pipelined requests are answered in order; `100 Continue`
//! is skipped; a `101` ends inspection), counting the bytes each side sent.

use super::parse::{Ev, Framing, Side};
use super::store::{Exchange, Source, Store};
use std::collections::VecDeque;
use std::sync::Arc;

fn elapsed_ms(e: &Exchange) -> Option<u64> {
    e.began.map(|b| b.elapsed().as_millis() as u64)
}

/// Both directions of one inspected connection.
pub struct Recorder {
    store: Arc<Store>,
    source: Source,
    /// The first exchange this connection recorded.
    first: Option<u64>,
    requests: Side,
    responses: Side,
    /// Requests sent and not yet answered (pipelining), with "was it HEAD".
    pending: VecDeque<(u64, bool)>,
    current_request: Option<u64>,
    current_response: Option<u64>,
    /// Responses seen to their end.
    answered: u64,
    /// This connection is counted among those the budget let through uninspected.
    skipped: bool,
}

impl Recorder {
    pub fn new(store: Arc<Store>, source: Source) -> Recorder {
        let budget = store.heads.clone();
        Recorder {
            store,
            source,
            first: None,
            requests: Side::new(true, budget.clone()),
            responses: Side::new(false, budget),
            pending: VecDeque::new(),
            current_request: None,
            current_response: None,
            answered: 0,
            skipped: false,
        }
    }

    /// Counts the connection once when either direction ran out of budget.
    fn note_starved(&mut self) {
        if !self.skipped && (self.requests.starved() || self.responses.starved()) {
            self.skipped = true;
            self.store.heads.note_skipped();
        }
    }

    /// Responses seen to their end (or to a `101`).
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// The first exchange recorded on this connection, if any.
    pub fn first(&self) -> Option<u64> {
        self.first
    }

    /// Bytes the visitor sent toward the local service.
    pub fn to_service(&mut self, data: &[u8]) {
        if self.requests.is_passthrough() {
            return;
        }
        let Recorder {
            store,
            source,
            first,
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
                let id = store.begin(source, head);
                first.get_or_insert(id);
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
                    store.with(id, |e, cap| {
                        e.request_body.push(b, cap);
                        e.request_bytes += b.len() as u64;
                    });
                }
                Framing::Passthrough
            }
            Ev::End => {
                *current_request = None;
                Framing::Passthrough
            }
        });
        self.note_starved();
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
                    e.response_bytes = head.len as u64;
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
                    store.with(id, |e, cap| {
                        e.response_body.push(b, cap);
                        e.response_bytes += b.len() as u64;
                    });
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
        self.note_starved();
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
        let mut r = Recorder::new(store.clone(), Source::default());
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
        let mut r = Recorder::new(store.clone(), Source::default());
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
