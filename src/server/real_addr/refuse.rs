//! Refusing a PROXY header from a visitor outside `--accept-proxy-protocol` (or from
//! anyone, without it): the check on the first bytes before a stream is opened
//! ([`first_bytes`]), and the socket wrapper that goes on checking for a visitor that
//! had sent nothing by then ([`RefuseHeader`]).
//!
//! Owns when a connection counts as opening with a header and what a refusal does
//! (reset, a rate-limited log line); `real_addr` decides whom it applies to.

use super::{LearnError, READ_CHUNK};
use crate::logging::LogLimit;
use crate::transport::proxy_protocol::{opens_with_header, ProxyHeaderError};
use crate::transport::tcp::reset_on_close;
use std::io::{self, Read};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Lines about refused PROXY headers per [`REFUSAL_LOG_PERIOD`]: a forger can send
/// them at will, an operator needs to hear of it, not to read each one.
const REFUSAL_LOG_BURST: u32 = 10;
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);
static REFUSAL_LOG: LogLimit = LogLimit::new(REFUSAL_LOG_BURST, REFUSAL_LOG_PERIOD);

/// Why a connection was ended by [`learn`](super::learn) or [`RefuseHeader`].
pub const UNTRUSTED_HEADER: &str =
    "PROXY header from a source outside --accept-proxy-protocol; connection refused";

/// The bytes an untrusted visitor has sent so far, taken off its socket without
/// waiting for a first one: `Ok(Some(bytes))` once they cannot start a PROXY header
/// (empty when the visitor closed at once), `Ok(None)` when nothing had arrived.
/// Bytes that may still be the start of a signature wait for more, as long as they
/// still match (the caller's deadline bounds it). A header is refused here, before
/// any stream is opened: the socket is set to reset and the client hears nothing.
///
/// Waiting for a first byte would cost every visitor whose protocol has the server
/// speak first (SSH, SMTP, MySQL) until the deadline; so a visitor that has sent
/// nothing yet gets its stream at once and is checked on the way ([`RefuseHeader`]).
pub(super) async fn first_bytes(sock: &mut TcpStream) -> Result<Option<Vec<u8>>, LearnError> {
    let mut buf = vec![0u8; READ_CHUNK];
    // A read straight off the socket: tokio's own `try_read` reports "would block"
    // until its reactor has seen the socket readable, which a just accepted socket
    // with bytes waiting may not have been yet.
    let mut n = match (&*socket2::SockRef::from(&*sock)).read(&mut buf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(ProxyHeaderError::Io(e).into()),
    };
    let mut last = n;
    while last > 0 && opens_with_header(&buf[..n]).is_none() {
        // At most 11 bytes are held here, so a whole chunk always fits.
        last = sock
            .read(&mut buf[n..])
            .await
            .map_err(ProxyHeaderError::Io)?;
        n += last;
    }
    buf.truncate(n);
    if opens_with_header(&buf) == Some(true) {
        reset_on_close(sock);
        log_refusal();
        return Err(LearnError::UntrustedHeader);
    }
    Ok(Some(buf))
}

/// One rate-limited line per refused header: a forger sends them at will.
fn log_refusal() {
    if let Some(dropped) = REFUSAL_LOG.admit() {
        tracing::info!("{UNTRUSTED_HEADER}{}", LogLimit::dropped_note(dropped));
    }
}

/// A visitor's socket that fails, without passing a byte on, if the connection opens
/// with a PROXY header: for a visitor that had sent nothing when its stream was
/// opened ([`Visitor::refuse_header`](super::Visitor::refuse_header)). While the first bytes may still be the start
/// of a signature (at most 11 of them) they are held back; once they cannot be,
/// everything passes through untouched.
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
                            log_refusal();
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::PermissionDenied,
                                UNTRUSTED_HEADER,
                            )));
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

#[cfg(test)]
mod tests {
    use super::super::{learn, LearnError, Source, Visitor, LEARN_TIMEOUT};
    use super::*;
    use crate::transport::proxy_protocol;
    use std::net::SocketAddr;
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

    /// A connected pair: (the visitor's end, the accepted end).
    async fn pair() -> (TcpStream, TcpStream, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let visitor = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (sock, peer) = l.accept().await.unwrap();
        (visitor, sock, peer)
    }

    /// Learns an untrusted visitor that sent `first` before it was accepted.
    async fn learn_after(first: &[u8]) -> (TcpStream, Result<Visitor, LearnError>) {
        let (mut visitor, mut sock, peer) = pair().await;
        visitor.write_all(first).await.unwrap();
        // On loopback the bytes are in the accepted socket once the write returned.
        let learnt = learn(&mut sock, peer, Source::PeerNoHeader).await;
        drop(sock);
        (visitor, learnt)
    }

    #[tokio::test]
    async fn a_header_already_sent_is_refused_before_any_stream_with_a_reset() {
        let v2 = proxy_protocol::header(
            crate::protocol::ProxyVersion::V2,
            "203.0.113.7:5".parse().unwrap(),
            None,
            false,
        );
        for first in [&b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 80\r\n"[..], &v2] {
            let (mut visitor, learnt) = learn_after(first).await;
            assert!(
                matches!(learnt, Err(LearnError::UntrustedHeader)),
                "{learnt:?}"
            );
            let mut buf = [0u8; 1];
            let e = visitor.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        }
    }

    #[tokio::test]
    async fn other_first_bytes_become_early_bytes_and_need_no_more_checking() {
        let (_v, learnt) = learn_after(b"GET / HTTP/1.1\r\n\r\n").await;
        let v = learnt.unwrap();
        assert_eq!(v.early, b"GET / HTTP/1.1\r\n\r\n");
        assert!(!v.refuse_header);
    }

    #[tokio::test]
    async fn a_visitor_that_waits_for_the_service_is_not_kept_waiting() {
        // SSH, SMTP, MySQL: the visitor sends nothing until the service greets it.
        let (_visitor, mut sock, peer) = pair().await;
        let started = std::time::Instant::now();
        let v = learn(&mut sock, peer, Source::PeerNoHeader).await.unwrap();
        assert!(v.refuse_header && v.early.is_empty());
        assert!(
            started.elapsed() < LEARN_TIMEOUT / 10,
            "learning took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_partial_signature_waits_only_while_it_still_matches() {
        for (rest, refused) in [(&b"IMA centauri"[..], false), (b"OXY UNKNOWN\r\n", true)] {
            let (mut visitor, mut sock, peer) = pair().await;
            visitor.write_all(b"PR").await.unwrap();
            let rest = rest.to_vec();
            let send = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                visitor.write_all(&rest).await.unwrap();
                visitor
            });
            let learnt = learn(&mut sock, peer, Source::PeerNoHeader).await;
            drop(send.await.unwrap());
            match learnt {
                Err(LearnError::UntrustedHeader) => assert!(refused),
                Ok(v) => {
                    assert!(!refused);
                    assert_eq!(v.early, b"PRIMA centauri");
                    assert!(!v.refuse_header);
                }
                Err(e) => panic!("{e}"),
            }
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
