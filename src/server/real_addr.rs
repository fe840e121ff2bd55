//! The real visitor of a public TCP connection. Usually the TCP peer; but a load
//! balancer listed in `--accept-proxy-protocol` announces the visitor in a PROXY
//! header, and for an http forward whose client wants the visitor (PROXY protocol to
//! its service) Caddy names it in the `Pipe-Visitor` request header of each connection
//! (its route then opens one upstream connection per request).
//!
//! Owns how much may be read to learn the address (size caps, a deadline) and which
//! bytes go on to the client: a PROXY header from a trusted source is consumed, one
//! from anyone else refused (with or without `--accept-proxy-protocol`), an HTTP
//! request is passed on whole. It does not decide who is admitted (`access`).

use crate::protocol::{Cidr, Proto};
use crate::transport::proxy_protocol::{self, ProxyHeaderError};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

mod refuse;
use refuse::first_bytes;
pub use refuse::{RefuseHeader, UNTRUSTED_HEADER};

pub use crate::caddy::VISITOR_HEADER;
/// A PROXY header or a request head must have arrived within this time: a load
/// balancer or Caddy sends it with the connection's first bytes.
pub const LEARN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read while looking for `Pipe-Visitor` (Caddy's own limit on
/// request headers is 1 MiB, but a head this size never comes from a browser).
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Headers parsed in a request head; more is refused.
const MAX_HEADERS: usize = 128;
/// Bytes read per call while a request head is incomplete, and at most what is taken
/// off a visitor's socket to look for a forged PROXY header (passed on as early bytes).
const READ_CHUNK: usize = 4096;

/// Where a connection's visitor address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The TCP peer is the visitor.
    Peer,
    /// The TCP peer is the visitor, and a PROXY header it sends is refused: headers
    /// come from the load balancers in `--accept-proxy-protocol` only (none without
    /// it), so one from anyone else is a forgery (see [`learn`] and [`RefuseHeader`]).
    PeerNoHeader,
    /// A trusted load balancer: a PROXY header comes first and is consumed.
    ProxyHeader,
    /// Caddy, for an http forward: the request head names the visitor.
    CaddyHeader,
}

/// Decides, at accept time, where the visitor of a connection from `peer` is learnt.
/// On an http forward the TCP peer is Caddy, which speaks HTTP and never relays a
/// visitor's PROXY header.
///
/// ```
/// use pipe::protocol::Proto;
/// use pipe::server::real_addr::{source, Source};
/// let lb = vec!["10.0.0.0/8".parse().unwrap()];
/// let (inside, outside) = ("10.1.2.3:5".parse().unwrap(), "203.0.113.9:5".parse().unwrap());
/// assert_eq!(source(Proto::Tcp, false, &lb, inside), Source::ProxyHeader);
/// assert_eq!(source(Proto::Tcp, false, &lb, outside), Source::PeerNoHeader);
/// assert_eq!(source(Proto::Tcp, false, &[], outside), Source::PeerNoHeader);
/// assert_eq!(source(Proto::Http, true, &lb, inside), Source::CaddyHeader);
/// ```
pub fn source(proto: Proto, visitor_wanted: bool, trusted: &[Cidr], peer: SocketAddr) -> Source {
    match proto {
        Proto::Http if visitor_wanted => Source::CaddyHeader,
        Proto::Tcp if trusted.iter().any(|c| c.contains(peer.ip())) => Source::ProxyHeader,
        Proto::Tcp => Source::PeerNoHeader,
        _ => Source::Peer,
    }
}

impl Source {
    /// Whether the TCP peer itself is the visitor, known at accept time.
    pub fn is_peer(self) -> bool {
        matches!(self, Source::Peer | Source::PeerNoHeader)
    }
}

/// The visitor of one connection, and the bytes already read from it that must reach
/// the client before anything else.
#[derive(Debug)]
pub struct Visitor {
    pub addr: SocketAddr,
    /// The public address the visitor reached, when known.
    pub public: Option<SocketAddr>,
    pub early: Vec<u8>,
    /// The visitor had sent nothing yet when it was learnt (it may be waiting for the
    /// service to speak first), so a PROXY header may still come: splice through
    /// [`RefuseHeader`].
    pub refuse_header: bool,
}

impl Visitor {
    /// Sends the bytes already read from the visitor on `to` and lets them go: the
    /// visitor may stay open for days, and its task should not hold them that long.
    /// Returns how many were sent.
    pub async fn send_early<W: AsyncWrite + Unpin>(&mut self, to: &mut W) -> io::Result<usize> {
        let early = std::mem::take(&mut self.early);
        if !early.is_empty() {
            to.write_all(&early).await?;
        }
        Ok(early.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Proxy(#[from] ProxyHeaderError),
    #[error("request head: {0}")]
    Head(String),
    #[error("no PROXY header or request head within {}s", LEARN_TIMEOUT.as_secs())]
    Timeout,
    #[error("{UNTRUSTED_HEADER}")]
    UntrustedHeader,
}

/// Learns the visitor of `sock` (whose TCP peer is `peer`) from `source`.
pub async fn learn(
    sock: &mut TcpStream,
    peer: SocketAddr,
    source: Source,
) -> Result<Visitor, LearnError> {
    let public = sock.local_addr().ok();
    let work = async {
        match source {
            Source::Peer => Ok(Visitor {
                addr: peer,
                public,
                early: Vec::new(),
                refuse_header: false,
            }),
            Source::PeerNoHeader => {
                let first = first_bytes(sock).await?;
                Ok(Visitor {
                    addr: peer,
                    public,
                    refuse_header: first.is_none(),
                    early: first.unwrap_or_default(),
                })
            }
            Source::ProxyHeader => {
                let (announced, early) = proxy_protocol::read(sock).await?;
                Ok(Visitor {
                    addr: announced.src.unwrap_or(peer),
                    public: announced.dst.or(public),
                    early,
                    refuse_header: false,
                })
            }
            Source::CaddyHeader => {
                let (addr, early) = read_head(sock).await?;
                Ok(Visitor {
                    addr: addr.unwrap_or(peer),
                    // The public side is Caddy's, which Caddy does not name.
                    public: None,
                    early,
                    refuse_header: false,
                })
            }
        }
    };
    tokio::time::timeout(LEARN_TIMEOUT, work)
        .await
        .map_err(|_| LearnError::Timeout)?
}

/// Reads a request head (all of it is returned, to be passed on) and the address in
/// its `Pipe-Visitor` header.
async fn read_head(sock: &mut TcpStream) -> Result<(Option<SocketAddr>, Vec<u8>), LearnError> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        let start = buf.len();
        if start >= MAX_REQUEST_HEAD {
            return Err(LearnError::Head(format!(
                "longer than {MAX_REQUEST_HEAD} bytes"
            )));
        }
        buf.resize(start + READ_CHUNK.min(MAX_REQUEST_HEAD - start), 0);
        let n = sock
            .read(&mut buf[start..])
            .await
            .map_err(|e| LearnError::Head(e.to_string()))?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(LearnError::Head("closed before its end".into()));
        }
        if let Some(addr) = visitor_in_head(&buf)? {
            return Ok((addr, buf));
        }
    }
}

/// `Ok(None)` while the head is incomplete; `Ok(Some(addr))` once it is, with the
/// `Pipe-Visitor` address if there is a valid one.
///
/// ```
/// use pipe::server::real_addr::visitor_in_head;
/// let head = b"GET / HTTP/1.1\r\nHost: a\r\nPipe-Visitor: 127.0.0.2:5000\r\n\r\n";
/// assert_eq!(visitor_in_head(head).unwrap(), Some(Some("127.0.0.2:5000".parse().unwrap())));
/// assert_eq!(visitor_in_head(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap(), None);
/// assert_eq!(visitor_in_head(b"GET / HTTP/1.1\r\n\r\n").unwrap(), Some(None));
/// assert!(visitor_in_head(b"\x16\x03\x01 not http\r\n\r\n").is_err());
/// ```
pub fn visitor_in_head(buf: &[u8]) -> Result<Option<Option<SocketAddr>>, LearnError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => Ok(Some(
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(VISITOR_HEADER))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse().ok()),
        )),
        Err(e) => Err(LearnError::Head(e.to_string())),
    }
}
