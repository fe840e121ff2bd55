//! The data path under stress: resets carried through the tunnel, protocol violations
//! ending a session, caps that protect sibling tunnels, the pre-auth table under a
//! flood, and "any port" while the ephemeral range is crowded.

mod common;

use common::*;
use pipe::auth::client_handshake;
use pipe::protocol::{
    ClientMsg, ForwardRequest, MessageStream, Proto, ServerMsg, MAX_CONTROL_FRAME,
};
use pipe::transport::mux;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// What the backend sends before it resets.
const BEFORE_RESET: usize = 64 * 1024;

fn reset_on_close(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// Reads until the stream ends; returns the bytes read and how it ended.
async fn read_to_end_or_error(s: &mut TcpStream) -> (usize, std::io::Result<()>) {
    let mut n = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Err(_) => panic!("the stream neither ended nor failed within {WAIT:?}"),
            Ok(Ok(0)) => return (n, Ok(())),
            Ok(Ok(k)) => n += k,
            Ok(Err(e)) => return (n, Err(e)),
        }
    }
}

/// A backend that answers a 3-byte request with `BEFORE_RESET` bytes, then resets.
async fn backend_that_resets() -> u16 {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = backend.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 3];
                if s.read_exact(&mut req).await.is_err() {
                    return;
                }
                let _ = s.write_all(&vec![b'r'; BEFORE_RESET]).await;
                reset_on_close(&s);
            });
        }
    });
    port
}

async fn visitor_sees_the_reset(public: u16) {
    let mut v = TcpStream::connect(("127.0.0.1", public)).await.unwrap();
    v.write_all(b"GET").await.unwrap();
    let (n, end) = read_to_end_or_error(&mut v).await;
    let err = end.expect_err("a reset backend looked like a complete response");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(n <= BEFORE_RESET, "{n} bytes");
}

/// A backend for one connection: reports when its first byte arrived, then how the
/// connection ended.
struct Watching {
    port: u16,
    got: oneshot::Receiver<()>,
    end: oneshot::Receiver<std::io::Result<()>>,
}

async fn backend_watching() -> Watching {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = backend.local_addr().unwrap().port();
    let (got_tx, got) = oneshot::channel();
    let (end_tx, end) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = backend.accept().await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        let _ = got_tx.send(());
        let _ = end_tx.send(read_to_end_or_error(&mut s).await.1);
    });
    Watching { port, got, end }
}

async fn backend_sees_the_reset(public: u16, w: Watching) {
    let mut v = TcpStream::connect(("127.0.0.1", public)).await.unwrap();
    v.write_all(b"x").await.unwrap();
    tokio::time::timeout(WAIT, w.got).await.unwrap().unwrap();
    reset_on_close(&v);
    drop(v);
    let end = tokio::time::timeout(WAIT, w.end).await.unwrap().unwrap();
    let err = end.expect_err("a reset visitor looked like a clean close");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

fn relay_to(port: u16) -> (Proc, u16) {
    let target = format!("tcp:127.0.0.1:{port}");
    let mut p = Proc::spawn(pipec_bin(), &[s("relay"), s("tcp:127.0.0.1:0"), target]);
    let line = p.wait_line("listening on ", WAIT);
    let public = line.rsplit(':').next().unwrap().parse().unwrap();
    (p, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_reset_reaches_the_visitor_as_a_reset() {
    let bport = backend_that_resets().await;
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &format!("tcp:{bport}:0")], 1);
    visitor_sees_the_reset(ports[0]).await;
    let (_relay, public) = relay_to(bport);
    visitor_sees_the_reset(public).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_reset_reaches_the_backend_as_a_reset() {
    let w = backend_watching().await;
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &format!("tcp:{}:0", w.port)], 1);
    backend_sees_the_reset(ports[0], w).await;
    let w = backend_watching().await;
    let (_relay, public) = relay_to(w.port);
    backend_sees_the_reset(public, w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_close_stays_a_clean_close() {
    let echo = echo_service().await;
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("tcp:{}:0", echo.port)],
        1,
    );
    let mut v = TcpStream::connect(("127.0.0.1", ports[0])).await.unwrap();
    let data = random_bytes(300_000, 5);
    v.write_all(&data).await.unwrap();
    v.shutdown().await.unwrap();
    let (n, end) = read_to_end_or_error(&mut v).await;
    end.unwrap();
    assert_eq!(n, data.len());
}

/// A socket shared between a yamux driver and the test, which writes raw frames on it
/// once the driver is gone.
struct Tap(Arc<TcpStream>);

impl futures::io::AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl futures::io::AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Logs in for real and opens one TCP forward, then stops its yamux driver between
/// frames and hands back the raw socket and the forward's public port.
async fn mock_peer(server: SocketAddr) -> (Arc<TcpStream>, u16) {
    let sock = Arc::new(TcpStream::connect(server).await.unwrap());
    let (mux, driver) = mux::start(
        Tap(sock.clone()),
        mux::config(16),
        mux::Mode::Client,
        |_| {},
        CancellationToken::new(),
    );
    let driver = tokio::spawn(driver);
    let mut ctl = MessageStream::new(mux.open().await.unwrap(), MAX_CONTROL_FRAME);
    tokio::time::timeout(
        WAIT,
        client_handshake(
            &mut ctl,
            None,
            None,
            &mut pipe::accounts::proof::ClientKey::generate(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let req = ForwardRequest {
        id: 0,
        proto: Proto::Tcp,
        remote_port: 0,
        subdomain: None,
        speed_limit: None,
        local: "127.0.0.1:9".into(),
        options: Default::default(),
    };
    ctl.send(&ClientMsg::Forward(req)).await.unwrap();
    let reply = tokio::time::timeout(WAIT, ctl.recv::<ServerMsg>())
        .await
        .unwrap();
    let Ok(ServerMsg::ForwardOk { remote_port, .. }) = reply else {
        panic!("forward refused: {reply:?}");
    };
    driver.abort();
    let _ = driver.await;
    (sock, remote_port)
}

/// yamux frame: version 0, type, flags, stream id, length, then `body`.
fn frame(kind: u8, flags: u16, stream: u32, len: u32, body: usize) -> Vec<u8> {
    let mut f = vec![0, kind];
    f.extend_from_slice(&flags.to_be_bytes());
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend(std::iter::repeat_n(0u8, body));
    f
}

const DATA: u8 = 0;
const WINDOW_UPDATE: u8 = 1;
const PING: u8 = 2;
const SYN: u16 = 1;
const ACK: u16 = 2;
/// yamux's initial stream window: a first frame may carry at most this.
const FIRST_FRAME_MAX: usize = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yamux_protocol_violation_ends_that_session_within_1s() {
    let echo = echo_service().await;
    let server = Piped::start(&[]);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("tcp:{}:0", echo.port)],
        1,
    );
    let big = FIRST_FRAME_MAX + 1;
    let violations = [
        (
            "window update overflowing the send window",
            frame(WINDOW_UPDATE, 0, 1, u32::MAX, 0),
        ),
        (
            "first frame over the initial window",
            frame(DATA, SYN, 3, big as u32, big),
        ),
        ("unsolicited pong", frame(PING, ACK, 0, 12345, 0)),
        ("reused stream id", frame(DATA, SYN, 1, 1, 1)),
    ];
    for (what, bytes) in violations {
        let (sock, port) = mock_peer(server.addr).await;
        assert!(!port_free(port), "{what}: forward not bound");
        let t = Instant::now();
        raw_write(&sock, &bytes).await;
        // The server answers with GoAway and closes the connection.
        raw_read_to_end(&sock, what).await;
        let closed = t.elapsed();
        eventually(Duration::from_secs(2), "port freed", || port_free(port)).await;
        let freed = t.elapsed();
        assert!(
            closed <= Duration::from_secs(1),
            "{what}: closed after {closed:?}"
        );
        assert!(
            freed <= Duration::from_secs(1),
            "{what}: port freed after {freed:?}"
        );
        assert_eq!(
            echo_roundtrip(ports[0], b"still here").await,
            b"still here",
            "{what}"
        );
    }
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

async fn raw_write(s: &TcpStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        s.writable().await.unwrap();
        match s.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("write: {e}"),
        }
    }
}

async fn raw_read_to_end(s: &TcpStream, what: &str) {
    let mut sink = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = tokio::time::timeout_at(deadline, s.readable()).await;
        assert!(ready.is_ok(), "{what}: session still open after {WAIT:?}");
        match s.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

/// Opens a connection to `port` and checks it echoes; `None` when it was refused.
async fn served(port: u16) -> Option<TcpStream> {
    let mut v = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    v.write_all(b"e").await.ok()?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(WAIT, v.read(&mut b)).await {
        Ok(Ok(1)) => Some(v),
        Ok(_) => None,
        Err(_) => panic!("a visitor was neither served nor refused"),
    }
}

/// Like [`served`], trying again while the tunnel may still be releasing closed
/// visitors (a few milliseconds), at most [`WAIT`].
async fn served_soon(port: u16) -> Option<TcpStream> {
    let deadline = Instant::now() + WAIT;
    loop {
        match served(port).await {
            Some(v) => return Some(v),
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_one_tunnels_cap_leaves_its_siblings_serving() {
    let echo = echo_service().await;
    // Session cap 30 over 3 tunnels: each keeps 5 (half its share) for itself.
    let server = Piped::start(&["--max-streams", "30"]);
    let f = format!("tcp:{}:0", echo.port);
    let (_c, ports) = Pipec::start(
        server.addr,
        &["--forward", &f, "--forward", &f, "--forward", &f],
        3,
    );
    let mut flood = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match served(ports[0]).await {
            Some(v) => flood.push(v),
            None => refused += 1,
        }
    }
    assert_eq!(
        flood.len(),
        20,
        "the flooded tunnel gets all but the reserves"
    );
    assert_eq!(refused, 20);
    for &sibling in &ports[1..] {
        for i in 0..20 {
            assert!(
                served(sibling).await.is_some(),
                "sibling request {i} refused"
            );
        }
        // The 20 above are closed, but piped gives their budget back only once each
        // visitor's task has ended: allow it that moment (bounded), then hold 5.
        let mut held = Vec::new();
        for i in 0..5 {
            held.push(
                served_soon(sibling)
                    .await
                    .unwrap_or_else(|| panic!("held {i} refused")),
            );
        }
        flood.extend(held);
    }
    // Everything is taken now; the session cap still holds.
    assert!(served(ports[1]).await.is_none());
}

/// Connects from a chosen loopback source address (127.0.0.N), as a distinct peer.
async fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((src, 0))).unwrap();
    sock.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_table_full_of_silent_connections_lets_a_real_login_in_within_1s() {
    let echo = echo_service().await;
    // The defaults: 1,024 pending in all, 128 per address; 8 addresses fill it.
    let server = Piped::start(&[]);
    let mut silent = Vec::new();
    for i in 0..8u8 {
        for _ in 0..128 {
            silent.push(connect_from([127, 0, 0, 2 + i], server.addr).await);
        }
    }
    // One more from a ninth address finds the table full: room is made for it too.
    silent.push(connect_from([127, 0, 0, 10], server.addr).await);
    let t = Instant::now();
    // One connection: each makes room for itself.
    let (_c, ports) = Pipec::start(
        server.addr,
        &[
            "--connections",
            "1",
            "--forward",
            &format!("tcp:{}:0", echo.port),
        ],
        1,
    );
    let took = t.elapsed();
    // Far below the login timeout (10 s) a full table would make it wait, far above a
    // busy machine's start-up time for pipec.
    assert!(took <= Duration::from_secs(5), "logged in after {took:?}");
    assert_eq!(echo_roundtrip(ports[0], b"in").await, b"in");
    // Only the largest holders paid: two of the 1,025 silent ones were dropped.
    let reads = silent.iter_mut().map(|s| async move {
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
            Ok(r) => {
                assert!(matches!(r, Ok(0) | Err(_)));
                1
            }
            Err(_) => 0,
        }
    });
    let dropped: usize = futures::future::join_all(reads).await.into_iter().sum();
    assert_eq!(dropped, 2);
}

/// How many TIME-WAIT sockets the "any port" test leaves in the ephemeral range.
const TIME_WAIT_SOCKETS: usize = 10_000;

/// Leaves `n` client sockets in TIME-WAIT on 127.0.0.1 and returns the local ports
/// they now block.
fn time_wait_ports(n: usize) -> Vec<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = l.local_addr().unwrap();
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let c = std::net::TcpStream::connect(to).unwrap();
        let (a, _) = l.accept().unwrap();
        ports.push(c.local_addr().unwrap().port());
        // The side that closes first keeps TIME-WAIT.
        drop(c);
        drop(a);
    }
    ports.retain(|&p| !port_free(p));
    ports
}

fn ephemeral() -> std::ops::RangeInclusive<u16> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().unwrap());
    it.next().unwrap()..=it.next().unwrap()
}

fn port_list(ports: &[u16]) -> String {
    let v: Vec<String> = ports.iter().map(u16::to_string).collect();
    v.join(",")
}

async fn any_port_with(ports: &[u16], echo: u16) -> u16 {
    let server = Piped::start(&["--ports", &port_list(ports)]);
    let (_c, got) = Pipec::start(server.addr, &["--forward", &format!("tcp:{echo}:0")], 1);
    assert_eq!(echo_roundtrip(got[0], b"any").await, b"any");
    got[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_port_0_succeeds_while_the_ephemeral_range_is_full_of_time_wait() {
    let echo = echo_service().await;
    let eph = ephemeral();
    let blocked = tokio::task::spawn_blocking(|| time_wait_ports(TIME_WAIT_SOCKETS))
        .await
        .unwrap();
    assert!(
        blocked.len() >= TIME_WAIT_SOCKETS * 9 / 10,
        "{}",
        blocked.len()
    );
    assert!(blocked.iter().all(|p| eph.contains(p)));
    // Free ports outside the ephemeral range are taken first...
    let outside: Vec<u16> = (1024..*eph.start())
        .rev()
        .filter(|&p| port_free(p))
        .take(3)
        .collect();
    let mut set = blocked.clone();
    set.extend(&outside);
    let got = any_port_with(&set, echo.port).await;
    assert!(outside.contains(&got), "{got} is not one of {outside:?}");
    // ...and the search goes on until the set is exhausted, not for 64 tries.
    let gap = (*eph.start()..=*eph.end())
        .rev()
        .find(|p| !blocked.contains(p) && port_free(*p))
        .unwrap();
    let mut set = blocked;
    set.push(gap);
    assert_eq!(any_port_with(&set, echo.port).await, gap);
}

/// Memory a process may keep over its fresh RSS once a load is over (issue target).
const RSS_KEPT_MIB: u64 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_goes_back_within_10s_of_a_load() {
    let echo = echo_service().await;
    let server = Piped::start(&[]);
    let (c, ports) = Pipec::start(
        server.addr,
        &["--forward", &format!("tcp:{}:0", echo.port)],
        1,
    );
    assert_eq!(echo_roundtrip(ports[0], b"warm").await, b"warm");
    let fresh = (server.proc.rss_kib(), c.proc.rss_kib());
    let within = |now: (u64, u64)| {
        now.0 <= fresh.0 + RSS_KEPT_MIB * 1024 && now.1 <= fresh.1 + RSS_KEPT_MIB * 1024
    };
    // Sixteen streams at once, 12 MiB each way per stream: enough buffers in flight at
    // once that the load needs memory worth giving back (four streams peaked at only
    // 6-7 MiB over fresh on a quiet machine). A load on a busy machine may still move
    // too slowly to: it runs again, up to three times, until the peak shows it did.
    let data = Arc::new(random_bytes(12 * 1024 * 1024, 3));
    let mut loaded = fresh;
    for _ in 0..3 {
        let streams = (0..16).map(|_| {
            let data = data.clone();
            let port = ports[0];
            tokio::spawn(async move { assert_eq!(echo_both_ways(port, &data).await, data.len()) })
        });
        // The peak is sampled while the load runs: on a fast machine the heap can
        // already be trimmed by the time the last byte is read.
        let all = futures::future::join_all(streams);
        tokio::pin!(all);
        let done = loop {
            tokio::select! {
                r = &mut all => break r,
                _ = tokio::time::sleep(Duration::from_millis(5)) => {
                    let now = (server.proc.rss_kib(), c.proc.rss_kib());
                    loaded = (loaded.0.max(now.0), loaded.1.max(now.1));
                }
            }
        };
        for s in done {
            s.unwrap();
        }
        if !within(loaded) {
            break;
        }
    }
    assert!(
        !within(loaded),
        "the load used no memory worth giving back: fresh {fresh:?}, peak {loaded:?}"
    );
    eprintln!("RSS KiB (piped, pipec): fresh {fresh:?}, peak {loaded:?}");
    let t = Instant::now();
    let mut now = loaded;
    while !within(now) && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        now = (server.proc.rss_kib(), c.proc.rss_kib());
    }
    assert!(
        within(now),
        "RSS KiB (piped, pipec): fresh {fresh:?}, loaded {loaded:?}, 10 s later {now:?}"
    );
}

/// Sends `data` through an echo tunnel while reading it back; returns the bytes read.
async fn echo_both_ways(port: u16, data: &[u8]) -> usize {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        let mut sink = vec![0u8; 256 * 1024];
        let mut n = 0;
        loop {
            match r.read(&mut sink).await.unwrap() {
                0 => return n,
                k => n += k,
            }
        }
    };
    let both = async { tokio::join!(send, recv).1 };
    tokio::time::timeout(Duration::from_secs(120), both)
        .await
        .expect("echo of the load timed out")
}

/// `tx_queue` (unacknowledged plus unsent bytes) of the IPv4 TCP socket from local port
/// `local` to remote port `remote`, from /proc/net/tcp.
fn send_queue(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || port(f[1]) != Some(local) || port(f[2]) != Some(remote) {
            return None;
        }
        let (tx, _) = f[4].split_once(':')?;
        u64::from_str_radix(tx, 16).ok()
    })
}

/// Most the host may queue toward a visitor that stopped reading: `NOTSENT_LOWAT`
/// (128 KiB) plus one splice write (256 KiB) and what is in flight to its full window,
/// rounded up. Without the low-water mark the send buffer autotunes to `tcp_wmem`'s
/// maximum (4 MiB by default) and fills.
const STALLED_QUEUE_MAX: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_that_stops_reading_holds_little_kernel_memory_on_the_server() {
    // A backend that sends for ever, as fast as it is allowed to.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let chunk = vec![7u8; 256 * 1024];
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let server = Piped::start(&[]);
    let fwd = format!("tcp:127.0.0.1:{backend}:0");
    let (_c, ports) = Pipec::start(server.addr, &["--forward", &fwd], 1);

    // The visitor reads one byte, then nothing: its small window fills at once.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    let mut visitor = sock
        .connect(([127, 0, 0, 1], ports[0]).into())
        .await
        .unwrap();
    let mut one = [0u8; 1];
    tokio::time::timeout(WAIT, visitor.read_exact(&mut one))
        .await
        .unwrap()
        .unwrap();
    let me = visitor.local_addr().unwrap().port();

    // Watch piped's side of that connection until its queue stops growing (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut most, mut steady_since) = (0u64, Instant::now());
    while Instant::now() < deadline && steady_since.elapsed() < Duration::from_secs(1) {
        let q = send_queue(ports[0], me).expect("piped's socket toward the visitor");
        if q > most {
            most = q;
            steady_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(most > 0, "nothing queued: the download did not start");
    assert!(
        most <= STALLED_QUEUE_MAX,
        "piped queued {most} bytes toward a visitor that stopped reading"
    );
    // And the visitor is still served once it reads again.
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < buf.len() {
        got += tokio::time::timeout(WAIT, visitor.read(&mut buf[got..]))
            .await
            .unwrap()
            .unwrap();
    }
    assert!(buf.iter().all(|&b| b == 7));
}
