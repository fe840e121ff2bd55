//! The real visitor of a public TCP connection. Usually the TCP peer; but a load
//! balancer listed in `--accept-proxy-protocol` announces the visitor in a PROXY
//! header, and for an http forward whose client wants the visitor (PROXY protocol to
//! its service) Caddy names it in the `Pipe-Visitor` request header of each connection
//! (its route then opens one upstream connection per request).
//!
//! Owns how much may be read to learn the address (size caps, a deadline) and which
//! bytes go on to the client: a PROXY header is consumed, an HTTP request is passed on
//! whole. It does not decide who is admitted (`access`).

use crate::protocol::{Cidr, Proto};
use crate::transport::proxy_protocol::{self, opens_with_header, ProxyHeaderError};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub use crate::caddy::VISITOR_HEADER;
/// A PROXY header or a request head must have arrived within this time: a load
/// balancer or Caddy sends it with the connection's first bytes.
pub const LEARN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head read while looking for `Pipe-Visitor` (Caddy's own limit on
/// request headers is 1 MiB, but a head this size never comes from a browser).
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Headers parsed in a request head; more is refused.
const MAX_HEADERS: usize = 128;
/// Bytes read per call while a request head is incomplete.
const READ_CHUNK: usize = 4096;

/// Where a connection's visitor address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The TCP peer is the visitor.
    Peer,
    /// The TCP peer is the visitor, and a PROXY header it sends is refused: the
    /// operator accepts headers from the load balancers in `--accept-proxy-protocol`
    /// only, so a header from anyone else is a forgery (see [`RefuseHeader`]).
    PeerNoHeader,
    /// A trusted load balancer: a PROXY header comes first and is consumed.
    ProxyHeader,
    /// Caddy, for an http forward: the request head names the visitor.
    CaddyHeader,
}

/// Decides, at accept time, where the visitor of a connection from `peer` is learnt.
pub fn source(proto: Proto, visitor_wanted: bool, trusted: &[Cidr], peer: SocketAddr) -> Source {
    match proto {
        Proto::Http if visitor_wanted => Source::CaddyHeader,
        Proto::Tcp if trusted.iter().any(|c| c.contains(peer.ip())) => Source::ProxyHeader,
        Proto::Tcp if !trusted.is_empty() => Source::PeerNoHeader,
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
            }),
            // Learnt at accept time; a header is refused on the way (`RefuseHeader`).
            Source::PeerNoHeader => Ok(Visitor {
                addr: peer,
                public,
                early: Vec::new(),
            }),
            Source::ProxyHeader => {
                let (announced, early) = proxy_protocol::read(sock).await?;
                Ok(Visitor {
                    addr: announced.src.unwrap_or(peer),
                    public: announced.dst.or(public),
                    early,
                })
            }
            Source::CaddyHeader => {
                let (addr, early) = read_head(sock).await?;
                Ok(Visitor {
                    addr: addr.unwrap_or(peer),
                    // The public side is Caddy's, which Caddy does not name.
                    public: None,
                    early,
                })
            }
        }
    };
    tokio::time::timeout(LEARN_TIMEOUT, work)
        .await
        .map_err(|_| LearnError::Timeout)?
}

/// Why a connection was ended by [`RefuseHeader`].
pub const UNTRUSTED_HEADER: &str =
    "PROXY header from a source outside --accept-proxy-protocol; connection refused";

/// A visitor's socket that fails, without passing a byte on, if the connection opens
/// with a PROXY header (`Source::PeerNoHeader`). While the first bytes may still be
/// the start of a signature (at most 11 of them) they are held back; once they cannot
/// be, everything passes through untouched.
pub struct RefuseHeader<'a> {
    inner: &'a mut TcpStream,
    first: First,
}

enum First {
    /// Undecided: the bytes read so far, all a start of a signature.
    Deciding(Vec<u8>),
    /// No header: these bytes go out before any more are read.
    Passing(Vec<u8>),
    Open,
}

impl<'a> RefuseHeader<'a> {
    pub fn new(inner: &'a mut TcpStream) -> Self {
        RefuseHeader {
            inner,
            first: First::Deciding(Vec::new()),
        }
    }
}

impl AsyncRead for RefuseHeader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.first {
                First::Open => return Pin::new(&mut *this.inner).poll_read(cx, buf),
                First::Passing(held) => {
                    let n = held.len().min(buf.remaining());
                    buf.put_slice(&held[..n]);
                    held.drain(..n);
                    if held.is_empty() {
                        this.first = First::Open;
                    }
                    return Poll::Ready(Ok(()));
                }
                First::Deciding(held) => {
                    let mut more = [0u8; 16];
                    let mut more = ReadBuf::new(&mut more);
                    ready!(Pin::new(&mut *this.inner).poll_read(cx, &mut more))?;
                    if more.filled().is_empty() {
                        // Closed while undecided: the held bytes were the payload.
                        let held = std::mem::take(held);
                        if held.is_empty() {
                            this.first = First::Open;
                            return Poll::Ready(Ok(()));
                        }
                        this.first = First::Passing(held);
                        continue;
                    }
                    held.extend_from_slice(more.filled());
                    match opens_with_header(held) {
                        Some(true) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::PermissionDenied,
                                UNTRUSTED_HEADER,
                            )))
                        }
                        Some(false) => this.first = First::Passing(std::mem::take(held)),
                        None => {}
                    }
                }
            }
        }
    }
}

impl AsyncWrite for RefuseHeader<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Sends `pieces` (with a pause between, so they arrive as separate reads) into a
    /// `RefuseHeader` and returns what it let through, or its error.
    async fn through(pieces: &[&[u8]]) -> io::Result<Vec<u8>> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut sender = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut sock, _) = l.accept().await.unwrap();
        let pieces: Vec<Vec<u8>> = pieces.iter().map(|p| p.to_vec()).collect();
        let send = tokio::spawn(async move {
            for p in pieces {
                sender.write_all(&p).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sender.shutdown().await.unwrap();
            sender
        });
        let mut got = Vec::new();
        let r = RefuseHeader::new(&mut sock).read_to_end(&mut got).await;
        drop(send.await.unwrap());
        r.map(|_| got)
    }

    #[tokio::test]
    async fn a_header_is_refused_even_when_its_signature_comes_in_pieces() {
        for pieces in [
            &[b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\nGET /".as_slice()][..],
            &[b"PR", b"OX", b"Y TCP4 1.2.3.4 5.6.7.8 1 2\r\n"],
            &[b"\r\n\r\n\0\r", b"\nQUIT\n\x21\x11\0\x0c"],
        ] {
            let e = through(pieces).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert_eq!(e.to_string(), UNTRUSTED_HEADER);
        }
    }

    #[tokio::test]
    async fn anything_else_passes_byte_for_byte() {
        let cases: [&[&[u8]]; 5] = [
            &[b"GET / HTTP/1.1\r\n\r\n"],
            &[b"PROX", b"IMA centauri"],
            &[b"\r\n", b"\r\nnot v2"],
            &[b"PROXY"],
            &[],
        ];
        for pieces in cases {
            let want: Vec<u8> = pieces.concat();
            assert_eq!(through(pieces).await.unwrap(), want, "{pieces:?}");
        }
        let big = vec![b'x'; 1 << 20];
        assert_eq!(through(&[&big]).await.unwrap(), big);
    }
}
