//! The connection loop of the admin and of the inspector: accepts, caps, times out and
//! serves HTTP/1.1 connections to an axum router.
//!
//! Owns what a connection may cost: at most [`MAX_CONNECTIONS`] at once (past it a new
//! one is closed at once, so idle connections to these servers can never take the file
//! descriptors that visitors, logins and peer links need), a request head must arrive
//! within [`HEADER_READ_TIMEOUT`] (also the longest a kept-alive connection may wait
//! for its next request), and a connection on which no byte moves either way for
//! [`IDLE_TIMEOUT`] is closed. It does not decide what a request may do (see `guard`
//! and the routers).

use super::guard::Local;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Connections served at once. A dashboard or inspector tab uses a handful and a
/// Prometheus scraper one; 256 leaves room for many viewers while a flood of idle
/// connections holds at most 256 descriptors of the process (its default limit is
/// thousands, and every visitor of every tunnel needs one or two).
pub const MAX_CONNECTIONS: usize = 256;
/// A request head must be complete this long after the connection is ready for one:
/// a browser sends a head in one packet, so 10 s is generous, and a connection that
/// says nothing (or drips a head byte by byte) holds its slot no longer. It also
/// closes kept-alive connections 10 s after their last answer: both pages poll every
/// few seconds at most, and a browser reopens a closed connection by itself.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which no byte moved either way for this long is closed, whatever
/// it was doing: a stalled request body or an answer nobody reads. Longer than the
/// slowest route (a replay waits up to 30 s for the local service).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// After a failed accept (out of descriptors, say), wait this long before the next so
/// the loop does not spin while the process is starved.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// At shutdown, requests in flight get this long to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown`; `what` names the server in logs.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    what: &'static str,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(server = what, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(server = what, %peer, cap = MAX_CONNECTIONS, "connection cap reached: closed");
            continue;
        };
        tracker.spawn(connection(stream, app.clone(), permit, shutdown.clone()));
    }
    tracker.close();
    if tokio::time::timeout(DRAIN, tracker.wait()).await.is_err() {
        debug!(server = what, "connections still open at shutdown");
    }
}

/// One connection, from its first byte to its close.
async fn connection(
    stream: TcpStream,
    app: Router,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let local = stream.local_addr().ok();
    let io = Watched::new(stream);
    let last = io.last.clone();
    let router = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(l) = local {
            req.extensions_mut().insert(Local(l));
        }
        router.call(req)
    });
    let mut conn = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service));
    let mut stopping = false;
    loop {
        let idle_at = last.at() + IDLE_TIMEOUT;
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "admin or inspector connection ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                if last.at() + IDLE_TIMEOUT <= Instant::now() {
                    debug!(?local, "idle connection closed");
                    return;
                }
            }
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// When a byte last moved on a connection.
struct LastActivity {
    base: Instant,
    /// Milliseconds from `base`.
    ms: AtomicU64,
}

impl LastActivity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.ms.store(ms, Ordering::Relaxed);
    }

    fn at(&self) -> Instant {
        self.base + Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }
}

/// A socket that notes every read and write that moved bytes.
struct Watched {
    inner: TcpStream,
    last: Arc<LastActivity>,
}

impl Watched {
    fn new(inner: TcpStream) -> Watched {
        Watched {
            inner,
            last: Arc::new(LastActivity {
                base: Instant::now(),
                ms: AtomicU64::new(0),
            }),
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                this.last.touch();
            }
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                this.last.touch();
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server() -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/", get(|| async { "hi" }))
            .route("/echo", post(|body: String| async move { body }));
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, app, "test", stop.clone()));
        (addr, stop)
    }

    /// Reads until the peer closes; the bytes read.
    async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all).await;
        all
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_is_closed_at_once() {
        let (addr, _stop) = server().await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut b = [0u8; 256];
            let n = s.read(&mut b).await.unwrap();
            assert!(
                b[..n].starts_with(b"HTTP/1.1 200"),
                "served while under the cap"
            );
            held.push(s);
        }
        let mut over = TcpStream::connect(addr).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(10), until_closed(&mut over));
        assert_eq!(closed.await.expect("closed at once"), b"");
        drop(held.pop());
        // A slot is free again: the next one is served.
        let mut next = TcpStream::connect(addr).await.unwrap();
        next.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        assert!(until_closed(&mut next).await.ends_with(b"hi"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_dripping_head_is_cut_at_the_header_read_timeout() {
        let (addr, _stop) = server().await;
        let start = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert_eq!(until_closed(&mut silent).await, b"");
        let waited = start.elapsed();
        assert!(
            waited >= HEADER_READ_TIMEOUT && waited < IDLE_TIMEOUT,
            "{waited:?}"
        );

        let start = Instant::now();
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut kept).await;
        assert!(answer.ends_with(b"hi"), "answered, then closed while idle");
        assert!(start.elapsed() >= HEADER_READ_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_at_the_idle_timeout() {
        let (addr, _stop) = server().await;
        let start = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhalf")
            .await
            .unwrap();
        let got = until_closed(&mut s).await;
        assert!(
            !got.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        let waited = start.elapsed();
        assert!(waited >= IDLE_TIMEOUT, "{waited:?}");
    }
}
