//! A passive HTTP/1.1 message framer for one direction of a connection: heads are
//! parsed by `httparse`, bodies framed by Content-Length or chunked encoding, and the
//! bytes are only looked at, never changed or held back. Anything it cannot follow
//! (a head over the cap, a parse error, an upgrade, a head the shared budget has no
//! room for) turns it into a pass-through that ignores the rest of the connection.

use super::budget::{Budget, Grant};
use std::sync::Arc;

/// Largest message head followed; a longer one ends inspection of the connection.
pub const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed per head (httparse needs a fixed array).
const MAX_HEADERS: usize = 128;
/// Longest chunk-size or trailer line followed.
const MAX_CHUNK_LINE: usize = 4096;

/// A parsed message head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// Requests: method and target.
    pub method: String,
    pub target: String,
    /// Responses: status code and reason.
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// Bytes the head took on the wire, blank line included.
    pub len: usize,
    /// Requests: the head as it was sent, byte for byte (replay sends it again).
    pub raw: Vec<u8>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// How the body that follows this head is delimited (RFC 9112 section 6), for
    /// heads whose context does not already say "no body".
    pub fn framing(&self, request: bool) -> Framing {
        if self.has_token("transfer-encoding", "chunked") {
            return Framing::Chunked;
        }
        match self
            .header("content-length")
            .map(|v| v.trim().parse::<u64>())
        {
            Some(Ok(n)) => Framing::Length(n),
            Some(Err(_)) => Framing::Passthrough,
            None if request => Framing::Length(0),
            None => Framing::UntilClose,
        }
    }

    pub fn is_upgrade_request(&self) -> bool {
        self.header("upgrade").is_some() || self.method.eq_ignore_ascii_case("CONNECT")
    }
}

/// What follows a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// A response body that ends with the connection.
    UntilClose,
    /// Stop following this direction (an upgrade, or something not understood).
    Passthrough,
}

/// What the framer saw.
#[derive(Debug)]
pub enum Ev<'a> {
    Head(Head),
    /// Body bytes (chunk contents, without chunk framing).
    Body(&'a [u8]),
    /// The message is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailer,
    UntilClose,
    Passthrough,
}

/// One direction of one connection.
#[derive(Debug)]
pub struct Side {
    request: bool,
    state: State,
    /// A partial head or chunk line; its capacity is held from the budget.
    buf: Vec<u8>,
    grant: Grant,
    /// Passed through because the budget had no room.
    starved: bool,
}

impl Side {
    /// A framer whose buffer grows only as far as `budget` allows.
    pub fn new(request: bool, budget: Arc<Budget>) -> Side {
        Side {
            request,
            state: State::Head,
            buf: Vec::new(),
            grant: Grant::new(budget),
            starved: false,
        }
    }

    pub fn is_passthrough(&self) -> bool {
        self.state == State::Passthrough
    }

    /// True once the budget had no room for this direction's next head.
    pub fn starved(&self) -> bool {
        self.starved
    }

    /// Stops following this direction.
    pub fn pass_through(&mut self) {
        self.state = State::Passthrough;
        self.empty();
    }

    /// Frees the buffer and gives its memory back.
    fn empty(&mut self) {
        self.buf = Vec::new();
        self.grant.release();
    }

    /// Makes room for `n` more buffered bytes, from the budget; false (and a
    /// pass-through) when it has none.
    fn room_for(&mut self, n: usize) -> bool {
        let want = self.buf.len() + n;
        if want <= self.buf.capacity() {
            return true;
        }
        if !self.grant.grow_to(want) {
            self.starved = true;
            self.pass_through();
            return false;
        }
        self.buf.reserve_exact(n);
        // Should the allocator round up, hold what it gave when there is room (the
        // rounding is too small to refuse a head over).
        let _ = self.grant.grow_to(self.buf.capacity());
        true
    }

    /// Feeds bytes that went by; `on` hears the events and, for each head, says how
    /// its body is framed.
    pub fn feed(&mut self, mut data: &[u8], on: &mut dyn FnMut(Ev<'_>) -> Framing) {
        while !data.is_empty() {
            match self.state {
                State::Passthrough => return,
                State::UntilClose => {
                    on(Ev::Body(data));
                    return;
                }
                State::Length(rem) | State::ChunkData(rem) => {
                    let n = rem.min(data.len() as u64) as usize;
                    on(Ev::Body(&data[..n]));
                    data = &data[n..];
                    let left = rem - n as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => {
                            on(Ev::End);
                            State::Head
                        }
                        (State::Length(_), l) => State::Length(l),
                        (_, 0) => State::ChunkDataEnd,
                        (_, l) => State::ChunkData(l),
                    };
                }
                State::Head => data = self.head(data, on),
                State::ChunkSize | State::ChunkDataEnd | State::Trailer => {
                    let Some(rest) = self.line(data) else { return };
                    data = rest;
                    self.chunk_line(on);
                }
            }
        }
    }

    /// Collects a head; returns the bytes after it.
    fn head<'a>(&mut self, data: &'a [u8], on: &mut dyn FnMut(Ev<'_>) -> Framing) -> &'a [u8] {
        let start = self.buf.len();
        let take = data.len().min(MAX_HEAD - start);
        if !self.room_for(take) {
            return &[];
        }
        self.buf.extend_from_slice(&data[..take]);
        match parse_head(&self.buf, self.request) {
            Ok(Some((head, n))) => {
                let after = &data[n.saturating_sub(start).min(data.len())..];
                self.empty();
                self.state = match on(Ev::Head(head)) {
                    Framing::Length(0) => {
                        on(Ev::End);
                        State::Head
                    }
                    Framing::Length(n) => State::Length(n),
                    Framing::Chunked => State::ChunkSize,
                    Framing::UntilClose => State::UntilClose,
                    Framing::Passthrough => State::Passthrough,
                };
                after
            }
            Ok(None) if self.buf.len() < MAX_HEAD => &[],
            _ => {
                self.pass_through();
                &[]
            }
        }
    }

    /// Adds bytes up to and including the next `\n` to the line buffer; returns the
    /// rest once a line is complete.
    fn line<'a>(&mut self, data: &'a [u8]) -> Option<&'a [u8]> {
        let end = data.iter().position(|&b| b == b'\n');
        let take = end.map_or(data.len(), |i| i + 1);
        if self.buf.len() + take > MAX_CHUNK_LINE {
            self.pass_through();
            return None;
        }
        if !self.room_for(take) {
            return None;
        }
        self.buf.extend_from_slice(&data[..take]);
        end.map(|_| &data[take..])
    }

    fn chunk_line(&mut self, on: &mut dyn FnMut(Ev<'_>) -> Framing) {
        let blank = matches!(self.buf.as_slice(), b"\r\n" | b"\n");
        self.state = match self.state {
            State::ChunkSize => match httparse::parse_chunk_size(&self.buf) {
                Ok(httparse::Status::Complete((_, 0))) => State::Trailer,
                Ok(httparse::Status::Complete((_, n))) => State::ChunkData(n),
                _ => State::Passthrough,
            },
            State::ChunkDataEnd if blank => State::ChunkSize,
            State::Trailer if blank => {
                on(Ev::End);
                State::Head
            }
            State::Trailer => State::Trailer,
            _ => State::Passthrough,
        };
        self.empty();
    }
}

/// `Ok(Some((head, length)))`, `Ok(None)` while incomplete, `Err` if not HTTP/1.x.
fn parse_head(buf: &[u8], request: bool) -> Result<Option<(Head, usize)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let owned = |hs: &[httparse::Header<'_>]| {
        hs.iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect()
    };
    if request {
        let mut r = httparse::Request::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => Ok(Some((
                Head {
                    method: r.method.unwrap_or_default().to_string(),
                    target: r.path.unwrap_or_default().to_string(),
                    headers: owned(r.headers),
                    len: n,
                    raw: buf[..n].to_vec(),
                    ..Default::default()
                },
                n,
            ))),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(()),
        }
    } else {
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => Ok(Some((
                Head {
                    status: r.code.unwrap_or_default(),
                    reason: r.reason.unwrap_or_default().to_string(),
                    headers: owned(r.headers),
                    len: n,
                    ..Default::default()
                },
                n,
            ))),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(_) => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unlimited() -> Arc<Budget> {
        Budget::new(usize::MAX)
    }

    #[test]
    fn heads_hold_the_budget_only_while_unfinished_and_pass_through_past_it() {
        let budget = Budget::new(1000);
        let mut a = Side::new(true, budget.clone());
        let mut b = Side::new(true, budget.clone());
        let mut heads = 0;
        let mut on = |ev: Ev<'_>| {
            if let Ev::Head(h) = ev {
                heads += 1;
                return h.framing(true);
            }
            Framing::Passthrough
        };
        a.feed(&[b'a'; 600], &mut on);
        assert_eq!(budget.held(), 600);
        b.feed(b"GET / HTTP/1.1\r\n", &mut on);
        b.feed(&[b'x'; 500], &mut on);
        assert!(b.is_passthrough() && b.starved(), "no room: passed through");
        assert_eq!(budget.held(), 600, "what b held went back");
        drop(a);
        assert_eq!(budget.held(), 0);
        let mut c = Side::new(true, budget.clone());
        c.feed(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\n",
            &mut on,
        );
        c.feed(b"\r\n", &mut on);
        assert_eq!(heads, 2);
        assert_eq!(budget.held(), 0, "complete heads hold nothing");
        assert!(!c.starved());
    }

    /// Feeds `data` in pieces of `step` bytes; returns the events as text.
    fn run(request: bool, data: &[u8], step: usize) -> Vec<String> {
        let mut side = Side::new(request, unlimited());
        let mut out = Vec::new();
        let mut body = Vec::new();
        for piece in data.chunks(step) {
            side.feed(piece, &mut |ev| match ev {
                Ev::Head(h) => {
                    out.push(format!("head {} {} {}", h.method, h.target, h.status));
                    h.framing(request)
                }
                Ev::Body(b) => {
                    body.extend_from_slice(b);
                    Framing::Passthrough
                }
                Ev::End => {
                    out.push(format!("end {}", String::from_utf8_lossy(&body)));
                    body.clear();
                    Framing::Passthrough
                }
            });
        }
        out
    }

    #[test]
    fn pipelined_requests_with_length_and_chunked_bodies_in_any_split() {
        let data = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n\
GET /d HTTP/1.1\r\n\r\n";
        let want = vec![
            "head GET /a 0",
            "end ",
            "head POST /b 0",
            "end hello",
            "head PUT /c 0",
            "end abcde",
            "head GET /d 0",
            "end ",
        ];
        for step in [1, 2, 3, 7, 64, data.len()] {
            assert_eq!(run(true, data, step), want, "step {step}");
        }
    }

    #[test]
    fn responses_until_close_and_garbage_turns_into_pass_through() {
        let r = run(false, b"HTTP/1.1 200 OK\r\n\r\nstream of bytes", 4);
        assert_eq!(r, vec!["head   200"]);
        assert!(run(true, b"\x16\x03\x01\x02\x00 tls hello", 5).is_empty());
        let mut side = Side::new(true, unlimited());
        side.feed(&vec![b'a'; MAX_HEAD + 10], &mut |_| Framing::Passthrough);
        assert!(side.is_passthrough(), "a head over the cap is not buffered");
        let bad_len = run(
            true,
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\nbody",
            100,
        );
        assert_eq!(bad_len, vec!["head POST / 0"]);
    }
}
