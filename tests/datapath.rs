//! The data path under stress: resets carried through the tunnel, protocol violations
//! ending a session, caps that protect sibling tunnels, the pre-auth table under a
//! flood, and "any port" while the ephemeral range is crowded.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

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
