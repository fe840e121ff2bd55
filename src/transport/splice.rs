//! Bidirectional byte copy that preserves half-close and holds no buffer while idle.
//!
//! Each direction reads into a scratch buffer borrowed from a per-thread pool only for
//! the duration of one poll; a connection that is waiting for bytes owns no buffer at
//! all, which is what keeps 10,000 idle tunnelled connections cheap. A buffer is kept
//! only while its bytes cannot be written yet (back-pressure). When one direction ends,
//! its write half is shut down (FIN travels on) and the other direction carries on,
//! bounded by an idle timeout so half-closed connections cannot linger forever.

use crate::limit::RateLimiter;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes read per call. Reads this large become equally large yamux frames, which is
/// what cut system calls per megabyte from hundreds to tens (docs/BENCHMARKS.md).
pub const COPY_BUF: usize = 256 * 1024;

/// Scratch buffers kept per thread; more than this are freed when returned.
const POOL_MAX: usize = 8;

/// Reads per direction before yielding to the scheduler, so one fast connection cannot
/// starve the others on its thread.
const YIELD_EVERY: usize = 16;

/// How long a connection whose one direction has ended may sit with no traffic in the
/// other before both are closed.
pub const HALF_CLOSED_IDLE: Duration = Duration::from_secs(120);

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; COPY_BUF].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// Per-connection options.
#[derive(Default, Clone)]
pub struct SpliceOptions {
    /// Counts bytes copied from `a` to `b` as they move.
    pub a_to_b: Option<Arc<AtomicU64>>,
    /// Counts bytes copied from `b` to `a` as they move.
    pub b_to_a: Option<Arc<AtomicU64>>,
    /// `b` starts with the one-byte "connected" status of a tunnel data stream; it is
    /// consumed, and a `b` that ends before it fails the splice (the local dial failed).
    pub b_status_first: bool,
    /// Rate limits applied to each direction.
    pub limit_a_to_b: Option<Arc<RateLimiter>>,
    pub limit_b_to_a: Option<Arc<RateLimiter>>,
    /// Idle bound once one direction has ended (default `HALF_CLOSED_IDLE`).
    pub half_closed_idle: Option<Duration>,
}

/// Totals of a finished splice.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SpliceTotals {
    pub a_to_b: u64,
    pub b_to_a: u64,
}

enum State {
    Status,
    Reading,
    Writing {
        buf: Box<[u8]>,
        pos: usize,
        end: usize,
    },
    ShuttingDown,
    Done,
}

struct Direction {
    state: State,
    total: u64,
    counter: Option<Arc<AtomicU64>>,
    limit: Option<Arc<RateLimiter>>,
    wait: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl Direction {
    fn new(status: bool, counter: Option<Arc<AtomicU64>>, limit: Option<Arc<RateLimiter>>) -> Self {
        Direction {
            state: if status {
                State::Status
            } else {
                State::Reading
            },
            total: 0,
            counter,
            limit,
            wait: None,
            progressed: false,
        }
    }

    fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// How many bytes the rate limit allows now, or Pending until some are allowed.
    fn poll_allowance(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        let Some(limit) = &self.limit else {
            return Poll::Ready(COPY_BUF);
        };
        loop {
            if let Some(w) = &mut self.wait {
                ready!(w.as_mut().poll(cx));
                self.wait = None;
            }
            match limit.allowance(Instant::now(), COPY_BUF) {
                Ok(n) => return Poll::Ready(n),
                Err(at) => self.wait = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut reads = 0;
        loop {
            match &mut self.state {
                State::Status => {
                    let mut b = [0u8; 1];
                    let mut rb = ReadBuf::new(&mut b);
                    // A stream dropped before its status (reset) also means "not
                    // reached": the visitor is closed as for any failed dial.
                    let read = ready!(Pin::new(&mut *r).poll_read(cx, &mut rb));
                    if read.is_err() || rb.filled() != [crate::protocol::STREAM_CONNECTED] {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            "the client could not reach the local service",
                        )));
                    }
                    self.state = State::Reading;
                }
                State::Reading => {
                    if reads == YIELD_EVERY {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    let allowed = ready!(self.poll_allowance(cx));
                    let mut buf = take_buf();
                    let mut rb = ReadBuf::new(&mut buf[..allowed]);
                    match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                        Poll::Pending => {
                            give_buf(buf);
                            // Bytes written to a yamux stream move on only once flushed.
                            ready!(Pin::new(&mut *w).poll_flush(cx))?;
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => {
                            give_buf(buf);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(())) => {}
                    }
                    let n = rb.filled().len();
                    reads += 1;
                    super::alloc::note_moved(n);
                    if n == 0 {
                        give_buf(buf);
                        self.state = State::ShuttingDown;
                        continue;
                    }
                    if let Some(limit) = &self.limit {
                        limit.consume(Instant::now(), n);
                    }
                    self.state = State::Writing {
                        buf,
                        pos: 0,
                        end: n,
                    };
                }
                State::Writing { buf, pos, end } => {
                    while *pos < *end {
                        let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[*pos..*end]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *pos += n;
                        self.total += n as u64;
                        self.progressed = true;
                        if let Some(c) = &self.counter {
                            c.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                    let State::Writing { buf, .. } =
                        std::mem::replace(&mut self.state, State::Reading)
                    else {
                        unreachable!()
                    };
                    give_buf(buf);
                }
                State::ShuttingDown => {
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Copies `a` → `b` and `b` → `a` until both directions have ended.
pub fn splice<'a, A, B>(a: &'a mut A, b: &'a mut B, opts: SpliceOptions) -> Splice<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    Splice {
        a,
        b,
        ab: Direction::new(false, opts.a_to_b, opts.limit_a_to_b),
        ba: Direction::new(opts.b_status_first, opts.b_to_a, opts.limit_b_to_a),
        idle: opts.half_closed_idle.unwrap_or(HALF_CLOSED_IDLE),
        idle_timer: None,
    }
}

/// The future returned by [`splice`].
pub struct Splice<'a, A, B> {
    a: &'a mut A,
    b: &'a mut B,
    ab: Direction,
    ba: Direction,
    idle: Duration,
    idle_timer: Option<Pin<Box<Sleep>>>,
}

impl<A, B> Future for Splice<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<SpliceTotals>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.ab.done() {
            if let Poll::Ready(r) = this.ab.poll_copy(cx, this.a, this.b) {
                r?;
            }
        }
        if !this.ba.done() {
            if let Poll::Ready(r) = this.ba.poll_copy(cx, this.b, this.a) {
                r?;
            }
        }
        let totals = SpliceTotals {
            a_to_b: this.ab.total,
            b_to_a: this.ba.total,
        };
        if this.ab.done() && this.ba.done() {
            return Poll::Ready(Ok(totals));
        }
        if this.ab.done() || this.ba.done() {
            let progressed =
                std::mem::take(&mut this.ab.progressed) | std::mem::take(&mut this.ba.progressed);
            let deadline = Instant::now() + this.idle;
            match &mut this.idle_timer {
                None => this.idle_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                Some(t) if progressed => t.as_mut().reset(deadline),
                Some(_) => {}
            }
            if let Some(t) = &mut this.idle_timer {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "half-closed connection idle",
                    )));
                }
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_and_preserves_half_close() {
        let (mut a_user, mut a) = duplex(4096);
        let (mut b, mut b_user) = duplex(4096);
        let task =
            tokio::spawn(async move { splice(&mut a, &mut b, SpliceOptions::default()).await });
        // a's user sends a request and half-closes.
        a_user.write_all(b"request").await.unwrap();
        a_user.shutdown().await.unwrap();
        let mut req = Vec::new();
        b_user.read_to_end(&mut req).await.unwrap();
        assert_eq!(req, b"request");
        // b's user still answers in full after seeing EOF.
        let answer = vec![7u8; 1_000_000];
        let w = async {
            b_user.write_all(&answer).await.unwrap();
            b_user.shutdown().await.unwrap();
        };
        let r = async {
            let mut got = Vec::new();
            a_user.read_to_end(&mut got).await.unwrap();
            got
        };
        let (_, got) = tokio::join!(w, r);
        assert_eq!(got, answer);
        let totals = task.await.unwrap().unwrap();
        assert_eq!(
            totals,
            SpliceTotals {
                a_to_b: 7,
                b_to_a: 1_000_000
            }
        );
    }

    #[tokio::test]
    async fn status_byte_is_consumed_and_missing_status_fails() {
        let (mut a_user, mut a) = duplex(64);
        let (mut b, mut b_user) = duplex(64);
        let opts = SpliceOptions {
            b_status_first: true,
            ..Default::default()
        };
        let task = tokio::spawn(async move { splice(&mut a, &mut b, opts).await });
        b_user
            .write_all(&[crate::protocol::STREAM_CONNECTED])
            .await
            .unwrap();
        b_user.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        a_user.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi");
        drop(b_user);
        drop(a_user);
        let _ = task.await.unwrap();

        let (_a_user, mut a) = duplex(64);
        let (mut b, b_user) = duplex(64);
        let opts = SpliceOptions {
            b_status_first: true,
            ..Default::default()
        };
        drop(b_user);
        let err = splice(&mut a, &mut b, opts).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test(start_paused = true)]
    async fn half_closed_idle_connection_is_closed() {
        let (mut a_user, mut a) = duplex(64);
        let (mut b, _b_user) = duplex(64);
        a_user.shutdown().await.unwrap();
        let opts = SpliceOptions {
            half_closed_idle: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let start = Instant::now();
        let err = splice(&mut a, &mut b, opts).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test]
    async fn counters_move_live() {
        let (mut a_user, mut a) = duplex(64);
        let (mut b, mut b_user) = duplex(64);
        let ab = Arc::new(AtomicU64::new(0));
        let opts = SpliceOptions {
            a_to_b: Some(ab.clone()),
            ..Default::default()
        };
        let task = tokio::spawn(async move { splice(&mut a, &mut b, opts).await });
        a_user.write_all(b"12345").await.unwrap();
        let mut got = [0u8; 5];
        b_user.read_exact(&mut got).await.unwrap();
        assert_eq!(ab.load(Ordering::Relaxed), 5);
        drop(a_user);
        drop(b_user);
        let _ = task.await;
    }
}
